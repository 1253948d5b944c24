//! The reference interpreter against hand-computed values.

use ir::{interp::{run, Value}, BinaryOp, CmpOp, DType, Graph, Op, ReduceOp, Scalar, Shape, UnaryOp};

fn v(dtype: DType, shape: impl Into<Shape>, data: &[f64]) -> Value {
    Value::new(dtype, shape, data.to_vec()).unwrap()
}

fn run1(g: &mut Graph, out: ir::NodeId, ins: &[Value]) -> Value {
    g.set_outputs(vec![out]);
    ir::verify::verify(g).unwrap();
    run(g, ins).unwrap().remove(0)
}

#[test]
fn elementwise_broadcast_and_compare() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, [2, 3]).unwrap();
    let y = g.input("y", DType::F32, [2, 1]).unwrap();
    let ins = [v(DType::F32, [2, 3], &[1., 2., 3., 4., 5., 6.]), v(DType::F32, [2, 1], &[10., -1.])];
    let s = g.add(Op::Binary(BinaryOp::Sub), &[x, y]).unwrap();
    assert_eq!(run1(&mut g, s, &ins).data, vec![-9., -8., -7., 5., 6., 7.]);
    let c = g.add(Op::Compare(CmpOp::Gt), &[x, y]).unwrap();
    let out = run1(&mut g, c, &ins);
    assert_eq!((out.dtype, out.data), (DType::Bool, vec![0., 0., 0., 1., 1., 1.]));
    let w = g.add(Op::Where, &[c, x, y]).unwrap();
    assert_eq!(run1(&mut g, w, &ins).data, vec![10., 10., 10., 4., 5., 6.]);
    let mx = g.add(Op::Binary(BinaryOp::Max), &[x, y]).unwrap();
    assert_eq!(run1(&mut g, mx, &ins).data, vec![10., 10., 10., 4., 5., 6.]);
    let e = g.add(Op::Unary(UnaryOp::Erf), &[x]).unwrap();
    assert!((run1(&mut g, e, &ins).data[0] - 0.8427007929497149).abs() < 1e-12);
    let r = g.add(Op::Unary(UnaryOp::Rsqrt), &[x]).unwrap();
    assert_eq!(run1(&mut g, r, &ins).data[3], 0.5);
}

#[test]
fn integer_and_cast_semantics() {
    let mut g = Graph::new("t");
    let a = g.input("a", DType::I32, [4]).unwrap();
    let b = g.input("b", DType::I32, [4]).unwrap();
    let ins = [v(DType::I32, [4], &[7., -7., 9., 1.]), v(DType::I32, [4], &[2., 2., -4., 3.])];
    let d = g.add(Op::Binary(BinaryOp::Div), &[a, b]).unwrap();
    assert_eq!(run1(&mut g, d, &ins).data, vec![3., -3., -2., 0.]);
    let f = g.add(Op::Cast { to: DType::F32 }, &[a]).unwrap();
    let h = g.full(0.5, DType::F32, []);
    let m = g.add(Op::Binary(BinaryOp::Mul), &[f, h]).unwrap();
    let back = g.add(Op::Cast { to: DType::I64 }, &[m]).unwrap();
    assert_eq!(run1(&mut g, back, &ins).data, vec![3., -3., 4., 0.]);
    let bf = g.add(Op::Cast { to: DType::BF16 }, &[m]).unwrap();
    let out = run1(&mut g, bf, &ins);
    assert_eq!(out.dtype, DType::BF16);
    let tob = g.add(Op::Cast { to: DType::Bool }, &[a]).unwrap();
    assert_eq!(run1(&mut g, tob, &ins).data, vec![1., 1., 1., 1.]);
    // Inputs are rounded to their dtype on entry: 1/3 in bf16.
    let mut g2 = Graph::new("q");
    let x = g2.input("x", DType::BF16, [1]).unwrap();
    g2.set_outputs(vec![x]);
    let out = run(&g2, &[Value { dtype: DType::BF16, shape: Shape::from([1]), data: vec![1.0 / 3.0] }]).unwrap();
    assert_eq!(out[0].data[0], 0.333984375);
}

#[test]
fn reductions_and_movement() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, [2, 3]).unwrap();
    let ins = [v(DType::F32, [2, 3], &[1., 5., 3., -4., 2., 0.])];
    let s0 = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![0], keepdim: false }, &[x]).unwrap();
    assert_eq!(run1(&mut g, s0, &ins).data, vec![-3., 7., 3.]);
    let m1 = g.add(Op::Reduce { op: ReduceOp::Max, axes: vec![1], keepdim: true }, &[x]).unwrap();
    let out = run1(&mut g, m1, &ins);
    assert_eq!((out.shape, out.data), (Shape::from([2, 1]), vec![5., 2.]));
    let all = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![0, 1], keepdim: false }, &[x]).unwrap();
    assert_eq!(run1(&mut g, all, &ins).data, vec![7.]);
    let p = g.add(Op::Permute { perm: vec![1, 0] }, &[x]).unwrap();
    assert_eq!(run1(&mut g, p, &ins).data, vec![1., -4., 5., 2., 3., 0.]);
    let sl = g.add(Op::Slice { axis: 1, start: 0, end: 3, step: 2 }, &[x]).unwrap();
    assert_eq!(run1(&mut g, sl, &ins).data, vec![1., 3., -4., 0.]);
    let c = g.add(Op::Concat { axis: 0 }, &[x, sl]).unwrap_err();
    assert!(c.to_string().contains("concat"));
    let c = g.add(Op::Concat { axis: 1 }, &[x, sl]).unwrap();
    assert_eq!(run1(&mut g, c, &ins).data, vec![1., 5., 3., 1., 3., -4., 2., 0., -4., 0.]);
    let pd = g.add(Op::Pad { pads: vec![(0, 1), (1, 0)], value: Scalar(9.) }, &[x]).unwrap();
    assert_eq!(run1(&mut g, pd, &ins).data, vec![9., 1., 5., 3., 9., -4., 2., 0., 9., 9., 9., 9.]);
    let col = g.add(Op::Slice { axis: 1, start: 1, end: 2, step: 1 }, &[x]).unwrap();
    let e = g.add(Op::Expand { shape: Shape::from([2, 2, 2]) }, &[col]).unwrap();
    assert_eq!(run1(&mut g, e, &ins).data, vec![5., 5., 2., 2., 5., 5., 2., 2.]);
    let io = g.iota(1, DType::I64, [2, 3]).unwrap();
    assert_eq!(run1(&mut g, io, &ins).data, vec![0., 1., 2., 0., 1., 2.]);
}

#[test]
fn matmul_broadcasts_batches() {
    let mut g = Graph::new("t");
    let a = g.input("a", DType::F32, [2, 1, 2, 2]).unwrap();
    let b = g.input("b", DType::F32, [3, 2, 1]).unwrap();
    let m = g.add(Op::MatMul, &[a, b]).unwrap();
    assert_eq!(g.node(m).shape, Shape::from([2, 3, 2, 1]));
    let ins = [v(DType::F32, [2, 1, 2, 2], &[1., 2., 3., 4., 0., 1., 1., 0.]), v(DType::F32, [3, 2, 1], &[1., 1., 1., 0., 0., 1.])];
    let out = run1(&mut g, m, &ins);
    assert_eq!(out.data, vec![3., 7., 1., 3., 2., 4., 1., 1., 0., 1., 1., 0.]);
}

/// Flash attention equals the written-out composite, causal and not, with s_q != s_k.
#[test]
fn flash_attention_matches_composite() {
    for causal in [false, true] {
        let (b, sq, sk, d, dv) = (2, 3, 5, 4, 3);
        let mut g = Graph::new("attn");
        let q = g.input("q", DType::F32, [b, sq, d]).unwrap();
        let k = g.input("k", DType::F32, [b, sk, d]).unwrap();
        let vv = g.input("v", DType::F32, [b, sk, dv]).unwrap();
        let fa = g.add(Op::FlashAttention { causal, scale: Scalar(0.5) }, &[q, k, vv]).unwrap();
        let kt = g.add(Op::Permute { perm: vec![0, 2, 1] }, &[k]).unwrap();
        let s = g.add(Op::MatMul, &[q, kt]).unwrap();
        let half = g.full(0.5, DType::F32, []);
        let mut s = g.add(Op::Binary(BinaryOp::Mul), &[s, half]).unwrap();
        if causal {
            let i = g.iota(0, DType::I32, [sq, sk]).unwrap();
            let j = g.iota(1, DType::I32, [sq, sk]).unwrap();
            let off = g.full((sk - sq) as f64, DType::I32, []);
            let lim = g.add(Op::Binary(BinaryOp::Add), &[i, off]).unwrap();
            let keep = g.add(Op::Compare(CmpOp::Le), &[j, lim]).unwrap();
            let ninf = g.full(f64::NEG_INFINITY, DType::F32, []);
            s = g.add(Op::Where, &[keep, s, ninf]).unwrap();
        }
        let mx = g.add(Op::Reduce { op: ReduceOp::Max, axes: vec![2], keepdim: true }, &[s]).unwrap();
        let sh = g.add(Op::Binary(BinaryOp::Sub), &[s, mx]).unwrap();
        let e = g.add(Op::Unary(UnaryOp::Exp), &[sh]).unwrap();
        let den = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![2], keepdim: true }, &[e]).unwrap();
        let p = g.add(Op::Binary(BinaryOp::Div), &[e, den]).unwrap();
        let o = g.add(Op::MatMul, &[p, vv]).unwrap();
        g.set_outputs(vec![fa, o]);
        ir::verify::verify(&g).unwrap();
        let mut r = rand_values(7);
        let ins = [r(&[b, sq, d]), r(&[b, sk, d]), r(&[b, sk, dv])];
        let out = run(&g, &ins).unwrap();
        assert!(out[0].max_rel_diff(&out[1]) < 1e-12, "causal={causal}");
    }
}

fn rand_values(seed: u64) -> impl FnMut(&[usize]) -> Value {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    move |s: &[usize]| {
        let shape = Shape::from(s);
        let data = (0..shape.numel()).map(|_| r.random_range(-1.0..1.0)).collect();
        Value::new(DType::F32, shape, data).unwrap()
    }
}

#[test]
fn bad_inputs_are_errors() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, [2]).unwrap();
    g.set_outputs(vec![x]);
    assert!(run(&g, &[]).unwrap_err().to_string().contains("takes 1 inputs, 0 given"));
    let e = run(&g, &[v(DType::F16, [2], &[1., 2.])]).unwrap_err();
    assert!(e.to_string().contains("expects f32[2], got f16[2]"), "{e}");
    assert!(Value::new(DType::F32, [3], vec![1.0]).is_err());
}

#[test]
fn dot_output_names_every_node() {
    let mut g = Graph::new("d");
    let x = g.input("x", DType::F32, [2]).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
    g.set_outputs(vec![y]);
    let d = g.to_dot();
    assert!(d.starts_with("digraph \"d\""));
    assert!(d.contains("n0 -> n1;") && d.contains("%1 exp") && d.contains("n1 -> out0;"));
    let kd = ir::KernelGraph::one_per_op(&g).to_dot();
    assert!(kd.contains("elementwise k0"), "{kd}");
}
