//! Movement rules: fold and cancel reshape/permute/expand/slice chains, drop expands that
//! binary broadcasting performs anyway, and push permutes/reshapes below unary ops (so they
//! meet inputs and constants, where they are free index maps or fold away).

use super::{attr, rw, tensor, var, Cond};
use crate::lang::{Attr, EGraph, Kiln, Rewrite};
use egg::{Id, Subst};
use ir::Shape;

fn list(eg: &EGraph, s: &Subst, v: &str) -> Vec<usize> {
    attr(eg, s, v).as_list().map(|l| l.to_vec()).unwrap_or_default()
}

/// The shape attribute `?s` equals the shape of `?x`.
fn shape_is_input_shape() -> Cond {
    Box::new(|eg, _, s| list(eg, s, "?s") == tensor(eg, s, "?x").shape.dims())
}

/// `?p` is the identity permutation.
fn perm_is_identity() -> Cond {
    Box::new(|eg, _, s| list(eg, s, "?p").iter().enumerate().all(|(i, &p)| i == p))
}

/// `?x` broadcasts directly to the shape `?s`.
fn expands_directly() -> Cond {
    Box::new(|eg, _, s| tensor(eg, s, "?x").shape.expands_to(&Shape::new(list(eg, s, "?s"))))
}

/// `?r` = `[axis, 0, n, 1]` where `n` is the whole axis of `?x`.
fn slice_is_whole_axis() -> Cond {
    Box::new(|eg, _, s| {
        let r = list(eg, s, "?r");
        let dims = tensor(eg, s, "?x").shape.dims().to_vec();
        r.len() == 4 && r[0] < dims.len() && r[1] == 0 && r[2] == dims[r[0]] && r[3] == 1
    })
}

/// Replacing the expanded operand by `?b` itself leaves the broadcast result shape unchanged.
fn expand_is_implied(others: &'static [&'static str]) -> Cond {
    Box::new(move |eg, id, s| {
        let out = &eg[id].data.tensor().shape;
        let mut sh = tensor(eg, s, "?b").shape.clone();
        for o in others {
            match Shape::broadcast("elide", &sh, &tensor(eg, s, o).shape) {
                Ok(b) => sh = b,
                Err(_) => return false,
            }
        }
        sh == *out
    })
}

/// `(permute ?p1 (permute ?p2 ?x))` -> `(permute p2∘p1 ?x)`: `out[i] = x[p2[p1[i]]]`.
struct ComposePermutes;
impl egg::Applier<Kiln, crate::lang::TypeAnalysis> for ComposePermutes {
    fn apply_one(&self, eg: &mut EGraph, id: Id, s: &Subst, _: Option<&egg::PatternAst<Kiln>>, _: egg::Symbol) -> Vec<Id> {
        let (p1, p2) = (list(eg, s, "?p1"), list(eg, s, "?p2"));
        if p1.len() != p2.len() {
            return vec![];
        }
        let composed: Vec<usize> = p1.iter().map(|&i| p2[i]).collect();
        let p = eg.add(Kiln::Attr(Attr::List(composed)));
        let n = eg.add(Kiln::Permute([p, s[var("?x")]]));
        if eg.union(id, n) { vec![id] } else { vec![] }
    }
}

const BINARY: &[&str] = &["add", "sub", "mul", "div", "max", "min", "pow", "and", "or", "eq", "ne", "lt", "le", "gt", "ge"];
const UNARY: &[&str] = &["neg", "abs", "exp", "log", "sqrt", "rsqrt", "recip", "tanh", "erf", "sin", "cos", "floor", "not"];

pub fn rules() -> Vec<Rewrite> {
    let mut r = vec![
        rw("reshape-reshape", "(reshape ?s (reshape ?t ?x))", "(reshape ?s ?x)", None),
        rw("reshape-noop", "(reshape ?s ?x)", "?x", Some(shape_is_input_shape())),
        Rewrite::new("permute-permute", "(permute ?p1 (permute ?p2 ?x))".parse::<egg::Pattern<Kiln>>().expect("pattern"), ComposePermutes)
            .expect("rule"),
        rw("permute-identity", "(permute ?p ?x)", "?x", Some(perm_is_identity())),
        rw("expand-noop", "(expand ?s ?x)", "?x", Some(shape_is_input_shape())),
        rw("expand-expand", "(expand ?s (expand ?t ?x))", "(expand ?s ?x)", Some(expands_directly())),
        rw("slice-whole", "(slice ?r ?x)", "?x", Some(slice_is_whole_axis())),
    ];
    for op in BINARY {
        r.push(rw(&format!("elide-expand-{op}-rhs"), &format!("({op} ?a (expand ?s ?b))"), &format!("({op} ?a ?b)"), Some(expand_is_implied(&["?a"]))));
        r.push(rw(&format!("elide-expand-{op}-lhs"), &format!("({op} (expand ?s ?b) ?a)"), &format!("({op} ?b ?a)"), Some(expand_is_implied(&["?a"]))));
    }
    r.push(rw("elide-expand-where-cond", "(where (expand ?s ?b) ?x ?y)", "(where ?b ?x ?y)", Some(expand_is_implied(&["?x", "?y"]))));
    r.push(rw("elide-expand-where-then", "(where ?c (expand ?s ?b) ?y)", "(where ?c ?b ?y)", Some(expand_is_implied(&["?c", "?y"]))));
    r.push(rw("elide-expand-where-else", "(where ?c ?x (expand ?s ?b))", "(where ?c ?x ?b)", Some(expand_is_implied(&["?c", "?x"]))));
    for op in UNARY {
        r.push(rw(&format!("permute-below-{op}"), &format!("(permute ?p ({op} ?x))"), &format!("({op} (permute ?p ?x))"), None));
        r.push(rw(&format!("reshape-below-{op}"), &format!("(reshape ?s ({op} ?x))"), &format!("({op} (reshape ?s ?x))"), None));
    }
    r.push(rw("permute-below-cast", "(permute ?p (cast ?d ?x))", "(cast ?d (permute ?p ?x))", None));
    r.push(rw("reshape-below-cast", "(reshape ?s (cast ?d ?x))", "(cast ?d (reshape ?s ?x))", None));
    r
}
