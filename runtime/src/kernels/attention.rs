//! Flash attention on the CPU: tiled, online softmax, f32. Never materializes `s_q x s_k`;
//! each task owns a block of query rows and streams key/value blocks through the cache.

use super::{batch_offsets, SendPtr};
use crate::AttentionStep;
use rayon::prelude::*;

const ROWS: usize = 32;
const KEYS: usize = 128;

/// # Safety
/// The views must lie inside their buffers, and `o` must not overlap `q`, `k` or `v`.
pub unsafe fn run(step: &AttentionStep, base: &dyn Fn(u32) -> *mut f32) {
    let ptrs = [base(step.q.buffer), base(step.k.buffer), base(step.v.buffer), base(step.o.buffer)].map(SendPtr);
    let views = [&step.q, &step.k, &step.v, &step.o];
    let offs = batch_offsets(&step.batch, &views.map(|v| v.batch_strides.as_slice()));
    let count = offs[0].len();
    let blocks = step.sq.div_ceil(ROWS);
    let s = step;
    (0..count * blocks).into_par_iter().for_each_init(
        || (vec![0f32; ROWS * KEYS], vec![0f32; ROWS * s.dv], vec![0f32; ROWS * s.d]),
        |(scores, acc, qrow), task| {
            let (bi, blk) = (task / blocks, task % blocks);
            let at = |p: usize, off: isize| -> *mut f32 {
                // SAFETY: base offsets are within the buffers (checked at artifact build).
                unsafe { ptrs[p].get().offset(views[p].offset + offs[p][bi] + off) }
            };
            let r0 = blk * ROWS;
            let rows = ROWS.min(s.sq - r0);
            let (q, k, v, o) = (s.q.clone(), s.k.clone(), s.v.clone(), s.o.clone());
            // Gather the query block contiguously, pre-scaled.
            for r in 0..rows {
                for t in 0..s.d {
                    // SAFETY: in bounds as above.
                    qrow[r * s.d + t] = unsafe { *at(0, (r0 + r) as isize * q.row_stride + t as isize * q.col_stride) } * s.scale as f32;
                }
            }
            let mut m = [f32::NEG_INFINITY; ROWS];
            let mut l = [0f32; ROWS];
            acc[..rows * s.dv].fill(0.0);
            let shift = s.sk as isize - s.sq as isize;
            // Last key any row of this block may see.
            let kend = if s.causal { ((r0 + rows) as isize - 1 + shift + 1).clamp(0, s.sk as isize) as usize } else { s.sk };
            let mut kb = 0;
            while kb < kend {
                let keys = KEYS.min(kend - kb);
                for r in 0..rows {
                    let i = (r0 + r) as isize;
                    let limit = if s.causal { (i + shift - kb as isize + 1).clamp(0, keys as isize) as usize } else { keys };
                    let sc = &mut scores[r * KEYS..r * KEYS + keys];
                    let qr = &qrow[r * s.d..(r + 1) * s.d];
                    let mut bm = f32::NEG_INFINITY;
                    for (j, sj) in sc.iter_mut().enumerate().take(limit) {
                        let kp = at(1, (kb + j) as isize * k.row_stride);
                        let mut dot = 0f32;
                        if k.col_stride == 1 {
                            // SAFETY: d contiguous elements of key row kb + j.
                            let kr = unsafe { std::slice::from_raw_parts(kp, s.d) };
                            for t in 0..s.d {
                                dot += qr[t] * kr[t];
                            }
                        } else {
                            for (t, &qv) in qr.iter().enumerate() {
                                // SAFETY: in bounds.
                                dot += qv * unsafe { *kp.offset(t as isize * k.col_stride) };
                            }
                        }
                        *sj = dot;
                        bm = bm.max(dot);
                    }
                    if limit == 0 {
                        continue;
                    }
                    let mnew = m[r].max(bm);
                    let corr = (m[r] - mnew).exp();
                    let a = &mut acc[r * s.dv..(r + 1) * s.dv];
                    if corr != 1.0 {
                        for x in a.iter_mut() {
                            *x *= corr;
                        }
                    }
                    let mut sum = 0f32;
                    for (j, &sj) in sc.iter().enumerate().take(limit) {
                        let p = (sj - mnew).exp();
                        sum += p;
                        let vp = at(2, (kb + j) as isize * v.row_stride);
                        if v.col_stride == 1 {
                            // SAFETY: dv contiguous elements of value row kb + j.
                            let vr = unsafe { std::slice::from_raw_parts(vp, s.dv) };
                            for t in 0..s.dv {
                                a[t] += p * vr[t];
                            }
                        } else {
                            for (t, x) in a.iter_mut().enumerate() {
                                // SAFETY: in bounds.
                                *x += p * unsafe { *vp.offset(t as isize * v.col_stride) };
                            }
                        }
                    }
                    l[r] = l[r] * corr + sum;
                    m[r] = mnew;
                }
                kb += keys;
            }
            for r in 0..rows {
                // A row that sees no key gives NaN (0/0), as PyTorch does.
                let inv = 1.0 / l[r];
                for t in 0..s.dv {
                    let val = if l[r] == 0.0 { f32::NAN } else { acc[r * s.dv + t] * inv };
                    // SAFETY: each task writes only its own rows of o.
                    unsafe { *at(3, (r0 + r) as isize * o.row_stride + t as isize * o.col_stride) = val };
                }
            }
        },
    );
}
