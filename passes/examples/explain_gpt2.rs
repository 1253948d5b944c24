//! Prints the optimizer's explanation for GPT-2 (tiny by default; `small` for GPT-2 small).
use frontend::models::gpt2::{AttentionSpelling, Gpt2, Gpt2Config};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let small = args.iter().any(|a| a == "small");
    let mut cfg = if small { Gpt2Config::small() } else { Gpt2Config::tiny() };
    if let Some(sp) = args.iter().find_map(|a| AttentionSpelling::ALL.iter().find(|s| format!("{s:?}") == *a)) {
        cfg = cfg.with_attention(*sp);
    }
    let t = frontend::trace(&Gpt2::new(cfg), &[cfg.input_spec(1, if small { 64 } else { 8 })]).unwrap();
    let e = passes::explain(&t.graph, &passes::DeviceProfile::h200()).unwrap();
    println!("{e}");
    println!("{:?} {} iters {}", e.report.rules_applied, e.report.stop_reason, e.report.iterations);
    let t = std::time::Instant::now();
    let o = passes::optimize(&t_graph(&args), &passes::DeviceProfile::h200()).unwrap();
    println!("optimize {:?}: saturate {:?} extract {:?} fuse {:?}", t.elapsed(), o.report.time_saturate, o.report.time_extract, o.report.time_fuse);
    if args.iter().any(|a| a == "kernels") {
        println!("{}", e.kernels);
    }
}

fn t_graph(args: &[String]) -> ir::Graph {
    let small = args.iter().any(|a| a == "small");
    let mut cfg = if small { Gpt2Config::small() } else { Gpt2Config::tiny() };
    if let Some(n) = args.iter().find_map(|a| a.strip_prefix("layers=")) {
        cfg.n_layer = n.parse().unwrap();
    }
    frontend::trace(&Gpt2::new(cfg), &[cfg.input_spec(1, if small { 64 } else { 8 })]).unwrap().graph
}
