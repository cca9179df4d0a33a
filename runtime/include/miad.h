/*
 * miad.h: the C interface of miad, a runtime for multimodal (RGB + 3-D point cloud)
 * industrial anomaly detection. Link against libmiad (libmiad.so or libmiad.a; with the
 * static library also link -lpthread -ldl -lm).
 *
 * Written by hand and kept in step with runtime/capi/mod.rs by tests (tests/capi.rs):
 * every function declared here is exported there and nothing else is, the numeric
 * constants are compared, and the struct sizes below are asserted on both sides.
 *
 * Conventions
 * -----------
 * Status: every function that can fail returns a miad_status, 0 (MIAD_OK) on success.
 *   The numbers are stable across releases; new codes are only ever added.
 *   miad_status_name() gives the name of a code.
 * Messages: functions taking (char *err_buf, size_t err_len) write a human-readable,
 *   NUL-terminated UTF-8 message naming what went wrong (the file, the tensor, the
 *   argument) into err_buf on failure, truncated to err_len - 1 bytes at a character
 *   boundary; on success they write an empty string. err_buf may be NULL (no message)
 *   and err_len may be 0 (nothing written). MIAD_ERR_BUF_LEN bytes hold every message
 *   in practice.
 * Ownership: the library never keeps a pointer given to it beyond the call (paths,
 *   parts, options, buffers): the caller owns them and may free them after the call.
 *   The only object the library owns is the engine; miad_engine_close() releases it.
 *   Strings returned as `const char *` are static and never freed.
 * Memory: opening an engine plans every buffer; miad_inspect() performs no heap
 *   allocation when it succeeds. Producing a failure message may allocate.
 * Panics: an internal error inside the library never unwinds into the caller: it is
 *   returned as MIAD_PANIC, and the engine involved is then unusable (close it).
 *   (This needs the library built with panic=unwind, the default.)
 * Output: the library never writes to stdout or stderr. Everything it has to say is in
 *   the message buffers and in miad_engine_get_info() (backend_note).
 * Option structs: miad_engine_options and miad_inspect_options start with struct_size,
 *   set by their _default() function to the size this header declares. Always fill them
 *   with the _default() function, then set fields. A struct_size of 0 (a zeroed struct
 *   never filled) is MIAD_INVALID_ARGUMENT. A smaller one is accepted when it is the
 *   size of an earlier header's struct (the fields it lacks take their defaults: a
 *   program built against an earlier miad.h keeps working), refused otherwise; a larger
 *   one (a newer header) is accepted when the fields this library does not know are zero.
 * Results: when a function returns MIAD_OK, every number it wrote is finite (score,
 *   bank scores, map values, region statistics). A result that would hold NaN or
 *   infinity is MIAD_NON_FINITE instead, with a message.
 * Units: times in seconds. Point coordinates in the units of the training data (metres
 *   for MVTec 3D-AD). Scores and thresholds in the bank file's score units (higher =
 *   more anomalous). Map and region coordinates in map pixels (map_size x map_size)
 *   unless named "input".
 *
 * Files (model and bank)
 * ----------------------
 * - They must be regular files: a directory, FIFO, socket or device is refused
 *   (MIAD_IO, naming what it is) without blocking.
 * - By default they are memory-mapped for the life of the engine. Replace a file by
 *   writing a new one and renaming it over the old (what miad's writers do): an open
 *   engine keeps using the old contents, a new engine gets the new file. Never rewrite
 *   or truncate a file in place while an engine has it open: before each inspection the
 *   engine compares the file's size, modification time and inode with those at open and
 *   returns MIAD_FILE_CHANGED when they differ (reopen the engine), but a change in the
 *   middle of a call cannot be detected and may crash the process (SIGBUS).
 * - miad_engine_options.in_memory = 1 reads both files into the engine's own memory
 *   instead: later changes to the files cannot affect it (costs their size in memory).
 * - A file with bytes after its recorded end is refused (MIAD_FILE_FORMAT), and so is a
 *   configuration value outside the range the engine can plan for (the message names
 *   the field).
 *
 * fork()
 * ------
 * An engine belongs to the process that opened it: its worker threads do not exist in a
 * child created by fork(). In the child, miad_inspect() on an inherited engine returns
 * MIAD_FORKED at once (no hang); miad_engine_close() releases the
 * handle without joining threads (MIAD_OK). Open new engines in the child (or fork
 * before opening any engine); the parent's engines are unaffected.
 *
 * Threading
 * ---------
 * - Distinct engines are independent: they may be used at the same time from different
 *   threads. Each engine runs its own worker threads (miad_engine_options.threads).
 * - One engine serves one call at a time. Calls on one engine must be serialised by the
 *   caller; a call that overlaps another call on the same engine is detected and returns
 *   MIAD_BUSY at once without waiting (the running call is not disturbed).
 * - A handle may be passed between threads.
 * - miad_engine_close() on an engine whose call is running returns MIAD_BUSY and leaves
 *   it open.
 * - Handles are checked: a closed handle, or a value that never came from
 *   miad_engine_open(), gives MIAD_INVALID_HANDLE (also for a second close), even
 *   after other engines were opened since. Handles carry a generation and a per-process
 *   random key: they are not small integers and not predictable.
 * - The stateless functions (miad_version, miad_build_info, miad_status_name,
 *   miad_*_default) may be called from any thread at any time.
 */
#ifndef MIAD_H
#define MIAD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version this header describes; miad_version() gives the library's. */
#define MIAD_VERSION "0.1.0"

/* ---- Status codes ------------------------------------------------------------------ */

typedef int32_t miad_status;

typedef enum miad_status_code {
    MIAD_OK = 0,
    /* A required pointer argument is NULL (the message names it). */
    MIAD_NULL_ARGUMENT = 1,
    /* An argument or option is out of range: engine options, thresholds, a path that is
     * empty or not UTF-8, a misaligned map buffer, a map buffer without want_map. */
    MIAD_INVALID_ARGUMENT = 2,
    /* The part is unusable as given: zero or oversized dimensions, a stride smaller
     * than a row, sizes that overflow, RGB and cloud of different sizes, a misaligned
     * cloud pointer. */
    MIAD_INVALID_INPUT = 3,
    /* Neither the RGB image nor the cloud can be used (both NULL, or both blank /
     * empty / non-finite; see the message). */
    MIAD_NO_USABLE_MODALITY = 4,
    /* A model or bank file is invalid: truncated, wrong magic, wrong kind, corrupt
     * (checksum), inconsistent manifest. */
    MIAD_FILE_FORMAT = 5,
    /* The bank file was built with another model file. */
    MIAD_MODEL_MISMATCH = 6,
    /* The operating system refused a file (missing, permissions). */
    MIAD_IO = 7,
    /* The model and bank configurations contradict each other or are out of range. */
    MIAD_CONFIG = 8,
    /* A data file is not what it claims to be (not produced by the current exports). */
    MIAD_DECODE = 9,
    /* The CUDA backend failed. */
    MIAD_CUDA = 10,
    /* A caller's buffer is too small (the message gives the size needed). */
    MIAD_BUFFER_TOO_SMALL = 11,
    /* The engine handle is closed or was never opened. */
    MIAD_INVALID_HANDLE = 12,
    /* Another call on the same engine is running. */
    MIAD_BUSY = 13,
    /* Internal error (a bug: please report it with the message). */
    MIAD_PANIC = 14,
    /* A mapped model or bank file was changed in place since the engine opened it
     * (size, modification time or inode differ): reopen the engine. See "Files" above. */
    MIAD_FILE_CHANGED = 15,
    /* The result would hold NaN or infinity (a faulty bank file or an overflow): nothing
     * is reported as a success; the message says which value. */
    MIAD_NON_FINITE = 16,
    /* The engine was opened by another process (this is a child after fork()). */
    MIAD_FORKED = 17
} miad_status_code;

/* ---- Result codes ------------------------------------------------------------------ */

typedef enum miad_verdict {
    MIAD_VERDICT_PASS = 0,
    /* score > part threshold */
    MIAD_VERDICT_FAIL = 1,
    /* grey_band_low <= score < grey_band_high (checked before the threshold), or an
     * incomplete part whose case the bank file has no statistics for (it was fitted
     * without RADAR): case_calibrated = 0 says so, and no region is reported. */
    MIAD_VERDICT_UNCERTAIN = 2
} miad_verdict;

/* Which modalities the part was decided with. */
typedef enum miad_case {
    MIAD_CASE_COMPLETE = 0,
    MIAD_CASE_RGB_ONLY = 1,
    MIAD_CASE_CLOUD_ONLY = 2
} miad_case;

/* Bits of miad_result.modalities_used. */
enum {
    MIAD_USED_RGB = 1,
    MIAD_USED_CLOUD = 2
};

/* Why a modality was not used (miad_result.rgb_status / cloud_status). */
typedef enum miad_modality_status {
    MIAD_MODALITY_USABLE = 0,
    /* Not given (NULL pointer). */
    MIAD_MODALITY_MISSING = 1,
    /* An image of a single colour. */
    MIAD_MODALITY_BLANK = 2,
    /* No valid point: every pixel has a zero coordinate. */
    MIAD_MODALITY_NO_POINTS = 3,
    /* No valid point, and some pixels have NaN or infinite coordinates. */
    MIAD_MODALITY_NON_FINITE = 4,
    /* Nothing left after plane removal and clustering. */
    MIAD_MODALITY_EMPTY_AFTER_CLEANING = 5,
    /* Fewer points than the point branch needs. */
    MIAD_MODALITY_TOO_FEW_POINTS = 6
} miad_modality_status;

/* Bits of miad_result.outputs_written. */
enum {
    MIAD_WROTE_MAP = 1,
    MIAD_WROTE_INPUT_MAP = 2
};

enum {
    /* Capacity of miad_result.regions. */
    MIAD_MAX_REGIONS = 64,
    /* Largest max_width / max_height an engine accepts. */
    MIAD_MAX_SIDE = 8192,
    /* Largest miad_engine_options.threads. */
    MIAD_MAX_THREADS = 256,
    /* A message buffer of this size holds every message in practice. */
    MIAD_ERR_BUF_LEN = 1024,
    /* Size of miad_engine_info.category, NUL included. */
    MIAD_CATEGORY_LEN = 64,
    /* Size of miad_engine_info.backend_note, NUL included. */
    MIAD_BACKEND_NOTE_LEN = 256
};

/* miad_engine_options.backend and miad_engine_info.backend_used. */
enum {
    /* The CPU backend (the reference; the default). */
    MIAD_BACKEND_CPU = 0,
    /* The CUDA backend. Never fails the open for want of a GPU: without a usable driver,
     * device or kernel the engine runs on the CPU and says why in
     * miad_engine_info.backend_note (nothing is printed). */
    MIAD_BACKEND_CUDA = 1,
    /* CUDA when a usable GPU is present, else the CPU (no message). */
    MIAD_BACKEND_AUTO = 2,
    /* The CUDA backend on the simulated device (a library built with the cuda-sim
     * feature): the kernels run in the SIMT emulator on the CPU. For tests; otherwise
     * the engine runs on the CPU and says why in backend_note. */
    MIAD_BACKEND_CUDA_SIM = 3
};

/* miad_engine_options.precision: arithmetic of the networks. */
enum {
    /* f32: the parity path, features within 1e-4 of the CPU's (the default). */
    MIAD_PRECISION_F32 = 0,
    /* bf16 operands with f32 accumulation: the fast path, features within 1e-2 of f32.
     * On the CUDA backend; on the CPU backend where it has AVX512-BF16 (elsewhere the CPU
     * stays f32 and backend_note says so). The bank search's results equal f32's. */
    MIAD_PRECISION_BF16 = 1
};

/* ---- Types ------------------------------------------------------------------------- */

/* An engine: a model file and a bank file, opened and planned. Opaque; the pointer value
 * is a checked token, never dereference it. */
typedef struct miad_engine miad_engine;

/* How an engine is created. Start from miad_engine_options_default(). Booleans: 0 = no,
 * anything else = yes. */
typedef struct miad_engine_options {
    /* sizeof(miad_engine_options); set by miad_engine_options_default(). */
    uint32_t struct_size;
    /* Worker threads, the calling thread included; 0 = one per available core. */
    uint32_t threads;
    /* Largest part (pixels) miad_inspect() will accept; buffers are planned for it.
     * 1..MIAD_MAX_SIDE. Default 1024 x 1024. */
    uint32_t max_width;
    uint32_t max_height;
    /* The parts are already cleaned (plane removed, padded, largest cluster kept), as
     * MVTec 3D-AD after its offline preprocessing: only resizing applies. Default 0. */
    uint32_t preprocessed;
    /* Verify every tensor checksum of both files when opening. Default 1. */
    uint32_t verify_checksums;
    /* MIAD_BACKEND_CPU (default), MIAD_BACKEND_CUDA, MIAD_BACKEND_AUTO or
     * MIAD_BACKEND_CUDA_SIM. */
    uint32_t backend;
    /* CUDA device ordinal, for the CUDA backend. Default 0. */
    uint32_t device;
    /* MIAD_PRECISION_F32 (default) or MIAD_PRECISION_BF16. */
    uint32_t precision;
    /* Read both files into the engine's own memory instead of mapping them (immune to
     * later changes of the files; costs their size in memory). Default 0. */
    uint32_t in_memory;
    /* The CPU bank search skips clusters of bank rows that cannot hold the nearest row,
     * using the partitions the fit stores in the bank file (the same results bit for bit;
     * bank files without partitions search every row). backend_note says which banks are
     * pruned. Default 1; 0 searches every row. Added after the first header: a struct
     * filled by that header's default (struct_size 40) gets 1. */
    uint32_t pruned_search;
} miad_engine_options;

/* One part. Either modality may be missing: pass NULL (its sizes are then ignored).
 * RGB: 8-bit, height x width x 3 (R, G, B), rows rgb_stride BYTES apart.
 * Cloud: organised, height x width x 3 floats (x, y, z), rows cloud_stride FLOATS apart;
 *   a pixel is a point only when its three coordinates are all non-zero and finite:
 *   (0, 0, 0), a zero coordinate, NaN or infinity mean "no point" (what most 3-D
 *   cameras send for "no return"); the pointer must be aligned for float.
 * Strides must be at least 3 x width. The library reads (height - 1) x stride + 3 x width
 * elements from each pointer and nothing else. When both are given they must have the
 * same width and height. */
typedef struct miad_part {
    const uint8_t *rgb;
    size_t rgb_width;
    size_t rgb_height;
    size_t rgb_stride;
    const float *cloud;
    size_t cloud_width;
    size_t cloud_height;
    size_t cloud_stride;
} miad_part;

/* Per-call options. Start from miad_inspect_options_default(). */
typedef struct miad_inspect_options {
    /* sizeof(miad_inspect_options); set by miad_inspect_options_default(). */
    uint32_t struct_size;
    /* Override the bank file's part / pixel threshold; NaN = use the bank file's. */
    float part_threshold;
    float pixel_threshold;
    /* Override the bank file's grey band [low, high): both NaN = the bank file's, both
     * set = this band (low <= high; low == high disables the band). */
    float grey_band_low;
    float grey_band_high;
    /* Compute the anomaly map (needed for the map buffers below). Default 1. */
    uint32_t want_map;
    /* Extract defect regions (connected components above the pixel threshold).
     * Default 1. */
    uint32_t want_regions;
    /* Optional outputs, written only when non-NULL (then want_map must be set):
     * map: the map_size x map_size anomaly map, row-major, map_len >= map_size^2
     *   floats (miad_engine_info.map_size);
     * input_map: the map resampled to the part's width x height pixels (undoing the
     *   padding of preprocessing), input_map_len >= width x height floats.
     * A buffer too small gives MIAD_BUFFER_TOO_SMALL before any work is done. */
    float *map;
    size_t map_len;
    float *input_map;
    size_t input_map_len;
} miad_inspect_options;

/* One defect region: an 8-connected component of map pixels above the pixel threshold,
 * in map pixels. */
typedef struct miad_region {
    /* Inclusive bounding box. */
    uint32_t x0;
    uint32_t y0;
    uint32_t x1;
    uint32_t y1;
    /* Pixels in the component. */
    uint32_t area;
    /* Largest and mean map value over the component. */
    float max;
    float mean;
} miad_region;

/* The result of one inspection. Output only: it need not be initialised, and it is
 * written only when miad_inspect() returns MIAD_OK. */
typedef struct miad_result {
    /* The part score (higher = more anomalous) and its verdict (miad_verdict). */
    float score;
    uint32_t verdict;
    /* The thresholds the verdict and the regions used (bank file's or overrides). */
    float part_threshold;
    float pixel_threshold;
    /* Re-weighted image score of each memory bank: xyz, rgb, fused (0 when absent). */
    float bank_scores[3];
    /* miad_case, MIAD_USED_* bits, and miad_modality_status of each modality. */
    uint32_t modality_case;
    uint32_t modalities_used;
    uint32_t rgb_status;
    uint32_t cloud_status;
    /* 1 when the case had its own fitted decision statistics; 0 for an incomplete part
     * whose case the bank file cannot decide: the verdict is then MIAD_VERDICT_UNCERTAIN
     * (never pass or fail from another case's thresholds) and there are no regions. */
    uint32_t case_calibrated;
    /* Side of the anomaly map. */
    uint32_t map_size;
    /* MIAD_WROTE_* bits: which map buffers were filled. */
    uint32_t outputs_written;
    /* The part's size (pixels). */
    uint32_t input_width;
    uint32_t input_height;
    /* Regions found in all, and how many are in regions[] (the strongest peaks first,
     * at most MIAD_MAX_REGIONS; regions_found > regions_count when some were left out). */
    uint32_t regions_found;
    uint32_t regions_count;
    /* Stage times of this part, seconds. */
    double time_preprocess_s;
    double time_rgb_s;
    double time_point_s;
    double time_fusion_s;
    double time_score_s;
    double time_total_s;
    miad_region regions[MIAD_MAX_REGIONS];
} miad_result;

/* What an engine was opened with and what its bank file holds. */
typedef struct miad_engine_info {
    uint32_t map_size;
    uint32_t threads;
    uint32_t max_width;
    uint32_t max_height;
    uint32_t preprocessed;
    /* The bank file's thresholds; grey band NaN when it has none. */
    float part_threshold;
    float pixel_threshold;
    float grey_band_low;
    float grey_band_high;
    /* Bit (1 << miad_case) set for each case with fitted decision statistics. */
    uint32_t cases_calibrated;
    /* The product category of the bank file, NUL-terminated (truncated). */
    char category[MIAD_CATEGORY_LEN];
    /* MIAD_BACKEND_CPU, MIAD_BACKEND_CUDA or MIAD_BACKEND_CUDA_SIM: what the engine runs
     * on. */
    uint32_t backend_used;
    /* What runs where, and why CUDA is not used when it was asked for, NUL-terminated. */
    char backend_note[MIAD_BACKEND_NOTE_LEN];
} miad_engine_info;

/* Layout checks; runtime/capi/mod.rs asserts the same numbers. */
#if defined(__cplusplus) && __cplusplus >= 201103L
#define MIAD_STATIC_ASSERT(cond, name) static_assert(cond, #name)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define MIAD_STATIC_ASSERT(cond, name) _Static_assert(cond, #name)
#else
#define MIAD_STATIC_ASSERT(cond, name) typedef char miad_static_assert_##name[(cond) ? 1 : -1]
#endif
MIAD_STATIC_ASSERT(sizeof(miad_engine_options) == 44, engine_options_size);
MIAD_STATIC_ASSERT(sizeof(miad_part) == 8 * sizeof(size_t), part_size);
MIAD_STATIC_ASSERT(sizeof(size_t) != 8 || sizeof(miad_inspect_options) == 64, inspect_options_size);
MIAD_STATIC_ASSERT(sizeof(miad_region) == 28, region_size);
MIAD_STATIC_ASSERT(sizeof(miad_result) == 1912, result_size);
MIAD_STATIC_ASSERT(offsetof(miad_result, regions_count) == 68, result_regions_count);
MIAD_STATIC_ASSERT(offsetof(miad_result, time_preprocess_s) == 72, result_times);
MIAD_STATIC_ASSERT(offsetof(miad_result, regions) == 120, result_regions);
MIAD_STATIC_ASSERT(sizeof(miad_engine_info) == 364, engine_info_size);
MIAD_STATIC_ASSERT(offsetof(miad_engine_info, category) == 40, engine_info_category);
MIAD_STATIC_ASSERT(offsetof(miad_engine_info, backend_note) == 108, engine_info_backend_note);

/* ---- Functions --------------------------------------------------------------------- */

/* The library version ("0.1.0"), static. */
const char *miad_version(void);

/* Writes "miad <version> backends=<list>" (plus the CUDA architectures compiled in when
 * built with CUDA) into buf, NUL-terminated. MIAD_NULL_ARGUMENT for a NULL buf,
 * MIAD_BUFFER_TOO_SMALL when it was truncated (128 bytes are enough). */
miad_status miad_build_info(char *buf, size_t len);

/* The name of a status code ("MIAD_OK", ...), or "MIAD_UNKNOWN_STATUS"; static. */
const char *miad_status_name(miad_status status);

/* Fill *out with the defaults. MIAD_NULL_ARGUMENT when out is NULL. */
miad_status miad_engine_options_default(miad_engine_options *out);
miad_status miad_inspect_options_default(miad_inspect_options *out);

/* Opens a model file and a bank file (UTF-8 paths, regular files, memory-mapped unless
 * options->in_memory; see "Files" above), checks that the bank
 * was built with this model, and plans every buffer for the maximum part size.
 * options may be NULL (defaults). On success *out is a new engine, owned by the caller
 * until miad_engine_close(); on failure *out is NULL. May take a while (checksums,
 * precomputation): do it at start-up. */
miad_status miad_engine_open(const char *model_path, const char *bank_path,
                             const miad_engine_options *options, miad_engine **out,
                             char *err_buf, size_t err_len);

/* Closes an engine: joins its worker threads, unmaps its files. NULL is a no-op
 * (MIAD_OK). MIAD_INVALID_HANDLE for a handle that is not open, MIAD_BUSY while a call
 * on it is running (it stays open). */
miad_status miad_engine_close(miad_engine *engine);

/* Fills *out with what the engine was opened with (map_size is the side the map buffer
 * needs). */
miad_status miad_engine_get_info(miad_engine *engine, miad_engine_info *out, char *err_buf,
                                 size_t err_len);

/* Inspects one part. options may be NULL (defaults: bank thresholds, map and regions
 * computed, no map buffers). On MIAD_OK *out holds the result and the requested map
 * buffers are filled; on failure *out is not written and the map buffers' contents are
 * unspecified.
 * No heap allocation when it succeeds; bounded time for a given part size. Thread use:
 * see the top of this file. */
miad_status miad_inspect(miad_engine *engine, const miad_part *part,
                         const miad_inspect_options *options, miad_result *out,
                         char *err_buf, size_t err_len);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MIAD_H */
