//! Kiln's skinny GEMM: `C[m, n] = A[m, k] B[k, n]` for small `m` (activations times weights at
//! batch 1), on the tensor cores with `mma.sync.aligned.m16n8k16` (bf16 / f16 in, f32
//! accumulate), weights streamed straight from global memory into registers. Design, measured
//! numbers and which GEMMs it takes by default ([`DEFAULT_MIN_SPLITS`]): `docs/gpu-gemm.md`.
//!
//! At `m <= 64` a GEMM is a weight stream: every weight is used `m` times, so the time is the
//! weight bytes over the memory bandwidth, if enough loads are in flight on every SM.
//!
//! - **Fragments from 16-byte loads.** The sum over `k` is order-free, so the mma's logical `k`
//!   is permuted to match the loads (the same permutation for A and B). With
//!   `g = lane / 4`, `t = lane % 4`: for `b [k, n]` a lane loads, for the 4 weight rows
//!   `k0 + 4t + r`, the 8 columns `n0 + 8g ..` (logical `2t + e` is row `4t + e`, `2t + 8 + e`
//!   is row `4t + 2 + e`); the 8 columns of a lane are the warp's 8 n-tiles (tile `i`, column
//!   `c` is `n0 + 8c + i`). For `b` stored `[n, k]` (`nn.Linear`) a lane loads per n-tile `i`
//!   row `n0 + 8i + g` at `k0 + 8t ..`: both k16 halves' B registers as they are. A is one 8-
//!   or 16-byte load per row.
//! - **Grid.** One block per (64 columns, K split); its warps take interleaved steps of the
//!   split and are summed through shared memory in warp order. With one split the block applies
//!   the epilogue and stores.
//! - **Split-K, deterministic, one kernel.** Each block stores an f32 partial `[split, m, n]`,
//!   fences, and counts itself in its column block's counter; the last block to arrive sums all
//!   splits' partials in split order and applies the epilogue. The counters (one i32 buffer per
//!   graph) are zeroed by [`zero_counters`] before the first split-K GEMM.
//! - **Split-K in a cluster** (sm_90, opt-in: [`with_skinny_clusters`],
//!   `KILN_GPU_SKINNY_CLUSTER=1`). The 2 to 8 splits of a column block run as one thread-block
//!   cluster; each keeps its partial in shared memory, and after a cluster barrier each block
//!   sums its share of the items from all blocks' shared memory (`mapa`, `ld.shared::cluster`)
//!   in split order. No workspace, counters or global fences ([`cluster_sums`]).
//! - **Weights before the wait.** A weight that no step of the graph writes ([`Invariant`]) is
//!   loaded, all of a warp's steps at once when they fit in registers, before the kernel's
//!   `griddepcontrol.wait` ([`WAIT_MARK`]); under programmatic dependent launch the weight
//!   stream overlaps the previous kernel, and only `A`, the mmas and the reduction follow it.
//! - **Epilogue** (as cuBLASLt's): `act(acc + bias[n]) + residual[m, n]`, rounded once; bias and
//!   residual are loaded at kernel start.
//! - Odd shapes: rows past `k` or `m` and columns past `n` read zeros (clamped address and a
//!   select); `n % 8 != 0` (row-major `b`) or `k % 4`/`k % 8 != 0` use scalar loads.

use super::mma::{mma_m16n8k16, pack_pair};
use super::{storage_type, EmittedKernel, Emitter};
use crate::gpu::GpuError;
use ir::{DType, Graph, UnaryOp};
use runtime::cuda::GemmActivation;

/// Columns per block for a row-major `b` (8 mma n-tiles of 8, one 16-byte load of 8 columns
/// per lane), and the widest block of a transposed one ([`Skinny::block_n`]).
const BLOCK_N: usize = 64;
/// The most weight registers (32-bit) a lane holds for the steps whose loads it issues before
/// their mmas: 3 steps of a 64-column transposed block (32 each), 12 of a 16-column one.
const MAX_WEIGHT_REGS: usize = 96;

/// The largest portable thread-block cluster (CTAs), sm_90.
const MAX_CLUSTER: usize = 8;

/// The largest `m` by default.
const DEFAULT_MAX_M: usize = 64;
/// The fewest K splits a GEMM must take to run here by default (`KILN_GPU_SKINNY_MIN_SPLITS`):
/// 1, every GEMM of `m <= 64`. With 64-column blocks only the deep, narrow GEMMs won (GPT-2
/// small b1 t32, H200: 0.339 ms with the two `n = 768` GEMMs of each layer here, 0.363 with
/// cuBLASLt everywhere, 0.411 with every GEMM here); with 32-column blocks every GEMM here
/// is fastest (H100, one call: 0.334 ms against 0.376-0.388 for the other two policies;
/// docs/gpu-gemm.md).
const DEFAULT_MIN_SPLITS: usize = 1;

thread_local! {
    static POLICY: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Which GEMMs the skinny kernel takes: `(max m, min splits)`. [`with_skinny_gemm`]'s bound
/// on this thread (every GEMM of `m <= max_m`), else `KILN_GPU_SKINNY_MAX_M` (at most 64; 0:
/// none) and `KILN_GPU_SKINNY_MIN_SPLITS` (1: any), else the defaults.
fn policy() -> (usize, usize) {
    match POLICY.with(|c| c.get()) {
        Some(max_m) => (max_m.min(64), 1),
        None => {
            let max_m = std::env::var("KILN_GPU_SKINNY_MAX_M")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_MAX_M);
            (
                max_m.min(64),
                super::knob("KILN_GPU_SKINNY_MIN_SPLITS", DEFAULT_MIN_SPLITS),
            )
        }
    }
}

/// Runs `f` (which compiles graphs) with Kiln's skinny GEMM taking every GEMM of
/// `m <= max_m` rows it can (0: none) on this thread, whatever the environment says.
pub fn with_skinny_gemm<T>(max_m: usize, f: impl FnOnce() -> T) -> T {
    let old = POLICY.with(|c| c.replace(Some(max_m)));
    let out = f();
    POLICY.with(|c| c.set(old));
    out
}

thread_local! {
    static CLUSTERS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether split-K GEMMs sum their splits in a thread-block cluster: [`with_skinny_clusters`]'
/// setting on this thread, else `KILN_GPU_SKINNY_CLUSTER=1`. Off by default: on an H100 it
/// measured the same as the global path for GPT-2 b1 t32 (docs/gpu-gemm.md).
fn clusters_enabled() -> bool {
    CLUSTERS
        .with(|c| c.get())
        .unwrap_or_else(|| std::env::var("KILN_GPU_SKINNY_CLUSTER").is_ok_and(|v| v == "1"))
}

/// Runs `f` (which compiles graphs) with split-K skinny GEMMs summed through thread-block
/// clusters (`on`, sm_90 targets) or through global memory, on this thread, whatever the
/// environment says.
pub fn with_skinny_clusters<T>(on: bool, f: impl FnOnce() -> T) -> T {
    let old = CLUSTERS.with(|c| c.replace(Some(on)));
    let out = f();
    CLUSTERS.with(|c| c.set(old));
    out
}

/// One skinny GEMM: shapes and what the epilogue adds.
#[derive(Clone, Debug)]
pub(crate) struct Skinny {
    pub dtype: DType,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub bias: bool,
    pub act: Option<GemmActivation>,
    pub residual: bool,
    /// `b` stored as `[n, k]` (read as its transpose).
    pub b_transposed: bool,
    /// Split-K: this GEMM's first counter in the graph's counter buffer.
    pub counter_base: usize,
    /// Which operands no step of the graph writes.
    pub invariant: Invariant,
    /// A layer norm of `a`'s rows that the kernel applies itself before its mmas.
    pub norm: Option<Norm>,
    /// The target has thread-block clusters (sm_90): K splits may be summed through
    /// distributed shared memory ([`Skinny::clustered`]).
    pub clusters: bool,
    /// The kernel also writes its output's row statistics per column block ([`RowStats`]),
    /// for a layer norm of the output that the GEMM after it applies.
    pub stats_out: bool,
}

/// Row statistics of a GEMM's output that the GEMM writes beside it, for the layer norm that
/// the next GEMM applies to its `A` ([`Norm::stats`]): per row and column block, the sum of the
/// block's values (as stored, rounded) and their sum of squared deviations from the block's
/// mean, `f32 [m, blocks, 2]`. The reader combines the blocks (Chan et al.'s parallel update,
/// in a fixed order: deterministic; [`stats_rows`]): the norm then needs no pass over the row
/// of its own, and the GEMM after it keeps its K splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowStats {
    /// Column blocks of the writer (`ceil(k / width)`).
    pub blocks: usize,
    /// Columns per block (the last block may hold fewer).
    pub width: usize,
}

/// The most column blocks a fused norm combines ([`RowStats`]): each thread of the reader
/// loads a row's `2 * blocks` values.
const MAX_STAT_BLOCKS: usize = 128;

/// `a`'s rows layer-normed inside the GEMM, `(x - mean) * rsqrt(var + eps) [* gamma] [+ beta]`
/// over each row of `k` (f32, rounded to the GEMM's dtype as the norm kernel would store it):
/// the norm kernel before a GEMM fused into the GEMM (`lower.rs`). Each block then needs whole
/// rows, so the GEMM takes one K split and every warp holds its `A` fragments in registers;
/// the row statistics are summed across the block's warps in shared memory, in warp order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Norm {
    pub gamma: bool,
    pub beta: bool,
    pub eps: f64,
    /// The row statistics come from the GEMM that wrote `a` (an argument after gamma and
    /// beta): each `A` value is normalized as it is loaded, in any K split, with no pass of
    /// its own over the rows. `None`: the kernel computes them (one split, whole rows).
    pub stats: Option<RowStats>,
}

/// The most `A` registers (32-bit) a lane may hold at once for a fused norm (all of its steps).
const MAX_NORM_A_REGS: usize = 96;

/// The most `A` registers (32-bit) a lane loads before a norm's statistics from the writer
/// arrive (iteration 0's steps; GPT-2 b1: 3 steps of 4 rows, 48).
const MAX_EARLY_A_REGS: usize = 48;

/// Whether a fused norm takes its statistics in one pass (sums of `x - c` and its square, `c`
/// the row's first value; one barrier and one load of `A` fewer) rather than two (the mean,
/// then squared deviations, as the norm kernel; `KILN_GPU_NORM_ONE_PASS=0`). H100, GPT-2
/// small b1 t32: 0.336 ms against 0.351 (32-column blocks), 0.356 against 0.385 (16).
fn one_pass_norm() -> bool {
    std::env::var("KILN_GPU_NORM_ONE_PASS").map_or(true, |v| v != "0")
}

/// Operands of a GEMM that no step of its graph writes (graph inputs: weights). The kernel
/// loads them before it waits for its predecessor, so that under programmatic dependent launch
/// (docs/gpu.md) its weight stream overlaps the previous kernel's run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Invariant {
    pub b: bool,
    pub bias: bool,
    /// The fused norm's gamma and beta.
    pub norm: bool,
}

impl Skinny {
    /// Whether the kernel computes this GEMM (a row-major `a`, `b` not batched; [`policy`]).
    pub(crate) fn fits(&self) -> bool {
        let (max_m, min_splits) = policy();
        matches!(self.dtype, DType::BF16 | DType::F16)
            && self.m >= 1
            && self.m <= max_m
            && self.n >= 1
            && self.k >= 1
            && !(self.act.is_some() && self.residual)
            && (self.splits().0 >= min_splits || self.norm.is_some())
            && (self.norm.is_none() || self.norm_fits())
            && !(self.stats_out && self.clustered())
    }

    /// A fused norm whose row statistics the kernel computes itself (one K split).
    fn in_kernel_norm(&self) -> bool {
        self.norm.is_some_and(|n| n.stats.is_none())
    }

    /// The first argument after `a, b` and, split over K in global memory, the workspace and
    /// counters: the fused norm's gamma, beta and row statistics, then the epilogue's.
    fn norm_first(&self) -> usize {
        if self.splits().0 == 1 || self.clustered() {
            2
        } else {
            4
        }
    }

    /// The first epilogue argument (bias, residual, out; [`epilogue_args`]).
    fn epilogue_first(&self) -> usize {
        self.norm_first()
            + self.norm.map_or(0, |n| usize::from(n.gamma) + usize::from(n.beta) + usize::from(n.stats.is_some()))
    }

    /// A fused norm's `k` rounded up to whole steps (its gamma and beta in shared memory).
    fn norm_kpad(&self) -> usize {
        self.k.div_ceil(self.step_k()) * self.step_k()
    }

    /// A fused norm needs transposed weights (8 `k` of a row per lane and step) and all of a
    /// warp's steps in registers at once: [`Self::unroll`] covers them and their `A`
    /// fragments fit in [`MAX_NORM_A_REGS`].
    fn norm_fits(&self) -> bool {
        if let Some(rs) = self.norm.and_then(|n| n.stats) {
            // Normalized as loaded: 8 `k` of a row per lane (transposed weights), at most 2
            // m-tiles (with 4 the normalization's registers spill); the statistics cover
            // exactly `k` columns.
            return self.b_transposed
                && self.m_tiles() <= 2
                && rs.width >= 1
                && (1..=MAX_STAT_BLOCKS).contains(&rs.blocks)
                && self.k.div_ceil(rs.width) == rs.blocks;
        }
        let steps = self.k.div_ceil(self.step_k());
        let per_warp = steps.div_ceil(self.warps());
        self.b_transposed
            && self.unroll() == per_warp
            && per_warp * 2 * self.m_tiles() * 4 <= MAX_NORM_A_REGS
    }

    /// `k` rows per step of a warp: one k16 mma step for a row-major `b`; two for a transposed
    /// one (a lane's 16-byte load spans 8 `k`).
    fn step_k(&self) -> usize {
        if self.b_transposed {
            32
        } else {
            16
        }
    }

    fn m_tiles(&self) -> usize {
        self.m.div_ceil(16)
    }

    /// Warps per block.
    fn warps(&self) -> usize {
        super::knob("KILN_GPU_SKINNY_WARPS", 4).clamp(1, 16)
    }

    /// Columns per block. A row-major `b`: 64 (a lane loads 8 columns). A transposed one (a
    /// lane loads one row per n-tile): 32, the best of 16, 32 and 64 for every GEMM of GPT-2
    /// small at b1 t32 (whole graph on an H100: 0.334 ms against 0.362 with 16 and 0.384 with
    /// 64 where K splits are needed, 16 elsewhere; docs/gpu-gemm.md). Narrow blocks need fewer
    /// K splits to fill the GPU; wide ones read `A` fewer times. `KILN_GPU_SKINNY_BLOCK_N`
    /// (16, 32 or 64) sets the width for transposed weights.
    pub(crate) fn block_n(&self) -> usize {
        if !self.b_transposed {
            return BLOCK_N;
        }
        // A fused norm takes no K split and holds all of a warp's steps: 32 columns when their
        // weights fit in registers (qkv: 72 blocks; 144 of 16 measured slower), else 16.
        let (knob, default) = if self.in_kernel_norm() {
            let per_warp = self.k.div_ceil(self.step_k()).div_ceil(self.warps());
            ("KILN_GPU_SKINNY_NORM_BLOCK_N", if per_warp * 4 * (32 / 8) <= MAX_WEIGHT_REGS { 32 } else { 16 })
        } else {
            ("KILN_GPU_SKINNY_BLOCK_N", 32)
        };
        match super::knob(knob, default) {
            w @ (16 | 32 | 64) => w,
            _ => default,
        }
    }

    /// Column blocks of the grid.
    pub(crate) fn blocks_n(&self) -> usize {
        self.n.div_ceil(self.block_n())
    }

    /// mma n-tiles (8 columns) per block.
    fn n_tiles(&self) -> usize {
        self.block_n() / 8
    }

    /// The blocks a grid aims for: `KILN_GPU_SKINNY_CTAS`, default 132 (the H100's SMs).
    fn target_ctas() -> usize {
        super::knob("KILN_GPU_SKINNY_CTAS", 132)
    }

    /// Steps whose loads a warp issues before their mmas: all of its steps in the split when
    /// their weights fit in [`MAX_WEIGHT_REGS`] (then every weight load comes before the
    /// kernel's wait), else as many as fit.
    fn unroll(&self) -> usize {
        self.splits().1.div_ceil(self.warps()).clamp(1, self.max_unroll())
    }

    /// The most steps whose weights a lane holds at once ([`MAX_WEIGHT_REGS`]): a row-major
    /// step holds 4 rows x 8 values, a transposed one 8 values per n-tile.
    fn max_unroll(&self) -> usize {
        let regs_per_step = if self.b_transposed { 4 * self.n_tiles() } else { 16 };
        (MAX_WEIGHT_REGS / regs_per_step).max(1)
    }

    /// Whether the K splits of a column block run as one thread-block cluster and are summed
    /// through distributed shared memory ([`clusters_enabled`]): 2 to [`MAX_CLUSTER`] splits
    /// on a target with clusters. Else they go through the f32 workspace and an arrival
    /// counter in global memory.
    pub(crate) fn clustered(&self) -> bool {
        let splits = self.splits().0;
        self.clusters && (2..=MAX_CLUSTER).contains(&splits) && clusters_enabled()
    }

    /// `(splits, steps per split)`.
    pub(crate) fn splits(&self) -> (usize, usize) {
        let steps = self.k.div_ceil(self.step_k());
        if self.in_kernel_norm() {
            return (1, steps);
        }
        let blocks_n = self.blocks_n();
        let target = Self::target_ctas();
        // At least one step per warp in each split.
        let max_splits = (steps / self.warps()).max(1);
        let want = if split_policy() == SplitPolicy::Fit {
            steps.div_ceil(self.warps() * self.max_unroll()).clamp(1, max_splits)
        } else {
            target.div_ceil(blocks_n).clamp(1, max_splits)
        };
        let per = steps.div_ceil(want);
        (steps.div_ceil(per), per)
    }
}

/// Where a kernel that loads some operands before waiting for its predecessor waits: a PTX
/// comment that `ptx::with_grid_dependency_control` replaces by `griddepcontrol.wait` (sm_90;
/// the other kernels wait at entry). A side-effecting asm statement: no load moves across it.
pub(crate) const WAIT_MARK: &str = "// kiln: griddepcontrol.wait";
const WAIT_MARK_OP: &str =
    "llvm.inline_asm has_side_effects \"// kiln: griddepcontrol.wait\", \"\" : () -> ()";

/// How the skinny GEMM picks its K splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitPolicy {
    /// Enough splits for about [`Skinny::target_ctas`] blocks (the SM count).
    Ctas,
    /// The fewest splits in which every warp holds all of its weights in registers: every
    /// weight load comes before the kernel's wait, and a GEMM whose warps fit in one split
    /// has no split-K reduction (GPT-2 b1: one split for qkv, the attention projection and
    /// the MLP up projection, 4 for the MLP down projection).
    Fit,
}

thread_local! {
    static SPLITS: std::cell::Cell<Option<SplitPolicy>> = const { std::cell::Cell::new(None) };
}

/// The split policy: [`with_skinny_splits`]' on this thread, else `KILN_GPU_SKINNY_SPLITS`
/// (`fit` or `ctas`), else [`SplitPolicy::Ctas`].
fn split_policy() -> SplitPolicy {
    SPLITS.with(|c| c.get()).unwrap_or_else(|| match std::env::var("KILN_GPU_SKINNY_SPLITS").as_deref() {
        Ok("fit") => SplitPolicy::Fit,
        _ => SplitPolicy::Ctas,
    })
}

/// Runs `f` (which compiles graphs) with the skinny GEMM picking its K splits by `policy` on
/// this thread, whatever the environment says.
pub fn with_skinny_splits<T>(policy: SplitPolicy, f: impl FnOnce() -> T) -> T {
    let old = SPLITS.with(|c| c.replace(Some(policy)));
    let out = f();
    SPLITS.with(|c| c.set(old));
    out
}

/// Where a kernel lets the next one launch (`griddepcontrol.launch_dependents`, sm_90) when
/// not right after its wait: a PTX comment that `ptx::with_grid_dependency_control` replaces.
pub(crate) const TRIGGER_MARK: &str = "// kiln: griddepcontrol.launch_dependents";
const TRIGGER_MARK_OP: &str =
    "llvm.inline_asm has_side_effects \"// kiln: griddepcontrol.launch_dependents\", \"\" : () -> ()";

/// Whether the skinny GEMM lets the next kernel launch only once its mmas are done and summed
/// (`KILN_GPU_LATE_TRIGGER=1`, an experiment) rather than right after its wait: the next
/// kernel's weight stream then overlaps only this one's split-K reduction instead of
/// competing with its `A` loads.
fn late_trigger() -> bool {
    std::env::var("KILN_GPU_LATE_TRIGGER").is_ok_and(|v| v == "1")
}

/// Marks point `n` of the block's work for the in-graph trace when kernels are traced
/// (`ptx::with_trace` stamps the time there; `runtime::cuda::trace::MARKS`): 1 the norm's row
/// statistics combined, 2 the warps' sums in shared memory (every mma done), 3 the block
/// counted in its column block's split-K counter. Nothing when not tracing (the asm statement
/// would order the loads around it).
fn trace_mark(k: &mut K, n: usize) {
    if super::super::ptx::tracing() {
        k.line(&format!("llvm.inline_asm has_side_effects \"{}{n}\", \"\" : () -> ()", super::super::ptx::TRACE_MARK));
    }
}

/// An item's epilogue operands, loaded early.
#[derive(Default)]
struct Prefetched {
    bias: Option<Vec<String>>,
    residual: Option<Vec<String>>,
}

/// Builds MLIR for the kernels on top of the loop emitter's text helpers.
struct K<'g> {
    e: Emitter<'g>,
}

impl<'g> K<'g> {
    fn op(&mut self, s: &str) -> String {
        self.e.op(s)
    }
    fn line(&mut self, s: &str) {
        self.e.line(s)
    }
    fn ci(&mut self, k: usize) -> String {
        self.e.c_index(k as i64)
    }
    fn add(&mut self, a: &str, b: &str) -> String {
        self.op(&format!("arith.addi {a}, {b} : index"))
    }
    fn mul(&mut self, a: &str, k: usize) -> String {
        let c = self.ci(k);
        self.op(&format!("arith.muli {a}, {c} : index"))
    }
    fn addc(&mut self, a: &str, k: usize) -> String {
        if k == 0 {
            return a.to_string();
        }
        let c = self.ci(k);
        self.add(a, &c)
    }
    fn lt(&mut self, a: &str, k: usize) -> String {
        let c = self.ci(k);
        self.op(&format!("arith.cmpi ult, {a}, {c} : index"))
    }
    fn and(&mut self, a: &str, b: &str) -> String {
        self.op(&format!("arith.andi {a}, {b} : i1"))
    }
    /// `ok ? idx : 0`.
    fn clamp(&mut self, ok: &str, idx: &str) -> String {
        let z = self.ci(0);
        self.op(&format!("arith.select {ok}, {idx}, {z} : index"))
    }
    fn tid(&mut self, dim: &str) -> String {
        self.op(&format!("gpu.thread_id {dim}"))
    }
    fn bid(&mut self, dim: &str) -> String {
        self.op(&format!("gpu.block_id {dim}"))
    }

    /// A scalar of `d`'s storage type as f32.
    fn widen(&mut self, x: &str, d: DType) -> String {
        if d == DType::F32 {
            x.to_string()
        } else {
            self.op(&format!("arith.extf {x} : {} to f32", storage_type(d)))
        }
    }

    /// `len` consecutive elements of `arg` from `idx`, f32 values or zeros where `ok[j]` is
    /// false; one vector load when `vector` (then all `ok[j]` are `ok[0]`).
    fn load_run(
        &mut self,
        arg: usize,
        d: DType,
        idx: &str,
        len: usize,
        ok: &[String],
        vector: bool,
    ) -> Vec<String> {
        let (st, n) = (storage_type(d), self.e.arg_types[arg].1);
        let mem = format!("memref<{n}x{st}>");
        let zero = self.e.c_f32(0.0);
        if vector {
            let at = self.clamp(&ok[0], idx);
            let vt = format!("vector<{len}x{st}>");
            let v = self.op(&format!(
                "vector.load %a{arg}[{at}] {{alignment = {} : i64}} : {mem}, {vt}",
                len * d.size_bytes()
            ));
            (0..len)
                .map(|j| {
                    let x = self.op(&format!("vector.extract {v}[{j}] : {st} from {vt}"));
                    let x = self.widen(&x, d);
                    self.op(&format!("arith.select {}, {x}, {zero} : f32", ok[0]))
                })
                .collect()
        } else {
            (0..len)
                .map(|j| {
                    let i = self.addc(idx, j);
                    let at = self.clamp(&ok[j], &i);
                    let x = self.op(&format!("memref.load %a{arg}[{at}] : {mem}"));
                    let x = self.widen(&x, d);
                    self.op(&format!("arith.select {}, {x}, {zero} : f32", ok[j]))
                })
                .collect()
        }
    }

    /// Raw (storage-typed) loads for mma operands: `len` elements from `idx`, zeros where not
    /// `ok`. Returns one `vector<len x st>`.
    fn load_raw(
        &mut self,
        arg: usize,
        d: DType,
        idx: &str,
        len: usize,
        ok: &[String],
        vector: bool,
    ) -> String {
        let (st, n) = (storage_type(d), self.e.arg_types[arg].1);
        let mem = format!("memref<{n}x{st}>");
        let vt = format!("vector<{len}x{st}>");
        let zv = self.e.constant("dense<0.0>", &vt);
        if vector {
            let at = self.clamp(&ok[0], idx);
            let v = self.op(&format!(
                "vector.load %a{arg}[{at}] {{alignment = {} : i64}} : {mem}, {vt}",
                len * d.size_bytes()
            ));
            self.op(&format!(
                "arith.select {}, {v}, {zv} : vector<{len}x{st}>",
                ok[0]
            ))
        } else {
            let zs = self.e.constant("0.0", st);
            let xs: Vec<String> = (0..len)
                .map(|j| {
                    let i = self.addc(idx, j);
                    let at = self.clamp(&ok[j], &i);
                    let x = self.op(&format!("memref.load %a{arg}[{at}] : {mem}"));
                    self.op(&format!("arith.select {}, {x}, {zs} : {st}", ok[j]))
                })
                .collect();
            self.op(&format!("vector.from_elements {} : {vt}", xs.join(", ")))
        }
    }

    fn pack(&mut self, lo: &str, hi: &str, i: usize, st: &str) -> String {
        pack_pair(&mut self.e, lo, hi, i, st)
    }

    /// `act(v + bias) + residual`, stored at `out[m * n_total + n ..]` (`vals.len()` columns);
    /// returns the values stored (f32, before rounding).
    #[allow(clippy::too_many_arguments)]
    fn epilogue_store(
        &mut self,
        s: &Skinny,
        args: (Option<usize>, Option<usize>, usize),
        m: &str,
        n: &str,
        vals: Vec<String>,
        ok_m: &str,
        pre: &Prefetched,
    ) -> Vec<String> {
        let (bias_arg, res_arg, out_arg) = args;
        if pre.bias.is_some() || pre.residual.is_some() {
            let v = self.epilogue_math(s, vals, pre.bias.as_deref(), pre.residual.as_deref());
            let col_ok = self.col_ok(s, n, ok_m, v.len());
            let row = self.mul(m, s.n);
            let at = self.add(&row, n);
            let vector = s.n.is_multiple_of(v.len());
            self.store_run(out_arg, s.dtype, &at, v.clone(), &col_ok, vector);
            return v;
        }
        let len = vals.len();
        let vector = s.n.is_multiple_of(len);
        let col_ok: Vec<String> = (0..len)
            .map(|j| {
                let c = self.addc(n, j);
                let lt = self.lt(&c, s.n);
                self.and(&lt, ok_m)
            })
            .collect();
        let mut v = vals;
        if let Some(b) = bias_arg {
            let bias_ok: Vec<String> = if vector {
                vec![col_ok[0].clone(); len]
            } else {
                col_ok.clone()
            };
            let bs = self.load_run(b, s.dtype, n, len, &bias_ok, vector);
            v = v
                .iter()
                .zip(&bs)
                .map(|(x, y)| self.op(&format!("arith.addf {x}, {y} : f32")))
                .collect();
        }
        match s.act {
            Some(GemmActivation::Relu) => {
                let z = self.e.c_f32(0.0);
                v = v
                    .iter()
                    .map(|x| self.op(&format!("arith.maximumf {x}, {z} : f32")))
                    .collect();
            }
            Some(GemmActivation::GeluTanh) => {
                v = v.into_iter().map(|x| gelu_tanh(&mut self.e, &x)).collect();
            }
            None => {}
        }
        let row = self.mul(m, s.n);
        let at = self.add(&row, n);
        if let Some(r) = res_arg {
            let r_ok: Vec<String> = if vector {
                vec![col_ok[0].clone(); len]
            } else {
                col_ok.clone()
            };
            let rs = self.load_run(r, s.dtype, &at, len, &r_ok, vector);
            v = v
                .iter()
                .zip(&rs)
                .map(|(x, y)| self.op(&format!("arith.addf {x}, {y} : f32")))
                .collect();
        }
        self.store_run(out_arg, s.dtype, &at, v.clone(), &col_ok, vector);
        v
    }

    fn col_ok(&mut self, s: &Skinny, n: &str, ok_m: &str, len: usize) -> Vec<String> {
        (0..len)
            .map(|j| {
                let c = self.addc(n, j);
                let lt = self.lt(&c, s.n);
                self.and(&lt, ok_m)
            })
            .collect()
    }

    /// Loads the epilogue's bias and residual values of one item (8 columns of row `m`),
    /// issued at kernel start so that their latency hides under the weight stream.
    fn prefetch(
        &mut self,
        s: &Skinny,
        args: (Option<usize>, Option<usize>, usize),
        m: &str,
        n: &str,
        ok_m: &str,
    ) -> Prefetched {
        let (bias_arg, res_arg, _) = args;
        let len = 8;
        let vector = s.n.is_multiple_of(len);
        let col_ok = self.col_ok(s, n, ok_m, len);
        let oks: Vec<String> = if vector {
            vec![col_ok[0].clone(); len]
        } else {
            col_ok.clone()
        };
        let bias = bias_arg.map(|b| self.load_run(b, s.dtype, n, len, &oks, vector));
        let residual = res_arg.map(|r| {
            let row = self.mul(m, s.n);
            let at = self.add(&row, n);
            self.load_run(r, s.dtype, &at, len, &oks, vector)
        });
        Prefetched { bias, residual }
    }

    /// `act(v + bias) + residual` in f32.
    fn epilogue_math(
        &mut self,
        s: &Skinny,
        vals: Vec<String>,
        bias: Option<&[String]>,
        residual: Option<&[String]>,
    ) -> Vec<String> {
        let mut v = vals;
        if let Some(bs) = bias {
            v = v
                .iter()
                .zip(bs)
                .map(|(x, y)| self.op(&format!("arith.addf {x}, {y} : f32")))
                .collect();
        }
        match s.act {
            Some(GemmActivation::Relu) => {
                let z = self.e.c_f32(0.0);
                v = v
                    .iter()
                    .map(|x| self.op(&format!("arith.maximumf {x}, {z} : f32")))
                    .collect();
            }
            Some(GemmActivation::GeluTanh) => {
                v = v.into_iter().map(|x| gelu_tanh(&mut self.e, &x)).collect();
            }
            None => {}
        }
        if let Some(rs) = residual {
            v = v
                .iter()
                .zip(rs)
                .map(|(x, y)| self.op(&format!("arith.addf {x}, {y} : f32")))
                .collect();
        }
        v
    }

    /// Stores f32 `vals` as `d` at `arg[idx ..]`, each where `ok[j]`.
    fn store_run(
        &mut self,
        arg: usize,
        d: DType,
        idx: &str,
        vals: Vec<String>,
        ok: &[String],
        vector: bool,
    ) {
        let (st, n) = (storage_type(d), self.e.arg_types[arg].1);
        let mem = format!("memref<{n}x{st}>");
        let raw: Vec<String> = vals
            .iter()
            .map(|x| {
                if d == DType::F32 {
                    x.clone()
                } else {
                    self.op(&format!("arith.truncf {x} : f32 to {st}"))
                }
            })
            .collect();
        if vector {
            let len = raw.len();
            let vt = format!("vector<{len}x{st}>");
            let v = self.op(&format!("vector.from_elements {} : {vt}", raw.join(", ")));
            self.line(&format!("scf.if {} {{", ok[0]));
            self.line(&format!(
                "  vector.store {v}, %a{arg}[{idx}] {{alignment = {} : i64}} : {mem}, {vt}",
                (len * d.size_bytes()).min(16)
            ));
            self.line("}");
        } else {
            for (j, x) in raw.iter().enumerate() {
                let i = self.addc(idx, j);
                self.line(&format!("scf.if {} {{", ok[j]));
                self.line(&format!("  memref.store {x}, %a{arg}[{i}] : {mem}"));
                self.line("}");
            }
        }
    }
}

/// `x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` in f32.
fn gelu_tanh(e: &mut Emitter, x: &str) -> String {
    let c = e.c_f32((2.0 / std::f64::consts::PI).sqrt());
    let a = e.c_f32(0.044715);
    let half = e.c_f32(0.5);
    let one = e.c_f32(1.0);
    let x2 = e.op(&format!("arith.mulf {x}, {x} : f32"));
    let x3 = e.op(&format!("arith.mulf {x2}, {x} : f32"));
    let ax3 = e.op(&format!("arith.mulf {a}, {x3} : f32"));
    let inner = e.op(&format!("arith.addf {x}, {ax3} : f32"));
    let u = e.op(&format!("arith.mulf {c}, {inner} : f32"));
    let t = crate::gpu::math::unary(e, UnaryOp::Tanh, DType::F32, &u);
    let s = e.op(&format!("arith.addf {one}, {t} : f32"));
    let hx = e.op(&format!("arith.mulf {half}, {x} : f32"));
    e.op(&format!("arith.mulf {hx}, {s} : f32"))
}

/// The argument positions of the epilogue operands after `first`: `(bias, residual, out)`.
fn epilogue_args(s: &Skinny, first: usize) -> (Option<usize>, Option<usize>, usize) {
    let mut i = first;
    let mut next = |on: bool| {
        on.then(|| {
            i += 1;
            i - 1
        })
    };
    let bias = next(s.bias);
    let res = next(s.residual);
    (bias, res, i)
}

/// One step's weight registers, loaded ahead of (and, for a graph-invariant `b`, before the
/// kernel waits for its predecessor) the step's `A` fragments.
struct StepB {
    /// The step's first `k` of this lane, and whether the step is in the split.
    kt: String,
    j_ok: String,
    /// Row-major `b`: 4 rows x 8 columns (`vector<8 x st>` each); transposed: per n-tile the
    /// 4 packed i32 registers of 8 `k`.
    regs: Vec<Vec<String>>,
}

/// Loads one step's weights at `k0`. `b [k, n]` row-major (16 rows): per lane 4 weight rows x
/// 8 columns (16-byte loads). `b` stored transposed (`[n, k]`, `nn.Linear`'s weight; 32 rows):
/// per lane and n-tile `i`, row `n0 + 8i + g` at `k0 + 8t ..` (16 bytes: both k16 halves'
/// fragments).
#[allow(clippy::too_many_arguments)]
fn load_step_b(
    k: &mut K,
    s: &Skinny,
    j_ok: &str,
    k0: &str,
    t: &str,
    n0: &str,
    g: &str,
    ncol: &str,
    ncol_ok: &str,
) -> StepB {
    let d = s.dtype;
    let mut regs = Vec::new();
    let kt = if s.b_transposed {
        let vec8 = s.k.is_multiple_of(8);
        let t8 = k.mul(t, 8);
        let kt = k.add(k0, &t8);
        for i in 0..s.n_tiles() {
            let c = k.addc(n0, 8 * i);
            let n = k.add(&c, g);
            let n_ok = k.lt(&n, s.n);
            let row = k.mul(&n, s.k);
            let idx = k.add(&row, &kt);
            let oks = k_oks(k, &n_ok, j_ok, &kt, 8, s.k, vec8);
            let v = k.load_raw(1, d, &idx, 8, &oks, vec8);
            regs.push(i32_regs(k, &v, 8, d));
        }
        kt
    } else {
        let b_vec = s.n.is_multiple_of(8);
        let t4 = k.mul(t, 4);
        let kt = k.add(k0, &t4);
        for r in 0..4 {
            let kr = k.addc(&kt, r);
            let kr_ok = k.lt(&kr, s.k);
            let ok = k.and(j_ok, &kr_ok);
            let row = k.mul(&kr, s.n);
            let idx = k.add(&row, ncol);
            let oks: Vec<String> = if b_vec {
                let o = k.and(&ok, ncol_ok);
                vec![o; 8]
            } else {
                (0..8)
                    .map(|c| {
                        let nc = k.addc(ncol, c);
                        let nok = k.lt(&nc, s.n);
                        k.and(&ok, &nok)
                    })
                    .collect()
            };
            regs.push(vec![k.load_raw(1, d, &idx, 8, &oks, b_vec)]);
        }
        kt
    };
    StepB {
        kt,
        j_ok: j_ok.to_string(),
        regs,
    }
}

/// One step's mma operands: (n-tile, A registers per m-tile, B registers), its `A` fragments
/// loaded now (and layer-normed with `norm`'s row statistics). Row-major `b`: A is 4 values
/// per row (8 bytes), pairs of weight rows packed with byte permutes. Transposed `b`: A is 8
/// values per row, two k16 halves.
fn step_mmas(
    k: &mut K,
    s: &Skinny,
    a_rows: &[(String, String)],
    b: &StepB,
    norm: Option<&NormRows>,
) -> Vec<(usize, Vec<[String; 4]>, [String; 2])> {
    if s.b_transposed {
        let aregs = a_regs(k, s, a_rows, &b.j_ok, &b.kt, 8);
        return match norm {
            Some(nr) => normed_mmas(k, s, nr, b, &aregs),
            None => transposed_mmas(&aregs, b),
        };
    }
    let st = storage_type(s.dtype);
    let arows = a_regs(k, s, a_rows, &b.j_ok, &b.kt, 4);
    let rows: Vec<&String> = b.regs.iter().map(|r| &r[0]).collect();
    (0..8)
        .map(|i| {
            let b0 = k.pack(rows[0], rows[1], i, st);
            let b1 = k.pack(rows[2], rows[3], i, st);
            let a = (0..a_rows.len() / 2)
                .map(|tile| {
                    let (p, q) = (&arows[2 * tile], &arows[2 * tile + 1]);
                    [p[0].clone(), q[0].clone(), p[1].clone(), q[1].clone()]
                })
                .collect();
            (i, a, [b0, b1])
        })
        .collect()
}

/// [`transposed_mmas`] of a step's `A` registers layer-normed first ([`apply_norm`]).
fn normed_mmas(
    k: &mut K,
    s: &Skinny,
    nr: &NormRows,
    b: &StepB,
    aregs: &[Vec<String>],
) -> Vec<(usize, Vec<[String; 4]>, [String; 2])> {
    let x: Vec<Vec<String>> = aregs.iter().map(|r| unpack8(k, r, s.dtype)).collect();
    let aregs = apply_norm(k, s, nr.norm, &x, b, (&nr.mean, &nr.rstd));
    transposed_mmas(&aregs, b)
}

/// A transposed-weight step's mma operands from its `A` registers (per row of the lane, 4
/// packed registers of 8 `k`): per k16 half and n-tile.
fn transposed_mmas(
    aregs: &[Vec<String>],
    b: &StepB,
) -> Vec<(usize, Vec<[String; 4]>, [String; 2])> {
    let mut out = Vec::new();
    for h in 0..2 {
        for (i, bi) in b.regs.iter().enumerate() {
            let a = (0..aregs.len() / 2)
                .map(|tile| {
                    let (r, r8) = (&aregs[2 * tile], &aregs[2 * tile + 1]);
                    [
                        r[2 * h].clone(),
                        r8[2 * h].clone(),
                        r[2 * h + 1].clone(),
                        r8[2 * h + 1].clone(),
                    ]
                })
                .collect();
            out.push((i, a, [bi[2 * h].clone(), bi[2 * h + 1].clone()]));
        }
    }
    out
}

/// The mmas of `steps` (their `A` fragments loaded now) into the accumulators `acc`
/// (`[m-tile][n-tile][4]`).
fn accumulate(
    k: &mut K,
    s: &Skinny,
    a_rows: &[(String, String)],
    steps: &[StepB],
    acc: &mut [String],
    norm: Option<&NormRows>,
) {
    let mmas: Vec<_> = steps
        .iter()
        .flat_map(|b| step_mmas(k, s, a_rows, b, norm))
        .collect();
    mma_all(k, s, mmas, acc);
}

/// Issues `mmas` into the accumulators `acc` (`[m-tile][n-tile][4]`).
fn mma_all(
    k: &mut K,
    s: &Skinny,
    mmas: Vec<(usize, Vec<[String; 4]>, [String; 2])>,
    acc: &mut [String],
) {
    let nt = s.n_tiles();
    for (i, a, b) in mmas {
        for (tile, a) in a.iter().enumerate() {
            let base = (tile * nt + i) * 4;
            let d = mma_m16n8k16(&mut k.e, s.dtype, a, &b, &acc[base..base + 4]);
            acc[base..base + 4].clone_from_slice(&d);
        }
    }
}

/// The `A` fragments of one step for both weight layouts: per row of `a_rows` (address of
/// the row, row valid), `len` values from `kt` (one vector load when `k % len == 0`) as
/// `len / 2` packed i32 registers.
fn a_regs(
    k: &mut K,
    s: &Skinny,
    a_rows: &[(String, String)],
    j_ok: &str,
    kt: &str,
    len: usize,
) -> Vec<Vec<String>> {
    let vector = s.k.is_multiple_of(len);
    a_rows
        .iter()
        .map(|(row, mok)| {
            let idx = k.add(row, kt);
            let oks = k_oks(k, mok, j_ok, kt, len, s.k, vector);
            let v = k.load_raw(0, s.dtype, &idx, len, &oks, vector);
            i32_regs(k, &v, len, s.dtype)
        })
        .collect()
}

/// A loaded `vector<len x 16-bit>` as its `len / 2` packed i32 registers.
fn i32_regs(k: &mut K, v: &str, len: usize, d: DType) -> Vec<String> {
    let (st, n) = (storage_type(d), len / 2);
    let w = k.op(&format!(
        "vector.bitcast {v} : vector<{len}x{st}> to vector<{n}xi32>"
    ));
    (0..n)
        .map(|r| {
            k.op(&format!(
                "vector.extract {w}[{r}] : i32 from vector<{n}xi32>"
            ))
        })
        .collect()
}

/// Validity of `len` consecutive `k` from `kt` (all alike when `vector`: `k % len == 0`).
fn k_oks(
    k: &mut K,
    row_ok: &str,
    j_ok: &str,
    kt: &str,
    len: usize,
    k_total: usize,
    vector: bool,
) -> Vec<String> {
    let both = k.and(row_ok, j_ok);
    let oks: Vec<String> = (0..if vector { 1 } else { len })
        .map(|c| {
            let kc = k.addc(kt, c);
            let kok = k.lt(&kc, k_total);
            k.and(&both, &kok)
        })
        .collect();
    if vector {
        vec![oks[0].clone(); len]
    } else {
        oks
    }
}

/// Copies a fused norm's gamma and beta (argument positions; absent: 1 and 0) into shared
/// memory `%s3` as f32 `[2][kpad]` (zeros past `k`), all threads of the block; read after
/// the norm's first barrier.
fn stage_norm_params(k: &mut K, s: &Skinny, args: [Option<usize>; 2], tid: &str, threads: usize) {
    let kpad = s.norm_kpad();
    let smem_ty = format!("memref<{}xf32, #gpu.address_space<workgroup>>", 2 * kpad);
    for (which, arg) in args.into_iter().enumerate() {
        let default = if which == 0 { 1.0 } else { 0.0 };
        for round in 0..kpad.div_ceil(8 * threads) {
            let base = k.mul(tid, 8);
            let i0 = k.addc(&base, round * 8 * threads);
            let in_pad = k.lt(&i0, kpad);
            let vals: Vec<String> = match arg {
                Some(a) => {
                    let d = k.e.arg_types[a].0;
                    let vector = s.k.is_multiple_of(8);
                    let oks: Vec<String> = (0..8)
                        .map(|j| {
                            let i = k.addc(&i0, if vector { 0 } else { j });
                            k.lt(&i, s.k)
                        })
                        .collect();
                    k.load_run(a, d, &i0, 8, &oks, vector)
                }
                None => {
                    let c = k.e.c_f32(default);
                    let z = k.e.c_f32(0.0);
                    (0..8)
                        .map(|j| {
                            let i = k.addc(&i0, j);
                            let ok = k.lt(&i, s.k);
                            k.op(&format!("arith.select {ok}, {c}, {z} : f32"))
                        })
                        .collect()
                }
            };
            let at = k.addc(&i0, which * kpad);
            let v = k.op(&format!(
                "vector.from_elements {} : vector<8xf32>",
                vals.join(", ")
            ));
            k.line(&format!("scf.if {in_pad} {{"));
            k.line(&format!(
                "  vector.store {v}, %s3[{at}] {{alignment = 32 : i64}} : {smem_ty}, vector<8xf32>"
            ));
            k.line("}");
        }
    }
}

/// The 8 f32 values of a lane's 4 packed registers (8 consecutive `k` of one row).
fn unpack8(k: &mut K, regs: &[String], d: DType) -> Vec<String> {
    let st = storage_type(d);
    let w = k.op(&format!(
        "vector.from_elements {} : vector<4xi32>",
        regs.join(", ")
    ));
    let v = k.op(&format!(
        "vector.bitcast {w} : vector<4xi32> to vector<8x{st}>"
    ));
    (0..8)
        .map(|j| {
            let x = k.op(&format!(
                "vector.extract {v}[{j}] : {st} from vector<8x{st}>"
            ));
            k.op(&format!("arith.extf {x} : {st} to f32"))
        })
        .collect()
}

/// Sums each of `parts` (one value per row of the lane; part `i` in slot `first + i`) over
/// the 4 lanes of a row (`t`), then over the block's warps through shared memory `%s2` at
/// `[slot][warp][row]`, in warp order, behind one barrier; every lane gets its rows'
/// block-wide sums.
#[allow(clippy::too_many_arguments)]
fn block_row_sums(k: &mut K, parts: Vec<Vec<String>>, first: usize, warps: usize, mp: usize, warp: &str, g: &str, t: &str) -> Vec<Vec<String>> {
    let smem_ty = format!("memref<{}xf32, #gpu.address_space<workgroup>>", 2 * warps * mp);
    let parts: Vec<Vec<String>> = parts
        .into_iter()
        .map(|part| {
            part.into_iter()
                .map(|acc| lane_sum(k, acc, 4))
                .collect()
        })
        .collect();
    let z = k.ci(0);
    let lead = k.op(&format!("arith.cmpi eq, {t}, {z} : index"));
    let wbase = k.mul(warp, mp);
    k.line(&format!("scf.if {lead} {{"));
    for (i, part) in parts.iter().enumerate() {
        let base = k.addc(&wbase, (first + i) * warps * mp);
        for (r, v) in part.iter().enumerate() {
            let row = k.addc(g, 8 * r);
            let at = k.add(&base, &row);
            k.line(&format!("  memref.store {v}, %s2[{at}] : {smem_ty}"));
        }
    }
    k.line("}");
    k.line("gpu.barrier");
    (0..parts.len())
        .map(|i| {
            (0..parts[i].len())
                .map(|r| {
                    let row = k.addc(g, 8 * r);
                    let mut sum: Option<String> = None;
                    for w in 0..warps {
                        let at = k.addc(&row, ((first + i) * warps + w) * mp);
                        let x = k.op(&format!("memref.load %s2[{at}] : {smem_ty}"));
                        sum = Some(match sum {
                            None => x,
                            Some(p) => k.op(&format!("arith.addf {p}, {x} : f32")),
                        });
                    }
                    sum.expect("at least one warp")
                })
                .collect()
        })
        .collect()
}

/// The lane's `A` values of every step (`[step][row][8]`, f32), loaded again: the `k` offset
/// goes through an opaque zero so that the compiler cannot merge this load with an earlier
/// one and keep those registers alive across the norm's barriers (the lines are in L1).
fn reload_a(
    k: &mut K,
    s: &Skinny,
    a_rows: &[(String, String)],
    steps: &[StepB],
) -> Vec<Vec<Vec<String>>> {
    let zero = k.op("llvm.inline_asm has_side_effects \"mov.u32 $0, 0;\", \"=r\"  : () -> i32");
    let zero = k.op(&format!("arith.index_cast {zero} : i32 to index"));
    steps
        .iter()
        .map(|b| {
            let kt = k.add(&b.kt, &zero);
            a_regs(k, s, a_rows, &b.j_ok, &kt, 8)
                .iter()
                .map(|r| unpack8(k, r, s.dtype))
                .collect()
        })
        .collect()
}

/// A fused norm on the lane's `A` fragments of all its steps: each row's mean over all `k`,
/// then the mean of squared deviations (two passes, as the norm kernel), each summed over the
/// block; then every value normalized, scaled by gamma, shifted by beta (from `%s3`) and
/// rounded to the GEMM's dtype, as the packed registers of each step (`[step][row][4]`).
/// Each pass loads `A` again rather than holding it across the barriers.
#[allow(clippy::too_many_arguments)]
fn normalize(
    k: &mut K,
    s: &Skinny,
    norm: Norm,
    steps: &[StepB],
    a_rows: &[(String, String)],
    shape: (usize, usize),
    ids: (&str, &str, &str),
) -> Vec<Vec<Vec<String>>> {
    let (warps, mp) = shape;
    let (warp, g, t) = ids;
    let d = s.dtype;
    let rows = a_rows.len();
    let kf = k.e.c_f32(s.k as f64);
    let add_all = |k: &mut K, vals: Vec<String>| -> String {
        let mut it = vals.into_iter();
        let first = it.next().expect("values");
        it.fold(first, |p, v| k.op(&format!("arith.addf {p}, {v} : f32")))
    };
    let kok: Vec<Vec<String>> = steps.iter().map(|b| k_oks(k, &b.j_ok, &b.j_ok, &b.kt, 8, s.k, s.k.is_multiple_of(8))).collect();
    let zero = k.e.c_f32(0.0);
    let x: Vec<Vec<Vec<String>>> = steps.iter().map(|b| a_regs(k, s, a_rows, &b.j_ok, &b.kt, 8).iter().map(|r| unpack8(k, r, d)).collect()).collect();
    let (mean, var) = if one_pass_norm() {
        // One pass, shifted by each row's first value `c` (sums of `x - c` and its square
        // over the `k` that exist): one barrier and one load of `A` fewer.
        let c: Vec<String> = a_rows.iter().map(|(row, ok)| k.load_run(0, d, row, 1, std::slice::from_ref(ok), false).remove(0)).collect();
        let mut s1 = Vec::new();
        let mut s2 = Vec::new();
        for r in 0..rows {
            let dvs: Vec<String> = (0..x.len())
                .flat_map(|st| (0..8).map(move |j| (st, j)))
                .map(|(st, j)| {
                    let dv = k.op(&format!("arith.subf {}, {} : f32", x[st][r][j], c[r]));
                    k.op(&format!("arith.select {}, {dv}, {zero} : f32", kok[st][j]))
                })
                .collect();
            let sq: Vec<String> = dvs.iter().map(|v| k.op(&format!("arith.mulf {v}, {v} : f32"))).collect();
            s1.push(add_all(k, dvs));
            s2.push(add_all(k, sq));
        }
        let sums = block_row_sums(k, vec![s1, s2], 0, warps, mp, warp, g, t);
        let (mut mean, mut var) = (Vec::new(), Vec::new());
        for r in 0..rows {
            let m1 = k.op(&format!("arith.divf {}, {kf} : f32", sums[0][r]));
            let m2 = k.op(&format!("arith.divf {}, {kf} : f32", sums[1][r]));
            mean.push(k.op(&format!("arith.addf {}, {m1} : f32", c[r])));
            let mm = k.op(&format!("arith.mulf {m1}, {m1} : f32"));
            let v = k.op(&format!("arith.subf {m2}, {mm} : f32"));
            var.push(k.op(&format!("arith.maximumf {v}, {zero} : f32")));
        }
        (mean, var)
    } else {
        // Two passes, as the norm kernel: the mean, then the mean of squared deviations from
        // `A` loaded again (values past `k` and `m` were loaded as zeros).
        let sums: Vec<String> = (0..rows).map(|r| add_all(k, x.iter().flat_map(|st| st[r].clone()).collect())).collect();
        let sums = block_row_sums(k, vec![sums], 0, warps, mp, warp, g, t).remove(0);
        let mean: Vec<String> = sums.iter().map(|v| k.op(&format!("arith.divf {v}, {kf} : f32"))).collect();
        let x = reload_a(k, s, a_rows, steps);
        let sq: Vec<String> = (0..rows)
            .map(|r| {
                let vals: Vec<String> = (0..x.len())
                    .flat_map(|st| (0..8).map(move |j| (st, j)))
                    .map(|(st, j)| {
                        let dv = k.op(&format!("arith.subf {}, {} : f32", x[st][r][j], mean[r]));
                        let q = k.op(&format!("arith.mulf {dv}, {dv} : f32"));
                        k.op(&format!("arith.select {}, {q}, {zero} : f32", kok[st][j]))
                    })
                    .collect();
                add_all(k, vals)
            })
            .collect();
        let sq = block_row_sums(k, vec![sq], 1, warps, mp, warp, g, t).remove(0);
        let var = sq.iter().map(|v| k.op(&format!("arith.divf {v}, {kf} : f32"))).collect();
        (mean, var)
    };
    let eps = k.e.c_f32(norm.eps);
    let rstd: Vec<String> = var
        .iter()
        .map(|var| {
            let ve = k.op(&format!("arith.addf {var}, {eps} : f32"));
            crate::gpu::math::unary(&mut k.e, UnaryOp::Rsqrt, DType::F32, &ve)
        })
        .collect();
    // Pass 3: normalize, scale, shift, round, repack.
    let x = reload_a(k, s, a_rows, steps);
    (0..x.len()).map(|st| apply_norm(k, s, norm, &x[st], &steps[st], (&mean, &rstd))).collect()
}

/// A fused norm's row statistics for the lane's rows (`a_rows`' order: `g + 8r`).
struct NormRows {
    norm: Norm,
    mean: Vec<String>,
    /// `rsqrt(var + eps)`.
    rstd: Vec<String>,
}

/// One step's `A` values of the lane (`x`, per row 8 f32 from the step's `kt`) normalized
/// with each row's mean and `rsqrt(var + eps)`, scaled by gamma, shifted by beta (from `%s3`),
/// rounded to the GEMM's dtype (as the norm kernel stores them) and repacked (per row 4 i32).
fn apply_norm(
    k: &mut K,
    s: &Skinny,
    norm: Norm,
    x: &[Vec<String>],
    step: &StepB,
    (mean, rstd): (&[String], &[String]),
) -> Vec<Vec<String>> {
    let d = s.dtype;
    let kpad = s.norm_kpad();
    let smem_ty = format!("memref<{}xf32, #gpu.address_space<workgroup>>", 2 * kpad);
    let st_ty = storage_type(d);
    // A step past the split (its `A` and weights were loaded as zeros) reads gamma and beta
    // at 0: its `k` lie past the staged `[kpad]`.
    let kt = &k.clamp(&step.j_ok, &step.kt);
    let kb = k.addc(kt, kpad);
    let gv = k.op(&format!("vector.load %s3[{kt}] {{alignment = 32 : i64}} : {smem_ty}, vector<8xf32>"));
    let bv = k.op(&format!("vector.load %s3[{kb}] {{alignment = 32 : i64}} : {smem_ty}, vector<8xf32>"));
    let gamma: Vec<String> = (0..8).map(|j| k.op(&format!("vector.extract {gv}[{j}] : f32 from vector<8xf32>"))).collect();
    let beta: Vec<String> = (0..8).map(|j| k.op(&format!("vector.extract {bv}[{j}] : f32 from vector<8xf32>"))).collect();
    x.iter()
        .enumerate()
        .map(|(r, row)| {
            let ys: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(j, xv)| {
                    let dv = k.op(&format!("arith.subf {xv}, {} : f32", mean[r]));
                    let y = k.op(&format!("arith.mulf {dv}, {} : f32", rstd[r]));
                    let y = if norm.gamma { k.op(&format!("arith.mulf {y}, {} : f32", gamma[j])) } else { y };
                    let y = if norm.beta { k.op(&format!("arith.addf {y}, {} : f32", beta[j])) } else { y };
                    k.op(&format!("arith.truncf {y} : f32 to {st_ty}"))
                })
                .collect();
            let v = k.op(&format!("vector.from_elements {} : vector<8x{st_ty}>", ys.join(", ")));
            i32_regs(k, &v, 8, d)
        })
        .collect()
}

/// A fused norm's statistics from the GEMM that wrote `a` ([`RowStats`], argument `arg`,
/// `f32 [m, blocks, 2]`): `lanes` neighbouring threads take a row, each its blocks `b = lane
/// (mod lanes)`, and combine them (Chan et al.: `mean = sum(sum_b) / k`, then `M2 =
/// sum(M2_b + (sum_b - n_b mean)^2 / n_b)`, each sum over the lane's blocks in order and then
/// across the lanes with shuffles: deterministic); each row's mean and `rsqrt(M2 / k + eps)`
/// go through shared memory `%s2` (`[mean; mp][rstd; mp]`) to the lanes that hold the row
/// (`g + 8r`), behind one barrier.
#[allow(clippy::too_many_arguments)]
fn stats_rows(
    k: &mut K,
    s: &Skinny,
    norm: Norm,
    rs: RowStats,
    arg: usize,
    (tid, threads): (&str, usize),
    (g, mp, rows): (&str, usize, usize),
) -> NormRows {
    let smem_ty = format!("memref<{}xf32, #gpu.address_space<workgroup>>", 2 * s.warps() * mp);
    let inv_k = k.e.c_f32(1.0 / s.k as f64);
    let eps = k.e.c_f32(norm.eps);
    let zero = k.e.c_f32(0.0);
    // Lanes per row: a power of two that divides the warp, at most one per block.
    let mut lanes = 1;
    while lanes < 8 && lanes * 2 * mp <= threads && lanes * 2 <= rs.blocks {
        lanes *= 2;
    }
    let per_round = threads / lanes;
    let lanes_c = k.ci(lanes);
    let row_of = k.op(&format!("arith.divui {tid}, {lanes_c} : index"));
    let sub = k.op(&format!("arith.remui {tid}, {lanes_c} : index"));
    for round in 0..mp.div_ceil(per_round) {
        let r = k.addc(&row_of, round * per_round);
        let ok = k.lt(&r, s.m);
        let base = k.mul(&r, 2 * rs.blocks);
        // This lane's blocks: lane + lanes * i (the last may lie past `blocks`: zeros).
        let parts: Vec<(String, String, String, String, String)> = (0..rs.blocks.div_ceil(lanes))
            .map(|i| {
                let b = k.addc(&sub, i * lanes);
                let b_ok = k.lt(&b, rs.blocks);
                let b_ok = k.and(&b_ok, &ok);
                let b2 = k.mul(&b, 2);
                let at = k.add(&base, &b2);
                let v = k.load_run(arg, DType::F32, &at, 2, &[b_ok.clone(), b_ok.clone()], true);
                // n_b: `width`, fewer in the last block.
                let last = s.k - (rs.blocks - 1) * rs.width;
                let last_c = k.ci(rs.blocks - 1);
                let is_last = k.op(&format!("arith.cmpi eq, {b}, {last_c} : index"));
                let (nf, nl) = (k.e.c_f32(rs.width as f64), k.e.c_f32(last as f64));
                let nb = k.op(&format!("arith.select {is_last}, {nl}, {nf} : f32"));
                let (rf, rl) = (k.e.c_f32(1.0 / rs.width as f64), k.e.c_f32(1.0 / last as f64));
                let rnb = k.op(&format!("arith.select {is_last}, {rl}, {rf} : f32"));
                (v[0].clone(), v[1].clone(), nb, rnb, b_ok)
            })
            .collect();
        let mut total = parts[0].0.clone();
        for (sum, ..) in &parts[1..] {
            total = k.op(&format!("arith.addf {total}, {sum} : f32"));
        }
        let total = lane_sum(k, total, lanes);
        let mean = k.op(&format!("arith.mulf {total}, {inv_k} : f32"));
        let mut m2: Option<String> = None;
        for (sum, m2_b, nb, rnb, b_ok) in &parts {
            let shift = k.op(&format!("arith.mulf {nb}, {mean} : f32"));
            let dv = k.op(&format!("arith.subf {sum}, {shift} : f32"));
            let sq = k.op(&format!("arith.mulf {dv}, {dv} : f32"));
            let between = k.op(&format!("arith.mulf {sq}, {rnb} : f32"));
            let term = k.op(&format!("arith.addf {m2_b}, {between} : f32"));
            // A lane's block past `blocks` adds nothing.
            let term = k.op(&format!("arith.select {b_ok}, {term}, {zero} : f32"));
            m2 = Some(match m2 {
                None => term,
                Some(p) => k.op(&format!("arith.addf {p}, {term} : f32")),
            });
        }
        let m2 = lane_sum(k, m2.expect("at least one block"), lanes);
        let var = k.op(&format!("arith.mulf {m2}, {inv_k} : f32"));
        let var = k.op(&format!("arith.maximumf {var}, {zero} : f32"));
        let ve = k.op(&format!("arith.addf {var}, {eps} : f32"));
        let rstd = crate::gpu::math::unary(&mut k.e, UnaryOp::Rsqrt, DType::F32, &ve);
        // Rows past `m` (their `A` loads are zeros) get 0, never an infinity.
        let rstd = k.op(&format!("arith.select {ok}, {rstd}, {zero} : f32"));
        let z = k.ci(0);
        let lead = k.op(&format!("arith.cmpi eq, {sub}, {z} : index"));
        let in_mp = k.lt(&r, mp);
        let store = k.and(&lead, &in_mp);
        let at = k.addc(&r, mp);
        k.line(&format!("scf.if {store} {{"));
        k.line(&format!("  memref.store {mean}, %s2[{r}] : {smem_ty}"));
        k.line(&format!("  memref.store {rstd}, %s2[{at}] : {smem_ty}"));
        k.line("}");
    }
    k.line("gpu.barrier");
    let (mut mean, mut rstd) = (Vec::new(), Vec::new());
    for r in 0..rows {
        let row = k.addc(g, 8 * r);
        let at = k.addc(&row, mp);
        mean.push(k.op(&format!("memref.load %s2[{row}] : {smem_ty}")));
        rstd.push(k.op(&format!("memref.load %s2[{at}] : {smem_ty}")));
    }
    NormRows { norm, mean, rstd }
}

/// `acc` summed over each group of `lanes` neighbouring lanes (a power of two dividing the
/// warp), with xor shuffles: every lane of the group gets the sum, in the same order.
fn lane_sum(k: &mut K, mut acc: String, lanes: usize) -> String {
    let width = k.e.c_i32(32);
    let mut off = 1;
    while off < lanes {
        let o = k.e.c_i32(off as i64);
        let (y, p) = (k.e.fresh(), k.e.fresh());
        k.line(&format!("{y}, {p} = gpu.shuffle xor {acc}, {o}, {width} : f32"));
        acc = k.op(&format!("arith.addf {acc}, {y} : f32"));
        off *= 2;
    }
    acc
}

/// Writes the row statistics of one epilogue item ([`RowStats`]): `vals` (8 columns from `n`
/// of row `m`, f32 before rounding) as stored, summed over the block's `n_tiles` lanes that
/// share the row (shuffles: every lane of the warp runs this), first the sum, then the squared
/// deviations from the block's mean; the row's first lane stores `(sum, M2)` at
/// `stats[m][bx]` (argument `arg`).
fn store_row_stats(
    k: &mut K,
    s: &Skinny,
    arg: usize,
    (m, lc, n, m_ok): (&str, &str, &str, &str),
    bx: &str,
    vals: &[String],
) {
    let st = storage_type(s.dtype);
    let zero = k.e.c_f32(0.0);
    let ok = k.col_ok(s, n, m_ok, vals.len());
    let x: Vec<String> = vals
        .iter()
        .zip(&ok)
        .map(|(v, ok)| {
            let v = if s.dtype == DType::F32 {
                v.clone()
            } else {
                let r = k.op(&format!("arith.truncf {v} : f32 to {st}"));
                k.op(&format!("arith.extf {r} : {st} to f32"))
            };
            k.op(&format!("arith.select {ok}, {v}, {zero} : f32"))
        })
        .collect();
    let nt = s.n_tiles();
    let row_sum = |k: &mut K, vals: &[String]| -> String {
        let mut acc = vals[0].clone();
        for v in &vals[1..] {
            acc = k.op(&format!("arith.addf {acc}, {v} : f32"));
        }
        lane_sum(k, acc, nt)
    };
    let sum = row_sum(k, &x);
    let (bn, blocks) = (s.block_n(), s.blocks_n());
    let last = s.n - (blocks - 1) * bn;
    let last_c = k.ci(blocks - 1);
    let is_last = k.op(&format!("arith.cmpi eq, {bx}, {last_c} : index"));
    let (full, part) = (k.e.c_f32(1.0 / bn as f64), k.e.c_f32(1.0 / last as f64));
    let inv_count = k.op(&format!("arith.select {is_last}, {part}, {full} : f32"));
    let mean = k.op(&format!("arith.mulf {sum}, {inv_count} : f32"));
    let sq: Vec<String> = x
        .iter()
        .zip(&ok)
        .map(|(v, ok)| {
            let dv = k.op(&format!("arith.subf {v}, {mean} : f32"));
            let q = k.op(&format!("arith.mulf {dv}, {dv} : f32"));
            k.op(&format!("arith.select {ok}, {q}, {zero} : f32"))
        })
        .collect();
    let m2 = row_sum(k, &sq);
    let z = k.ci(0);
    let lead = k.op(&format!("arith.cmpi eq, {lc}, {z} : index"));
    let lead = k.and(&lead, m_ok);
    let row = k.mul(m, blocks);
    let at = k.add(&row, bx);
    let at = k.mul(&at, 2);
    k.store_run(arg, DType::F32, &at, vec![sum, m2], &[lead.clone(), lead], true);
}

/// The main kernel. Arguments: `a [m, k]`, `b [k, n]`, with several K splits summed in
/// global memory the f32 workspace `[splits, m, n]` and the counters, then a fused norm's
/// `[gamma [k]]`, `[beta [k]]` and `[stats [m, blocks, 2]]` ([`Norm`]), `[bias [n]]`,
/// `[residual [m, n]]`, `out [m, n]` and, with [`Skinny::stats_out`], its row statistics.
pub(crate) fn main_kernel(
    symbol: &str,
    s: &Skinny,
    args: &[(DType, usize)],
) -> Result<EmittedKernel, GpuError> {
    if !s.fits() {
        return Err(GpuError::Unsupported {
            kernel: symbol.into(),
            reason: format!("a skinny GEMM of {s:?}"),
        });
    }
    let empty = Graph::new("skinny");
    let mut k = K {
        e: Emitter::new(&empty, args, 1),
    };
    let warps = s.warps();
    let threads = warps * 32;
    let mt = s.m_tiles();
    let (splits, per) = s.splits();
    let steps = s.k.div_ceil(s.step_k());
    let mp = mt * 16;
    let (bn, nt) = (s.block_n(), s.n_tiles());
    // Shared memory: each warp's [mp, bn] f32 sums side by side when they fit (one barrier),
    // else one [mp, bn] that the warps add into in turn.
    let parallel = warps * mp * bn * 4 <= 40 * 1024;
    let smem_len = if parallel { warps * mp * bn } else { mp * bn };
    k.e.smem.push(format!(
        "%s0 : memref<{smem_len}xf32, #gpu.address_space<workgroup>> {{llvm.align = 16 : i64}}"
    ));
    k.e.smem
        .push("%s1 : memref<1xi32, #gpu.address_space<workgroup>>".into());
    if s.norm.is_some() {
        // A fused norm's row sums, [2][warps][mp], and gamma and beta, [2][kpad].
        k.e.smem.push(format!(
            "%s2 : memref<{}xf32, #gpu.address_space<workgroup>> {{llvm.align = 16 : i64}}",
            2 * warps * mp
        ));
        k.e.smem.push(format!(
            "%s3 : memref<{}xf32, #gpu.address_space<workgroup>> {{llvm.align = 32 : i64}}",
            2 * s.norm_kpad()
        ));
    }
    // Clustered split-K: this block's `[mp, bn]` partial, read by the cluster's other blocks.
    let clustered = s.clustered();
    let part = clustered.then(|| {
        let name = format!("%s{}", k.e.smem.len());
        let ty = format!("memref<{}xf32, #gpu.address_space<workgroup>>", mp * bn);
        k.e.smem.push(format!("{name} : {ty} {{llvm.align = 16 : i64}}"));
        (name, ty)
    });
    if clustered {
        k.line(&cluster_mark_op(splits));
    }
    let tid = k.tid("x");
    let bx = k.bid("x");
    let by = k.bid("y");
    let c32 = k.ci(32);
    let c4 = k.ci(4);
    let lane = k.op(&format!("arith.remui {tid}, {c32} : index"));
    let warp = k.op(&format!("arith.divui {tid}, {c32} : index"));
    let g = k.op(&format!("arith.divui {lane}, {c4} : index"));
    let t = k.op(&format!("arith.remui {lane}, {c4} : index"));
    let n0 = k.mul(&bx, bn);
    let g8 = k.mul(&g, 8);
    let ncol = k.add(&n0, &g8);
    let ncol_ok = k.lt(&ncol, s.n);
    // This split's steps: [by * per, min((by + 1) * per, steps)); warp w takes first + w + warps * i.
    let first = k.mul(&by, per);
    let wfirst = k.add(&first, &warp);
    let split_end = k.addc(&first, per);
    let steps_c = k.ci(steps);
    let end = k.op(&format!("arith.minui {split_end}, {steps_c} : index"));
    let unroll = s.unroll();
    let iters = per.div_ceil(warps * unroll);
    // Rows of A this lane reads: g + 8h + 16 tile.
    let a_rows: Vec<(String, String)> = (0..mt * 2)
        .map(|r| {
            let m = k.addc(&g, 8 * r);
            let ok = k.lt(&m, s.m);
            let row = k.mul(&m, s.k);
            (row, ok)
        })
        .collect();
    // The epilogue's items (row m, 8 columns).
    let reps = (mp * nt).div_ceil(threads);
    // After `a, b` (and a global split-K's workspace and counters): a fused norm's gamma,
    // beta and row statistics, then the epilogue's operands and `out` (and its statistics).
    let nf = s.norm_first();
    let norm_args = s.norm.map(|nm| {
        [
            nm.gamma.then_some(nf),
            nm.beta.then_some(nf + usize::from(nm.gamma)),
        ]
    });
    let stats_arg = s
        .norm
        .filter(|nm| nm.stats.is_some())
        .map(|nm| nf + usize::from(nm.gamma) + usize::from(nm.beta));
    let ea = epilogue_args(s, s.epilogue_first());
    let stats_out = s.stats_out.then_some(ea.2 + 1);
    let places: Vec<(String, String, String, String)> = (0..reps)
        .map(|rep| {
            let item = k.addc(&tid, rep * threads);
            let ntc = k.ci(nt);
            let m = k.op(&format!("arith.divui {item}, {ntc} : index"));
            let c8 = k.op(&format!("arith.remui {item}, {ntc} : index"));
            let lc = k.mul(&c8, 8);
            let m_ok = k.lt(&m, s.m);
            let n = k.add(&n0, &lc);
            (m, lc, n, m_ok)
        })
        .collect();
    // Steps of iteration `it` (an index value): the weights of each unrolled step.
    let iteration = |k: &mut K, it: &str| -> Vec<StepB> {
        (0..unroll)
            .map(|u| {
                let it_w = k.mul(it, warps * unroll);
                let j = k.addc(&it_w, u * warps);
                let j = k.add(&j, &wfirst);
                let j_ok = k.op(&format!("arith.cmpi ult, {j}, {end} : index"));
                let k0 = k.mul(&j, s.step_k());
                load_step_b(k, s, &j_ok, &k0, &t, &n0, &g, &ncol, &ncol_ok)
            })
            .collect()
    };
    // What no step of the graph writes (weights, `invariant`) is loaded before the kernel
    // waits for its predecessor (`WAIT_MARK`), so that under programmatic dependent launch the
    // weight stream overlaps the previous kernel; the rest after it.
    let (bias_arg, res_arg, out_arg) = ea;
    let early_bias = if s.invariant.bias { bias_arg } else { None };
    let mut pre: Vec<Prefetched> = places
        .iter()
        .map(|(m, _, n, m_ok)| k.prefetch(s, (early_bias, None, out_arg), m, n, m_ok))
        .collect();
    let c0 = k.ci(0);
    let first_b = s.invariant.b.then(|| iteration(&mut k, &c0));
    if let Some(na) = norm_args.filter(|_| s.invariant.norm) {
        stage_norm_params(&mut k, s, na, &tid, threads);
    }
    k.line(WAIT_MARK_OP);
    if let Some(na) = norm_args.filter(|_| !s.invariant.norm) {
        stage_norm_params(&mut k, s, na, &tid, threads);
    }
    let late_bias = if s.invariant.bias { None } else { bias_arg };
    for ((m, _, n, m_ok), p) in places.iter().zip(&mut pre) {
        let late = k.prefetch(s, (late_bias, res_arg, out_arg), m, n, m_ok);
        p.bias = p.bias.take().or(late.bias);
        p.residual = late.residual;
    }
    let items: Vec<(String, String, String, String, Prefetched)> = places
        .into_iter()
        .zip(pre)
        .map(|((m, lc, n, m_ok), p)| (m, lc, n, m_ok, p))
        .collect();
    let first_b = match first_b {
        Some(b) => b,
        None => iteration(&mut k, &c0),
    };
    // Statistics from the GEMM that wrote `a`, read after the wait; iteration 0's `A` is
    // loaded first when its registers fit, so that its latency overlaps theirs and their
    // combination.
    let (norm_rows, early_a) = match (s.norm, stats_arg) {
        (Some(nm), Some(arg)) => {
            let rs = nm.stats.expect("stats_arg implies stats");
            let early = (first_b.len() * a_rows.len() * 4 <= MAX_EARLY_A_REGS).then(|| {
                first_b.iter().map(|b| a_regs(&mut k, s, &a_rows, &b.j_ok, &b.kt, 8)).collect::<Vec<_>>()
            });
            let rows = stats_rows(&mut k, s, nm, rs, arg, (&tid, threads), (&g, mp, a_rows.len()));
            trace_mark(&mut k, 1);
            (Some(rows), early)
        }
        _ => (None, None),
    };
    // Iteration 0 (peeled: its weights may come before the wait), then the rest in a loop.
    let n_acc = mt * nt * 4;
    let zero = k.e.c_f32(0.0);
    let mut cur = vec![zero.clone(); n_acc];
    match (s.norm, norm_args) {
        (Some(norm), Some(_)) if norm.stats.is_none() => {
            // One iteration holds all of the warp's steps (`Skinny::norm_fits`).
            let aregs = normalize(
                &mut k,
                s,
                norm,
                &first_b,
                &a_rows,
                (warps, mp),
                (&warp, &g, &t),
            );
            let mmas = first_b
                .iter()
                .zip(&aregs)
                .flat_map(|(b, a)| transposed_mmas(a, b))
                .collect();
            mma_all(&mut k, s, mmas, &mut cur);
        }
        _ => match (early_a, norm_rows.as_ref()) {
            (Some(early), Some(nr)) => {
                // The early `A` of each step, normalized now.
                let mmas = first_b.iter().zip(&early).flat_map(|(b, a)| normed_mmas(&mut k, s, nr, b, a)).collect();
                mma_all(&mut k, s, mmas, &mut cur);
            }
            _ => accumulate(&mut k, s, &a_rows, &first_b, &mut cur, norm_rows.as_ref()),
        },
    }
    if iters > 1 {
        let lo = k.ci(1);
        let hi = k.ci(iters);
        let one = k.ci(1);
        let res = k.e.fresh();
        let f32s = vec!["f32"; n_acc].join(", ");
        let accs: Vec<String> = (0..n_acc).map(|i| format!("%acc{i}")).collect();
        k.line(&format!(
            "{res}:{n_acc} = scf.for %it = {lo} to {hi} step {one} iter_args({}) -> ({f32s}) {{",
            accs.iter()
                .zip(&cur)
                .map(|(a, c)| format!("{a} = {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        k.e.indent += 1;
        let steps_b = iteration(&mut k, "%it");
        let mut inner = accs.clone();
        accumulate(&mut k, s, &a_rows, &steps_b, &mut inner, norm_rows.as_ref());
        k.line(&format!("scf.yield {} : {f32s}", inner.join(", ")));
        k.e.indent -= 1;
        k.line("}");
        cur = (0..n_acc).map(|i| format!("{res}#{i}")).collect();
    }
    // Sum the warps in shared memory, in warp order: c0 (row g, col 16t + i), c1 (col + 8),
    // c2, c3 (row g + 8).
    let t16 = k.mul(&t, 16);
    let t2 = k.mul(&t, 2);
    let smem_ty = format!("memref<{smem_len}xf32, #gpu.address_space<workgroup>>");
    let mut slots = Vec::new();
    for tile in 0..mt {
        for i in 0..nt {
            for q in 0..4 {
                let m = k.addc(&g, 16 * tile + 8 * (q / 2));
                // Tile i, column c: n0 + 8c + i (row-major b), n0 + 8i + c (transposed b).
                let col = if s.b_transposed {
                    k.addc(&t2, 8 * i + q % 2)
                } else {
                    k.addc(&t16, i + 8 * (q % 2))
                };
                let row = k.mul(&m, bn);
                let at = k.add(&row, &col);
                slots.push((at, cur[(tile * nt + i) * 4 + q].clone()));
            }
        }
    }
    if parallel {
        let wbase = k.mul(&warp, mp * bn);
        for (at, v) in &slots {
            let at = k.add(&wbase, at);
            k.line(&format!("memref.store {v}, %s0[{at}] : {smem_ty}"));
        }
        k.line("gpu.barrier");
    }
    for w in 0..if parallel { 0 } else { warps } {
        let wc = k.ci(w);
        let mine = k.op(&format!("arith.cmpi eq, {warp}, {wc} : index"));
        k.line(&format!("scf.if {mine} {{"));
        k.e.indent += 1;
        for (at, v) in &slots {
            let v = if w == 0 {
                v.clone()
            } else {
                let old = k.op(&format!("memref.load %s0[{at}] : {smem_ty}"));
                k.op(&format!("arith.addf {old}, {v} : f32"))
            };
            k.line(&format!("memref.store {v}, %s0[{at}] : {smem_ty}"));
        }
        k.e.indent -= 1;
        k.line("}");
        k.line("gpu.barrier");
    }
    trace_mark(&mut k, 2);
    if late_trigger() {
        k.line(TRIGGER_MARK_OP);
    }
    // Each thread: row m, 8 columns from c8 * 8 of the block.
    for (m, lc, n, m_ok, pre) in &items {
        let (m, lc, n, m_ok) = (m.as_str(), lc.as_str(), n.as_str(), m_ok.as_str());
        let m_in = k.lt(m, mp);
        let sm_row = k.mul(m, bn);
        let sm_at = k.add(&sm_row, lc);
        let sm_at = k.clamp(&m_in, &sm_at);
        let mut vals: Vec<String> = (0..8)
            .map(|j| {
                let a = k.addc(&sm_at, j);
                k.op(&format!("memref.load %s0[{a}] : {smem_ty}"))
            })
            .collect();
        for w in 1..if parallel { warps } else { 1 } {
            vals = (0..8)
                .map(|j| {
                    let a = k.addc(&sm_at, w * mp * bn + j);
                    let x = k.op(&format!("memref.load %s0[{a}] : {smem_ty}"));
                    k.op(&format!("arith.addf {}, {x} : f32", vals[j]))
                })
                .collect();
        }
        if splits == 1 {
            let stored = k.epilogue_store(s, ea, m, n, vals, m_ok, pre);
            if let Some(arg) = stats_out {
                store_row_stats(&mut k, s, arg, (m, lc, n, m_ok), &bx, &stored);
            }
        } else if let Some((part, ty)) = &part {
            // Rows past the tiles (`m >= mp`) have nothing to store.
            k.line(&format!("scf.if {m_in} {{"));
            for (j, v) in vals.iter().enumerate() {
                let a = k.addc(&sm_at, j);
                k.line(&format!("  memref.store {v}, {part}[{a}] : {ty}"));
            }
            k.line("}");
        } else {
            // Partial: ws[(by * m + row) * n_total + n ..].
            let bm = k.mul(&by, s.m);
            let r = k.add(&bm, m);
            let row = k.mul(&r, s.n);
            let at = k.add(&row, n);
            let ok = k.col_ok(s, n, m_ok, 8);
            k.store_run(2, DType::F32, &at, vals, &ok, s.n.is_multiple_of(8));
        }
    }
    if let Some(part) = &part {
        cluster_sums(&mut k, s, (&tid, threads, &by), &items, part);
    } else if splits > 1 {
        last_block_sums(&mut k, s, &tid, &bx, &items, stats_out);
    }
    // ptxas may hold a kernel to 64 registers (8 blocks per SM) and spill to get there; a
    // norm applied on `A`'s loads sits near that line (GPT-2's grids are one block per SM).
    let min_blocks = if norm_rows.is_some() { ", nvvm.minctasm = 1 : i32" } else { "" };
    let attrs = format!("known_block_size = array<i32: {threads}, 1, 1>{min_blocks}");
    Ok(EmittedKernel {
        symbol: symbol.into(),
        func: k.e.finish(symbol, &attrs),
        grid: [s.blocks_n() as u32, splits as u32, 1],
        block: [threads as u32, 1, 1],
        max_elements: args.iter().map(|a| a.1).max().unwrap_or(0),
    })
}

/// The PTX comment that marks a kernel launched as clusters of `(1, splits, 1)` blocks
/// ([`CLUSTER_MARK`]).
fn cluster_mark_op(splits: usize) -> String {
    format!("llvm.inline_asm has_side_effects \"{CLUSTER_MARK} 1 {splits} 1\", \"\" : () -> ()")
}

/// Marks a kernel whose blocks run as clusters: the marker is followed by the cluster's shape
/// (`x y z`), which `ptx::with_cluster_dims` declares as the entry's `.reqnctapercluster`, so
/// that every launch (plain or in a CUDA graph) forms the clusters.
pub(crate) const CLUSTER_MARK: &str = "// kiln: cluster";

/// Both halves of a cluster-wide barrier: every block's shared-memory stores before it are
/// visible to every block of the cluster after it.
const CLUSTER_SYNC: [&str; 2] = [
    "llvm.inline_asm has_side_effects \"barrier.cluster.arrive.release.aligned;\", \"~{memory}\" : () -> ()",
    "llvm.inline_asm has_side_effects \"barrier.cluster.wait.acquire.aligned;\", \"~{memory}\" : () -> ()",
];

/// Split-K through a thread-block cluster: the `splits` blocks of a column block are one
/// cluster (`by` is a block's rank in it) and each has stored its `[mp, bn]` partial in shared
/// memory. After a cluster barrier, item `i` (row `m`, 8 columns) belongs to block `i % splits`,
/// which reads the item from every block's shared memory (`mapa` + `ld.shared::cluster`), sums
/// the splits in split order (deterministic), and applies the epilogue. A second barrier keeps
/// every block's shared memory alive until the others have read it. No global workspace, no
/// counters, no fences: the blocks wait on one another in the cluster barrier instead.
fn cluster_sums(
    k: &mut K,
    s: &Skinny,
    (tid, threads, by): (&str, usize, &str),
    items: &[(String, String, String, String, Prefetched)],
    (part, part_ty): &(String, String),
) {
    let (splits, _) = s.splits();
    let (bn, mp) = (s.block_n(), s.m_tiles() * 16);
    for op in CLUSTER_SYNC {
        k.line(op);
    }
    let p = k.op(&format!(
        "memref.extract_aligned_pointer_as_index {part} : {part_ty} -> index"
    ));
    let base = k.op(&format!("arith.index_cast {p} : index to i32"));
    let ea = epilogue_args(s, s.epilogue_first());
    let splits_c = k.ci(splits);
    let sixteen = k.e.c_i32(16);
    let v4 = "!llvm.struct<(f32, f32, f32, f32)>";
    for (rep, (m, lc, n, m_ok, pre)) in items.iter().enumerate() {
        let item = k.addc(tid, rep * threads);
        let owner = k.op(&format!("arith.remui {item}, {splits_c} : index"));
        let mine = k.op(&format!("arith.cmpi eq, {owner}, {by} : index"));
        let m_in = k.lt(m, mp);
        let go = k.and(&mine, &m_in);
        k.line(&format!("scf.if {go} {{"));
        k.e.indent += 1;
        let row = k.mul(m, bn);
        let at = k.add(&row, lc);
        let bytes = k.mul(&at, 4);
        let bytes = k.op(&format!("arith.index_cast {bytes} : index to i32"));
        let local = k.op(&format!("arith.addi {base}, {bytes} : i32"));
        let mut sum: Option<Vec<String>> = None;
        for sp in 0..splits {
            let rank = k.e.c_i32(sp as i64);
            let remote = k.op(&format!(
                "llvm.inline_asm \"mapa.shared::cluster.u32 $0, $1, $2;\", \"=r,r,r\" {local}, {rank} : (i32, i32) -> i32"
            ));
            let hi = k.op(&format!("arith.addi {remote}, {sixteen} : i32"));
            let mut v = Vec::with_capacity(8);
            for addr in [remote, hi] {
                let r = k.op(&format!(
                    "llvm.inline_asm has_side_effects \"ld.shared::cluster.v4.f32 {{$0, $1, $2, $3}}, [$4];\", \"=f,=f,=f,=f,r\" {addr} : (i32) -> {v4}"
                ));
                for i in 0..4 {
                    v.push(k.op(&format!("llvm.extractvalue {r}[{i}] : {v4}")));
                }
            }
            sum = Some(add_split(k, sum, v));
        }
        let _ = k.epilogue_store(s, ea, m, n, sum.expect("at least one split"), m_ok, pre);
        k.e.indent -= 1;
        k.line("}");
    }
    for op in CLUSTER_SYNC {
        k.line(op);
    }
}

/// The running sum of the splits read so far plus the next split's values (`None`: the
/// first), in split order.
fn add_split(k: &mut K, sum: Option<Vec<String>>, v: Vec<String>) -> Vec<String> {
    match sum {
        None => v,
        Some(p) => p
            .iter()
            .zip(&v)
            .map(|(x, y)| k.op(&format!("arith.addf {x}, {y} : f32")))
            .collect(),
    }
}

/// Split-K, the block that finishes a column block last: every block has stored its partial
/// and counted itself in `counters[base + bx]` (zeroed at the start of the graph); the last one
/// sums the partials of all splits in split order (deterministic), applies the epilogue and
/// stores (and the row statistics at argument `stats_out`). Arguments: `a, b, ws, counters,
/// [gamma], [beta], [stats], [bias], [residual], out, [stats_out]`.
fn last_block_sums(
    k: &mut K,
    s: &Skinny,
    tid: &str,
    bx: &str,
    items: &[(String, String, String, String, Prefetched)],
    stats_out: Option<usize>,
) {
    let (splits, _) = s.splits();
    // As cooperative groups' grid sync: the barrier orders the block's partial stores before
    // thread 0's release fence and arrival, and thread 0's acquire fence before the barrier
    // that lets the last block read the other splits' partials. (A fence in every thread:
    // 0.381 against 0.349 ms for GPT-2 b1, H200, docs/gpu-gemm.md.)
    let fence = "llvm.inline_asm has_side_effects \"fence.acq_rel.gpu;\", \"\"  : () -> ()";
    k.line("gpu.barrier");
    let z = k.ci(0);
    let is0 = k.op(&format!("arith.cmpi eq, {tid}, {z} : index"));
    let n_counters = k.e.arg_types[3].1;
    let cidx = k.addc(bx, s.counter_base);
    let one = k.e.c_i32(1);
    let lastc = k.e.c_i32(splits as i64 - 1);
    let smem_flag = "memref<1xi32, #gpu.address_space<workgroup>>";
    k.line(&format!("scf.if {is0} {{"));
    k.line(fence);
    let old = k.op(&format!(
        "memref.atomic_rmw addi {one}, %a3[{cidx}] : (i32, memref<{n_counters}xi32>) -> i32"
    ));
    k.line(fence);
    let last = k.op(&format!("arith.cmpi eq, {old}, {lastc} : i32"));
    let flag = k.op(&format!("arith.extui {last} : i1 to i32"));
    k.line(&format!("  memref.store {flag}, %s1[{z}] : {smem_flag}"));
    k.line("}");
    k.line("gpu.barrier");
    trace_mark(k, 3);
    let flag = k.op(&format!("memref.load %s1[{z}] : {smem_flag}"));
    let zi = k.e.c_i32(0);
    let am_last = k.op(&format!("arith.cmpi ne, {flag}, {zi} : i32"));
    k.line(&format!("scf.if {am_last} {{"));
    k.e.indent += 1;
    let vector = s.n.is_multiple_of(8);
    for (m, lc, n, m_ok, pre) in items {
        let (m, lc, n, m_ok) = (m.as_str(), lc.as_str(), n.as_str(), m_ok.as_str());
        let ok = k.col_ok(s, n, m_ok, 8);
        let row = k.mul(m, s.n);
        let at = k.add(&row, n);
        let mut sum: Option<Vec<String>> = None;
        for sp in 0..splits {
            let idx = k.addc(&at, sp * s.m * s.n);
            let oks = if vector {
                vec![ok[0].clone(); 8]
            } else {
                ok.clone()
            };
            let v = k.load_run(2, DType::F32, &idx, 8, &oks, vector);
            sum = Some(add_split(k, sum, v));
        }
        let ea = epilogue_args(s, s.epilogue_first());
        let stored = k.epilogue_store(s, ea, m, n, sum.expect("at least one split"), m_ok, pre);
        if let Some(arg) = stats_out {
            store_row_stats(k, s, arg, (m, lc, n, m_ok), bx, &stored);
        }
    }
    k.e.indent -= 1;
    k.line("}");
}

/// Zeroes the split-K counters (`[len]` i32) at the start of a graph.
pub(crate) fn zero_counters(symbol: &str, len: usize) -> EmittedKernel {
    let empty = Graph::new("skinny_zero");
    let mut k = K {
        e: Emitter::new(&empty, &[(DType::I32, len)], 1),
    };
    const THREADS: usize = 128;
    let tid = k.tid("x");
    let bx = k.bid("x");
    let base = k.mul(&bx, THREADS);
    let i = k.add(&base, &tid);
    let ok = k.lt(&i, len);
    let z = k.e.c_i32(0);
    k.line(&format!("scf.if {ok} {{"));
    k.line(&format!("  memref.store {z}, %a0[{i}] : memref<{len}xi32>"));
    k.line("}");
    let attrs = format!("known_block_size = array<i32: {THREADS}, 1, 1>");
    EmittedKernel {
        symbol: symbol.into(),
        func: k.e.finish(symbol, &attrs),
        grid: [len.div_ceil(THREADS) as u32, 1, 1],
        block: [THREADS as u32, 1, 1],
        max_elements: len,
    }
}
