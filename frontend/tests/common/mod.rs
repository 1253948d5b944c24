//! Shared test helpers: seeded inputs, running traced functions through the interpreter,
//! and small f64 reference implementations written independently of the frontend.
#![allow(dead_code)]

use frontend::rng::Rng;
use frontend::{Result, Tensor, Tracer};
use ir::interp::Value;
use ir::DType;

/// Seeded N(0, 1) data.
pub fn randn(seed: u64, n: usize) -> Vec<f64> {
    Rng::new(seed).normal_vec(n, 0.0, 1.0)
}

/// A seeded random input value.
pub fn value(seed: u64, dtype: DType, shape: &[usize]) -> Value {
    let n = shape.iter().product();
    Value::new(dtype, shape.to_vec(), randn(seed, n)).unwrap()
}

/// Traces `f` over inputs of the given values' types, runs it, returns the single output.
pub fn run(inputs: &[Value], f: impl Fn(&Tracer, &[Tensor]) -> Result<Tensor>) -> Value {
    run_many(inputs, |tr, xs| Ok(vec![f(tr, xs)?])).pop().unwrap()
}

pub fn run_many(inputs: &[Value], f: impl Fn(&Tracer, &[Tensor]) -> Result<Vec<Tensor>>) -> Vec<Value> {
    let tr = Tracer::new("test");
    let xs: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| tr.input(format!("in{i}"), v.dtype, v.shape.clone()).unwrap())
        .collect();
    let outs = f(&tr, &xs).unwrap();
    let g = tr.finish(&outs.iter().collect::<Vec<_>>()).unwrap();
    ir::verify::verify(&g).unwrap();
    // the text format round-trips every traced graph
    assert_eq!(ir::text::parse(&g.to_string()).unwrap(), g);
    ir::interp::run(&g, inputs).unwrap()
}

/// Asserts `got` matches `want` elementwise within `tol` (relative to max(1, |want|)).
#[track_caller]
pub fn assert_close(got: &Value, want_shape: &[usize], want: &[f64], tol: f64) {
    assert_eq!(got.shape.dims(), want_shape, "shape");
    assert_eq!(got.data.len(), want.len());
    for (i, (&a, &b)) in got.data.iter().zip(want).enumerate() {
        let ok = if b.is_infinite() || b.is_nan() {
            a == b || (a.is_nan() && b.is_nan())
        } else {
            (a - b).abs() <= tol * b.abs().max(1.0)
        };
        assert!(ok, "element {i}: got {a}, want {b} (tol {tol})");
    }
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Applies `f` to every 1-D line along `axis` (in place).
pub fn along_axis(shape: &[usize], axis: usize, data: &[f64], mut f: impl FnMut(&mut [f64])) -> Vec<f64> {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut out = data.to_vec();
    let mut line = vec![0.0; n];
    for o in 0..outer {
        for i in 0..inner {
            for j in 0..n {
                line[j] = data[(o * n + j) * inner + i];
            }
            f(&mut line);
            for j in 0..n {
                out[(o * n + j) * inner + i] = line[j];
            }
        }
    }
    out
}

/// Reduces along `axis` with `f(line) -> value`; result shape has `axis` removed (or kept as 1).
pub fn reduce_axis(shape: &[usize], axis: usize, data: &[f64], f: impl Fn(&[f64]) -> f64) -> (Vec<usize>, Vec<f64>) {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut out = Vec::with_capacity(outer * inner);
    let mut line = vec![0.0; n];
    for o in 0..outer {
        for i in 0..inner {
            for j in 0..n {
                line[j] = data[(o * n + j) * inner + i];
            }
            out.push(f(&line));
        }
    }
    let mut s = shape.to_vec();
    s[axis] = 1;
    (s, out)
}

pub fn softmax_line(l: &mut [f64]) {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = l.iter().map(|x| (x - m).exp()).sum();
    for x in l.iter_mut() {
        *x = (*x - m).exp() / s;
    }
}

pub fn log_softmax_line(l: &mut [f64]) {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = l.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
    for x in l.iter_mut() {
        *x -= lse;
    }
}

pub fn erf(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 is too coarse; use the series/continued fraction via libm-free
    // high-precision approximation: erf(x) = 1 - erfc(x), erfc by W. J. Cody's rational fit
    // is long, so integrate numerically (Simpson) instead: exact to ~1e-13 for |x| < 6.
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs().min(6.0);
    let n = 2000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for i in 1..n {
        s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    sign * s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
}

/// Plain batched matmul reference: a [.., m, k] @ b [.., k, n] with batch broadcasting.
pub fn matmul_ref(a_shape: &[usize], a: &[f64], b_shape: &[usize], b: &[f64]) -> (Vec<usize>, Vec<f64>) {
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let (m, k, n) = (a_shape[ra - 2], a_shape[ra - 1], b_shape[rb - 1]);
    assert_eq!(k, b_shape[rb - 2]);
    let ab = &a_shape[..ra - 2];
    let bb = &b_shape[..rb - 2];
    let r = ab.len().max(bb.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= r { s[i + s.len() - r] } else { 1 };
    let batch: Vec<usize> = (0..r).map(|i| dim(ab, i).max(dim(bb, i))).collect();
    let nb: usize = batch.iter().product();
    let mut out = vec![0.0; nb * m * n];
    for bi in 0..nb {
        // unravel bi into batch index, then map into a and b batch offsets
        let mut rem = bi;
        let mut idx = vec![0; r];
        for d in (0..r).rev() {
            idx[d] = rem % batch[d];
            rem /= batch[d];
        }
        let off = |s: &[usize]| {
            let mut o = 0;
            for (d, &i) in idx.iter().enumerate() {
                if d + s.len() >= r {
                    let sd = s[d + s.len() - r];
                    o = o * sd + if sd == 1 { 0 } else { i };
                }
            }
            o
        };
        let (ao, bo) = (off(ab) * m * k, off(bb) * k * n);
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for p in 0..k {
                    acc += a[ao + i * k + p] * b[bo + p * n + j];
                }
                out[bi * m * n + i * n + j] = acc;
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    (shape, out)
}

/// Permutes a row-major array.
pub fn permute_ref(shape: &[usize], data: &[f64], perm: &[usize]) -> (Vec<usize>, Vec<f64>) {
    let st = strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let n: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0; shape.len()];
    for _ in 0..n {
        out.push(data[idx.iter().zip(perm).map(|(&i, &p)| i * st[p]).sum::<usize>()]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    (out_shape, out)
}
