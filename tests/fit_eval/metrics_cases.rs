//! Hand-computed cases for the SPEC §10 metrics.

use miad::eval::metrics::{
    aupro, format_table, i_auroc, integrate_to, label_regions_8, p_auroc, Aupro, MetricsRow,
};
use miad::util::rng::Rng;

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
}

#[test]
fn i_auroc_plain_and_ties() {
    close(
        i_auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap(),
        0.75,
    );
    // pos {1,2} vs neg {1,2}: 0.5 + 0 + 1 + 0.5 over 4 pairs
    close(
        i_auroc(&[1.0, 1.0, 2.0, 2.0], &[false, true, false, true]).unwrap(),
        0.5,
    );
    close(
        i_auroc(&[0.5, 0.5, 0.5], &[false, true, true]).unwrap(),
        0.5,
    );
    // perfect and inverted separation
    close(
        i_auroc(&[1.0, 2.0, 3.0], &[false, true, true]).unwrap(),
        1.0,
    );
    close(
        i_auroc(&[3.0, 2.0, 1.0], &[false, true, true]).unwrap(),
        0.0,
    );
    // pos 2 ties one neg 2 and beats neg 1: (1 + 0.5) / 2
    close(
        i_auroc(&[1.0, 2.0, 2.0], &[false, false, true]).unwrap(),
        0.75,
    );
}

#[test]
fn degenerate_inputs_are_errors_not_nan() {
    assert!(i_auroc(&[1.0, 2.0], &[true, true]).is_err());
    assert!(i_auroc(&[1.0, 2.0], &[false, false]).is_err());
    assert!(i_auroc(&[1.0], &[true, false]).is_err());
    assert!(i_auroc(&[f32::NAN, 1.0], &[true, false]).is_err());
    assert!(i_auroc(&[], &[]).is_err());
    let map = [0.0f32; 4];
    assert!(p_auroc(&[(&map, &[0u8; 4])]).is_err());
    assert!(p_auroc(&[(&map, &[1u8; 4])]).is_err());
    assert!(p_auroc(&[(&map, &[1u8; 3])]).is_err());
    assert!(aupro(&[(&map, &[0u8; 4])], 2, 2).is_err());
    assert!(aupro(&[(&map, &[255u8; 4])], 2, 2).is_err());
    assert!(aupro(&[(&map, &[0u8; 4])], 3, 2).is_err());
}

fn brute_auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (i, &si) in scores.iter().enumerate() {
        if !labels[i] {
            continue;
        }
        for (j, &sj) in scores.iter().enumerate() {
            if labels[j] {
                continue;
            }
            den += 1.0;
            num += if si > sj {
                1.0
            } else if si == sj {
                0.5
            } else {
                0.0
            };
        }
    }
    num / den
}

#[test]
fn p_auroc_matches_pairwise_count_with_ties() {
    let mut rng = Rng::new(11);
    let mut maps = Vec::new();
    let mut masks = Vec::new();
    for _ in 0..3 {
        let map: Vec<f32> = (0..400).map(|_| (rng.below(20) as f32) * 0.25).collect();
        let mask: Vec<u8> = map
            .iter()
            .map(|&s| u8::from(s + rng.uniform() * 3.0 > 4.0))
            .collect();
        maps.push(map);
        masks.push(mask);
    }
    let parts: Vec<(&[f32], &[u8])> = maps
        .iter()
        .zip(&masks)
        .map(|(a, b)| (a.as_slice(), b.as_slice()))
        .collect();
    let all_s: Vec<f32> = maps.concat();
    let all_l: Vec<bool> = masks.concat().iter().map(|&m| m > 0).collect();
    let want = brute_auc(&all_s, &all_l);
    close(p_auroc(&parts).unwrap(), want);
    close(i_auroc(&all_s, &all_l).unwrap(), want);
    assert!(want > 0.6 && want < 1.0);
}

#[test]
fn eight_connectivity_joins_diagonals() {
    // x . . .
    // . x . .
    // . . . .
    // . . . x
    let mut mask = [0u8; 16];
    mask[0] = 1;
    mask[5] = 1;
    mask[15] = 200;
    let (labels, n) = label_regions_8(&mask, 4, 4);
    assert_eq!(n, 2);
    assert_eq!(labels[0], labels[5]);
    assert_ne!(labels[0], labels[15]);
    // An anti-diagonal chain and a 4-connected blob.
    let mut m2 = [0u8; 16];
    m2[3] = 1;
    m2[6] = 1;
    m2[9] = 1;
    m2[12] = 1;
    assert_eq!(label_regions_8(&m2, 4, 4).1, 1);
    // Regions do not wrap around the row end.
    let mut m3 = [0u8; 16];
    m3[3] = 1;
    m3[4] = 1;
    assert_eq!(label_regions_8(&m3, 4, 4).1, 2);
}

/// Map whose defect-free pixels score 0, 1, 2, ... in raster order and whose defect
/// pixels get `region_scores` in order.
fn part(mask: &[u8], region_scores: &[f32]) -> Vec<f32> {
    let mut next_neg = 0.0;
    let mut it = region_scores.iter();
    mask.iter()
        .map(|&m| {
            if m > 0 {
                *it.next().unwrap()
            } else {
                next_neg += 1.0;
                next_neg - 1.0
            }
        })
        .collect()
}

#[test]
fn aupro_single_region() {
    // Region fully above every defect-free score: PRO = 1 everywhere.
    let mut mask = vec![0u8; 144];
    mask[13] = 1;
    mask[14] = 1;
    let map = part(&mask, &[1000.0, 1000.0]);
    close(aupro(&[(&map, &mask)], 12, 12).unwrap(), 1.0);
    // Region fully below: PRO = 0.
    let map = part(&mask, &[-1.0, -1.0]);
    close(aupro(&[(&map, &mask)], 12, 12).unwrap(), 0.0);
}

#[test]
fn aupro_first_threshold_step() {
    // 100 defect-free pixels scoring 0..99: t_k = k, FPR(t_k) = (99 - k) / 100.
    // The region (one pixel at 98.5) is above every threshold but t_99 = 99, so the curve
    // goes (0, 0) -> (0.01, 1) -> ... -> (0.3, 1): area 0.005 + 0.29 = 0.295.
    let mut mask = vec![0u8; 101];
    mask[100] = 1;
    let map = part(&mask, &[98.5]);
    close(aupro(&[(&map, &mask)], 101, 1).unwrap(), 0.295 / 0.3);
    let mut acc = Aupro::new(101, 1);
    acc.push(&map, &mask).unwrap();
    let curve = acc.curve().unwrap();
    assert_eq!(curve.len(), 100);
    assert_eq!(curve[0].threshold, 99.0);
    assert_eq!(curve[0].fpr, 0.0);
    assert_eq!(curve[99].threshold, 0.0);
    close(curve[99].fpr, 0.99);
    close(curve[70 - 1].fpr, 0.69);
}

#[test]
fn aupro_several_regions_mean_per_region_not_per_pixel() {
    // Region A: 1 pixel above everything (PRO 1). Region B: 4 pixels, 1 above (PRO 0.25).
    // Mean over regions 0.625 at every threshold (pixel-weighted would be 0.4).
    let mut mask = vec![0u8; 144];
    mask[0] = 1;
    for i in [50, 51, 62, 63] {
        mask[i] = 1;
    }
    let map = part(&mask, &[1000.0, 1000.0, -1.0, -1.0, -1.0]);
    close(aupro(&[(&map, &mask)], 12, 12).unwrap(), 0.625);
    // The same regions split over two parts give the same value.
    let mut m1 = vec![0u8; 144];
    m1[0] = 1;
    let mut m2 = vec![0u8; 144];
    for i in [50, 51, 62, 63] {
        m2[i] = 1;
    }
    let a = part(&m1, &[1000.0]);
    let b = part(&m2, &[1000.0, -1.0, -1.0, -1.0]);
    close(aupro(&[(&a, &m1), (&b, &m2)], 12, 12).unwrap(), 0.625);
}

#[test]
fn aupro_diagonal_pixels_are_one_region() {
    // {(0,0),(1,1)} one region scoring (1000, -1) -> 0.5; {(5,5)} -> 1. Mean 0.75
    // (4-connectivity would give three regions and 2/3).
    let mut mask = vec![0u8; 144];
    mask[0] = 1;
    mask[13] = 1;
    mask[65] = 1;
    let map = part(&mask, &[1000.0, -1.0, 1000.0]);
    close(aupro(&[(&map, &mask)], 12, 12).unwrap(), 0.75);
}

#[test]
fn aupro_interpolates_at_0_3() {
    // 50 defect-free pixels at 0 and 50 at 1: thresholds t_0..t_49 = 0, t_50..t_99 = 1.
    // FPR is 0 at t = 1 and 0.5 at t = 0; the region (score 0.5) has PRO 0 and 1 there.
    // The curve (0, 0) -> (0.5, 1) is interpolated at 0.3 to PRO 0.6: area 0.09, AUPRO 0.3.
    let mut mask = vec![0u8; 101];
    mask[100] = 1;
    let mut map: Vec<f32> = (0..101).map(|i| if i < 50 { 0.0 } else { 1.0 }).collect();
    map[100] = 0.5;
    close(aupro(&[(&map, &mask)], 101, 1).unwrap(), 0.3);
    // All defect-free pixels tied: FPR stays 0, the closing point (1, 1) decides.
    let mut map2 = vec![0.0f32; 101];
    map2[100] = 0.5;
    // curve (0, 1) ... (0, 1), (1, 1): AUPRO 1.
    close(aupro(&[(&map2, &mask)], 101, 1).unwrap(), 1.0);
}

#[test]
fn trapezoid_with_interpolation() {
    let pts = [(0.0, 0.0), (0.2, 0.2), (0.4, 0.6), (1.0, 1.0)];
    close(integrate_to(&pts, 0.3), 0.02 + 0.1 * (0.2 + 0.4) / 2.0);
    close(integrate_to(&pts, 0.2), 0.02);
}

#[test]
fn table_has_rows_mean_and_columns() {
    let rows = vec![
        MetricsRow {
            category: "disc".into(),
            i_auroc: Some(0.9),
            p_auroc: Some(0.95),
            aupro: Some(0.8),
        },
        MetricsRow {
            category: "torus".into(),
            i_auroc: Some(0.7),
            p_auroc: None,
            aupro: Some(0.6),
        },
    ];
    let t = format_table(&rows);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].contains("I-AUROC") && lines[0].contains("P-AUROC"));
    assert!(lines[0].contains("AUPRO"));
    assert!(lines[2].starts_with("disc") && lines[2].contains("0.900"));
    assert!(lines[3].contains('-'));
    let mean = lines.last().unwrap();
    assert!(mean.starts_with("mean"), "{t}");
    assert!(mean.contains("0.800") && mean.contains("0.950") && mean.contains("0.700"));
}
