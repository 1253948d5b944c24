//! Kiln's typed tensor IR.
//!
//! - [`Op`]: the one op enum (primitives, plus the composites passes create), with [`OpClass`].
//! - [`Graph`]: plain-value [`Node`]s in a petgraph DAG, append-only, shapes and dtypes inferred
//!   by [`infer::infer`] and checked by [`verify::verify`].
//! - [`text`]: a text format that prints and parses back exactly; [`Graph::to_dot`].
//! - [`interp`]: the f64 reference interpreter, the oracle of every numeric test.
//! - [`KernelGraph`]: the optimizer's output and codegen's input.
//!
//! ```
//! use ir::{DType, Graph, Op, BinaryOp, interp};
//! let mut g = Graph::new("axpy");
//! let x = g.input("x", DType::F32, [2, 3]).unwrap();
//! let a = g.input("a", DType::F32, [3]).unwrap();
//! let y = g.add(Op::Binary(BinaryOp::Mul), &[x, a]).unwrap();   // broadcasts [3] over [2,3]
//! g.set_outputs(vec![y]);
//! ir::verify::verify(&g).unwrap();
//! assert_eq!(ir::text::parse(&g.to_string()).unwrap(), g);
//! let out = interp::run(&g, &[
//!     interp::Value::new(DType::F32, [2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap(),
//!     interp::Value::new(DType::F32, [3], vec![2., 0.5, -1.]).unwrap(),
//! ]).unwrap();
//! assert_eq!(out[0].data, vec![2., 1., -3., 8., 2.5, -6.]);
//! ```

mod dot;
mod dtype;
mod error;
mod graph;
pub mod infer;
pub mod interp;
mod kernel;
mod op;
mod shape;
pub mod text;
pub mod verify;

pub use dtype::DType;
pub use error::{IrError, Result};
pub use graph::{Graph, Node, NodeId};
pub use kernel::{Buffer, BufferId, Kernel, KernelGraph, KernelId, KernelKind};
pub use op::{BinaryOp, CmpOp, FusedBody, Op, OpClass, ReduceOp, Scalar, UnaryOp};
pub use shape::{normalize_axis, Shape};
