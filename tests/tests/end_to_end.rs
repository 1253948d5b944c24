//! The whole pipeline (trace -> optimize -> codegen -> run) on the CPU, against the reference.

use frontend::models::{AttentionSpelling, Gpt2, Gpt2Config, Mlp, MlpConfig};
use frontend::{trace, InputSpec};
use ir::DType;
use kiln::{Backend, Config, HostTensor};
use kiln_tests::{check_cpu, cpu_config};

#[test]
fn mlp_matches_reference() {
    let mlp = Mlp::new(MlpConfig { in_features: 50, hidden: 77, out_features: 13, ..MlpConfig::default() });
    let t = trace(&mlp, &[InputSpec::new("x", DType::F32, [3, 50])]).unwrap();
    let c = check_cpu(&t.graph, &t.random_inputs(1), 1.0);
    assert!(c.launches_per_call() <= t.graph.len());
}

#[test]
fn gpt2_every_spelling_matches_reference() {
    for spelling in AttentionSpelling::ALL {
        let cfg = Gpt2Config::tiny().with_attention(spelling);
        let t = trace(&Gpt2::new(cfg), &[cfg.input_spec(2, 7)]).unwrap();
        check_cpu(&t.graph, &t.random_inputs(3), 10.0);
    }
}

#[test]
fn gpt2_bf16_matches_reference() {
    let cfg = Gpt2Config::tiny().with_dtype(DType::BF16);
    let t = trace(&Gpt2::new(cfg), &[cfg.input_spec(1, 5)]).unwrap();
    check_cpu(&t.graph, &t.random_inputs(4), 4.0);
}

#[test]
fn optimized_and_one_per_op_agree_and_fuse() {
    let cfg = Gpt2Config::tiny();
    let t = trace(&Gpt2::new(cfg), &[cfg.input_spec(1, 9)]).unwrap();
    let opt = kiln::compile(&t.graph, &cpu_config()).unwrap();
    let eager = kiln::compile(&t.graph, &Config { optimize: false, ..cpu_config() }).unwrap();
    assert!(opt.launches_per_call() * 2 < eager.launches_per_call(), "{} vs {}", opt.launches_per_call(), eager.launches_per_call());
    let ins: Vec<HostTensor> = t.random_inputs(9).iter().map(HostTensor::from_value).collect();
    let (a, b) = (opt.run(&ins).unwrap(), eager.run(&ins).unwrap());
    let diff = a[0].to_value().max_rel_diff(&b[0].to_value());
    assert!(diff < 1e-3, "{diff}");
}

#[test]
fn compile_is_deterministic() {
    let cfg = Gpt2Config::tiny();
    let t = trace(&Gpt2::new(cfg), &[cfg.input_spec(1, 6)]).unwrap();
    let a = kiln::compile(&t.graph, &cpu_config()).unwrap();
    let b = kiln::compile(&t.graph, &cpu_config()).unwrap();
    assert_eq!(a.kernel_graph().to_string(), b.kernel_graph().to_string());
}

#[test]
fn cache_hit_on_second_compile() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config { cache_dir: Some(dir.path().to_path_buf()), ..cpu_config() };
    let mlp = Mlp::new(MlpConfig { in_features: 16, hidden: 32, out_features: 8, ..MlpConfig::default() });
    let t = trace(&mlp, &[InputSpec::new("x", DType::F32, [5, 16])]).unwrap();
    let a = kiln::compile(&t.graph, &cfg).unwrap();
    assert!(!a.stats().cache_hit);
    let b = kiln::compile(&t.graph, &cfg).unwrap();
    assert!(b.stats().cache_hit, "second compile should hit the cache");
    let ins: Vec<HostTensor> = t.random_inputs(2).iter().map(HostTensor::from_value).collect();
    assert_eq!(a.run(&ins).unwrap()[0].to_value(), b.run(&ins).unwrap()[0].to_value());
}

#[test]
fn bad_inputs_are_typed_errors() {
    let mlp = Mlp::new(MlpConfig { in_features: 4, hidden: 8, out_features: 2, ..MlpConfig::default() });
    let t = trace(&mlp, &[InputSpec::new("x", DType::F32, [3, 4])]).unwrap();
    let c = kiln::compile(&t.graph, &cpu_config()).unwrap();
    let mut ins: Vec<HostTensor> = t.random_inputs(0).iter().map(HostTensor::from_value).collect();
    let e = c.run(&ins[..1]).err().expect("too few inputs must fail");
    assert!(e.to_string().contains("input"), "{e}");
    ins[0] = HostTensor::zeros(DType::F32, [3, 5]);
    let e = c.run(&ins).err().expect("wrong shape must fail");
    assert!(e.to_string().contains("[3,5]") || e.to_string().contains("[3, 5]"), "{e}");
    ins[0] = HostTensor::zeros(DType::F16, [3, 4]);
    assert!(c.run(&ins).is_err());
}

#[test]
fn interpreter_backend_runs_kernel_graphs() {
    let mlp = Mlp::new(MlpConfig { in_features: 6, hidden: 10, out_features: 3, ..MlpConfig::default() });
    let t = trace(&mlp, &[InputSpec::new("x", DType::F32, [2, 6])]).unwrap();
    let c = kiln::compile(&t.graph, &Config { backend: Backend::Interpreter, ..cpu_config() }).unwrap();
    let ins = t.random_inputs(5);
    let out = c.run(&ins.iter().map(HostTensor::from_value).collect::<Vec<_>>()).unwrap();
    assert!(out[0].to_value().max_rel_diff(&ir::interp::run(&t.graph, &ins).unwrap()[0]) < 1e-6);
}
