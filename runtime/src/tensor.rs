//! Host tensors: owned ([`HostTensor`]) and borrowed raw views ([`TensorRef`], [`TensorMut`]).

use crate::{Result, RuntimeError};
use half::{bf16, f16};
use ir::{interp::Value, DType, Shape};

/// An owned host tensor: dtype, shape and row-major little-endian bytes
/// (bool is one byte, 0 or 1).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub shape: Shape,
    pub bytes: Vec<u8>,
}

impl HostTensor {
    /// A tensor from raw bytes; errors when the size does not match the type.
    pub fn new(dtype: DType, shape: impl Into<Shape>, bytes: Vec<u8>) -> Result<HostTensor> {
        let shape = shape.into();
        let expected = shape.numel() * dtype.size_bytes();
        if bytes.len() != expected {
            return Err(RuntimeError::DataSize { dtype, shape, expected, got: bytes.len() });
        }
        Ok(HostTensor { dtype, shape, bytes })
    }

    pub fn zeros(dtype: DType, shape: impl Into<Shape>) -> HostTensor {
        let shape = shape.into();
        let n = shape.numel() * dtype.size_bytes();
        HostTensor { dtype, shape, bytes: vec![0; n] }
    }

    pub fn from_f32(shape: impl Into<Shape>, data: &[f32]) -> Result<HostTensor> {
        HostTensor::new(DType::F32, shape, data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// Converts an interpreter value (rounding to its dtype).
    pub fn from_value(v: &Value) -> HostTensor {
        let mut bytes = Vec::with_capacity(v.data.len() * v.dtype.size_bytes());
        for &x in &v.data {
            encode(v.dtype, x, &mut bytes);
        }
        HostTensor { dtype: v.dtype, shape: v.shape.clone(), bytes }
    }

    /// Converts to an interpreter value (every element as f64).
    pub fn to_value(&self) -> Value {
        Value { dtype: self.dtype, shape: self.shape.clone(), data: (0..self.numel()).map(|i| self.get_f64(i)).collect() }
    }

    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    /// Element `i` (flat, row-major) as f64.
    pub fn get_f64(&self, i: usize) -> f64 {
        let b = &self.bytes;
        match self.dtype {
            DType::F32 => f32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap()) as f64,
            DType::F16 => f16::from_le_bytes(b[i * 2..i * 2 + 2].try_into().unwrap()).to_f64(),
            DType::BF16 => bf16::from_le_bytes(b[i * 2..i * 2 + 2].try_into().unwrap()).to_f64(),
            DType::I32 => i32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap()) as f64,
            DType::I64 => i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap()) as f64,
            DType::Bool => (b[i] != 0) as u8 as f64,
        }
    }

    /// The data as f32 (f32 tensors only; `None` otherwise).
    pub fn as_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == DType::F32).then(|| self.bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }

    pub fn as_ref(&self) -> TensorRef<'_> {
        TensorRef { dtype: self.dtype, shape: self.shape.dims(), data: self.bytes.as_ptr(), _life: std::marker::PhantomData }
    }

    pub fn as_mut(&mut self) -> TensorMut<'_> {
        TensorMut { dtype: self.dtype, shape: self.shape.dims(), data: self.bytes.as_mut_ptr(), _life: std::marker::PhantomData }
    }
}

fn encode(d: DType, x: f64, out: &mut Vec<u8>) {
    let x = d.quantize(x);
    match d {
        DType::F32 => out.extend((x as f32).to_le_bytes()),
        DType::F16 => out.extend(f16::from_f64(x).to_le_bytes()),
        DType::BF16 => out.extend(bf16::from_f64(x).to_le_bytes()),
        DType::I32 => out.extend((x as i32).to_le_bytes()),
        DType::I64 => out.extend((x as i64).to_le_bytes()),
        DType::Bool => out.push((x != 0.0) as u8),
    }
}

impl From<&Value> for HostTensor {
    fn from(v: &Value) -> HostTensor {
        HostTensor::from_value(v)
    }
}

impl From<&HostTensor> for Value {
    fn from(t: &HostTensor) -> Value {
        t.to_value()
    }
}

/// A borrowed, read-only tensor given by a raw pointer (the zero-copy path: PyTorch tensors,
/// caller-owned memory). Contiguous row-major; any alignment.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: *const u8,
    _life: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> TensorRef<'a> {
    /// # Safety
    /// `data` must point to `numel(shape) * dtype.size_bytes()` readable bytes that stay valid
    /// and unwritten for `'a`.
    pub unsafe fn from_raw(dtype: DType, shape: &'a [usize], data: *const u8) -> TensorRef<'a> {
        TensorRef { dtype, shape, data, _life: std::marker::PhantomData }
    }
}

/// A borrowed, writable tensor given by a raw pointer. Contiguous row-major; any alignment.
#[derive(Debug)]
pub struct TensorMut<'a> {
    pub dtype: DType,
    pub shape: &'a [usize],
    pub data: *mut u8,
    _life: std::marker::PhantomData<&'a mut [u8]>,
}

impl<'a> TensorMut<'a> {
    /// # Safety
    /// `data` must point to `numel(shape) * dtype.size_bytes()` writable bytes, valid and not
    /// accessed by anyone else for `'a`, and not overlapping any input of the same run.
    pub unsafe fn from_raw(dtype: DType, shape: &'a [usize], data: *mut u8) -> TensorMut<'a> {
        TensorMut { dtype, shape, data, _life: std::marker::PhantomData }
    }
}
