//! Shared test helpers: seeded random inputs and comparison against the interpreter.
#![allow(dead_code)]

use ir::interp::{self, Value};
use ir::{DType, Graph, KernelGraph};
use rand::{Rng, SeedableRng};

/// Seeded random values for every graph input: floats in [-2, 2] (never all zero), ints in
/// [-5, 5], bools with p = 1/2.
pub fn random_inputs(g: &Graph, seed: u64) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    g.inputs()
        .iter()
        .map(|&i| {
            let n = g.node(i);
            let data = (0..n.shape.numel())
                .map(|_| match n.dtype {
                    DType::Bool => rng.random_range(0..2) as f64,
                    d if d.is_int() => rng.random_range(-5..=5) as f64,
                    _ => rng.random_range(-2.0..2.0),
                })
                .collect();
            Value::new(n.dtype, n.shape.clone(), data).unwrap()
        })
        .collect()
}

/// Asserts two result lists agree within the dtype's tolerance.
pub fn assert_close(what: &str, got: &[Value], want: &[Value]) {
    assert_eq!(got.len(), want.len(), "{what}: output count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!((g.dtype, &g.shape), (w.dtype, &w.shape), "{what}: output {i} type");
        let d = g.max_rel_diff(w);
        assert!(d <= w.dtype.tolerance().max(1e-9), "{what}: output {i} differs by {d} (tolerance {})", w.dtype.tolerance());
    }
}

/// Both graphs compute the same values on random inputs.
pub fn assert_same_values(what: &str, a: &Graph, b: &Graph, seed: u64) {
    let ins = random_inputs(a, seed);
    let want = interp::run(a, &ins).unwrap();
    let got = interp::run(b, &ins).unwrap();
    assert_close(what, &got, &want);
}

/// The kernel graph computes what the graph does.
pub fn assert_kernels_agree(what: &str, g: &Graph, kg: &KernelGraph, seed: u64) {
    kg.verify().unwrap();
    let ins = random_inputs(g, seed);
    let want = interp::run(g, &ins).unwrap();
    let got = kg.interpret(&ins).unwrap();
    assert_close(what, &got, &want);
}
