//! Dense layers on the device through cuBLASLt: `Y[m,n] = X[m,k] · W[n,k]^T (+ bias)
//! (then GELU)`, row-major activations and weights as stored in the model file (timm
//! `nn.Linear`: `[out, in]` row-major).
//!
//! - [`CublasLt`]: the library handle, one per device, created at engine creation. When the
//!   cuBLASLt library cannot be loaded, creation returns [`Error::Device`] naming it (cudarc
//!   would panic on the first call; we probe first).
//! - [`GemmPlan`]: one shape and precision, made once: matmul descriptor, matrix layouts,
//!   preference and the heuristic's algorithm. [`GemmPlan::run`] issues one `cublasLtMatmul`
//!   (plus, for the exact-GELU f32 path, one elementwise kernel) on the device's stream,
//!   with the caller's workspace, allocating nothing: it can be recorded into a CUDA graph.
//!
//! Layout trick: cuBLASLt is column-major. Row-major `Y[m,n]` is column-major `Y^T (n x m,
//! ld n)`, row-major `W[n,k]` is column-major `W^T (k x n, ld k)` and row-major `X[m,k]` is
//! column-major `X^T (k x m, ld k)`, so we ask for `D = op(A)·op(B)` with `A = W^T` stored
//! (transposed: op(A) = W, n x k), `B = X^T` (not transposed, k x m), `D = Y^T` (n x m).
//! This is the "TN" case, the one every cuBLASLt kernel family supports. The bias of the
//! `BIAS` epilogue runs along the rows of D, i.e. one value per output feature, as in
//! `nn.Linear`.
//!
//! Mixed output and accumulation (for the residual stream of the transformer forwards,
//! `cuda::stages::forward`): a bf16 plan may write an f32 `Y` ([`GemmShape::with_output`];
//! A/B bf16, C/D f32, f32 compute, one of cuBLASLt's supported type combinations; the bias
//! then has `Y`'s type, cuBLASLt's default), and a plan may accumulate,
//! `Y += X·W^T (+ bias)` ([`GemmShape::accumulating`]: beta = 1 with C = D = Y, in place).
//! [`GemmPlan::run_mixed`] runs a plan whose output type differs from its inputs'.
//!
//! GELU: cuBLASLt's `GELU` epilogues compute the tanh approximation (PyTorch's
//! `_addmm_activation` falls back to `gelu(approximate="tanh")` to match them). SPEC asks
//! for the exact erf GELU, so the f32 parity path runs the matmul with no epilogue and then
//! `bias_gelu_f32` (`kernels/gelu.cu`: `y = gelu(y + bias)`, erf); the bf16 fast path
//! uses `GELU_BIAS`: the two differ by at most 4.8e-4 absolute (at x ≈ -2.7), below
//! the bf16 rounding of the output.

use std::ffi::c_void;

use cudarc::cublaslt::{result as lt, sys as ltsys};

use super::arena::DevPtr;
use super::context::dev_err;
use super::context::Device;
use super::kernel::Kernel;
use super::sim;
use crate::backend::Precision;
use crate::cuda::ops::gelu::{launch_bias_gelu, Elementwise};
use crate::{DeviceError, Error, Result};

/// Workspace a plan is allowed to use, bytes: reserve this in the engine's arena.
pub const GEMM_WORKSPACE_BYTES: usize = 32 << 20;
/// Alignment promised to the heuristic for X, W and Y (and required of the bias), bytes.
/// Arena slots are 256-aligned; offsets into a slot must keep this.
pub const GEMM_ALIGN: u64 = 16;
/// Alignment of the workspace, bytes.
pub const WORKSPACE_ALIGN: u64 = 256;

/// What follows the product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// `Y = X·W^T`.
    None,
    /// `Y = X·W^T + bias`.
    Bias,
    /// `Y = gelu(X·W^T + bias)`; exact erf GELU on the f32 path (see the module notes).
    BiasGelu,
}

/// How an [`Epilogue`] is carried out for a precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpiloguePlan {
    /// The cuBLASLt epilogue.
    pub lt: ltsys::cublasLtEpilogue_t,
    /// Whether cuBLASLt reads the bias (the bias pointer is set on the descriptor).
    pub lt_bias: bool,
    /// Whether `bias_gelu_f32` runs after the matmul (exact GELU, f32 only).
    pub gelu_kernel: bool,
}

/// One matrix as cuBLASLt sees it: column-major `rows` x `cols`, leading dimension `ld`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatLayout {
    pub rows: u64,
    pub cols: u64,
    pub ld: i64,
}

/// The three matrices of a plan (C = D, beta = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmLayouts {
    /// The weights, W^T stored: k x n, ld k, used transposed.
    pub a: MatLayout,
    pub trans_a: bool,
    /// The activations, X^T stored: k x m, ld k, used as is.
    pub b: MatLayout,
    pub trans_b: bool,
    /// The output, Y^T stored: n x m, ld n.
    pub d: MatLayout,
}

/// How X and W are stored (row-major) for `Y[m,n]`; the backward passes of training need
/// the two products besides a layer's forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operands {
    /// `Y = X·W^T`, X `m×k`, W `n×k`: a dense layer (cuBLASLt's "TN" view).
    XWt,
    /// `Y = X·W`, X `m×k`, W `k×n`: an input gradient `dX = dY·W` ("NN").
    XW,
    /// `Y = X^T·W`, X `k×m`, W `k×n`: a weight gradient `dW = dY^T·A` ("NT").
    XtW,
}

/// Shape and precision of one dense layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmShape {
    /// Rows of X and Y (tokens).
    pub m: usize,
    /// Output features: rows of W, columns of Y.
    pub n: usize,
    /// Input features: columns of X and W.
    pub k: usize,
    /// Element type of X and W.
    pub precision: Precision,
    pub epilogue: Epilogue,
    /// Element type of Y and of the bias: `precision`, or f32 for a bf16 plan
    /// ([`GemmShape::with_output`]).
    pub output: Precision,
    /// `Y += X·W^T (+ bias)` instead of `Y =` ([`GemmShape::accumulating`]).
    pub accumulate: bool,
    /// How X and W are stored ([`GemmShape::with_operands`]; a dense layer's by default).
    pub operands: Operands,
}

impl GemmShape {
    /// A validated shape.
    pub fn new(
        m: usize,
        n: usize,
        k: usize,
        precision: Precision,
        epilogue: Epilogue,
    ) -> Result<Self> {
        let s = Self {
            m,
            n,
            k,
            precision,
            epilogue,
            output: precision,
            accumulate: false,
            operands: Operands::XWt,
        };
        s.validate()?;
        Ok(s)
    }

    /// The same sizes with X and W stored as `operands` says (training's gradients).
    pub fn with_operands(self, operands: Operands) -> Self {
        Self { operands, ..self }
    }

    /// The same product writing `output` elements (f32 from a bf16 plan; the bias then is
    /// f32 too).
    pub fn with_output(self, output: Precision) -> Result<Self> {
        let s = Self { output, ..self };
        s.validate()?;
        Ok(s)
    }

    /// The same product accumulated into `Y`: `Y += X·W^T (+ bias)` (a residual add for
    /// free). Not with GELU (the activation would apply to the sum).
    pub fn accumulating(self) -> Result<Self> {
        let s = Self {
            accumulate: true,
            ..self
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the sizes: non-zero, each within `int` (the elementwise kernels index with
    /// `int` columns), element counts within `i64`.
    pub fn validate(&self) -> Result<()> {
        let (m, n, k) = (self.m, self.n, self.k);
        if m == 0 || n == 0 || k == 0 {
            return Err(Error::Config(format!(
                "gemm: empty shape {m} x {n} x {k} (m x n x k)"
            )));
        }
        if self.output != self.precision
            && !(self.precision == Precision::Bf16 && self.output == Precision::F32)
        {
            return Err(Error::Config(format!(
                "gemm: {:?} inputs with {:?} output is not supported (bf16 → f32 is)",
                self.precision, self.output
            )));
        }
        if self.accumulate && self.epilogue == Epilogue::BiasGelu {
            return Err(Error::Config(
                "gemm: an accumulating plan cannot apply GELU (it would act on the sum)".into(),
            ));
        }
        let lim = i32::MAX as usize;
        if m > lim || n > lim || k > lim {
            return Err(Error::Config(format!(
                "gemm: shape {m} x {n} x {k} exceeds {lim} in one dimension"
            )));
        }
        for (what, a, b, p) in [
            ("X", m, k, self.precision),
            ("W", n, k, self.precision),
            ("Y", m, n, self.output),
        ] {
            if a.checked_mul(b)
                .and_then(|e| e.checked_mul(p.bytes()))
                .is_none_or(|bytes| bytes > i64::MAX as usize)
            {
                return Err(Error::Config(format!(
                    "gemm: {what} of {a} x {b} elements is too large"
                )));
            }
        }
        Ok(())
    }

    /// Elements of X.
    pub fn x_len(&self) -> usize {
        self.m * self.k
    }
    /// Elements of W.
    pub fn w_len(&self) -> usize {
        self.n * self.k
    }
    /// Elements of Y.
    pub fn y_len(&self) -> usize {
        self.m * self.n
    }
    /// Elements of the bias (0 without one).
    pub fn bias_len(&self) -> usize {
        match self.epilogue {
            Epilogue::None => 0,
            Epilogue::Bias | Epilogue::BiasGelu => self.n,
        }
    }
    /// Floating-point operations of one product, for rate reports.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// The column-major view cuBLASLt gets (see the module notes): a row-major `r×c` matrix
    /// is a column-major `c×r` one (ld `c`), so `D = Y^T = op(A)·op(B)` with A the stored W
    /// and B the stored X, transposed where the stored view is not `n×k` (A) or `k×m` (B).
    pub fn layouts(&self) -> GemmLayouts {
        let (m, n, k) = (self.m as u64, self.n as u64, self.k as u64);
        let col_major = |rows: u64, cols: u64| MatLayout {
            rows,
            cols,
            ld: rows as i64,
        };
        let (a, trans_a, b, trans_b) = match self.operands {
            // W n×k stored is k×n column-major; X m×k is k×m.
            Operands::XWt => (col_major(k, n), true, col_major(k, m), false),
            // W k×n stored is n×k column-major; X m×k is k×m.
            Operands::XW => (col_major(n, k), false, col_major(k, m), false),
            // W k×n stored is n×k column-major; X k×m stored is m×k.
            Operands::XtW => (col_major(n, k), false, col_major(m, k), true),
        };
        GemmLayouts {
            a,
            trans_a,
            b,
            trans_b,
            d: col_major(n, m),
        }
    }

    /// How the epilogue is carried out (see the module notes on GELU).
    pub fn epilogue_plan(&self) -> EpiloguePlan {
        use ltsys::cublasLtEpilogue_t as E;
        match (self.epilogue, self.precision) {
            (Epilogue::None, _) => EpiloguePlan {
                lt: E::CUBLASLT_EPILOGUE_DEFAULT,
                lt_bias: false,
                gelu_kernel: false,
            },
            (Epilogue::Bias, _) => EpiloguePlan {
                lt: E::CUBLASLT_EPILOGUE_BIAS,
                lt_bias: true,
                gelu_kernel: false,
            },
            // cuBLASLt's GELU is the tanh approximation: not for the parity path.
            (Epilogue::BiasGelu, Precision::F32) => EpiloguePlan {
                lt: E::CUBLASLT_EPILOGUE_DEFAULT,
                lt_bias: false,
                gelu_kernel: true,
            },
            (Epilogue::BiasGelu, Precision::Bf16) => EpiloguePlan {
                lt: E::CUBLASLT_EPILOGUE_GELU_BIAS,
                lt_bias: true,
                gelu_kernel: false,
            },
        }
    }

    /// Storage and compute types: f32 uses `CUBLAS_COMPUTE_32F` (cuBLASLt uses TF32 only
    /// when asked with `..._FAST_TF32`, so this is full f32), bf16 stores bf16 and
    /// accumulates in f32. Scale type (alpha, beta, bias arithmetic) is f32 in both.
    pub fn lt_types(&self) -> (ltsys::cudaDataType, ltsys::cublasComputeType_t) {
        let t = match self.precision {
            Precision::F32 => ltsys::cudaDataType::CUDA_R_32F,
            Precision::Bf16 => ltsys::cudaDataType::CUDA_R_16BF,
        };
        (t, ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F)
    }

    /// Storage type of Y (C = D) and of the bias.
    pub fn out_type(&self) -> ltsys::cudaDataType {
        match self.output {
            Precision::F32 => ltsys::cudaDataType::CUDA_R_32F,
            Precision::Bf16 => ltsys::cudaDataType::CUDA_R_16BF,
        }
    }

    /// Checks the device addresses of one run (host only): element type, alignment, and a
    /// bias when the epilogue reads one.
    pub fn check_run(&self, precision: Precision, x: u64, w: u64, bias: u64, y: u64) -> Result<()> {
        self.check_run_mixed(precision, precision, x, w, bias, y)
    }

    /// [`GemmShape::check_run`] with the element type of Y and bias given apart.
    pub fn check_run_mixed(
        &self,
        precision: Precision,
        output: Precision,
        x: u64,
        w: u64,
        bias: u64,
        y: u64,
    ) -> Result<()> {
        if precision != self.precision || output != self.output {
            return Err(Error::Config(format!(
                "gemm: {:?} inputs / {:?} output given to a {:?} / {:?} plan",
                precision, output, self.precision, self.output
            )));
        }
        for (what, p) in [("X", x), ("W", w), ("Y", y)] {
            check_ptr(what, p)?;
        }
        if self.bias_len() > 0 {
            check_ptr("bias", bias)?;
        }
        Ok(())
    }
}

fn check_ptr(what: &str, p: u64) -> Result<()> {
    if p == 0 {
        return Err(Error::Config(format!("gemm: {what} is a null pointer")));
    }
    if !p.is_multiple_of(GEMM_ALIGN) {
        return Err(Error::Config(format!(
            "gemm: {what} at {p:#x} is not {GEMM_ALIGN}-byte aligned"
        )));
    }
    Ok(())
}

/// Element types a plan runs on: f32, and bf16 as `u16` bit patterns.
pub trait GemmElement: Copy + sealed::Sealed {
    const PRECISION: Precision;
}
impl GemmElement for f32 {
    const PRECISION: Precision = Precision::F32;
}
impl GemmElement for u16 {
    const PRECISION: Precision = Precision::Bf16;
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u16 {}
}

/// A workspace region of the caller's arena.
#[derive(Debug, Clone, Copy)]
pub struct Workspace {
    pub ptr: DevPtr<u8>,
    pub bytes: usize,
}

impl Workspace {
    /// No workspace (restricts the heuristic to algorithms that need none).
    pub fn none() -> Self {
        Workspace {
            ptr: DevPtr::null(),
            bytes: 0,
        }
    }

    fn check(&self) -> Result<()> {
        if self.bytes > 0
            && (self.ptr.raw() == 0 || !self.ptr.raw().is_multiple_of(WORKSPACE_ALIGN))
        {
            return Err(Error::Config(format!(
                "gemm: workspace at {:#x} is null or not {WORKSPACE_ALIGN}-byte aligned",
                self.ptr.raw()
            )));
        }
        Ok(())
    }
}

fn lt_err(what: &str, e: lt::CublasError) -> Error {
    DeviceError::Call {
        call: what.into(),
        code: format!("{:?}", e.0),
    }
    .into()
}

/// Whether the cuBLASLt library can be loaded (no driver needed).
pub fn cublaslt_present() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { ltsys::is_culib_present() }
}

/// The cuBLASLt handle of one device (on the simulated device: none, the plans run the
/// CPU GEMM of [`super::sim`]).
pub struct CublasLt {
    handle: ltsys::cublasLtHandle_t,
    version: usize,
    simulated: bool,
}

// SAFETY: the handle is used from one thread at a time (the engine's).
unsafe impl Send for CublasLt {}

impl CublasLt {
    /// Creates a handle in `dev`'s context (counted on `dev`; stages use the device's
    /// one, [`Device::cublaslt`]). Returns [`Error::Device`] naming the library when
    /// cuBLASLt cannot be loaded.
    pub fn new(dev: &Device) -> Result<Self> {
        if dev.is_simulated() {
            dev.count_cublaslt_handle();
            return Ok(CublasLt {
                handle: std::ptr::null_mut(),
                version: 0,
                simulated: true,
            });
        }
        if !cublaslt_present() {
            return Err(DeviceError::Unavailable(
                "the cuBLASLt library (libcublasLt.so, libcublasLt.so.12, ...) could not be loaded: install CUDA's cuBLAS or add its lib folder to LD_LIBRARY_PATH".into(),
            )
            .into());
        }
        dev.bind()?;
        let handle = lt::create_handle().map_err(|e| lt_err("cublasLtCreate", e))?;
        dev.count_cublaslt_handle();
        // SAFETY: the library is loaded; a plain query.
        let version = unsafe { ltsys::cublasLtGetVersion() };
        Ok(CublasLt {
            handle,
            version,
            simulated: false,
        })
    }

    /// The library version (e.g. 120602 for 12.6.2).
    pub fn version(&self) -> usize {
        self.version
    }
}

impl Drop for CublasLt {
    fn drop(&mut self) {
        if self.simulated {
            return;
        }
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// One dense layer, planned once. Drop plans before their [`CublasLt`], and that before the
/// [`Device`]; an [`Elementwise`] given at creation must outlive the plan.
pub struct GemmPlan {
    shape: GemmShape,
    epi: EpiloguePlan,
    handle: ltsys::cublasLtHandle_t,
    desc: ltsys::cublasLtMatmulDesc_t,
    a: ltsys::cublasLtMatrixLayout_t,
    b: ltsys::cublasLtMatrixLayout_t,
    d: ltsys::cublasLtMatrixLayout_t,
    algo: ltsys::cublasLtMatmulAlgo_t,
    algo_workspace: usize,
    waves: f32,
    workspace: Workspace,
    gelu: Option<Kernel>,
    alpha: f32,
    beta: f32,
}

// SAFETY: as for `CublasLt`; `run` writes the descriptor's bias pointer, so a plan is used
// from one thread at a time (it is not `Sync`).
unsafe impl Send for GemmPlan {}

impl GemmPlan {
    /// Plans `shape` on `lt`: descriptor, layouts, and the best algorithm the heuristic
    /// finds for `workspace.bytes` of workspace. `ew` supplies the exact GELU kernel and is
    /// required for `Epilogue::BiasGelu` in f32.
    pub fn new(
        dev: &Device,
        lt: &CublasLt,
        shape: GemmShape,
        workspace: Workspace,
        ew: Option<&Elementwise>,
    ) -> Result<GemmPlan> {
        shape.validate()?;
        workspace.check()?;
        let epi = shape.epilogue_plan();
        let gelu = match (epi.gelu_kernel, ew) {
            (false, _) => None,
            (true, Some(ew)) => Some(ew.bias_gelu_function()),
            (true, None) => {
                return Err(Error::Config(
                    "gemm: an f32 bias+GELU plan needs the elementwise kernels (exact GELU)".into(),
                ))
            }
        };
        if lt.simulated != dev.is_simulated() {
            return Err(dev_err(
                "gemm: a cuBLASLt handle of another kind of device than the plan's".into(),
            ));
        }
        dev.bind()?;
        let mut plan = GemmPlan {
            shape,
            epi,
            handle: lt.handle,
            desc: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            algo: ltsys::cublasLtMatmulAlgo_t { data: [0; 8] },
            algo_workspace: 0,
            waves: 0.0,
            workspace,
            gelu,
            alpha: 1.0,
            beta: if shape.accumulate { 1.0 } else { 0.0 },
        };
        if lt.simulated {
            // The CPU GEMM reads the shape's layouts at each run: nothing to create.
            return Ok(plan);
        }
        // On any error below, dropping `plan` destroys what was created.
        let (dtype, compute) = shape.lt_types();
        let scale = ltsys::cudaDataType::CUDA_R_32F;
        plan.desc = lt::create_matmul_desc(compute, scale)
            .map_err(|e| lt_err("cublasLtMatmulDescCreate", e))?;
        let l = shape.layouts();
        let trans = |t: bool| -> i32 { t as i32 }; // CUBLAS_OP_T = 1, CUBLAS_OP_N = 0
        use ltsys::cublasLtMatmulDescAttributes_t as D;
        unsafe {
            set_desc(plan.desc, D::CUBLASLT_MATMUL_DESC_TRANSA, &trans(l.trans_a))?;
            set_desc(plan.desc, D::CUBLASLT_MATMUL_DESC_TRANSB, &trans(l.trans_b))?;
            set_desc(plan.desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE, &epi.lt)?;
        }
        let layout = |t: ltsys::cudaDataType, m: MatLayout| {
            lt::create_matrix_layout(t, m.rows, m.cols, m.ld)
                .map_err(|e| lt_err("cublasLtMatrixLayoutCreate", e))
        };
        plan.a = layout(dtype, l.a)?;
        plan.b = layout(dtype, l.b)?;
        plan.d = layout(shape.out_type(), l.d)?;

        let pref = Pref(
            lt::create_matmul_pref().map_err(|e| lt_err("cublasLtMatmulPreferenceCreate", e))?,
        );
        use ltsys::cublasLtMatmulPreferenceAttributes_t as P;
        let ws = workspace.bytes as u64;
        let align = GEMM_ALIGN as u32;
        unsafe {
            set_pref(pref.0, P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws)?;
            set_pref(
                pref.0,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                &align,
            )?;
            set_pref(
                pref.0,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                &align,
            )?;
            set_pref(
                pref.0,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                &align,
            )?;
            set_pref(
                pref.0,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                &align,
            )?;
        }
        // SAFETY: every descriptor is live; the heuristic does not touch device memory.
        let h = unsafe {
            lt::get_matmul_algo_heuristic(
                plan.handle,
                plan.desc,
                plan.a,
                plan.b,
                plan.d,
                plan.d,
                pref.0,
            )
        }
        .map_err(|e| {
            dev_err(format!(
                "gemm: cuBLASLt has no algorithm for {} x {} x {} {:?} {:?} with {} bytes of workspace: {:?}",
                shape.m, shape.n, shape.k, shape.precision, shape.epilogue, workspace.bytes, e.0
            ))
        })?;
        if h.workspaceSize > workspace.bytes {
            return Err(dev_err(format!(
                "gemm: the chosen algorithm wants {} bytes of workspace, {} given",
                h.workspaceSize, workspace.bytes
            )));
        }
        plan.algo = h.algo;
        plan.algo_workspace = h.workspaceSize;
        plan.waves = h.wavesCount;
        Ok(plan)
    }

    pub fn shape(&self) -> &GemmShape {
        &self.shape
    }

    /// Workspace bytes the chosen algorithm uses (at most the workspace given).
    pub fn workspace_bytes(&self) -> usize {
        self.algo_workspace
    }

    /// The heuristic's wave count estimate of the chosen algorithm (diagnostics).
    pub fn waves(&self) -> f32 {
        self.waves
    }

    /// `y = x · w^T (+ bias) (then GELU)` (`y +=` for an accumulating plan) on `dev`'s
    /// stream: one `cublasLtMatmul` (and one `bias_gelu_f32` launch on the exact-GELU f32
    /// path). Nothing is allocated. `bias` may
    /// be null for `Epilogue::None`. Run a plan once before recording it into a CUDA graph
    /// (cuBLASLt and the driver finish loading kernels on first use).
    ///
    /// # Safety
    /// `x`, `w`, `y` must hold [`GemmShape::x_len`], [`GemmShape::w_len`],
    /// [`GemmShape::y_len`] elements and `bias` [`GemmShape::bias_len`] on `dev`, whose
    /// context holds the [`CublasLt`] of this plan; `y` must not overlap `x` or `w`; the
    /// workspace given at creation must be live and not used concurrently.
    pub unsafe fn run<T: GemmElement>(
        &self,
        dev: &Device,
        x: DevPtr<T>,
        w: DevPtr<T>,
        bias: DevPtr<T>,
        y: DevPtr<T>,
    ) -> Result<()> {
        self.run_mixed(dev, x, w, bias, y)
    }

    /// [`GemmPlan::run`] for a plan whose output (and bias) type `O` differs from its
    /// input type `T` (bf16 inputs, f32 output: [`GemmShape::with_output`]).
    ///
    /// # Safety
    /// As [`GemmPlan::run`]; for an accumulating plan `y` must hold the values to add to.
    pub unsafe fn run_mixed<T: GemmElement, O: GemmElement>(
        &self,
        dev: &Device,
        x: DevPtr<T>,
        w: DevPtr<T>,
        bias: DevPtr<O>,
        y: DevPtr<O>,
    ) -> Result<()> {
        self.shape.check_run_mixed(
            T::PRECISION,
            O::PRECISION,
            x.raw(),
            w.raw(),
            bias.raw(),
            y.raw(),
        )?;
        if let Some(s) = dev.sim() {
            s.gemm(self.sim_call(w.raw(), x.raw(), bias.raw(), y.raw()))?;
        } else {
            self.run_lt(dev, w.raw(), x.raw(), bias.raw(), y.raw())?;
        }
        if let Some(f) = self.gelu {
            // Only on f32 plans (checked above: T and O are f32 here).
            let (mut yf, mut bf) = (DevPtr::<f32>::null(), DevPtr::<f32>::null());
            yf.0 = y.raw();
            bf.0 = bias.raw();
            launch_bias_gelu(dev, f, yf, bf, self.shape.m, self.shape.n)?;
        }
        Ok(())
    }

    /// The matmul exactly as the plan's descriptors state it, for the simulated device's
    /// CPU GEMM: the same layouts, transposes, types, epilogue and alpha/beta that
    /// [`GemmPlan::new`] gives cuBLASLt (A = W^T stored, B = X^T, C = D = Y^T).
    pub fn sim_call(&self, w: u64, x: u64, bias: u64, y: u64) -> sim::GemmCall {
        let l = self.shape.layouts();
        let in_bf16 = self.shape.precision == Precision::Bf16;
        let out_bf16 = self.shape.output == Precision::Bf16;
        let op = |ptr: u64, m: MatLayout, trans: bool, bf16: bool| sim::GemmOperand {
            ptr,
            rows: m.rows,
            cols: m.cols,
            ld: m.ld,
            trans,
            bf16,
        };
        use ltsys::cublasLtEpilogue_t as E;
        sim::GemmCall {
            a: op(w, l.a, l.trans_a, in_bf16),
            b: op(x, l.b, l.trans_b, in_bf16),
            d: op(y, l.d, false, out_bf16),
            alpha: self.alpha,
            beta: self.beta,
            bias: if self.epi.lt_bias { bias } else { 0 },
            gelu_tanh: self.epi.lt == E::CUBLASLT_EPILOGUE_GELU_BIAS,
        }
    }

    /// One `cublasLtMatmul` on the driver.
    fn run_lt(&self, dev: &Device, w: u64, x: u64, bias: u64, y: u64) -> Result<()> {
        // SAFETY: the plan's live descriptors and handle; the pointers were checked by
        // `check_run_mixed` and are valid by `run`'s contract.
        unsafe {
            if self.epi.lt_bias {
                set_desc(
                    self.desc,
                    ltsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bias,
                )?;
            }
            // C = D: with beta = 0 C is not read; an accumulating plan (beta = 1) adds to it.
            lt::matmul(
                self.handle,
                self.desc,
                &self.alpha as *const f32 as *const c_void,
                &self.beta as *const f32 as *const c_void,
                w as *const c_void,
                self.a,
                x as *const c_void,
                self.b,
                y as *const c_void,
                self.d,
                y as *mut c_void,
                self.d,
                &self.algo,
                self.workspace.ptr.raw() as *mut c_void,
                self.workspace.bytes,
                dev.stream() as ltsys::cudaStream_t,
            )
            .map_err(|e| lt_err("cublasLtMatmul", e))
        }
    }
}

impl Drop for GemmPlan {
    fn drop(&mut self) {
        // SAFETY: each object was created in `new` (or is null) and is destroyed once.
        unsafe {
            for l in [self.a, self.b, self.d] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
        }
    }
}

/// A preference descriptor, destroyed when planning ends.
struct Pref(ltsys::cublasLtMatmulPreference_t);

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_pref(self.0);
        }
    }
}

unsafe fn set_desc<V>(
    desc: ltsys::cublasLtMatmulDesc_t,
    attr: ltsys::cublasLtMatmulDescAttributes_t,
    v: &V,
) -> Result<()> {
    lt::set_matmul_desc_attribute(desc, attr, v as *const V as *const c_void, size_of::<V>())
        .map_err(|e| lt_err(&format!("cublasLtMatmulDescSetAttribute({attr:?})"), e))
}

unsafe fn set_pref<V>(
    pref: ltsys::cublasLtMatmulPreference_t,
    attr: ltsys::cublasLtMatmulPreferenceAttributes_t,
    v: &V,
) -> Result<()> {
    lt::set_matmul_pref_attribute(pref, attr, v as *const V as *const c_void, size_of::<V>())
        .map_err(|e| {
            lt_err(
                &format!("cublasLtMatmulPreferenceSetAttribute({attr:?})"),
                e,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(m: usize, n: usize, k: usize, p: Precision, e: Epilogue) -> GemmShape {
        GemmShape::new(m, n, k, p, e).unwrap()
    }

    #[test]
    fn shapes_are_validated() {
        let f = Precision::F32;
        assert!(GemmShape::new(785, 2304, 768, f, Epilogue::Bias).is_ok());
        assert!(GemmShape::new(0, 2304, 768, f, Epilogue::Bias).is_err());
        assert!(GemmShape::new(785, 0, 768, f, Epilogue::Bias).is_err());
        assert!(GemmShape::new(785, 2304, 0, f, Epilogue::None).is_err());
        assert!(GemmShape::new(i32::MAX as usize + 1, 1, 1, f, Epilogue::None).is_err());
        let big = i32::MAX as usize;
        assert!(GemmShape::new(big, big, 1, f, Epilogue::None).is_err());
        assert!(GemmShape::new(1 << 30, 1 << 30, 1, f, Epilogue::None).is_ok());
        let e = GemmShape::new(0, 1, 1, f, Epilogue::None).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        let s = shape(785, 3072, 768, Precision::Bf16, Epilogue::BiasGelu);
        assert_eq!(
            (s.x_len(), s.w_len(), s.y_len(), s.bias_len()),
            (785 * 768, 3072 * 768, 785 * 3072, 3072)
        );
        assert_eq!(shape(4, 5, 6, f, Epilogue::None).bias_len(), 0);
        assert_eq!(shape(2, 3, 4, f, Epilogue::None).flops(), 48.0);
    }

    #[test]
    fn layouts_are_the_tn_view_of_row_major_data() {
        let l = shape(785, 2304, 768, Precision::F32, Epilogue::Bias).layouts();
        assert_eq!(
            l.a,
            MatLayout {
                rows: 768,
                cols: 2304,
                ld: 768
            }
        );
        assert!(l.trans_a && !l.trans_b);
        assert_eq!(
            l.b,
            MatLayout {
                rows: 768,
                cols: 785,
                ld: 768
            }
        );
        assert_eq!(
            l.d,
            MatLayout {
                rows: 2304,
                cols: 785,
                ld: 2304
            }
        );
    }

    /// Column-major `D = op(A)·op(B) + bias(per row of D)` exactly as cuBLASLt defines it,
    /// on the buffers of row-major X, W, Y: must equal the row-major `Y = X·W^T + b` (and
    /// `X·W`, `X^T·W` for the other operand layouts).
    #[test]
    fn layout_math_matches_row_major_products() {
        let (m, n, k) = (7usize, 5usize, 3usize);
        let x: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let w: Vec<f64> = (0..n * k).map(|i| (i as f64 * 0.91).cos()).collect();
        let b: Vec<f64> = (0..n).map(|i| i as f64 - 2.0).collect();
        for ops in [Operands::XWt, Operands::XW, Operands::XtW] {
            let s = shape(m, n, k, Precision::F32, Epilogue::Bias).with_operands(ops);
            // Row-major reference: X[r][l] and W[c][l] as the operands store them.
            let xv = |r: usize, l: usize| match ops {
                Operands::XtW => x[l * m + r],
                _ => x[r * k + l],
            };
            let wv = |c: usize, l: usize| match ops {
                Operands::XWt => w[c * k + l],
                _ => w[l * n + c],
            };
            let mut want = vec![0.0; m * n];
            for r in 0..m {
                for c in 0..n {
                    let acc: f64 = (0..k).map(|l| xv(r, l) * wv(c, l)).sum();
                    want[r * n + c] = acc + b[c];
                }
            }
            // cuBLASLt semantics on the same buffers.
            let l = s.layouts();
            let at = |buf: &[f64], ml: MatLayout, r: u64, c: u64| -> f64 {
                assert!(r < ml.rows && c < ml.cols);
                assert_eq!(ml.ld, ml.rows as i64);
                buf[(r + c * ml.ld as u64) as usize]
            };
            let (a_rows, a_cols) = if l.trans_a {
                (l.a.cols, l.a.rows)
            } else {
                (l.a.rows, l.a.cols)
            };
            let (b_rows, b_cols) = if l.trans_b {
                (l.b.cols, l.b.rows)
            } else {
                (l.b.rows, l.b.cols)
            };
            assert_eq!((a_rows, a_cols), (n as u64, k as u64), "{ops:?}");
            assert_eq!((b_rows, b_cols), (k as u64, m as u64), "{ops:?}");
            assert_eq!((l.d.rows, l.d.cols), (a_rows, b_cols));
            let mut got = vec![f64::NAN; m * n];
            for i in 0..l.d.rows {
                for j in 0..l.d.cols {
                    let mut acc = 0.0;
                    for p in 0..a_cols {
                        let av = if l.trans_a {
                            at(&w, l.a, p, i)
                        } else {
                            at(&w, l.a, i, p)
                        };
                        let bv = if l.trans_b {
                            at(&x, l.b, j, p)
                        } else {
                            at(&x, l.b, p, j)
                        };
                        acc += av * bv;
                    }
                    // BIAS epilogue: one value per row of D.
                    got[(i + j * l.d.ld as u64) as usize] = acc + b[i as usize];
                }
            }
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12, "{ops:?}: {got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn gelu_is_exact_on_the_f32_path() {
        use ltsys::cublasLtEpilogue_t as E;
        let f = shape(8, 8, 8, Precision::F32, Epilogue::BiasGelu).epilogue_plan();
        assert_eq!(f.lt, E::CUBLASLT_EPILOGUE_DEFAULT);
        assert!(f.gelu_kernel && !f.lt_bias);
        let b = shape(8, 8, 8, Precision::Bf16, Epilogue::BiasGelu).epilogue_plan();
        assert_eq!(b.lt, E::CUBLASLT_EPILOGUE_GELU_BIAS);
        assert!(!b.gelu_kernel && b.lt_bias);
        for p in [Precision::F32, Precision::Bf16] {
            let e = shape(8, 8, 8, p, Epilogue::Bias).epilogue_plan();
            assert_eq!(
                (e.lt, e.lt_bias, e.gelu_kernel),
                (E::CUBLASLT_EPILOGUE_BIAS, true, false)
            );
            let e = shape(8, 8, 8, p, Epilogue::None).epilogue_plan();
            assert_eq!(
                (e.lt, e.lt_bias, e.gelu_kernel),
                (E::CUBLASLT_EPILOGUE_DEFAULT, false, false)
            );
        }
        let (t, c) = shape(8, 8, 8, Precision::F32, Epilogue::None).lt_types();
        assert_eq!(t, ltsys::cudaDataType::CUDA_R_32F);
        assert_eq!(c, ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F);
        let (t, _) = shape(8, 8, 8, Precision::Bf16, Epilogue::None).lt_types();
        assert_eq!(t, ltsys::cudaDataType::CUDA_R_16BF);
    }

    #[test]
    fn mixed_output_and_accumulation_are_validated() {
        let b = shape(785, 768, 3072, Precision::Bf16, Epilogue::Bias);
        assert_eq!((b.output, b.accumulate), (Precision::Bf16, false));
        let m = b
            .with_output(Precision::F32)
            .unwrap()
            .accumulating()
            .unwrap();
        assert_eq!((m.output, m.accumulate), (Precision::F32, true));
        assert_eq!(m.out_type(), ltsys::cudaDataType::CUDA_R_32F);
        assert_eq!(m.lt_types().0, ltsys::cudaDataType::CUDA_R_16BF);
        assert_eq!(b.out_type(), ltsys::cudaDataType::CUDA_R_16BF);
        // f32 inputs cannot narrow to bf16 output.
        let f = shape(8, 8, 8, Precision::F32, Epilogue::Bias);
        assert!(f.with_output(Precision::Bf16).is_err());
        assert!(f.accumulating().is_ok());
        // No GELU on an accumulated sum.
        let g = shape(8, 8, 8, Precision::Bf16, Epilogue::BiasGelu);
        assert!(g.accumulating().is_err());
        assert!(g.with_output(Precision::F32).is_ok());
        // Element types of a run: inputs and output both checked.
        let ok = 0x7f00_0000_0000u64;
        assert!(m
            .check_run_mixed(Precision::Bf16, Precision::F32, ok, ok, ok, ok)
            .is_ok());
        assert!(m.check_run(Precision::Bf16, ok, ok, ok, ok).is_err());
        assert!(m.check_run(Precision::F32, ok, ok, ok, ok).is_err());
        assert!(b.check_run(Precision::Bf16, ok, ok, ok, ok).is_ok());
    }

    #[test]
    fn run_arguments_are_checked_on_the_host() {
        let s = shape(785, 768, 3072, Precision::F32, Epilogue::Bias);
        let ok = 0x7f00_0000_0000u64;
        assert!(s
            .check_run(Precision::F32, ok, ok + 256, ok + 512, ok + 1024)
            .is_ok());
        // Wrong element type.
        assert!(s.check_run(Precision::Bf16, ok, ok, ok, ok).is_err());
        // Null and misaligned pointers.
        assert!(s.check_run(Precision::F32, 0, ok, ok, ok).is_err());
        assert!(s.check_run(Precision::F32, ok, ok + 4, ok, ok).is_err());
        assert!(s.check_run(Precision::F32, ok, ok, ok, ok + 8).is_err());
        // A bias is needed with a bias epilogue, not without.
        assert!(s.check_run(Precision::F32, ok, ok, 0, ok).is_err());
        let s = shape(785, 768, 3072, Precision::F32, Epilogue::None);
        assert!(s.check_run(Precision::F32, ok, ok, 0, ok).is_ok());
        // Workspace.
        assert!(Workspace::none().check().is_ok());
        let mut w = Workspace::none();
        w.bytes = GEMM_WORKSPACE_BYTES;
        assert!(w.check().is_err());
        w.ptr.0 = ok + 16;
        assert!(w.check().is_err());
        w.ptr.0 = ok;
        assert!(w.check().is_ok());
    }
}
