//! Library kernels the executor calls: matmul (the `gemm` crate) and flash attention.

pub mod attention;
pub mod gemm;

/// A raw pointer that may cross threads; the executor guarantees disjoint writes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// Offsets of every batch index (row-major over `batch`) under each view's batch strides.
pub(crate) fn batch_offsets(batch: &[usize], strides: &[&[isize]]) -> Vec<Vec<isize>> {
    let count: usize = batch.iter().product();
    let mut out = vec![Vec::with_capacity(count); strides.len()];
    let mut idx = vec![0usize; batch.len()];
    for _ in 0..count {
        for (o, s) in out.iter_mut().zip(strides) {
            o.push(idx.iter().zip(s.iter()).map(|(&i, &st)| i as isize * st).sum());
        }
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < batch[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}
