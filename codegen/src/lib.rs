//! Kiln's code generation: kernel graphs to native code.
//!
//! - [`kir`]: the loop-level kernel IR shared by the CPU and GPU backends (prints as text).
//! - [`lower`]: a kernel body (`ir::Graph`) to loop kernels and library calls.
//! - [`llvm`]: kernel IR to LLVM IR (inkwell), O3, object code for the host CPU.
//! - [`cpu`]: the whole CPU pipeline, `KernelGraph -> runtime::Artifact`.
//!
//! ```
//! use ir::{DType, Graph, Op, BinaryOp, KernelGraph};
//! let mut g = Graph::new("axpy");
//! let x = g.input("x", DType::F32, [3, 5]).unwrap();
//! let a = g.input("a", DType::F32, [5]).unwrap();
//! let y = g.add(Op::Binary(BinaryOp::Mul), &[x, a]).unwrap();
//! g.set_outputs(vec![y]);
//! let art = codegen::cpu::compile(&KernelGraph::one_per_op(&g), &codegen::cpu::CpuOptions::default()).unwrap();
//! let mut exec = runtime::CpuExecutor::new(&art).unwrap();
//! let xs = runtime::HostTensor::from_f32([3, 5], &[2.0; 15]).unwrap();
//! let as_ = runtime::HostTensor::from_f32([5], &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
//! let out = exec.run(&[xs, as_]).unwrap();
//! assert_eq!(out[0].as_f32().unwrap()[..5], [2.0, 4.0, 6.0, 8.0, 10.0]);
//! ```

pub mod cpu;
pub mod gpu;
pub mod kir;
pub mod llvm;
pub mod lower;

use thiserror::Error;

/// Codegen's one error type.
#[derive(Debug, Error)]
pub enum CodegenError {
    #[error("the kernel graph is invalid: {0}")]
    InvalidGraph(#[from] ir::IrError),
    #[error("kernel {kernel}: {reason} is not supported by the CPU backend")]
    Unsupported { kernel: String, reason: String },
    #[error("LLVM failed while {stage}: {message}")]
    Llvm { stage: &'static str, message: String },
    #[error("linking the shared library with `{command}` failed: {message}")]
    Link { command: String, message: String },
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
}
