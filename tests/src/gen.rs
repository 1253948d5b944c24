#![allow(clippy::result_large_err)] // ir::IrError and kiln::Error are large; these are test helpers
//! A random generator of valid IR graphs, in the spirit of NNSmith (ASPLOS'23).
//!
//! Every graph it makes verifies, and its reference values stay well conditioned so that a
//! difference from the interpreter beyond the dtype's tolerance is a bug, not rounding:
//!
//! - each node carries a magnitude bound; `exp`, `pow`, products and sums are only built
//!   where the bound keeps them far from overflow (f16 included);
//! - `log`, `sqrt`, `rsqrt`, `recip` and float `div` see `|x| + 0.5`, integer `div` sees
//!   `|y| + 1` (never zero);
//! - ops that are discontinuous in their operand (`floor`, comparisons, casts to integers or
//!   bool) only read *exact* nodes: inputs, constants, movement of exact nodes and integer
//!   arithmetic, which every backend computes bit for bit like the interpreter.
//!
//! Besides single ops the generator writes attention by hand with `frontend` ops (q @ k^T *
//! scale, causal masks in every nanoGPT spelling, softmax, @ v) so the optimizer's attention
//! discovery and the flash-attention kernels are exercised.

use frontend::models::{causal_attention, AttentionSpelling};
use frontend::Tracer;
use ir::{BinaryOp, CmpOp, DType, Graph, NodeId, Op, ReduceOp, Scalar, Shape, UnaryOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Odd and small dims the generator draws from (1 to exercise broadcasting).
pub const DIMS: [usize; 9] = [1, 2, 3, 4, 5, 7, 8, 13, 33];

/// Largest element count of any generated node.
const MAX_NUMEL: usize = 4096;

/// Knobs of the generator.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Ops per component (at most; the last few may be skipped when nothing applies).
    pub max_ops: usize,
    /// Probability that a component is a hand-written attention block.
    pub attention: f64,
}

impl Default for GenConfig {
    fn default() -> GenConfig {
        GenConfig { max_ops: 10, attention: 0.08 }
    }
}

/// Per-node facts the generator keeps beside the graph.
#[derive(Clone, Copy, Debug)]
struct Info {
    /// An upper bound of `|value|`.
    bound: f64,
    /// Every backend computes this node bit for bit like the interpreter.
    exact: bool,
}

struct Gen {
    rng: StdRng,
    g: Graph,
    info: Vec<Info>,
    inputs: usize,
}

/// Generates one random valid graph from a seed (deterministic).
pub fn generate(seed: u64, cfg: &GenConfig) -> Graph {
    let mut rng = StdRng::seed_from_u64(seed);
    if rng.random_bool(cfg.attention) {
        if let Some(g) = attention(&mut rng, seed) {
            return g;
        }
    }
    let mut gen = Gen { rng, g: Graph::new(format!("fuzz{seed}")), info: Vec::new(), inputs: 0 };
    gen.component(cfg);
    gen.g
}

fn pick<T: Copy>(rng: &mut StdRng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

impl Gen {
    fn r(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    fn node(&self, id: NodeId) -> (DType, Shape) {
        let n = self.g.node(id);
        (n.dtype, n.shape.clone())
    }

    fn info(&self, id: NodeId) -> Info {
        self.info[id.index()]
    }

    fn track(&mut self, id: NodeId, bound: f64, exact: bool) -> NodeId {
        debug_assert_eq!(id.index(), self.info.len());
        self.info.push(Info { bound, exact });
        id
    }

    fn input(&mut self, dtype: DType, shape: Shape) -> NodeId {
        let name = format!("x{}", self.inputs);
        self.inputs += 1;
        let id = self.g.input(name, dtype, shape).expect("fresh input name");
        self.track(id, input_bound(dtype), true)
    }

    fn full(&mut self, value: f64, dtype: DType, shape: Shape) -> NodeId {
        let id = self.g.full(value, dtype, shape);
        let v = dtype.quantize(value).abs();
        self.track(id, v.max(1e-30), true)
    }

    /// Adds an op (it must type-check: the generator only builds valid graphs).
    fn op(&mut self, op: Op, ins: &[NodeId], bound: f64, exact: bool) -> NodeId {
        let id = self.g.add(op.clone(), ins).unwrap_or_else(|e| panic!("generator built an invalid {}: {e}", op.name()));
        self.track(id, bound, exact)
    }

    fn random_shape(&mut self) -> Shape {
        let rank = pick(self.r(), &[0, 1, 1, 2, 2, 2, 3, 3, 4]);
        loop {
            let dims: Vec<usize> = (0..rank).map(|_| pick(&mut self.rng, &DIMS)).collect();
            if dims.iter().product::<usize>() <= 1024 {
                return Shape::new(dims);
            }
        }
    }

    /// A shape that broadcasts to `s`: some dims replaced by 1, some leading dims dropped.
    fn broadcastable(&mut self, s: &Shape) -> Shape {
        let drop = if s.rank() > 0 && self.r().random_bool(0.3) { self.r().random_range(0..=s.rank()) } else { 0 };
        let dims = s.dims()[drop..].iter().map(|&d| if self.rng.random_bool(0.25) { 1 } else { d });
        Shape::new(dims.collect::<Vec<_>>())
    }

    fn component(&mut self, cfg: &GenConfig) {
        let dtype = pick(self.r(), &[DType::F32, DType::F32, DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64]);
        let shape = self.random_shape();
        let first = self.input(dtype, shape.clone());
        let mut pool = vec![first];
        for _ in 0..self.rng.random_range(0..3) {
            let s = self.broadcastable(&shape);
            pool.push(self.input(dtype, s));
        }
        let n_ops = self.rng.random_range(1..=cfg.max_ops);
        let mut made = Vec::new();
        let mut tries = 0;
        while made.len() < n_ops && tries < n_ops * 8 {
            tries += 1;
            // Prefer recent values so graphs grow deep, not only wide.
            let i = if self.rng.random_bool(0.6) { pool.len() - 1 } else { self.rng.random_range(0..pool.len()) };
            let x = pool[i];
            if let Some(y) = self.step(x, &pool) {
                pool.push(y);
                made.push(y);
            }
        }
        let last = *made.last().unwrap_or(&first);
        let mut outs = vec![last];
        for _ in 0..self.rng.random_range(0..3) {
            let o = pick(self.r(), &pool);
            if !outs.contains(&o) && (!matches!(self.g.node(o).op, Op::Input { .. }) || self.rng.random_bool(0.1)) {
                outs.push(o);
            }
        }
        self.g.set_outputs(outs);
    }

    /// One random op reading `x` (and maybe other pool values); `None` when the drawn op
    /// does not apply to `x`.
    fn step(&mut self, x: NodeId, pool: &[NodeId]) -> Option<NodeId> {
        let (d, s) = self.node(x);
        let k = self.rng.random_range(0..100);
        match k {
            0..=17 => self.unary(x),
            18..=37 => self.binary(x, pool),
            38..=43 => self.compare_where(x, pool),
            44..=49 => self.cast(x),
            50..=58 => self.reduce(x),
            59..=63 => self.reshape(x),
            64..=68 if s.rank() >= 2 => {
                let mut perm: Vec<usize> = (0..s.rank()).collect();
                while perm.iter().enumerate().all(|(i, &p)| i == p) {
                    rand::seq::SliceRandom::shuffle(&mut perm[..], &mut self.rng);
                }
                let i = self.info(x);
                Some(self.op(Op::Permute { perm }, &[x], i.bound, i.exact))
            }
            69..=72 => self.expand(x),
            73..=77 => self.slice(x),
            78..=81 => self.concat(x, pool),
            82..=85 => {
                if s.rank() == 0 {
                    return None;
                }
                let pads: Vec<(usize, usize)> = (0..s.rank()).map(|_| (self.rng.random_range(0..3), self.rng.random_range(0..3))).collect();
                let value = pick(self.r(), &[0.0, 1.0, -1.5, 2.0]);
                let i = self.info(x);
                let out: usize = s.dims().iter().zip(&pads).map(|(n, (b, a))| n + b + a).product();
                if out > MAX_NUMEL {
                    return None;
                }
                Some(self.op(Op::Pad { pads, value: Scalar(d.quantize(value)) }, &[x], i.bound.max(2.0), i.exact))
            }
            86..=93 => self.matmul(x),
            94..=96 => {
                if d == DType::Bool || s.rank() == 0 {
                    return None;
                }
                let axis = self.rng.random_range(0..s.rank());
                let n = s.dims()[axis] as f64;
                let io = self.g.iota(axis, d, s.clone()).expect("iota on a numeric rank>0 shape");
                let io = self.track(io, n, true);
                let i = self.info(x);
                let op = if d.is_float() { BinaryOp::Mul } else { BinaryOp::Add };
                let bound = if op == BinaryOp::Mul { i.bound * n } else { i.bound + n };
                if d.is_float() && bound > 1e4 {
                    return None;
                }
                Some(self.op(Op::Binary(op), &[x, io], bound, i.exact && !d.is_float()))
            }
            _ => {
                // A full tensor of x's shape combined with x (constant folding fodder).
                if d == DType::Bool {
                    return None;
                }
                let v = pick(self.r(), &[0.5, 1.0, 2.0, -3.0]);
                let f = self.full(v, d, s);
                let i = self.info(x);
                Some(self.op(Op::Binary(BinaryOp::Add), &[x, f], i.bound + 3.0, i.exact && !d.is_float()))
            }
        }
    }

    /// `|x| + c` (a positive, well-conditioned operand for log, sqrt, recip, div).
    fn positive(&mut self, x: NodeId, c: f64) -> NodeId {
        let (d, _) = self.node(x);
        let i = self.info(x);
        let a = self.op(Op::Unary(UnaryOp::Abs), &[x], i.bound, i.exact);
        let c = self.full(c, d, Shape::scalar());
        self.op(Op::Binary(BinaryOp::Add), &[a, c], i.bound + 1.0, i.exact && !d.is_float())
    }

    fn unary(&mut self, x: NodeId) -> Option<NodeId> {
        let (d, _) = self.node(x);
        let i = self.info(x);
        if d == DType::Bool {
            return Some(self.op(Op::Unary(UnaryOp::Not), &[x], 1.0, i.exact));
        }
        let u = pick(self.r(), UnaryOp::ALL);
        match u {
            UnaryOp::Not => None,
            UnaryOp::Neg | UnaryOp::Abs => Some(self.op(Op::Unary(u), &[x], i.bound, i.exact)),
            _ if !d.is_float() => None,
            UnaryOp::Exp => {
                let arg = if i.bound <= 4.0 { x } else { self.op(Op::Unary(UnaryOp::Tanh), &[x], 1.0, false) };
                let b = self.info(arg).bound.exp();
                Some(self.op(Op::Unary(u), &[arg], b, false))
            }
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Recip => {
                let p = self.positive(x, 0.5);
                let b = i.bound + 0.5;
                let bound = match u {
                    UnaryOp::Log => b.ln().abs().max(0.7),
                    UnaryOp::Sqrt => b.sqrt(),
                    UnaryOp::Rsqrt => 1.5,
                    _ => 2.0,
                };
                Some(self.op(Op::Unary(u), &[p], bound, false))
            }
            UnaryOp::Tanh | UnaryOp::Erf => Some(self.op(Op::Unary(u), &[x], 1.0, false)),
            UnaryOp::Sin | UnaryOp::Cos if i.bound <= 100.0 => Some(self.op(Op::Unary(u), &[x], 1.0, false)),
            UnaryOp::Floor if i.exact => Some(self.op(Op::Unary(u), &[x], i.bound + 1.0, true)),
            _ => None,
        }
    }

    /// A second operand for a binary op on `x`: a pool value of the same dtype whose shape
    /// broadcasts with x's, a fresh input of a broadcastable shape, or a scalar constant.
    fn partner(&mut self, x: NodeId, pool: &[NodeId]) -> NodeId {
        let (d, s) = self.node(x);
        let friends: Vec<NodeId> = pool
            .iter()
            .copied()
            .filter(|&p| {
                let (pd, ps) = self.node(p);
                pd == d && Shape::broadcast("fuzz", &s, &ps).is_ok_and(|b| b.numel() <= MAX_NUMEL)
            })
            .collect();
        match self.rng.random_range(0..10) {
            0..=4 if !friends.is_empty() => pick(self.r(), &friends),
            0..=7 => {
                let bs = self.broadcastable(&s);
                self.input(d, bs)
            }
            _ => {
                let v = match d {
                    DType::Bool => pick(self.r(), &[0.0, 1.0]),
                    d if d.is_int() => pick(self.r(), &[1.0, 2.0, -3.0]),
                    _ => pick(self.r(), &[0.5, 1.5, -2.0, 0.1]),
                };
                self.full(v, d, Shape::scalar())
            }
        }
    }

    fn binary(&mut self, x: NodeId, pool: &[NodeId]) -> Option<NodeId> {
        let (d, _) = self.node(x);
        let y = self.partner(x, pool);
        if self.rng.random_bool(0.5) && !matches!(self.g.node(y).op, Op::Full { .. }) {
            // Operand order matters for broadcasting and non-commutative ops.
            return self.binary_on(y, x);
        }
        if d == DType::Bool {
            let b = pick(self.r(), &[BinaryOp::And, BinaryOp::Or]);
            let e = self.info(x).exact && self.info(y).exact;
            return Some(self.op(Op::Binary(b), &[x, y], 1.0, e));
        }
        self.binary_on(x, y)
    }

    fn binary_on(&mut self, x: NodeId, y: NodeId) -> Option<NodeId> {
        let (d, _) = self.node(x);
        let (ix, iy) = (self.info(x), self.info(y));
        if d == DType::Bool {
            let b = pick(self.r(), &[BinaryOp::And, BinaryOp::Or]);
            return Some(self.op(Op::Binary(b), &[x, y], 1.0, ix.exact && iy.exact));
        }
        let int = d.is_int();
        let exact = int && ix.exact && iy.exact;
        let limit = if int { 1e6 } else { 1e4 };
        let b = pick(self.r(), &[BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min, BinaryOp::Pow]);
        match b {
            BinaryOp::Add | BinaryOp::Sub if ix.bound + iy.bound <= limit => Some(self.op(Op::Binary(b), &[x, y], ix.bound + iy.bound, exact)),
            BinaryOp::Mul if ix.bound * iy.bound <= limit => Some(self.op(Op::Binary(b), &[x, y], ix.bound * iy.bound, exact)),
            BinaryOp::Div => {
                let p = self.positive(y, if int { 1.0 } else { 0.5 });
                let bound = if int { ix.bound } else { ix.bound * 2.0 };
                Some(self.op(Op::Binary(b), &[x, p], bound, exact))
            }
            BinaryOp::Max | BinaryOp::Min => {
                Some(self.op(Op::Binary(b), &[x, y], ix.bound.max(iy.bound), ix.exact && iy.exact))
            }
            BinaryOp::Pow if int => {
                // Small non-negative integer exponents of small bases are exact.
                if ix.bound > 30.0 {
                    return None;
                }
                let e = pick(self.r(), &[0.0, 1.0, 2.0, 3.0]);
                let c = self.full(e, d, Shape::scalar());
                Some(self.op(Op::Binary(b), &[x, c], ix.bound.powf(e).max(1.0), exact))
            }
            BinaryOp::Pow => {
                let base = self.positive(x, 0.5);
                let b0 = ix.bound + 0.5;
                let (e, eb) = if iy.bound <= 2.0 && self.rng.random_bool(0.5) {
                    (y, iy.bound)
                } else {
                    let v = pick(self.r(), &[2.0, 0.5, -1.0, 3.0, 1.5, -0.5]);
                    (self.full(v, d, Shape::scalar()), f64::abs(v))
                };
                let bound = b0.powf(eb).max(2f64.powf(eb));
                if bound > 1e4 {
                    return None;
                }
                Some(self.op(Op::Binary(b), &[base, e], bound, false))
            }
            _ => None,
        }
    }

    /// A comparison of exact operands, then (usually) a `where` selecting between two values.
    fn compare_where(&mut self, x: NodeId, pool: &[NodeId]) -> Option<NodeId> {
        let (d, s) = self.node(x);
        let cond = if d == DType::Bool {
            x
        } else {
            if !self.info(x).exact {
                return None;
            }
            let y = self.partner(x, pool);
            if !self.info(y).exact {
                return None;
            }
            let c = pick(self.r(), &[CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge]);
            let (a, b) = if self.rng.random_bool(0.5) { (x, y) } else { (y, x) };
            self.op(Op::Compare(c), &[a, b], 1.0, true)
        };
        if self.rng.random_bool(0.3) && cond != x {
            return Some(cond);
        }
        // where(cond, a, b): a is x (if numeric) or a fresh input; b a partner of a.
        let vd = if d == DType::Bool { pick(self.r(), &[DType::F32, DType::F16, DType::I32]) } else { d };
        let a = if d == DType::Bool {
            let bs = self.broadcastable(&s);
            self.input(vd, bs)
        } else {
            x
        };
        let b = self.partner(a, pool);
        let shape = Shape::broadcast("fuzz", &self.g.node(cond).shape, &self.g.node(a).shape)
            .and_then(|t| Shape::broadcast("fuzz", &t, &self.g.node(b).shape))
            .ok()?;
        if shape.numel() > MAX_NUMEL {
            return None;
        }
        let (ia, ib) = (self.info(a), self.info(b));
        let ic = self.info(cond);
        Some(self.op(Op::Where, &[cond, a, b], ia.bound.max(ib.bound), ic.exact && ia.exact && ib.exact))
    }

    fn cast(&mut self, x: NodeId) -> Option<NodeId> {
        let (d, _) = self.node(x);
        let i = self.info(x);
        let to = pick(self.r(), &DType::ALL);
        if to == d {
            return None;
        }
        if (!to.is_float() || d == DType::Bool) && !i.exact {
            // Truncation and `!= 0` are discontinuous: only cast what is computed exactly.
            return None;
        }
        if to == DType::F16 && i.bound > 6e4 {
            return None;
        }
        let (bound, exact) = match to {
            DType::Bool => (1.0, true),
            // A float rounded to a narrower float is exact only when both sides hold the same value.
            _ => (i.bound.max(1.0), i.exact),
        };
        Some(self.op(Op::Cast { to }, &[x], bound, exact))
    }

    fn reduce(&mut self, x: NodeId) -> Option<NodeId> {
        let (d, s) = self.node(x);
        if d == DType::Bool || s.rank() == 0 {
            return None;
        }
        let axes: Vec<usize> = loop {
            let a: Vec<usize> = (0..s.rank()).filter(|_| self.rng.random_bool(0.4)).collect();
            if !a.is_empty() {
                break a;
            }
        };
        let count: usize = axes.iter().map(|&a| s.dims()[a]).product();
        let i = self.info(x);
        let op = if self.rng.random_bool(0.6) { ReduceOp::Sum } else { ReduceOp::Max };
        let keepdim = self.rng.random_bool(0.5);
        let (bound, exact) = match op {
            ReduceOp::Sum => (i.bound * count as f64, i.exact && d.is_int()),
            ReduceOp::Max => (i.bound, i.exact),
        };
        if bound > if d.is_int() { 1e7 } else { 1e4 } {
            return None;
        }
        Some(self.op(Op::Reduce { op, axes, keepdim }, &[x], bound, exact))
    }

    fn reshape(&mut self, x: NodeId) -> Option<NodeId> {
        let (_, s) = self.node(x);
        let mut factors = prime_factors(s.numel());
        rand::seq::SliceRandom::shuffle(&mut factors[..], &mut self.rng);
        let mut dims = Vec::new();
        for f in factors {
            match dims.last_mut() {
                Some(l) if self.rng.random_bool(0.5) => *l *= f,
                _ => dims.push(f),
            }
        }
        for _ in 0..self.rng.random_range(0..2) {
            let at = self.rng.random_range(0..=dims.len());
            dims.insert(at, 1);
        }
        dims.truncate(6);
        let shape = Shape::new(dims);
        if shape == s || shape.numel() != s.numel() {
            return None;
        }
        let i = self.info(x);
        Some(self.op(Op::Reshape { shape }, &[x], i.bound, i.exact))
    }

    fn expand(&mut self, x: NodeId) -> Option<NodeId> {
        let (_, s) = self.node(x);
        let mut dims: Vec<usize> = s.dims().iter().map(|&d| if d == 1 && self.rng.random_bool(0.7) { pick(&mut self.rng, &DIMS) } else { d }).collect();
        if dims == s.dims() || self.rng.random_bool(0.3) {
            dims.insert(0, pick(self.r(), &[2, 3, 5]));
        }
        let shape = Shape::new(dims);
        if shape.numel() > MAX_NUMEL || shape.rank() > 6 {
            return None;
        }
        let i = self.info(x);
        Some(self.op(Op::Expand { shape }, &[x], i.bound, i.exact))
    }

    fn slice(&mut self, x: NodeId) -> Option<NodeId> {
        let (_, s) = self.node(x);
        let axes: Vec<usize> = (0..s.rank()).filter(|&a| s.dims()[a] >= 2).collect();
        if axes.is_empty() {
            return None;
        }
        let axis = pick(self.r(), &axes);
        let n = s.dims()[axis];
        let start = self.rng.random_range(0..n);
        let end = self.rng.random_range(start + 1..=n);
        let step = pick(self.r(), &[1, 1, 2, 3]);
        let i = self.info(x);
        Some(self.op(Op::Slice { axis, start, end, step }, &[x], i.bound, i.exact))
    }

    fn concat(&mut self, x: NodeId, pool: &[NodeId]) -> Option<NodeId> {
        let (d, s) = self.node(x);
        if s.rank() == 0 {
            return None;
        }
        let axis = self.rng.random_range(0..s.rank());
        let fits = |g: &Graph, p: NodeId| {
            let n = g.node(p);
            n.dtype == d && n.shape.rank() == s.rank() && (0..s.rank()).all(|i| i == axis || n.shape.dims()[i] == s.dims()[i])
        };
        let mut parts = vec![x];
        for _ in 0..self.rng.random_range(1..3) {
            let cands: Vec<NodeId> = pool.iter().copied().filter(|&p| fits(&self.g, p)).collect();
            let p = if !cands.is_empty() && self.rng.random_bool(0.5) {
                pick(self.r(), &cands)
            } else {
                let mut dims = s.dims().to_vec();
                dims[axis] = pick(self.r(), &[1, 2, 3, 7]);
                self.input(d, Shape::new(dims))
            };
            parts.push(p);
        }
        if self.rng.random_bool(0.5) {
            parts.reverse();
        }
        let total: usize = parts.iter().map(|&p| self.g.node(p).shape.numel()).sum();
        if total > MAX_NUMEL {
            return None;
        }
        let bound = parts.iter().map(|&p| self.info(p).bound).fold(0.0, f64::max);
        let exact = parts.iter().all(|&p| self.info(p).exact);
        Some(self.op(Op::Concat { axis }, &parts, bound, exact))
    }

    /// `x @ y` with y a fresh input (batch dims broadcast both ways), or x against its own
    /// transpose.
    fn matmul(&mut self, x: NodeId) -> Option<NodeId> {
        let (d, s) = self.node(x);
        if d == DType::Bool || s.rank() < 2 {
            return None;
        }
        let r = s.rank();
        let k = s.dims()[r - 1];
        let i = self.info(x);
        let (lhs, rhs) = if self.rng.random_bool(0.2) {
            let mut perm: Vec<usize> = (0..r).collect();
            perm.swap(r - 1, r - 2);
            let t = self.op(Op::Permute { perm }, &[x], i.bound, i.exact);
            if self.rng.random_bool(0.5) { (x, t) } else { (t, x) }
        } else {
            let batch = self.broadcastable(&Shape::from(&s.dims()[..r - 2]));
            let mut bd = batch.dims().to_vec();
            // Sometimes the right operand has more batch dims than the left.
            if self.rng.random_bool(0.2) && bd.len() + 2 < 6 {
                bd.insert(0, pick(self.r(), &[1, 2, 3]));
            }
            bd.extend([k, pick(self.r(), &DIMS)]);
            let y = self.input(d, Shape::new(bd));
            (x, y)
        };
        let (bl, br) = (self.info(lhs).bound, self.info(rhs).bound);
        let kk = self.g.node(lhs).shape.dims()[self.g.node(lhs).shape.rank() - 1] as f64;
        let bound = bl * br * kk;
        let limit = if d.is_int() { 1e7 } else { 1e4 };
        if bound > limit {
            return None;
        }
        let out = ir::infer::infer(&Op::MatMul, &[(d, &self.g.node(lhs).shape), (d, &self.g.node(rhs).shape)]).ok()?;
        if out.1.numel() > MAX_NUMEL || out.1.rank() > 6 {
            return None;
        }
        let exact = d.is_int() && self.info(lhs).exact && self.info(rhs).exact;
        Some(self.op(Op::MatMul, &[lhs, rhs], bound, exact))
    }
}

fn input_bound(d: DType) -> f64 {
    match d {
        DType::Bool => 1.0,
        d if d.is_int() => 4.0,
        _ => 2.0,
    }
}

fn prime_factors(mut n: usize) -> Vec<usize> {
    let mut f = Vec::new();
    let mut p = 2;
    while p * p <= n {
        while n.is_multiple_of(p) {
            f.push(p);
            n /= p;
        }
        p += 1;
    }
    if n > 1 {
        f.push(n);
    }
    f
}

/// A hand-written attention block through the frontend: one of nanoGPT's causal spellings,
/// or a non-causal `softmax(q @ k^T * scale) @ v` with `s_q != s_k`, sometimes with a
/// causal `where` mask built from `iota` and a bottom-right aligned diagonal.
fn attention(rng: &mut StdRng, seed: u64) -> Option<Graph> {
    let dtype = pick(rng, &[DType::F32, DType::F32, DType::F16, DType::BF16]);
    let tr = Tracer::new(format!("attn{seed}"));
    let b = pick(rng, &[1, 2, 3]);
    let h = pick(rng, &[1, 2, 3]);
    let sq = pick(rng, &[1, 3, 5, 7, 13, 16, 33]);
    let d = pick(rng, &[4, 7, 8, 16]);
    let dv = if rng.random_bool(0.7) { d } else { pick(rng, &[3, 5, 8]) };
    let lead: Vec<usize> = if rng.random_bool(0.3) { vec![b * h] } else { vec![b, h] };
    let shape = |s: usize, e: usize| {
        let mut v = lead.clone();
        v.extend([s, e]);
        v
    };
    let out = if rng.random_bool(0.6) {
        let spelling = pick(rng, &AttentionSpelling::ALL);
        let q = tr.input("q", dtype, shape(sq, d)).ok()?;
        let k = tr.input("k", dtype, shape(sq, d)).ok()?;
        let v = tr.input("v", dtype, shape(sq, dv)).ok()?;
        causal_attention(&q, &k, &v, spelling, sq + rng.random_range(0..4)).ok()?
    } else {
        let sk = pick(rng, &[1, 2, 5, 7, 13, 33]);
        let q = tr.input("q", dtype, shape(sq, d)).ok()?;
        let k = tr.input("k", dtype, shape(sk, d)).ok()?;
        let v = tr.input("v", dtype, shape(sk, dv)).ok()?;
        let scale = pick(rng, &[1.0 / (d as f64).sqrt(), 0.5, 1.0]);
        let s = q.matmul(&k.transpose(-2, -1).ok()?).ok()?.mul(scale).ok()?;
        let s = if rng.random_bool(0.5) && sk >= sq {
            // keep key j <= i + (sk - sq): row index + offset >= column index.
            let row = tr.iota(0, DType::I64, [sq, sk]).ok()?;
            let col = tr.iota(1, DType::I64, [sq, sk]).ok()?;
            let keep = col.le(&row.add((sk - sq) as f64).ok()?).ok()?;
            keep.where_(&s, f64::NEG_INFINITY).ok()?
        } else {
            s
        };
        s.softmax(-1).ok()?.matmul(&v).ok()?
    };
    tr.finish(&[&out]).ok()
}

/// Copies `part` into `into`, renaming its inputs with `prefix`; returns `part`'s outputs as
/// nodes of `into`.
pub fn splice(into: &mut Graph, part: &Graph, prefix: &str) -> Vec<NodeId> {
    let mut map = Vec::with_capacity(part.len());
    for (_, n) in part.nodes() {
        let mut n = n.clone();
        n.inputs = n.inputs.iter().map(|i: &NodeId| map[i.index()]).collect();
        let id = if let Op::Input { name } = &n.op {
            let id = into.push(ir::Node { op: Op::Input { name: format!("{prefix}{name}") }, ..n });
            into.register_input(id);
            id
        } else {
            into.push(n)
        };
        map.push(id);
    }
    part.outputs().iter().map(|o| map[o.index()]).collect()
}

/// Several graphs as one graph of disjoint components (one compile for all of them).
/// Returns the merged graph and, per part, the range of its outputs in the merged graph.
pub fn merge(name: &str, parts: &[Graph]) -> (Graph, Vec<std::ops::Range<usize>>) {
    let mut g = Graph::new(name);
    let mut outs = Vec::new();
    let mut ranges = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let o = splice(&mut g, p, &format!("c{i}_"));
        ranges.push(outs.len()..outs.len() + o.len());
        outs.extend(o);
    }
    g.set_outputs(outs);
    (g, ranges)
}

/// Which ops (by text-format name) a graph uses.
pub fn op_names(g: &Graph) -> Vec<&'static str> {
    g.nodes().map(|(_, n)| n.op.name()).collect()
}
