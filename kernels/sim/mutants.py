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
     "knn_f32: barrier after the tile load removed", "knn_f32"),
    ("knn.cu", "hi = min(n, lo + per);", "hi = min(n, lo + per - 1);", 0,
     "knn_f32: each warp's point range one short", "knn_f32"),
    ("knn.cu", "(db < tb[c] || j <= ti[c])", "(db < tb[c] || j < ti[c])", 0,
     "knn2_f32: tie-break at the bound flipped (<= to <)", "knn2"),
    ("knn.cu", "  __syncthreads();  // also: the minima are dead", "  // also: the minima are dead", 0,
     "knn2_f32: barrier after the radix select removed", "knn2"),
    ("knn.cu", "      if (r >= c) {", "      if (r > c) {", 0,
     "knn2_f32: radix-select rank comparison off by one", "knn2"),
    ("fps.cu", "if (db > bb || bi == FPS_NONE)", "if (db >= bb || bi == FPS_NONE)", 0,
     "fps_f32: ties to the highest index instead of the lowest", "fps_f32"),
    ("fps.cu", "    if (lane == 0) warp_best[warp] = FpsCand{bb, bi, bx, by, bz};\n    __syncthreads();",
     "    if (lane == 0) warp_best[warp] = FpsCand{bb, bi, bx, by, bz};", 0,
     "fps_f32: barrier after the warp candidates removed", "fps_f32"),
    ("fps.cu", "      if (lane == 0) wslot[s][warp] = make_uint2(mx, bal ? widx : FPS_NONE);\n    }\n    __syncthreads();",
     "      if (lane == 0) wslot[s][warp] = make_uint2(mx, bal ? widx : FPS_NONE);\n    }", 0,
     "fps2: barrier after the warp slots removed", "fps2"),
    ("fps.cu", "          fps2_mbar_arrive(bar0 + 8u * (u32)s);", "", 0,
     "fps2 (mbarrier exchange): the own message's mbarrier arrive dropped", "fps2_mbarrier"),
    ("fps.cu", "if (tid == 0) fps2_mbar_arm(bar0 + 8u * (u32)s, (u32)(nb - 1) * FPS2_MSG_BYTES);",
     "if (tid == 0) fps2_mbar_arm(bar0 + 8u * (u32)s, (u32)(nb - 2) * FPS2_MSG_BYTES);", 0,
     "fps2 (mbarrier exchange): re-arm expects one message too few", "fps2_mbarrier"),
    ("fps.cu", "      fps2_cluster_arrive(warp == 0);\n      fps2_cluster_wait();", "", 0,
     "fps2 (barrier exchange): the cluster barrier removed", "fps2_barrier"),
    ("fps.cu", "      if (lane < nb) {\n        const u32 dst", "      if (lane < nb - 1) {\n        const u32 dst", 0,
     "fps2: the last block of the cluster gets no message (bound shifted by one)", "fps2"),
    ("coreset.cu", "    __syncthreads();\n    if (threadIdx.x < len) qs[threadIdx.x]", "    if (threadIdx.x < len) qs[threadIdx.x]", 0,
     "coreset_cc_f32: barrier before the query chunk is overwritten removed", "coreset"),
    ("coreset.cu", "  if (lane == 0) warp_key[warp] = best;\n  __syncthreads();", "  if (lane == 0) warp_key[warp] = best;", 0,
     "coreset_update_f32: barrier after the warp keys removed", "coreset"),
    ("coreset.cu", "(u64)(~(u32)row)", "(u64)(row)", 0,
     "coreset_update_f32: ties to the highest row", "coreset"),
    ("gelu.cu", "if (i < n) {", "if (i <= n) {", 0,
     "bias_gelu_f32: bound shifted by one (writes one element past the end)", "gelu"),
    ("bank_search.cu", "            miad_cp_async_wait<1>();\n", "", 0,
     "bank_search_f16: cp.async wait before the barrier removed", "bank_"),
    ("bank_search.cu", "            __syncthreads();\n#pragma unroll 4", "#pragma unroll 4", 0,
     "bank_search_f32: barrier after the tile load removed", "bank_search_f32"),
    ("bank_search.cu", "        __syncthreads();\n        if (kc == k_chunks - 1) {", "        if (kc == k_chunks - 1) {", 0,
     "bank_search_f16: barrier before the next stage is overwritten removed", "bank_search_f16"),
    ("bank_search.cu", "        if (pair_less(ds, is, d, id)) {", "        if (ds <= d) {", 0,
     "bank_reduce_f32: ties to the later split (higher index)", "bank_"),
    ("bank_search.cu", "for (int r = 0; r < rerank; r++)", "for (int r = 0; r < rerank - 1; r++)", 0,
     "bank_rerank_f32: one winner fewer re-ranked (bound shifted by one)", "bank_"),
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
