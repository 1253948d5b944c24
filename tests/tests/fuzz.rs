//! The bounded CI pass of the differential fuzzer: a few hundred random graphs through the
//! whole pipeline (optimizer on and off) against the interpreter, plus checks of the
//! generator (valid graphs, every op covered, text round trip) and of the shrinker.

use ir::{Graph, Op};
use kiln::Backend;
use kiln_tests::diff::{self, Target, Verdict};
use kiln_tests::gen::{self, GenConfig};
use kiln_tests::{fuzz, shrink, FuzzConfig, ALL_OP_NAMES};
use std::collections::BTreeSet;

fn run(graphs: u64, seed: u64, optimize: bool) {
    let cfg = FuzzConfig {
        graphs,
        seed,
        batch: 24,
        target: Target { backend: Backend::Cpu, optimize },
        gen: GenConfig::default(),
        out: None,
        shrink_budget: 60,
        shrink_per_signature: 2,
    };
    let s = fuzz(&cfg, &mut |_| {});
    let report: Vec<String> = s
        .failures
        .iter()
        .map(|f| format!("seed {}: {}\nshrunk:\n{}", f.seed, f.verdict, f.shrunk))
        .collect();
    assert!(s.failures.is_empty(), "{} of {} random graphs failed (optimize {optimize}):\n{}", s.failures.len(), s.graphs, report.join("\n"));
}

#[test]
fn random_graphs_match_reference_optimized() {
    run(192, 1_000_000, true);
}

#[test]
fn random_graphs_match_reference_one_kernel_per_op() {
    run(96, 2_000_000, false);
}

#[test]
fn generator_makes_valid_graphs_over_every_op() {
    let mut seen = BTreeSet::new();
    let mut attention = 0;
    for seed in 0..2000 {
        let g = gen::generate(seed, &GenConfig::default());
        ir::verify::verify(&g).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{g}"));
        assert_eq!(ir::text::parse(&g.to_string()).unwrap(), g, "seed {seed}: text round trip");
        assert!(g.len() <= 200, "seed {seed}: {} nodes", g.len());
        seen.extend(gen::op_names(&g));
        attention += g.name().starts_with("attn") as usize;
        // Same seed, same graph.
        if seed % 100 == 0 {
            assert_eq!(gen::generate(seed, &GenConfig::default()), g);
        }
    }
    let missing: Vec<_> = ALL_OP_NAMES.iter().filter(|o| !seen.contains(*o)).collect();
    assert!(missing.is_empty(), "ops never generated: {missing:?}");
    assert!(attention > 50, "only {attention} attention blocks");
}

#[test]
fn dtypes_and_odd_shapes_are_covered() {
    let mut dtypes = BTreeSet::new();
    let mut dims = BTreeSet::new();
    for seed in 0..500 {
        let g = gen::generate(seed, &GenConfig::default());
        for (_, n) in g.nodes() {
            dtypes.insert(n.dtype);
            dims.extend(n.shape.dims().iter().copied());
        }
    }
    assert_eq!(dtypes.len(), 6, "{dtypes:?}");
    for d in [1, 3, 7, 13, 33] {
        assert!(dims.contains(&d), "dim {d} never generated");
    }
}

#[test]
fn merged_batches_keep_components_apart() {
    let parts: Vec<Graph> = (0..5).map(|s| gen::generate(s, &GenConfig::default())).collect();
    let (m, ranges) = gen::merge("m", &parts);
    ir::verify::verify(&m).unwrap();
    assert_eq!(m.len(), parts.iter().map(Graph::len).sum::<usize>());
    assert_eq!(m.inputs().len(), parts.iter().map(|p| p.inputs().len()).sum::<usize>());
    // The merged graph on concatenated inputs gives each part's own outputs.
    let ins: Vec<_> = parts.iter().enumerate().map(|(i, p)| diff::random_inputs(p, i as u64)).collect();
    let all = ir::interp::run(&m, &ins.concat()).unwrap();
    for ((p, r), i) in parts.iter().zip(&ranges).zip(&ins) {
        assert_eq!(ir::interp::run(p, i).unwrap(), all[r.clone()].to_vec());
    }
}

#[test]
fn inputs_are_seeded_and_non_zero() {
    let g = gen::generate(7, &GenConfig::default());
    let a = diff::random_inputs(&g, 3);
    assert_eq!(a, diff::random_inputs(&g, 3));
    assert!(a.iter().filter(|v| v.dtype != ir::DType::Bool).all(|v| v.data.iter().all(|&x| x != 0.0)));
}

/// The shrinker on a synthetic failure ("the graph contains a matmul") ends at a minimal graph
/// that still fails, and the saved file parses back.
#[test]
fn shrinker_finds_a_small_graph() {
    let has_matmul = |c: &Graph| c.nodes().any(|(id, n)| n.op == Op::MatMul && c.live()[id.index()]);
    let seed = (0..1000).find(|&s| {
        let g = gen::generate(s, &GenConfig::default());
        g.len() > 12 && has_matmul(&g)
    });
    let g = gen::generate(seed.expect("a graph with a matmul"), &GenConfig::default());
    let small = shrink::shrink(&g, 10_000, &mut |c| has_matmul(c));
    assert!(has_matmul(&small));
    assert!(small.len() <= 3, "expected inputs and a matmul:\n{small}");
    ir::verify::verify(&small).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = shrink::save(dir.path(), "t", &small, &["a comment".into()]).unwrap();
    assert_eq!(shrink::load(&p).unwrap(), small);
}

#[test]
fn a_wrong_result_is_a_mismatch_and_panics_are_caught() {
    let g = gen::generate(3, &GenConfig::default());
    let ins = diff::random_inputs(&g, 3);
    let mut want = ir::interp::run(&g, &ins).unwrap();
    assert_eq!(diff::compare(&g, &want, &want), Verdict::Pass);
    let good = want.clone();
    want[0].data[0] += 1.0;
    assert!(matches!(diff::compare(&g, &want, &good), Verdict::Mismatch { output: 0, .. }));
    let p = diff::catch(|| panic!("boom"));
    assert_eq!(p, Err("boom".to_string()));
}
