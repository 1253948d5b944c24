//! Movement ops: reshape/view, permute/transpose, expand, slicing, concatenation, dtype casts.

use crate::error::{invalid, FrontendError, Result};
use crate::promote::{promote, Operand};
use crate::tracer::{resolve_dim, Tensor};
use ir::{DType, Op, Shape};

/// Size arguments, PyTorch style: `[2, -1, 64]`, `&[..]`, `vec![..]`, or a `Shape`.
/// `-1` means "infer" in `reshape` and "keep" in `expand`.
pub trait Sizes {
    fn to_sizes(self) -> Vec<isize>;
}

/// An integer as a PyTorch size or dim, saturating (a huge `usize` stays huge, not `-1`).
pub(crate) fn to_isize<T: TryInto<isize> + PartialOrd + Default>(d: T) -> isize {
    let negative = d < T::default();
    d.try_into().unwrap_or(if negative { isize::MIN } else { isize::MAX })
}

macro_rules! sizes_impl {
    ($($t:ty),*) => {$(
        impl<const N: usize> Sizes for [$t; N] {
            fn to_sizes(self) -> Vec<isize> { self.iter().map(|&d| to_isize(d)).collect() }
        }
        impl Sizes for &[$t] {
            fn to_sizes(self) -> Vec<isize> { self.iter().map(|&d| to_isize(d)).collect() }
        }
        impl Sizes for Vec<$t> {
            fn to_sizes(self) -> Vec<isize> { self.iter().map(|&d| to_isize(d)).collect() }
        }
        impl Sizes for &Vec<$t> {
            fn to_sizes(self) -> Vec<isize> { self.iter().map(|&d| to_isize(d)).collect() }
        }
    )*};
}
sizes_impl!(isize, i32, i64, usize);

impl Sizes for &Shape {
    fn to_sizes(self) -> Vec<isize> {
        self.dims().iter().map(|&d| to_isize(d)).collect()
    }
}
impl Sizes for Shape {
    fn to_sizes(self) -> Vec<isize> {
        (&self).to_sizes()
    }
}

/// `torch.cat(tensors, dim)`: dtypes promote; all other dims must agree.
pub fn cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
    let Some(first) = tensors.first() else {
        return Err(invalid("cat", "expected a non-empty list of tensors"));
    };
    let ops: Vec<Operand> = tensors.iter().map(|t| Operand::from(*t)).collect();
    let refs: Vec<&Operand> = ops.iter().collect();
    let (_, ts) = promote("cat", &refs, None)?;
    if first.rank() == 0 {
        return Err(FrontendError::Rank { op: "cat", expected: "tensors of rank >= 1", shape: first.shape().clone().into() });
    }
    let axis = first.dim_index("cat", dim)?;
    for t in &ts[1..] {
        let same = t.rank() == first.rank() && (0..first.rank()).all(|i| i == axis || t.dims()[i] == first.dims()[i]);
        if !same {
            return Err(invalid(
                "cat",
                format!("tensors of shapes {} and {} differ outside dim {axis}", first.shape(), t.shape()),
            ));
        }
    }
    if ts.len() == 1 {
        return Ok(ts[0].clone());
    }
    let rest: Vec<&Tensor> = ts[1..].iter().collect();
    ts[0].push("cat", Op::Concat { axis }, &rest)
}

/// `torch.stack(tensors, dim)`: unsqueeze each at `dim`, then `cat`.
pub fn stack(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
    let Some(first) = tensors.first() else {
        return Err(invalid("stack", "expected a non-empty list of tensors"));
    };
    for t in tensors {
        if t.shape() != first.shape() {
            return Err(invalid("stack", format!("all tensors must have one shape, got {} and {}", first.shape(), t.shape())));
        }
    }
    let us = tensors.iter().map(|t| t.unsqueeze(dim)).collect::<Result<Vec<_>>>()?;
    cat(&us.iter().collect::<Vec<_>>(), dim)
}

impl Tensor {
    /// `x.to(dtype)`; no node when the dtype is already `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return Ok(self.clone());
        }
        self.push("to", Op::Cast { to: dtype }, &[])
    }
    /// `x.float()`.
    pub fn float(&self) -> Result<Tensor> {
        self.to_dtype(DType::F32)
    }

    /// `x.reshape(shape)`; one size may be `-1` (inferred).
    pub fn reshape(&self, shape: impl Sizes) -> Result<Tensor> {
        self.reshape_named("reshape", shape.to_sizes())
    }
    /// `x.view(shape)`: same as `reshape` (traced tensors have no strides).
    pub fn view(&self, shape: impl Sizes) -> Result<Tensor> {
        self.reshape_named("view", shape.to_sizes())
    }

    fn reshape_named(&self, op: &'static str, target: Vec<isize>) -> Result<Tensor> {
        let err = |reason: String| FrontendError::Reshape { op, shape: self.shape().clone().into(), target: target.clone(), reason };
        let mut infer = None;
        let mut known: u128 = 1;
        for (i, &d) in target.iter().enumerate() {
            match d {
                -1 if infer.is_some() => return Err(err("only one dimension can be -1".into())),
                -1 => infer = Some(i),
                d if d < 0 => return Err(err(format!("invalid size {d}"))),
                d => known = known.saturating_mul(d as u128),
            }
        }
        let numel = self.numel() as u128;
        let mut dims: Vec<usize> = target.iter().map(|&d| d.max(0) as usize).collect();
        if let Some(i) = infer {
            if known == 0 || !numel.is_multiple_of(known) {
                return Err(err(format!("{numel} elements cannot be split into sizes of product {known} and a -1")));
            }
            dims[i] = (numel / known) as usize;
        } else if known != numel {
            return Err(err(format!("the tensor has {numel} elements but the shape asks for {known}")));
        }
        let shape = Shape::new(dims);
        if shape == *self.shape() {
            return Ok(self.clone());
        }
        self.push(op, Op::Reshape { shape }, &[])
    }

    /// `x.flatten(start_dim, end_dim)`.
    pub fn flatten(&self, start_dim: isize, end_dim: isize) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.reshape([1usize]);
        }
        let s = self.dim_index("flatten", start_dim)?;
        let e = self.dim_index("flatten", end_dim)?;
        if s > e {
            return Err(invalid("flatten", format!("start_dim {start_dim} comes after end_dim {end_dim}")));
        }
        let d = self.dims();
        let mut dims: Vec<usize> = d[..s].to_vec();
        dims.push(d[s..=e].iter().product());
        dims.extend_from_slice(&d[e + 1..]);
        self.reshape(dims)
    }

    /// `x.unsqueeze(dim)`, `dim` in `[-rank-1, rank]`.
    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let a = resolve_dim("unsqueeze", dim, self.rank() + 1)?;
        let mut dims = self.dims().to_vec();
        dims.insert(a, 1);
        self.reshape(dims)
    }
    /// `x.squeeze(dim)`: removes `dim` when its size is 1, else returns `x`.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        if self.rank() == 0 {
            resolve_dim("squeeze", dim, 1)?;
            return Ok(self.clone());
        }
        let a = self.dim_index("squeeze", dim)?;
        if self.dims()[a] != 1 {
            return Ok(self.clone());
        }
        let mut dims = self.dims().to_vec();
        dims.remove(a);
        self.reshape(dims)
    }
    /// `x.squeeze()`: removes every size-1 dim.
    pub fn squeeze_all(&self) -> Result<Tensor> {
        let dims: Vec<usize> = self.dims().iter().copied().filter(|&d| d != 1).collect();
        self.reshape(dims)
    }

    /// `x.permute(dims)`.
    pub fn permute(&self, dims: impl Sizes) -> Result<Tensor> {
        let dims = dims.to_sizes();
        if dims.len() != self.rank() {
            return Err(invalid("permute", format!("{} dims given for a tensor of rank {}", dims.len(), self.rank())));
        }
        let mut perm = Vec::with_capacity(dims.len());
        for d in dims {
            let a = self.dim_index("permute", d)?;
            if perm.contains(&a) {
                return Err(FrontendError::RepeatedDim { op: "permute", dim: a });
            }
            perm.push(a);
        }
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(self.clone());
        }
        self.push("permute", Op::Permute { perm }, &[])
    }
    /// `x.transpose(dim0, dim1)`.
    pub fn transpose(&self, dim0: isize, dim1: isize) -> Result<Tensor> {
        if self.rank() == 0 {
            resolve_dim("transpose", dim0, 1)?;
            resolve_dim("transpose", dim1, 1)?;
            return Ok(self.clone());
        }
        let (a, b) = (self.dim_index("transpose", dim0)?, self.dim_index("transpose", dim1)?);
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(perm)
    }
    /// `x.t()`: transposes a matrix; vectors and scalars are returned as they are.
    pub fn t(&self) -> Result<Tensor> {
        match self.rank() {
            0 | 1 => Ok(self.clone()),
            2 => self.transpose(0, 1),
            _ => Err(FrontendError::Rank { op: "t", expected: "a tensor of rank <= 2", shape: self.shape().clone().into() }),
        }
    }

    /// `x.expand(sizes)`: size-1 dims (and new leading dims) broadcast; `-1` keeps a dim.
    pub fn expand(&self, sizes: impl Sizes) -> Result<Tensor> {
        let sizes = sizes.to_sizes();
        let r = self.rank();
        if sizes.len() < r {
            return Err(invalid("expand", format!("{} sizes given for a tensor of rank {r}", sizes.len())));
        }
        let off = sizes.len() - r;
        let mut dims = Vec::with_capacity(sizes.len());
        for (i, &s) in sizes.iter().enumerate() {
            let d = if i < off {
                if s < 0 {
                    return Err(invalid("expand", format!("size {s} for a new leading dim must be >= 0")));
                }
                s as usize
            } else {
                let cur = self.dims()[i - off];
                match s {
                    -1 => cur,
                    s if s < 0 => return Err(invalid("expand", format!("invalid size {s}"))),
                    s if s as usize == cur || cur == 1 => s as usize,
                    s => {
                        return Err(invalid(
                            "expand",
                            format!("dim {} has size {cur}, which cannot expand to {s} (only size-1 dims can)", i - off),
                        ))
                    }
                }
            };
            dims.push(d);
        }
        let shape = Shape::new(dims);
        crate::tracer::check_numel("expand", &shape)?;
        if shape == *self.shape() {
            return Ok(self.clone());
        }
        self.push("expand", Op::Expand { shape }, &[])
    }
    /// `x.broadcast_to(shape)`.
    pub fn broadcast_to(&self, shape: impl Sizes) -> Result<Tensor> {
        let sizes = shape.to_sizes();
        if let Some(&s) = sizes.iter().find(|&&s| s < 0) {
            return Err(invalid("broadcast_to", format!("invalid size {s}")));
        }
        self.expand(sizes)
    }
    /// `x.expand_as(other)`.
    pub fn expand_as(&self, other: &Tensor) -> Result<Tensor> {
        self.expand(other.shape())
    }

    /// `x[.., start:end:step, ..]` along `dim`, with Python slice semantics: negative
    /// indices count from the end and out-of-range bounds clamp (`isize::MAX` = to the end).
    pub fn slice(&self, dim: isize, start: isize, end: isize, step: usize) -> Result<Tensor> {
        if step == 0 {
            return Err(invalid("slice", "step must be at least 1"));
        }
        if self.rank() == 0 {
            return Err(FrontendError::Rank { op: "slice", expected: "a tensor of rank >= 1", shape: self.shape().clone().into() });
        }
        let axis = self.dim_index("slice", dim)?;
        let n = self.dims()[axis] as isize;
        let clamp = |i: isize| -> usize {
            let i = if i < 0 { i.saturating_add(n) } else { i };
            i.clamp(0, n) as usize
        };
        let (s, e) = (clamp(start), clamp(end));
        let e = e.max(s);
        if s == 0 && e == n as usize && step == 1 {
            return Ok(self.clone());
        }
        self.push("slice", Op::Slice { axis, start: s, end: e, step }, &[])
    }
    /// `x.narrow(dim, start, length)`: `start` may be negative; the range must fit.
    pub fn narrow(&self, dim: isize, start: isize, length: usize) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(FrontendError::Rank { op: "narrow", expected: "a tensor of rank >= 1", shape: self.shape().clone().into() });
        }
        let axis = self.dim_index("narrow", dim)?;
        let n = self.dims()[axis];
        let s = if start < 0 { start.checked_add(n as isize) } else { Some(start) };
        let fits = matches!(s, Some(s) if s >= 0 && (s as usize).checked_add(length).is_some_and(|e| e <= n));
        if !fits {
            return Err(invalid("narrow", format!("start {start} and length {length} do not fit in dim {dim} of size {n}")));
        }
        let s = s.unwrap_or(0) as usize;
        self.slice(axis as isize, s as isize, (s + length) as isize, 1)
    }
    /// `x.split(split_size, dim)`: chunks of `split_size` (the last may be smaller).
    pub fn split(&self, split_size: usize, dim: isize) -> Result<Vec<Tensor>> {
        if split_size == 0 {
            return Err(invalid("split", "split_size must be at least 1"));
        }
        if self.rank() == 0 {
            return Err(FrontendError::Rank { op: "split", expected: "a tensor of rank >= 1", shape: self.shape().clone().into() });
        }
        let axis = self.dim_index("split", dim)?;
        let n = self.dims()[axis];
        let mut out = Vec::new();
        let mut s = 0;
        while s < n || (n == 0 && out.is_empty()) {
            let len = split_size.min(n - s);
            out.push(self.narrow(axis as isize, s as isize, len)?);
            s += split_size;
        }
        Ok(out)
    }
    /// `x.chunk(chunks, dim)`: `ceil(n / chunks)`-sized pieces.
    pub fn chunk(&self, chunks: usize, dim: isize) -> Result<Vec<Tensor>> {
        if chunks == 0 {
            return Err(invalid("chunk", "chunks must be at least 1"));
        }
        let n = self.size(dim)?;
        self.split(n.div_ceil(chunks).max(1), dim)
    }
    /// `x.contiguous()`: traced tensors have no layout, so this is `x` itself.
    pub fn contiguous(&self) -> Result<Tensor> {
        Ok(self.clone())
    }
}
