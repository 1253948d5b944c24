//! The runtime's one error type.

use ir::{DType, Shape};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("the graph takes {expected} input(s), {got} given")]
    InputCount { expected: usize, got: usize },
    #[error("the graph returns {expected} output(s), {got} output tensor(s) given")]
    OutputCount { expected: usize, got: usize },
    #[error("input {index} ({name:?}) must be {expected_dtype}{expected_shape}, got {dtype}{shape}")]
    InputType { index: usize, name: String, expected_dtype: DType, expected_shape: Shape, dtype: DType, shape: Shape },
    #[error("output {index} must be {expected_dtype}{expected_shape}, got {dtype}{shape}")]
    OutputType { index: usize, expected_dtype: DType, expected_shape: Shape, dtype: DType, shape: Shape },
    #[error("tensor data holds {got} bytes but {dtype}{shape} needs {expected}")]
    DataSize { dtype: DType, shape: Shape, expected: usize, got: usize },
    #[error("artifact is for target {artifact}, this machine is {host}")]
    TargetMismatch { artifact: String, host: String },
    #[error("cannot load the native code of artifact {artifact:?}: {message}")]
    Load { artifact: String, message: String },
    #[error("step {step} (kernel {kernel}): symbol {symbol:?} is missing from the native code")]
    MissingSymbol { step: usize, kernel: String, symbol: String },
    #[error("artifact {artifact:?} is malformed: step {step} (kernel {kernel}) {reason}")]
    BadArtifact { artifact: String, step: usize, kernel: String, reason: String },
    #[error("step {step} (kernel {kernel}) failed: {reason}")]
    Step { step: usize, kernel: String, reason: String },
    #[error("cache: {0}")]
    Cache(String),
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("converting a value: {0}")]
    Value(#[from] ir::IrError),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
