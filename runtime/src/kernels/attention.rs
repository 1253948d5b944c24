//! Flash attention on the CPU: tiled, online softmax, f32. Never materializes `s_q x s_k`.
//!
//! Each task owns a block of `ROWS` query rows of one (batch, head) and streams key/value
//! blocks of `KEYS` rows: the block's scores `Q K^T` are one small GEMM (the `gemm` crate)
//! into a `ROWS x KEYS` tile, the online-softmax update runs vectorized over the tile (an
//! inline polynomial `exp`, AVX2 + FMA when the host has them), and `P V` accumulates into
//! the block's output rows with a second GEMM. Causal blocks past the diagonal are skipped;
//! the diagonal block is masked in the tile. Tasks run in parallel over (batch, query block).

use super::{batch_offsets, SendPtr};
use crate::AttentionStep;
use gemm::Parallelism;
use rayon::prelude::*;

const ROWS: usize = 128;
const KEYS: usize = 512;

/// Per-task scratch: the score tile, the output accumulator and the scaled query block.
struct Tiles {
    scores: Vec<f32>,
    acc: Vec<f32>,
    q: Vec<f32>,
}

/// # Safety
/// The views must lie inside their buffers, and `o` must not overlap `q`, `k` or `v`.
pub unsafe fn run(step: &AttentionStep, base: &dyn Fn(u32) -> *mut f32) {
    let ptrs = [base(step.q.buffer), base(step.k.buffer), base(step.v.buffer), base(step.o.buffer)].map(SendPtr);
    let views = [&step.q, &step.k, &step.v, &step.o];
    let offs = batch_offsets(&step.batch, &views.map(|v| v.batch_strides.as_slice()));
    let count = offs[0].len();
    let blocks = step.sq.div_ceil(ROWS);
    let s = step;
    let avx2 = has_avx2_fma();
    let task = |t: &mut Tiles, task: usize| {
        let (bi, blk) = (task / blocks, task % blocks);
        let at = |p: usize, off: isize| -> *mut f32 {
            // SAFETY: base offsets are within the buffers (checked at artifact build).
            unsafe { ptrs[p].get().offset(views[p].offset + offs[p][bi] + off) }
        };
        let r0 = blk * ROWS;
        let rows = ROWS.min(s.sq - r0);
        let (q, k, v, o) = (&s.q, &s.k, &s.v, &s.o);
        // The query block, contiguous and pre-scaled.
        for r in 0..rows {
            for c in 0..s.d {
                // SAFETY: in bounds as above.
                t.q[r * s.d + c] = unsafe { *at(0, (r0 + r) as isize * q.row_stride + c as isize * q.col_stride) } * s.scale as f32;
            }
        }
        let mut m = [f32::NEG_INFINITY; ROWS];
        let mut l = [0f32; ROWS];
        t.acc[..rows * s.dv].fill(0.0);
        let shift = s.sk as isize - s.sq as isize;
        // One past the last key any row of this block may see.
        let kend = if s.causal { ((r0 + rows) as isize + shift).clamp(0, s.sk as isize) as usize } else { s.sk };
        let mut kb = 0;
        while kb < kend {
            let keys = KEYS.min(kend - kb);
            // SAFETY: the tile holds ROWS x KEYS; the views hold these rows (checked at load).
            unsafe {
                gemm::gemm(
                    rows,
                    keys,
                    s.d,
                    t.scores.as_mut_ptr(),
                    1,
                    KEYS as isize,
                    false,
                    t.q.as_ptr(),
                    1,
                    s.d as isize,
                    at(1, kb as isize * k.row_stride),
                    k.row_stride,
                    k.col_stride,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            let limits: [usize; ROWS] = std::array::from_fn(|r| {
                if !s.causal || r >= rows {
                    return keys;
                }
                ((r0 + r) as isize + shift - kb as isize + 1).clamp(0, keys as isize) as usize
            });
            let update = UpdateArgs { scores: &mut t.scores, acc: &mut t.acc, m: &mut m, l: &mut l, rows, keys, dv: s.dv, limits: &limits };
            if avx2 {
                // SAFETY: the host has AVX2 and FMA (checked above).
                unsafe { update_avx2(update) }
            } else {
                update_generic(update)
            }
            // SAFETY: as for the score GEMM; acc holds ROWS x dv.
            unsafe {
                gemm::gemm(
                    rows,
                    s.dv,
                    keys,
                    t.acc.as_mut_ptr(),
                    1,
                    s.dv as isize,
                    true,
                    t.scores.as_ptr(),
                    1,
                    KEYS as isize,
                    at(2, kb as isize * v.row_stride),
                    v.col_stride,
                    v.row_stride,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            kb += keys;
        }
        for r in 0..rows {
            // A row that sees no key gives NaN (0/0), as PyTorch does.
            let inv = 1.0 / l[r];
            for c in 0..s.dv {
                let val = if l[r] == 0.0 { f32::NAN } else { t.acc[r * s.dv + c] * inv };
                // SAFETY: each task writes only its own rows of o.
                unsafe { *at(3, (r0 + r) as isize * o.row_stride + c as isize * o.col_stride) = val };
            }
        }
    };
    let init = || Tiles { scores: vec![0f32; ROWS * KEYS], acc: vec![0f32; ROWS * s.dv], q: vec![0f32; ROWS * s.d] };
    if count * blocks == 1 || rayon::current_num_threads() == 1 {
        let mut t = init();
        (0..count * blocks).for_each(|i| task(&mut t, i));
    } else {
        (0..count * blocks).into_par_iter().for_each_init(init, task);
    }
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One key block's online-softmax update: the tile's scores become probabilities
/// `exp(s - m_new)` (masked keys 0), and each row's running max `m`, sum `l` and accumulator
/// are rescaled to the new max.
struct UpdateArgs<'a> {
    scores: &'a mut [f32],
    acc: &'a mut [f32],
    m: &'a mut [f32; ROWS],
    l: &'a mut [f32; ROWS],
    rows: usize,
    keys: usize,
    dv: usize,
    limits: &'a [usize; ROWS],
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_avx2(a: UpdateArgs) {
    update_generic(a)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn update_avx2(a: UpdateArgs) {
    update_generic(a)
}

#[inline(always)]
fn update_generic(a: UpdateArgs) {
    for r in 0..a.rows {
        let row = &mut a.scores[r * KEYS..r * KEYS + a.keys];
        let limit = a.limits[r];
        row[limit..].fill(f32::NEG_INFINITY);
        let bm = max_of(&row[..limit]);
        if bm == f32::NEG_INFINITY {
            // No key of this block is visible to the row (or all scores are -inf).
            row.fill(0.0);
            continue;
        }
        let mnew = if a.m[r] > bm { a.m[r] } else { bm };
        let corr = exp(a.m[r] - mnew);
        let sum = exp_shifted_sum(row, mnew);
        a.l[r] = a.l[r] * corr + sum;
        a.m[r] = mnew;
        if corr != 1.0 {
            for x in &mut a.acc[r * a.dv..(r + 1) * a.dv] {
                *x *= corr;
            }
        }
    }
}

/// Max of a slice in eight lanes (so it vectorizes); NaN if any element is NaN.
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut nan = false;
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            nan |= c[i].is_nan();
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    for &x in tail {
        nan |= x.is_nan();
        lanes[0] = if x > lanes[0] { x } else { lanes[0] };
    }
    if nan {
        return f32::NAN;
    }
    lanes.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// `x = exp(x - m)` in place; returns the sum (eight lanes, so it vectorizes).
#[inline(always)]
fn exp_shifted_sum(xs: &mut [f32], m: f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        for i in 0..8 {
            let e = exp(c[i] - m);
            c[i] = e;
            lanes[i] += e;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp(*x - m);
        sum += *x;
    }
    sum + lanes.iter().sum::<f32>()
}

/// Cephes `expf` without branches (the same algorithm as the LLVM backend's inline `exp`):
/// about 1 ulp; 0 below -104, inf above 88.8, NaN kept.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const HI: f32 = 88.8;
    const LO: f32 = -104.0;
    const MAGIC: f32 = 12582912.0;
    let xc = if x > HI { HI } else { x };
    let xc = if xc < LO { LO } else { xc };
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = n * -0.693359375 + xc;
    let r = n * 2.12194440e-4 + r;
    let mut p = 1.9875691500E-4f32;
    for c in [1.3981999507E-3, 8.3334519073E-3, 4.1665795894E-2, 1.6666665459E-1, 5.0000001201E-1] {
        p = p * r + c;
    }
    let p = p * (r * r) + r + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((n2.wrapping_add(127) as u32) << 23);
    p * s1 * s2
}

#[cfg(test)]
mod tests {
    use super::exp;

    #[test]
    fn exp_matches_f64() {
        for i in 0..200_001 {
            let x = -110.0 + 200.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            if (want as f32).is_normal() {
                assert!(((got - want) / want).abs() < 1e-6, "exp({x}) = {got}, want {want}");
            } else {
                assert!((got - want).abs() < 3e-45 || (want as f32).is_infinite() && got.is_infinite(), "exp({x}) = {got}, want {want}");
            }
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }
}
