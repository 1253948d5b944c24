//! Kiln's tensor-core attention kernel (`codegen/src/gpu/emit/flash.rs`): odd `sq` / `sk` (tails
//! of the 64-row and 64-key tiles), causal and not (with `sq != sk`), head dims 16 to 128
//! (`d != dv` too), bf16 and f16, batch > 1, and the GPT-2 form (q, k, v sliced out of a packed
//! qkv tensor, the output written with merged heads), against the interpreter with poisoned
//! outputs; the PTX goes to `target/kiln-ptx/`. An ignored benchmark times the kernel against
//! the other paths (`KILN_GPU_FLASH=0`).

use super::{check, check_with, scaled_weights, R};
use ir::{DType, Graph, Op, Scalar, Shape};
use runtime::cuda::{CudaArtifact, GpuStep};

fn flash_launches(art: &CudaArtifact) -> usize {
    art.steps.iter().filter(|s| matches!(s, GpuStep::Launch(l) if l.symbol.contains("_flash_"))).count()
}

fn attention_graph(name: &str, dtype: DType, causal: bool, (b, h): (usize, usize), sq: usize, sk: usize, d: usize, dv: usize) -> R<Graph> {
    let mut g = Graph::new(name);
    let q = g.input("q", dtype, [b, h, sq, d])?;
    let k = g.input("k", dtype, [b, h, sk, d])?;
    let v = g.input("v", dtype, [b, h, sk, dv])?;
    let o = g.add(Op::FlashAttention { causal, scale: Scalar(1.0 / (d as f64).sqrt()) }, &[q, k, v])?;
    g.set_outputs(vec![o]);
    Ok(g)
}

#[test]
fn flash_attention_odd_shapes() -> R<()> {
    for (i, (dtype, causal, bh, sq, sk, d, dv)) in [
        (DType::BF16, false, (2, 3), 77, 77, 64, 64),
        (DType::BF16, true, (2, 3), 77, 77, 64, 64),
        (DType::F16, true, (1, 2), 33, 130, 128, 128),
        (DType::F16, false, (2, 1), 33, 130, 64, 64),
        (DType::BF16, true, (1, 2), 33, 130, 128, 128),
        (DType::BF16, false, (1, 2), 33, 130, 128, 64),
        (DType::BF16, true, (2, 1), 200, 333, 64, 128),
        (DType::F16, false, (1, 3), 1, 300, 16, 48),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("flash_{dtype}_{}_b{}h{}_sq{sq}_sk{sk}_d{d}_dv{dv}", if causal { "causal" } else { "full" }, bh.0, bh.1);
        let g = attention_graph(&name, dtype, causal, bh, sq, sk, d, dv)?;
        let art = check(&name, &g, 60 + i as u64)?;
        assert_eq!(art.steps.len(), 1, "{name}: {}", art.summary());
        assert_eq!(flash_launches(&art), 1, "{name}: {}", art.summary());
    }
    Ok(())
}

/// The GPT-2 form: q, k, v read as slices of one packed qkv tensor split into heads (strided
/// rows), the output stored through the merge-heads permute, the projection GEMM after it.
#[test]
fn flash_attention_packed_qkv() -> R<()> {
    for (dtype, causal, (b, t, h, d)) in [(DType::BF16, true, (2, 77, 3, 64)), (DType::F16, false, (1, 70, 2, 128))] {
        let name = format!("flash_packed_qkv_{dtype}_d{d}");
        let c = h * d;
        let mut g = Graph::new(&name);
        let qkv = g.input("qkv", dtype, [b, t, 3 * c])?;
        let w = g.input("w", dtype, [c, 40])?;
        let mut heads = Vec::new();
        for i in 0..3 {
            let s = g.add(Op::Slice { axis: 2, start: i * c, end: (i + 1) * c, step: 1 }, &[qkv])?;
            let r = g.add(Op::Reshape { shape: Shape::new([b, t, h, d]) }, &[s])?;
            heads.push(g.add(Op::Permute { perm: vec![0, 2, 1, 3] }, &[r])?);
        }
        let o = g.add(Op::FlashAttention { causal, scale: Scalar(1.0 / (d as f64).sqrt()) }, &heads)?;
        let m = g.add(Op::Permute { perm: vec![0, 2, 1, 3] }, &[o])?;
        let m = g.add(Op::Reshape { shape: Shape::new([b, t, c]) }, &[m])?;
        let y = g.add(Op::MatMul, &[m, w])?;
        g.set_outputs(vec![y]);
        let art = check_with(&name, &g, scaled_weights(&g, 70))?;
        assert_eq!(art.steps.len(), 2, "{name}: attention + GEMM, no copies: {}", art.summary());
        assert_eq!(flash_launches(&art), 1, "{name}: {}", art.summary());
    }
    Ok(())
}

/// Cases the tensor-core kernel leaves to the other paths: f32, a head dim not a multiple of 16.
#[test]
fn flash_attention_leaves_other_cases() -> R<()> {
    for (dtype, d, name) in [(DType::F32, 64, "flash_declines_f32"), (DType::BF16, 40, "flash_declines_d40")] {
        let g = attention_graph(name, dtype, true, (1, 2), 21, 21, d, d)?;
        let art = check(name, &g, 80)?;
        assert_eq!(flash_launches(&art), 0, "{name}: {}", art.summary());
    }
    Ok(())
}

/// Times attention shapes with the tensor-core kernel and with the other paths
/// (`KILN_GPU_FLASH=0`: the SIMT kernel up to 256 keys, else GEMM + softmax + GEMM), median of
/// CUDA-event-timed graph replays; prints ms and TFLOP/s (causal counts half the products).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "GPU benchmark of the flash attention kernel"]
fn bench_flash_attention() -> R<()> {
    use runtime::cuda::{driver_present, CudaExecutor};
    if !driver_present() {
        println!("skipping: no CUDA driver found");
        return Ok(());
    }
    let cases = [
        ("attn_s2048_d64_causal", true, (8, 16), 2048, 64),
        ("attn_s4096_d128", false, (4, 16), 4096, 128),
        ("attn_s1024_d64_causal_gpt2_b8", true, (8, 12), 1024, 64),
        ("attn_s32_d64_causal_gpt2_b1", true, (1, 12), 32, 64),
        ("attn_s256_d64_causal", true, (8, 12), 256, 64),
        ("attn_s128_d128", false, (8, 16), 128, 128),
    ];
    for (label, causal, (b, h), s, d) in cases {
        let g = attention_graph(label, DType::BF16, causal, (b, h), s, s, d, d)?;
        let inputs = super::random_inputs(&g, 5);
        let flops = 4.0 * (b * h * s * s * d) as f64 * if causal { 0.5 } else { 1.0 };
        for flash in [true, false] {
            std::env::set_var("KILN_GPU_FLASH", if flash { "1" } else { "0" });
            let art = codegen::gpu::compile_graph(&g, &codegen::gpu::GpuOptions { sm: codegen::gpu::SmVersion::Sm90 })?;
            let mut ex = CudaExecutor::new(art.clone(), 0)?;
            let ins: Vec<_> = inputs
                .iter()
                .map(|v| {
                    let t = ex.alloc(v.data.len() * v.dtype.size_bytes())?;
                    t.upload(&super::device::to_bytes(v))?;
                    Ok(t)
                })
                .collect::<R<Vec<_>>>()?;
            let in_ptrs: Vec<u64> = ins.iter().map(|t| t.ptr).collect();
            let o = ex.alloc(b * h * s * d * 2)?;
            let ms = super::median(ex.time_runs(&in_ptrs, &[o.ptr], 20, true)?);
            let out = super::device::from_bytes(DType::BF16, &[b * h * s * d], &o.download()?);
            let finite = out.data.iter().all(|x| x.is_finite());
            println!(
                "FLASH {label:<32} {:<6} {ms:8.3} ms {:7.1} TFLOP/s steps {} finite {finite}",
                if flash { "flash" } else { "other" },
                flops / ms * 1e-9,
                art.steps.len()
            );
        }
    }
    std::env::remove_var("KILN_GPU_FLASH");
    Ok(())
}
