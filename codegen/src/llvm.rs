//! Kernel IR -> LLVM IR (inkwell) -> native object code for the host CPU.
//!
//! Each [`LoopKernel`] becomes `void @sym(ptr args, i64 start, i64 end)` (the runtime's
//! `LOOP_ABI`) wrapping an internal function whose buffer parameters are `noalias`, so the O3
//! pipeline vectorizes inner loops without runtime alias checks. Floats are computed in f32;
//! `exp`, `log`, `tanh` and `erf` are inline polynomials (vectorizable, no libm call);
//! reductions carry `reassoc` so their loops vectorize too.

use crate::kir::{BufId, Expr, ExprId, LoopKernel, Ty};
use crate::CodegenError;
use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::types::{BasicMetadataTypeEnum, BasicTypeEnum};
use inkwell::values::{BasicValue, BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate, OptimizationLevel};
use ir::{BinaryOp, CmpOp, DType, ReduceOp, UnaryOp};
use std::collections::HashMap;

impl From<BuilderError> for CodegenError {
    fn from(e: BuilderError) -> CodegenError {
        CodegenError::Llvm { stage: "building IR", message: e.to_string() }
    }
}

type R<T> = Result<T, CodegenError>;

fn llvm_err(e: impl std::fmt::Display) -> CodegenError {
    CodegenError::Llvm { stage: "building IR", message: e.to_string() }
}

/// The host CPU as LLVM sees it.
#[derive(Debug)]
pub struct HostTarget {
    pub machine: TargetMachine,
    pub triple: String,
    pub cpu: String,
    pub features: String,
}

impl HostTarget {
    pub fn new() -> R<HostTarget> {
        Target::initialize_x86(&InitializationConfig::default());
        let triple = TargetMachine::get_default_triple();
        let target = Target::from_triple(&triple).map_err(|e| CodegenError::Llvm { stage: "target lookup", message: e.to_string() })?;
        let cpu = TargetMachine::get_host_cpu_name().to_string();
        let features = TargetMachine::get_host_cpu_features().to_string();
        let machine = target
            .create_target_machine(&triple, &cpu, &features, OptimizationLevel::Aggressive, RelocMode::PIC, CodeModel::Default)
            .ok_or_else(|| CodegenError::Llvm { stage: "target machine", message: format!("no target machine for {triple}") })?;
        Ok(HostTarget { machine, triple: triple.as_str().to_string_lossy().into_owned(), cpu, features })
    }

    /// `triple/cpu/features` (and `/v{bits}` where [`HostTarget::vector_bits`] picks a width,
    /// `/nt{bytes}` while [`HostTarget::streaming_store_bytes`] is on): part of the cache key.
    pub fn id(&self) -> String {
        let nt = match self.streaming_store_bytes() {
            0 => String::new(),
            b => format!("/nt{b}"),
        };
        match self.vector_bits() {
            Some(v) => format!("{}/{}/{}/v{v}{nt}", self.triple, self.cpu, self.features),
            None => format!("{}/{}/{}{nt}", self.triple, self.cpu, self.features),
        }
    }

    /// Outputs of at least this many bytes are written with non-temporal (streaming) stores
    /// (see [`Gen::streaming_stage`]); `0`: never. `$KILN_CPU_NT_BYTES`, else
    /// [`STREAMING_STORE_BYTES`].
    pub fn streaming_store_bytes(&self) -> u64 {
        std::env::var("KILN_CPU_NT_BYTES").ok().and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(STREAMING_STORE_BYTES)
    }

    /// Whether the host has AVX-512 (foundation).
    pub fn has_avx512(&self) -> bool {
        self.features.split(',').any(|f| f == "+avx512f")
    }

    /// The vector width (bits) loop kernels are vectorized for: `$KILN_CPU_VECTOR_BITS` (128,
    /// 256 or 512; anything else is ignored), else 512 where the host has AVX-512, else LLVM's
    /// own choice (`None`). LLVM's tuning for Intel server cores prefers 256-bit vectors; the
    /// exp and divide of fused elementwise and softmax kernels are compute-bound there per
    /// thread, and 512-bit vectors do twice the math per instruction.
    pub fn vector_bits(&self) -> Option<u32> {
        let env = std::env::var("KILN_CPU_VECTOR_BITS").ok().and_then(|v| v.trim().parse::<u32>().ok()).filter(|v| [128, 256, 512].contains(v));
        let avx512 = self.has_avx512();
        match env {
            Some(512) if !avx512 => None,
            Some(v) => Some(v),
            None => avx512.then_some(512),
        }
    }
}

/// The default of [`HostTarget::streaming_store_bytes`]: an output this large does not stay in
/// the last-level cache of the machines Kiln runs on for long (32 MiB on the development
/// EPYC, shared with the kernel's inputs), so writing it around the caches costs its reader
/// little.
pub const STREAMING_STORE_BYTES: u64 = 16 << 20;

/// Elements a streaming stage computes into its scratch chunk before copying them out.
const STREAM_CHUNK: usize = 256;

/// Compiles kernels to object files: the kernels are split into up to `threads` modules
/// compiled in parallel (each with its own LLVM context), every module optimized at O3.
/// Returns the object files and, if asked, the optimized LLVM IR text.
pub fn compile(kernels: &[(String, &LoopKernel)], threads: usize, want_ir: bool) -> R<(Vec<Vec<u8>>, Option<String>)> {
    let parts = threads.clamp(1, kernels.len().max(1));
    let chunk = kernels.len().div_ceil(parts).max(1);
    let results: Vec<R<(Vec<u8>, Option<String>)>> = if parts == 1 {
        vec![compile_module(kernels, want_ir)]
    } else {
        std::thread::scope(|s| {
            let hs: Vec<_> = kernels.chunks(chunk).map(|c| s.spawn(move || compile_module(c, want_ir))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(CodegenError::Llvm { stage: "compiling a module", message: "the compile thread panicked".into() }))).collect()
        })
    };
    let mut objects = Vec::new();
    let mut ir = want_ir.then(String::new);
    for r in results {
        let (o, t) = r?;
        objects.push(o);
        if let (Some(all), Some(t)) = (ir.as_mut(), t) {
            all.push_str(&t);
        }
    }
    Ok((objects, ir))
}

fn compile_module(kernels: &[(String, &LoopKernel)], want_ir: bool) -> R<(Vec<u8>, Option<String>)> {
    let target = HostTarget::new()?;
    let ctx = Context::create();
    let module = ctx.create_module("kiln");
    module.set_triple(&target.machine.get_triple());
    module.set_data_layout(&target.machine.get_target_data().get_data_layout());
    for (sym, k) in kernels {
        emit_kernel(&ctx, &module, &target, sym, k)?;
    }
    module.verify().map_err(|e| CodegenError::Llvm { stage: "verifying generated IR", message: e.to_string() })?;
    module
        .run_passes("default<O3>", &target.machine, PassBuilderOptions::create())
        .map_err(|e| CodegenError::Llvm { stage: "O3 pipeline", message: e.to_string() })?;
    let ir = want_ir.then(|| module.print_to_string().to_string());
    let buf = target
        .machine
        .write_to_memory_buffer(&module, FileType::Object)
        .map_err(|e| CodegenError::Llvm { stage: "object emission", message: e.to_string() })?;
    Ok((buf.as_slice().to_vec(), ir))
}

struct Gen<'ctx, 'a> {
    ctx: &'ctx Context,
    module: &'a Module<'ctx>,
    b: Builder<'ctx>,
    k: &'a LoopKernel,
    func: FunctionValue<'ctx>,
    params: Vec<PointerValue<'ctx>>,
    locals: Vec<PointerValue<'ctx>>,
    vars: HashMap<u32, IntValue<'ctx>>,
    memo: HashMap<ExprId, BasicValueEnum<'ctx>>,
    entry_allocas: Builder<'ctx>,
    /// Software prefetch of the next outer iteration's rows, issued from one later stage.
    prefetch: Option<Prefetch<'ctx>>,
    /// The host has AVX-512: `exp` scales by `llvm.ldexp`, which LLVM vectorizes to
    /// `vscalefps` there (elsewhere it would be a libm call per element).
    scalef: bool,
    /// [`HostTarget::streaming_store_bytes`].
    nt_bytes: u64,
    /// A stage wrote with non-temporal stores: the body ends with a fence.
    nt_used: bool,
}

/// Multi-pass row kernels (softmax, layer_norm) read their row from memory in the first pass
/// and then compute on it in cache, leaving the memory system idle; one-pass kernels heavy in
/// math keep too few lines in flight (see [`plan_prefetch`]). One elementwise stage (`stage`:
/// a later one, or the only one) is strip-mined into chunks of `chunk` iterations
/// ([`chunk_for`]), and each chunk prefetches its share of the next outer iteration's rows of
/// `params` (`row_bytes` each), so the next row streams in while this one is computed.
struct Prefetch<'ctx> {
    stage: usize,
    chunk: usize,
    params: Vec<(usize, u64)>,
    next: Option<IntValue<'ctx>>,
}

/// The clamp of `exp` where its result feeds a reciprocal estimate: e^87 = 6.1e37 keeps
/// `1 + exp` under 2^126, so its reciprocal is a normal number.
const EST_EXP_HI: f32 = 87.0;

/// The fewest iterations of a prefetching stage between prefetch groups.
const CHUNK: usize = 64;

/// The chunk of a prefetching stage of `n` iterations: the longest of 256, 128 and 64 that
/// divides `n` at least 4 times. A reduction fused into the stage ([`fuses_with_next`]) adds
/// its vector lanes up once per chunk, so longer chunks cost less: softmax `[4096, 4096]`
/// with its sum in the exp loop, 1 thread, 4.99-5.56 ms in chunks of 256 against 5.52-5.92
/// in chunks of 64 and 5.65-6.09 with the sum as a pass of its own.
fn chunk_for(n: usize) -> usize {
    [256, 128, CHUNK].into_iter().find(|&c| n.is_multiple_of(c) && n / c >= 4).unwrap_or(CHUNK)
}

/// Plans prefetching for a kernel (see [`Prefetch`]); `None` where it does not apply.
/// `nt_bytes`: [`HostTarget::streaming_store_bytes`].
fn plan_prefetch<'ctx>(k: &LoopKernel, nt_bytes: u64) -> Option<Prefetch<'ctx>> {
    let kk = k.outer.len();
    // Where the first pass is a reduction (softmax's max, rms_norm's sum of squares), and in
    // a one-pass elementwise kernel heavy in math (a sigmoid chain: exp and a divide per
    // element): there each element's long dependent chain fills the scheduler, so few cache
    // lines are in flight per core and the stream runs under the copy's rate. A light first
    // pass that computes as it streams (layer_norm's residual add, a copy) keeps the hardware
    // prefetcher busy on its own, and measured slower with the extra prefetches.
    let heavy = k.exprs.iter().any(|(e, t)| *t == Ty::F32 && matches!(e, Expr::Unary(UnaryOp::Exp | UnaryOp::Tanh | UnaryOp::Erf | UnaryOp::Log, _) | Expr::Binary(BinaryOp::Div | BinaryOp::Pow, _, _)));
    let one_pass = k.stages.len() == 1 && k.stages[0].reduce.is_none() && heavy;
    let row_first = k.stages.len() >= 2 && k.stages[0].reduce.is_some();
    // A multi-pass row kernel whose last stage streams its output (layer norm): with no
    // read for ownership in that stage, the next row's lines are fetched under it.
    let last = k.stages.len().saturating_sub(1);
    let streamed_last = !one_pass && !row_first && k.stages.len() >= 2 && streams_out(k, last, nt_bytes);
    if kk == 0 || k.outer_count() < 2 || !(one_pass || row_first || streamed_last) {
        return None;
    }
    let mut loaded = vec![false; k.params.len()];
    for (e, _) in &k.exprs {
        if let Expr::Load(BufId::Param(p), _) = e {
            loaded[*p as usize] = true;
        }
    }
    let params: Vec<(usize, u64)> = k
        .params
        .iter()
        .enumerate()
        .filter(|(i, p)| loaded[*i] && !p.written && p.dims.len() > kk && p.dims[..kk] == k.outer[..])
        .map(|(i, p)| (i, (p.dims[kk..].iter().product::<usize>() * p.dtype.size_bytes()) as u64))
        .filter(|&(_, b)| (1024..=256 * 1024).contains(&b))
        .collect();
    if params.is_empty() {
        return None;
    }
    let first = if streamed_last { last } else { usize::from(!one_pass) };
    let stage = (first..k.stages.len()).find(|&s| {
        let st = &k.stages[s];
        st.reduce.is_none() && st.dims.len() == kk + 1 && st.dims[kk] >= 4 * CHUNK && st.dims[kk] % CHUNK == 0
    })?;
    let chunk = chunk_for(k.stages[stage].dims[kk]);
    Some(Prefetch { stage, chunk, params, next: None })
}

/// Whether store stage `s` of `k` writes its output with streaming stores: its target is an
/// output parameter of at least `nt_bytes` ([`HostTarget::streaming_store_bytes`], `0`:
/// never) that no stage reads and no other stage writes, laid out as the stage's index space
/// (so its one inner loop walks memory contiguously), and the stored type is 2, 4 or 8 bytes.
fn streams_out(k: &LoopKernel, s: usize, nt_bytes: u64) -> bool {
    let st = &k.stages[s];
    let BufId::Param(p) = st.target else { return false };
    let param = &k.params[p as usize];
    let bytes = param.dtype.size_bytes() as u64 * param.dims.iter().map(|&d| d as u64).product::<u64>();
    let read = k.exprs.iter().any(|(e, _)| matches!(e, Expr::Load(BufId::Param(q), _) if *q == p));
    let other_writer = k.stages.iter().enumerate().any(|(j, o)| j != s && o.target == st.target);
    nt_bytes > 0
        && bytes >= nt_bytes
        && st.reduce.is_none()
        && param.written
        && !read
        && !other_writer
        && st.dims.len() == k.outer.len() + 1
        && param.dims == st.dims
        && matches!(param.dtype.size_bytes(), 2 | 4 | 8)
}

/// Whether stage `s + 1` reduces, over the one inner dim of stage `s`, nothing of what stage
/// `s` stores but the element it stores at the same position (softmax's sum of the exps it
/// stores, layer norm's sum of `x + r`): then both run as one loop that stores and
/// accumulates, and the row is read once fewer.
fn fuses_with_next(k: &LoopKernel, s: usize) -> bool {
    let kk = k.outer.len();
    let (Some(st), Some(rd)) = (k.stages.get(s), k.stages.get(s + 1)) else { return false };
    let BufId::Local(_) = st.target else { return false };
    let Some((_, red)) = &rd.reduce else { return false };
    st.reduce.is_none()
        && st.dims.len() == kk + 1
        && red.len() == 1
        && red[0] == st.dims[kk]
        && rd.dims.len() >= kk
        && rd.dims[kk..].iter().all(|&d| d == 1)
        && rd.target != st.target
        && reads_at_reduction_index(k, rd.value, st.target, kk)
}

/// Whether reduction value `e` can be computed inside the loop of the stage that stores `buf`:
/// every load of `buf` indexes its inner dim (`kk`) by the reduction variable alone, and no
/// variable but the outer ones and that one appears (the reduction's own inner dims have
/// extent 1, so its value may name their variable as the index 0; in the fused loop that
/// variable is the stage's inner index).
fn reads_at_reduction_index(k: &LoopKernel, e: crate::kir::ExprId, buf: BufId, kk: usize) -> bool {
    let rec = |x: &crate::kir::ExprId| reads_at_reduction_index(k, *x, buf, kk);
    match &k.exprs[e as usize].0 {
        Expr::Load(b, idx) => {
            idx.iter().all(rec)
                && (*b != buf || (idx.len() == kk + 1 && matches!(k.exprs[idx[kk] as usize].0, Expr::Var(v) if v == crate::kir::RED)))
        }
        Expr::Var(v) => (*v as usize) < kk || *v == crate::kir::RED,
        Expr::Int(_) | Expr::Const(..) => true,
        Expr::Unary(_, a) | Expr::Cast(_, a) => rec(a),
        Expr::Binary(_, a, b) | Expr::Rem(a, b) | Expr::Compare(_, a, b) => rec(a) && rec(b),
        Expr::Select(a, b, c) => rec(a) && rec(b) && rec(c),
    }
}

fn emit_kernel<'ctx>(ctx: &'ctx Context, module: &Module<'ctx>, target: &HostTarget, sym: &str, k: &LoopKernel) -> R<()> {
    let ptr = ctx.ptr_type(AddressSpace::default());
    let i64t = ctx.i64_type();
    let mut ptys: Vec<BasicMetadataTypeEnum> = k.params.iter().map(|_| ptr.into()).collect();
    ptys.push(i64t.into());
    ptys.push(i64t.into());
    let body_ty = ctx.void_type().fn_type(&ptys, false);
    let body = module.add_function(&format!("{sym}.body"), body_ty, Some(Linkage::Internal));
    let noalias = ctx.create_enum_attribute(inkwell::attributes::Attribute::get_named_enum_kind_id("noalias"), 0);
    let nounwind = ctx.create_enum_attribute(inkwell::attributes::Attribute::get_named_enum_kind_id("nounwind"), 0);
    for i in 0..k.params.len() {
        body.add_attribute(inkwell::attributes::AttributeLoc::Param(i as u32), noalias);
    }
    // The body stays a function of its own (one call per chunk of the range: no cost). Once
    // inlined into the wrapper, LLVM 22's LoopDeletionPass segfaults on some padded concats
    // (`abs -> pad -> concat` in bf16, fuzz seed 411001002; `opt -passes='default<O3>'`
    // reproduces it on the pre-O3 module, and `noinline` alone avoids it).
    body.add_attribute(
        inkwell::attributes::AttributeLoc::Function,
        ctx.create_enum_attribute(inkwell::attributes::Attribute::get_named_enum_kind_id("noinline"), 0),
    );
    let wrapper = module.add_function(sym, ctx.void_type().fn_type(&[ptr.into(), i64t.into(), i64t.into()], false), None);
    let width = target.vector_bits().map(|v| v.to_string());
    for f in [body, wrapper] {
        if let Some(w) = &width {
            f.add_attribute(inkwell::attributes::AttributeLoc::Function, ctx.create_string_attribute("prefer-vector-width", w));
        }
        f.add_attribute(inkwell::attributes::AttributeLoc::Function, ctx.create_string_attribute("target-cpu", &target.cpu));
        f.add_attribute(inkwell::attributes::AttributeLoc::Function, ctx.create_string_attribute("target-features", &target.features));
        f.add_attribute(inkwell::attributes::AttributeLoc::Function, nounwind);
    }

    // Wrapper: unpack the argument table.
    let b = ctx.create_builder();
    let entry = ctx.append_basic_block(wrapper, "entry");
    b.position_at_end(entry);
    let args = wrapper.get_nth_param(0).unwrap().into_pointer_value();
    let mut call_args: Vec<inkwell::values::BasicMetadataValueEnum> = Vec::new();
    for i in 0..k.params.len() {
        // SAFETY: index within the argument table the runtime passes.
        let slot = unsafe { b.build_in_bounds_gep(ptr, args, &[i64t.const_int(i as u64, false)], "slot")? };
        call_args.push(b.build_load(ptr, slot, "p")?.into());
    }
    call_args.push(wrapper.get_nth_param(1).unwrap().into());
    call_args.push(wrapper.get_nth_param(2).unwrap().into());
    b.build_call(body, &call_args, "")?;
    b.build_return(None)?;

    // Body.
    let entry = ctx.append_basic_block(body, "entry");
    let start_bb = ctx.append_basic_block(body, "start");
    let eb = ctx.create_builder();
    eb.position_at_end(entry);
    let b = ctx.create_builder();
    b.position_at_end(start_bb);
    let params = (0..k.params.len()).map(|i| body.get_nth_param(i as u32).unwrap().into_pointer_value()).collect();
    let nt_bytes = target.streaming_store_bytes();
    let mut g = Gen { ctx, module, b, k, func: body, params, locals: Vec::new(), vars: HashMap::new(), memo: HashMap::new(), entry_allocas: eb, prefetch: plan_prefetch(k, nt_bytes), scalef: target.has_avx512(), nt_bytes, nt_used: false };
    let kk = k.outer.len();
    for l in &k.locals {
        let n: usize = l.dims[kk.min(l.dims.len())..].iter().product::<usize>().max(1);
        let ty = g.reg_storage_type(l.ty);
        let a = g.entry_allocas.build_array_alloca(ty, i64t.const_int(n as u64, false), "local")?;
        g.locals.push(a);
    }
    let start = body.get_nth_param(k.params.len() as u32).unwrap().into_int_value();
    let end = body.get_nth_param(k.params.len() as u32 + 1).unwrap().into_int_value();
    if k.outer_count() == 1 {
        // One outer iteration: no outer loop (an outer loop whose variable nothing reads
        // crashed LLVM 22's loop deletion; kiln-fuzz seeds 304002067 and 307011850).
        let run = ctx.append_basic_block(body, "once");
        let done = ctx.append_basic_block(body, "done");
        let guard = g.b.build_int_compare(IntPredicate::SLT, start, end, "guard")?;
        g.b.build_conditional_branch(guard, run, done)?;
        g.b.position_at_end(run);
        for d in 0..kk {
            let zero = g.i64c(0);
            g.vars.insert(d as u32, zero);
        }
        g.stages()?;
        g.b.build_unconditional_branch(done)?;
        g.b.position_at_end(done);
        g.fence_streams()?;
        g.b.build_return(None)?;
        g.entry_allocas.build_unconditional_branch(start_bb)?;
        return Ok(());
    }
    g.for_range(start, end, &mut |g: &mut Gen<'ctx, '_>, o: IntValue<'ctx>| {
        // Decompose the flat outer index into the outer loop variables.
        let mut rest = o;
        for d in (0..kk).rev() {
            let n = i64t.const_int(k.outer[d] as u64, false);
            let v = if d == 0 { rest } else { g.b.build_int_unsigned_rem(rest, n, "o")? };
            g.vars.insert(d as u32, v);
            if d > 0 {
                rest = g.b.build_int_unsigned_div(rest, n, "o")?;
            }
        }
        if g.prefetch.is_some() {
            // The next outer iteration (the last one prefetches itself again).
            let last = g.i64c(k.outer_count() as i64 - 1);
            let n1 = g.b.build_int_add(o, g.i64c(1), "next")?;
            let lt = g.b.build_int_compare(IntPredicate::SLT, n1, last, "lt")?;
            let next = g.b.build_select(lt, n1, last, "next")?.into_int_value();
            if let Some(p) = g.prefetch.as_mut() {
                p.next = Some(next);
            }
        }
        g.stages()?;
        Ok(())
    })?;
    g.fence_streams()?;
    g.b.build_return(None)?;
    g.entry_allocas.build_unconditional_branch(start_bb)?;
    Ok(())
}

/// A reduction's accumulator: its value and, for an f32 max, whether a NaN was seen.
#[derive(Clone, Copy)]
struct Acc<'ctx> {
    op: ReduceOp,
    ty: Ty,
    value: PointerValue<'ctx>,
    nan: Option<PointerValue<'ctx>>,
}

type Body<'x, 'ctx, 'a> = dyn FnMut(&mut Gen<'ctx, 'a>, IntValue<'ctx>) -> R<()> + 'x;

impl<'ctx, 'a> Gen<'ctx, 'a> {
    fn i64c(&self, v: i64) -> IntValue<'ctx> {
        self.ctx.i64_type().const_int(v as u64, true)
    }
    fn f32c(&self, v: f32) -> FloatValue<'ctx> {
        self.ctx.f32_type().const_float(v as f64)
    }

    fn reg_type(&self, t: Ty) -> BasicTypeEnum<'ctx> {
        match t {
            Ty::F32 => self.ctx.f32_type().into(),
            Ty::I32 => self.ctx.i32_type().into(),
            Ty::I64 => self.ctx.i64_type().into(),
            Ty::Bool => self.ctx.bool_type().into(),
        }
    }
    fn reg_storage_type(&self, t: Ty) -> BasicTypeEnum<'ctx> {
        self.storage_type(t.storage())
    }
    fn storage_type(&self, d: DType) -> BasicTypeEnum<'ctx> {
        match d {
            DType::F32 => self.ctx.f32_type().into(),
            DType::F16 => self.ctx.f16_type().into(),
            DType::BF16 => self.ctx.i16_type().into(),
            DType::I32 => self.ctx.i32_type().into(),
            DType::I64 => self.ctx.i64_type().into(),
            DType::Bool => self.ctx.i8_type().into(),
        }
    }

    /// `for i in lo..hi { body(i) }`, leaving the builder after the loop.
    fn for_range(&mut self, lo: IntValue<'ctx>, hi: IntValue<'ctx>, body: &mut Body<'_, 'ctx, 'a>) -> R<()> {
        let pre = self.b.get_insert_block().unwrap();
        let header = self.ctx.append_basic_block(self.func, "loop");
        let exit = self.ctx.append_basic_block(self.func, "exit");
        let c0 = self.b.build_int_compare(IntPredicate::SLT, lo, hi, "guard")?;
        self.b.build_conditional_branch(c0, header, exit)?;
        self.b.position_at_end(header);
        let phi = self.b.build_phi(self.ctx.i64_type(), "i")?;
        phi.add_incoming(&[(&lo, pre)]);
        let i = phi.as_basic_value().into_int_value();
        body(self, i)?;
        let latch = self.b.get_insert_block().unwrap();
        let next = self.b.build_int_add(i, self.i64c(1), "next")?;
        let c = self.b.build_int_compare(IntPredicate::SLT, next, hi, "cont")?;
        self.b.build_conditional_branch(c, header, exit)?;
        phi.add_incoming(&[(&next, latch)]);
        self.b.position_at_end(exit);
        Ok(())
    }

    /// Nested loops over `(var, extent)`, innermost last.
    fn nest(&mut self, loops: &[(u32, usize)], body: &mut dyn FnMut(&mut Gen<'ctx, 'a>) -> R<()>) -> R<()> {
        let Some(&(v, n)) = loops.first() else { return body(self) };
        let (lo, hi) = (self.i64c(0), self.i64c(n as i64));
        self.for_range(lo, hi, &mut |g: &mut Gen<'ctx, 'a>, i| {
            g.vars.insert(v, i);
            g.nest(&loops[1..], body)
        })
    }

    /// Every stage of one outer iteration, in order; a stage that [`fuses_with_next`] runs
    /// together with that reduction (also the prefetching stage, chunk by chunk).
    fn stages(&mut self) -> R<()> {
        let k = self.k;
        let mut s = 0;
        while s < k.stages.len() {
            let fused = fuses_with_next(k, s);
            self.stage(s, fused)?;
            s += 1 + usize::from(fused);
        }
        Ok(())
    }

    /// Stage `s`; with `fused`, stage `s + 1` (a reduction of what `s` stores) in the same loop.
    fn stage(&mut self, s: usize, fused: bool) -> R<()> {
        let k = self.k;
        let st = &k.stages[s];
        let kk = k.outer.len();
        let loops: Vec<(u32, usize)> = (kk..st.dims.len()).map(|d| (d as u32, st.dims[d])).collect();
        let rank = st.dims.len();
        match &st.reduce {
            None => {
                let prefetching = self.prefetch.as_ref().is_some_and(|p| p.stage == s);
                if !fused && !prefetching && self.streams_out(s) {
                    return self.streaming_stage(s);
                }
                let fused = if fused { Some((s + 1, self.fused_init(s + 1)?)) } else { None };
                if prefetching {
                    self.prefetching_stage(s, fused)?;
                } else {
                    self.nest(&loops, &mut |g: &mut Gen<'ctx, 'a>| g.store_step(s, fused))?;
                }
                match fused {
                    Some((r, acc)) => self.fused_finish(r, acc),
                    None => Ok(()),
                }
            }
            Some((op, red)) => {
                let ty = k.ty(st.value);
                let acc = self.acc_alloca(*op, ty)?;
                let rloops: Vec<(u32, usize)> = red.iter().enumerate().map(|(j, &n)| (crate::kir::RED + j as u32, n)).collect();
                self.nest(&loops, &mut |g: &mut Gen<'ctx, 'a>| {
                    g.acc_init(&acc)?;
                    g.nest(&rloops, &mut |g: &mut Gen<'ctx, 'a>| {
                        g.memo.clear();
                        let v = g.expr(st.value)?;
                        g.acc_step(&acc, v)
                    })?;
                    let a = g.acc_result(&acc)?;
                    let idx: Vec<IntValue> = (0..rank as u32).map(|d| g.vars[&d]).collect();
                    g.store(st.target, &idx, a)
                })
            }
        }
    }

    /// One iteration of store stage `s` at the current loop variables, and with `fused` one
    /// step of the reduction that runs in its loop.
    fn store_step(&mut self, s: usize, fused: Option<(usize, Acc<'ctx>)>) -> R<()> {
        let st = &self.k.stages[s];
        self.memo.clear();
        let v = self.expr(st.value)?;
        let idx: Vec<IntValue> = (0..st.dims.len() as u32).map(|d| self.vars[&d]).collect();
        self.store(st.target, &idx, v)?;
        match fused {
            Some((r, acc)) => self.fused_step(r, acc),
            None => Ok(()),
        }
    }

    /// [`streams_out`] for this kernel and target.
    fn streams_out(&self, s: usize) -> bool {
        streams_out(self.k, s, self.nt_bytes)
    }

    /// Store stage `s` ([`Gen::streams_out`]) in chunks of [`STREAM_CHUNK`]: each chunk is
    /// computed into a scratch buffer (L1-resident), then copied to the output with
    /// non-temporal stores. A plain store first reads the line it writes (read for
    /// ownership): for an output past the caches that is a third of the kernel's memory
    /// traffic, which the streaming store does not have.
    fn streaming_stage(&mut self, s: usize) -> R<()> {
        let k = self.k;
        let st = &k.stages[s];
        let kk = k.outer.len();
        let n = st.dims[kk];
        let chunk = STREAM_CHUNK.min(n);
        let scratch = self.stream_scratch(s, chunk)?;
        let full = n / chunk;
        let (lo, hi) = (self.i64c(0), self.i64c(full as i64));
        self.for_range(lo, hi, &mut |g: &mut Gen<'ctx, 'a>, c: IntValue<'ctx>| {
            let base = g.b.build_int_mul(c, g.i64c(chunk as i64), "base")?;
            g.stream_chunk(s, base, chunk, scratch)
        })?;
        if n % chunk != 0 {
            let base = self.i64c((full * chunk) as i64);
            self.stream_chunk(s, base, n % chunk, scratch)?;
        }
        self.nt_used = true;
        Ok(())
    }

    /// A 64-byte aligned scratch buffer of `len` elements of stage `s`'s output type.
    fn stream_scratch(&mut self, s: usize, len: usize) -> R<PointerValue<'ctx>> {
        let BufId::Param(p) = self.k.stages[s].target else { unreachable!("streams_out checked the target") };
        let ety = self.storage_type(self.k.params[p as usize].dtype);
        let scratch = self.entry_allocas.build_array_alloca(ety, self.i64c(len as i64), "stream")?;
        scratch.as_instruction().expect("an alloca").set_alignment(64).map_err(llvm_err)?;
        Ok(scratch)
    }

    /// Iterations `base .. base + len` of streaming stage `s`: computed into `scratch`, then
    /// copied out by [`Gen::copy_streaming`].
    fn stream_chunk(&mut self, s: usize, base: IntValue<'ctx>, len: usize, scratch: PointerValue<'ctx>) -> R<()> {
        let k = self.k;
        let st = &k.stages[s];
        let kk = k.outer.len();
        let BufId::Param(p) = st.target else { unreachable!("streams_out checked the target") };
        let dtype = k.params[p as usize].dtype;
        let ety = self.storage_type(dtype);
        let (lo, hi) = (self.i64c(0), self.i64c(len as i64));
        self.for_range(lo, hi, &mut |g: &mut Gen<'ctx, 'a>, j: IntValue<'ctx>| {
            let i = g.b.build_int_add(base, j, "i")?;
            g.vars.insert(kk as u32, i);
            g.memo.clear();
            let v = g.expr(st.value)?;
            let v = g.to_storage(dtype, v)?;
            // SAFETY: j < len <= the scratch's length.
            let at = unsafe { g.b.build_in_bounds_gep(ety, scratch, &[j], "scratch")? };
            g.b.build_store(at, v)?;
            Ok(())
        })?;
        let mut idx: Vec<IntValue> = (0..kk as u32).map(|d| self.vars[&d]).collect();
        idx.push(base);
        let (dst, _, _) = self.address(st.target, &idx)?;
        self.copy_streaming(dst, scratch, ety, dtype.size_bytes(), len)
    }

    /// `dst[..len] = src[..len]` (elements of `es` bytes): elements up to `dst`'s first
    /// 64-byte boundary and past its last one with plain stores, the 64-byte lines between
    /// with aligned non-temporal vector stores (`vmovntps` and kin on x86). `src` is the
    /// scratch chunk (any alignment: plain vector loads).
    fn copy_streaming(&mut self, dst: PointerValue<'ctx>, src: PointerValue<'ctx>, ety: BasicTypeEnum<'ctx>, es: usize, len: usize) -> R<()> {
        let i64t = self.ctx.i64_type();
        let lanes = (64 / es) as u32;
        let len_v = self.i64c(len as i64);
        let addr = self.b.build_ptr_to_int(dst, i64t, "addr")?;
        let mis = self.b.build_and(addr, self.i64c(63), "mis")?;
        let to_line = self.b.build_int_sub(self.i64c(64), mis, "to_line")?;
        let to_line = self.b.build_and(to_line, self.i64c(63), "to_line")?;
        let head = self.b.build_int_unsigned_div(to_line, self.i64c(es as i64), "head")?;
        let head = self.call("llvm.umin", &[i64t.into()], &[head.into(), len_v.into()])?.into_int_value();
        let rest = self.b.build_int_sub(len_v, head, "rest")?;
        let vecs = self.b.build_int_unsigned_div(rest, self.i64c(lanes as i64), "vecs")?;
        // An address that is not a multiple of the element size never reaches a 64-byte
        // boundary by whole elements: everything takes plain stores then.
        let odd = self.b.build_and(addr, self.i64c(es as i64 - 1), "odd")?;
        let whole = self.b.build_int_compare(IntPredicate::EQ, odd, self.i64c(0), "whole")?;
        let vecs = self.b.build_select(whole, vecs, self.i64c(0), "vecs")?.into_int_value();
        let body_end = self.b.build_int_mul(vecs, self.i64c(lanes as i64), "body")?;
        let body_end = self.b.build_int_add(head, body_end, "body_end")?;
        let plain = |g: &mut Gen<'ctx, 'a>, lo: IntValue<'ctx>, hi: IntValue<'ctx>| -> R<()> {
            g.for_range(lo, hi, &mut |g: &mut Gen<'ctx, 'a>, j: IntValue<'ctx>| {
                // SAFETY: j < len: inside both buffers.
                let (from, to) = unsafe { (g.b.build_in_bounds_gep(ety, src, &[j], "from")?, g.b.build_in_bounds_gep(ety, dst, &[j], "to")?) };
                let v = g.b.build_load(ety, from, "v")?;
                g.b.build_store(to, v)?;
                Ok(())
            })
        };
        let zero = self.i64c(0);
        plain(self, zero, head)?;
        let vty = match ety {
            BasicTypeEnum::FloatType(t) => BasicTypeEnum::from(t.vec_type(lanes)),
            BasicTypeEnum::IntType(t) => BasicTypeEnum::from(t.vec_type(lanes)),
            other => unreachable!("a scalar storage type, not {other:?}"),
        };
        let nontemporal = self.ctx.get_kind_id("nontemporal");
        let one = self.ctx.metadata_node(&[self.ctx.i32_type().const_int(1, false).into()]);
        self.for_range(zero, vecs, &mut |g: &mut Gen<'ctx, 'a>, v: IntValue<'ctx>| {
            let j = g.b.build_int_mul(v, g.i64c(lanes as i64), "j")?;
            let j = g.b.build_int_add(head, j, "j")?;
            // SAFETY: j + lanes <= body_end <= len.
            let (from, to) = unsafe { (g.b.build_in_bounds_gep(ety, src, &[j], "from")?, g.b.build_in_bounds_gep(ety, dst, &[j], "to")?) };
            let x = g.b.build_load(vty, from, "x")?;
            x.as_instruction_value().expect("a load").set_alignment(es as u32).map_err(llvm_err)?;
            let st = g.b.build_store(to, x)?;
            st.set_alignment(64).map_err(llvm_err)?;
            st.set_metadata(one, nontemporal).map_err(llvm_err)?;
            Ok(())
        })?;
        plain(self, body_end, len_v)
    }

    /// After streaming stores, a fence: they are weakly ordered, and the caller's threads
    /// read the output once the kernel returns.
    fn fence_streams(&mut self) -> R<()> {
        if self.nt_used {
            self.b.build_fence(inkwell::AtomicOrdering::SequentiallyConsistent, false, "")?;
        }
        Ok(())
    }

    /// The accumulator of reduction stage `r` run inside the previous stage's loop, initialized.
    fn fused_init(&mut self, r: usize) -> R<Acc<'ctx>> {
        let rd = &self.k.stages[r];
        let (op, _) = rd.reduce.as_ref().expect("a reduction stage");
        let acc = self.acc_alloca(*op, self.k.ty(rd.value))?;
        self.acc_init(&acc)?;
        Ok(acc)
    }

    /// One step of fused reduction `r` at the current inner index (its reduction variable).
    fn fused_step(&mut self, r: usize, acc: Acc<'ctx>) -> R<()> {
        let k = self.k;
        let i = self.vars[&(k.outer.len() as u32)];
        self.vars.insert(crate::kir::RED, i);
        let v = self.expr(k.stages[r].value)?;
        self.acc_step(&acc, v)
    }

    /// Stores fused reduction `r`'s result (its inner dims are all 1).
    fn fused_finish(&mut self, r: usize, acc: Acc<'ctx>) -> R<()> {
        let k = self.k;
        let rd = &k.stages[r];
        let kk = k.outer.len();
        let a = self.acc_result(&acc)?;
        let idx: Vec<IntValue> = (0..rd.dims.len()).map(|d| if d < kk { self.vars[&(d as u32)] } else { self.i64c(0) }).collect();
        self.store(rd.target, &idx, a)
    }

    /// An elementwise stage over one inner dim, strip-mined into chunks ([`chunk_for`]); each
    /// chunk first prefetches its share of the next rows (see [`Prefetch`]). With `fused`, a
    /// reduction of what it stores accumulates in the same loop.
    fn prefetching_stage(&mut self, s: usize, fused: Option<(usize, Acc<'ctx>)>) -> R<()> {
        let k = self.k;
        let st = &k.stages[s];
        let kk = k.outer.len();
        let n = st.dims[kk];
        let pf = self.prefetch.as_ref().expect("a prefetch plan");
        let chunk = pf.chunk;
        let chunks = (n / chunk) as u64;
        let next = pf.next.expect("the next outer index is set");
        let plan: Vec<(usize, u64)> = pf.params.clone();
        let i8t = self.ctx.i8_type();
        let i32t = self.ctx.i32_type();
        let prefetch = Intrinsic::find("llvm.prefetch").ok_or_else(|| CodegenError::Llvm { stage: "intrinsics", message: "LLVM has no llvm.prefetch".into() })?;
        let ptr_ty = self.ctx.ptr_type(AddressSpace::default());
        let pf_fn = prefetch.get_declaration(self.module, &[ptr_ty.into()]).ok_or_else(|| CodegenError::Llvm { stage: "intrinsics", message: "cannot declare llvm.prefetch".into() })?;
        // Its output streamed ([`Gen::streams_out`]): each chunk goes through a scratch chunk.
        let scratch = if fused.is_none() && self.streams_out(s) { Some(self.stream_scratch(s, chunk)?) } else { None };
        self.nt_used |= scratch.is_some();
        let (lo, hi) = (self.i64c(0), self.i64c(chunks as i64));
        self.for_range(lo, hi, &mut |g: &mut Gen<'ctx, 'a>, c: IntValue<'ctx>| {
            for &(p, row_bytes) in &plan {
                let lines = row_bytes.div_ceil(64);
                let per = lines.div_ceil(chunks);
                let row = g.b.build_int_mul(next, g.i64c(row_bytes as i64), "row")?;
                for t in 0..per {
                    // Line `c * per + t` of the next row, clamped to the row.
                    let line = g.b.build_int_mul(c, g.i64c(per as i64), "line")?;
                    let line = g.b.build_int_add(line, g.i64c(t as i64), "line")?;
                    let line = g.call("llvm.umin", &[g.ctx.i64_type().into()], &[line.into(), g.i64c(lines as i64 - 1).into()])?.into_int_value();
                    let off = g.b.build_int_mul(line, g.i64c(64), "off")?;
                    let off = g.b.build_int_add(row, off, "off")?;
                    // SAFETY: inside the parameter (its rows are `row_bytes` apart).
                    let addr = unsafe { g.b.build_in_bounds_gep(i8t, g.params[p], &[off], "pf")? };
                    let args = [addr.into(), i32t.const_zero().into(), i32t.const_int(2, false).into(), i32t.const_int(1, false).into()];
                    g.b.build_call(pf_fn, &args, "")?;
                }
            }
            let base = g.b.build_int_mul(c, g.i64c(chunk as i64), "base")?;
            if let Some(scratch) = scratch {
                return g.stream_chunk(s, base, chunk, scratch);
            }
            let (lo, hi) = (g.i64c(0), g.i64c(chunk as i64));
            g.for_range(lo, hi, &mut |g: &mut Gen<'ctx, 'a>, j: IntValue<'ctx>| {
                let i = g.b.build_int_add(base, j, "i")?;
                g.vars.insert(kk as u32, i);
                g.store_step(s, fused)
            })
        })
    }

    /// Stack slots of a reduction's accumulator (promoted to registers by LLVM). An f32 max
    /// tracks NaNs beside the value ([`Gen::acc_step`]) in kernels that prefetch their next
    /// row, where the first pass reads from cache and its arithmetic shows (softmax, 1 thread:
    /// 5.4-6.3 ms against 6.4-6.5). A max that streams from memory measured slower that way
    /// (`[4096, 4096]` rows, 1 thread: 1.83-1.98 ms against 1.46-1.78), so it keeps
    /// `llvm.maximum`.
    fn acc_alloca(&mut self, op: ReduceOp, ty: Ty) -> R<Acc<'ctx>> {
        let value = self.entry_allocas.build_alloca(self.reg_type(ty), "acc")?;
        let nan = match (op, ty) {
            (ReduceOp::Max, Ty::F32) if self.prefetch.is_some() => Some(self.entry_allocas.build_alloca(self.ctx.bool_type(), "nan")?),
            _ => None,
        };
        Ok(Acc { op, ty, value, nan })
    }

    fn acc_init(&mut self, acc: &Acc<'ctx>) -> R<()> {
        let init = self.reduce_init(acc.op, acc.ty);
        self.b.build_store(acc.value, init)?;
        if let Some(nan) = acc.nan {
            self.b.build_store(nan, self.ctx.bool_type().const_zero())?;
        }
        Ok(())
    }

    /// One step. An f32 max is `maxnum` with `nnan nsz` (one `vmaxps` once vectorized) and,
    /// beside it, whether any value was NaN (one compare and a mask `or`): the NaN is put back
    /// at the end ([`Gen::acc_result`]). `llvm.maximum` does both in one intrinsic, which x86
    /// expands to six vector instructions on the loop-carried chain. (A NaN makes the
    /// `nnan` maximum poison, which only the NaN arm of the final select ever reads; the sign
    /// of a zero maximum is unspecified, as in PyTorch's max.)
    fn acc_step(&mut self, acc: &Acc<'ctx>, v: BasicValueEnum<'ctx>) -> R<()> {
        let a = self.b.build_load(self.reg_type(acc.ty), acc.value, "acc")?;
        if let Some(nan) = acc.nan {
            let m = self.call("llvm.maxnum", &[self.ctx.f32_type().into()], &[a, v])?.into_float_value();
            self.flags(m, inkwell::values::FastMathFlags::NoNaNs | inkwell::values::FastMathFlags::NoSignedZeros);
            self.b.build_store(acc.value, m)?;
            let vf = v.into_float_value();
            let is_nan = self.b.build_float_compare(FloatPredicate::UNO, vf, vf, "isnan")?;
            let seen = self.b.build_load(self.ctx.bool_type(), nan, "nan")?.into_int_value();
            let seen = self.b.build_or(seen, is_nan, "nan")?;
            self.b.build_store(nan, seen)?;
            return Ok(());
        }
        let next = self.reduce_step(acc.op, acc.ty, a, v)?;
        self.b.build_store(acc.value, next)?;
        Ok(())
    }

    fn acc_result(&mut self, acc: &Acc<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let a = self.b.build_load(self.reg_type(acc.ty), acc.value, "acc")?;
        let Some(nan) = acc.nan else { return Ok(a) };
        let seen = self.b.build_load(self.ctx.bool_type(), nan, "nan")?.into_int_value();
        Ok(self.b.build_select(seen, self.f32c(f32::NAN), a.into_float_value(), "max")?)
    }

    fn reduce_init(&self, op: ReduceOp, ty: Ty) -> BasicValueEnum<'ctx> {
        match (op, ty) {
            (ReduceOp::Sum, Ty::F32) => self.f32c(0.0).into(),
            (ReduceOp::Max, Ty::F32) => self.f32c(f32::NEG_INFINITY).into(),
            (ReduceOp::Sum, t) => self.reg_type(t).into_int_type().const_zero().into(),
            (ReduceOp::Max, Ty::I32) => self.ctx.i32_type().const_int(i32::MIN as u64, true).into(),
            (ReduceOp::Max, _) => self.ctx.i64_type().const_int(i64::MIN as u64, true).into(),
        }
    }

    fn reduce_step(&mut self, op: ReduceOp, ty: Ty, a: BasicValueEnum<'ctx>, v: BasicValueEnum<'ctx>) -> R<BasicValueEnum<'ctx>> {
        Ok(match (op, ty) {
            (ReduceOp::Sum, Ty::F32) => {
                let r = self.b.build_float_add(a.into_float_value(), v.into_float_value(), "sum")?;
                self.flags(r, inkwell::values::FastMathFlags::AllowReassoc | inkwell::values::FastMathFlags::AllowContract);
                r.into()
            }
            (ReduceOp::Max, Ty::F32) => self.call("llvm.maximum", &[self.ctx.f32_type().into()], &[a, v])?,
            (ReduceOp::Sum, _) => self.b.build_int_add(a.into_int_value(), v.into_int_value(), "sum")?.into(),
            (ReduceOp::Max, t) => self.call("llvm.smax", &[self.reg_type(t)], &[a, v])?,
        })
    }

    fn flags(&self, v: FloatValue<'ctx>, f: inkwell::values::FastMathFlags) {
        if let Some(i) = inkwell::values::AnyValue::as_any_value_enum(&v).into_float_value().as_instruction() {
            let _ = i.set_fast_math_flags(f);
        }
    }

    fn call(&mut self, name: &str, tys: &[BasicTypeEnum<'ctx>], args: &[BasicValueEnum<'ctx>]) -> R<BasicValueEnum<'ctx>> {
        let intr = Intrinsic::find(name).ok_or_else(|| CodegenError::Llvm { stage: "intrinsics", message: format!("LLVM has no intrinsic {name}") })?;
        let f = intr
            .get_declaration(self.module, tys)
            .ok_or_else(|| CodegenError::Llvm { stage: "intrinsics", message: format!("cannot declare {name}") })?;
        let a: Vec<inkwell::values::BasicMetadataValueEnum> = args.iter().map(|&x| x.into()).collect();
        let r = self.b.build_call(f, &a, name)?;
        r.try_as_basic_value().basic().ok_or_else(|| CodegenError::Llvm { stage: "intrinsics", message: format!("{name} returns nothing") })
    }

    fn f1(&mut self, name: &str, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        Ok(self.call(name, &[self.ctx.f32_type().into()], &[x.into()])?.into_float_value())
    }

    fn address(&mut self, buf: BufId, idx: &[IntValue<'ctx>]) -> R<(PointerValue<'ctx>, BasicTypeEnum<'ctx>, DType)> {
        let k = self.k;
        let (base, dims, skip, dtype) = match buf {
            BufId::Param(p) => {
                let p_ = &k.params[p as usize];
                (self.params[p as usize], &p_.dims, 0, p_.dtype)
            }
            BufId::Local(l) => {
                let l_ = &k.locals[l as usize];
                (self.locals[l as usize], &l_.dims, k.outer.len(), l_.ty.storage())
            }
        };
        let mut flat = self.i64c(0);
        let mut stride = 1i64;
        for d in (skip..dims.len()).rev() {
            if dims[d] != 1 {
                let t = self.b.build_int_nsw_mul(idx[d], self.i64c(stride), "ix")?;
                flat = self.b.build_int_nsw_add(flat, t, "ix")?;
            }
            stride *= dims[d] as i64;
        }
        let ety = self.storage_type(dtype);
        // SAFETY: indices are in bounds by construction of the kernel IR.
        let ptr = unsafe { self.b.build_in_bounds_gep(ety, base, &[flat], "addr")? };
        Ok((ptr, ety, dtype))
    }

    fn store(&mut self, buf: BufId, idx: &[IntValue<'ctx>], v: BasicValueEnum<'ctx>) -> R<()> {
        let (ptr, _, dtype) = self.address(buf, idx)?;
        let s = self.to_storage(dtype, v)?;
        self.b.build_store(ptr, s)?;
        Ok(())
    }

    /// A register value as `dtype` stores it.
    fn to_storage(&mut self, dtype: DType, v: BasicValueEnum<'ctx>) -> R<BasicValueEnum<'ctx>> {
        Ok(match dtype {
            DType::F32 | DType::I32 | DType::I64 => v,
            DType::F16 => self.b.build_float_trunc(v.into_float_value(), self.ctx.f16_type(), "h")?.into(),
            DType::BF16 => self.to_bf16_bits(v.into_float_value())?.into(),
            DType::Bool => self.b.build_int_z_extend(v.into_int_value(), self.ctx.i8_type(), "b")?.into(),
        })
    }

    /// f32 -> bf16 bits, round to nearest even, NaN kept quiet.
    fn to_bf16_bits(&mut self, x: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
        let i32t = self.ctx.i32_type();
        let bits = self.b.build_bit_cast(x, i32t, "bits")?.into_int_value();
        let lsb = self.b.build_right_shift(bits, i32t.const_int(16, false), false, "lsb")?;
        let lsb = self.b.build_and(lsb, i32t.const_int(1, false), "lsb")?;
        let bias = self.b.build_int_add(lsb, i32t.const_int(0x7fff, false), "bias")?;
        let r = self.b.build_int_add(bits, bias, "r")?;
        let r = self.b.build_right_shift(r, i32t.const_int(16, false), false, "r")?;
        let nan = self.b.build_float_compare(FloatPredicate::UNO, x, x, "nan")?;
        let r = self.b.build_select(nan, i32t.const_int(0x7fc0, false), r, "r")?.into_int_value();
        Ok(self.b.build_int_truncate(r, self.ctx.i16_type(), "bf")?)
    }

    fn from_bf16_bits(&mut self, h: IntValue<'ctx>) -> R<FloatValue<'ctx>> {
        let i32t = self.ctx.i32_type();
        let w = self.b.build_int_z_extend(h, i32t, "w")?;
        let w = self.b.build_left_shift(w, i32t.const_int(16, false), "w")?;
        Ok(self.b.build_bit_cast(w, self.ctx.f32_type(), "f")?.into_float_value())
    }

    fn expr(&mut self, e: ExprId) -> R<BasicValueEnum<'ctx>> {
        if let Some(&v) = self.memo.get(&e) {
            return Ok(v);
        }
        let (ex, ty) = self.k.exprs[e as usize].clone();
        let v: BasicValueEnum = match ex {
            Expr::Var(v) => self.vars.get(&v).copied().ok_or_else(|| CodegenError::Llvm { stage: "building IR", message: format!("loop variable {v} is not bound in kernel {}", self.k.name) })?.into(),
            Expr::Int(c) => self.i64c(c).into(),
            Expr::Const(t, c) => match t {
                Ty::F32 => self.f32c(c.0 as f32).into(),
                Ty::Bool => self.ctx.bool_type().const_int((c.0 != 0.0) as u64, false).into(),
                t => self.reg_type(t).into_int_type().const_int(c.0 as i64 as u64, true).into(),
            },
            Expr::Load(buf, idx) => {
                let iv: Vec<IntValue> = idx.iter().map(|&i| self.expr(i).map(|v| v.into_int_value())).collect::<R<_>>()?;
                let (ptr, ety, dtype) = self.address(buf, &iv)?;
                let raw = self.b.build_load(ety, ptr, "ld")?;
                match dtype {
                    DType::F32 | DType::I32 | DType::I64 => raw,
                    DType::F16 => self.b.build_float_ext(raw.into_float_value(), self.ctx.f32_type(), "x")?.into(),
                    DType::BF16 => self.from_bf16_bits(raw.into_int_value())?.into(),
                    DType::Bool => self.b.build_int_compare(IntPredicate::NE, raw.into_int_value(), self.ctx.i8_type().const_zero(), "b")?.into(),
                }
            }
            Expr::Unary(UnaryOp::Recip, a) if ty == Ty::F32 && self.sigmoid_arg(a).is_some() => {
                let u = self.expr(self.sigmoid_arg(a).expect("checked"))?.into_float_value();
                self.sigmoid_of_exp_arg(u)?.into()
            }
            Expr::Binary(BinaryOp::Div, one, a) if ty == Ty::F32 && self.is_f32_const(one, 1.0) && self.sigmoid_arg(a).is_some() => {
                let u = self.expr(self.sigmoid_arg(a).expect("checked"))?.into_float_value();
                self.sigmoid_of_exp_arg(u)?.into()
            }
            Expr::Unary(u, a) => {
                let a = self.expr(a)?;
                self.unary(u, ty, a)?
            }
            Expr::Binary(op, x, y) => {
                let yc = match self.k.exprs[y as usize].0 {
                    Expr::Int(c) => Some(c),
                    _ => None,
                };
                let (x, y) = (self.expr(x)?, self.expr(y)?);
                self.binary(op, ty, x, y, yc)?
            }
            Expr::Rem(x, y) => {
                let (x, y) = (self.expr(x)?, self.expr(y)?);
                self.b.build_int_unsigned_rem(x.into_int_value(), y.into_int_value(), "rem")?.into()
            }
            Expr::Compare(c, x, y) => {
                let t = self.k.ty(x);
                let (x, y) = (self.expr(x)?, self.expr(y)?);
                self.compare(c, t, x, y)?
            }
            Expr::Select(c, x, y) => {
                let c = self.expr(c)?.into_int_value();
                let (x, y) = (self.expr(x)?, self.expr(y)?);
                self.b.build_select(c, x, y, "sel")?
            }
            Expr::Cast(to, a) => {
                let from = self.k.ty(a);
                let a = self.expr(a)?;
                self.cast(from, to, a)?
            }
        };
        self.memo.insert(e, v);
        Ok(v)
    }

    fn is_f32_const(&self, e: ExprId, v: f64) -> bool {
        matches!(&self.k.exprs[e as usize], (Expr::Const(Ty::F32, c), _) if c.0 == v)
    }

    /// `Some(u)` where `e` is `exp(u) + 1` (or `1 + exp(u)`) in f32: the divisor of a sigmoid.
    fn sigmoid_arg(&self, e: ExprId) -> Option<ExprId> {
        let &(Expr::Binary(BinaryOp::Add, x, y), Ty::F32) = &self.k.exprs[e as usize] else { return None };
        let exp_of = |z: ExprId| match &self.k.exprs[z as usize] {
            &(Expr::Unary(UnaryOp::Exp, u), Ty::F32) => Some(u),
            _ => None,
        };
        if self.is_f32_const(y, 1.0) {
            exp_of(x)
        } else if self.is_f32_const(x, 1.0) {
            exp_of(y)
        } else {
            None
        }
    }

    fn unary(&mut self, u: UnaryOp, ty: Ty, a: BasicValueEnum<'ctx>) -> R<BasicValueEnum<'ctx>> {
        if ty != Ty::F32 {
            let x = a.into_int_value();
            return Ok(match u {
                UnaryOp::Not => self.b.build_not(x, "not")?.into(),
                UnaryOp::Neg => self.b.build_int_neg(x, "neg")?.into(),
                UnaryOp::Abs => {
                    let f = self.ctx.bool_type().const_zero();
                    self.call("llvm.abs", &[self.reg_type(ty)], &[x.into(), f.into()])?
                }
                other => return Err(CodegenError::Unsupported { kernel: self.k.name.clone(), reason: format!("{} on {}", other.name(), ty.name()) }),
            });
        }
        let x = a.into_float_value();
        let one = self.f32c(1.0);
        Ok(match u {
            UnaryOp::Neg => self.b.build_float_neg(x, "neg")?.into(),
            UnaryOp::Abs => self.f1("llvm.fabs", x)?.into(),
            UnaryOp::Exp => self.exp(x)?.into(),
            UnaryOp::Log => self.log(x)?.into(),
            UnaryOp::Sqrt => self.f1("llvm.sqrt", x)?.into(),
            UnaryOp::Rsqrt => {
                let s = self.f1("llvm.sqrt", x)?;
                self.b.build_float_div(one, s, "rsqrt")?.into()
            }
            UnaryOp::Recip => self.b.build_float_div(one, x, "recip")?.into(),
            UnaryOp::Tanh => self.tanh(x)?.into(),
            UnaryOp::Erf => self.erf(x)?.into(),
            UnaryOp::Sin => self.f1("llvm.sin", x)?.into(),
            UnaryOp::Cos => self.f1("llvm.cos", x)?.into(),
            UnaryOp::Floor => self.f1("llvm.floor", x)?.into(),
            UnaryOp::Not => return Err(CodegenError::Unsupported { kernel: self.k.name.clone(), reason: "not on floats".into() }),
        })
    }

    fn binary(&mut self, op: BinaryOp, ty: Ty, x: BasicValueEnum<'ctx>, y: BasicValueEnum<'ctx>, yconst: Option<i64>) -> R<BasicValueEnum<'ctx>> {
        let b = &self.b;
        if ty == Ty::F32 {
            let (x, y) = (x.into_float_value(), y.into_float_value());
            return Ok(match op {
                BinaryOp::Add => b.build_float_add(x, y, "add")?.into(),
                BinaryOp::Sub => b.build_float_sub(x, y, "sub")?.into(),
                BinaryOp::Mul => b.build_float_mul(x, y, "mul")?.into(),
                BinaryOp::Div => {
                    // `arcp`: a division by a loop-invariant (softmax's sum) becomes a multiply.
                    let d = b.build_float_div(x, y, "div")?;
                    self.flags(d, inkwell::values::FastMathFlags::AllowReciprocal);
                    d.into()
                }
                BinaryOp::Max => self.call("llvm.maximum", &[self.ctx.f32_type().into()], &[x.into(), y.into()])?,
                BinaryOp::Min => self.call("llvm.minimum", &[self.ctx.f32_type().into()], &[x.into(), y.into()])?,
                BinaryOp::Pow => self.call("llvm.pow", &[self.ctx.f32_type().into()], &[x.into(), y.into()])?,
                BinaryOp::And | BinaryOp::Or => return Err(CodegenError::Unsupported { kernel: self.k.name.clone(), reason: "logical op on floats".into() }),
            });
        }
        let (x, y) = (x.into_int_value(), y.into_int_value());
        let it = x.get_type();
        Ok(match op {
            BinaryOp::Add => b.build_int_add(x, y, "add")?.into(),
            BinaryOp::Sub => b.build_int_sub(x, y, "sub")?.into(),
            BinaryOp::Mul => b.build_int_mul(x, y, "mul")?.into(),
            BinaryOp::And => b.build_and(x, y, "and")?.into(),
            BinaryOp::Or => b.build_or(x, y, "or")?.into(),
            BinaryOp::Div if yconst.is_some_and(|c| c > 0) => b.build_int_signed_div(x, y, "div")?.into(),
            BinaryOp::Div => {
                // Truncating division; x / 0 = 0 and MIN / -1 wraps (no UB).
                let zero = it.const_zero();
                let m1 = it.const_all_ones();
                let is0 = b.build_int_compare(IntPredicate::EQ, y, zero, "is0")?;
                let ism1 = b.build_int_compare(IntPredicate::EQ, y, m1, "ism1")?;
                let bad = b.build_or(is0, ism1, "bad")?;
                let safe = b.build_select(bad, it.const_int(1, false), y, "safe")?.into_int_value();
                let q = b.build_int_signed_div(x, safe, "q")?;
                let neg = b.build_int_neg(x, "negx")?;
                let q = b.build_select(ism1, neg, q, "q")?.into_int_value();
                b.build_select(is0, zero, q, "div")?
            }
            BinaryOp::Max => self.call("llvm.smax", &[it.into()], &[x.into(), y.into()])?,
            BinaryOp::Min => self.call("llvm.smin", &[it.into()], &[x.into(), y.into()])?,
            BinaryOp::Pow => {
                let f64t = self.ctx.f64_type();
                let xf = self.b.build_signed_int_to_float(x, f64t, "xf")?;
                let yf = self.b.build_signed_int_to_float(y, f64t, "yf")?;
                let p = self.call("llvm.pow", &[f64t.into()], &[xf.into(), yf.into()])?;
                self.call("llvm.fptosi.sat", &[it.into(), f64t.into()], &[p])?
            }
        })
    }

    fn compare(&mut self, c: CmpOp, t: Ty, x: BasicValueEnum<'ctx>, y: BasicValueEnum<'ctx>) -> R<BasicValueEnum<'ctx>> {
        if t == Ty::F32 {
            let p = match c {
                CmpOp::Eq => FloatPredicate::OEQ,
                CmpOp::Ne => FloatPredicate::UNE,
                CmpOp::Lt => FloatPredicate::OLT,
                CmpOp::Le => FloatPredicate::OLE,
                CmpOp::Gt => FloatPredicate::OGT,
                CmpOp::Ge => FloatPredicate::OGE,
            };
            return Ok(self.b.build_float_compare(p, x.into_float_value(), y.into_float_value(), "cmp")?.into());
        }
        let unsigned = t == Ty::Bool;
        let p = match (c, unsigned) {
            (CmpOp::Eq, _) => IntPredicate::EQ,
            (CmpOp::Ne, _) => IntPredicate::NE,
            (CmpOp::Lt, false) => IntPredicate::SLT,
            (CmpOp::Le, false) => IntPredicate::SLE,
            (CmpOp::Gt, false) => IntPredicate::SGT,
            (CmpOp::Ge, false) => IntPredicate::SGE,
            (CmpOp::Lt, true) => IntPredicate::ULT,
            (CmpOp::Le, true) => IntPredicate::ULE,
            (CmpOp::Gt, true) => IntPredicate::UGT,
            (CmpOp::Ge, true) => IntPredicate::UGE,
        };
        Ok(self.b.build_int_compare(p, x.into_int_value(), y.into_int_value(), "cmp")?.into())
    }

    fn round_to(&mut self, to: DType, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        Ok(match to {
            DType::F16 => {
                let h = self.b.build_float_trunc(x, self.ctx.f16_type(), "h")?;
                self.b.build_float_ext(h, self.ctx.f32_type(), "x")?
            }
            DType::BF16 => {
                let h = self.to_bf16_bits(x)?;
                self.from_bf16_bits(h)?
            }
            _ => x,
        })
    }

    fn cast(&mut self, from: Ty, to: DType, a: BasicValueEnum<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let tt = Ty::of(to);
        let f32t = self.ctx.f32_type();
        Ok(match (from, tt) {
            (Ty::F32, Ty::F32) => self.round_to(to, a.into_float_value())?.into(),
            (Ty::F32, Ty::Bool) => self.b.build_float_compare(FloatPredicate::UNE, a.into_float_value(), self.f32c(0.0), "nz")?.into(),
            (Ty::F32, t) => self.call("llvm.fptosi.sat", &[self.reg_type(t), f32t.into()], &[a])?,
            (Ty::Bool, Ty::F32) => {
                let f = self.b.build_unsigned_int_to_float(a.into_int_value(), f32t, "f")?;
                f.into()
            }
            (Ty::Bool, Ty::Bool) => a,
            (Ty::Bool, t) => self.b.build_int_z_extend(a.into_int_value(), self.reg_type(t).into_int_type(), "z")?.into(),
            (_, Ty::F32) => {
                let f = self.b.build_signed_int_to_float(a.into_int_value(), f32t, "f")?;
                self.round_to(to, f)?.into()
            }
            (_, Ty::Bool) => {
                let x = a.into_int_value();
                self.b.build_int_compare(IntPredicate::NE, x, x.get_type().const_zero(), "nz")?.into()
            }
            (f, t) if f == t => a,
            (Ty::I32, Ty::I64) => self.b.build_int_s_extend(a.into_int_value(), self.ctx.i64_type(), "s")?.into(),
            (Ty::I64, Ty::I32) => {
                // Saturate like the reference (a C cast through f64).
                let x = a.into_int_value();
                let i64t = self.ctx.i64_type();
                let lo = i64t.const_int(i32::MIN as i64 as u64, true);
                let hi = i64t.const_int(i32::MAX as u64, false);
                let x = self.call("llvm.smax", &[i64t.into()], &[x.into(), lo.into()])?;
                let x = self.call("llvm.smin", &[i64t.into()], &[x, hi.into()])?;
                self.b.build_int_truncate(x.into_int_value(), self.ctx.i32_type(), "t")?.into()
            }
            _ => unreachable!("all register type pairs are covered"),
        })
    }

    // ---- inline math (f32, vectorizable) ----

    fn fma(&mut self, a: FloatValue<'ctx>, b: FloatValue<'ctx>, c: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        Ok(self.call("llvm.fmuladd", &[self.ctx.f32_type().into()], &[a.into(), b.into(), c.into()])?.into_float_value())
    }

    fn poly(&mut self, x: FloatValue<'ctx>, coeffs: &[f32]) -> R<FloatValue<'ctx>> {
        let mut acc = self.f32c(coeffs[0]);
        for &c in &coeffs[1..] {
            let cc = self.f32c(c);
            acc = self.fma(acc, x, cc)?;
        }
        Ok(acc)
    }

    /// Cephes `expf`: 2^n * p(r), |error| about 1 ulp, with no libm call and no branch:
    /// `n = round(x log2 e)` by the 1.5 * 2^23 rounding trick (the integer is read from the
    /// float's bits), and `2^n` applied by `llvm.ldexp` on AVX-512 hosts (one `vscalefps`, one
    /// rounding), elsewhere as two factors `2^(n/2)` made from their bits so that both stay
    /// normal over the clamped range (ldexp would be a libm call per element there). The
    /// `vscalefps` form takes 3 vector instructions where the bits take 9: softmax's exp pass is
    /// compute-bound on one core. Clamping to [-104, 88.8] makes the result exactly 0 below and inf
    /// above; the clamps are compare + select, so a NaN passes through the arithmetic.
    fn exp(&mut self, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        self.exp_upto(x, 88.8)
    }

    /// [`Gen::exp`] with the input clamped above at `hi` instead: `exp_upto(x, EST_EXP_HI)`
    /// is finite (at most 6.1e37) for every non-NaN `x`, so `1 + exp` is a safe divisor for
    /// [`Gen::div_est`].
    fn exp_upto(&mut self, x: FloatValue<'ctx>, hi: f32) -> R<FloatValue<'ctx>> {
        let hi_c = hi;
        const LO: f32 = -104.0;
        const MAGIC: f32 = 12582912.0;
        let f32t = self.ctx.f32_type();
        let i32t = self.ctx.i32_type();
        let big = self.b.build_float_compare(FloatPredicate::OGT, x, self.f32c(hi_c), "big")?;
        let xc = self.b.build_select(big, self.f32c(hi_c), x, "xc")?.into_float_value();
        let small = self.b.build_float_compare(FloatPredicate::OLT, xc, self.f32c(LO), "small")?;
        let xc = self.b.build_select(small, self.f32c(LO), xc, "xc")?.into_float_value();
        let t = self.fma(xc, self.f32c(std::f32::consts::LOG2_E), self.f32c(MAGIC))?;
        let n = self.b.build_float_sub(t, self.f32c(MAGIC), "n")?;
        let r = self.fma(n, self.f32c(-0.693359375), xc)?;
        let r = self.fma(n, self.f32c(2.12194440e-4), r)?;
        let p = self.poly(r, &[1.9875691500E-4, 1.3981999507E-3, 8.3334519073E-3, 4.1665795894E-2, 1.6666665459E-1, 5.0000001201E-1])?;
        let r2 = self.b.build_float_mul(r, r, "r2")?;
        let p = self.fma(p, r2, r)?;
        let p = self.b.build_float_add(p, self.f32c(1.0), "p")?;
        let tb = self.b.build_bit_cast(t, i32t, "tb")?.into_int_value();
        let ni = self.b.build_int_sub(tb, i32t.const_int(MAGIC.to_bits() as u64, false), "n")?;
        if self.scalef {
            return Ok(self.call("llvm.ldexp", &[f32t.into(), i32t.into()], &[p.into(), ni.into()])?.into_float_value());
        }
        let n1 = self.b.build_right_shift(ni, i32t.const_int(1, false), true, "n1")?;
        let n2 = self.b.build_int_sub(ni, n1, "n2")?;
        let mut y = p;
        for h in [n1, n2] {
            let e = self.b.build_int_add(h, i32t.const_int(127, false), "e")?;
            let e = self.b.build_left_shift(e, i32t.const_int(23, false), "e")?;
            let scale = self.b.build_bit_cast(e, f32t, "s")?.into_float_value();
            y = self.b.build_float_mul(y, scale, "exp")?;
        }
        Ok(y)
    }

    /// Cephes `logf` on normal numbers; log(0) = -inf, log(<0) = NaN, log(inf) = inf.
    fn log(&mut self, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        let f32t = self.ctx.f32_type();
        let i32t = self.ctx.i32_type();
        let bits = self.b.build_bit_cast(x, i32t, "bits")?.into_int_value();
        let e = self.b.build_right_shift(bits, i32t.const_int(23, false), false, "e")?;
        let e = self.b.build_and(e, i32t.const_int(0xff, false), "e")?;
        let e = self.b.build_int_sub(e, i32t.const_int(126, false), "e")?;
        let m = self.b.build_and(bits, i32t.const_int(0x807f_ffff, false), "m")?;
        let m = self.b.build_or(m, i32t.const_int(0x3f00_0000, false), "m")?;
        let m = self.b.build_bit_cast(m, f32t, "m")?.into_float_value();
        let ef = self.b.build_signed_int_to_float(e, f32t, "ef")?;
        let lt = self.b.build_float_compare(FloatPredicate::OLT, m, self.f32c(std::f32::consts::FRAC_1_SQRT_2), "lt")?;
        let ef1 = self.b.build_float_sub(ef, self.f32c(1.0), "ef1")?;
        let ef = self.b.build_select(lt, ef1, ef, "ef")?.into_float_value();
        let m2 = self.b.build_float_add(m, m, "m2")?;
        let mm = self.b.build_select(lt, m2, m, "mm")?.into_float_value();
        let m = self.b.build_float_sub(mm, self.f32c(1.0), "m")?;
        let z = self.b.build_float_mul(m, m, "z")?;
        let p = self.poly(m, &[7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1, 1.4249322787E-1, -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1, 3.3333331174E-1])?;
        let y = self.b.build_float_mul(p, m, "y")?;
        let y = self.b.build_float_mul(y, z, "y")?;
        let y = self.fma(ef, self.f32c(-2.12194440e-4), y)?;
        let y = self.fma(z, self.f32c(-0.5), y)?;
        let r = self.b.build_float_add(m, y, "r")?;
        let r = self.fma(ef, self.f32c(0.693359375), r)?;
        let zero = self.b.build_float_compare(FloatPredicate::OEQ, x, self.f32c(0.0), "zero")?;
        let neg = self.b.build_float_compare(FloatPredicate::ULT, x, self.f32c(0.0), "neg")?;
        let inf = self.b.build_float_compare(FloatPredicate::OEQ, x, self.f32c(f32::INFINITY), "inf")?;
        let r = self.b.build_select(inf, self.f32c(f32::INFINITY), r, "r")?.into_float_value();
        let r = self.b.build_select(zero, self.f32c(f32::NEG_INFINITY), r, "r")?.into_float_value();
        let nanv = self.b.build_float_add(x, self.f32c(f32::NAN), "nanv")?;
        let _ = f32t;
        Ok(self.b.build_select(neg, nanv, r, "log")?.into_float_value())
    }

    /// `n / d` by the CPU's reciprocal estimate and one Newton step (`fdiv arcp ninf`, which
    /// LLVM's x86 backend lowers to `rcp14ps`/`rcpps` + 2-3 FMA-port ops for vectors instead of
    /// a `divps` that occupies the divider for 5-16 cycles). The estimate is wrong where `d`
    /// is 0, infinite or denormal (the Newton step turns 1/inf into NaN), so callers pass only
    /// divisors they have bounded to normal finite magnitudes (NaN is fine: it propagates).
    fn div_est(&mut self, n: FloatValue<'ctx>, d: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        let q = self.b.build_float_div(n, d, "q")?;
        self.flags(q, inkwell::values::FastMathFlags::AllowReciprocal | inkwell::values::FastMathFlags::NoInfs | inkwell::values::FastMathFlags::AllowContract);
        Ok(q)
    }

    /// `1 / (1 + exp(u))` (a sigmoid, as the frontend writes it): `exp` clamped at
    /// [`EST_EXP_HI`] so the divisor lies in [1, 6.1e37] and [`Gen::div_est`] applies. Past
    /// the clamp (sigmoid(x) for x < -87, exactly under 1.7e-38) the result is 0, as the exact
    /// divide gives from x < -88.7 on, so `x * sigmoid(x)` stays 0 for huge negative x.
    fn sigmoid_of_exp_arg(&mut self, u: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        let e = self.exp_upto(u, EST_EXP_HI)?;
        let d = self.b.build_float_add(e, self.f32c(1.0), "d")?;
        let r = self.div_est(self.f32c(1.0), d)?;
        // The same compare as the clamp inside `exp_upto` (LLVM merges the two).
        let past = self.b.build_float_compare(FloatPredicate::OGT, u, self.f32c(EST_EXP_HI), "past")?;
        Ok(self.b.build_select(past, self.f32c(0.0), r, "sigmoid")?.into_float_value())
    }

    /// tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1)).
    fn tanh(&mut self, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        let ax = self.f1("llvm.fabs", x)?;
        let two = self.b.build_float_mul(ax, self.f32c(2.0), "2x")?;
        // exp clamped at 87 (tanh(43.5) is 1 in f32): the divisor is finite, >= 1.
        let e = self.exp_upto(two, EST_EXP_HI)?;
        let d = self.b.build_float_add(e, self.f32c(1.0), "d")?;
        let q = self.div_est(self.f32c(2.0), d)?;
        let t = self.b.build_float_sub(self.f32c(1.0), q, "t")?;
        // Small |x|: the odd series x - x^3/3 + 2x^5/15 - 17x^7/315 avoids cancellation.
        let x2 = self.b.build_float_mul(x, x, "x2")?;
        let s = self.poly(x2, &[-0.05396825, 0.13333334, -0.33333334])?;
        let s = self.b.build_float_mul(s, x2, "s")?;
        let s = self.fma(s, ax, ax)?;
        let small = self.b.build_float_compare(FloatPredicate::OLT, ax, self.f32c(0.02), "small")?;
        let t = self.b.build_select(small, s, t, "t")?.into_float_value();
        Ok(self.call("llvm.copysign", &[self.ctx.f32_type().into()], &[t.into(), x.into()])?.into_float_value())
    }

    /// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), odd.
    fn erf(&mut self, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        let ax = self.f1("llvm.fabs", x)?;
        let d = self.fma(ax, self.f32c(0.3275911), self.f32c(1.0))?;
        let t = self.b.build_float_div(self.f32c(1.0), d, "t")?;
        let p = self.poly(t, &[1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592])?;
        let p = self.b.build_float_mul(p, t, "p")?;
        let x2 = self.b.build_float_mul(ax, ax, "x2")?;
        let nx2 = self.b.build_float_neg(x2, "nx2")?;
        let e = self.exp(nx2)?;
        let pe = self.b.build_float_mul(p, e, "pe")?;
        let y = self.b.build_float_sub(self.f32c(1.0), pe, "y")?;
        let y = self.call("llvm.copysign", &[self.ctx.f32_type().into()], &[y.into(), x.into()])?.into_float_value();
        let nan = self.b.build_float_compare(FloatPredicate::UNO, x, x, "nan")?;
        Ok(self.b.build_select(nan, x, y, "erf")?.into_float_value())
    }
}
