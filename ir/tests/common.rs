#![allow(dead_code)]
//! Helpers shared by the IR's integration tests.

use ir::{interp::Value, DType, Shape};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Seeded random values of a dtype: normal-ish floats, small ints, random bools; never all zero.
pub fn random_value(rng: &mut StdRng, dtype: DType, shape: impl Into<Shape>) -> Value {
    let shape = shape.into();
    let data = (0..shape.numel())
        .map(|_| match dtype {
            DType::Bool => rng.random_bool(0.5) as u8 as f64,
            DType::I32 | DType::I64 => rng.random_range(-9i64..10) as f64,
            _ => rng.random_range(-2.0..2.0),
        })
        .collect();
    Value::new(dtype, shape, data).unwrap()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}
