//! `kiln-bench`: Kiln's benchmark CLI.
//!
//!   kiln-bench suite [--filter S] [--repeat N] [--dtype bf16|f16|f32] [--json F] [--plot F.svg|.png]
//!   kiln-bench kernel FILE      benchmark one graph written in the IR text format
//!   kiln-bench explain FILE     print the optimizer's fusion decisions for a graph

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kiln::Backend;
use kiln_bench::workloads::{Size, WORKLOADS};
use kiln_bench::{BenchError, SuiteOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "kiln-bench", version, about = "Kiln's benchmark suite and kernel benchmarks")]
struct Cli {
    /// Where to run: auto (GPU if present, else CPU), cpu, cuda.
    #[arg(long, global = true, default_value = "auto")]
    backend: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the workloads of shared/bench/WORKLOADS.md (checked against the reference first).
    Suite {
        /// Only workloads whose name contains this.
        #[arg(long, default_value = "")]
        filter: String,
        /// Timed repetitions per measurement (the median is reported).
        #[arg(long, default_value_t = 30)]
        repeat: usize,
        /// Element type: bf16, f16 or f32 (default: bf16 on a GPU, f32 on the CPU).
        #[arg(long)]
        dtype: Option<String>,
        /// Write the results as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a roofline chart (.svg or .png).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Write the Markdown table (for BENCHMARKS.md).
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Use the suite's full shapes even on the CPU.
        #[arg(long)]
        full: bool,
    },
    /// Trace one replay of each chosen workload on the GPU: per kernel, when its first block
    /// was released and its last block left (docs/gpu.md, `KILN_GPU_TRACE`).
    Trace {
        /// Only workloads whose name contains this.
        #[arg(long, default_value = "")]
        filter: String,
        /// Element type: bf16, f16 or f32.
        #[arg(long, default_value = "bf16")]
        dtype: String,
    },
    /// Benchmark one graph written in Kiln's IR text format.
    Kernel {
        file: PathBuf,
        #[arg(long, default_value_t = 30)]
        repeat: usize,
    },
    /// Print which kernels the optimizer forms for a graph, and why ops stay unfused.
    Explain { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Trace { .. }) {
        // SAFETY: set before any other thread exists (nothing has run but argument parsing);
        // the GPU code generator reads it when the workloads compile.
        unsafe { std::env::set_var("KILN_GPU_TRACE", "1") };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_graph(path: &PathBuf) -> Result<ir::Graph, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::Read { path: path.display().to_string(), source: e })?;
    ir::text::parse(&text).map_err(|e| BenchError::Parse { path: path.display().to_string(), source: e })
}

fn write(path: &PathBuf, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| BenchError::Write { path: path.display().to_string(), source: e })
}

/// A `--dtype` value: bf16, f16 or f32.
fn parse_dtype(d: &str) -> Result<ir::DType, BenchError> {
    Ok(ir::DType::from_name(d).filter(|d| d.is_float()).ok_or_else(|| kiln::Error::Config(format!("--dtype {d:?}: expected bf16, f16 or f32")))?)
}

/// The workloads whose name contains `filter` (an error listing them all when none does).
fn choose(filter: String) -> Result<Vec<&'static kiln_bench::workloads::Workload>, BenchError> {
    let chosen: Vec<_> = WORKLOADS.iter().filter(|w| w.name.contains(&filter)).collect();
    if chosen.is_empty() {
        let known: Vec<_> = WORKLOADS.iter().map(|w| w.name).collect();
        return Err(BenchError::UnknownWorkload(filter, known.join(", ")));
    }
    Ok(chosen)
}

fn run(cli: Cli) -> Result<(), BenchError> {
    let backend = kiln::resolve_backend(Backend::parse(&cli.backend).ok_or_else(|| kiln::Error::Config(format!("--backend {:?}: expected auto, cpu or cuda", cli.backend)))?)?;
    match cli.cmd {
        Cmd::Suite { filter, repeat, dtype, json, plot, markdown, full } => {
            let on_gpu = backend == Backend::Cuda;
            let dtype = match dtype.as_deref() {
                None => if on_gpu { ir::DType::BF16 } else { ir::DType::F32 },
                Some(d) => parse_dtype(d)?,
            };
            let size = if on_gpu || full { Size::Full } else { Size::Cpu };
            let chosen = choose(filter)?;
            // Fail on unwritable outputs before spending minutes measuring.
            for p in [&json, &plot, &markdown].into_iter().flatten() {
                write(p, "")?;
            }
            eprintln!("kiln-bench: {} on {}, {} workloads, {dtype}, {} shapes", if on_gpu { "GPU" } else { "CPU" }, kiln::device_name(backend), chosen.len(), if size == Size::Full { "suite" } else { "CPU-sized" });
            let opts = SuiteOptions { backend, size, dtype, repeat: repeat.max(1), budget: Duration::from_secs(if on_gpu { 5 } else { 10 }) };
            let bar = ProgressBar::new(chosen.len() as u64 + 1);
            bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("valid template"));
            bar.set_message("measuring ceilings");
            let copy = kiln_bench::CopyBench::new(backend, size)?;
            let ceilings = kiln_bench::measure_ceilings(backend, size, dtype, &copy)?;
            bar.inc(1);
            let mut results = Vec::new();
            let mut failures = Vec::new();
            for w in chosen {
                bar.set_message(w.name);
                match kiln_bench::run_workload(w, &opts, &ceilings, &copy) {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        bar.println(format!("{}: FAILED: {e}", w.name));
                        failures.push(format!("{}: {e}", w.name));
                    }
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            let table = kiln_bench::table(&results, &ceilings);
            println!("{table}");
            if let Some(p) = &markdown {
                write(p, &table)?;
            }
            if let Some(p) = &json {
                let doc = serde_json::json!({ "ceilings": ceilings, "results": results, "failures": failures });
                write(p, &serde_json::to_string_pretty(&doc).expect("serializable"))?;
            }
            if let Some(p) = &plot {
                kiln_bench::plot::roofline(p, &results, &ceilings)?;
            }
            if !failures.is_empty() {
                return Err(BenchError::Failed(failures.len()));
            }
            Ok(())
        }
        Cmd::Trace { filter, dtype } => {
            if backend != Backend::Cuda {
                return Err(kiln::Error::Unavailable("kiln-bench trace records GPU kernels: it needs --backend cuda (or auto on a GPU machine)".into()).into());
            }
            let dtype = parse_dtype(&dtype)?;
            let chosen = choose(filter)?;
            let opts = SuiteOptions { backend, size: Size::Full, dtype, repeat: 1, budget: Duration::from_secs(5) };
            for w in chosen {
                println!("== {} ({dtype}) ==", w.name);
                print!("{}", kiln_bench::trace_workload(w, &opts)?);
            }
            Ok(())
        }
        Cmd::Kernel { file, repeat } => {
            let g = read_graph(&file)?;
            let (compiled, t, diff) = kiln_bench::bench_graph(&g, backend, repeat.max(1))?;
            println!("{}: {} kernel launch(es) per call, {:.4} ms per call (median of {repeat}), max rel diff vs reference {:.2e}", g.name(), compiled.launches_per_call(), t * 1e3, diff);
            Ok(())
        }
        Cmd::Explain { file } => {
            let g = read_graph(&file)?;
            println!("{}", kiln::explain(&g, backend)?);
            Ok(())
        }
    }
}
