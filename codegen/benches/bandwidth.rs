//! Bandwidth of fused CPU kernels against this machine's memcpy, and compile time.
//!
//! `cargo bench -p kiln-codegen --bench bandwidth` (release). Prints, for [4096, 4096] f32:
//! memcpy (1 thread and all threads), the fused elementwise kernel `sigmoid(x*a+b)*x`, the
//! row softmax (fused, and one kernel per op), each as GB/s of compulsory traffic (bytes read
//! + bytes written), and the compile time of an ~80-kernel graph.

use codegen::cpu::{compile, CpuOptions};
use ir::{BinaryOp, DType, Graph, KernelGraph, NodeId, Op, ReduceOp, Shape, UnaryOp};
use runtime::{CpuExecutor, HostTensor};
use std::time::Instant;

const N: usize = 4096;

fn rows() -> usize {
    std::env::var("KILN_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(N)
}

fn best<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn memcpy_gbs(threads: usize) -> f64 {
    let n = N * N * 4;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let t = best(10, || {
        std::thread::scope(|s| {
            let chunk = n.div_ceil(threads);
            for (d, c) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        })
    });
    2.0 * n as f64 / t / 1e9
}

fn single_kernel(g: &Graph) -> KernelGraph {
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
    kg.kernels.push(ir::Kernel { name: "fused".into(), kind: ir::KernelKind::classify(g), body: g.clone(), inputs: ins, outputs: outs.clone() });
    kg.outputs = outs;
    kg
}

fn run_gbs(kg: &KernelGraph, bytes: f64) -> (f64, f64) {
    let t0 = Instant::now();
    let art = compile(kg, &CpuOptions::default()).unwrap();
    let ct = t0.elapsed().as_secs_f64();
    let ex = CpuExecutor::new(&art).unwrap();
    let ins: Vec<HostTensor> = (0..art.inputs.len())
        .map(|i| {
            let (d, s) = art.input_type(i);
            let n = s.numel();
            HostTensor::from_f32(s, &(0..n).map(|j| ((j * 7919) % 1000) as f32 / 1000.0 + 0.1).collect::<Vec<_>>()).map(|t| { assert_eq!(d, DType::F32); t }).unwrap()
        })
        .collect();
    let mut outs: Vec<HostTensor> = (0..art.outputs.len()).map(|i| { let (d, s) = art.output_type(i); HostTensor::zeros(d, s) }).collect();
    let t = best(10, || {
        let r: Vec<_> = ins.iter().map(|t| t.as_ref()).collect();
        let mut o: Vec<_> = outs.iter_mut().map(|t| t.as_mut()).collect();
        ex.run_into(&r, &mut o).unwrap();
    });
    (bytes / t / 1e9, ct)
}

fn bin(g: &mut Graph, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
    g.add(Op::Binary(op), &[a, b]).unwrap()
}

fn main() {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let m1 = memcpy_gbs(1);
    let mt = memcpy_gbs(threads);
    let mref = m1.max(mt);
    println!("memcpy [4096x4096 f32 = 64 MiB]: 1 thread {m1:.1} GB/s, {threads} threads {mt:.1} GB/s (read+write bytes)");
    let bytes = 2.0 * (rows() * N * 4) as f64;

    // sigmoid(x * a + b) * x
    let mut g = Graph::new("ew_sigmoid");
    let x = g.input("x", DType::F32, [rows(), N]).unwrap();
    let a = g.input("a", DType::F32, [N]).unwrap();
    let b = g.input("b", DType::F32, [N]).unwrap();
    let t = bin(&mut g, BinaryOp::Mul, x, a);
    let t = bin(&mut g, BinaryOp::Add, t, b);
    let n = g.add(Op::Unary(UnaryOp::Neg), &[t]).unwrap();
    let e = g.add(Op::Unary(UnaryOp::Exp), &[n]).unwrap();
    let one = g.full(1.0, DType::F32, Shape::scalar());
    let d = bin(&mut g, BinaryOp::Add, e, one);
    let s = g.add(Op::Unary(UnaryOp::Recip), &[d]).unwrap();
    let y = bin(&mut g, BinaryOp::Mul, s, x);
    g.set_outputs(vec![y]);
    let (gbs, _) = run_gbs(&single_kernel(&g), bytes);
    println!("fused sigmoid(x*a+b)*x: {gbs:.1} GB/s = {:.0}% of memcpy", 100.0 * gbs / mref);
    let mut eager = KernelGraph::one_per_op(&g);
    eager.name.push_str("_per_op");
    let (gbs1, _) = run_gbs(&eager, bytes);
    println!("  same, one kernel per op: {gbs1:.1} GB/s-equivalent ({:.1}x slower)", gbs / gbs1);

    // softmax over rows
    let mut g = Graph::new("softmax");
    let x = g.input("x", DType::F32, [rows(), N]).unwrap();
    let m = g.add(Op::Reduce { op: ReduceOp::Max, axes: vec![1], keepdim: true }, &[x]).unwrap();
    let dd = bin(&mut g, BinaryOp::Sub, x, m);
    let e = g.add(Op::Unary(UnaryOp::Exp), &[dd]).unwrap();
    let s = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: true }, &[e]).unwrap();
    let y = bin(&mut g, BinaryOp::Div, e, s);
    g.set_outputs(vec![y]);
    let (gbs, _) = run_gbs(&single_kernel(&g), bytes);
    println!("fused softmax: {gbs:.1} GB/s = {:.0}% of memcpy", 100.0 * gbs / mref);
    let mut eager = KernelGraph::one_per_op(&g);
    eager.name.push_str("_per_op");
    let (gbs1, _) = run_gbs(&eager, bytes);
    println!("  same, one kernel per op: {gbs1:.1} GB/s-equivalent ({:.1}x slower)", gbs / gbs1);

    // Compile time of ~80 kernels (a chain of mixed ops, one kernel per op).
    let mut g = Graph::new("chain80");
    let mut v = g.input("x", DType::F32, [64, 768]).unwrap();
    let w = g.input("w", DType::F32, [768]).unwrap();
    let ops = [UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Neg, UnaryOp::Erf];
    for i in 0..80 {
        v = if i % 2 == 0 { g.add(Op::Unary(ops[(i / 2) % 4]), &[v]).unwrap() } else { bin(&mut g, BinaryOp::Add, v, w) };
    }
    g.set_outputs(vec![v]);
    let kg = KernelGraph::one_per_op(&g);
    let t0 = Instant::now();
    let art = compile(&kg, &CpuOptions::default()).unwrap();
    println!("compile {} kernels (repeating, deduplicated): {:.0} ms ({})", kg.kernels.len(), t0.elapsed().as_secs_f64() * 1e3, art.summary());
    // All distinct: every step adds its own constant.
    let mut g = Graph::new("distinct80");
    let mut v = g.input("x", DType::F32, [64, 768]).unwrap();
    for i in 0..80 {
        v = if i % 2 == 0 {
            g.add(Op::Unary(ops[(i / 2) % 4]), &[v]).unwrap()
        } else {
            let c = g.full(i as f64 * 0.01, DType::F32, Shape::scalar());
            bin(&mut g, BinaryOp::Add, v, c)
        };
    }
    g.set_outputs(vec![v]);
    let kg = KernelGraph::one_per_op(&g);
    let t0 = Instant::now();
    let art = compile(&kg, &CpuOptions::default()).unwrap();
    println!("compile {} distinct kernels: {:.0} ms ({})", kg.kernels.len(), t0.elapsed().as_secs_f64() * 1e3, art.summary());
}
