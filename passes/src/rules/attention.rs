//! Attention discovery: hand-written attention becomes one `flash_attention` node.
//!
//! Two steps. `softmax-last-axis` (and its reciprocal spelling) puts a `softmax` helper next
//! to the written-out softmax `e = exp(s - max(s)); e / sum(e)` over the last axis. Then
//! `attention` / `attention-upcast` match `matmul(softmax(s), v)` (optionally with the
//! probabilities cast back down) and walk the scores `s` down to `matmul(q, kᵀ)`, collecting:
//! - scale: `* c` or `/ c` by a known constant, on the scores, on `q` or on `kᵀ`;
//! - causal mask: `where(m, s, -inf)` with `m` the lower triangle, `where(m, -inf, s)` with
//!   `m` the strict upper triangle (what `masked_fill(~tril, -inf)` becomes), or `s + t` with
//!   `t` a constant 0 / -inf triangle. Masks are verified by *evaluating* them (they must be
//!   input-free) with the reference interpreter and comparing every element with the causal
//!   rule `keep(i, j) = j <= i + (s_k - s_q)` for the actual shapes;
//! - fp32 upcasts of the scores (`cast f32` of a bf16/f16 matmul).
//!
//! Anything else on the way (an input-dependent mask, a dropout multiply, a softmax without
//! max-subtraction, an off-by-one triangle) stops the walk and nothing is rewritten.

use super::{attr, rw, tensor, var, Cond};
use crate::lang::{Attr, EGraph, Kiln, Rewrite, TypeAnalysis};
use egg::{Id, Subst};
use ir::{DType, Graph, Node, NodeId, Op};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::Mutex;

/// Masks larger than this are not evaluated (the rule then does not fire).
pub const MAX_MASK_ELEMENTS: usize = 1 << 24;

fn softmax_axis_is_last() -> Cond {
    Box::new(|eg, _, s| {
        let rank = tensor(eg, s, "?s").shape.rank();
        rank >= 1 && attr(eg, s, "?ax").as_list() == Some(&[rank - 1][..])
    })
}

const E: &str = "(exp (sub ?s (max_reduce ?ax true ?s)))";

pub fn rules() -> Vec<Rewrite> {
    vec![
        rw("softmax-last-axis", &format!("(div {E} (sum ?ax true {E}))"), "(softmax ?s)", Some(softmax_axis_is_last())),
        rw("softmax-recip-last-axis", &format!("(mul {E} (recip (sum ?ax true {E})))"), "(softmax ?s)", Some(softmax_axis_is_last())),
        Rewrite::new("attention", pat("(matmul (softmax ?s) ?v)"), DiscoverAttention::default()).expect("rule"),
        Rewrite::new("attention-upcast", pat("(matmul (cast ?d (softmax ?s)) ?v)"), DiscoverAttention::default()).expect("rule"),
    ]
}

fn pat(s: &str) -> egg::Pattern<Kiln> {
    s.parse().expect("pattern")
}

/// What the scores walk found.
#[derive(Clone, Debug)]
struct Scores {
    q: Id,
    kt: Id,
    scale: f64,
    causal: bool,
}

/// How a bool mask relates to the causal triangle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MaskKind {
    /// `true` exactly where `j <= i + (s_k - s_q)`.
    Keep,
    /// `true` exactly where the key is masked out.
    Drop,
}

/// A mask class, `s_q`, `s_k`, additive or not.
type MaskKey = (Id, usize, usize, bool);

/// The custom applier: builds `(flash_attention causal scale q k v)` and unions it with the
/// matched `matmul` when every condition holds. Mask verdicts are cached per e-class.
#[derive(Default)]
pub struct DiscoverAttention {
    masks: Mutex<HashMap<MaskKey, Option<MaskKind>>>,
}

impl egg::Applier<Kiln, TypeAnalysis> for DiscoverAttention {
    fn apply_one(&self, eg: &mut EGraph, id: Id, s: &Subst, _: Option<&egg::PatternAst<Kiln>>, _: egg::Symbol) -> Vec<Id> {
        let (sv, v) = (s[var("?s")], s[var("?v")]);
        let out = eg[id].data.tensor().clone();
        let Some(sc) = self.walk(eg, sv, 0) else { return vec![] };
        let q = sc.q;
        let (qt, ktt, vt) = (eg[q].data.tensor().clone(), eg[sc.kt].data.tensor().clone(), eg[v].data.tensor().clone());
        let r = qt.shape.rank();
        if r < 2 || ktt.shape.rank() != r || vt.shape.rank() != r {
            return vec![];
        }
        if !(qt.dtype.is_float() && qt.dtype == ktt.dtype && qt.dtype == vt.dtype && qt.dtype == out.dtype) {
            return vec![];
        }
        // k = the operand under a last-two-axes transpose, or a new transpose of kᵀ.
        let mut swap: Vec<usize> = (0..r).collect();
        swap.swap(r - 2, r - 1);
        let k = eg[sc.kt]
            .nodes
            .iter()
            .find_map(|n| match n {
                Kiln::Permute([p, x]) if eg[*p].data.attr().as_list() == Some(&swap[..]) => Some(*x),
                _ => None,
            })
            .unwrap_or_else(|| {
                let p = eg.add(Kiln::Attr(Attr::List(swap.clone())));
                eg.add(Kiln::Permute([p, sc.kt]))
            });
        let kt = eg[k].data.tensor().clone();
        let types = [(qt.dtype, &qt.shape), (kt.dtype, &kt.shape), (vt.dtype, &vt.shape)];
        let op = Op::FlashAttention { causal: sc.causal, scale: ir::Scalar(sc.scale) };
        match ir::infer::infer(&op, &types) {
            Ok((d, sh)) if d == out.dtype && sh == out.shape => {}
            _ => return vec![],
        }
        if sc.causal {
            // The mask was verified for the scores' s_q, s_k; they must be q's and k's.
            let sq = qt.shape.dims()[r - 2];
            let sk = kt.shape.dims()[r - 2];
            let scores = &eg[sv].data.tensor().shape;
            let sr = scores.rank();
            if scores.dims()[sr - 2] != sq || scores.dims()[sr - 1] != sk {
                return vec![];
            }
        }
        let c = eg.add(Kiln::Attr(Attr::Bool(sc.causal)));
        let scale = eg.add(Kiln::Attr(Attr::float(sc.scale)));
        let f = eg.add(Kiln::Flash([c, scale, q, k, v]));
        if eg.union(id, f) { vec![id] } else { vec![] }
    }
}

impl DiscoverAttention {
    /// Walks the scores class down to `matmul(q, kᵀ)`, collecting scale and mask.
    fn walk(&self, eg: &EGraph, s: Id, depth: usize) -> Option<Scores> {
        if depth > 12 {
            return None;
        }
        let st = eg[s].data.tensor();
        let rank = st.shape.rank();
        if rank < 2 {
            return None;
        }
        let (sq, sk) = (st.shape.dims()[rank - 2], st.shape.dims()[rank - 1]);
        let konst = |x: Id| eg[x].data.tensor().konst;
        let same_shape = |x: Id| eg[x].data.tensor().shape == st.shape;
        for n in &eg[s].nodes {
            let found = match n {
                Kiln::MatMul([a, b]) => {
                    let (q, sa) = peel_scale(eg, *a, 0);
                    let (kt, sb) = peel_scale(eg, *b, 0);
                    Some(Scores { q, kt, scale: sa * sb, causal: false })
                }
                Kiln::Mul([x, c]) | Kiln::Mul([c, x]) if konst(*c).is_some() && same_shape(*x) => {
                    let k = konst(*c)?;
                    self.walk(eg, *x, depth + 1).map(|r| Scores { scale: r.scale * k, ..r })
                }
                Kiln::Div([x, c]) if konst(*c).is_some() && same_shape(*x) => {
                    let k = konst(*c)?;
                    self.walk(eg, *x, depth + 1).map(|r| Scores { scale: r.scale / k, ..r })
                }
                Kiln::Where([m, x, fill]) if is_neg_inf(konst(*fill), sq, sk) && same_shape(*x) => {
                    (self.mask(eg, *m, sq, sk, false) == Some(MaskKind::Keep))
                        .then(|| self.walk(eg, *x, depth + 1).map(|r| Scores { causal: true, ..r }))
                        .flatten()
                }
                Kiln::Where([m, fill, x]) if is_neg_inf(konst(*fill), sq, sk) && same_shape(*x) => {
                    (self.mask(eg, *m, sq, sk, false) == Some(MaskKind::Drop))
                        .then(|| self.walk(eg, *x, depth + 1).map(|r| Scores { causal: true, ..r }))
                        .flatten()
                }
                Kiln::Add([x, t]) | Kiln::Add([t, x]) if same_shape(*x) && eg[*t].data.tensor().pure => {
                    (self.mask(eg, *t, sq, sk, true) == Some(MaskKind::Keep))
                        .then(|| self.walk(eg, *x, depth + 1).map(|r| Scores { causal: true, ..r }))
                        .flatten()
                }
                Kiln::Cast([d, x]) => {
                    let from = eg[*x].data.tensor().dtype;
                    let to = match eg[*d].data.attr() {
                        Attr::DType(d) => *d,
                        _ => continue,
                    };
                    if from.is_float() && super::algebra::cast_is_exact(from, to) {
                        self.walk(eg, *x, depth + 1)
                    } else {
                        None
                    }
                }
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Evaluates a mask class (bool `where` mask, or additive 0/-inf triangle) and classifies
    /// it against the causal triangle for `s_q` x `s_k`. `None`: not causal, or not constant.
    fn mask(&self, eg: &EGraph, m: Id, sq: usize, sk: usize, additive: bool) -> Option<MaskKind> {
        let key = (eg.find(m), sq, sk, additive);
        if let Some(v) = self.masks.lock().expect("mask cache").get(&key) {
            return *v;
        }
        let verdict = classify_mask(eg, m, sq, sk, additive);
        tracing::debug!(mask = %m, sq, sk, additive, ?verdict, "attention mask checked");
        self.masks.lock().expect("mask cache").insert(key, verdict);
        verdict
    }
}

/// `-inf`, or (when no row can be fully masked, `s_q <= s_k`) a huge negative stand-in such
/// as `finfo.min`, which gives exactly the same softmax.
fn is_neg_inf(k: Option<f64>, sq: usize, sk: usize) -> bool {
    k.is_some_and(|k| k == f64::NEG_INFINITY || (sq <= sk && k <= -1e30))
}

/// Peels `x * c`, `c * x` or `x / c` (c a known constant not changing the shape) off an
/// operand of the scores matmul.
fn peel_scale(eg: &EGraph, a: Id, depth: usize) -> (Id, f64) {
    if depth > 6 {
        return (a, 1.0);
    }
    let sh = &eg[a].data.tensor().shape;
    let konst = |x: Id| eg[x].data.tensor().konst;
    let keeps_shape = |x: Id| eg[x].data.tensor().shape == *sh;
    for n in &eg[a].nodes {
        match n {
            Kiln::Mul([x, c]) | Kiln::Mul([c, x]) if konst(*c).is_some() && keeps_shape(*x) => {
                let (inner, s) = peel_scale(eg, *x, depth + 1);
                return (inner, s * konst(*c).unwrap_or(1.0));
            }
            Kiln::Div([x, c]) if konst(*c).is_some() && keeps_shape(*x) => {
                let (inner, s) = peel_scale(eg, *x, depth + 1);
                return (inner, s / konst(*c).unwrap_or(1.0));
            }
            _ => {}
        }
    }
    (a, 1.0)
}

fn classify_mask(eg: &EGraph, m: Id, sq: usize, sk: usize, additive: bool) -> Option<MaskKind> {
    let t = eg[m].data.tensor();
    if !t.pure || t.shape.numel() > MAX_MASK_ELEMENTS || (additive != t.dtype.is_float()) || (!additive && t.dtype != DType::Bool) {
        return None;
    }
    let g = extract_pure(eg, m)?;
    if let Some(v) = symbolic::verdict(&g, sq, sk, additive) {
        return v;
    }
    classify_by_evaluation(&g, sq, sk, additive)
}

/// Evaluates the mask graph and compares every element with the causal rule.
fn classify_by_evaluation(g: &Graph, sq: usize, sk: usize, additive: bool) -> Option<MaskKind> {
    let val = ir::interp::run(g, &[]).ok()?.pop()?;
    let shape = &val.shape;
    let r = shape.rank();
    if r < 2 {
        return None;
    }
    let (mi, mj) = (shape.dims()[r - 2], shape.dims()[r - 1]);
    if (mi != sq && mi != 1) || (mj != sk && mj != 1) {
        return None;
    }
    let off = sk as isize - sq as isize;
    let keep = |i: usize, j: usize| (j as isize) <= i as isize + off;
    let rows = mi * mj;
    let mut kinds = [true, !additive]; // [Keep possible, Drop possible]
    for (flat, &x) in val.data.iter().enumerate() {
        let (i0, j0) = ((flat % rows) / mj, flat % mj);
        let is = if mi == 1 { 0..sq } else { i0..i0 + 1 };
        for i in is {
            let js = if mj == 1 { 0..sk } else { j0..j0 + 1 };
            for j in js {
                let k = keep(i, j);
                if additive {
                    let ok = if k { x == 0.0 } else { is_neg_inf(Some(x), sq, sk) };
                    kinds[0] &= ok;
                } else {
                    let b = x != 0.0;
                    kinds[0] &= b == k;
                    kinds[1] &= b != k;
                }
                if !kinds[0] && !kinds[1] {
                    return None;
                }
            }
        }
    }
    if kinds[0] {
        Some(MaskKind::Keep)
    } else if kinds[1] {
        Some(MaskKind::Drop)
    } else {
        None
    }
}

/// An IR graph computing an input-free e-class (first acyclic choice per class, in the
/// e-graph's sorted node order, which puts `full` first so folded constants win).
fn extract_pure(eg: &EGraph, root: Id) -> Option<Graph> {
    let mut g = Graph::new("mask");
    let mut memo: HashMap<Id, NodeId> = HashMap::new();
    let mut stack = Vec::new();
    let out = build_pure(eg, eg.find(root), &mut g, &mut memo, &mut stack)?;
    g.set_outputs(vec![out]);
    Some(g)
}

fn build_pure(eg: &EGraph, c: Id, g: &mut Graph, memo: &mut HashMap<Id, NodeId>, stack: &mut Vec<Id>) -> Option<NodeId> {
    if let Some(&n) = memo.get(&c) {
        return Some(n);
    }
    if stack.contains(&c) || stack.len() > 64 {
        return None;
    }
    stack.push(c);
    let attr = |id: Id| eg[id].data.attr().clone();
    let mut result = None;
    for n in &eg[c].nodes {
        if matches!(n, Kiln::Input(_) | Kiln::Softmax(_) | Kiln::Flash(_)) {
            continue;
        }
        let Ok(l) = crate::lang::lower(n, &attr) else { continue };
        if l.tensor_children.iter().any(|&ch| !eg[ch].data.tensor().pure) {
            continue;
        }
        let mut ins: SmallVec<[NodeId; 3]> = SmallVec::new();
        let mut ok = true;
        for &ch in &l.tensor_children {
            match build_pure(eg, eg.find(ch), g, memo, stack) {
                Some(x) => ins.push(x),
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let t = eg[c].data.tensor();
        let op = l.op.expect("not softmax");
        result = Some(match l.source_type {
            Some((d, s)) => g.push(Node { op, dtype: d, shape: s, inputs: ins }),
            None => g.push(Node { op, dtype: t.dtype, shape: t.shape.clone(), inputs: ins }),
        });
        break;
    }
    stack.pop();
    if let Some(r) = result {
        memo.insert(c, r);
    }
    result
}

/// Exact mask classification without evaluating every element, for masks built the usual
/// way: iotas and integer constants combined by add/sub/mul-by-constant (affine in the
/// index), one comparison (a half-plane in `(i, j)`), `not`, `where(pred, a, b)` /
/// `cast` of the predicate, `eq`/`ne` against a constant, and movement that only slices,
/// permutes, expands or adds unit dims. Each row's predicate is then monotone in `j`, so
/// comparing it with the causal rule at four points per row (`0`, `s_k - 1`, the diagonal
/// `i + s_k - s_q` and the element after it) decides equality for the whole row. Anything
/// else returns `None` and the caller evaluates the mask with the interpreter.
mod symbolic {
    use super::MaskKind;
    use ir::{BinaryOp, CmpOp, Graph, Op, UnaryOp};

    /// `c + Σ coef[k]·idx[k]` over the node's own axes.
    #[derive(Clone, Debug)]
    struct Affine {
        c: f64,
        coef: Vec<f64>,
    }

    #[derive(Clone, Debug)]
    enum Sym {
        Num(Affine),
        /// `e cmp 0`.
        Pred(Affine, CmpOp),
        /// `pred ? a : b` with constants.
        Select(Affine, CmpOp, f64, f64),
    }

    fn negate(c: CmpOp) -> CmpOp {
        match c {
            CmpOp::Lt => CmpOp::Ge,
            CmpOp::Ge => CmpOp::Lt,
            CmpOp::Le => CmpOp::Gt,
            CmpOp::Gt => CmpOp::Le,
            CmpOp::Eq => CmpOp::Ne,
            CmpOp::Ne => CmpOp::Eq,
        }
    }

    fn holds(c: CmpOp, v: f64) -> bool {
        match c {
            CmpOp::Lt => v < 0.0,
            CmpOp::Le => v <= 0.0,
            CmpOp::Gt => v > 0.0,
            CmpOp::Ge => v >= 0.0,
            CmpOp::Eq => v == 0.0,
            CmpOp::Ne => v != 0.0,
        }
    }

    /// Re-indexes an affine map of shape `from` for broadcasting to rank `to_rank`.
    fn align(a: &Affine, from: &[usize], to_rank: usize) -> Affine {
        let off = to_rank - from.len();
        let mut coef = vec![0.0; to_rank];
        for (k, (&d, &x)) in from.iter().zip(&a.coef).enumerate() {
            coef[k + off] = if d == 1 { 0.0 } else { x };
        }
        Affine { c: a.c, coef }
    }

    fn lin(a: &Affine, b: &Affine, sb: f64) -> Affine {
        Affine { c: a.c + sb * b.c, coef: a.coef.iter().zip(&b.coef).map(|(x, y)| x + sb * y).collect() }
    }

    fn is_const(a: &Affine) -> bool {
        a.coef.iter().all(|&x| x == 0.0)
    }

    fn map_sym(s: &Sym, f: impl Fn(&Affine) -> Option<Affine>) -> Option<Sym> {
        Some(match s {
            Sym::Num(a) => Sym::Num(f(a)?),
            Sym::Pred(a, c) => Sym::Pred(f(a)?, *c),
            Sym::Select(a, c, x, y) => Sym::Select(f(a)?, *c, *x, *y),
        })
    }

    fn eval(g: &Graph) -> Option<Sym> {
        let mut vals: Vec<Option<Sym>> = vec![None; g.len()];
        for (id, n) in g.nodes() {
            let dims = n.shape.dims();
            let arg = |k: usize| -> Option<(Sym, Vec<usize>)> {
                let i = n.inputs[k];
                Some((vals[i.index()].clone()?, g.node(i).shape.dims().to_vec()))
            };
            let bcast = |k: usize| -> Option<Sym> {
                let (s, from) = arg(k)?;
                map_sym(&s, |a| Some(align(a, &from, dims.len())))
            };
            let v = match &n.op {
                Op::Full { value } => Some(Sym::Num(Affine { c: value.0, coef: vec![0.0; dims.len()] })),
                Op::Iota { axis } => {
                    let mut coef = vec![0.0; dims.len()];
                    coef[*axis] = 1.0;
                    Some(Sym::Num(Affine { c: 0.0, coef }))
                }
                Op::Binary(b @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul)) => match (bcast(0), bcast(1)) {
                    (Some(Sym::Num(x)), Some(Sym::Num(y))) => match b {
                        BinaryOp::Add => Some(Sym::Num(lin(&x, &y, 1.0))),
                        BinaryOp::Sub => Some(Sym::Num(lin(&x, &y, -1.0))),
                        _ if is_const(&y) => Some(Sym::Num(Affine { c: x.c * y.c, coef: x.coef.iter().map(|v| v * y.c).collect() })),
                        _ if is_const(&x) => Some(Sym::Num(Affine { c: y.c * x.c, coef: y.coef.iter().map(|v| v * x.c).collect() })),
                        _ => None,
                    },
                    _ => None,
                },
                Op::Compare(c) => match (bcast(0), bcast(1)) {
                    (Some(Sym::Num(x)), Some(Sym::Num(y))) => Some(Sym::Pred(lin(&x, &y, -1.0), *c)),
                    (Some(Sym::Select(e, pc, a, b)), Some(Sym::Num(k))) if is_const(&k) && matches!(c, CmpOp::Eq | CmpOp::Ne) => {
                        let (ta, tb) = ((a == k.c) == (*c == CmpOp::Eq), (b == k.c) == (*c == CmpOp::Eq));
                        match (ta, tb) {
                            (true, false) => Some(Sym::Pred(e, pc)),
                            (false, true) => Some(Sym::Pred(e, negate(pc))),
                            _ => None,
                        }
                    }
                    _ => None,
                },
                Op::Unary(UnaryOp::Not) => match bcast(0) {
                    Some(Sym::Pred(e, c)) => Some(Sym::Pred(e, negate(c))),
                    _ => None,
                },
                Op::Where => match (bcast(0), bcast(1), bcast(2)) {
                    (Some(Sym::Pred(e, c)), Some(Sym::Num(a)), Some(Sym::Num(b))) if is_const(&a) && is_const(&b) => {
                        Some(Sym::Select(e, c, a.c, b.c))
                    }
                    _ => None,
                },
                Op::Cast { to } => match arg(0) {
                    Some((Sym::Pred(e, c), _)) => Some(if *to == ir::DType::Bool { Sym::Pred(e, c) } else { Sym::Select(e, c, 1.0, 0.0) }),
                    Some((Sym::Num(a), _)) if g.node(n.inputs[0]).dtype.is_int() && to.is_float() => Some(Sym::Num(a)),
                    _ => None,
                },
                Op::Expand { .. } => bcast(0),
                Op::Permute { perm } => arg(0).and_then(|(s, _)| map_sym(&s, |a| Some(Affine { c: a.c, coef: perm.iter().map(|&p| a.coef[p]).collect() }))),
                Op::Slice { axis, start, step, .. } => arg(0).and_then(|(s, _)| {
                    map_sym(&s, |a| {
                        let mut b = a.clone();
                        b.c += a.coef[*axis] * *start as f64;
                        b.coef[*axis] *= *step as f64;
                        Some(b)
                    })
                }),
                Op::Reshape { .. } => arg(0).and_then(|(s, from)| {
                    // Only adding or removing unit dims: the non-unit dims keep their order.
                    let nz = |d: &[usize]| d.iter().enumerate().filter(|(_, &x)| x != 1).map(|(k, &x)| (k, x)).collect::<Vec<_>>();
                    let (a, b) = (nz(&from), nz(dims));
                    if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| x.1 != y.1) {
                        return None;
                    }
                    map_sym(&s, |af| {
                        let mut coef = vec![0.0; dims.len()];
                        for (x, y) in a.iter().zip(&b) {
                            coef[y.0] = af.coef[x.0];
                        }
                        Some(Affine { c: af.c, coef })
                    })
                }),
                _ => None,
            };
            vals[id.index()] = Some(v?);
        }
        vals[g.outputs()[0].index()].clone()
    }

    /// `Some(verdict)` when decided symbolically; `None` to fall back to evaluation.
    pub(super) fn verdict(g: &Graph, sq: usize, sk: usize, additive: bool) -> Option<Option<MaskKind>> {
        let shape = g.node(g.outputs()[0]).shape.clone();
        let r = shape.rank();
        if r < 2 || sq < 2 || sk < 2 || shape.dims()[r - 2] != sq || shape.dims()[r - 1] != sk {
            return None;
        }
        let (e, cmp, sense_keep) = match (eval(g)?, additive) {
            (Sym::Pred(e, c), false) => (e, c, None),
            (Sym::Select(e, c, a, b), true) => {
                let ninf = |x: f64| super::is_neg_inf(Some(x), sq, sk);
                if a == 0.0 && ninf(b) {
                    (e, c, Some(true))
                } else if ninf(a) && b == 0.0 {
                    (e, c, Some(false))
                } else {
                    return Some(None);
                }
            }
            _ => return None,
        };
        if matches!(cmp, CmpOp::Eq | CmpOp::Ne) || e.coef[..r - 2].iter().zip(shape.dims()).any(|(&c, &d)| c != 0.0 && d != 1) {
            return None;
        }
        let (ai, bj) = (e.coef[r - 2], e.coef[r - 1]);
        let pred = |i: usize, j: usize| holds(cmp, e.c + ai * i as f64 + bj * j as f64);
        let off = sk as isize - sq as isize;
        let keep = |i: usize, j: usize| (j as isize) <= i as isize + off;
        // Does pred equal keep (or its negation) on every row?
        let matches_rule = |negate: bool| {
            (0..sq).all(|i| {
                let diag = i as isize + off;
                let mut pts = vec![0, sk - 1];
                for d in [diag, diag + 1] {
                    if d >= 0 && (d as usize) < sk {
                        pts.push(d as usize);
                    }
                }
                pts.iter().all(|&j| (pred(i, j) != negate) == keep(i, j))
            })
        };
        Some(match sense_keep {
            Some(true) => matches_rule(false).then_some(MaskKind::Keep),
            Some(false) => matches_rule(true).then_some(MaskKind::Keep),
            None if matches_rule(false) => Some(MaskKind::Keep),
            None if matches_rule(true) => Some(MaskKind::Drop),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir::{CmpOp, Op};

    /// `cmp(iota0 + shift, iota1)` over `[sq, sk]`, optionally negated / as a 0/-inf addend.
    fn mask(sq: usize, sk: usize, shift: i64, cmp: CmpOp, not: bool, additive: bool) -> Graph {
        let mut g = Graph::new("m");
        let i = g.iota(0, DType::I64, [sq, sk]).unwrap();
        let j = g.iota(1, DType::I64, [sq, sk]).unwrap();
        let s = g.full(shift as f64, DType::I64, [1]);
        let is = g.add(Op::Binary(ir::BinaryOp::Add), &[i, s]).unwrap();
        let mut m = g.add(Op::Compare(cmp), &[is, j]).unwrap();
        if not {
            m = g.add(Op::Unary(ir::UnaryOp::Not), &[m]).unwrap();
        }
        if additive {
            let z = g.full(0.0, DType::F32, []);
            let n = g.full(f64::NEG_INFINITY, DType::F32, []);
            m = g.add(Op::Where, &[m, z, n]).unwrap();
        }
        let m = g.add(Op::Reshape { shape: ir::Shape::new([1, sq, sk]) }, &[m]).unwrap();
        g.set_outputs(vec![m]);
        g
    }

    #[test]
    fn symbolic_check_agrees_with_evaluation() {
        let mut decided = 0;
        for (sq, sk) in [(7, 7), (3, 7), (5, 5), (2, 9)] {
            for shift in -2..=6 {
                for cmp in [CmpOp::Ge, CmpOp::Gt, CmpOp::Le, CmpOp::Lt] {
                    for not in [false, true] {
                        for additive in [false, true] {
                            let g = mask(sq, sk, shift, cmp, not, additive);
                            let want = classify_by_evaluation(&g, sq, sk, additive);
                            if let Some(got) = symbolic::verdict(&g, sq, sk, additive) {
                                assert_eq!(got, want, "{sq}x{sk} shift {shift} {cmp:?} not={not} additive={additive}");
                                decided += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(decided > 200, "the symbolic path decided only {decided} masks");
    }
}
