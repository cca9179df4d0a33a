//! Farthest point sampling (kernels/fps.cu: fps_smem_f32 in both modes, fps_regs_p8_f32 and
//! fps_regs_p16_f32 with both exchanges) against `miad::cpu::fps::fps_plain`: centers identical,
//! their coordinates bit-identical.

use miad::cpu::fps::fps_plain;

use crate::sim::{sim, Args, Buf, Cfg};
use crate::util::{clouds, same, same_bits, SEEDS};
use crate::Test;

pub const TESTS: &[Test] = &[
    ("fps_smem_f32_single_block_matches_cpu", fps_smem_single),
    ("fps_smem_f32_cluster_matches_cpu", fps_smem_cluster),
    ("fps_regs_barrier_exchange_matches_cpu", fps_regs_barrier),
    ("fps_regs_mbarrier_exchange_matches_cpu", fps_regs_mbarrier),
];

const FPS_REGS_THREADS: u32 = 512;
/// The register-resident instances, 8 and 16 points per thread.
const FPS_REGS_INSTANCES: [&str; 2] = ["fps_regs_p8_f32", "fps_regs_p16_f32"];

fn reference(pts: &[f32], m: usize) -> (Vec<u32>, Vec<f32>) {
    let n = pts.len() / 3;
    let mut idx = vec![0u32; m];
    let mut dist = vec![0f32; n];
    fps_plain(pts, &mut idx, &mut dist);
    let xyz = idx
        .iter()
        .flat_map(|&i| pts[3 * i as usize..3 * i as usize + 3].to_vec())
        .collect();
    (idx, xyz)
}

fn check(name: &str, pts: &[f32], m: usize, oi: &Buf<u32>, ox: &Buf<f32>) -> Result<(), String> {
    let (wi, wx) = reference(pts, m);
    same(&format!("{name} centers"), oi.get(), &wi)?;
    same_bits(&format!("{name} center coordinates"), ox.get(), &wx)
}

/// fps_smem_f32: `cluster` 0 = one block with the global work buffer, else a cluster with the
/// points in shared memory.
fn run_smem(pts: &[f32], m: usize, cluster: u32, seed: u64) -> Result<(), String> {
    let n = pts.len() / 3;
    let p = Buf::from(pts);
    let nb = Buf::from(&[n as i32]);
    let work = Buf::filled(4 * n, f32::NAN);
    let oi = Buf::filled(m, u32::MAX);
    let ox = Buf::filled(3 * m, f32::NAN);
    let mut a = Args::new()
        .buf(&p)
        .buf(&nb)
        .val(m as i32)
        .buf(&work)
        .val((cluster > 0) as i32)
        .buf(&oi)
        .buf(&ox);
    let cfg = if cluster > 0 {
        Cfg::new(cluster, 1024)
            .cluster(cluster)
            .smem((n.div_ceil(cluster as usize) * 16) as u32)
    } else {
        Cfg::new(1, 1024)
    };
    sim().launch("fps_smem_f32", &cfg, &mut a, seed)?;
    check("fps_smem_f32", pts, m, &oi, &ox)
}

fn run_v2(pts: &[f32], m: usize, cluster: u32, xmode: i32, seed: u64) -> Result<(), String> {
    let n = pts.len() / 3;
    let chunk = n.div_ceil(cluster as usize);
    // The host picks the smallest instance whose registers hold the chunk.
    let ppt = if chunk <= 8 * FPS_REGS_THREADS as usize {
        8
    } else {
        16
    };
    let p = Buf::from(pts);
    let nb = Buf::from(&[n as i32]);
    let oi = Buf::filled(m, u32::MAX);
    let ox = Buf::filled(3 * m, f32::NAN);
    let mut a = Args::new()
        .buf(&p)
        .buf(&nb)
        .val(m as i32)
        .val(xmode)
        .buf(&oi)
        .buf(&ox);
    let cfg = Cfg::new(cluster, FPS_REGS_THREADS)
        .cluster(cluster)
        .smem((chunk * 16) as u32);
    let name = FPS_REGS_INSTANCES[(ppt == 16) as usize];
    sim().launch(name, &cfg, &mut a, seed)?;
    check(name, pts, m, &oi, &ox)
}

fn fps_smem_single() -> Result<(), String> {
    for (i, (what, pts)) in clouds(1500, 3).into_iter().enumerate() {
        let s = SEEDS[i % SEEDS.len()];
        run_smem(&pts, 40, 0, s).map_err(|e| format!("{what}, seed {s}: {e}"))?;
    }
    Ok(())
}

fn fps_smem_cluster() -> Result<(), String> {
    // 8 blocks (the host's cluster), a ragged n; and 2 blocks with n < blocks · 1024.
    for (i, (what, pts)) in clouds(1203, 5).into_iter().enumerate() {
        let s = SEEDS[i % SEEDS.len()];
        run_smem(&pts, 16, 8, s).map_err(|e| format!("{what}, cluster 8, seed {s}: {e}"))?;
    }
    let (_, pts) = clouds(45, 6).remove(0);
    run_smem(&pts, 45, 2, 1).map_err(|e| format!("all 45 points, cluster 2: {e}"))
}

fn v2_cases(xmode: i32) -> Result<(), String> {
    // Cluster 8 with the 8-point instance; cluster 16; and 8 blocks with more than 8 points
    // per thread (the 16-point instance).
    for (i, (what, pts)) in clouds(1001, 9).into_iter().enumerate() {
        let s = SEEDS[i % SEEDS.len()];
        run_v2(&pts, 20, 8, xmode, s).map_err(|e| format!("{what}, cluster 8, seed {s}: {e}"))?;
    }
    let (_, pts) = clouds(3000, 10).remove(0);
    run_v2(&pts, 16, 16, xmode, 2).map_err(|e| format!("cluster 16: {e}"))?;
    let (_, pts) = clouds(8 * 4096 + 77, 12).remove(1);
    run_v2(&pts, 6, 8, xmode, 3).map_err(|e| format!("16-point instance: {e}"))
}

fn fps_regs_barrier() -> Result<(), String> {
    v2_cases(0)
}

fn fps_regs_mbarrier() -> Result<(), String> {
    v2_cases(1)
}
