//! Every IR op through the CPU backend (one kernel per op) against the reference interpreter.

mod common;
use common::{check, check_fused};
use ir::{BinaryOp, CmpOp, DType, Graph, Op, ReduceOp, Scalar, Shape, UnaryOp};

#[test]
fn unary_float_ops() {
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let mut g = Graph::new(format!("unary_{dt}"));
        let x = g.input("x", dt, [3, 783]).unwrap();
        let mut outs = Vec::new();
        for &u in UnaryOp::ALL {
            if u == UnaryOp::Not {
                continue;
            }
            outs.push(g.add(Op::Unary(u), &[x]).unwrap());
        }
        g.set_outputs(outs);
        check(&g, 1, true);
        // Signed inputs for the ops defined everywhere.
        let mut g = Graph::new(format!("unary_signed_{dt}"));
        let x = g.input("x", dt, [50, 7]).unwrap();
        let outs = [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Erf, UnaryOp::Sin, UnaryOp::Cos, UnaryOp::Floor, UnaryOp::Recip]
            .iter()
            .map(|&u| g.add(Op::Unary(u), &[x]).unwrap())
            .collect();
        g.set_outputs(outs);
        check(&g, 2, false);
    }
}

#[test]
fn unary_int_and_bool_ops() {
    for dt in [DType::I32, DType::I64] {
        let mut g = Graph::new("unary_int");
        let x = g.input("x", dt, [4097]).unwrap();
        let a = g.add(Op::Unary(UnaryOp::Neg), &[x]).unwrap();
        let b = g.add(Op::Unary(UnaryOp::Abs), &[x]).unwrap();
        g.set_outputs(vec![a, b]);
        check(&g, 3, false);
    }
    let mut g = Graph::new("not");
    let x = g.input("x", DType::Bool, [3, 50]).unwrap();
    let a = g.add(Op::Unary(UnaryOp::Not), &[x]).unwrap();
    g.set_outputs(vec![a]);
    check(&g, 4, false);
}

#[test]
fn binary_and_compare_ops_with_broadcast() {
    for dt in [DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64] {
        let mut g = Graph::new(format!("binary_{dt}"));
        let x = g.input("x", dt, [3, 50, 7]).unwrap();
        let y = g.input("y", dt, [50, 1]).unwrap();
        let mut outs = Vec::new();
        for &b in BinaryOp::ALL {
            if matches!(b, BinaryOp::And | BinaryOp::Or) {
                continue;
            }
            if b == BinaryOp::Pow && !dt.is_float() {
                continue;
            }
            outs.push(g.add(Op::Binary(b), &[x, y]).unwrap());
        }
        for &c in CmpOp::ALL {
            outs.push(g.add(Op::Compare(c), &[y, x]).unwrap());
        }
        g.set_outputs(outs);
        check(&g, 5, !dt.is_float());
    }
    let mut g = Graph::new("pow_int");
    let x = g.input("x", DType::I32, [3, 5]).unwrap();
    let two = g.full(2.0, DType::I32, [5]);
    let p = g.add(Op::Binary(BinaryOp::Pow), &[x, two]).unwrap();
    g.set_outputs(vec![p]);
    check(&g, 6, false);
    let mut g = Graph::new("logic");
    let x = g.input("x", DType::Bool, [3, 50]).unwrap();
    let y = g.input("y", DType::Bool, [50]).unwrap();
    let a = g.add(Op::Binary(BinaryOp::And), &[x, y]).unwrap();
    let o = g.add(Op::Binary(BinaryOp::Or), &[x, y]).unwrap();
    let e = g.add(Op::Compare(CmpOp::Eq), &[x, y]).unwrap();
    let l = g.add(Op::Compare(CmpOp::Lt), &[x, y]).unwrap();
    g.set_outputs(vec![a, o, e, l]);
    check(&g, 7, false);
}

#[test]
fn where_and_cast_across_dtypes() {
    let mut g = Graph::new("where");
    let c = g.input("c", DType::Bool, [50, 1]).unwrap();
    let x = g.input("x", DType::F32, [3, 50, 7]).unwrap();
    let y = g.input("y", DType::F32, [7]).unwrap();
    let w = g.add(Op::Where, &[c, x, y]).unwrap();
    g.set_outputs(vec![w]);
    check(&g, 8, false);
    for from in DType::ALL {
        let mut g = Graph::new(format!("cast_from_{from}"));
        let x = g.input("x", from, [3, 783]).unwrap();
        let outs = DType::ALL.iter().map(|&to| g.add(Op::Cast { to }, &[x]).unwrap()).collect();
        g.set_outputs(outs);
        check(&g, 9, false);
    }
}

#[test]
fn reductions_over_axes() {
    for dt in [DType::F32, DType::F16, DType::I32] {
        let mut g = Graph::new(format!("reduce_{dt}"));
        let x = g.input("x", dt, [3, 50, 783]).unwrap();
        let mut outs = Vec::new();
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            for axes in [vec![2], vec![0], vec![1], vec![0, 2], vec![0, 1, 2]] {
                for keepdim in [false, true] {
                    outs.push(g.add(Op::Reduce { op, axes: axes.clone(), keepdim }, &[x]).unwrap());
                }
            }
        }
        g.set_outputs(outs);
        check(&g, 10, false);
    }
}

#[test]
fn movement_ops() {
    let mut g = Graph::new("movement");
    let x = g.input("x", DType::F32, [3, 50, 7]).unwrap();
    let r1 = g.add(Op::Reshape { shape: Shape::from([150, 7]) }, &[x]).unwrap();
    let r2 = g.add(Op::Reshape { shape: Shape::from([3, 5, 10, 7]) }, &[x]).unwrap();
    let r3 = g.add(Op::Reshape { shape: Shape::from([21, 50]) }, &[x]).unwrap();
    let r4 = g.add(Op::Reshape { shape: Shape::from([1, 1050, 1]) }, &[x]).unwrap();
    let p = g.add(Op::Permute { perm: vec![2, 0, 1] }, &[x]).unwrap();
    let y = g.input("y", DType::F32, [50, 1]).unwrap();
    let e = g.add(Op::Expand { shape: Shape::from([4, 50, 9]) }, &[y]).unwrap();
    let s = g.add(Op::Slice { axis: 1, start: 3, end: 48, step: 4 }, &[x]).unwrap();
    let s2 = g.add(Op::Slice { axis: 2, start: 1, end: 7, step: 1 }, &[x]).unwrap();
    let z = g.input("z", DType::F32, [3, 11, 7]).unwrap();
    let c = g.add(Op::Concat { axis: 1 }, &[x, z, x]).unwrap();
    let pd = g.add(Op::Pad { pads: vec![(1, 2), (0, 0), (3, 1)], value: Scalar(-1.5) }, &[x]).unwrap();
    // Movement of a permuted value through a reshape (merge of non-contiguous dims).
    let pr = g.add(Op::Reshape { shape: Shape::from([7, 150]) }, &[p]).unwrap();
    g.set_outputs(vec![r1, r2, r3, r4, p, e, s, s2, c, pd, pr]);
    check(&g, 11, false);
    check_fused(&g, 11, false);
}

#[test]
fn sources() {
    let mut g = Graph::new("sources");
    let x = g.input("x", DType::F32, [4097]).unwrap();
    let f = g.full(0.5, DType::F32, [4097]);
    let i = g.iota(0, DType::F32, [4097]).unwrap();
    let a = g.add(Op::Binary(BinaryOp::Mul), &[x, f]).unwrap();
    let b = g.add(Op::Binary(BinaryOp::Add), &[a, i]).unwrap();
    let ii = g.iota(1, DType::I64, [3, 50]).unwrap();
    let fi = g.full(7.0, DType::I32, [3, 5]);
    let fb = g.full(1.0, DType::Bool, [2]);
    g.set_outputs(vec![b, ii, fi, fb]);
    check(&g, 12, false);
}

#[test]
fn matmul_with_batch_broadcast() {
    for dt in [DType::F32, DType::F16, DType::BF16, DType::I32] {
        let mut g = Graph::new(format!("matmul_{dt}"));
        let a = g.input("a", dt, [2, 3, 50, 33]).unwrap();
        let b = g.input("b", dt, [3, 33, 17]).unwrap();
        let c = g.add(Op::MatMul, &[a, b]).unwrap();
        // A second matmul broadcasting a size-1 batch dim (fed by a fresh input: chaining
        // through a rounded f16 buffer would test the reference's f64 intermediates instead).
        let x = g.input("x", dt, [3, 50, 17]).unwrap();
        let w = g.input("w", dt, [1, 17, 7]).unwrap();
        let d = g.add(Op::MatMul, &[x, w]).unwrap();
        g.set_outputs(vec![c, d]);
        check(&g, 13, false);
    }
}

#[test]
fn flash_attention_causal_and_not() {
    for dt in [DType::F32, DType::F16] {
        for causal in [false, true] {
            for (sq, sk) in [(50, 50), (33, 70), (70, 33)] {
                let mut g = Graph::new("attn");
                let q = g.input("q", dt, [2, 3, sq, 16]).unwrap();
                let k = g.input("k", dt, [2, 3, sk, 16]).unwrap();
                let v = g.input("v", dt, [2, 3, sk, 9]).unwrap();
                let o = g.add(Op::FlashAttention { causal, scale: Scalar(0.25) }, &[q, k, v]).unwrap();
                g.set_outputs(vec![o]);
                check(&g, 14, false);
            }
        }
    }
}

/// The inline `exp` (also inside sigmoid, softmax, tanh, erf): within a few ulp over the whole
/// f32 range, exactly 0 / inf past the ends, NaN kept; checked tighter than the dtype tolerance.
#[test]
fn exp_is_accurate_over_the_whole_range() {
    let mut xs: Vec<f64> = (0..20001).map(|i| -110.0 + 200.0 * i as f64 / 20000.0).collect();
    xs.extend([f64::NEG_INFINITY, f64::INFINITY, -1e30, 1e30, 0.0, -0.0, 1e-8, -1e-8, 88.72, 88.7228, 88.73, 88.38, -87.33, -103.9, -104.0, -150.0]);
    let n = xs.len();
    let mut g = Graph::new("exp_range");
    let x = g.input("x", DType::F32, [n]).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
    g.set_outputs(vec![y]);
    let xs32: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
    let mut with_nan = xs32.clone();
    with_nan.push(f32::NAN);
    let art = codegen::cpu::compile(&ir::KernelGraph::one_per_op(&g), &codegen::cpu::CpuOptions::default()).unwrap();
    let mut ex = runtime::CpuExecutor::new(&art).unwrap();
    let got = ex.run(&[runtime::HostTensor::from_f32([n], &xs32).unwrap()]).unwrap();
    let got = got[0].as_f32().unwrap();
    for (&x, &y) in xs32.iter().zip(got.iter()) {
        let want = (x as f64).exp();
        let want32 = want as f32;
        if want32 == 0.0 || want32.is_infinite() {
            assert!(y == want32 || (want32 == 0.0 && y.abs() < 2e-45), "exp({x}) = {y}, want {want32}");
        } else if want32.is_normal() {
            assert!(((y as f64 - want) / want).abs() < 5e-7, "exp({x}) = {y}, want {want}");
        } else {
            assert!((y as f64 - want).abs() < 3e-45, "exp({x}) = {y} (subnormal), want {want}");
        }
    }
    let mut g = Graph::new("exp_nan");
    let x = g.input("x", DType::F32, [n + 1]).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
    g.set_outputs(vec![y]);
    let art = codegen::cpu::compile(&ir::KernelGraph::one_per_op(&g), &codegen::cpu::CpuOptions::default()).unwrap();
    let mut ex = runtime::CpuExecutor::new(&art).unwrap();
    let got = ex.run(&[runtime::HostTensor::from_f32([n + 1], &with_nan).unwrap()]).unwrap();
    assert!(got[0].as_f32().unwrap()[n].is_nan());
}

/// A large 1-D elementwise kernel has no parallel dim of its own: the CPU backend views it as
/// `[n / B, B]` so it splits across threads; results unchanged (odd multiples of B too).
#[test]
fn flat_elementwise_kernels_split_for_threads() {
    for n in [3 << 16, (1 << 16) + 256 * 7, 100_003] {
        let mut g = Graph::new("flat");
        let x = g.input("x", DType::F32, [n]).unwrap();
        let y = g.input("y", DType::BF16, [n]).unwrap();
        let e = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
        let yc = g.add(Op::Cast { to: DType::F32 }, &[y]).unwrap();
        let s = g.add(Op::Binary(BinaryOp::Mul), &[e, yc]).unwrap();
        g.set_outputs(vec![s, e]);
        check(&g, 11, false);
        let text = codegen::cpu::kernel_ir(&ir::KernelGraph::one_per_op(&g)).unwrap();
        let split = n % 256 == 0;
        assert_eq!(text.contains("outer []"), !split, "{text}");
    }
}

/// f16 matmuls run the gemm crate's f16 kernels on the f16 buffers themselves: no f32 copy
/// of either operand (a transposed operand is a strided view), epilogue fused after.
#[test]
fn f16_matmul_needs_no_f32_copies() {
    let mut g = Graph::new("mm_f16");
    let a = g.input("a", DType::F16, [37, 65]).unwrap();
    let b = g.input("b", DType::F16, [29, 65]).unwrap();
    let bt = g.add(Op::Permute { perm: vec![1, 0] }, &[b]).unwrap();
    let c = g.add(Op::MatMul, &[a, bt]).unwrap();
    g.set_outputs(vec![c]);
    check(&g, 31, false);
    let kg = ir::KernelGraph::one_per_op(&g);
    let art = codegen::cpu::compile(&kg, &codegen::cpu::CpuOptions::default()).unwrap();
    let gemms: Vec<_> = art.steps.iter().filter_map(|s| if let runtime::Step::Gemm(g) = s { Some(g) } else { None }).collect();
    assert_eq!(gemms.len(), 1);
    assert_eq!(gemms[0].dtype, DType::F16);
    // One kernel per op: the permute is its own (f16) kernel; no buffer anywhere is f32.
    assert!(art.buffers.iter().all(|b| b.dtype == DType::F16), "{}", art.summary());
    // With an epilogue in the same kernel body.
    let bias = g.input("bias", DType::F16, [29]).unwrap();
    let y = g.add(Op::Binary(BinaryOp::Add), &[c, bias]).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Tanh), &[y]).unwrap();
    g.set_outputs(vec![y]);
    check_fused(&g, 32, false);
}

/// Sigmoid (`1 / (1 + exp(-x))` as the frontend writes it, in both operand orders and as
/// `recip` or `1 / d`) and tanh divide by a reciprocal estimate on bounded divisors: check
/// them (and erf, whose divide stays exact) over the whole f32 range and at the edges (±inf, NaN, ±1e30, the exp clamps,
/// denormals, ±0) against the f64 interpreter, tighter than the dtype tolerance.
#[test]
fn estimated_divides_are_accurate_at_the_edges() {
    let mut xs: Vec<f32> = (0..8001).map(|i| (-200.0 + 400.0 * i as f64 / 8000.0) as f32).collect();
    xs.extend([f32::NEG_INFINITY, f32::INFINITY, -1e30, 1e30, f32::MAX, f32::MIN, 0.0, -0.0, 1e-40, -1e-40, f32::MIN_POSITIVE, 1e-8, -1e-8, 0.019, 0.021, -0.02]);
    xs.extend([86.9, 87.0, 87.1, 88.0, 88.72, 88.8, 89.0, 103.9, 104.0, 150.0, 3.9, 4.0, 9.9, 10.0, 10.1, 43.4, 43.5, 43.6]);
    let negs: Vec<f32> = xs.iter().map(|x| -x).collect();
    xs.extend(negs);
    let n = xs.len();
    type Build = fn(&mut Graph, ir::NodeId) -> ir::NodeId;
    let cases: [(&str, Build); 6] = [
        ("sigmoid_recip", |g, x| {
            let e = g.add(Op::Unary(UnaryOp::Neg), &[x]).unwrap();
            let e = g.add(Op::Unary(UnaryOp::Exp), &[e]).unwrap();
            let one = g.full(1.0, DType::F32, Shape::scalar());
            let d = g.add(Op::Binary(BinaryOp::Add), &[e, one]).unwrap();
            g.add(Op::Unary(UnaryOp::Recip), &[d]).unwrap()
        }),
        ("sigmoid_div", |g, x| {
            let e = g.add(Op::Unary(UnaryOp::Neg), &[x]).unwrap();
            let e = g.add(Op::Unary(UnaryOp::Exp), &[e]).unwrap();
            let one = g.full(1.0, DType::F32, Shape::scalar());
            let d = g.add(Op::Binary(BinaryOp::Add), &[one, e]).unwrap();
            g.add(Op::Binary(BinaryOp::Div), &[one, d]).unwrap()
        }),
        ("silu", |g, x| {
            let e = g.add(Op::Unary(UnaryOp::Neg), &[x]).unwrap();
            let e = g.add(Op::Unary(UnaryOp::Exp), &[e]).unwrap();
            let one = g.full(1.0, DType::F32, Shape::scalar());
            let d = g.add(Op::Binary(BinaryOp::Add), &[e, one]).unwrap();
            let s = g.add(Op::Unary(UnaryOp::Recip), &[d]).unwrap();
            g.add(Op::Binary(BinaryOp::Mul), &[s, x]).unwrap()
        }),
        ("exp_plus_one_recip_unclamped_use", |g, x| {
            // The exp is also an output of its own: it keeps the exact clamp (inf past 88.7).
            let e = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
            let one = g.full(1.0, DType::F32, Shape::scalar());
            let d = g.add(Op::Binary(BinaryOp::Add), &[e, one]).unwrap();
            let r = g.add(Op::Unary(UnaryOp::Recip), &[d]).unwrap();
            g.add(Op::Binary(BinaryOp::Add), &[r, e]).unwrap()
        }),
        ("tanh", |g, x| g.add(Op::Unary(UnaryOp::Tanh), &[x]).unwrap()),
        ("erf", |g, x| g.add(Op::Unary(UnaryOp::Erf), &[x]).unwrap()),
    ];
    for (name, build) in cases {
        for fused in [false, true] {
            let mut g = Graph::new(name);
            let x = g.input("x", DType::F32, [n]).unwrap();
            let y = build(&mut g, x);
            g.set_outputs(vec![y]);
            let kg = if fused { common::fused(&g) } else { ir::KernelGraph::one_per_op(&g) };
            let art = codegen::cpu::compile(&kg, &codegen::cpu::CpuOptions::default()).unwrap();
            let mut ex = runtime::CpuExecutor::new(&art).unwrap();
            let mut with_nan = xs.clone();
            with_nan.push(f32::NAN);
            let mut g2 = Graph::new(name);
            let x2 = g2.input("x", DType::F32, [n + 1]).unwrap();
            let y2 = build(&mut g2, x2);
            g2.set_outputs(vec![y2]);
            let kg2 = if fused { common::fused(&g2) } else { ir::KernelGraph::one_per_op(&g2) };
            let art2 = codegen::cpu::compile(&kg2, &codegen::cpu::CpuOptions::default()).unwrap();
            let got2 = runtime::CpuExecutor::new(&art2).unwrap().run(&[runtime::HostTensor::from_f32([n + 1], &with_nan).unwrap()]).unwrap();
            assert!(got2[0].as_f32().unwrap()[n].is_nan(), "{name}(NaN) is not NaN");
            let input = runtime::HostTensor::from_f32([n], &xs).unwrap();
            let got = ex.run(std::slice::from_ref(&input)).unwrap();
            let reference = ir::interp::run(&g, &[input.to_value()]).unwrap();
            for ((&x, y), &want) in xs.iter().zip(got[0].as_f32().unwrap()).zip(&reference[0].data) {
                if want.is_nan() {
                    assert!(y.is_nan(), "{name}({x}) = {y}, want NaN (fused {fused})");
                    continue;
                }
                if want.is_infinite() || (want as f32).is_infinite() {
                    assert_eq!(y, want as f32, "{name}({x}) (fused {fused})");
                    continue;
                }
                let err = (y as f64 - want).abs();
                // 2e-6 relative, or 1e-36 absolute (sigmoid is 0 from x < -87 on; silu there is under 1.5e-36).
                assert!(err <= 2e-6 * want.abs() || err <= 2e-36 || (name == "tanh" || name == "erf") && err <= 3e-7, "{name}({x}) = {y}, want {want} (fused {fused})");
            }
        }
    }
}


/// A one-pass elementwise kernel heavy in math (`sigmoid(x * a + b) * x`) over rows that are a
/// multiple of 64 long takes the strip-mined, prefetching loop: results unchanged.
#[test]
fn heavy_elementwise_rows_prefetch_and_match() {
    for shape in [[5usize, 1024], [3, 4096], [2, 320]] {
        let mut g = Graph::new("ew_sigmoid");
        let x = g.input("x", DType::F32, shape).unwrap();
        let a = g.input("a", DType::F32, [shape[1]]).unwrap();
        let b = g.input("b", DType::F32, [shape[1]]).unwrap();
        let y = g.add(Op::Binary(BinaryOp::Mul), &[x, a]).unwrap();
        let y = g.add(Op::Binary(BinaryOp::Add), &[y, b]).unwrap();
        let y = g.add(Op::Unary(UnaryOp::Neg), &[y]).unwrap();
        let y = g.add(Op::Unary(UnaryOp::Exp), &[y]).unwrap();
        let one = g.full(1.0, DType::F32, Shape::scalar());
        let y = g.add(Op::Binary(BinaryOp::Add), &[y, one]).unwrap();
        let y = g.add(Op::Unary(UnaryOp::Recip), &[y]).unwrap();
        let y = g.add(Op::Binary(BinaryOp::Mul), &[y, x]).unwrap();
        g.set_outputs(vec![y]);
        check_fused(&g, 41, false);
    }
}

/// f32 max reductions propagate NaN (as `llvm.maximum` and PyTorch's `amax`) whatever the
/// NaN's position in the row (vector body or remainder) and with infinities around; a
/// softmax row with a NaN is all NaN, a row of -inf all NaN, and the other rows match. Short
/// rows (37), and rows long enough (512, 1024) for the softmax kernel to prefetch its next row,
/// where the max tracks NaNs beside a `maxnum` (`llvm.rs`, `Gen::acc_step`).
#[test]
fn max_reductions_propagate_nan_at_every_position() {
    for cols in [37, 512, 1024] {
        max_nan_rows(70, cols);
    }
}

fn max_nan_rows(rows: usize, cols: usize) {
    let mut xs: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect();
    for r in 0..37 {
        // rows 0..37: one NaN, in the vector body, its remainder, the first or last column
        let c = match r {
            0 => 0,
            1 => cols - 1,
            _ => (r * 131) % cols,
        };
        xs[r * cols + c] = f32::NAN;
    }
    xs[40 * cols..41 * cols].fill(f32::NEG_INFINITY);
    xs[41 * cols + 5] = f32::INFINITY;
    xs[42 * cols..43 * cols].fill(f32::NAN);
    xs[43 * cols + 3] = f32::NEG_INFINITY;
    xs[44 * cols + 36] = f32::INFINITY;
    xs[44 * cols + 2] = f32::NAN;
    xs[45 * cols + cols - 1] = f32::INFINITY; // +inf last: the max is inf, the softmax NaN
    let want_max = |r: usize| {
        let row = &xs[r * cols..(r + 1) * cols];
        if row.iter().any(|v| v.is_nan()) {
            f32::NAN
        } else {
            row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        }
    };
    let mut g = Graph::new("max_nan");
    let x = g.input("x", DType::F32, [rows, cols]).unwrap();
    let m = g.add(Op::Reduce { op: ReduceOp::Max, axes: vec![1], keepdim: true }, &[x]).unwrap();
    let d = g.add(Op::Binary(BinaryOp::Sub), &[x, m]).unwrap();
    let e = g.add(Op::Unary(UnaryOp::Exp), &[d]).unwrap();
    let s = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: true }, &[e]).unwrap();
    let y = g.add(Op::Binary(BinaryOp::Div), &[e, s]).unwrap();
    g.set_outputs(vec![m, y]);
    for (what, kg) in [("one kernel per op", ir::KernelGraph::one_per_op(&g)), ("fused", passes::optimize(&g, &passes::DeviceProfile::cpu()).unwrap().kernels)] {
        let art = codegen::cpu::compile(&kg, &codegen::cpu::CpuOptions::default()).unwrap();
        let got = runtime::CpuExecutor::new(&art).unwrap().run(&[runtime::HostTensor::from_f32([rows, cols], &xs).unwrap()]).unwrap();
        let (mx, sm) = (got[0].as_f32().unwrap(), got[1].as_f32().unwrap());
        for r in 0..rows {
            let want = want_max(r);
            assert!(mx[r] == want || (want.is_nan() && mx[r].is_nan()), "{what}, {cols} columns: max of row {r} = {}, want {want}", mx[r]);
            let row = &sm[r * cols..(r + 1) * cols];
            if want.is_nan() || want == f32::NEG_INFINITY || want == f32::INFINITY {
                assert!(row.iter().all(|v| v.is_nan()), "{what}, {cols} columns: softmax row {r} should be all NaN: {row:?}");
            } else {
                let total: f32 = row.iter().sum();
                assert!((total - 1.0).abs() < 1e-5 && row.iter().all(|v| v.is_finite()), "{what}, {cols} columns: softmax row {r}: {row:?}");
            }
        }
    }
}
