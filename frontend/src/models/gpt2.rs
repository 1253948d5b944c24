//! nanoGPT-style GPT-2: pre-norm blocks with a fused `c_attn` projection and attention
//! written out by hand, in several spellings people use in PyTorch.
//!
//! Parameter names follow nanoGPT (without its `transformer.` prefix):
//! `h.{i}.ln_1.{weight,bias}`, `h.{i}.attn.c_attn.{weight,bias}`, `h.{i}.attn.c_proj.*`,
//! `h.{i}.ln_2.*`, `h.{i}.mlp.c_fc.*`, `h.{i}.mlp.c_proj.*`, `ln_f.*`, `lm_head.weight`.
//! The input is the embedded sequence `x [B, T, n_embd]`, as in the benchmark suite.

use crate::elementwise::GeluApproximate;
use crate::error::{invalid, FrontendError, Result};
use crate::module::{expect_inputs, InputSpec, Module, Vars};
use crate::nn::{LayerNorm, Linear};
use crate::tracer::Tensor;
use ir::DType;

/// How the causal attention is written. All spellings compute the same function; the
/// optimizer must recognise each as attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionSpelling {
    /// nanoGPT: `att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))`;
    /// `att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float('-inf'))` with the buffer
    /// `bias = torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size)`.
    MaskedFillTril,
    /// `mask = torch.tril(torch.ones(T, T, dtype=torch.bool))`;
    /// `att = torch.where(mask, att, float('-inf'))`.
    WhereMask,
    /// `att = att + torch.full((T, T), float('-inf'), dtype=att.dtype).triu(1)`.
    AddNegInfTriangle,
    /// `att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)`, then nanoGPT's masked_fill.
    DivSqrtD,
    /// `q = q * hs ** -0.5; att = q @ k.transpose(-2, -1)`, then nanoGPT's masked_fill.
    ScaleQ,
    /// Scores upcast right after the matmul, scaled, masked and softmaxed in f32, cast back
    /// before `@ v`: `att = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(hs))`;
    /// nanoGPT's masked_fill; `att = F.softmax(att, dim=-1).to(v.dtype)`. (Upcasting only
    /// at the softmax, `F.softmax(att.float(), -1).to(v.dtype)`, gives exactly the
    /// `MaskedFillTril` graph, since half-type softmax already computes in f32. For f32
    /// models the casts vanish and this is `MaskedFillTril` too.)
    Fp32Softmax,
}

impl AttentionSpelling {
    pub const ALL: [AttentionSpelling; 6] = [
        AttentionSpelling::MaskedFillTril,
        AttentionSpelling::WhereMask,
        AttentionSpelling::AddNegInfTriangle,
        AttentionSpelling::DivSqrtD,
        AttentionSpelling::ScaleQ,
        AttentionSpelling::Fp32Softmax,
    ];
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpt2Config {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// The longest sequence (size of nanoGPT's causal-mask buffer).
    pub block_size: usize,
    pub vocab_size: usize,
    /// Biases in Linears and LayerNorms (nanoGPT's `bias`; GPT-2 has them).
    pub bias: bool,
    pub dtype: DType,
    pub attention: AttentionSpelling,
    /// The MLP's GELU (GPT-2 uses the tanh approximation).
    pub gelu: GeluApproximate,
    pub ln_eps: f64,
    /// Append `lm_head` (`Linear(n_embd, vocab_size, bias=False)`); off by default.
    pub lm_head: bool,
}

impl Gpt2Config {
    /// GPT-2 small: 12 layers, 12 heads, d = 768, context 1024.
    pub fn small() -> Gpt2Config {
        Gpt2Config {
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            block_size: 1024,
            vocab_size: 50257,
            bias: true,
            dtype: DType::F32,
            attention: AttentionSpelling::MaskedFillTril,
            gelu: GeluApproximate::Tanh,
            ln_eps: 1e-5,
            lm_head: false,
        }
    }

    /// A tiny GPT-2 for interpreter tests: 2 layers, 4 heads, d = 64, context 16.
    pub fn tiny() -> Gpt2Config {
        Gpt2Config { n_layer: 2, n_head: 4, n_embd: 64, block_size: 16, vocab_size: 97, ..Gpt2Config::small() }
    }

    pub fn with_attention(self, attention: AttentionSpelling) -> Gpt2Config {
        Gpt2Config { attention, ..self }
    }

    pub fn with_dtype(self, dtype: DType) -> Gpt2Config {
        Gpt2Config { dtype, ..self }
    }

    /// Head size `n_embd / n_head`.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head.max(1)
    }

    fn validate(&self) -> Result<()> {
        if self.n_head == 0 || self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(invalid("gpt2", format!("n_embd {} must be a positive multiple of n_head {}", self.n_embd, self.n_head)));
        }
        Ok(())
    }

    /// The model input `x [batch, seq, n_embd]` in the model's dtype.
    pub fn input_spec(&self, batch: usize, seq: usize) -> InputSpec {
        InputSpec::new("x", self.dtype, [batch, seq, self.n_embd])
    }

    fn layer_norm(&self) -> LayerNorm {
        LayerNorm { dim: self.n_embd, eps: self.ln_eps, bias: self.bias }
    }
}

/// Checks `x` is `[B, T, n_embd]` with `T <= block_size`; returns `(B, T)`.
fn check_input(cfg: &Gpt2Config, op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    cfg.validate()?;
    if x.rank() != 3 {
        return Err(FrontendError::Rank { op, expected: "an input [batch, seq, n_embd] of rank 3", shape: x.shape().clone().into() });
    }
    let (b, t, c) = (x.dims()[0], x.dims()[1], x.dims()[2]);
    if c != cfg.n_embd {
        return Err(FrontendError::Features { op, input: c, expected: cfg.n_embd });
    }
    if t > cfg.block_size {
        return Err(invalid(op, format!("sequence length {t} is longer than block_size {}", cfg.block_size)));
    }
    Ok((b, t))
}

/// nanoGPT's `CausalSelfAttention`: `c_attn` (fused q, k, v), heads by view + transpose,
/// attention written out in the configured spelling, `c_proj`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CausalSelfAttention {
    pub cfg: Gpt2Config,
}

impl CausalSelfAttention {
    pub fn forward(&self, vars: &Vars, x: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t) = check_input(cfg, "attention", x)?;
        let (c, nh, hs) = (cfg.n_embd, cfg.n_head, cfg.head_size());
        let qkv = Linear::new(c, 3 * c, cfg.bias).forward(&vars.pp("c_attn"), x)?;
        let parts = qkv.split(c, 2)?;
        let heads = |t_: &Tensor| t_.view([b, t, nh, hs])?.transpose(1, 2); // (B, nh, T, hs)
        let (q, k, v) = (heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?);

        let y = causal_attention(&q, &k, &v, cfg.attention, cfg.block_size)?; // (B, nh, T, hs)
        let y = y.transpose(1, 2)?.contiguous()?.view([b, t, c])?;
        Linear::new(c, c, cfg.bias).forward(&vars.pp("c_proj"), &y)
    }
}

/// Causal attention over `q, k, v [.., T, hs]` written out in one spelling:
/// `softmax(q @ k^T / sqrt(hs) + causal mask) @ v`. `block_size` sizes nanoGPT's mask buffer
/// (`T <= block_size`). This is the part the optimizer must recognise as flash attention.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, spelling: AttentionSpelling, block_size: usize) -> Result<Tensor> {
    const OP: &str = "causal_attention";
    if q.rank() < 2 || k.rank() != q.rank() || v.rank() != q.rank() {
        return Err(FrontendError::Rank { op: OP, expected: "q, k, v of one rank >= 2", shape: q.shape().clone().into() });
    }
    let t = q.size(-2)?;
    if k.size(-2)? != t {
        return Err(invalid(OP, format!("q has {t} positions but k has {} (causal attention here is self-attention)", k.size(-2)?)));
    }
    if t > block_size {
        return Err(invalid(OP, format!("sequence length {t} is longer than block_size {block_size}")));
    }
    let hs = q.size(-1)?;
    let mut q = q.clone();
    use AttentionSpelling::*;
    if spelling == ScaleQ {
        q = q.mul((hs as f64).powf(-0.5))?;
    }
    let mut scores = q.matmul(&k.transpose(-2, -1)?)?;
    if spelling == Fp32Softmax {
        scores = scores.float()?;
    }
    let att = match spelling {
        MaskedFillTril | WhereMask | AddNegInfTriangle | Fp32Softmax => scores.mul(1.0 / (k.size(-1)? as f64).sqrt())?,
        DivSqrtD => scores.div((hs as f64).sqrt())?,
        ScaleQ => scores,
    };
    let att = match spelling {
        MaskedFillTril | DivSqrtD | ScaleQ | Fp32Softmax => {
            // nanoGPT's buffer: tril(ones(block_size, block_size)).view(1, 1, bs, bs)
            let bs = block_size;
            let mut view = vec![1; q.rank() - 2];
            view.extend([bs, bs]);
            let bias = q.tracer().ones(DType::F32, [bs, bs])?.tril(0)?.view(view)?;
            let mask = bias.slice(-2, 0, t as isize, 1)?.slice(-1, 0, t as isize, 1)?.eq(0)?;
            att.masked_fill(&mask, f64::NEG_INFINITY)?
        }
        WhereMask => {
            let mask = q.tracer().ones(DType::Bool, [t, t])?.tril(0)?;
            mask.where_(&att, f64::NEG_INFINITY)?
        }
        AddNegInfTriangle => {
            let tri = q.tracer().full(f64::NEG_INFINITY, att.dtype(), [t, t])?.triu(1)?;
            att.add(&tri)?
        }
    };
    let att = match spelling {
        Fp32Softmax => att.softmax(-1)?.to_dtype(v.dtype())?,
        _ => att.softmax(-1)?,
    };
    att.matmul(v)
}

/// Just the attention core as a module: inputs `q, k, v [B, n_head, T, head_size]`, output
/// [`causal_attention`] in the given spelling (for attention-discovery tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionCore {
    pub spelling: AttentionSpelling,
    pub block_size: usize,
    pub dtype: DType,
}

impl AttentionCore {
    /// Input specs `q`, `k`, `v` of shape `[batch, n_head, seq, head_size]`.
    pub fn input_specs(&self, batch: usize, n_head: usize, seq: usize, head_size: usize) -> Vec<InputSpec> {
        ["q", "k", "v"].iter().map(|n| InputSpec::new(*n, self.dtype, [batch, n_head, seq, head_size])).collect()
    }
}

impl Module for AttentionCore {
    fn name(&self) -> String {
        "attention".into()
    }
    fn forward(&self, _vars: &Vars, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        expect_inputs("attention", inputs, 3)?;
        Ok(vec![causal_attention(&inputs[0], &inputs[1], &inputs[2], self.spelling, self.block_size)?])
    }
    fn param_dtype(&self) -> DType {
        self.dtype
    }
}

/// GPT-2's MLP: `c_proj(gelu(c_fc(x)))`, hidden size `4 * n_embd`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpt2Mlp {
    pub cfg: Gpt2Config,
}

impl Gpt2Mlp {
    pub fn forward(&self, vars: &Vars, x: &Tensor) -> Result<Tensor> {
        let c = self.cfg.n_embd;
        let features = x.size(-1)?;
        if features != c {
            return Err(FrontendError::Features { op: "gpt2 mlp", input: features, expected: c });
        }
        let h = Linear::new(c, 4 * c, self.cfg.bias).forward(&vars.pp("c_fc"), x)?;
        let h = h.gelu_with(self.cfg.gelu)?;
        Linear::new(4 * c, c, self.cfg.bias).forward(&vars.pp("c_proj"), &h)
    }
}

/// One transformer block: `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Block {
    pub cfg: Gpt2Config,
}

impl Block {
    pub fn new(cfg: Gpt2Config) -> Block {
        Block { cfg }
    }

    pub fn forward(&self, vars: &Vars, x: &Tensor) -> Result<Tensor> {
        let cfg = self.cfg;
        check_input(&cfg, "gpt2 block", x)?;
        let h = cfg.layer_norm().forward(&vars.pp("ln_1"), x)?;
        let x = x.add(&CausalSelfAttention { cfg }.forward(&vars.pp("attn"), &h)?)?;
        let h = cfg.layer_norm().forward(&vars.pp("ln_2"), &x)?;
        x.add(&Gpt2Mlp { cfg }.forward(&vars.pp("mlp"), &h)?)
    }
}

impl Module for Block {
    fn name(&self) -> String {
        "gpt2_block".into()
    }
    fn forward(&self, vars: &Vars, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        expect_inputs("gpt2_block", inputs, 1)?;
        Ok(vec![Block::forward(self, vars, &inputs[0])?])
    }
    fn param_dtype(&self) -> DType {
        self.cfg.dtype
    }
}

/// GPT-2 without embeddings: `n_layer` blocks, `ln_f`, and optionally `lm_head`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpt2 {
    pub cfg: Gpt2Config,
}

impl Gpt2 {
    pub fn new(cfg: Gpt2Config) -> Gpt2 {
        Gpt2 { cfg }
    }

    pub fn forward(&self, vars: &Vars, x: &Tensor) -> Result<Tensor> {
        let cfg = self.cfg;
        check_input(&cfg, "gpt2", x)?;
        let mut x = x.clone();
        for i in 0..cfg.n_layer {
            x = Block { cfg }.forward(&vars.pp("h").pp(i), &x)?;
        }
        let x = cfg.layer_norm().forward(&vars.pp("ln_f"), &x)?;
        if cfg.lm_head {
            Linear::new(cfg.n_embd, cfg.vocab_size, false).forward(&vars.pp("lm_head"), &x)
        } else {
            Ok(x)
        }
    }
}

impl Module for Gpt2 {
    fn name(&self) -> String {
        "gpt2".into()
    }
    fn forward(&self, vars: &Vars, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        expect_inputs("gpt2", inputs, 1)?;
        Ok(vec![Gpt2::forward(self, vars, &inputs[0])?])
    }
    fn param_dtype(&self) -> DType {
        self.cfg.dtype
    }
}
