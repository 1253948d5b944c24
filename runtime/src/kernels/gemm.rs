//! Batched f32 matmul on strided views through the `gemm` crate.

use super::{batch_offsets, SendPtr};
use crate::GemmStep;
use gemm::Parallelism;
use rayon::prelude::*;

/// Runs `c = a @ b` for every batch index. `base(i)` is the f32 base pointer of buffer `i`.
///
/// # Safety
/// The views must lie inside their buffers, and `c` must not overlap `a` or `b`.
pub unsafe fn run(step: &GemmStep, base: &dyn Fn(u32) -> *mut f32) {
    let (a0, b0, c0) = (SendPtr(base(step.a.buffer)), SendPtr(base(step.b.buffer)), SendPtr(base(step.c.buffer)));
    let offs = batch_offsets(&step.batch, &[&step.a.batch_strides, &step.b.batch_strides, &step.c.batch_strides]);
    let count = offs[0].len();
    let threads = rayon::current_num_threads();
    let flops = step.m * step.n * step.k;
    let one = |bi: usize, par: Parallelism| {
        // SAFETY: offsets stay within the buffers (checked when the artifact was built).
        unsafe {
            gemm::gemm(
                step.m,
                step.n,
                step.k,
                c0.get().offset(step.c.offset + offs[2][bi]),
                step.c.col_stride,
                step.c.row_stride,
                false,
                a0.get().offset(step.a.offset + offs[0][bi]),
                step.a.col_stride,
                step.a.row_stride,
                b0.get().offset(step.b.offset + offs[1][bi]),
                step.b.col_stride,
                step.b.row_stride,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        }
    };
    if count >= threads && flops < (1 << 22) && threads > 1 {
        (0..count).into_par_iter().for_each(|bi| one(bi, Parallelism::None));
    } else {
        let par = if flops >= (1 << 15) && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        for bi in 0..count {
            one(bi, par);
        }
    }
}
