//! `Linear -> GELU -> Linear`.

use crate::elementwise::GeluApproximate;
use crate::error::Result;
use crate::module::{expect_inputs, Module, Vars};
use crate::nn::Linear;
use crate::tracer::Tensor;
use ir::DType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlpConfig {
    pub in_features: usize,
    pub hidden: usize,
    pub out_features: usize,
    pub bias: bool,
    pub gelu: GeluApproximate,
    pub dtype: DType,
}

impl Default for MlpConfig {
    /// GPT-2 small's MLP sizes: 768 -> 3072 -> 768, exact GELU, f32.
    fn default() -> MlpConfig {
        MlpConfig { in_features: 768, hidden: 3072, out_features: 768, bias: true, gelu: GeluApproximate::None, dtype: DType::F32 }
    }
}

/// `fc2(gelu(fc1(x)))`; parameters `fc1.{weight,bias}`, `fc2.{weight,bias}`. One input
/// `x [.., in_features]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mlp {
    pub cfg: MlpConfig,
}

impl Mlp {
    pub fn new(cfg: MlpConfig) -> Mlp {
        Mlp { cfg }
    }

    pub fn forward(&self, vars: &Vars, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let h = Linear::new(c.in_features, c.hidden, c.bias).forward(&vars.pp("fc1"), x)?;
        let h = h.gelu_with(c.gelu)?;
        Linear::new(c.hidden, c.out_features, c.bias).forward(&vars.pp("fc2"), &h)
    }
}

impl Module for Mlp {
    fn name(&self) -> String {
        "mlp".into()
    }
    fn forward(&self, vars: &Vars, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        expect_inputs("mlp", inputs, 1)?;
        Ok(vec![Mlp::forward(self, vars, &inputs[0])?])
    }
    fn param_dtype(&self) -> DType {
        self.cfg.dtype
    }
}
