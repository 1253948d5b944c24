//! Kiln's skinny GEMM: `C[m, n] = A[m, k] B[k, n]` for small `m` (activations times weights at
//! batch 1), on the tensor cores with `mma.sync.aligned.m16n8k16` (bf16 / f16 in, f32
//! accumulate), weights streamed straight from global memory into registers.
//!
//! At `m <= 64` a GEMM is a weight stream: every weight is used `m` times, so the time is the
//! weight bytes over the memory bandwidth, if enough loads are in flight on every SM.
//!
//! - **Fragments from 16-byte loads.** A lane (`g = lane / 4`, `t = lane % 4`) loads, for each
//!   of the 4 weight rows `k0 + 4t + r`, the 8 consecutive columns `n0 + 8g ..`: one 16-byte
//!   load per row, and the 8 lanes of one `t` read 128 contiguous bytes. The sum over `k` is
//!   order-free, so the mma's logical `k` is permuted (logical `2t + e` is row `4t + e`,
//!   `2t + 8 + e` is row `4t + 2 + e`), the same for `A` (whose 4 values per lane and row are
//!   then one 8-byte load). The 8 columns of a lane are the 8 `n`-tiles of the warp: tile `i`'s
//!   column `c` is `n0 + 8c + i`. A warp thus covers 16 `k` x 64 `n` per step with 4 loads per
//!   lane and `8 * ceil(m / 16)` mmas.
//! - **Grid.** One block per (64 columns, K split); its warps take interleaved 16-row steps
//!   of the split and are summed through shared memory in a fixed order. With one split the
//!   block applies the epilogue and stores; with several, each block stores an f32 partial
//!   `[split, m, n]` and a second kernel sums the partials in split order (deterministic) and
//!   applies the epilogue. The split count fills the SMs (`KILN_GPU_SKINNY_CTAS` blocks).
//! - **Epilogue** (as cuBLASLt's): `act(acc + bias[n]) + residual[m, n]`, rounded once.
//! - Odd shapes: rows past `k`, columns past `n` and rows past `m` read zeros (clamped address,
//!   select); `n % 8 != 0` or `k % 4 != 0` use scalar loads.

use super::{storage_type, EmittedKernel, Emitter};
use crate::gpu::GpuError;
use ir::{DType, Graph, UnaryOp};
use runtime::cuda::GemmActivation;

/// Columns per block (8 mma n-tiles of 8, one 16-byte load of 8 columns per lane).
const BLOCK_N: usize = 64;
/// `k` rows per mma step.
const STEP_K: usize = 16;
/// Steps whose loads a warp issues before their mmas.
const UNROLL: usize = 2;

/// The largest `m` the skinny kernel takes (`KILN_GPU_SKINNY_MAX_M`; 0 turns it off).
pub(crate) fn max_m() -> usize {
    std::env::var("KILN_GPU_SKINNY_MAX_M").ok().and_then(|v| v.parse().ok()).unwrap_or(64).min(64)
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
}

impl Skinny {
    /// Whether the kernel computes this GEMM (a row-major `a`, `b` not batched).
    pub(crate) fn fits(&self) -> bool {
        matches!(self.dtype, DType::BF16 | DType::F16) && self.m >= 1 && self.m <= max_m() && self.n >= 1 && self.k >= 1 && !(self.act.is_some() && self.residual)
    }

    fn m_tiles(&self) -> usize {
        self.m.div_ceil(16)
    }

    /// Warps per block.
    fn warps(&self) -> usize {
        super::knob("KILN_GPU_SKINNY_WARPS", 4).clamp(1, 16)
    }

    /// `(splits, steps per split)`.
    pub(crate) fn splits(&self) -> (usize, usize) {
        let steps = self.k.div_ceil(STEP_K);
        let blocks_n = self.n.div_ceil(BLOCK_N);
        let target = super::knob("KILN_GPU_SKINNY_CTAS", 132);
        // At least one step per warp in each split.
        let max_splits = (steps / self.warps()).max(1);
        let want = target.div_ceil(blocks_n).clamp(1, max_splits);
        let per = steps.div_ceil(want);
        (steps.div_ceil(per), per)
    }
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

    /// `len` consecutive elements of `arg` from `idx`, f32 values or zeros where `ok[j]` is
    /// false; one vector load when `vector` (then all `ok[j]` are `ok[0]`).
    fn load_run(&mut self, arg: usize, d: DType, idx: &str, len: usize, ok: &[String], vector: bool) -> Vec<String> {
        let (st, n) = (storage_type(d), self.e.arg_types[arg].1);
        let mem = format!("memref<{n}x{st}>");
        let zero = self.e.c_f32(0.0);
        if vector {
            let at = self.clamp(&ok[0], idx);
            let vt = format!("vector<{len}x{st}>");
            let v = self.op(&format!("vector.load %a{arg}[{at}] {{alignment = {} : i64}} : {mem}, {vt}", len * d.size_bytes()));
            (0..len)
                .map(|j| {
                    let x = self.op(&format!("vector.extract {v}[{j}] : {st} from {vt}"));
                    let x = if d == DType::F32 { x } else { self.op(&format!("arith.extf {x} : {st} to f32")) };
                    self.op(&format!("arith.select {}, {x}, {zero} : f32", ok[0]))
                })
                .collect()
        } else {
            (0..len)
                .map(|j| {
                    let i = self.addc(idx, j);
                    let at = self.clamp(&ok[j], &i);
                    let x = self.op(&format!("memref.load %a{arg}[{at}] : {mem}"));
                    let x = if d == DType::F32 { x } else { self.op(&format!("arith.extf {x} : {st} to f32")) };
                    self.op(&format!("arith.select {}, {x}, {zero} : f32", ok[j]))
                })
                .collect()
        }
    }

    /// Raw (storage-typed) loads for mma operands: `len` elements from `idx`, zeros where not
    /// `ok`. Returns one `vector<len x st>`.
    fn load_raw(&mut self, arg: usize, d: DType, idx: &str, len: usize, ok: &[String], vector: bool) -> String {
        let (st, n) = (storage_type(d), self.e.arg_types[arg].1);
        let mem = format!("memref<{n}x{st}>");
        let vt = format!("vector<{len}x{st}>");
        let zv = self.e.constant("dense<0.0>", &vt);
        if vector {
            let at = self.clamp(&ok[0], idx);
            let v = self.op(&format!("vector.load %a{arg}[{at}] {{alignment = {} : i64}} : {mem}, {vt}", len * d.size_bytes()));
            self.op(&format!("arith.select {}, {v}, {zv} : vector<{len}x{st}>", ok[0]))
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

    /// Elements `i` of `lo` and `hi` (both `vector<8 x st>`) as one `i32` (lo in the low half).
    fn pack(&mut self, lo: &str, hi: &str, i: usize, st: &str) -> String {
        let p = self.op(&format!("vector.shuffle {lo}, {hi} [{i}, {}] : vector<8x{st}>, vector<8x{st}>", i + 8));
        self.op(&format!("llvm.bitcast {p} : vector<2x{st}> to i32"))
    }

    /// `act(v + bias) + residual`, stored at `out[m * n_total + n ..]` (`vals.len()` columns).
    #[allow(clippy::too_many_arguments)]
    fn epilogue_store(&mut self, s: &Skinny, args: (Option<usize>, Option<usize>, usize), m: &str, n: &str, vals: Vec<String>, ok_m: &str) {
        let (bias_arg, res_arg, out_arg) = args;
        let len = vals.len();
        let vector = s.n % len == 0;
        let col_ok: Vec<String> = (0..len)
            .map(|j| {
                let c = self.addc(n, j);
                let lt = self.lt(&c, s.n);
                self.and(&lt, ok_m)
            })
            .collect();
        let mut v = vals;
        if let Some(b) = bias_arg {
            let bias_ok: Vec<String> = if vector { vec![col_ok[0].clone(); len] } else { col_ok.clone() };
            let bs = self.load_run(b, s.dtype, n, len, &bias_ok, vector);
            v = v.iter().zip(&bs).map(|(x, y)| self.op(&format!("arith.addf {x}, {y} : f32"))).collect();
        }
        match s.act {
            Some(GemmActivation::Relu) => {
                let z = self.e.c_f32(0.0);
                v = v.iter().map(|x| self.op(&format!("arith.maximumf {x}, {z} : f32"))).collect();
            }
            Some(GemmActivation::GeluTanh) => {
                v = v.into_iter().map(|x| gelu_tanh(&mut self.e, &x)).collect();
            }
            None => {}
        }
        let row = self.mul(m, s.n);
        let at = self.add(&row, n);
        if let Some(r) = res_arg {
            let r_ok: Vec<String> = if vector { vec![col_ok[0].clone(); len] } else { col_ok.clone() };
            let rs = self.load_run(r, s.dtype, &at, len, &r_ok, vector);
            v = v.iter().zip(&rs).map(|(x, y)| self.op(&format!("arith.addf {x}, {y} : f32"))).collect();
        }
        self.store_run(out_arg, s.dtype, &at, v, &col_ok, vector);
    }

    /// Stores f32 `vals` as `d` at `arg[idx ..]`, each where `ok[j]`.
    fn store_run(&mut self, arg: usize, d: DType, idx: &str, vals: Vec<String>, ok: &[String], vector: bool) {
        let (st, n) = (storage_type(d), self.e.arg_types[arg].1);
        let mem = format!("memref<{n}x{st}>");
        let raw: Vec<String> =
            vals.iter().map(|x| if d == DType::F32 { x.clone() } else { self.op(&format!("arith.truncf {x} : f32 to {st}")) }).collect();
        if vector {
            let len = raw.len();
            let vt = format!("vector<{len}x{st}>");
            let v = self.op(&format!("vector.from_elements {} : {vt}", raw.join(", ")));
            self.line(&format!("scf.if {} {{", ok[0]));
            self.line(&format!("  vector.store {v}, %a{arg}[{idx}] {{alignment = {} : i64}} : {mem}, {vt}", (len * d.size_bytes()).min(16)));
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

/// The main kernel. Arguments: `a [m, k]`, `b [k, n]`, then with one split `[bias [n]]`,
/// `[residual [m, n]]`, `out [m, n]`; with several, the f32 workspace `[splits, m, n]`.
pub(crate) fn main_kernel(symbol: &str, s: &Skinny, args: &[(DType, usize)]) -> Result<EmittedKernel, GpuError> {
    if !s.fits() {
        return Err(GpuError::Unsupported { kernel: symbol.into(), reason: format!("a skinny GEMM of {s:?}") });
    }
    let empty = Graph::new("skinny");
    let mut k = K { e: Emitter::new(&empty, args, 1) };
    let d = s.dtype;
    let st = storage_type(d);
    let mma_ty = if d == DType::BF16 { "bf16" } else { "f16" };
    let warps = s.warps();
    let threads = warps * 32;
    let mt = s.m_tiles();
    let (splits, per) = s.splits();
    let steps = s.k.div_ceil(STEP_K);
    let mp = mt * 16;
    // Shared memory: the block's [mp, 64] f32 sum.
    k.e.smem.push(format!("%s0 : memref<{}xf32, #gpu.address_space<workgroup>> {{llvm.align = 16 : i64}}", mp * BLOCK_N));
    let tid = k.tid("x");
    let bx = k.bid("x");
    let by = k.bid("y");
    let c32 = k.ci(32);
    let c4 = k.ci(4);
    let lane = k.op(&format!("arith.remui {tid}, {c32} : index"));
    let warp = k.op(&format!("arith.divui {tid}, {c32} : index"));
    let g = k.op(&format!("arith.divui {lane}, {c4} : index"));
    let t = k.op(&format!("arith.remui {lane}, {c4} : index"));
    let n0 = k.mul(&bx, BLOCK_N);
    let g8 = k.mul(&g, 8);
    let ncol = k.add(&n0, &g8);
    let t4 = k.mul(&t, 4);
    let ncol_ok = k.lt(&ncol, s.n);
    // This split's steps: [by * per, min((by + 1) * per, steps)); warp w takes first + w + warps * i.
    let first = k.mul(&by, per);
    let wfirst = k.add(&first, &warp);
    let split_end = k.addc(&first, per);
    let steps_c = k.ci(steps);
    let end = k.op(&format!("arith.minui {split_end}, {steps_c} : index"));
    let iters = per.div_ceil(warps * UNROLL);
    // Rows of A this lane reads: g + 8h + 16 tile.
    let a_rows: Vec<(String, String)> = (0..mt * 2)
        .map(|r| {
            let m = k.addc(&g, 8 * r);
            let ok = k.lt(&m, s.m);
            let row = k.mul(&m, s.k);
            (row, ok)
        })
        .collect();
    let a_vec = s.k % 4 == 0;
    let b_vec = s.n % 8 == 0;
    let n_acc = mt * 8 * 4;
    let zero = k.e.c_f32(0.0);
    let lo = k.ci(0);
    let hi = k.ci(iters);
    let one = k.ci(1);
    let accs: Vec<String> = (0..n_acc).map(|i| format!("%acc{i}")).collect();
    let res = k.e.fresh();
    let f32s = vec!["f32"; n_acc].join(", ");
    k.line(&format!(
        "{res}:{n_acc} = scf.for %it = {lo} to {hi} step {one} iter_args({}) -> ({f32s}) {{",
        accs.iter().map(|a| format!("{a} = {zero}")).collect::<Vec<_>>().join(", ")
    ));
    k.e.indent += 1;
    let mut cur = accs.clone();
    // Loads of all unrolled steps first, then their mmas.
    let mut loaded = Vec::new();
    for u in 0..UNROLL {
        let it_w = k.mul("%it", warps * UNROLL);
        let j = k.addc(&it_w, u * warps);
        let j = k.add(&j, &wfirst);
        let j_ok = k.op(&format!("arith.cmpi ult, {j}, {end} : index"));
        let k0 = k.mul(&j, STEP_K);
        let kt = k.add(&k0, &t4);
        // B: rows kt + r, columns ncol .. ncol + 8.
        let mut brows = Vec::new();
        for r in 0..4 {
            let kr = k.addc(&kt, r);
            let kr_ok = k.lt(&kr, s.k);
            let ok = k.and(&j_ok, &kr_ok);
            let row = k.mul(&kr, s.n);
            let idx = k.add(&row, &ncol);
            let oks: Vec<String> = if b_vec {
                let o = k.and(&ok, &ncol_ok);
                vec![o; 8]
            } else {
                (0..8)
                    .map(|c| {
                        let nc = k.addc(&ncol, c);
                        let nok = k.lt(&nc, s.n);
                        k.and(&ok, &nok)
                    })
                    .collect()
            };
            brows.push(k.load_raw(1, d, &idx, 8, &oks, b_vec));
        }
        // A: rows g + 8h (+ 16 tile), columns kt .. kt + 4.
        let mut arows = Vec::new();
        for (row, mok) in a_rows.clone() {
            let idx = k.add(&row, &kt);
            let oks: Vec<String> = (0..4)
                .map(|c| {
                    let kc = k.addc(&kt, c);
                    let kok = k.lt(&kc, s.k);
                    let a = k.and(&mok, &kok);
                    k.and(&a, &j_ok)
                })
                .collect();
            let oks = if a_vec { vec![oks[0].clone(); 4] } else { oks };
            let v = k.load_raw(0, d, &idx, 4, &oks, a_vec);
            let w = k.op(&format!("vector.bitcast {v} : vector<4x{st}> to vector<2xi32>"));
            let p0 = k.op(&format!("vector.extract {w}[0] : i32 from vector<2xi32>"));
            let p1 = k.op(&format!("vector.extract {w}[1] : i32 from vector<2xi32>"));
            arows.push((p0, p1));
        }
        loaded.push((brows, arows));
    }
    for (brows, arows) in loaded {
        for i in 0..8 {
            let b0 = k.pack(&brows[0], &brows[1], i, st);
            let b1 = k.pack(&brows[2], &brows[3], i, st);
            for tile in 0..mt {
                let (p0, p1) = arows[2 * tile].clone();
                let (q0, q1) = arows[2 * tile + 1].clone();
                let base = (tile * 8 + i) * 4;
                let c = &cur[base..base + 4];
                let r = k.op(&format!(
                    "llvm.inline_asm \"mma.sync.aligned.m16n8k16.row.col.f32.{mma_ty}.{mma_ty}.f32 {{$0,$1,$2,$3}}, {{$4,$5,$6,$7}}, {{$8,$9}}, {{$10,$11,$12,$13}};\", \"=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f\" {p0}, {q0}, {p1}, {q1}, {b0}, {b1}, {}, {}, {}, {} : (i32, i32, i32, i32, i32, i32, f32, f32, f32, f32) -> !llvm.struct<(f32, f32, f32, f32)>",
                    c[0], c[1], c[2], c[3]
                ));
                for q in 0..4 {
                    cur[base + q] = k.op(&format!("llvm.extractvalue {r}[{q}] : !llvm.struct<(f32, f32, f32, f32)>"));
                }
            }
        }
    }
    k.line(&format!("scf.yield {} : {f32s}", cur.join(", ")));
    k.e.indent -= 1;
    k.line("}");
    // Sum the warps in shared memory, in warp order: c0 (row g, col 16t + i), c1 (col + 8),
    // c2, c3 (row g + 8).
    let t16 = k.mul(&t, 16);
    let smem_ty = format!("memref<{}xf32, #gpu.address_space<workgroup>>", mp * BLOCK_N);
    let mut slots = Vec::new();
    for tile in 0..mt {
        for i in 0..8 {
            for q in 0..4 {
                let m = k.addc(&g, 16 * tile + 8 * (q / 2));
                let col = k.addc(&t16, i + 8 * (q % 2));
                let row = k.mul(&m, BLOCK_N);
                let at = k.add(&row, &col);
                slots.push((at, format!("{res}#{}", (tile * 8 + i) * 4 + q)));
            }
        }
    }
    for w in 0..warps {
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
    // Each thread: row m, 8 columns from c8 * 8 of the block.
    for rep in 0..(mp * BLOCK_N / 8).div_ceil(threads) {
        let item = k.addc(&tid, rep * threads);
        let c8c = k.ci(8);
        let m = k.op(&format!("arith.divui {item}, {c8c} : index"));
        let c8 = k.op(&format!("arith.remui {item}, {c8c} : index"));
        let lc = k.mul(&c8, 8);
        let m_ok = k.lt(&m, s.m);
        let m_in = k.lt(&m, mp);
        let sm_row = k.mul(&m, BLOCK_N);
        let sm_at = k.add(&sm_row, &lc);
        let sm_at = k.clamp(&m_in, &sm_at);
        let vals: Vec<String> = (0..8)
            .map(|j| {
                let a = k.addc(&sm_at, j);
                k.op(&format!("memref.load %s0[{a}] : {smem_ty}"))
            })
            .collect();
        let n = k.add(&n0, &lc);
        if splits == 1 {
            let ea = epilogue_args(s, 2);
            k.epilogue_store(s, ea, &m, &n, vals, &m_ok);
        } else {
            // Partial: ws[(by * m + row) * n_total + n ..].
            let bm = k.mul(&by, s.m);
            let r = k.add(&bm, &m);
            let row = k.mul(&r, s.n);
            let at = k.add(&row, &n);
            let ok: Vec<String> = (0..8)
                .map(|j| {
                    let c = k.addc(&n, j);
                    let lt = k.lt(&c, s.n);
                    k.and(&lt, &m_ok)
                })
                .collect();
            k.store_run(2, DType::F32, &at, vals, &ok, s.n % 8 == 0);
        }
    }
    let attrs = format!("known_block_size = array<i32: {threads}, 1, 1>");
    Ok(EmittedKernel {
        symbol: symbol.into(),
        func: k.e.finish(symbol, &attrs),
        grid: [s.n.div_ceil(BLOCK_N) as u32, splits as u32, 1],
        block: [threads as u32, 1, 1],
        max_elements: args.iter().map(|a| a.1).max().unwrap_or(0),
    })
}

/// The split-K finishing kernel: `out = epilogue(sum over splits of ws[split])`, the splits
/// added in order. Arguments: `ws [splits, m, n]` (f32), `[bias [n]]`, `[residual [m, n]]`,
/// `out [m, n]`.
pub(crate) fn reduce_kernel(symbol: &str, s: &Skinny, args: &[(DType, usize)]) -> Result<EmittedKernel, GpuError> {
    let (splits, _) = s.splits();
    let empty = Graph::new("skinny_reduce");
    let mut k = K { e: Emitter::new(&empty, args, 1) };
    const THREADS: usize = 128;
    let tid = k.tid("x");
    let bx = k.bid("x");
    let base = k.mul(&bx, THREADS);
    let item = k.add(&base, &tid);
    let groups = s.n.div_ceil(8);
    let gc = k.ci(groups);
    let m = k.op(&format!("arith.divui {item}, {gc} : index"));
    let c8 = k.op(&format!("arith.remui {item}, {gc} : index"));
    let n = k.mul(&c8, 8);
    let m_ok = k.lt(&m, s.m);
    let vector = s.n % 8 == 0;
    let ok: Vec<String> = (0..8)
        .map(|j| {
            let c = k.addc(&n, j);
            let lt = k.lt(&c, s.n);
            k.and(&lt, &m_ok)
        })
        .collect();
    let row = k.mul(&m, s.n);
    let at = k.add(&row, &n);
    let mut sum: Option<Vec<String>> = None;
    for sp in 0..splits {
        let idx = k.addc(&at, sp * s.m * s.n);
        let oks = if vector { vec![ok[0].clone(); 8] } else { ok.clone() };
        let v = k.load_run(0, DType::F32, &idx, 8, &oks, vector);
        sum = Some(match sum {
            None => v,
            Some(p) => p.iter().zip(&v).map(|(x, y)| k.op(&format!("arith.addf {x}, {y} : f32"))).collect(),
        });
    }
    let ea = epilogue_args(s, 1);
    k.epilogue_store(s, ea, &m, &n, sum.expect("at least one split"), &m_ok);
    let attrs = format!("known_block_size = array<i32: {THREADS}, 1, 1>");
    Ok(EmittedKernel {
        symbol: symbol.into(),
        func: k.e.finish(symbol, &attrs),
        grid: [(s.m * groups).div_ceil(THREADS) as u32, 1, 1],
        block: [THREADS as u32, 1, 1],
        max_elements: args.iter().map(|a| a.1).max().unwrap_or(0),
    })
}
