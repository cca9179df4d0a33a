#!/usr/bin/env python3
"""Mutation check of the emulated kernel tests: each mutant is one small, plausible kernel
bug; `cargo test --test kernels_sim` (filtered to the affected tests) must fail on it.

    python3 kernels/sim/mutants.py            # all mutants, prints a Markdown table
    python3 kernels/sim/mutants.py 3 7        # only mutants 3 and 7

Each mutant replaces the n-th occurrence of an exact snippet in one kernel file; the file
is restored afterwards (also on Ctrl-C). The emulator caches one shared object per kernel
file, so a mutant rebuilds only its own file. A surviving mutant is a missing test.
"""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (file, snippet, replacement, occurrence (0-based), what, test filter)
MUTANTS = [
    ("knn.cu", "    __syncthreads();\n    const int a = max(lo, t0)", "    const int a = max(lo, t0)", 0,
     "knn_heap_f32: barrier after the tile load removed", "knn_heap_f32"),
    ("knn.cu", "hi = min(n, lo + per);", "hi = min(n, lo + per - 1);", 0,
     "knn_heap_f32: each warp's point range one short", "knn_heap_f32"),
    ("knn.cu", "(db < tb[c] || j <= ti[c])", "(db < tb[c] || j < ti[c])", 0,
     "knn_select_f32: tie-break at the bound flipped (<= to <)", "knn_select"),
    ("knn.cu", "  __syncthreads();  // also: the minima are dead", "  // also: the minima are dead", 0,
     "knn_select_f32: barrier after the radix select removed", "knn_select"),
    ("knn.cu", "      if (r >= c) {", "      if (r > c) {", 0,
     "knn_select_f32: radix-select rank comparison off by one", "knn_select"),
    ("fps.cu", "if (db > bb || bi == FPS_NONE)", "if (db >= bb || bi == FPS_NONE)", 0,
     "fps_smem_f32: ties to the highest index instead of the lowest", "fps_smem_f32"),
    ("fps.cu", "    if (lane == 0) warp_best[warp] = FpsCand{bb, bi, bx, by, bz};\n    __syncthreads();",
     "    if (lane == 0) warp_best[warp] = FpsCand{bb, bi, bx, by, bz};", 0,
     "fps_smem_f32: barrier after the warp candidates removed", "fps_smem_f32"),
    ("fps.cu", "      if (lane == 0) wslot[s][warp] = make_uint2(mx, bal ? widx : FPS_NONE);\n    }\n    __syncthreads();",
     "      if (lane == 0) wslot[s][warp] = make_uint2(mx, bal ? widx : FPS_NONE);\n    }", 0,
     "fps_regs: barrier after the warp slots removed", "fps_regs"),
    ("fps.cu", "          fps_regs_mbar_arrive(bar0 + 8u * (u32)s);", "", 0,
     "fps_regs (mbarrier exchange): the own message's mbarrier arrive dropped", "fps_regs_mbarrier"),
    ("fps.cu", "if (tid == 0) fps_regs_mbar_arm(bar0 + 8u * (u32)s, (u32)(nb - 1) * FPS_REGS_MSG_BYTES);",
     "if (tid == 0) fps_regs_mbar_arm(bar0 + 8u * (u32)s, (u32)(nb - 2) * FPS_REGS_MSG_BYTES);", 0,
     "fps_regs (mbarrier exchange): re-arm expects one message too few", "fps_regs_mbarrier"),
    ("fps.cu", "      fps_regs_cluster_arrive(warp == 0);\n      fps_regs_cluster_wait();", "", 0,
     "fps_regs (barrier exchange): the cluster barrier removed", "fps_regs_barrier"),
    ("fps.cu", "      if (lane < nb) {\n        const u32 dst", "      if (lane < nb - 1) {\n        const u32 dst", 0,
     "fps_regs: the last block of the cluster gets no message (bound shifted by one)", "fps_regs"),
    ("coreset.cu", "    __syncthreads();\n    if (threadIdx.x < len) qs[threadIdx.x]", "    if (threadIdx.x < len) qs[threadIdx.x]", 0,
     "coreset_cc_f32: barrier before the query chunk is overwritten removed", "coreset"),
    ("coreset.cu", "  if (lane == 0) warp_key[warp] = best;\n  __syncthreads();", "  if (lane == 0) warp_key[warp] = best;", 0,
     "coreset_update_f32: barrier after the warp keys removed", "coreset"),
    ("coreset.cu", "(u64)(~(u32)row)", "(u64)(row)", 0,
     "coreset_update_f32: ties to the highest row", "coreset"),
    ("gelu.cu", "if (i < n) {", "if (i <= n) {", 0,
     "bias_gelu_f32: bound shifted by one (writes one element past the end)", "gelu"),
    ("embed.cu", "  }\n  __syncthreads();\n  for (int j = threadIdx.x; j < d; j += blockDim.x) {",
     "  }\n  for (int j = threadIdx.x; j < d; j += blockDim.x) {", 0,
     "pos_embed_f32: barrier after the shared hidden layer removed", "embed_position"),
    ("embed.cu", "if (r < rows) out[", "if (r <= rows) out[", 0,
     "pos_embed_f32: the last block's row bound shifted by one", "embed_position"),
    ("embed.cu", "for (int o = 16; o > 0; o >>= 1)", "for (int o = 8; o > 0; o >>= 1)", 0,
     "layernorm_rows: the warp sum's first butterfly step dropped", "embed_layernorm"),
    ("embed.cu", "if (row >= rows) return;", "if (row > rows) return;", 0,
     "layernorm_rows: row bound shifted by one", "embed_layernorm"),
    ("embed.cu", "__dmul_rn(__dadd_rn((double)o, 0.5), scale)", "__dmul_rn((double)o, scale)", 0,
     "pil_coeffs_f32: the half-pixel centre offset dropped", "embed_rgb"),
    ("embed.cu", "!(zero_mask && zero_mask[(long long)sy * w + sx])", "true", 0,
     "rgb_resize_h_f32: the zero mask ignored", "embed_rgb"),
    ("embed.cu", "floorf(__fadd_rn(v, 0.5f))", "floorf(v)", 0,
     "rgb_resize: the 8-bit store truncates instead of rounding half up", "embed_rgb"),
    ("embed.cu", "const int gy = row / grid, gx = row % grid;", "const int gx = row / grid, gy = row % grid;", 0,
     "im2col: patch rows transposed (gx, gy swapped)", "embed_im2col"),
    ("embed.cu", "y1 = ((oy + 1) * gi + go - 1) / go;", "y1 = ((oy + 1) * gi) / go;", 0,
     "adaptive_pool_f32: a bin's end rounded down instead of up", "embed_adaptive"),
    ("embed.cu", "v = __fadd_rn(cls[j], pos[j]);", "v = cls[j];", 0,
     "vit_tokens_f32: the class token without its position embedding", "embed_vit_tokens"),
    ("embed.cu", "  float acc = __fmul_rn(c[0], wr[0]);\n  acc = __fmaf_rn(c[1], wr[1], acc);\n  acc = __fmaf_rn(c[2], wr[2], acc);",
     "  float acc = __fmul_rn(c[2], wr[2]);\n  acc = __fmaf_rn(c[1], wr[1], acc);\n  acc = __fmaf_rn(c[0], wr[0], acc);", 0,
     "pos fc1: the three products summed in reverse order (a few ulp)", "embed_position"),
    ("embed.cu", "dst[(long long)r * ld_dst + c] = src[(long long)r * ld_src + c];",
     "dst[(long long)r * ld_dst + c] = src[(long long)r * ld_dst + c];", 0,
     "copy_rows_f32: source rows at the destination's stride", "embed_copy"),
    ("maps.cu", "const u64 key = ((u64)maps_ord(v) << 32) | (u64)(~(u32)j);", "const u64 key = ((u64)maps_ord(v) << 32) | (u64)(u32)j;", 0,
     "maps_bank_argmax: ties to the last patch instead of the first", "maps_bank"),
    ("maps.cu", "  s2[t] = k2;\n  __syncthreads();", "  s2[t] = k2;\n", 0,
     "maps_block_top3 (knn, finish): barrier after the shared top-3 store removed", "maps_bank"),
    ("maps.cu", "min(start + B.knn_chunk, B.rows_n)", "min(start + B.knn_chunk - 1, B.rows_n)", 0,
     "maps_bank_knn: each split's row range one short", "maps_bank"),
    ("maps.cu", "const int row = nb[t + 1];", "const int row = nb[t];", 0,
     "maps_bank_finish: re-weighting uses neighbours 0, 1 instead of 1, 2", "maps_bank"),
    ("maps.cu", "return m >= n ? period - 1 - m : m;", "return m >= n ? period - m : m;", 0,
     "maps_blur: scipy 'mirror' edges instead of 'reflect'", "maps_upsample"),
    ("maps.cu", "w[k] = wts.w[k];\n  __syncthreads();", "w[k] = wts.w[k];\n", 0,
     "maps_blur: barrier after the taps' load removed", "maps_upsample"),
    ("maps.cu", "    if (x + 1 < s && V[up + 1] != MAPS_NONE) maps_unite(labels, (u32)i, (u32)(up + 1));\n", "", 0,
     "maps_label_merge: north-east neighbour not linked", "maps_regions"),
    ("maps.cu", "if (w <= hist[d]) break;", "if (w < hist[d]) break;", 0,
     "maps_regions_select: radix-select digit comparison off by one", "maps_regions"),
    ("maps.cu", "for (int i = (int)root + t; i < s2;", "for (int i = (int)root + 1 + t; i < s2;", 0,
     "maps_regions_stats: the scan starts one pixel after the root", "maps_regions"),
    ("maps.cu", "const bool start = (v == v) && !(v <= t);", "const bool start = v > t;", 0,
     "maps_pixels: NaN threshold starts no region (CPU: every non-NaN pixel)", "maps_regions"),
    ("maps.cu", "score >= p.band_lo && score < p.band_hi", "score >= p.band_lo && score <= p.band_hi", 0,
     "maps_part: grey band closed at the top", "maps_part"),
    ("pfa.cu", "    if (d < d2) {", "    if (d <= d2) {", 0,
     "pfa_nn3_f32: distance ties to the highest center", "pfa_nn3"),
    ("pfa.cu", "  __syncthreads();\n  const int used", "  const int used", 0,
     "pfa_project_f32: barrier after the shared (center, weight) list removed", "pfa_project"),
    ("preprocess.cu", "if (x == 0.f || y == 0.f || z == 0.f) return false;", "if (x == 0.f && y == 0.f && z == 0.f) return false;", 0,
     "preprocess_cloud_f32: only all-zero points dropped (pre-SPEC 1.5 rule)", "preprocess"),
    ("preprocess.cu", "    if (!isfinite(x) || !isfinite(y) || !isfinite(z)) return false;\n", "", 0,
     "preprocess_cloud_f32: non-finite points kept", "preprocess"),
    ("preprocess.cu", "  if (lane == 31) warp_sum[warp] = incl;\n  __syncthreads();", "  if (lane == 31) warp_sum[warp] = incl;", 0,
     "preprocess_cloud_f32: barrier after the warp sums removed", "preprocess"),
    ("group_encoder.cu", "    __syncthreads();\n    {  // conv4", "    {  // conv4", 0,
     "group_encoder_f32: barrier between conv3 and conv4 removed", "group_encoder"),
    ("group_encoder.cu", "for (int q0 = 0; q0 < s; q0 += pc)", "for (int q0 = 0; q0 + pc < s; q0 += pc)", 0,
     "group_encoder_f32: last point chunk skipped", "group_encoder"),
    ("maps.cu", "const int js = (v0 != v0) ? 0 : (int)", "const int js = (int)", 0,
     "maps_bank_argmax: a NaN at patch 0 no longer wins (the CPU's first maximum by `>`)", "maps_bank"),
    ("bank_search.cu", "            miad_cp_async_wait<1>();\n", "", 0,
     "bank_search_f16: cp.async wait before the barrier removed", "bank_"),
    ("bank_search.cu", "            __syncthreads();\n#pragma unroll 4", "#pragma unroll 4", 0,
     "bank_search_f32: barrier after the tile load removed", "bank_search_f32"),
    ("bank_search.cu", "        __syncthreads();\n        if (kc == k_chunks - 1) {", "        if (kc == k_chunks - 1) {", 0,
     "bank_search_f16: barrier before the next stage is overwritten removed", "bank_search_f16"),
    ("bank_search.cu", "        if (pair_less(ds, is, d, id)) {", "        if (ds <= d) {", 0,
     "bank_reduce_f32: ties to the later split (higher index)", "bank_"),
    ("bank_search.cu", "        if (complete(s)) continue;\n", "        continue;\n", 0,
     "bank_finish_exact: a split that may hold more candidates than it kept is not scanned",
     "bank_search_f16_equals_the_f32_path_on_near_duplicates"),
    ("attention.cu", "            cp_async_wait<1>();\n", "", 0,
     "attention_bf16: cp.async wait before the barrier removed", "attention_bf16"),
    ("attention.cu", "        __syncthreads();\n        const int kn", "        const int kn", 0,
     "attention_f32: barrier after the K/V tile load removed", "attention_f32"),
    ("attention.cu", "        }\n        __syncthreads();\n    }\n    // Reduce the row sums", "        }\n    }\n    // Reduce the row sums", 0,
     "attention_bf16: barrier before the next K/V stage is overwritten removed", "attention_bf16"),
    ("attention.cu", "const bool ok = key + (e & 1) < n_tokens;", "const bool ok = key + (e & 1) <= n_tokens;", 0,
     "attention_bf16: key mask one past the end", "attention_bf16"),
    ("bank_search.cu", "k0 += F_KC) {\n            __syncthreads();\n", "k0 += F_KC) {\n", 0,
     "bank_search_f32: barrier before the tile is overwritten removed", "bank_search_f32"),
    ("attention.cu", "k0 += ATT_TILE) {\n        __syncthreads();\n", "k0 += ATT_TILE) {\n", 0,
     "attention_f32: barrier before the K/V tile is overwritten removed", "attention_f32"),
    ("bank_search.cu", "if (pair_less(red_d[x][r], red_i[x][r], d, id))", "if (red_d[x][r] <= d)", 0,
     "bank_search_f32: ties across a query row's threads to the higher index", "bank_search_f32"),
    ("bank_search.cu", "                if (pair_less(od, oi, d, id)) {", "                if (od <= d) {", 0,
     "bank_search_f16: ties within a quad to the higher index", "bank_search_f16"),
    ("bank_search.cu", "if (pair_less(red_d[1][r], red_i[1][r], d, id))", "if (red_d[1][r] <= d)", 0,
     "bank_search_f16: ties across the two warp halves to the higher bank half", "bank_search_f16"),
    ("attention.cu", "const int end_tile = min(n_tiles, first_tile + tiles_per_split);",
     "const int end_tile = min(n_tiles, first_tile + tiles_per_split - 1);", 0,
     "attention_bf16: each key split one tile short", "attention_bf16"),
    ("attention.cu", "l = fmaf(ml[2 * p + 1], exp2f(ml[2 * p] - m), l);", "l += ml[2 * p + 1];", 0,
     "attention_combine_bf16: split row sums added without rescaling to the common maximum", "attention_bf16"),
    ("embed.cu", "  __syncwarp();\n  const float sum", "  const float sum", 0,
     "layernorm_rows_bf16: shift read no longer ordered before the x + pos store", "embed_layernorm"),
    ("embed.cu", "s = __fadd_rn(s, __fsub_rn(v, shift));", "s = __fadd_rn(s, v);", 0,
     "layernorm_rows_bf16: f32 sum without the shift", "embed_layernorm"),
    ("embed.cu", "const float var = __fdiv_rn(emb_warp_sum(v2), (float)cols);",
     "const float var = __fdiv_rn(emb_warp_sum(v2), (float)(cols - 1));", 0,
     "layernorm_rows_bf16: unbiased variance (n − 1)", "embed_layernorm"),
    ("group_encoder.cu", "for (int p = 1; p < s; ++p) m = fmaxf", "for (int p = 1; p < s - 1; ++p) m = fmaxf", 0,
     "group_max_bf16: last row of each group left out of the max", "group_encoder_bf16"),
    ("group_encoder.cu", "out[i] = m + bias[o];", "out[i] = m;", 0,
     "group_max_bias_f32: conv4's bias dropped", "group_encoder_bf16"),
    ("group_encoder.cu", "h[i] = __float2bfloat16_rn(fmaxf(v, 0.f));", "h[i] = __float2bfloat16_rn(v);", 0,
     "group_bias_relu_bf16: ReLU dropped", "group_encoder_bf16"),
    ("group_encoder.cu", "v = fmaf(w1t[2 * c1 + o], x[2], v);\n  h1[i]", "v = fmaf(w1t[2 * c1 + o], x[1], v);\n  h1[i]", 0,
     "group_conv1_bf16: z coordinate read as y", "group_encoder_bf16"),
    ("group_encoder.cu", "if (i >= (long long)rows * c1) return;", "if (i > (long long)rows * c1) return;", 0,
     "group_conv1_bf16: bound check one past the end", "group_encoder_bf16"),
    ("train_radar.cu", "    hi = i < split ? split : cols;", "    hi = cols;", 0,
     "softmax_rows_f32: eq. 7's mask lets the first group see the second", "train_radar_masked_softmax"),
    ("train_radar.cu", "dr[c] = __fmul_rn(__fmul_rn(pr[c], __fsub_rn(dr[c], dot)), scale);",
     "dr[c] = __fmul_rn(__fmul_rn(pr[c], dr[c]), scale);", 0,
     "softmax_backward_f32: the row's dot product dropped", "train_radar_masked_softmax"),
    ("train_radar.cu", "__fsub_rn(__fmul_rn(dar[c], gamma[c]), mean_g)", "__fmul_rn(dar[c], gamma[c])", 0,
     "layernorm_backward_f32: the mean term dropped", "train_radar_layernorm"),
    ("train_radar.cu", "    dy[i] = __fmul_rn(pre, sc);", "    dy[i] = pre;", 0,
     "scale_backward_f32: the scale's input gradient not scaled", "train_radar_accumulating"),
    ("train_radar.cu", "    if (idx[r] == t) acc", "    if (idx[r] >= t) acc", 0,
     "scatter_add_rows_f32: rows added to the wrong tokens", "train_radar_row_gather"),
]


def apply(path, snippet, repl, occ):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    pos = -1
    for _ in range(occ + 1):
        pos = text.find(snippet, pos + 1)
        if pos < 0:
            raise SystemExit(f"{path}: snippet not found: {snippet!r}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:pos] + repl + text[pos + len(snippet):])
    return text


def run_tests(filt):
    cmd = ["cargo", "test", "-q", "--test", "kernels_sim", "--", filt]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        out = p.stdout + p.stderr
        rc = p.returncode
    except subprocess.TimeoutExpired:
        return "killed (timeout)", time.time() - t0
    if rc == 0:
        return "SURVIVED", time.time() - t0
    # The first line of the first failure explains the kill.
    why = ""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("---- ") and i + 1 < len(lines):
            why = lines[i + 1].strip()
            break
    if not why:
        why = next((l for l in lines if "error" in l.lower()), "test binary failed")
    return "killed: " + why[:140].replace("|", "/"), time.time() - t0


def main():
    pick = {int(a) for a in sys.argv[1:]}
    rows = []
    for i, (fname, snip, repl, occ, what, filt) in enumerate(MUTANTS, 1):
        if pick and i not in pick:
            continue
        path = os.path.join(ROOT, "kernels", fname)
        orig = apply(path, snip, repl, occ)
        try:
            result, dt = run_tests(filt)
        finally:
            with open(path, "w", encoding="utf-8") as f:
                f.write(orig)
        rows.append((i, fname, what, result, dt))
        print(f"{i:2} {fname:12} {what}: {result} ({dt:.0f} s)", file=sys.stderr, flush=True)
    print("| # | file | mutation | result |")
    print("|---|------|----------|--------|")
    for i, fname, what, result, _ in rows:
        print(f"| {i} | {fname} | {what} | {result} |")
    if any(r[3] == "SURVIVED" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
