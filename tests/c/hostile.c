/*
 * A hostile caller of miad's C ABI (issue 16), built with AddressSanitizer and
 * UndefinedBehaviorSanitizer by tests/capi/hostile.rs: every export with bad arguments,
 * forged and stale handles, hostile files (each file in HOSTILE_DIR opened as a model and
 * as a bank), parts with hostile sizes and contents, files changed in place under an open
 * engine, fork() after open, and several threads on one engine. A regression case for
 * every defect of the issue.
 *
 *   hostile MODEL BANK OTHER_MODEL HOSTILE_DIR WORK_DIR
 *
 * Rules checked everywhere: no crash, no hang (an alarm ends a stuck run), never
 * MIAD_PANIC, a failure always has a message, and MIAD_OK results are finite.
 * Prints "hostile: ok" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include "miad.h"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define W 150
#define H 120

static int failures = 0;
static int checks = 0;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        checks++;                                                                             \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "hostile: FAILED (%s:%d): ", __FILE__, __LINE__);                 \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
            failures++;                                                                       \
        }                                                                                     \
    } while (0)

static char msg[MIAD_ERR_BUF_LEN];
static uint8_t rgb[W * H * 3];
static float cloud[W * H * 3];
static float map_buf[2048 * 2048];

static void synthesise(void)
{
    unsigned s = 7;
    for (int r = 0; r < H; r++)
        for (int c = 0; c < W; c++) {
            float x = c * 0.001f, y = r * 0.001f;
            float u = (c - 75.0f) / 40.0f, v = (r - 60.0f) / 35.0f;
            float z = 0.4f + 0.05f * x;
            if (u * u + v * v < 1.0f) z += 0.03f * sqrtf(1.0f - u * u - v * v) + 0.02f;
            int i = 3 * (r * W + c);
            cloud[i] = x + 0.0005f;
            cloud[i + 1] = y + 0.0005f;
            cloud[i + 2] = z;
            for (int ch = 0; ch < 3; ch++) {
                s = s * 1103515245u + 12345u;
                rgb[i + ch] = (uint8_t)(20 + (s >> 16) % 200);
            }
        }
}

static miad_part part_of(const uint8_t *im, const float *cl)
{
    miad_part p;
    memset(&p, 0, sizeof p);
    p.rgb = im;
    p.rgb_width = W;
    p.rgb_height = H;
    p.rgb_stride = 3 * W;
    p.cloud = cl;
    p.cloud_width = W;
    p.cloud_height = H;
    p.cloud_stride = 3 * W;
    return p;
}

static miad_engine_options eopts(void)
{
    miad_engine_options o;
    miad_engine_options_default(&o);
    o.threads = 2;
    o.max_width = 256;
    o.max_height = 256;
    return o;
}

/* A failure is never a panic and always has a message. */
static void sane(miad_status st, const char *what)
{
    CHECK(st != MIAD_PANIC, "%s: MIAD_PANIC (%s)", what, msg);
    CHECK(strcmp(miad_status_name(st), "MIAD_UNKNOWN_STATUS") != 0, "%s: status %d", what,
          (int)st);
    if (st != MIAD_OK) CHECK(msg[0] != '\0', "%s: %s without a message", what,
                             miad_status_name(st));
}

static miad_status open_engine(const char *model, const char *bank, const miad_engine_options *o,
                               miad_engine **e)
{
    msg[0] = 'x';
    msg[1] = 0;
    miad_status st = miad_engine_open(model, bank, o, e, msg, sizeof msg);
    sane(st, "open");
    CHECK((st == MIAD_OK) == (*e != NULL), "open: handle and status disagree");
    return st;
}

/* Inspects and, on MIAD_OK, checks that everything reported is finite. */
static miad_status inspect(miad_engine *e, const miad_part *p, miad_result *r)
{
    miad_inspect_options io;
    miad_inspect_options_default(&io);
    io.map = map_buf;
    io.map_len = sizeof map_buf / sizeof map_buf[0];
    miad_status st = miad_inspect(e, p, &io, r, msg, sizeof msg);
    sane(st, "inspect");
    if (st == MIAD_OK) {
        int finite = isfinite(r->score);
        for (int b = 0; b < 3; b++) finite &= isfinite(r->bank_scores[b]);
        size_t n = (size_t)r->map_size * r->map_size;
        for (size_t i = 0; i < n; i++) finite &= isfinite(map_buf[i]);
        for (uint32_t i = 0; i < r->regions_count; i++)
            finite &= isfinite(r->regions[i].max) && isfinite(r->regions[i].mean);
        CHECK(finite, "a non-finite result with MIAD_OK");
        CHECK(r->regions_count <= MIAD_MAX_REGIONS, "regions_count %u", r->regions_count);
    }
    return st;
}

static int copy_file(const char *from, const char *to)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (!a || !b) return -1;
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
    fclose(a);
    return fclose(b);
}

/* ---- exports with bad arguments ----------------------------------------------------- */

static void bad_arguments(const char *model, const char *bank)
{
    char small[4];
    CHECK(miad_version() != NULL, "version");
    CHECK(miad_build_info(NULL, 10) == MIAD_NULL_ARGUMENT, "build_info NULL");
    CHECK(miad_build_info(small, 0) == MIAD_BUFFER_TOO_SMALL, "build_info len 0");
    CHECK(miad_build_info(small, sizeof small) == MIAD_BUFFER_TOO_SMALL && small[3] == 0,
          "build_info truncated");
    CHECK(strcmp(miad_status_name(-1), "MIAD_UNKNOWN_STATUS") == 0, "status -1");
    CHECK(strcmp(miad_status_name(1000), "MIAD_UNKNOWN_STATUS") == 0, "status 1000");
    CHECK(strcmp(miad_status_name(MIAD_FORKED), "MIAD_FORKED") == 0, "MIAD_FORKED name");
    CHECK(miad_engine_options_default(NULL) == MIAD_NULL_ARGUMENT, "options NULL");
    CHECK(miad_inspect_options_default(NULL) == MIAD_NULL_ARGUMENT, "inspect options NULL");

    miad_engine *e = (miad_engine *)0x1;
    miad_engine_options o = eopts();
    CHECK(miad_engine_open(model, bank, &o, NULL, msg, sizeof msg) == MIAD_NULL_ARGUMENT,
          "open out NULL");
    CHECK(open_engine(NULL, bank, &o, &e) == MIAD_NULL_ARGUMENT, "NULL model path");
    CHECK(open_engine(model, NULL, &o, &e) == MIAD_NULL_ARGUMENT, "NULL bank path");
    CHECK(open_engine("", bank, &o, &e) == MIAD_INVALID_ARGUMENT, "empty path");
    CHECK(open_engine("\xff\xfe", bank, &o, &e) == MIAD_INVALID_ARGUMENT, "non-UTF-8 path");
    /* Message buffers of every size, NULL included. */
    CHECK(miad_engine_open("", bank, &o, &e, NULL, 100) == MIAD_INVALID_ARGUMENT, "NULL buf");
    msg[0] = 'x';
    CHECK(miad_engine_open("", bank, &o, &e, msg, 0) == MIAD_INVALID_ARGUMENT && msg[0] == 'x',
          "len 0 writes nothing");
    CHECK(miad_engine_open("", bank, &o, &e, msg, 1) == MIAD_INVALID_ARGUMENT && msg[0] == 0,
          "len 1 writes the NUL");

    /* Options out of range, and structs without their size. */
    struct {
        const char *what;
        miad_engine_options o;
    } bad[7];
    for (int i = 0; i < 7; i++) bad[i].o = eopts();
    bad[0].what = "threads";
    bad[0].o.threads = 100000;
    bad[1].what = "max_width 0";
    bad[1].o.max_width = 0;
    bad[2].what = "max_height";
    bad[2].o.max_height = MIAD_MAX_SIDE + 1;
    bad[3].what = "backend";
    bad[3].o.backend = 7;
    bad[4].what = "precision";
    bad[4].o.precision = 9;
    bad[5].what = "struct_size 0";
    bad[5].o.struct_size = 0;
    bad[6].what = "struct_size huge";
    bad[6].o.struct_size = 0x7fffffff;
    for (int i = 0; i < 7; i++) {
        miad_status st = open_engine(model, bank, &bad[i].o, &e);
        CHECK(st == MIAD_INVALID_ARGUMENT || st == MIAD_CONFIG, "%s: %s", bad[i].what,
              miad_status_name(st));
    }
    miad_engine_options zeroed;
    memset(&zeroed, 0, sizeof zeroed);
    CHECK(open_engine(model, bank, &zeroed, &e) == MIAD_INVALID_ARGUMENT &&
              strstr(msg, "struct_size") != NULL,
          "a zeroed options struct names struct_size: %s", msg);
}

/* ---- handles ------------------------------------------------------------------------ */

static void handles(const char *model, const char *bank)
{
    miad_engine_options o = eopts();
    miad_engine *e = NULL;
    CHECK(open_engine(model, bank, &o, &e) == MIAD_OK, "open: %s", msg);
    uintptr_t h = (uintptr_t)e;
    CHECK(h > (1u << 24), "handle %p is a small integer", (void *)e);
    miad_engine_info info;
    uintptr_t forged[] = {1, 2, 0x10000, 0xdeadbeef, h ^ 1, h ^ 0x10000, h + 1, ~h};
    miad_result r;
    miad_part p = part_of(rgb, cloud);
    for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
        miad_engine *f = (miad_engine *)forged[i];
        CHECK(miad_engine_get_info(f, &info, msg, sizeof msg) == MIAD_INVALID_HANDLE,
              "forged %zu get_info", i);
        CHECK(inspect(f, &p, &r) == MIAD_INVALID_HANDLE, "forged %zu inspect", i);
        CHECK(miad_engine_close(f) == MIAD_INVALID_HANDLE, "forged %zu close", i);
    }
    CHECK(miad_engine_get_info(e, NULL, msg, sizeof msg) == MIAD_NULL_ARGUMENT, "info NULL");
    CHECK(miad_engine_get_info(e, &info, NULL, 0) == MIAD_OK, "info");
    CHECK(info.map_size > 0 && info.backend_used == MIAD_BACKEND_CPU, "info values");
    CHECK(miad_engine_close(e) == MIAD_OK, "close");
    /* Stale: closed, then a new engine takes the slot. */
    miad_engine *e2 = NULL;
    CHECK(open_engine(model, bank, &o, &e2) == MIAD_OK, "reopen");
    CHECK(e2 != e, "a new engine reuses a stale handle value");
    CHECK(miad_engine_close(e) == MIAD_INVALID_HANDLE, "second close");
    CHECK(inspect(e, &p, &r) == MIAD_INVALID_HANDLE, "stale inspect");
    CHECK(miad_engine_close(e2) == MIAD_OK, "close e2");
    CHECK(miad_engine_close(NULL) == MIAD_OK, "close NULL");
}

/* ---- hostile files ------------------------------------------------------------------ */

static void hostile_files(const char *model, const char *bank, const char *dir, const char *work)
{
    miad_engine_options o = eopts();
    miad_engine *e = NULL;
    char path[4096];
    int files = 0;
    DIR *d = opendir(dir);
    CHECK(d != NULL, "cannot read %s", dir);
    if (!d) return;
    struct dirent *ent;
    miad_part p = part_of(rgb, cloud);
    miad_result r;
    while ((ent = readdir(d)) != NULL) {
        if (ent->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        files++;
        /* As a bank with the right model, and as a model with the right bank. */
        const char *pairs[2][2] = {{model, path}, {path, bank}};
        for (int k = 0; k < 2; k++) {
            e = NULL;
            if (open_engine(pairs[k][0], pairs[k][1], &o, &e) == MIAD_OK) {
                /* A file that opens must behave: complete, RGB-only, cloud-only parts. */
                miad_part parts[3] = {p, part_of(rgb, NULL), part_of(NULL, cloud)};
                for (int j = 0; j < 3; j++) inspect(e, &parts[j], &r);
                CHECK(miad_engine_close(e) == MIAD_OK, "close");
            }
        }
    }
    closedir(d);
    CHECK(files > 0, "no hostile files in %s", dir);
    printf("hostile files: %d, each opened as model and as bank\n", files);

    /* Not regular files: a directory, a device, a FIFO without a writer (must not block). */
    char fifo[4096];
    snprintf(fifo, sizeof fifo, "%s/hostile.fifo", work);
    unlink(fifo);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
    const char *special[] = {dir, "/dev/null", "/dev/zero", fifo};
    for (int i = 0; i < 4; i++) {
        CHECK(open_engine(special[i], bank, &o, &e) == MIAD_IO, "%s as model: %s", special[i],
              msg);
        CHECK(open_engine(model, special[i], &o, &e) == MIAD_IO, "%s as bank: %s", special[i],
              msg);
    }
    CHECK(strstr(msg, "FIFO") != NULL, "the FIFO is named: %s", msg);
    unlink(fifo);
}

/* ---- parts -------------------------------------------------------------------------- */

static void hostile_parts(const char *model, const char *bank)
{
    miad_engine_options o = eopts();
    miad_engine *e = NULL;
    CHECK(open_engine(model, bank, &o, &e) == MIAD_OK, "open: %s", msg);
    miad_result r;
    miad_part p;
    CHECK(miad_inspect(e, NULL, NULL, &r, msg, sizeof msg) == MIAD_NULL_ARGUMENT, "NULL part");
    p = part_of(rgb, cloud);
    CHECK(miad_inspect(e, &p, NULL, NULL, msg, sizeof msg) == MIAD_NULL_ARGUMENT, "NULL out");
    CHECK(miad_inspect(NULL, &p, NULL, &r, msg, sizeof msg) == MIAD_NULL_ARGUMENT, "NULL engine");
    CHECK(inspect(e, &p, &r) == MIAD_OK && r.modality_case == MIAD_CASE_COMPLETE, "good: %s",
          msg);
    p = part_of(NULL, NULL);
    CHECK(inspect(e, &p, &r) == MIAD_NO_USABLE_MODALITY, "no modality");
    p = part_of(rgb, cloud);
    p.rgb_width = 0;
    p.cloud_width = 0;
    CHECK(inspect(e, &p, &r) == MIAD_INVALID_INPUT, "zero width");
    p = part_of(rgb, cloud);
    p.rgb_width = SIZE_MAX / 2;
    p.rgb_stride = SIZE_MAX;
    CHECK(inspect(e, &p, &r) == MIAD_INVALID_INPUT, "overflowing sizes");
    p = part_of(rgb, cloud);
    p.cloud_stride = 3 * W - 1;
    CHECK(inspect(e, &p, &r) == MIAD_INVALID_INPUT, "short stride");
    p = part_of(rgb, (const float *)((const char *)cloud + 1));
    p.cloud_height = H - 1;
    CHECK(inspect(e, &p, &r) == MIAD_INVALID_INPUT, "misaligned cloud");
    p = part_of(rgb, cloud);
    p.cloud_height = H - 1;
    CHECK(inspect(e, &p, &r) == MIAD_INVALID_INPUT, "different sizes");
    p = part_of(rgb, cloud);
    p.rgb_width = p.cloud_width = 4000;
    p.rgb_height = p.cloud_height = 1;
    p.rgb_stride = p.cloud_stride = 3 * 4000;
    CHECK(inspect(e, &p, &r) != MIAD_OK, "larger than planned");

    /* Sensor clouds: NaN "no return" pixels are missing points (SPEC 1.6), a zero
     * coordinate is no point (SPEC 1.5), all-NaN is a missing modality. */
    static float c2[W * H * 3];
    memcpy(c2, cloud, sizeof c2);
    for (int i = 0; i < W * H; i += 7) c2[3 * i] = NAN;
    for (int i = 3; i < W * H; i += 11) c2[3 * i + 1] = 0.0f;
    c2[3 * 100 + 2] = INFINITY;
    p = part_of(rgb, c2);
    CHECK(inspect(e, &p, &r) == MIAD_OK && r.modality_case == MIAD_CASE_COMPLETE,
          "NaN points: %s case %u", msg, r.modality_case);
    for (int i = 0; i < W * H * 3; i++) c2[i] = NAN;
    CHECK(inspect(e, &p, &r) == MIAD_OK && r.modality_case == MIAD_CASE_RGB_ONLY &&
              r.cloud_status == MIAD_MODALITY_NON_FINITE,
          "all-NaN cloud");
    memset(c2, 0, sizeof c2);
    CHECK(inspect(e, &p, &r) == MIAD_OK && r.cloud_status == MIAD_MODALITY_NO_POINTS,
          "all-zero cloud");
    static uint8_t grey[W * H * 3];
    memset(grey, 128, sizeof grey);
    p = part_of(grey, c2);
    CHECK(inspect(e, &p, &r) == MIAD_NO_USABLE_MODALITY, "blank and empty");

    /* Inspect options. */
    miad_inspect_options io;
    miad_inspect_options_default(&io);
    p = part_of(rgb, cloud);
    io.map = map_buf;
    io.map_len = 3;
    CHECK(miad_inspect(e, &p, &io, &r, msg, sizeof msg) == MIAD_BUFFER_TOO_SMALL, "small map");
    io.map = (float *)((char *)map_buf + 2);
    io.map_len = 1 << 20;
    CHECK(miad_inspect(e, &p, &io, &r, msg, sizeof msg) == MIAD_INVALID_ARGUMENT,
          "misaligned map");
    miad_inspect_options_default(&io);
    io.want_map = 0;
    io.map = map_buf;
    io.map_len = 1 << 20;
    CHECK(miad_inspect(e, &p, &io, &r, msg, sizeof msg) == MIAD_INVALID_ARGUMENT,
          "map without want_map");
    miad_inspect_options_default(&io);
    io.grey_band_low = 2.0f;
    io.grey_band_high = 1.0f;
    CHECK(miad_inspect(e, &p, &io, &r, msg, sizeof msg) == MIAD_INVALID_ARGUMENT, "grey band");
    miad_inspect_options_default(&io);
    io.struct_size = 0;
    CHECK(miad_inspect(e, &p, &io, &r, msg, sizeof msg) == MIAD_INVALID_ARGUMENT,
          "inspect struct_size 0");
    CHECK(miad_engine_close(e) == MIAD_OK, "close");
}

/* ---- files changed in place ---------------------------------------------------------- */

static void changed_in_place(const char *model, const char *bank, const char *other,
                             const char *work)
{
    char m[4096], b[4096];
    snprintf(m, sizeof m, "%s/changed.miad", work);
    snprintf(b, sizeof b, "%s/changed.bank", work);
    miad_part p = part_of(rgb, cloud);
    miad_result r, r0;
    for (int mode = 0; mode < 4; mode++) {
        for (int in_memory = 0; in_memory < 2; in_memory++) {
            CHECK(copy_file(model, m) == 0 && copy_file(bank, b) == 0, "copy");
            miad_engine_options o = eopts();
            o.in_memory = (uint32_t)in_memory;
            miad_engine *e = NULL;
            CHECK(open_engine(m, b, &o, &e) == MIAD_OK, "open: %s", msg);
            if (!e) continue;
            CHECK(inspect(e, &p, &r0) == MIAD_OK, "before: %s", msg);
            if (mode == 0) CHECK(truncate(b, 4096) == 0, "truncate bank");
            if (mode == 1) CHECK(truncate(m, 0) == 0, "truncate model");
            if (mode == 2) CHECK(copy_file(other, m) == 0, "cp other model over the model");
            if (mode == 3) {
                /* Replaced by rename: the supported way. The engine keeps the old file. */
                char t[4200];
                snprintf(t, sizeof t, "%s.new", m);
                CHECK(copy_file(other, t) == 0 && rename(t, m) == 0, "rename");
            }
            miad_status st = inspect(e, &p, &r);
            if (in_memory || mode == 3)
                CHECK(st == MIAD_OK && r.score == r0.score, "mode %d in_memory %d: %s", mode,
                      in_memory, miad_status_name(st));
            else
                CHECK(st == MIAD_FILE_CHANGED, "mode %d: %s (%s)", mode, miad_status_name(st),
                      msg);
            CHECK(miad_engine_close(e) == MIAD_OK, "close");
        }
    }
}

/* ---- fork --------------------------------------------------------------------------- */

static void after_fork(const char *model, const char *bank)
{
    miad_engine_options o = eopts();
    miad_engine *e = NULL;
    miad_part p = part_of(rgb, cloud);
    miad_result r;
    CHECK(open_engine(model, bank, &o, &e) == MIAD_OK, "open: %s", msg);
    CHECK(inspect(e, &p, &r) == MIAD_OK, "before fork");
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20);
        miad_status st = miad_inspect(e, &p, NULL, &r, msg, sizeof msg);
        miad_status cl = miad_engine_close(e);
        _exit(st == MIAD_FORKED && cl == MIAD_OK ? 0 : 1);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child did not get MIAD_FORKED "
          "(status %d)", status);
    CHECK(inspect(e, &p, &r) == MIAD_OK, "the parent's engine after fork");
    CHECK(miad_engine_close(e) == MIAD_OK, "close");
}

/* ---- threads on one engine ---------------------------------------------------------- */

struct shared {
    miad_engine *e;
    int ok, busy, other;
    pthread_mutex_t lock;
};

static void *worker(void *arg)
{
    struct shared *s = arg;
    miad_part p = part_of(rgb, cloud);
    for (int i = 0; i < 6; i++) {
        miad_result r;
        char m[MIAD_ERR_BUF_LEN];
        miad_status st = miad_inspect(s->e, &p, NULL, &r, m, sizeof m);
        pthread_mutex_lock(&s->lock);
        if (st == MIAD_OK && isfinite(r.score)) s->ok++;
        else if (st == MIAD_BUSY) s->busy++;
        else s->other++;
        pthread_mutex_unlock(&s->lock);
    }
    return NULL;
}

static void threads(const char *model, const char *bank)
{
    miad_engine_options o = eopts();
    struct shared s = {NULL, 0, 0, 0, PTHREAD_MUTEX_INITIALIZER};
    CHECK(open_engine(model, bank, &o, &s.e) == MIAD_OK, "open: %s", msg);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, &s);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    CHECK(s.other == 0 && s.ok > 0 && s.ok + s.busy == 24, "threads: ok %d busy %d other %d",
          s.ok, s.busy, s.other);
    CHECK(miad_engine_close(s.e) == MIAD_OK, "close");
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: hostile MODEL BANK OTHER_MODEL HOSTILE_DIR WORK_DIR\n");
        return 2;
    }
    alarm(300); /* a hang fails the run */
    synthesise();
    bad_arguments(argv[1], argv[2]);
    handles(argv[1], argv[2]);
    hostile_files(argv[1], argv[2], argv[4], argv[5]);
    hostile_parts(argv[1], argv[2]);
    changed_in_place(argv[1], argv[2], argv[3], argv[5]);
    after_fork(argv[1], argv[2]);
    threads(argv[1], argv[2]);
    printf("hostile: %d checks, %d failed\n", checks, failures);
    if (failures == 0) printf("hostile: ok\n");
    return failures == 0 ? 0 : 1;
}
