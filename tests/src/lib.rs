//! Helpers for Kiln's end-to-end tests: compile on the CPU, compare with the interpreter.

use ir::interp::Value;
use kiln::{Backend, Config, HostTensor};

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
