//! PyTorch type promotion (`torch.result_type`), since every IR op wants equal operand dtypes.
//!
//! As in PyTorch, operands fall into three priority groups: tensors with dims, rank-0
//! tensors, and Python numbers (here: `f64`, `i64`, `bool` operands). A lower group only
//! changes the result when it is of a higher *category* (bool < integer < float): `f16 tensor
//! * 2.5` stays `f16`, `i32 tensor * 2.5` becomes `f32` (the default float dtype),
//! `bool tensor + 1` becomes `i64`.

use crate::error::{FrontendError, Result};
use crate::tracer::{Tensor, Tracer};
use ir::DType;

/// One operand of an elementwise op: a tensor or a Python-style number.
#[derive(Clone, Debug)]
pub enum Operand {
    Tensor(Tensor),
    Float(f64),
    Int(i64),
    Bool(bool),
}

impl From<&Tensor> for Operand {
    fn from(t: &Tensor) -> Operand {
        Operand::Tensor(t.clone())
    }
}
impl From<Tensor> for Operand {
    fn from(t: Tensor) -> Operand {
        Operand::Tensor(t)
    }
}
impl From<&&Tensor> for Operand {
    fn from(t: &&Tensor) -> Operand {
        Operand::Tensor((*t).clone())
    }
}
impl From<f64> for Operand {
    fn from(v: f64) -> Operand {
        Operand::Float(v)
    }
}
impl From<f32> for Operand {
    fn from(v: f32) -> Operand {
        Operand::Float(v as f64)
    }
}
impl From<i64> for Operand {
    fn from(v: i64) -> Operand {
        Operand::Int(v)
    }
}
impl From<i32> for Operand {
    fn from(v: i32) -> Operand {
        Operand::Int(v as i64)
    }
}
impl From<usize> for Operand {
    fn from(v: usize) -> Operand {
        Operand::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Operand {
    fn from(v: bool) -> Operand {
        Operand::Bool(v)
    }
}

fn category(d: DType) -> u8 {
    match d {
        DType::Bool => 0,
        DType::I32 | DType::I64 => 1,
        DType::F32 | DType::F16 | DType::BF16 => 2,
    }
}

/// `torch.promote_types(a, b)` for Kiln's dtypes.
pub fn promote_types(a: DType, b: DType) -> DType {
    use DType::*;
    if a == b {
        return a;
    }
    match (category(a), category(b)) {
        (x, y) if x < y => b,
        (x, y) if x > y => a,
        // same category, different dtypes
        (1, 1) => I64,
        (2, 2) => F32, // f32 with a half type, or f16 with bf16
        _ => unreachable!("bool is a category of one dtype"),
    }
}

/// PyTorch's `combine_categories(higher, lower)`.
fn combine(higher: Option<DType>, lower: Option<DType>) -> Option<DType> {
    match (higher, lower) {
        (None, l) => l,
        (Some(h), None) => Some(h),
        (Some(h), Some(l)) => {
            if h.is_float() {
                Some(h)
            } else if h == DType::Bool || l.is_float() {
                Some(promote_types(h, l))
            } else {
                Some(h)
            }
        }
    }
}

/// `torch.result_type` over operands. Rank-0 constants the frontend made for numbers count
/// as numbers only when passed as numbers; a rank-0 tensor passed as a tensor is a
/// zero-dim tensor, as in PyTorch.
pub fn result_type(operands: &[&Operand]) -> DType {
    let (mut dim, mut zero, mut wrapped) = (None, None, None);
    let up = |slot: &mut Option<DType>, d: DType| *slot = Some(slot.map_or(d, |s| promote_types(s, d)));
    for o in operands {
        match o {
            Operand::Tensor(t) if t.rank() > 0 => up(&mut dim, t.dtype()),
            Operand::Tensor(t) => up(&mut zero, t.dtype()),
            Operand::Float(_) => up(&mut wrapped, DType::F32),
            Operand::Int(_) => up(&mut wrapped, DType::I64),
            Operand::Bool(_) => up(&mut wrapped, DType::Bool),
        }
    }
    combine(dim, combine(zero, wrapped)).unwrap_or(DType::F32)
}

/// Finds the one tracer the tensor operands share.
pub(crate) fn common_tracer(op: &'static str, operands: &[&Operand]) -> Result<Tracer> {
    let mut tracer: Option<&Tracer> = None;
    for o in operands {
        if let Operand::Tensor(t) = o {
            match tracer {
                None => tracer = Some(t.tracer()),
                Some(tr) if !tr.same(t.tracer()) => return Err(FrontendError::TracerMismatch { op }),
                _ => {}
            }
        }
    }
    tracer.cloned().ok_or_else(|| crate::error::invalid(op, "needs at least one tensor operand"))
}

impl Operand {
    /// This operand as a tensor of `dtype` (numbers become rank-0 constants, tensors a `cast`).
    pub(crate) fn materialize(&self, tracer: &Tracer, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Operand::Tensor(t) => t.to_dtype(dtype)?,
            Operand::Float(v) => tracer.scalar(*v, dtype),
            Operand::Int(v) => tracer.scalar(*v as f64, dtype),
            Operand::Bool(v) => tracer.scalar(*v as u8 as f64, dtype),
        })
    }
}

/// Promotes operands to their common dtype (or `force` when given) as tensors.
pub(crate) fn promote(op: &'static str, operands: &[&Operand], force: Option<DType>) -> Result<(DType, Vec<Tensor>)> {
    let tracer = common_tracer(op, operands)?;
    promote_in(op, &tracer, operands, force)
}

/// [`promote`] where the operands may all be numbers: constants are made in `tracer`, and
/// every tensor operand must belong to it.
pub(crate) fn promote_in(op: &'static str, tracer: &Tracer, operands: &[&Operand], force: Option<DType>) -> Result<(DType, Vec<Tensor>)> {
    for o in operands {
        if let Operand::Tensor(t) = o {
            tracer.check_owner(op, t)?;
        }
    }
    let dtype = force.unwrap_or_else(|| result_type(operands));
    let ts = operands.iter().map(|o| o.materialize(tracer, dtype)).collect::<Result<Vec<_>>>()?;
    Ok((dtype, ts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use DType::*;

    #[test]
    fn promote_types_matches_pytorch() {
        assert_eq!(promote_types(F16, BF16), F32);
        assert_eq!(promote_types(I32, F16), F16);
        assert_eq!(promote_types(Bool, I32), I32);
        assert_eq!(promote_types(I32, I64), I64);
        assert_eq!(promote_types(F32, BF16), F32);
    }

    #[test]
    fn result_type_follows_categories() {
        let tr = Tracer::new("t");
        let h = Operand::from(tr.input("h", F16, [2]).unwrap());
        let i = Operand::from(tr.input("i", I32, [2]).unwrap());
        let b = Operand::from(tr.input("b", Bool, [2]).unwrap());
        let z = Operand::from(tr.input("z", F32, []).unwrap());
        assert_eq!(result_type(&[&h, &Operand::Float(2.5)]), F16);
        assert_eq!(result_type(&[&i, &Operand::Float(2.5)]), F32);
        assert_eq!(result_type(&[&i, &Operand::Int(2)]), I32);
        assert_eq!(result_type(&[&b, &Operand::Int(1)]), I64);
        assert_eq!(result_type(&[&h, &z]), F16); // zero-dim f32 does not widen a dimensioned f16
        assert_eq!(result_type(&[&i, &z]), F32); // but a higher category wins
        assert_eq!(result_type(&[&h, &i]), F16);
    }
}
