//! Kiln's fused attention kernel: `softmax(q k^T * scale [causal]) v` in one launch, SIMT.
//!
//! - One block per (batch, tile of `R` query rows); a group of `G` threads (a power of two,
//!   at most a warp) owns one query row: each thread holds `CHUNKS x VEC` consecutive elements
//!   of `q` (scaled by `scale * log2 e` once) and of the output accumulator, in f32.
//! - Keys are visited in tiles of `UNROLL`: every key's `k` row and `v` row is loaded with
//!   16-byte vector loads where the index map allows (all loads of a tile are independent, so
//!   they are in flight together), the dot product is reduced across the group with a
//!   `gpu.shuffle xor` butterfly, and the tile updates the online softmax (running max `m`, sum
//!   `l`, rescaling the accumulator by `2^(m_old - m_new)`).
//! - Causal: the block's loop stops after the last key its last row may see (later tiles are
//!   skipped), and keys past a row's diagonal (`j > i + sk - sq`) are masked in the tile.
//! - `q`, `k`, `v` are read through the body's movement ops (index maps): slices of a fused
//!   qkv GEMM output and head permutes cost no copy. The output is written through the root's
//!   permute when the consumer wants `[b, s, h, d]` (no merge copy).

use super::{Emitter, Form, Ix};
use crate::gpu::GpuError;
use ir::{DType, Graph, NodeId, Op, Shape};

/// Threads per block.
const THREADS: usize = 128;
/// Keys per loop iteration.
const UNROLL: usize = 8;
/// Keys per shared-memory tile, at most.
const TILE_KEYS: usize = 64;
/// Shared memory for the k and v tiles, at most (bytes).
const SMEM_BYTES: usize = 40 * 1024;

/// Emits the fused attention kernel for `body`, whose single output is `attn` (a
/// `FlashAttention` node) or a `Permute` of it.
pub(crate) fn attention(symbol: &str, body: &Graph, args: &[(DType, usize)]) -> Result<super::EmittedKernel, GpuError> {
    let unsupported = |reason: String| GpuError::Unsupported { kernel: symbol.into(), reason };
    let AttnBody { an, perm, causal, scale, q, k, v, qs, ks, vs, r, sq, sk, d, dv, batch_shape } = attention_body(symbol, body)?;
    let batch = batch_shape.numel().max(1);
    if sq == 0 || sk == 0 || d == 0 || dv == 0 {
        return Err(unsupported("an empty attention".into()));
    }
    let widest = body.inputs().iter().map(|&i| body.node(i).dtype.size_bytes()).chain([an.dtype.size_bytes()]).max().unwrap_or(4);
    let mut vec = (16 / widest).max(1);
    while d % vec != 0 || dv % vec != 0 {
        vec /= 2;
    }
    let width = d.max(dv);
    let g = width.div_ceil(vec).next_power_of_two().min(32);
    let chunks = width.div_ceil(vec * g);
    let rows = THREADS / g;
    let mut e = Emitter::new(body, args, vec);
    let uni = |x: &str, vec: usize| Ix { lanes: vec![x.to_string(); vec], form: Form::Uniform { mult: false } };

    let tid = e.op("gpu.thread_id x");
    let bx = e.op("gpu.block_id x");
    let by = e.op("gpu.block_id y");
    let cg = e.c_index(g as i64);
    let member = e.op(&format!("arith.remui {tid}, {cg} : index"));
    let rr = e.op(&format!("arith.divui {tid}, {cg} : index"));
    let crows = e.c_index(rows as i64);
    let row0 = e.op(&format!("arith.muli {bx}, {crows} : index"));
    let row = e.op(&format!("arith.addi {row0}, {rr} : index"));
    let csq = e.c_index(sq as i64);
    let row_ok = e.op(&format!("arith.cmpi ult, {row}, {csq} : index"));
    let last_q = e.c_index(sq as i64 - 1);
    let rowc = e.op(&format!("arith.minui {row}, {last_q} : index"));
    let bidx = e.delinearize(&uni(&by, vec), &batch_shape);
    // Per chunk: the element offset along d / dv (clamped in bounds) and whether it is real.
    let cvec = e.c_index(vec as i64);
    let lane0 = e.op(&format!("arith.muli {member}, {cvec} : index"));
    let mut dq = Vec::new();
    let mut dvv = Vec::new();
    for c in 0..chunks {
        let off = e.c_index((c * vec * g) as i64);
        let d0 = e.op(&format!("arith.addi {lane0}, {off} : index"));
        for (n, list) in [(d, &mut dq), (dv, &mut dvv)] {
            let cn = e.c_index(n as i64);
            let ok = e.op(&format!("arith.cmpi ult, {d0}, {cn} : index"));
            let lastc = e.c_index((n - vec) as i64);
            let base = e.op(&format!("arith.minui {d0}, {lastc} : index"));
            let lanes = (0..vec)
                .map(|j| {
                    let cj = e.c_index(j as i64);
                    if j == 0 { base.clone() } else { e.op(&format!("arith.addi {base}, {cj} : index")) }
                })
                .collect();
            let form = if vec > 1 { Form::Contig { aligned: true } } else { Form::Uniform { mult: true } };
            list.push((Ix { lanes, form }, ok));
        }
    }
    let at = |e: &mut Emitter, pos: &Ix, inner: &Ix, shape: &Shape| -> Vec<Ix> {
        // Batch index broadcast into an operand's batch dims, then [pos, inner].
        let mut idx = e.broadcast_index(&bidx, &batch_shape, &Shape::new(shape.dims()[..r - 2].iter().copied()));
        idx.push(pos.clone());
        idx.push(inner.clone());
        idx
    };
    // q, scaled into log2 units; lanes past d are zero.
    let qscale = e.c_f32(scale.0 * std::f64::consts::LOG2_E);
    let zero = e.c_f32(0.0);
    let ninf = e.c_f32(f64::NEG_INFINITY);
    let qrow = uni(&rowc, vec);
    let mut qv: Vec<Vec<String>> = Vec::new();
    for (ix, ok) in dq.clone() {
        let idx = at(&mut e, &qrow, &ix, &qs);
        let vals = e.value(q, &idx)?;
        let vals: Vec<String> = vals
            .iter()
            .map(|x| {
                let s = e.op(&format!("arith.mulf {x}, {qscale} : f32"));
                e.op(&format!("arith.select {ok}, {s}, {zero} : f32"))
            })
            .collect();
        qv.push(vals);
    }
    // Loop bound: all keys, or (causal) up to the block's last row's diagonal.
    let csk = e.c_index(sk as i64);
    let ub = if causal {
        let c = e.c_index(rows as i64 + sk as i64 - sq as i64);
        let lim = e.op(&format!("arith.addi {row0}, {c} : index"));
        let z = e.c_index(0);
        let lo = e.op(&format!("arith.maxsi {lim}, {z} : index"));
        e.op(&format!("arith.minsi {lo}, {csk} : index"))
    } else {
        csk.clone()
    };
    let row_lim = if causal {
        let c = e.c_index(sk as i64 - sq as i64);
        Some(e.op(&format!("arith.addi {row}, {c} : index")))
    } else {
        None
    };
    let c0 = e.c_index(0);
    let cu = e.c_index(UNROLL as i64);
    // Loop-carried state: m, l, then the accumulator (chunk-major).
    let nacc = chunks * vec;
    let types = vec!["f32"; 2 + nacc].join(", ");
    let inits: Vec<String> = std::iter::once(ninf.clone()).chain(std::iter::repeat_n(zero.clone(), 1 + nacc)).collect();
    let last_k = e.c_index(sk as i64 - 1);
    let width32 = e.c_i32(32);
    // Keys per shared-memory tile (k and v rows in f32); below UNROLL, k and v are read from
    // global memory inside the loop instead.
    let tile = (SMEM_BYTES / ((d + dv) * 4)).min(TILE_KEYS).min(sk.next_multiple_of(UNROLL)) / UNROLL * UNROLL;
    // KILN_GPU_ATTN_TILE=0 (a debugging knob): no shared-memory tiles.
    let tiles_off = std::env::var("KILN_GPU_ATTN_TILE").is_ok_and(|v| v == "0");
    let smem = if tile >= UNROLL && !tiles_off {
        let wg = |n: usize| format!("memref<{n}xf32, #gpu.address_space<workgroup>>");
        let (ksm, vsm) = (format!("%s{}", e.smem.len()), format!("%s{}", e.smem.len() + 1));
        // 16-byte aligned: the tiles are read and written with 16-byte vector accesses.
        e.smem.push(format!("{ksm} : {} {{llvm.align = 16 : i64}}", wg(tile * d)));
        e.smem.push(format!("{vsm} : {} {{llvm.align = 16 : i64}}", wg(tile * dv)));
        Some((ksm, vsm, wg(tile * d), wg(tile * dv)))
    } else {
        None
    };
    let ex2 = |e: &mut Emitter, x: &str| e.op(&format!("llvm.inline_asm \"ex2.approx.ftz.f32 $0, $1;\", \"=f,f\" {x} : (f32) -> f32"));
    let vt = format!("vector<{vec}xf32>");
    // One step of the online softmax over keys jbase .. jbase + UNROLL (`local`: their first
    // row in the shared-memory tile).
    let update = |e: &mut Emitter, carried: &[String], jbase: &str, local: Option<&str>| -> Result<Vec<String>, GpuError> {
        let (m, l) = (carried[0].clone(), carried[1].clone());
        let mut scores = Vec::new();
        let mut keys = Vec::new();
        for u in 0..UNROLL {
            let cu = e.c_index(u as i64);
            let j = e.op(&format!("arith.addi {jbase}, {cu} : index"));
            let mut ok = e.op(&format!("arith.cmpi slt, {j}, {csk} : index"));
            if let Some(lim) = &row_lim {
                let c = e.op(&format!("arith.cmpi sle, {j}, {lim} : index"));
                ok = e.op(&format!("arith.andi {ok}, {c} : i1"));
            }
            let key = match local {
                Some(lo) => e.op(&format!("arith.addi {lo}, {cu} : index")),
                None => e.op(&format!("arith.minsi {j}, {last_k} : index")),
            };
            let mut dot: Option<String> = None;
            for (c, (ix, _)) in dq.iter().enumerate() {
                let kv = match (&smem, local) {
                    (Some((ksm, _, kt, _)), Some(_)) => {
                        let cd = e.c_index(d as i64);
                        let r0 = e.op(&format!("arith.muli {key}, {cd} : index"));
                        let off = e.op(&format!("arith.addi {r0}, {} : index", ix.lanes[0]));
                        let x = e.op(&format!("vector.load {ksm}[{off}] : {kt}, {vt}"));
                        (0..vec).map(|l| e.op(&format!("vector.extract {x}[{l}] : f32 from {vt}"))).collect::<Vec<_>>()
                    }
                    _ => {
                        let idx = at(e, &uni(&key, vec), ix, &ks);
                        e.value(k, &idx)?
                    }
                };
                for (a, b) in qv[c].iter().zip(&kv) {
                    dot = Some(match dot {
                        None => e.op(&format!("arith.mulf {a}, {b} : f32")),
                        Some(acc) => {
                            let p = e.op(&format!("arith.mulf {a}, {b} fastmath<contract> : f32"));
                            e.op(&format!("arith.addf {acc}, {p} fastmath<contract> : f32"))
                        }
                    });
                }
            }
            let mut s = dot.expect("d > 0");
            let mut off = g / 2;
            while off > 0 {
                let o = e.c_i32(off as i64);
                let (x, p) = (e.fresh(), e.fresh());
                e.line(&format!("{x}, {p} = gpu.shuffle xor {s}, {o}, {width32} : f32"));
                s = e.op(&format!("arith.addf {s}, {x} : f32"));
                off /= 2;
            }
            let s = e.op(&format!("arith.select {ok}, {s}, {ninf} : f32"));
            scores.push(s);
            keys.push(key);
        }
        let mut mt = m.clone();
        for s in &scores {
            mt = e.op(&format!("arith.maximumf {mt}, {s} : f32"));
        }
        let is_ninf = e.op(&format!("arith.cmpf oeq, {mt}, {ninf} : f32"));
        let msafe = e.op(&format!("arith.select {is_ninf}, {zero}, {mt} : f32"));
        let dm = e.op(&format!("arith.subf {m}, {msafe} : f32"));
        let corr = ex2(e, &dm);
        let mut ps = Vec::new();
        let mut lsum = e.op(&format!("arith.mulf {l}, {corr} : f32"));
        for s in &scores {
            let x = e.op(&format!("arith.subf {s}, {msafe} : f32"));
            let p = ex2(e, &x);
            lsum = e.op(&format!("arith.addf {lsum}, {p} : f32"));
            ps.push(p);
        }
        let mut next = vec![mt, lsum];
        for (c, (ix, _)) in dvv.iter().enumerate() {
            let mut acc: Vec<String> = (0..vec).map(|j| e.op(&format!("arith.mulf {}, {corr} : f32", carried[2 + c * vec + j]))).collect();
            for (u, p) in ps.iter().enumerate() {
                let vv = match (&smem, local) {
                    (Some((_, vsm, _, vtt)), Some(_)) => {
                        let cd = e.c_index(dv as i64);
                        let r0 = e.op(&format!("arith.muli {}, {cd} : index", keys[u]));
                        let off = e.op(&format!("arith.addi {r0}, {} : index", ix.lanes[0]));
                        let x = e.op(&format!("vector.load {vsm}[{off}] : {vtt}, {vt}"));
                        (0..vec).map(|l| e.op(&format!("vector.extract {x}[{l}] : f32 from {vt}"))).collect::<Vec<_>>()
                    }
                    _ => {
                        let idx = at(e, &uni(&keys[u], vec), ix, &vs);
                        e.value(v, &idx)?
                    }
                };
                for j in 0..vec {
                    let x = e.op(&format!("arith.mulf {p}, {} fastmath<contract> : f32", vv[j]));
                    acc[j] = e.op(&format!("arith.addf {}, {x} fastmath<contract> : f32", acc[j]));
                }
            }
            next.extend(acc);
        }
        Ok(next)
    };
    // `res:N = scf.for iv = lo to hi step st iter_args(state = init)`; returns (res, iv, state).
    let open_loop = |e: &mut Emitter, lo: &str, hi: &str, st: &str, init: &[String]| -> (String, String, Vec<String>) {
        let (res, iv) = (e.fresh(), e.fresh());
        let state: Vec<String> = (0..init.len()).map(|_| e.fresh()).collect();
        let args: Vec<String> = state.iter().zip(init).map(|(a, b)| format!("{a} = {b}")).collect();
        e.line(&format!("{res}:{} = scf.for {iv} = {lo} to {hi} step {st} iter_args({}) -> ({types}) {{", init.len(), args.join(", ")));
        e.indent += 1;
        (res, iv, state)
    };
    let close_loop = |e: &mut Emitter, next: &[String]| {
        e.line(&format!("scf.yield {} : {types}", next.join(", ")));
        e.indent -= 1;
        e.line("}");
    };
    let res = if let Some((ksm, vsm, kt, vtt)) = &smem {
        // Tiles of `tile` keys: the block loads k and v rows into shared memory together (every
        // load of a tile in flight at once), then each row group walks the tile.
        let ctile = e.c_index(tile as i64);
        let (res, ts, state) = open_loop(&mut e, &c0, &ub, &ctile, &inits);
        for (node, width, sm, ty, shape) in [(k, d, ksm, kt, &ks), (v, dv, vsm, vtt, &vs)] {
            let per_row = width / vec;
            let groups = tile * per_row;
            for it in 0..groups.div_ceil(THREADS) {
                let off = e.c_index((it * THREADS) as i64);
                let gi = e.op(&format!("arith.addi {tid}, {off} : index"));
                let lastg = e.c_index(groups as i64 - 1);
                let gic = e.op(&format!("arith.minui {gi}, {lastg} : index"));
                let cpr = e.c_index(per_row as i64);
                let jj = e.op(&format!("arith.divui {gic}, {cpr} : index"));
                let cg = e.op(&format!("arith.remui {gic}, {cpr} : index"));
                let col = e.op(&format!("arith.muli {cg}, {cvec} : index"));
                let j = e.op(&format!("arith.addi {ts}, {jj} : index"));
                let jc = e.op(&format!("arith.minsi {j}, {last_k} : index"));
                let lanes = (0..vec)
                    .map(|l| {
                        let cl = e.c_index(l as i64);
                        if l == 0 { col.clone() } else { e.op(&format!("arith.addi {col}, {cl} : index")) }
                    })
                    .collect();
                let form = if vec > 1 { Form::Contig { aligned: true } } else { Form::Uniform { mult: true } };
                let idx = at(&mut e, &uni(&jc, vec), &Ix { lanes, form }, shape);
                let vals = e.value(node, &idx)?;
                let cw = e.c_index(width as i64);
                let r0 = e.op(&format!("arith.muli {jj}, {cw} : index"));
                let at_sm = e.op(&format!("arith.addi {r0}, {col} : index"));
                let x = e.op(&format!("vector.from_elements {} : {vt}", vals.join(", ")));
                e.line(&format!("vector.store {x}, {sm}[{at_sm}] : {ty}, {vt}"));
            }
        }
        e.line("gpu.barrier");
        let rem = e.op(&format!("arith.subi {ub}, {ts} : index"));
        let ib = e.op(&format!("arith.minsi {rem}, {ctile} : index"));
        let (ires, tt, istate) = open_loop(&mut e, &c0, &ib, &cu, &state);
        let jbase = e.op(&format!("arith.addi {ts}, {tt} : index"));
        let next = update(&mut e, &istate, &jbase, Some(&tt))?;
        close_loop(&mut e, &next);
        e.line("gpu.barrier");
        let inner: Vec<String> = (0..inits.len()).map(|i| format!("{ires}#{i}")).collect();
        close_loop(&mut e, &inner);
        res
    } else {
        let (res, t, state) = open_loop(&mut e, &c0, &ub, &cu, &inits);
        let next = update(&mut e, &state, &t, None)?;
        close_loop(&mut e, &next);
        res
    };
    // Values computed inside the loops are out of scope now.
    e.memo.clear();
    let carried: Vec<String> = (0..inits.len()).map(|i| format!("{res}#{i}")).collect();
    let one = e.c_f32(1.0);
    let inv = e.op(&format!("arith.divf {one}, {} : f32", carried[1]));
    let out_arg = body.inputs().len();
    let out_shape = body.node(body.outputs()[0]).shape.clone();
    for (c, (ix, ok)) in dvv.into_iter().enumerate() {
        let vals: Vec<String> = (0..vec).map(|j| e.op(&format!("arith.mulf {}, {inv} : f32", carried[2 + c * vec + j]))).collect();
        let idx = at(&mut e, &uni(&row, vec), &ix, &an.shape);
        let oidx = match &perm {
            None => idx,
            Some(p) => p.iter().map(|&a| idx[a].clone()).collect(),
        };
        let cond = e.op(&format!("arith.andi {row_ok}, {ok} : i1"));
        e.line(&format!("scf.if {cond} {{"));
        e.indent += 1;
        e.store(out_arg, an.dtype, &out_shape, &oidx, &vals);
        e.indent -= 1;
        e.line("}");
    }
    let attrs = format!("known_block_size = array<i32: {THREADS}, 1, 1>");
    let max_elements = args.iter().map(|a| a.1).max().unwrap_or(0);
    Ok(super::EmittedKernel {
        symbol: symbol.into(),
        func: e.finish(symbol, &attrs),
        grid: [sq.div_ceil(rows) as u32, batch as u32, 1],
        block: [THREADS as u32, 1, 1],
        max_elements,
    })
}

/// Whether `id`'s value is a movement (or cast) chain over `body`'s nodes that the attention
/// kernel can read through index maps.
pub(crate) fn is_index_map(body: &Graph, id: NodeId) -> bool {
    matches!(body.node(id).op, Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. } | Op::Expand { .. } | Op::Cast { .. })
}

/// An attention kernel's body taken apart: what both attention emitters (this SIMT kernel and
/// the tensor-core one in `flash.rs`) start from.
pub(crate) struct AttnBody {
    /// The `FlashAttention` node.
    pub an: ir::Node,
    /// The permute the root applies to the attention's output, if any.
    pub perm: Option<Vec<usize>>,
    pub causal: bool,
    pub scale: ir::Scalar,
    pub q: NodeId,
    pub k: NodeId,
    pub v: NodeId,
    pub qs: Shape,
    pub ks: Shape,
    pub vs: Shape,
    /// The rank of every operand and of the output.
    pub r: usize,
    pub sq: usize,
    pub sk: usize,
    pub d: usize,
    pub dv: usize,
    /// The output's leading (batch) dims.
    pub batch_shape: Shape,
}

/// Takes apart `body`, whose single output is a `FlashAttention` node or a `Permute` of it.
pub(crate) fn attention_body(symbol: &str, body: &Graph) -> Result<AttnBody, GpuError> {
    let unsupported = |reason: String| GpuError::Unsupported { kernel: symbol.into(), reason };
    let root = body.outputs()[0];
    let (attn, perm) = match &body.node(root).op {
        Op::FlashAttention { .. } => (root, None),
        Op::Permute { perm } => (body.node(root).inputs[0], Some(perm.clone())),
        op => return Err(unsupported(format!("an attention kernel rooted at `{}`", op.name()))),
    };
    let an = body.node(attn).clone();
    let Op::FlashAttention { causal, scale } = an.op else {
        return Err(unsupported("an attention kernel without a flash_attention node".into()));
    };
    let (q, k, v) = (an.inputs[0], an.inputs[1], an.inputs[2]);
    let (qs, ks, vs) = (body.node(q).shape.clone(), body.node(k).shape.clone(), body.node(v).shape.clone());
    let r = an.shape.rank();
    if r < 2 || qs.rank() != r || ks.rank() != r || vs.rank() != r {
        return Err(unsupported(format!("attention over operands of ranks {}, {}, {}", qs.rank(), ks.rank(), vs.rank())));
    }
    let (sq, d) = (qs.dims()[r - 2], qs.dims()[r - 1]);
    let (sk, dv) = (ks.dims()[r - 2], vs.dims()[r - 1]);
    let batch_shape = Shape::new(an.shape.dims()[..r - 2].iter().copied());
    Ok(AttnBody { an, perm, causal, scale, q, k, v, qs, ks, vs, r, sq, sk, d, dv, batch_shape })
}
