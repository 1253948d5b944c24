//! Graphs the reliability fuzzer (kiln-fuzz) found failing on the CPU backend, kept as
//! regressions: optimized by `passes`, compiled, run, and compared with the interpreter.

mod common;
use common::{check_kg, inputs_for};

fn run_text(text: &str, seed: u64) {
    let g = ir::text::parse(text).unwrap();
    let kg = passes::optimize(&g, &passes::DeviceProfile::cpu()).unwrap().kernels;
    check_kg(&kg, &g, &inputs_for(&g, seed, false));
    check_kg(&ir::KernelGraph::one_per_op(&g), &g, &inputs_for(&g, seed, false));
}

/// kiln-fuzz seed 304002067: pad of a pad feeding a 3-way concat, an intermediate also an
/// output (SIGSEGV in the CPU backend).
#[test]
fn pad_concat_304002067() {
    run_text(
        r#"graph @fuzz304002067 {
  %0 = input {name="x0"} : i64[5]
  %1 = pad(%0) {pads=[(1, 2)], value=2.0} : i64[8]
  %2 = full {value=0.0} : i64[8]
  %3 = add(%1, %2) : i64[8]
  %4 = full {value=1.0} : i64[8]
  %5 = add(%3, %4) : i64[8]
  %6 = reshape(%5) {shape=[2, 4]} : i64[2,4]
  %7 = neg(%6) : i64[2,4]
  %8 = pad(%1) {pads=[(0, 0)], value=2.0} : i64[8]
  %9 = input {name="x1"} : i64[7]
  %10 = input {name="x2"} : i64[3]
  %11 = concat(%8, %9, %10) {axis=0} : i64[18]
  return %11, %5
}
"#,
        304002067,
    );
}

/// kiln-fuzz seed 307011850: pad of a pad (also an output) inside a 3-way concat, cast to f16.
#[test]
fn pad_concat_307011850() {
    run_text(
        r#"graph @fuzz307011850 {
  %0 = input {name="x0"} : f32[5]
  %1 = abs(%0) : f32[5]
  %2 = full {value=0.5} : f32[]
  %3 = add(%1, %2) : f32[5]
  %4 = div(%0, %3) : f32[5]
  %5 = abs(%4) : f32[5]
  %6 = full {value=0.5} : f32[]
  %7 = add(%5, %6) : f32[5]
  %8 = div(%0, %7) : f32[5]
  %9 = pad(%8) {pads=[(2, 0)], value=1.0} : f32[7]
  %10 = pad(%9) {pads=[(0, 2)], value=0.0} : f32[9]
  %11 = input {name="x1"} : f32[7]
  %12 = concat(%10, %11, %0) {axis=0} : f32[21]
  %13 = cast(%12) {to=f16} : f16[21]
  return %13, %10
}
"#,
        307011850,
    );
}

/// kiln-fuzz seed 411001002, shrunk by hand: `abs -> pad -> concat` in bf16 (the one-kernel
/// form segfaulted in LLVM 22's LoopDeletionPass once the kernel body was inlined into its
/// wrapper; bodies are `noinline` now).
#[test]
fn abs_pad_concat_bf16_411001002() {
    run_text(
        r#"graph @c1 {
  %0 = input {name="x0"} : bf16[13,4]
  %1 = abs(%0) : bf16[13,4]
  %2 = pad(%1) {pads=[(2, 0), (1, 2)], value=0.0} : bf16[15,7]
  %3 = concat(%2, %2) {axis=1} : bf16[15,14]
  return %3
}
"#,
        411001002,
    );
}
