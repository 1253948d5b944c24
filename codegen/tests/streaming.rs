//! Outputs written with streaming (non-temporal) stores (`llvm.rs`, `Gen::streaming_stage`).
//! The default threshold (16 MiB) leaves every other test's outputs on plain stores, so this
//! binary lowers it to one byte (`KILN_CPU_NT_BYTES=1`) for all of its tests: each output of
//! a fused kernel is computed into a scratch chunk and copied out past the caches, with
//! plain stores up to the first 64-byte boundary and after the last. Odd row lengths put
//! the rows of one output at every alignment.

mod common;
use common::{check_fused, fused, layer_norm, softmax};
use ir::{BinaryOp, DType, Graph, Op, UnaryOp};

fn streaming_on() {
    // Every test of this binary sets the same value before it compiles anything.
    std::env::set_var("KILN_CPU_NT_BYTES", "1");
}

#[test]
fn softmax_streams_its_output() {
    streaming_on();
    for (dt, shape) in [(DType::F32, vec![37, 101]), (DType::F32, vec![3, 7, 4097]), (DType::BF16, vec![7, 1029]), (DType::F16, vec![3, 783]), (DType::F32, vec![2, 5, 1024]), (DType::F32, vec![4, 3])] {
        let mut g = Graph::new("softmax");
        let x = g.input("x", dt, shape.clone()).unwrap();
        let y = softmax(&mut g, x, shape.len() - 1);
        g.set_outputs(vec![y]);
        check_fused(&g, 41, false);
    }
}

#[test]
fn elementwise_outputs_of_every_width_stream() {
    streaming_on();
    // f32, bf16, f16 (2 and 4 bytes), i32 and i64 outputs (4 and 8), two outputs at once.
    for (dt, shape) in [(DType::F32, vec![1000, 37]), (DType::BF16, vec![13, 515]), (DType::F16, vec![9, 77]), (DType::F32, vec![70001])] {
        let mut g = Graph::new("ew");
        let x = g.input("x", dt, shape.clone()).unwrap();
        let a = g.input("a", dt, shape.clone()).unwrap();
        let e = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
        let y = g.add(Op::Binary(BinaryOp::Mul), &[e, a]).unwrap();
        let z = g.add(Op::Binary(BinaryOp::Sub), &[x, a]).unwrap();
        let zi = g.add(Op::Cast { to: DType::I32 }, &[z]).unwrap();
        let zl = g.add(Op::Cast { to: DType::I64 }, &[z]).unwrap();
        g.set_outputs(vec![y, zi, zl]);
        check_fused(&g, 42, false);
    }
}

/// A one-pass kernel heavy in math prefetches its next rows chunk by chunk; with a streamed
/// output each chunk goes through the scratch chunk too.
#[test]
fn prefetching_stage_streams_its_chunks() {
    streaming_on();
    for (dt, shape) in [(DType::F32, vec![5, 1024]), (DType::BF16, vec![3, 2048]), (DType::F32, vec![2, 3, 320])] {
        let mut g = Graph::new("sigmoidish");
        let x = g.input("x", dt, shape.clone()).unwrap();
        let a = g.input("a", dt, shape.clone()).unwrap();
        let e = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
        let y = g.add(Op::Binary(BinaryOp::Div), &[a, e]).unwrap();
        g.set_outputs(vec![y]);
        check_fused(&g, 43, false);
    }
}

/// Residual layer norm: the output stage streams and prefetches the next rows of `x` and
/// `r` (`plan_prefetch`'s streamed last stage); odd rows take the plain path.
#[test]
fn layer_norm_streams_and_prefetches() {
    streaming_on();
    for (dt, shape) in [(DType::F32, vec![6, 1024]), (DType::BF16, vec![4, 2048]), (DType::F32, vec![37, 129]), (DType::F16, vec![3, 2, 768])] {
        let d = *shape.last().unwrap();
        let mut g = Graph::new("residual_layer_norm");
        let x = g.input("x", dt, shape.clone()).unwrap();
        let r = g.input("r", dt, shape.clone()).unwrap();
        let w = g.input("w", dt, [d]).unwrap();
        let b = g.input("b", dt, [d]).unwrap();
        let h = g.add(Op::Binary(BinaryOp::Add), &[x, r]).unwrap();
        let y = layer_norm(&mut g, h, w, b);
        g.set_outputs(vec![y]);
        check_fused(&g, 44, false);
    }
}

/// The streamed kernels carry `!nontemporal` stores and end with a fence; an output that is
/// also read back in its own kernel keeps plain stores (checked by the values above too).
#[test]
fn streaming_stores_are_in_the_generated_code() {
    streaming_on();
    let mut g = Graph::new("softmax_ir");
    let x = g.input("x", DType::F32, [64, 1000]).unwrap();
    let y = softmax(&mut g, x, 1);
    g.set_outputs(vec![y]);
    let dir = std::env::temp_dir().join(format!("kiln-streaming-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = codegen::cpu::CpuOptions { dump_dir: Some(dir.clone()), ..Default::default() };
    codegen::cpu::compile(&fused(&g), &opts).unwrap();
    let ll: String = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "ll")).map(|e| std::fs::read_to_string(e.path()).unwrap()).collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ll.contains("!nontemporal"), "no streaming store in:\n{ll}");
    assert!(ll.contains("fence seq_cst"), "no fence after the streaming stores");
}
