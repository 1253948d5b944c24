//! Layers with parameters (`torch.nn` style). Each is a small config value; `forward` takes
//! the [`Vars`] scoped to the layer's name and fetches its parameters from it.

use crate::error::Result;
use crate::module::{Init, Vars};
use crate::tracer::Tensor;

/// `nn.Linear(in_features, out_features, bias)`: parameters `weight [out, in]`, `bias [out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize, bias: bool) -> Linear {
        Linear { in_features, out_features, bias }
    }

    pub fn forward(&self, vars: &Vars, x: &Tensor) -> Result<Tensor> {
        let w = vars.get("weight", [self.out_features, self.in_features], Init::WEIGHT)?;
        let b = if self.bias { Some(vars.get("bias", [self.out_features], Init::WEIGHT)?) } else { None };
        x.linear(&w, b.as_ref())
    }
}

/// `nn.LayerNorm(dim, eps, bias)`: parameters `weight [dim]` and (optionally) `bias [dim]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNorm {
    pub dim: usize,
    pub eps: f64,
    pub bias: bool,
}

impl LayerNorm {
    pub fn new(dim: usize) -> LayerNorm {
        LayerNorm { dim, eps: 1e-5, bias: true }
    }

    pub fn forward(&self, vars: &Vars, x: &Tensor) -> Result<Tensor> {
        let w = vars.get("weight", [self.dim], Init::NORM_WEIGHT)?;
        let b = if self.bias { Some(vars.get("bias", [self.dim], Init::NORM_BIAS)?) } else { None };
        x.layer_norm(&[self.dim], Some(&w), b.as_ref(), self.eps)
    }
}

/// `nn.RMSNorm(dim, eps)`: parameter `weight [dim]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsNorm {
    pub dim: usize,
    pub eps: Option<f64>,
}

impl RmsNorm {
    pub fn forward(&self, vars: &Vars, x: &Tensor) -> Result<Tensor> {
        let w = vars.get("weight", [self.dim], Init::NORM_WEIGHT)?;
        x.rms_norm(&[self.dim], Some(&w), self.eps)
    }
}
