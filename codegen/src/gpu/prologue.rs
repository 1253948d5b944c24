//! Layer norms fused into the GEMM that consumes them.
//!
//! At batch 1 a transformer block runs `layer_norm -> GEMM` twice; the norm is a kernel of
//! its own (~1.7 us in a CUDA graph on an H100 for 32 rows) whose output is read once, by the
//! GEMM. Kiln's skinny GEMM (`emit/skinny.rs`) can normalize its `A` rows itself
//! ([`crate::gpu::emit::Norm`]), so the lowering hands it the norm's input, gamma and beta:
//! - [`fuse_into_gemms`] moves a norm kernel's body into the one GEMM kernel that reads its
//!   output, as that GEMM's `A` operand (a kernel-graph rewrite, before lowering);
//! - [`layer_norm`] recognizes the norm in a body, so that the GEMM's lowering
//!   (`lower.rs`) can emit the fused kernel; when the skinny GEMM does not take the GEMM, the
//!   norm is lowered on its own as before (one loop kernel), so the rewrite never loses a case.
//!
//! Two ways, chosen per GEMM when it is lowered:
//! - **Statistics from the producer** (the default, [`stats_enabled`]): when the skinny GEMM
//!   that writes the norm's input is lowered first, it also writes the row statistics of its
//!   output per column block (`emit::RowStats`); the GEMM after the norm reads them and
//!   normalizes `A` as it loads it, in any K split. In a transformer block, the residual
//!   GEMMs (attention and MLP down projections) feed the next layer norm.
//! - **Statistics in the consumer** (opt-in, [`enabled`]): the GEMM computes each row's
//!   statistics itself, which takes whole rows per block (one K split); measured, it costs
//!   what the norm kernel did.
//!
//! Otherwise the norm is lowered as its own kernel, as without the rewrite.

use ir::{BinaryOp, DType, Graph, KernelGraph, NodeId, Op, ReduceOp, UnaryOp};
use std::collections::HashMap;

/// The largest GEMM `m` a norm is moved into (the skinny GEMM's bound).
const MAX_M: usize = 64;

/// A layer norm over the last axis found in a body: `(x - mean) * rsqrt(var + eps) [* gamma]
/// [+ beta]` computed in f32 from a 16-bit `x`, rounded back to `x`'s dtype.
#[derive(Clone, Debug)]
pub(crate) struct LayerNorm {
    pub x: NodeId,
    /// gamma and beta as stored (before their cast to f32), shape `[k]`.
    pub gamma: Option<NodeId>,
    pub beta: Option<NodeId>,
    pub eps: f64,
    /// Every node the norm computes (not `x`, gamma, beta or constants), the root first.
    pub nodes: Vec<NodeId>,
}

/// `root` as a layer norm over its last axis, in the form the frontend decomposes
/// `layer_norm` into (and the optimizer keeps):
///
/// ```text
/// xf = cast(x, f32); d = xf - sum(xf, -1) / k; r = rsqrt(sum(d * d, -1) / k + eps)
/// root = cast([reshape](((d * r) [* cast(gamma)]) [+ cast(beta)]), dtype(x))
/// ```
///
/// with `x` 16-bit (bf16 / f16), gamma and beta `[k]`; commuted operands are accepted.
pub(crate) fn layer_norm(b: &Graph, root: NodeId) -> Option<LayerNorm> {
    let node = |id: NodeId| b.node(id);
    let mut nodes = vec![root];
    let Op::Cast { to } = node(root).op else {
        return None;
    };
    if !matches!(to, DType::BF16 | DType::F16) {
        return None;
    }
    let mut cur = node(root).inputs[0];
    if matches!(node(cur).op, Op::Reshape { .. }) {
        nodes.push(cur);
        cur = node(cur).inputs[0];
    }
    // A per-column parameter `[k]` as stored: `cast(p, f32)` or an f32 `p`.
    let param = |id: NodeId, nodes: &mut Vec<NodeId>| -> Option<NodeId> {
        let n = node(id);
        if n.shape.rank() != 1 || n.dtype != DType::F32 {
            return None;
        }
        match n.op {
            Op::Cast { .. } => {
                nodes.push(id);
                Some(n.inputs[0])
            }
            _ => Some(id),
        }
    };
    // `op(stream, param)` either way round: (stream, stored param).
    let with_param =
        |id: NodeId, op: BinaryOp, nodes: &mut Vec<NodeId>| -> Option<(NodeId, NodeId)> {
            let n = node(id);
            if n.op != Op::Binary(op) || n.dtype != DType::F32 {
                return None;
            }
            let (l, r) = (n.inputs[0], n.inputs[1]);
            let (s, p) = if node(r).shape.rank() == 1 && node(l).shape.rank() > 1 {
                (l, r)
            } else {
                (r, l)
            };
            if node(s).shape.rank() <= 1 {
                return None;
            }
            let p = param(p, nodes)?;
            nodes.push(id);
            Some((s, p))
        };
    let mut beta = None;
    if let Some((s, p)) = with_param(cur, BinaryOp::Add, &mut nodes) {
        beta = Some(p);
        cur = s;
    }
    let mut gamma = None;
    if let Some((s, p)) = with_param(cur, BinaryOp::Mul, &mut nodes) {
        gamma = Some(p);
        cur = s;
    }
    // d * r
    let u = node(cur);
    if u.op != Op::Binary(BinaryOp::Mul) || u.dtype != DType::F32 {
        return None;
    }
    nodes.push(cur);
    let is = |id: NodeId, op: Op| node(id).op == op;
    let (d, r) = if is(u.inputs[1], Op::Unary(UnaryOp::Rsqrt)) {
        (u.inputs[0], u.inputs[1])
    } else {
        (u.inputs[1], u.inputs[0])
    };
    if !is(r, Op::Unary(UnaryOp::Rsqrt)) || !is(d, Op::Binary(BinaryOp::Sub)) {
        return None;
    }
    nodes.extend([r, d]);
    let k = node(d).shape.dims().last().copied()?;
    // var + eps
    let ve = node(r).inputs[0];
    let (var, eps) = super::lower::with_const(b, ve, BinaryOp::Add)?;
    nodes.push(ve);
    // sum(d * d) / k
    let (s2, k2) = super::lower::with_const(b, var, BinaryOp::Div)?;
    nodes.push(var);
    let sq = row_sum(b, s2)?;
    nodes.push(s2);
    if node(sq).op != Op::Binary(BinaryOp::Mul) || node(sq).inputs.as_slice() != [d, d] {
        return None;
    }
    nodes.push(sq);
    // d = xf - sum(xf) / k
    let (xf, mean) = (node(d).inputs[0], node(d).inputs[1]);
    let (s1, k1) = super::lower::with_const(b, mean, BinaryOp::Div)?;
    nodes.push(mean);
    if row_sum(b, s1)? != xf {
        return None;
    }
    nodes.push(s1);
    let Op::Cast { to: DType::F32 } = node(xf).op else {
        return None;
    };
    let x = node(xf).inputs[0];
    nodes.push(xf);
    if node(x).dtype != to || k1 != k as f64 || k2 != k as f64 || !eps.is_finite() || eps < 0.0 {
        return None;
    }
    Some(LayerNorm {
        x,
        gamma,
        beta,
        eps,
        nodes,
    })
}

/// The input of `sum(input, last axis, keepdim)` at `id` (f32).
fn row_sum(b: &Graph, id: NodeId) -> Option<NodeId> {
    let n = b.node(id);
    match &n.op {
        Op::Reduce {
            op: ReduceOp::Sum,
            axes,
            keepdim: true,
        } if n.dtype == DType::F32 && axes.len() == 1 && axes[0] + 1 == n.shape.rank() => {
            Some(n.inputs[0])
        }
        _ => None,
    }
}

/// Whether every node `ln` computes is used only inside it (its root by `user` alone) and
/// none is a body output: the norm can be computed inside the GEMM and nowhere else.
pub(crate) fn closed(b: &Graph, ln: &LayerNorm, user: NodeId) -> bool {
    let inside: std::collections::HashSet<NodeId> = ln.nodes.iter().copied().collect();
    let root = ln.nodes[0];
    ln.nodes.iter().all(|&id| {
        !b.outputs().contains(&id)
            && b.users(id).iter().all(|u| {
                if id == root {
                    *u == user
                } else {
                    inside.contains(u)
                }
            })
    })
}

/// The GEMM that would read `a` (a body input) as its `A` operand and nothing else: the
/// matmul, through a reshape, with `m <= MAX_M` rows of a 16-bit dtype.
fn gemm_reading(b: &Graph, a: NodeId) -> Option<NodeId> {
    let users = b.users(a);
    let [u] = users.as_slice() else { return None };
    let mm = match b.node(*u).op {
        Op::MatMul => *u,
        Op::Reshape { .. } => match b.users(*u).as_slice() {
            [mm] if b.node(*mm).op == Op::MatMul && !b.outputs().contains(u) => *mm,
            _ => return None,
        },
        _ => return None,
    };
    let n = b.node(mm);
    let via = if *u == mm { a } else { *u };
    let rows = n.shape.dims().iter().rev().skip(1).product::<usize>();
    (n.inputs[0] == via
        && n.inputs[1] != via
        && rows <= MAX_M
        && matches!(n.dtype, DType::BF16 | DType::F16))
    .then_some(mm)
}

thread_local! {
    static FUSE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether norms are fused into GEMMs: [`with_fused_norms`]' setting on this thread, else
/// `KILN_GPU_FUSE_NORM=1`. Off by default: on an H100 the fused GEMM costs what the norm
/// kernel it replaces did (GPT-2 small b1 t32: 0.336 ms fused against 0.335 without, one
/// call; docs/gpu-gemm.md).
pub(crate) fn enabled() -> bool {
    FUSE.with(|c| c.get()).unwrap_or_else(|| std::env::var("KILN_GPU_FUSE_NORM").is_ok_and(|v| v == "1"))
}

thread_local! {
    static STATS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether a norm whose input a skinny GEMM writes runs inside the GEMM after it, on row
/// statistics that the writer stores beside its output: [`with_norm_stats`]' setting on this
/// thread, else `KILN_GPU_NORM_STATS` (default on; `0` turns it off).
pub(crate) fn stats_enabled() -> bool {
    STATS.with(|c| c.get()).unwrap_or_else(|| std::env::var("KILN_GPU_NORM_STATS").map_or(true, |v| v != "0"))
}

/// Runs `f` (which compiles graphs) with norms fused on their producer's row statistics
/// (`on`) or not, on this thread, whatever the environment says.
pub fn with_norm_stats<T>(on: bool, f: impl FnOnce() -> T) -> T {
    let old = STATS.with(|c| c.replace(Some(on)));
    let out = f();
    STATS.with(|c| c.set(old));
    out
}

/// The buffers whose row statistics a fused norm would read: the input `x` of each layer
/// norm that a kernel's GEMM takes as its `A` (after [`fuse_into_gemms`]). A skinny GEMM that
/// writes one of them writes its statistics too (`lower.rs`).
pub(crate) fn stats_wanted(kg: &KernelGraph) -> std::collections::HashSet<u32> {
    let mut want = std::collections::HashSet::new();
    if !stats_enabled() {
        return want;
    }
    for k in &kg.kernels {
        let b = &k.body;
        for (_, n) in b.nodes() {
            if n.op != Op::MatMul {
                continue;
            }
            let a = n.inputs[0];
            let root = if matches!(b.node(a).op, Op::Reshape { .. }) { b.node(a).inputs[0] } else { a };
            if let Some(ln) = layer_norm(b, root) {
                if let Some(pos) = b.inputs().iter().position(|&i| i == ln.x) {
                    want.insert(k.inputs[pos].0);
                }
            }
        }
    }
    want
}

/// Runs `f` (which compiles graphs) with layer norms fused into the skinny GEMMs that read
/// them, computing their statistics themselves (`on`) or not, on this thread, whatever the
/// environment says.
pub fn with_fused_norms<T>(on: bool, f: impl FnOnce() -> T) -> T {
    let old = FUSE.with(|c| c.replace(Some(on)));
    let out = f();
    FUSE.with(|c| c.set(old));
    out
}

/// Moves each layer-norm kernel whose output only one GEMM kernel reads, as a small-`m`
/// GEMM's `A` operand, into that kernel (the norm's inputs become the GEMM kernel's).
pub(crate) fn fuse_into_gemms(kg: &mut KernelGraph) -> Result<(), ir::IrError> {
    if !enabled() && !stats_enabled() {
        return Ok(());
    }
    let mut ri = 0;
    while ri < kg.kernels.len() {
        if let Some((gi, pos)) = fusable(kg, ri) {
            let r = kg.kernels.remove(ri);
            let gi = gi - 1;
            let g = &mut kg.kernels[gi];
            let (body, inputs) = merged(&r.body, &r.inputs, &g.body, &g.inputs, pos)?;
            g.body = body;
            g.inputs = inputs;
            continue;
        }
        ri += 1;
    }
    Ok(())
}

/// `(consumer kernel, its input position)` when kernel `ri` is a layer norm to move there.
fn fusable(kg: &KernelGraph, ri: usize) -> Option<(usize, usize)> {
    let r = &kg.kernels[ri];
    let [out] = r.body.outputs() else { return None };
    let buf = r.outputs[0];
    if kg.outputs.contains(&buf) {
        return None;
    }
    let ln = layer_norm(&r.body, *out)?;
    // The norm's own intermediates stay inside it (its root is the body's output).
    let inside: std::collections::HashSet<NodeId> = ln.nodes.iter().copied().collect();
    if !ln.nodes[1..]
        .iter()
        .all(|&id| r.body.users(id).iter().all(|u| inside.contains(u)))
    {
        return None;
    }
    let readers: Vec<(usize, usize)> = kg
        .kernels
        .iter()
        .enumerate()
        .flat_map(|(ki, k)| {
            k.inputs
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == buf)
                .map(move |(pos, _)| (ki, pos))
        })
        .collect();
    let [(gi, pos)] = readers.as_slice() else {
        return None;
    };
    let g = &kg.kernels[*gi];
    (*gi > ri && gemm_reading(&g.body, g.body.inputs()[*pos]).is_some()).then_some((*gi, *pos))
}

/// The GEMM body `g` with its input `pos` computed by the norm body `r` in place: inputs are
/// `g`'s others, then `r`'s.
fn merged(
    r: &Graph,
    r_inputs: &[ir::BufferId],
    g: &Graph,
    g_inputs: &[ir::BufferId],
    pos: usize,
) -> Result<(Graph, Vec<ir::BufferId>), ir::IrError> {
    let mut out = Graph::new(g.name());
    let mut gmap: HashMap<NodeId, NodeId> = HashMap::new();
    let mut rmap: HashMap<NodeId, NodeId> = HashMap::new();
    let mut inputs = Vec::new();
    for (i, &x) in g.inputs().iter().enumerate() {
        if i != pos {
            let n = g.node(x);
            gmap.insert(
                x,
                out.input(g.input_name(x).unwrap_or("in"), n.dtype, n.shape.clone())?,
            );
            inputs.push(g_inputs[i]);
        }
    }
    for (i, &x) in r.inputs().iter().enumerate() {
        let n = r.node(x);
        rmap.insert(
            x,
            out.input(
                format!("norm_{}", r.input_name(x).unwrap_or("in")),
                n.dtype,
                n.shape.clone(),
            )?,
        );
        inputs.push(r_inputs[i]);
    }
    copy_nodes(&mut out, r, &mut rmap);
    gmap.insert(g.inputs()[pos], rmap[&r.outputs()[0]]);
    copy_nodes(&mut out, g, &mut gmap);
    out.set_outputs(g.outputs().iter().map(|o| gmap[o]).collect());
    Ok((out, inputs))
}

/// Appends `src`'s nodes not yet in `map` to `out`, their inputs through `map`.
fn copy_nodes(out: &mut Graph, src: &Graph, map: &mut HashMap<NodeId, NodeId>) {
    for (id, n) in src.nodes() {
        if !map.contains_key(&id) {
            let new = out.push(ir::Node { inputs: n.inputs.iter().map(|i| map[i]).collect(), ..n.clone() });
            map.insert(id, new);
        }
    }
}
