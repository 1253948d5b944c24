//! The op set: one enum, grouped by category, plus the properties passes ask about.
//!
//! Kiln keeps the primitive set small (tinygrad-style). Everything else (softmax, layer_norm,
//! gelu, linear, attention written out by hand) is a decomposition in `frontend` or a pattern
//! that `passes` discovers. The composite ops at the end are only ever created by passes.

use crate::{DType, Graph, Shape};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Elementwise functions of one operand. Output dtype = input dtype (`Not` needs bool).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Tanh,
    Erf,
    Sin,
    Cos,
    Floor,
    /// Logical not (bool only).
    Not,
}

/// Elementwise functions of two operands of the same dtype, broadcast PyTorch-style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// True division for floats; truncation toward zero for integers (C semantics).
    Div,
    Max,
    Min,
    Pow,
    /// Logical and / or (bool only).
    And,
    Or,
}

/// Comparisons: same-dtype operands, broadcast, bool result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// An f64 that is `Eq + Hash` by its bits (NaN canonicalised, -0.0 kept distinct), so ops
/// carrying constants stay plain values.
#[derive(Clone, Copy, Debug, PartialOrd)]
pub struct Scalar(pub f64);

impl Scalar {
    fn bits(self) -> u64 {
        if self.0.is_nan() { f64::NAN.to_bits() } else { self.0.to_bits() }
    }
}
impl PartialEq for Scalar {
    fn eq(&self, o: &Scalar) -> bool {
        self.bits() == o.bits()
    }
}
impl Eq for Scalar {}
impl Hash for Scalar {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.bits().hash(h)
    }
}
impl fmt::Display for Scalar {
    /// Shortest text that parses back to the same f64 (`inf`, `-inf`, `nan` included).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_nan() {
            f.write_str("nan")
        } else if self.0.is_infinite() {
            f.write_str(if self.0 > 0.0 { "inf" } else { "-inf" })
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// The body of a fused kernel: a primitive subgraph whose inputs are the fused node's
/// operands (in order) and whose single output is the fused node's value.
/// Compared and hashed structurally.
#[derive(Clone, Debug)]
pub struct FusedBody(pub Arc<Graph>);

impl PartialEq for FusedBody {
    fn eq(&self, o: &FusedBody) -> bool {
        Arc::ptr_eq(&self.0, &o.0) || *self.0 == *o.0
    }
}
impl Eq for FusedBody {}
impl Hash for FusedBody {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.structural_hash().hash(h)
    }
}

/// Kiln's one op enum. A node is `(op, dtype, shape, inputs)`; see [`crate::Node`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    // ---- sources ----
    /// A graph input (activation or parameter), bound by name and position.
    Input { name: String },
    /// A tensor filled with one value (the node's dtype and shape give the rest).
    Full { value: Scalar },
    /// `out[i_0, .., i_n] = i_axis`: index along one axis (builds masks such as `tril`).
    Iota { axis: usize },

    // ---- elementwise ----
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CmpOp),
    /// `where(cond, a, b)`: bool condition, broadcast over all three.
    Where,
    /// Element type conversion (float->int truncates toward zero; x->bool is `x != 0`).
    Cast { to: DType },

    // ---- reductions ----
    /// Reduce over `axes` (sorted, unique); `keepdim` keeps them as size 1.
    Reduce { op: ReduceOp, axes: Vec<usize>, keepdim: bool },

    // ---- movement (index maps; codegen never copies for them unless it must) ----
    /// Same elements, new shape (row-major order preserved).
    Reshape { shape: Shape },
    /// `out.dims[i] = in.dims[perm[i]]`.
    Permute { perm: Vec<usize> },
    /// Broadcast size-1 (or missing leading) dims to `shape`.
    Expand { shape: Shape },
    /// `start..end` by `step` (step >= 1) along one axis.
    Slice { axis: usize, start: usize, end: usize, step: usize },
    /// Join operands along one axis.
    Concat { axis: usize },
    /// Pad each axis with (before, after) elements of `value`.
    Pad { pads: Vec<(usize, usize)>, value: Scalar },

    // ---- contraction ----
    /// `[.., m, k] @ [.., k, n] -> [.., m, n]`; batch dims broadcast; both operands rank >= 2.
    MatMul,

    // ---- composites (created by passes, never by the frontend) ----
    /// `softmax(q @ k^T * scale [+ causal mask]) @ v` on `[.., s_q, d]`, `[.., s_k, d]`,
    /// `[.., s_k, d_v]`; the causal mask keeps key `j <= i + (s_k - s_q)`.
    FlashAttention { causal: bool, scale: Scalar },
    /// A fused kernel; operands bind the body's inputs in order.
    Fused(FusedBody),
}

/// What kind of computation an op is; passes ask this instead of listing ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    Source,
    Elementwise,
    Reduction,
    Movement,
    Contraction,
    Composite,
}

impl Op {
    pub fn class(&self) -> OpClass {
        match self {
            Op::Input { .. } | Op::Full { .. } | Op::Iota { .. } => OpClass::Source,
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Cast { .. } => {
                OpClass::Elementwise
            }
            Op::Reduce { .. } => OpClass::Reduction,
            Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Expand { .. }
            | Op::Slice { .. }
            | Op::Concat { .. }
            | Op::Pad { .. } => OpClass::Movement,
            Op::MatMul => OpClass::Contraction,
            Op::FlashAttention { .. } | Op::Fused(_) => OpClass::Composite,
        }
    }

    /// Number of operands, or `None` when variadic (concat, fused).
    pub fn arity(&self) -> Option<usize> {
        Some(match self {
            Op::Input { .. } | Op::Full { .. } | Op::Iota { .. } => 0,
            Op::Unary(_) | Op::Cast { .. } | Op::Reduce { .. } => 1,
            Op::Reshape { .. } | Op::Permute { .. } | Op::Expand { .. } | Op::Slice { .. } | Op::Pad { .. } => 1,
            Op::Binary(_) | Op::Compare(_) | Op::MatMul => 2,
            Op::Where | Op::FlashAttention { .. } => 3,
            Op::Concat { .. } | Op::Fused(_) => return None,
        })
    }

    pub fn is_elementwise(&self) -> bool {
        self.class() == OpClass::Elementwise
    }

    /// Commutative binary ops (operands may be swapped).
    pub fn is_commutative(&self) -> bool {
        matches!(
            self,
            Op::Binary(BinaryOp::Add | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min | BinaryOp::And | BinaryOp::Or)
                | Op::Compare(CmpOp::Eq | CmpOp::Ne)
        )
    }

    /// Associative binary ops (exact on integers; on floats only up to rounding).
    pub fn is_associative(&self) -> bool {
        matches!(
            self,
            Op::Binary(BinaryOp::Add | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min | BinaryOp::And | BinaryOp::Or)
        )
    }

    /// The op's name in the text format.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Full { .. } => "full",
            Op::Iota { .. } => "iota",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Compare(c) => c.name(),
            Op::Where => "where",
            Op::Cast { .. } => "cast",
            Op::Reduce { op: ReduceOp::Sum, .. } => "sum",
            Op::Reduce { op: ReduceOp::Max, .. } => "max_reduce",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Expand { .. } => "expand",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::Pad { .. } => "pad",
            Op::MatMul => "matmul",
            Op::FlashAttention { .. } => "flash_attention",
            Op::Fused(_) => "fused",
        }
    }
}

macro_rules! named {
    ($ty:ident { $($v:ident => $s:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$v),*];
            pub fn name(self) -> &'static str { match self { $($ty::$v => $s),* } }
            pub fn from_name(s: &str) -> Option<$ty> { match s { $($s => Some($ty::$v),)* _ => None } }
        }
    };
}
named!(UnaryOp { Neg => "neg", Abs => "abs", Exp => "exp", Log => "log", Sqrt => "sqrt", Rsqrt => "rsqrt",
    Recip => "recip", Tanh => "tanh", Erf => "erf", Sin => "sin", Cos => "cos", Floor => "floor", Not => "not" });
named!(BinaryOp { Add => "add", Sub => "sub", Mul => "mul", Div => "div", Max => "max", Min => "min",
    Pow => "pow", And => "and", Or => "or" });
named!(CmpOp { Eq => "eq", Ne => "ne", Lt => "lt", Le => "le", Gt => "gt", Ge => "ge" });
