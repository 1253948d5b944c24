//! The cost model: a kernel costs `max(bytes / bandwidth, flops / peak) + launch`.
//!
//! - bytes: every input buffer read once plus every output buffer written once (a fused
//!   kernel keeps its intermediates in registers / shared memory; movement ops are index
//!   maps and cost nothing);
//! - flops: elementwise 1 per output element, reductions 1 per input element, matmul
//!   `2·batch·m·n·k`, flash attention `4·batch·s_q·s_k·d` (half when causal);
//! - launch: per kernel, from the [`DeviceProfile`].
//!
//! The cost is monotone: adding an op to a kernel never lowers its bytes or flops, and a
//! kernel boundary always adds a write, a read and a launch. This is what makes "fuse when
//! legal" the cost-optimal choice for the grouping pass (see `docs/passes.md`).

use ir::{Graph, Kernel, KernelGraph, Op, OpClass};

/// Ceilings of a device. Presets: [`DeviceProfile::h200`], [`DeviceProfile::cpu`].
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceProfile {
    pub name: &'static str,
    /// Device-memory bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Peak arithmetic throughput (bf16 tensor cores on a GPU), flop per second.
    pub peak_flops: f64,
    /// Cost of one kernel launch, seconds.
    pub launch: f64,
}

impl DeviceProfile {
    /// Measured on an H200 (2026-11-22): 4.25 TB/s copy, 680 TFLOP/s bf16 matmul, 1.25 µs per
    /// kernel inside a CUDA graph.
    pub fn h200() -> DeviceProfile {
        DeviceProfile { name: "h200", bandwidth: 4.25e12, peak_flops: 680e12, launch: 1.25e-6 }
    }

    /// Measure-free defaults for a small multi-core CPU: 20 GB/s of DRAM bandwidth, 100
    /// GFLOP/s (a few AVX2 cores), 2 µs to dispatch a kernel to a thread pool. Only the
    /// ratios matter for fusion decisions; they favour fusion as the GPU profile does.
    pub fn cpu() -> DeviceProfile {
        DeviceProfile { name: "cpu", bandwidth: 20e9, peak_flops: 100e9, launch: 2e-6 }
    }

    /// Seconds for a kernel moving `bytes` and doing `flops`.
    pub fn kernel_seconds(&self, bytes: f64, flops: f64) -> f64 {
        (bytes / self.bandwidth).max(flops / self.peak_flops) + self.launch
    }
}

/// Flops of one op given its output and operand shapes.
pub fn op_flops(op: &Op, out: &ir::Shape, ins: &[&ir::Shape]) -> f64 {
    match op {
        Op::MatMul => {
            let a = ins[0];
            let k = a.dims()[a.rank() - 1];
            2.0 * out.numel() as f64 * k as f64
        }
        Op::FlashAttention { causal, .. } => {
            let (q, k) = (ins[0], ins[1]);
            let r = q.rank();
            let batch: usize = q.dims()[..r - 2].iter().product();
            let f = 4.0 * (batch * q.dims()[r - 2] * k.dims()[r - 2] * q.dims()[r - 1]) as f64;
            if *causal { f / 2.0 } else { f }
        }
        op => match op.class() {
            OpClass::Elementwise => out.numel() as f64,
            OpClass::Reduction => ins[0].numel() as f64,
            _ => 0.0,
        },
    }
}

/// Flops of a kernel body.
pub fn body_flops(body: &Graph) -> f64 {
    body.nodes()
        .map(|(_, n)| {
            let ins: Vec<&ir::Shape> = n.inputs.iter().map(|&i| &body.node(i).shape).collect();
            op_flops(&n.op, &n.shape, &ins)
        })
        .sum()
}

/// The estimate for one kernel of a kernel graph.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCost {
    pub bytes: f64,
    pub flops: f64,
    pub seconds: f64,
}

pub fn kernel_cost(kg: &KernelGraph, k: &Kernel, p: &DeviceProfile) -> KernelCost {
    let bytes: usize = k.inputs.iter().chain(&k.outputs).map(|&b| kg.buffer(b).bytes()).sum();
    let flops = body_flops(&k.body);
    KernelCost { bytes: bytes as f64, flops, seconds: p.kernel_seconds(bytes as f64, flops) }
}

/// Total estimated seconds of a kernel graph (each buffer is written once, so shared values
/// are paid once).
pub fn graph_seconds(kg: &KernelGraph, p: &DeviceProfile) -> f64 {
    kg.kernels.iter().map(|k| kernel_cost(kg, k, p).seconds).sum()
}
