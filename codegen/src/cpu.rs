//! The CPU pipeline: `KernelGraph -> runtime::Artifact`.
//!
//! Each kernel is lowered ([`crate::lower`]) to loop kernels and library calls; all loop
//! kernels of the graph go into one LLVM module, optimized at O3 for the host CPU, emitted as
//! an object file and linked into a shared library with the system linker driver (`cc`,
//! overridable). The artifact carries that library's bytes, the step list and the arena plan.

use crate::kir::LoopKernel;
use crate::llvm::{self, HostTarget};
use crate::lower::{self, Slot, Unit, View};
use crate::CodegenError;
use ir::{DType, KernelGraph};
use runtime::plan::{self, Request};
use runtime::{Artifact, AttentionStep, BufferDesc, GemmStep, Location, LoopStep, MatView, Step};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Options of the CPU backend.
#[derive(Clone, Debug)]
pub struct CpuOptions {
    /// The C compiler driver that links the object file into a shared library
    /// (default: `$KILN_LINKER`, else `cc`).
    pub linker: PathBuf,
    /// Write each graph's kernel IR (`.kir`) and optimized LLVM IR (`.ll`) here
    /// (default: `$KILN_DUMP`).
    pub dump_dir: Option<PathBuf>,
    /// Threads compiling LLVM modules in parallel (default: all cores).
    pub threads: Option<usize>,
}

impl Default for CpuOptions {
    fn default() -> CpuOptions {
        CpuOptions {
            linker: std::env::var_os("KILN_LINKER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("cc")),
            dump_dir: std::env::var_os("KILN_DUMP").map(PathBuf::from),
            threads: None,
        }
    }
}

/// The target id of this host (`triple/cpu/features`), as artifacts and cache keys carry it.
pub fn host_target_id() -> Result<String, CodegenError> {
    Ok(HostTarget::new()?.id())
}

/// Everything codegen decided before LLVM: steps, buffers and loop kernels.
struct Plan {
    buffers: Vec<(DType, Vec<usize>)>,
    steps: Vec<Step>,
    loops: Vec<(String, LoopKernel)>,
}

fn plan_graph(kg: &KernelGraph) -> Result<Plan, CodegenError> {
    let mut buffers: Vec<(DType, Vec<usize>)> = kg.buffers.iter().map(|b| (b.dtype, b.shape.dims().to_vec())).collect();
    let mut steps = Vec::new();
    let mut loops = Vec::new();
    for (ki, k) in kg.kernels.iter().enumerate() {
        let low = lower::lower(&format!("k{ki}"), &k.body)?;
        let base = buffers.len();
        for s in &low.scratch {
            buffers.push((s.dtype, s.dims.clone()));
        }
        let map = |s: Slot| -> u32 {
            match s {
                Slot::Input(i) => k.inputs[i].0,
                Slot::Output(j) => k.outputs[j].0,
                Slot::Scratch(s) => (base + s) as u32,
            }
        };
        let mv = |v: &View| MatView { buffer: map(v.slot), offset: v.offset, batch_strides: v.batch_strides.clone(), row_stride: v.row_stride, col_stride: v.col_stride };
        for (ui, u) in low.units.into_iter().enumerate() {
            match u {
                Unit::Loop { kernel, args } => {
                    let kernel = split_flat(kernel);
                    let symbol = format!("kiln_k{ki}_{ui}");
                    steps.push(Step::Loop(LoopStep {
                        kernel: k.name.clone(),
                        symbol: symbol.clone(),
                        outer: kernel.outer_count(),
                        work_per_iter: kernel.work_per_iter(),
                        args: args.into_iter().map(map).collect(),
                    }));
                    loops.push((symbol, kernel));
                }
                Unit::Gemm { dtype, batch, m, n, k: kk, a, b, c } => {
                    if batch.contains(&0) || m == 0 || n == 0 {
                        continue;
                    }
                    if kk == 0 {
                        return Err(CodegenError::Unsupported { kernel: k.name.clone(), reason: "a matmul with an empty contraction dim".into() });
                    }
                    steps.push(Step::Gemm(GemmStep { kernel: k.name.clone(), dtype, batch, m, n, k: kk, a: mv(&a), b: mv(&b), c: mv(&c) }));
                }
                Unit::Attention { batch, sq, sk, d, dv, causal, scale, q, k: kv, v, o } => {
                    if batch.contains(&0) || sq == 0 || dv == 0 {
                        continue;
                    }
                    steps.push(Step::Attention(AttentionStep { kernel: k.name.clone(), batch, sq, sk, d, dv, causal, scale, q: mv(&q), k: mv(&kv), v: mv(&v), o: mv(&o) }));
                }
            }
        }
    }
    Ok(Plan { buffers, steps, loops })
}

/// Flat (1-D) elementwise kernels of at least this many elements are split for threads.
const SPLIT_MIN: usize = 1 << 16;

/// A kernel with no parallel dims whose stages are all one flat elementwise loop over `n`
/// (a 1-D tensor) would run on one thread: view its loop as `[n / B, B]` (`B` the largest
/// power of two up to 8192 dividing `n`), so the outer `n / B` iterations split across cores
/// and the inner loop still vectorizes over contiguous memory. Indices become `i0 * B + i1`;
/// written parameters take the 2-D shape (same bytes). Anything else is returned unchanged.
fn split_flat(k: LoopKernel) -> LoopKernel {
    use crate::kir::{Builder, Expr, Stage};
    let Some(n) = k.stages.first().and_then(|s| s.dims.first().copied()) else { return k };
    let flat = k.outer.is_empty() && k.locals.is_empty() && k.stages.iter().all(|s| s.reduce.is_none() && s.dims == [n]);
    let block = 1usize << n.trailing_zeros().min(13);
    if !flat || n < SPLIT_MIN || block < 256 {
        return k;
    }
    let written: Vec<bool> = k.params.iter().map(|p| p.written).collect();
    let reads_written = k.exprs.iter().any(|(e, _)| matches!(e, Expr::Load(crate::kir::BufId::Param(p), _) if written[*p as usize]));
    if reads_written || k.stages.iter().any(|s| !matches!(s.target, crate::kir::BufId::Param(_))) {
        return k;
    }
    let mut b = Builder::default();
    let (i0, i1) = (b.var(0), b.var(1));
    let hi = b.mul(i0, block as i64);
    let flat_idx = b.add(hi, i1);
    let mut map: Vec<u32> = Vec::with_capacity(k.exprs.len());
    for (e, ty) in &k.exprs {
        let m = |x: &u32| map[*x as usize];
        let ne = match e {
            Expr::Var(0) => {
                map.push(flat_idx);
                continue;
            }
            Expr::Load(buf, idx) => Expr::Load(*buf, idx.iter().map(m).collect()),
            Expr::Unary(u, a) => Expr::Unary(*u, m(a)),
            Expr::Cast(d, a) => Expr::Cast(*d, m(a)),
            Expr::Binary(op, x, y) => Expr::Binary(*op, m(x), m(y)),
            Expr::Rem(x, y) => Expr::Rem(m(x), m(y)),
            Expr::Compare(c, x, y) => Expr::Compare(*c, m(x), m(y)),
            Expr::Select(c, x, y) => Expr::Select(m(c), m(x), m(y)),
            other => other.clone(),
        };
        map.push(b.push(ne, *ty));
    }
    let dims = vec![n / block, block];
    let params = k
        .params
        .into_iter()
        .map(|p| if p.written { crate::kir::Param { dims: dims.clone(), ..p } } else { p })
        .collect();
    let stages = k.stages.iter().map(|s| Stage { target: s.target, dims: dims.clone(), reduce: None, value: map[s.value as usize] }).collect();
    LoopKernel { name: k.name, outer: vec![n / block], params, locals: Vec::new(), exprs: b.exprs, stages }
}

/// The kernel IR of every loop kernel of the graph, as text (for golden tests and dumps).
pub fn kernel_ir(kg: &KernelGraph) -> Result<String, CodegenError> {
    kg.verify()?;
    let p = plan_graph(kg)?;
    Ok(p.loops.iter().map(|(_, k)| k.to_string()).collect::<Vec<_>>().join("\n"))
}

static BUILD: AtomicU64 = AtomicU64::new(0);

/// Compiles a kernel graph for the host CPU.
pub fn compile(kg: &KernelGraph, opts: &CpuOptions) -> Result<Artifact, CodegenError> {
    kg.verify()?;
    let target = HostTarget::new()?;
    let Plan { mut buffers, mut steps, loops } = plan_graph(kg)?;

    // Homes: graph inputs and outputs live in the caller's tensors, the rest in the arena.
    let mut loc: Vec<Option<Location>> = vec![None; buffers.len()];
    for (i, b) in kg.inputs.iter().enumerate() {
        loc[b.0 as usize] = Some(Location::Input(i));
    }
    let mut outputs = Vec::new();
    for (j, b) in kg.outputs.iter().enumerate() {
        if loc[b.0 as usize].is_none() {
            loc[b.0 as usize] = Some(Location::Output(j));
            outputs.push(b.0);
        } else {
            // An output that is an input, or a buffer returned twice: copy it at the end.
            let nb = buffers.len() as u32;
            buffers.push(buffers[b.0 as usize].clone());
            loc.push(Some(Location::Output(j)));
            steps.push(Step::Copy { from: b.0, to: nb });
            outputs.push(nb);
        }
    }

    // Liveness over steps, then the arena plan.
    let mut live: Vec<Option<(usize, usize)>> = vec![None; buffers.len()];
    let mut touch = |b: u32, s: usize| {
        let l = &mut live[b as usize];
        *l = Some(match *l {
            None => (s, s),
            Some((a, _)) => (a, s),
        });
    };
    for (s, step) in steps.iter().enumerate() {
        match step {
            Step::Loop(l) => l.args.iter().for_each(|&b| touch(b, s)),
            Step::Gemm(g) => [&g.a, &g.b, &g.c].iter().for_each(|v| touch(v.buffer, s)),
            Step::Attention(a) => [&a.q, &a.k, &a.v, &a.o].iter().for_each(|v| touch(v.buffer, s)),
            Step::Copy { from, to } => {
                touch(*from, s);
                touch(*to, s);
            }
        }
    }
    let bytes = |i: usize| buffers[i].1.iter().product::<usize>() * buffers[i].0.size_bytes();
    let arena: Vec<usize> = (0..buffers.len()).filter(|&i| loc[i].is_none()).collect();
    let reqs: Vec<Request> = arena.iter().map(|&i| Request { bytes: bytes(i), live: live[i].unwrap_or((0, 0)) }).collect();
    let (offsets, arena_bytes) = plan::plan(&reqs);
    for (&i, &off) in arena.iter().zip(&offsets) {
        loc[i] = Some(Location::Arena { offset: off });
    }
    let unplanned_bytes = arena.iter().map(|&i| bytes(i)).sum();
    let descs: Vec<BufferDesc> = buffers
        .iter()
        .enumerate()
        .map(|(i, (d, s))| BufferDesc { dtype: *d, shape: s.clone(), location: loc[i].clone().expect("every buffer placed"), live: live[i].unwrap_or((0, 0)) })
        .collect();

    // Native code: identical loop kernels (a transformer's repeated layers) compile once.
    let mut unique: HashMap<String, String> = HashMap::new();
    let mut refs: Vec<(String, &LoopKernel)> = Vec::new();
    for (sym, k) in &loops {
        let key = LoopKernel { name: String::new(), ..k.clone() }.to_string();
        match unique.get(&key) {
            Some(first) => {
                for st in steps.iter_mut() {
                    if let Step::Loop(l) = st {
                        if l.symbol == *sym {
                            l.symbol = first.clone();
                        }
                    }
                }
            }
            None => {
                unique.insert(key, sym.clone());
                refs.push((sym.clone(), k));
            }
        }
    }
    let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let (objects, ir_text) = llvm::compile(&refs, threads, opts.dump_dir.is_some())?;
    if let (Some(dir), Some(text)) = (&opts.dump_dir, ir_text) {
        let _ = std::fs::create_dir_all(dir);
        let kir: String = loops.iter().map(|(_, k)| k.to_string()).collect::<Vec<_>>().join("\n");
        // A graph compiled twice (fused, then one kernel per op) keeps both dumps.
        let stem = (0..).map(|i| if i == 0 { kg.name.clone() } else { format!("{}.{i}", kg.name) }).find(|s| !dir.join(format!("{s}.kir")).exists()).unwrap_or_default();
        let _ = std::fs::write(dir.join(format!("{stem}.kir")), kir);
        let _ = std::fs::write(dir.join(format!("{stem}.ll")), text);
    }
    let library = link(&objects, opts)?;
    Ok(Artifact {
        name: kg.name.clone(),
        target: target.id(),
        kiln_version: runtime::KILN_VERSION.to_string(),
        library,
        buffers: descs,
        inputs: kg.inputs.iter().map(|b| b.0).collect(),
        input_names: kg.input_names.clone(),
        outputs,
        arena_bytes,
        unplanned_bytes,
        steps,
    })
}

/// Links an object file into a shared library and returns its bytes.
fn link(objects: &[Vec<u8>], opts: &CpuOptions) -> Result<Vec<u8>, CodegenError> {
    let dir = std::env::temp_dir().join(format!("kiln-cg-{}-{}", std::process::id(), BUILD.fetch_add(1, Ordering::Relaxed)));
    let io = |p: &std::path::Path| {
        let p = p.display().to_string();
        move |e| CodegenError::Io { path: p, source: e }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let so = dir.join("kernels.so");
    let mut cmd = std::process::Command::new(&opts.linker);
    cmd.arg("-shared").arg("-o").arg(&so);
    for (i, object) in objects.iter().enumerate() {
        let obj = dir.join(format!("kernels{i}.o"));
        std::fs::write(&obj, object).map_err(io(&obj))?;
        cmd.arg(&obj);
    }
    cmd.arg("-lm");
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| CodegenError::Link { command: command.clone(), message: e.to_string() })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(CodegenError::Link { command, message: String::from_utf8_lossy(&out.stderr).into_owned() });
    }
    let bytes = std::fs::read(&so).map_err(io(&so))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(bytes)
}

/// [`compile`] through the on-disk cache: keyed by the kernel graph's text (every shape and
/// dtype), this host's target id and Kiln's version. A hit needs no LLVM run.
pub fn compile_cached(kg: &KernelGraph, opts: &CpuOptions, cache: &runtime::cache::Cache) -> Result<(Artifact, runtime::cache::Outcome), CodegenError> {
    let key = runtime::cache::CacheKey::new(&kg.to_string(), &host_target_id()?);
    cache.get_or_build(&key, || compile(kg, opts))
}
