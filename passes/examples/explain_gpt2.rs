//! Prints the optimizer's explanation for GPT-2 and times `optimize`.
//!
//! `cargo run --release -p kiln-passes --example explain_gpt2 -- [small] [layers=N] [T=N]
//!  [<AttentionSpelling>] [bf16] [kernels]`
use frontend::models::gpt2::{AttentionSpelling, Gpt2, Gpt2Config};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |s: &str| args.iter().any(|a| a == s);
    let num = |p: &str| args.iter().find_map(|a| a.strip_prefix(p).and_then(|v| v.parse::<usize>().ok()));
    let mut cfg = if has("small") { Gpt2Config::small() } else { Gpt2Config::tiny() };
    if let Some(sp) = AttentionSpelling::ALL.iter().find(|s| has(&format!("{s:?}"))) {
        cfg = cfg.with_attention(*sp);
    }
    if has("bf16") {
        cfg = cfg.with_dtype(ir::DType::BF16);
    }
    cfg.n_layer = num("layers=").unwrap_or(cfg.n_layer);
    let t = num("T=").unwrap_or(8).min(cfg.block_size);
    let g = frontend::trace(&Gpt2::new(cfg), &[cfg.input_spec(1, t)]).unwrap().graph;
    let profile = passes::DeviceProfile::h200();
    let e = passes::explain(&g, &profile).unwrap();
    println!("{e}");
    println!("rules applied: {:?}", e.report.rules_applied);
    if has("kernels") {
        println!("{}", e.kernels);
    }
    // The fastest of a few runs: the machine is shared.
    let mut best: Option<(std::time::Duration, passes::Optimized)> = None;
    for _ in 0..num("reps=").unwrap_or(1) {
        let (start, cpu0) = (Instant::now(), cpu_time());
        let o = passes::optimize(&g, &profile).unwrap();
        let dt = start.elapsed();
        println!("  run: wall {dt:?}, on-cpu {:?}", cpu_time() - cpu0);
        if best.as_ref().is_none_or(|(b, _)| dt < *b) {
            best = Some((dt, o));
        }
    }
    let (elapsed, o) = best.expect("at least one run");
    let r = &o.report;
    println!(
        "optimize: {:?} total ({} nodes in; saturate {:?}, extract {:?}, fuse {:?}); {} kernels",
        elapsed,
        g.len(),
        r.time_saturate,
        r.time_extract,
        r.time_fuse,
        r.kernels
    );
}

/// Time this thread spent on a CPU (Linux `/proc/thread-self/schedstat`), so a loaded machine
/// does not inflate the figure; zero elsewhere.
fn cpu_time() -> std::time::Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()))
        .map(std::time::Duration::from_nanos)
        .unwrap_or_default()
}
