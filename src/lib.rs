//! Kiln: a graph compiler for eager PyTorch-style models.
//!
//! This facade is the only crate that knows every stage. [`compile`] reads top to bottom:
//! verify, optimize (egg) into a kernel graph, generate code for the target, load it into an
//! executor. [`compile_module`] traces a Rust [`frontend::Module`] first.
//!
//! ```no_run
//! use kiln::{frontend::{models::{Mlp, MlpConfig}, InputSpec}, Config};
//! let mlp = Mlp::new(MlpConfig::default());
//! let x = InputSpec::new("x", ir::DType::F32, [4, MlpConfig::default().in_features]);
//! let (compiled, traced) = kiln::compile_module(&mlp, &[x], &Config::from_env()?)?;
//! let inputs: Vec<_> = traced.random_inputs(0).iter().map(kiln::HostTensor::from_value).collect();
//! let outputs = compiled.run(&inputs)?;
//! # Ok::<(), kiln::Error>(())
//! ```

mod config;

pub use config::{Backend, Config};
pub use frontend;
pub use ir;
pub use runtime::HostTensor;

use ir::{Graph, KernelGraph};
use runtime::{CpuExecutor, TensorMut, TensorRef};
use std::time::{Duration, Instant};

/// Everything that can go wrong between a graph and its outputs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ir(#[from] ir::IrError),
    #[error(transparent)]
    Frontend(#[from] frontend::FrontendError),
    #[error(transparent)]
    Passes(#[from] passes::PassError),
    #[error(transparent)]
    Codegen(#[from] codegen::CodegenError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Gpu(#[from] codegen::gpu::GpuError),
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] runtime::cuda::CudaError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Picks the concrete backend for `Auto`: CUDA when this build has it and a GPU answers.
pub fn resolve_backend(b: Backend) -> Result<Backend> {
    match b {
        Backend::Auto => Ok(if cuda_available() { Backend::Cuda } else { Backend::Cpu }),
        Backend::Cuda if !cfg!(feature = "cuda") => {
            Err(Error::Unavailable("this build of Kiln has no CUDA support (build with --features cuda)".into()))
        }
        b => Ok(b),
    }
}

fn cuda_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        runtime::cuda::driver_present()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// A human-readable name of the device a backend runs on.
pub fn device_name(b: Backend) -> String {
    match b {
        #[cfg(feature = "cuda")]
        Backend::Cuda => "CUDA device 0".into(),
        Backend::Interpreter => "reference interpreter (f64)".into(),
        _ => cpu_name(),
    }
}

fn cpu_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{model} ({cores} cores)")
}

/// The cost-model profile for a backend.
pub fn profile(b: Backend) -> passes::DeviceProfile {
    match b {
        Backend::Cuda => passes::DeviceProfile::h200(),
        _ => passes::DeviceProfile::cpu(),
    }
}

/// Wall time of each stage of one compile.
#[derive(Clone, Debug, Default)]
pub struct CompileStats {
    pub optimize: Duration,
    pub codegen: Duration,
    pub load: Duration,
    pub cache_hit: bool,
}

/// Compiles a graph for the configured backend. The pipeline, top to bottom.
pub fn compile(graph: &Graph, config: &Config) -> Result<Compiled> {
    let backend = resolve_backend(config.backend)?;
    ir::verify::verify(graph)?;
    let mut stats = CompileStats::default();

    // 1. Optimize: equality saturation + fusion into a kernel graph (or one kernel per op).
    let t = Instant::now();
    let kernels = if config.optimize && backend != Backend::Interpreter {
        passes::optimize(graph, &profile(backend))?.kernels
    } else {
        KernelGraph::one_per_op(graph)
    };
    if config.verify {
        kernels.verify()?;
    }
    stats.optimize = t.elapsed();
    dump(config, "kernels.txt", &kernels.to_string());
    if config.debug >= 3 {
        eprintln!("[kiln] kernel graph:\n{kernels}");
    }

    // 2. Codegen (through the on-disk cache) and 3. load into an executor.
    let exec = match backend {
        Backend::Interpreter => Exec::Interpreter,
        Backend::Cpu => {
            let t = Instant::now();
            let target = format!("cpu/{}/build {}", codegen::cpu::host_target_id()?, env!("KILN_BUILD_ID"));
            let artifact = cached(config, &kernels, &target, &mut stats, || Ok(codegen::cpu::compile(&kernels, &codegen::cpu::CpuOptions::default())?))?;
            stats.codegen = t.elapsed();
            let t = Instant::now();
            let exec = CpuExecutor::new(&artifact)?;
            stats.load = t.elapsed();
            Exec::Cpu(Box::new(exec))
        }
        #[cfg(feature = "cuda")]
        Backend::Cuda => {
            // The artifact (PTX and the step plan) goes through the same on-disk cache; the
            // driver JIT-compiles the PTX once per device and process.
            let t = Instant::now();
            let options = codegen::gpu::GpuOptions::default();
            let target = format!("cuda/{}/build {}{}", options.sm.name(), env!("KILN_BUILD_ID"), gpu_knobs());
            let artifact = cached(config, &kernels, &target, &mut stats, || Ok(codegen::gpu::compile(&kernels, &options)?))?;
            stats.codegen = t.elapsed();
            let t = Instant::now();
            let exec = runtime::cuda::CudaExecutor::new(artifact, 0)?;
            stats.load = t.elapsed();
            Exec::Cuda(Box::new(std::sync::Mutex::new(exec)))
        }
        b => return Err(Error::Unavailable(format!("backend {b:?} is not available in this build"))),
    };
    let compiled = Compiled { graph: graph.clone(), kernels, exec, backend, stats, cuda_graph: config.cuda_graph };
    if config.debug >= 1 {
        eprintln!("[kiln] {}", compiled.summary());
    }
    Ok(compiled)
}

/// Traces a Rust module on the given activation specs, then compiles it.
pub fn compile_module<M: frontend::Module + ?Sized>(module: &M, inputs: &[frontend::InputSpec], config: &Config) -> Result<(Compiled, frontend::Traced)> {
    let traced = frontend::trace(module, inputs)?;
    Ok((compile(&traced.graph, config)?, traced))
}

/// The optimizer's fusion decisions for a graph, as text.
pub fn explain(graph: &Graph, backend: Backend) -> Result<String> {
    let backend = resolve_backend(backend)?;
    Ok(passes::explain(graph, &profile(backend))?.to_string())
}

fn dump(config: &Config, name: &str, text: &str) {
    if let Some(dir) = &config.dump_dir {
        if std::fs::create_dir_all(dir).and_then(|_| std::fs::write(dir.join(name), text)).is_err() {
            eprintln!("[kiln] warning: could not write {}", dir.join(name).display());
        }
    }
}

/// Looks the kernel graph up in the compile cache, building and storing it on a miss. A
/// corrupt entry is rebuilt and an unwritable cache means running uncached, each with a
/// warning on stderr.
fn cached<A>(config: &Config, kernels: &KernelGraph, target: &str, stats: &mut CompileStats, build: impl FnOnce() -> Result<A>) -> Result<A>
where
    A: serde::Serialize + serde::de::DeserializeOwned,
{
    let Some(dir) = &config.cache_dir else { return build() };
    let key = runtime::cache::CacheKey::new(&kernels.to_string(), target);
    let (artifact, outcome) = runtime::cache::Cache::new(dir).get_or_build(&key, build)?;
    match outcome {
        runtime::cache::Outcome::Hit => stats.cache_hit = true,
        runtime::cache::Outcome::Miss => {}
        runtime::cache::Outcome::Rebuilt { reason } => eprintln!("[kiln] warning: corrupt cache entry rebuilt ({reason})"),
        runtime::cache::Outcome::Uncached { reason } => eprintln!("[kiln] warning: compile cache unusable, running uncached ({reason})"),
    }
    Ok(artifact)
}

/// The `KILN_GPU_*` variables (code-generation knobs of the GPU backend), spelled into the
/// cache key so an artifact built under other settings is not reused.
#[cfg(feature = "cuda")]
fn gpu_knobs() -> String {
    let mut vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("KILN_GPU_")).collect();
    vars.sort();
    vars.iter().map(|(k, v)| format!(" {k}={v}")).collect()
}

enum Exec {
    Interpreter,
    Cpu(Box<CpuExecutor>),
    #[cfg(feature = "cuda")]
    Cuda(Box<std::sync::Mutex<runtime::cuda::CudaExecutor>>),
}

/// A compiled graph, ready to run.
pub struct Compiled {
    graph: Graph,
    kernels: KernelGraph,
    exec: Exec,
    backend: Backend,
    stats: CompileStats,
    /// Replay the whole graph as one CUDA graph in `Bound::run` (`Config::cuda_graph`).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    cuda_graph: bool,
}

impl Compiled {
    /// Runs on host tensors (copying to and from the device when there is one).
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let mut s = self.bind(inputs)?;
        s.run()?;
        s.outputs()
    }

    /// Runs on caller-owned memory with no copies (CPU backend): `inputs` and `outputs`
    /// are contiguous row-major buffers of the graph's input and output types.
    pub fn run_into(&self, inputs: &[TensorRef], outputs: &mut [TensorMut]) -> Result<()> {
        match &self.exec {
            Exec::Cpu(e) => Ok(e.run_into(inputs, outputs)?),
            _ => Err(Error::Unavailable(format!("run_into on host memory needs the CPU backend, this graph was compiled for {:?}", self.backend))),
        }
    }

    /// Runs on device memory the caller owns (CUDA backend), with no copies: `inputs` and
    /// `outputs` are device addresses (on device 0, in the primary context, which is where
    /// PyTorch allocates) of contiguous tensors of the graph's input and output types. The
    /// whole graph is one CUDA-graph launch, enqueued on `stream` (a `CUstream`, e.g.
    /// `torch.cuda.current_stream().cuda_stream`; the executor's own stream when `None`).
    /// Returns once the work is enqueued; a caller that reads the outputs on another stream
    /// synchronizes first. Calls are serialized (one executor, one arena per compiled graph).
    ///
    /// # Safety
    /// Every address must point to a live device allocation of at least its tensor's size,
    /// outputs must not overlap inputs or each other, and all of them must stay valid until
    /// the enqueued work completes.
    pub unsafe fn run_device(&self, inputs: &[u64], outputs: &[u64], stream: Option<u64>) -> Result<()> {
        match &self.exec {
            #[cfg(feature = "cuda")]
            Exec::Cuda(e) => {
                let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
                // SAFETY: forwarded from the caller's contract.
                Ok(unsafe { e.run_graph(inputs, outputs, stream.map(|s| s as usize as _))? })
            }
            _ => {
                let _ = (inputs, outputs, stream);
                Err(Error::Unavailable(format!("run_device needs the CUDA backend, this graph was compiled for {:?}", self.backend)))
            }
        }
    }

    /// Binds inputs once (uploading them to the device) so `run` can be timed alone.
    pub fn bind(&self, inputs: &[HostTensor]) -> Result<Bound<'_>> {
        let want = self.graph.inputs();
        if inputs.len() != want.len() {
            return Err(runtime::RuntimeError::InputCount { expected: want.len(), got: inputs.len() }.into());
        }
        for (i, (&id, t)) in want.iter().zip(inputs).enumerate() {
            let n = self.graph.node(id);
            if t.dtype != n.dtype || t.shape != n.shape {
                return Err(runtime::RuntimeError::InputType {
                    index: i,
                    name: self.graph.input_name(id).unwrap_or("?").to_string(),
                    expected_dtype: n.dtype,
                    expected_shape: n.shape.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                }
                .into());
            }
        }
        let outputs = self.graph.outputs().iter().map(|&o| HostTensor::zeros(self.graph.node(o).dtype, self.graph.node(o).shape.clone())).collect();
        Ok(Bound { compiled: self, inputs: inputs.to_vec(), outputs, #[cfg(feature = "cuda")] device: None })
    }

    /// Kernel launches (and library calls) per call.
    pub fn launches_per_call(&self) -> usize {
        self.kernels.kernels.len()
    }

    pub fn kernel_graph(&self) -> &KernelGraph {
        &self.kernels
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn stats(&self) -> &CompileStats {
        &self.stats
    }

    pub fn device_name(&self) -> String {
        device_name(self.backend)
    }

    /// Peak bytes of intermediate memory the executor planned.
    pub fn peak_memory(&self) -> usize {
        match &self.exec {
            Exec::Cpu(e) => e.peak_memory(),
            #[cfg(feature = "cuda")]
            Exec::Cuda(e) => e.lock().unwrap_or_else(|p| p.into_inner()).artifact().peak_memory(),
            Exec::Interpreter => self.kernels.intermediate_bytes(),
        }
    }

    /// One line: graph, kernels, memory, compile times.
    pub fn summary(&self) -> String {
        format!(
            "@{} on {:?}: {} ops -> {} kernels, peak intermediate memory {} B; optimize {:.1} ms, codegen {:.1} ms{}, load {:.1} ms",
            self.graph.name(),
            self.backend,
            self.graph.len(),
            self.kernels.kernels.len(),
            self.peak_memory(),
            self.stats.optimize.as_secs_f64() * 1e3,
            self.stats.codegen.as_secs_f64() * 1e3,
            if self.stats.cache_hit { " (cache hit)" } else { "" },
            self.stats.load.as_secs_f64() * 1e3
        )
    }
}

/// A compiled graph with its inputs bound and its outputs allocated.
pub struct Bound<'a> {
    compiled: &'a Compiled,
    inputs: Vec<HostTensor>,
    outputs: Vec<HostTensor>,
    /// Device copies of the inputs and outputs (CUDA), made on the first run.
    #[cfg(feature = "cuda")]
    device: Option<(Vec<runtime::cuda::DeviceTensor>, Vec<runtime::cuda::DeviceTensor>)>,
}

impl Bound<'_> {
    /// Runs the graph once on the bound inputs.
    pub fn run(&mut self) -> Result<()> {
        match &self.compiled.exec {
            Exec::Interpreter => {
                let ins: Vec<_> = self.inputs.iter().map(HostTensor::to_value).collect();
                let outs = self.compiled.kernels.interpret(&ins)?;
                self.outputs = outs.iter().map(HostTensor::from_value).collect();
                Ok(())
            }
            Exec::Cpu(e) => {
                let ins: Vec<TensorRef> = self.inputs.iter().map(HostTensor::as_ref).collect();
                let mut outs: Vec<TensorMut> = self.outputs.iter_mut().map(HostTensor::as_mut).collect();
                Ok(e.run_into(&ins, &mut outs)?)
            }
            #[cfg(feature = "cuda")]
            Exec::Cuda(e) => {
                let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
                if self.device.is_none() {
                    let mut ins = Vec::new();
                    for t in &self.inputs {
                        let d = e.alloc(t.bytes.len())?;
                        d.upload(&t.bytes)?;
                        ins.push(d);
                    }
                    let mut outs = Vec::new();
                    for t in &self.outputs {
                        let d = e.alloc(t.bytes.len())?;
                        d.fill(0xff)?; // poison: every output element must be written
                        outs.push(d);
                    }
                    self.device = Some((ins, outs));
                }
                let (ins, outs) = self.device.as_ref().expect("bound");
                let ip: Vec<_> = ins.iter().map(|d| d.ptr).collect();
                let op: Vec<_> = outs.iter().map(|d| d.ptr).collect();
                // SAFETY: the pointers are live device allocations of the graph's input and
                // output sizes, owned by this binding for as long as the executor uses them.
                unsafe {
                    if self.compiled.cuda_graph {
                        e.run_graph(&ip, &op, None)?
                    } else {
                        e.run(&ip, &op, None)?
                    }
                };
                Ok(())
            }
        }
    }

    /// Runs `f` on the executor with the device addresses of the bound inputs and outputs
    /// (uploaded by a first `run`): `None` on a backend without a device.
    #[cfg(feature = "cuda")]
    fn on_device<T>(&mut self, f: impl FnOnce(&mut runtime::cuda::CudaExecutor, &[u64], &[u64]) -> Result<T>) -> Result<Option<T>> {
        let Exec::Cuda(e) = &self.compiled.exec else { return Ok(None) };
        self.run()?; // uploads the inputs on the first call
        let (ins, outs) = self.device.as_ref().expect("bound by run");
        let ip: Vec<_> = ins.iter().map(|d| d.ptr).collect();
        let op: Vec<_> = outs.iter().map(|d| d.ptr).collect();
        let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut e, &ip, &op).map(Some)
    }

    /// Device-side times of `reps` runs in seconds (CUDA events around each run, L2 flushed
    /// before each, as `triton.testing.do_bench` does), or `None` on a backend without a
    /// device clock (the CPU: time `run` with a wall clock instead).
    pub fn device_times(&mut self, reps: usize) -> Result<Option<Vec<f64>>> {
        #[cfg(feature = "cuda")]
        {
            let graph = self.compiled.cuda_graph;
            self.on_device(|e, ip, op| Ok(e.time_runs(ip, op, reps, graph)?.into_iter().map(|m| m * 1e-3).collect()))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = reps;
            Ok(None)
        }
    }

    /// One replay with every block of every kernel recorded, as a timeline of the steps
    /// (`runtime::cuda::trace`, docs/gpu.md): for a CUDA graph compiled with
    /// `KILN_GPU_TRACE=1` (an error names the variable otherwise). `None` on a backend without
    /// a device.
    pub fn trace(&mut self) -> Result<Option<String>> {
        #[cfg(feature = "cuda")]
        {
            // SAFETY: as in `run`: live device allocations of the graph's sizes, owned by
            // this binding.
            self.on_device(|e, ip, op| Ok(unsafe { e.trace(ip, op)? }.report(e.artifact())))
        }
        #[cfg(not(feature = "cuda"))]
        Ok(None)
    }

    /// Waits for the device to finish (a no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let (Exec::Cuda(e), Some(_)) = (&self.compiled.exec, &self.device) {
            e.lock().unwrap_or_else(|p| p.into_inner()).synchronize()?;
        }
        Ok(())
    }

    /// The outputs of the last run (copied back from the device when there is one).
    pub fn outputs(&self) -> Result<Vec<HostTensor>> {
        #[cfg(feature = "cuda")]
        if let (Exec::Cuda(e), Some((_, outs))) = (&self.compiled.exec, &self.device) {
            e.lock().unwrap_or_else(|p| p.into_inner()).synchronize()?;
            let mut host = Vec::new();
            for (d, t) in outs.iter().zip(&self.outputs) {
                host.push(HostTensor::new(t.dtype, t.shape.clone(), d.download()?)?);
            }
            return Ok(host);
        }
        Ok(self.outputs.clone())
    }
}
