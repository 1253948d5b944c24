//! Batched f32 matmul on strided views through the `gemm` crate.

use super::batch_offsets;
use crate::GemmStep;
use ir::DType;

/// A typed element pointer that may cross threads (writes are disjoint per batch index).
#[derive(Clone, Copy)]
struct Typed<T>(*mut T);
unsafe impl<T> Send for Typed<T> {}
unsafe impl<T> Sync for Typed<T> {}
impl<T> Typed<T> {
    fn get(self) -> *mut T {
        self.0
    }
}
use gemm::Parallelism;
use rayon::prelude::*;

/// Runs `c = a @ b` for every batch index. `base(i)` is the f32 base pointer of buffer `i`.
///
/// # Safety
/// The views must lie inside their buffers, and `c` must not overlap `a` or `b`.
pub unsafe fn run(step: &GemmStep, base: &dyn Fn(u32) -> *mut f32) {
    // SAFETY: forwarded; the buffers hold `step.dtype` elements (checked at load).
    unsafe {
        match step.dtype {
            DType::F16 => run_typed::<gemm::f16>(step, base, gemm::f16::ZERO, gemm::f16::ONE),
            _ => run_typed::<f32>(step, base, 0.0, 1.0),
        }
    }
}

/// # Safety
/// As [`run`], with buffers of `T`.
unsafe fn run_typed<T: Copy + Send + Sync + 'static>(step: &GemmStep, base: &dyn Fn(u32) -> *mut f32, zero: T, unit: T) {
    let ptr = |b: u32| base(b) as *mut T;
    let (a0, b0, c0) = (Typed(ptr(step.a.buffer)), Typed(ptr(step.b.buffer)), Typed(ptr(step.c.buffer)));
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
                zero,
                unit,
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
