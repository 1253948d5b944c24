//! The text format prints and parses back exactly, for every op.

use ir::{text, BinaryOp, CmpOp, DType, FusedBody, Graph, Op, ReduceOp, Scalar, Shape, UnaryOp};
use std::sync::Arc;

fn roundtrip(g: &Graph) {
    ir::verify::verify(g).unwrap();
    let s = g.to_string();
    let back = text::parse(&s).unwrap_or_else(|e| panic!("{e}\n{s}"));
    assert_eq!(&back, g, "parse(print(g)) != g for\n{s}");
    assert_eq!(back.to_string(), s);
}

/// A graph that uses every op at least once.
pub fn every_op() -> Graph {
    let mut g = Graph::new("every_op");
    let x = g.input("x", DType::F32, [3, 4]).unwrap();
    let y = g.input("weird name \"y\"\n", DType::F32, [4]).unwrap();
    let b = g.input("b", DType::Bool, [3, 4]).unwrap();
    let i = g.input("i", DType::I64, [3, 4]).unwrap();
    let mut last = x;
    for u in UnaryOp::ALL {
        if *u == UnaryOp::Not {
            g.add(Op::Unary(*u), &[b]).unwrap();
        } else {
            last = g.add(Op::Unary(*u), &[last]).unwrap();
        }
    }
    for op in BinaryOp::ALL {
        if matches!(op, BinaryOp::And | BinaryOp::Or) {
            g.add(Op::Binary(*op), &[b, b]).unwrap();
        } else {
            last = g.add(Op::Binary(*op), &[last, y]).unwrap();
        }
    }
    let mut cmp = b;
    for c in CmpOp::ALL {
        cmp = g.add(Op::Compare(*c), &[x, y]).unwrap();
    }
    let w = g.add(Op::Where, &[cmp, x, last]).unwrap();
    for d in DType::ALL {
        g.add(Op::Cast { to: d }, &[w]).unwrap();
    }
    g.add(Op::Cast { to: DType::F16 }, &[i]).unwrap();
    let s = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: true }, &[w]).unwrap();
    let m = g.add(Op::Reduce { op: ReduceOp::Max, axes: vec![0, 1], keepdim: false }, &[w]).unwrap();
    let full = g.full(-0.5, DType::F32, []);
    let ninf = g.full(f64::NEG_INFINITY, DType::F32, [1]);
    let nan = g.full(f64::NAN, DType::F32, [1]);
    let tiny = g.full(1e-300, DType::F32, [1]);
    g.add(Op::Binary(BinaryOp::Add), &[m, full]).unwrap();
    g.add(Op::Binary(BinaryOp::Add), &[ninf, nan]).unwrap();
    g.add(Op::Binary(BinaryOp::Add), &[tiny, nan]).unwrap();
    let io = g.iota(1, DType::I32, [2, 5]).unwrap();
    let r = g.add(Op::Reshape { shape: Shape::from([2, 6]) }, &[w]).unwrap();
    let p = g.add(Op::Permute { perm: vec![1, 0] }, &[r]).unwrap();
    let e = g.add(Op::Expand { shape: Shape::from([7, 3, 4]) }, &[s]).unwrap();
    let sl = g.add(Op::Slice { axis: 0, start: 1, end: 6, step: 2 }, &[p]).unwrap();
    let c = g.add(Op::Concat { axis: 1 }, &[w, x, w]).unwrap();
    let pd = g.add(Op::Pad { pads: vec![(1, 0), (2, 3)], value: Scalar(f64::NEG_INFINITY) }, &[c]).unwrap();
    let a = g.input("a", DType::BF16, [2, 1, 5, 8]).unwrap();
    let bm = g.input("bm", DType::BF16, [3, 8, 6]).unwrap();
    let mm = g.add(Op::MatMul, &[a, bm]).unwrap();
    let q = g.input("q", DType::F16, [2, 3, 9, 16]).unwrap();
    let k = g.input("k", DType::F16, [2, 3, 11, 16]).unwrap();
    let v = g.input("v", DType::F16, [2, 3, 11, 8]).unwrap();
    let fa = g.add(Op::FlashAttention { causal: true, scale: Scalar(0.25) }, &[q, k, v]).unwrap();
    let mut body = Graph::new("body");
    let bx = body.input("x", DType::F32, [3, 4]).unwrap();
    let by = body.input("y", DType::F32, [3, 1]).unwrap();
    let bz = body.add(Op::Binary(BinaryOp::Sub), &[bx, by]).unwrap();
    let bz = body.add(Op::Unary(UnaryOp::Exp), &[bz]).unwrap();
    body.set_outputs(vec![bz]);
    let fu = g.add(Op::Fused(FusedBody(Arc::new(body))), &[w, s]).unwrap();
    g.set_outputs(vec![io, e, sl, pd, mm, fa, fu, last]);
    g
}

#[test]
fn every_op_round_trips() {
    let g = every_op();
    roundtrip(&g);
    // Every op name appears in the printed text.
    let s = g.to_string();
    for name in ["input", "full", "iota", "where", "cast", "sum", "max_reduce", "reshape", "permute", "expand", "slice", "concat", "pad", "matmul", "flash_attention", "fused"] {
        assert!(s.contains(&format!(" {name}")), "{name} missing");
    }
    for u in UnaryOp::ALL {
        assert!(s.contains(&format!("= {}(", u.name())));
    }
}

#[test]
fn every_dtype_round_trips() {
    for d in DType::ALL {
        let mut g = Graph::new("d");
        let x = g.input("x", d, [2, 0, 3]).unwrap();
        let s = g.input("s", d, []).unwrap();
        g.set_outputs(vec![x, s]);
        roundtrip(&g);
    }
}

#[test]
fn golden_text_is_stable() {
    let mut g = Graph::new("mlp");
    let x = g.input("x", DType::F32, [8, 16]).unwrap();
    let w = g.input("w", DType::F32, [16, 32]).unwrap();
    let mm = g.add(Op::MatMul, &[x, w]).unwrap();
    let h = g.full(0.5, DType::F32, []);
    let y = g.add(Op::Binary(BinaryOp::Mul), &[mm, h]).unwrap();
    let s = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: true }, &[y]).unwrap();
    g.set_outputs(vec![y, s]);
    let want = r#"graph @mlp {
  %0 = input {name="x"} : f32[8,16]
  %1 = input {name="w"} : f32[16,32]
  %2 = matmul(%0, %1) : f32[8,32]
  %3 = full {value=0.5} : f32[]
  %4 = mul(%2, %3) : f32[8,32]
  %5 = sum(%4) {axes=[1], keepdim=true} : f32[8,1]
  return %4, %5
}
"#;
    assert_eq!(g.to_string(), want);
    roundtrip(&g);
}

#[test]
fn parser_accepts_sparse_ids_comments_and_renumbers() {
    let src = r#"
// a comment
graph @"my graph" {
  %x = input {name="x"} : f32[2,3]    // trailing comment
  %10 = exp(%x) : f32[2,3]
  %7 = neg(%10) : f32[2,3]
  return %7, %x
}"#;
    let g = text::parse(src).unwrap();
    assert_eq!(g.name(), "my graph");
    assert_eq!(g.len(), 3);
    assert!(g.to_string().contains("%2 = neg(%1) : f32[2,3]"));
    roundtrip(&g);
}
