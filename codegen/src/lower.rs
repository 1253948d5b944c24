//! Lowering of a kernel body (`ir::Graph`) to units: loop kernels ([`LoopKernel`]) and
//! library calls (GEMM, flash attention).
//!
//! 1. Choose what to *materialize*: reductions, matmuls, attention, the body's outputs, and
//!    values used more than once that are not cheap to recompute. Everything else is inlined
//!    into its users as expressions; movement ops become index maps.
//! 2. Each materialized value becomes a stage (a store, or a reduction); library nodes become
//!    calls whose operands are strided views of f32 buffers (a transpose or a broadcast batch
//!    is a stride) or, failing that, an f32 copy made by a stage.
//! 3. Consecutive stages share one loop kernel when they agree on leading *outer* dims and
//!    every read of a value made in the same kernel stays in the same outer iteration. The
//!    values only read there live in per-iteration locals (a softmax row stays in L1);
//!    everything else lives in full-size kernel scratch buffers.
//!
//! This is correct for any body (in the worst case every node is its own stage over
//! scratch) and fast for the common ones (elementwise chains, row reductions, GEMM epilogues).

use crate::kir::{BufId, Builder, Expr, ExprId, Local, LoopKernel, Param, Stage, Ty, RED};
use crate::CodegenError;
use ir::{CmpOp, DType, Graph, NodeId, Op, ReduceOp, Shape};
use std::collections::HashMap;

/// Per-iteration locals larger than this (elements) go to scratch instead of the stack.
const LOCAL_LIMIT: usize = 16 * 1024;

/// Where a unit's buffer comes from, relative to its kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Input(usize),
    Output(usize),
    Scratch(usize),
}

/// A kernel-private scratch buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ScratchDecl {
    pub dtype: DType,
    pub dims: Vec<usize>,
}

/// A strided f32 matrix view for library calls (see `runtime::MatView`).
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub slot: Slot,
    pub offset: isize,
    pub batch_strides: Vec<isize>,
    pub row_stride: isize,
    pub col_stride: isize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Unit {
    Loop { kernel: LoopKernel, args: Vec<Slot> },
    /// `c = a @ b` in `dtype` (f32, or f16 for f16 matmuls).
    Gemm { dtype: DType, batch: Vec<usize>, m: usize, n: usize, k: usize, a: View, b: View, c: View },
    Attention { batch: Vec<usize>, sq: usize, sk: usize, d: usize, dv: usize, causal: bool, scale: f64, q: View, k: View, v: View, o: View },
}

/// A lowered kernel body.
#[derive(Clone, Debug, PartialEq)]
pub struct Lowered {
    pub units: Vec<Unit>,
    pub scratch: Vec<ScratchDecl>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Home {
    Input(usize),
    Output(usize),
    Mat,
}

#[derive(Clone, Debug)]
struct PBuf {
    dtype: DType,
    dims: Vec<usize>,
    home: Home,
}

#[derive(Clone, Debug)]
struct PView {
    pbuf: u32,
    dims: Vec<usize>,
    offset: isize,
    strides: Vec<isize>,
}

enum Item {
    /// Define a materialized node into its buffer.
    Def(NodeId, u32),
    /// Store a node's value into another buffer (an output, or an f32 operand copy).
    Store(NodeId, u32),
    /// A library call defining node's buffer from operand views.
    Lib(NodeId, u32, Vec<PView>),
}

struct StageTmp {
    stage: Stage,
    cand: Vec<usize>,
    loads: Vec<(u32, Vec<ExprId>)>,
}

struct Lowerer<'g> {
    g: &'g Graph,
    b: Builder,
    pbufs: Vec<PBuf>,
    node_buf: Vec<Option<u32>>,
    memo: HashMap<(NodeId, Vec<ExprId>), ExprId>,
    force_full: Vec<bool>,
    name: String,
}

fn unsupported(kernel: &str, reason: impl Into<String>) -> CodegenError {
    CodegenError::Unsupported { kernel: kernel.to_string(), reason: reason.into() }
}

fn contiguous(dims: &[usize]) -> Vec<isize> {
    Shape::from(dims).strides().into_iter().map(|s| s as isize).collect()
}

/// The dtype a library call computes in: f16 matmuls run on f16 operands directly (the gemm
/// crate's f16 kernels), everything else on f32 views.
fn lib_dtype(n: &ir::Node) -> DType {
    if matches!(n.op, Op::MatMul) && n.dtype == DType::F16 { DType::F16 } else { DType::F32 }
}

fn is_library(n: &ir::Node) -> bool {
    matches!(n.op, Op::FlashAttention { .. }) || (matches!(n.op, Op::MatMul) && n.dtype.is_float())
}

/// Lowers one kernel body.
pub fn lower(name: &str, g: &Graph) -> Result<Lowered, CodegenError> {
    let mut l = Lowerer { g, b: Builder::default(), pbufs: Vec::new(), node_buf: vec![None; g.len()], memo: HashMap::new(), force_full: Vec::new(), name: name.to_string() };
    let live = g.live();
    for (i, &id) in g.inputs().iter().enumerate() {
        let n = g.node(id);
        let pb = l.new_pbuf(n.dtype, n.shape.dims().to_vec(), Home::Input(i));
        l.node_buf[id.index()] = Some(pb);
    }
    // Uses within the body (outputs count as uses).
    let mut uses = vec![0usize; g.len()];
    for (id, n) in g.nodes() {
        if !live[id.index()] {
            continue;
        }
        let mut ops: Vec<NodeId> = n.inputs.to_vec();
        ops.sort();
        ops.dedup();
        for o in ops {
            uses[o.index()] += 1;
        }
    }
    for &o in g.outputs() {
        uses[o.index()] += 1;
    }
    let mut out_of: Vec<Option<usize>> = vec![None; g.len()];
    for (j, &o) in g.outputs().iter().enumerate() {
        if out_of[o.index()].is_none() && !matches!(g.node(o).op, Op::Input { .. }) {
            out_of[o.index()] = Some(j);
        }
    }
    let mut cheap = vec![false; g.len()];
    for (id, n) in g.nodes() {
        cheap[id.index()] = match n.op.class() {
            ir::OpClass::Source => true,
            ir::OpClass::Movement => n.inputs.iter().all(|i| cheap[i.index()]),
            _ => false,
        };
    }

    // What is materialized, in topological order. A value read twice is stored unless it is
    // cheap, or a light binary op (add, sub, mul) of a stored value and otherwise cheap or
    // per-row values (fewer elements, broadcast): that one is recomputed at each use, one more
    // load from cache per use instead of a pass that stores it (layer norm's `x - mean`, read
    // by the variance and by the output, no longer takes a row of its own).
    let mut stored = vec![false; g.len()];
    for (id, n) in g.nodes() {
        if !live[id.index()] || matches!(n.op, Op::Input { .. }) {
            continue;
        }
        let narrower = |i: NodeId| {
            let mut src = i;
            while g.node(src).op.class() == ir::OpClass::Movement && g.node(src).inputs.len() == 1 {
                src = g.node(src).inputs[0];
            }
            g.node(src).shape.numel() < n.shape.numel()
        };
        let recompute = matches!(n.op, Op::Binary(ir::BinaryOp::Add | ir::BinaryOp::Sub | ir::BinaryOp::Mul))
            && n.inputs.iter().any(|i| stored[i.index()])
            && n.inputs.iter().all(|&i| stored[i.index()] || cheap[i.index()] || narrower(i));
        stored[id.index()] = matches!(n.op, Op::Reduce { .. } | Op::MatMul | Op::FlashAttention { .. })
            || out_of[id.index()].is_some()
            || (uses[id.index()] >= 2 && !cheap[id.index()] && !recompute);
    }

    // 1. Items in topological order.
    let mut items: Vec<Item> = Vec::new();
    for (id, n) in g.nodes() {
        if !live[id.index()] || matches!(n.op, Op::Input { .. }) {
            continue;
        }
        if matches!(n.op, Op::Fused(_)) {
            return Err(unsupported(name, "a fused node inside a kernel body (bodies are primitive graphs)"));
        }
        if !stored[id.index()] {
            continue;
        }
        let dims = n.shape.dims().to_vec();
        if is_library(n) {
            let ld = lib_dtype(n);
            let mut views = Vec::new();
            for &o in &n.inputs {
                let v = match l.view_of(o, ld) {
                    Some(v) => v,
                    None => {
                        let on = g.node(o);
                        let pb = l.new_pbuf(ld, on.shape.dims().to_vec(), Home::Mat);
                        items.push(Item::Store(o, pb));
                        PView { pbuf: pb, dims: on.shape.dims().to_vec(), offset: 0, strides: contiguous(on.shape.dims()) }
                    }
                };
                l.force_full[v.pbuf as usize] = true;
                views.push(v);
            }
            let home = match out_of[id.index()] {
                Some(j) if n.dtype == ld => Home::Output(j),
                _ => Home::Mat,
            };
            let pb = l.new_pbuf(ld, dims, home);
            l.force_full[pb as usize] = true;
            l.node_buf[id.index()] = Some(pb);
            items.push(Item::Lib(id, pb, views));
        } else {
            let (dtype, home) = match out_of[id.index()] {
                Some(j) => (n.dtype, Home::Output(j)),
                None => (Ty::of(n.dtype).storage(), Home::Mat),
            };
            let pb = l.new_pbuf(dtype, dims, home);
            items.push(Item::Def(id, pb));
            l.node_buf[id.index()] = Some(pb);
        }
    }
    for (j, &o) in g.outputs().iter().enumerate() {
        let done = l.node_buf[o.index()].is_some_and(|pb| l.pbufs[pb as usize].home == Home::Output(j));
        if !done {
            let n = g.node(o);
            let pb = l.new_pbuf(n.dtype, n.shape.dims().to_vec(), Home::Output(j));
            items.push(Item::Store(o, pb));
        }
    }

    // 2. Stages, grouped into loop kernels.
    enum Seg {
        Group { outer: Vec<usize>, stages: Vec<StageTmp> },
        Lib(usize),
    }
    let mut segs: Vec<Seg> = Vec::new();
    let mut def_seg: Vec<Option<usize>> = vec![None; l.pbufs.len()];
    for (it, item) in items.iter().enumerate() {
        let st = match item {
            Item::Lib(_, pb, _) => {
                segs.push(Seg::Lib(it));
                def_seg[*pb as usize] = Some(segs.len() - 1);
                continue;
            }
            Item::Def(id, pb) => l.def_stage(*id, *pb)?,
            Item::Store(id, pb) => l.store_stage(*id, *pb)?,
        };
        let cur = segs.len().wrapping_sub(1);
        let join = match segs.last() {
            Some(Seg::Group { outer, .. }) => {
                let kp = outer.iter().zip(&st.cand).take_while(|(a, b)| a == b).count();
                let shape_ok = kp >= 1 || (outer.is_empty() && st.cand.is_empty());
                let reads_ok = st.loads.iter().all(|(pb, idx)| {
                    def_seg[*pb as usize] != Some(cur) || (idx.len() >= kp && (0..kp).all(|d| Some(idx[d]) == l.b_var(d)))
                });
                (shape_ok && reads_ok).then_some(kp)
            }
            _ => None,
        };
        let target = match st.stage.target {
            BufId::Param(p) => p,
            BufId::Local(_) => unreachable!("provisional stages target pbufs"),
        };
        match (join, segs.last_mut()) {
            (Some(kp), Some(Seg::Group { outer, stages })) => {
                outer.truncate(kp);
                stages.push(st);
            }
            _ => segs.push(Seg::Group { outer: st.cand.clone(), stages: vec![st] }),
        }
        def_seg[target as usize] = Some(segs.len() - 1);
    }

    // 3. Storage: locals for values read only inside their own loop kernel.
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); l.pbufs.len()];
    for (si, seg) in segs.iter().enumerate() {
        match seg {
            Seg::Group { stages, .. } => {
                for st in stages {
                    for (pb, _) in &st.loads {
                        readers[*pb as usize].push(si);
                    }
                }
            }
            Seg::Lib(it) => {
                if let Item::Lib(_, _, views) = &items[*it] {
                    for v in views {
                        readers[v.pbuf as usize].push(si);
                    }
                }
            }
        }
    }
    // A GEMM whose only reader is the elementwise epilogue writing an f32 output of the same
    // shape, reading it at the same index, writes straight into that output: the epilogue then
    // runs in place over the just-written tile (no scratch round trip).
    let mut alias: Vec<Option<u32>> = vec![None; l.pbufs.len()];
    for (si, seg) in segs.iter().enumerate() {
        let Seg::Lib(it) = seg else { continue };
        let Item::Lib(_, pl, _) = &items[*it] else { continue };
        let pl = *pl as usize;
        if l.pbufs[pl].home != Home::Mat || readers[pl].is_empty() {
            continue;
        }
        let Some(&rs) = readers[pl].first() else { continue };
        if readers[pl].iter().any(|&r| r != rs) || rs <= si {
            continue;
        }
        let Seg::Group { stages, .. } = &segs[rs] else { continue };
        let reads_l = |st: &StageTmp| st.loads.iter().any(|(pb, _)| *pb as usize == pl);
        let Some(last_user) = stages.iter().rposition(reads_l) else { continue };
        // The output written in place: after every reader, f32, same dims, never read here.
        let Some(oi) = (last_user..stages.len()).rev().find(|&i| {
            let st = &stages[i];
            let BufId::Param(po) = st.stage.target else { return false };
            let o = &l.pbufs[po as usize];
            matches!(o.home, Home::Output(_)) && o.dtype == l.pbufs[pl].dtype && o.dims == l.pbufs[pl].dims && st.stage.reduce.is_none()
        }) else {
            continue;
        };
        let BufId::Param(po) = stages[oi].stage.target else { continue };
        let rank = l.pbufs[pl].dims.len();
        let identity = stages.iter().flat_map(|st| st.loads.iter()).filter(|(pb, _)| *pb as usize == pl).all(|(_, idx)| {
            idx.len() == rank && idx.iter().enumerate().all(|(d, &e)| Some(e) == l.b_var(d))
        });
        let output_read = stages.iter().any(|s| s.loads.iter().any(|(pb, _)| *pb == po));
        if identity && !output_read {
            alias[pl] = Some(po);
        }
    }
    let mut scratch: Vec<ScratchDecl> = Vec::new();
    let mut slot_of: Vec<Option<Slot>> = vec![None; l.pbufs.len()];
    let mut local_of: Vec<Option<usize>> = vec![None; l.pbufs.len()];
    for (pb, p) in l.pbufs.iter().enumerate() {
        match p.home {
            Home::Input(i) => slot_of[pb] = Some(Slot::Input(i)),
            Home::Output(j) => slot_of[pb] = Some(Slot::Output(j)),
            Home::Mat => {
                if let Some(po) = alias[pb] {
                    slot_of[pb] = match l.pbufs[po as usize].home {
                        Home::Output(j) => Some(Slot::Output(j)),
                        _ => unreachable!("aliases point at outputs"),
                    };
                    continue;
                }
                let Some(ds) = def_seg[pb] else { continue };
                let local = match &segs[ds] {
                    Seg::Group { outer, .. } => {
                        let size: usize = p.dims[outer.len()..].iter().product();
                        !l.force_full[pb] && readers[pb].iter().all(|&r| r == ds) && size <= LOCAL_LIMIT
                    }
                    Seg::Lib(_) => false,
                };
                if local {
                    local_of[pb] = Some(usize::MAX);
                } else {
                    slot_of[pb] = Some(Slot::Scratch(scratch.len()));
                    scratch.push(ScratchDecl { dtype: p.dtype, dims: p.dims.clone() });
                }
            }
        }
    }

    // 4. Units.
    let mut units = Vec::new();
    for (si, seg) in segs.into_iter().enumerate() {
        match seg {
            Seg::Lib(it) => units.push(l.lib_unit(&items[it], &slot_of)?),
            Seg::Group { outer, stages } => {
                let mut params: Vec<Param> = Vec::new();
                let mut args: Vec<Slot> = Vec::new();
                let mut locals: Vec<Local> = Vec::new();
                let mut rename: HashMap<u32, BufId> = HashMap::new();
                let mut bind = |pb: u32, written: bool, rename: &mut HashMap<u32, BufId>| {
                    // An aliased GEMM result is its output's buffer: one parameter for both.
                    let pb = alias[pb as usize].unwrap_or(pb);
                    if let Some(b) = rename.get(&pb) {
                        if let BufId::Param(p) = b {
                            params[*p as usize].written |= written;
                        }
                        return;
                    }
                    let p = &l.pbufs[pb as usize];
                    let id = if local_of[pb as usize].is_some() {
                        locals.push(Local { ty: Ty::of(p.dtype), dims: p.dims.clone() });
                        BufId::Local(locals.len() as u32 - 1)
                    } else {
                        params.push(Param { dtype: p.dtype, dims: p.dims.clone(), written });
                        args.push(slot_of[pb as usize].expect("every non-local buffer has a slot"));
                        BufId::Param(params.len() as u32 - 1)
                    };
                    rename.insert(pb, id);
                };
                for st in &stages {
                    let BufId::Param(t) = st.stage.target else { unreachable!() };
                    bind(t, true, &mut rename);
                    for (pb, _) in &st.loads {
                        bind(*pb, false, &mut rename);
                    }
                }
                let mut kb = Builder::default();
                let ren = |b: BufId| match b {
                    BufId::Param(pb) => rename[&alias[pb as usize].unwrap_or(pb)],
                    other => other,
                };
                let roots: Vec<ExprId> = stages.iter().map(|s| s.stage.value).collect();
                let new_roots = l.b.export(&roots, &mut kb, &ren);
                let kstages = stages
                    .into_iter()
                    .zip(new_roots)
                    .map(|(s, v)| Stage { target: ren(s.stage.target), value: v, ..s.stage })
                    .collect();
                let kernel = LoopKernel { name: format!("{}_{}", l.name, si), outer, params, locals, exprs: kb.exprs, stages: kstages };
                units.push(Unit::Loop { kernel, args });
            }
        }
    }
    Ok(Lowered { units, scratch })
}

impl<'g> Lowerer<'g> {
    fn new_pbuf(&mut self, dtype: DType, dims: Vec<usize>, home: Home) -> u32 {
        self.pbufs.push(PBuf { dtype, dims, home });
        self.force_full.push(false);
        self.pbufs.len() as u32 - 1
    }

    fn b_var(&self, d: usize) -> Option<ExprId> {
        // `var` is hash-consed; look it up without inserting.
        self.b.exprs.iter().position(|(e, _)| *e == Expr::Var(d as u32)).map(|p| p as ExprId)
    }

    fn vars(&mut self, rank: usize) -> Vec<ExprId> {
        (0..rank as u32).map(|d| self.b.var(d)).collect()
    }

    /// A strided view of `o` in a buffer of dtype `want`, if it is one (through permute /
    /// expand / slice / unit reshape).
    fn view_of(&self, o: NodeId, want: DType) -> Option<PView> {
        if let Some(pb) = self.node_buf[o.index()] {
            let p = &self.pbufs[pb as usize];
            return (p.dtype == want).then(|| PView { pbuf: pb, dims: p.dims.clone(), offset: 0, strides: contiguous(&p.dims) });
        }
        let n = self.g.node(o);
        let x = *n.inputs.first()?;
        let xs = self.g.node(x).shape.dims().to_vec();
        let mut v = match &n.op {
            Op::Permute { .. } | Op::Expand { .. } | Op::Slice { .. } | Op::Reshape { .. } => self.view_of(x, want)?,
            _ => return None,
        };
        v.dims = n.shape.dims().to_vec();
        match &n.op {
            Op::Permute { perm } => v.strides = perm.iter().map(|&p| v.strides[p]).collect(),
            Op::Expand { shape } => {
                let off = shape.rank() - xs.len();
                let mut s = vec![0isize; off];
                s.extend(xs.iter().zip(&v.strides).zip(&shape.dims()[off..]).map(|((&d, &st), &t)| if d == 1 && t != 1 { 0 } else { st }));
                v.strides = s;
            }
            Op::Slice { axis, start, step, .. } => {
                v.offset += *start as isize * v.strides[*axis];
                v.strides[*axis] *= *step as isize;
            }
            Op::Reshape { shape } => {
                let a: Vec<(usize, isize)> = xs.iter().copied().zip(v.strides.iter().copied()).filter(|p| p.0 != 1).collect();
                let b: Vec<usize> = shape.dims().iter().copied().filter(|&d| d != 1).collect();
                if a.iter().map(|p| p.0).collect::<Vec<_>>() != b {
                    return None;
                }
                let mut it = a.into_iter();
                v.strides = shape.dims().iter().map(|&d| if d == 1 { 0 } else { it.next().expect("same non-unit dims").1 }).collect();
            }
            _ => unreachable!(),
        }
        Some(v)
    }

    fn load_ty(&self, pb: u32) -> Ty {
        Ty::of(self.pbufs[pb as usize].dtype)
    }

    /// The value of node `n` at multi-index `idx` (a load if it is materialized).
    fn lower(&mut self, n: NodeId, idx: &[ExprId]) -> Result<ExprId, CodegenError> {
        if let Some(pb) = self.node_buf[n.index()] {
            let ty = self.load_ty(pb);
            return Ok(self.b.load(BufId::Param(pb), idx.to_vec(), ty));
        }
        let key = (n, idx.to_vec());
        if let Some(&e) = self.memo.get(&key) {
            return Ok(e);
        }
        let e = self.def_value(n, idx)?;
        self.memo.insert(key, e);
        Ok(e)
    }

    fn bcast(&mut self, src: NodeId, out_rank: usize, idx: &[ExprId]) -> Vec<ExprId> {
        let s = self.g.node(src).shape.dims().to_vec();
        let off = out_rank - s.len();
        s.iter().enumerate().map(|(i, &d)| if d == 1 { self.b.int(0) } else { idx[i + off] }).collect()
    }

    fn operand(&mut self, src: NodeId, out_rank: usize, idx: &[ExprId]) -> Result<ExprId, CodegenError> {
        let i = self.bcast(src, out_rank, idx);
        self.lower(src, &i)
    }

    /// Applies node `n`'s own op at `idx` (operands lowered recursively).
    fn def_value(&mut self, n: NodeId, idx: &[ExprId]) -> Result<ExprId, CodegenError> {
        let g = self.g;
        let node = g.node(n);
        let ins = node.inputs.clone();
        let r = node.shape.rank();
        let ty = Ty::of(node.dtype);
        Ok(match &node.op {
            Op::Full { value } => self.b.constant(ty, value.0),
            Op::Iota { axis } => self.b.cast(node.dtype, idx[*axis]),
            Op::Unary(u) => {
                let a = self.lower(ins[0], idx)?;
                self.b.unary(*u, a)
            }
            Op::Binary(op) => {
                let x = self.operand(ins[0], r, idx)?;
                let y = self.operand(ins[1], r, idx)?;
                self.b.binary(*op, x, y)
            }
            Op::Compare(c) => {
                let x = self.operand(ins[0], r, idx)?;
                let y = self.operand(ins[1], r, idx)?;
                self.b.cmp(*c, x, y)
            }
            Op::Where => {
                let c = self.operand(ins[0], r, idx)?;
                let x = self.operand(ins[1], r, idx)?;
                let y = self.operand(ins[2], r, idx)?;
                self.b.select(c, x, y)
            }
            Op::Cast { to } => {
                let a = self.lower(ins[0], idx)?;
                self.b.cast(*to, a)
            }
            Op::Expand { .. } => self.operand(ins[0], r, idx)?,
            Op::Permute { perm } => {
                let mut ii = vec![0; r];
                for (i, &p) in perm.iter().enumerate() {
                    ii[p] = idx[i];
                }
                self.lower(ins[0], &ii)?
            }
            Op::Slice { axis, start, step, .. } => {
                let mut ii = idx.to_vec();
                let s = self.b.mul(idx[*axis], *step as i64);
                let st = self.b.int(*start as i64);
                ii[*axis] = self.b.add(s, st);
                self.lower(ins[0], &ii)?
            }
            Op::Reshape { .. } => {
                let src = g.node(ins[0]).shape.dims().to_vec();
                let ii = self.reshape_idx(&src, node.shape.dims(), idx);
                self.lower(ins[0], &ii)?
            }
            Op::Concat { axis } => {
                let mut offs = Vec::new();
                let mut off = 0usize;
                for &i in &ins {
                    offs.push(off);
                    off += g.node(i).shape.dims()[*axis];
                }
                let mut v: Option<ExprId> = None;
                for t in (0..ins.len()).rev() {
                    let nt = g.node(ins[t]).shape.dims()[*axis];
                    if nt == 0 {
                        continue;
                    }
                    let mut ii = idx.to_vec();
                    let o = self.b.int(-(offs[t] as i64));
                    let shifted = self.b.add(idx[*axis], o);
                    ii[*axis] = self.b.clamp(shifted, 0, nt as i64 - 1);
                    let vt = self.lower(ins[t], &ii)?;
                    v = Some(match v {
                        None => vt,
                        Some(rest) => {
                            let lim = self.b.int((offs[t] + nt) as i64);
                            let c = self.b.cmp(CmpOp::Lt, idx[*axis], lim);
                            self.b.select(c, vt, rest)
                        }
                    });
                }
                v.ok_or_else(|| unsupported(&self.name, "concat of empty operands"))?
            }
            Op::Pad { pads, value } => {
                let src = g.node(ins[0]).shape.dims().to_vec();
                let pad = self.b.constant(ty, value.0);
                if src.contains(&0) {
                    return Ok(pad);
                }
                let mut ii = idx.to_vec();
                let mut inside: Option<ExprId> = None;
                for (d, &(before, after)) in pads.iter().enumerate() {
                    if before == 0 && after == 0 {
                        continue;
                    }
                    let o = self.b.int(-(before as i64));
                    let shifted = self.b.add(idx[d], o);
                    ii[d] = self.b.clamp(shifted, 0, src[d] as i64 - 1);
                    let lo = self.b.int(before as i64);
                    let hi = self.b.int((before + src[d]) as i64);
                    let c1 = self.b.cmp(CmpOp::Ge, idx[d], lo);
                    let c2 = self.b.cmp(CmpOp::Lt, idx[d], hi);
                    let c = self.b.and(c1, c2);
                    inside = Some(match inside {
                        None => c,
                        Some(p) => self.b.and(p, c),
                    });
                }
                let v = self.lower(ins[0], &ii)?;
                match inside {
                    None => v,
                    Some(c) => self.b.select(c, v, pad),
                }
            }
            Op::Input { .. } | Op::Reduce { .. } | Op::MatMul | Op::FlashAttention { .. } | Op::Fused(_) => {
                panic!("internal: {} node {n} reached as an inline value; it must be materialized", node.op.name())
            }
        })
    }

    /// Index map of a reshape: dims grouped by equal running products; within a group the
    /// flat offset is split with div/mod (unchanged dims map to themselves).
    fn reshape_idx(&mut self, inp: &[usize], out: &[usize], idx: &[ExprId]) -> Vec<ExprId> {
        let zero = self.b.int(0);
        let mut res = vec![zero; inp.len()];
        if inp.contains(&0) || out.contains(&0) {
            return res;
        }
        let (mut i, mut j) = (0, 0);
        loop {
            while i < inp.len() && inp[i] == 1 {
                i += 1;
            }
            while j < out.len() && out[j] == 1 {
                j += 1;
            }
            if i >= inp.len() || j >= out.len() {
                break;
            }
            let (i0, j0) = (i, j);
            let (mut pi, mut po) = (inp[i], out[j]);
            i += 1;
            j += 1;
            while pi != po {
                if pi < po {
                    pi *= inp[i];
                    i += 1;
                } else {
                    po *= out[j];
                    j += 1;
                }
            }
            let mut flat = zero;
            for q in j0..j {
                let stride: usize = out[q + 1..j].iter().product();
                let t = self.b.mul(idx[q], stride as i64);
                flat = self.b.add(flat, t);
            }
            for (p, slot) in res.iter_mut().enumerate().take(i).skip(i0) {
                let stride: usize = inp[p + 1..i].iter().product();
                let mut v = self.b.div(flat, stride as i64);
                if p > i0 {
                    v = self.b.rem(v, inp[p] as i64);
                }
                *slot = v;
            }
        }
        res
    }

    fn collect_loads(&self, root: ExprId) -> Vec<(u32, Vec<ExprId>)> {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![root];
        let mut out = Vec::new();
        while let Some(e) = stack.pop() {
            if !seen.insert(e) {
                continue;
            }
            let ex = self.b.get(e);
            if let Expr::Load(BufId::Param(pb), idx) = ex {
                out.push((*pb, idx.clone()));
            }
            stack.extend(Builder::children(ex));
        }
        out.sort();
        out.dedup();
        out
    }

    fn def_stage(&mut self, id: NodeId, pb: u32) -> Result<StageTmp, CodegenError> {
        let n = self.g.node(id).clone();
        let dims = n.shape.dims().to_vec();
        let r = dims.len();
        let (value, reduce, cand) = match &n.op {
            Op::Reduce { op, axes, keepdim } => {
                let src = self.g.node(n.inputs[0]).shape.dims().to_vec();
                let mut ii = Vec::new();
                let mut kept = 0;
                for (a, _) in src.iter().enumerate() {
                    if let Some(j) = axes.iter().position(|&x| x == a) {
                        ii.push(self.b.var(RED + j as u32));
                    } else if *keepdim {
                        ii.push(self.b.var(a as u32));
                    } else {
                        ii.push(self.b.var(kept));
                        kept += 1;
                    }
                }
                let v = self.lower(n.inputs[0], &ii)?;
                (v, Some((*op, axes.iter().map(|&a| src[a]).collect())), dims.clone())
            }
            Op::MatMul => {
                // Integer matmul: a reduction over k (float matmuls are library calls).
                let (a, b) = (n.inputs[0], n.inputs[1]);
                let (sa, sb) = (self.g.node(a).shape.dims().to_vec(), self.g.node(b).shape.dims().to_vec());
                let vars = self.vars(r);
                let rk = self.b.var(RED);
                let mut ia = self.bcast_batch(&sa, r, &vars);
                ia.extend([vars[r - 2], rk]);
                let mut ib = self.bcast_batch(&sb, r, &vars);
                ib.extend([rk, vars[r - 1]]);
                let x = self.lower(a, &ia)?;
                let y = self.lower(b, &ib)?;
                let v = self.b.binary(ir::BinaryOp::Mul, x, y);
                (v, Some((ReduceOp::Sum, vec![sa[sa.len() - 1]])), dims.clone())
            }
            _ => {
                let vars = self.vars(r);
                let v = self.def_value(id, &vars)?;
                (v, None, dims[..r.saturating_sub(1)].to_vec())
            }
        };
        // A def stores its own value; convert to the buffer's dtype register type.
        let value = self.fit(value, pb);
        let loads = self.collect_loads(value);
        Ok(StageTmp { stage: Stage { target: BufId::Param(pb), dims, reduce, value }, cand, loads })
    }

    fn bcast_batch(&mut self, src: &[usize], out_rank: usize, vars: &[ExprId]) -> Vec<ExprId> {
        let sb = &src[..src.len() - 2];
        let off = (out_rank - 2) - sb.len();
        sb.iter().enumerate().map(|(i, &d)| if d == 1 { self.b.int(0) } else { vars[i + off] }).collect()
    }

    /// Converts a value to the register type of a buffer's dtype (f32 for an f32 operand copy).
    fn fit(&mut self, v: ExprId, pb: u32) -> ExprId {
        let d = self.pbufs[pb as usize].dtype;
        if self.b.ty(v) == Ty::of(d) { v } else { self.b.cast(d, v) }
    }

    fn store_stage(&mut self, id: NodeId, pb: u32) -> Result<StageTmp, CodegenError> {
        let dims = self.pbufs[pb as usize].dims.clone();
        let r = dims.len();
        let vars = self.vars(r);
        let v = self.lower(id, &vars)?;
        let value = self.fit(v, pb);
        let loads = self.collect_loads(value);
        Ok(StageTmp { stage: Stage { target: BufId::Param(pb), dims: dims.clone(), reduce: None, value }, cand: dims[..r.saturating_sub(1)].to_vec(), loads })
    }

    fn lib_unit(&self, item: &Item, slot_of: &[Option<Slot>]) -> Result<Unit, CodegenError> {
        let Item::Lib(id, pb, views) = item else { unreachable!() };
        let n = self.g.node(*id);
        let out = &self.pbufs[*pb as usize];
        let r = out.dims.len();
        let batch = out.dims[..r - 2].to_vec();
        let slot = |p: u32| slot_of[p as usize].ok_or_else(|| unsupported(&self.name, "library operand without a buffer"));
        // A view over the output's batch dims (missing leading dims broadcast).
        let mat = |v: &PView| -> Result<View, CodegenError> {
            let vr = v.strides.len();
            let mut bs = vec![0isize; (r - 2).saturating_sub(vr - 2)];
            bs.extend(v.strides[..vr - 2].iter().zip(&v.dims).map(|(&s, &d)| if d == 1 { 0 } else { s }));
            Ok(View { slot: slot(v.pbuf)?, offset: v.offset, batch_strides: bs, row_stride: v.strides[vr - 2], col_stride: v.strides[vr - 1] })
        };
        let o = mat(&PView { pbuf: *pb, dims: out.dims.clone(), offset: 0, strides: contiguous(&out.dims) })?;
        match &n.op {
            Op::MatMul => {
                let ad = self.g.node(n.inputs[0]).shape.dims();
                Ok(Unit::Gemm { dtype: out.dtype, batch, m: out.dims[r - 2], n: out.dims[r - 1], k: ad[ad.len() - 1], a: mat(&views[0])?, b: mat(&views[1])?, c: o })
            }
            Op::FlashAttention { causal, scale } => {
                let (qd, kd) = (self.g.node(n.inputs[0]).shape.dims(), self.g.node(n.inputs[1]).shape.dims());
                Ok(Unit::Attention {
                    batch,
                    sq: qd[r - 2],
                    sk: kd[r - 2],
                    d: qd[r - 1],
                    dv: out.dims[r - 1],
                    causal: *causal,
                    scale: scale.0,
                    q: mat(&views[0])?,
                    k: mat(&views[1])?,
                    v: mat(&views[2])?,
                    o,
                })
            }
            _ => unreachable!(),
        }
    }
}
