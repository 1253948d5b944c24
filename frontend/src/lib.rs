//! Kiln's tracing frontend: an eager-looking, PyTorch-named [`Tensor`] API that records ops
//! into an [`ir::Graph`], the [`Module`] trait for models with parameters, [`trace`], and the
//! model zoo ([`models`]).
//!
//! - [`Tracer`] owns the graph under construction; a [`Tensor`] is a cheap handle (tracer +
//!   node). Every op returns `Result<Tensor, FrontendError>`; bad input is an `Err`, never a
//!   panic. Operators (`+ - * /`, unary `-`) work on `&Tensor`, `Tensor` and numbers.
//! - Dtypes promote as in PyTorch (`cast` nodes are inserted); numbers become rank-0 `full`
//!   nodes. Dims may be negative.
//! - High-level ops decompose into IR primitives here (see the README's table): softmax,
//!   layer_norm, gelu, linear, tril, masked_fill, ...
//! - Parameters are graph inputs, fetched by name through [`Vars`] (see [`module`]).
//!
//! ```
//! use frontend::Tracer;
//! use ir::{interp::Value, DType};
//!
//! // y = softmax(x * 2 + 1, dim=-1)
//! let tr = Tracer::new("tiny");
//! let x = tr.input("x", DType::F32, [2, 3])?;
//! let y = ((&x * 2.0)? + 1.0)?.softmax(-1)?;
//! let g = tr.finish(&[&y])?;
//!
//! let xv = Value::new(DType::F32, [2, 3], vec![0., 1., 2., 0., 0., 0.])?;
//! let out = ir::interp::run(&g, &[xv])?;
//! let e: Vec<f64> = [1.0f64, 3.0, 5.0].iter().map(|v| v.exp()).collect();
//! let s: f64 = e.iter().sum();
//! assert!((out[0].data[2] - e[2] / s).abs() < 1e-12);
//! assert!((out[0].data[3] - 1.0 / 3.0).abs() < 1e-12);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```


mod elementwise;
mod error;
mod linalg;
pub mod aten;
pub mod models;
pub mod module;
mod movement;
pub mod nn;
mod promote;
mod reduce;
pub mod rng;
mod tracer;

pub use elementwise::{where_, GeluApproximate};
pub use error::{FrontendError, Result};
pub use module::{module_fn, trace, FnModule, Init, InputSpec, Module, Role, Traced, Vars};
pub use movement::{cat, stack, Sizes};
pub use promote::{promote_types, result_type, Operand};
pub use reduce::Dims;
pub use tracer::{Tensor, Tracer};
