//! Bounded saturation, verification after every stage, typed errors, explain's reasons.

mod common;

use ir::{BinaryOp, DType, Graph, Node, Op, ReduceOp, UnaryOp};
use passes::{DeviceProfile, Limits, PassError};
use std::time::Duration;

/// A long chain of permutes and unary ops: many movement rewrites apply.
fn busy_graph() -> Graph {
    let mut g = Graph::new("busy");
    let mut x = g.input("x", DType::F32, [3, 5, 7]).unwrap();
    for i in 0..40 {
        let perm = if i % 2 == 0 { vec![1, 2, 0] } else { vec![2, 0, 1] };
        x = g.add(Op::Permute { perm }, &[x]).unwrap();
        x = g.add(Op::Unary(if i % 3 == 0 { UnaryOp::Tanh } else { UnaryOp::Neg }), &[x]).unwrap();
    }
    g.set_outputs(vec![x]);
    g
}

#[test]
fn saturation_stops_at_the_node_limit_and_stays_sound() {
    let g = busy_graph();
    let limits = Limits { nodes: 200, nodes_per_input_node: 0, ..Limits::default() };
    let (out, report) = passes::simplify_with(&g, &DeviceProfile::cpu(), &passes::rules::all(), &limits).unwrap();
    assert!(report.stop_reason.contains("NodeLimit"), "{}", report.stop_reason);
    common::assert_same_values("node limit", &g, &out, 1);
}

#[test]
fn saturation_stops_at_the_iteration_limit() {
    let g = busy_graph();
    let limits = Limits { iterations: 1, ..Limits::default() };
    let (out, report) = passes::simplify_with(&g, &DeviceProfile::cpu(), &passes::rules::all(), &limits).unwrap();
    assert!(report.stop_reason.contains("IterationLimit"), "{}", report.stop_reason);
    assert_eq!(report.iterations, 1);
    common::assert_same_values("iteration limit", &g, &out, 2);
}

#[test]
fn saturation_stops_at_the_time_limit() {
    let g = busy_graph();
    let limits = Limits { time: Duration::from_nanos(1), ..Limits::default() };
    let (out, report) = passes::simplify_with(&g, &DeviceProfile::cpu(), &passes::rules::all(), &limits).unwrap();
    assert!(report.stop_reason.contains("TimeLimit"), "{}", report.stop_reason);
    common::assert_same_values("time limit", &g, &out, 3);
}

#[test]
fn optimize_with_kiln_verify_checks_every_stage() {
    std::env::set_var("KILN_VERIFY", "1");
    assert!(ir::verify::verify_enabled());
    let g = busy_graph();
    let opt = passes::optimize(&g, &DeviceProfile::h200()).unwrap();
    common::assert_kernels_agree("verified", &g, &opt.kernels, 4);
}

#[test]
fn an_ill_typed_graph_is_a_typed_error() {
    let mut g = Graph::new("bad");
    let x = g.input("x", DType::F32, [3, 5]).unwrap();
    // Recorded as [5, 3] although an exp of [3, 5] is [3, 5].
    let y = g.push(Node { op: Op::Unary(UnaryOp::Exp), dtype: DType::F32, shape: ir::Shape::new([5, 3]), inputs: [x].into_iter().collect() });
    g.set_outputs(vec![y]);
    let err = passes::optimize(&g, &DeviceProfile::cpu()).unwrap_err();
    assert!(matches!(err, PassError::InvalidInput(_) | PassError::Verify { .. }), "{err}");
    assert!(err.to_string().contains("not well formed") || err.to_string().contains("verif"), "{err}");
}

#[test]
fn explain_says_when_fusion_would_re_read() {
    // A row sum broadcast over a 4x larger tensor: joining the row kernel would recompute it.
    let mut g = Graph::new("reread");
    let x = g.input("x", DType::F32, [5, 7]).unwrap();
    let big = g.input("big", DType::F32, [4, 5, 7]).unwrap();
    let s = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: true }, &[x]).unwrap();
    let e = g.add(Op::Unary(UnaryOp::Exp), &[s]).unwrap();
    let y = g.add(Op::Binary(BinaryOp::Mul), &[e, big]).unwrap();
    g.set_outputs(vec![y]);
    let ex = passes::explain(&g, &DeviceProfile::h200()).unwrap();
    let text = ex.to_string();
    assert!(text.contains("re-read") && text.contains("4 times"), "{text}");
    assert_eq!(ex.kernels.kernels.len(), 2);
    common::assert_kernels_agree("reread", &g, &ex.kernels, 5);
}

#[test]
fn an_output_view_that_is_also_read_further_stays_acyclic() {
    // y = reshape(x @ w) is an output and is read again by z = y + 1 (also an output).
    let mut g = Graph::new("views");
    let x = g.input("x", DType::F32, [3, 5]).unwrap();
    let w = g.input("w", DType::F32, [5, 5]).unwrap();
    let e2 = g.add(Op::MatMul, &[x, w]).unwrap();
    let y = g.add(Op::Reshape { shape: ir::Shape::new([15]) }, &[e2]).unwrap();
    let p = g.add(Op::Permute { perm: vec![1, 0] }, &[e2]).unwrap();
    let one = g.full(1.0, DType::F32, [15]);
    let z = g.add(Op::Binary(BinaryOp::Add), &[y, one]).unwrap();
    let n = g.add(Op::Unary(UnaryOp::Neg), &[p]).unwrap();
    g.set_outputs(vec![y, z, p, n]);
    let opt = passes::optimize(&g, &DeviceProfile::cpu()).unwrap();
    common::assert_kernels_agree("views", &g, &opt.kernels, 6);
}
