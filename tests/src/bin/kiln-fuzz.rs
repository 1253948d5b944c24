//! `kiln-fuzz`: differential fuzzing of the whole compiler against the reference interpreter.
//!
//! ```text
//! kiln-fuzz --graphs 100000 --seed 1 --backend cpu --batch 16 --out tests/regressions
//! ```
//! Prints progress and a summary (graphs, compiles, ops covered, failures with their seeds);
//! exits 1 when any graph failed. A failing graph is shrunk and saved as `OUT/NAME.kir`.

use clap::Parser;
use kiln::Backend;
use kiln_tests::{diff::Target, fuzz, gen::GenConfig, FuzzConfig, Summary};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "kiln-fuzz", about = "Differential fuzzing: random graphs through kiln::compile vs the reference interpreter")]
struct Args {
    /// Random graphs to check.
    #[arg(long, default_value_t = 1000)]
    graphs: u64,
    /// First seed (graph i uses seed + i).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Graphs per compile (disjoint components of one graph).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Directory for shrunk failures (IR text).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the optimizer (one kernel per op).
    #[arg(long)]
    no_optimize: bool,
    /// Most ops per random graph.
    #[arg(long, default_value_t = 10)]
    max_ops: usize,
    /// Checks spent shrinking one failure.
    #[arg(long, default_value_t = 300)]
    shrink_budget: usize,
    /// Failures of one signature shrunk and saved (later ones only counted).
    #[arg(long, default_value_t = 3)]
    shrink_per_signature: usize,
    /// Print the graph of --seed (IR text) and exit.
    #[arg(long)]
    dump: bool,
    /// Check one IR text file (optimizer on and off, inputs from --seed and --seed+1) and
    /// exit 0 when it matches the reference (the regression test runs files this way, so a
    /// crash cannot take the test down).
    #[arg(long)]
    check: Option<PathBuf>,
    /// Print progress every N graphs.
    #[arg(long, default_value_t = 1000)]
    every: u64,
}

fn main() {
    let a = Args::parse();
    let backend = match Backend::parse(&a.backend) {
        Some(b @ (Backend::Cpu | Backend::Cuda)) => b,
        _ => {
            eprintln!("kiln-fuzz: --backend must be cpu or cuda, got {:?}", a.backend);
            std::process::exit(2);
        }
    };
    if let Err(e) = kiln::resolve_backend(backend) {
        eprintln!("kiln-fuzz: backend {}: {e}", a.backend);
        std::process::exit(2);
    }
    if a.dump {
        println!("{}", kiln_tests::gen::generate(a.seed, &GenConfig { max_ops: a.max_ops, ..GenConfig::default() }));
        return;
    }
    if let Some(path) = &a.check {
        let g = match kiln_tests::shrink::load(path) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("kiln-fuzz: {e}");
                std::process::exit(2);
            }
        };
        kiln_tests::diff::quiet_panics();
        let mut ok = true;
        for optimize in [true, false] {
            for s in [a.seed, a.seed + 1] {
                let v = kiln_tests::diff::check(&g, &Target { backend, optimize }, s);
                println!("optimize {optimize}, input seed {s}: {v}");
                ok &= v.is_pass();
            }
        }
        std::process::exit(if ok { 0 } else { 1 });
    }
    kiln_tests::diff::quiet_panics();
    let cfg = FuzzConfig {
        graphs: a.graphs,
        seed: a.seed,
        batch: a.batch,
        target: Target { backend, optimize: !a.no_optimize },
        gen: GenConfig { max_ops: a.max_ops, ..GenConfig::default() },
        out: a.out.clone(),
        shrink_budget: a.shrink_budget,
        shrink_per_signature: a.shrink_per_signature,
    };
    println!(
        "kiln-fuzz: {} graphs from seed {} on {} ({}), optimize {}, batch {}",
        a.graphs, a.seed, a.backend, kiln::device_name(backend), cfg.target.optimize, a.batch
    );
    let t = Instant::now();
    let mut reported = 0usize;
    let mut last = 0u64;
    let s = fuzz(&cfg, &mut |s: &Summary| {
        for f in &s.failures[reported..] {
            println!("FAIL seed {}: {} ({} nodes shrunk to {}){}", f.seed, f.verdict, f.original_nodes, f.shrunk.len(),
                f.saved.as_ref().map(|p| format!(" -> {}", p.display())).unwrap_or_default());
        }
        reported = s.failures.len();
        if s.graphs / a.every.max(1) != last / a.every.max(1) || s.graphs == a.graphs {
            let el = t.elapsed().as_secs_f64();
            println!("[{:>8.1}s] {} graphs, {} compiles, {} failures, {:.1} graphs/s", el, s.graphs, s.compiles, s.failures.len(), s.graphs as f64 / el);
            let _ = std::io::stdout().flush();
        }
        last = s.graphs;
    });
    let el = t.elapsed().as_secs_f64();
    println!("== summary ==");
    println!("graphs: {} (seeds {}..{}), compiles: {}, time {:.1}s", s.graphs, a.seed, a.seed.wrapping_add(s.graphs), s.compiles, el);
    let ops: Vec<String> = s.ops.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!("ops covered ({}): {}", s.ops.len(), ops.join(" "));
    let missing = s.ops_missing();
    if !missing.is_empty() {
        println!("ops never generated: {}", missing.join(" "));
    }
    println!("failures: {}", s.failures.len());
    let mut sigs: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for f in &s.failures {
        sigs.entry(&f.signature).or_default().push(f.seed);
    }
    for (sig, seeds) in &sigs {
        let shown: Vec<String> = seeds.iter().take(20).map(|s| s.to_string()).collect();
        println!("  {} x {sig}: seeds {}{}", seeds.len(), shown.join(" "), if seeds.len() > 20 { " ..." } else { "" });
    }
    std::process::exit(if s.failures.is_empty() { 0 } else { 1 });
}
