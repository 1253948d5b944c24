//! `CudaExecutor`: runs a [`CudaArtifact`] on one device, step by step or as one CUDA graph.
//!
//! - The PTX module is loaded once per device and process (a cache keyed by the PTX text).
//! - Intermediates live in one arena allocated at construction (size from liveness planning).
//! - [`CudaExecutor::run_graph`] builds one CUDA graph of every step on the first call and
//!   replays it: a kernel node per launch step, a child-graph node per cuBLASLt GEMM or copy
//!   (captured alone). When the caller's input/output addresses change, only the nodes of the
//!   steps that touch a moved buffer are rebound in the executable graph: kernel nodes by
//!   `cuGraphExecKernelNodeSetParams`, GEMM and copy nodes by re-capturing that one step and
//!   `cuGraphExecChildGraphNodeSetParams`. The caller's memory stays where it is: no copy into
//!   static buffers (what makes torch.compile's reduce-overhead slow on large inputs). Replays
//!   with unchanged addresses cost one `cuGraphLaunch`.
//! - Work goes on the executor's own stream, or on a stream the caller passes (e.g. PyTorch's
//!   current stream).

use super::gemm::{Blas, Plan};
use super::{CudaArtifact, CudaError, GpuLocation, GpuStep};
use cudarc::driver::result;
use cudarc::driver::sys::{self, CUdeviceptr, CUfunction, CUgraph, CUgraphExec, CUgraphNode, CUmodule, CUstream};
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
/// device and process. Modules stay loaded for the life of the process, and so does the
/// context they live in: each entry holds the context, because releasing the last reference
/// to a primary context resets it and unloads every module (a later executor of the same
/// PTX then got a dead handle: CUDA_ERROR_INVALID_HANDLE, found by GPU fuzzing).
type ModuleCache = HashMap<(usize, u64), (usize, Arc<CudaContext>)>;

fn module_cache() -> &'static Mutex<ModuleCache> {
    static CACHE: OnceLock<Mutex<ModuleCache>> = OnceLock::new();
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
    /// Copies `data` in; the bytes are on the device when this returns.
    ///
    /// The driver's "synchronous" copy from pageable memory and memset run on the legacy
    /// default stream and may return before the device has finished; executors launch on
    /// non-blocking streams, which do not wait for that stream. So both wait for the context:
    /// a run right after them must see the bytes (without this, GPU fuzzing saw outputs that
    /// are plain copies of an input still holding their poison, the memset landing after the
    /// copy).
    pub fn upload(&self, data: &[u8]) -> Result<(), CudaError> {
        assert!(data.len() <= self.bytes, "upload of {} bytes into a {}-byte tensor", data.len(), self.bytes);
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        unsafe { result::memcpy_htod_sync(self.ptr, data) }.map_err(driver("host-to-device copy"))?;
        result::ctx::synchronize().map_err(driver("waiting for a host-to-device copy"))
    }

    pub fn download(&self) -> Result<Vec<u8>, CudaError> {
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        let mut out = vec![0u8; self.bytes];
        unsafe { result::memcpy_dtoh_sync(&mut out, self.ptr) }.map_err(driver("device-to-host copy"))?;
        Ok(out)
    }

    /// Fills every byte with `byte` (0xFF makes every float element a NaN: poisoning); done
    /// when this returns (see [`DeviceTensor::upload`]).
    pub fn fill(&self, byte: u8) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        unsafe { result::memset_d8_sync(self.ptr, byte, self.bytes) }.map_err(driver("memset"))?;
        result::ctx::synchronize().map_err(driver("waiting for a memset"))
    }
}

impl Drop for DeviceTensor {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// How GEMM steps enter the CUDA graph and how consecutive kernels are chained
/// (`KILN_GPU_PDL`; measured in `docs/gpu.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphMode {
    /// `0`: each GEMM is a child-graph node (its cuBLASLt launch captured alone); plain edges.
    Child,
    /// `flat`: a GEMM whose capture is one kernel becomes a kernel node of the graph itself
    /// (attributes such as the cluster shape copied); plain edges.
    Flat,
    /// `1` (default): as `Flat`, and an edge between two kernel nodes is programmatic
    /// (programmatic dependent launch, sm_90) where the later kernel waits for the earlier one
    /// with `griddepcontrol.wait`: Kiln's sm_90 kernels do so at entry, and a cuBLASLt kernel
    /// is trusted to only when cuBLASLt itself launches it with programmatic stream
    /// serialization. After a Kiln kernel the next one may launch once every block of it has
    /// executed `griddepcontrol.launch_dependents` (right after its wait); after a cuBLASLt
    /// kernel, which does not trigger, once every block of it has started (the
    /// launch-completion port). Either way the next kernel's launch and prologue overlap the
    /// previous kernel's run, and its wait keeps the order of memory.
    Pdl,
}

impl GraphMode {
    /// The mode `KILN_GPU_PDL` names (`0`, `flat`, `1`; unset or anything else: `1`).
    pub fn from_env() -> GraphMode {
        match std::env::var("KILN_GPU_PDL").as_deref() {
            Ok("0") | Ok("off") => GraphMode::Child,
            Ok("flat") => GraphMode::Flat,
            _ => GraphMode::Pdl,
        }
    }

    fn programmatic(self) -> bool {
        self == GraphMode::Pdl
    }
}

/// The executable CUDA graph of every step, and the addresses it was built for.
struct Captured {
    exec: CUgraphExec,
    /// One node per step, in step order (each depends on the one before).
    nodes: Vec<CUgraphNode>,
    /// Per node: a GEMM step inlined as a kernel node (rebound by re-capturing it and copying
    /// the captured kernel's parameters).
    flat: Vec<bool>,
    /// The template graph `exec` was instantiated from (owns `nodes`).
    graph: CUgraph,
    /// Input addresses, then output addresses.
    addresses: Vec<CUdeviceptr>,
}

/// Runs a [`CudaArtifact`] on one CUDA device.
pub struct CudaExecutor {
    artifact: CudaArtifact,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// The artifact's PTX module (null when it has no kernels).
    module: CUmodule,
    /// Per step: the kernel function (launch steps only).
    funcs: Vec<Option<CUfunction>>,
    plans: Vec<Option<Plan>>,
    blas: Option<Blas>,
    arena: CUdeviceptr,
    workspace: CUdeviceptr,
    graph: Option<Captured>,
    /// Counters: executable graphs built, and steps rebound in place to new addresses.
    pub captures: usize,
    pub updates: usize,
    /// Why the last in-place rebinding was refused (the graph was rebuilt instead).
    pub rebind_refused: Option<String>,
    mode: GraphMode,
    /// Per step: a GEMM whose cuBLASLt kernel waits for its predecessor (probed once).
    gemm_waits: Vec<Option<bool>>,
    /// Programmatic edges in the last graph built (a count, for reports and tests).
    pub programmatic_edges: usize,
    /// GEMM steps inlined as kernel nodes in the last graph built.
    pub inlined_gemms: usize,
}

// SAFETY: the raw handles (module functions, cuBLASLt handle and plans, graph exec, device
// pointers) belong to the executor's context, not to a thread: every method that uses them
// binds that context to the calling thread first. `&mut self` (or the caller's `Mutex`) keeps
// one thread at a time on them; cuBLASLt handles may move between threads.
unsafe impl Send for CudaExecutor {}

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
        let module = load_module(&artifact, ordinal, &ctx)?;
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
        if let Some(b) = &blas {
            tune_gemms(&artifact, &mut plans, b, stream.cu_stream(), &alloc)?;
        }
        Ok(CudaExecutor { artifact, ctx, stream, module, funcs, plans, blas, arena, workspace, graph: None, captures: 0, updates: 0, rebind_refused: None, mode: GraphMode::from_env(), gemm_waits: Vec::new(), programmatic_edges: 0, inlined_gemms: 0 })
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

    /// Free and total bytes of device memory on the executor's device (`cuMemGetInfo`).
    pub fn device_memory(&self) -> Result<(usize, usize), CudaError> {
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        result::mem_get_info().map_err(driver("reading device memory"))
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
        for i in 0..self.artifact.steps.len() {
            unsafe { self.enqueue_step(i, inputs, outputs, stream)? };
        }
        Ok(())
    }

    /// Enqueues step `i` on `stream`.
    unsafe fn enqueue_step(&self, i: usize, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr], stream: CUstream) -> Result<(), CudaError> {
        {
            match &self.artifact.steps[i] {
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
                    let residual = g.residual.map(|x| self.address(x, inputs, outputs));
                    unsafe { plan.enqueue(blas, a, b, c, bias, residual, stream)? };
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
    /// `None`). The first call builds the graph; later calls with the same addresses only
    /// launch; new addresses rebind the nodes of the steps that touch them, in place.
    ///
    /// # Safety
    /// As [`CudaExecutor::run`].
    pub unsafe fn run_graph(&mut self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr], stream: Option<CUstream>) -> Result<(), CudaError> {
        self.check(inputs, outputs)?;
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        let addresses: Vec<CUdeviceptr> = inputs.iter().chain(outputs).copied().collect();
        let rebuilt = match &self.graph {
            Some(g) if g.addresses == addresses => false,
            Some(_) => match unsafe { self.rebind(inputs, outputs) } {
                Ok(done) => !done,
                Err(e) => {
                    // Some nodes may already point at the new addresses: never replay it.
                    if let Some(g) = self.graph.take() {
                        unsafe { destroy(g) };
                    }
                    return Err(e);
                }
            },
            None => true,
        };
        if rebuilt {
            unsafe { self.build(inputs, outputs)? };
        }
        let exec = self.graph.as_ref().expect("built above").exec;
        let s = stream.unwrap_or(self.stream.cu_stream());
        unsafe { sys::cuGraphLaunch(exec, s) }
            .result()
            .map_err(|e| CudaError::Launch { kernel: format!("graph of @{}", self.artifact.name), message: format!("{e:?}") })
    }

    /// The kernel parameters of launch step `l` at these addresses: the addresses, and the
    /// pointer array the driver reads them through (it copies both when the call returns).
    fn kernel_params(&self, i: usize, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr], addrs: &mut Vec<CUdeviceptr>, params: &mut Vec<*mut c_void>) -> sys::CUDA_KERNEL_NODE_PARAMS {
        let GpuStep::Launch(l) = &self.artifact.steps[i] else { unreachable!("kernel nodes are launch steps") };
        addrs.clear();
        addrs.extend(l.args.iter().map(|&b| self.address(b, inputs, outputs)));
        params.clear();
        params.extend(addrs.iter_mut().map(|a| a as *mut CUdeviceptr as *mut c_void));
        sys::CUDA_KERNEL_NODE_PARAMS {
            func: self.funcs[i].expect("launch steps have a function"),
            gridDimX: l.grid[0],
            gridDimY: l.grid[1],
            gridDimZ: l.grid[2],
            blockDimX: l.block[0],
            blockDimY: l.block[1],
            blockDimZ: l.block[2],
            sharedMemBytes: 0,
            kernelParams: params.as_mut_ptr(),
            extra: std::ptr::null_mut(),
            kern: std::ptr::null_mut(),
            ctx: self.ctx.cu_ctx(),
        }
    }

    /// Step `i` alone (a GEMM or a copy) captured into a graph of its own.
    unsafe fn capture_step(&self, i: usize, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr]) -> Result<CUgraph, CudaError> {
        let s = self.stream.cu_stream();
        unsafe {
            result::stream::begin_capture(s, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(driver("beginning a stream capture"))?;
            let enq = self.enqueue_step(i, inputs, outputs, s);
            let graph = result::stream::end_capture(s).map_err(driver("ending a stream capture"));
            enq?;
            graph
        }
    }

    /// The graph mode in use (from `KILN_GPU_PDL` at construction).
    pub fn graph_mode(&self) -> GraphMode {
        self.mode
    }

    /// Switches the graph mode; the next `run_graph` builds a new graph.
    pub fn set_graph_mode(&mut self, mode: GraphMode) {
        if mode != self.mode {
            self.mode = mode;
            if let Some(old) = self.graph.take() {
                unsafe { destroy(old) };
            }
        }
    }

    /// Whether cuBLASLt launches GEMM step `i`'s kernel with programmatic stream serialization
    /// (then the kernel waits for its predecessor itself): a capture of some Kiln kernel
    /// followed by the GEMM, read back for a programmatic edge. Nothing runs.
    unsafe fn probe_gemm_waits(&self, i: usize, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr]) -> Result<bool, CudaError> {
        let Some(j) = self.artifact.steps.iter().position(|s| matches!(s, GpuStep::Launch(_))) else { return Ok(false) };
        let s = self.stream.cu_stream();
        let graph = unsafe {
            result::stream::begin_capture(s, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(driver("beginning a stream capture"))?;
            let enq = self.enqueue_step(j, inputs, outputs, s).and_then(|_| self.enqueue_step(i, inputs, outputs, s));
            let graph = result::stream::end_capture(s).map_err(driver("ending a stream capture"));
            enq?;
            graph?
        };
        let mut n = 0usize;
        let mut waits = false;
        unsafe {
            if sys::cuGraphGetEdges_v2(graph, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), &mut n).result().is_ok() && n > 0 {
                let (mut from, mut to) = (vec![std::ptr::null_mut(); n], vec![std::ptr::null_mut(); n]);
                let mut data = vec![std::mem::zeroed::<sys::CUgraphEdgeData>(); n];
                if sys::cuGraphGetEdges_v2(graph, from.as_mut_ptr(), to.as_mut_ptr(), data.as_mut_ptr(), &mut n).result().is_ok() {
                    waits = data[..n].iter().any(|d| d.type_ == sys::CUgraphDependencyType::CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC as u8);
                }
            }
            let _ = result::graph::destroy(graph);
        }
        Ok(waits)
    }

    /// The only node of `child` when it is a kernel node.
    unsafe fn single_kernel(child: CUgraph) -> Option<CUgraphNode> {
        let mut n = 0usize;
        unsafe { sys::cuGraphGetNodes(child, std::ptr::null_mut(), &mut n) }.result().ok()?;
        if n != 1 {
            return None;
        }
        let mut node: CUgraphNode = std::ptr::null_mut();
        unsafe { sys::cuGraphGetNodes(child, &mut node, &mut n) }.result().ok()?;
        let mut ty = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
        unsafe { sys::cuGraphNodeGetType(node, &mut ty) }.result().ok()?;
        (ty == sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL).then_some(node)
    }

    /// Builds and instantiates the graph of every step at these addresses.
    unsafe fn build(&mut self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr]) -> Result<(), CudaError> {
        if let Some(old) = self.graph.take() {
            unsafe { destroy(old) };
        }
        if self.mode.programmatic() && self.gemm_waits.is_empty() {
            let mut w = vec![None; self.artifact.steps.len()];
            for (i, step) in self.artifact.steps.iter().enumerate() {
                if matches!(step, GpuStep::Gemm(_)) {
                    w[i] = Some(unsafe { self.probe_gemm_waits(i, inputs, outputs)? });
                }
            }
            self.gemm_waits = w;
        }
        let order: Vec<usize> = (0..self.artifact.steps.len()).collect();
        let (captured, edges) = unsafe { self.build_graph(&order, inputs, outputs)? };
        let inlined = captured.flat.iter().filter(|&&f| f).count();
        self.graph = Some(captured);
        self.programmatic_edges = edges;
        self.inlined_gemms = inlined;
        self.captures += 1;
        Ok(())
    }

    /// Builds and instantiates a graph of the steps in `order` (a step may repeat), each node
    /// depending on the one before. Returns it and its count of programmatic edges.
    unsafe fn build_graph(&self, order: &[usize], inputs: &[CUdeviceptr], outputs: &[CUdeviceptr]) -> Result<(Captured, usize), CudaError> {
        let what = |step: &str| format!("adding {step} to the CUDA graph of @{}", self.artifact.name);
        let mut graph: CUgraph = std::ptr::null_mut();
        unsafe { sys::cuGraphCreate(&mut graph, 0) }.result().map_err(driver("creating a CUDA graph"))?;
        let mut captured =
            Captured { exec: std::ptr::null_mut(), nodes: Vec::with_capacity(order.len()), flat: Vec::with_capacity(order.len()), graph, addresses: Vec::new() };
        // Kiln's kernels wait for their predecessor when the PTX says so (sm_90 targets).
        let kiln_waits = self.artifact.ptx.contains("griddepcontrol.wait");
        let (mut addrs, mut params) = (Vec::new(), Vec::new());
        let mut edges = 0;
        // Whether the previous node is a kernel node, and one that triggers its dependents
        // (`griddepcontrol.launch_dependents`: Kiln's sm_90 kernels).
        let (mut prev_kernel, mut prev_triggers) = (false, false);
        for &i in order {
            let step = &self.artifact.steps[i];
            let prev = captured.nodes.last().copied();
            let mut node: CUgraphNode = std::ptr::null_mut();
            let (mut is_kernel, mut waits, mut flat) = (false, false, false);
            let added = match step {
                GpuStep::Launch(_) => {
                    let p = self.kernel_params(i, inputs, outputs, &mut addrs, &mut params);
                    (is_kernel, waits) = (true, kiln_waits);
                    unsafe { sys::cuGraphAddKernelNode_v2(&mut node, graph, std::ptr::null(), 0, &p) }.result()
                }
                _ => {
                    let child = match unsafe { self.capture_step(i, inputs, outputs) } {
                        Ok(c) => c,
                        Err(e) => {
                            unsafe { destroy(captured) };
                            return Err(e);
                        }
                    };
                    let inner = if self.mode == GraphMode::Child { None } else { unsafe { Self::single_kernel(child) } };
                    let r = match inner {
                        Some(k) => unsafe {
                            let mut p: sys::CUDA_KERNEL_NODE_PARAMS = std::mem::zeroed();
                            sys::cuGraphKernelNodeGetParams_v2(k, &mut p)
                                .result()
                                .and_then(|_| sys::cuGraphAddKernelNode_v2(&mut node, graph, std::ptr::null(), 0, &p).result())
                                .and_then(|_| sys::cuGraphKernelNodeCopyAttributes(node, k).result())
                        },
                        None => unsafe { sys::cuGraphAddChildGraphNode(&mut node, graph, std::ptr::null(), 0, child) }.result(),
                    };
                    if inner.is_some() {
                        (is_kernel, flat) = (true, true);
                        waits = self.gemm_waits.get(i).copied().flatten().unwrap_or(false);
                    }
                    let _ = unsafe { result::graph::destroy(child) };
                    r
                }
            };
            let linked = added.and_then(|_| {
                let Some(p) = prev else { return Ok(()) };
                let programmatic = self.mode.programmatic() && prev_kernel && is_kernel && waits;
                let mut data: sys::CUgraphEdgeData = unsafe { std::mem::zeroed() };
                if programmatic {
                    data.type_ = sys::CUgraphDependencyType::CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC as u8;
                    // Every block of a triggering kernel triggers right after its wait: waiting
                    // for that (rather than for every block to start) keeps a chain of Kiln
                    // kernels from launching far ahead and filling the SMs with waiting blocks
                    // (measured: 0.587 ms against 0.494 on the all-Kiln GPT-2 graph).
                    data.from_port = if prev_triggers {
                        sys::CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC
                    } else {
                        sys::CU_GRAPH_KERNEL_NODE_PORT_LAUNCH_ORDER
                    } as u8;
                    edges += 1;
                }
                unsafe { sys::cuGraphAddDependencies_v2(graph, &p, &node, &data, 1) }.result()
            });
            if let Err(e) = linked {
                unsafe { destroy(captured) };
                return Err(driver(&what(step.kernel()))(e));
            }
            prev_kernel = is_kernel;
            prev_triggers = kiln_waits && matches!(step, GpuStep::Launch(_));
            captured.nodes.push(node);
            captured.flat.push(flat);
        }
        if let Err(e) = unsafe { sys::cuGraphInstantiateWithFlags(&mut captured.exec, graph, 0) }.result() {
            captured.exec = std::ptr::null_mut();
            unsafe { destroy(captured) };
            return Err(driver("instantiating a CUDA graph")(e));
        }
        captured.addresses = inputs.iter().chain(outputs).copied().collect();
        Ok((captured, edges))
    }

    /// Replays the graph once, L2 flushed before it as in [`CudaExecutor::time_runs`], and
    /// reads back its kernels' trace records (`super::trace`). The artifact must be compiled
    /// with tracing on (`KILN_GPU_TRACE=1`); a replay first builds the graph if needed.
    ///
    /// # Safety
    /// As [`CudaExecutor::run_graph`]: the pointers must be live device buffers of the sizes
    /// `check` verifies.
    pub unsafe fn trace(&mut self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr]) -> Result<super::trace::Trace, CudaError> {
        use super::trace::{Trace, TraceRecord, CAPACITY, COUNT_SYMBOL, LOG_SYMBOL, RECORD_BYTES};
        if self.module.is_null() || !self.artifact.ptx.contains(LOG_SYMBOL) {
            return Err(CudaError::BadArtifact {
                artifact: self.artifact.name.clone(),
                reason: "its kernels were compiled without tracing (KILN_GPU_TRACE=1)".into(),
            });
        }
        unsafe { self.run_graph(inputs, outputs, None)? };
        self.synchronize()?;
        let global = |name: &str| -> Result<(CUdeviceptr, usize), CudaError> {
            let c = CString::new(name).expect("no NUL");
            let (mut ptr, mut bytes) = (0, 0);
            unsafe { sys::cuModuleGetGlobal_v2(&mut ptr, &mut bytes, self.module, c.as_ptr()) }
                .result()
                .map_err(driver("finding the trace buffers"))?;
            Ok((ptr, bytes))
        };
        let (count, _) = global(COUNT_SYMBOL)?;
        let (log, log_bytes) = global(LOG_SYMBOL)?;
        let flush = self.alloc(256 << 20)?;
        let s = self.stream.cu_stream();
        unsafe {
            result::memset_d8_async(flush.ptr, 0x5a, flush.bytes, s).map_err(driver("memset"))?;
            result::memset_d8_async(count, 0, 8, s).map_err(driver("memset"))?;
            result::memset_d8_async(log, 0, log_bytes, s).map_err(driver("memset"))?;
            self.run_graph(inputs, outputs, None)?;
        }
        self.synchronize()?;
        let mut n = [0u64; 1];
        unsafe { result::memcpy_dtoh_sync(&mut n, count) }.map_err(driver("device-to-host copy"))?;
        let kept = (n[0] as usize).min(CAPACITY).min(log_bytes / RECORD_BYTES);
        let mut raw = vec![0u8; kept * RECORD_BYTES];
        unsafe { result::memcpy_dtoh_sync(&mut raw, log) }.map_err(driver("device-to-host copy"))?;
        let records = raw
            .chunks_exact(RECORD_BYTES)
            .map(|c| TraceRecord::from_bytes(c.try_into().expect("chunks of RECORD_BYTES")))
            .collect();
        Ok(Trace { records, dropped: n[0] as usize - kept })
    }

    /// Times step `i` inside a CUDA graph of `copies` back-to-back launches of it (this
    /// executor's graph mode; medians of `reps` replays, L2 flushed before each), in
    /// milliseconds per launch: what the step costs inside the whole graph, its share of the
    /// kernel-boundary gaps included.
    pub fn time_step_in_graph(&mut self, i: usize, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr], copies: usize, reps: usize) -> Result<f64, CudaError> {
        self.check(inputs, outputs)?;
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        let order = vec![i; copies.max(1)];
        let (g, _) = unsafe { self.build_graph(&order, inputs, outputs)? };
        let flush = self.alloc(256 << 20)?;
        let s = self.stream.cu_stream();
        let ev = || result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(driver("creating an event"));
        let (start, end) = (ev()?, ev()?);
        let mut times = Vec::with_capacity(reps);
        let r = (|| -> Result<(), CudaError> {
            for rep in 0..reps + 2 {
                unsafe {
                    result::memset_d8_async(flush.ptr, 0x5a, flush.bytes, s).map_err(driver("memset"))?;
                    result::event::record(start, s).map_err(driver("event record"))?;
                    sys::cuGraphLaunch(g.exec, s).result().map_err(driver("launching a graph"))?;
                    result::event::record(end, s).map_err(driver("event record"))?;
                    result::event::synchronize(end).map_err(driver("event synchronize"))?;
                    if rep >= 2 {
                        times.push(result::event::elapsed(start, end).map_err(driver("event elapsed"))? as f64);
                    }
                }
            }
            Ok(())
        })();
        unsafe {
            let _ = result::event::destroy(start);
            let _ = result::event::destroy(end);
            destroy(g);
        }
        r?;
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2] / copies.max(1) as f64)
    }

    /// Points the nodes of every step that touches a moved input or output at the new
    /// addresses, in the executable graph. Returns false when the driver refuses an update
    /// (the caller then rebuilds the graph).
    unsafe fn rebind(&mut self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr]) -> Result<bool, CudaError> {
        let g = self.graph.as_ref().expect("rebind needs a graph");
        let moved = |b: u32| match self.artifact.buffers[b as usize].location {
            GpuLocation::Input(i) => g.addresses[i] != inputs[i],
            GpuLocation::Output(i) => g.addresses[inputs.len() + i] != outputs[i],
            GpuLocation::Arena { .. } => false,
        };
        let (mut addrs, mut params) = (Vec::new(), Vec::new());
        let mut rebound = 0;
        for (i, step) in self.artifact.steps.iter().enumerate() {
            if !step.buffers().into_iter().any(moved) {
                continue;
            }
            let r = match step {
                GpuStep::Launch(_) => {
                    let p = self.kernel_params(i, inputs, outputs, &mut addrs, &mut params);
                    unsafe { sys::cuGraphExecKernelNodeSetParams_v2(g.exec, g.nodes[i], &p) }.result()
                }
                _ => {
                    let child = unsafe { self.capture_step(i, inputs, outputs)? };
                    let r = if g.flat[i] {
                        // The inlined kernel takes the re-captured kernel's parameters; a
                        // capture that is no longer one kernel rebuilds the graph.
                        match unsafe { Self::single_kernel(child) } {
                            Some(k) => unsafe {
                                let mut p: sys::CUDA_KERNEL_NODE_PARAMS = std::mem::zeroed();
                                sys::cuGraphKernelNodeGetParams_v2(k, &mut p)
                                    .result()
                                    .and_then(|_| sys::cuGraphExecKernelNodeSetParams_v2(g.exec, g.nodes[i], &p).result())
                            },
                            None => Err(DriverError(sys::CUresult::CUDA_ERROR_NOT_SUPPORTED)),
                        }
                    } else {
                        unsafe { sys::cuGraphExecChildGraphNodeSetParams(g.exec, g.nodes[i], child) }.result()
                    };
                    let _ = unsafe { result::graph::destroy(child) };
                    r
                }
            };
            if let Err(e) = r {
                self.rebind_refused = Some(format!("step {i} ({}): {e:?}", step.kernel()));
                return Ok(false);
            }
            rebound += 1;
        }
        self.updates += rebound;
        let g = self.graph.as_mut().expect("rebind needs a graph");
        g.addresses.clear();
        g.addresses.extend(inputs.iter().chain(outputs));
        Ok(true)
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

    /// Times each step alone (CUDA events around it, L2 flushed before it, launched, not in a
    /// graph): the median of `reps` runs per step, in milliseconds. A profile of where a call's
    /// time goes; the sum exceeds a graph replay's time by the launch gaps.
    pub fn time_steps(&mut self, inputs: &[CUdeviceptr], outputs: &[CUdeviceptr], reps: usize) -> Result<Vec<f64>, CudaError> {
        self.check(inputs, outputs)?;
        self.ctx.bind_to_thread().map_err(driver("binding the context"))?;
        let flush = self.alloc(256 << 20)?;
        let s = self.stream.cu_stream();
        let ev = || result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map_err(driver("creating an event"));
        let (start, end) = (ev()?, ev()?);
        let mut out = Vec::with_capacity(self.artifact.steps.len());
        for i in 0..self.artifact.steps.len() {
            let mut times = Vec::with_capacity(reps);
            for rep in 0..reps + 1 {
                unsafe {
                    result::memset_d8_async(flush.ptr, 0x5a, flush.bytes, s).map_err(driver("memset"))?;
                    result::event::record(start, s).map_err(driver("event record"))?;
                    self.enqueue_step(i, inputs, outputs, s)?;
                    result::event::record(end, s).map_err(driver("event record"))?;
                    result::event::synchronize(end).map_err(driver("event synchronize"))?;
                    if rep > 0 {
                        times.push(result::event::elapsed(start, end).map_err(driver("event elapsed"))? as f64);
                    }
                }
            }
            times.sort_by(f64::total_cmp);
            out.push(times[times.len() / 2]);
        }
        unsafe {
            let _ = result::event::destroy(start);
            let _ = result::event::destroy(end);
        }
        Ok(out)
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

/// Frees an executable graph and its template.
unsafe fn destroy(g: Captured) {
    unsafe {
        if !g.exec.is_null() {
            let _ = result::graph::exec_destroy(g.exec);
        }
        let _ = result::graph::destroy(g.graph);
    }
}

/// Picks each GEMM's algorithm by timing the heuristic's candidates once per distinct GEMM
/// (shape, layouts, epilogue) on scratch memory filled with non-zero values, L2 flushed before
/// each run: cuBLASLt's first guess is often far off for the skinny GEMMs of small batches.
/// `KILN_GEMM_TUNE=0` keeps the heuristic's first choice.
fn tune_gemms(
    artifact: &CudaArtifact,
    plans: &mut [Option<Plan>],
    blas: &Blas,
    stream: CUstream,
    alloc: &dyn Fn(usize, &str) -> Result<CUdeviceptr, CudaError>,
) -> Result<(), CudaError> {
    if std::env::var("KILN_GEMM_TUNE").is_ok_and(|v| v == "0") {
        return Ok(());
    }
    let gemms: Vec<(usize, &super::GemmStep)> =
        artifact.steps.iter().enumerate().filter_map(|(i, s)| if let GpuStep::Gemm(g) = s { Some((i, g)) } else { None }).collect();
    if gemms.is_empty() {
        return Ok(());
    }
    let bytes = |b: u32| artifact.buffers[b as usize].bytes();
    let mut need = [0usize; 5];
    for (_, g) in &gemms {
        let sizes = [bytes(g.a.buffer), bytes(g.b.buffer), bytes(g.c), g.bias.map_or(0, bytes), g.residual.map_or(0, bytes)];
        for (n, s) in need.iter_mut().zip(sizes) {
            *n = (*n).max(s);
        }
    }
    let flush_bytes = 128 << 20;
    let mut scratch = Vec::new();
    let result = (|| -> Result<(), CudaError> {
        for n in need.iter().chain([&flush_bytes]) {
            let p = alloc(*n, "GEMM tuning scratch")?;
            scratch.push(p);
            // 0x3C bytes: 0.0115 in bf16 and f32, 1.06 in f16; never zero.
            unsafe { result::memset_d8_async(p, 0x3C, (*n).max(256), stream) }.map_err(driver("memset"))?;
        }
        let mut chosen: HashMap<String, usize> = HashMap::new();
        for (i, g) in gemms {
            let key = {
                let mut k = g.clone();
                k.kernel.clear();
                (k.a.buffer, k.b.buffer, k.c) = (0, 0, 0);
                k.bias = k.bias.map(|_| 0);
                k.residual = k.residual.map(|_| 0);
                format!("{k:?}")
            };
            let plan = plans[i].as_mut().expect("gemm steps have a plan");
            if let Some(&c) = chosen.get(&key) {
                plan.set_candidate(c);
                continue;
            }
            let (bias, residual) = (g.bias.map(|_| scratch[3]), g.residual.map(|_| scratch[4]));
            let c = unsafe { plan.tune(blas, scratch[0], scratch[1], scratch[2], bias, residual, stream, (scratch[5], flush_bytes))? };
            chosen.insert(key, c);
        }
        Ok(())
    })();
    unsafe {
        let _ = result::stream::synchronize(stream);
        for p in scratch {
            let _ = result::free_sync(p);
        }
    }
    result
}

fn load_module(artifact: &CudaArtifact, ordinal: usize, ctx: &Arc<CudaContext>) -> Result<CUmodule, CudaError> {
    if artifact.ptx.is_empty() {
        return Ok(std::ptr::null_mut());
    }
    let key = (ordinal, hash(&artifact.ptx));
    let mut cache = module_cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((m, _)) = cache.get(&key) {
        return Ok(*m as CUmodule);
    }
    let src = CString::new(artifact.ptx.clone())
        .map_err(|_| CudaError::ModuleLoad { artifact: artifact.name.clone(), message: "the PTX holds a NUL byte".into() })?;
    let m = unsafe { result::module::load_data(src.as_ptr() as *const c_void) }
        .map_err(|e| CudaError::ModuleLoad { artifact: artifact.name.clone(), message: format!("{e:?}") })?;
    cache.insert(key, (m as usize, ctx.clone()));
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
                destroy(g);
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
