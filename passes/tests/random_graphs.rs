//! Differential testing (NNSmith-style): random well-typed graphs of elementwise ops,
//! reductions, matmuls and movement go through the whole optimizer; the kernel graph must
//! verify and compute what the reference interpreter computes on the input graph.

mod common;

use ir::{BinaryOp, DType, Graph, NodeId, Op, ReduceOp, Shape, UnaryOp};
use rand::{Rng, SeedableRng};

fn random_graph(seed: u64) -> Graph {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut g = Graph::new(format!("random{seed}"));
    let mut nodes: Vec<NodeId> = Vec::new();
    let dims = [3usize, 5, 7];
    for i in 0..3 {
        let (a, b) = (dims[rng.random_range(0..3)], dims[rng.random_range(0..3)]);
        nodes.push(g.input(format!("x{i}"), DType::F32, [a, b]).unwrap());
    }
    for _ in 0..rng.random_range(6..18) {
        let x = nodes[rng.random_range(0..nodes.len())];
        let sx = g.node(x).shape.clone();
        let op = match rng.random_range(0..12) {
            9 => {
                // A round trip through bf16 (the casts around bf16 models' f32 islands).
                let c = g.add(Op::Cast { to: DType::BF16 }, &[x]).unwrap();
                Some((Op::Cast { to: DType::F32 }, vec![c]))
            }
            10 => {
                let zero = g.full(0.0, DType::F32, []);
                let c = g.add(Op::Compare(ir::CmpOp::Gt), &[x, zero]).unwrap();
                let y = nodes[rng.random_range(0..nodes.len())];
                Some((Op::Where, vec![c, x, y]))
            }
            11 if sx.dims()[0] > 1 => Some((Op::Slice { axis: 0, start: 1, end: sx.dims()[0], step: 1 }, vec![x])),
            0 => Some((Op::Unary([UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Neg, UnaryOp::Abs][rng.random_range(0..4)]), vec![x])),
            1 | 2 => {
                // A partner of a broadcast-compatible shape.
                let partners: Vec<NodeId> = nodes.iter().copied().filter(|&y| Shape::broadcast("t", &sx, &g.node(y).shape).is_ok()).collect();
                let y = partners[rng.random_range(0..partners.len())];
                let b = [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Sub, BinaryOp::Max][rng.random_range(0..4)];
                Some((Op::Binary(b), vec![x, y]))
            }
            3 if sx.rank() >= 1 => {
                let op = if rng.random_bool(0.5) { ReduceOp::Sum } else { ReduceOp::Max };
                Some((Op::Reduce { op, axes: vec![sx.rank() - 1], keepdim: true }, vec![x]))
            }
            4 if sx.rank() == 2 => Some((Op::Permute { perm: vec![1, 0] }, vec![x])),
            5 => Some((Op::Reshape { shape: Shape::new([sx.numel()]) }, vec![x])).filter(|_| sx.rank() == 2 && rng.random_bool(0.3)),
            6 if sx.rank() == 2 => {
                let ws: Vec<NodeId> = nodes.iter().copied().filter(|&y| g.node(y).shape.rank() == 2 && g.node(y).shape.dims()[0] == sx.dims()[1]).collect();
                if ws.is_empty() { None } else { Some((Op::MatMul, vec![x, ws[rng.random_range(0..ws.len())]])) }
            }
            7 => {
                let c = g.full(rng.random_range(0.5..2.0), DType::F32, []);
                Some((Op::Binary(BinaryOp::Mul), vec![x, c]))
            }
            _ if sx.rank() == 2 && sx.dims()[1] == 1 => Some((Op::Expand { shape: Shape::new([sx.dims()[0], 5]) }, vec![x])),
            _ => None,
        };
        if let Some((op, ins)) = op {
            if let Ok(n) = g.add(op, &ins) {
                nodes.push(n);
            }
        }
    }
    let k = rng.random_range(1..4).min(nodes.len() - 3);
    let outs: Vec<NodeId> = nodes[nodes.len() - k..].to_vec();
    g.set_outputs(outs);
    g
}

#[test]
fn random_graphs_optimize_to_equivalent_kernels() {
    let mut stats = (0, 0, 0);
    for seed in 0..300 {
        let g = random_graph(seed);
        let opt = passes::optimize(&g, &passes::DeviceProfile::h200()).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{g}"));
        opt.kernels.verify().unwrap_or_else(|e| panic!("seed {seed}: {e}\n{g}"));
        common::assert_kernels_agree(&format!("seed {seed}\n{g}"), &g, &opt.kernels, seed);
        stats.0 += g.len();
        stats.1 += opt.kernels.kernels.len();
        stats.2 += g.nodes().filter(|(_, n)| matches!(n.op, Op::MatMul | Op::Reduce { .. })).count();
        assert!(opt.kernels.kernels.len() <= ir::KernelGraph::one_per_op(&g).kernels.len().max(1), "seed {seed}: more kernels than ops");
    }
    println!("{} nodes, {} matmuls/reductions -> {} kernels", stats.0, stats.2, stats.1);
    assert!(stats.2 > 300, "the generator should produce matmuls and reductions");
}
