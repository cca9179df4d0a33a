//! Transformer kernels on the device: fused multi-head attention (exact f32 and bf16
//! tensor-core paths). Kernels live in `kernels/attention.cu`.
//!
//! Layout contract (timm): `qkv` is `[n_tokens, 3 * heads * 64]` (token, {q,k,v}, head,
//! dim), the output `[n_tokens, heads * 64]` with heads concatenated. The head dimension is
//! 64 (ViT-B/8 and Point-MAE); token and head counts come from the model configuration.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig,
    PushKernelArg,
};

use crate::{Error, Result};

/// The head dimension the attention kernels are built for.
pub const ATTENTION_HEAD_DIM: usize = 64;
const ATTENTION_TILE: usize = 64;

/// Maps a driver error into the crate error.
pub fn cuda_err(e: DriverError) -> Error {
    Error::Config(format!("cuda: {e}"))
}

/// Loads kernel module `name`: from `<MIAD_CUBIN_DIR>/<name>.cubin` when that environment
/// variable is set (kernels compiled apart from the crate), otherwise the cubin that
/// `build.rs` embedded for this device's architecture.
pub fn load_cubin_module(ctx: &Arc<CudaContext>, name: &str) -> Result<Arc<CudaModule>> {
    let image = match std::env::var_os("MIAD_CUBIN_DIR") {
        Some(dir) => {
            let path = std::path::Path::new(&dir).join(format!("{name}.cubin"));
            std::fs::read(&path).map_err(|e| Error::io(&path, e))?
        }
        None => {
            let (major, minor) = ctx.compute_capability().map_err(cuda_err)?;
            // build.rs tags cubins 87, 90 and 900 (sm_90a, which runs on every 9.0 device).
            let arch = (major * 10 + minor) as u32;
            let wanted: &[u32] = if arch == 90 { &[900, 90] } else { &[arch] };
            super::module::KERNEL_MODULES
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| {
                    wanted
                        .iter()
                        .find_map(|w| m.cubins.iter().find(|(a, _)| a == w))
                })
                .map(|(_, bytes)| bytes.to_vec())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "no embedded {arch} cubin for kernel module {name}; set MIAD_CUBIN_DIR"
                    ))
                })?
        }
    };
    ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image))
        .map_err(cuda_err)
}

/// Whether a CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only probes whether the shared library loads.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Element type of a precision path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 everywhere (the parity path).
    F32,
    /// bf16 storage, f32 accumulation (the fast path).
    Bf16,
}

/// The fused attention kernels of one module.
pub struct Attention {
    f32_kernel: CudaFunction,
    bf16_kernel: CudaFunction,
}

fn check_shape(n_tokens: usize, heads: usize, qkv_len: usize, out_len: usize) -> Result<()> {
    if n_tokens == 0 || heads == 0 || n_tokens > i32::MAX as usize / 4 {
        return Err(Error::Config(format!(
            "attention: invalid size {n_tokens} tokens x {heads} heads"
        )));
    }
    let width = heads * ATTENTION_HEAD_DIM;
    if qkv_len < n_tokens * 3 * width || out_len < n_tokens * width {
        return Err(Error::Config(format!(
            "attention: buffers too small ({qkv_len}, {out_len}) for {n_tokens} x {heads} x 64"
        )));
    }
    Ok(())
}

fn launch_config(n_tokens: usize, heads: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n_tokens.div_ceil(ATTENTION_TILE) as u32, heads as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Attention {
    /// Looks up the kernels in a module built from `kernels/attention.cu`.
    pub fn new(module: &Arc<CudaModule>) -> Result<Self> {
        Ok(Self {
            f32_kernel: module.load_function("attention_f32").map_err(cuda_err)?,
            bf16_kernel: module.load_function("attention_bf16").map_err(cuda_err)?,
        })
    }

    /// Floating-point operations of one attention call (QK^T and PV), for rate reports.
    pub fn flops(n_tokens: usize, heads: usize) -> f64 {
        4.0 * (n_tokens as f64).powi(2) * (ATTENTION_HEAD_DIM * heads) as f64
    }

    /// Exact f32 attention with softmax scale `scale` (normally 64^-0.5).
    pub fn run_f32(
        &self,
        stream: &CudaStream,
        qkv: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        n_tokens: usize,
        heads: usize,
        scale: f32,
    ) -> Result<()> {
        check_shape(n_tokens, heads, qkv.len(), out.len())?;
        let (n, h) = (n_tokens as i32, heads as i32);
        let mut b = stream.launch_builder(&self.f32_kernel);
        b.arg(qkv).arg(out).arg(&n).arg(&h).arg(&scale);
        // SAFETY: argument types and buffer sizes match the kernel's signature (checked above).
        unsafe { b.launch(launch_config(n_tokens, heads, 64)) }.map_err(cuda_err)?;
        Ok(())
    }

    /// bf16 attention on tensor cores; buffers hold bf16 bit patterns.
    pub fn run_bf16(
        &self,
        stream: &CudaStream,
        qkv: &CudaSlice<u16>,
        out: &mut CudaSlice<u16>,
        n_tokens: usize,
        heads: usize,
        scale: f32,
    ) -> Result<()> {
        check_shape(n_tokens, heads, qkv.len(), out.len())?;
        let (n, h) = (n_tokens as i32, heads as i32);
        let mut b = stream.launch_builder(&self.bf16_kernel);
        b.arg(qkv).arg(out).arg(&n).arg(&h).arg(&scale);
        // SAFETY: as in `run_f32`; bf16 values are passed as their u16 bit patterns.
        unsafe { b.launch(launch_config(n_tokens, heads, 128)) }.map_err(cuda_err)?;
        Ok(())
    }
}

/// LayerNorm, residual add and bias + GELU (`kernels/layernorm.cu`).
pub struct Elementwise {
    layernorm: CudaFunction,
    layernorm_bf16: CudaFunction,
    add: CudaFunction,
    bias_gelu: CudaFunction,
}

fn flat_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn ln_check(rows: usize, cols: usize, x: usize, g: usize, b: usize, y: usize) -> Result<()> {
    if rows == 0 || cols == 0 || x < rows * cols || y < rows * cols || g < cols || b < cols {
        return Err(Error::Config(format!(
            "layernorm: buffers ({x}, {g}, {b}, {y}) do not fit {rows} x {cols}"
        )));
    }
    Ok(())
}

impl Elementwise {
    /// Looks up the kernels in a module built from `kernels/layernorm.cu`.
    pub fn new(module: &Arc<CudaModule>) -> Result<Self> {
        let f = |n: &str| module.load_function(n).map_err(cuda_err);
        Ok(Self {
            layernorm: f("layernorm_f32")?,
            layernorm_bf16: f("layernorm_f32_bf16")?,
            add: f("add_f32")?,
            bias_gelu: f("bias_gelu_f32")?,
        })
    }

    /// `y = layernorm(x) * gamma + beta` over rows of `cols`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_f32(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        ln_check(rows, cols, x.len(), gamma.len(), beta.len(), y.len())?;
        let (r, c) = (rows as i32, cols as i32);
        let mut b = stream.launch_builder(&self.layernorm);
        b.arg(x)
            .arg(gamma)
            .arg(beta)
            .arg(y)
            .arg(&r)
            .arg(&c)
            .arg(&eps);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sizes checked; the signature matches layernorm_f32.
        unsafe { b.launch(cfg) }.map_err(cuda_err)?;
        Ok(())
    }

    /// As [`Self::layernorm_f32`], writing bf16 bit patterns (fast path GEMM input).
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_bf16(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        y: &mut CudaSlice<u16>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        ln_check(rows, cols, x.len(), gamma.len(), beta.len(), y.len())?;
        let (r, c) = (rows as i32, cols as i32);
        let mut b = stream.launch_builder(&self.layernorm_bf16);
        b.arg(x)
            .arg(gamma)
            .arg(beta)
            .arg(y)
            .arg(&r)
            .arg(&c)
            .arg(&eps);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sizes checked; the signature matches layernorm_f32_bf16.
        unsafe { b.launch(cfg) }.map_err(cuda_err)?;
        Ok(())
    }

    /// Residual add `y += x` over the whole of `y`.
    pub fn add_f32(
        &self,
        stream: &CudaStream,
        y: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
    ) -> Result<()> {
        if x.len() < y.len() {
            return Err(Error::Config("add: x shorter than y".into()));
        }
        let n = y.len() as i64;
        let cfg = flat_cfg(y.len());
        let mut b = stream.launch_builder(&self.add);
        b.arg(y).arg(x).arg(&n);
        // SAFETY: x covers y; the signature matches add_f32.
        unsafe { b.launch(cfg) }.map_err(cuda_err)?;
        Ok(())
    }

    /// `y = gelu(y + bias)` (exact erf GELU), `y` rows of `bias.len()` columns.
    pub fn bias_gelu_f32(
        &self,
        stream: &CudaStream,
        y: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
    ) -> Result<()> {
        let cols = bias.len();
        if cols == 0 || !y.len().is_multiple_of(cols) {
            return Err(Error::Config(
                "bias_gelu: y is not whole rows of the bias".into(),
            ));
        }
        let (n, c) = (y.len() as i64, cols as i32);
        let cfg = flat_cfg(y.len());
        let mut b = stream.launch_builder(&self.bias_gelu);
        b.arg(y).arg(bias).arg(&n).arg(&c);
        // SAFETY: shape checked; the signature matches bias_gelu_f32.
        unsafe { b.launch(cfg) }.map_err(cuda_err)?;
        Ok(())
    }
}
