//! Thread safety: one `Compiled` called from 8 threads at once gives correct results.

use kiln::{Backend, HostTensor};
use kiln_tests::diff::{self, Target, Verdict};
use kiln_tests::gen::{self, GenConfig};

fn hammer(g: &ir::Graph, backend: Backend, optimize: bool) {
    let c = kiln::compile(g, &Target { backend, optimize }.config()).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let c = &c;
            s.spawn(move || {
                for i in 0..20u64 {
                    let ins = diff::random_inputs(g, t * 1000 + i);
                    let want = ir::interp::run(g, &ins).unwrap();
                    let host: Vec<HostTensor> = ins.iter().map(HostTensor::from_value).collect();
                    let got: Vec<_> = c.run(&host).unwrap().iter().map(HostTensor::to_value).collect();
                    assert_eq!(diff::compare(g, &got, &want), Verdict::Pass, "thread {t} call {i}");
                }
            });
        }
    });
}

#[test]
fn one_compiled_graph_from_eight_threads() {
    // A batch of random graphs (matmuls, reductions, attention...) as one compiled graph.
    let parts: Vec<ir::Graph> = (0..12).map(|s| gen::generate(500 + s, &GenConfig::default())).collect();
    let (g, _) = gen::merge("threads", &parts);
    hammer(&g, Backend::Cpu, true);
}

#[test]
fn gpt2_from_eight_threads() {
    use frontend::models::{Gpt2, Gpt2Config};
    let cfg = Gpt2Config::tiny();
    let t = frontend::trace(&Gpt2::new(cfg), &[cfg.input_spec(1, 7)]).unwrap();
    hammer(&t.graph, Backend::Cpu, true);
}

#[cfg(feature = "cuda")]
#[test]
fn one_compiled_graph_from_eight_threads_gpu() {
    if kiln::resolve_backend(Backend::Auto).unwrap() != Backend::Cuda {
        eprintln!("no CUDA device: skipped");
        return;
    }
    let parts: Vec<ir::Graph> = (0..12).map(|s| gen::generate(500 + s, &GenConfig::default())).collect();
    let (g, _) = gen::merge("threads_gpu", &parts);
    hammer(&g, Backend::Cuda, true);
}
