//! The GPU side of the runtime: what a compiled graph is on a CUDA device ([`CudaArtifact`],
//! plain data that `codegen::gpu` produces) and, with the `cuda` feature, the executor that runs
//! it ([`CudaExecutor`]).
//!
//! A `CudaArtifact` holds one PTX module with every generated kernel, the buffer plan (caller
//! inputs and outputs stay where the caller put them; intermediates share one arena planned by
//! liveness), and the steps: kernel launches, cuBLASLt GEMMs and copies.

#[cfg(feature = "cuda")]
mod exec;
#[cfg(feature = "cuda")]
mod gemm;
pub mod trace;

#[cfg(feature = "cuda")]
pub use exec::{driver_present, CudaExecutor, DeviceTensor, GraphMode};

use ir::DType;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where a buffer lives while the graph runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GpuLocation {
    /// The caller's input tensor at this position.
    Input(usize),
    /// The caller's output tensor at this position.
    Output(usize),
    /// Inside the executor's arena, at this byte offset (256-byte aligned).
    Arena { offset: usize },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuBuffer {
    #[serde(with = "crate::artifact::dtype_serde")]
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub location: GpuLocation,
    /// First and last step that touch it (inclusive).
    pub live: (usize, usize),
}

impl GpuBuffer {
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_bytes()
    }
}

/// A kernel of the artifact's PTX module, launched over `grid x block`; its parameters are the
/// base addresses of `args` (buffer indices), in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchStep {
    pub kernel: String,
    pub symbol: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub args: Vec<u32>,
}

/// An epilogue cuBLASLt applies in the GEMM itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GemmActivation {
    Relu,
    /// The tanh approximation.
    GeluTanh,
}

/// One operand of a GEMM: a stack of row-major matrices in a buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmOperand {
    pub buffer: u32,
    /// Stored as the transpose (`[cols, rows]` row-major) of the logical matrix.
    pub transposed: bool,
    /// Elements between consecutive matrices of the batch (0: one matrix shared by all).
    pub batch_stride: i64,
}

/// `c[i] = a[i] @ b[i] (+ residual[i]) (+ bias) (act)` for `i < batch`, row-major `[m, k] @ [k, n] -> [m, n]`,
/// all operands and the result of `dtype` (accumulation in f32).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmStep {
    pub kernel: String,
    #[serde(with = "crate::artifact::dtype_serde")]
    pub dtype: DType,
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: GemmOperand,
    pub b: GemmOperand,
    /// Contiguous `[batch, m, n]`.
    pub c: u32,
    /// A `[n]` vector added to every row.
    pub bias: Option<u32>,
    pub activation: Option<GemmActivation>,
    /// A contiguous `[batch, m, n]` buffer added to the product (cuBLASLt's C operand with
    /// beta = 1, before the bias): `c = a @ b + residual (+ bias)`. Never with an activation.
    pub residual: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GpuStep {
    Launch(LaunchStep),
    Gemm(GemmStep),
    /// Copy a whole buffer (an output that is an input, or one value returned twice).
    Copy { from: u32, to: u32 },
}

impl GpuStep {
    pub fn kernel(&self) -> &str {
        match self {
            GpuStep::Launch(l) => &l.kernel,
            GpuStep::Gemm(g) => &g.kernel,
            GpuStep::Copy { .. } => "copy",
        }
    }

    /// Every buffer the step reads or writes. The executor rebinds a step of a captured CUDA
    /// graph only when one of these moved, so a new field naming a buffer must be listed here
    /// (the patterns are exhaustive on purpose: adding a field fails to compile until it is).
    pub fn buffers(&self) -> Vec<u32> {
        match self {
            GpuStep::Launch(LaunchStep { kernel: _, symbol: _, grid: _, block: _, args }) => args.clone(),
            GpuStep::Gemm(GemmStep { kernel: _, dtype: _, batch: _, m: _, n: _, k: _, a, b, c, bias, activation: _, residual }) => {
                [a.buffer, b.buffer, *c].into_iter().chain(*bias).chain(*residual).collect()
            }
            GpuStep::Copy { from, to } => vec![*from, *to],
        }
    }
}

/// A compiled graph for a CUDA device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaArtifact {
    pub name: String,
    /// `sm_90` or `sm_80`: what the PTX was generated for.
    pub arch: String,
    /// One PTX module holding every launched kernel (empty when there is none).
    pub ptx: String,
    pub buffers: Vec<GpuBuffer>,
    pub inputs: Vec<u32>,
    pub input_names: Vec<String>,
    pub outputs: Vec<u32>,
    pub arena_bytes: usize,
    /// What the intermediates would take without liveness-based reuse.
    pub unplanned_bytes: usize,
    pub steps: Vec<GpuStep>,
}

impl CudaArtifact {
    /// Peak intermediate device memory of a run (the arena), in bytes.
    pub fn peak_memory(&self) -> usize {
        self.arena_bytes
    }

    pub fn summary(&self) -> String {
        let (mut l, mut g, mut c) = (0, 0, 0);
        for s in &self.steps {
            match s {
                GpuStep::Launch(_) => l += 1,
                GpuStep::Gemm(_) => g += 1,
                GpuStep::Copy { .. } => c += 1,
            }
        }
        format!(
            "cuda artifact @{} ({}): {l} kernel launches, {g} gemms, {c} copies; arena {} bytes (unplanned {}), ptx {} bytes",
            self.name,
            self.arch,
            self.arena_bytes,
            self.unplanned_bytes,
            self.ptx.len()
        )
    }
}

/// Alignment of every arena buffer (cuBLASLt and 16-byte vector loads need at least 16).
pub const ARENA_ALIGN: usize = 256;

/// Liveness planning of the arena: offsets for buffers of `(bytes, first step, last step)`, so
/// that buffers alive at the same time never overlap. Uses the CPU executor's planner
/// ([`crate::plan`]) on sizes rounded up to [`ARENA_ALIGN`], which keeps every offset a multiple
/// of it. Returns the offsets and the arena size.
pub fn plan_arena(reqs: &[(usize, usize, usize)]) -> (Vec<usize>, usize) {
    let reqs: Vec<crate::plan::Request> = reqs
        .iter()
        .map(|&(bytes, first, last)| crate::plan::Request { bytes: bytes.div_ceil(ARENA_ALIGN).max(1) * ARENA_ALIGN, live: (first, last) })
        .collect();
    crate::plan::plan(&reqs)
}

/// Everything that can go wrong on the GPU side, naming the kernel where there is one.
#[derive(Debug, Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda could not be loaded); GPU execution needs an NVIDIA driver")]
    NoDriver,
    #[error("CUDA device {ordinal} is not available: {message}")]
    NoDevice { ordinal: usize, message: String },
    #[error("out of GPU memory allocating {bytes} bytes for {what}: {message}")]
    OutOfMemory { what: String, bytes: usize, message: String },
    #[error("the PTX module of artifact {artifact:?} failed to load: {message}")]
    ModuleLoad { artifact: String, message: String },
    #[error("kernel {kernel} (symbol {symbol:?}) is missing from the loaded module: {message}")]
    MissingKernel { kernel: String, symbol: String, message: String },
    #[error("launching kernel {kernel} failed: {message}")]
    Launch { kernel: String, message: String },
    #[error("cuBLASLt GEMM of kernel {kernel} failed: {message}")]
    Gemm { kernel: String, message: String },
    #[error("CUDA {what} failed: {message}")]
    Driver { what: String, message: String },
    #[error("the graph takes {expected} input(s), {got} given")]
    InputCount { expected: usize, got: usize },
    #[error("the graph returns {expected} output(s), {got} given")]
    OutputCount { expected: usize, got: usize },
    #[error("{what} {index} must hold {expected} bytes ({dtype}{shape:?}), got {got}")]
    TensorSize { what: &'static str, index: usize, dtype: DType, shape: Vec<usize>, expected: usize, got: usize },
    #[error("artifact {artifact:?} is malformed: {reason}")]
    BadArtifact { artifact: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_reuses_dead_buffers_and_keeps_live_ones_apart() {
        let (off, total) = plan_arena(&[(1000, 0, 1), (1000, 1, 2), (1000, 2, 3)]);
        assert_eq!(off[0], off[2]);
        assert_ne!(off[0], off[1]);
        assert_eq!(total, 2 * 1024);
        assert!(off.iter().all(|o| o % ARENA_ALIGN == 0));
    }

    #[test]
    fn errors_name_the_kernel() {
        let e = CudaError::Launch { kernel: "k3_softmax".into(), message: "CUDA_ERROR_INVALID_VALUE".into() };
        assert!(e.to_string().contains("k3_softmax"));
        assert!(CudaError::NoDriver.to_string().contains("no CUDA driver found"));
    }
}
