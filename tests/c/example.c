/*
 * A controller's use of miad, in C99: open an engine, inspect a part, read the result and
 * the maps, and see each error path return its status and a message.
 *
 *   example MODEL BANK [OTHER_MODEL]
 *
 * The part is synthesised here: a tilted plane with a dome on it, 150 x 120, and a noisy
 * RGB image. OTHER_MODEL, when given, is a model file the bank does not belong to.
 * Prints what it finds; exits 0 when every check passed. tests/capi.rs builds and runs it.
 */
#include "miad.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define W 150
#define H 120

static int failures = 0;

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "example: FAILED: %s\n", what);
        failures++;
    }
}

/* Prints "label: STATUS (message)" and checks the status. */
static void expect(const char *label, miad_status got, miad_status want, const char *msg)
{
    printf("%s: %s (%s)\n", label, miad_status_name(got), msg);
    check(got == want, label);
    check(got == MIAD_OK || msg[0] != '\0', "a failure has a message");
}

static const char *case_name(uint32_t c)
{
    switch (c) {
    case MIAD_CASE_COMPLETE: return "complete";
    case MIAD_CASE_RGB_ONLY: return "rgb_only";
    case MIAD_CASE_CLOUD_ONLY: return "cloud_only";
    default: return "?";
    }
}

static const char *verdict_name(uint32_t v)
{
    switch (v) {
    case MIAD_VERDICT_PASS: return "pass";
    case MIAD_VERDICT_FAIL: return "fail";
    case MIAD_VERDICT_UNCERTAIN: return "uncertain";
    default: return "?";
    }
}

static void synthesise(uint8_t *rgb, float *cloud)
{
    uint32_t state = 12345u;
    int r, c, ch;
    for (r = 0; r < H; r++) {
        for (c = 0; c < W; c++) {
            size_t i = 3u * ((size_t)r * W + (size_t)c);
            float x = (float)c * 0.001f, y = (float)r * 0.001f;
            float u = ((float)c - 75.0f) / 40.0f, v = ((float)r - 60.0f) / 35.0f;
            float z = 0.4f + 0.05f * x;
            if (u * u + v * v < 1.0f)
                z += 0.03f * sqrtf(1.0f - u * u - v * v) + 0.02f;
            cloud[i] = x;
            cloud[i + 1] = y;
            cloud[i + 2] = z;
            for (ch = 0; ch < 3; ch++) {
                state = state * 1664525u + 1013904223u;
                rgb[i + (size_t)ch] = (uint8_t)(20u + (state >> 24) % 200u);
            }
        }
    }
}

int main(int argc, char **argv)
{
    char err[MIAD_ERR_BUF_LEN];
    char build[256];
    miad_engine_options eo;
    miad_engine *engine = NULL;
    miad_engine *other = NULL;
    miad_engine_info info;
    miad_inspect_options io, bad_io;
    miad_part part, bad_part;
    miad_result res, again;
    miad_status st;
    uint8_t *rgb;
    float *cloud, *map, *input_map;
    size_t map_len, i;
    uint32_t k;
    char tiny[8];

    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL BANK [OTHER_MODEL]\n", argv[0]);
        return 2;
    }
    printf("miad %s (header %s)\n", miad_version(), MIAD_VERSION);
    check(strcmp(miad_version(), MIAD_VERSION) == 0, "library and header versions agree");
    check(miad_build_info(build, sizeof build) == MIAD_OK, "build info");
    printf("%s\n", build);
    printf("sizeof(miad_engine_options)=%lu\n", (unsigned long)sizeof(miad_engine_options));
    printf("sizeof(miad_part)=%lu\n", (unsigned long)sizeof(miad_part));
    printf("sizeof(miad_inspect_options)=%lu\n", (unsigned long)sizeof(miad_inspect_options));
    printf("sizeof(miad_region)=%lu\n", (unsigned long)sizeof(miad_region));
    printf("sizeof(miad_result)=%lu\n", (unsigned long)sizeof(miad_result));
    printf("sizeof(miad_engine_info)=%lu\n", (unsigned long)sizeof(miad_engine_info));

    /* Start-up: open and plan once. */
    miad_engine_options_default(&eo);
    eo.threads = 2;
    eo.max_width = 256;
    eo.max_height = 256;
    st = miad_engine_open(argv[1], argv[2], &eo, &engine, err, sizeof err);
    if (st != MIAD_OK) {
        fprintf(stderr, "example: open: %s: %s\n", miad_status_name(st), err);
        return 1;
    }
    st = miad_engine_get_info(engine, &info, err, sizeof err);
    check(st == MIAD_OK, "engine info");
    printf("engine: category=%s map=%ux%u threads=%u part_threshold=%g\n", info.category,
           info.map_size, info.map_size, info.threads, (double)info.part_threshold);

    /* Buffers, allocated once by the controller. */
    map_len = (size_t)info.map_size * info.map_size;
    map = malloc(map_len * sizeof *map);
    input_map = malloc((size_t)W * H * sizeof *input_map);
    rgb = malloc((size_t)W * H * 3);
    cloud = malloc((size_t)W * H * 3 * sizeof *cloud);
    if (!map || !input_map || !rgb || !cloud) {
        fprintf(stderr, "example: out of memory\n");
        return 1;
    }
    synthesise(rgb, cloud);

    /* One part. */
    part.rgb = rgb;
    part.rgb_width = W;
    part.rgb_height = H;
    part.rgb_stride = 3 * W;
    part.cloud = cloud;
    part.cloud_width = W;
    part.cloud_height = H;
    part.cloud_stride = 3 * W;
    miad_inspect_options_default(&io);
    io.map = map;
    io.map_len = map_len;
    io.input_map = input_map;
    io.input_map_len = (size_t)W * H;
    st = miad_inspect(engine, &part, &io, &res, err, sizeof err);
    if (st != MIAD_OK) {
        fprintf(stderr, "example: inspect: %s: %s\n", miad_status_name(st), err);
        return 1;
    }
    printf("score=%.6f verdict=%s threshold=%.6f case=%s used=%s%s%s calibrated=%u\n",
           (double)res.score, verdict_name(res.verdict), (double)res.part_threshold,
           case_name(res.modality_case), (res.modalities_used & MIAD_USED_RGB) ? "rgb" : "",
           res.modalities_used == (MIAD_USED_RGB | MIAD_USED_CLOUD) ? "+" : "",
           (res.modalities_used & MIAD_USED_CLOUD) ? "cloud" : "", res.case_calibrated);
    printf("banks: xyz=%.6f rgb=%.6f fused=%.6f\n", (double)res.bank_scores[0],
           (double)res.bank_scores[1], (double)res.bank_scores[2]);
    printf("regions: %u found, %u listed\n", res.regions_found, res.regions_count);
    for (k = 0; k < res.regions_count && k < 3; k++) {
        const miad_region *g = &res.regions[k];
        printf("  region %u: [%u,%u]-[%u,%u] area=%u max=%.4f mean=%.4f\n", k, g->x0, g->y0,
               g->x1, g->y1, g->area, (double)g->max, (double)g->mean);
    }
    printf("times (ms): preprocess=%.2f rgb=%.2f point=%.2f fusion=%.2f score=%.2f total=%.2f\n",
           1e3 * res.time_preprocess_s, 1e3 * res.time_rgb_s, 1e3 * res.time_point_s,
           1e3 * res.time_fusion_s, 1e3 * res.time_score_s, 1e3 * res.time_total_s);
    check(res.modality_case == MIAD_CASE_COMPLETE, "complete case");
    check(res.outputs_written == (MIAD_WROTE_MAP | MIAD_WROTE_INPUT_MAP), "maps written");
    check(res.input_width == W && res.input_height == H, "input size");
    check(isfinite(res.score), "finite score");
    for (i = 0; i < map_len; i++)
        check(isfinite(map[i]) != 0, "finite map");
    for (i = 0; i < (size_t)W * H; i++)
        check(isfinite(input_map[i]) != 0, "finite input map");

    /* The same part again: the same bits. */
    st = miad_inspect(engine, &part, &io, &again, err, sizeof err);
    check(st == MIAD_OK, "second inspection");
    check(memcmp(&res.score, &again.score, sizeof res.score) == 0, "repeatable score");

    /* Error paths: each returns its status and a message; nothing aborts. */
    st = miad_inspect(NULL, &part, &io, &res, err, sizeof err);
    expect("null engine", st, MIAD_NULL_ARGUMENT, err);
    st = miad_inspect(engine, NULL, &io, &res, err, sizeof err);
    expect("null part", st, MIAD_NULL_ARGUMENT, err);
    st = miad_inspect(engine, &part, &io, NULL, err, sizeof err);
    expect("null result", st, MIAD_NULL_ARGUMENT, err);
    bad_io = io;
    bad_io.map_len = map_len - 1;
    st = miad_inspect(engine, &part, &bad_io, &res, err, sizeof err);
    expect("small map", st, MIAD_BUFFER_TOO_SMALL, err);
    bad_part = part;
    bad_part.rgb_stride = 3 * W - 1;
    st = miad_inspect(engine, &bad_part, NULL, &res, err, sizeof err);
    expect("short stride", st, MIAD_INVALID_INPUT, err);
    bad_part = part;
    bad_part.cloud_width = 0;
    st = miad_inspect(engine, &bad_part, NULL, &res, err, sizeof err);
    expect("zero width", st, MIAD_INVALID_INPUT, err);
    bad_part = part;
    bad_part.rgb = NULL;
    bad_part.cloud = NULL;
    st = miad_inspect(engine, &bad_part, NULL, &res, err, sizeof err);
    expect("no modality", st, MIAD_NO_USABLE_MODALITY, err);
    /* A short message buffer: truncated, still terminated. */
    memset(tiny, 'x', sizeof tiny);
    st = miad_inspect(engine, &bad_part, NULL, &res, tiny, sizeof tiny);
    check(st == MIAD_NO_USABLE_MODALITY && memchr(tiny, '\0', sizeof tiny) != NULL,
          "short message buffer");
    st = miad_inspect(engine, &bad_part, NULL, &res, NULL, 0);
    check(st == MIAD_NO_USABLE_MODALITY, "no message buffer");
    /* Only the RGB image: still decided, and said so. */
    bad_part = part;
    bad_part.cloud = NULL;
    st = miad_inspect(engine, &bad_part, NULL, &res, err, sizeof err);
    check(st == MIAD_OK && res.modality_case == MIAD_CASE_RGB_ONLY &&
              res.cloud_status == MIAD_MODALITY_MISSING,
          "rgb only");

    if (argc > 3) {
        st = miad_engine_open(argv[3], argv[2], &eo, &other, err, sizeof err);
        expect("other model", st, MIAD_MODEL_MISMATCH, err);
        check(other == NULL, "no handle after a failed open");
    }
    st = miad_engine_open("/nonexistent/model.miad", argv[2], NULL, &other, err, sizeof err);
    expect("missing file", st, MIAD_IO, err);

    /* Shut-down. */
    check(miad_engine_close(engine) == MIAD_OK, "close");
    st = miad_engine_close(engine);
    printf("closed handle: %s\n", miad_status_name(st));
    check(st == MIAD_INVALID_HANDLE, "second close");
    st = miad_inspect(engine, &part, &io, &res, err, sizeof err);
    expect("inspect closed", st, MIAD_INVALID_HANDLE, err);
    check(miad_engine_close(NULL) == MIAD_OK, "close NULL");

    free(map);
    free(input_map);
    free(rgb);
    free(cloud);
    if (failures) {
        fprintf(stderr, "example: %d check(s) failed\n", failures);
        return 1;
    }
    printf("example: ok\n");
    return 0;
}
