//! Every decomposition, run through the reference interpreter, against hand-computed values
//! and an independent f64 implementation, on odd shapes with seeded random inputs.
#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads better in tests

mod common;

use common::*;
use frontend::{cat, Tensor};
use ir::{DType, Op};

const TOL: f64 = 1e-10;
/// Constants in an f32 graph are f32 values (as in PyTorch), so references round them too.
fn q(c: f64) -> f64 {
    c as f32 as f64
}
fn gelu_ref(v: f64) -> f64 {
    v * 0.5 * (1.0 + erf(v * q(std::f64::consts::FRAC_1_SQRT_2)))
}
fn gelu_tanh_ref(v: f64) -> f64 {
    0.5 * v * (1.0 + (q((2.0 / std::f64::consts::PI).sqrt()) * (v + q(0.044715) * v.powi(3))).tanh())
}

fn map_ref(v: &ir::interp::Value, f: impl Fn(f64) -> f64) -> Vec<f64> {
    v.data.iter().map(|&x| f(x)).collect()
}

#[test]
fn activations_hand_values() {
    let x = ir::interp::Value::new(DType::F32, [4], vec![-1.0, 0.0, 1.0, 2.0]).unwrap();
    let gelu = run(&[x.clone()], |_, xs| xs[0].gelu());
    // (constants are f32 in an f32 graph, hence 1e-7)
    assert_close(&gelu, &[4], &[-0.15865525393145707, 0.0, 0.8413447460685429, 1.9544997361036416], 1e-7);
    let gelu_t = run(&[x.clone()], |_, xs| xs[0].gelu_tanh());
    assert_close(&gelu_t, &[4], &[-0.15880800939172324, 0.0, 0.8411919906082768, 1.954597694087775], 1e-7);
    let sig = run(&[x.clone()], |_, xs| xs[0].sigmoid());
    assert_close(&sig, &[4], &[0.2689414213699951, 0.5, 0.7310585786300049, 0.8807970779778823], 1e-12);
    let silu = run(&[x.clone()], |_, xs| xs[0].silu());
    assert_close(&silu, &[4], &[-0.2689414213699951, 0.0, 0.7310585786300049, 1.7615941559557646], 1e-12);
    let relu = run(&[x.clone()], |_, xs| xs[0].relu());
    assert_close(&relu, &[4], &[0.0, 0.0, 1.0, 2.0], 0.0);
    let lsm = run(&[x.clone()], |_, xs| xs[0].log_softmax(0));
    assert_close(&lsm, &[4], &[-3.4401896985611953, -2.4401896985611953, -1.4401896985611953, -0.44018969856119533], 1e-12);
    let sm = run(&[x], |_, xs| xs[0].softmax(0));
    assert_close(&sm, &[4], &[0.03205860328008499, 0.08714431874203257, 0.23688281808991013, 0.6439142598879722], 1e-12);
}

#[test]
fn unary_math_matches_f64() {
    let x = value(1, DType::F32, &[7, 13]);
    let pos = ir::interp::Value::new(DType::F32, [7, 13], x.data.iter().map(|v| v.abs() + 0.1).collect()).unwrap();
    let c = |got: &ir::interp::Value, want: Vec<f64>| assert_close(got, &[7, 13], &want, TOL);
    c(&run(&[x.clone()], |_, xs| xs[0].exp()), map_ref(&x, f64::exp));
    c(&run(&[pos.clone()], |_, xs| xs[0].log()), map_ref(&pos, f64::ln));
    c(&run(&[pos.clone()], |_, xs| xs[0].sqrt()), map_ref(&pos, f64::sqrt));
    c(&run(&[pos.clone()], |_, xs| xs[0].rsqrt()), map_ref(&pos, |v| 1.0 / v.sqrt()));
    c(&run(&[x.clone()], |_, xs| xs[0].tanh()), map_ref(&x, f64::tanh));
    c(&run(&[x.clone()], |_, xs| xs[0].erf()), map_ref(&x, erf));
    c(&run(&[x.clone()], |_, xs| xs[0].abs()), map_ref(&x, f64::abs));
    c(&run(&[x.clone()], |_, xs| -&xs[0]), map_ref(&x, |v| -v));
    c(&run(&[pos.clone()], |_, xs| xs[0].pow(1.7)), map_ref(&pos, |v| v.powf(q(1.7))));
    c(&run(&[x.clone()], |_, xs| xs[0].sigmoid()), map_ref(&x, |v| 1.0 / (1.0 + (-v).exp())));
    c(&run(&[x.clone()], |_, xs| xs[0].silu()), map_ref(&x, |v| v / (1.0 + (-v).exp())));
    c(&run(&[x.clone()], |_, xs| xs[0].relu()), map_ref(&x, |v| v.max(0.0)));
    c(&run(&[x.clone()], |_, xs| xs[0].gelu()), map_ref(&x, gelu_ref));
    c(&run(&[x.clone()], |_, xs| xs[0].gelu_tanh()), map_ref(&x, gelu_tanh_ref));
    // the exact formula with unrounded constants agrees to f32 precision
    let exact = |v: f64| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()));
    assert_close(&run(&[x.clone()], |_, xs| xs[0].gelu()), &[7, 13], &map_ref(&x, exact), 1e-7);
    c(&run(&[x.clone()], |_, xs| xs[0].clamp(Some(-0.5), Some(0.25))), map_ref(&x, |v| v.clamp(-0.5, 0.25)));
}

#[test]
fn gelu_on_a_large_odd_shape() {
    let x = value(2, DType::F32, &[3, 50, 78]);
    assert_close(&run(&[x.clone()], |_, xs| xs[0].gelu_tanh()), &[3, 50, 78], &map_ref(&x, gelu_tanh_ref), TOL);
    assert_close(&run(&[x.clone()], |_, xs| xs[0].gelu()), &[3, 50, 78], &map_ref(&x, gelu_ref), 1e-9);
}

#[test]
fn arithmetic_broadcasts_and_operators() {
    let a = value(3, DType::F32, &[7, 1, 13]);
    let b = value(4, DType::F32, &[5, 1]);
    let out = run(&[a.clone(), b.clone()], |_, xs| {
        let (a, b) = (&xs[0], &xs[1]);
        // ((a + b) * a - b / 2) * 3 - 1 + (2 - a)
        let t = (((a + b)? * a)? - (b / 2.0)?)?;
        let t = ((t * 3.0)? - 1.0)?;
        t + (2.0 - a)?
    });
    let mut want = Vec::new();
    for i in 0..7 {
        for j in 0..5 {
            for k in 0..13 {
                let (x, y) = (a.data[i * 13 + k], b.data[j]);
                want.push(((x + y) * x - y / 2.0) * 3.0 - 1.0 + (2.0 - x));
            }
        }
    }
    assert_close(&out, &[7, 5, 13], &want, TOL);
    let out = run(&[a.clone(), b.clone()], |_, xs| xs[0].maximum(&xs[1])?.sub(&xs[0].minimum(&xs[1])?));
    let want: Vec<f64> = (0..7 * 5 * 13)
        .map(|f| {
            let (i, j, k) = (f / 65, (f / 13) % 5, f % 13);
            (a.data[i * 13 + k] - b.data[j]).abs()
        })
        .collect();
    assert_close(&out, &[7, 5, 13], &want, TOL);
}

#[test]
fn promotion_inserts_casts() {
    let i = ir::interp::Value::new(DType::I32, [5], vec![1., 2., 3., -4., 7.]).unwrap();
    let h = ir::interp::Value::new(DType::BF16, [5], vec![0.5, 1.5, -2.0, 4.0, 8.0]).unwrap();
    // i32 * 0.5 -> f32
    let out = run(&[i.clone()], |_, xs| xs[0].mul(0.5));
    assert_eq!(out.dtype, DType::F32);
    assert_close(&out, &[5], &[0.5, 1.0, 1.5, -2.0, 3.5], 0.0);
    // i32 / i32 is true division in f32
    let out = run(&[i.clone()], |_, xs| xs[0].div(2));
    assert_eq!(out.dtype, DType::F32);
    assert_close(&out, &[5], &[0.5, 1.0, 1.5, -2.0, 3.5], 0.0);
    // i32 + 2 stays i32
    assert_eq!(run(&[i.clone()], |_, xs| xs[0].add(2)).dtype, DType::I32);
    // bf16 + i32 -> bf16 ; bf16 + 1.5 -> bf16
    let out = run(&[h.clone(), i.clone()], |_, xs| xs[0].add(&xs[1]));
    assert_eq!(out.dtype, DType::BF16);
    assert_close(&out, &[5], &[1.5, 3.5, 1.0, 0.0, 15.0], 0.0);
    assert_eq!(run(&[h.clone()], |_, xs| xs[0].add(1.5)).dtype, DType::BF16);
    // f16 * bf16 -> f32
    let f16 = ir::interp::Value { dtype: DType::F16, ..h.clone() };
    assert_eq!(run(&[h.clone(), f16], |_, xs| xs[0].mul(&xs[1])).dtype, DType::F32);
    // comparisons promote then give bool; exp of an int promotes to f32
    let out = run(&[i.clone(), h.clone()], |_, xs| xs[0].gt(&xs[1]));
    assert_eq!(out.dtype, DType::Bool);
    assert_close(&out, &[5], &[1., 1., 1., 0., 0.], 0.0);
    assert_eq!(run(&[i], |_, xs| xs[0].exp()).dtype, DType::F32);
}

#[test]
fn softmax_and_log_softmax_on_every_dim() {
    let shape = [3, 50, 78];
    let x = value(5, DType::F32, &shape);
    for dim in [0isize, 1, 2, -1, -3] {
        let axis = if dim < 0 { (dim + 3) as usize } else { dim as usize };
        let got = run(&[x.clone()], |_, xs| xs[0].softmax(dim));
        assert_close(&got, &shape, &along_axis(&shape, axis, &x.data, softmax_line), TOL);
        let got = run(&[x.clone()], |_, xs| xs[0].log_softmax(dim));
        assert_close(&got, &shape, &along_axis(&shape, axis, &x.data, log_softmax_line), TOL);
    }
    // the full 3x50x783 case on the last dim
    let shape = [3, 50, 783];
    let x = value(6, DType::F32, &shape);
    let got = run(&[x.clone()], |_, xs| xs[0].softmax(-1));
    assert_close(&got, &shape, &along_axis(&shape, 2, &x.data, softmax_line), TOL);
}

#[test]
fn softmax_of_half_types_computes_in_f32() {
    let x = value(7, DType::BF16, &[7, 13]);
    let tr = frontend::Tracer::new("t");
    let t = tr.input("x", DType::BF16, [7, 13]).unwrap();
    let y = t.softmax(-1).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let g = tr.finish(&[&y]).unwrap();
    let casts: Vec<DType> = g.nodes().filter_map(|(_, n)| if let Op::Cast { to } = n.op { Some(to) } else { None }).collect();
    assert_eq!(casts, vec![DType::F32, DType::BF16]);
    let out = ir::interp::run(&g, &[x.clone()]).unwrap();
    let want: Vec<f64> = along_axis(&[7, 13], 1, &x.data, softmax_line).into_iter().map(|v| DType::BF16.quantize(v)).collect();
    assert_close(&out[0], &[7, 13], &want, 0.0);
}

#[test]
fn reductions_with_keepdim() {
    let shape = [3, 50, 78];
    let x = value(8, DType::F32, &shape);
    for (dim, keep) in [(0isize, true), (1, false), (-1, true), (2, false)] {
        let axis = if dim < 0 { (dim + 3) as usize } else { dim as usize };
        let (mut s, sum) = reduce_axis(&shape, axis, &x.data, |l| l.iter().sum());
        if !keep {
            s.remove(axis);
        }
        assert_close(&run(&[x.clone()], |_, xs| xs[0].sum(dim, keep)), &s, &sum, TOL);
        let (_, mean) = reduce_axis(&shape, axis, &x.data, |l| l.iter().sum::<f64>() / l.len() as f64);
        assert_close(&run(&[x.clone()], |_, xs| xs[0].mean(dim, keep)), &s, &mean, TOL);
        let (_, mx) = reduce_axis(&shape, axis, &x.data, |l| l.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
        assert_close(&run(&[x.clone()], |_, xs| xs[0].amax(dim, keep)), &s, &mx, 0.0);
        assert_close(&run(&[x.clone()], |_, xs| xs[0].max(dim, keep)), &s, &mx, 0.0);
        let (_, mn) = reduce_axis(&shape, axis, &x.data, |l| l.iter().cloned().fold(f64::INFINITY, f64::min));
        assert_close(&run(&[x.clone()], |_, xs| xs[0].min(dim, keep)), &s, &mn, 0.0);
        for corr in [0.0, 1.0] {
            let (_, var) = reduce_axis(&shape, axis, &x.data, |l| {
                let m = l.iter().sum::<f64>() / l.len() as f64;
                l.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (l.len() as f64 - corr)
            });
            assert_close(&run(&[x.clone()], |_, xs| xs[0].var(dim, corr, keep)), &s, &var, TOL);
        }
    }
    // several dims at once: mean over [0, 2] keepdim, var over [-1, 0]
    let (s1, a) = reduce_axis(&shape, 2, &x.data, |l| l.iter().sum());
    let (s2, b) = reduce_axis(&s1, 0, &a, |l| l.iter().sum());
    let mean: Vec<f64> = b.iter().map(|v| v / (3.0 * 78.0)).collect();
    assert_close(&run(&[x.clone()], |_, xs| xs[0].mean([0, 2], true)), &s2, &mean, TOL);
    let var_want: Vec<f64> = (0..50)
        .map(|j| {
            let vals: Vec<f64> = (0..3).flat_map(|i| (0..78).map(move |k| (i, k))).map(|(i, k)| x.data[(i * 50 + j) * 78 + k]).collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (vals.len() as f64 - 1.0)
        })
        .collect();
    assert_close(&run(&[x.clone()], |_, xs| xs[0].var([-1, 0], 1.0, false)), &[50], &var_want, TOL);
    // sum of everything, hand-checked small case
    let small = ir::interp::Value::new(DType::F32, [2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
    assert_close(&run(&[small.clone()], |_, xs| xs[0].sum_all()), &[], &[21.0], 0.0);
    assert_close(&run(&[small.clone()], |_, xs| xs[0].mean(-1, false)), &[2], &[2.0, 5.0], 0.0);
    assert_close(&run(&[small.clone()], |_, xs| xs[0].var(1, 1.0, true)), &[2, 1], &[1.0, 1.0], 1e-15);
    // integer sums widen to i64
    let ints = ir::interp::Value::new(DType::I32, [2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
    let s = run(&[ints], |_, xs| xs[0].sum(0, false));
    assert_eq!(s.dtype, DType::I64);
    assert_close(&s, &[3], &[5., 7., 9.], 0.0);
}

fn layer_norm_ref(shape: &[usize], k: usize, x: &[f64], w: Option<&[f64]>, b: Option<&[f64]>, eps: f64) -> Vec<f64> {
    let n: usize = shape[shape.len() - k..].iter().product();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(n) {
        let m = row.iter().sum::<f64>() / n as f64;
        let v = row.iter().map(|a| (a - m).powi(2)).sum::<f64>() / n as f64;
        for (j, a) in row.iter().enumerate() {
            let mut y = (a - m) / (v + eps).sqrt();
            if let Some(w) = w {
                y *= w[j];
            }
            if let Some(b) = b {
                y += b[j];
            }
            out.push(y);
        }
    }
    out
}

#[test]
fn layer_norm_and_rms_norm() {
    let shape = [3, 50, 783];
    let x = value(9, DType::F32, &shape);
    let w = ir::interp::Value::new(DType::F32, [783], randn(10, 783).iter().map(|v| 1.0 + 0.3 * v).collect()).unwrap();
    let b = value(11, DType::F32, &[783]);
    let got = run(&[x.clone(), w.clone(), b.clone()], |_, xs| xs[0].layer_norm(&[783], Some(&xs[1]), Some(&xs[2]), 1e-5));
    assert_close(&got, &shape, &layer_norm_ref(&shape, 1, &x.data, Some(&w.data), Some(&b.data), 1e-5), 1e-9);
    let got = run(&[x.clone()], |_, xs| xs[0].layer_norm(&[783], None, None, 1e-6));
    assert_close(&got, &shape, &layer_norm_ref(&shape, 1, &x.data, None, None, 1e-6), 1e-9);
    // two normalized dims, weight [50, 783]
    let w2 = value(12, DType::F32, &[50, 783]);
    let b2 = value(13, DType::F32, &[50, 783]);
    let got = run(&[x.clone(), w2.clone(), b2.clone()], |_, xs| xs[0].layer_norm(&[50, 783], Some(&xs[1]), Some(&xs[2]), 1e-5));
    assert_close(&got, &shape, &layer_norm_ref(&shape, 2, &x.data, Some(&w2.data), Some(&b2.data), 1e-5), 1e-9);
    // hand values: [1, 2, 3] -> [-1.2247, 0, 1.2247]
    let h = ir::interp::Value::new(DType::F32, [1, 3], vec![1., 2., 3.]).unwrap();
    let got = run(&[h.clone()], |_, xs| xs[0].layer_norm(&[3], None, None, 0.0));
    assert_close(&got, &[1, 3], &[-1.224744871391589, 0.0, 1.224744871391589], 1e-12);
    // rms_norm with weight: hand value [3, 4] -> rms = sqrt(12.5)
    let got = run(&[ir::interp::Value::new(DType::F32, [2], vec![3., 4.]).unwrap()], |_, xs| xs[0].rms_norm(&[2], None, Some(0.0)));
    assert_close(&got, &[2], &[3.0 / 12.5f64.sqrt(), 4.0 / 12.5f64.sqrt()], 1e-12);
    let got = run(&[x.clone(), w.clone()], |_, xs| xs[0].rms_norm(&[783], Some(&xs[1]), Some(1e-6)));
    let mut want = Vec::new();
    for row in x.data.chunks(783) {
        let ms = row.iter().map(|a| a * a).sum::<f64>() / 783.0;
        want.extend(row.iter().zip(&w.data).map(|(a, w)| a / (ms + 1e-6).sqrt() * w));
    }
    assert_close(&got, &shape, &want, 1e-9);
}

#[test]
fn bf16_layer_norm_keeps_dtype() {
    let x = value(14, DType::BF16, &[7, 13]);
    let w = value(15, DType::BF16, &[13]);
    let got = run(&[x.clone(), w.clone()], |_, xs| xs[0].layer_norm(&[13], Some(&xs[1]), None, 1e-5));
    assert_eq!(got.dtype, DType::BF16);
    let want: Vec<f64> = layer_norm_ref(&[7, 13], 1, &x.data, Some(&w.data), None, 1e-5).into_iter().map(|v| DType::BF16.quantize(v)).collect();
    assert_close(&got, &[7, 13], &want, 0.0);
}

#[test]
fn tril_triu_masked_fill_where() {
    let shape = [3, 7, 13];
    let x = value(16, DType::F32, &shape);
    for diag in [-2i64, -1, 0, 1, 3] {
        let keep = |f: usize, lower: bool| {
            let (r, c) = (((f / 13) % 7) as i64, (f % 13) as i64);
            if lower { c - r <= diag } else { c - r >= diag }
        };
        let want: Vec<f64> = x.data.iter().enumerate().map(|(f, &v)| if keep(f, true) { v } else { 0.0 }).collect();
        assert_close(&run(&[x.clone()], |_, xs| xs[0].tril(diag)), &shape, &want, 0.0);
        let want: Vec<f64> = x.data.iter().enumerate().map(|(f, &v)| if keep(f, false) { v } else { 0.0 }).collect();
        assert_close(&run(&[x.clone()], |_, xs| xs[0].triu(diag)), &shape, &want, 0.0);
    }
    // masked_fill(~tril, -inf) on [3, 7, 13] with a broadcast [7, 13] mask
    let got = run(&[x.clone()], |tr, xs| {
        let mask = tr.ones(DType::Bool, [7, 13])?.tril(0)?.logical_not()?;
        xs[0].masked_fill(&mask, f64::NEG_INFINITY)
    });
    let want: Vec<f64> = x.data.iter().enumerate().map(|(f, &v)| if f % 13 <= (f / 13) % 7 { v } else { f64::NEG_INFINITY }).collect();
    assert_close(&got, &shape, &want, 0.0);
    // where with a tensor and a number, and the free function
    let got = run(&[x.clone()], |_, xs| frontend::where_(&xs[0].gt(0.0)?, &xs[0], 0.5));
    assert_close(&got, &shape, &map_ref(&x, |v| if v > 0.0 { v } else { 0.5 }), 0.0);
    // hand values for a 3x3 tril
    let ones = run(&[], |tr, _| tr.ones(DType::F32, [3, 3])?.tril(0));
    assert_close(&ones, &[3, 3], &[1., 0., 0., 1., 1., 0., 1., 1., 1.], 0.0);
    let ones = run(&[], |tr, _| tr.ones(DType::F32, [3, 3])?.triu(1));
    assert_close(&ones, &[3, 3], &[0., 1., 1., 0., 0., 1., 0., 0., 0.], 0.0);
    // logical ops and comparisons
    let got = run(&[x.clone()], |_, xs| xs[0].gt(-0.5)?.logical_and(&xs[0].lt(0.5)?)?.logical_or(&xs[0].eq(0.0)?));
    assert_close(&got, &shape, &map_ref(&x, |v| ((v > -0.5 && v < 0.5) || v == 0.0) as u8 as f64), 0.0);
    let got = run(&[x.clone()], |_, xs| xs[0].ge(0.0)?.logical_not()?.ne(xs[0].le(0.0)?.logical_not()?));
    assert_close(&got, &shape, &map_ref(&x, |v| ((v < 0.0) != (v > 0.0)) as u8 as f64), 0.0);
}

#[test]
fn linear_matmul_bmm() {
    // linear on a 3-D input: flattened to one GEMM
    let x = value(17, DType::F32, &[3, 5, 17]);
    let w = value(18, DType::F32, &[11, 17]);
    let b = value(19, DType::F32, &[11]);
    let got = run(&[x.clone(), w.clone(), b.clone()], |_, xs| xs[0].linear(&xs[1], Some(&xs[2])));
    let (_, wt) = permute_ref(&[11, 17], &w.data, &[1, 0]);
    let (_, mut want) = matmul_ref(&[15, 17], &x.data, &[17, 11], &wt);
    for (i, v) in want.iter_mut().enumerate() {
        *v += b.data[i % 11];
    }
    assert_close(&got, &[3, 5, 11], &want, TOL);
    // linear on 1-D and 2-D inputs, no bias
    let x1 = value(20, DType::F32, &[17]);
    let got = run(&[x1.clone(), w.clone()], |_, xs| xs[0].linear(&xs[1], None));
    assert_close(&got, &[11], &matmul_ref(&[1, 17], &x1.data, &[17, 11], &wt).1, TOL);
    // matmul with batch broadcasting: [2, 1, 5, 7] @ [3, 7, 4] -> [2, 3, 5, 4]
    let a = value(21, DType::F32, &[2, 1, 5, 7]);
    let c = value(22, DType::F32, &[3, 7, 4]);
    let got = run(&[a.clone(), c.clone()], |_, xs| xs[0].matmul(&xs[1]));
    let (s, want) = matmul_ref(&[2, 1, 5, 7], &a.data, &[3, 7, 4], &c.data);
    assert_eq!(s, vec![2, 3, 5, 4]);
    assert_close(&got, &s, &want, TOL);
    // vector cases
    let v7 = value(23, DType::F32, &[7]);
    let m = value(24, DType::F32, &[3, 7, 4]);
    let got = run(&[v7.clone(), m.clone()], |_, xs| xs[0].matmul(&xs[1])); // [7] @ [3,7,4] -> [3,4]
    assert_close(&got, &[3, 4], &matmul_ref(&[1, 7], &v7.data, &[3, 7, 4], &m.data).1, TOL);
    let got = run(&[a.clone(), v7.clone()], |_, xs| xs[0].matmul(&xs[1])); // [2,1,5,7] @ [7] -> [2,1,5]
    assert_close(&got, &[2, 1, 5], &matmul_ref(&[2, 1, 5, 7], &a.data, &[7, 1], &v7.data).1, TOL);
    let got = run(&[v7.clone(), v7.clone()], |_, xs| xs[0].matmul(&xs[1]));
    assert_close(&got, &[], &[v7.data.iter().map(|v| v * v).sum::<f64>()], TOL);
    // bmm
    let p = value(25, DType::F32, &[3, 5, 7]);
    let q = value(26, DType::F32, &[3, 7, 2]);
    let got = run(&[p.clone(), q.clone()], |_, xs| xs[0].bmm(&xs[1]));
    assert_close(&got, &[3, 5, 2], &matmul_ref(&[3, 5, 7], &p.data, &[3, 7, 2], &q.data).1, TOL);
    // hand value
    let e = ir::interp::Value::new(DType::F32, [2, 2], vec![1., 2., 3., 4.]).unwrap();
    assert_close(&run(&[e.clone(), e.clone()], |_, xs| xs[0].matmul(&xs[1])), &[2, 2], &[7., 10., 15., 22.], 0.0);
}

#[test]
fn movement_ops() {
    let shape = [3, 5, 7];
    let x = value(27, DType::F32, &shape);
    // transpose / permute with negative dims, reshape with -1, t()
    let got = run(&[x.clone()], |_, xs| xs[0].transpose(-1, 0));
    let (s, want) = permute_ref(&shape, &x.data, &[2, 1, 0]);
    assert_close(&got, &s, &want, 0.0);
    let got = run(&[x.clone()], |_, xs| xs[0].permute([1, -1, 0]));
    let (s, want) = permute_ref(&shape, &x.data, &[1, 2, 0]);
    assert_close(&got, &s, &want, 0.0);
    let got = run(&[x.clone()], |_, xs| xs[0].reshape([-1, 7])?.t());
    let (s, want) = permute_ref(&[15, 7], &x.data, &[1, 0]);
    assert_close(&got, &s, &want, 0.0);
    let got = run(&[x.clone()], |_, xs| xs[0].view([5, -1])?.flatten(0, -1)?.unsqueeze(-1)?.squeeze(1));
    assert_close(&got, &[105], &x.data, 0.0);
    // narrow / slice with step / split / chunk
    let got = run(&[x.clone()], |_, xs| xs[0].narrow(1, -3, 2));
    let want: Vec<f64> = (0..3).flat_map(|i| (2..4).flat_map(move |j| (0..7).map(move |k| (i, j, k)))).map(|(i, j, k)| x.data[(i * 5 + j) * 7 + k]).collect();
    assert_close(&got, &[3, 2, 7], &want, 0.0);
    let got = run(&[x.clone()], |_, xs| xs[0].slice(-1, 1, isize::MAX, 3));
    let want: Vec<f64> = x.data.chunks(7).flat_map(|r| [r[1], r[4]]).collect();
    assert_close(&got, &[3, 5, 2], &want, 0.0);
    let parts = run_many(&[x.clone()], |_, xs| xs[0].split(3, -1));
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[2].shape.dims(), &[3, 5, 1]);
    assert_close(&parts[2], &[3, 5, 1], &x.data.chunks(7).map(|r| r[6]).collect::<Vec<_>>(), 0.0);
    assert_eq!(run_many(&[x.clone()], |_, xs| xs[0].chunk(2, 1)).iter().map(|v| v.shape.dims()[1]).collect::<Vec<_>>(), vec![3, 2]);
    // cat of pieces gives the original back; cat promotes dtypes
    let got = run(&[x.clone()], |_, xs| {
        let p = xs[0].split(2, 1)?;
        cat(&p.iter().collect::<Vec<&Tensor>>(), -2)
    });
    assert_close(&got, &shape, &x.data, 0.0);
    let i = ir::interp::Value::new(DType::I32, [2, 7], vec![1.; 14]).unwrap();
    let got = run(&[x.clone(), i], |_, xs| cat(&[&xs[0].narrow(0, 0, 1)?.squeeze(0)?, &xs[1]], 0));
    assert_eq!(got.dtype, DType::F32);
    assert_eq!(got.shape.dims(), &[7, 7]);
    assert_eq!(&got.data[35..], &[1.0; 14]);
    // expand / broadcast_to
    let row = value(28, DType::F32, &[1, 7]);
    let got = run(&[row.clone()], |_, xs| xs[0].expand([2, -1, 7]));
    assert_close(&got, &[2, 1, 7], &[row.data.clone(), row.data.clone()].concat(), 0.0);
    let got = run(&[row.clone()], |_, xs| xs[0].broadcast_to([3, 7]));
    assert_close(&got, &[3, 7], &[row.data.clone(), row.data.clone(), row.data.clone()].concat(), 0.0);
    // stack, to_dtype, contiguous
    let got = run(&[row.clone()], |_, xs| frontend::stack(&[&xs[0], &xs[0].contiguous()?], 0)?.to_dtype(DType::BF16));
    assert_eq!((got.dtype, got.shape.dims()), (DType::BF16, &[2usize, 1, 7][..]));
}

#[test]
fn constructors() {
    let got = run(&[], |tr, _| tr.arange(2.0, 11.0, 3.0, DType::I64));
    assert_close(&got, &[3], &[2., 5., 8.], 0.0);
    let got = run(&[], |tr, _| tr.arange(0.0, 1.0, 0.25, DType::F32));
    assert_close(&got, &[4], &[0., 0.25, 0.5, 0.75], 0.0);
    let x = value(29, DType::BF16, &[2, 3]);
    let got = run(&[x.clone()], |_, xs| xs[0].ones_like()?.add(&xs[0].zeros_like()?)?.add(&xs[0].full_like(2.0)?));
    assert_eq!(got.dtype, DType::BF16);
    assert_close(&got, &[2, 3], &[3.0; 6], 0.0);
    // numbers become rank-0 full nodes, shared
    let tr = frontend::Tracer::new("t");
    let t = tr.input("x", DType::F32, [4]).unwrap();
    let y = ((&t * 2.0).unwrap() + 2.0).unwrap();
    let g = tr.finish(&[&y]).unwrap();
    let fulls: Vec<_> = g.nodes().filter(|(_, n)| matches!(n.op, Op::Full { .. })).collect();
    assert_eq!(fulls.len(), 1);
    assert_eq!(fulls[0].1.shape.rank(), 0);
}
