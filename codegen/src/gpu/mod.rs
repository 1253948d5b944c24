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
mod prologue;
mod ptx;

pub use emit::{with_skinny_clusters, with_skinny_gemm, with_skinny_splits, EmittedKernel, SplitPolicy};
pub use ptx::with_kernel_trace;
pub use prologue::{with_fused_norms, with_norm_stats};
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
    lower::lower(&*integer_matmuls_as_reductions(kg)?, opts)
}

/// cuBLASLt multiplies floats only: an integer `a @ b` becomes
/// `sum(reshape(a, [.., m, k, 1]) * reshape(b, [.., 1, k, n]), axis=-2)`, which the loop
/// kernels compute exactly (wrapping like PyTorch's integer matmul).
fn integer_matmuls_as_reductions(kg: &KernelGraph) -> Result<std::borrow::Cow<'_, KernelGraph>, GpuError> {
    let int_mm = |g: &Graph| g.nodes().any(|(_, n)| n.op == ir::Op::MatMul && !n.dtype.is_float());
    if !kg.kernels.iter().any(|k| int_mm(&k.body)) {
        return Ok(std::borrow::Cow::Borrowed(kg));
    }
    let mut out = kg.clone();
    for k in out.kernels.iter_mut().filter(|k| int_mm(&k.body)) {
        let body = &k.body;
        let mut g = Graph::new(body.name());
        let mut map = Vec::with_capacity(body.len());
        for (id, n) in body.nodes() {
            let ins: Vec<_> = n.inputs.iter().map(|i| map[i.index()]).collect();
            let new = match &n.op {
                ir::Op::Input { .. } => {
                    let nid = g.push(ir::Node { op: n.op.clone(), dtype: n.dtype, shape: n.shape.clone(), inputs: Default::default() });
                    if body.inputs().contains(&id) {
                        g.register_input(nid);
                    }
                    nid
                }
                ir::Op::MatMul if !n.dtype.is_float() => {
                    let (a, b) = (body.node(n.inputs[0]).shape.dims().to_vec(), body.node(n.inputs[1]).shape.dims().to_vec());
                    let a4: Vec<usize> = a.iter().copied().chain([1]).collect();
                    let mut b4 = b.clone();
                    b4.insert(b.len() - 2, 1);
                    let a4 = g.add(ir::Op::Reshape { shape: a4.into() }, &[ins[0]])?;
                    let b4 = g.add(ir::Op::Reshape { shape: b4.into() }, &[ins[1]])?;
                    let prod = g.add(ir::Op::Binary(ir::BinaryOp::Mul), &[a4, b4])?;
                    let rank = g.node(prod).shape.rank();
                    g.add(ir::Op::Reduce { op: ir::ReduceOp::Sum, axes: vec![rank - 2], keepdim: false }, &[prod])?
                }
                op => g.push(ir::Node { op: op.clone(), dtype: n.dtype, shape: n.shape.clone(), inputs: ins.into_iter().collect() }),
            };
            map.push(new);
        }
        g.set_outputs(body.outputs().iter().map(|o| map[o.index()]).collect());
        k.body = g;
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Compiles a whole primitive graph as if it were one kernel: the backend itself splits it at
/// matmuls, attention and incompatible reductions (what `passes` does better, for tests and
/// for graphs that skip the optimizer).
pub fn compile_graph(g: &Graph, opts: &GpuOptions) -> Result<CudaArtifact, GpuError> {
    compile(&single_kernel(g)?, opts)
}

/// The MLIR module text of a kernel graph for sm_90 (for inspection and golden tests).
pub fn mlir_text(kg: &KernelGraph) -> Result<String, GpuError> {
    lower::lower_to_mlir(kg, SmVersion::Sm90)
}
