//! What runs a region on PyTorch's memory.
//!
//! With the `kiln` feature (the default): the graph compiled by [`kiln::compile`] for the
//! backend the Python side asks for (the device of the region's tensors). Without it (a
//! build against a facade crate that lacks the pipeline): the reference interpreter.

#[cfg(feature = "kiln")]
pub use with_kiln::Engine;
#[cfg(not(feature = "kiln"))]
pub use interp_only::Engine;

#[cfg(feature = "kiln")]
mod with_kiln {
    use ir::DType;
    use kiln::{Backend, Compiled, Config, HostTensor};
    use runtime::{TensorMut, TensorRef};

    pub struct Engine {
        compiled: Compiled,
    }

    fn backend_of(name: &str) -> Result<Backend, String> {
        Backend::parse(name).ok_or_else(|| format!("unknown backend {name:?} (expected auto, cpu, cuda or interp)"))
    }

    impl Engine {
        /// Compiles `graph` with the `KILN_*` configuration, for `backend` when given.
        pub fn compile(graph: ir::Graph, backend: Option<&str>) -> Result<Engine, String> {
            let mut config = Config::from_env().map_err(|e| e.to_string())?;
            if let Some(b) = backend {
                config.backend = backend_of(b)?;
            }
            let compiled = kiln::compile(&graph, &config).map_err(|e| e.to_string())?;
            Ok(Engine { compiled })
        }

        /// # Safety
        /// Each pointer must address a live, contiguous buffer of its spec's dtype and shape;
        /// outputs must not overlap inputs or each other.
        /// On the CUDA backend the pointers are device addresses and the graph is enqueued on
        /// `stream` (PyTorch's current stream), with no copies.
        pub unsafe fn run(&self, in_specs: &[(DType, Vec<usize>)], ins: &[usize], out_specs: &[(DType, Vec<usize>)], outs: &[usize], stream: Option<u64>) -> Result<(), String> {
            match self.compiled.backend() {
                Backend::Cuda => {
                    let ins: Vec<u64> = ins.iter().map(|&p| p as u64).collect();
                    let outs: Vec<u64> = outs.iter().map(|&p| p as u64).collect();
                    // SAFETY: forwarded from the caller's contract (device addresses of live
                    // PyTorch tensors of the region's types, kept alive by the caller).
                    unsafe { self.compiled.run_device(&ins, &outs, stream) }.map_err(|e| e.to_string())
                }
                Backend::Cpu => {
                    // SAFETY: forwarded from the caller's contract.
                    let refs: Vec<TensorRef> = in_specs.iter().zip(ins).map(|((d, s), &p)| unsafe { TensorRef::from_raw(*d, s, p as *const u8) }).collect();
                    // SAFETY: forwarded from the caller's contract.
                    let mut muts: Vec<TensorMut> = out_specs.iter().zip(outs).map(|((d, s), &p)| unsafe { TensorMut::from_raw(*d, s, p as *mut u8) }).collect();
                    self.compiled.run_into(&refs, &mut muts).map_err(|e| e.to_string())
                }
                _ => {
                    // the interpreter (an oracle): copy in and out
                    let hosts = in_specs
                        .iter()
                        .zip(ins)
                        .map(|((d, s), &p)| {
                            let n = s.iter().product::<usize>() * d.size_bytes();
                            // SAFETY: forwarded from the caller's contract.
                            let bytes = if n == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(p as *const u8, n) }.to_vec() };
                            HostTensor::new(*d, s.clone(), bytes).map_err(|e| e.to_string())
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let results = self.compiled.run(&hosts).map_err(|e| e.to_string())?;
                    for ((r, (d, s)), &p) in results.iter().zip(out_specs).zip(outs) {
                        let n = s.iter().product::<usize>() * d.size_bytes();
                        if r.bytes.len() != n {
                            return Err(format!("output of {} bytes where {n} were expected", r.bytes.len()));
                        }
                        if n > 0 {
                            // SAFETY: forwarded from the caller's contract.
                            unsafe { std::ptr::copy_nonoverlapping(r.bytes.as_ptr(), p as *mut u8, n) };
                        }
                    }
                    Ok(())
                }
            }
        }

        pub fn summary(&self) -> String {
            self.compiled.summary()
        }

        pub fn kernels_text(&self) -> String {
            self.compiled.kernel_graph().to_string()
        }

        pub fn n_kernels(&self) -> usize {
            self.compiled.launches_per_call()
        }

        pub fn backend_name(&self) -> &'static str {
            match self.compiled.backend() {
                Backend::Cpu => "cpu",
                Backend::Cuda => "cuda",
                Backend::Interpreter => "interp",
                Backend::Auto => "auto",
            }
        }
    }
}

#[cfg(not(feature = "kiln"))]
mod interp_only {
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
        pub unsafe fn run(&self, in_specs: &[(DType, Vec<usize>)], ins: &[usize], out_specs: &[(DType, Vec<usize>)], outs: &[usize], _stream: Option<u64>) -> Result<(), String> {
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
}
