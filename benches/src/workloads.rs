//! The workloads of `shared/bench/WORKLOADS.md`, built with Kiln's Rust tracing API.
//!
//! Each has the shapes of the suite (`Size::Full`, for GPUs) and smaller shapes that fit a
//! CPU run in seconds (`Size::Cpu`, e.g. [4096, 4096] f32), plus a tiny `Size::Check` instance
//! of the same graph that the f64 interpreter checks before anything is timed.

use frontend::models::{AttentionSpelling, Gpt2, Gpt2Config};
use frontend::{Tensor, Tracer};
use ir::{DType, Graph};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// The suite's shapes (GPU).
    Full,
    /// Shapes that fit this kind of CPU machine.
    Cpu,
    /// A tiny instance the reference interpreter checks.
    Check,
}

/// What bounds a workload, for the roofline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Bound {
    Memory,
    Compute,
    Launch,
}

pub struct Built {
    pub graph: Graph,
    /// Input specs with their initialisers (models), so weights are drawn at their real scale.
    pub specs: Option<Vec<frontend::InputSpec>>,
    /// Useful floating-point operations per call.
    pub flops: f64,
    /// The fewest bytes a call must move (inputs read once, outputs written once).
    pub bytes: f64,
}

pub struct Workload {
    pub name: &'static str,
    pub bound: Bound,
    pub build: fn(Size, DType) -> Result<Built, frontend::FrontendError>,
}

pub const WORKLOADS: &[Workload] = &[
    Workload { name: "ew_chain", bound: Bound::Memory, build: ew_chain },
    Workload { name: "layernorm_residual", bound: Bound::Memory, build: layernorm_residual },
    Workload { name: "softmax", bound: Bound::Memory, build: softmax },
    Workload { name: "mlp_gelu", bound: Bound::Compute, build: mlp_gelu },
    Workload { name: "attn_s2048_d64_causal", bound: Bound::Compute, build: attn_causal },
    Workload { name: "attn_s4096_d128", bound: Bound::Compute, build: attn_plain },
    Workload { name: "gpt2_small_b1_t32", bound: Bound::Launch, build: gpt2_b1 },
    Workload { name: "gpt2_small_b8_t1024", bound: Bound::Compute, build: gpt2_b8 },
];

pub fn find(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

fn pick<T>(size: Size, full: T, cpu: T, check: T) -> T {
    match size {
        Size::Full => full,
        Size::Cpu => cpu,
        Size::Check => check,
    }
}

fn finish(t: &Tracer, out: &Tensor, flops: f64, bytes: f64) -> Result<Built, frontend::FrontendError> {
    Ok(Built { graph: t.finish(&[out])?, specs: None, flops, bytes })
}

/// `torch.sigmoid(x * a + b) * x`
fn ew_chain(size: Size, dt: DType) -> Result<Built, frontend::FrontendError> {
    let n = pick(size, 8192, 4096, 67);
    let t = Tracer::new("ew_chain");
    let x = t.input("x", dt, [n, n])?;
    let a = t.input("a", dt, [n])?;
    let b = t.input("b", dt, [n])?;
    let y = x.mul(&a)?.add(&b)?.sigmoid()?.mul(&x)?;
    let e = dt.size_bytes() as f64;
    finish(&t, &y, 5.0 * (n * n) as f64, e * (2 * n * n + 2 * n) as f64)
}

/// `F.layer_norm(x + r, (C,), w, b)`
fn layernorm_residual(size: Size, dt: DType) -> Result<Built, frontend::FrontendError> {
    let (rows, c) = pick(size, (16384, 4096), (4096, 4096), (37, 129));
    let t = Tracer::new("layernorm_residual");
    let x = t.input("x", dt, [rows, c])?;
    let r = t.input("r", dt, [rows, c])?;
    let w = t.input("w", dt, [c])?;
    let b = t.input("b", dt, [c])?;
    let y = x.add(&r)?.layer_norm(&[c], Some(&w), Some(&b), 1e-5)?;
    let e = dt.size_bytes() as f64;
    finish(&t, &y, 8.0 * (rows * c) as f64, e * (3 * rows * c + 2 * c) as f64)
}

/// `torch.softmax(x, dim=-1)`
fn softmax(size: Size, dt: DType) -> Result<Built, frontend::FrontendError> {
    let (rows, c) = pick(size, (16384, 4096), (4096, 4096), (37, 129));
    let t = Tracer::new("softmax");
    let x = t.input("x", dt, [rows, c])?;
    let y = x.softmax(-1)?;
    finish(&t, &y, 5.0 * (rows * c) as f64, dt.size_bytes() as f64 * (2 * rows * c) as f64)
}

/// `F.gelu(x @ w1 + b1) @ w2 + b2`
fn mlp_gelu(size: Size, dt: DType) -> Result<Built, frontend::FrontendError> {
    let (m, k, n) = pick(size, (8192, 4096, 16384), (512, 768, 3072), (5, 12, 20));
    let t = Tracer::new("mlp_gelu");
    let x = t.input("x", dt, [m, k])?;
    let w1 = t.input("w1", dt, [k, n])?;
    let b1 = t.input("b1", dt, [n])?;
    let w2 = t.input("w2", dt, [n, k])?;
    let b2 = t.input("b2", dt, [k])?;
    let y = x.matmul(&w1)?.add(&b1)?.gelu()?.matmul(&w2)?.add(&b2)?;
    let e = dt.size_bytes() as f64;
    let mut built = finish(&t, &y, 4.0 * (m * k * n) as f64, e * (2 * m * k + 2 * k * n + n + k) as f64)?;
    // Weights at the scale a trained layer has (std 1/sqrt(fan-in), as compare_torch.py draws
    // them): with N(0, 1) weights the outputs reach ~1e3 and bf16 rounding of the hidden
    // layer alone exceeds any sensible tolerance, whichever way the sums are ordered.
    let normal = |name: &str, shape: Vec<usize>, std: f64| frontend::InputSpec {
        init: frontend::Init::Normal { mean: 0.0, std },
        ..frontend::InputSpec::new(name, dt, shape)
    };
    built.specs = Some(vec![
        normal("x", vec![m, k], 1.0),
        normal("w1", vec![k, n], (k as f64).powf(-0.5)),
        normal("b1", vec![n], 0.1),
        normal("w2", vec![n, k], (n as f64).powf(-0.5)),
        normal("b2", vec![k], 0.1),
    ]);
    Ok(built)
}

/// Naive attention as people write it: `(q @ k^T) * d**-0.5`, optional
/// `masked_fill(~tril, -inf)`, `softmax(-1)`, `@ v`.
fn attention(name: &str, (b, h, s, d): (usize, usize, usize, usize), causal: bool, dt: DType) -> Result<Built, frontend::FrontendError> {
    let t = Tracer::new(name);
    let q = t.input("q", dt, [b, h, s, d])?;
    let k = t.input("k", dt, [b, h, s, d])?;
    let v = t.input("v", dt, [b, h, s, d])?;
    let mut att = q.matmul(&k.transpose(-2, -1)?)?.mul((d as f64).powf(-0.5))?;
    if causal {
        let mask = t.ones(DType::Bool, [s, s])?.tril(0)?;
        att = att.masked_fill(&mask.logical_not()?, f64::NEG_INFINITY)?;
    }
    let y = att.softmax(-1)?.matmul(&v)?;
    let flops = 4.0 * (b * h * s * s * d) as f64 / if causal { 2.0 } else { 1.0 };
    finish(&t, &y, flops, dt.size_bytes() as f64 * 4.0 * (b * h * s * d) as f64)
}

fn attn_causal(size: Size, dt: DType) -> Result<Built, frontend::FrontendError> {
    attention("attn_s2048_d64_causal", pick(size, (8, 16, 2048, 64), (1, 8, 1024, 64), (1, 2, 19, 8)), true, dt)
}

fn attn_plain(size: Size, dt: DType) -> Result<Built, frontend::FrontendError> {
    attention("attn_s4096_d128", pick(size, (4, 16, 4096, 128), (1, 4, 1024, 128), (1, 2, 23, 16)), false, dt)
}

fn gpt2(name: &str, size: Size, (b, t_full): (usize, usize), dt: DType) -> Result<Built, frontend::FrontendError> {
    let mut cfg = Gpt2Config::small().with_attention(AttentionSpelling::MaskedFillTril).with_dtype(dt);
    let (b, t_len) = match size {
        Size::Full => (b, t_full),
        Size::Cpu => (b.min(1), t_full.min(128)),
        Size::Check => {
            cfg = Gpt2Config::tiny().with_attention(AttentionSpelling::MaskedFillTril).with_dtype(dt);
            (1, 7)
        }
    };
    let mut traced = frontend::trace(&Gpt2::new(cfg.clone()), &[cfg.input_spec(b, t_len)])?;
    traced.graph.set_name(name);
    let params: usize = traced.params().map(|p| p.shape.numel()).sum();
    let tokens = (b * t_len) as f64;
    let attn_flops = 4.0 * (cfg.n_layer * b * t_len * t_len * cfg.n_embd) as f64 / 2.0;
    let e = dt.size_bytes() as f64;
    Ok(Built { graph: traced.graph, specs: Some(traced.inputs), flops: 2.0 * params as f64 * tokens + attn_flops, bytes: e * (params as f64 + 2.0 * tokens * cfg.n_embd as f64) })
}

fn gpt2_b1(size: Size, dt: DType) -> Result<Built, frontend::FrontendError> {
    gpt2("gpt2_small_b1_t32", size, (1, 32), dt)
}

fn gpt2_b8(size: Size, dt: DType) -> Result<Built, frontend::FrontendError> {
    gpt2("gpt2_small_b8_t1024", size, (8, 1024), dt)
}
