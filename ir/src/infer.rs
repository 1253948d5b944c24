//! Shape and dtype inference: the typing rules of every op, in one function.

use crate::{BinaryOp, DType, IrError, Op, Result, Shape, UnaryOp};

fn arity(op: &'static str, want: usize, got: usize) -> Result<()> {
    if want == got { Ok(()) } else { Err(IrError::Arity { op, expected: want, got }) }
}

fn same_dtype(op: &'static str, a: DType, b: DType) -> Result<DType> {
    if a == b { Ok(a) } else { Err(IrError::DTypeMismatch { op, lhs: a, rhs: b }) }
}

fn invalid(op: &'static str, reason: impl Into<String>) -> IrError {
    IrError::Invalid { op, reason: reason.into() }
}

/// Infers `(dtype, shape)` of `op` applied to operands of the given types.
/// Sources (`input`, `full`, `iota`) carry their type and are rejected here.
pub fn infer(op: &Op, ins: &[(DType, &Shape)]) -> Result<(DType, Shape)> {
    let name = op.name();
    if let Some(n) = op.arity() {
        arity(name, n, ins.len())?;
    }
    match op {
        Op::Input { .. } | Op::Full { .. } | Op::Iota { .. } => {
            Err(invalid(name, "a source op carries its own type; use Graph::input/full/iota"))
        }
        Op::Unary(u) => {
            let (d, s) = ins[0];
            let ok = match u {
                UnaryOp::Not => d == DType::Bool,
                UnaryOp::Neg | UnaryOp::Abs => d != DType::Bool,
                _ => d.is_float(),
            };
            if !ok {
                let expected = match u {
                    UnaryOp::Not => "bool",
                    UnaryOp::Neg | UnaryOp::Abs => "a numeric dtype",
                    _ => "a floating dtype (f32, f16, bf16)",
                };
                return Err(IrError::BadDType { op: name, dtype: d, expected });
            }
            Ok((d, s.clone()))
        }
        Op::Binary(b) => {
            let d = same_dtype(name, ins[0].0, ins[1].0)?;
            let logical = matches!(b, BinaryOp::And | BinaryOp::Or);
            if logical != (d == DType::Bool) {
                let expected = if logical { "bool" } else { "a numeric dtype" };
                return Err(IrError::BadDType { op: name, dtype: d, expected });
            }
            Ok((d, Shape::broadcast(name, ins[0].1, ins[1].1)?))
        }
        Op::Compare(_) => {
            same_dtype(name, ins[0].0, ins[1].0)?;
            Ok((DType::Bool, Shape::broadcast(name, ins[0].1, ins[1].1)?))
        }
        Op::Where => {
            if ins[0].0 != DType::Bool {
                return Err(IrError::BadDType { op: name, dtype: ins[0].0, expected: "bool (the condition)" });
            }
            let d = same_dtype(name, ins[1].0, ins[2].0)?;
            let s = Shape::broadcast(name, ins[0].1, ins[1].1)?;
            Ok((d, Shape::broadcast(name, &s, ins[2].1)?))
        }
        Op::Cast { to } => Ok((*to, ins[0].1.clone())),
        Op::Reduce { axes, keepdim, .. } => {
            let (d, s) = ins[0];
            if d == DType::Bool {
                return Err(IrError::BadDType { op: name, dtype: d, expected: "a numeric dtype" });
            }
            if axes.is_empty() {
                return Err(invalid(name, "needs at least one axis"));
            }
            for (i, &a) in axes.iter().enumerate() {
                if a >= s.rank() {
                    return Err(IrError::BadAxis { axis: a as isize, rank: s.rank() });
                }
                if i > 0 && axes[i - 1] >= a {
                    return Err(invalid(name, format!("axes {axes:?} must be sorted and unique")));
                }
            }
            let dims = s.dims().iter().enumerate().filter_map(|(i, &n)| {
                if axes.contains(&i) { keepdim.then_some(1) } else { Some(n) }
            });
            Ok((d, Shape::new(dims)))
        }
        Op::Reshape { shape } => {
            let s = ins[0].1;
            if s.numel() != shape.numel() {
                return Err(invalid(name, format!("cannot reshape {s} ({} elements) to {shape} ({} elements)", s.numel(), shape.numel())));
            }
            Ok((ins[0].0, shape.clone()))
        }
        Op::Permute { perm } => {
            let s = ins[0].1;
            let mut seen = vec![false; s.rank()];
            if perm.len() != s.rank() || perm.iter().any(|&p| p >= s.rank() || std::mem::replace(&mut seen[p], true)) {
                return Err(invalid(name, format!("{perm:?} is not a permutation of the {} axes of {s}", s.rank())));
            }
            Ok((ins[0].0, Shape::new(perm.iter().map(|&p| s.dims()[p]))))
        }
        Op::Expand { shape } => {
            let s = ins[0].1;
            if !s.expands_to(shape) {
                return Err(IrError::ShapeMismatch { op: name, lhs: s.clone(), rhs: shape.clone() });
            }
            Ok((ins[0].0, shape.clone()))
        }
        Op::Slice { axis, start, end, step } => {
            let s = ins[0].1;
            if *axis >= s.rank() {
                return Err(IrError::BadAxis { axis: *axis as isize, rank: s.rank() });
            }
            let n = s.dims()[*axis];
            if *step == 0 || start > end || *end > n {
                return Err(invalid(name, format!("range {start}..{end} step {step} is not within 0..{n} of axis {axis}")));
            }
            let mut dims = s.0.clone();
            dims[*axis] = (end - start).div_ceil(*step);
            Ok((ins[0].0, Shape(dims)))
        }
        Op::Concat { axis } => {
            let Some(&(d, first)) = ins.first() else {
                return Err(invalid(name, "needs at least one operand"));
            };
            if *axis >= first.rank() {
                return Err(IrError::BadAxis { axis: *axis as isize, rank: first.rank() });
            }
            let mut dims = first.0.clone();
            for &(di, si) in &ins[1..] {
                same_dtype(name, d, di)?;
                let compatible = si.rank() == first.rank()
                    && (0..first.rank()).all(|i| i == *axis || si.dims()[i] == first.dims()[i]);
                if !compatible {
                    return Err(IrError::ShapeMismatch { op: name, lhs: first.clone(), rhs: si.clone() });
                }
                dims[*axis] += si.dims()[*axis];
            }
            Ok((d, Shape(dims)))
        }
        Op::Pad { pads, .. } => {
            let s = ins[0].1;
            if pads.len() != s.rank() {
                return Err(invalid(name, format!("{} (before, after) pairs given for a tensor of rank {}", pads.len(), s.rank())));
            }
            Ok((ins[0].0, Shape::new(s.dims().iter().zip(pads).map(|(&n, &(b, a))| n + b + a))))
        }
        Op::MatMul => {
            let (d, a) = ins[0];
            let b = ins[1].1;
            same_dtype(name, d, ins[1].0)?;
            if d == DType::Bool {
                return Err(IrError::BadDType { op: name, dtype: d, expected: "a numeric dtype" });
            }
            if a.rank() < 2 || b.rank() < 2 {
                return Err(invalid(name, format!("operands must have rank >= 2, got {a} and {b}")));
            }
            let (m, k) = (a.dims()[a.rank() - 2], a.dims()[a.rank() - 1]);
            let (k2, n) = (b.dims()[b.rank() - 2], b.dims()[b.rank() - 1]);
            if k != k2 {
                return Err(IrError::ShapeMismatch { op: name, lhs: a.clone(), rhs: b.clone() });
            }
            let batch = Shape::broadcast(name, &Shape::from(&a.dims()[..a.rank() - 2]), &Shape::from(&b.dims()[..b.rank() - 2]))
                .map_err(|_| IrError::ShapeMismatch { op: name, lhs: a.clone(), rhs: b.clone() })?;
            let mut dims = batch.0;
            dims.extend([m, n]);
            Ok((d, Shape(dims)))
        }
        Op::FlashAttention { .. } => {
            let (d, q) = ins[0];
            let (k, v) = (ins[1].1, ins[2].1);
            same_dtype(name, d, ins[1].0)?;
            same_dtype(name, d, ins[2].0)?;
            if !d.is_float() {
                return Err(IrError::BadDType { op: name, dtype: d, expected: "a floating dtype" });
            }
            let r = q.rank();
            let ok = r >= 2
                && k.rank() == r
                && v.rank() == r
                && q.dims()[..r - 2] == k.dims()[..r - 2]
                && q.dims()[..r - 2] == v.dims()[..r - 2]
                && q.dims()[r - 1] == k.dims()[r - 1]
                && k.dims()[r - 2] == v.dims()[r - 2];
            if !ok {
                return Err(invalid(name, format!("q {q}, k {k}, v {v} are not [.., s_q, d], [.., s_k, d], [.., s_k, d_v]")));
            }
            let mut dims = q.0.clone();
            dims[r - 1] = v.dims()[r - 1];
            Ok((d, Shape(dims)))
        }
        Op::Fused(body) => {
            let g = &body.0;
            if g.inputs().len() != ins.len() {
                return Err(IrError::Arity { op: name, expected: g.inputs().len(), got: ins.len() });
            }
            for (&bi, &(d, s)) in g.inputs().iter().zip(ins) {
                let n = g.node(bi);
                if n.dtype != d || n.shape != *s {
                    return Err(invalid(name, format!("operand {d}{s} does not match body input {}{}", n.dtype, n.shape)));
                }
            }
            let [out] = g.outputs() else {
                return Err(invalid(name, format!("a fused body has exactly one output, this one has {}", g.outputs().len())));
            };
            let n = g.node(*out);
            Ok((n.dtype, n.shape.clone()))
        }
    }
}
