//! The IR's one error type. Every variant says, in a sentence a user understands, what was wrong.

use crate::{DType, NodeId, Shape};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum IrError {
    #[error("{op}: shapes {lhs} and {rhs} do not match (or do not broadcast)")]
    ShapeMismatch { op: &'static str, lhs: Shape, rhs: Shape },
    #[error("{op}: operand dtypes {lhs} and {rhs} differ (insert a cast)")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },
    #[error("{op}: dtype {dtype} is not allowed here (expected {expected})")]
    BadDType { op: &'static str, dtype: DType, expected: &'static str },
    #[error("axis {axis} is out of range for a tensor of rank {rank}")]
    BadAxis { axis: isize, rank: usize },
    #[error("{op}: expected {expected} operand(s), got {got}")]
    Arity { op: &'static str, expected: usize, got: usize },
    #[error("{op}: {reason}")]
    Invalid { op: &'static str, reason: String },
    #[error("node {0} does not exist in this graph")]
    UnknownNode(NodeId),
    #[error("graph input name {0:?} is used twice")]
    DuplicateInput(String),
    #[error("verifier: node {node}: {reason}")]
    Verify { node: NodeId, reason: String },
    #[error("verifier: {0}")]
    VerifyGraph(String),
    #[error("parse error at line {line}, column {col}: {msg}")]
    Parse { line: usize, col: usize, msg: String },
    #[error("interpreter: {0}")]
    Interp(String),
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;
