//! Kernel bodies -> GPU steps.
//!
//! Each kernel body is split into what the GPU runs: `MatMul` nodes become cuBLASLt GEMMs (a
//! following per-column bias add, and a ReLU after it, ride in cuBLASLt's epilogue),
//! `FlashAttention` becomes GEMM + one fused scaled/masked softmax kernel + GEMM, and the rest
//! becomes loop kernels, one per value that must exist in memory (a body output, a GEMM
//! operand, or a reduction whose row space differs from its consumer's). Everything between
//! such values is computed inline by the loop kernel that needs it.

use super::emit::{self, EmittedKernel};
use super::prologue;
use super::{ptx, GpuError, GpuOptions, SmVersion};
use ir::{BinaryOp, Buffer, DType, Graph, Kernel, KernelGraph, KernelKind, Node, NodeId, Op, ReduceOp, Shape, UnaryOp};
use runtime::cuda::{
    plan_arena, CudaArtifact, GemmActivation, GemmOperand, GemmStep, GpuBuffer, GpuLocation, GpuStep, LaunchStep,
};
use std::collections::HashMap;

/// A graph as a kernel graph with one kernel holding all of it.
pub fn single_kernel(g: &Graph) -> Result<KernelGraph, GpuError> {
    let mut kg = KernelGraph { name: g.name().to_string(), ..Default::default() };
    let mut inputs = Vec::new();
    for &i in g.inputs() {
        let n = g.node(i);
        let b = kg.add_buffer(n.dtype, n.shape.clone());
        kg.inputs.push(b);
        kg.input_names.push(g.input_name(i).unwrap_or_default().to_string());
        inputs.push(b);
    }
    let mut outputs = Vec::new();
    for &o in g.outputs() {
        let n = g.node(o);
        outputs.push(kg.add_buffer(n.dtype, n.shape.clone()));
    }
    kg.outputs = outputs.clone();
    kg.kernels.push(Kernel { name: "k0".into(), kind: KernelKind::classify(g), body: g.clone(), inputs, outputs });
    Ok(kg)
}

enum Pending {
    Launch { kernel: String, emitted: EmittedKernel, args: Vec<u32> },
    Gemm(GemmStep),
    Copy { from: u32, to: u32 },
}

struct Lowering {
    buffers: Vec<Buffer>,
    steps: Vec<Pending>,
    next_symbol: usize,
    /// Skinny split-K GEMMs' arrival counters: (buffer, step to zero them before, length).
    counters: Option<(u32, usize, usize)>,
    /// The graph's input buffers: no step writes them (an output that is an input is copied).
    inputs: Vec<u32>,
    /// The target runs thread-block clusters (sm_90).
    clusters: bool,
    /// Buffers whose row statistics a fused norm would read (`prologue::stats_wanted`).
    wants_stats: std::collections::HashSet<u32>,
    /// Row statistics written so far, by the output buffer of the skinny GEMM that wrote them.
    stats: HashMap<u32, WrittenStats>,
}

/// Row statistics that a skinny GEMM writes beside its `[rows, cols]` output (`emit::RowStats`).
#[derive(Clone, Copy)]
struct WrittenStats {
    buffer: u32,
    rows: usize,
    cols: usize,
    layout: emit::RowStats,
}

impl Lowering {
    /// The skinny GEMM `(m, n, k)` of weight buffer `b` (`[n, k]` when transposed) with an
    /// epilogue `(bias, act, residual)` and maybe a fused norm with its gamma / beta buffers;
    /// operands that are graph inputs are marked invariant (loaded before the kernel waits).
    #[allow(clippy::type_complexity)]
    fn skinny_spec(
        &self,
        dtype: DType,
        (m, n, k): (usize, usize, usize),
        (b, b_transposed): (u32, bool),
        (bias, act, residual): (Option<u32>, Option<GemmActivation>, Option<u32>),
        norm: Option<(emit::Norm, &[u32])>,
    ) -> emit::Skinny {
        let input = |x: u32| self.inputs.contains(&x);
        emit::Skinny {
            dtype,
            m,
            n,
            k,
            bias: bias.is_some(),
            act,
            residual: residual.is_some(),
            b_transposed,
            counter_base: 0,
            invariant: emit::Invariant {
                b: input(b),
                bias: bias.is_some_and(input),
                norm: norm.is_some_and(|(_, params)| params.iter().all(|&p| input(p))),
            },
            norm: norm.map(|(nm, _)| nm),
            clusters: self.clusters,
            stats_out: false,
        }
    }

    fn temp(&mut self, dtype: DType, shape: Shape) -> u32 {
        self.buffers.push(Buffer { dtype, shape });
        self.buffers.len() as u32 - 1
    }

    /// Emits a loop kernel computing `g`'s outputs from its inputs.
    fn loop_kernel(&mut self, kernel: &str, g: &Graph, ins: &[u32], outs: &[u32]) -> Result<(), GpuError> {
        let symbol = format!("kiln_{}_{}", sanitize(kernel), self.next_symbol);
        self.next_symbol += 1;
        let args: Vec<(DType, usize)> = ins
            .iter()
            .chain(outs)
            .map(|&b| {
                let x = &self.buffers[b as usize];
                (x.dtype, x.shape.numel().max(1))
            })
            .collect();
        let has_reduce = g.nodes().any(|(_, n)| matches!(n.op, Op::Reduce { .. }));
        let emitted = if has_reduce { emit::row_reduction(&symbol, g, &args)? } else { emit::elementwise(&symbol, g, &args)? };
        self.push_launch(kernel, emitted, ins, outs);
        Ok(())
    }

    /// Emits Kiln's fused attention kernel for `g` (output: attention or a permute of it).
    /// `flash`: the tensor-core kernel (`emit::flash_attention`) rather than the SIMT one.
    fn attention_kernel(&mut self, kernel: &str, g: &Graph, ins: &[u32], outs: &[u32], flash: bool) -> Result<(), GpuError> {
        let symbol = format!("kiln_{}_{}_{}", sanitize(kernel), if flash { "flash" } else { "attn" }, self.next_symbol);
        self.next_symbol += 1;
        let args = self.arg_types(ins, outs);
        let emitted = if flash { emit::flash_attention(&symbol, g, &args)? } else { emit::attention(&symbol, g, &args)? };
        self.push_launch(kernel, emitted, ins, outs);
        Ok(())
    }

    /// Whether the buffer, if any, holds `dtype`.
    fn holds(&self, buf: Option<u32>, dtype: DType) -> bool {
        buf.is_none_or(|b| self.buffers[b as usize].dtype == dtype)
    }

    fn arg_types(&self, ins: &[u32], outs: &[u32]) -> Vec<(DType, usize)> {
        ins.iter()
            .chain(outs)
            .map(|&b| {
                let x = &self.buffers[b as usize];
                (x.dtype, x.shape.numel().max(1))
            })
            .collect()
    }

    fn push_launch(&mut self, kernel: &str, emitted: EmittedKernel, ins: &[u32], outs: &[u32]) {
        if emitted.grid[0] == 0 {
            return;
        }
        self.steps.push(Pending::Launch { kernel: kernel.to_string(), emitted, args: ins.iter().chain(outs).copied().collect() });
    }
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The row space `(input shape, axes)` of a reduce node.
fn space(body: &Graph, id: NodeId) -> Option<(Shape, Vec<usize>)> {
    match &body.node(id).op {
        Op::Reduce { axes, .. } => Some((body.node(body.node(id).inputs[0]).shape.clone(), axes.clone())),
        _ => None,
    }
}

/// A GEMM with what cuBLASLt's epilogue adds to it.
struct Epilogue {
    mm: NodeId,
    bias: Option<NodeId>,
    act: Option<GemmActivation>,
    residual: Option<NodeId>,
}

/// Attention with at most this many keys runs as Kiln's fused kernel (SIMT); longer ones as
/// GEMM + softmax + GEMM on the tensor cores.
const FUSED_ATTENTION_MAX_KEYS: usize = 256;

/// `x` op `constant` (either order) for a binary `op`: `(x, constant value)`.
pub(super) fn with_const(b: &Graph, id: NodeId, op: BinaryOp) -> Option<(NodeId, f64)> {
    let n = b.node(id);
    if n.op != Op::Binary(op) {
        return None;
    }
    for (x, c) in [(n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])] {
        if let Op::Full { value } = b.node(c).op {
            if b.node(c).shape.numel() == 1 && b.node(x).shape == n.shape {
                return Some((x, value.0));
            }
        }
    }
    None
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-2 * b.abs()
}

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` at `id` (constants within bf16 rounding):
/// `x` and the interior nodes with their single user.
fn gelu_tanh(b: &Graph, id: NodeId) -> Option<(NodeId, Vec<(NodeId, NodeId)>)> {
    let n = b.node(id);
    if n.op != Op::Binary(BinaryOp::Mul) || !n.dtype.is_float() {
        return None;
    }
    for (half, rest) in [(n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])] {
        let Some((x, h)) = with_const(b, half, BinaryOp::Mul) else { continue };
        let Some((th, one)) = with_const(b, rest, BinaryOp::Add) else { continue };
        if !close(h, 0.5) || !close(one, 1.0) || b.node(th).op != Op::Unary(UnaryOp::Tanh) {
            continue;
        }
        let Some((sum, beta)) = with_const(b, b.node(th).inputs[0], BinaryOp::Mul) else { continue };
        if !close(beta, (2.0 / std::f64::consts::PI).sqrt()) {
            continue;
        }
        let sn = b.node(sum);
        if sn.op != Op::Binary(BinaryOp::Add) {
            continue;
        }
        for (x2, cubed) in [(sn.inputs[0], sn.inputs[1]), (sn.inputs[1], sn.inputs[0])] {
            if x2 != x {
                continue;
            }
            let Some((cube, a)) = with_const(b, cubed, BinaryOp::Mul) else { continue };
            if !close(a, 0.044715) {
                continue;
            }
            let cn = b.node(cube);
            if cn.op != Op::Binary(BinaryOp::Mul) {
                continue;
            }
            let (p, q) = (cn.inputs[0], cn.inputs[1]);
            let sq = |s: NodeId| b.node(s).op == Op::Binary(BinaryOp::Mul) && b.node(s).inputs[0] == x && b.node(s).inputs[1] == x;
            let square = if q == x && sq(p) { p } else if p == x && sq(q) { q } else { continue };
            let th_in = b.node(th).inputs[0];
            let interior = vec![(half, id), (rest, id), (th, rest), (th_in, th), (sum, th_in), (cubed, sum), (cube, cubed), (square, cube)];
            return Some((x, interior));
        }
    }
    None
}

/// Lowers one kernel body.
struct BodyLowering<'a> {
    name: String,
    body: &'a Graph,
    /// Body nodes that live in a buffer.
    mat: HashMap<NodeId, u32>,
    /// Where each body output must end up.
    out_target: HashMap<NodeId, u32>,
}

impl<'a> BodyLowering<'a> {
    /// The buffer holding `id`, computing it if needed.
    fn materialize(&mut self, lw: &mut Lowering, id: NodeId) -> Result<u32, GpuError> {
        if let Some(&b) = self.mat.get(&id) {
            return Ok(b);
        }
        let node = self.body.node(id).clone();
        let target = match self.out_target.get(&id) {
            Some(&b) => b,
            None => lw.temp(node.dtype, node.shape.clone()),
        };
        match &node.op {
            Op::MatMul => self.matmul(lw, id, target, None, None, None)?,
            Op::FlashAttention { causal, scale } => {
                if !self.fused_attention(lw, id, id, target)? {
                    self.attention(lw, &node, target, *causal, scale.0)?
                }
            }
            Op::Permute { .. } if self.permuted_attention(id) && self.fused_attention(lw, node.inputs[0], id, target)? => {}
            _ => {
                if let Some(ep) = self.gemm_epilogue(id) {
                    let residual = match ep.residual {
                        Some(r) => Some(self.materialize(lw, r)?),
                        None => None,
                    };
                    self.matmul(lw, ep.mm, target, ep.bias, ep.act, residual)?;
                } else {
                    self.loop_for(lw, id, target)?;
                }
            }
        }
        self.mat.insert(id, target);
        Ok(target)
    }

    /// Whether `id` is an interior node of a fused pattern: used once, by `user`, and neither
    /// a body output nor already in memory.
    fn interior(&self, id: NodeId, user: NodeId) -> bool {
        let b = self.body;
        b.users(id) == vec![user] && !self.out_target.contains_key(&id) && !b.outputs().contains(&id) && !self.mat.contains_key(&id)
    }

    /// What cuBLASLt can compute in one GEMM ending at `id`:
    /// `matmul + bias[n] (relu | gelu_tanh)`, `matmul (+ bias[n]) gelu_tanh`, or
    /// `residual + matmul (+ bias[n])` (the residual as the GEMM's C operand, beta = 1), through
    /// a reshape (same row-major layout) between the GEMM and what follows.
    fn gemm_epilogue(&self, id: NodeId) -> Option<Epilogue> {
        let b = self.body;
        let n = b.node(id);
        // `x` as matmul or add(matmul, bias[n]); x's own uses are the caller's to check.
        let mm_bias = |x: NodeId| -> Option<(NodeId, Option<NodeId>)> {
            let xn = b.node(x);
            if xn.op == Op::MatMul {
                return Some((x, None));
            }
            if xn.op != Op::Binary(BinaryOp::Add) {
                return None;
            }
            for (m, y) in [(xn.inputs[0], xn.inputs[1]), (xn.inputs[1], xn.inputs[0])] {
                let (mx, by) = (b.node(m), b.node(y));
                let cols = mx.shape.dims().last().copied().unwrap_or(0);
                let bias_ok = by.dtype == mx.dtype && by.shape.numel() == cols && by.shape.dims().last() == Some(&cols) && mx.shape == xn.shape;
                if mx.op == Op::MatMul && bias_ok && self.interior(m, x) {
                    return Some((m, Some(y)));
                }
            }
            None
        };
        // `x` (used only by `user`) as mm_bias, through one reshape.
        let through = |x: NodeId, user: NodeId| -> Option<(NodeId, Option<NodeId>)> {
            if !self.interior(x, user) {
                return None;
            }
            if matches!(b.node(x).op, Op::Reshape { .. }) {
                let inner = b.node(x).inputs[0];
                return if self.interior(inner, x) { mm_bias(inner) } else { None };
            }
            mm_bias(x)
        };
        if n.op == Op::Binary(BinaryOp::Add) {
            if let Some((mm, Some(bias))) = mm_bias(id) {
                return Some(Epilogue { mm, bias: Some(bias), act: None, residual: None });
            }
        }
        if n.op == Op::Binary(BinaryOp::Max) {
            for (x, y) in [(n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])] {
                let zero = matches!(b.node(y).op, Op::Full { value } if value.0 == 0.0);
                if zero && b.node(x).shape == n.shape && self.interior(x, id) {
                    if let Some((mm, Some(bias))) = mm_bias(x) {
                        return Some(Epilogue { mm, bias: Some(bias), act: Some(GemmActivation::Relu), residual: None });
                    }
                }
            }
        }
        if let Some((x, interior)) = gelu_tanh(b, id) {
            let nodes: Vec<NodeId> = interior.iter().map(|&(i, _)| i).collect();
            let x_only_here = b.users(x).iter().all(|u| nodes.contains(u) || *u == id)
                && !b.outputs().contains(&x)
                && !self.out_target.contains_key(&x)
                && !self.mat.contains_key(&x);
            // cuBLASLt's GELU is the tanh form computed with its own tanh: within the 16-bit
            // types' tolerance; f32 keeps Kiln's exact loop kernel.
            let narrow = matches!(n.dtype, DType::BF16 | DType::F16);
            if narrow && interior.iter().all(|&(i, u)| self.interior(i, u)) && x_only_here && b.node(x).dtype == n.dtype {
                let found = if matches!(b.node(x).op, Op::Reshape { .. }) {
                    let inner = b.node(x).inputs[0];
                    if self.interior(inner, x) { mm_bias(inner) } else { None }
                } else {
                    mm_bias(x)
                };
                if let Some((mm, bias)) = found {
                    return Some(Epilogue { mm, bias, act: Some(GemmActivation::GeluTanh), residual: None });
                }
            }
        }
        if n.op == Op::Binary(BinaryOp::Add) {
            for (r, y) in [(n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])] {
                let rn = b.node(r);
                if rn.shape != n.shape || rn.dtype != n.dtype || matches!(rn.op, Op::Full { .. }) {
                    continue;
                }
                if let Some((mm, bias)) = through(y, id) {
                    if b.node(mm).shape.numel() == n.shape.numel() && b.node(mm).dtype == n.dtype && !self.depends_on(r, mm) {
                        return Some(Epilogue { mm, bias, act: None, residual: Some(r) });
                    }
                }
            }
        }
        None
    }

    /// Whether `a` depends on `b` (within the body).
    fn depends_on(&self, a: NodeId, b: NodeId) -> bool {
        let mut stack = vec![a];
        let mut seen = std::collections::HashSet::new();
        while let Some(x) = stack.pop() {
            if x == b {
                return true;
            }
            if seen.insert(x) {
                stack.extend(self.body.node(x).inputs.iter().copied());
            }
        }
        false
    }

    /// Whether `id` is `permute(flash_attention)` with the attention used only there.
    fn permuted_attention(&self, id: NodeId) -> bool {
        let b = self.body;
        let inner = b.node(id).inputs[0];
        matches!(b.node(inner).op, Op::FlashAttention { .. }) && self.interior(inner, id)
    }

    /// Kiln's fused attention kernel for `attn`, writing `root` (the attention or a permute of
    /// it) into `target`. Returns false where the GEMM + softmax + GEMM path is the better one.
    fn fused_attention(&mut self, lw: &mut Lowering, attn: NodeId, root: NodeId, target: u32) -> Result<bool, GpuError> {
        let node = self.body.node(attn).clone();
        let r = node.shape.rank();
        let sk = self.body.node(node.inputs[1]).shape.dims()[r - 2];
        let d = self.body.node(node.inputs[0]).shape.dims()[r - 1];
        let dv = self.body.node(node.inputs[2]).shape.dims()[r - 1];
        // The tensor-core kernel where it fits (any number of keys), else the SIMT kernel up
        // to FUSED_ATTENTION_MAX_KEYS keys.
        let flash = emit::flash_fits(node.dtype, d, dv);
        if !flash && sk > FUSED_ATTENTION_MAX_KEYS {
            return Ok(false);
        }
        // q, k, v are read through their movement chains; whatever computes them is in memory.
        for &x in &node.inputs {
            let mut n = x;
            while !self.mat.contains_key(&n) && emit::is_index_map(self.body, n) {
                n = self.body.node(n).inputs[0];
            }
            self.materialize(lw, n)?;
        }
        let (g, ins) = self.extract(root);
        lw.attention_kernel(&self.name, &g, &ins, &[target], flash)?;
        Ok(true)
    }

    /// A loop kernel computing `root` into `target`, reading materialized values.
    fn loop_for(&mut self, lw: &mut Lowering, root: NodeId, target: u32) -> Result<(), GpuError> {
        // Reductions whose row space differs from the kernel's must come from memory.
        let spaces: Vec<NodeId> = self.reachable(root).into_iter().filter(|&n| space(self.body, n).is_some()).collect();
        let distinct = spaces.iter().map(|&n| space(self.body, n)).collect::<std::collections::HashSet<_>>();
        if distinct.len() > 1 {
            for &r in &spaces {
                if r != root {
                    self.materialize(lw, r)?;
                }
            }
        }
        // Anchors (matmul, attention) inside the expression are leaves.
        for n in self.reachable(root) {
            if n != root && matches!(self.body.node(n).op, Op::MatMul | Op::FlashAttention { .. }) {
                self.materialize(lw, n)?;
            }
        }
        let (g, ins) = self.extract(root);
        match lw.loop_kernel(&self.name, &g, &ins, &[target]) {
            Err(GpuError::Unsupported { .. }) if !spaces.is_empty() && spaces.iter().any(|&r| r != root && !self.mat.contains_key(&r)) => {
                for &r in &spaces {
                    if r != root {
                        self.materialize(lw, r)?;
                    }
                }
                let (g, ins) = self.extract(root);
                lw.loop_kernel(&self.name, &g, &ins, &[target])
            }
            r => r,
        }
    }

    /// Nodes `root` depends on without crossing a materialized value.
    fn reachable(&self, root: NodeId) -> Vec<NodeId> {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![root];
        let mut out = Vec::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            out.push(n);
            if n != root && self.mat.contains_key(&n) {
                continue;
            }
            stack.extend(self.body.node(n).inputs.iter().copied());
        }
        out
    }

    /// The subgraph computing `root` from materialized values (its inputs, in order).
    fn extract(&self, root: NodeId) -> (Graph, Vec<u32>) {
        let mut g = Graph::new(format!("{}_part", self.body.name()));
        let mut map: HashMap<NodeId, NodeId> = HashMap::new();
        let mut ins = Vec::new();
        let mut order = self.reachable(root);
        order.sort();
        for n in order {
            let node = self.body.node(n);
            let new = if n != root && self.mat.contains_key(&n) || matches!(node.op, Op::Input { .. }) {
                let b = self.mat[&n];
                ins.push(b);
                g.input(format!("b{b}"), node.dtype, node.shape.clone()).expect("fresh input names are unique")
            } else {
                g.push(Node { inputs: node.inputs.iter().map(|i| map[i]).collect(), ..node.clone() })
            };
            map.insert(n, new);
        }
        g.set_outputs(vec![map[&root]]);
        (g, ins)
    }

    /// A GEMM operand: its buffer, whether stored transposed, and its batch dims.
    fn operand(&mut self, lw: &mut Lowering, id: NodeId) -> Result<(u32, bool), GpuError> {
        let n = self.body.node(id);
        let r = n.shape.rank();
        if let Op::Permute { perm } = &n.op {
            let swap_last: Vec<usize> = (0..r).map(|i| if i + 2 == r { r - 1 } else if i + 1 == r { r - 2 } else { i }).collect();
            if r >= 2 && *perm == swap_last {
                let inner = n.inputs[0];
                return Ok((self.materialize(lw, inner)?, true));
            }
        }
        if matches!(n.op, Op::Reshape { .. }) && !self.mat.contains_key(&id) && !self.out_target.contains_key(&id) {
            // A reshape of a contiguous buffer is the same bytes.
            let inner = n.inputs[0];
            return Ok((self.materialize(lw, inner)?, false));
        }
        Ok((self.materialize(lw, id)?, false))
    }

    fn matmul(
        &mut self,
        lw: &mut Lowering,
        mm: NodeId,
        target: u32,
        bias: Option<NodeId>,
        act: Option<GemmActivation>,
        residual: Option<u32>,
    ) -> Result<(), GpuError> {
        let node = self.body.node(mm).clone();
        let (a_id, b_id) = (node.inputs[0], node.inputs[1]);
        let bias = match bias {
            Some(b) => Some(self.materialize(lw, b)?),
            None => None,
        };
        if self.norm_gemm(lw, mm, target, bias, act, residual)? {
            return Ok(());
        }
        let (a, at) = self.operand(lw, a_id)?;
        let (b, bt) = self.operand(lw, b_id)?;
        let out = node.shape.clone();
        let r = out.rank();
        let (m, n) = (out.dims()[r - 2], out.dims()[r - 1]);
        let k = self.body.node(a_id).shape.dims()[self.body.node(a_id).shape.rank() - 1];
        let batch_shape = Shape::new(out.dims()[..r - 2].iter().copied());
        let (sa, sb) = (self.body.node(a_id).shape.clone(), self.body.node(b_id).shape.clone());
        self.gemm(lw, &node.dtype, (a, at, sa), (b, bt, sb), target, (batch_shape, m, n, k), bias, act, residual)
    }

    /// `target = epilogue(layer_norm(x) @ b)` as one skinny GEMM that normalizes its `A` rows
    /// itself (`prologue.rs`), when `mm`'s `A` is a layer norm (through a reshape) computed
    /// for this GEMM alone and the skinny GEMM takes it; false (nothing emitted but operands)
    /// otherwise.
    fn norm_gemm(
        &mut self,
        lw: &mut Lowering,
        mm: NodeId,
        target: u32,
        bias: Option<u32>,
        act: Option<GemmActivation>,
        residual: Option<u32>,
    ) -> Result<bool, GpuError> {
        let b = self.body;
        let node = b.node(mm).clone();
        let (a_id, b_id) = (node.inputs[0], node.inputs[1]);
        let (root, user) = match b.node(a_id).op {
            Op::Reshape { .. } if self.interior(a_id, mm) => (b.node(a_id).inputs[0], a_id),
            _ => (a_id, mm),
        };
        let Some(ln) = prologue::layer_norm(b, root).filter(|_| prologue::enabled() || prologue::stats_enabled()) else {
            return Ok(false);
        };
        if !prologue::closed(b, &ln, user)
            || ln
                .nodes
                .iter()
                .any(|n| self.mat.contains_key(n) || self.out_target.contains_key(n))
        {
            return Ok(false);
        }
        let (out, bshape) = (&node.shape, &b.node(b_id).shape);
        if out.rank() != 2 || bshape.rank() != 2 || !matches!(node.dtype, DType::BF16 | DType::F16)
        {
            return Ok(false);
        }
        let (m, n, k) = (out.dims()[0], out.dims()[1], b.node(a_id).shape.dims()[1]);
        let (wb, bt) = self.operand(lw, b_id)?;
        let x = self.materialize(lw, ln.x)?;
        let gamma = ln.gamma.map(|g| self.materialize(lw, g)).transpose()?;
        let beta = ln.beta.map(|g| self.materialize(lw, g)).transpose()?;
        let params: Vec<u32> = gamma.into_iter().chain(beta).collect();
        let param_ok = params.iter().all(|&p| {
            lw.buffers[p as usize].dtype.is_float() && lw.buffers[p as usize].shape.numel() == k
        });
        if !lw.holds(Some(x), node.dtype)
            || !lw.holds(bias, node.dtype)
            || !lw.holds(residual, node.dtype)
            || !param_ok
            || lw.buffers[x as usize].shape.numel() != m * k
        {
            return Ok(false);
        }
        // The row statistics of `x` from the GEMM that wrote it, else (opt-in) the kernel's own.
        let from = lw.stats.get(&x).filter(|st| st.rows == m && st.cols == k).copied().filter(|_| prologue::stats_enabled());
        if from.is_none() && !prologue::enabled() {
            return Ok(false);
        }
        let norm = emit::Norm { gamma: gamma.is_some(), beta: beta.is_some(), eps: ln.eps, stats: from.map(|st| st.layout) };
        let spec = lw.skinny_spec(node.dtype, (m, n, k), (wb, bt), (bias, act, residual), Some((norm, &params)));
        if !spec.fits() {
            return Ok(false);
        }
        let mut ins = params;
        ins.extend(from.map(|st| st.buffer));
        self.skinny_gemm(lw, &spec, (x, &ins), wb, target, bias, residual)?;
        Ok(true)
    }

    /// Enqueues `target = a @ b` for logical operand shapes, broadcasting batch dims.
    #[allow(clippy::type_complexity)]
    fn gemm(
        &mut self,
        lw: &mut Lowering,
        dtype: &DType,
        a: (u32, bool, Shape),
        b: (u32, bool, Shape),
        target: u32,
        (batch_shape, m, n, k): (Shape, usize, usize, usize),
        bias: Option<u32>,
        act: Option<GemmActivation>,
        residual: Option<u32>,
    ) -> Result<(), GpuError> {
        if !dtype.is_float() {
            return Err(GpuError::Unsupported { kernel: self.name.clone(), reason: format!("a {dtype} matmul (cuBLASLt GEMMs are float)") });
        }
        let batch = batch_shape.numel();
        // Each operand: batch stride (0 = shared), materializing a broadcast copy when needed.
        let mut prep = |x: (u32, bool, Shape), rows: usize, cols: usize| -> Result<GemmOperand, GpuError> {
            let (buf, trans, shape) = x;
            let own = Shape::new(shape.dims()[..shape.rank() - 2].iter().copied());
            if own.numel() == 1 {
                return Ok(GemmOperand { buffer: buf, transposed: trans, batch_stride: 0 });
            }
            let padded: Vec<usize> = std::iter::repeat_n(1, batch_shape.rank().saturating_sub(own.rank())).chain(own.dims().iter().copied()).collect();
            if padded == batch_shape.dims() {
                return Ok(GemmOperand { buffer: buf, transposed: trans, batch_stride: (rows * cols) as i64 });
            }
            // Partial broadcast: expand into a contiguous copy. The buffer holds the operand's
            // bytes in its own shape: a reshape's input (read in place, `operand`) or the
            // un-transposed matrices; view it in the layout the GEMM reads first.
            let stored = lw.buffers[buf as usize].clone();
            let layout = if trans { stored.shape.clone() } else { shape.clone() };
            let last2 = &layout.dims()[layout.rank() - 2..];
            let full = Shape::new(batch_shape.dims().iter().copied().chain(last2.iter().copied()));
            let mut g = Graph::new("expand");
            let i = g.input("x", stored.dtype, stored.shape.clone())?;
            let v = if layout == stored.shape { i } else { g.add(Op::Reshape { shape: layout.clone() }, &[i])? };
            let e = g.add(Op::Expand { shape: full.clone() }, &[v])?;
            g.set_outputs(vec![e]);
            let t = lw.temp(stored.dtype, full);
            lw.loop_kernel(&format!("{}_expand", self.name), &g, &[buf], &[t])?;
            Ok(GemmOperand { buffer: t, transposed: trans, batch_stride: (rows * cols) as i64 })
        };
        let mut ga = prep(a, m, k)?;
        let gb = prep(b, k, n)?;
        let (mut batch, mut m) = (batch.max(1), m);
        if gb.batch_stride == 0 && !ga.transposed && batch > 1 && ga.batch_stride != 0 {
            // [batch, m, k] @ [k, n]: one GEMM of batch * m rows.
            m *= batch;
            batch = 1;
            ga.batch_stride = 0;
        }
        if batch == 1 && !ga.transposed {
            let spec = lw.skinny_spec(*dtype, (m, n, k), (gb.buffer, gb.transposed), (bias, act, residual), None);
            if spec.fits() && lw.holds(bias, *dtype) && lw.holds(residual, *dtype) {
                return self.skinny_gemm(lw, &spec, (ga.buffer, &[]), gb.buffer, target, bias, residual);
            }
        }
        lw.steps.push(Pending::Gemm(GemmStep {
            kernel: self.name.clone(),
            dtype: *dtype,
            batch,
            m,
            n,
            k,
            a: ga,
            b: gb,
            c: target,
            bias,
            activation: act,
            residual,
        }));
        Ok(())
    }

    /// `target = epilogue(a @ b)` by Kiln's skinny GEMM (`emit/skinny.rs`), one kernel (split-K
    /// reduced in it); `a` is the `A` buffer and, for a fused norm, its gamma, beta and row
    /// statistics. When a fused norm will read `target`, the kernel writes its row statistics
    /// too.
    #[allow(clippy::too_many_arguments)]
    fn skinny_gemm(
        &mut self,
        lw: &mut Lowering,
        spec: &emit::Skinny,
        (a, norm): (u32, &[u32]),
        b: u32,
        target: u32,
        bias: Option<u32>,
        residual: Option<u32>,
    ) -> Result<(), GpuError> {
        let (splits, _) = spec.splits();
        let epilogue: Vec<u32> = bias.into_iter().chain(residual).collect();
        let kernel = format!("{}_gemm", self.name);
        let symbol = format!("kiln_{}_skinny_{}", sanitize(&self.name), lw.next_symbol);
        lw.next_symbol += 1;
        let mut outs = vec![target];
        let mut spec = spec.clone();
        if lw.wants_stats.contains(&target) && !spec.clustered() && !lw.stats.contains_key(&target) {
            let layout = emit::RowStats { blocks: spec.blocks_n(), width: spec.block_n() };
            let buffer = lw.temp(DType::F32, Shape::new([spec.m, layout.blocks, 2]));
            spec.stats_out = true;
            outs.push(buffer);
            lw.stats.insert(target, WrittenStats { buffer, rows: spec.m, cols: spec.n, layout });
        }
        let spec = &spec;
        if splits == 1 || spec.clustered() {
            // One split, or splits summed in their cluster's shared memory: no workspace.
            let ins: Vec<u32> = [a, b].into_iter().chain(norm.iter().copied()).chain(epilogue).collect();
            let emitted = emit::skinny_gemm(&symbol, spec, &lw.arg_types(&ins, &outs))?;
            lw.push_launch(&kernel, emitted, &ins, &outs);
            return Ok(());
        }
        // Split-K: partials in an f32 workspace; the last block of each column block sums them.
        // Its arrival counters live in one i32 buffer per graph, zeroed by a kernel inserted
        // before the first split-K GEMM (`lower_steps`).
        let ws = lw.temp(DType::F32, Shape::new([splits, spec.m, spec.n]));
        let blocks = spec.blocks_n();
        let (counters, base) = match lw.counters {
            Some((c, _, len)) => (c, len),
            None => (lw.temp(DType::I32, Shape::new([1])), 0),
        };
        let at = lw.counters.map_or(lw.steps.len(), |c| c.1);
        lw.counters = Some((counters, at, base + blocks));
        let spec = emit::Skinny { counter_base: base, ..spec.clone() };
        let ins: Vec<u32> = [a, b, ws, counters].into_iter().chain(norm.iter().copied()).chain(epilogue).collect();
        let mut args = lw.arg_types(&ins, &outs);
        args[3].1 = base + blocks;
        let emitted = emit::skinny_gemm(&symbol, &spec, &args)?;
        lw.push_launch(&kernel, emitted, &ins, &outs);
        Ok(())
    }

    /// `softmax(q k^T * scale [+ causal mask]) v` as GEMM, one fused softmax kernel, GEMM.
    fn attention(&mut self, lw: &mut Lowering, node: &Node, target: u32, causal: bool, scale: f64) -> Result<(), GpuError> {
        let (q, k, v) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let qs = self.body.node(q).shape.clone();
        let ks = self.body.node(k).shape.clone();
        let vs = self.body.node(v).shape.clone();
        let r = qs.rank();
        let (sq, d) = (qs.dims()[r - 2], qs.dims()[r - 1]);
        let sk = ks.dims()[ks.rank() - 2];
        let dv = vs.dims()[vs.rank() - 1];
        let dtype = node.dtype;
        let batch_shape = Shape::new(node.shape.dims()[..node.shape.rank() - 2].iter().copied());
        let (qb, qt) = self.operand(lw, q)?;
        let (kb, kt) = self.operand(lw, k)?;
        let (vb, vt) = self.operand(lw, v)?;
        let s_shape = Shape::new(batch_shape.dims().iter().copied().chain([sq, sk]));
        let s = lw.temp(dtype, s_shape.clone());
        // S = q @ k^T: k stored [sk, d] is k^T stored transposed.
        self.gemm(lw, &dtype, (qb, qt, qs.clone()), (kb, !kt, ks.clone()), s, (batch_shape.clone(), sq, sk, d), None, None, None)?;
        let p = lw.temp(dtype, s_shape.clone());
        let g = softmax_graph(&s_shape, dtype, causal, scale)?;
        lw.loop_kernel(&format!("{}_softmax", self.name), &g, &[s], &[p])?;
        self.gemm(lw, &dtype, (p, false, s_shape), (vb, vt, vs), target, (batch_shape, sq, dv, sk), None, None, None)
    }
}

/// `softmax(s * scale, masked causally)` over the last axis, in f32, cast back to `dtype`.
fn softmax_graph(s_shape: &Shape, dtype: DType, causal: bool, scale: f64) -> Result<Graph, GpuError> {
    let r = s_shape.rank();
    let (sq, sk) = (s_shape.dims()[r - 2], s_shape.dims()[r - 1]);
    let mut g = Graph::new("attn_softmax");
    let s = g.input("s", dtype, s_shape.clone())?;
    let s32 = if dtype == DType::F32 { s } else { g.add(Op::Cast { to: DType::F32 }, &[s])? };
    let c = g.full(scale, DType::F32, Shape::scalar());
    let mut x = g.add(Op::Binary(BinaryOp::Mul), &[s32, c])?;
    if causal {
        let two = Shape::new([sq, sk]);
        let i = g.iota(0, DType::I32, two.clone())?;
        let j = g.iota(1, DType::I32, two)?;
        let off = g.full((sk as f64) - (sq as f64), DType::I32, Shape::scalar());
        let lim = g.add(Op::Binary(BinaryOp::Add), &[i, off])?;
        let keep = g.add(Op::Compare(ir::CmpOp::Le), &[j, lim])?;
        let ninf = g.full(f64::NEG_INFINITY, DType::F32, Shape::scalar());
        x = g.add(Op::Where, &[keep, x, ninf])?;
    }
    let axes = vec![r - 1];
    let m = g.add(Op::Reduce { op: ReduceOp::Max, axes: axes.clone(), keepdim: true }, &[x])?;
    let d = g.add(Op::Binary(BinaryOp::Sub), &[x, m])?;
    let e = g.add(Op::Unary(UnaryOp::Exp), &[d])?;
    let sum = g.add(Op::Reduce { op: ReduceOp::Sum, axes, keepdim: true }, &[e])?;
    let mut p = g.add(Op::Binary(BinaryOp::Div), &[e, sum])?;
    if dtype != DType::F32 {
        p = g.add(Op::Cast { to: dtype }, &[p])?;
    }
    g.set_outputs(vec![p]);
    Ok(g)
}

/// Rewrites between kernels that save a step each, keeping the kernel graph's meaning:
/// - a kernel output that is a cast of another output of the same kernel is computed by its
///   consumers from that other output instead (one loop kernel less);
/// - an attention output that every consumer permutes the same way is stored permuted (the
///   attention kernel writes it in that layout; the consumers' permutes disappear).
fn prepare(kg: &KernelGraph) -> Result<KernelGraph, GpuError> {
    let mut kg = kg.clone();
    let graph_out: std::collections::HashSet<u32> = kg.outputs.iter().map(|b| b.0).collect();
    let consumers = |kg: &KernelGraph, buf: u32| -> Vec<usize> {
        kg.kernels.iter().enumerate().filter(|(_, k)| k.inputs.iter().any(|b| b.0 == buf)).map(|(i, _)| i).collect()
    };
    // Casts of sibling outputs.
    for ki in 0..kg.kernels.len() {
        let mut oi = 0;
        while oi < kg.kernels[ki].outputs.len() {
            let k = &kg.kernels[ki];
            let (o, buf) = (k.body.outputs()[oi], k.outputs[oi].0);
            let node = k.body.node(o);
            let sibling = match node.op {
                Op::Cast { to } => k.body.outputs().iter().position(|&x| x == node.inputs[0]).map(|j| (j, to)),
                _ => None,
            };
            // A widening cast (exact) of a value that is no output: store the value, narrower.
            if sibling.is_none() && !graph_out.contains(&buf) {
                if let Op::Cast { to: DType::F32 } = node.op {
                    let y = node.inputs[0];
                    let yd = k.body.node(y).dtype;
                    if matches!(yd, DType::BF16 | DType::F16) && !k.body.outputs().contains(&y) && !consumers(&kg, buf).is_empty() {
                        for ci in consumers(&kg, buf) {
                            let c = &mut kg.kernels[ci];
                            for pos in positions(&c.inputs, buf) {
                                c.body = rebuild(&c.body, pos, |g, new_in| g.add(Op::Cast { to: DType::F32 }, &[new_in]), yd, None)?;
                            }
                        }
                        kg.buffers[buf as usize].dtype = yd;
                        let k = &mut kg.kernels[ki];
                        let mut outs = k.body.outputs().to_vec();
                        outs[oi] = y;
                        k.body.set_outputs(outs);
                        oi += 1;
                        continue;
                    }
                }
            }
            let Some((j, to)) = sibling.filter(|&(j, _)| j != oi && !graph_out.contains(&buf)) else {
                oi += 1;
                continue;
            };
            let src = k.outputs[j];
            for ci in consumers(&kg, buf) {
                let src_dtype = kg.buffers[src.0 as usize].dtype;
                let c = &mut kg.kernels[ci];
                for pos in positions(&c.inputs, buf) {
                    c.body = rebuild(&c.body, pos, |g, new_in| g.add(Op::Cast { to }, &[new_in]), src_dtype, None)?;
                    c.inputs[pos] = src;
                }
            }
            let k = &mut kg.kernels[ki];
            let mut outs = k.body.outputs().to_vec();
            outs.remove(oi);
            k.body.set_outputs(outs);
            k.outputs.remove(oi);
        }
    }
    // Attention outputs in the layout their consumers read.
    for ki in 0..kg.kernels.len() {
        for oi in 0..kg.kernels[ki].outputs.len() {
            let k = &kg.kernels[ki];
            let (o, buf) = (k.body.outputs()[oi], k.outputs[oi].0);
            if !matches!(k.body.node(o).op, Op::FlashAttention { .. }) || graph_out.contains(&buf) {
                continue;
            }
            let cs = consumers(&kg, buf);
            let mut perm: Option<Vec<usize>> = None;
            let mut ok = !cs.is_empty();
            for &ci in &cs {
                let c = &kg.kernels[ci];
                for (pos, b) in c.inputs.iter().enumerate() {
                    if b.0 != buf {
                        continue;
                    }
                    let input = c.body.inputs()[pos];
                    let users = c.body.users(input);
                    ok &= !users.is_empty() && !c.body.outputs().contains(&input);
                    for u in users {
                        match &c.body.node(u).op {
                            Op::Permute { perm: p } if perm.as_ref().is_none_or(|q| q == p) => perm = Some(p.clone()),
                            _ => ok = false,
                        }
                    }
                }
            }
            let Some(perm) = perm.filter(|_| ok) else { continue };
            let k = &mut kg.kernels[ki];
            let mut body = k.body.clone();
            let permuted = body.add(Op::Permute { perm: perm.clone() }, &[o])?;
            let mut outs = body.outputs().to_vec();
            outs[oi] = permuted;
            body.set_outputs(outs);
            let shape = body.node(permuted).shape.clone();
            k.body = body;
            kg.buffers[buf as usize].shape = shape.clone();
            for ci in cs {
                let dtype = kg.buffers[buf as usize].dtype;
                let c = &mut kg.kernels[ci];
                for pos in positions(&c.inputs, buf) {
                    c.body = rebuild(&c.body, pos, |_, new_in| Ok(new_in), dtype, Some(shape.clone()))?;
                }
            }
        }
    }
    Ok(kg)
}

fn positions(inputs: &[ir::BufferId], buf: u32) -> Vec<usize> {
    inputs.iter().enumerate().filter(|(_, b)| b.0 == buf).map(|(i, _)| i).collect()
}

/// `body` with input `pos` replaced by a new input of `dtype` (and `shape`, if given):
/// `wrap` builds what stands for the old input from the new one. With a new shape, the old
/// input's users (permutes) are replaced by that value itself.
fn rebuild(
    body: &Graph,
    pos: usize,
    wrap: impl Fn(&mut Graph, NodeId) -> Result<NodeId, ir::IrError>,
    dtype: DType,
    shape: Option<Shape>,
) -> Result<Graph, GpuError> {
    let mut g = Graph::new(body.name());
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let old_in = body.inputs()[pos];
    for (i, &x) in body.inputs().iter().enumerate() {
        let n = body.node(x);
        let name = body.input_name(x).unwrap_or("in").to_string();
        let new = if i == pos {
            let v = g.input(name, dtype, shape.clone().unwrap_or_else(|| n.shape.clone()))?;
            wrap(&mut g, v)?
        } else {
            g.input(name, n.dtype, n.shape.clone())?
        };
        map.insert(x, new);
    }
    for (id, n) in body.nodes() {
        if map.contains_key(&id) {
            continue;
        }
        if shape.is_some() && n.inputs.first() == Some(&old_in) && matches!(n.op, Op::Permute { .. }) {
            map.insert(id, map[&old_in]);
            continue;
        }
        let new = g.push(Node { inputs: n.inputs.iter().map(|i| map[i]).collect(), ..n.clone() });
        map.insert(id, new);
    }
    g.set_outputs(body.outputs().iter().map(|o| map[o]).collect());
    Ok(g)
}

fn lower_steps(kg: &KernelGraph, sm: SmVersion) -> Result<Lowering, GpuError> {
    let mut kg = prepare(kg)?;
    prologue::fuse_into_gemms(&mut kg)?;
    let kg = &kg;
    kg.verify()?;
    let inputs = kg.inputs.iter().map(|b| b.0).collect();
    let wants_stats = prologue::stats_wanted(kg);
    let mut lw = Lowering {
        buffers: kg.buffers.clone(),
        steps: Vec::new(),
        next_symbol: 0,
        counters: None,
        inputs,
        clusters: sm == SmVersion::Sm90,
        wants_stats,
        stats: HashMap::new(),
    };
    for k in &kg.kernels {
        let body = &k.body;
        let mut bl = BodyLowering { name: k.name.clone(), body, mat: HashMap::new(), out_target: HashMap::new() };
        for (&n, &b) in body.inputs().iter().zip(&k.inputs) {
            bl.mat.insert(n, b.0);
        }
        let mut copies = Vec::new();
        for (&o, &b) in body.outputs().iter().zip(&k.outputs) {
            if bl.mat.contains_key(&o) || bl.out_target.contains_key(&o) {
                copies.push((o, b.0));
            } else {
                bl.out_target.insert(o, b.0);
            }
        }
        for &o in body.outputs() {
            bl.materialize(&mut lw, o).map_err(|e| e.in_kernel(&k.name))?;
        }
        for (o, to) in copies {
            lw.steps.push(Pending::Copy { from: bl.mat[&o], to });
        }
    }
    if let Some((buf, at, len)) = lw.counters {
        lw.buffers[buf as usize].shape = Shape::new([len]);
        let emitted = emit::skinny_zero_counters(&format!("kiln_splitk_counters_{}", lw.next_symbol), len);
        lw.next_symbol += 1;
        lw.steps.insert(at, Pending::Launch { kernel: "skinny_counters".into(), emitted, args: vec![buf] });
    }
    Ok(lw)
}

fn module_text(lw: &Lowering) -> String {
    let mut funcs = String::new();
    for s in &lw.steps {
        if let Pending::Launch { emitted, .. } = s {
            funcs.push_str(&emitted.func);
        }
    }
    format!("module attributes {{gpu.container_module}} {{\n gpu.module @kiln {{\n{funcs} }}\n}}\n")
}

pub(crate) fn lower_to_mlir(kg: &KernelGraph, sm: SmVersion) -> Result<String, GpuError> {
    Ok(module_text(&lower_steps(kg, sm)?))
}

pub(crate) fn lower(kg: &KernelGraph, opts: &GpuOptions) -> Result<CudaArtifact, GpuError> {
    let mut lw = lower_steps(kg, opts.sm)?;
    // Caller buffers: an output that is also an input (or returned twice) gets its own buffer
    // and a copy.
    let mut location: Vec<Option<GpuLocation>> = vec![None; lw.buffers.len()];
    for (i, b) in kg.inputs.iter().enumerate() {
        location[b.0 as usize] = Some(GpuLocation::Input(i));
    }
    let mut outputs = Vec::new();
    for (i, b) in kg.outputs.iter().enumerate() {
        let mut b = b.0;
        if location[b as usize].is_some() {
            let x = lw.buffers[b as usize].clone();
            let t = lw.temp(x.dtype, x.shape);
            location.push(None);
            lw.steps.push(Pending::Copy { from: b, to: t });
            b = t;
        }
        location[b as usize] = Some(GpuLocation::Output(i));
        outputs.push(b);
    }
    // Liveness over steps.
    let n = lw.buffers.len();
    let mut live: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut touch = |b: u32, s: usize| {
        let l = &mut live[b as usize];
        *l = Some(match *l {
            None => (s, s),
            Some((a, _)) => (a, s),
        });
    };
    for (s, step) in lw.steps.iter().enumerate() {
        match step {
            Pending::Launch { args, .. } => args.iter().for_each(|&b| touch(b, s)),
            Pending::Gemm(g) => {
                for b in [g.a.buffer, g.b.buffer, g.c].into_iter().chain(g.bias).chain(g.residual) {
                    touch(b, s);
                }
            }
            Pending::Copy { from, to } => {
                touch(*from, s);
                touch(*to, s);
            }
        }
    }
    let arena_ids: Vec<usize> = (0..n).filter(|&i| location[i].is_none() && live[i].is_some()).collect();
    let reqs: Vec<(usize, usize, usize)> = arena_ids
        .iter()
        .map(|&i| {
            let (a, b) = live[i].expect("filtered");
            (lw.buffers[i].bytes(), a, b)
        })
        .collect();
    let (offsets, arena_bytes) = plan_arena(&reqs);
    for (&i, &off) in arena_ids.iter().zip(&offsets) {
        location[i] = Some(GpuLocation::Arena { offset: off });
    }
    let unplanned_bytes = reqs.iter().map(|r| r.0.div_ceil(runtime::cuda::ARENA_ALIGN) * runtime::cuda::ARENA_ALIGN).sum();
    let index_bits = if lw.buffers.iter().all(|b| b.shape.numel() < (1 << 31)) { 32 } else { 64 };
    let has_kernels = lw.steps.iter().any(|s| matches!(s, Pending::Launch { .. }));
    let ptx = if has_kernels { ptx::to_ptx(&module_text(&lw), opts.sm, index_bits)? } else { String::new() };
    let buffers = lw
        .buffers
        .iter()
        .enumerate()
        .map(|(i, b)| GpuBuffer {
            dtype: b.dtype,
            shape: b.shape.dims().to_vec(),
            location: location[i].clone().unwrap_or(GpuLocation::Arena { offset: 0 }),
            live: live[i].unwrap_or((0, 0)),
        })
        .collect();
    let steps = lw
        .steps
        .into_iter()
        .map(|s| match s {
            Pending::Launch { kernel, emitted, args } => {
                GpuStep::Launch(LaunchStep { kernel, symbol: emitted.symbol, grid: emitted.grid, block: emitted.block, args })
            }
            Pending::Gemm(g) => GpuStep::Gemm(g),
            Pending::Copy { from, to } => GpuStep::Copy { from, to },
        })
        .collect();
    Ok(CudaArtifact {
        name: kg.name.clone(),
        arch: opts.sm.name().to_string(),
        ptx,
        buffers,
        inputs: kg.inputs.iter().map(|b| b.0).collect(),
        input_names: kg.input_names.clone(),
        outputs,
        arena_bytes,
        unplanned_bytes,
        steps,
    })
}
