//! Reductions (`sum mean amax amin max min var std`) and the row-wise ops built on them
//! (`softmax log_softmax layer_norm rms_norm`).

use crate::error::{FrontendError, Result};
use crate::movement::to_isize;
use crate::tracer::Tensor;
use ir::{DType, Op, ReduceOp};

/// Dims arguments, PyTorch style: one dim (`-1`) or several (`[0, 2]`, `&[..]`, `vec![..]`).
/// An empty list means every dim (as `x.sum(dim=[])` does in PyTorch).
pub trait Dims {
    fn to_dims(self) -> Vec<isize>;
}

macro_rules! dims_impl {
    ($($t:ty),*) => {$(
        impl Dims for $t {
            fn to_dims(self) -> Vec<isize> { vec![to_isize(self)] }
        }
        impl<const N: usize> Dims for [$t; N] {
            fn to_dims(self) -> Vec<isize> { self.iter().map(|&d| to_isize(d)).collect() }
        }
        impl Dims for &[$t] {
            fn to_dims(self) -> Vec<isize> { self.iter().map(|&d| to_isize(d)).collect() }
        }
        impl Dims for Vec<$t> {
            fn to_dims(self) -> Vec<isize> { self.iter().map(|&d| to_isize(d)).collect() }
        }
        impl Dims for &Vec<$t> {
            fn to_dims(self) -> Vec<isize> { self.iter().map(|&d| to_isize(d)).collect() }
        }
    )*};
}
dims_impl!(isize, i32, i64, usize);

/// The dtype PyTorch's decompositions compute in: half types go through `f32`.
pub(crate) fn compute_dtype(d: DType) -> DType {
    match d {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

impl Tensor {
    /// Resolves reduction dims to sorted unique axes (empty = all; a rank-0 tensor accepts
    /// dims `0` and `-1` and reduces nothing).
    pub(crate) fn reduce_axes(&self, op: &'static str, dims: Vec<isize>) -> Result<Vec<usize>> {
        if self.rank() == 0 {
            for &d in &dims {
                crate::tracer::resolve_dim(op, d, 1)?;
            }
            return Ok(Vec::new());
        }
        if dims.is_empty() {
            return Ok((0..self.rank()).collect());
        }
        let mut axes = Vec::with_capacity(dims.len());
        for d in dims {
            let a = self.dim_index(op, d)?;
            if axes.contains(&a) {
                return Err(FrontendError::RepeatedDim { op, dim: a });
            }
            axes.push(a);
        }
        axes.sort_unstable();
        Ok(axes)
    }

    fn reduce(&self, op: &'static str, r: ReduceOp, axes: Vec<usize>, keepdim: bool) -> Result<Tensor> {
        if self.dtype() == DType::Bool {
            return Err(FrontendError::BadDType { op, dtype: DType::Bool, expected: "a numeric dtype" });
        }
        if axes.is_empty() {
            return Ok(self.clone());
        }
        self.push(op, Op::Reduce { op: r, axes, keepdim }, &[])
    }

    /// Number of elements reduced over `axes`.
    fn reduced_count(&self, axes: &[usize]) -> usize {
        axes.iter().map(|&a| self.dims()[a]).product()
    }

    /// `torch.sum(x, dims, keepdim)`. Bool and integer inputs sum in `i64`, as in PyTorch.
    pub fn sum(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        let axes = self.reduce_axes("sum", dims.to_dims())?;
        let x = if self.dtype().is_float() { self.clone() } else { self.to_dtype(DType::I64)? };
        x.reduce("sum", ReduceOp::Sum, axes, keepdim)
    }
    /// `x.sum()` over every dim.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(Vec::<isize>::new(), false)
    }
    /// `torch.mean(x, dims, keepdim)` = `sum / count` (floating dtypes only, as in PyTorch).
    pub fn mean(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        self.require_float_for("mean")?;
        let axes = self.reduce_axes("mean", dims.to_dims())?;
        let n = self.reduced_count(&axes);
        let s = self.reduce("mean", ReduceOp::Sum, axes, keepdim)?;
        s.push("mean", Op::Binary(ir::BinaryOp::Div), &[&s.scalar_like(n as f64)])
    }
    /// `x.mean()` over every dim.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(Vec::<isize>::new(), false)
    }
    /// `torch.amax(x, dims, keepdim)`.
    pub fn amax(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        let axes = self.reduce_axes("amax", dims.to_dims())?;
        self.reduce("amax", ReduceOp::Max, axes, keepdim)
    }
    /// `torch.amin(x, dims, keepdim)` = `-amax(-x)`.
    pub fn amin(&self, dims: impl Dims, keepdim: bool) -> Result<Tensor> {
        let axes = self.reduce_axes("amin", dims.to_dims())?;
        if self.dtype() == DType::Bool {
            return Err(FrontendError::BadDType { op: "amin", dtype: DType::Bool, expected: "a numeric dtype" });
        }
        self.neg()?.reduce("amin", ReduceOp::Max, axes, keepdim)?.neg()
    }
    /// `torch.max(x, dim, keepdim).values` (Kiln has no argmax; only the values).
    pub fn max(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.amax(dim, keepdim)
    }
    /// `torch.min(x, dim, keepdim).values`.
    pub fn min(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        self.amin(dim, keepdim)
    }
    /// `x.max()` over every element.
    pub fn max_all(&self) -> Result<Tensor> {
        self.amax(Vec::<isize>::new(), false)
    }
    /// `x.min()` over every element.
    pub fn min_all(&self) -> Result<Tensor> {
        self.amin(Vec::<isize>::new(), false)
    }
    /// `torch.var(x, dims, correction=c, keepdim)` = `sum((x - mean)^2) / (N - c)`.
    /// PyTorch's default is `correction = 1` (unbiased).
    pub fn var(&self, dims: impl Dims, correction: f64, keepdim: bool) -> Result<Tensor> {
        self.require_float_for("var")?;
        let axes = self.reduce_axes("var", dims.to_dims())?;
        let n = self.reduced_count(&axes) as f64;
        let dims: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
        if dims.is_empty() {
            // rank 0: one element, zero deviation
            let centered = self.sub(self)?;
            return centered.mul(&centered)?.div(1.0 - correction);
        }
        let mean = self.mean(dims.clone(), true)?;
        let centered = self.sub(&mean)?;
        let ss = centered.mul(&centered)?.reduce("var", ReduceOp::Sum, axes, keepdim)?;
        ss.push("var", Op::Binary(ir::BinaryOp::Div), &[&ss.scalar_like((n - correction).max(0.0))])
    }
    /// `torch.std(x, dims, correction=c, keepdim)` = `sqrt(var)`.
    pub fn std(&self, dims: impl Dims, correction: f64, keepdim: bool) -> Result<Tensor> {
        self.var(dims, correction, keepdim)?.sqrt()
    }

    pub(crate) fn require_float_for(&self, op: &'static str) -> Result<()> {
        if self.dtype().is_float() {
            Ok(())
        } else {
            Err(FrontendError::BadDType { op, dtype: self.dtype(), expected: "a floating dtype (f32, f16, bf16)" })
        }
    }

    /// `F.softmax(x, dim)`: `e = exp(x - amax(x, dim)); e / sum(e, dim)`. Half types compute
    /// in `f32` and cast back, as PyTorch's decomposition does.
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.require_float_for("softmax")?;
        let dim = self.reduce_axes("softmax", vec![dim])?;
        let x = self.to_dtype(compute_dtype(self.dtype()))?;
        let m = x.reduce("softmax", ReduceOp::Max, dim.clone(), true)?;
        let e = x.sub(&m)?.exp()?;
        let s = e.reduce("softmax", ReduceOp::Sum, dim, true)?;
        e.div(&s)?.to_dtype(self.dtype())
    }
    /// `F.log_softmax(x, dim)`: `(x - m) - log(sum(exp(x - m)))` with `m = amax(x, dim)`.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.require_float_for("log_softmax")?;
        let dim = self.reduce_axes("log_softmax", vec![dim])?;
        let x = self.to_dtype(compute_dtype(self.dtype()))?;
        let m = x.reduce("log_softmax", ReduceOp::Max, dim.clone(), true)?;
        let shifted = x.sub(&m)?;
        let lse = shifted.exp()?.reduce("log_softmax", ReduceOp::Sum, dim, true)?.log()?;
        shifted.sub(&lse)?.to_dtype(self.dtype())
    }

    /// Checks `normalized_shape` against the trailing dims; returns the dims to reduce.
    fn norm_dims(&self, op: &'static str, normalized_shape: &[usize], params: &[Option<&Tensor>]) -> Result<Vec<isize>> {
        self.require_float_for(op)?;
        let k = normalized_shape.len();
        let r = self.rank();
        if k == 0 {
            return Err(crate::error::invalid(op, "normalized_shape must have at least one dim"));
        }
        if r < k || self.dims()[r - k..] != *normalized_shape {
            return Err(crate::error::invalid(
                op,
                format!("normalized_shape {:?} does not match the trailing dims of an input of shape {}", normalized_shape, self.shape()),
            ));
        }
        for p in params.iter().flatten() {
            self.tracer().check_owner(op, p)?;
            if p.dims() != normalized_shape {
                return Err(crate::error::invalid(
                    op,
                    format!("weight/bias of shape {} does not match normalized_shape {:?}", p.shape(), normalized_shape),
                ));
            }
        }
        Ok((r - k..r).map(|d| d as isize).collect())
    }

    /// `F.layer_norm(x, normalized_shape, weight, bias, eps)`:
    /// `(x - mean) * rsqrt(mean((x - mean)^2) + eps) * weight + bias` over the trailing
    /// `normalized_shape` dims (biased variance). Half types compute in `f32`.
    pub fn layer_norm(&self, normalized_shape: &[usize], weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        let dims = self.norm_dims("layer_norm", normalized_shape, &[weight, bias])?;
        let x = self.to_dtype(compute_dtype(self.dtype()))?;
        let mean = x.mean(dims.clone(), true)?;
        let centered = x.sub(&mean)?;
        let var = centered.mul(&centered)?.mean(dims, true)?;
        let mut y = centered.mul(&var.add_same(eps)?.rsqrt()?)?;
        if let Some(w) = weight {
            y = y.mul(w)?;
        }
        if let Some(b) = bias {
            y = y.add(b)?;
        }
        y.to_dtype(self.dtype())
    }

    /// `F.rms_norm(x, normalized_shape, weight, eps)`: `x * rsqrt(mean(x^2) + eps) * weight`.
    /// `eps = None` uses `f32` machine epsilon, as PyTorch does.
    pub fn rms_norm(&self, normalized_shape: &[usize], weight: Option<&Tensor>, eps: Option<f64>) -> Result<Tensor> {
        let dims = self.norm_dims("rms_norm", normalized_shape, &[weight])?;
        let eps = eps.unwrap_or(f32::EPSILON as f64);
        let x = self.to_dtype(compute_dtype(self.dtype()))?;
        let ms = x.mul(&x)?.mean(dims, true)?;
        let mut y = x.mul(&ms.add_same(eps)?.rsqrt()?)?;
        if let Some(w) = weight {
            y = y.mul(w)?;
        }
        y.to_dtype(self.dtype())
    }
}
