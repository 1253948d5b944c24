//! The frontend's one error type. Every variant names the op (PyTorch's name for it) and says
//! what was wrong in a sentence a user understands.

use ir::{DType, IrError, Shape};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum FrontendError {
    /// An error from the IR underneath (graph construction, verification).
    #[error(transparent)]
    Ir(Box<IrError>),
    #[error("{op}: the operands belong to different tracers (trace each model with one tracer)")]
    TracerMismatch { op: &'static str },
    #[error("{op}: shapes {lhs} and {rhs} are not broadcastable")]
    Broadcast { op: &'static str, lhs: Box<Shape>, rhs: Box<Shape> },
    #[error("{op}: expected {expected}, got a tensor of shape {shape} (rank {})", shape.rank())]
    Rank { op: &'static str, expected: &'static str, shape: Box<Shape> },
    #[error("{op}: dimension {dim} is out of range for a tensor of rank {rank} (expected a value in [{}, {}])", -(*rank as i64).max(1), (*rank as i64 - 1).max(0))]
    BadDim { op: &'static str, dim: isize, rank: usize },
    #[error("{op}: dimension {dim} is repeated")]
    RepeatedDim { op: &'static str, dim: usize },
    #[error("{op}: dtype {dtype} is not supported (expected {expected})")]
    BadDType { op: &'static str, dtype: DType, expected: &'static str },
    #[error("{op}: operand dtypes {lhs} and {rhs} differ (call to_dtype on one of them)")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },
    #[error("{op}: input has {input} features but weight expects {expected}")]
    Features { op: &'static str, input: usize, expected: usize },
    #[error("{op}: cannot multiply shapes {lhs} and {rhs}")]
    MatMul { op: &'static str, lhs: Box<Shape>, rhs: Box<Shape> },
    #[error("{op}: cannot reshape a tensor of shape {shape} into {target:?}: {reason}")]
    Reshape { op: &'static str, shape: Box<Shape>, target: Vec<isize>, reason: String },
    #[error("{op}: {reason}")]
    Invalid { op: &'static str, reason: String },
    #[error("{op}: a tensor of shape {shape} has more elements than Kiln can index")]
    TooLarge { op: &'static str, shape: Box<Shape> },
    #[error("parameter {name:?} was requested as {requested_dtype}{requested} but already exists as {dtype}{shape}")]
    ParamConflict { name: String, dtype: DType, shape: Box<Shape>, requested_dtype: DType, requested: Box<Shape> },
    #[error("{module}: expected {expected} input(s), got {got}")]
    InputCount { module: String, expected: usize, got: usize },
}

impl From<IrError> for FrontendError {
    fn from(e: IrError) -> FrontendError {
        FrontendError::Ir(Box::new(e))
    }
}

// Shapes and the IR error are boxed so `Result<Tensor, FrontendError>` stays small.
const _: () = assert!(std::mem::size_of::<FrontendError>() <= 80);

pub type Result<T, E = FrontendError> = std::result::Result<T, E>;

pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> FrontendError {
    FrontendError::Invalid { op, reason: reason.into() }
}
