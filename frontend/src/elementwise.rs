//! Elementwise ops: arithmetic with PyTorch promotion, math functions, comparisons,
//! `where`/`masked_fill`, triangle masks, and the activations that decompose into them.

use crate::error::{FrontendError, Result};
use crate::promote::{promote, promote_in, result_type, Operand};
use crate::tracer::{Tensor, Tracer};
use ir::{BinaryOp, CmpOp, DType, Op, Shape, UnaryOp};

/// PyTorch's `F.gelu(approximate=...)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GeluApproximate {
    /// `0.5 * x * (1 + erf(x / sqrt(2)))`
    None,
    /// `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`
    Tanh,
}

/// Checks that shapes broadcast, naming the user-facing op.
pub(crate) fn broadcast_shapes(op: &'static str, shapes: &[&Shape]) -> Result<Shape> {
    let mut out = shapes[0].clone();
    for s in &shapes[1..] {
        out = Shape::broadcast(op, &out, s)
            .map_err(|_| FrontendError::Broadcast { op, lhs: out.clone().into(), rhs: (*s).clone().into() })?;
    }
    Ok(out)
}

/// `torch.where(cond, a, b)`: `a` where `cond` is true, else `b`; operands broadcast and
/// promote like any elementwise op.
pub fn where_(cond: &Tensor, a: impl Into<Operand>, b: impl Into<Operand>) -> Result<Tensor> {
    cond.where_(a, b)
}

fn binary_op(op: &'static str, b: BinaryOp, lhs: &Operand, rhs: &Operand, force: Option<DType>) -> Result<Tensor> {
    let (_, ts) = promote(op, &[lhs, rhs], force)?;
    broadcast_shapes(op, &[ts[0].shape(), ts[1].shape()])?;
    let logical = matches!(b, BinaryOp::And | BinaryOp::Or);
    if !logical && ts[0].dtype() == DType::Bool {
        return Err(FrontendError::BadDType { op, dtype: DType::Bool, expected: "a numeric dtype" });
    }
    ts[0].push(op, Op::Binary(b), &[&ts[1]])
}

impl Tensor {
    fn binary(&self, op: &'static str, b: BinaryOp, rhs: Operand) -> Result<Tensor> {
        binary_op(op, b, &Operand::from(self), &rhs, None)
    }

    /// `x + rhs` (`torch.add`).
    pub fn add(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.binary("add", BinaryOp::Add, rhs.into())
    }
    /// `x - rhs` (`torch.sub`).
    pub fn sub(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.binary("sub", BinaryOp::Sub, rhs.into())
    }
    /// `x * rhs` (`torch.mul`).
    pub fn mul(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.binary("mul", BinaryOp::Mul, rhs.into())
    }
    /// `x / rhs`: true division (`torch.div`); integer operands give `f32`.
    pub fn div(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        let (lhs, rhs) = (Operand::from(self), rhs.into());
        let dt = result_type(&[&lhs, &rhs]);
        let force = if dt.is_float() { None } else { Some(DType::F32) };
        binary_op("div", BinaryOp::Div, &lhs, &rhs, force)
    }
    /// `x ** exponent` (`torch.pow`).
    pub fn pow(&self, exponent: impl Into<Operand>) -> Result<Tensor> {
        self.binary("pow", BinaryOp::Pow, exponent.into())
    }
    /// `rhs - x` for a number or tensor `rhs` (`torch.rsub`).
    pub fn rsub(&self, lhs: impl Into<Operand>) -> Result<Tensor> {
        binary_op("rsub", BinaryOp::Sub, &lhs.into(), &Operand::from(self), None)
    }
    /// `lhs / x` (true division).
    pub fn rdiv(&self, lhs: impl Into<Operand>) -> Result<Tensor> {
        let (lhs, rhs) = (lhs.into(), Operand::from(self));
        let dt = result_type(&[&lhs, &rhs]);
        let force = if dt.is_float() { None } else { Some(DType::F32) };
        binary_op("div", BinaryOp::Div, &lhs, &rhs, force)
    }
    /// `torch.maximum` (NaN propagates).
    pub fn maximum(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.binary("maximum", BinaryOp::Max, rhs.into())
    }
    /// `torch.minimum` (NaN propagates).
    pub fn minimum(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.binary("minimum", BinaryOp::Min, rhs.into())
    }
    /// `torch.clamp(x, min, max)`.
    pub fn clamp(&self, min: Option<f64>, max: Option<f64>) -> Result<Tensor> {
        let mut t = self.clone();
        if let Some(lo) = min {
            t = t.maximum(lo)?;
        }
        if let Some(hi) = max {
            t = t.minimum(hi)?;
        }
        Ok(t)
    }

    /// `x + v` with `v` in this tensor's own dtype (no promotion; decompositions use it).
    pub(crate) fn add_same(&self, v: f64) -> Result<Tensor> {
        self.push("add", Op::Binary(BinaryOp::Add), &[&self.scalar_like(v)])
    }
    /// `x * v` with `v` in this tensor's own dtype.
    pub(crate) fn mul_same(&self, v: f64) -> Result<Tensor> {
        self.push("mul", Op::Binary(BinaryOp::Mul), &[&self.scalar_like(v)])
    }

    // ---- comparisons ----
    fn compare(&self, op: &'static str, c: CmpOp, rhs: Operand) -> Result<Tensor> {
        let lhs = Operand::from(self);
        let (_, ts) = promote(op, &[&lhs, &rhs], None)?;
        broadcast_shapes(op, &[ts[0].shape(), ts[1].shape()])?;
        ts[0].push(op, Op::Compare(c), &[&ts[1]])
    }
    /// `x == rhs` (bool result).
    pub fn eq(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.compare("eq", CmpOp::Eq, rhs.into())
    }
    /// `x != rhs`.
    pub fn ne(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.compare("ne", CmpOp::Ne, rhs.into())
    }
    /// `x < rhs`.
    pub fn lt(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.compare("lt", CmpOp::Lt, rhs.into())
    }
    /// `x <= rhs`.
    pub fn le(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.compare("le", CmpOp::Le, rhs.into())
    }
    /// `x > rhs`.
    pub fn gt(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.compare("gt", CmpOp::Gt, rhs.into())
    }
    /// `x >= rhs`.
    pub fn ge(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.compare("ge", CmpOp::Ge, rhs.into())
    }

    // ---- logical ----
    fn as_bool(&self) -> Result<Tensor> {
        self.to_dtype(DType::Bool)
    }
    /// `torch.logical_not` (any dtype; nonzero is true). `~mask` for bool masks.
    pub fn logical_not(&self) -> Result<Tensor> {
        self.as_bool()?.push("logical_not", Op::Unary(UnaryOp::Not), &[])
    }
    fn logical(&self, op: &'static str, b: BinaryOp, rhs: Operand) -> Result<Tensor> {
        let lhs = Operand::from(self);
        let (_, ts) = promote(op, &[&lhs, &rhs], Some(DType::Bool))?;
        broadcast_shapes(op, &[ts[0].shape(), ts[1].shape()])?;
        ts[0].push(op, Op::Binary(b), &[&ts[1]])
    }
    /// `torch.logical_and`.
    pub fn logical_and(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.logical("logical_and", BinaryOp::And, rhs.into())
    }
    /// `torch.logical_or`.
    pub fn logical_or(&self, rhs: impl Into<Operand>) -> Result<Tensor> {
        self.logical("logical_or", BinaryOp::Or, rhs.into())
    }

    // ---- unary math ----
    /// Float-only math: integer and bool inputs are promoted to `f32` first, as in PyTorch.
    fn float_unary(&self, op: &'static str, u: UnaryOp) -> Result<Tensor> {
        let x = if self.dtype().is_float() { self.clone() } else { self.to_dtype(DType::F32)? };
        x.push(op, Op::Unary(u), &[])
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.float_unary("exp", UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.float_unary("log", UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.float_unary("sqrt", UnaryOp::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.float_unary("rsqrt", UnaryOp::Rsqrt)
    }
    /// `torch.reciprocal`.
    pub fn recip(&self) -> Result<Tensor> {
        self.float_unary("reciprocal", UnaryOp::Recip)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.float_unary("tanh", UnaryOp::Tanh)
    }
    pub fn erf(&self) -> Result<Tensor> {
        self.float_unary("erf", UnaryOp::Erf)
    }
    pub fn sin(&self) -> Result<Tensor> {
        self.float_unary("sin", UnaryOp::Sin)
    }
    pub fn cos(&self) -> Result<Tensor> {
        self.float_unary("cos", UnaryOp::Cos)
    }
    /// `torch.floor` (integers are returned unchanged).
    pub fn floor(&self) -> Result<Tensor> {
        match self.dtype() {
            DType::Bool => Err(FrontendError::BadDType { op: "floor", dtype: DType::Bool, expected: "a numeric dtype" }),
            d if d.is_int() => Ok(self.clone()),
            _ => self.push("floor", Op::Unary(UnaryOp::Floor), &[]),
        }
    }
    fn numeric_unary(&self, op: &'static str, u: UnaryOp) -> Result<Tensor> {
        if self.dtype() == DType::Bool {
            return Err(FrontendError::BadDType { op, dtype: DType::Bool, expected: "a numeric dtype (use logical_not for bool)" });
        }
        self.push(op, Op::Unary(u), &[])
    }
    pub fn neg(&self) -> Result<Tensor> {
        self.numeric_unary("neg", UnaryOp::Neg)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.numeric_unary("abs", UnaryOp::Abs)
    }
    /// `x * x`.
    pub fn square(&self) -> Result<Tensor> {
        self.mul(self)
    }

    // ---- activations (decompositions, as in torch._decomp) ----
    fn require_float(&self, op: &'static str) -> Result<()> {
        if self.dtype().is_float() {
            Ok(())
        } else {
            Err(FrontendError::BadDType { op, dtype: self.dtype(), expected: "a floating dtype (f32, f16, bf16)" })
        }
    }
    /// `torch.sigmoid` = `1 / (1 + exp(-x))`.
    pub fn sigmoid(&self) -> Result<Tensor> {
        let x = if self.dtype().is_float() { self.clone() } else { self.to_dtype(DType::F32)? };
        x.neg()?.exp()?.add_same(1.0)?.recip()
    }
    /// `F.relu` = `maximum(x, 0)`.
    pub fn relu(&self) -> Result<Tensor> {
        if self.dtype() == DType::Bool {
            return Err(FrontendError::BadDType { op: "relu", dtype: DType::Bool, expected: "a numeric dtype" });
        }
        self.push("relu", Op::Binary(BinaryOp::Max), &[&self.scalar_like(0.0)])
    }
    /// `F.silu` = `x * sigmoid(x)`.
    pub fn silu(&self) -> Result<Tensor> {
        self.require_float("silu")?;
        self.mul(&self.sigmoid()?)
    }
    /// `F.gelu(x)` (exact): `x * 0.5 * (1 + erf(x * (1/sqrt(2))))`.
    pub fn gelu(&self) -> Result<Tensor> {
        self.gelu_with(GeluApproximate::None)
    }
    /// `F.gelu(x, approximate="tanh")`:
    /// `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`.
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.gelu_with(GeluApproximate::Tanh)
    }
    /// `F.gelu(x, approximate=...)`.
    pub fn gelu_with(&self, approximate: GeluApproximate) -> Result<Tensor> {
        self.require_float("gelu")?;
        let x = self;
        match approximate {
            GeluApproximate::None => {
                let inner = x.mul_same(std::f64::consts::FRAC_1_SQRT_2)?.erf()?.add_same(1.0)?;
                x.mul_same(0.5)?.mul(&inner)
            }
            GeluApproximate::Tanh => {
                let beta = (2.0 / std::f64::consts::PI).sqrt();
                let cube = x.mul(x)?.mul(x)?;
                let inner = x.add(&cube.mul_same(0.044715)?)?.mul_same(beta)?;
                x.mul_same(0.5)?.mul(&inner.tanh()?.add_same(1.0)?)
            }
        }
    }

    // ---- selection ----
    /// `torch.where(self, a, b)` with `self` the bool condition.
    pub fn where_(&self, a: impl Into<Operand>, b: impl Into<Operand>) -> Result<Tensor> {
        if self.dtype() != DType::Bool {
            return Err(FrontendError::BadDType { op: "where", dtype: self.dtype(), expected: "bool (the condition)" });
        }
        let (a, b) = (a.into(), b.into());
        let (_, ts) = promote_in("where", self.tracer(), &[&a, &b], None)?;
        broadcast_shapes("where", &[self.shape(), ts[0].shape(), ts[1].shape()])?;
        self.push("where", Op::Where, &[&ts[0], &ts[1]])
    }
    /// `x.masked_fill(mask, value)` = `where(mask, value, x)`; keeps `x`'s dtype.
    pub fn masked_fill(&self, mask: &Tensor, value: impl Into<Operand>) -> Result<Tensor> {
        self.tracer().check_owner("masked_fill", mask)?;
        if mask.dtype() != DType::Bool {
            return Err(FrontendError::BadDType { op: "masked_fill", dtype: mask.dtype(), expected: "bool (the mask)" });
        }
        let value = match value.into() {
            Operand::Tensor(t) if t.rank() != 0 => {
                return Err(FrontendError::Rank { op: "masked_fill", expected: "a 0-dim value tensor", shape: t.shape().clone().into() })
            }
            v => v.materialize(self.tracer(), self.dtype())?,
        };
        broadcast_shapes("masked_fill", &[mask.shape(), self.shape()])?;
        mask.push("masked_fill", Op::Where, &[&value, self])
    }

    /// A bool `[rows, cols]` mask, true where `col - row` satisfies `keep` against `diagonal`.
    fn triangle_mask(&self, op: &'static str, diagonal: i64, c: CmpOp) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(FrontendError::Rank { op, expected: "a tensor of rank >= 2", shape: self.shape().clone().into() });
        }
        let r = self.rank();
        let shape = Shape::new([self.dims()[r - 2], self.dims()[r - 1]]);
        let tr: &Tracer = self.tracer();
        let rows = tr.iota(0, DType::I64, shape.clone())?;
        let cols = tr.iota(1, DType::I64, shape)?;
        let diff = cols.sub(&rows)?;
        diff.compare(op, c, Operand::Int(diagonal))
    }
    /// `torch.tril(x, diagonal)`: keeps `col - row <= diagonal` of the last two dims, zeroes
    /// the rest (`where(iota_col - iota_row <= diagonal, x, 0)`).
    pub fn tril(&self, diagonal: i64) -> Result<Tensor> {
        let mask = self.triangle_mask("tril", diagonal, CmpOp::Le)?;
        mask.push("tril", Op::Where, &[self, &self.scalar_like(0.0)])
    }
    /// `torch.triu(x, diagonal)`: keeps `col - row >= diagonal`.
    pub fn triu(&self, diagonal: i64) -> Result<Tensor> {
        let mask = self.triangle_mask("triu", diagonal, CmpOp::Ge)?;
        mask.push("triu", Op::Where, &[self, &self.scalar_like(0.0)])
    }
    /// `torch.zeros_like`.
    pub fn zeros_like(&self) -> Result<Tensor> {
        self.full_like(0.0)
    }
    /// `torch.ones_like`.
    pub fn ones_like(&self) -> Result<Tensor> {
        self.full_like(1.0)
    }
    /// `torch.full_like(x, value)`.
    pub fn full_like(&self, value: f64) -> Result<Tensor> {
        self.tracer().full(value, self.dtype(), self.shape().clone())
    }
}

// ---- operator overloading: `&a + &b`, `a * 2.0`, `1.0 - &a`, `-&a`, all -> Result<Tensor> ----

macro_rules! bin_ops {
    ($($trait:ident $method:ident $call:ident $rcall:ident;)*) => {$(
        impl<R: Into<Operand>> std::ops::$trait<R> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: R) -> Result<Tensor> {
                Tensor::$call(self, rhs)
            }
        }
        impl<R: Into<Operand>> std::ops::$trait<R> for Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: R) -> Result<Tensor> {
                Tensor::$call(&self, rhs)
            }
        }
        impl std::ops::$trait<&Tensor> for f64 {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                rhs.$rcall(self)
            }
        }
        impl std::ops::$trait<Tensor> for f64 {
            type Output = Result<Tensor>;
            fn $method(self, rhs: Tensor) -> Result<Tensor> {
                rhs.$rcall(self)
            }
        }
    )*};
}

impl Tensor {
    fn radd(&self, lhs: f64) -> Result<Tensor> {
        binary_op("add", BinaryOp::Add, &Operand::Float(lhs), &Operand::from(self), None)
    }
    fn rmul(&self, lhs: f64) -> Result<Tensor> {
        binary_op("mul", BinaryOp::Mul, &Operand::Float(lhs), &Operand::from(self), None)
    }
}

bin_ops! {
    Add add add radd;
    Sub sub sub rsub;
    Mul mul mul rmul;
    Div div div rdiv;
}

impl std::ops::Neg for &Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(self)
    }
}
impl std::ops::Neg for Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(&self)
    }
}
