//! Compile time of GPT-2 small (12 layers, batch 1, T = 32), criterion:
//! - `trace_to_kernels`: trace the Rust model, optimize (egg) into a kernel graph;
//! - `compile_cold`: trace to native code with the cache off (optimize, codegen, load);
//! - `compile_cached`: the same with a warm on-disk cache (the artifact is read back).
//!
//! `cargo bench -p kiln-bench --bench compile` (the CPU backend; the targets:
//! cold under 2 s, cached under 50 ms).

use criterion::{criterion_group, criterion_main, Criterion};
use kiln::frontend::models::{Gpt2, Gpt2Config};
use kiln::{Backend, Config};
use std::time::Duration;

fn config(cache_dir: Option<std::path::PathBuf>) -> Config {
    Config { backend: Backend::Cpu, cache_dir, ..Config::default() }
}

fn gpt2_small(c: &mut Criterion) {
    let cfg = Gpt2Config::small();
    let model = Gpt2::new(cfg.clone());
    let spec = [cfg.input_spec(1, 32)];
    let mut g = c.benchmark_group("gpt2_small_b1_t32");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));

    g.bench_function("trace_to_kernels", |b| {
        b.iter(|| {
            let traced = kiln::frontend::trace(&model, &spec).expect("trace");
            passes::optimize(&traced.graph, &kiln::profile(Backend::Cpu)).expect("optimize").kernels.kernels.len()
        })
    });
    g.bench_function("compile_cold", |b| b.iter(|| kiln::compile_module(&model, &spec, &config(None)).expect("compile").0.launches_per_call()));

    let dir = tempfile::tempdir().expect("a temporary cache directory");
    let warm = config(Some(dir.path().to_path_buf()));
    kiln::compile_module(&model, &spec, &warm).expect("the first compile fills the cache");
    g.bench_function("compile_cached", |b| {
        b.iter(|| {
            let (compiled, _) = kiln::compile_module(&model, &spec, &warm).expect("compile");
            assert!(compiled.stats().cache_hit, "the cache was not hit");
            compiled.launches_per_call()
        })
    });
    g.finish();
}

criterion_group!(benches, gpt2_small);
criterion_main!(benches);
