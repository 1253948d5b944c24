//! Bad input gives typed errors that say what was wrong, never a panic.

use ir::{text, BinaryOp, DType, Graph, IrError, Op, ReduceOp, Scalar, Shape, UnaryOp};

fn g2() -> (Graph, ir::NodeId, ir::NodeId) {
    let mut g = Graph::new("t");
    let a = g.input("a", DType::F32, [3, 4]).unwrap();
    let b = g.input("b", DType::F32, [5, 4]).unwrap();
    (g, a, b)
}

#[test]
fn shape_inference_errors() {
    let (mut g, a, b) = g2();
    let e = g.add(Op::Binary(BinaryOp::Add), &[a, b]).unwrap_err();
    assert!(matches!(e, IrError::ShapeMismatch { op: "add", .. }), "{e}");
    assert_eq!(e.to_string(), "add: shapes [3,4] and [5,4] do not match (or do not broadcast)");

    let e = g.add(Op::MatMul, &[a, b]).unwrap_err();
    assert!(matches!(e, IrError::ShapeMismatch { op: "matmul", .. }), "{e}");

    let i = g.input("i", DType::I32, [3, 4]).unwrap();
    let e = g.add(Op::Binary(BinaryOp::Mul), &[a, i]).unwrap_err();
    assert_eq!(e, IrError::DTypeMismatch { op: "mul", lhs: DType::F32, rhs: DType::I32 });
    let e = g.add(Op::Unary(UnaryOp::Exp), &[i]).unwrap_err();
    assert!(matches!(e, IrError::BadDType { op: "exp", dtype: DType::I32, .. }), "{e}");
    let e = g.add(Op::Unary(UnaryOp::Not), &[a]).unwrap_err();
    assert!(matches!(e, IrError::BadDType { op: "not", .. }));
    let e = g.add(Op::Where, &[a, a, a]).unwrap_err();
    assert!(e.to_string().contains("bool"), "{e}");

    let e = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![2], keepdim: false }, &[a]).unwrap_err();
    assert_eq!(e, IrError::BadAxis { axis: 2, rank: 2 });
    let e = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![1, 0], keepdim: false }, &[a]).unwrap_err();
    assert!(e.to_string().contains("sorted"), "{e}");
    let e = g.add(Op::Reshape { shape: Shape::from([5]) }, &[a]).unwrap_err();
    assert_eq!(e.to_string(), "reshape: cannot reshape [3,4] (12 elements) to [5] (5 elements)");
    let e = g.add(Op::Permute { perm: vec![0, 0] }, &[a]).unwrap_err();
    assert!(e.to_string().contains("not a permutation"), "{e}");
    let e = g.add(Op::Expand { shape: Shape::from([3, 5]) }, &[a]).unwrap_err();
    assert!(matches!(e, IrError::ShapeMismatch { op: "expand", .. }));
    let e = g.add(Op::Slice { axis: 1, start: 2, end: 9, step: 1 }, &[a]).unwrap_err();
    assert!(e.to_string().contains("not within 0..4"), "{e}");
    let e = g.add(Op::Slice { axis: 0, start: 0, end: 1, step: 0 }, &[a]).unwrap_err();
    assert!(matches!(e, IrError::Invalid { op: "slice", .. }));
    let e = g.add(Op::Concat { axis: 1 }, &[a, b]).unwrap_err();
    assert!(matches!(e, IrError::ShapeMismatch { op: "concat", .. }));
    let e = g.add(Op::Concat { axis: 0 }, &[]).unwrap_err();
    assert!(matches!(e, IrError::Invalid { op: "concat", .. }));
    let e = g.add(Op::Pad { pads: vec![(1, 1)], value: Scalar(0.0) }, &[a]).unwrap_err();
    assert!(e.to_string().contains("rank 2"), "{e}");
    let e = g.add(Op::Binary(BinaryOp::Add), &[a]).unwrap_err();
    assert_eq!(e, IrError::Arity { op: "add", expected: 2, got: 1 });
    let c = g.input("c", DType::F32, [3, 5]).unwrap();
    let e = g.add(Op::FlashAttention { causal: false, scale: Scalar(1.0) }, &[a, c, c]).unwrap_err();
    assert!(e.to_string().contains("flash_attention"), "{e}");
    let e = g.add(Op::Unary(UnaryOp::Exp), &[ir::NodeId::from_index(99)]).unwrap_err();
    assert_eq!(e.to_string(), "node %99 does not exist in this graph");
    let e = g.input("a", DType::F32, [1]).unwrap_err();
    assert_eq!(e, IrError::DuplicateInput("a".into()));
    let e = g.add(Op::Full { value: Scalar(1.0) }, &[]).unwrap_err();
    assert!(matches!(e, IrError::Invalid { op: "full", .. }));
    assert!(g.iota(2, DType::I32, [3, 4]).is_err());
    assert!(g.iota(0, DType::Bool, [3, 4]).is_err());
}

#[test]
fn broadcasting_follows_pytorch() {
    let s = |d: &[usize]| Shape::from(d);
    assert_eq!(Shape::broadcast("t", &s(&[3, 1, 5]), &s(&[4, 1])).unwrap(), s(&[3, 4, 5]));
    assert_eq!(Shape::broadcast("t", &s(&[]), &s(&[2, 3])).unwrap(), s(&[2, 3]));
    assert_eq!(Shape::broadcast("t", &s(&[0, 1]), &s(&[1, 7])).unwrap(), s(&[0, 7]));
    assert!(Shape::broadcast("t", &s(&[2, 3]), &s(&[3, 2])).is_err());
    assert_eq!(s(&[2, 3, 4]).axis(-1).unwrap(), 2);
    assert!(s(&[2, 3]).axis(-3).is_err());
    assert!(s(&[]).axis(0).is_err());
}

fn parse_err(src: &str) -> String {
    match text::parse(src) {
        Ok(g) => panic!("parsed:\n{g}"),
        Err(e) => {
            assert!(matches!(e, IrError::Parse { .. } | IrError::Verify { .. } | IrError::VerifyGraph(_) | IrError::DuplicateInput(_)), "{e:?}");
            e.to_string()
        }
    }
}

#[test]
fn malformed_text_is_a_typed_error() {
    let head = "graph @g {\n  %0 = input {name=\"x\"} : f32[2,3]\n";
    let cases: &[(&str, &str)] = &[
        ("", "expected 'graph'"),
        ("graph @g {", "unexpected end of input"),
        ("graf @g { }", "expected 'graph'"),
        ("graph g {}", "graph name"),
        ("graph @g {\n  return %0\n}", "used before it is defined"),
        (&format!("{head}  %1 = frobnicate(%0) : f32[2,3]\n  return %1\n}}"), "unknown op \"frobnicate\""),
        (&format!("{head}  %1 = exp(%0) : f33[2,3]\n  return %1\n}}"), "unknown dtype \"f33\""),
        (&format!("{head}  %1 = exp(%0) : f32[2,4]\n  return %1\n}}"), "recorded type f32[2,4] but operands give f32[2,3]"),
        (&format!("{head}  %1 = exp(%0, %0) : f32[2,3]\n  return %1\n}}"), "expected 1 operand"),
        (&format!("{head}  %0 = exp(%0) : f32[2,3]\n  return %0\n}}"), "defined twice"),
        (&format!("{head}  %1 = sum(%0) {{axes=[1]}} : f32[2]\n  return %1\n}}"), "missing attribute \"keepdim\""),
        (&format!("{head}  %1 = sum(%0) {{axes=[1], keepdim=true, color=3}} : f32[2,1]\n  return %1\n}}"), "unknown attribute \"color\""),
        (&format!("{head}  %1 = sum(%0) {{axes=1, keepdim=true}} : f32[2,1]\n  return %1\n}}"), "must be a list of integers"),
        (&format!("{head}  %1 = cast(%0) {{to=f64}} : f32[2,3]\n  return %1\n}}"), "must be a dtype"),
        (&format!("{head}  %1 = exp(%0) : f32[2,3]\n  return %1\n}} trailing"), "unexpected text after the graph"),
        (&format!("{head}  %1 = exp(%0) : f32[99999999999999999999]\n  return %1\n}}"), "is too large"),
        (&format!("{head}  %1 = full {{value=1.2.3}} : f32[2,3]\n  return %1\n}}"), "bad number"),
        (&format!("{head}  %1 = exp(%0) : f32[4294967296,4294967296,4294967296]\n  return %1\n}}"), "too many elements"),
        ("graph @g {\n  %0 = input {name=\"x\"} : f32[2]\n  %1 = input {name=\"x\"} : f32[2]\n  return %1\n}", "used twice"),
        ("graph @g {\n  %0 = input {name=\"x} : f32[2]\n}", "unterminated string"),
        ("graph @g {\n  %0 = input {name=\"\\q\"} : f32[2]\n}", "unknown escape"),
        ("graph @g {\n  %0 = input {name=\"x\"} : f32[2] $\n}", "unexpected character '$'"),
        ("graph @g {\n  return\n}", "expected a value"),
    ];
    for (src, want) in cases {
        let msg = parse_err(src);
        assert!(msg.contains(want), "for\n{src}\nwanted {want:?}, got {msg:?}");
    }
    // Errors carry a position.
    let msg = parse_err("graph @g {\n  %0 = input {name=\"x\"} : f32[2]\n  %1 = exp(%9) : f32[2]\n  return %1\n}");
    assert!(msg.starts_with("parse error at line 3, column 12"), "{msg}");
}

#[test]
fn verifier_catches_hand_built_mistakes() {
    let mut g = Graph::new("v");
    let x = g.input("x", DType::F32, [2]).unwrap();
    let bad = g.push(ir::Node { op: Op::Unary(UnaryOp::Exp), dtype: DType::F16, shape: Shape::from([2]), inputs: [x].into_iter().collect() });
    g.set_outputs(vec![bad]);
    let e = ir::verify::verify(&g).unwrap_err();
    assert!(e.to_string().contains("recorded type f16[2] but operands give f32[2]"), "{e}");

    let mut g = Graph::new("noout");
    g.input("x", DType::F32, [2]).unwrap();
    assert!(ir::verify::verify(&g).unwrap_err().to_string().contains("no outputs"));
}
