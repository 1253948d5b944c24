//! Rewrite rules as data, one topic per file, every rule named in kebab-case and documented
//! in `passes/RULES.md`. Conditions are named functions over the analysis (ranks, broadcast
//! shapes, dtypes, known constants), so a rule never fires on a shape it was not written for.
//!
//! - [`algebra`]: identities and exact simplifications (constant folding and CSE come from
//!   the analysis and from hash-consing, see `lang.rs`).
//! - [`movement`]: fold and cancel reshape/permute/expand/slice, elide expands that binary
//!   broadcasting already does, push permutes and reshapes below unary ops.
//! - [`attention`]: the `softmax` helper and hand-written attention -> `flash_attention`.
//! - [`fusion`]: the rules of the kernel-grouping pass that runs after extraction
//!   (see `docs/passes.md` for why fusion is not encoded in the e-graph).

pub mod algebra;
pub mod attention;
pub mod fusion;
pub mod movement;

use crate::lang::{Attr, EGraph, Rewrite, TensorInfo};
use egg::{Id, Subst, Var};

/// The rewrite families that saturation runs, in order.
pub fn all() -> Vec<Rewrite> {
    let mut r = algebra::rules();
    r.extend(movement::rules());
    r.extend(attention::rules());
    r
}

/// Rules of one family by name (`algebra`, `movement`, `attention`).
pub fn family(name: &str) -> Vec<Rewrite> {
    match name {
        "algebra" => algebra::rules(),
        "movement" => movement::rules(),
        "attention" => attention::rules(),
        _ => Vec::new(),
    }
}

pub(crate) fn var(s: &str) -> Var {
    s.parse().expect("pattern variable")
}

/// The tensor facts of the class bound to `v`.
pub(crate) fn tensor<'a>(eg: &'a EGraph, subst: &Subst, v: &str) -> &'a TensorInfo {
    eg[subst[var(v)]].data.tensor()
}

/// The attribute bound to `v`.
pub(crate) fn attr<'a>(eg: &'a EGraph, subst: &Subst, v: &str) -> &'a Attr {
    eg[subst[var(v)]].data.attr()
}

pub(crate) type Cond = Box<dyn Fn(&mut EGraph, Id, &Subst) -> bool + Send + Sync>;

/// `v` is a constant equal to `value` everywhere.
pub(crate) fn is_const(v: &'static str, value: f64) -> Cond {
    Box::new(move |eg, _, s| tensor(eg, s, v).konst.is_some_and(|k| k.to_bits() == value.to_bits() || (k == value && value != 0.0)))
}

/// The matched class has exactly the type of `v` (so replacing it by `v` changes no shape:
/// guards identities like `x + 0` against a `0` that broadcasts `x` to a larger shape).
pub(crate) fn same_type_as(v: &'static str) -> Cond {
    Box::new(move |eg, id, s| {
        let (a, b) = (eg[id].data.tensor(), tensor(eg, s, v));
        a.dtype == b.dtype && a.shape == b.shape
    })
}

/// Both conditions hold.
pub(crate) fn both(a: Cond, b: Cond) -> Cond {
    Box::new(move |eg, id, s| a(eg, id, s) && b(eg, id, s))
}

/// A conditional rewrite from two pattern strings.
pub(crate) fn rw(name: &str, lhs: &str, rhs: &str, cond: Option<Cond>) -> Rewrite {
    let l: egg::Pattern<crate::lang::Kiln> = lhs.parse().unwrap_or_else(|e| panic!("rule {name}: bad lhs: {e}"));
    let r: egg::Pattern<crate::lang::Kiln> = rhs.parse().unwrap_or_else(|e| panic!("rule {name}: bad rhs: {e}"));
    match cond {
        None => Rewrite::new(name, l, r),
        Some(c) => Rewrite::new(name, l, egg::ConditionalApplier { condition: c, applier: r }),
    }
    .unwrap_or_else(|e| panic!("rule {name}: {e}"))
}
