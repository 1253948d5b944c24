//! The grouping pass: turns the extracted graph into a `KernelGraph`.
//!
//! Deterministic and linear-ish: nodes are visited in topological (index) order.
//! - sources (`full`, `iota`), movement ops and input-free elementwise ops are *inline*:
//!   index maps or generated values, copied into every kernel that reads them;
//! - `matmul` starts a GEMM kernel, `flash_attention` an attention kernel;
//! - any other op asks the fusion rules (`rules/fusion.rs`) whether it may join the kernel
//!   of one of its producers (templates first, then the most recent loop kernel); if none
//!   accepts, it starts a loop kernel. A join is refused when the op reads that kernel's
//!   value through a movement op (one pass cannot) or when it would close a cycle between
//!   kernels (another producer of the op depends on that kernel).
//!
//! Under the cost model every accepted join removes a buffer write, a read and a launch and
//! adds nothing (no recomputation except inline index maps and constants), so greedy joining
//! is cost-optimal among the groupings these rules allow.

use crate::rules::fusion::{Candidate, GroupKind, Verdict, RULES};
use ir::{BufferId, Graph, Kernel, KernelGraph, KernelKind, Node, NodeId, Op, OpClass, Shape};
use smallvec::SmallVec;
use std::collections::HashMap;

/// Why a compute node ended up where it is (for `explain`).
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// Starts a template kernel (matmul / flash attention).
    Anchor,
    /// Joined a producer's kernel under the named rule.
    Joined { rule: &'static str },
    /// Starts a loop kernel; the reasons each producer kernel refused it.
    Alone { reasons: Vec<String> },
    /// Inline: an index map or constant, copied into its readers.
    Inline,
}

/// The grouping's result: the kernel graph and, per node, its kernel and placement.
pub struct Grouping {
    pub kernels: KernelGraph,
    /// Kernel index (in `kernels.kernels`) of each compute node.
    pub kernel_of: Vec<Option<usize>>,
    pub placement: Vec<Placement>,
}

struct Group {
    kind: GroupKind,
    domain: Shape,
    reduced: Option<Vec<usize>>,
    members: Vec<NodeId>,
    /// Transitive dependencies (group indices), as a bitset.
    deps: Vec<u64>,
}

fn has(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
}
fn set(bits: &mut Vec<u64>, i: usize) {
    if bits.len() <= i / 64 {
        bits.resize(i / 64 + 1, 0);
    }
    bits[i / 64] |= 1 << (i % 64);
}
/// `a |= b`; true when `a` changed.
fn or_into(a: &mut Vec<u64>, b: &[u64]) -> bool {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    let mut changed = false;
    for (x, &y) in a.iter_mut().zip(b) {
        let n = *x | y;
        changed |= n != *x;
        *x = n;
    }
    changed
}

/// Is this node an index map / generated value rather than work?
pub fn is_inline(n: &Node, pure: bool) -> bool {
    match n.op.class() {
        OpClass::Source => !matches!(n.op, Op::Input { .. }),
        OpClass::Movement => true,
        OpClass::Elementwise => pure,
        _ => false,
    }
}

/// Groups `g` into kernels.
pub fn group(g: &Graph) -> Grouping {
    let len = g.len();
    let live = g.live();
    // Input-free values.
    let mut pure = vec![false; len];
    for (id, n) in g.nodes() {
        pure[id.index()] = !matches!(n.op, Op::Input { .. }) && n.inputs.iter().all(|i| pure[i.index()]);
    }
    let mut inline: Vec<bool> = g.nodes().map(|(id, n)| is_inline(n, pure[id.index()])).collect();
    // Elementwise ops over graph inputs only (a cast of a weight, a scaled bias) are cheap to
    // recompute where they are read: inline them too (`inline-input-elementwise`), except
    // where they feed a matmul / attention operand (a template takes only index maps there)
    // or are a graph output; those stay kernels.
    let mut input_only = vec![false; len];
    for (id, n) in g.nodes() {
        input_only[id.index()] = matches!(n.op, Op::Input { .. })
            || (inline[id.index()] || n.op.is_elementwise()) && n.inputs.iter().all(|i| input_only[i.index()]);
    }
    let mut feeds_template = vec![false; len];
    for (_, n) in g.nodes() {
        if matches!(n.op, Op::MatMul | Op::FlashAttention { .. }) {
            let mut stack: Vec<NodeId> = n.inputs.to_vec();
            while let Some(i) = stack.pop() {
                let m = g.node(i);
                if m.op.is_elementwise() && !pure[i.index()] {
                    feeds_template[i.index()] = true;
                } else if inline[i.index()] {
                    stack.extend(m.inputs.iter().copied());
                }
            }
        }
    }
    for (id, n) in g.nodes() {
        let i = id.index();
        if n.op.is_elementwise() && input_only[i] && !feeds_template[i] {
            inline[i] = true;
        }
    }
    // For each node: the compute producers it reads through inline chains, and whether the
    // path passes a movement op.
    let mut reach: Vec<SmallVec<[(NodeId, bool); 2]>> = vec![SmallVec::new(); len];
    for (id, n) in g.nodes() {
        if !inline[id.index()] {
            continue;
        }
        // A reshape keeps every element's linear index, so reading through it is still one
        // pass; other movement ops permute elements.
        let mv = n.op.class() == OpClass::Movement && !matches!(n.op, Op::Reshape { .. });
        let mut r: SmallVec<[(NodeId, bool); 2]> = SmallVec::new();
        for &i in &n.inputs {
            if inline[i.index()] {
                for &(p, m) in &reach[i.index()] {
                    r.push((p, m || mv));
                }
            } else if !matches!(g.node(i).op, Op::Input { .. }) {
                r.push((i, mv));
            }
        }
        r.sort();
        r.dedup();
        reach[id.index()] = r;
    }
    let producers = |n: &Node| -> SmallVec<[(NodeId, bool); 4]> {
        let mut r: SmallVec<[(NodeId, bool); 4]> = SmallVec::new();
        for &i in &n.inputs {
            if inline[i.index()] {
                r.extend(reach[i.index()].iter().copied());
            } else if !matches!(g.node(i).op, Op::Input { .. }) {
                r.push((i, false));
            }
        }
        r.sort();
        r.dedup();
        r
    };

    // Graph outputs that are inline (a view of something) must be materialised by a kernel.
    let mut materialise = vec![false; len];
    for &o in g.outputs() {
        if inline[o.index()] {
            materialise[o.index()] = true;
        }
    }

    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: Vec<Option<usize>> = vec![None; len];
    let mut placement: Vec<Placement> = vec![Placement::Inline; len];
    for (id, n) in g.nodes() {
        if !live[id.index()] || matches!(n.op, Op::Input { .. }) || (inline[id.index()] && !materialise[id.index()]) {
            continue;
        }
        let prods = producers(n);
        let mut prod_groups: Vec<usize> = prods.iter().filter_map(|(p, _)| group_of[p.index()]).collect();
        prod_groups.sort();
        prod_groups.dedup();
        let mut joined = None;
        let mut reasons = Vec::new();
        let is_anchor = matches!(n.op, Op::MatMul | Op::FlashAttention { .. });
        if !is_anchor && !materialise[id.index()] {
            // Templates first, then the most recent loop kernel.
            let mut cands = prod_groups.clone();
            cands.sort_by_key(|&c| (groups[c].kind == GroupKind::Loop, std::cmp::Reverse(c)));
            let operand_shapes: Vec<Shape> = n.inputs.iter().map(|&i| g.node(i).shape.clone()).collect();
            'cands: for c in cands {
                let name = format!("k{c}");
                if let Some((p, _)) = prods.iter().find(|(p, m)| *m && group_of[p.index()] == Some(c)) {
                    reasons.push(format!("not fused into {name}: it reads {p} through a movement op, which one pass cannot do"));
                    continue;
                }
                if let Some(&h) = prod_groups.iter().find(|&&h| h != c && has(&groups[h].deps, c)) {
                    reasons.push(format!("not fused into {name}: another operand comes from k{h}, which itself reads {name} (a cycle)"));
                    continue;
                }
                let gr = &groups[c];
                let cand = Candidate {
                    node: n,
                    kind: gr.kind,
                    domain: &gr.domain,
                    reduced: gr.reduced.as_deref(),
                    kernel: &name,
                    operand_shapes: &operand_shapes,
                };
                for rule in RULES {
                    match (rule.check)(&cand) {
                        Verdict::NotApplicable => {}
                        Verdict::Fuse => {
                            joined = Some((c, rule.name));
                            break 'cands;
                        }
                        Verdict::Reject(r) => {
                            reasons.push(r);
                            continue 'cands;
                        }
                    }
                }
                reasons.push(format!("not fused into {name}: no fusion rule covers a {} after a {:?} kernel", n.op.name(), gr.kind));
            }
        }
        let gi = match joined {
            Some((c, rule)) => {
                placement[id.index()] = Placement::Joined { rule };
                if let Op::Reduce { axes, .. } = &n.op {
                    groups[c].reduced.get_or_insert_with(|| axes.clone());
                }
                groups[c].members.push(id);
                c
            }
            None => {
                let (kind, domain, reduced) = match &n.op {
                    Op::MatMul => (GroupKind::Gemm, n.shape.clone(), None),
                    Op::FlashAttention { .. } => (GroupKind::Attention, n.shape.clone(), None),
                    Op::Reduce { axes, .. } => (GroupKind::Loop, g.node(n.inputs[0]).shape.clone(), Some(axes.clone())),
                    _ => (GroupKind::Loop, n.shape.clone(), None),
                };
                placement[id.index()] = if is_anchor {
                    Placement::Anchor
                } else if prod_groups.is_empty() {
                    Placement::Alone { reasons: vec!["reads only graph inputs and constants".into()] }
                } else {
                    Placement::Alone { reasons }
                };
                groups.push(Group { kind, domain, reduced, members: vec![id], deps: Vec::new() });
                groups.len() - 1
            }
        };
        group_of[id.index()] = Some(gi);
        // Dependencies: the producers' groups and everything they depend on.
        let mut new = Vec::new();
        for &h in &prod_groups {
            if h != gi {
                set(&mut new, h);
                or_into(&mut new, &groups[h].deps.clone());
            }
        }
        if or_into(&mut groups[gi].deps, &new) {
            let d = groups[gi].deps.clone();
            for (x, gx) in groups.iter_mut().enumerate() {
                if x != gi && has(&gx.deps, gi) {
                    or_into(&mut gx.deps, &d);
                }
            }
        }
    }

    build_kernels(g, &groups, &group_of, &inline, &reach, placement)
}

fn build_kernels(
    g: &Graph,
    groups: &[Group],
    group_of: &[Option<usize>],
    inline: &[bool],
    reach: &[SmallVec<[(NodeId, bool); 2]>],
    placement: Vec<Placement>,
) -> Grouping {
    let len = g.len();
    // Which compute values need a buffer: read by another group, or a graph output.
    let mut needs_buffer = vec![false; len];
    let mut direct_deps: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
    for (gi, gr) in groups.iter().enumerate() {
        for &m in &gr.members {
            for &i in &g.node(m).inputs {
                // An inline value is recomputed by every reader, even when it is also
                // materialised as a graph output by a kernel of its own.
                let srcs: SmallVec<[NodeId; 2]> = if inline[i.index()] {
                    reach[i.index()].iter().map(|&(p, _)| p).collect()
                } else {
                    SmallVec::from_slice(&[i])
                };
                for p in srcs {
                    if let Some(pg) = group_of[p.index()] {
                        if pg != gi {
                            needs_buffer[p.index()] = true;
                            direct_deps[gi].push(pg);
                        }
                    }
                }
            }
        }
    }
    for &o in g.outputs() {
        needs_buffer[o.index()] = true;
    }
    // Kahn's algorithm, smallest group first: a stable execution order.
    let mut indeg = vec![0usize; groups.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
    for (gi, ds) in direct_deps.iter_mut().enumerate() {
        ds.sort();
        ds.dedup();
        indeg[gi] = ds.len();
        for &d in ds.iter() {
            users[d].push(gi);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..groups.len()).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(groups.len());
    while let Some(&gi) = ready.iter().next() {
        ready.remove(&gi);
        order.push(gi);
        for &u in &users[gi] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.insert(u);
            }
        }
    }
    assert_eq!(order.len(), groups.len(), "invariant: the kernel grouping has a cycle");

    let (mut kg, mut buf) = KernelGraph::with_inputs_of(g);
    let mut kernel_of = vec![None; len];
    for (ki, &gi) in order.iter().enumerate() {
        let gr = &groups[gi];
        let name = format!("k{ki}");
        let mut body = Graph::new(name.clone());
        let mut map: HashMap<NodeId, NodeId> = HashMap::new();
        let mut inputs: Vec<BufferId> = Vec::new();
        for &m in &gr.members {
            kernel_of[m.index()] = Some(ki);
            let n = g.node(m);
            let mut ops: SmallVec<[NodeId; 3]> = SmallVec::new();
            for &i in &n.inputs {
                ops.push(copy_operand(g, i, gi, group_of, inline, &buf, &mut body, &mut map, &mut inputs));
            }
            let id = body.push(Node { op: n.op.clone(), dtype: n.dtype, shape: n.shape.clone(), inputs: ops });
            map.insert(m, id);
        }
        let mut outs = Vec::new();
        let mut body_outs = Vec::new();
        for &m in &gr.members {
            if needs_buffer[m.index()] {
                let n = g.node(m);
                let b = kg.add_buffer(n.dtype, n.shape.clone());
                buf[m.index()] = Some(b);
                outs.push(b);
                body_outs.push(map[&m]);
            }
        }
        body.set_outputs(body_outs);
        let body = inputs_first(&body);
        let kind = match gr.kind {
            GroupKind::Gemm => KernelKind::Gemm,
            GroupKind::Attention => KernelKind::Attention,
            GroupKind::Loop => KernelKind::classify(&body),
        };
        kg.kernels.push(Kernel { name, kind, body, inputs, outputs: outs });
    }
    kg.outputs = g.outputs().iter().map(|o| buf[o.index()].expect("every graph output has a buffer")).collect();
    Grouping { kernels: kg, kernel_of, placement }
}

/// Resolves operand `i` of a member of group `gi` inside the kernel body: a member, an
/// inline chain copied in, or a new body input bound to a buffer.
#[allow(clippy::too_many_arguments)]
fn copy_operand(
    g: &Graph,
    i: NodeId,
    gi: usize,
    group_of: &[Option<usize>],
    inline: &[bool],
    buf: &[Option<BufferId>],
    body: &mut Graph,
    map: &mut HashMap<NodeId, NodeId>,
    inputs: &mut Vec<BufferId>,
) -> NodeId {
    if let Some(&b) = map.get(&i) {
        return b;
    }
    let n = g.node(i);
    let id = if group_of[i.index()] == Some(gi) {
        unreachable!("members are copied in topological order")
    } else if inline[i.index()] {
        let mut ops: SmallVec<[NodeId; 3]> = SmallVec::new();
        for &j in &n.inputs {
            ops.push(copy_operand(g, j, gi, group_of, inline, buf, body, map, inputs));
        }
        body.push(Node { op: n.op.clone(), dtype: n.dtype, shape: n.shape.clone(), inputs: ops })
    } else {
        let b = buf[i.index()].expect("invariant: a kernel reads a value before the kernel producing it");
        inputs.push(b);
        body.input(format!("in{}", inputs.len() - 1), n.dtype, n.shape.clone()).expect("fresh input name")
    };
    map.insert(i, id);
    id
}


/// The same body with its `input` nodes first (in input order), then the rest in order: easier
/// to read, and what a code generator binding parameters first expects.
fn inputs_first(body: &Graph) -> Graph {
    let mut out = Graph::new(body.name());
    let mut map: Vec<Option<NodeId>> = vec![None; body.len()];
    for &i in body.inputs() {
        let n = body.node(i).clone();
        let id = out.push(n);
        out.register_input(id);
        map[i.index()] = Some(id);
    }
    for (id, n) in body.nodes() {
        if map[id.index()].is_some() {
            continue;
        }
        let mut n = n.clone();
        n.inputs = n.inputs.iter().map(|i| map[i.index()].expect("operands precede")).collect();
        map[id.index()] = Some(out.push(n));
    }
    out.set_outputs(body.outputs().iter().map(|o| map[o.index()].expect("outputs exist")).collect());
    out
}
