//! Kiln's tensor-core attention kernel (FlashAttention-2 style): `softmax(q k^T * scale
//! [causal]) v` in one launch, bf16 / f16 operands on `mma.sync.aligned.m16n8k16` with f32
//! accumulators.
//!
//! - **Blocks.** One block of `WARPS` warps per (tile of `BLOCK_M` query rows, batch entry);
//!   each warp owns 16 query rows. Its `q` rows are loaded once into mma A-fragments (registers).
//! - **Key tiles.** The block walks the keys in tiles of `block_n` (64 for head dims up to 64,
//!   32 above: registers). It stages the `k` and `v` tiles in shared memory row-major
//!   (`[key][d]`, rows padded by 8 elements so that the 8 row addresses of an `ldmatrix` fall
//!   in distinct banks), 16-byte stores by consecutive threads along a row. Keys past `sk` are
//!   clamped (real, finite data) and masked in the scores.
//! - **Fragments by `ldmatrix`.** The B operand of `S = Q K^T` is `k`'s rows as stored: one
//!   `ldmatrix.x4` gives the B registers of one 8-key fragment for two 16-wide k-steps. The B
//!   operand of `O += P V` is `v` transposed: one `ldmatrix.x4.trans` gives the B registers of
//!   two 8-column output fragments for one 16-key step.
//! - **Scores.** `S = Q K^T` per warp: 16 rows x `block_n` keys in `block_n / 8` accumulator
//!   fragments (`d / 16` mmas each), scaled by `scale * log2 e` in f32.
//! - **Online softmax on the fragments.** A lane holds rows `g` and `g + 8` (`g = lane / 4`);
//!   the row maximum is reduced over the quad (`shuffle xor 1, 2`), probabilities are `ex2(s -
//!   m)`, the row sum stays a per-lane partial until the end, and the output accumulator is
//!   rescaled by `ex2(m_old - m_new)` per tile. One normalization at the end.
//! - **P in registers.** The S accumulator layout of two adjacent 8-key fragments is the A
//!   layout of one 16-key k-step, so P is rounded to bf16 / f16 and packed in place (no shared
//!   memory), then `O += P V` with `dv / 8` mmas per k-step.
//! - **Masking.** Keys past `sk` and (causal) keys `j > i + sk - sq` are set to -inf with
//!   selects, only in the tiles that reach past `sk` or past the block's first diagonal (a
//!   uniform branch per tile). Causal: a block stops after the last key its last row may see
//!   (fully masked tiles are never loaded).
//! - `q`, `k`, `v` are read through the body's index maps (slices of a fused qkv GEMM output,
//!   head permutes), the output is written through the root's permute, as in `attn.rs`.
//! - Knobs: `KILN_GPU_FLASH=0` (the SIMT kernel / GEMM path instead), `KILN_GPU_FLASH_BLOCK_N`.
//!
//! Known limits (later work): the k / v tiles are staged through registers with ordinary
//! 16-byte loads and a barrier per tile (no `cp.async` double buffering: the next tile's loads
//! do not overlap this tile's mmas except across the blocks of an SM); head dims above 128
//! take the other paths.

use super::attn::{attention_body, AttnBody};
use super::mma::mma_m16n8k16;
use super::{storage_type, EmittedKernel, Emitter, Form, Ix};
use crate::gpu::GpuError;
use ir::{DType, Graph, Shape};

/// Warps per block (16 query rows each).
const WARPS: usize = 4;
/// Query rows per block.
const BLOCK_M: usize = 16 * WARPS;
/// Keys per tile, at most (head dims past 64 take 32: registers).
const MAX_BLOCK_N: usize = 64;
/// Shared-memory row padding (elements).
const PAD: usize = 8;
/// The widest head dim the kernel takes (shared memory and registers).
pub(crate) const MAX_HEAD_DIM: usize = 128;

/// Whether the tensor-core kernel computes this attention: bf16 / f16 output, head dims
/// multiples of 16 up to `MAX_HEAD_DIM`. `KILN_GPU_FLASH=0` turns it off.
pub(crate) fn flash_fits(dtype: DType, d: usize, dv: usize) -> bool {
    let on = std::env::var("KILN_GPU_FLASH").map_or(true, |v| v != "0");
    on && matches!(dtype, DType::BF16 | DType::F16) && [d, dv].iter().all(|&x| x > 0 && x % 16 == 0 && x <= MAX_HEAD_DIM)
}

/// Emits the tensor-core attention kernel for `body`, whose single output is a
/// `FlashAttention` node or a `Permute` of it.
pub(crate) fn flash_attention(symbol: &str, body: &Graph, args: &[(DType, usize)]) -> Result<EmittedKernel, GpuError> {
    let unsupported = |reason: String| GpuError::Unsupported { kernel: symbol.into(), reason };
    let AttnBody { an, perm, causal, scale, q, k, v, qs, ks, vs, r, sq, sk, d, dv, batch_shape } = attention_body(symbol, body)?;
    if sq == 0 || sk == 0 || !flash_fits(an.dtype, d, dv) {
        return Err(unsupported(format!("tensor-core attention of {} with head dims {d}, {dv} over {sq} x {sk}", an.dtype)));
    }
    let dt = an.dtype;
    let st = storage_type(dt);
    let batch = batch_shape.numel().max(1);
    let threads = 32 * WARPS;
    // Keys per tile: 64 for head dims up to 64, else 32 (the S and P fragments of a 64-key tile
    // on top of a 128-wide accumulator exhaust the registers); KILN_GPU_FLASH_BLOCK_N (16 .. 64).
    let block_n = super::knob("KILN_GPU_FLASH_BLOCK_N", if d.max(dv) <= 64 { 64 } else { 32 }).clamp(16, MAX_BLOCK_N) / 16 * 16;
    let mut e = Emitter::new(body, args, 8);

    // ---- small text helpers ----
    fn ci(e: &mut Emitter, k: usize) -> String {
        e.c_index(k as i64)
    }
    fn addc(e: &mut Emitter, a: &str, k: usize) -> String {
        if k == 0 {
            return a.to_string();
        }
        let c = ci(e, k);
        e.op(&format!("arith.addi {a}, {c} : index"))
    }
    fn mulc(e: &mut Emitter, a: &str, k: usize) -> String {
        let c = ci(e, k);
        e.op(&format!("arith.muli {a}, {c} : index"))
    }
    // `w` lanes `x, x + 1, ..` (contiguous, aligned) or `w` copies of `x`.
    fn run(e: &mut Emitter, x: &str, w: usize) -> Ix {
        let lanes = (0..w).map(|j| addc(e, x, j)).collect();
        Ix { lanes, form: if w > 1 { Form::Contig { aligned: true } } else { Form::Uniform { mult: true } } }
    }
    fn uni(x: &str, w: usize) -> Ix {
        Ix { lanes: vec![x.to_string(); w], form: Form::Uniform { mult: false } }
    }

    let tid = e.op("gpu.thread_id x");
    let bx = e.op("gpu.block_id x");
    let by = e.op("gpu.block_id y");
    let c32 = ci(&mut e, 32);
    let warp = e.op(&format!("arith.divui {tid}, {c32} : index"));
    let lane = e.op(&format!("arith.remui {tid}, {c32} : index"));
    let c4 = ci(&mut e, 4);
    let g = e.op(&format!("arith.divui {lane}, {c4} : index"));
    let t = e.op(&format!("arith.remui {lane}, {c4} : index"));
    let t2 = mulc(&mut e, &t, 2);
    let row0 = mulc(&mut e, &bx, BLOCK_M);
    let w16 = mulc(&mut e, &warp, 16);
    let wrow = e.op(&format!("arith.addi {row0}, {w16} : index"));
    // The lane's two rows (g, g + 8), their clamped copies and validity.
    let rows: Vec<String> = [0, 8].iter().map(|&o| {
        let x = e.op(&format!("arith.addi {wrow}, {g} : index"));
        addc(&mut e, &x, o)
    }).collect();
    let last_q = ci(&mut e, sq - 1);
    let rows_c: Vec<String> = rows.iter().map(|x| e.op(&format!("arith.minui {x}, {last_q} : index"))).collect();
    // Batch indices, per lane width (index maps take one Ix per lane of the emitter's width).
    let mut bidx = std::collections::HashMap::new();
    for w in [1usize, 2, 8] {
        e.vec = w;
        let b = e.delinearize(&uni(&by, w), &batch_shape);
        bidx.insert(w, b);
    }
    let at = |e: &mut Emitter, w: usize, pos: &Ix, inner: &Ix, shape: &Shape| -> Vec<Ix> {
        e.vec = w;
        let mut idx = e.broadcast_index(&bidx[&w], &batch_shape, &Shape::new(shape.dims()[..r - 2].iter().copied()));
        idx.push(pos.clone());
        idx.push(inner.clone());
        idx
    };
    // Two f32 values rounded to the mma type and packed into one i32 (the first in the low half).
    let pack = |e: &mut Emitter, a: &str, b: &str| -> String {
        let x = e.op(&format!("arith.truncf {a} : f32 to {st}"));
        let y = e.op(&format!("arith.truncf {b} : f32 to {st}"));
        let v = e.op(&format!("vector.from_elements {x}, {y} : vector<2x{st}>"));
        e.op(&format!("llvm.bitcast {v} : vector<2x{st}> to i32"))
    };
    let mma = |e: &mut Emitter, a: &[String], b: &[String], c: &[String]| -> Vec<String> { mma_m16n8k16(e, dt, a, b, c).to_vec() };
    let ex2 = |e: &mut Emitter, x: &str| e.op(&format!("llvm.inline_asm \"ex2.approx.ftz.f32 $0, $1;\", \"=f,f\" {x} : (f32) -> f32"));
    let width32 = e.c_i32(32);
    let shfl = |e: &mut Emitter, x: &str, off: i64| -> String {
        let o = e.c_i32(off);
        let (y, p) = (e.fresh(), e.fresh());
        e.line(&format!("{y}, {p} = gpu.shuffle xor {x}, {o}, {width32} : f32"));
        y
    };

    // ---- q fragments: per 16-wide k-step, a0 (g, 2t), a1 (g + 8, 2t), a2 (g, 2t + 8), a3 (g + 8, 2t + 8) ----
    let mut qf: Vec<Vec<String>> = Vec::new();
    for kk in 0..d / 16 {
        let mut regs = Vec::new();
        for (half, ri) in [(0, 0), (0, 1), (8, 0), (8, 1)] {
            let c0 = addc(&mut e, &t2, 16 * kk + half);
            let inner = run(&mut e, &c0, 2);
            let idx = at(&mut e, 2, &uni(&rows_c[ri], 2), &inner, &qs);
            let vals = e.value(q, &idx)?;
            regs.push(pack(&mut e, &vals[0], &vals[1]));
        }
        qf.push(regs);
    }

    // ---- shared tiles ----
    let (kstride, vstride) = (d + PAD, dv + PAD);
    let wg = |n: usize| format!("memref<{n}x{st}, #gpu.address_space<workgroup>>");
    let (ksm, vsm) = (format!("%s{}", e.smem.len()), format!("%s{}", e.smem.len() + 1));
    let (kty, vty) = (wg(block_n * kstride), wg(block_n * vstride));
    e.smem.push(format!("{ksm} : {kty} {{llvm.align = 16 : i64}}"));
    e.smem.push(format!("{vsm} : {vty} {{llvm.align = 16 : i64}}"));

    // Shared byte addresses (32-bit) of the tiles and each lane's ldmatrix row address within a
    // tile: k (no transpose) row 8n + lane % 8, column 8 (lane / 8); v (transposed) row
    // lane % 8 + 8 ((lane / 8) % 2), column 8 (lane / 16).
    let smem_addr = |e: &mut Emitter, sm: &str, ty: &str| -> String {
        let p = e.op(&format!("memref.extract_aligned_pointer_as_index {sm} : {ty} -> index"));
        e.op(&format!("arith.index_cast {p} : index to i32"))
    };
    let ksm_addr = smem_addr(&mut e, &ksm, &kty);
    let vsm_addr = smem_addr(&mut e, &vsm, &vty);
    let c8 = ci(&mut e, 8);
    let l8 = e.op(&format!("arith.remui {lane}, {c8} : index"));
    let m8 = e.op(&format!("arith.divui {lane}, {c8} : index"));
    let lane_base = |e: &mut Emitter, row: &str, col: &str, stride: usize| -> String {
        let r = mulc(e, row, stride);
        let c = mulc(e, col, 8);
        let x = e.op(&format!("arith.addi {r}, {c} : index"));
        let x = mulc(e, &x, dt.size_bytes());
        e.op(&format!("arith.index_cast {x} : index to i32"))
    };
    let kbase_lane = lane_base(&mut e, &l8, &m8, kstride);
    let c2 = ci(&mut e, 2);
    let mlow = e.op(&format!("arith.remui {m8}, {c2} : index"));
    let mhigh = e.op(&format!("arith.divui {m8}, {c2} : index"));
    let vrow = mulc(&mut e, &mlow, 8);
    let vrow = e.op(&format!("arith.addi {vrow}, {l8} : index"));
    let vbase_lane = lane_base(&mut e, &vrow, &mhigh, vstride);
    // `ldmatrix` (x4, or x2 when not `four`) at tile + lane offset + `bytes`: the i32 registers.
    let ldmatrix = |e: &mut Emitter, tile: &str, lane_off: &str, bytes: usize, four: bool, trans: bool| -> Vec<String> {
        let c = e.c_i32(bytes as i64);
        let a = e.op(&format!("arith.addi {tile}, {lane_off} : i32"));
        let a = e.op(&format!("arith.addi {a}, {c} : i32"));
        let (n, tr) = (if four { 4 } else { 2 }, if trans { ".trans" } else { "" });
        let outs: Vec<String> = (0..n).map(|i| format!("${i}")).collect();
        let cons = vec!["=r"; n].join(",");
        let ty = vec!["i32"; n].join(", ");
        let r = e.op(&format!(
            "llvm.inline_asm has_side_effects \"ldmatrix.sync.aligned.m8n8.x{n}{tr}.shared.b16 {{{}}}, [${n}];\", \"{cons},r\" {a} : (i32) -> !llvm.struct<({ty})>",
            outs.join(",")
        ));
        (0..n).map(|i| e.op(&format!("llvm.extractvalue {r}[{i}] : !llvm.struct<({ty})>"))).collect()
    };

    // ---- loop bounds and carried state: m (2 rows), l (2 rows, per-lane partial), O ----
    let csk = ci(&mut e, sk);
    let ub = if causal {
        let lim = addc(&mut e, &row0, BLOCK_M + sk);
        let csq = ci(&mut e, sq);
        let lim = e.op(&format!("arith.subi {lim}, {csq} : index"));
        let z = ci(&mut e, 0);
        let lo = e.op(&format!("arith.maxsi {lim}, {z} : index"));
        e.op(&format!("arith.minsi {lo}, {csk} : index"))
    } else {
        csk.clone()
    };
    let row_lim: Vec<String> = if causal {
        rows.iter()
            .map(|x| {
                let y = addc(&mut e, x, sk);
                let csq = ci(&mut e, sq);
                e.op(&format!("arith.subi {y}, {csq} : index"))
            })
            .collect()
    } else {
        Vec::new()
    };
    let zero = e.c_f32(0.0);
    let ninf = e.c_f32(f64::NEG_INFINITY);
    let n_o = dv / 8 * 4;
    let n_state = 4 + n_o;
    let types = vec!["f32"; n_state].join(", ");
    let inits: Vec<String> = [ninf.clone(), ninf.clone()].into_iter().chain(std::iter::repeat_n(zero.clone(), 2 + n_o)).collect();
    let (res, ts) = (e.fresh(), e.fresh());
    let state: Vec<String> = (0..n_state).map(|_| e.fresh()).collect();
    let c0 = ci(&mut e, 0);
    let cbn = ci(&mut e, block_n);
    let iter: Vec<String> = state.iter().zip(&inits).map(|(a, b)| format!("{a} = {b}")).collect();
    e.line(&format!("{res}:{n_state} = scf.for {ts} = {c0} to {ub} step {cbn} iter_args({}) -> ({types}) {{", iter.join(", ")));
    e.indent += 1;
    let last_k = ci(&mut e, sk - 1);

    // Stage the k and v tiles row-major (`[key][d]`), 8-element groups, consecutive threads
    // along a row.
    e.line("gpu.barrier");
    let vt8 = format!("vector<8x{st}>");
    for (node, shape, width, sm, ty, stride) in [(k, &ks, d, &ksm, &kty, kstride), (v, &vs, dv, &vsm, &vty, vstride)] {
        let groups = width / 8;
        for it in 0..(block_n * groups).div_ceil(threads) {
            let gi = addc(&mut e, &tid, it * threads);
            let lastg = ci(&mut e, block_n * groups - 1);
            let gi = e.op(&format!("arith.minui {gi}, {lastg} : index"));
            let cg = ci(&mut e, groups);
            let jj = e.op(&format!("arith.divui {gi}, {cg} : index"));
            let col = e.op(&format!("arith.remui {gi}, {cg} : index"));
            let col = mulc(&mut e, &col, 8);
            let j = e.op(&format!("arith.addi {ts}, {jj} : index"));
            let j = e.op(&format!("arith.minui {j}, {last_k} : index"));
            let inner = run(&mut e, &col, 8);
            let idx = at(&mut e, 8, &uni(&j, 8), &inner, shape);
            let vals = e.value(node, &idx)?;
            let raw: Vec<String> = vals.iter().map(|x| e.op(&format!("arith.truncf {x} : f32 to {st}"))).collect();
            let x = e.op(&format!("vector.from_elements {} : {vt8}", raw.join(", ")));
            let rs = mulc(&mut e, &jj, stride);
            let off = e.op(&format!("arith.addi {rs}, {col} : index"));
            e.line(&format!("vector.store {x}, {sm}[{off}] : {ty}, {vt8}"));
        }
    }
    e.line("gpu.barrier");

    // S = Q K^T. Per 8-key fragment n and two k-steps, one `ldmatrix.x4` of the k tile: matrix
    // m (lanes 8m .. 8m + 7 give its row addresses) is keys 8n .. 8n + 7 at columns 8m + 16kk'
    // of the pair, i.e. the b0, b1 registers of both k-steps (an odd last k-step: `.x2`).
    let scale_l2 = e.c_f32(scale.0 * std::f64::consts::LOG2_E);
    let mut s_frags: Vec<Vec<String>> = Vec::new();
    for n in 0..block_n / 8 {
        let mut acc = vec![zero.clone(); 4];
        let mut kk = 0;
        while kk < d / 16 {
            let two = kk + 1 < d / 16;
            let off = kbase_lane.clone();
            let b = ldmatrix(&mut e, &ksm_addr, &off, (8 * n * kstride + 16 * kk) * dt.size_bytes(), two, false);
            acc = mma(&mut e, &qf[kk], &b[0..2], &acc);
            if two {
                acc = mma(&mut e, &qf[kk + 1], &b[2..4], &acc);
            }
            kk += 2;
        }
        s_frags.push(acc.iter().map(|x| e.op(&format!("arith.mulf {x}, {scale_l2} : f32"))).collect());
    }
    // Mask: only tiles that reach past `sk` or (causal) past the block's first row's diagonal
    // (a uniform branch); element i of fragment n is row (i < 2 ? g : g + 8), key ts + 8n + 2t
    // + (i & 1).
    let tile_end = addc(&mut e, &ts, block_n);
    let mut need = e.op(&format!("arith.cmpi ugt, {tile_end}, {csk} : index"));
    if causal {
        let lim = addc(&mut e, &row0, sk);
        let csq = ci(&mut e, sq);
        let lim = e.op(&format!("arith.subi {lim}, {csq} : index"));
        let last = addc(&mut e, &ts, block_n - 1);
        let c = e.op(&format!("arith.cmpi sgt, {last}, {lim} : index"));
        need = e.op(&format!("arith.ori {need}, {c} : i1"));
    }
    let n_s = s_frags.len() * 4;
    let stypes = vec!["f32"; n_s].join(", ");
    let masked = e.fresh();
    e.line(&format!("{masked}:{n_s} = scf.if {need} -> ({stypes}) {{"));
    e.indent += 1;
    let mut out = Vec::new();
    for (n, f) in s_frags.iter().enumerate() {
        for (i, s) in f.iter().enumerate() {
            let kj = addc(&mut e, &t2, 8 * n + (i & 1));
            let j = e.op(&format!("arith.addi {ts}, {kj} : index"));
            let mut ok = e.op(&format!("arith.cmpi ult, {j}, {csk} : index"));
            if causal {
                let c = e.op(&format!("arith.cmpi sle, {j}, {} : index", row_lim[i / 2]));
                ok = e.op(&format!("arith.andi {ok}, {c} : i1"));
            }
            out.push(e.op(&format!("arith.select {ok}, {s}, {ninf} : f32")));
        }
    }
    e.line(&format!("scf.yield {} : {stypes}", out.join(", ")));
    e.indent -= 1;
    e.line("} else {");
    let all: Vec<String> = s_frags.iter().flatten().cloned().collect();
    e.line(&format!("  scf.yield {} : {stypes}", all.join(", ")));
    e.line("}");
    let s_frags: Vec<Vec<String>> = (0..s_frags.len()).map(|n| (0..4).map(|i| format!("{masked}#{}", 4 * n + i)).collect()).collect();
    // Online softmax per row h (0: g, 1: g + 8).
    let mut next = Vec::new();
    let mut corr = Vec::new();
    let mut msafe = Vec::new();
    for h in 0..2 {
        let mut mt = state[h].clone();
        for f in &s_frags {
            for x in &f[2 * h..2 * h + 2] {
                mt = e.op(&format!("arith.maximumf {mt}, {x} : f32"));
            }
        }
        for off in [1, 2] {
            let y = shfl(&mut e, &mt, off);
            mt = e.op(&format!("arith.maximumf {mt}, {y} : f32"));
        }
        let is_ninf = e.op(&format!("arith.cmpf oeq, {mt}, {ninf} : f32"));
        let ms = e.op(&format!("arith.select {is_ninf}, {zero}, {mt} : f32"));
        let dm = e.op(&format!("arith.subf {}, {ms} : f32", state[h]));
        corr.push(ex2(&mut e, &dm));
        msafe.push(ms);
        next.push(mt);
    }
    let mut p_frags: Vec<Vec<String>> = Vec::new();
    let mut lsum: Vec<String> = (0..2).map(|h| e.op(&format!("arith.mulf {}, {} : f32", state[2 + h], corr[h]))).collect();
    for f in &s_frags {
        let mut p = Vec::new();
        for (i, x) in f.iter().enumerate() {
            let y = e.op(&format!("arith.subf {x}, {} : f32", msafe[i / 2]));
            let y = ex2(&mut e, &y);
            lsum[i / 2] = e.op(&format!("arith.addf {}, {y} : f32", lsum[i / 2]));
            p.push(y);
        }
        p_frags.push(p);
    }
    next.extend(lsum);
    // O = O * corr + P V: k-step kk over keys 16kk..; A from S fragments 2kk and 2kk + 1.
    let mut o: Vec<Vec<String>> = (0..dv / 8)
        .map(|n| (0..4).map(|i| e.op(&format!("arith.mulf {}, {} : f32", state[4 + 4 * n + i], corr[i / 2]))).collect())
        .collect();
    for kk in 0..block_n / 16 {
        let (p0, p1) = (&p_frags[2 * kk], &p_frags[2 * kk + 1]);
        let a = [pack(&mut e, &p0[0], &p0[1]), pack(&mut e, &p0[2], &p0[3]), pack(&mut e, &p1[0], &p1[1]), pack(&mut e, &p1[2], &p1[3])];
        // B of fragments n, n + 1: one `ldmatrix.x4.trans` of the v tile, matrix m = keys
        // 16kk + 8 (m % 2) .., columns 8 (n + m / 2) .. (transposed: lane (g, t) gets keys 2t,
        // 2t + 1 of column g).
        for n in (0..dv / 8).step_by(2) {
            let b = ldmatrix(&mut e, &vsm_addr, &vbase_lane, (16 * kk * vstride + 8 * n) * dt.size_bytes(), true, true);
            o[n] = mma(&mut e, &a, &b[0..2], &o[n]);
            o[n + 1] = mma(&mut e, &a, &b[2..4], &o[n + 1]);
        }
    }
    next.extend(o.into_iter().flatten());
    e.line(&format!("scf.yield {} : {types}", next.join(", ")));
    e.indent -= 1;
    e.line("}");
    // Values computed inside the loop are out of scope now.
    e.memo.clear();

    // ---- normalize and store ----
    let fin: Vec<String> = (0..n_state).map(|i| format!("{res}#{i}")).collect();
    let one = e.c_f32(1.0);
    let inv: Vec<String> = (0..2)
        .map(|h| {
            let mut l = fin[2 + h].clone();
            for off in [1, 2] {
                let y = shfl(&mut e, &l, off);
                l = e.op(&format!("arith.addf {l}, {y} : f32"));
            }
            e.op(&format!("arith.divf {one}, {l} : f32"))
        })
        .collect();
    let csq = ci(&mut e, sq);
    let out_arg = body.inputs().len();
    let out_shape = body.node(body.outputs()[0]).shape.clone();
    for h in 0..2 {
        let ok = e.op(&format!("arith.cmpi ult, {}, {csq} : index", rows[h]));
        e.line(&format!("scf.if {ok} {{"));
        e.indent += 1;
        for n in 0..dv / 8 {
            let vals: Vec<String> = (0..2).map(|i| e.op(&format!("arith.mulf {}, {} : f32", fin[4 + 4 * n + 2 * h + i], inv[h]))).collect();
            let c = addc(&mut e, &t2, 8 * n);
            let inner = run(&mut e, &c, 2);
            let idx = at(&mut e, 2, &uni(&rows[h], 2), &inner, &an.shape);
            let oidx = match &perm {
                None => idx,
                Some(p) => p.iter().map(|&a| idx[a].clone()).collect(),
            };
            e.store(out_arg, dt, &out_shape, &oidx, &vals);
        }
        e.indent -= 1;
        e.line("}");
    }
    let attrs = format!("known_block_size = array<i32: {threads}, 1, 1>");
    let max_elements = args.iter().map(|a| a.1).max().unwrap_or(0);
    Ok(EmittedKernel {
        symbol: symbol.into(),
        func: e.finish(symbol, &attrs),
        grid: [sq.div_ceil(BLOCK_M) as u32, batch as u32, 1],
        block: [threads as u32, 1, 1],
        max_elements,
    })
}
