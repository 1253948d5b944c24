//! cuBLASLt GEMMs, planned once per step (layouts, descriptor, algorithm) so that a call only
//! enqueues `cublasLtMatmul`.
//!
//! cuBLASLt is column-major; a row-major `C[m,n] = A[m,k] B[k,n]` is computed as the
//! column-major `C^T[n,m] = B^T[n,k] A^T[k,m]`: cuBLASLt's "A" is Kiln's `b`, its "B" is Kiln's
//! `a`, and the bias vector (one value per column-major row) is Kiln's per-column bias.

use super::{CudaError, GemmActivation, GemmStep};
use cudarc::cublaslt::{result, sys};
use cudarc::driver::sys::{CUdeviceptr, CUstream};
use ir::DType;
use std::ffi::c_void;
use std::mem::size_of;

/// One cuBLASLt handle and its workspace, shared by every GEMM of an executor.
pub(crate) struct Blas {
    handle: sys::cublasLtHandle_t,
    pub(crate) workspace: CUdeviceptr,
    pub(crate) workspace_bytes: usize,
}

impl Blas {
    pub(crate) fn new(workspace: CUdeviceptr, workspace_bytes: usize) -> Result<Blas, CudaError> {
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::Gemm { kernel: "-".into(), message: "libcublasLt could not be loaded".into() });
        }
        let handle = result::create_handle().map_err(|e| CudaError::Gemm { kernel: "-".into(), message: format!("{e:?}") })?;
        Ok(Blas { handle, workspace, workspace_bytes })
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// A planned GEMM.
pub(crate) struct Plan {
    kernel: String,
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
    /// The heuristic's candidates, best guess first ([`Plan::tune`] times them).
    candidates: Vec<sys::cublasLtMatmulAlgo_t>,
}

/// How many of the heuristic's algorithms [`Plan::tune`] times.
const CANDIDATES: usize = 8;

fn data_type(d: DType) -> Option<sys::cudaDataType> {
    Some(match d {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        _ => return None,
    })
}

impl Plan {
    pub(crate) fn new(blas: &Blas, step: &GemmStep) -> Result<Plan, CudaError> {
        let err = |e: result::CublasError| CudaError::Gemm { kernel: step.kernel.clone(), message: format!("{e:?}") };
        let ty = data_type(step.dtype).ok_or_else(|| CudaError::Gemm {
            kernel: step.kernel.clone(),
            message: format!("cuBLASLt has no {} GEMM", step.dtype),
        })?;
        let (m, n, k) = (step.m as u64, step.n as u64, step.k as u64);
        // cuBLASLt A := Kiln b (n x k column-major when not transposed).
        let (a_rows, a_cols, lda) = if step.b.transposed { (k, n, k as i64) } else { (n, k, n as i64) };
        let (b_rows, b_cols, ldb) = if step.a.transposed { (m, k, m as i64) } else { (k, m, k as i64) };
        unsafe {
            let la = result::create_matrix_layout(ty, a_rows, a_cols, lda).map_err(err)?;
            let lb = result::create_matrix_layout(ty, b_rows, b_cols, ldb).map_err(err)?;
            let lc = result::create_matrix_layout(ty, n, m, n as i64).map_err(err)?;
            if step.batch > 1 {
                let count = step.batch as i32;
                let strides = [step.b.batch_stride, step.a.batch_stride, (m * n) as i64];
                for (l, stride) in [la, lb, lc].into_iter().zip(strides) {
                    result::set_matrix_layout_attribute(
                        l,
                        sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                        &count as *const i32 as *const c_void,
                        size_of::<i32>(),
                    )
                    .map_err(err)?;
                    result::set_matrix_layout_attribute(
                        l,
                        sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                        &stride as *const i64 as *const c_void,
                        size_of::<i64>(),
                    )
                    .map_err(err)?;
                }
            }
            let desc = result::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
                .map_err(err)?;
            let set = |attr: sys::cublasLtMatmulDescAttributes_t, v: *const c_void, size: usize| {
                result::set_matmul_desc_attribute(desc, attr, v, size)
            };
            let ta = step.b.transposed as i32;
            let tb = step.a.transposed as i32;
            set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &ta as *const i32 as _, size_of::<i32>())
                .map_err(err)?;
            set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB, &tb as *const i32 as _, size_of::<i32>())
                .map_err(err)?;
            use sys::cublasLtEpilogue_t::*;
            let epilogue = match (step.bias.is_some(), step.activation) {
                (false, None) => CUBLASLT_EPILOGUE_DEFAULT,
                (true, None) => CUBLASLT_EPILOGUE_BIAS,
                (false, Some(GemmActivation::Relu)) => CUBLASLT_EPILOGUE_RELU,
                (true, Some(GemmActivation::Relu)) => CUBLASLT_EPILOGUE_RELU_BIAS,
                (false, Some(GemmActivation::GeluTanh)) => CUBLASLT_EPILOGUE_GELU,
                (true, Some(GemmActivation::GeluTanh)) => CUBLASLT_EPILOGUE_GELU_BIAS,
            };
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epilogue as *const _ as _,
                size_of::<sys::cublasLtEpilogue_t>(),
            )
            .map_err(err)?;
            if step.bias.is_some() {
                // A placeholder address for the heuristic; the real one is set per call.
                let p: CUdeviceptr = blas.workspace;
                set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p as *const _ as _, size_of::<CUdeviceptr>())
                    .map_err(err)?;
            }
            let pref = result::create_matmul_pref().map_err(err)?;
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &blas.workspace_bytes as *const usize as _,
                size_of::<usize>(),
            )
            .map_err(err)?;
            let mut found: Vec<sys::cublasLtMatmulHeuristicResult_t> = vec![std::mem::zeroed(); CANDIDATES];
            let mut count = 0i32;
            let status = sys::cublasLtMatmulAlgoGetHeuristic(
                blas.handle,
                desc,
                la,
                lb,
                lc,
                lc,
                pref,
                CANDIDATES as i32,
                found.as_mut_ptr(),
                &mut count,
            );
            let _ = result::destroy_matmul_pref(pref);
            status.result().map_err(err)?;
            let candidates: Vec<sys::cublasLtMatmulAlgo_t> =
                found.iter().take(count.max(0) as usize).filter(|h| h.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).map(|h| h.algo).collect();
            let Some(&algo) = candidates.first() else {
                return Err(err(result::CublasError(sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED)));
            };
            // Skinny GEMMs (few output tiles, long k) fill the chip only when k is split: the
            // heuristic's first algorithm with k split 2..16 ways joins the candidates where
            // cuBLASLt accepts it. `KILN_GEMM_SPLITK=0` leaves them out: a split GEMM is two
            // kernels (the reduction after it), which a CUDA graph pays a launch gap for and
            // which cannot take a programmatic edge (docs/gpu-gemm.md).
            let mut candidates = candidates;
            let split_k = !std::env::var("KILN_GEMM_SPLITK").is_ok_and(|v| v.trim() == "0");
            if split_k && m * n <= 256 * 4096 && k >= 512 {
                for split in [2i32, 4, 8, 16] {
                    if k / (split as u64) < 128 {
                        break;
                    }
                    let mut a = algo;
                    let scheme = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
                    let ok = sys::cublasLtMatmulAlgoConfigSetAttribute(
                        &mut a,
                        sys::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
                        &split as *const i32 as *const c_void,
                        size_of::<i32>(),
                    )
                    .result()
                    .is_ok()
                        && sys::cublasLtMatmulAlgoConfigSetAttribute(
                            &mut a,
                            sys::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
                            &scheme as *const u32 as *const c_void,
                            size_of::<u32>(),
                        )
                        .result()
                        .is_ok();
                    let mut check: sys::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
                    if ok
                        && sys::cublasLtMatmulAlgoCheck(blas.handle, desc, la, lb, lc, lc, &a, &mut check).result().is_ok()
                        && check.workspaceSize <= blas.workspace_bytes
                    {
                        candidates.push(a);
                    }
                }
            }
            Ok(Plan { kernel: step.kernel.clone(), desc, layouts: [la, lb, lc], algo, candidates })
        }
    }

    /// Times each candidate algorithm on the given (scratch) addresses, L2 flushed before each
    /// run by a memset of `flush`, and keeps the fastest; returns its index among the
    /// candidates. A candidate that fails to run is skipped.
    ///
    /// # Safety
    /// As [`Plan::enqueue`]; `flush` must be device memory of `flush.1` bytes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn tune(
        &mut self,
        blas: &Blas,
        a: CUdeviceptr,
        b: CUdeviceptr,
        c: CUdeviceptr,
        bias: Option<CUdeviceptr>,
        residual: Option<CUdeviceptr>,
        stream: CUstream,
        flush: (CUdeviceptr, usize),
    ) -> Result<usize, CudaError> {
        use cudarc::driver::result as drv;
        if self.candidates.len() < 2 {
            return Ok(0);
        }
        let derr = |e: cudarc::driver::DriverError| CudaError::Gemm { kernel: self.kernel.clone(), message: format!("timing: {e:?}") };
        let ev = || drv::event::create(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (start, end) = (ev().map_err(derr)?, ev().map_err(derr)?);
        let mut best = (f32::INFINITY, 0);
        for (i, &algo) in self.candidates.clone().iter().enumerate() {
            self.algo = algo;
            let mut t = f32::INFINITY;
            let mut ok = true;
            for rep in 0..4 {
                unsafe {
                    drv::memset_d8_async(flush.0, 0x5a, flush.1, stream).map_err(derr)?;
                    drv::event::record(start, stream).map_err(derr)?;
                    if self.enqueue(blas, a, b, c, bias, residual, stream).is_err() {
                        ok = false;
                        break;
                    }
                    drv::event::record(end, stream).map_err(derr)?;
                    drv::event::synchronize(end).map_err(derr)?;
                    if rep > 0 {
                        t = t.min(drv::event::elapsed(start, end).map_err(derr)?);
                    }
                }
            }
            if ok && t < best.0 {
                best = (t, i);
            }
        }
        unsafe {
            let _ = drv::stream::synchronize(stream);
            let _ = drv::event::destroy(start);
            let _ = drv::event::destroy(end);
        }
        self.algo = self.candidates[best.1];
        Ok(best.1)
    }

    /// The index among the candidates of the algorithm in use (tuning result to share).
    pub(crate) fn set_candidate(&mut self, i: usize) {
        if let Some(&a) = self.candidates.get(i) {
            self.algo = a;
        }
    }

    /// Enqueues `c = a @ b (+ residual) (+ bias) (act)` on `stream`.
    ///
    /// # Safety
    /// The addresses must hold the planned shapes on the handle's device.
    pub(crate) unsafe fn enqueue(
        &self,
        blas: &Blas,
        a: CUdeviceptr,
        b: CUdeviceptr,
        c: CUdeviceptr,
        bias: Option<CUdeviceptr>,
        residual: Option<CUdeviceptr>,
        stream: CUstream,
    ) -> Result<(), CudaError> {
        let err = |e: result::CublasError| CudaError::Gemm { kernel: self.kernel.clone(), message: format!("{e:?}") };
        // The residual is cuBLASLt's C operand (same layout as D), added with beta = 1.
        let (alpha, beta) = (1.0f32, if residual.is_some() { 1.0f32 } else { 0.0f32 });
        let cin = residual.unwrap_or(c);
        unsafe {
            if let Some(p) = bias {
                result::set_matmul_desc_attribute(
                    self.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &p as *const CUdeviceptr as _,
                    size_of::<CUdeviceptr>(),
                )
                .map_err(err)?;
            }
            let [la, lb, lc] = self.layouts;
            result::matmul(
                blas.handle,
                self.desc,
                &alpha as *const f32 as _,
                &beta as *const f32 as _,
                b as *const c_void,
                la,
                a as *const c_void,
                lb,
                cin as *const c_void,
                lc,
                c as *mut c_void,
                lc,
                &self.algo,
                blas.workspace as *mut c_void,
                blas.workspace_bytes,
                stream as sys::cudaStream_t,
            )
            .map_err(err)
        }
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        unsafe {
            let _ = result::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = result::destroy_matrix_layout(l);
            }
        }
    }
}
