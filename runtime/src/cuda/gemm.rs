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
}

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
            let heuristic = result::get_matmul_algo_heuristic(blas.handle, desc, la, lb, lc, lc, pref);
            let _ = result::destroy_matmul_pref(pref);
            let heuristic = heuristic.map_err(err)?;
            Ok(Plan { kernel: step.kernel.clone(), desc, layouts: [la, lb, lc], algo: heuristic.algo })
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
