//! Bad input returns the right typed error with a helpful message, never a panic; a property
//! test drives random ops with random shapes and dims through the API.

use frontend::models::{Gpt2, Gpt2Config, Mlp, MlpConfig};
use frontend::{cat, module_fn, trace, FrontendError as E, Init, InputSpec, Tensor, Tracer};
use ir::{DType, IrError};
use proptest::prelude::*;

fn input(tr: &Tracer, name: &str, dtype: DType, shape: &[usize]) -> Tensor {
    tr.input(name, dtype, shape.to_vec()).unwrap()
}

#[track_caller]
fn expect_msg(r: frontend::Result<impl std::fmt::Debug>, contains: &str) -> E {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    assert!(msg.contains(contains), "message {msg:?} should contain {contains:?}");
    e
}

#[test]
fn linear_feature_mismatch() {
    let tr = Tracer::new("t");
    let x = input(&tr, "x", DType::F32, &[2, 5, 768]);
    let w = input(&tr, "w", DType::F32, &[10, 512]);
    let e = expect_msg(x.linear(&w, None), "linear: input has 768 features but weight expects 512");
    assert!(matches!(e, E::Features { input: 768, expected: 512, .. }));
    let w3 = input(&tr, "w3", DType::F32, &[1, 10, 768]);
    assert!(matches!(expect_msg(x.linear(&w3, None), "2-D weight"), E::Rank { op: "linear", .. }));
    let w = input(&tr, "w2", DType::F32, &[10, 768]);
    let b = input(&tr, "b", DType::F32, &[11]);
    assert!(matches!(expect_msg(x.linear(&w, Some(&b)), "11 features but weight expects 10"), E::Features { .. }));
    let wb = input(&tr, "wb", DType::BF16, &[10, 768]);
    assert!(matches!(expect_msg(x.linear(&wb, None), "f32 and bf16 differ"), E::DTypeMismatch { .. }));
}

#[test]
fn wrong_ranks() {
    let tr = Tracer::new("t");
    let m = input(&tr, "m", DType::F32, &[3, 4]);
    let c = input(&tr, "c", DType::F32, &[2, 3, 4]);
    let v = input(&tr, "v", DType::F32, &[4]);
    assert!(matches!(expect_msg(m.bmm(&m), "bmm: expected a 3-D tensor, got a tensor of shape [3,4] (rank 2)"), E::Rank { .. }));
    assert!(matches!(expect_msg(c.t(), "rank <= 2"), E::Rank { op: "t", .. }));
    assert!(matches!(expect_msg(v.tril(0), "tril: expected a tensor of rank >= 2"), E::Rank { .. }));
    let s = tr.scalar(1.0, DType::F32);
    assert!(matches!(expect_msg(s.matmul(&v), "cannot multiply shapes [] and [4]"), E::MatMul { .. }));
    assert!(matches!(expect_msg(s.slice(0, 0, 1, 1), "rank >= 1"), E::Rank { .. }));
}

#[test]
fn mismatched_shapes() {
    let tr = Tracer::new("t");
    let a = input(&tr, "a", DType::F32, &[2, 3]);
    let b = input(&tr, "b", DType::F32, &[4]);
    let e = expect_msg(&a + &b, "add: shapes [2,3] and [4] are not broadcastable");
    assert!(matches!(e, E::Broadcast { op: "add", .. }));
    assert!(matches!(expect_msg(a.matmul(&b), "matmul: cannot multiply shapes [2,3] and [4]"), E::MatMul { .. }));
    let big = input(&tr, "big", DType::F32, &[4, 5]);
    assert!(matches!(expect_msg(a.matmul(&big), "[2,3] and [4,5]"), E::MatMul { .. }));
    let mask = input(&tr, "mask", DType::Bool, &[5]);
    assert!(matches!(expect_msg(a.masked_fill(&mask, 0.0), "masked_fill: shapes [5] and [2,3]"), E::Broadcast { .. }));
    assert!(matches!(expect_msg(a.expand([2, 4]), "size 3, which cannot expand to 4"), E::Invalid { op: "expand", .. }));
    assert!(matches!(expect_msg(cat(&[&a, &big], 0), "differ outside dim 0"), E::Invalid { op: "cat", .. }));
    assert!(matches!(expect_msg(a.layer_norm(&[4], None, None, 1e-5), "normalized_shape [4] does not match"), E::Invalid { .. }));
    let w = input(&tr, "w", DType::F32, &[2]);
    assert!(matches!(expect_msg(a.layer_norm(&[3], Some(&w), None, 1e-5), "weight/bias of shape [2]"), E::Invalid { .. }));
    assert!(matches!(expect_msg(a.narrow(1, 2, 2), "start 2 and length 2 do not fit in dim 1 of size 3"), E::Invalid { .. }));
    assert!(matches!(expect_msg(a.bmm(&a), "bmm"), E::Rank { .. }));
}

#[test]
fn bad_dtypes() {
    let tr = Tracer::new("t");
    let i = input(&tr, "i", DType::I32, &[3]);
    let f = input(&tr, "f", DType::F32, &[3]);
    let h = input(&tr, "h", DType::BF16, &[3, 3]);
    let b = input(&tr, "b", DType::Bool, &[3]);
    assert!(matches!(expect_msg(i.gelu(), "gelu: dtype i32 is not supported"), E::BadDType { op: "gelu", .. }));
    assert!(matches!(expect_msg(i.mean(0, false), "mean: dtype i32"), E::BadDType { .. }));
    assert!(matches!(expect_msg(i.softmax(0), "softmax"), E::BadDType { .. }));
    assert!(matches!(expect_msg(f.where_(&f, 0.0), "bool (the condition)"), E::BadDType { op: "where", .. }));
    assert!(matches!(expect_msg(f.masked_fill(&f, 0.0), "bool (the mask)"), E::BadDType { .. }));
    assert!(matches!(expect_msg(b.neg(), "use logical_not for bool"), E::BadDType { .. }));
    assert!(matches!(expect_msg(&b + &b, "add: dtype bool"), E::BadDType { .. }));
    let f2 = input(&tr, "f2", DType::F32, &[3, 3]);
    assert!(matches!(expect_msg(f2.matmul(&h), "matmul: operand dtypes f32 and bf16 differ"), E::DTypeMismatch { .. }));
    assert!(matches!(expect_msg(b.amax(0, false), "amax: dtype bool"), E::BadDType { .. }));
    assert!(matches!(expect_msg(tr.arange(0.0, 3.0, 1.0, DType::Bool), "arange"), E::BadDType { .. }));
}

#[test]
fn bad_dims() {
    let tr = Tracer::new("t");
    let x = input(&tr, "x", DType::F32, &[2, 3, 4]);
    let e = expect_msg(x.sum(3, false), "sum: dimension 3 is out of range for a tensor of rank 3 (expected a value in [-3, 2])");
    assert!(matches!(e, E::BadDim { dim: 3, rank: 3, .. }));
    assert!(matches!(expect_msg(x.softmax(-4), "softmax: dimension -4"), E::BadDim { .. }));
    assert!(matches!(expect_msg(x.transpose(0, 5), "transpose"), E::BadDim { .. }));
    assert!(matches!(expect_msg(x.unsqueeze(5), "unsqueeze"), E::BadDim { .. }));
    assert!(matches!(expect_msg(x.sum([0, -3], true), "dimension 0 is repeated"), E::RepeatedDim { .. }));
    assert!(matches!(expect_msg(x.permute([0, 1]), "2 dims given for a tensor of rank 3"), E::Invalid { .. }));
    assert!(matches!(expect_msg(x.permute([0, 1, 1]), "repeated"), E::RepeatedDim { .. }));
    assert!(matches!(expect_msg(x.flatten(2, 0), "comes after"), E::Invalid { .. }));
    assert!(matches!(expect_msg(x.size(isize::MIN), "size: dimension"), E::BadDim { .. }));
    assert!(matches!(expect_msg(x.split(0, 0), "split_size"), E::Invalid { .. }));
}

#[test]
fn bad_reshapes() {
    let tr = Tracer::new("t");
    let x = input(&tr, "x", DType::F32, &[2, 3, 4]);
    let e = expect_msg(x.reshape([-1, -1]), "cannot reshape a tensor of shape [2,3,4] into [-1, -1]: only one dimension can be -1");
    assert!(matches!(e, E::Reshape { .. }));
    assert!(matches!(expect_msg(x.view([5, -1]), "view: cannot reshape"), E::Reshape { op: "view", .. }));
    assert!(matches!(expect_msg(x.reshape([4, 7]), "the tensor has 24 elements but the shape asks for 28"), E::Reshape { .. }));
    assert!(matches!(expect_msg(x.reshape([-3, 8]), "invalid size -3"), E::Reshape { .. }));
    assert!(matches!(expect_msg(x.reshape([0, -1]), "cannot be split"), E::Reshape { .. }));
}

#[test]
fn mixing_tracers() {
    let (t1, t2) = (Tracer::new("a"), Tracer::new("b"));
    let a = input(&t1, "x", DType::F32, &[3, 3]);
    let b = input(&t2, "x", DType::F32, &[3, 3]);
    let m = input(&t2, "m", DType::Bool, &[3, 3]);
    let e = expect_msg(&a + &b, "add: the operands belong to different tracers");
    assert!(matches!(e, E::TracerMismatch { op: "add" }));
    assert!(matches!(expect_msg(a.matmul(&b), "matmul"), E::TracerMismatch { .. }));
    assert!(matches!(expect_msg(cat(&[&a, &b], 0), "cat"), E::TracerMismatch { .. }));
    assert!(matches!(expect_msg(a.masked_fill(&m, 0.0), "masked_fill"), E::TracerMismatch { .. }));
    assert!(matches!(expect_msg(m.where_(&a, &b), "where"), E::TracerMismatch { .. }));
    assert!(matches!(expect_msg(a.layer_norm(&[3], Some(&b), None, 1e-5), "layer_norm"), E::TracerMismatch { .. }));
    assert!(matches!(expect_msg(t1.finish(&[&b]), "finish"), E::TracerMismatch { .. }));
}

#[test]
fn graph_level_errors() {
    let tr = Tracer::new("t");
    let _ = input(&tr, "x", DType::F32, &[3]);
    let e = expect_msg(tr.input("x", DType::F32, [3]), "graph input name \"x\" is used twice");
    assert!(matches!(e, E::Ir(ref ir) if matches!(**ir, IrError::DuplicateInput(_))));
    assert!(matches!(expect_msg(tr.input("huge", DType::F32, [1 << 30, 1 << 30]), "more elements than Kiln can index"), E::TooLarge { .. }));
    let x = tr.input("y", DType::F32, [1, 3]).unwrap();
    assert!(matches!(expect_msg(x.expand([usize::MAX, 3]), "expand"), E::TooLarge { .. }));
    assert!(matches!(expect_msg(tr.finish(&[]), "at least one output"), E::Invalid { .. }));
    assert!(matches!(expect_msg(tr.arange(0.0, 1.0, 0.0, DType::F32), "step 0"), E::Invalid { .. }));
}

#[test]
fn module_errors() {
    // a parameter requested twice with different shapes
    let m = module_fn("conflict", |vars, xs| {
        let a = vars.get("w", [3], Init::WEIGHT)?;
        let b = vars.get("w", [4], Init::WEIGHT)?;
        Ok(vec![xs[0].add(&a)?.sum_all()?.add(&b.sum_all()?)?])
    });
    let e = expect_msg(trace(&m, &[InputSpec::new("x", DType::F32, [3])]), "parameter \"w\" was requested as f32[4] but already exists as f32[3]");
    assert!(matches!(e, E::ParamConflict { .. }));
    // tying: the same name and type is the same input
    let tied = module_fn("tied", |vars, xs| {
        let a = vars.pp("enc").get("w", [3], Init::WEIGHT)?;
        let b = vars.pp("enc").get("w", [3], Init::WEIGHT)?;
        Ok(vec![xs[0].add(&a)?.add(&b)?])
    });
    let t = trace(&tied, &[InputSpec::new("x", DType::F32, [3])]).unwrap();
    assert_eq!(t.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["x", "enc.w"]);
    // input counts and model shapes
    let mlp = Mlp::new(MlpConfig { in_features: 4, hidden: 8, out_features: 2, ..MlpConfig::default() });
    let two = [InputSpec::new("x", DType::F32, [4]), InputSpec::new("y", DType::F32, [4])];
    assert!(matches!(expect_msg(trace(&mlp, &two), "mlp: expected 1 input(s), got 2"), E::InputCount { .. }));
    assert!(matches!(expect_msg(trace(&mlp, &[InputSpec::new("x", DType::F32, [3, 5])]), "input has 5 features but weight expects 4"), E::Features { .. }));
    let cfg = Gpt2Config::tiny();
    let gpt = Gpt2::new(cfg);
    assert!(matches!(expect_msg(trace(&gpt, &[cfg.input_spec(1, 17)]), "longer than block_size 16"), E::Invalid { .. }));
    assert!(matches!(expect_msg(trace(&gpt, &[InputSpec::new("x", DType::F32, [7, 64])]), "rank 3"), E::Rank { .. }));
    assert!(matches!(expect_msg(trace(&gpt, &[InputSpec::new("x", DType::F32, [1, 7, 65])]), "65 features"), E::Features { .. }));
    let bad = Gpt2::new(Gpt2Config { n_head: 5, ..cfg });
    assert!(matches!(expect_msg(trace(&bad, &[cfg.input_spec(1, 7)]), "multiple of n_head 5"), E::Invalid { .. }));
    let bf = Gpt2::new(cfg.with_dtype(DType::BF16));
    assert!(matches!(expect_msg(trace(&bf, &[cfg.input_spec(1, 7)]), "f32 and bf16"), E::DTypeMismatch { .. }));
}

// ---- property test: random ops never panic, and whatever traces verifies and runs ----

#[derive(Clone, Debug)]
enum Step {
    Unary(u8),
    Binary(u8, usize),
    Reduce(u8, Vec<isize>, bool),
    Softmax(isize, bool),
    Reshape(Vec<isize>),
    Permute(Vec<isize>),
    Transpose(isize, isize),
    Expand(Vec<isize>),
    Slice(isize, isize, isize, usize),
    Narrow(isize, isize, usize),
    Unsqueeze(isize),
    Squeeze(isize),
    Cat(usize, isize),
    MatMul(usize),
    Linear(usize),
    Tri(bool, i64),
    MaskedFill(usize),
    Where(usize),
    Norm(usize, bool),
    Cast(u8),
}

fn dims() -> impl Strategy<Value = Vec<isize>> {
    prop::collection::vec(-5isize..5, 0..4)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<u8>().prop_map(Step::Unary),
        (any::<u8>(), 0usize..8).prop_map(|(o, i)| Step::Binary(o, i)),
        (any::<u8>(), dims(), any::<bool>()).prop_map(|(o, d, k)| Step::Reduce(o, d, k)),
        (-4isize..4, any::<bool>()).prop_map(|(d, l)| Step::Softmax(d, l)),
        prop::collection::vec(-2isize..7, 0..5).prop_map(Step::Reshape),
        dims().prop_map(Step::Permute),
        (-4isize..4, -4isize..4).prop_map(|(a, b)| Step::Transpose(a, b)),
        prop::collection::vec(-2isize..6, 0..5).prop_map(Step::Expand),
        (-4isize..4, -6isize..6, -6isize..8, 0usize..3).prop_map(|(d, s, e, st)| Step::Slice(d, s, e, st)),
        (-4isize..4, -6isize..6, 0usize..6).prop_map(|(d, s, l)| Step::Narrow(d, s, l)),
        (-5isize..5).prop_map(Step::Unsqueeze),
        (-5isize..5).prop_map(Step::Squeeze),
        (0usize..8, -4isize..4).prop_map(|(i, d)| Step::Cat(i, d)),
        (0usize..8).prop_map(Step::MatMul),
        (0usize..8).prop_map(Step::Linear),
        (any::<bool>(), -3i64..3).prop_map(|(l, d)| Step::Tri(l, d)),
        (0usize..8).prop_map(Step::MaskedFill),
        (0usize..8).prop_map(Step::Where),
        (1usize..3, any::<bool>()).prop_map(|(k, r)| Step::Norm(k, r)),
        any::<u8>().prop_map(Step::Cast),
    ]
}

const DTYPES: [DType; 6] = [DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64, DType::Bool];

fn apply(pool: &[Tensor], x: &Tensor, s: &Step) -> frontend::Result<Tensor> {
    let other = |i: usize| &pool[i % pool.len()];
    match s {
        Step::Unary(o) => match o % 14 {
            0 => x.exp(),
            1 => x.log(),
            2 => x.sqrt(),
            3 => x.rsqrt(),
            4 => x.tanh(),
            5 => x.erf(),
            6 => x.sigmoid(),
            7 => x.relu(),
            8 => x.gelu(),
            9 => x.gelu_tanh(),
            10 => x.silu(),
            11 => x.abs(),
            12 => x.neg(),
            _ => x.logical_not(),
        },
        Step::Binary(o, i) => {
            let y = other(*i);
            match o % 12 {
                0 => x + y,
                1 => x - y,
                2 => x * y,
                3 => x / y,
                4 => x.pow(y),
                5 => x.maximum(y),
                6 => x.minimum(y),
                7 => x.lt(y),
                8 => x.eq(y),
                9 => x * 2.5,
                10 => 1.0 - x,
                _ => x.logical_and(y),
            }
        }
        Step::Reduce(o, d, k) => match o % 7 {
            0 => x.sum(d.clone(), *k),
            1 => x.mean(d.clone(), *k),
            2 => x.amax(d.clone(), *k),
            3 => x.amin(d.clone(), *k),
            4 => x.var(d.clone(), 1.0, *k),
            5 => x.max(d.first().copied().unwrap_or(0), *k),
            _ => x.std(d.clone(), 0.0, *k),
        },
        Step::Softmax(d, l) => if *l { x.log_softmax(*d) } else { x.softmax(*d) },
        Step::Reshape(s) => x.reshape(s.clone()),
        Step::Permute(d) => x.permute(d.clone()),
        Step::Transpose(a, b) => x.transpose(*a, *b),
        Step::Expand(s) => x.expand(s.clone()),
        Step::Slice(d, s, e, st) => x.slice(*d, *s, *e, *st),
        Step::Narrow(d, s, l) => x.narrow(*d, *s, *l),
        Step::Unsqueeze(d) => x.unsqueeze(*d),
        Step::Squeeze(d) => x.squeeze(*d),
        Step::Cat(i, d) => cat(&[x, other(*i)], *d),
        Step::MatMul(i) => x.matmul(other(*i)),
        Step::Linear(i) => x.linear(other(*i), None),
        Step::Tri(l, d) => if *l { x.tril(*d) } else { x.triu(*d) },
        Step::MaskedFill(i) => x.masked_fill(other(*i), -1.0),
        Step::Where(i) => other(*i).where_(x, 0.5),
        Step::Norm(k, r) => {
            let n = x.rank().min(*k);
            let shape = x.dims()[x.rank() - n..].to_vec();
            if *r { x.rms_norm(&shape, None, None) } else { x.layer_norm(&shape, None, None, 1e-5) }
        }
        Step::Cast(d) => x.to_dtype(DTYPES[*d as usize % DTYPES.len()]),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_ops_never_panic(
        inputs in prop::collection::vec((0usize..6, prop::collection::vec(0usize..5, 0..4)), 1..4),
        steps in prop::collection::vec((0usize..8, step()), 1..12),
    ) {
        let tr = Tracer::new("prop");
        let mut pool: Vec<Tensor> = inputs
            .iter()
            .enumerate()
            .map(|(i, (d, s))| tr.input(format!("x{i}"), DTYPES[*d], s.clone()).unwrap())
            .collect();
        for (pick, s) in &steps {
            let x = pool[pick % pool.len()].clone();
            if let Ok(y) = apply(&pool, &x, s) {
                pool.push(y);
            }
        }
        // whatever was traced forms a verified graph, and small graphs run in the interpreter
        let last = pool.last().unwrap();
        let g = tr.finish(&[last]).expect("a traced graph verifies");
        if g.nodes().all(|(_, n)| n.shape.numel() <= 4096) {
            let vals: Vec<_> = g.inputs().iter().enumerate().map(|(i, &id)| {
                let n = g.node(id);
                let data = frontend::rng::Rng::new(i as u64).normal_vec(n.shape.numel(), 0.0, 1.0);
                ir::interp::Value::new(n.dtype, n.shape.clone(), data).unwrap()
            }).collect();
            ir::interp::run(&g, &vals).expect("a traced graph runs");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any GPT-2 configuration and input shape traces or returns an error; never a panic.
    #[test]
    fn random_gpt2_configs_never_panic(
        n_layer in 0usize..3, n_head in 0usize..5, n_embd in 0usize..40, block_size in 0usize..10,
        dims in prop::collection::vec(0usize..10, 0..5), spelling in 0usize..6, huge in any::<bool>(),
    ) {
        let n_embd = if huge { usize::MAX / 2 } else { n_embd };
        let cfg = Gpt2Config {
            n_layer, n_head, n_embd, block_size,
            attention: frontend::models::AttentionSpelling::ALL[spelling],
            ..Gpt2Config::tiny()
        };
        let _ = trace(&Gpt2::new(cfg), &[InputSpec::new("x", DType::F32, dims.clone())]);
        let _ = trace(&frontend::models::Block::new(cfg), &[InputSpec::new("x", DType::F32, dims.clone())]);
        let mlp = Mlp::new(MlpConfig { in_features: n_embd, hidden: block_size, out_features: n_head, ..MlpConfig::default() });
        let _ = trace(&mlp, &[InputSpec::new("x", DType::F32, dims)]);
    }
}
