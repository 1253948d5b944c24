//! No leaks: 10,000 calls of a compiled graph on the CPU keep the resident set flat.
//! (valgrind's run on the `leak_check` example is recorded in docs/reliability.md.)

use ir::{BinaryOp, DType, Graph, Op, ReduceOp, UnaryOp};
use kiln::HostTensor;
use kiln_tests::diff;

/// Resident pages of this process (`/proc/self/statm`, second field) in bytes.
fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// RSS is per process and the test harness runs tests on parallel threads: each test holds
/// this lock so that one test's compiles never show up in the other's measurement.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn graph() -> Graph {
    let mut g = Graph::new("leak");
    let x = g.input("x", DType::F32, [33, 13]).unwrap();
    let w = g.input("w", DType::F32, [13, 7]).unwrap();
    let m = g.add(Op::MatMul, &[x, w]).unwrap();
    let t = g.add(Op::Unary(UnaryOp::Tanh), &[m]).unwrap();
    let mx = g.add(Op::Reduce { op: ReduceOp::Max, axes: vec![1], keepdim: true }, &[t]).unwrap();
    let d = g.add(Op::Binary(BinaryOp::Sub), &[t, mx]).unwrap();
    let e = g.add(Op::Unary(UnaryOp::Exp), &[d]).unwrap();
    let s = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![1], keepdim: true }, &[e]).unwrap();
    let y = g.add(Op::Binary(BinaryOp::Div), &[e, s]).unwrap();
    g.set_outputs(vec![y, m]);
    g
}

#[test]
fn ten_thousand_runs_keep_memory_flat() {
    let _serial = serial();
    let g = graph();
    let c = kiln::compile(&g, &kiln_tests::cpu_config()).unwrap();
    let ins: Vec<HostTensor> = diff::random_inputs(&g, 1).iter().map(HostTensor::from_value).collect();
    let want = ir::interp::run(&g, &diff::random_inputs(&g, 1)).unwrap();
    // Warm up: allocator pools, lazily created scratch.
    for _ in 0..500 {
        c.run(&ins).unwrap();
    }
    // One call allocates ~2 KiB of outputs: a leak of one allocation per call grows every
    // window of 10,000 runs by >= 20 MB. Growth that is not a leak (the allocator taking a
    // new arena once, the harness's own threads) shows up in one window, not in all: the
    // smallest growth of three windows is the measurement.
    let mut growths = Vec::new();
    for _ in 0..3 {
        let before = rss_bytes();
        let mut last = Vec::new();
        for _ in 0..10_000 {
            last = c.run(&ins).unwrap();
        }
        growths.push(rss_bytes().saturating_sub(before));
        let got: Vec<_> = last.iter().map(HostTensor::to_value).collect();
        assert_eq!(diff::compare(&g, &got, &want), diff::Verdict::Pass);
    }
    let growth = *growths.iter().min().unwrap();
    assert!(growth < 2 << 20, "RSS grew in every window of 10,000 runs: {growths:?} bytes");
}

#[test]
fn repeated_compiles_do_not_grow_without_bound() {
    let _serial = serial();
    let g = graph();
    for _ in 0..5 {
        drop(kiln::compile(&g, &kiln_tests::cpu_config()).unwrap());
    }
    let before = rss_bytes();
    for _ in 0..20 {
        drop(kiln::compile(&g, &kiln_tests::cpu_config()).unwrap());
    }
    let growth = rss_bytes().saturating_sub(before);
    assert!(growth < 24 << 20, "RSS grew by {growth} bytes over 20 compiles");
}
