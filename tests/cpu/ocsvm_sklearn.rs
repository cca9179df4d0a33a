//! The linear OCSVM against scikit-learn's SGDOneClassSVM on the fixture written by
//! tests/reference/ocsvm_reference.py.

use miad::fit::ocsvm::{fit, fit_with_report, OcSvmParams};
use safetensors::SafeTensors;

fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap();
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for k in i..=j {
            r[idx[k]] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let mut num = 0.0;
    let mut da = 0.0;
    let mut db = 0.0;
    for (x, y) in ra.iter().zip(&rb) {
        num += (x - ma) * (y - mb);
        da += (x - ma).powi(2);
        db += (y - mb).powi(2);
    }
    num / (da * db).sqrt()
}

#[test]
fn decision_scores_rank_correlate_with_sklearn() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ocsvm_sklearn.safetensors"
    ))
    .unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (train, test) = (tensor(&st, "train"), tensor(&st, "test"));
    let want = tensor(&st, "decision");
    let coef = tensor(&st, "coef");
    let offset = tensor(&st, "offset")[0];
    let dim = coef.len();
    for seed in [0u64, 1, 2] {
        let params = OcSvmParams {
            seed,
            ..Default::default()
        };
        let (svm, report) = fit_with_report(&train, dim, &params).unwrap();
        let got: Vec<f64> = test
            .chunks_exact(dim)
            .map(|x| svm.decision(x) as f64)
            .collect();
        let want64: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        let rho = spearman(&got, &want64);
        eprintln!(
            "seed {seed}: w {:?} offset {} (sklearn {coef:?} {offset}), epochs {}, rho {rho}",
            svm.w, svm.offset, report.epochs
        );
        assert!(rho > 0.999, "spearman {rho}");
        // Same optimum: coefficients and offset close to sklearn's (different shuffles).
        for (a, b) in svm.w.iter().zip(&coef) {
            assert!((a - b).abs() < 0.05 * b.abs().max(0.1), "{a} vs {b}");
        }
        assert!((svm.offset - offset).abs() < 0.05 * offset.abs());
        // miad's score (w·x) is higher for the injected anomalies than for the train set.
        let train_mean: f32 =
            train.chunks_exact(dim).map(|x| svm.score(x)).sum::<f32>() / (train.len() / dim) as f32;
        let anomalous_mean: f32 = test[..150 * dim]
            .chunks_exact(dim)
            .map(|x| svm.score(x))
            .sum::<f32>()
            / 150.0;
        assert!(anomalous_mean > train_mean);
        assert!(svm.w.iter().all(|&v| v > 0.0));
    }
}

#[test]
fn deterministic_for_a_seed_and_errors_on_bad_input() {
    let data: Vec<f32> = (0..300).map(|i| ((i * 37) % 101) as f32 / 50.0).collect();
    let p = OcSvmParams::default();
    assert_eq!(fit(&data, 3, &p).unwrap(), fit(&data, 3, &p).unwrap());
    assert!(fit(&data, 7, &p).is_err());
    assert!(fit(&[], 3, &p).is_err());
    assert!(fit(&[1.0, f32::NAN, 2.0], 3, &p).is_err());
    let bad = OcSvmParams {
        nu: 0.0,
        ..Default::default()
    };
    assert!(fit(&data, 3, &bad).is_err());
}
