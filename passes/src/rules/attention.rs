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

/// The custom applier: builds `(flash_attention causal scale q k v)` and unions it with the
/// matched `matmul` when every condition holds. Mask verdicts are cached per e-class.
#[derive(Default)]
pub struct DiscoverAttention {
    masks: Mutex<HashMap<(Id, usize, usize, bool), Option<MaskKind>>>,
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
    let val = ir::interp::run(&g, &[]).ok()?.pop()?;
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
