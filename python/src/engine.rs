//! What runs a region: the compiled pipeline, or the reference interpreter reading and
//! writing PyTorch's memory directly.

use ir::interp::Value;
use ir::{DType, Graph, KernelGraph};

pub enum Engine {
    /// The f64 reference interpreter (`KILN_BACKEND=interp`).
    Interp { graph: Graph, kernels: KernelGraph },
}

impl Engine {
    /// Compiles `graph` for `backend` (`None`: `KILN_BACKEND`, default auto).
    pub fn compile(graph: Graph, backend: Option<&str>) -> Result<Engine, String> {
        let backend = match backend {
            Some(b) => b.to_string(),
            None => std::env::var("KILN_BACKEND").unwrap_or_default(),
        };
        match backend.as_str() {
            "" | "auto" | "cpu" | "interp" | "interpreter" => {
                ir::verify::verify(&graph).map_err(|e| e.to_string())?;
                let kernels = KernelGraph::one_per_op(&graph);
                Ok(Engine::Interp { graph, kernels })
            }
            other => Err(format!("backend {other:?} is not available in this build of the Python module")),
        }
    }

    /// # Safety
    /// Each pointer must address a live, contiguous buffer of its spec's dtype and shape;
    /// outputs must not overlap inputs or each other.
    pub unsafe fn run(&self, in_specs: &[(DType, Vec<usize>)], ins: &[usize], out_specs: &[(DType, Vec<usize>)], outs: &[usize]) -> Result<(), String> {
        match self {
            Engine::Interp { graph, .. } => {
                let values = in_specs
                    .iter()
                    .zip(ins)
                    // SAFETY: forwarded from the caller's contract.
                    .map(|((d, s), &p)| unsafe { read(*d, s, p) })
                    .collect::<Result<Vec<_>, _>>()?;
                let results = ir::interp::run(graph, &values).map_err(|e| e.to_string())?;
                for ((v, (d, s)), &p) in results.iter().zip(out_specs).zip(outs) {
                    // SAFETY: forwarded from the caller's contract.
                    unsafe { write(*d, s, v, p) };
                }
                Ok(())
            }
        }
    }

    pub fn summary(&self) -> String {
        match self {
            Engine::Interp { graph, kernels } => {
                format!("@{} on the reference interpreter: {} ops -> {} kernels", graph.name(), graph.len(), kernels.kernels.len())
            }
        }
    }

    pub fn kernels_text(&self) -> String {
        match self {
            Engine::Interp { kernels, .. } => kernels.to_string(),
        }
    }

    pub fn n_kernels(&self) -> usize {
        match self {
            Engine::Interp { kernels, .. } => kernels.kernels.len(),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Engine::Interp { .. } => "interp",
        }
    }
}

/// # Safety
/// `p` addresses `numel(shape)` contiguous elements of `dtype`.
unsafe fn read(dtype: DType, shape: &[usize], p: usize) -> Result<Value, String> {
    let n: usize = shape.iter().product();
    let data: Vec<f64> = unsafe {
        match dtype {
            DType::F32 => std::slice::from_raw_parts(p as *const f32, n).iter().map(|&x| x as f64).collect(),
            DType::F16 => std::slice::from_raw_parts(p as *const u16, n).iter().map(|&x| half::f16::from_bits(x).to_f64()).collect(),
            DType::BF16 => std::slice::from_raw_parts(p as *const u16, n).iter().map(|&x| half::bf16::from_bits(x).to_f64()).collect(),
            DType::I32 => std::slice::from_raw_parts(p as *const i32, n).iter().map(|&x| x as f64).collect(),
            DType::I64 => std::slice::from_raw_parts(p as *const i64, n).iter().map(|&x| x as f64).collect(),
            DType::Bool => std::slice::from_raw_parts(p as *const u8, n).iter().map(|&x| (x != 0) as u8 as f64).collect(),
        }
    };
    Value::new(dtype, shape.to_vec(), data).map_err(|e| e.to_string())
}

/// # Safety
/// `p` addresses `numel(shape)` writable contiguous elements of `dtype`.
unsafe fn write(dtype: DType, shape: &[usize], v: &Value, p: usize) {
    let n: usize = shape.iter().product::<usize>().min(v.data.len());
    unsafe {
        match dtype {
            DType::F32 => {
                let o = std::slice::from_raw_parts_mut(p as *mut f32, n);
                o.iter_mut().zip(&v.data).for_each(|(o, &x)| *o = x as f32);
            }
            DType::F16 => {
                let o = std::slice::from_raw_parts_mut(p as *mut u16, n);
                o.iter_mut().zip(&v.data).for_each(|(o, &x)| *o = half::f16::from_f64(x).to_bits());
            }
            DType::BF16 => {
                let o = std::slice::from_raw_parts_mut(p as *mut u16, n);
                o.iter_mut().zip(&v.data).for_each(|(o, &x)| *o = half::bf16::from_f64(x).to_bits());
            }
            DType::I32 => {
                let o = std::slice::from_raw_parts_mut(p as *mut i32, n);
                o.iter_mut().zip(&v.data).for_each(|(o, &x)| *o = x as i32);
            }
            DType::I64 => {
                let o = std::slice::from_raw_parts_mut(p as *mut i64, n);
                o.iter_mut().zip(&v.data).for_each(|(o, &x)| *o = x as i64);
            }
            DType::Bool => {
                let o = std::slice::from_raw_parts_mut(p as *mut u8, n);
                o.iter_mut().zip(&v.data).for_each(|(o, &x)| *o = (x != 0.0) as u8);
            }
        }
    }
}
