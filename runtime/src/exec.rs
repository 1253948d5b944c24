//! The CPU executor: loads an artifact's native code and runs its steps over the cores.

use crate::kernels;
use crate::{Artifact, HostTensor, Location, MatView, Result, RuntimeError, Step, TensorMut, TensorRef};
use ir::{DType, Shape};
use rayon::prelude::*;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

type LoopFn = unsafe extern "C" fn(*const *mut u8, i64, i64);

/// Below this many elements of work a loop step runs on the calling thread.
const PARALLEL_MIN_WORK: u64 = 1 << 15;

/// Runs an [`Artifact`] on the host CPU.
///
/// `CpuExecutor` is `Send + Sync`: [`CpuExecutor::run_into`] takes `&self`, and each concurrent
/// call borrows its own arena from an internal pool (a new arena is allocated only when more
/// calls run at once than ever before), so steady-state calls allocate nothing.
pub struct CpuExecutor {
    artifact: Artifact,
    _lib: libloading::Library,
    /// Per step: the loop function (loop steps only).
    funcs: Vec<Option<LoopFn>>,
    /// Per step: the range of `Scratch::args` holding its argument pointers.
    arg_ranges: Vec<(usize, usize)>,
    pool: Mutex<Vec<Scratch>>,
}

impl std::fmt::Debug for CpuExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.artifact.summary())
    }
}

/// Per-call state: the arena and the argument pointer table.
struct Scratch {
    arena: Arena,
    ptrs: Vec<*mut u8>,
    args: Vec<*mut u8>,
}
// SAFETY: the pointers refer to the arena this value owns, or are rewritten on every call.
unsafe impl Send for Scratch {}

struct Arena {
    ptr: *mut u8,
    layout: Option<Layout>,
}
impl Arena {
    fn new(bytes: usize) -> Arena {
        if bytes == 0 {
            return Arena { ptr: std::ptr::NonNull::<u64>::dangling().as_ptr() as *mut u8, layout: None };
        }
        let layout = Layout::from_size_align(bytes, crate::plan::ALIGN).expect("arena layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Arena { ptr, layout: Some(layout) }
    }
}
impl Drop for Arena {
    fn drop(&mut self) {
        if let Some(l) = self.layout {
            // SAFETY: allocated with this layout.
            unsafe { dealloc(self.ptr, l) }
        }
    }
}

#[derive(Clone, Copy)]
struct Ptrs(*const *mut u8);
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

static LOAD_COUNTER: AtomicU64 = AtomicU64::new(0);

impl CpuExecutor {
    /// Loads the artifact's native code and checks its plan.
    pub fn new(artifact: &Artifact) -> Result<CpuExecutor> {
        let a = artifact;
        if !a.target.starts_with(std::env::consts::ARCH) {
            return Err(RuntimeError::TargetMismatch { artifact: a.target.clone(), host: std::env::consts::ARCH.into() });
        }
        validate(a)?;
        let path = std::env::temp_dir().join(format!(
            "kiln-{}-{}-{}.so",
            std::process::id(),
            LOAD_COUNTER.fetch_add(1, Ordering::Relaxed),
            a.name.chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect::<String>()
        ));
        std::fs::write(&path, &a.library).map_err(|e| RuntimeError::Io { path: path.display().to_string(), source: e })?;
        // SAFETY: the library is Kiln-generated code with no initialisers beyond the C runtime's.
        let lib = unsafe { libloading::Library::new(&path) };
        let _ = std::fs::remove_file(&path);
        let lib = lib.map_err(|e| RuntimeError::Load { artifact: a.name.clone(), message: e.to_string() })?;
        let mut funcs = Vec::with_capacity(a.steps.len());
        let mut arg_ranges = Vec::with_capacity(a.steps.len());
        let mut nargs = 0;
        for (i, s) in a.steps.iter().enumerate() {
            match s {
                Step::Loop(l) => {
                    let name = format!("{}\0", l.symbol);
                    // SAFETY: every loop symbol has the LOOP_ABI signature.
                    let f: LoopFn = unsafe {
                        *lib.get::<LoopFn>(name.as_bytes()).map_err(|_| RuntimeError::MissingSymbol {
                            step: i,
                            kernel: l.kernel.clone(),
                            symbol: l.symbol.clone(),
                        })?
                    };
                    funcs.push(Some(f));
                    arg_ranges.push((nargs, nargs + l.args.len()));
                    nargs += l.args.len();
                }
                _ => {
                    funcs.push(None);
                    arg_ranges.push((nargs, nargs));
                }
            }
        }
        Ok(CpuExecutor { artifact: a.clone(), _lib: lib, funcs, arg_ranges, pool: Mutex::new(Vec::new()) })
    }

    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// Peak intermediate memory per concurrent call (the arena), in bytes.
    pub fn peak_memory(&self) -> usize {
        self.artifact.arena_bytes
    }

    /// Runs on owned tensors, returning freshly allocated outputs.
    pub fn run(&mut self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let mut outs: Vec<HostTensor> = (0..self.artifact.outputs.len())
            .map(|i| {
                let (d, s) = self.artifact.output_type(i);
                HostTensor::zeros(d, s)
            })
            .collect();
        for (i, t) in inputs.iter().enumerate() {
            let expected = t.numel() * t.dtype.size_bytes();
            if t.bytes.len() != expected {
                let _ = i;
                return Err(RuntimeError::DataSize { dtype: t.dtype, shape: t.shape.clone(), expected, got: t.bytes.len() });
            }
        }
        let ins: Vec<TensorRef> = inputs.iter().map(|t| t.as_ref()).collect();
        let mut outm: Vec<TensorMut> = outs.iter_mut().map(|t| t.as_mut()).collect();
        self.run_into(&ins, &mut outm)?;
        drop(outm);
        Ok(outs)
    }

    /// Runs on caller-owned memory (zero-copy). Checks every input's and output's dtype and
    /// shape; outputs must not overlap inputs.
    pub fn run_into(&self, inputs: &[TensorRef], outputs: &mut [TensorMut]) -> Result<()> {
        let a = &self.artifact;
        if inputs.len() != a.inputs.len() {
            return Err(RuntimeError::InputCount { expected: a.inputs.len(), got: inputs.len() });
        }
        if outputs.len() != a.outputs.len() {
            return Err(RuntimeError::OutputCount { expected: a.outputs.len(), got: outputs.len() });
        }
        for (i, t) in inputs.iter().enumerate() {
            let (d, s) = a.input_type(i);
            if t.dtype != d || t.shape != s.dims() {
                return Err(RuntimeError::InputType {
                    index: i,
                    name: a.input_names.get(i).cloned().unwrap_or_default(),
                    expected_dtype: d,
                    expected_shape: s,
                    dtype: t.dtype,
                    shape: Shape::from(t.shape),
                });
            }
        }
        for (i, t) in outputs.iter().enumerate() {
            let (d, s) = a.output_type(i);
            if t.dtype != d || t.shape != s.dims() {
                return Err(RuntimeError::OutputType { index: i, expected_dtype: d, expected_shape: s, dtype: t.dtype, shape: Shape::from(t.shape) });
            }
        }
        let mut scratch = self.take_scratch();
        for (i, b) in a.buffers.iter().enumerate() {
            scratch.ptrs[i] = match b.location {
                Location::Input(j) => inputs[j].data as *mut u8,
                Location::Output(j) => outputs[j].data,
                // SAFETY: the plan keeps offsets inside the arena.
                Location::Arena { offset } => unsafe { scratch.arena.ptr.add(offset) },
            };
        }
        for (s, step) in a.steps.iter().enumerate() {
            if let Step::Loop(l) = step {
                let (lo, _) = self.arg_ranges[s];
                for (k, &b) in l.args.iter().enumerate() {
                    scratch.args[lo + k] = scratch.ptrs[b as usize];
                }
            }
        }
        let result = self.run_steps(&scratch);
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(scratch);
        result
    }

    fn take_scratch(&self) -> Scratch {
        if let Some(s) = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return s;
        }
        let a = &self.artifact;
        let nargs = self.arg_ranges.last().map(|r| r.1).unwrap_or(0);
        Scratch { arena: Arena::new(a.arena_bytes), ptrs: vec![std::ptr::null_mut(); a.buffers.len()], args: vec![std::ptr::null_mut(); nargs] }
    }

    fn run_steps(&self, sc: &Scratch) -> Result<()> {
        let a = &self.artifact;
        let threads = rayon::current_num_threads() as u64;
        let base = |b: u32| sc.ptrs[b as usize] as *mut f32;
        for (s, step) in a.steps.iter().enumerate() {
            match step {
                Step::Loop(l) => {
                    let f = self.funcs[s].expect("loop step has a function");
                    let (lo, hi) = self.arg_ranges[s];
                    let args = Ptrs(sc.args[lo..hi].as_ptr());
                    let work = l.outer.saturating_mul(l.work_per_iter.max(1));
                    if l.outer == 0 {
                        continue;
                    }
                    if threads <= 1 || l.outer == 1 || work < PARALLEL_MIN_WORK {
                        // SAFETY: arguments match the function's buffers (validated at load).
                        unsafe { f(args.0, 0, l.outer as i64) };
                    } else {
                        let chunks = l.outer.min(threads * 4);
                        let outer = l.outer;
                        (0..chunks).into_par_iter().for_each(move |c| {
                            let a = args;
                            let (b, e) = (outer * c / chunks, outer * (c + 1) / chunks);
                            // SAFETY: outer iterations write disjoint parts of the outputs.
                            unsafe { f(a.0, b as i64, e as i64) };
                        });
                    }
                }
                // SAFETY: views validated at load; gemm output never aliases its operands.
                Step::Gemm(g) => unsafe { kernels::gemm::run(g, &base) },
                // SAFETY: as above.
                Step::Attention(at) => unsafe { kernels::attention::run(at, &base) },
                Step::Copy { from, to } => {
                    let n = a.buffers[*from as usize].bytes();
                    // SAFETY: both buffers hold n bytes and are distinct.
                    unsafe { std::ptr::copy_nonoverlapping(sc.ptrs[*from as usize], sc.ptrs[*to as usize], n) };
                }
            }
        }
        Ok(())
    }
}

/// Checks every index and view of the plan so a malformed artifact is an error, not a crash.
fn validate(a: &Artifact) -> Result<()> {
    let bad = |step: usize, kernel: &str, reason: String| RuntimeError::BadArtifact { artifact: a.name.clone(), step, kernel: kernel.into(), reason };
    let nb = a.buffers.len() as u32;
    for (i, b) in a.buffers.iter().enumerate() {
        if let Location::Arena { offset } = b.location {
            if offset + b.bytes() > a.arena_bytes {
                return Err(bad(0, "plan", format!("buffer {i} lies outside the arena")));
            }
        }
    }
    for (&b, (i, _)) in a.inputs.iter().chain(&a.outputs).zip(std::iter::repeat((0, ()))) {
        let _ = i;
        if b >= nb {
            return Err(bad(0, "plan", format!("graph input/output names buffer {b}, which does not exist")));
        }
    }
    let view_ok = |v: &MatView, dtype: DType, batch: &[usize], rows: usize, cols: usize| -> bool {
        let Some(buf) = a.buffers.get(v.buffer as usize) else { return false };
        if buf.dtype != dtype || v.batch_strides.len() != batch.len() {
            return false;
        }
        let n = buf.shape.iter().product::<usize>() as isize;
        if batch.contains(&0) || rows == 0 || cols == 0 {
            return true;
        }
        let mut lo = v.offset;
        let mut hi = v.offset;
        let mut span = |stride: isize, count: usize| {
            let e = stride * (count as isize - 1);
            if e < 0 { lo += e } else { hi += e }
        };
        for (&s, &c) in v.batch_strides.iter().zip(batch) {
            span(s, c);
        }
        span(v.row_stride, rows);
        span(v.col_stride, cols);
        lo >= 0 && hi < n
    };
    for (i, s) in a.steps.iter().enumerate() {
        match s {
            Step::Loop(l) => {
                if l.args.iter().any(|&b| b >= nb) {
                    return Err(bad(i, &l.kernel, "names a buffer that does not exist".into()));
                }
            }
            Step::Gemm(g) => {
                if !matches!(g.dtype, DType::F32 | DType::F16) {
                    return Err(bad(i, &g.kernel, format!("is a {} matmul (the CPU gemm runs f32 and f16)", g.dtype)));
                }
                if !(view_ok(&g.a, g.dtype, &g.batch, g.m, g.k) && view_ok(&g.b, g.dtype, &g.batch, g.k, g.n) && view_ok(&g.c, g.dtype, &g.batch, g.m, g.n)) {
                    return Err(bad(i, &g.kernel, format!("has a matrix view outside its {} buffer", g.dtype)));
                }
            }
            Step::Attention(t) => {
                let f = DType::F32;
                let ok = view_ok(&t.q, f, &t.batch, t.sq, t.d)
                    && view_ok(&t.k, f, &t.batch, t.sk, t.d)
                    && view_ok(&t.v, f, &t.batch, t.sk, t.dv)
                    && view_ok(&t.o, f, &t.batch, t.sq, t.dv);
                if !ok {
                    return Err(bad(i, &t.kernel, "has a view outside its f32 buffer".into()));
                }
            }
            Step::Copy { from, to } => {
                let ok = *from < nb && *to < nb && a.buffers[*from as usize].bytes() == a.buffers[*to as usize].bytes();
                if !ok {
                    return Err(bad(i, "copy", "copies between buffers of different sizes".into()));
                }
            }
        }
    }
    Ok(())
}
