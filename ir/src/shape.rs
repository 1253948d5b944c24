//! Static shapes and PyTorch broadcasting.

use crate::IrError;
use smallvec::SmallVec;
use std::fmt;

/// A static tensor shape (row-major). Rank 0 is a scalar.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Shape(pub SmallVec<[usize; 6]>);

impl Shape {
    pub fn new(dims: impl IntoIterator<Item = usize>) -> Shape {
        Shape(dims.into_iter().collect())
    }

    pub fn scalar() -> Shape {
        Shape(SmallVec::new())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// Contiguous row-major strides, in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.rank()];
        for i in (0..self.rank().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * self.0[i + 1];
        }
        s
    }

    /// Resolves a possibly negative axis (PyTorch style) against this rank.
    pub fn axis(&self, axis: isize) -> Result<usize, IrError> {
        normalize_axis(axis, self.rank())
    }

    /// PyTorch broadcasting: align trailing dims; each pair must be equal or contain a 1.
    pub fn broadcast(op: &'static str, a: &Shape, b: &Shape) -> Result<Shape, IrError> {
        let r = a.rank().max(b.rank());
        let mut out = SmallVec::with_capacity(r);
        for i in 0..r {
            let da = if i + a.rank() >= r { a.0[i + a.rank() - r] } else { 1 };
            let db = if i + b.rank() >= r { b.0[i + b.rank() - r] } else { 1 };
            out.push(match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => return Err(IrError::ShapeMismatch { op, lhs: a.clone(), rhs: b.clone() }),
            });
        }
        Ok(Shape(out))
    }

    /// True when `self` can be expanded (broadcast) to `target` without copying semantics changing.
    pub fn expands_to(&self, target: &Shape) -> bool {
        if self.rank() > target.rank() {
            return false;
        }
        let off = target.rank() - self.rank();
        self.0.iter().enumerate().all(|(i, &d)| d == 1 || d == target.0[i + off])
    }
}

/// Resolves a possibly negative axis against a rank.
pub fn normalize_axis(axis: isize, rank: usize) -> Result<usize, IrError> {
    let r = rank as isize;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(IrError::BadAxis { axis, rank });
    }
    Ok(a as usize)
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Shape {
        Shape(d.iter().copied().collect())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Shape {
        Shape(d.into_iter().collect())
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Shape {
        Shape(d.into_iter().collect())
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
