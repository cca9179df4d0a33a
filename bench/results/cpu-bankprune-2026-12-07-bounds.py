"""Offline analysis of exact pruning bounds for the nearest-bank-row search (issue 20).

Input: a folder written by `MIAD_SCORE_DUMP=DIR cargo bench --bench score_stage`
(bank rows, norms, partition, normalised queries). Usage:
    python3 cpu-bankprune-2026-12-07-bounds.py DIR BANK DIM [MAX_QUERIES]
For each query the true d² to every row is computed in f64; a pair "must be computed"
when bound² − E ≤ best (the final best, so the figures are slightly optimistic for a
search that keeps a running best). E: the rounding margin of the search's computed d²,
either `gemm_form_bound` with the bank's largest norm (as the ball-bound search uses) or
the per-pair margin of cpu::bank_proj (weighted partial sums). "strips": a row computed
for a strip of 32 queries grouped by nearest centre when any of them needs it.
"""
import sys
import numpy as np

D, name, dim = sys.argv[1], sys.argv[2], int(sys.argv[3])
maxq = int(sys.argv[4]) if len(sys.argv) > 4 else 6272
B = np.fromfile(f"{D}/{name}_bank.f32", np.float32).reshape(-1, dim)
Q = np.fromfile(f"{D}/{name}_queries.f32", np.float32).reshape(-1, dim)[:maxq]
order = np.fromfile(f"{D}/{name}_order.u32", np.uint32)
starts = np.fromfile(f"{D}/{name}_starts.u32", np.uint32)
radii = np.fromfile(f"{D}/{name}_radii.f32", np.float32).astype(np.float64)
n, m, k = len(B), len(Q), len(radii)
u = 2.0**-24
g = (dim + 2) * u / (1 - (dim + 2) * u)
Bd, Qd = B.astype(np.float64), Q.astype(np.float64)
qq, bb = (Qd * Qd).sum(1), (Bd * Bd).sum(1)
D2 = np.maximum(qq[:, None] - 2 * Qd @ Bd.T + bb[None, :], 0)
best = D2.min(1)
Qn, Bn = np.sqrt(qq), np.sqrt(bb)
E_ball = ((2 * g + 3 * u) * (Qn + Bn.max()) ** 2 * (1 + 2**-20))[:, None]
w = dim - np.arange(dim) + 1.0
Aq, Ab = np.sqrt((Qd**2) @ w), np.sqrt((Bd**2) @ w)
eq = np.abs((Q * Q).sum(1, dtype=np.float32) - qq)
eb = np.abs((B * B).sum(1, dtype=np.float32) - bb)
E_pair = (2 * u * (1 + u) ** (dim + 2) * Aq[:, None] * Ab[None, :] + eq[:, None] + eb[None, :]
          + 6 * u * (qq[:, None] + bb[None, :]))
ans = D2.argmin(1)
print(f"== {name}: {n} rows x {dim}, {m} queries, {k} clusters")
print(f"  best d2 median {np.median(best):.3f} (p10 {np.percentile(best, 10):.3f}, p90 "
      f"{np.percentile(best, 90):.3f}); |q|^2 median {np.median(qq):.0f}, |b|^2 median {np.median(bb):.0f}")
print(f"  E at the answer, median: ball search's {np.median(E_ball):.3f}, per pair "
      f"{np.median(E_pair[np.arange(m), ans]):.3f}")
print(f"  exact bound (d2 itself): computed {np.mean(D2 - E_ball <= best[:, None]):.4f} "
      f"with E_ball, {np.mean(D2 - E_pair <= best[:, None]):.4f} with E_pair, "
      f"{np.mean(D2 <= best[:, None]):.5f} with no margin")

owner = np.empty(n, np.int64)
for c in range(k):
    owner[order[starts[c]:starts[c + 1]]] = c
C = Bd[:k]
QC = np.sqrt(np.maximum(qq[:, None] - 2 * Qd @ C.T + (C * C).sum(1)[None, :], 0))
qsort = np.lexsort((np.arange(m), QC.argmin(1)))
ball = np.maximum(QC[:, owner] - radii[owner][None, :], 0) ** 2
ring = np.abs(QC[:, owner] - np.sqrt(((Bd - C[owner]) ** 2).sum(1))[None, :]) ** 2


def report(lb2, tag):
    out = []
    for E in (E_ball, E_pair):
        need = lb2 - E <= best[:, None]
        s = need[qsort]
        strips = sum(s[a:a + 32].any(0).sum() * min(32, m - a) for a in range(0, m, 32))
        out.append(f"{need.mean():.4f} / strips {strips / (m * n):.4f}")
    print(f"  {tag:34s} E_ball: {out[0]:24s} E_pair: {out[1]}")


report(ball, "ball (cluster radius)")
report(ring, "ring (per-row |q-c| - |b-c|)")
mu = Bd.mean(0)
Bc, Qc = Bd - mu, Qd - mu
ev, V = np.linalg.eigh(Bc.T @ Bc / n)
ev, V = ev[::-1], V[:, ::-1]
print("  spectrum about the mean, variance in the top k:",
      ", ".join(f"{kk}: {ev[:kk].sum() / ev.sum():.3f}" for kk in (1, 4, 16, 32, 64, 128)))
for kk in (8, 16, 32, 64, 128):
    pb, pq = Bc @ V[:, :kk], Qc @ V[:, :kk]
    proj = np.maximum((pq * pq).sum(1)[:, None] - 2 * pq @ pb.T + (pb * pb).sum(1)[None, :], 0)
    rb = np.sqrt(np.maximum((Bc * Bc).sum(1) - (pb * pb).sum(1), 0))
    rq = np.sqrt(np.maximum((Qc * Qc).sum(1) - (pq * pq).sum(1), 0))
    report(np.maximum(ball, proj + (rq[:, None] - rb[None, :]) ** 2), f"ball + projection k={kk}")
    if kk == 32:
        report(np.maximum(ball, proj), "ball + projection k=32, no ring")
