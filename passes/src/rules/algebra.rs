//! Algebraic identities that are exact in IEEE arithmetic (no reassociation of floats).
//! Constant folding is done by the analysis (`lang::TypeAnalysis::modify`), CSE by
//! hash-consing. See `passes/RULES.md` for the soundness argument of each rule.

use super::{both, is_const, rw, same_type_as, tensor, attr, Cond};
use crate::lang::{Attr, Rewrite};
use ir::DType;

/// Casting from `from` to `to` loses nothing (every `from` value is a `to` value).
pub fn cast_is_exact(from: DType, to: DType) -> bool {
    use DType::*;
    from == to
        || matches!((from, to), (F16 | BF16, F32) | (I32, I64) | (Bool, _))
}

fn cast_target_is_input_dtype() -> Cond {
    Box::new(|eg, _, s| matches!(attr(eg, s, "?d"), Attr::DType(d) if *d == tensor(eg, s, "?x").dtype))
}

fn inner_cast_is_exact() -> Cond {
    Box::new(|eg, _, s| matches!(attr(eg, s, "?b"), Attr::DType(b) if cast_is_exact(tensor(eg, s, "?x").dtype, *b)))
}

/// `?x` is a float (integer negation saturates at the minimum, so `x - (-y)` is not `x + y`).
fn is_float() -> Cond {
    Box::new(|eg, _, s| tensor(eg, s, "?x").dtype.is_float())
}

pub fn rules() -> Vec<Rewrite> {
    vec![
        rw("add-zero", "(add ?x ?z)", "?x", Some(both(is_const("?z", 0.0), same_type_as("?x")))),
        rw("add-zero-left", "(add ?z ?x)", "?x", Some(both(is_const("?z", 0.0), same_type_as("?x")))),
        rw("sub-zero", "(sub ?x ?z)", "?x", Some(both(is_const("?z", 0.0), same_type_as("?x")))),
        rw("mul-one", "(mul ?x ?o)", "?x", Some(both(is_const("?o", 1.0), same_type_as("?x")))),
        rw("mul-one-left", "(mul ?o ?x)", "?x", Some(both(is_const("?o", 1.0), same_type_as("?x")))),
        rw("div-one", "(div ?x ?o)", "?x", Some(both(is_const("?o", 1.0), same_type_as("?x")))),
        rw("neg-neg", "(neg (neg ?x))", "?x", Some(is_float())),
        rw("not-not", "(not (not ?x))", "?x", None),
        rw("sub-neg", "(sub ?x (neg ?y))", "(add ?x ?y)", Some(is_float())),
        rw("add-neg", "(add ?x (neg ?y))", "(sub ?x ?y)", Some(is_float())),
        rw("max-self", "(max ?x ?x)", "?x", None),
        rw("min-self", "(min ?x ?x)", "?x", None),
        rw("where-same", "(where ?c ?x ?x)", "?x", Some(same_type_as("?x"))),
        rw("where-not", "(where (not ?c) ?a ?b)", "(where ?c ?b ?a)", None),
        rw("where-true", "(where ?c ?a ?b)", "?a", Some(both(is_const("?c", 1.0), same_type_as("?a")))),
        rw("where-false", "(where ?c ?a ?b)", "?b", Some(both(is_const("?c", 0.0), same_type_as("?b")))),
        rw("cast-same", "(cast ?d ?x)", "?x", Some(cast_target_is_input_dtype())),
        rw("cast-through-exact", "(cast ?d (cast ?b ?x))", "(cast ?d ?x)", Some(inner_cast_is_exact())),
        rw("and-assoc", "(and (and ?a ?b) ?c)", "(and ?a (and ?b ?c))", None),
        rw("or-assoc", "(or (or ?a ?b) ?c)", "(or ?a (or ?b ?c))", None),
    ]
}
