//! cuBLASLt dense layers at the ViT-B/8 and Point-MAE shapes, f32 and bf16: microseconds
//! and TFLOP/s per layer.

use miad::backend::Precision;
use miad::cuda::device::gemm::{GemmPlan, GemmShape};

use crate::shared::gemm::{bf16_bits, inputs, run, setup, Bufs, SHAPES};

pub fn gemm() -> bool {
    let Some(g) = setup() else { return false };
    let reps = 100;
    let timer = g.dev.timer().unwrap();
    for (name, m, n, k, e) in SHAPES {
        let mut line = format!("BENCH gemm {name} {m}x{n}x{k} {e:?}:");
        for p in [Precision::F32, Precision::Bf16] {
            let s = GemmShape::new(m, n, k, p, e).unwrap();
            let (x, w, b) = inputs(&s, 9);
            let mut times = Vec::new();
            match p {
                Precision::F32 => {
                    let bufs = Bufs::new(&g.dev, &s, &x, &w, &b, 0.0);
                    let plan =
                        GemmPlan::new(&g.dev, &g.lt, s, bufs.workspace(), Some(&g.ew)).unwrap();
                    run(&g, &plan, &bufs);
                    for _ in 0..5 {
                        timer.start().unwrap();
                        for _ in 0..reps {
                            run(&g, &plan, &bufs);
                        }
                        times.push(timer.stop_ms().unwrap() as f64 / reps as f64);
                    }
                }
                Precision::Bf16 => {
                    let (x, w, b) = (bf16_bits(&x), bf16_bits(&w), bf16_bits(&b));
                    let bufs = Bufs::new(&g.dev, &s, &x, &w, &b, 0);
                    let plan = GemmPlan::new(&g.dev, &g.lt, s, bufs.workspace(), None).unwrap();
                    run(&g, &plan, &bufs);
                    for _ in 0..5 {
                        timer.start().unwrap();
                        for _ in 0..reps {
                            run(&g, &plan, &bufs);
                        }
                        times.push(timer.stop_ms().unwrap() as f64 / reps as f64);
                    }
                }
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let t = times[2];
            line += &format!(
                " {p:?} {:.1} us ({:.1} TFLOP/s)",
                t * 1e3,
                s.flops() / (t * 1e-3) / 1e12
            );
        }
        println!("{line}");
    }
    true
}
