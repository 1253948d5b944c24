//! The model zoo: GPT-2 small traces fast into one verified graph; the tiny GPT-2 runs in the
//! interpreter, every attention spelling agrees, and matches an independent f64 forward.

mod common;

use common::*;
use frontend::models::{AttentionSpelling, Block, Gpt2, Gpt2Config, Mlp, MlpConfig};
use frontend::{trace, InputSpec, Role, Traced};
use ir::interp::Value;
use ir::DType;
use std::collections::HashMap;
use std::time::Instant;

#[test]
fn gpt2_small_traces_into_one_verified_graph_fast() {
    let cfg = Gpt2Config::small();
    let model = Gpt2::new(cfg);
    let spec = cfg.input_spec(1, 32);
    // best of three, so a busy CI machine does not turn scheduling noise into a failure
    let mut elapsed = std::time::Duration::MAX;
    let mut t = None;
    for _ in 0..3 {
        let start = Instant::now();
        let traced = trace(&model, std::slice::from_ref(&spec)).unwrap();
        elapsed = elapsed.min(start.elapsed());
        t = Some(traced);
    }
    let t = t.unwrap();
    println!("GPT-2 small (12 layers, d=768, T=32): traced {} nodes in {:.2?}", t.graph.len(), elapsed);
    ir::verify::verify(&t.graph).unwrap();
    assert_eq!(t.params().count(), 12 * 12 + 2);
    assert_eq!(t.activations().count(), 1);
    assert_eq!(t.graph.outputs().len(), 1);
    assert_eq!(t.graph.node(t.graph.outputs()[0]).shape.dims(), &[1, 32, 768]);
    // about 2 ms even in the dev profile, so the bound holds in every build
    assert!(elapsed.as_millis() < 100, "tracing took {elapsed:?}");
}

fn by_name(t: &Traced) -> HashMap<&str, &InputSpec> {
    t.inputs.iter().map(|s| (s.name.as_str(), s)).collect()
}

#[test]
fn gpt2_parameter_names_and_roles() {
    let cfg = Gpt2Config { lm_head: true, ..Gpt2Config::tiny() };
    let t = trace(&Gpt2::new(cfg), &[cfg.input_spec(2, 7)]).unwrap();
    let names = by_name(&t);
    assert_eq!(names["x"].role, Role::Activation);
    let w = names["h.0.attn.c_attn.weight"];
    assert_eq!((w.role, w.shape.dims()), (Role::Param, &[192usize, 64][..]));
    assert_eq!(names["h.1.mlp.c_fc.weight"].shape.dims(), &[256, 64]);
    assert_eq!(names["ln_f.bias"].shape.dims(), &[64]);
    assert_eq!(names["lm_head.weight"].shape.dims(), &[97, 64]);
    assert!(!names.contains_key("lm_head.bias"));
    // graph inputs line up with the specs
    for (&id, s) in t.graph.inputs().iter().zip(&t.inputs) {
        assert_eq!(t.graph.input_name(id), Some(s.name.as_str()));
        assert_eq!(t.graph.node(id).shape, s.shape);
    }
    // random weights: LayerNorm weights near 1, biases near 0 but never all zero
    let vals = t.random_inputs(3);
    let ln_w = &vals[t.inputs.iter().position(|s| s.name == "h.0.ln_1.weight").unwrap()];
    let mean = ln_w.data.iter().sum::<f64>() / 64.0;
    assert!((mean - 1.0).abs() < 0.1 && ln_w.data.iter().any(|&v| v != 1.0));
    let ln_b = &vals[t.inputs.iter().position(|s| s.name == "h.0.ln_1.bias").unwrap()];
    assert!(ln_b.data.iter().all(|&v| v.abs() < 0.5) && ln_b.data.iter().any(|&v| v != 0.0));
    let out = t.interpret(&vals).unwrap();
    assert_eq!(out[0].shape.dims(), &[2, 7, 97]);
}

/// Runs the tiny GPT-2 with one spelling on seeded weights.
fn run_gpt2(cfg: Gpt2Config, b: usize, t: usize, seed: u64) -> (Traced, Vec<Value>, Value) {
    let traced = trace(&Gpt2::new(cfg), &[cfg.input_spec(b, t)]).unwrap();
    let inputs = traced.random_inputs(seed);
    let out = traced.interpret(&inputs).unwrap().pop().unwrap();
    (traced, inputs, out)
}

#[test]
fn all_attention_spellings_agree_and_match_a_reference() {
    // head size 16 (scales are exact) and head size 12 (scales round to f32)
    for (n_embd, n_head) in [(64, 4), (48, 4)] {
        let base = Gpt2Config { n_embd, n_head, ..Gpt2Config::tiny() };
        let (traced, inputs, want) = run_gpt2(base, 2, 7, 11);
        assert!(want.data.iter().all(|v| v.is_finite()));
        let reference = gpt2_reference(&base, &traced, &inputs, 2, 7);
        assert_close(&want, &[2, 7, n_embd], &reference, 1e-6);
        for spelling in AttentionSpelling::ALL {
            let (t2, in2, got) = run_gpt2(base.with_attention(spelling), 2, 7, 11);
            assert_eq!(t2.inputs, traced.inputs, "{spelling:?}: same parameters");
            assert_eq!(in2, inputs);
            assert!(got.data.iter().all(|v| v.is_finite()), "{spelling:?}");
            assert_close(&got, &[2, 7, n_embd], &want.data, 1e-6);
        }
    }
}

#[test]
fn bf16_spellings_agree_within_bf16_tolerance() {
    let base = Gpt2Config::tiny().with_dtype(DType::BF16);
    let (traced, _, want) = run_gpt2(base, 1, 7, 5);
    assert_eq!(want.dtype, DType::BF16);
    assert!(traced.inputs.iter().all(|s| s.dtype == DType::BF16));
    for spelling in AttentionSpelling::ALL {
        let (_, _, got) = run_gpt2(base.with_attention(spelling), 1, 7, 5);
        assert!(got.data.iter().all(|v| v.is_finite()), "{spelling:?}");
        let diff = got.max_rel_diff(&want);
        assert!(diff <= 4.0 * DType::BF16.tolerance(), "{spelling:?}: {diff}");
    }
    // in bf16 every spelling is a different graph
    let texts: std::collections::HashSet<String> = AttentionSpelling::ALL
        .iter()
        .map(|&sp| trace(&Gpt2::new(base.with_attention(sp)), &[base.input_spec(1, 7)]).unwrap().graph.to_string())
        .collect();
    assert_eq!(texts.len(), AttentionSpelling::ALL.len());
    // the fp32-softmax spelling really upcasts the scores
    let t = trace(&Gpt2::new(base.with_attention(AttentionSpelling::Fp32Softmax)), &[base.input_spec(1, 7)]).unwrap();
    assert!(t.graph.nodes().any(|(_, n)| n.op == ir::Op::Cast { to: DType::F32 }));
}

#[test]
fn block_and_mlp_modules() {
    let cfg = Gpt2Config::tiny();
    let t = trace(&Block::new(cfg), &[cfg.input_spec(1, 5)]).unwrap();
    assert_eq!(t.params().count(), 12);
    assert!(t.inputs.iter().any(|s| s.name == "attn.c_attn.weight"));
    let out = t.interpret(&t.random_inputs(1)).unwrap();
    assert!(out[0].data.iter().all(|v| v.is_finite()));

    let mcfg = MlpConfig { in_features: 13, hidden: 50, out_features: 7, ..MlpConfig::default() };
    let t = trace(&Mlp::new(mcfg), &[InputSpec::new("x", DType::F32, [3, 4, 13])]).unwrap();
    let vals = t.random_inputs(2);
    let got = t.interpret(&vals).unwrap().pop().unwrap();
    let p = |name: &str| &vals[t.inputs.iter().position(|s| s.name == name).unwrap()].data;
    let h = linear_ref(&vals[0].data, 13, p("fc1.weight"), Some(p("fc1.bias")), 50);
    let h: Vec<f64> = h.iter().map(|&v| v * 0.5 * (1.0 + erf(v * (std::f64::consts::FRAC_1_SQRT_2 as f32 as f64)))).collect();
    let want = linear_ref(&h, 50, p("fc2.weight"), Some(p("fc2.bias")), 7);
    assert_close(&got, &[3, 4, 7], &want, 1e-9);
}

// ---- an independent f64 GPT-2 forward ----

fn linear_ref(x: &[f64], k: usize, w: &[f64], b: Option<&Vec<f64>>, n: usize) -> Vec<f64> {
    let rows = x.len() / k;
    let mut out = vec![0.0; rows * n];
    for r in 0..rows {
        for j in 0..n {
            let mut acc = b.map_or(0.0, |b| b[j]);
            for p in 0..k {
                acc += x[r * k + p] * w[j * k + p];
            }
            out[r * n + j] = acc;
        }
    }
    out
}

fn layer_norm_rows(x: &[f64], d: usize, w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    x.chunks(d)
        .flat_map(|row| {
            let m = row.iter().sum::<f64>() / d as f64;
            let v = row.iter().map(|a| (a - m).powi(2)).sum::<f64>() / d as f64;
            row.iter().enumerate().map(move |(j, a)| (a - m) / (v + eps).sqrt() * w[j] + b[j]).collect::<Vec<_>>()
        })
        .collect()
}

fn gpt2_reference(cfg: &Gpt2Config, t: &Traced, inputs: &[Value], b: usize, tt: usize) -> Vec<f64> {
    let get = |name: &str| &inputs[t.inputs.iter().position(|s| s.name == name).unwrap()].data;
    let (c, nh) = (cfg.n_embd, cfg.n_head);
    let hs = c / nh;
    let eps = cfg.ln_eps as f32 as f64;
    let mut x = inputs[0].data.clone();
    for l in 0..cfg.n_layer {
        let p = |s: &str| get(&format!("h.{l}.{s}"));
        let h = layer_norm_rows(&x, c, p("ln_1.weight"), p("ln_1.bias"), eps);
        let qkv = linear_ref(&h, c, p("attn.c_attn.weight"), Some(p("attn.c_attn.bias")), 3 * c);
        let mut y = vec![0.0; b * tt * c];
        for bi in 0..b {
            for head in 0..nh {
                let at = |ti: usize, which: usize, j: usize| qkv[(bi * tt + ti) * 3 * c + which * c + head * hs + j];
                for i in 0..tt {
                    let mut scores: Vec<f64> = (0..=i)
                        .map(|j| (0..hs).map(|e| at(i, 0, e) * at(j, 1, e)).sum::<f64>() / (hs as f64).sqrt())
                        .collect();
                    softmax_line(&mut scores);
                    for e in 0..hs {
                        y[(bi * tt + i) * c + head * hs + e] = (0..=i).map(|j| scores[j] * at(j, 2, e)).sum();
                    }
                }
            }
        }
        let a = linear_ref(&y, c, p("attn.c_proj.weight"), Some(p("attn.c_proj.bias")), c);
        x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
        let h = layer_norm_rows(&x, c, p("ln_2.weight"), p("ln_2.bias"), eps);
        let f = linear_ref(&h, c, p("mlp.c_fc.weight"), Some(p("mlp.c_fc.bias")), 4 * c);
        let g: Vec<f64> = f
            .iter()
            .map(|&v| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh()))
            .collect();
        let m = linear_ref(&g, 4 * c, p("mlp.c_proj.weight"), Some(p("mlp.c_proj.bias")), c);
        x.iter_mut().zip(&m).for_each(|(x, m)| *x += m);
    }
    layer_norm_rows(&x, c, get("ln_f.weight"), get("ln_f.bias"), eps)
}

#[test]
fn attention_core_spellings_match_a_reference() {
    use frontend::models::AttentionCore;
    let (b, nh, t, hs) = (2, 3, 7, 12);
    let specs = AttentionCore { spelling: AttentionSpelling::MaskedFillTril, block_size: 16, dtype: DType::F32 }.input_specs(b, nh, t, hs);
    let vals: Vec<Value> = specs.iter().map(|s| s.random_value(9)).collect();
    let (q, k, v) = (&vals[0].data, &vals[1].data, &vals[2].data);
    let mut want = vec![0.0; b * nh * t * hs];
    for bh in 0..b * nh {
        let o = bh * t * hs;
        for i in 0..t {
            let mut s: Vec<f64> =
                (0..=i).map(|j| (0..hs).map(|e| q[o + i * hs + e] * k[o + j * hs + e]).sum::<f64>() / (hs as f64).sqrt()).collect();
            softmax_line(&mut s);
            for e in 0..hs {
                want[o + i * hs + e] = (0..=i).map(|j| s[j] * v[o + j * hs + e]).sum();
            }
        }
    }
    for spelling in AttentionSpelling::ALL {
        let core = AttentionCore { spelling, block_size: 16, dtype: DType::F32 };
        let traced = trace(&core, &specs).unwrap();
        let got = traced.interpret(&vals).unwrap().pop().unwrap();
        assert_close(&got, &[b, nh, t, hs], &want, 1e-6);
    }
}
