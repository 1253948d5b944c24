//! Fusion rules, as data: the grouping pass (`fuse.rs`) walks the extracted graph in
//! topological order and asks these rules, in order, whether an op may join the kernel of
//! one of its producers. The first rule that says `Fuse` wins; every `Reject` reason is
//! kept for `explain`. Movement ops and constants are never kernels of their own: they are
//! index maps inlined into every kernel that reads them (`inline-movement`,
//! `inline-constant` in `RULES.md`).

use ir::{Node, Op, OpClass, Shape};

/// The kind of kernel a group will become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    /// One matmul plus an elementwise epilogue (GEMM template).
    Gemm,
    /// One flash attention plus an elementwise epilogue.
    Attention,
    /// Elementwise ops, row reductions and index maps in one pass (generated loops).
    Loop,
}

/// The question a rule answers: may `node` join the kernel described here?
pub struct Candidate<'a> {
    pub node: &'a Node,
    pub kind: GroupKind,
    /// The kernel's iteration shape (anchor output for templates, full row shape for loops).
    pub domain: &'a Shape,
    /// Axes the kernel reduces over (loops with a row reduction).
    pub reduced: Option<&'a [usize]>,
    /// Name of the kernel, for messages.
    pub kernel: &'a str,
    /// Shapes of the node's operands.
    pub operand_shapes: &'a [Shape],
}

pub enum Verdict {
    NotApplicable,
    Fuse,
    Reject(String),
}

pub struct FusionRule {
    pub name: &'static str,
    pub doc: &'static str,
    pub check: fn(&Candidate) -> Verdict,
}

/// The domain with `axes` kept as size 1, and with them dropped.
pub fn reduced_shapes(domain: &Shape, axes: &[usize]) -> (Shape, Shape) {
    let keep = Shape::new(domain.dims().iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }));
    let drop = Shape::new(domain.dims().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d));
    (keep, drop)
}

/// Same number of elements: the node and the domain are the same elements in the same
/// linear order (the node can only reach the kernel's values directly, by broadcasting over
/// leading dims, or through reshapes, never through a permute).
fn same_elements(a: &Shape, b: &Shape) -> bool {
    a.numel() == b.numel()
}

fn blowup(c: &Candidate) -> String {
    let ratio = c.node.shape.numel() / c.domain.numel().max(1);
    if ratio > 1 {
        format!(
            "not fused into {}: its shape {} is {ratio}x the kernel's domain {}; fusing would re-read (recompute) {}'s values {ratio} times",
            c.kernel, c.node.shape, c.domain, c.kernel
        )
    } else {
        format!("not fused into {}: its shape {} differs from the kernel's domain {}", c.kernel, c.node.shape, c.domain)
    }
}

fn template_epilogue(c: &Candidate, kind: GroupKind) -> Verdict {
    if c.kind != kind {
        return Verdict::NotApplicable;
    }
    match c.node.op.class() {
        OpClass::Elementwise if same_elements(&c.node.shape, c.domain) => Verdict::Fuse,
        OpClass::Elementwise => Verdict::Reject(blowup(c)),
        OpClass::Reduction => Verdict::Reject(format!(
            "not fused into {}: a template epilogue cannot hold a reduction (a row spans several output tiles)",
            c.kernel
        )),
        _ => Verdict::NotApplicable,
    }
}

fn gemm_epilogue(c: &Candidate) -> Verdict {
    template_epilogue(c, GroupKind::Gemm)
}

fn attention_epilogue(c: &Candidate) -> Verdict {
    template_epilogue(c, GroupKind::Attention)
}

fn loop_elementwise(c: &Candidate) -> Verdict {
    if c.kind != GroupKind::Loop || c.node.op.class() != OpClass::Elementwise {
        return Verdict::NotApplicable;
    }
    if c.node.shape == *c.domain || (c.reduced.is_none() && same_elements(&c.node.shape, c.domain)) {
        return Verdict::Fuse;
    }
    if let Some(axes) = c.reduced {
        let (keep, drop) = reduced_shapes(c.domain, axes);
        if c.node.shape == keep || c.node.shape == drop {
            return Verdict::Fuse; // a per-row op after the reduction (rsqrt(var + eps))
        }
        // The same rows under another view ([1, T, C] and [T, C]): a reshape that keeps the
        // reduced last axis keeps every row's elements together and in order.
        let rank = c.domain.rank();
        let last = |s: &Shape| s.dims().last().copied();
        if axes == [rank - 1] && same_elements(&c.node.shape, c.domain) && last(&c.node.shape) == last(c.domain) {
            return Verdict::Fuse;
        }
    }
    Verdict::Reject(blowup(c))
}

fn row_reduction(c: &Candidate) -> Verdict {
    let Op::Reduce { axes, .. } = &c.node.op else { return Verdict::NotApplicable };
    if c.kind != GroupKind::Loop {
        return Verdict::NotApplicable;
    }
    let rank = c.domain.rank();
    let trailing = axes.iter().enumerate().all(|(i, &a)| a == rank - axes.len() + i);
    if !trailing {
        return Verdict::Reject(format!("not fused into {}: it reduces {axes:?}, not trailing axes (not a row reduction)", c.kernel));
    }
    if c.operand_shapes.first() != Some(c.domain) {
        return Verdict::Reject(blowup(c));
    }
    match c.reduced {
        Some(r) if r != axes.as_slice() => {
            Verdict::Reject(format!("not fused into {}: it reduces {axes:?} but the kernel already reduces {r:?}", c.kernel))
        }
        _ => Verdict::Fuse,
    }
}

/// The rules, in the order they are tried.
pub const RULES: &[FusionRule] = &[
    FusionRule {
        name: "gemm-epilogue",
        doc: "an elementwise op over a matmul's full output (bias, activation, residual, cast) joins the GEMM kernel",
        check: gemm_epilogue,
    },
    FusionRule {
        name: "attention-epilogue",
        doc: "an elementwise op over a flash attention's full output joins the attention kernel",
        check: attention_epilogue,
    },
    FusionRule {
        name: "loop-elementwise",
        doc: "an elementwise op over a loop kernel's domain (or its reduced rows) joins that loop",
        check: loop_elementwise,
    },
    FusionRule {
        name: "row-reduction",
        doc: "a reduction over trailing axes of a loop kernel's domain joins it (softmax, layer_norm, rms_norm rows)",
        check: row_reduction,
    },
];
