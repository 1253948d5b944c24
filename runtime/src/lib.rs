//! Kiln's runtime: what runs a compiled graph, with no compiler in sight.
//!
//! - [`Artifact`]: plain data (serde) — native code as shared-library bytes, the step list and
//!   the buffer plan. It is what the compile [`cache`] stores.
//! - [`CpuExecutor`]: loads an artifact (`libloading`) and runs it over the machine's cores;
//!   intermediates live in one arena sized by liveness planning ([`plan`]).
//! - Library kernels called by steps: matmul through the `gemm` crate ([`kernels::gemm`]) and a
//!   tiled online-softmax flash attention ([`kernels::attention`]).
//!
//! The runtime never depends on `codegen`, `passes` or `frontend`: an artifact runs without the
//! compiler, which is what makes caching and ahead-of-time packages possible.

mod artifact;
pub mod cache;
pub mod cuda;
mod error;
mod exec;
pub mod kernels;
pub mod plan;
mod tensor;

pub use artifact::{Artifact, AttentionStep, BufferDesc, GemmStep, Location, LoopStep, MatView, Step, LOOP_ABI};
pub use error::{Result, RuntimeError};
pub use exec::CpuExecutor;
pub use tensor::{HostTensor, TensorMut, TensorRef};

/// Kiln's version, part of every cache key.
pub const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");
