//! MLIR text for one loop kernel (an elementwise or row-reduction body) as a `gpu.func`.
//!
//! Every kernel is straight-line code over static shapes:
//! - *elementwise*: thread `t` computes the `VEC` consecutive output elements starting at
//!   `t * VEC`; inputs whose index is contiguous along the output's last axis are read with one
//!   16-byte `vector.load`, inputs that are constant along it (broadcast rows, scalars) with one
//!   scalar load, anything else lane by lane. Float math runs in f32 whatever the storage type.
//! - *row reduction* (softmax, layer_norm, rms_norm, sums): one block per row; each thread
//!   keeps its `CHUNKS x VEC` elements of the row in registers, so the row is read from memory
//!   once however many reductions the body has; each reduction is a thread-local fold, a warp
//!   butterfly (`gpu.shuffle xor`) and one shared-memory exchange between warps.
//!
//! Values are computed by [`Emitter::value`]: the value of a body node at an index (one SSA
//! value per lane), memoised by node and index, so a DAG body is emitted once per position.
//! Movement ops (reshape, permute, expand, slice, pad, concat) are index maps, never copies.

mod attn;
mod flash;
mod mma;
mod skinny;

pub(crate) use attn::{attention, is_index_map};
pub(crate) use flash::{flash_attention, flash_fits};
pub use skinny::{with_skinny_clusters, with_skinny_gemm, with_skinny_splits, SplitPolicy};
pub(crate) use skinny::{main_kernel as skinny_gemm, zero_counters as skinny_zero_counters, Invariant, Norm, RowStats, Skinny, CLUSTER_MARK, TRIGGER_MARK, WAIT_MARK};

use super::math;
use super::GpuError;
use ir::{CmpOp, DType, Graph, Node, NodeId, Op, ReduceOp, Shape};
use std::collections::HashMap;
use std::fmt::Write;

/// Threads per block of an elementwise kernel.
const EW_THREADS: u32 = 256;

/// Tuning knobs, read from the environment (`KILN_GPU_*` variables are part of the compile
/// cache key, so an artifact built under other settings is not reused):
/// - `KILN_GPU_EW_VECS` (default 1): 16-byte vectors each thread of an elementwise kernel
///   handles (more bytes in flight per thread, fewer blocks);
/// - `KILN_GPU_ROW_CHUNKS` (default 2): vector chunks each thread of a row kernel holds at
///   least, when the row is long enough (fewer threads per row: cheaper block reductions and
///   more rows resident per SM).
///
/// Measured on an H100 (`scripts/gpu-run OUT sweep`, 2026-11-22 10:05 UTC, bf16 shapes of
/// WORKLOADS.md): softmax 87% of copy with 1 chunk, 95% with 2, 94% with 4 (layer_norm 97%
/// in all three); ew_chain 95% with 1 vector per thread, 92-93% with 2 or 4.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|&v| v >= 1).unwrap_or(default)
}
/// A thread holds at most this many vector chunks of a reduced row in registers.
const MAX_CHUNKS: u32 = 16;

/// One emitted kernel: its MLIR `gpu.func` text and how to launch it.
#[derive(Clone, Debug)]
pub struct EmittedKernel {
    pub symbol: String,
    pub func: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// The largest element count any argument has (decides the index width).
    pub max_elements: usize,
}

/// What a lane-indexed quantity looks like across the `VEC` lanes of a thread.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    /// The same value in every lane; `mult`: known to be a multiple of `VEC`.
    Uniform { mult: bool },
    /// Lane `j` holds `lane0 + j`; `aligned`: `lane0` is a multiple of `VEC`.
    Contig { aligned: bool },
    /// Anything else.
    Other,
}

/// An index (of type `index`) per lane.
#[derive(Clone, Debug)]
struct Ix {
    lanes: Vec<String>,
    form: Form,
}

/// The storage element type of a dtype in memory.
pub(crate) fn storage_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::Bool => "i8",
    }
}

/// The type values of a dtype are computed in: floats in f32, bool as i1.
fn compute_type(d: DType) -> &'static str {
    match d {
        DType::F32 | DType::F16 | DType::BF16 => "f32",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::Bool => "i1",
    }
}

/// Bytes moved per thread-lane group: 16 (one vector load) over the widest element.
fn vec_width(dtypes: impl Iterator<Item = DType>) -> usize {
    let widest = dtypes.map(|d| d.size_bytes()).max().unwrap_or(4).max(1);
    (16 / widest).max(1)
}

pub(crate) struct Emitter<'g> {
    body: &'g Graph,
    /// Kernel argument index of each body input node.
    arg_of_input: HashMap<NodeId, usize>,
    arg_types: Vec<(DType, usize)>,
    vec: usize,
    /// Hoisted constants (emitted at function entry).
    consts: String,
    const_memo: HashMap<String, String>,
    code: String,
    indent: usize,
    next: usize,
    memo: HashMap<String, Vec<String>>,
    /// Reduction state: the row's positions, per chunk (`F`-shaped index and its validity).
    row: Option<RowCtx>,
    reduce_memo: HashMap<NodeId, String>,
    smem: Vec<String>,
}

struct RowCtx {
    full: Shape,
    axes: Vec<usize>,
    chunks: Vec<(Vec<Ix>, String)>,
    lane_in_warp: String,
    warp: String,
    warps: u32,
    is_warp_leader: String,
}

impl<'g> Emitter<'g> {
    fn new(body: &'g Graph, args: &[(DType, usize)], vec: usize) -> Emitter<'g> {
        let arg_of_input = body.inputs().iter().enumerate().map(|(i, &n)| (n, i)).collect();
        Emitter {
            body,
            arg_of_input,
            arg_types: args.to_vec(),
            vec,
            consts: String::new(),
            const_memo: HashMap::new(),
            code: String::new(),
            indent: 2,
            next: 0,
            memo: HashMap::new(),
            row: None,
            reduce_memo: HashMap::new(),
            smem: Vec::new(),
        }
    }

    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%v{}", self.next)
    }

    fn line(&mut self, s: &str) {
        for _ in 0..self.indent {
            self.code.push_str("  ");
        }
        self.code.push_str(s);
        self.code.push('\n');
    }

    /// `%v = <rhs>`; returns `%v`.
    pub(crate) fn op(&mut self, rhs: &str) -> String {
        let v = self.fresh();
        self.line(&format!("{v} = {rhs}"));
        v
    }

    fn constant(&mut self, text: &str, ty: &str) -> String {
        let key = format!("{text}:{ty}");
        if let Some(v) = self.const_memo.get(&key) {
            return v.clone();
        }
        let v = self.fresh();
        let _ = writeln!(self.consts, "    {v} = arith.constant {text} : {ty}");
        self.const_memo.insert(key, v.clone());
        v
    }

    fn c_index(&mut self, k: i64) -> String {
        self.constant(&k.to_string(), "index")
    }

    pub(crate) fn c_f32(&mut self, x: f64) -> String {
        let bits = (x as f32).to_bits();
        self.constant(&format!("0x{bits:08X}"), "f32")
    }

    pub(crate) fn c_i32(&mut self, x: i64) -> String {
        self.constant(&x.to_string(), "i32")
    }

    /// A constant of a compute type.
    fn c_typed(&mut self, x: f64, d: DType) -> String {
        match d {
            DType::F32 | DType::F16 | DType::BF16 => self.c_f32(d.quantize(x)),
            DType::I32 => self.constant(&(x as i32).to_string(), "i32"),
            DType::I64 => self.constant(&(x as i64).to_string(), "i64"),
            DType::Bool => self.constant(if x != 0.0 { "1" } else { "0" }, "i1"),
        }
    }

    // ---- index arithmetic, tracking the lane form ----

    fn ix_const(&mut self, k: i64) -> Ix {
        let c = self.c_index(k);
        Ix { lanes: vec![c; self.vec], form: Form::Uniform { mult: k % self.vec as i64 == 0 } }
    }

    fn ix_map(&mut self, a: &Ix, f: impl Fn(&str) -> String, form: Form) -> Ix {
        let lanes = if matches!(a.form, Form::Uniform { .. }) {
            let v = self.op(&f(&a.lanes[0]));
            vec![v; self.vec]
        } else {
            a.lanes.iter().map(|l| f(l)).collect::<Vec<_>>().into_iter().map(|rhs| self.op(&rhs)).collect()
        };
        Ix { lanes, form }
    }

    fn ix_mul(&mut self, a: &Ix, k: i64) -> Ix {
        if k == 1 {
            return a.clone();
        }
        if k == 0 {
            return self.ix_const(0);
        }
        let c = self.c_index(k);
        let form = match a.form {
            Form::Uniform { mult } => Form::Uniform { mult: mult || k % self.vec as i64 == 0 },
            _ => Form::Other,
        };
        self.ix_map(a, |l| format!("arith.muli {l}, {c} : index"), form)
    }

    fn ix_add(&mut self, a: &Ix, b: &Ix) -> Ix {
        let form = match (a.form, b.form) {
            (Form::Uniform { mult: x }, Form::Uniform { mult: y }) => Form::Uniform { mult: x && y },
            (Form::Contig { aligned }, Form::Uniform { mult }) | (Form::Uniform { mult }, Form::Contig { aligned }) => {
                Form::Contig { aligned: aligned && mult }
            }
            _ => Form::Other,
        };
        let lanes = if matches!(form, Form::Uniform { .. }) {
            let v = self.op(&format!("arith.addi {}, {} : index", a.lanes[0], b.lanes[0]));
            vec![v; self.vec]
        } else {
            (0..self.vec).map(|j| self.op(&format!("arith.addi {}, {} : index", a.lanes[j], b.lanes[j]))).collect()
        };
        Ix { lanes, form }
    }

    fn ix_add_const(&mut self, a: &Ix, k: i64) -> Ix {
        if k == 0 {
            return a.clone();
        }
        let c = self.ix_const(k);
        self.ix_add(a, &c)
    }

    fn ix_div(&mut self, a: &Ix, n: i64) -> Ix {
        if n == 1 {
            return a.clone();
        }
        let c = self.c_index(n);
        let v = self.vec as i64;
        let form = match a.form {
            Form::Uniform { .. } => Form::Uniform { mult: false },
            Form::Contig { aligned: true } if n % v == 0 => Form::Uniform { mult: false },
            _ => Form::Other,
        };
        if let (Form::Uniform { .. }, Form::Contig { .. }) = (form, a.form) {
            let x = self.op(&format!("arith.divui {}, {c} : index", a.lanes[0]));
            return Ix { lanes: vec![x; self.vec], form };
        }
        self.ix_map(a, |l| format!("arith.divui {l}, {c} : index"), form)
    }

    fn ix_rem(&mut self, a: &Ix, n: i64) -> Ix {
        if n == 1 {
            return self.ix_const(0);
        }
        let c = self.c_index(n);
        let v = self.vec as i64;
        let form = match a.form {
            Form::Uniform { .. } => Form::Uniform { mult: false },
            Form::Contig { aligned: true } if n % v == 0 => Form::Contig { aligned: true },
            _ => Form::Other,
        };
        self.ix_map(a, |l| format!("arith.remui {l}, {c} : index"), form)
    }

    /// The `VEC` consecutive linear positions of vector group `g` (`g * VEC + j`).
    fn group_lanes(&mut self, g: &str) -> Ix {
        let vc = self.c_index(self.vec as i64);
        let base = self.op(&format!("arith.muli {g}, {vc} : index"));
        let lanes = (0..self.vec)
            .map(|j| {
                let c = self.c_index(j as i64);
                if j == 0 { base.clone() } else { self.op(&format!("arith.addi {base}, {c} : index")) }
            })
            .collect();
        Ix { lanes, form: if self.vec > 1 { Form::Contig { aligned: true } } else { Form::Uniform { mult: true } } }
    }

    /// Clamp into `[lo, hi]` (signed): the index stays in bounds whatever it was.
    ///
    /// In inline PTX, opaque to LLVM: otherwise LLVM narrows the clamp and the bounds test of
    /// a pad or concat to 16-bit `max.u16` + `setp`, which ptxas 12.9 (and the driver's JIT)
    /// fuses into a packed `VIMNMX.U16x2` whose two halves write the same predicate, so the
    /// test came out wrong (GPU fuzzing, seeds 923002788 and 925001213).
    fn ix_clamp(&mut self, a: &Ix, lo: i64, hi: i64) -> Ix {
        let (l, h) = (self.constant(&lo.to_string(), "i64"), self.constant(&hi.to_string(), "i64"));
        let clamp = |e: &mut Self, x: &str| {
            let x = e.op(&format!("arith.index_cast {x} : index to i64"));
            let r = e.op(&format!(
                "llvm.inline_asm \"max.s64 $0, $1, $2;\\n\\tmin.s64 $0, $0, $3;\", \"=l,l,l,l\" {x}, {l}, {h} : (i64, i64, i64) -> i64"
            ));
            e.op(&format!("arith.index_cast {r} : i64 to index"))
        };
        if matches!(a.form, Form::Uniform { .. }) {
            let v = clamp(self, &a.lanes[0]);
            return Ix { lanes: vec![v; self.vec], form: Form::Uniform { mult: false } };
        }
        let lanes = a.lanes.clone().iter().map(|x| clamp(self, x)).collect();
        Ix { lanes, form: Form::Other }
    }

    /// Row-major linear offset of a multi-index into `shape`.
    fn linearize(&mut self, idx: &[Ix], shape: &Shape) -> Ix {
        let strides = shape.strides();
        let mut acc = self.ix_const(0);
        for (d, ix) in idx.iter().enumerate() {
            if shape.dims()[d] == 1 {
                continue;
            }
            let t = self.ix_mul(ix, strides[d] as i64);
            acc = self.ix_add(&acc, &t);
        }
        acc
    }

    /// The multi-index into `shape` of a linear offset.
    fn delinearize(&mut self, lin: &Ix, shape: &Shape) -> Vec<Ix> {
        let strides = shape.strides();
        (0..shape.rank())
            .map(|d| {
                let n = shape.dims()[d] as i64;
                if n == 1 {
                    return self.ix_const(0);
                }
                let q = self.ix_div(lin, strides[d] as i64);
                if d == 0 { q } else { self.ix_rem(&q, n) }
            })
            .collect()
    }

    /// Index into an operand broadcast (PyTorch-style, trailing-aligned) to `out`.
    fn broadcast_index(&mut self, idx: &[Ix], out: &Shape, operand: &Shape) -> Vec<Ix> {
        let lead = out.rank() - operand.rank();
        (0..operand.rank())
            .map(|i| if operand.dims()[i] == 1 && out.dims()[lead + i] != 1 { self.ix_const(0) } else { idx[lead + i].clone() })
            .collect()
    }

    // ---- loads and stores ----

    fn load(&mut self, arg: usize, dtype: DType, shape: &Shape, idx: &[Ix]) -> Vec<String> {
        let lin = self.linearize(idx, shape);
        let (st, n) = (storage_type(dtype), self.arg_types[arg].1);
        let mem = format!("memref<{n}x{st}>");
        let raw: Vec<String> = match lin.form {
            Form::Uniform { .. } => {
                let v = self.op(&format!("memref.load %a{arg}[{}] : {mem}", lin.lanes[0]));
                vec![v; self.vec]
            }
            Form::Contig { aligned: true } if self.vec > 1 => {
                let vt = format!("vector<{}x{st}>", self.vec);
                let v = self.op(&format!("vector.load %a{arg}[{}] {{alignment = {} : i64}} : {mem}, {vt}", lin.lanes[0], self.vec * dtype.size_bytes()));
                (0..self.vec).map(|j| self.op(&format!("vector.extract {v}[{j}] : {st} from {vt}"))).collect()
            }
            _ => (0..self.vec).map(|j| self.op(&format!("memref.load %a{arg}[{}] : {mem}", lin.lanes[j]))).collect(),
        };
        self.lanewise(&raw, |e, x| e.to_compute(x, dtype))
    }

    fn to_compute(&mut self, x: &str, d: DType) -> String {
        match d {
            DType::F16 | DType::BF16 => self.op(&format!("arith.extf {x} : {} to f32", storage_type(d))),
            DType::Bool => {
                let z = self.constant("0", "i8");
                self.op(&format!("arith.cmpi ne, {x}, {z} : i8"))
            }
            _ => x.to_string(),
        }
    }

    fn to_storage(&mut self, x: &str, d: DType) -> String {
        match d {
            DType::F16 | DType::BF16 => self.op(&format!("arith.truncf {x} : f32 to {}", storage_type(d))),
            DType::Bool => self.op(&format!("arith.extui {x} : i1 to i8")),
            _ => x.to_string(),
        }
    }

    fn store(&mut self, arg: usize, dtype: DType, shape: &Shape, idx: &[Ix], vals: &[String]) {
        let lin = self.linearize(idx, shape);
        let (st, n) = (storage_type(dtype), self.arg_types[arg].1);
        let mem = format!("memref<{n}x{st}>");
        let raw: Vec<String> = vals.iter().map(|v| self.to_storage(v, dtype)).collect();
        match lin.form {
            Form::Contig { aligned: true } if self.vec > 1 => {
                let vt = format!("vector<{}x{st}>", self.vec);
                let v = self.op(&format!("vector.from_elements {} : {vt}", raw.join(", ")));
                self.line(&format!("vector.store {v}, %a{arg}[{}] {{alignment = {} : i64}} : {mem}, {vt}", lin.lanes[0], self.vec * dtype.size_bytes()));
            }
            Form::Uniform { .. } => self.line(&format!("memref.store {}, %a{arg}[{}] : {mem}", raw[0], lin.lanes[0])),
            _ => {
                for j in 0..self.vec {
                    self.line(&format!("memref.store {}, %a{arg}[{}] : {mem}", raw[j], lin.lanes[j]));
                }
            }
        }
    }

    fn lanewise(&mut self, xs: &[String], mut f: impl FnMut(&mut Self, &str) -> String) -> Vec<String> {
        // Lanes holding the same SSA value are computed once.
        let mut done: HashMap<String, String> = HashMap::new();
        xs.iter()
            .map(|x| {
                if let Some(v) = done.get(x) {
                    return v.clone();
                }
                let v = f(self, x);
                done.insert(x.clone(), v.clone());
                v
            })
            .collect()
    }

    // ---- values ----

    /// The value of body node `id` at multi-index `idx` (into the node's shape), one SSA value per lane.
    fn value(&mut self, id: NodeId, idx: &[Ix]) -> Result<Vec<String>, GpuError> {
        let key = format!("{}@{}", id.index(), idx.iter().map(|i| i.lanes.join(",")).collect::<Vec<_>>().join(";"));
        if let Some(v) = self.memo.get(&key) {
            return Ok(v.clone());
        }
        let body = self.body;
        let node: &Node = body.node(id);
        let operand = |k: usize| body.node(node.inputs[k]);
        let v = match &node.op {
            Op::Input { .. } => {
                let arg = self.arg_of_input[&id];
                self.load(arg, node.dtype, &node.shape, idx)
            }
            Op::Full { value } => vec![self.c_typed(value.0, node.dtype); self.vec],
            Op::Iota { axis } => {
                let ix = idx[*axis].clone();
                let d = node.dtype;
                self.lanewise(&ix.lanes, |e, l| {
                    let i = e.op(&format!("arith.index_cast {l} : index to i64"));
                    match d {
                        DType::I64 => i,
                        DType::I32 => e.op(&format!("arith.trunci {i} : i64 to i32")),
                        _ => e.op(&format!("arith.sitofp {i} : i64 to f32")),
                    }
                })
            }
            Op::Unary(u) => {
                let xi = self.broadcast_index(idx, &node.shape, &operand(0).shape);
                let x = self.value(node.inputs[0], &xi)?;
                let d = operand(0).dtype;
                self.lanewise(&x, |e, x| math::unary(e, *u, d, x))
            }
            Op::Binary(b) => {
                let (x, y) = self.two(node, idx)?;
                let d = operand(0).dtype;
                self.zip(&x, &y, |e, x, y| math::binary(e, *b, d, x, y))
            }
            Op::Compare(c) => {
                let (x, y) = self.two(node, idx)?;
                let d = operand(0).dtype;
                self.zip(&x, &y, |e, x, y| compare(e, *c, d, x, y))
            }
            Op::Where => {
                let mut vals = Vec::new();
                for k in 0..3 {
                    let i = self.broadcast_index(idx, &node.shape, &operand(k).shape);
                    vals.push(self.value(node.inputs[k], &i)?);
                }
                let ty = compute_type(node.dtype);
                (0..self.vec)
                    .map(|j| self.op(&format!("arith.select {}, {}, {} : {ty}", vals[0][j], vals[1][j], vals[2][j])))
                    .collect()
            }
            Op::Cast { to } => {
                let x = self.value(node.inputs[0], idx)?;
                let from = operand(0).dtype;
                let to = *to;
                self.lanewise(&x, |e, x| cast(e, x, from, to))
            }
            Op::Reduce { .. } => vec![self.reduce(id)?; self.vec],
            Op::Reshape { .. } => {
                let lin = self.linearize(idx, &node.shape);
                let inner = self.delinearize(&lin, &operand(0).shape);
                self.value(node.inputs[0], &inner)?
            }
            Op::Permute { perm } => {
                let mut inner = vec![Ix { lanes: vec![], form: Form::Other }; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inner[p] = idx[i].clone();
                }
                self.value(node.inputs[0], &inner)?
            }
            Op::Expand { .. } => {
                let inner = self.broadcast_index(idx, &node.shape, &operand(0).shape);
                self.value(node.inputs[0], &inner)?
            }
            Op::Slice { axis, start, step, .. } => {
                let mut inner = idx.to_vec();
                let scaled = self.ix_mul(&idx[*axis], *step as i64);
                inner[*axis] = self.ix_add_const(&scaled, *start as i64);
                self.value(node.inputs[0], &inner)?
            }
            Op::Pad { pads, value } => self.pad(node, idx, pads, value.0)?,
            Op::Concat { axis } => self.concat(node, idx, *axis)?,
            Op::MatMul | Op::FlashAttention { .. } | Op::Fused(_) => {
                return Err(GpuError::Unsupported {
                    kernel: String::new(),
                    reason: format!("`{}` inside a loop kernel (it must be its own kernel)", node.op.name()),
                })
            }
        };
        self.memo.insert(key, v.clone());
        Ok(v)
    }

    fn two(&mut self, node: &Node, idx: &[Ix]) -> Result<(Vec<String>, Vec<String>), GpuError> {
        let body = self.body;
        let ia = self.broadcast_index(idx, &node.shape, &body.node(node.inputs[0]).shape);
        let ib = self.broadcast_index(idx, &node.shape, &body.node(node.inputs[1]).shape);
        Ok((self.value(node.inputs[0], &ia)?, self.value(node.inputs[1], &ib)?))
    }

    fn zip(&mut self, x: &[String], y: &[String], mut f: impl FnMut(&mut Self, &str, &str) -> String) -> Vec<String> {
        let mut done: HashMap<(String, String), String> = HashMap::new();
        (0..self.vec)
            .map(|j| {
                let k = (x[j].clone(), y[j].clone());
                if let Some(v) = done.get(&k) {
                    return v.clone();
                }
                let v = f(self, &x[j], &y[j]);
                done.insert(k, v.clone());
                v
            })
            .collect()
    }

    /// In-bounds test `lo <= i < hi` per lane (i1).
    fn in_range(&mut self, ix: &Ix, lo: i64, hi: i64) -> Vec<String> {
        let (l, h) = (self.c_index(lo), self.c_index(hi));
        self.lanewise(&ix.lanes, |e, x| {
            let a = e.op(&format!("arith.cmpi sge, {x}, {l} : index"));
            let b = e.op(&format!("arith.cmpi slt, {x}, {h} : index"));
            e.op(&format!("arith.andi {a}, {b} : i1"))
        })
    }

    fn pad(&mut self, node: &Node, idx: &[Ix], pads: &[(usize, usize)], value: f64) -> Result<Vec<String>, GpuError> {
        let inner_shape = self.body.node(node.inputs[0]).shape.clone();
        let mut inner = Vec::new();
        let mut ok: Option<Vec<String>> = None;
        for (d, &(before, _)) in pads.iter().enumerate() {
            let n = inner_shape.dims()[d] as i64;
            if before == 0 && n == node.shape.dims()[d] as i64 {
                inner.push(idx[d].clone());
                continue;
            }
            let shifted = self.ix_add_const(&idx[d], -(before as i64));
            let valid = self.in_range(&shifted, 0, n);
            ok = Some(match ok {
                None => valid,
                Some(prev) => self.zip(&prev, &valid, |e, a, b| e.op(&format!("arith.andi {a}, {b} : i1"))),
            });
            inner.push(self.ix_clamp(&shifted, 0, n - 1));
        }
        let v = self.value(node.inputs[0], &inner)?;
        let Some(ok) = ok else { return Ok(v) };
        let fill = self.c_typed(value, node.dtype);
        let ty = compute_type(node.dtype);
        Ok((0..self.vec).map(|j| self.op(&format!("arith.select {}, {}, {fill} : {ty}", ok[j], v[j]))).collect())
    }

    fn concat(&mut self, node: &Node, idx: &[Ix], axis: usize) -> Result<Vec<String>, GpuError> {
        let ty = compute_type(node.dtype);
        let mut acc: Option<Vec<String>> = None;
        let mut offset = 0i64;
        for &input in node.inputs.iter() {
            let len = self.body.node(input).shape.dims()[axis] as i64;
            let shifted = self.ix_add_const(&idx[axis], -offset);
            let mut inner = idx.to_vec();
            inner[axis] = self.ix_clamp(&shifted, 0, len - 1);
            let v = self.value(input, &inner)?;
            acc = Some(match acc {
                None => v,
                Some(prev) => {
                    let take = self.in_range(&shifted, 0, len);
                    (0..self.vec).map(|j| self.op(&format!("arith.select {}, {}, {} : {ty}", take[j], v[j], prev[j]))).collect()
                }
            });
            offset += len;
        }
        Ok(acc.unwrap_or_default())
    }

    /// A reduction's value for this thread's row (uniform across the block).
    fn reduce(&mut self, id: NodeId) -> Result<String, GpuError> {
        if let Some(v) = self.reduce_memo.get(&id) {
            return Ok(v.clone());
        }
        let node = self.body.node(id);
        let Op::Reduce { op, .. } = &node.op else { unreachable!("reduce() on a non-reduce node") };
        let op = *op;
        let input = node.inputs[0];
        let dtype = self.body.node(input).dtype;
        let ty = compute_type(dtype);
        let chunks = match &self.row {
            Some(r) => r.chunks.iter().map(|(ix, valid)| (ix.clone(), valid.clone())).collect::<Vec<_>>(),
            None => {
                return Err(GpuError::Unsupported { kernel: String::new(), reason: "a reduction in an elementwise kernel".into() })
            }
        };
        let identity = match (op, dtype.is_float()) {
            (ReduceOp::Sum, true) => self.c_f32(0.0),
            (ReduceOp::Max, true) => self.c_f32(f64::NEG_INFINITY),
            (ReduceOp::Sum, false) => self.c_typed(0.0, dtype),
            (ReduceOp::Max, false) => self.constant(if dtype == DType::I32 { "-2147483648" } else { "-9223372036854775808" }, ty),
        };
        let combine = |e: &mut Self, a: &str, b: &str| -> String {
            match (op, dtype.is_float()) {
                (ReduceOp::Sum, true) => e.op(&format!("arith.addf {a}, {b} : f32")),
                (ReduceOp::Max, true) => e.op(&format!("arith.maximumf {a}, {b} : f32")),
                (ReduceOp::Sum, false) => e.op(&format!("arith.addi {a}, {b} : {ty}")),
                (ReduceOp::Max, false) => e.op(&format!("arith.maxsi {a}, {b} : {ty}")),
            }
        };
        // Thread-local fold over this thread's elements; masked chunks contribute the identity.
        let mut acc = identity.clone();
        for (ix, valid) in &chunks {
            let vals = self.value(input, ix)?;
            let mut part = vals[0].clone();
            for v in &vals[1..] {
                part = combine(self, &part, v);
            }
            let part = self.op(&format!("arith.select {valid}, {part}, {identity} : {ty}"));
            acc = combine(self, &acc, &part);
        }
        // Warp butterfly.
        let width = self.c_i32(32);
        for off in [16, 8, 4, 2, 1] {
            let o = self.c_i32(off);
            let s = self.fresh();
            let p = self.fresh();
            self.line(&format!("{s}, {p} = gpu.shuffle xor {acc}, {o}, {width} : {ty}"));
            acc = combine(self, &acc, &s);
        }
        // Across warps through shared memory.
        let (warps, warp, leader) = {
            let r = self.row.as_ref().expect("row context");
            (r.warps, r.warp.clone(), r.is_warp_leader.clone())
        };
        if warps > 1 {
            let smem = format!("%s{}", self.smem.len());
            self.smem.push(format!("{smem} : memref<32x{ty}, #gpu.address_space<workgroup>>"));
            let mt = format!("memref<32x{ty}, #gpu.address_space<workgroup>>");
            self.line(&format!("scf.if {leader} {{"));
            self.line(&format!("  memref.store {acc}, {smem}[{warp}] : {mt}"));
            self.line("}");
            self.line("gpu.barrier");
            let mut total: Option<String> = None;
            for w in 0..warps {
                let c = self.c_index(w as i64);
                let v = self.op(&format!("memref.load {smem}[{c}] : {mt}"));
                total = Some(match total {
                    None => v,
                    Some(t) => combine(self, &t, &v),
                });
            }
            acc = total.expect("at least one warp");
        }
        let _ = &self.row.as_ref().expect("row context").lane_in_warp;
        self.reduce_memo.insert(id, acc.clone());
        Ok(acc)
    }

    fn finish(self, symbol: &str, extra_attrs: &str) -> String {
        let args: Vec<String> = self
            .arg_types
            .iter()
            .enumerate()
            .map(|(i, (d, n))| format!("%a{i}: memref<{n}x{}>", storage_type(*d)))
            .collect();
        let wg = if self.smem.is_empty() { String::new() } else { format!(" workgroup({})", self.smem.join(", ")) };
        let mut s = String::new();
        let _ = writeln!(s, "  gpu.func @{symbol}({}){wg} kernel attributes {{{extra_attrs}}} {{", args.join(", "));
        s.push_str(&self.consts);
        s.push_str(&self.code);
        let _ = writeln!(s, "    gpu.return\n  }}");
        s
    }
}

fn compare(e: &mut Emitter, c: CmpOp, d: DType, x: &str, y: &str) -> String {
    let ty = compute_type(d);
    if d.is_float() {
        let p = match c {
            CmpOp::Eq => "oeq",
            CmpOp::Ne => "une",
            CmpOp::Lt => "olt",
            CmpOp::Le => "ole",
            CmpOp::Gt => "ogt",
            CmpOp::Ge => "oge",
        };
        e.op(&format!("arith.cmpf {p}, {x}, {y} : {ty}"))
    } else {
        let p = match (c, d == DType::Bool) {
            (CmpOp::Eq, _) => "eq",
            (CmpOp::Ne, _) => "ne",
            (CmpOp::Lt, false) => "slt",
            (CmpOp::Le, false) => "sle",
            (CmpOp::Gt, false) => "sgt",
            (CmpOp::Ge, false) => "sge",
            (CmpOp::Lt, true) => "ult",
            (CmpOp::Le, true) => "ule",
            (CmpOp::Gt, true) => "ugt",
            (CmpOp::Ge, true) => "uge",
        };
        e.op(&format!("arith.cmpi {p}, {x}, {y} : {ty}"))
    }
}

fn cast(e: &mut Emitter, x: &str, from: DType, to: DType) -> String {
    use DType::*;
    match (from, to) {
        (a, b) if a == b => x.to_string(),
        // Floats compute in f32: a cast to a narrower float rounds there.
        (F32 | F16 | BF16, F16 | BF16) => {
            let st = storage_type(to);
            let t = e.op(&format!("arith.truncf {x} : f32 to {st}"));
            e.op(&format!("arith.extf {t} : {st} to f32"))
        }
        (F16 | BF16, F32) => x.to_string(),
        (F32 | F16 | BF16, I32 | I64) => e.op(&format!("arith.fptosi {x} : f32 to {}", compute_type(to))),
        (I32 | I64, F32 | F16 | BF16) => {
            let f = e.op(&format!("arith.sitofp {x} : {} to f32", compute_type(from)));
            cast(e, &f, F32, to)
        }
        (Bool, F32 | F16 | BF16) => e.op(&format!("arith.uitofp {x} : i1 to f32")),
        (Bool, I32 | I64) => e.op(&format!("arith.extui {x} : i1 to {}", compute_type(to))),
        (F32 | F16 | BF16, Bool) => {
            let z = e.c_f32(0.0);
            e.op(&format!("arith.cmpf une, {x}, {z} : f32"))
        }
        (I32 | I64, Bool) => {
            let z = e.constant("0", compute_type(from));
            e.op(&format!("arith.cmpi ne, {x}, {z} : {}", compute_type(from)))
        }
        (I32, I64) => e.op(&format!("arith.extsi {x} : i32 to i64")),
        (I64, I32) => e.op(&format!("arith.trunci {x} : i64 to i32")),
        _ => unreachable!("all dtype pairs are covered"),
    }
}

/// The kernel's outputs: (argument index, body node).
fn outputs(body: &Graph, n_inputs: usize) -> Vec<(usize, NodeId)> {
    body.outputs().iter().enumerate().map(|(i, &o)| (n_inputs + i, o)).collect()
}

/// Emits an elementwise (or pure movement) kernel over the shape of its first output.
pub(crate) fn elementwise(symbol: &str, body: &Graph, args: &[(DType, usize)]) -> Result<EmittedKernel, GpuError> {
    let outs = outputs(body, body.inputs().len());
    let first = body.node(outs[0].1).shape.clone();
    for &(_, o) in &outs {
        if body.node(o).shape != first {
            return Err(GpuError::Unsupported {
                kernel: symbol.into(),
                reason: format!("elementwise outputs of different shapes ({} and {})", first, body.node(o).shape),
            });
        }
    }
    let numel = first.numel().max(1);
    let last = first.dims().last().copied().unwrap_or(1);
    let mut vec = vec_width(body.nodes().filter(|(_, n)| matches!(n.op, Op::Input { .. })).map(|(_, n)| n.dtype).chain(outs.iter().map(|&(_, o)| body.node(o).dtype)));
    if last % vec != 0 || numel % vec != 0 {
        vec = 1;
    }
    let mut e = Emitter::new(body, args, vec);
    let groups = numel / vec;
    // Each thread handles `per` vectors, a block-sized stride apart (coalesced per step).
    let per = knob("KILN_GPU_EW_VECS", 1).min(groups.div_ceil(EW_THREADS as usize)).max(1);
    let tid = e.op("gpu.thread_id x");
    let bid = e.op("gpu.block_id x");
    let bdim = e.c_index((EW_THREADS as usize * per) as i64);
    let g0 = e.op(&format!("arith.muli {bid}, {bdim} : index"));
    let g0 = e.op(&format!("arith.addi {g0}, {tid} : index"));
    for step in 0..per {
        let off = e.c_index((step * EW_THREADS as usize) as i64);
        let g = if step == 0 { g0.clone() } else { e.op(&format!("arith.addi {g0}, {off} : index")) };
        let ng = e.c_index(groups as i64);
        let inb = e.op(&format!("arith.cmpi ult, {g}, {ng} : index"));
        e.line(&format!("scf.if {inb} {{"));
        e.indent += 1;
        let lin = e.group_lanes(&g);
        let idx = e.delinearize(&lin, &first);
        for &(arg, o) in &outs {
            let v = e.value(o, &idx).map_err(|err| err.in_kernel(symbol))?;
            let d = body.node(o).dtype;
            e.store(arg, d, &first, &idx, &v);
        }
        e.indent -= 1;
        e.line("}");
        // values computed inside this `scf.if` are not visible to the next one
        e.memo.clear();
    }
    let blocks = groups.div_ceil(EW_THREADS as usize * per);
    let max_elements = args.iter().map(|a| a.1).max().unwrap_or(0);
    let attrs = format!("known_block_size = array<i32: {EW_THREADS}, 1, 1>");
    Ok(EmittedKernel {
        symbol: symbol.into(),
        func: e.finish(symbol, &attrs),
        grid: [blocks as u32, 1, 1],
        block: [EW_THREADS, 1, 1],
        max_elements,
    })
}

/// Emits a row-reduction kernel: one block per row of the reduced axes.
pub(crate) fn row_reduction(symbol: &str, body: &Graph, args: &[(DType, usize)]) -> Result<EmittedKernel, GpuError> {
    let unsupported = |reason: String| GpuError::Unsupported { kernel: symbol.into(), reason };
    let mut full: Option<(Shape, Vec<usize>)> = None;
    for (_, n) in body.nodes() {
        if let Op::Reduce { axes, .. } = &n.op {
            let s = body.node(n.inputs[0]).shape.clone();
            match &full {
                None => full = Some((s, axes.clone())),
                Some((f, a)) if *f == s && a == axes => {}
                Some((f, a)) => {
                    return Err(unsupported(format!("reductions over different spaces ({f} axes {a:?} and {s} axes {axes:?})")))
                }
            }
        }
    }
    let Some((full, axes)) = full else { return elementwise(symbol, body, args) };
    let rank = full.rank();
    let keep: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
    let row_shape = Shape::new(keep.iter().map(|&d| full.dims()[d]));
    let col_shape = Shape::new(axes.iter().map(|&d| full.dims()[d]));
    let rows = row_shape.numel();
    let cols = col_shape.numel().max(1);
    let last_reduced = axes.last() == Some(&(rank - 1));
    let mut vec = vec_width(body.nodes().filter(|(_, n)| matches!(n.op, Op::Input { .. })).map(|(_, n)| n.dtype));
    if !last_reduced || full.dims()[rank - 1] % vec != 0 {
        vec = 1;
    }
    let groups = cols / vec;
    let per_thread = knob("KILN_GPU_ROW_CHUNKS", 2);
    let mut threads = (groups.div_ceil(per_thread).div_ceil(32) * 32).clamp(32, 512) as u32;
    if groups.div_ceil(threads as usize) > MAX_CHUNKS as usize {
        threads = 1024;
    }
    let nchunks = groups.div_ceil(threads as usize);
    if nchunks > 4 * MAX_CHUNKS as usize {
        return Err(unsupported(format!("a reduced row of {cols} elements is longer than the register-resident row kernel holds")));
    }
    if let Some(why) = rows_mismatch(body, &full, &axes) {
        return Err(unsupported(why));
    }
    let mut e = Emitter::new(body, args, vec);
    let tid = e.op("gpu.thread_id x");
    let row = e.op("gpu.block_id x");
    let c32 = e.c_index(32);
    let lane = e.op(&format!("arith.remui {tid}, {c32} : index"));
    let warp = e.op(&format!("arith.divui {tid}, {c32} : index"));
    let zero = e.c_index(0);
    let leader = e.op(&format!("arith.cmpi eq, {lane}, {zero} : index"));
    let row_ix = Ix { lanes: vec![row.clone(); vec], form: Form::Uniform { mult: false } };
    let row_idx = e.delinearize(&row_ix, &row_shape);
    let mut chunks = Vec::new();
    for c in 0..nchunks {
        let off = e.c_index((c * threads as usize) as i64);
        let g = e.op(&format!("arith.addi {tid}, {off} : index"));
        let ng = e.c_index(groups as i64);
        let valid = e.op(&format!("arith.cmpi ult, {g}, {ng} : index"));
        let last = e.c_index(groups as i64 - 1);
        let gc = e.op(&format!("arith.minui {g}, {last} : index"));
        let col = e.group_lanes(&gc);
        let col_idx = e.delinearize(&col, &col_shape);
        let mut idx = Vec::with_capacity(rank);
        let (mut ri, mut ci) = (0, 0);
        for d in 0..rank {
            if axes.contains(&d) {
                idx.push(col_idx[ci].clone());
                ci += 1;
            } else {
                idx.push(row_idx[ri].clone());
                ri += 1;
            }
        }
        chunks.push((idx, valid));
    }
    e.row = Some(RowCtx {
        full: full.clone(),
        axes: axes.clone(),
        chunks: chunks.clone(),
        lane_in_warp: lane,
        warp,
        warps: threads / 32,
        is_warp_leader: leader,
    });
    let tid0 = e.op(&format!("arith.cmpi eq, {tid}, {zero} : index"));
    for (arg, o) in outputs(body, body.inputs().len()) {
        let on = body.node(o);
        let d = on.dtype;
        if on.shape == full {
            for (idx, valid) in &chunks {
                let v = e.value(o, idx).map_err(|err| err.in_kernel(symbol))?;
                e.line(&format!("scf.if {valid} {{"));
                e.indent += 1;
                e.store(arg, d, &full, idx, &v);
                e.indent -= 1;
                e.line("}");
            }
        } else if on.shape.numel() == full.numel() {
            // The row space reshaped (same elements, row-major): index the output through it.
            for (idx, valid) in &chunks {
                let lin = e.linearize(idx, &full);
                let oidx = e.delinearize(&lin, &on.shape);
                let v = e.value(o, &oidx).map_err(|err| err.in_kernel(symbol))?;
                e.line(&format!("scf.if {valid} {{"));
                e.indent += 1;
                e.store(arg, d, &full, idx, &v);
                e.indent -= 1;
                e.line("}");
            }
        } else if on.shape.numel() == rows {
            let r = Ix { lanes: vec![row.clone(); vec], form: Form::Uniform { mult: false } };
            let oidx = e.delinearize(&r, &on.shape);
            let v = e.value(o, &oidx).map_err(|err| err.in_kernel(symbol))?;
            e.line(&format!("scf.if {tid0} {{"));
            e.indent += 1;
            e.store(arg, d, &on.shape, &oidx, &v);
            e.indent -= 1;
            e.line("}");
        } else {
            return Err(unsupported(format!("output of shape {} is neither the row space {full} nor one value per row", on.shape)));
        }
    }
    let ctx = e.row.as_ref().expect("row context");
    debug_assert!(ctx.full == full && ctx.axes == axes);
    let max_elements = args.iter().map(|a| a.1).max().unwrap_or(0);
    let attrs = format!("known_block_size = array<i32: {threads}, 1, 1>");
    Ok(EmittedKernel {
        symbol: symbol.into(),
        func: e.finish(symbol, &attrs),
        grid: [rows.max(1) as u32, 1, 1],
        block: [threads, 1, 1],
        max_elements,
    })
}

/// Whether every reduction in a row kernel is read only at the block's own row.
///
/// A block computes each reduction for its row alone ([`Emitter::reduce`]), so a value that
/// reads a reduction at another row (a row sum broadcast along a different axis, say
/// `sum(x, 1)[None, :] / y[:, None]`) would silently get the wrong row. This walks the body's
/// index maps with concrete indices, as [`Emitter::value`] does with symbolic ones, from the
/// outputs' positions of sampled rows and columns (all of them when the space is small; the
/// first, last and pseudo-random ones otherwise) and reports the first read of a reduction
/// at a row other than the block's, so the caller can materialize the reduction instead.
fn rows_mismatch(body: &Graph, full: &Shape, axes: &[usize]) -> Option<String> {
    let rank = full.rank();
    let keep: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
    let row_shape = Shape::new(keep.iter().map(|&d| full.dims()[d]));
    let col_shape = Shape::new(axes.iter().map(|&d| full.dims()[d]));
    let (rows, cols) = (row_shape.numel().max(1), col_shape.numel().max(1));
    let rows_s = sample(rows, 48);
    let cols_s = sample(cols, 24);
    let mut walk = RowWalk { body, full, axes, keep: &keep, row_shape: &row_shape, col_shape: &col_shape, cols: &cols_s, row: vec![], seen: Default::default() };
    for &r in &rows_s {
        walk.row = unlinear(r, &row_shape);
        walk.seen.clear();
        for &o in body.outputs() {
            let os = &body.node(o).shape;
            let positions: Vec<Vec<usize>> = if *os == *full || os.numel() == full.numel() {
                cols_s.iter().map(|&c| unlinear(linear(&walk.full_index(c), full), os)).collect()
            } else {
                vec![unlinear(r, os)]
            };
            for p in positions {
                if let Some(why) = walk.value(o, &p) {
                    return Some(why);
                }
            }
        }
    }
    None
}

/// `n` indices of `0..len`: all of them when few, else both ends and pseudo-random ones.
fn sample(len: usize, n: usize) -> Vec<usize> {
    if len <= 2 * n {
        return (0..len).collect();
    }
    let mut out: Vec<usize> = (0..n / 4).chain(len - n / 4..len).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ len as u64;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x % len as u64) as usize);
    }
    out
}

fn linear(idx: &[usize], shape: &Shape) -> usize {
    idx.iter().zip(shape.strides()).map(|(i, s)| i * s).sum()
}

fn unlinear(mut lin: usize, shape: &Shape) -> Vec<usize> {
    let mut idx = vec![0; shape.rank()];
    for (d, s) in shape.strides().iter().enumerate() {
        idx[d] = if shape.dims()[d] == 1 { 0 } else { lin / s };
        lin -= idx[d] * s;
    }
    idx
}

/// The concrete walk of [`rows_mismatch`] for one row.
struct RowWalk<'a> {
    body: &'a Graph,
    full: &'a Shape,
    axes: &'a [usize],
    keep: &'a [usize],
    row_shape: &'a Shape,
    col_shape: &'a Shape,
    cols: &'a [usize],
    /// The block's row, a multi-index into `row_shape`.
    row: Vec<usize>,
    /// Reductions whose inputs were walked for this row.
    seen: std::collections::HashSet<NodeId>,
}

impl RowWalk<'_> {
    /// The position in the row space of column `c` of this row.
    fn full_index(&self, c: usize) -> Vec<usize> {
        let col = unlinear(c, self.col_shape);
        let mut idx = vec![0; self.full.rank()];
        for (k, &d) in self.keep.iter().enumerate() {
            idx[d] = self.row[k];
        }
        for (k, &d) in self.axes.iter().enumerate() {
            idx[d] = col[k];
        }
        idx
    }

    fn value(&mut self, id: NodeId, idx: &[usize]) -> Option<String> {
        let node = self.body.node(id);
        let bcast = |k: usize| {
            let s = &self.body.node(node.inputs[k]).shape;
            let lead = node.shape.rank() - s.rank();
            (0..s.rank()).map(|i| if s.dims()[i] == 1 { 0 } else { idx[lead + i] }).collect::<Vec<_>>()
        };
        match &node.op {
            Op::Input { .. } | Op::Full { .. } | Op::Iota { .. } => None,
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::Expand { .. } => {
                (0..node.inputs.len()).find_map(|k| self.value(node.inputs[k], &bcast(k)))
            }
            Op::Cast { .. } => self.value(node.inputs[0], idx),
            Op::Reduce { keepdim, .. } => {
                let want: Vec<usize> = if *keepdim {
                    (0..self.full.rank()).map(|d| self.keep.iter().position(|&k| k == d).map_or(0, |k| self.row[k])).collect()
                } else {
                    self.row.clone()
                };
                if idx != want.as_slice() {
                    return Some(format!(
                        "a reduction read at {idx:?} from the block computing row {:?} of {} (it is broadcast along another axis)",
                        self.row, self.row_shape
                    ));
                }
                if !self.seen.insert(id) {
                    return None;
                }
                let input = node.inputs[0];
                let cols = self.cols.to_vec();
                cols.iter().find_map(|&c| {
                    let p = self.full_index(c);
                    self.value(input, &p)
                })
            }
            Op::Reshape { .. } => {
                let inner = unlinear(linear(idx, &node.shape), &self.body.node(node.inputs[0]).shape);
                self.value(node.inputs[0], &inner)
            }
            Op::Permute { perm } => {
                let mut inner = vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inner[p] = idx[i];
                }
                self.value(node.inputs[0], &inner)
            }
            Op::Slice { axis, start, step, .. } => {
                let mut inner = idx.to_vec();
                inner[*axis] = start + idx[*axis] * step;
                self.value(node.inputs[0], &inner)
            }
            Op::Pad { pads, .. } => {
                let inner_shape = &self.body.node(node.inputs[0]).shape;
                let mut inner = Vec::with_capacity(idx.len());
                for (d, &(before, _)) in pads.iter().enumerate() {
                    match idx[d].checked_sub(before) {
                        Some(i) if i < inner_shape.dims()[d] => inner.push(i),
                        _ => return None, // the fill value
                    }
                }
                self.value(node.inputs[0], &inner)
            }
            Op::Concat { axis } => {
                let mut offset = 0;
                for &input in &node.inputs {
                    let len = self.body.node(input).shape.dims()[*axis];
                    if idx[*axis] < offset + len {
                        let mut inner = idx.to_vec();
                        inner[*axis] -= offset;
                        return self.value(input, &inner);
                    }
                    offset += len;
                }
                None
            }
            Op::MatMul | Op::FlashAttention { .. } | Op::Fused(_) => None,
        }
    }
}
