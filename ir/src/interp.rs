//! The reference interpreter: runs any graph on the CPU in f64. It is the oracle for every
//! numeric test in Kiln, so it is written for obviousness, not speed.
//!
//! Values are stored as f64. Inputs are rounded to their dtype on entry; integer and bool
//! results are rounded after every op (integer semantics); float results stay in f64 until a
//! `cast` rounds them, so the reference is at least as accurate as any kernel.

use crate::{BinaryOp, CmpOp, DType, Graph, IrError, Op, ReduceOp, Result, Shape, UnaryOp};

/// A host tensor for the interpreter: dtype, shape and row-major f64 data.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub dtype: DType,
    pub shape: Shape,
    pub data: Vec<f64>,
}

/// Refuse to materialise anything larger (a bad shape should be an error, not an abort).
pub const MAX_ELEMENTS: usize = 1 << 28;

impl Value {
    /// A value from data; rounds each element to `dtype`.
    pub fn new(dtype: DType, shape: impl Into<Shape>, data: Vec<f64>) -> Result<Value> {
        let shape = shape.into();
        if data.len() != shape.numel() {
            return Err(IrError::Interp(format!("{} elements given for shape {shape}", data.len())));
        }
        Ok(Value { dtype, shape, data: data.into_iter().map(|x| dtype.quantize(x)).collect() })
    }

    /// The largest relative difference `|a-b| / max(1, |b|)` against a reference; `inf` when
    /// shapes differ or where one side is NaN and the other is not.
    pub fn max_rel_diff(&self, reference: &Value) -> f64 {
        self.max_diff_scaled(reference, 1.0)
    }

    /// The largest `|a-b| / max(floor, |b|)` against a reference (`inf` as in
    /// [`Value::max_rel_diff`], which is this with `floor = 1`).
    pub fn max_diff_scaled(&self, reference: &Value, floor: f64) -> f64 {
        if self.shape != reference.shape {
            return f64::INFINITY;
        }
        self.data
            .iter()
            .zip(&reference.data)
            .map(|(&a, &b)| {
                if a.is_nan() || b.is_nan() {
                    if a.is_nan() && b.is_nan() { 0.0 } else { f64::INFINITY }
                } else if a == b {
                    0.0
                } else {
                    (a - b).abs() / b.abs().max(floor)
                }
            })
            .fold(0.0, f64::max)
    }
}

/// Runs `g` on `inputs` (in the order of `g.inputs()`), returning its outputs. Inputs are
/// rounded to their dtype first.
pub fn run(g: &Graph, inputs: &[Value]) -> Result<Vec<Value>> {
    run_with(g, inputs, true)
}

/// Like [`run`], but takes the inputs' f64 values as they are: the interpreter is an ideal
/// machine with no rounding at buffer boundaries, so a kernel graph (and a fused body)
/// interpreted piecewise gives exactly what the whole graph gives.
pub fn run_unrounded(g: &Graph, inputs: &[Value]) -> Result<Vec<Value>> {
    run_with(g, inputs, false)
}

fn run_with(g: &Graph, inputs: &[Value], round_inputs: bool) -> Result<Vec<Value>> {
    if inputs.len() != g.inputs().len() {
        return Err(IrError::Interp(format!("graph @{} takes {} inputs, {} given", g.name(), g.inputs().len(), inputs.len())));
    }
    let mut vals: Vec<Option<Value>> = vec![None; g.len()];
    for (&id, v) in g.inputs().iter().zip(inputs) {
        let n = g.node(id);
        if v.dtype != n.dtype || v.shape != n.shape {
            return Err(IrError::Interp(format!(
                "input {:?} expects {}{}, got {}{}",
                g.input_name(id).unwrap_or("?"), n.dtype, n.shape, v.dtype, v.shape
            )));
        }
        let data = if round_inputs { v.data.iter().map(|&x| v.dtype.quantize(x)).collect() } else { v.data.clone() };
        vals[id.index()] = Some(Value { dtype: v.dtype, shape: v.shape.clone(), data });
    }
    let live = g.live();
    for (id, n) in g.nodes() {
        if vals[id.index()].is_some() || !live[id.index()] {
            continue;
        }
        if n.shape.numel() > MAX_ELEMENTS {
            return Err(IrError::Interp(format!("node {id} has {} elements, more than the interpreter's limit", n.shape.numel())));
        }
        let args: Vec<&Value> = n.inputs.iter().map(|i| vals[i.index()].as_ref().expect("operand computed")).collect();
        let mut data = eval(&n.op, n.dtype, &n.shape, &args)?;
        if !n.dtype.is_float() {
            for x in &mut data {
                *x = n.dtype.quantize(*x);
            }
        }
        debug_assert_eq!(data.len(), n.shape.numel(), "{} produced the wrong element count", n.op.name());
        vals[id.index()] = Some(Value { dtype: n.dtype, shape: n.shape.clone(), data });
    }
    Ok(g.outputs().iter().map(|o| vals[o.index()].clone().expect("output computed")).collect())
}

/// Calls `f(multi_index, flat_index)` for every element of `shape` in row-major order.
fn for_each_index(shape: &Shape, mut f: impl FnMut(&[usize], usize)) {
    let n = shape.numel();
    let mut idx = vec![0usize; shape.rank()];
    for flat in 0..n {
        f(&idx, flat);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape.dims()[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Offset of a multi-index under strides.
fn dot(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter().zip(strides).map(|(i, s)| i * s).sum()
}

/// Strides that read `from` broadcast to `to` (0 on broadcast dims).
fn broadcast_strides(from: &Shape, to: &Shape) -> Vec<usize> {
    let off = to.rank() - from.rank();
    let cs = from.strides();
    (0..to.rank())
        .map(|i| if i < off || from.dims()[i - off] == 1 { 0 } else { cs[i - off] })
        .collect()
}

/// Gathers `v` broadcast to `shape`.
fn broadcast(v: &Value, shape: &Shape) -> Vec<f64> {
    if v.shape == *shape {
        return v.data.clone();
    }
    let st = broadcast_strides(&v.shape, shape);
    let mut out = Vec::with_capacity(shape.numel());
    for_each_index(shape, |idx, _| out.push(v.data[dot(idx, &st)]));
    out
}

/// The interpreter's scalar semantics of a unary op (constant folding uses it too).
pub fn eval_unary(u: UnaryOp, x: f64) -> f64 {
    match u {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Erf => libm::erf(x),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Not => (x == 0.0) as u8 as f64,
    }
}

/// PyTorch's maximum/minimum: NaN propagates.
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}
fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) }
}

/// The interpreter's scalar semantics of a binary op on operands of `dtype`.
pub fn eval_binary(b: BinaryOp, dtype: DType, x: f64, y: f64) -> f64 {
    match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div if dtype.is_int() => {
            if y == 0.0 { 0.0 } else { (x / y).trunc() }
        }
        BinaryOp::Div => x / y,
        BinaryOp::Max => nan_max(x, y),
        BinaryOp::Min => nan_min(x, y),
        BinaryOp::Pow => x.powf(y),
        BinaryOp::And => ((x != 0.0) && (y != 0.0)) as u8 as f64,
        BinaryOp::Or => ((x != 0.0) || (y != 0.0)) as u8 as f64,
    }
}

/// The interpreter's scalar semantics of a comparison (1.0 true, 0.0 false).
pub fn eval_compare(c: CmpOp, x: f64, y: f64) -> f64 {
    (match c {
        CmpOp::Eq => x == y,
        CmpOp::Ne => x != y,
        CmpOp::Lt => x < y,
        CmpOp::Le => x <= y,
        CmpOp::Gt => x > y,
        CmpOp::Ge => x >= y,
    }) as u8 as f64
}

fn eval(op: &Op, dtype: DType, shape: &Shape, a: &[&Value]) -> Result<Vec<f64>> {
    let n = shape.numel();
    Ok(match op {
        Op::Input { name } => return Err(IrError::Interp(format!("input {name:?} was not bound"))),
        Op::Full { value } => vec![value.0; n],
        Op::Iota { axis } => {
            let mut out = Vec::with_capacity(n);
            for_each_index(shape, |idx, _| out.push(idx[*axis] as f64));
            out
        }
        Op::Unary(u) => a[0].data.iter().map(|&x| eval_unary(*u, x)).collect(),
        Op::Binary(b) => {
            let (x, y) = (broadcast(a[0], shape), broadcast(a[1], shape));
            let in_dtype = a[0].dtype;
            x.iter().zip(&y).map(|(&x, &y)| eval_binary(*b, in_dtype, x, y)).collect()
        }
        Op::Compare(c) => {
            let (x, y) = (broadcast(a[0], shape), broadcast(a[1], shape));
            x.iter().zip(&y).map(|(&x, &y)| eval_compare(*c, x, y)).collect()
        }
        Op::Where => {
            let (c, x, y) = (broadcast(a[0], shape), broadcast(a[1], shape), broadcast(a[2], shape));
            (0..n).map(|i| if c[i] != 0.0 { x[i] } else { y[i] }).collect()
        }
        Op::Cast { to } => a[0].data.iter().map(|&x| to.quantize(x)).collect(),
        Op::Reduce { op, axes, .. } => {
            let init = match op {
                ReduceOp::Sum => 0.0,
                ReduceOp::Max => f64::NEG_INFINITY,
            };
            let mut out = vec![init; n];
            // Output strides seen from the input's index space: 0 on reduced axes.
            let kept = Shape::new(a[0].shape.dims().iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }));
            let ks = kept.strides();
            let st: Vec<usize> = (0..a[0].shape.rank()).map(|i| if axes.contains(&i) { 0 } else { ks[i] }).collect();
            let src = &a[0].data;
            for_each_index(&a[0].shape, |idx, flat| {
                let o = &mut out[dot(idx, &st)];
                *o = match op {
                    ReduceOp::Sum => *o + src[flat],
                    ReduceOp::Max => nan_max(*o, src[flat]),
                };
            });
            out
        }
        Op::Reshape { .. } => a[0].data.clone(),
        Op::Permute { perm } => {
            let s = a[0].shape.strides();
            let st: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
            let mut out = Vec::with_capacity(n);
            for_each_index(shape, |idx, _| out.push(a[0].data[dot(idx, &st)]));
            out
        }
        Op::Expand { .. } => broadcast(a[0], shape),
        Op::Slice { axis, start, step, .. } => {
            let s = a[0].shape.strides();
            let mut st = s.clone();
            st[*axis] *= step;
            let base = start * s[*axis];
            let mut out = Vec::with_capacity(n);
            for_each_index(shape, |idx, _| out.push(a[0].data[base + dot(idx, &st)]));
            out
        }
        Op::Concat { axis } => {
            let mut out = vec![0.0; n];
            let os = shape.strides();
            let mut offset = 0;
            for v in a {
                for_each_index(&v.shape, |idx, flat| {
                    out[dot(idx, &os) + offset * os[*axis]] = v.data[flat];
                });
                offset += v.shape.dims()[*axis];
            }
            out
        }
        Op::Pad { pads, value } => {
            let s = a[0].shape.strides();
            let mut out = Vec::with_capacity(n);
            for_each_index(shape, |idx, _| {
                let mut off = 0;
                let mut inside = true;
                for (d, &i) in idx.iter().enumerate() {
                    let (before, _) = pads[d];
                    if i < before || i - before >= a[0].shape.dims()[d] {
                        inside = false;
                        break;
                    }
                    off += (i - before) * s[d];
                }
                out.push(if inside { a[0].data[off] } else { value.0 });
            });
            out
        }
        Op::MatMul => matmul(a[0], a[1], shape),
        Op::FlashAttention { causal, scale } => attention(a[0], a[1], a[2], *causal, scale.0, shape),
        Op::Fused(body) => {
            let ins: Vec<Value> = a.iter().map(|v| (*v).clone()).collect();
            let mut outs = run_unrounded(&body.0, &ins)?;
            let v = outs.pop().ok_or_else(|| IrError::Interp("fused body has no output".into()))?;
            if v.dtype != dtype || v.shape != *shape {
                return Err(IrError::Interp("fused body output type differs from the node".into()));
            }
            v.data
        }
    })
}

/// Batched matmul with broadcast batch dims; i-k-j loop order.
fn matmul(a: &Value, b: &Value, out_shape: &Shape) -> Vec<f64> {
    let r = out_shape.rank();
    let (m, k, nn) = (a.shape.dims()[a.shape.rank() - 2], a.shape.dims()[a.shape.rank() - 1], b.shape.dims()[b.shape.rank() - 1]);
    let batch = Shape::from(&out_shape.dims()[..r - 2]);
    let a_batch = Shape::from(&a.shape.dims()[..a.shape.rank() - 2]);
    let b_batch = Shape::from(&b.shape.dims()[..b.shape.rank() - 2]);
    let sa = broadcast_strides(&a_batch, &batch);
    let sb = broadcast_strides(&b_batch, &batch);
    let mut out = vec![0.0; out_shape.numel()];
    for_each_index(&batch, |idx, bflat| {
        let ao = dot(idx, &sa) * m * k;
        let bo = dot(idx, &sb) * k * nn;
        let oo = bflat * m * nn;
        for i in 0..m {
            let row = &mut out[oo + i * nn..oo + (i + 1) * nn];
            for p in 0..k {
                let x = a.data[ao + i * k + p];
                let brow = &b.data[bo + p * nn..bo + (p + 1) * nn];
                for (o, &y) in row.iter_mut().zip(brow) {
                    *o += x * y;
                }
            }
        }
    });
    out
}

/// softmax(q k^T * scale [causal]) v over the last two dims; the causal mask keeps key
/// `j <= i + (s_k - s_q)`. A row with every key masked gives NaN, as PyTorch does.
fn attention(q: &Value, k: &Value, v: &Value, causal: bool, scale: f64, out_shape: &Shape) -> Vec<f64> {
    let r = q.shape.rank();
    let (sq, d) = (q.shape.dims()[r - 2], q.shape.dims()[r - 1]);
    let sk = k.shape.dims()[r - 2];
    let dv = v.shape.dims()[r - 1];
    let batches: usize = q.shape.dims()[..r - 2].iter().product();
    let mut out = vec![0.0; out_shape.numel()];
    let mut s = vec![0.0; sk];
    for bi in 0..batches {
        let (qo, ko, vo, oo) = (bi * sq * d, bi * sk * d, bi * sk * dv, bi * sq * dv);
        for i in 0..sq {
            let mut mx = f64::NEG_INFINITY;
            for (j, sj) in s.iter_mut().enumerate() {
                let masked = causal && j + sq > i + sk;
                *sj = if masked {
                    f64::NEG_INFINITY
                } else {
                    (0..d).map(|t| q.data[qo + i * d + t] * k.data[ko + j * d + t]).sum::<f64>() * scale
                };
                mx = mx.max(*sj);
            }
            let mut denom = 0.0;
            for sj in s.iter_mut() {
                *sj = (*sj - mx).exp();
                denom += *sj;
            }
            for t in 0..dv {
                let acc: f64 = s.iter().enumerate().map(|(j, &p)| p * v.data[vo + j * dv + t]).sum();
                out[oo + i * dv + t] = acc / denom;
            }
        }
    }
    out
}
