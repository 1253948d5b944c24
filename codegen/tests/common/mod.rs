//! Shared test helpers: random inputs, compile + run on the CPU, compare with `ir::interp`.
#![allow(dead_code)]

use codegen::cpu::{compile, CpuOptions};
use ir::{interp, BinaryOp, DType, Graph, KernelGraph, NodeId, Op, ReduceOp, Shape, UnaryOp};
use rand::{Rng, SeedableRng};
use runtime::{CpuExecutor, HostTensor};

/// Seeded random, never-zero values for a dtype. Floats in ±[lo, hi].
pub fn random(dtype: DType, shape: &[usize], seed: u64, positive: bool) -> interp::Value {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|_| match dtype {
            DType::Bool => rng.random_range(0..2) as f64,
            DType::I32 | DType::I64 => {
                let v = rng.random_range(1..=20) as f64;
                if positive || rng.random_bool(0.5) { v } else { -v }
            }
            _ => {
                let v: f64 = rng.random_range(0.1..2.0);
                if positive || rng.random_bool(0.5) { v } else { -v }
            }
        })
        .collect();
    interp::Value::new(dtype, shape.to_vec(), data).unwrap()
}

pub fn inputs_for(g: &Graph, seed: u64, positive: bool) -> Vec<interp::Value> {
    g.inputs()
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let n = g.node(id);
            random(n.dtype, n.shape.dims(), seed + i as u64, positive)
        })
        .collect()
}

/// Runs a kernel graph through the CPU backend and checks every output against the
/// interpreter on the original graph.
pub fn check_kg(kg: &KernelGraph, g: &Graph, inputs: &[interp::Value]) {
    let art = compile(kg, &CpuOptions::default()).unwrap_or_else(|e| panic!("compile {}: {e}", g.name()));
    let mut ex = CpuExecutor::new(&art).unwrap();
    let ins: Vec<HostTensor> = inputs.iter().map(HostTensor::from_value).collect();
    let got = ex.run(&ins).unwrap();
    let want = interp::run(g, inputs).unwrap();
    assert_eq!(got.len(), want.len());
    for (j, (a, b)) in got.iter().zip(&want).enumerate() {
        let a = a.to_value();
        let d = a.max_rel_diff(b);
        let tol = b.dtype.tolerance().max(1e-6) * if b.dtype == DType::F32 { 1.0 } else { 1.0 };
        if d > tol {
            let bad = a.data.iter().zip(&b.data).position(|(x, y)| (x - y).abs() / y.abs().max(1.0) > tol || x.is_nan() != y.is_nan());
            panic!(
                "graph {} output {j} ({}{}): max rel diff {d} > {tol}; first bad at {:?}: got {:?} want {:?}\n{}",
                g.name(),
                b.dtype,
                b.shape,
                bad,
                bad.map(|i| a.data[i]),
                bad.map(|i| b.data[i]),
                codegen::cpu::kernel_ir(kg).unwrap_or_default()
            );
        }
    }
}

/// one_per_op and the whole graph as one kernel (when it is a valid single kernel).
pub fn check(g: &Graph, seed: u64, positive: bool) {
    ir::verify::verify(g).unwrap();
    let inputs = inputs_for(g, seed, positive);
    check_kg(&KernelGraph::one_per_op(g), g, &inputs);
}

/// The whole graph as a single kernel body.
pub fn fused(g: &Graph) -> KernelGraph {
    let mut kg = KernelGraph { name: g.name().to_string(), ..Default::default() };
    let mut ins = Vec::new();
    for &i in g.inputs() {
        let n = g.node(i);
        let b = kg.add_buffer(n.dtype, n.shape.clone());
        kg.inputs.push(b);
        kg.input_names.push(g.input_name(i).unwrap().to_string());
        ins.push(b);
    }
    let outs: Vec<_> = g.outputs().iter().map(|&o| kg.add_buffer(g.node(o).dtype, g.node(o).shape.clone())).collect();
    let body = g.without_dead_code();
    kg.kernels.push(ir::Kernel { name: "fused".into(), kind: ir::KernelKind::classify(&body), body, inputs: ins, outputs: outs.clone() });
    kg.outputs = outs;
    kg.verify().unwrap();
    kg
}

pub fn check_fused(g: &Graph, seed: u64, positive: bool) {
    ir::verify::verify(g).unwrap();
    let inputs = inputs_for(g, seed, positive);
    check_kg(&fused(g), g, &inputs);
}

fn bin(g: &mut Graph, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
    g.add(Op::Binary(op), &[a, b]).unwrap()
}

/// `softmax(x)` over `axis` as the frontend decomposes it.
pub fn softmax(g: &mut Graph, x: NodeId, axis: usize) -> NodeId {
    let m = g.add(Op::Reduce { op: ReduceOp::Max, axes: vec![axis], keepdim: true }, &[x]).unwrap();
    let d = bin(g, BinaryOp::Sub, x, m);
    let e = g.add(Op::Unary(UnaryOp::Exp), &[d]).unwrap();
    let s = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![axis], keepdim: true }, &[e]).unwrap();
    bin(g, BinaryOp::Div, e, s)
}

/// `layer_norm(x) * w + b` over the last axis as the frontend decomposes it.
pub fn layer_norm(g: &mut Graph, x: NodeId, w: NodeId, b: NodeId) -> NodeId {
    let r = g.node(x).shape.rank();
    let n = g.node(x).shape.dims()[r - 1] as f64;
    let dt = g.node(x).dtype;
    let inv_n = g.full(1.0 / n, dt, Shape::scalar());
    let s = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![r - 1], keepdim: true }, &[x]).unwrap();
    let mean = bin(g, BinaryOp::Mul, s, inv_n);
    let xc = bin(g, BinaryOp::Sub, x, mean);
    let sq = bin(g, BinaryOp::Mul, xc, xc);
    let vs = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![r - 1], keepdim: true }, &[sq]).unwrap();
    let var = bin(g, BinaryOp::Mul, vs, inv_n);
    let eps = g.full(1e-5, dt, Shape::scalar());
    let ve = bin(g, BinaryOp::Add, var, eps);
    let rs = g.add(Op::Unary(UnaryOp::Rsqrt), &[ve]).unwrap();
    let y = bin(g, BinaryOp::Mul, xc, rs);
    let y = bin(g, BinaryOp::Mul, y, w);
    bin(g, BinaryOp::Add, y, b)
}

