//! GPT-2 through the optimizer: attention discovered in every layer and spelling, one kernel
//! per LayerNorm, biases/GELU/residuals in GEMM epilogues or neighbour kernels, at most 85
//! kernels for GPT-2 small, and the kernel graph computes what the traced graph computes.

mod common;

use frontend::models::gpt2::{AttentionSpelling, Gpt2, Gpt2Config};
use frontend::trace;
use ir::{DType, KernelGraph, KernelKind, Op, ReduceOp};
use passes::DeviceProfile;

fn traced(cfg: Gpt2Config, t: usize) -> ir::Graph {
    trace(&Gpt2::new(cfg), &[cfg.input_spec(1, t)]).unwrap().graph
}

fn count_ops(kg: &KernelGraph, f: impl Fn(&Op) -> bool) -> usize {
    kg.kernels.iter().flat_map(|k| k.body.nodes().map(|(_, n)| f(&n.op)).collect::<Vec<_>>()).filter(|&b| b).count()
}

/// The structural claims, for any GPT-2 config.
fn check_structure(cfg: &Gpt2Config, kg: &KernelGraph) {
    let layers = cfg.n_layer;
    // All attention blocks are flash attention, each alone in an attention kernel.
    assert_eq!(count_ops(kg, |o| matches!(o, Op::FlashAttention { causal: true, .. })), layers);
    assert_eq!(kg.kernels.iter().filter(|k| k.kind == KernelKind::Attention).count(), layers);
    assert_eq!(count_ops(kg, |o| matches!(o, Op::MatMul)), 4 * layers);
    // Every LayerNorm (2 per layer + ln_f) is exactly one kernel: a reduction kernel with the
    // LN's two row sums, and no kernel splits a LayerNorm.
    let ln_kernels: Vec<_> = kg.kernels.iter().filter(|k| k.kind == KernelKind::Reduction).collect();
    assert_eq!(ln_kernels.len(), 2 * layers + 1);
    for k in &ln_kernels {
        let sums = k.body.nodes().filter(|(_, n)| matches!(n.op, Op::Reduce { op: ReduceOp::Sum, .. })).count();
        assert_eq!(sums, 2, "kernel {} should hold one whole LayerNorm", k.name);
        assert_eq!(k.outputs.len(), 1, "kernel {}: one write", k.name);
    }
    // No elementwise-only kernels: biases, GELU and residual adds all sit in GEMM epilogues
    // or neighbour (LayerNorm) kernels.
    for k in &kg.kernels {
        assert!(matches!(k.kind, KernelKind::Gemm | KernelKind::Attention | KernelKind::Reduction), "stray {} kernel {}", k.kind.name(), k.name);
    }
    let gelu_in_gemm = kg.kernels.iter().filter(|k| k.kind == KernelKind::Gemm && k.body.nodes().any(|(_, n)| matches!(n.op, Op::Unary(ir::UnaryOp::Tanh)))).count();
    assert_eq!(gelu_in_gemm, layers, "GELU in each c_fc GEMM epilogue");
    assert_eq!(kg.kernels.len(), 7 * layers + 1);
}

#[test]
fn gpt2_small_kernel_count_and_structure() {
    let cfg = Gpt2Config::small();
    let g = traced(cfg, 8);
    let opt = passes::optimize(&g, &DeviceProfile::h200()).unwrap();
    opt.kernels.verify().unwrap();
    check_structure(&cfg, &opt.kernels);
    assert!(opt.kernels.kernels.len() <= 85, "{} kernels", opt.kernels.kernels.len());
    assert_eq!(opt.report.flash_attention_nodes, 12);
    assert!(opt.report.optimized_seconds < opt.report.baseline_seconds);
}

#[test]
fn gpt2_small_bf16_every_spelling_structure() {
    // bf16 adds casts around LayerNorm (f32 statistics) and the softmax; they must land in the
    // same kernels. T = 64 also exercises other extraction choices than T = 8.
    for sp in AttentionSpelling::ALL {
        let cfg = Gpt2Config::small().with_dtype(DType::BF16).with_attention(sp);
        let g = traced(cfg, 64);
        let opt = passes::optimize(&g, &DeviceProfile::h200()).unwrap();
        check_structure(&cfg, &opt.kernels);
    }
}

#[test]
fn every_spelling_is_discovered_and_agrees_numerically() {
    for sp in AttentionSpelling::ALL {
        let cfg = Gpt2Config::tiny().with_attention(sp);
        let g = traced(cfg, 8);
        let opt = passes::optimize(&g, &DeviceProfile::h200()).unwrap();
        check_structure(&cfg, &opt.kernels);
        common::assert_kernels_agree(&format!("{sp:?}"), &g, &opt.kernels, 3);
    }
}

#[test]
fn twelve_layers_narrow_agree_numerically() {
    // GPT-2 small's depth at a width the interpreter runs quickly.
    let cfg = Gpt2Config { n_layer: 12, n_head: 4, n_embd: 36, block_size: 16, ..Gpt2Config::small() };
    let g = traced(cfg, 7);
    let opt = passes::optimize(&g, &DeviceProfile::cpu()).unwrap();
    check_structure(&cfg, &opt.kernels);
    common::assert_kernels_agree("gpt2 12 layers", &g, &opt.kernels, 5);
}

#[test]
fn bf16_fp32_softmax_agrees() {
    let cfg = Gpt2Config::tiny().with_attention(AttentionSpelling::Fp32Softmax).with_dtype(DType::BF16);
    let g = traced(cfg, 8);
    let opt = passes::optimize(&g, &DeviceProfile::h200()).unwrap();
    assert_eq!(count_ops(&opt.kernels, |o| matches!(o, Op::FlashAttention { .. })), cfg.n_layer);
    common::assert_kernels_agree("bf16", &g, &opt.kernels, 9);
}

#[test]
fn optimization_is_deterministic() {
    let g = traced(Gpt2Config::tiny(), 8);
    let a = passes::optimize(&g, &DeviceProfile::h200()).unwrap().kernels.to_string();
    for _ in 0..3 {
        assert_eq!(passes::optimize(&g, &DeviceProfile::h200()).unwrap().kernels.to_string(), a);
    }
}

#[test]
fn explain_names_kernels_and_reasons() {
    let g = traced(Gpt2Config::tiny(), 8);
    let e = passes::explain(&g, &DeviceProfile::h200()).unwrap();
    let text = e.to_string();
    assert!(text.contains("k0 reduction"), "{text}");
    assert!(text.contains("a template epilogue cannot hold a reduction"), "{text}");
}
