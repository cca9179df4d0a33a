//! The two pieces of dense linear algebra the method needs, in f64: the eigen-decomposition
//! of a symmetric 3×3 matrix (the least-squares plane of SPEC §1) and the inverse of a
//! symmetric positive definite matrix (RADAR's per-case covariance, SPEC §9). Both are
//! small and fixed in shape, so a general linear-algebra crate would be all compile time.

/// Eigenvalues and unit eigenvectors of the symmetric matrix `a` by cyclic Jacobi
/// rotations. Returns `(values, vectors)` with `vectors[i]` the eigenvector of
/// `values[i]`, in no particular order. Converges quadratically; 3×3 needs a handful of
/// sweeps, the loop stops when the off-diagonal is negligible or after 50 sweeps.
pub fn symmetric_eigen3(a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    let mut m = a;
    // Columns of `v` accumulate the rotations: they become the eigenvectors.
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    let scale: f64 = m.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..50 {
        let off = m[0][1] * m[0][1] + m[0][2] * m[0][2] + m[1][2] * m[1][2];
        if off.sqrt() <= f64::EPSILON * scale * 1e-3 || off == 0.0 {
            break;
        }
        for (p, q) in [(0usize, 1usize), (0, 2), (1, 2)] {
            if m[p][q] == 0.0 {
                continue;
            }
            // The rotation angle that zeroes m[p][q] (the stable form: t = tan θ with
            // |θ| ≤ π/4).
            let theta = (m[q][q] - m[p][p]) / (2.0 * m[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // m ← Jᵀ m J, J the rotation in the (p, q) plane.
            for row in m.iter_mut() {
                let (mkp, mkq) = (row[p], row[q]);
                row[p] = c * mkp - s * mkq;
                row[q] = s * mkp + c * mkq;
            }
            let (mp, mq) = (m[p], m[q]);
            m[p] = std::array::from_fn(|k| c * mp[k] - s * mq[k]);
            m[q] = std::array::from_fn(|k| s * mp[k] + c * mq[k]);
            for row in v.iter_mut() {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let values = [m[0][0], m[1][1], m[2][2]];
    let vectors = [
        [v[0][0], v[1][0], v[2][0]],
        [v[0][1], v[1][1], v[2][1]],
        [v[0][2], v[1][2], v[2][2]],
    ];
    (values, vectors)
}

/// Inverse of the symmetric positive definite `n`×`n` matrix `a` (row-major), by Cholesky
/// factorisation. `None` when `a` is not positive definite (a pivot ≤ 0 or not finite).
pub fn invert_spd(a: &[f64], n: usize) -> Option<Vec<f64>> {
    if a.len() != n * n {
        return None;
    }
    // a = L Lᵀ, L lower triangular (row-major, upper part zero).
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            let x = a[i * n + j] - dot;
            if i == j {
                if !(x > 0.0 && x.is_finite()) {
                    return None;
                }
                l[i * n + i] = x.sqrt();
            } else {
                l[i * n + j] = x / l[j * n + j];
            }
        }
    }
    // inv(a) = inv(L)ᵀ inv(L); solve L X = I column by column, then form XᵀX.
    let mut linv = vec![0.0; n * n];
    for col in 0..n {
        for i in col..n {
            let rhs = if i == col { 1.0 } else { 0.0 };
            let dot: f64 = (col..i).map(|k| l[i * n + k] * linv[k * n + col]).sum();
            linv[i * n + col] = (rhs - dot) / l[i * n + i];
        }
    }
    let mut inv = vec![0.0; n * n];
    for r in 0..n {
        for c in 0..=r {
            let x: f64 = (r..n).map(|k| linv[k * n + r] * linv[k * n + c]).sum();
            inv[r * n + c] = x;
            inv[c * n + r] = x;
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                for j in 0..n {
                    c[i * n + j] += a[i * n + k] * b[k * n + j];
                }
            }
        }
        c
    }

    #[test]
    fn eigen3_reconstructs_random_and_degenerate_matrices() {
        let mut rng = Rng::new(7);
        let mut cases: Vec<[[f64; 3]; 3]> = vec![
            [[0.0; 3]; 3],
            [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]],
            // A flat cloud: one eigenvalue exactly zero.
            [[4.0, 1.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.0]],
        ];
        for _ in 0..200 {
            let b: Vec<f64> = (0..9).map(|_| rng.normal() as f64).collect();
            let mut m = [[0.0; 3]; 3];
            for i in 0..3 {
                for j in 0..3 {
                    m[i][j] = (0..3).map(|k| b[i * 3 + k] * b[j * 3 + k]).sum();
                }
            }
            cases.push(m);
        }
        for a in cases {
            let (vals, vecs) = symmetric_eigen3(a);
            let scale = a.iter().flatten().map(|x| x.abs()).fold(1e-300, f64::max);
            for i in 0..3 {
                for j in 0..3 {
                    let dot: f64 = (0..3).map(|k| vecs[i][k] * vecs[j][k]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-12, "eigenvectors not orthonormal");
                }
                // A v = λ v.
                for r in 0..3 {
                    let av: f64 = (0..3).map(|k| a[r][k] * vecs[i][k]).sum();
                    assert!(
                        (av - vals[i] * vecs[i][r]).abs() <= 1e-12 * scale,
                        "A v != λ v for {a:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn spd_inverse_times_matrix_is_identity_and_indefinite_is_refused() {
        let mut rng = Rng::new(3);
        for n in [1usize, 2, 3, 7, 16] {
            let b: Vec<f64> = (0..n * n).map(|_| rng.normal() as f64).collect();
            let mut a = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>()
                        + if i == j { 0.5 } else { 0.0 };
                }
            }
            let inv = invert_spd(&a, n).expect("SPD");
            let id = matmul(&a, &inv, n);
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((id[i * n + j] - want).abs() < 1e-9, "n={n}");
                }
            }
        }
        assert!(invert_spd(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
        assert!(invert_spd(&[0.0], 1).is_none());
        assert!(invert_spd(&[f64::NAN], 1).is_none());
        assert!(invert_spd(&[1.0, 0.0, 0.0], 2).is_none());
    }
}
