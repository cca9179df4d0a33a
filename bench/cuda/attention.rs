//! Fused attention, f32 and bf16 paths, at ViT-B/8 and Point-MAE sizes: microseconds and
//! TFLOP/s per call.

use miad::cuda::ops::attention::{Attention, ATTENTION_HEAD_DIM};
use miad::util::rng::Rng;

use crate::shared::transformer::{bf16_bits, Buf};

pub fn attention() -> bool {
    let Some(dev) = crate::gpu("attention") else {
        return false;
    };
    let att = Attention::new(&dev).expect("attention kernels load");
    let scale = 0.125f32;
    for (name, n, heads) in [("ViT-B/8", 785usize, 12usize), ("Point-MAE", 1024, 6)] {
        let w = heads * ATTENTION_HEAD_DIM;
        let mut qkv = vec![0.0f32; n * 3 * w];
        Rng::new(9).fill_normal(&mut qkv, 1.0);
        let d32 = Buf::new(&dev, &qkv);
        let o32 = Buf::new(&dev, &vec![0.0f32; n * w]);
        let d16 = Buf::new(&dev, &bf16_bits(&qkv));
        let o16 = Buf::new(&dev, &vec![0u16; n * w]);
        let parts = Buf::new(&dev, &vec![0f32; Attention::parts_len(n, heads).max(1)]);
        let reps = 200;
        let flop = Attention::flops(n, heads);
        let timer = dev.timer().unwrap();
        for path in ["f32", "bf16"] {
            let mut times = Vec::new();
            for _ in 0..5 {
                timer.start().unwrap();
                for _ in 0..reps {
                    if path == "f32" {
                        unsafe { att.run_f32(&dev, d32.ptr(), o32.ptr(), n, heads, scale) }
                            .unwrap();
                    } else {
                        unsafe {
                            att.run_bf16(&dev, d16.ptr(), o16.ptr(), parts.ptr(), n, heads, scale)
                        }
                        .unwrap();
                    }
                }
                times.push(timer.stop_ms().unwrap() as f64 / reps as f64);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let t = times[2];
            println!(
                "BENCH attention {name} {path}: {:.2} us/call, {:.1} TFLOP/s",
                t * 1e3,
                flop / (t * 1e-3) / 1e12
            );
        }
    }
    true
}
