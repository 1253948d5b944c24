//! Fuzz target (proptest) for the tracing API: random op sequences with malformed arguments
//! (shape mismatches, bad axes, bad dtypes, bad sizes) are typed errors, never panics, and
//! whatever traces successfully is a verified graph the interpreter runs.

use frontend::{Tensor, Tracer};
use ir::DType;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Act {
    Unary(u8),
    Binary(u8, Vec<usize>, usize),
    Scalar(u8, f64),
    Reshape(Vec<i64>),
    Permute(Vec<usize>),
    Transpose(isize, isize),
    Sum(Vec<isize>, bool),
    Amax(isize, bool),
    Softmax(isize),
    Slice(isize, isize, isize, usize),
    Expand(Vec<i64>),
    Cat(isize),
    MatMul(Vec<usize>),
    Cast(usize),
    MaskedFill(Vec<usize>),
    Where(Vec<usize>),
    Unsqueeze(isize),
    Squeeze(isize),
    LayerNorm(Vec<usize>),
    Flatten(isize, isize),
    Split(usize, isize),
    Tril(i64),
}

fn dims() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop::sample::select(vec![0usize, 1, 2, 3, 5, 7]), 0..4)
}

fn act() -> impl Strategy<Value = Act> {
    let ax = -5isize..5;
    prop_oneof![
        any::<u8>().prop_map(Act::Unary),
        (any::<u8>(), dims(), 0usize..6).prop_map(|(o, d, t)| Act::Binary(o, d, t)),
        (any::<u8>(), prop::sample::select(vec![0.0, -1.0, 2.5, f64::NAN, f64::INFINITY, 1e300])).prop_map(|(o, v)| Act::Scalar(o, v)),
        prop::collection::vec(-2i64..40, 0..5).prop_map(Act::Reshape),
        prop::collection::vec(0usize..5, 0..5).prop_map(Act::Permute),
        (ax.clone(), ax.clone()).prop_map(|(a, b)| Act::Transpose(a, b)),
        (prop::collection::vec(ax.clone(), 0..3), any::<bool>()).prop_map(|(a, k)| Act::Sum(a, k)),
        (ax.clone(), any::<bool>()).prop_map(|(a, k)| Act::Amax(a, k)),
        ax.clone().prop_map(Act::Softmax),
        (ax.clone(), -10isize..10, -10isize..10, 0usize..4).prop_map(|(a, s, e, st)| Act::Slice(a, s, e, st)),
        prop::collection::vec(-2i64..8, 0..5).prop_map(Act::Expand),
        ax.clone().prop_map(Act::Cat),
        dims().prop_map(Act::MatMul),
        (0usize..6).prop_map(Act::Cast),
        dims().prop_map(Act::MaskedFill),
        dims().prop_map(Act::Where),
        ax.clone().prop_map(Act::Unsqueeze),
        ax.clone().prop_map(Act::Squeeze),
        dims().prop_map(Act::LayerNorm),
        (ax.clone(), ax.clone()).prop_map(|(a, b)| Act::Flatten(a, b)),
        (0usize..4, ax).prop_map(|(n, a)| Act::Split(n, a)),
        (-3i64..3).prop_map(Act::Tril),
    ]
}

fn step(tr: &Tracer, x: &Tensor, a: &Act, n: &mut usize) -> frontend::Result<Tensor> {
    let mut input = |d: DType, s: &[usize]| {
        *n += 1;
        tr.input(format!("i{n}"), d, s.to_vec())
    };
    match a {
        Act::Unary(o) => match o % 12 {
            0 => x.exp(),
            1 => x.log(),
            2 => x.sqrt(),
            3 => x.neg(),
            4 => x.abs(),
            5 => x.floor(),
            6 => x.logical_not(),
            7 => x.sigmoid(),
            8 => x.gelu(),
            9 => x.relu(),
            10 => x.tanh(),
            _ => x.rsqrt(),
        },
        Act::Binary(o, d, t) => {
            let y = input(ir::DType::ALL[*t], d)?;
            match o % 9 {
                0 => x.add(&y),
                1 => x.sub(&y),
                2 => x.mul(&y),
                3 => x.div(&y),
                4 => x.pow(&y),
                5 => x.maximum(&y),
                6 => x.lt(&y),
                7 => x.logical_and(&y),
                _ => x.eq(&y),
            }
        }
        Act::Scalar(o, v) => match o % 4 {
            0 => x.add(*v),
            1 => x.mul(*v),
            2 => x.div(*v),
            _ => x.clamp(Some(*v), None),
        },
        Act::Reshape(s) => x.reshape(s.clone()),
        Act::Permute(p) => x.permute(p.clone()),
        Act::Transpose(a, b) => x.transpose(*a, *b),
        Act::Sum(d, k) => x.sum(d.clone(), *k),
        Act::Amax(d, k) => x.amax(*d, *k),
        Act::Softmax(d) => x.softmax(*d),
        Act::Slice(a, s, e, st) => x.slice(*a, *s, *e, *st),
        Act::Expand(s) => x.expand(s.clone()),
        Act::Cat(d) => frontend::cat(&[x, x], *d),
        Act::MatMul(d) => {
            let y = input(x.dtype(), d)?;
            x.matmul(&y)
        }
        Act::Cast(t) => x.to_dtype(ir::DType::ALL[*t]),
        Act::MaskedFill(d) => {
            let m = input(DType::Bool, d)?;
            x.masked_fill(&m, -1.0)
        }
        Act::Where(d) => {
            let y = input(x.dtype(), d)?;
            x.where_(&y, 0.0)
        }
        Act::Unsqueeze(d) => x.unsqueeze(*d),
        Act::Squeeze(d) => x.squeeze(*d),
        Act::LayerNorm(s) => x.layer_norm(s, None, None, 1e-5),
        Act::Flatten(a, b) => x.flatten(*a, *b),
        Act::Split(k, d) => x.split(*k, *d).map(|v| v.into_iter().next().unwrap_or_else(|| x.clone())),
        Act::Tril(k) => x.tril(*k),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn malformed_tracing_is_a_typed_error_never_a_panic(
        dtype in 0usize..6,
        shape in dims(),
        acts in prop::collection::vec(act(), 1..12),
    ) {
        let tr = Tracer::new("fuzz");
        let mut x = tr.input("x", DType::ALL[dtype], shape).unwrap();
        let mut n = 0;
        let mut outs = vec![x.clone()];
        for a in &acts {
            match step(&tr, &x, a, &mut n) {
                Ok(y) => {
                    x = y;
                    outs.push(x.clone());
                }
                Err(e) => {
                    // A typed error with a message a user can read.
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
        let refs: Vec<&Tensor> = outs.iter().collect();
        let g = tr.finish(&refs).expect("a graph of successful ops finishes");
        ir::verify::verify(&g).unwrap();
        if g.nodes().all(|(_, n)| n.shape.numel() <= 1 << 14) {
            let ins = kiln_tests::diff::random_inputs(&g, 0);
            ir::interp::run(&g, &ins).expect("the interpreter runs a traced graph");
        }
    }
}
