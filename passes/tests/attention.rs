//! Attention discovery: spellings that must become one `flash_attention`, and near-misses
//! that must not. Every case is also checked numerically (optimized kernels vs interpreter).
//!
//! A softmax written without the max-subtraction (`exp(s) / sum(exp(s))`) is NOT matched:
//! it overflows where the fused kernel would not, so it is not the same function in floats.

#![allow(clippy::result_large_err)] // frontend::Result

mod common;

use frontend::{module_fn, trace, InputSpec, Tensor, Tracer};
use ir::{DType, Op};
use passes::DeviceProfile;

const B: usize = 2;
const H: usize = 3;
const T: usize = 7;
const D: usize = 5;

type Build = fn(&Tracer, &[Tensor]) -> frontend::Result<Tensor>;

fn graph_of(inputs: &[InputSpec], f: Build) -> ir::Graph {
    let m = module_fn("attn", move |_v, xs| {
        let tr = xs[0].tracer().clone();
        Ok(vec![f(&tr, xs)?])
    });
    trace(&m, inputs).unwrap().graph
}

fn qkv(dtype: DType) -> Vec<InputSpec> {
    ["q", "k", "v"].iter().map(|n| InputSpec::new(*n, dtype, [B, H, T, D])).collect()
}

fn scale() -> f64 {
    1.0 / (D as f64).sqrt()
}

/// Returns the flash nodes `(causal, scale)` found, after checking numerics.
fn flash_nodes(g: &ir::Graph) -> Vec<(bool, f64)> {
    let (simple, _) = passes::simplify(g, &DeviceProfile::h200()).unwrap();
    common::assert_same_values("simplified", g, &simple, 7);
    let opt = passes::optimize(g, &DeviceProfile::h200()).unwrap();
    common::assert_kernels_agree("kernels", g, &opt.kernels, 11);
    simple
        .nodes()
        .filter_map(|(_, n)| match n.op {
            Op::FlashAttention { causal, scale } => Some((causal, scale.0)),
            _ => None,
        })
        .collect()
}

fn assert_flash(g: &ir::Graph, causal: bool) {
    let f = flash_nodes(g);
    assert_eq!(f.len(), 1, "expected one flash attention, got {f:?}");
    assert_eq!(f[0].0, causal, "causal flag");
    assert!((f[0].1 - scale()).abs() < 1e-6, "scale {} != {}", f[0].1, scale());
}

fn assert_no_flash(g: &ir::Graph) {
    let f = flash_nodes(g);
    assert!(f.is_empty(), "near-miss matched: {f:?}");
}

fn tril(tr: &Tracer, diagonal: i64) -> frontend::Result<Tensor> {
    tr.ones(DType::Bool, [T, T])?.tril(diagonal)
}

#[test]
fn mul_scores_masked_fill_not_tril() {
    let g = graph_of(&qkv(DType::F32), |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?;
        let s = s.masked_fill(&tril(tr, 0)?.logical_not()?, f64::NEG_INFINITY)?;
        s.softmax(-1)?.matmul(&x[2])
    });
    assert_flash(&g, true);
}

#[test]
fn div_scores_where_tril() {
    let g = graph_of(&qkv(DType::F32), |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.div((D as f64).sqrt())?;
        tril(tr, 0)?.where_(&s, f64::NEG_INFINITY)?.softmax(-1)?.matmul(&x[2])
    });
    assert_flash(&g, true);
}

#[test]
fn scale_on_q_add_neg_inf_triangle() {
    let g = graph_of(&qkv(DType::F32), |tr, x| {
        let s = x[0].mul(scale())?.matmul(&x[1].transpose(-2, -1)?)?;
        let tri = tr.full(f64::NEG_INFINITY, DType::F32, [T, T])?.triu(1)?;
        s.add(&tri)?.softmax(-1)?.matmul(&x[2])
    });
    assert_flash(&g, true);
}

#[test]
fn div_on_q_iota_compare_mask() {
    let g = graph_of(&qkv(DType::F32), |tr, x| {
        let s = x[0].div((D as f64).sqrt())?.matmul(&x[1].transpose(-2, -1)?)?;
        let rows = tr.iota(0, DType::I64, [T, T])?;
        let cols = tr.iota(1, DType::I64, [T, T])?;
        let keep = rows.ge(&cols)?.reshape([1, 1, T, T])?.expand([B, H, T, T])?;
        keep.where_(&s, f64::NEG_INFINITY)?.softmax(-1)?.matmul(&x[2])
    });
    assert_flash(&g, true);
}

#[test]
fn head_split_views_and_transposes() {
    let c = H * D;
    let specs = vec![InputSpec::new("x", DType::F32, [B, T, 3 * c])];
    let g = graph_of(&specs, |tr, x| {
        let parts = x[0].split(H * D, 2)?;
        let heads = |t: &Tensor| t.view([B, T, H, D])?.transpose(1, 2);
        let (q, k, v) = (heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?);
        let s = q.matmul(&k.transpose(-2, -1)?)?.mul(scale())?;
        let s = s.masked_fill(&tril(tr, 0)?.logical_not()?, f64::NEG_INFINITY)?;
        s.softmax(-1)?.matmul(&v)?.transpose(1, 2)?.contiguous()?.view([B, T, H * D])
    });
    assert_flash(&g, true);
}

#[test]
fn fp32_softmax_upcast_in_bf16() {
    let g = graph_of(&qkv(DType::BF16), |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.float()?.mul(scale())?;
        let s = s.masked_fill(&tril(tr, 0)?.logical_not()?, f64::NEG_INFINITY)?;
        s.softmax(-1)?.to_dtype(DType::BF16)?.matmul(&x[2])
    });
    assert_flash(&g, true);
}

#[test]
fn no_mask_is_non_causal_attention() {
    let g = graph_of(&qkv(DType::F32), |_, x| x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?.softmax(-1)?.matmul(&x[2]));
    assert_flash(&g, false);
}

#[test]
fn softmax_by_reciprocal_and_finfo_min_fill() {
    let g = graph_of(&qkv(DType::F32), |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?;
        let s = s.masked_fill(&tril(tr, 0)?.logical_not()?, f32::MIN as f64)?;
        let m = s.amax(vec![-1], true)?;
        let e = s.sub(&m)?.exp()?;
        e.mul(&e.sum(vec![-1], true)?.recip()?)?.matmul(&x[2])
    });
    assert_flash(&g, true);
}

#[test]
fn fewer_queries_than_keys_uses_offset_triangle() {
    // Decoding with a cache: 3 queries over 7 keys; keep j <= i + 4.
    let specs = vec![InputSpec::new("q", DType::F32, [B, H, 3, D]), InputSpec::new("k", DType::F32, [B, H, T, D]), InputSpec::new("v", DType::F32, [B, H, T, D])];
    let g = graph_of(&specs, |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?;
        let keep = tr.ones(DType::Bool, [3, T])?.tril((T - 3) as i64)?;
        keep.where_(&s, f64::NEG_INFINITY)?.softmax(-1)?.matmul(&x[2])
    });
    assert_flash(&g, true);
}

// ---- near-misses ----

#[test]
fn arbitrary_input_mask_does_not_match() {
    let mut specs = qkv(DType::F32);
    specs.push(InputSpec::new("mask", DType::Bool, [T, T]));
    let g = graph_of(&specs, |_, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?;
        x[3].where_(&s, f64::NEG_INFINITY)?.softmax(-1)?.matmul(&x[2])
    });
    assert_no_flash(&g);
}

#[test]
fn off_by_one_triangles_do_not_match() {
    let below = graph_of(&qkv(DType::F32), |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?;
        tril(tr, -1)?.where_(&s, -1e9)?.softmax(-1)?.matmul(&x[2])
    });
    assert_no_flash(&below);
    let above = graph_of(&qkv(DType::F32), |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?;
        tril(tr, 1)?.where_(&s, f64::NEG_INFINITY)?.softmax(-1)?.matmul(&x[2])
    });
    assert_no_flash(&above);
}

#[test]
fn upper_triangle_kept_does_not_match() {
    let g = graph_of(&qkv(DType::F32), |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?;
        tr.ones(DType::Bool, [T, T])?.triu(0)?.where_(&s, f64::NEG_INFINITY)?.softmax(-1)?.matmul(&x[2])
    });
    assert_no_flash(&g);
}

#[test]
fn dropout_on_probabilities_does_not_match() {
    let mut specs = qkv(DType::F32);
    specs.push(InputSpec::new("keep", DType::F32, [B, H, T, T]));
    let g = graph_of(&specs, |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?;
        let p = s.masked_fill(&tril(tr, 0)?.logical_not()?, f64::NEG_INFINITY)?.softmax(-1)?;
        p.mul(&x[3])?.div(0.9)?.matmul(&x[2])
    });
    assert_no_flash(&g);
}

#[test]
fn softmax_without_max_subtraction_does_not_match() {
    let g = graph_of(&qkv(DType::F32), |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?;
        let e = s.masked_fill(&tril(tr, 0)?.logical_not()?, f64::NEG_INFINITY)?.exp()?;
        e.div(&e.sum(vec![-1], true)?)?.matmul(&x[2])
    });
    assert_no_flash(&g);
}

#[test]
fn fill_that_is_not_minus_infinity_does_not_match() {
    let g = graph_of(&qkv(DType::F32), |tr, x| {
        let s = x[0].matmul(&x[1].transpose(-2, -1)?)?.mul(scale())?;
        s.masked_fill(&tril(tr, 0)?.logical_not()?, 0.0)?.softmax(-1)?.matmul(&x[2])
    });
    assert_no_flash(&g);
}
