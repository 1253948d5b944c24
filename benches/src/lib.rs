//! `kiln-bench`'s engine: builds each workload, checks it, measures the device's ceilings,
//! times the compiled graph against the same graph run one kernel per op, and reports.

pub mod plot;
pub mod workloads;

use ir::{interp::Value, DType, Graph};
use kiln::{Backend, Compiled, Config, HostTensor};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};
use serde::Serialize;
use std::time::{Duration, Instant};
use workloads::{Bound, Size, Workload};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("unknown workload {0:?}; known: {1}")]
    UnknownWorkload(String, String),
    #[error("{workload}: {source}")]
    Build { workload: String, source: frontend::FrontendError },
    #[error("{0}")]
    Kiln(#[from] kiln::Error),
    #[error("{workload}: output differs from the reference (max relative difference {diff:.3e} > {tol:.1e}); not timed")]
    Mismatch { workload: String, diff: f64, tol: f64 },
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: String, source: ir::IrError },
    #[error("plot: {0}")]
    Plot(String),
    #[error("{0} workload(s) failed (see above)")]
    Failed(usize),
}

/// Seeded inputs for a built workload: a model's own initialisers when it has them, else
/// standard normal.
pub fn workload_inputs(b: &workloads::Built, seed: u64) -> Vec<Value> {
    match &b.specs {
        Some(specs) => specs.iter().map(|s| s.random_value(seed)).collect(),
        None => random_inputs(&b.graph, seed),
    }
}

/// Seeded standard-normal inputs for every graph input (bools random, ints small).
pub fn random_inputs(g: &Graph, seed: u64) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0, 1.0).expect("valid normal");
    g.inputs()
        .iter()
        .map(|&i| {
            let n = g.node(i);
            let data = (0..n.shape.numel())
                .map(|_| {
                    let x: f64 = normal.sample(&mut rng);
                    match n.dtype {
                        DType::Bool => (x > 0.0) as u8 as f64,
                        DType::I32 | DType::I64 => (x * 4.0).round(),
                        _ => x,
                    }
                })
                .collect();
            Value::new(n.dtype, n.shape.clone(), data).expect("sizes match")
        })
        .collect()
}

/// Ceilings measured on the device the suite runs on.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    pub device: String,
    /// Bytes read + written per second by a large copy.
    pub copy_bytes_per_s: f64,
    /// Matmul flop/s of the backend's own GEMM path at a large square size.
    pub matmul_flops_per_s: f64,
    /// Seconds per kernel of a chain of tiny kernels run by the compiled executor.
    pub launch_s: f64,
}

/// Median time of one run of a bound graph over `reps` runs after warm-up: device events
/// with L2 flushed before each run where the backend has a device clock (CUDA), else wall
/// time with each run followed by a device sync.
pub fn time_median(s: &mut kiln::Bound<'_>, reps: usize, budget: Duration) -> Result<f64, kiln::Error> {
    if let Some(mut times) = s.device_times(reps)? {
        times.sort_by(f64::total_cmp);
        return Ok(times[times.len() / 2]);
    }
    let mut f = || -> Result<(), kiln::Error> {
        s.run()?;
        s.synchronize()
    };
    for _ in 0..2 {
        f()?;
    }
    let mut times = Vec::with_capacity(reps);
    let end = Instant::now() + budget;
    for i in 0..reps {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
        if i >= 4 && Instant::now() > end {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    pub name: String,
    pub bound: Bound,
    pub shapes: String,
    pub dtype: String,
    /// Median seconds per call of the optimized, compiled graph.
    pub compiled_s: f64,
    /// Median seconds per call of the same graph, one kernel per op, no whole-graph replay.
    pub eager_style_s: f64,
    pub kernels: usize,
    pub eager_kernels: usize,
    pub flops: f64,
    pub bytes: f64,
    /// Achieved bytes/s (memory-bound) or flop/s (compute-bound) of the compiled graph.
    pub achieved: f64,
    /// `achieved` over the measured ceiling: for a memory-bound workload the copy bandwidth
    /// measured in alternation with its timing ([`paired_copy`]), else the suite's ceiling.
    pub fraction_of_ceiling: f64,
    /// Memory-bound workloads: the copy bandwidth (bytes read + written per second) measured
    /// in rounds alternating with the workload's own ([`paired_copy`]).
    pub paired_copy_bytes_per_s: Option<f64>,
    pub compile_cold_s: f64,
    pub compile_cached_s: f64,
    /// Max relative difference of the check instance against the f64 interpreter.
    pub check_rel_diff: f64,
    /// Max relative difference between the compiled and eager-style outputs at full size.
    pub cross_rel_diff: f64,
}

pub struct SuiteOptions {
    pub backend: Backend,
    pub size: Size,
    pub dtype: DType,
    pub repeat: usize,
    pub budget: Duration,
}

/// The compiled graph: optimized, replayed as one CUDA graph on a GPU. The eager-style
/// baseline (`optimize: false`): one kernel per op, each launched from the host.
fn config(backend: Backend, optimize: bool, cache: Option<std::path::PathBuf>) -> Config {
    Config { backend, optimize, cache_dir: cache, cuda_graph: optimize, ..Config::default() }
}

fn to_host(vals: &[Value]) -> Vec<HostTensor> {
    vals.iter().map(HostTensor::from_value).collect()
}

/// Checks a small instance against the interpreter; returns the max relative difference.
pub fn check_against_reference(w: &Workload, opts: &SuiteOptions) -> Result<f64, BenchError> {
    let built = (w.build)(Size::Check, opts.dtype).map_err(|e| BenchError::Build { workload: w.name.into(), source: e })?;
    let inputs = workload_inputs(&built, 7);
    let reference = ir::interp::run(&built.graph, &inputs).map_err(kiln::Error::from)?;
    let compiled = kiln::compile(&built.graph, &config(opts.backend, true, None))?;
    let outs = compiled.run(&to_host(&inputs))?;
    let diff = outs.iter().zip(&reference).map(|(o, r)| o.to_value().max_rel_diff(r)).fold(0.0, f64::max);
    let tol = 4.0 * opts.dtype.tolerance().max(1e-5);
    if !(diff <= tol) {
        return Err(BenchError::Mismatch { workload: w.name.into(), diff, tol });
    }
    Ok(diff)
}

/// The in-graph trace of one workload's compiled graph (CUDA; the process must have
/// `KILN_GPU_TRACE=1` set before compiling): checked against the reference first, then one
/// replay of the suite's shapes with every block recorded; the timeline as text.
pub fn trace_workload(w: &Workload, opts: &SuiteOptions) -> Result<String, BenchError> {
    check_against_reference(w, opts)?;
    let built = (w.build)(opts.size, opts.dtype).map_err(|e| BenchError::Build { workload: w.name.into(), source: e })?;
    let compiled = kiln::compile(&built.graph, &config(opts.backend, true, None))?;
    let inputs = to_host(&workload_inputs(&built, 11));
    let mut bound = compiled.bind(&inputs)?;
    bound
        .trace()?
        .ok_or_else(|| kiln::Error::Unavailable(format!("tracing {} needs the CUDA backend", w.name)).into())
}

/// Runs one workload: check, compile cold and cached, cross-check, time both ways.
pub fn run_workload(w: &Workload, opts: &SuiteOptions, ceilings: &Ceilings, copy: &CopyBench) -> Result<WorkloadResult, BenchError> {
    let check_rel_diff = check_against_reference(w, opts)?;
    let built = (w.build)(opts.size, opts.dtype).map_err(|e| BenchError::Build { workload: w.name.into(), source: e })?;
    let g = &built.graph;
    let shapes = g.inputs().iter().map(|&i| format!("{}", g.node(i).shape)).take(3).collect::<Vec<_>>().join(" ");
    let cache = std::env::temp_dir().join(format!("kiln-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let t0 = Instant::now();
    let compiled = kiln::compile(g, &config(opts.backend, true, Some(cache.clone())))?;
    let compile_cold_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let _again = kiln::compile(g, &config(opts.backend, true, Some(cache.clone())))?;
    let compile_cached_s = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&cache);
    let eager = kiln::compile(g, &config(opts.backend, false, None))?;

    let inputs = to_host(&workload_inputs(&built, 11));
    let mut fast = compiled.bind(&inputs)?;
    let mut slow = eager.bind(&inputs)?;
    fast.run()?;
    slow.run()?;
    let cross_rel_diff = fast
        .outputs()?
        .iter()
        .zip(slow.outputs()?.iter())
        .map(|(a, b)| a.to_value().max_rel_diff(&b.to_value()))
        .fold(0.0, f64::max);
    let tol = 4.0 * opts.dtype.tolerance().max(1e-5);
    if !(cross_rel_diff <= tol) {
        return Err(BenchError::Mismatch { workload: w.name.into(), diff: cross_rel_diff, tol });
    }
    let (compiled_s, paired_copy_bytes_per_s) = match w.bound {
        Bound::Memory => {
            let (t, copy) = paired_copy(&mut fast, copy, opts)?;
            (t, Some(copy))
        }
        Bound::Compute | Bound::Launch => (time_median(&mut fast, opts.repeat, opts.budget)?, None),
    };
    let eager_style_s = time_median(&mut slow, opts.repeat, opts.budget)?;
    let (achieved, ceiling) = match w.bound {
        Bound::Memory => (built.bytes / compiled_s, paired_copy_bytes_per_s.unwrap_or(ceilings.copy_bytes_per_s)),
        Bound::Compute | Bound::Launch => (built.flops / compiled_s, ceilings.matmul_flops_per_s),
    };
    Ok(WorkloadResult {
        name: w.name.into(),
        bound: w.bound,
        shapes,
        dtype: opts.dtype.name().into(),
        compiled_s,
        eager_style_s,
        kernels: compiled.launches_per_call(),
        eager_kernels: eager.launches_per_call(),
        flops: built.flops,
        bytes: built.bytes,
        achieved,
        fraction_of_ceiling: achieved / ceiling,
        paired_copy_bytes_per_s,
        compile_cold_s,
        compile_cached_s,
        check_rel_diff,
        cross_rel_diff,
    })
}

/// Rounds in which [`paired_copy`] alternates a workload and the copy.
const PAIRED_ROUNDS: usize = 5;

/// The copy ceiling's graph: `y = -x` over `n` f32 reads and writes every byte once.
fn copy_graph(size: Size) -> Result<(Graph, usize), BenchError> {
    let n = match size {
        Size::Full => 1 << 28,
        _ => 1 << 25,
    };
    let mut g = Graph::new("copy");
    let x = g.input("x", DType::F32, [n]).map_err(kiln::Error::from)?;
    let y = g.add(ir::Op::Unary(ir::UnaryOp::Neg), &[x]).map_err(kiln::Error::from)?;
    g.set_outputs(vec![y]);
    Ok((g, n))
}

/// The copy graph compiled and its random input drawn once per suite: the ceiling
/// ([`measure_ceilings`]) and every memory-bound workload's paired copy ([`paired_copy`]) run
/// it (at `--full` sizes the input is 2^28 values).
pub struct CopyBench {
    compiled: Compiled,
    input: Vec<HostTensor>,
    n: usize,
}

impl CopyBench {
    pub fn new(backend: Backend, size: Size) -> Result<CopyBench, BenchError> {
        let (g, n) = copy_graph(size)?;
        let compiled = kiln::compile(&g, &config(backend, true, None))?;
        Ok(CopyBench { compiled, input: to_host(&random_inputs(&g, 1)), n })
    }
}

/// A memory-bound workload's time and the copy bandwidth, measured side by side: rounds that
/// time the workload, then the copy (each the median of its runs in the round); each is the
/// median over the rounds. On a shared machine whose memory bandwidth moves by tens of percent
/// from one second to the next (the CPU hosts of BENCHMARKS.md), a ceiling measured once at
/// the start of the suite made the fraction of copy swing with it; alternating keeps both
/// under the same conditions.
pub fn paired_copy(fast: &mut kiln::Bound<'_>, copy: &CopyBench, opts: &SuiteOptions) -> Result<(f64, f64), BenchError> {
    let n = copy.n;
    let mut copy = copy.compiled.bind(&copy.input)?;
    let reps = opts.repeat.div_ceil(PAIRED_ROUNDS).max(3);
    let budget = opts.budget / PAIRED_ROUNDS as u32;
    let (mut ws, mut cs) = (Vec::new(), Vec::new());
    for _ in 0..PAIRED_ROUNDS {
        ws.push(time_median(fast, reps, budget)?);
        cs.push(time_median(&mut copy, reps, budget)?);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(ws), (2 * 4 * n) as f64 / median(cs)))
}

/// Measures the ceilings through Kiln itself: a large copy graph, a large matmul graph, and a
/// chain of tiny elementwise kernels (eager-style, so one launch each).
pub fn measure_ceilings(backend: Backend, size: Size, dtype: DType, copy: &CopyBench) -> Result<Ceilings, BenchError> {
    let cfg = |optimize| config(backend, optimize, None);
    // Copy: y = -x through one kernel reads and writes every byte once.
    let mut s = copy.compiled.bind(&copy.input)?;
    let t = time_median(&mut s, 20, Duration::from_secs(3))?;
    let copy_bytes_per_s = (2 * 4 * copy.n) as f64 / t;
    // Matmul.
    let m = match size {
        Size::Full => 8192,
        _ => 1024,
    };
    let mut g = Graph::new("matmul");
    let a = g.input("a", dtype, [m, m]).map_err(kiln::Error::from)?;
    let b = g.input("b", dtype, [m, m]).map_err(kiln::Error::from)?;
    let y = g.add(ir::Op::MatMul, &[a, b]).map_err(kiln::Error::from)?;
    g.set_outputs(vec![y]);
    let c = kiln::compile(&g, &cfg(true))?;
    let mut s = c.bind(&to_host(&random_inputs(&g, 2)))?;
    let t = time_median(&mut s, 10, Duration::from_secs(5))?;
    let matmul_flops_per_s = 2.0 * (m * m * m) as f64 / t;
    // Launch: 64 dependent tiny kernels, one per op.
    let mut g = Graph::new("launch");
    let mut x = g.input("x", DType::F32, [32]).map_err(kiln::Error::from)?;
    for _ in 0..64 {
        x = g.add(ir::Op::Unary(ir::UnaryOp::Neg), &[x]).map_err(kiln::Error::from)?;
    }
    g.set_outputs(vec![x]);
    let c = kiln::compile(&g, &cfg(false))?;
    let mut s = c.bind(&to_host(&random_inputs(&g, 3)))?;
    let t = time_median(&mut s, 50, Duration::from_secs(2))?;
    Ok(Ceilings { device: c.device_name(), copy_bytes_per_s, matmul_flops_per_s, launch_s: t / 64.0 })
}

/// Formats a table of results for the terminal and BENCHMARKS.md.
pub fn table(results: &[WorkloadResult], ceilings: &Ceilings) -> String {
    let mut s = format!(
        "Device: {}. Ceilings measured here: copy {:.1} GB/s, matmul {:.2} TFLOP/s, {:.2} us per kernel launch.\n\n",
        ceilings.device,
        ceilings.copy_bytes_per_s / 1e9,
        ceilings.matmul_flops_per_s / 1e12,
        ceilings.launch_s * 1e6
    );
    s.push_str("| workload | dtype | compiled ms (kernels) | eager-style ms (kernels) | speedup | achieved | of ceiling | compile cold / cached s |\n");
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in results {
        let achieved = match r.bound {
            Bound::Memory => format!("{:.1} GB/s", r.achieved / 1e9),
            _ => format!("{:.2} TFLOP/s", r.achieved / 1e12),
        };
        let fraction = match r.paired_copy_bytes_per_s {
            Some(c) => format!("{:.0}% of copy {:.1} GB/s", 100.0 * r.fraction_of_ceiling, c / 1e9),
            None => format!("{:.0}%", 100.0 * r.fraction_of_ceiling),
        };
        s.push_str(&format!(
            "| {} | {} | {:.3} ({}) | {:.3} ({}) | {:.2}x | {} | {} | {:.3} / {:.3} |\n",
            r.name,
            r.dtype,
            r.compiled_s * 1e3,
            r.kernels,
            r.eager_style_s * 1e3,
            r.eager_kernels,
            r.eager_style_s / r.compiled_s,
            achieved,
            fraction,
            r.compile_cold_s,
            r.compile_cached_s
        ));
    }
    s
}

/// Benchmarks one user graph: check against the interpreter (at any size), then time.
pub fn bench_graph(g: &Graph, backend: Backend, repeat: usize) -> Result<(Compiled, f64, f64), BenchError> {
    let compiled = kiln::compile(g, &config(backend, true, None))?;
    let inputs = random_inputs(g, 5);
    let host = to_host(&inputs);
    // Checked against the reference interpreter before anything is timed, at every size.
    let reference = ir::interp::run(g, &inputs).map_err(kiln::Error::from)?;
    let outs = compiled.run(&host)?;
    let diff = outs.iter().zip(&reference).map(|(o, r)| o.to_value().max_rel_diff(r)).fold(0.0, f64::max);
    let tol = 4.0 * g.outputs().iter().map(|&o| g.node(o).dtype.tolerance()).fold(1e-5, f64::max);
    if !(diff <= tol) {
        return Err(BenchError::Mismatch { workload: g.name().into(), diff, tol });
    }
    let mut s = compiled.bind(&host)?;
    let t = time_median(&mut s, repeat, Duration::from_secs(5))?;
    Ok((compiled, t, diff))
}
