//! A small program for leak checkers: compiles one graph on the CPU and runs it N times
//! (default 1000). `valgrind --leak-check=full target/release/examples/leak_check 1000`;
//! the result is recorded in docs/reliability.md.

use ir::{BinaryOp, DType, Graph, Op, ReduceOp, UnaryOp};
use kiln::HostTensor;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mut g = Graph::new("leak_check");
    let x = g.input("x", DType::F32, [33, 13]).unwrap();
    let w = g.input("w", DType::F32, [13, 7]).unwrap();
    let m = g.add(Op::MatMul, &[x, w]).unwrap();
    let t = g.add(Op::Unary(UnaryOp::Tanh), &[m]).unwrap();
    let s = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: true }, &[t]).unwrap();
    let y = g.add(Op::Binary(BinaryOp::Div), &[t, s]).unwrap();
    g.set_outputs(vec![y, m]);
    let c = kiln::compile(&g, &kiln_tests::cpu_config()).expect("compile");
    let ins = kiln_tests::diff::random_inputs(&g, 1);
    let host: Vec<HostTensor> = ins.iter().map(HostTensor::from_value).collect();
    let want = ir::interp::run(&g, &ins).unwrap();
    let mut last = Vec::new();
    for _ in 0..n {
        last = c.run(&host).expect("run");
    }
    let got: Vec<_> = last.iter().map(HostTensor::to_value).collect();
    let v = kiln_tests::diff::compare(&g, &got, &want);
    println!("leak_check: {n} runs of @{}: {v}", g.name());
    assert!(v.is_pass());
}
