//! Element types.

use std::fmt;

/// The element type of a tensor. Text names match PyTorch's short names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    I64,
    Bool,
}

impl DType {
    pub const ALL: [DType; 6] = [DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64, DType::Bool];

    /// Bytes per element in device memory.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }

    pub fn from_name(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Rounds an f64 to the nearest value representable in this dtype (the interpreter's
    /// model of storing a value). Integers truncate toward zero and wrap like a C cast would
    /// saturate; bool is `x != 0`.
    pub fn quantize(self, x: f64) -> f64 {
        match self {
            DType::F32 => x as f32 as f64,
            DType::F16 => half::f16::from_f64(x).to_f64(),
            DType::BF16 => half::bf16::from_f64(x).to_f64(),
            DType::I32 => {
                if x.is_nan() { 0.0 } else { (x.trunc() as i32) as f64 }
            }
            DType::I64 => {
                if x.is_nan() { 0.0 } else { (x.trunc() as i64) as f64 }
            }
            DType::Bool => (x != 0.0) as u8 as f64,
        }
    }

    /// Relative tolerance for comparing a result computed in this dtype against the f64 reference.
    pub fn tolerance(self) -> f64 {
        match self {
            DType::F32 => 1e-4,
            DType::F16 => 1e-2,
            DType::BF16 => 3e-2,
            DType::I32 | DType::I64 | DType::Bool => 0.0,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
