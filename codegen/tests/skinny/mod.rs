//! Kiln's skinny GEMM (`codegen/src/gpu/emit/skinny.rs`): small-`m` GEMMs with every epilogue,
//! bf16 and f16, odd shapes (`m` = 1, 7, 32, 63; `k` and `n` off the tiles), one split and
//! split-K, against the interpreter with poisoned outputs; the PTX goes to `target/kiln-ptx/`.
//! An ignored benchmark times each GPT-2 small GEMM shape and the whole b1 t32 graph with the
//! skinny kernel and with cuBLASLt. By default the kernel takes every GEMM of `m <= 64` it can
//! (`docs/gpu-gemm.md`); `with_skinny_gemm` sets the bound on `m` on a thread, and
//! `with_fused_norms` lets it take the layer norm before it.

use super::{scaled_weights, trace, R};
use codegen::gpu::{with_fused_norms, with_skinny_clusters, with_skinny_gemm};
#[cfg(feature = "cuda")]
use super::device;
use frontend::Tensor;
use ir::{DType, Graph};
use runtime::cuda::{CudaArtifact, GpuStep};

/// `x [m, k] @ w [k, n]` (or `x @ w.t()` with `w [n, k]` when `ep` holds "wt") under epilogue
/// `ep`: "" | "bias" | "bias_gelu" | "gelu" | "bias_relu" | "res" | "bias_res".
fn gemm_graph(name: &str, d: DType, m: usize, k: usize, n: usize, ep: &str) -> Graph {
    trace(name, |t| {
        let x = t.input("x", d, [m, k])?;
        let mut y: Tensor = if ep.contains("wt") { x.matmul(&t.input("w", d, [n, k])?.t()?)? } else { x.matmul(&t.input("w", d, [k, n])?)? };
        if ep.contains("bias") {
            let b = t.input("b", d, [n])?;
            y = y.add(&b)?;
        }
        if ep.contains("gelu") {
            y = y.gelu_tanh()?;
        }
        if ep.contains("relu") {
            y = y.relu()?;
        }
        if ep.contains("res") {
            let r = t.input("r", d, [m, n])?;
            y = r.add(&y)?;
        }
        Ok(vec![y])
    })
}

/// Compiles, writes the PTX and runs `g` against the interpreter with the skinny GEMM on.
fn check_with(name: &str, g: &Graph, inputs: Vec<ir::interp::Value>) -> R<CudaArtifact> {
    with_skinny_gemm(64, || super::check_with(name, g, inputs))
}

fn skinny_launches(art: &CudaArtifact) -> usize {
    art.steps.iter().filter(|s| matches!(s, GpuStep::Launch(l) if l.symbol.contains("_skinny_"))).count()
}

#[test]
fn skinny_gemm_odd_shapes_bf16() -> R<()> {
    odd_shapes(DType::BF16, "")
}

#[test]
fn skinny_gemm_odd_shapes_f16() -> R<()> {
    odd_shapes(DType::F16, "")
}

#[test]
fn skinny_gemm_odd_shapes_bf16_transposed_weight() -> R<()> {
    odd_shapes(DType::BF16, "wt_")
}

#[test]
fn skinny_gemm_odd_shapes_f16_transposed_weight() -> R<()> {
    odd_shapes(DType::F16, "wt_")
}

/// Every epilogue on one shape (bf16), the plain GEMM and one rotating epilogue on the others.
fn odd_shapes(d: DType, layout: &str) -> R<()> {
    let eps = ["", "bias", "bias_gelu", "gelu", "bias_relu", "res", "bias_res"];
    let mut case = 0;
    {
        for (m, k, n) in [(1, 770, 100), (7, 64, 72), (32, 770, 100), (63, 520, 64), (5, 40, 9000), (16, 72, 24)] {
            for (i, ep) in eps.iter().enumerate() {
                if !(ep.is_empty() || ((m, k) == (32, 770) && d == DType::BF16) || i == case % eps.len()) {
                    continue;
                }
                case += 1;
                let ep = format!("{layout}{}", if ep.is_empty() { "plain" } else { ep });
                let name = format!("skinny_{d}_m{m}_k{k}_n{n}_{ep}");
                let g = gemm_graph(&name, d, m, k, n, &ep);
                let art = check_with(&name, &g, scaled_weights(&g, 40 + case as u64))?;
                assert!(skinny_launches(&art) >= 1, "{name}: {}", art.summary());
                assert!(!art.steps.iter().any(|s| matches!(s, GpuStep::Gemm(_))), "{name}: {}", art.summary());
            }
        }
    }
    Ok(())
}

/// Transposed weights take 32-column blocks (4 n-tiles; 16 with a fused norm, below), in one
/// split or several: GPT-2 small's qkv shape, and odd `m`, `k`, `n` (a partial last block,
/// scalar loads past `k % 8`, a third and a fourth m-tile) with every kind of epilogue.
#[test]
fn skinny_gemm_narrow_column_blocks() -> R<()> {
    for (i, (d, m, k, n, ep)) in [
        (DType::BF16, 32, 768, 2304, "wt_bias"),
        (DType::BF16, 5, 770, 2200, "wt_bias_gelu"),
        (DType::F16, 33, 520, 4300, "wt_bias_res"),
        (DType::F16, 1, 64, 2210, "wt_plain"),
        (DType::BF16, 64, 96, 4200, "wt_res"),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("skinny_narrow_{d}_m{m}_k{k}_n{n}_{ep}");
        let g = gemm_graph(&name, d, m, k, n, ep);
        let art = check_with(&name, &g, scaled_weights(&g, 90 + i as u64))?;
        assert_eq!(skinny_launches(&art), 1, "{name}: {}", art.summary());
        assert!(
            !art.steps.iter().any(|s| matches!(s, GpuStep::Gemm(_))),
            "{name}: {}",
            art.summary()
        );
    }
    Ok(())
}

/// `layer_norm(x) @ w.t()` (x `[m, k]`, w `[n, k]`) with gamma and beta as `affine` says, then
/// epilogue `ep`.
fn norm_gemm_graph(
    name: &str,
    d: DType,
    (m, k, n): (usize, usize, usize),
    affine: (bool, bool),
    ep: &str,
) -> Graph {
    trace(name, |t| {
        let x = t.input("x", d, [m, k])?;
        Ok(vec![norm_gemm(t, &x, d, (m, k, n), affine, ep, ("w", "r"))?])
    })
}

/// `layer_norm(x) @ w.t()` and epilogue `ep` on a traced `x [m, k]`; new inputs in this order:
/// gamma, beta (as `affine` says), the weight and the residual as `names` call them, the bias.
fn norm_gemm(
    t: &frontend::Tracer,
    x: &Tensor,
    d: DType,
    (m, k, n): (usize, usize, usize),
    affine: (bool, bool),
    ep: &str,
    (w, r): (&str, &str),
) -> frontend::Result<Tensor> {
    let gamma = if affine.0 { Some(t.input("gamma", d, [k])?) } else { None };
    let beta = if affine.1 { Some(t.input("beta", d, [k])?) } else { None };
    let h = x.layer_norm(&[k], gamma.as_ref(), beta.as_ref(), 1e-5)?;
    let mut y = h.matmul(&t.input(w, d, [n, k])?.t()?)?;
    if ep.contains("bias") {
        y = y.add(&t.input("b", d, [n])?)?;
    }
    if ep.contains("gelu") {
        y = y.gelu_tanh()?;
    }
    if ep.contains("res") {
        y = t.input(r, d, [m, n])?.add(&y)?;
    }
    Ok(y)
}

/// With fused norms on (`with_fused_norms`; off by default, docs/gpu-gemm.md), a layer norm
/// before a GEMM runs inside the skinny GEMM (one launch, no norm kernel), as one
/// kernel body and through the optimizer's kernel graph (where the norm is a kernel of its
/// own until the lowering moves it into the GEMM): GPT-2's shapes and odd ones (`k % 8 != 0`,
/// a partial column block, one row, fewer steps than warps), with and without gamma and beta.
/// A GEMM whose `A` would not fit in registers keeps its norm kernel (and, split over K, the
/// counter reset), and both stay right.
#[test]
fn skinny_gemm_fused_layer_norm() -> R<()> {
    let cases = [
        (DType::BF16, (32, 768, 2304), (true, true), "bias", 1),
        (DType::BF16, (32, 768, 3072), (true, true), "bias_gelu", 1),
        (DType::F16, (5, 770, 300), (true, true), "bias_res", 1),
        (DType::BF16, (1, 64, 100), (false, false), "plain", 1),
        (DType::BF16, (18, 64, 192), (true, true), "bias", 1),
        (DType::F16, (13, 200, 72), (true, false), "res", 1),
        (DType::BF16, (64, 768, 256), (true, true), "bias", 3),
    ];
    for (i, (d, (m, k, n), affine, ep, launches)) in cases.into_iter().enumerate() {
        let name = format!(
            "skinny_norm_{d}_m{m}_k{k}_n{n}_{ep}_{}{}",
            u8::from(affine.0),
            u8::from(affine.1)
        );
        let g = norm_gemm_graph(&name, d, (m, k, n), affine, ep);
        let art = with_fused_norms(true, || check_with(&name, &g, scaled_weights(&g, 120 + i as u64)))?;
        assert_eq!(art.steps.len(), launches, "{name}: {}", art.summary());
        assert_eq!(skinny_launches(&art), 1, "{name}: {}", art.summary());
        let kg = passes::optimize(&g, &passes::DeviceProfile::h200())?.kernels;
        let opt = with_fused_norms(true, || with_skinny_gemm(64, || codegen::gpu::compile(&kg, &Default::default())))?;
        assert_eq!(
            opt.steps.len(),
            launches,
            "{name} via passes ({} kernels): {}",
            kg.kernels.len(),
            opt.summary()
        );
        std::fs::write(
            super::ptx_dir().join(format!("{name}_optimized.ptx")),
            &opt.ptx,
        )?;
        let inputs = scaled_weights(&g, 120 + i as u64);
        let reference = ir::interp::run(&g, &inputs)?;
        super::device::run_and_compare(&format!("{name}_optimized"), &opt, &inputs, &reference)?;
    }
    Ok(())
}

/// `h = r + x @ w1^T [+ b1]`, then `layer_norm(h) @ w2^T` under epilogue `ep` (as
/// [`norm_gemm_graph`]); both `y` and `h` are outputs (a transformer's residual stream).
fn residual_norm_gemm_graph(
    name: &str,
    d: DType,
    (m, k1, k, n): (usize, usize, usize, usize),
    affine: (bool, bool),
    ep: &str,
) -> Graph {
    trace(name, |t| {
        let x = t.input("x", d, [m, k1])?;
        let h = t.input("r", d, [m, k])?.add(&x.matmul(&t.input("w1", d, [k, k1])?.t()?)?)?;
        let y = norm_gemm(t, &h, d, (m, k, n), affine, ep, ("w2", "r2"))?;
        Ok(vec![y, h])
    })
}

/// Random inputs with each weight `w* [out, in]` scaled by `1 / sqrt(in)`, its fan-in, as in a
/// trained network. Scaled by `out` (`scaled_weights`), `out < in` made the GEMM outputs
/// several times larger than the final ones, and the interpreter rounds after every op where
/// the GPU rounds a fused epilogue once: in a simulation of that rounding difference alone
/// (bf16, m 7, k 770, n 100, 300 seeds) 1.3% of the seeds crossed bf16's 3e-2 tolerance (as
/// one GPU run did, at 3.5e-2), none with fan-in scaling (at most 2.3e-2).
fn fan_in_weights(g: &Graph, seed: u64) -> Vec<ir::interp::Value> {
    let mut vals = super::random_inputs(g, seed);
    for (&i, v) in g.inputs().iter().zip(vals.iter_mut()) {
        if g.input_name(i).is_some_and(|n| n.starts_with('w')) {
            let s = 1.0 / (v.shape.dims()[1] as f64).sqrt();
            v.data.iter_mut().for_each(|x| *x *= s);
        }
    }
    vals
}

/// By default (`with_norm_stats`) a layer norm whose input a skinny GEMM writes runs inside
/// the GEMM after it, on the row statistics the writer stores per column block: no norm
/// kernel, and the reader keeps its K splits. Through the optimizer's kernel graph, against
/// the interpreter: GPT-2's shapes (writer and reader split over K or not), odd ones (a
/// partial last column block, `k % 8 != 0`, one row), f16, without gamma and beta; with more than
/// 32 rows (63) or the statistics off the norm is a kernel of its own again, and as right.
#[test]
fn skinny_gemm_norm_on_producer_stats() -> R<()> {
    let cases = [
        (DType::BF16, (32, 768, 768, 3072), (true, true), "bias_gelu"),
        (DType::BF16, (32, 3072, 768, 2304), (true, true), "bias"),
        (DType::BF16, (7, 64, 770, 100), (true, true), "bias_res"),
        (DType::F16, (1, 200, 136, 48), (false, false), "plain"),
        (DType::F16, (63, 96, 300, 72), (true, false), "res"),
        (DType::F16, (7, 64, 770, 100), (true, true), "bias_res"),
        (DType::BF16, (7, 64, 770, 100), (true, true), "bias"),
        (DType::BF16, (32, 64, 770, 100), (true, true), "bias_res"),
        (DType::BF16, (7, 64, 770, 100), (false, false), "bias_res"),
        (DType::BF16, (17, 1000, 40, 1500), (false, true), "bias"),
        (DType::BF16, (17, 64, 48, 1500), (false, true), "bias"),
    ];
    for (i, (d, shape, affine, ep)) in cases.into_iter().enumerate() {
        let (m, k1, k, n) = shape;
        let name = format!("skinny_stats_{d}_m{m}_k{k1}_k{k}_n{n}_{ep}_{}{}", u8::from(affine.0), u8::from(affine.1));
        let g = residual_norm_gemm_graph(&name, d, shape, affine, ep);
        let kg = passes::optimize(&g, &passes::DeviceProfile::h200())?.kernels;
        let inputs = fan_in_weights(&g, 300 + i as u64);
        let reference = ir::interp::run(&g, &inputs)?;
        for stats in [false, true] {
            let art = codegen::gpu::with_norm_stats(stats, || with_skinny_gemm(64, || codegen::gpu::compile(&kg, &Default::default())))?;
            let tag = format!("{name}_{}", if stats { "stats" } else { "plain" });
            std::fs::create_dir_all(super::ptx_dir())?;
            std::fs::write(super::ptx_dir().join(format!("{tag}.ptx")), &art.ptx)?;
            // Two GEMMs, the split-K counters' reset when either takes splits, and the norm
            // kernel only without the statistics.
            let others = art
                .steps
                .iter()
                .filter(|s| !matches!(s, GpuStep::Launch(l) if l.symbol.contains("_skinny_") || l.symbol.contains("splitk_counters")))
                .count();
            assert_eq!(skinny_launches(&art), 2, "{tag}: {}", art.summary());
            // More than 32 rows: the norm stays a kernel of its own.
            assert_eq!(others, usize::from(!stats || m > 32), "{tag}: {}", art.summary());
            if stats && m <= 32 {
                // The writer's last argument, f32 [m, blocks, 2], is among the reader's.
                let gemms: Vec<&Vec<u32>> = art
                    .steps
                    .iter()
                    .filter_map(|s| match s {
                        GpuStep::Launch(l) if l.symbol.contains("_skinny_") => Some(&l.args),
                        _ => None,
                    })
                    .collect();
                let written = *gemms[0].last().expect("arguments");
                let buf = &art.buffers[written as usize];
                assert_eq!((buf.dtype, buf.shape.as_slice()), (DType::F32, &[m, k.div_ceil(32), 2][..]), "{tag}");
                assert!(gemms[1].contains(&written), "{tag}: the reader does not take the statistics");
            }
            super::device::run_and_compare(&tag, &art, &inputs, &reference)?;
        }
    }
    Ok(())
}

/// Two layer norms of one residual GEMM's output, each before its own GEMM: the optimizer
/// computes their statistics once, in one kernel with both norms' outputs, which no GEMM can
/// take in (it has two outputs), so it stays a kernel, no statistics are written and the three
/// GEMMs run plain; all of it matches the interpreter.
#[test]
fn skinny_stats_read_by_two_norms() -> R<()> {
    let (d, m, k1, k, n) = (DType::BF16, 32, 512, 768, 256);
    let g = trace("skinny_stats_two_norms", |t| {
        let x = t.input("x", d, [m, k1])?;
        let h = t.input("r", d, [m, k])?.add(&x.matmul(&t.input("w1", d, [k, k1])?.t()?)?)?;
        let (g1, b1) = (t.input("gamma1", d, [k])?, t.input("beta1", d, [k])?);
        let (g2, b2) = (t.input("gamma2", d, [k])?, t.input("beta2", d, [k])?);
        let y1 = h.layer_norm(&[k], Some(&g1), Some(&b1), 1e-5)?.matmul(&t.input("w2", d, [n, k])?.t()?)?;
        let y2 = h.layer_norm(&[k], Some(&g2), Some(&b2), 1e-6)?.matmul(&t.input("w3", d, [n, k])?.t()?)?;
        Ok(vec![y1, y2, h])
    });
    let kg = passes::optimize(&g, &passes::DeviceProfile::h200())?.kernels;
    let art = with_skinny_gemm(64, || codegen::gpu::compile(&kg, &Default::default()))?;
    std::fs::create_dir_all(super::ptx_dir())?;
    std::fs::write(super::ptx_dir().join("skinny_stats_two_norms.ptx"), &art.ptx)?;
    assert_eq!(skinny_launches(&art), 3, "{}", art.summary());
    let inputs = fan_in_weights(&g, 77);
    let reference = ir::interp::run(&g, &inputs)?;
    super::device::run_and_compare("skinny_stats_two_norms", &art, &inputs, &reference)?;
    Ok(())
}

/// One split (enough column blocks to fill the GPU) and split-K (few columns, long `k`) both
/// run (row-major and transposed weights); a batched `[b, s, k] @ [k, n]` folds into one skinny
/// GEMM of `b * s` rows; `m > 64` stays on cuBLASLt.
#[test]
fn skinny_gemm_splits_batches_and_fallbacks() -> R<()> {
    let g = gemm_graph("skinny_one_split", DType::BF16, 3, 48, 64 * 140, "bias");
    let art = check_with("skinny_one_split", &g, scaled_weights(&g, 5))?;
    assert_eq!(skinny_launches(&art), 1, "{}", art.summary());
    let g = gemm_graph("skinny_split_k", DType::BF16, 17, 3000, 40, "bias_res");
    let art = check_with("skinny_split_k", &g, scaled_weights(&g, 6))?;
    assert_eq!(skinny_launches(&art), 1, "{}", art.summary());
    let g = gemm_graph("skinny_split_k_wt", DType::F16, 32, 3072, 200, "wt_bias_gelu");
    let art = check_with("skinny_split_k_wt", &g, scaled_weights(&g, 8))?;
    assert_eq!(skinny_launches(&art), 1, "{}", art.summary());
    let g = trace("skinny_batched", |t| {
        let x = t.input("x", DType::F16, [3, 11, 200])?;
        let w = t.input("w", DType::F16, [200, 72])?;
        let b = t.input("b", DType::F16, [72])?;
        let wt = t.input("wt", DType::F16, [72, 200])?;
        let big = t.input("big", DType::F16, [65, 200])?;
        Ok(vec![x.matmul(&w)?.add(&b)?.gelu_tanh()?, x.matmul(&wt.t()?)?, big.matmul(&w)?])
    });
    let art = check_with("skinny_batched", &g, scaled_weights(&g, 7))?;
    assert!(skinny_launches(&art) >= 1, "{}", art.summary());
    assert_eq!(art.steps.iter().filter(|s| matches!(s, GpuStep::Gemm(_))).count(), 1, "{}", art.summary());
    Ok(())
}

/// Split-K summed through thread-block clusters (`with_skinny_clusters`, sm_90; off by
/// default): GPT-2's two deep GEMMs (6 splits), 8 splits (the largest cluster), a row-major
/// weight (3 splits), `k % 8 != 0` with a partial m-tile, each one launch (no workspace, no
/// counter reset) whose entry declares its cluster shape, against the interpreter. A GEMM of
/// more splits than a cluster holds keeps the counters (two launches); on sm_80 every split-K
/// GEMM does.
#[test]
fn skinny_gemm_split_k_in_clusters() -> R<()> {
    let cases = [
        ((32, 768, 768), "wt_bias_res", 1),
        ((32, 3072, 768), "wt_bias_res", 1),
        ((5, 1000, 300), "wt_bias_gelu", 1),
        ((7, 200, 500), "bias_relu", 1),
        ((63, 770, 100), "wt_res", 1),
        ((17, 3000, 40), "bias_res", 2),
    ];
    for (i, ((m, k, n), ep, launches)) in cases.into_iter().enumerate() {
        let name = format!("skinny_cluster_bf16_m{m}_k{k}_n{n}_{ep}");
        let g = gemm_graph(&name, DType::BF16, m, k, n, ep);
        let art = with_skinny_clusters(true, || check_with(&name, &g, scaled_weights(&g, 200 + i as u64)))?;
        assert_eq!(skinny_launches(&art), 1, "{name}: {}", art.summary());
        assert_eq!(art.steps.len(), launches, "{name}: {}", art.summary());
        assert_eq!(art.ptx.contains(".reqnctapercluster"), launches == 1, "{name}");
        let sm80 = codegen::gpu::SmVersion::Sm80;
        let old = with_skinny_clusters(true, || {
            with_skinny_gemm(64, || codegen::gpu::compile_graph(&g, &codegen::gpu::GpuOptions { sm: sm80 }))
        })?;
        assert_eq!(old.steps.len(), 2, "{name} on sm_80: {}", old.summary());
        assert!(!old.ptx.contains("cluster"), "{name} on sm_80");
    }
    Ok(())
}

/// The GPT-2 small GEMM shapes at b1 t32 and the whole graph, skinny vs cuBLASLt: each GEMM
/// checked against the interpreter, then timed (CUDA events, L2 flushed, graph replay, median).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "GPU benchmark"]
fn bench_skinny_gemms() -> R<()> {
    use ir::interp;
    use runtime::cuda::{driver_present, CudaExecutor};
    if !driver_present() {
        println!("skipping: no CUDA driver");
        return Ok(());
    }
    use super::median;
    let modes = [("skinny", 64), ("cublaslt", 0)];
    for (k, n, ep) in [(768, 2304, "wt_bias"), (768, 768, "wt_bias_res"), (768, 3072, "wt_bias_gelu"), (3072, 768, "wt_bias_res"), (768, 3072, "bias_gelu"), (3072, 768, "bias_res")] {
        let name = format!("gpt2_gemm_k{k}_n{n}_{ep}");
        let g = gemm_graph(&name, DType::BF16, 32, k, n, ep);
        let inputs = scaled_weights(&g, 3);
        let reference = interp::run(&g, &inputs)?;
        for (mode, max_m) in modes {
            let art = with_skinny_gemm(max_m, || codegen::gpu::compile_graph(&g, &Default::default()))?;
            device::run_and_compare(&format!("{name} {mode}"), &art, &inputs, &reference)?;
            let mut ex = CudaExecutor::new(art.clone(), 0)?;
            let ins: Vec<_> = inputs
                .iter()
                .map(|v| {
                    let t = ex.alloc(v.data.len() * 2).unwrap();
                    t.upload(&device::to_bytes(v)).unwrap();
                    t
                })
                .collect();
            let o = ex.alloc(32 * n * 2)?;
            let ptrs: Vec<u64> = ins.iter().map(|t| t.ptr).collect();
            let ms = median(ex.time_runs(&ptrs, &[o.ptr], 50, true)?);
            let bytes = (k * n * 2) as f64;
            println!(
                "SKINNY {name:<34} {mode:<8} {:>7.2} us  weights {:>6.0} GB/s  ({} steps)",
                ms * 1e3,
                bytes / (ms * 1e-3) / 1e9,
                art.steps.len()
            );
        }
    }
    // The whole model, through the optimizer (as the benchmark suite runs it).
    use frontend::models::{Gpt2, Gpt2Config};
    let cfg = Gpt2Config::small().with_dtype(DType::BF16);
    let traced = frontend::trace(&Gpt2::new(cfg.clone()), &[cfg.input_spec(1, 32)])?;
    let kg = passes::optimize(&traced.graph, &passes::DeviceProfile::h200())?.kernels;
    let inputs = traced.random_inputs(7);
    let mut outs = Vec::new();
    // Every GEMM it can take on the skinny kernel, none, and the default policy.
    for (mode, max_m) in [("skinny", Some(64)), ("cublaslt", Some(0)), ("default", None)] {
        let compile = || codegen::gpu::compile(&kg, &Default::default());
        let art = match max_m {
            Some(m) => with_skinny_gemm(m, compile)?,
            None => compile()?,
        };
        let mut ex = CudaExecutor::new(art.clone(), 0)?;
        let ins: Vec<_> = inputs
            .iter()
            .map(|v| {
                let t = ex.alloc(v.data.len() * v.dtype.size_bytes()).unwrap();
                t.upload(&device::to_bytes(v)).unwrap();
                t
            })
            .collect();
        let on = traced.graph.node(traced.graph.outputs()[0]);
        let o = ex.alloc(on.shape.numel() * on.dtype.size_bytes())?;
        o.fill(0xFF)?;
        let ptrs: Vec<u64> = ins.iter().map(|t| t.ptr).collect();
        unsafe { ex.run_graph(&ptrs, &[o.ptr], None)? };
        ex.synchronize()?;
        let v = device::from_bytes(on.dtype, on.shape.dims(), &o.download()?);
        assert!(v.data.iter().all(|x| x.is_finite()), "gpt2 {mode}: non-finite output");
        let ms = median(ex.time_runs(&ptrs, &[o.ptr], 100, true)?);
        let per = ex.time_steps(&ptrs, &[o.ptr], 10)?;
        let mut groups: std::collections::BTreeMap<String, (usize, f64)> = Default::default();
        for (st, t) in art.steps.iter().zip(&per) {
            let key = match st {
                GpuStep::Gemm(g) => format!("cublaslt m{} n{} k{}", g.m, g.n, g.k),
                GpuStep::Launch(l) if l.symbol.contains("_skinny_") => format!("skinny grid {:?} {}", l.grid, if l.symbol.ends_with("_sum") { "sum" } else { "" }),
                GpuStep::Launch(_) => "other kernels".into(),
                GpuStep::Copy { .. } => "copy".into(),
            };
            let e = groups.entry(key).or_default();
            e.0 += 1;
            e.1 += t;
        }
        for (k, (n, t)) in &groups {
            println!("SKINNY gpt2 {mode}: {k:<40} x{n:<3} {:.2} us each", 1e3 * t / *n as f64);
        }
        println!("SKINNY gpt2_small_b1_t32 {mode}: {:.4} ms per graph replay, {} steps (steps alone {:.1} us)", ms, art.steps.len(), 1e3 * per.iter().sum::<f64>());
        outs.push(v);
    }
    for (i, mode) in [(0, "skinny"), (2, "default")] {
        println!("SKINNY gpt2 {mode} vs cuBLASLt output: max rel diff {:e}", outs[i].max_rel_diff(&outs[1]));
    }
    Ok(())
}

/// The K splits each policy gives GPT-2 small's four GEMMs at b1 t32 (`nn.Linear` weights,
/// 32-column blocks): `Ctas` enough for about 132 blocks, `Fit` the fewest in which a warp
/// holds all of its weights in registers (one split, no split-K reduction, for three of
/// them). Under `Fit` each runs against the interpreter too (with a GPU).
#[test]
fn skinny_split_policies_on_gpt2_shapes() -> R<()> {
    use codegen::gpu::{with_skinny_splits, SplitPolicy};
    let shapes = [("qkv", 768, 2304, 2, 1), ("proj", 768, 768, 6, 1), ("fc", 768, 3072, 2, 1), ("fc2", 3072, 768, 6, 4)];
    for (i, (what, k, n, ctas, fit)) in shapes.into_iter().enumerate() {
        let name = format!("skinny_fit_{what}_m32_k{k}_n{n}");
        let g = gemm_graph(&name, DType::BF16, 32, k, n, "wt_res");
        let splits = |art: &CudaArtifact| -> Vec<u32> {
            art.steps.iter().filter_map(|s| match s {
                GpuStep::Launch(l) if l.symbol.contains("_skinny_") => Some(l.grid[1]),
                _ => None,
            }).collect()
        };
        let opts = codegen::gpu::GpuOptions::default();
        let by_ctas = with_skinny_splits(SplitPolicy::Ctas, || codegen::gpu::compile_graph(&g, &opts))?;
        assert_eq!(splits(&by_ctas), vec![ctas], "{name}: {}", by_ctas.summary());
        let by_fit = with_skinny_splits(SplitPolicy::Fit, || super::check_with(&name, &g, scaled_weights(&g, 300 + i as u64)))?;
        assert_eq!(splits(&by_fit), vec![fit], "{name}: {}", by_fit.summary());
        // one split: no counters to zero before it
        assert_eq!(by_fit.steps.len(), if fit == 1 { 1 } else { 2 }, "{name}: {}", by_fit.summary());
    }
    Ok(())
}
