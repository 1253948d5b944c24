//! Contractions: `matmul` (PyTorch's rank rules), `bmm`, and `linear`.

use crate::error::{FrontendError, Result};
use crate::tracer::Tensor;
use ir::{DType, Op, Shape};

impl Tensor {
    fn check_contraction(&self, op: &'static str, other: &Tensor) -> Result<()> {
        self.tracer().check_owner(op, other)?;
        if self.dtype() != other.dtype() {
            return Err(FrontendError::DTypeMismatch { op, lhs: self.dtype(), rhs: other.dtype() });
        }
        if self.dtype() == DType::Bool {
            return Err(FrontendError::BadDType { op, dtype: DType::Bool, expected: "a numeric dtype" });
        }
        Ok(())
    }

    /// The IR matmul on operands of rank >= 2, with batch dims broadcast.
    fn matmul_nd(&self, op: &'static str, other: &Tensor) -> Result<Tensor> {
        let (a, b) = (self.dims(), other.dims());
        let (ra, rb) = (a.len(), b.len());
        let err = || FrontendError::MatMul { op, lhs: self.shape().clone().into(), rhs: other.shape().clone().into() };
        if a[ra - 1] != b[rb - 2] {
            return Err(err());
        }
        Shape::broadcast(op, &Shape::from(&a[..ra - 2]), &Shape::from(&b[..rb - 2])).map_err(|_| err())?;
        self.push(op, Op::MatMul, &[other])
    }

    /// `torch.matmul(x, other)` (`x @ other`): 1-D operands are treated as a row (left) or
    /// column (right) vector and that dim is removed again; batch dims broadcast. Operand
    /// dtypes must match, as in PyTorch.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        self.check_contraction(OP, other)?;
        if self.rank() == 0 || other.rank() == 0 {
            return Err(FrontendError::MatMul { op: OP, lhs: self.shape().clone().into(), rhs: other.shape().clone().into() });
        }
        let mm_err = || FrontendError::MatMul { op: OP, lhs: self.shape().clone().into(), rhs: other.shape().clone().into() };
        match (self.rank(), other.rank()) {
            (1, 1) => {
                if self.dims()[0] != other.dims()[0] {
                    return Err(mm_err());
                }
                let r = self.unsqueeze(0)?.matmul_nd(OP, &other.unsqueeze(1)?)?;
                r.reshape(Vec::<usize>::new())
            }
            (1, _) => {
                let r = self.unsqueeze(0)?.matmul_nd(OP, other).map_err(|_| mm_err())?;
                r.squeeze(-2)
            }
            (_, 1) => {
                let r = self.matmul_nd(OP, &other.unsqueeze(1)?).map_err(|_| mm_err())?;
                r.squeeze(-1)
            }
            _ => self.matmul_nd(OP, other),
        }
    }

    /// `torch.bmm(x, other)`: `[b, n, k] @ [b, k, m]`, no broadcasting.
    pub fn bmm(&self, other: &Tensor) -> Result<Tensor> {
        const OP: &str = "bmm";
        self.check_contraction(OP, other)?;
        for t in [self, other] {
            if t.rank() != 3 {
                return Err(FrontendError::Rank { op: OP, expected: "a 3-D tensor", shape: t.shape().clone().into() });
            }
        }
        if self.dims()[0] != other.dims()[0] {
            return Err(FrontendError::MatMul { op: OP, lhs: self.shape().clone().into(), rhs: other.shape().clone().into() });
        }
        self.matmul_nd(OP, other)
    }

    /// `F.linear(x, weight, bias)` = `x @ weight.T + bias`, with `weight` `[out, in]` as in
    /// `nn.Linear`. Inputs of rank > 2 are flattened to `[N, in]` for one GEMM and reshaped
    /// back, as PyTorch's `linear` does.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        const OP: &str = "linear";
        self.check_contraction(OP, weight)?;
        if weight.rank() != 2 {
            return Err(FrontendError::Rank { op: OP, expected: "a 2-D weight [out_features, in_features]", shape: weight.shape().clone().into() });
        }
        if self.rank() == 0 {
            return Err(FrontendError::Rank { op: OP, expected: "an input of rank >= 1", shape: self.shape().clone().into() });
        }
        let (out_f, in_f) = (weight.dims()[0], weight.dims()[1]);
        let features = self.dims()[self.rank() - 1];
        if features != in_f {
            return Err(FrontendError::Features { op: OP, input: features, expected: in_f });
        }
        if let Some(b) = bias {
            self.check_contraction(OP, b)?;
            if b.dims() != [out_f] && !b.shape().expands_to(&Shape::new([out_f])) {
                return Err(FrontendError::Features { op: "linear (bias)", input: b.dims().last().copied().unwrap_or(1), expected: out_f });
            }
        }
        let wt = weight.t()?;
        let lead: Vec<usize> = self.dims()[..self.rank() - 1].to_vec();
        let x2 = if self.rank() > 2 { self.reshape([lead.iter().product::<usize>(), in_f])? } else { self.clone() };
        let mut y = x2.matmul(&wt)?;
        if let Some(b) = bias {
            y = y.add(b)?;
        }
        if self.rank() > 2 {
            let mut dims = lead;
            dims.push(out_f);
            y = y.reshape(dims)?;
        }
        Ok(y)
    }
}
