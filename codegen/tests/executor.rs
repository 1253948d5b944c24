//! Executor behaviour: typed errors on bad inputs, zero-copy runs, concurrency, memory
//! planning, and the cached compile path end to end.

mod common;
use codegen::cpu::{compile, compile_cached, CpuOptions};
use ir::{BinaryOp, DType, Graph, KernelGraph, Op, UnaryOp};
use runtime::cache::{Cache, Outcome};
use runtime::{CpuExecutor, HostTensor, RuntimeError};

fn chain() -> Graph {
    let mut g = Graph::new("chain");
    let x = g.input("x", DType::F32, [50, 783]).unwrap();
    let mut v = x;
    for i in 0..6 {
        v = if i % 2 == 0 { g.add(Op::Unary(UnaryOp::Tanh), &[v]).unwrap() } else { g.add(Op::Binary(BinaryOp::Add), &[v, x]).unwrap() };
    }
    g.set_outputs(vec![v]);
    g
}

#[test]
fn bad_inputs_are_typed_errors() {
    let g = chain();
    let art = compile(&KernelGraph::one_per_op(&g), &CpuOptions::default()).unwrap();
    let mut ex = CpuExecutor::new(&art).unwrap();
    let err = ex.run(&[]).unwrap_err();
    assert!(matches!(err, RuntimeError::InputCount { expected: 1, got: 0 }), "{err}");
    let bad = HostTensor::zeros(DType::F32, [50, 784]);
    let err = ex.run(&[bad]).unwrap_err();
    assert!(matches!(err, RuntimeError::InputType { index: 0, .. }), "{err}");
    assert!(err.to_string().contains("\"x\""), "{err}");
    let bad = HostTensor::zeros(DType::F16, [50, 783]);
    assert!(matches!(ex.run(&[bad]).unwrap_err(), RuntimeError::InputType { .. }));
    let short = HostTensor { dtype: DType::F32, shape: [50, 783].into(), bytes: vec![0; 10] };
    assert!(matches!(ex.run(&[short]).unwrap_err(), RuntimeError::DataSize { .. }));
    let x = HostTensor::zeros(DType::F32, [50, 783]);
    let mut out = HostTensor::zeros(DType::F32, [50, 782]);
    let err = ex.run_into(&[x.as_ref()], &mut [out.as_mut()]).unwrap_err();
    assert!(matches!(err, RuntimeError::OutputType { .. }), "{err}");
    // A malformed artifact is an error at load, not a crash.
    let mut broken = art.clone();
    if let runtime::Step::Loop(l) = &mut broken.steps[0] {
        l.args.push(9999);
    }
    assert!(matches!(CpuExecutor::new(&broken).unwrap_err(), RuntimeError::BadArtifact { .. }));
    let mut broken = art.clone();
    if let runtime::Step::Loop(l) = &mut broken.steps[0] {
        l.symbol = "nope".into();
    }
    assert!(matches!(CpuExecutor::new(&broken).unwrap_err(), RuntimeError::MissingSymbol { .. }));
}

#[test]
fn memory_is_planned_and_reused() {
    let g = chain();
    let art = compile(&KernelGraph::one_per_op(&g), &CpuOptions::default()).unwrap();
    // Five intermediates of 50*783 f32; liveness lets them share two slots.
    let one = 50 * 783 * 4;
    assert_eq!(art.unplanned_bytes, 5 * one);
    assert!(art.arena_bytes <= 2 * one.div_ceil(64) * 64, "{}", art.summary());
}

#[test]
fn executor_is_sync_and_runs_concurrently() {
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<CpuExecutor>();
    let g = chain();
    let art = compile(&KernelGraph::one_per_op(&g), &CpuOptions::default()).unwrap();
    let ex = CpuExecutor::new(&art).unwrap();
    let inputs: Vec<_> = (0..4).map(|s| common::random(DType::F32, &[50, 783], s, false)).collect();
    std::thread::scope(|s| {
        for v in &inputs {
            let (ex, g) = (&ex, &g);
            s.spawn(move || {
                let want = ir::interp::run(g, std::slice::from_ref(v)).unwrap();
                for _ in 0..5 {
                    let x = HostTensor::from_value(v);
                    let mut out = HostTensor::zeros(DType::F32, [50, 783]);
                    ex.run_into(&[x.as_ref()], &mut [out.as_mut()]).unwrap();
                    assert!(out.to_value().max_rel_diff(&want[0]) < 1e-4);
                }
            });
        }
    });
}

#[test]
fn outputs_that_alias_inputs_or_repeat() {
    let mut g = Graph::new("alias");
    let x = g.input("x", DType::F32, [3, 5]).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
    g.set_outputs(vec![x, y, y]);
    common::check(&g, 31, false);
    common::check_fused(&g, 31, false);
}

#[test]
fn cached_compile_hits_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    let g = chain();
    let kg = KernelGraph::one_per_op(&g);
    let (a, o) = compile_cached(&kg, &CpuOptions::default(), &cache).unwrap();
    assert_eq!(o, Outcome::Miss);
    let t = std::time::Instant::now();
    let (b, o) = compile_cached(&kg, &CpuOptions::default(), &cache).unwrap();
    let hit = t.elapsed();
    assert_eq!(o, Outcome::Hit);
    assert_eq!(a, b);
    assert!(hit.as_millis() < 500, "cache hit took {hit:?}");
    let v = common::random(DType::F32, &[50, 783], 3, false);
    let mut ex = CpuExecutor::new(&b).unwrap();
    let got = ex.run(&[HostTensor::from_value(&v)]).unwrap();
    let want = ir::interp::run(&g, &[v]).unwrap();
    assert!(got[0].to_value().max_rel_diff(&want[0]) < 1e-4);
}
