//! Warp-level tensor-core helpers shared by the GPU kernels (skinny GEMM, flash attention;
//! PTX through `llvm.inline_asm`).
//!
//! `mma.sync.aligned.m16n8k16.row.col` with f32 accumulators, per lane `g = lane / 4`,
//! `t = lane % 4` (PTX ISA, "Matrix fragments for mma.m16n8k16"):
//! - A (16 x 16, row): 4 `i32` registers of 2 halves each, `[(g, 2t..), (g + 8, 2t..),
//!   (g, 2t + 8..), (g + 8, 2t + 8..)]` as (row, columns);
//! - B (16 x 8, col): 2 registers, `[(2t.., g), (2t + 8.., g)]` as (rows, column);
//! - C / D (16 x 8): 4 f32, `[(g, 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)]`.
//!
//! The lower-indexed half of a register is the lower 16 bits. A sum over `k` may be taken in
//! any order, so a kernel may map the logical `k` of A and B to memory in any one permutation.

use super::Emitter;
use ir::DType;

/// The PTX type name of a 16-bit mma operand (`bf16` or `f16`; f16 for anything else).
pub(crate) fn operand_type(d: DType) -> &'static str {
    if d == DType::BF16 {
        "bf16"
    } else {
        "f16"
    }
}

/// `D = A B + C` for one m16n8k16 tile: `a` 4 and `b` 2 `i32` registers (two 16-bit values of
/// `dtype` each), `c` 4 f32; returns D's 4 f32.
pub(crate) fn mma_m16n8k16(e: &mut Emitter, dtype: DType, a: &[String], b: &[String], c: &[String]) -> [String; 4] {
    let ty = operand_type(dtype);
    let r = e.op(&format!(
        "llvm.inline_asm \"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 {{$0,$1,$2,$3}}, {{$4,$5,$6,$7}}, {{$8,$9}}, {{$10,$11,$12,$13}};\", \"=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f\" {}, {}, {}, {}, {}, {}, {}, {}, {}, {} : (i32, i32, i32, i32, i32, i32, f32, f32, f32, f32) -> !llvm.struct<(f32, f32, f32, f32)>",
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], c[2], c[3]
    ));
    [0, 1, 2, 3].map(|q| e.op(&format!("llvm.extractvalue {r}[{q}] : !llvm.struct<(f32, f32, f32, f32)>")))
}

/// Elements `i` of `lo` and `hi` (two `vector<8 x st>`) packed into one `i32` register, `lo`'s
/// in the low half (a B fragment from two rows of a row-major `[k, n]` matrix).
pub(crate) fn pack_pair(e: &mut Emitter, lo: &str, hi: &str, i: usize, st: &str) -> String {
    let p = e.op(&format!("vector.shuffle {lo}, {hi} [{i}, {}] : vector<8x{st}>, vector<8x{st}>", i + 8));
    e.op(&format!("llvm.bitcast {p} : vector<2x{st}> to i32"))
}
