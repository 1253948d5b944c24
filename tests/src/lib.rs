//! Helpers for Kiln's end-to-end and reliability tests.
//!
//! - [`gen`]: a random generator of valid graphs over every op of the IR (NNSmith-style),
//!   hand-written attention included; [`gen::merge`] batches graphs into one compile.
//! - [`diff`]: the whole pipeline (`kiln::compile` + `Compiled::run`) against the reference
//!   interpreter, panics caught.
//! - [`shrink`]: greedy shrinking of a failing graph, saved as IR text in `tests/regressions/`.
//! - [`fuzz`]: the loop the `kiln-fuzz` binary and the CI test run.

pub mod diff;
pub mod gen;
pub mod shrink;

use ir::interp::Value;
use kiln::{Backend, Config, HostTensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A config for tests: the CPU backend, no cache (unless a test asks), verification on.
pub fn cpu_config() -> Config {
    Config { backend: Backend::Cpu, cache_dir: None, verify: true, ..Config::default() }
}

/// Compiles `g` for the CPU and checks every output against the f64 interpreter on the given
/// inputs, with the tolerance of each output's dtype (scaled by `slack` for deep graphs).
/// Returns the compiled graph for further checks.
pub fn check_cpu(g: &ir::Graph, inputs: &[Value], slack: f64) -> kiln::Compiled {
    let compiled = kiln::compile(g, &cpu_config()).unwrap_or_else(|e| panic!("compile @{}: {e}", g.name()));
    let host: Vec<HostTensor> = inputs.iter().map(HostTensor::from_value).collect();
    let outs = compiled.run(&host).unwrap_or_else(|e| panic!("run @{}: {e}", g.name()));
    let reference = ir::interp::run(g, inputs).unwrap();
    assert_eq!(outs.len(), reference.len());
    for (i, (o, r)) in outs.iter().zip(&reference).enumerate() {
        let o = o.to_value();
        assert_eq!((o.dtype, &o.shape), (r.dtype, &r.shape), "output {i} type");
        let tol = r.dtype.tolerance().max(1e-5) * slack;
        let diff = o.max_rel_diff(r);
        assert!(diff <= tol, "@{} output {i}: max relative difference {diff:.3e} > {tol:.1e}", g.name());
        assert!(o.data.iter().all(|x| x.is_finite()) || r.data.iter().any(|x| !x.is_finite()), "non-finite output");
    }
    compiled
}

/// Settings of one fuzzing run.
#[derive(Clone, Debug)]
pub struct FuzzConfig {
    /// Random graphs to check.
    pub graphs: u64,
    /// Graph `i` is generated from seed `seed + i` (and its inputs too).
    pub seed: u64,
    /// Graphs per compile.
    pub batch: usize,
    pub target: diff::Target,
    pub gen: gen::GenConfig,
    /// Where shrunk failures are saved (`NAME.kir`); none: not saved.
    pub out: Option<PathBuf>,
    /// Most checks spent shrinking one failure.
    pub shrink_budget: usize,
    /// Failures of one signature (kind and message without numbers) shrunk and saved; later
    /// ones are only counted, with their seeds.
    pub shrink_per_signature: usize,
}

/// One failing graph, shrunk.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub verdict: diff::Verdict,
    pub original_nodes: usize,
    pub shrunk: ir::Graph,
    pub saved: Option<PathBuf>,
    /// The failure's kind and message with digits removed (groups repeats of one bug).
    pub signature: String,
}

/// A failure's kind and message with digits removed.
pub fn signature(v: &diff::Verdict) -> String {
    let text = match v {
        diff::Verdict::Mismatch { .. } => "mismatch".to_string(),
        v => v.to_string(),
    };
    text.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub graphs: u64,
    pub compiles: u64,
    /// Op name -> nodes of that op generated.
    pub ops: BTreeMap<&'static str, u64>,
    pub failures: Vec<Failure>,
}

/// Every op of the IR a generated graph can contain (composites come from passes).
pub const ALL_OP_NAMES: &[&str] = &[
    "input", "full", "iota", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "recip", "tanh", "erf", "sin", "cos", "floor", "not",
    "add", "sub", "mul", "div", "max", "min", "pow", "and", "or", "eq", "ne", "lt", "le", "gt", "ge", "where", "cast", "sum",
    "max_reduce", "reshape", "permute", "expand", "slice", "concat", "pad", "matmul",
];

impl Summary {
    /// Ops of [`ALL_OP_NAMES`] never generated.
    pub fn ops_missing(&self) -> Vec<&'static str> {
        ALL_OP_NAMES.iter().copied().filter(|o| !self.ops.contains_key(o)).collect()
    }
}

/// Shrinks a failing graph (same failure kind, same target, same input seed) and saves it.
pub fn shrink_failure(g: &ir::Graph, seed: u64, verdict: &diff::Verdict, cfg: &FuzzConfig) -> Failure {
    let kind = verdict.kind();
    let target = cfg.target.clone();
    let shrunk = shrink::shrink(g, cfg.shrink_budget, &mut |c| diff::check(c, &target, seed).kind() == kind);
    let final_verdict = diff::check(&shrunk, &target, seed);
    let saved = cfg.out.as_ref().and_then(|dir| {
        let name = format!("fuzz_{}_{}_{}", backend_name(cfg.target.backend), if cfg.target.optimize { "opt" } else { "noopt" }, seed);
        let header = vec![
            format!("kiln-fuzz seed {seed} (backend {:?}, optimize {})", cfg.target.backend, cfg.target.optimize),
            format!("original: {verdict}"),
            format!("shrunk: {final_verdict}"),
            format!("repro: cargo run --release -p kiln-tests --bin kiln-fuzz -- --graphs 1 --seed {seed} --batch 1 --backend {}{}", backend_name(cfg.target.backend), if cfg.target.optimize { "" } else { " --no-optimize" }),
        ];
        shrink::save(dir, &name, &shrunk, &header).ok()
    });
    Failure { seed, signature: signature(verdict), verdict: final_verdict, original_nodes: g.len(), shrunk, saved }
}

pub fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Cuda => "cuda",
        Backend::Interpreter => "interp",
        _ => "cpu",
    }
}

/// The fuzzing loop: generate, batch, check, shrink failures. `progress` is called after
/// every batch.
pub fn fuzz(cfg: &FuzzConfig, progress: &mut dyn FnMut(&Summary)) -> Summary {
    let mut s = Summary::default();
    let batch = cfg.batch.max(1) as u64;
    let mut next = 0u64;
    while next < cfg.graphs {
        let n = batch.min(cfg.graphs - next);
        let seeds: Vec<u64> = (0..n).map(|i| cfg.seed.wrapping_add(next + i)).collect();
        let parts: Vec<ir::Graph> = seeds.iter().map(|&sd| gen::generate(sd, &cfg.gen)).collect();
        for p in &parts {
            for o in gen::op_names(p) {
                *s.ops.entry(o).or_default() += 1;
            }
        }
        let verdicts = diff::check_batch(&parts, &cfg.target, seeds[0]);
        s.compiles += 1;
        for ((p, v), &sd) in parts.iter().zip(&verdicts).zip(&seeds) {
            if !v.is_pass() {
                let sig = signature(v);
                let seen = s.failures.iter().filter(|f| f.signature == sig).count();
                if seen < cfg.shrink_per_signature {
                    s.failures.push(shrink_failure(p, sd, v, cfg));
                } else {
                    s.failures.push(Failure { seed: sd, verdict: v.clone(), original_nodes: p.len(), shrunk: p.clone(), saved: None, signature: sig });
                }
            }
        }
        s.graphs += n;
        next += n;
        progress(&s);
    }
    s
}
