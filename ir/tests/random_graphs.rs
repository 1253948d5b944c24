//! Property: random valid graphs print, parse back identically, verify, and interpret.

mod common;
use ir::{interp, text, BinaryOp, CmpOp, DType, Graph, NodeId, Op, ReduceOp, Scalar, Shape, UnaryOp};
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Grows a graph by trying random ops on random existing nodes; invalid picks are skipped
/// (so the generator also exercises the error paths of inference).
pub fn random_graph(seed: u64, steps: usize) -> Graph {
    let mut r = StdRng::seed_from_u64(seed);
    let mut g = Graph::new(format!("rand{seed}"));
    let dims = [1usize, 2, 3, 5];
    let n_inputs = r.random_range(1..4);
    for i in 0..n_inputs {
        let rank = r.random_range(0..4);
        let shape: Vec<usize> = (0..rank).map(|_| dims[r.random_range(0..dims.len())]).collect();
        let dtype = [DType::F32, DType::F32, DType::F16, DType::BF16, DType::I32, DType::Bool][r.random_range(0..6)];
        g.input(format!("in{i}"), dtype, shape).unwrap();
    }
    for _ in 0..steps {
        let pick = |r: &mut StdRng, g: &Graph| NodeId::from_index(r.random_range(0..g.len()));
        let a = pick(&mut r, &g);
        let b = pick(&mut r, &g);
        let c = pick(&mut r, &g);
        let na = g.node(a).clone();
        let rank = na.shape.rank();
        let axis = if rank > 0 { r.random_range(0..rank) } else { 0 };
        let op = match r.random_range(0..16) {
            0 => Op::Unary(UnaryOp::ALL[r.random_range(0..UnaryOp::ALL.len())]),
            1 | 2 => Op::Binary(BinaryOp::ALL[r.random_range(0..BinaryOp::ALL.len())]),
            3 => Op::Compare(CmpOp::ALL[r.random_range(0..CmpOp::ALL.len())]),
            4 => Op::Where,
            5 => Op::Cast { to: DType::ALL[r.random_range(0..DType::ALL.len())] },
            6 => Op::Reduce { op: if r.random_bool(0.5) { ReduceOp::Sum } else { ReduceOp::Max }, axes: vec![axis], keepdim: r.random_bool(0.5) },
            7 => {
                let mut d = na.shape.dims().to_vec();
                d.reverse();
                Op::Reshape { shape: Shape::from(d) }
            }
            8 => {
                let mut p: Vec<usize> = (0..rank).collect();
                p.reverse();
                Op::Permute { perm: p }
            }
            9 => {
                let mut d = vec![2];
                d.extend(na.shape.dims().iter().map(|&x| if x == 1 { 3 } else { x }));
                Op::Expand { shape: Shape::from(d) }
            }
            10 => {
                let n = na.shape.dims().get(axis).copied().unwrap_or(1);
                Op::Slice { axis, start: n / 3, end: n, step: r.random_range(1..3) }
            }
            11 => Op::Concat { axis },
            12 => Op::Pad { pads: (0..rank).map(|_| (r.random_range(0..2), r.random_range(0..2))).collect(), value: Scalar(-1.5) },
            13 => Op::MatMul,
            14 => {
                let id = g.full(r.random_range(-3.0..3.0), na.dtype, na.shape.clone());
                let _ = id;
                continue;
            }
            _ => {
                if rank > 0 && na.dtype != DType::Bool {
                    let _ = g.iota(axis, na.dtype, na.shape.clone());
                }
                continue;
            }
        };
        let operands: Vec<NodeId> = match op.arity() {
            Some(1) => vec![a],
            Some(2) => vec![a, b],
            Some(3) => vec![a, b, c],
            _ => vec![a, a],
        };
        let _ = g.add(op, &operands); // invalid combinations are errors, never panics
    }
    let n = g.len();
    let outs: Vec<NodeId> = (n.saturating_sub(3)..n).map(NodeId::from_index).collect();
    g.set_outputs(outs);
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_graphs_print_parse_verify(seed in any::<u64>(), steps in 1usize..40) {
        let g = random_graph(seed, steps);
        ir::verify::verify(&g).unwrap();
        let s = g.to_string();
        let back = text::parse(&s).unwrap();
        prop_assert_eq!(&back, &g);
        prop_assert_eq!(back.to_string(), s);
        prop_assert_eq!(back.structural_hash(), g.structural_hash());
        // The interpreter runs every valid graph.
        let mut r = common::rng(seed);
        let ins: Vec<_> = g.inputs().iter().map(|&i| { let n = g.node(i); common::random_value(&mut r, n.dtype, n.shape.clone()) }).collect();
        let outs = interp::run(&g, &ins).unwrap();
        prop_assert_eq!(outs.len(), g.outputs().len());
        // Dead-code removal keeps the values.
        let dce = g.without_dead_code();
        ir::verify::verify(&dce).unwrap();
        for (a, b) in interp::run(&dce, &ins).unwrap().iter().zip(&outs) {
            prop_assert!(a.max_rel_diff(b) == 0.0);
        }
        // One kernel per op computes the same.
        let kg = ir::KernelGraph::one_per_op(&g);
        kg.verify().unwrap();
        let kouts = kg.interpret(&ins).unwrap();
        for (a, b) in kouts.iter().zip(&outs) {
            prop_assert!(a.max_rel_diff(b) == 0.0);
        }
    }

    #[test]
    fn parser_never_panics_on_mutated_text(seed in any::<u64>(), cut in 0usize..2000, junk in "[ -~]{0,8}") {
        let s = random_graph(seed, 12).to_string();
        let mut chars: Vec<char> = s.chars().collect();
        let at = cut.min(chars.len());
        chars.splice(at..(at + junk.len()).min(chars.len()), junk.chars());
        let mutated: String = chars.into_iter().collect();
        let _ = text::parse(&mutated);
        let _ = text::parse(&s[..cut.min(s.len())]);
    }

    #[test]
    fn parser_never_panics_on_garbage(src in "\\PC{0,200}") {
        let _ = text::parse(&src);
    }
}

/// The generator really produces varied graphs (not just inputs).
#[test]
fn generator_covers_many_ops() {
    let mut names = std::collections::BTreeSet::new();
    let mut total = 0;
    for seed in 0..200 {
        let g = random_graph(seed, 40);
        total += g.len();
        for (_, n) in g.nodes() {
            names.insert(n.op.name());
        }
    }
    assert!(total > 200 * 15, "only {total} nodes in 200 graphs");
    for want in ["matmul", "concat", "pad", "slice", "expand", "permute", "reshape", "where", "cast", "sum", "max_reduce", "iota", "full", "exp", "add", "lt"] {
        assert!(names.contains(want), "{want} never generated: {names:?}");
    }
}
