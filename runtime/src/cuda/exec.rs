//! `CudaExecutor`: runs a [`CudaArtifact`] on one device, step by step or as one CUDA graph.
//!
//! - The PTX module is loaded once per device and process (a cache keyed by the PTX text).
//! - Intermediates live in one arena allocated at construction (size from liveness planning).
//! - [`CudaExecutor::run_graph`] captures every step into one CUDA graph on the first call and
//!   replays it. When the caller's input/output addresses change, the steps are re-captured and
//!   the existing executable graph is updated in place (`cuGraphExecUpdate`), which keeps the
//!   caller's memory where it is: no copy into static buffers. Replays with unchanged addresses
//!   (what PyTorch's caching allocator mostly gives) cost one `cuGraphLaunch`.
//! - Work goes on the executor's own stream, or on a stream the caller passes (e.g. PyTorch's
//!   current stream).

use super::gemm::{Blas, Plan};
use super::{CudaArtifact, CudaError, GpuLocation, GpuStep};
use cudarc::driver::result;
use cudarc::driver::sys::{self, CUdeviceptr, CUfunction, CUgraphExec, CUmodule, CUstream};
use cudarc::driver::{CudaContext, CudaStream, DriverError};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, OnceLock};

/// Whether a CUDA driver library can be loaded on this machine (never panics).
pub fn driver_present() -> bool {
    unsafe { sys::is_culib_present() }
}

fn driver(what: &str) -> impl Fn(DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver { what: what.to_string(), message: format!("{e:?}") }
}

fn is_oom(e: &DriverError) -> bool {
    e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY
}

/// Loaded modules per (device, PTX text hash): PTX is JIT-compiled to machine code once per
/// device and process. Modules stay loaded for the life of the process.
fn module_cache() -> &'static Mutex<HashMap<(usize, u64), usize>> {
    static CACHE: OnceLock<Mutex<HashMap<(usize, u64), usize>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Device memory owned by Rust (for tests, benchmarks and callers without their own allocator).
pub struct DeviceTensor {
    ctx: Arc<CudaContext>,
    pub ptr: CUdeviceptr,
    pub bytes: usize,
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceTensor({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}

impl DeviceTensor {
    pub fn upload(&self, data: &[u8]) -> Result<(), CudaError> {
        assert!(data.len() <= self.bytes, "upload of {} bytes into a {}-byte tensor", data.len(), self.bytes);
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        unsafe { result::memcpy_htod_sync(self.ptr, data) }.map_err(driver("host-to-device copy"))
    }

    pub fn download(&self) -> Result<Vec<u8>, CudaError> {
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        let mut out = vec![0u8; self.bytes];
        unsafe { result::memcpy_dtoh_sync(&mut out, self.ptr) }.map_err(driver("device-to-host copy"))?;
        Ok(out)
    }

    /// Fills every byte with `byte` (0xFF makes every float element a NaN: poisoning).
    pub fn fill(&self, byte: u8) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        unsafe { result::memset_d8_sync(self.ptr, byte, self.bytes) }.map_err(driver("memset"))
    }
}

impl Drop for DeviceTensor {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

struct Captured {
    exec: CUgraphExec,
    addresses: Vec<CUdeviceptr>,
}

/// Runs a [`CudaArtifact`] on one CUDA device.
pub struct CudaExecutor {
    artifact: CudaArtifact,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Per step: the kernel function (launch steps only).
    funcs: Vec<Option<CUfunction>>,
    plans: Vec<Option<Plan>>,
    blas: Option<Blas>,
    arena: CUdeviceptr,
    workspace: CUdeviceptr,
    graph: Option<Captured>,
    /// Counters: graph captures, in-place updates, full re-instantiations.
    pub captures: usize,
    pub updates: usize,
}

impl std::fmt::Debug for CudaExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.artifact.summary())
    }
}

impl CudaExecutor {
    /// Loads `artifact` on device `ordinal`: module, functions, arena, GEMM plans.
    pub fn new(artifact: CudaArtifact, ordinal: usize) -> Result<CudaExecutor, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice { ordinal, message: format!("{e:?}") })?;
        let stream = ctx.new_stream().map_err(driver("creating a stream"))?;
        let module = load_module(&artifact, ordinal)?;
        let mut funcs = Vec::with_capacity(artifact.steps.len());
        for step in &artifact.steps {
            funcs.push(match step {
                GpuStep::Launch(l) => {
                    let name = CString::new(l.symbol.clone()).map_err(|_| CudaError::BadArtifact {
                        artifact: artifact.name.clone(),
                        reason: format!("kernel symbol {:?} holds a NUL byte", l.symbol),
                    })?;
                    let f = unsafe { result::module::get_function(module, name) }.map_err(|e| CudaError::MissingKernel {
                        kernel: l.kernel.clone(),
                        symbol: l.symbol.clone(),
                        message: format!("{e:?}"),
                    })?;
                    Some(f)
                }
                _ => None,
            });
        }
        let alloc = |bytes: usize, what: &str| -> Result<CUdeviceptr, CudaError> {
            unsafe { result::malloc_sync(bytes.max(256)) }.map_err(|e| {
                if is_oom(&e) {
                    CudaError::OutOfMemory { what: what.into(), bytes, message: format!("{e:?}") }
                } else {
                    driver("cuMemAlloc")(e)
                }
            })
        };
        let arena = alloc(artifact.arena_bytes, &format!("the arena of @{}", artifact.name))?;
        let has_gemm = artifact.steps.iter().any(|s| matches!(s, GpuStep::Gemm(_)));
        let (workspace, blas) = if has_gemm {
            let bytes = 32 << 20;
            let w = alloc(bytes, "the cuBLASLt workspace")?;
            (w, Some(Blas::new(w, bytes)?))
        } else {
            (0, None)
        };
        let mut plans = Vec::with_capacity(artifact.steps.len());
        for step in &artifact.steps {
            plans.push(match (step, &blas) {
                (GpuStep::Gemm(g), Some(b)) => Some(Plan::new(b, g)?),
                _ => None,
            });
        }
        Ok(CudaExecutor { artifact, ctx, stream, funcs, plans, blas, arena, workspace, graph: None, captures: 0, updates: 0 })
    }

    pub fn artifact(&self) -> &CudaArtifact {
        &self.artifact
    }

    /// The executor's own stream.
    pub fn stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Allocates device memory on the executor's device.
    pub fn alloc(&self, bytes: usize) -> Result<DeviceTensor, CudaError> {
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| {
            if is_oom(&e) {
                CudaError::OutOfMemory { what: "a device tensor".into(), bytes, message: format!("{e:?}") }
            } else {
                driver("cuMemAlloc")(e)
            }
        })?;
        Ok(DeviceTensor { ctx: self.ctx.clone(), ptr, bytes })
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver("stream synchronize"))
    }

    fn check(&self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr]) -> Result<(), CudaError> {
        let a = &self.artifact;
        if inputs.len() != a.inputs.len() {
            return Err(CudaError::InputCount { expected: a.inputs.len(), got: inputs.len() });
        }
        if outputs.len() != a.outputs.len() {
            return Err(CudaError::OutputCount { expected: a.outputs.len(), got: outputs.len() });
        }
        Ok(())
    }

    fn address(&self, buffer: u32, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr]) -> CUdeviceptr {
        match self.artifact.buffers[buffer as usize].location {
            GpuLocation::Input(i) => inputs[i],
            GpuLocation::Output(i) => outputs[i],
            GpuLocation::Arena { offset } => self.arena + offset as u64,
        }
    }

    /// Enqueues every step on `stream`.
    unsafe fn enqueue(&self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr], stream: CUstream) -> Result<(), CudaError> {
        for (i, step) in self.artifact.steps.iter().enumerate() {
            match step {
                GpuStep::Launch(l) => {
                    let mut addrs: Vec<CUdeviceptr> = l.args.iter().map(|&b| self.address(b, inputs, outputs)).collect();
                    let mut params: Vec<*mut c_void> = addrs.iter_mut().map(|a| a as *mut CUdeviceptr as *mut c_void).collect();
                    let f = self.funcs[i].expect("launch steps have a function");
                    let (g, b) = (l.grid, l.block);
                    unsafe { result::launch_kernel(f, (g[0], g[1], g[2]), (b[0], b[1], b[2]), 0, stream, &mut params) }
                        .map_err(|e| CudaError::Launch { kernel: l.kernel.clone(), message: format!("{e:?}") })?;
                }
                GpuStep::Gemm(g) => {
                    let plan = self.plans[i].as_ref().expect("gemm steps have a plan");
                    let blas = self.blas.as_ref().expect("an executor with gemms has a cuBLASLt handle");
                    let (a, b, c) = (self.address(g.a.buffer, inputs, outputs), self.address(g.b.buffer, inputs, outputs), self.address(g.c, inputs, outputs));
                    let bias = g.bias.map(|x| self.address(x, inputs, outputs));
                    unsafe { plan.enqueue(blas, a, b, c, bias, stream)? };
                }
                GpuStep::Copy { from, to } => {
                    let bytes = self.artifact.buffers[*from as usize].bytes();
                    let (src, dst) = (self.address(*from, inputs, outputs), self.address(*to, inputs, outputs));
                    unsafe { result::memcpy_dtod_async(dst, src, bytes, stream) }
                        .map_err(|e| CudaError::Launch { kernel: format!("copy b{from} -> b{to}"), message: format!("{e:?}") })?;
                }
            }
        }
        Ok(())
    }

    /// Runs every step once on `stream` (the executor's own when `None`), without a graph.
    /// Returns once the work is enqueued.
    ///
    /// # Safety
    /// `inputs` and `outputs` must be device addresses on this executor's device holding the
    /// artifact's input and output types, and stay valid until the work completes.
    pub unsafe fn run(&mut self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr], stream: Option<CUstream>) -> Result<(), CudaError> {
        self.check(inputs, outputs)?;
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        unsafe { self.enqueue(inputs, outputs, stream.unwrap_or(self.stream.cu_stream())) }
    }

    /// Runs the whole artifact as one CUDA graph launch on `stream` (the executor's own when
    /// `None`). The first call captures; later calls with the same addresses only launch; new
    /// addresses re-capture and update the executable graph in place.
    ///
    /// # Safety
    /// As [`CudaExecutor::run`].
    pub unsafe fn run_graph(&mut self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr], stream: Option<CUstream>) -> Result<(), CudaError> {
        self.check(inputs, outputs)?;
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        let same = matches!(&self.graph, Some(g) if g.addresses.len() == inputs.len() + outputs.len()
            && g.addresses[..inputs.len()] == *inputs && g.addresses[inputs.len()..] == *outputs);
        if !same {
            unsafe { self.capture(inputs, outputs)? };
        }
        let exec = self.graph.as_ref().expect("captured above").exec;
        let s = stream.unwrap_or(self.stream.cu_stream());
        unsafe { sys::cuGraphLaunch(exec, s) }
            .result()
            .map_err(|e| CudaError::Launch { kernel: format!("graph of @{}", self.artifact.name), message: format!("{e:?}") })
    }

    unsafe fn capture(&mut self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr]) -> Result<(), CudaError> {
        let s = self.stream.cu_stream();
        unsafe {
            result::stream::begin_capture(s, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(driver("beginning a stream capture"))?;
            let enq = self.enqueue(inputs, outputs, s);
            let graph = result::stream::end_capture(s).map_err(driver("ending a stream capture"));
            enq?;
            let graph = graph?;
            self.captures += 1;
            let mut updated = false;
            if let Some(old) = &self.graph {
                let mut info: sys::CUgraphExecUpdateResultInfo = std::mem::zeroed();
                updated = sys::cuGraphExecUpdate_v2(old.exec, graph, &mut info).result().is_ok();
            }
            let exec = if updated {
                self.updates += 1;
                self.graph.take().expect("updated an existing graph").exec
            } else {
                if let Some(old) = self.graph.take() {
                    let _ = result::graph::exec_destroy(old.exec);
                }
                let mut exec: CUgraphExec = std::ptr::null_mut();
                sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0).result().map_err(driver("instantiating a CUDA graph"))?;
                exec
            };
            let _ = result::graph::destroy(graph);
            self.graph = Some(Captured { exec, addresses: inputs.iter().chain(outputs).copied().collect() });
        }
        Ok(())
    }

    /// Times `reps` runs with CUDA events (milliseconds each), flushing L2 before each by
    /// writing a 256 MiB scratch buffer. `graph`: replay the CUDA graph instead of launching.
    pub fn time_runs(&mut self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr], reps: usize, graph: bool) -> Result<Vec<f64>, CudaError> {
        let flush = self.alloc(256 << 20)?;
        let s = self.stream.cu_stream();
        let ev = |_: ()| result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(driver("creating an event"));
        let (start, end) = (ev(())?, ev(())?);
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps + 3 {
            unsafe {
                result::memset_d8_async(flush.ptr, 0x5a, flush.bytes, s).map_err(driver("memset"))?;
                result::event::record(start, s).map_err(driver("event record"))?;
                if graph {
                    self.run_graph(inputs, outputs, None)?;
                } else {
                    self.run(inputs, outputs, None)?;
                }
                result::event::record(end, s).map_err(driver("event record"))?;
                result::event::synchronize(end).map_err(driver("event synchronize"))?;
                times.push(result::event::elapsed(start, end).map_err(driver("event elapsed"))? as f64);
            }
        }
        unsafe {
            let _ = result::event::destroy(start);
            let _ = result::event::destroy(end);
        }
        Ok(times.split_off(3))
    }

    /// Device-to-device copy bandwidth in bytes/s (read + written), median of `reps` copies of
    /// `bytes` with L2 flushed.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64, CudaError> {
        let (a, b) = (self.alloc(bytes)?, self.alloc(bytes)?);
        a.fill(1)?;
        let flush = self.alloc(256 << 20)?;
        let s = self.stream.cu_stream();
        let ev = || result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(driver("creating an event"));
        let (start, end) = (ev()?, ev()?);
        let mut times = Vec::new();
        for _ in 0..reps + 2 {
            unsafe {
                result::memset_d8_async(flush.ptr, 0x5a, flush.bytes, s).map_err(driver("memset"))?;
                result::event::record(start, s).map_err(driver("event record"))?;
                result::memcpy_dtod_async(b.ptr, a.ptr, bytes, s).map_err(driver("copy"))?;
                result::event::record(end, s).map_err(driver("event record"))?;
                result::event::synchronize(end).map_err(driver("event synchronize"))?;
                times.push(result::event::elapsed(start, end).map_err(driver("event elapsed"))? as f64);
            }
        }
        let mut t = times.split_off(2);
        t.sort_by(f64::total_cmp);
        Ok(2.0 * bytes as f64 / (t[t.len() / 2] * 1e-3))
    }
}

fn load_module(artifact: &CudaArtifact, ordinal: usize) -> Result<CUmodule, CudaError> {
    if artifact.ptx.is_empty() {
        return Ok(std::ptr::null_mut());
    }
    let key = (ordinal, hash(&artifact.ptx));
    let mut cache = module_cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&m) = cache.get(&key) {
        return Ok(m as CUmodule);
    }
    let src = CString::new(artifact.ptx.clone())
        .map_err(|_| CudaError::ModuleLoad { artifact: artifact.name.clone(), message: "the PTX holds a NUL byte".into() })?;
    let m = unsafe { result::module::load_data(src.as_ptr() as *const c_void) }
        .map_err(|e| CudaError::ModuleLoad { artifact: artifact.name.clone(), message: format!("{e:?}") })?;
    cache.insert(key, m as usize);
    Ok(m)
}

impl Drop for CudaExecutor {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        let _ = self.stream.synchronize();
        unsafe {
            if let Some(g) = self.graph.take() {
                let _ = result::graph::exec_destroy(g.exec);
            }
            self.plans.clear();
            self.blas = None;
            let _ = result::free_sync(self.arena);
            if self.workspace != 0 {
                let _ = result::free_sync(self.workspace);
            }
        }
    }
}
