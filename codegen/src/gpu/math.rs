//! Scalar math for GPU kernels, in f32, without libdevice.
//!
//! MLIR's `math` dialect lowers `exp`, `tanh`, `erf`, .. to libdevice calls (`__nv_expf`), which
//! would tie PTX generation to a CUDA toolkit file. Instead each function is written here from
//! the PTX hardware approximations (`ex2.approx`, `lg2.approx`, `rsqrt.approx`, `sin.approx`)
//! and short polynomials; absolute errors stay below 1e-6 on the ranges tests and models use,
//! under every dtype's tolerance (`DType::tolerance`: relative to `max(1, |reference|)`).

use super::emit::Emitter;
use ir::{BinaryOp, DType, UnaryOp};

const LOG2E: f64 = std::f64::consts::LOG2_E;
const LN2: f64 = std::f64::consts::LN_2;

fn asm(e: &mut Emitter, text: &str, x: &str) -> String {
    e.op(&format!("llvm.inline_asm \"{text} $0, $1;\", \"=f,f\" {x} : (f32) -> f32"))
}

/// `copysign(mag, sgn)`: PTX `copysign.f32 d, a, b` gives `b`'s magnitude with `a`'s sign.
fn copysign(e: &mut Emitter, mag: &str, sgn: &str) -> String {
    e.op(&format!("llvm.inline_asm \"copysign.f32 $0, $1, $2;\", \"=f,f,f\" {sgn}, {mag} : (f32, f32) -> f32"))
}

pub(crate) fn fabs(e: &mut Emitter, x: &str) -> String {
    asm(e, "abs.f32", x)
}

fn floor(e: &mut Emitter, x: &str) -> String {
    asm(e, "cvt.rmi.f32.f32", x)
}

fn mul(e: &mut Emitter, a: &str, b: &str) -> String {
    e.op(&format!("arith.mulf {a}, {b} fastmath<contract> : f32"))
}
fn add(e: &mut Emitter, a: &str, b: &str) -> String {
    e.op(&format!("arith.addf {a}, {b} fastmath<contract> : f32"))
}
fn sub(e: &mut Emitter, a: &str, b: &str) -> String {
    e.op(&format!("arith.subf {a}, {b} fastmath<contract> : f32"))
}

/// `exp(x) = 2^(x log2 e)`; `ex2.approx` is exact to 2 ulp over the whole range.
pub(crate) fn exp(e: &mut Emitter, x: &str) -> String {
    let k = e.c_f32(LOG2E);
    let t = mul(e, x, &k);
    asm(e, "ex2.approx.ftz.f32", &t)
}

fn log(e: &mut Emitter, x: &str) -> String {
    let l = asm(e, "lg2.approx.f32", x);
    let k = e.c_f32(LN2);
    mul(e, &l, &k)
}

/// Horner's rule, coefficients from the highest power down.
fn poly(e: &mut Emitter, x: &str, coeffs: &[f64]) -> String {
    let mut acc = e.c_f32(coeffs[0]);
    for &c in &coeffs[1..] {
        let k = e.c_f32(c);
        let m = mul(e, &acc, x);
        acc = add(e, &m, &k);
    }
    acc
}

/// `tanh(x) = sign(x) (1 - 2 / (e^{2|x|} + 1))`, with `x (1 + x^2 p(x^2))` near zero where the
/// subtraction would cancel.
fn tanh(e: &mut Emitter, x: &str) -> String {
    let ax = fabs(e, x);
    let two = e.c_f32(2.0);
    let one = e.c_f32(1.0);
    let t = mul(e, &ax, &two);
    let ex = exp(e, &t);
    let den = add(e, &ex, &one);
    let q = e.op(&format!("arith.divf {two}, {den} : f32"));
    let big = sub(e, &one, &q);
    let big = copysign(e, &big, x);
    // Small |x|: Taylor series to x^9 (error < 1e-8 for |x| < 0.125).
    let x2 = mul(e, x, x);
    let p = poly(e, &x2, &[62.0 / 2835.0, -17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0, 1.0]);
    let small = mul(e, x, &p);
    let lim = e.c_f32(0.125);
    let is_small = e.op(&format!("arith.cmpf olt, {ax}, {lim} : f32"));
    e.op(&format!("arith.select {is_small}, {small}, {big} : f32"))
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), odd extension.
fn erf(e: &mut Emitter, x: &str) -> String {
    let ax = fabs(e, x);
    let one = e.c_f32(1.0);
    let p = e.c_f32(0.327_591_1);
    let pt = mul(e, &p, &ax);
    let den = add(e, &pt, &one);
    let t = e.op(&format!("arith.divf {one}, {den} : f32"));
    let s = poly(e, &t, &[1.061_405_429, -1.453_152_027, 1.421_413_741, -0.284_496_736, 0.254_829_592, 0.0]);
    let x2 = mul(e, &ax, &ax);
    let nx2 = e.op(&format!("arith.negf {x2} : f32"));
    let ex = exp(e, &nx2);
    let se = mul(e, &s, &ex);
    let r = sub(e, &one, &se);
    copysign(e, &r, x)
}

/// sin / cos: reduce to `[-pi, pi]`, then the hardware approximation (abs error 2^-20.9).
fn trig(e: &mut Emitter, x: &str, f: &str) -> String {
    let inv = e.c_f32(1.0 / std::f64::consts::TAU);
    let tau = e.c_f32(std::f64::consts::TAU);
    let q = mul(e, x, &inv);
    let r = asm(e, "cvt.rni.f32.f32", &q);
    let m = mul(e, &r, &tau);
    let y = sub(e, x, &m);
    asm(e, f, &y)
}

pub(crate) fn unary(e: &mut Emitter, u: UnaryOp, d: DType, x: &str) -> String {
    if !d.is_float() {
        let ty = if d == DType::I64 { "i64" } else { "i32" };
        return match u {
            UnaryOp::Not => {
                let t = e.op("arith.constant true");
                e.op(&format!("arith.xori {x}, {t} : i1"))
            }
            UnaryOp::Neg => int_neg(e, ty, x),
            UnaryOp::Abs => {
                // max(x, -x): `math.absi` has no LLVM lowering in the pipeline
                let n = int_neg(e, ty, x);
                e.op(&format!("arith.maxsi {x}, {n} : {ty}"))
            }
            // Everything else on integers is a no-op or rounds through floats: the verifier
            // only admits float operands for transcendental functions.
            _ => x.to_string(),
        };
    }
    match u {
        UnaryOp::Neg => e.op(&format!("arith.negf {x} : f32")),
        UnaryOp::Abs => fabs(e, x),
        UnaryOp::Exp => exp(e, x),
        UnaryOp::Log => log(e, x),
        UnaryOp::Sqrt => asm(e, "sqrt.rn.f32", x),
        UnaryOp::Rsqrt => asm(e, "rsqrt.approx.f32", x),
        UnaryOp::Recip => {
            let one = e.c_f32(1.0);
            e.op(&format!("arith.divf {one}, {x} : f32"))
        }
        UnaryOp::Tanh => tanh(e, x),
        UnaryOp::Erf => erf(e, x),
        UnaryOp::Sin => trig(e, x, "sin.approx.f32"),
        UnaryOp::Cos => trig(e, x, "cos.approx.f32"),
        UnaryOp::Floor => floor(e, x),
        UnaryOp::Not => {
            let z = e.c_f32(0.0);
            let b = e.op(&format!("arith.cmpf oeq, {x}, {z} : f32"));
            e.op(&format!("arith.uitofp {b} : i1 to f32"))
        }
    }
}

pub(crate) fn binary(e: &mut Emitter, b: BinaryOp, d: DType, x: &str, y: &str) -> String {
    if !d.is_float() {
        let ty = match d {
            DType::I64 => "i64",
            DType::Bool => "i1",
            _ => "i32",
        };
        let op = match b {
            BinaryOp::Add => "arith.addi",
            BinaryOp::Sub => "arith.subi",
            BinaryOp::Mul => "arith.muli",
            BinaryOp::Div => return int_div(e, ty, x, y),
            BinaryOp::Max => "arith.maxsi",
            BinaryOp::Min => "arith.minsi",
            BinaryOp::And => "arith.andi",
            BinaryOp::Or => "arith.ori",
            BinaryOp::Pow => return int_pow(e, ty, x, y),
        };
        let op = if d == DType::Bool && matches!(b, BinaryOp::Max) { "arith.ori" } else { op };
        let op = if d == DType::Bool && matches!(b, BinaryOp::Min) { "arith.andi" } else { op };
        return e.op(&format!("{op} {x}, {y} : {ty}"));
    }
    match b {
        BinaryOp::Add => add(e, x, y),
        BinaryOp::Sub => sub(e, x, y),
        BinaryOp::Mul => mul(e, x, y),
        BinaryOp::Div => e.op(&format!("arith.divf {x}, {y} : f32")),
        BinaryOp::Max => e.op(&format!("arith.maximumf {x}, {y} : f32")),
        BinaryOp::Min => e.op(&format!("arith.minimumf {x}, {y} : f32")),
        BinaryOp::Pow => {
            // x^y = 2^(y log2|x|), negated for a negative base with an odd integer exponent;
            // NaN for a negative base with a non-integer exponent (as powf).
            let ax = fabs(e, x);
            let l = asm(e, "lg2.approx.f32", &ax);
            let t = mul(e, y, &l);
            let m = asm(e, "ex2.approx.ftz.f32", &t);
            let zero = e.c_f32(0.0);
            let neg = e.op(&format!("arith.cmpf olt, {x}, {zero} : f32"));
            let fl = floor(e, y);
            let is_int = e.op(&format!("arith.cmpf oeq, {fl}, {y} : f32"));
            let half = e.c_f32(0.5);
            let hy = mul(e, y, &half);
            let fh = floor(e, &hy);
            let odd = e.op(&format!("arith.cmpf une, {fh}, {hy} : f32"));
            let nm = e.op(&format!("arith.negf {m} : f32"));
            let signed = e.op(&format!("arith.select {odd}, {nm}, {m} : f32"));
            let nan = e.c_f32(f64::NAN);
            let negr = e.op(&format!("arith.select {is_int}, {signed}, {nan} : f32"));
            e.op(&format!("arith.select {neg}, {negr}, {m} : f32"))
        }
        BinaryOp::And | BinaryOp::Or => {
            let z = e.c_f32(0.0);
            let a = e.op(&format!("arith.cmpf une, {x}, {z} : f32"));
            let c = e.op(&format!("arith.cmpf une, {y}, {z} : f32"));
            let op = if b == BinaryOp::And { "arith.andi" } else { "arith.ori" };
            let r = e.op(&format!("{op} {a}, {c} : i1"));
            e.op(&format!("arith.uitofp {r} : i1 to f32"))
        }
    }
}

/// Integer negation as `~x + 1` in inline PTX, which neither LLVM nor ptxas turns back into
/// `neg`. ptxas 12.9 (and the driver's JIT of the same era) miscompiles a negation feeding an
/// integer min/max: `min(-abs(x), -3)` (LLVM's form of `min(min(x, -x), -3)`) lost its `min`,
/// and of four negated lanes folded into a three-way `VIMNMX3` one stayed unnegated (GPU
/// fuzzing, seeds 913000438 and 913005634; visible in the SASS of `ptxas -O3`).
fn int_neg(e: &mut Emitter, ty: &str, x: &str) -> String {
    let (bits, c) = if ty == "i64" { ("64", "l") } else { ("32", "r") };
    e.op(&format!("llvm.inline_asm \"not.b{bits} $0, $1;\\n\\tadd.s{bits} $0, $0, 1;\", \"={c},{c}\" {x} : ({ty}) -> {ty}"))
}

/// Truncating integer division as the interpreter defines it: `x / 0 = 0`, and `MIN / -1`
/// wraps to `MIN` (`arith.divsi` leaves both undefined).
fn int_div(e: &mut Emitter, ty: &str, x: &str, y: &str) -> String {
    let zero = e.op(&format!("arith.constant 0 : {ty}"));
    let one = e.op(&format!("arith.constant 1 : {ty}"));
    let m1 = e.op(&format!("arith.constant -1 : {ty}"));
    let is0 = e.op(&format!("arith.cmpi eq, {y}, {zero} : {ty}"));
    let ism1 = e.op(&format!("arith.cmpi eq, {y}, {m1} : {ty}"));
    let bad = e.op(&format!("arith.ori {is0}, {ism1} : i1"));
    let safe = e.op(&format!("arith.select {bad}, {one}, {y} : {ty}"));
    let q = e.op(&format!("arith.divsi {x}, {safe} : {ty}"));
    let neg = int_neg(e, ty, x);
    let q = e.op(&format!("arith.select {ism1}, {neg}, {q} : {ty}"));
    e.op(&format!("arith.select {is0}, {zero}, {q} : {ty}"))
}

/// Integer power with the interpreter's semantics: `x^y` computed in f64, truncated toward
/// zero and saturated to the integer range (`DType::quantize`), so `0^-1` is `MAX`, `2^-1`
/// is 0 and `3^50` saturates. The exponent is exact: square-and-multiply over the bits of
/// `|y|` in f64, which is exact while the result stays below 2^53. `|y|` is clamped to
/// `64 + (y & 1)` first (any larger power of `|x| >= 2` saturates as well, and the parity
/// keeps the sign of `(-1)^y`), so seven steps cover every exponent.
fn int_pow(e: &mut Emitter, ty: &str, x: &str, y: &str) -> String {
    let one_i = e.op(&format!("arith.constant 1 : {ty}"));
    let c64 = e.op(&format!("arith.constant 64 : {ty}"));
    let zero_i = e.op(&format!("arith.constant 0 : {ty}"));
    let parity = e.op(&format!("arith.andi {y}, {one_i} : {ty}"));
    let hi = e.op(&format!("arith.addi {c64}, {parity} : {ty}"));
    let lo = e.op(&format!("arith.subi {zero_i}, {hi} : {ty}"));
    let yc = e.op(&format!("arith.minsi {y}, {hi} : {ty}"));
    let yc = e.op(&format!("arith.maxsi {yc}, {lo} : {ty}"));
    let neg = e.op(&format!("arith.cmpi slt, {yc}, {zero_i} : {ty}"));
    let ny = e.op(&format!("arith.subi {zero_i}, {yc} : {ty}"));
    let k = e.op(&format!("arith.select {neg}, {ny}, {yc} : {ty}"));
    let mut base = e.op(&format!("arith.sitofp {x} : {ty} to f64"));
    let mut acc = e.op("arith.constant 1.0 : f64");
    for bit in 0..7 {
        let m = e.op(&format!("arith.constant {} : {ty}", 1i64 << bit));
        let b = e.op(&format!("arith.andi {k}, {m} : {ty}"));
        let set = e.op(&format!("arith.cmpi ne, {b}, {zero_i} : {ty}"));
        let prod = e.op(&format!("arith.mulf {acc}, {base} : f64"));
        acc = e.op(&format!("arith.select {set}, {prod}, {acc} : f64"));
        if bit < 6 {
            base = e.op(&format!("arith.mulf {base}, {base} : f64"));
        }
    }
    let one = e.op("arith.constant 1.0 : f64");
    let inv = e.op(&format!("arith.divf {one}, {acc} : f64"));
    let r = e.op(&format!("arith.select {neg}, {inv}, {acc} : f64"));
    // PTX's cvt.rzi truncates, saturates and maps NaN to 0, as `quantize` does (LLVM's fptosi
    // would be poison out of range)
    let (cvt, c) = if ty == "i64" { ("s64", "l") } else { ("s32", "r") };
    e.op(&format!("llvm.inline_asm \"cvt.rzi.{cvt}.f64 $0, $1;\", \"={c},d\" {r} : (f64) -> {ty}"))
}
