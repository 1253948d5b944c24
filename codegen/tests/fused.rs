//! Fused kernel bodies (one kernel each) against the reference interpreter, plus golden
//! kernel IR for softmax.

mod common;
use common::{check_fused, fused, layer_norm, softmax};
use ir::{BinaryOp, DType, Graph, NodeId, Op, Scalar, Shape, UnaryOp};

fn bin(g: &mut Graph, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
    g.add(Op::Binary(op), &[a, b]).unwrap()
}
fn un(g: &mut Graph, op: UnaryOp, a: NodeId) -> NodeId {
    g.add(Op::Unary(op), &[a]).unwrap()
}

fn gelu(g: &mut Graph, x: NodeId) -> NodeId {
    let dt = g.node(x).dtype;
    let c = g.full(std::f64::consts::FRAC_1_SQRT_2, dt, Shape::scalar());
    let h = g.full(0.5, dt, Shape::scalar());
    let one = g.full(1.0, dt, Shape::scalar());
    let t = bin(g, BinaryOp::Mul, x, c);
    let e = un(g, UnaryOp::Erf, t);
    let e1 = bin(g, BinaryOp::Add, e, one);
    let hx = bin(g, BinaryOp::Mul, x, h);
    bin(g, BinaryOp::Mul, hx, e1)
}

#[test]
fn softmax_fused() {
    // [.., 320], [.., 768], [.., 1024] and [.., 4096] rows take the prefetching (strip-mined)
    // exp pass with its sum in the same loop, in chunks of 64, 128, 256 and 256; bf16 1024 too.
    for (dt, shape) in [(DType::F32, vec![50, 783]), (DType::F32, vec![3, 7, 4097]), (DType::F16, vec![3, 783]), (DType::BF16, vec![50, 50]), (DType::F32, vec![9, 320]), (DType::F32, vec![5, 768]), (DType::F32, vec![2, 5, 1024]), (DType::BF16, vec![7, 1024]), (DType::F32, vec![3, 4096])] {
        let mut g = Graph::new("softmax");
        let x = g.input("x", dt, shape.clone()).unwrap();
        let y = softmax(&mut g, x, shape.len() - 1);
        g.set_outputs(vec![y]);
        check_fused(&g, 21, false);
    }
    // Over a leading axis (no row fusion possible; still one kernel body).
    let mut g = Graph::new("softmax_axis0");
    let x = g.input("x", DType::F32, [50, 3, 7]).unwrap();
    let y = softmax(&mut g, x, 0);
    g.set_outputs(vec![y]);
    check_fused(&g, 22, false);
}

#[test]
fn softmax_is_one_row_fused_loop_kernel() {
    let mut g = Graph::new("softmax");
    let x = g.input("x", DType::F32, [4, 8]).unwrap();
    let y = softmax(&mut g, x, 1);
    g.set_outputs(vec![y]);
    let text = codegen::cpu::kernel_ir(&fused(&g)).unwrap();
    assert_golden(&text, "softmax.kir", include_str!("golden/softmax.kir"));
    assert_eq!(text.matches("loop_kernel").count(), 1, "{text}");
}

#[test]
fn layer_norm_fused() {
    for (dt, shape) in [(DType::F32, vec![3, 50, 783]), (DType::F16, vec![50, 768]), (DType::BF16, vec![7, 4097])] {
        let d = *shape.last().unwrap();
        let mut g = Graph::new("layer_norm");
        let x = g.input("x", dt, shape).unwrap();
        let w = g.input("w", dt, [d]).unwrap();
        let b = g.input("b", dt, [d]).unwrap();
        let y = layer_norm(&mut g, x, w, b);
        g.set_outputs(vec![y]);
        check_fused(&g, 23, false);
        let text = codegen::cpu::kernel_ir(&fused(&g)).unwrap();
        assert_eq!(text.matches("loop_kernel").count(), 1, "{text}");
    }
}

/// `layer_norm(x + r)`, the residual form: the sum `x + r` is stored per row and summed in
/// the same loop (`llvm.rs`, `fuses_with_next`), and `h - mean` is recomputed where it is read
/// rather than stored (`lower.rs`); odd row lengths and every float dtype.
#[test]
fn residual_layer_norm_fused() {
    for (dt, shape) in [(DType::F32, vec![37, 129]), (DType::F16, vec![5, 3, 770]), (DType::BF16, vec![9, 4097]), (DType::F32, vec![2, 1])] {
        let d = *shape.last().unwrap();
        let mut g = Graph::new("residual_layer_norm");
        let x = g.input("x", dt, shape.clone()).unwrap();
        let r = g.input("r", dt, shape).unwrap();
        let w = g.input("w", dt, [d]).unwrap();
        let b = g.input("b", dt, [d]).unwrap();
        let h = bin(&mut g, BinaryOp::Add, x, r);
        let y = layer_norm(&mut g, h, w, b);
        g.set_outputs(vec![y]);
        check_fused(&g, 29, false);
        let text = codegen::cpu::kernel_ir(&fused(&g)).unwrap();
        assert_eq!(text.matches("loop_kernel").count(), 1, "{text}");
        if d > 1 {
            // h is a local of the row; h - mean is not (it is recomputed where it is read).
            assert_eq!(text.matches("  local ").count(), 3, "{text}");
        }
    }
    // The kernel IR of a small case, as a golden file.
    let mut g = Graph::new("residual_layer_norm");
    let x = g.input("x", DType::F32, [4, 8]).unwrap();
    let r = g.input("r", DType::F32, [4, 8]).unwrap();
    let w = g.input("w", DType::F32, [8]).unwrap();
    let b = g.input("b", DType::F32, [8]).unwrap();
    let h = bin(&mut g, BinaryOp::Add, x, r);
    let y = layer_norm(&mut g, h, w, b);
    g.set_outputs(vec![y]);
    let text = codegen::cpu::kernel_ir(&fused(&g)).unwrap();
    assert_golden(&text, "residual_layer_norm.kir", include_str!("golden/residual_layer_norm.kir"));
}

/// `text` equals the golden file `tests/golden/<file>` (`expected`, its contents); with
/// `KILN_BLESS` set, `text` replaces the file instead.
fn assert_golden(text: &str, file: &str, expected: &str) {
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(file), text).unwrap();
    } else {
        assert_eq!(text, expected, "kernel IR changed (KILN_BLESS=1 to accept)");
    }
}

#[test]
fn elementwise_chains_fused() {
    let mut g = Graph::new("gelu_chain");
    let x = g.input("x", DType::F32, [50, 4097]).unwrap();
    let a = g.input("a", DType::F32, [4097]).unwrap();
    let y = bin(&mut g, BinaryOp::Mul, x, a);
    let y = gelu(&mut g, y);
    let t = un(&mut g, UnaryOp::Tanh, y);
    let z = bin(&mut g, BinaryOp::Add, t, x);
    g.set_outputs(vec![z, y]);
    check_fused(&g, 24, false);
    // sigmoid(x * a + b) * x
    let mut g = Graph::new("silu_like");
    let x = g.input("x", DType::F16, [3, 783]).unwrap();
    let a = g.input("a", DType::F16, [783]).unwrap();
    let b = g.input("b", DType::F16, [3, 1]).unwrap();
    let t = bin(&mut g, BinaryOp::Mul, x, a);
    let t = bin(&mut g, BinaryOp::Add, t, b);
    let n = un(&mut g, UnaryOp::Neg, t);
    let e = un(&mut g, UnaryOp::Exp, n);
    let one = g.full(1.0, DType::F16, Shape::scalar());
    let d = bin(&mut g, BinaryOp::Add, e, one);
    let s = un(&mut g, UnaryOp::Recip, d);
    let y = bin(&mut g, BinaryOp::Mul, s, x);
    g.set_outputs(vec![y]);
    check_fused(&g, 25, false);
}

#[test]
fn gemm_with_epilogue_fused() {
    for dt in [DType::F32, DType::BF16] {
        let mut g = Graph::new("gemm_bias_gelu");
        let x = g.input("x", dt, [50, 33]).unwrap();
        let w = g.input("w", dt, [17, 33]).unwrap();
        let b = g.input("b", dt, [17]).unwrap();
        let wt = g.add(Op::Permute { perm: vec![1, 0] }, &[w]).unwrap();
        let m = g.add(Op::MatMul, &[x, wt]).unwrap();
        let y = bin(&mut g, BinaryOp::Add, m, b);
        let y = gelu(&mut g, y);
        g.set_outputs(vec![y]);
        check_fused(&g, 26, false);
        if dt == DType::F32 {
            // The GEMM writes straight into the output and the epilogue runs in place.
            let art = codegen::cpu::compile(&fused(&g), &Default::default()).unwrap();
            assert_eq!(art.arena_bytes, 0, "{}", art.summary());
        }
    }
    // Residual epilogue over a batched matmul.
    let mut g = Graph::new("gemm_residual");
    let x = g.input("x", DType::F32, [3, 50, 33]).unwrap();
    let w = g.input("w", DType::F32, [33, 33]).unwrap();
    let m = g.add(Op::MatMul, &[x, w]).unwrap();
    let y = bin(&mut g, BinaryOp::Add, m, x);
    g.set_outputs(vec![y]);
    check_fused(&g, 27, false);
}

#[test]
fn attention_with_epilogue_fused() {
    let mut g = Graph::new("attention");
    // q, k, v as [b, s, h, d] permuted to [b, h, s, d] (strided views, not copies).
    let q = g.input("q", DType::F32, [2, 50, 3, 16]).unwrap();
    let k = g.input("k", DType::F32, [2, 50, 3, 16]).unwrap();
    let v = g.input("v", DType::F32, [2, 50, 3, 16]).unwrap();
    let p = |g: &mut Graph, t| g.add(Op::Permute { perm: vec![0, 2, 1, 3] }, &[t]).unwrap();
    let (qp, kp, vp) = (p(&mut g, q), p(&mut g, k), p(&mut g, v));
    let o = g.add(Op::FlashAttention { causal: true, scale: Scalar(0.25) }, &[qp, kp, vp]).unwrap();
    let ot = g.add(Op::Permute { perm: vec![0, 2, 1, 3] }, &[o]).unwrap();
    let r = g.add(Op::Reshape { shape: Shape::from([2, 50, 48]) }, &[ot]).unwrap();
    g.set_outputs(vec![r]);
    check_fused(&g, 28, false);
}

#[test]
fn written_out_attention_in_one_body() {
    // softmax(q k^T * s) v spelled with primitives in one kernel body: two library matmuls
    // and a row-fused softmax between them.
    let mut g = Graph::new("attention_primitives");
    let q = g.input("q", DType::F32, [3, 50, 16]).unwrap();
    let k = g.input("k", DType::F32, [3, 70, 16]).unwrap();
    let v = g.input("v", DType::F32, [3, 70, 9]).unwrap();
    let kt = g.add(Op::Permute { perm: vec![0, 2, 1] }, &[k]).unwrap();
    let s = g.add(Op::MatMul, &[q, kt]).unwrap();
    let c = g.full(0.25, DType::F32, Shape::scalar());
    let s = bin(&mut g, BinaryOp::Mul, s, c);
    let p = softmax(&mut g, s, 2);
    let o = g.add(Op::MatMul, &[p, v]).unwrap();
    g.set_outputs(vec![o]);
    check_fused(&g, 29, false);
}
