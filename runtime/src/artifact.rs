//! `Artifact`: a compiled graph as plain data (native code + steps + buffer plan).

use ir::{DType, Shape};
use serde::{Deserialize, Serialize};

/// The calling convention of every generated loop function:
/// `extern "C" fn(args: *const *mut u8, start: i64, end: i64)`, running the outer (parallel)
/// iterations `start..end` over the buffers whose base pointers `args` lists in order.
pub const LOOP_ABI: &str = "void(ptr args, i64 start, i64 end)";

/// Where a buffer lives while the graph runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// The caller's input tensor at this position.
    Input(usize),
    /// The caller's output tensor at this position.
    Output(usize),
    /// Inside the executor's arena, at this byte offset (64-byte aligned).
    Arena { offset: usize },
}

/// One buffer of the plan: its type, size and home.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferDesc {
    #[serde(with = "dtype_serde")]
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub location: Location,
    /// First and last step that touch it (liveness, inclusive), for plan reports.
    pub live: (usize, usize),
}

impl BufferDesc {
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size_bytes()
    }
}

/// A generated loop function over `outer` parallel iterations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopStep {
    /// The kernel graph's kernel this step belongs to (for errors and profiles).
    pub kernel: String,
    pub symbol: String,
    /// Parallel iterations; the executor splits `0..outer` across threads.
    pub outer: u64,
    /// Elements of work per outer iteration (decides whether splitting pays).
    pub work_per_iter: u64,
    /// Buffer indices bound to the function's `args`, in order.
    pub args: Vec<u32>,
}

/// A strided f32 matrix operand: element `(batch b, row i, col j)` is at
/// `offset + sum(b_d * batch_strides[d]) + i * row_stride + j * col_stride` (in elements).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatView {
    pub buffer: u32,
    pub offset: isize,
    pub batch_strides: Vec<isize>,
    pub row_stride: isize,
    pub col_stride: isize,
}

/// `c[b] = a[b] @ b[b]` for every batch index, all of `dtype`: `[m, k] @ [k, n] -> [m, n]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GemmStep {
    pub kernel: String,
    /// The operands' and result's dtype: f32, or f16 (the gemm crate's f16 kernels).
    #[serde(with = "dtype_serde")]
    pub dtype: DType,
    pub batch: Vec<usize>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: MatView,
    pub b: MatView,
    pub c: MatView,
}

/// Flash attention on f32 views `[batch.., s, d]`: `o = softmax(q k^T * scale [causal]) v`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionStep {
    pub kernel: String,
    pub batch: Vec<usize>,
    pub sq: usize,
    pub sk: usize,
    pub d: usize,
    pub dv: usize,
    pub causal: bool,
    pub scale: f64,
    pub q: MatView,
    pub k: MatView,
    pub v: MatView,
    pub o: MatView,
}

/// One thing the executor does, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    Loop(LoopStep),
    Gemm(GemmStep),
    Attention(AttentionStep),
    /// Copy a whole buffer (a graph output that is an input, or the same buffer returned twice).
    Copy { from: u32, to: u32 },
}

impl Step {
    pub fn kernel(&self) -> &str {
        match self {
            Step::Loop(s) => &s.kernel,
            Step::Gemm(s) => &s.kernel,
            Step::Attention(s) => &s.kernel,
            Step::Copy { .. } => "copy",
        }
    }
}

/// A compiled graph: everything an executor needs, nothing of the compiler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    /// `triple/cpu/features` the native code was built for.
    pub target: String,
    pub kiln_version: String,
    /// The native code: a shared library (ELF `.so`) holding every loop function.
    pub library: Vec<u8>,
    pub buffers: Vec<BufferDesc>,
    /// Buffer index of each graph input, and its name.
    pub inputs: Vec<u32>,
    pub input_names: Vec<String>,
    /// Buffer index of each graph output.
    pub outputs: Vec<u32>,
    pub arena_bytes: usize,
    /// Sum of all intermediate buffers' sizes (what the arena would be without reuse).
    pub unplanned_bytes: usize,
    pub steps: Vec<Step>,
}

impl Artifact {
    /// Peak intermediate memory of a run (the arena), in bytes.
    pub fn peak_memory(&self) -> usize {
        self.arena_bytes
    }

    /// A short human-readable summary: steps and memory.
    pub fn summary(&self) -> String {
        let (mut l, mut g, mut a) = (0, 0, 0);
        for s in &self.steps {
            match s {
                Step::Loop(_) => l += 1,
                Step::Gemm(_) => g += 1,
                Step::Attention(_) => a += 1,
                Step::Copy { .. } => {}
            }
        }
        format!(
            "artifact @{}: {} steps ({l} loops, {g} gemms, {a} attention), arena {} bytes (unplanned {}), code {} bytes",
            self.name,
            self.steps.len(),
            self.arena_bytes,
            self.unplanned_bytes,
            self.library.len()
        )
    }

    pub fn input_type(&self, i: usize) -> (DType, Shape) {
        let b = &self.buffers[self.inputs[i] as usize];
        (b.dtype, Shape::from(b.shape.as_slice()))
    }

    pub fn output_type(&self, i: usize) -> (DType, Shape) {
        let b = &self.buffers[self.outputs[i] as usize];
        (b.dtype, Shape::from(b.shape.as_slice()))
    }
}

pub(crate) mod dtype_serde {
    use ir::DType;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(d: &DType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.name())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DType, D::Error> {
        let s = String::deserialize(d)?;
        DType::from_name(&s).ok_or_else(|| D::Error::custom(format!("unknown dtype {s:?}")))
    }
}
