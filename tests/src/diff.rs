#![allow(clippy::result_large_err)] // ir::IrError and kiln::Error are large; these are test helpers
//! Differential checking: a graph through the whole pipeline (`kiln::compile`, then
//! `Compiled::run`) against `ir::interp::run` on the original graph, on seeded random
//! non-zero inputs. Panics are caught and reported like any other failure.

use ir::interp::Value;
use ir::{DType, Graph, Op};
use kiln::{Backend, Config, HostTensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What one graph (or one component of a batch) gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// Output `output` differs from the reference by `diff` (relative) beyond `tol`.
    Mismatch { output: usize, diff: f64, tol: f64 },
    /// The output's dtype or shape differs from the graph's.
    WrongType { output: usize, detail: String },
    /// `compile` or `run` returned an error on a valid graph.
    Error(String),
    /// Something panicked.
    Panic(String),
}

impl Verdict {
    pub fn is_pass(&self) -> bool {
        *self == Verdict::Pass
    }
    /// The kind of failure without numbers (shrinking keeps the kind).
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Mismatch { .. } => "mismatch",
            Verdict::WrongType { .. } => "wrong type",
            Verdict::Error(_) => "error",
            Verdict::Panic(_) => "panic",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            Verdict::Mismatch { output, diff, tol } => write!(f, "output {output}: relative difference {diff:.3e} > tolerance {tol:.1e}"),
            Verdict::WrongType { output, detail } => write!(f, "output {output}: {detail}"),
            Verdict::Error(e) => write!(f, "error: {e}"),
            Verdict::Panic(p) => write!(f, "panic: {p}"),
        }
    }
}

/// Where a differential check runs.
#[derive(Clone, Debug)]
pub struct Target {
    pub backend: Backend,
    pub optimize: bool,
}

impl Target {
    pub fn config(&self) -> Config {
        Config { backend: self.backend, optimize: self.optimize, cache_dir: None, verify: true, debug: 0, dump_dir: None, ..Config::default() }
    }
}

/// Seeded random non-zero inputs for every graph input: floats in `±[0.1, 2]`, integers in
/// `±[1, 4]`, bools of both values.
pub fn random_inputs(g: &Graph, seed: u64) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    g.inputs()
        .iter()
        .map(|&i| {
            let n = g.node(i);
            let data = (0..n.shape.numel())
                .map(|_| {
                    let sign = if rng.random_bool(0.5) { -1.0 } else { 1.0 };
                    match n.dtype {
                        DType::Bool => rng.random_range(0..2) as f64,
                        d if d.is_int() => sign * rng.random_range(1..=4) as f64,
                        _ => sign * rng.random_range(0.1..2.0),
                    }
                })
                .collect();
            Value::new(n.dtype, n.shape.clone(), data).expect("numel matches")
        })
        .collect()
}

/// The tolerance of each output of `g`: the loosest float tolerance in the output's cone
/// (a value computed in bf16 then cast to f32 carries bf16's error), scaled by the depth of
/// the cone (each rounded intermediate adds error). Integer and bool outputs computed only
/// from integers are exact.
pub fn tolerances(g: &Graph) -> Vec<f64> {
    let mut depth = vec![0usize; g.len()];
    let mut tol = vec![0f64; g.len()];
    for (id, n) in g.nodes() {
        let own = if n.dtype.is_float() { n.dtype.tolerance() } else { 0.0 };
        let body = match &n.op {
            Op::Fused(b) => b.0.nodes().map(|(_, m)| if m.dtype.is_float() { m.dtype.tolerance() } else { 0.0 }).fold(0.0, f64::max),
            _ => 0.0,
        };
        let ins = n.inputs.iter().map(|i| tol[i.index()]).fold(0.0, f64::max);
        tol[id.index()] = own.max(body).max(ins);
        depth[id.index()] = n.inputs.iter().map(|i| depth[i.index()] + 1).max().unwrap_or(0);
    }
    g.outputs()
        .iter()
        .map(|o| {
            let t = tol[o.index()];
            if t == 0.0 { 0.0 } else { t.max(1e-5) * (2.0 + depth[o.index()] as f64) }
        })
        .collect()
}

/// Compares outputs with the reference (NaN equals NaN, infinities must match).
pub fn compare(g: &Graph, outs: &[Value], reference: &[Value]) -> Verdict {
    if outs.len() != reference.len() {
        return Verdict::WrongType { output: 0, detail: format!("{} outputs, expected {}", outs.len(), reference.len()) };
    }
    let tols = tolerances(g);
    for (i, ((o, r), &tol)) in outs.iter().zip(reference).zip(&tols).enumerate() {
        if (o.dtype, &o.shape) != (r.dtype, &r.shape) {
            return Verdict::WrongType { output: i, detail: format!("got {}{}, expected {}{}", o.dtype, o.shape, r.dtype, r.shape) };
        }
        let diff = scaled_diff(o, r);
        if diff > tol || diff.is_nan() {
            return Verdict::Mismatch { output: i, diff, tol };
        }
    }
    Verdict::Pass
}

/// The largest `|a - b| / max(1, |b|, rms(b))` (NaN equals NaN; a NaN or infinity on one side
/// only is infinitely far). Scaling by the output's RMS keeps elements that cancel to near
/// zero after a low-precision matmul from counting rounding as a wrong result; a wrong index
/// or op is still off by the order of the output's scale.
pub fn scaled_diff(o: &Value, r: &Value) -> f64 {
    let finite: Vec<f64> = r.data.iter().copied().filter(|x| x.is_finite()).collect();
    let rms = if finite.is_empty() { 0.0 } else { (finite.iter().map(|x| x * x).sum::<f64>() / finite.len() as f64).sqrt() };
    o.max_diff_scaled(r, rms.max(1.0))
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "(non-string panic)".into())
}

/// Runs `f`, turning a panic into `Err(text)`, with the default hook silenced meanwhile.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_text)
}

/// Compiles and runs `g` on `inputs`; `Err` is the verdict of a failure before comparing.
pub fn run_pipeline(g: &Graph, inputs: &[Value], target: &Target) -> Result<Vec<Value>, Verdict> {
    let r = catch(|| -> Result<Vec<Value>, String> {
        let compiled = kiln::compile(g, &target.config()).map_err(|e| format!("compile: {e}"))?;
        let host: Vec<HostTensor> = inputs.iter().map(HostTensor::from_value).collect();
        let outs = compiled.run(&host).map_err(|e| format!("run: {e}"))?;
        Ok(outs.iter().map(HostTensor::to_value).collect())
    });
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Verdict::Error(e)),
        Err(p) => Err(Verdict::Panic(p)),
    }
}

/// The reference outputs (the interpreter must accept every graph the generator makes).
pub fn reference(g: &Graph, inputs: &[Value]) -> Result<Vec<Value>, Verdict> {
    match catch(|| ir::interp::run(g, inputs)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Verdict::Error(format!("interpreter: {e}"))),
        Err(p) => Err(Verdict::Panic(format!("interpreter: {p}"))),
    }
}

/// One graph, whole pipeline vs interpreter, inputs from `seed`.
pub fn check(g: &Graph, target: &Target, seed: u64) -> Verdict {
    let inputs = random_inputs(g, seed);
    let want = match reference(g, &inputs) {
        Ok(v) => v,
        Err(v) => return v,
    };
    match run_pipeline(g, &inputs, target) {
        Ok(got) => compare(g, &got, &want),
        Err(v) => v,
    }
}

/// Several independent graphs in ONE compile (disjoint components of one graph). Each
/// part gets its own inputs (`seed + index`) and its own verdict; when the batch fails as a
/// whole (an error or panic), every part is checked alone to find the culprit.
pub fn check_batch(parts: &[Graph], target: &Target, seed: u64) -> Vec<Verdict> {
    let (merged, ranges) = crate::gen::merge(&format!("batch{seed}"), parts);
    let part_inputs: Vec<Vec<Value>> = parts.iter().enumerate().map(|(i, p)| random_inputs(p, seed.wrapping_add(i as u64))).collect();
    let mut wants = Vec::new();
    for (p, ins) in parts.iter().zip(&part_inputs) {
        match reference(p, ins) {
            Ok(v) => wants.push(v),
            // A reference failure is the generator's bug; report it on every part alone.
            Err(_) => return parts.iter().enumerate().map(|(i, p)| check(p, target, seed.wrapping_add(i as u64))).collect(),
        }
    }
    let all: Vec<Value> = part_inputs.concat();
    match run_pipeline(&merged, &all, target) {
        Ok(got) => parts.iter().zip(&ranges).zip(&wants).map(|((p, r), w)| compare(p, &got[r.clone()], w)).collect(),
        Err(_) => parts.iter().enumerate().map(|(i, p)| check(p, target, seed.wrapping_add(i as u64))).collect(),
    }
}

/// Silences panic messages (the fuzzer reports them itself); returns a guard-less toggle.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}
