//! Optimizer speed: GPT-2 small (12 layers) and a 48-layer GPT-2 of the same width, to check
//! that optimization time scales linearly with depth.
//!
//! `CARGO_TARGET_DIR=/work/target-passes cargo bench -p kiln-passes --bench optimize`

use criterion::{criterion_group, criterion_main, Criterion};
use frontend::models::gpt2::{Gpt2, Gpt2Config};
use passes::DeviceProfile;
use std::time::Duration;

fn gpt2(n_layer: usize, seq: usize) -> ir::Graph {
    let cfg = Gpt2Config { n_layer, ..Gpt2Config::small() };
    frontend::trace(&Gpt2::new(cfg), &[cfg.input_spec(1, seq)]).unwrap().graph
}

fn bench(c: &mut Criterion) {
    let profile = DeviceProfile::h200();
    let mut group = c.benchmark_group("optimize");
    group.sample_size(10).measurement_time(Duration::from_secs(4));
    for (layers, seq) in [(12, 1024), (24, 1024), (48, 1024), (12, 64)] {
        let g = gpt2(layers, seq);
        group.bench_function(format!("gpt2_{layers}_layers_T{seq}"), |b| {
            b.iter(|| passes::optimize(&g, &profile).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
