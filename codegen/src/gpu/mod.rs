//! The GPU backend: `ir::KernelGraph` -> [`runtime::cuda::CudaArtifact`] (PTX + steps + plan).
//!
//! ```text
//! KernelGraph --lower (per kernel body: loop kernels, cuBLASLt GEMMs, attention as
//!               GEMM + fused masked softmax + GEMM)--> steps over buffers
//!             --emit (MLIR text: gpu/arith/memref/scf/vector/llvm-intrinsic ops)-->
//!             --melior: nvvm-attach-target, convert-gpu-to-nvvm, gpu-module-to-binary--> PTX
//! ```
//!
//! Loop kernels are built straight from the kernel bodies (primitive `ir::Graph`s): the body
//! *is* the loop-level description (an iteration space, index maps for movement ops, loads,
//! stores and math), and the emitter in [`emit`] walks it. The MLIR->PTX step needs no GPU, so
//! it runs in CI; `scripts/check-ptx` assembles what the tests wrote with `ptxas` for sm_90a.

mod emit;
mod lower;
mod math;
mod ptx;

pub use emit::EmittedKernel;
pub use lower::single_kernel;

use ir::{Graph, IrError, KernelGraph};
use runtime::cuda::CudaArtifact;
use thiserror::Error;

/// Which GPU generation the PTX is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SmVersion {
    /// Hopper (H100, H200): `sm_90`, PTX 8.0.
    #[default]
    Sm90,
    /// Ampere (A100): `sm_80`, PTX 7.0.
    Sm80,
}

impl SmVersion {
    pub fn name(self) -> &'static str {
        match self {
            SmVersion::Sm90 => "sm_90",
            SmVersion::Sm80 => "sm_80",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    pub sm: SmVersion,
}

#[derive(Debug, Error)]
pub enum GpuError {
    #[error("kernel {kernel}: the GPU backend cannot build {reason}")]
    Unsupported { kernel: String, reason: String },
    #[error("MLIR {stage} failed: {message}\n--- module ---\n{module}")]
    Mlir { stage: String, message: String, module: String },
    #[error(transparent)]
    Ir(#[from] IrError),
}

impl GpuError {
    pub(crate) fn in_kernel(self, kernel: &str) -> GpuError {
        match self {
            GpuError::Unsupported { kernel: k, reason } if k.is_empty() => GpuError::Unsupported { kernel: kernel.into(), reason },
            e => e,
        }
    }
}

/// Compiles a kernel graph for a CUDA device.
pub fn compile(kg: &KernelGraph, opts: &GpuOptions) -> Result<CudaArtifact, GpuError> {
    lower::lower(kg, opts)
}

/// Compiles a whole primitive graph as if it were one kernel: the backend itself splits it at
/// matmuls, attention and incompatible reductions (what `passes` does better, for tests and
/// for graphs that skip the optimizer).
pub fn compile_graph(g: &Graph, opts: &GpuOptions) -> Result<CudaArtifact, GpuError> {
    lower::lower(&single_kernel(g)?, opts)
}

/// The MLIR module text of a kernel graph (for inspection and golden tests).
pub fn mlir_text(kg: &KernelGraph) -> Result<String, GpuError> {
    lower::lower_to_mlir(kg)
}
