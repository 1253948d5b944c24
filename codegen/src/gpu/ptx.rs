//! MLIR text -> PTX through melior: parse, run the NVVM pipeline of `TOOLCHAIN.md`, and read
//! the PTX out of the `gpu.binary` op's object attribute.

use super::emit::{CLUSTER_MARK, TRIGGER_MARK, WAIT_MARK};
use super::{GpuError, SmVersion};
use melior::{
    dialect::DialectRegistry,
    ir::Module,
    pass::PassManager,
    utility::{parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes},
    Context,
};
use std::cell::RefCell;
use std::fmt::Write as _;
use std::rc::Rc;

/// The pass pipeline; `{chip}` and `{features}` from the target, `{bits}` the index width.
fn pipeline(sm: SmVersion, index_bits: u32) -> String {
    let (chip, features) = match sm {
        SmVersion::Sm90 => ("sm_90", "+ptx80"),
        SmVersion::Sm80 => ("sm_80", "+ptx70"),
    };
    format!(
        "builtin.module(nvvm-attach-target{{chip={chip} features={features} O=3}}, \
         gpu.module(convert-scf-to-cf, convert-gpu-to-nvvm{{use-bare-ptr-memref-call-conv=1 index-bitwidth={index_bits}}}, \
         canonicalize, cse, reconcile-unrealized-casts), gpu-module-to-binary{{format=isa}})"
    )
}

/// Compiles a module holding one `gpu.module` to PTX text.
pub(crate) fn to_ptx(mlir: &str, sm: SmVersion, index_bits: u32) -> Result<String, GpuError> {
    register_all_passes();
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    register_all_llvm_translations(&context);
    let diags = Rc::new(RefCell::new(Vec::<String>::new()));
    let sink = diags.clone();
    let handler = context.attach_diagnostic_handler(move |d| {
        sink.borrow_mut().push(format!("{}: {}", d.location(), d));
        true
    });
    let messages = |what: &str| -> GpuError {
        GpuError::Mlir { stage: what.to_string(), message: diags.borrow().join("\n"), module: mlir.to_string() }
    };
    let Some(mut module) = Module::parse(&context, mlir) else {
        return Err(messages("parse"));
    };
    let pm = PassManager::new(&context);
    parse_pass_pipeline(pm.as_operation_pass_manager(), &pipeline(sm, index_bits))
        .map_err(|e| GpuError::Mlir { stage: "pipeline".into(), message: e.to_string(), module: String::new() })?;
    if pm.run(&mut module).is_err() {
        return Err(messages("lowering"));
    }
    let ptx = unsafe { read_ptx(&module) }.ok_or_else(|| messages("reading the gpu.binary object"))?;
    context.detach_diagnostic_handler(handler);
    let ptx = match sm {
        SmVersion::Sm90 => with_cluster_dims(&with_grid_dependency_control(&ptx)),
        SmVersion::Sm80 => ptx,
    };
    Ok(if tracing() { with_trace(&ptx) } else { ptx })
}

/// Whether a (trimmed) PTX line begins a kernel entry.
fn is_entry(t: &str) -> bool {
    t.starts_with(".visible .entry") || t.starts_with(".entry")
}

/// Whether a (trimmed) line inside an entry's body still belongs to its declarations (the
/// PTX transforms insert their code before the first line that does not): blank, a register,
/// shared or local declaration, or a comment other than a [`TRACE_MARK`].
fn is_declaration(t: &str) -> bool {
    t.is_empty() || t.starts_with(".reg") || t.starts_with(".shared") || t.starts_with(".local") || (t.starts_with("//") && !t.starts_with(TRACE_MARK))
}

thread_local! {
    static TRACE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Whether kernels are instrumented for the in-graph trace: [`with_kernel_trace`]'s setting on
/// this thread, else `KILN_GPU_TRACE=1`. Off by default.
pub(crate) fn tracing() -> bool {
    TRACE.with(|c| c.get()).unwrap_or_else(|| std::env::var("KILN_GPU_TRACE").is_ok_and(|v| v == "1"))
}

/// The PTX comment (an asm statement's text, followed by the mark's number) that
/// [`with_trace`] replaces by a time stamp in the block's record
/// (`runtime::cuda::trace::TraceRecord::marks`).
pub(crate) const TRACE_MARK: &str = "// kiln: trace mark ";

/// Runs `f` (which compiles graphs) with every kernel instrumented for the in-graph trace
/// (`runtime::cuda::trace`, read back by `CudaExecutor::trace`) or not, on this thread,
/// whatever the environment says.
pub fn with_kernel_trace<T>(on: bool, f: impl FnOnce() -> T) -> T {
    let old = TRACE.with(|c| c.replace(Some(on)));
    let out = f();
    TRACE.with(|c| c.set(old));
    out
}

/// Instruments every entry of `ptx` for the in-graph trace (`runtime::cuda::trace` defines
/// the record): the module gains the record counter and array; in each entry, thread 0 of the
/// block takes a slot at entry and stores there the entry's index, `%smid`, the block index
/// and `%globaltimer` / `%clock64`, again after `griddepcontrol.wait` and before each `ret`,
/// and `%globaltimer` at each [`TRACE_MARK`] an emitter placed.
/// Registers are prefixed `%kt` (LLVM's NVPTX backend names its own `%r`, `%rd`, `%p`, `%f`..).
pub(crate) fn with_trace(ptx: &str) -> String {
    use runtime::cuda::trace::{CAPACITY, COUNT_SYMBOL, LOG_SYMBOL, MARKS, MARKS_AT, RECORD_BYTES};
    let stamp = |at: usize| {
        format!(
            "\tmov.u64 %ktd1, %globaltimer;\n\tmov.u64 %ktd2, %clock64;\n\t@%ktp st.global.u64 [%ktd0+{at}], %ktd1;\n\t@%ktp st.global.u64 [%ktd0+{}], %ktd2;\n",
            at + 24
        )
    };
    let mut out = String::with_capacity(ptx.len() + 4096);
    // 0: outside an entry; 1: in an entry's header; 2: in its declarations.
    let (mut state, mut entry) = (0, 0usize);
    for line in ptx.lines() {
        let t = line.trim_start();
        if state == 2 && !is_declaration(t) {
            let _ = write!(
                out,
                "\t.reg .pred %ktp;\n\t.reg .b32 %ktr<4>;\n\t.reg .b64 %ktd<4>;\n\
                 \tmov.u64 %ktd1, %globaltimer;\n\tmov.u64 %ktd2, %clock64;\n\
                 \tmov.u32 %ktr0, %tid.x;\n\tmov.u32 %ktr1, %tid.y;\n\tor.b32 %ktr0, %ktr0, %ktr1;\n\
                 \tmov.u32 %ktr1, %tid.z;\n\tor.b32 %ktr0, %ktr0, %ktr1;\n\tsetp.eq.u32 %ktp, %ktr0, 0;\n\
                 \tmov.u64 %ktd0, 0;\n\t@%ktp atom.global.add.u64 %ktd0, [{COUNT_SYMBOL}], 1;\n\
                 \tmin.u64 %ktd0, %ktd0, {};\n\tmul.lo.u64 %ktd0, %ktd0, {RECORD_BYTES};\n\
                 \tmov.u64 %ktd3, {LOG_SYMBOL};\n\tadd.u64 %ktd0, %ktd0, %ktd3;\n\
                 \tmov.u32 %ktr2, {};\n\tmov.u32 %ktr3, %smid;\n\t@%ktp st.global.v2.u32 [%ktd0], {{%ktr2, %ktr3}};\n\
                 \t@%ktp st.global.u64 [%ktd0+8], %ktd1;\n\t@%ktp st.global.u64 [%ktd0+32], %ktd2;\n\
                 \tmov.u32 %ktr2, %ctaid.x;\n\tmov.u32 %ktr3, %ctaid.y;\n\t@%ktp st.global.v2.u32 [%ktd0+56], {{%ktr2, %ktr3}};\n",
                CAPACITY - 1,
                entry - 1
            );
            state = 0;
        }
        if t == "ret;" && entry > 0 {
            out.push_str(&stamp(24));
        }
        if let Some(n) = t.strip_prefix(TRACE_MARK).and_then(|n| n.trim().parse::<usize>().ok()).filter(|&n| n < MARKS) {
            let _ = write!(out, "\tmov.u64 %ktd1, %globaltimer;\n\t@%ktp st.global.u64 [%ktd0+{}], %ktd1;\n", MARKS_AT + 8 * n);
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if t.starts_with(".address_size") {
            let _ = writeln!(out, "\n.visible .global .align 8 .u64 {COUNT_SYMBOL};\n.visible .global .align 8 .b8 {LOG_SYMBOL}[{}];", CAPACITY * RECORD_BYTES);
        } else if is_entry(t) {
            state = 1;
            entry += 1;
        } else if state == 1 && t == "{" {
            state = 2;
        } else if t == "griddepcontrol.wait;" && entry > 0 {
            out.push_str(&stamp(16));
        }
    }
    out
}

/// Programmatic dependent launch (sm_90): every kernel begins with `griddepcontrol.wait`
/// (nothing of it runs before the kernel it depends on has finished and its writes are
/// visible), then `griddepcontrol.launch_dependents` (the next kernel may be launched now; its
/// blocks wait the same way). A kernel that marks its own wait ([`WAIT_MARK`]: the skinny GEMM
/// loads its weights first) waits there instead, and one that marks its trigger
/// ([`TRIGGER_MARK`]) lets the next kernel launch there instead. Launched without the programmatic attribute or
/// edge both are no-ops. The executor makes an edge programmatic only into a kernel that
/// waits, so every kernel completing still implies every earlier one has.
pub(crate) fn with_grid_dependency_control(ptx: &str) -> String {
    const WAIT: &str = "\tgriddepcontrol.wait;\n";
    const TRIGGER: &str = "\tgriddepcontrol.launch_dependents;\n";
    // Whether each entry marks its own wait, and its own trigger ([`TRIGGER_MARK`]).
    let mut marked = Vec::new();
    for t in ptx.lines().map(str::trim_start) {
        if is_entry(t) {
            marked.push((false, false));
        } else if let Some(m) = marked.last_mut() {
            m.0 |= t == WAIT_MARK;
            m.1 |= t == TRIGGER_MARK;
        }
    }
    let mut out = String::with_capacity(ptx.len() + 256);
    // 0: outside an entry; 1: in an entry's header; 2: in its declarations.
    let (mut state, mut entry) = (0, 0);
    let wait = |out: &mut String, entry: usize| {
        out.push_str(WAIT);
        if !marked[entry - 1].1 {
            out.push_str(TRIGGER);
        }
    };
    for line in ptx.lines() {
        let t = line.trim_start();
        if state == 2 && !is_declaration(t) {
            if !marked[entry - 1].0 {
                wait(&mut out, entry);
            }
            state = 0;
        }
        if t == WAIT_MARK {
            wait(&mut out, entry);
            continue;
        }
        if t == TRIGGER_MARK {
            out.push_str(TRIGGER);
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if is_entry(t) {
            state = 1;
            entry += 1;
        } else if state == 1 && t == "{" {
            state = 2;
        }
    }
    out
}

/// Thread-block clusters (sm_90): an entry that carries [`CLUSTER_MARK`]` x y z` in its body
/// declares `.reqnctapercluster x, y, z` in its header, so that every launch of it, plain or
/// in a CUDA graph, runs its blocks as clusters of that shape (the grid is a multiple of it).
/// The mark itself is dropped.
pub(crate) fn with_cluster_dims(ptx: &str) -> String {
    // Each entry's cluster shape, if it has one.
    let mut dims: Vec<Option<String>> = Vec::new();
    for t in ptx.lines().map(str::trim_start) {
        if is_entry(t) {
            dims.push(None);
        } else if let Some(shape) = t.strip_prefix(CLUSTER_MARK) {
            if let Some(d) = dims.last_mut() {
                *d = Some(shape.split_whitespace().collect::<Vec<_>>().join(", "));
            }
        }
    }
    if dims.iter().all(Option::is_none) {
        return ptx.to_string();
    }
    let mut out = String::with_capacity(ptx.len() + 64 * dims.len());
    let (mut in_header, mut entry) = (false, 0);
    for line in ptx.lines() {
        let t = line.trim_start();
        if t.starts_with(CLUSTER_MARK) {
            continue;
        }
        if is_entry(t) {
            in_header = true;
            entry += 1;
        } else if in_header && t == "{" {
            in_header = false;
            if let Some(d) = &dims[entry - 1] {
                out.push_str(&format!(".reqnctapercluster {d}\n"));
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The first object of the first `gpu.binary` op in the module's body.
unsafe fn read_ptx(module: &Module) -> Option<String> {
    use mlir_sys::*;
    unsafe {
        let body = mlirModuleGetBody(module.to_raw());
        let mut op = mlirBlockGetFirstOperation(body);
        while !op.ptr.is_null() {
            let name = mlirIdentifierStr(mlirOperationGetName(op));
            let name = std::slice::from_raw_parts(name.data as *const u8, name.length);
            if name == b"gpu.binary" {
                let key = mlirStringRefCreateFromCString(c"objects".as_ptr());
                let objects = mlirOperationGetAttributeByName(op, key);
                if objects.ptr.is_null() || mlirArrayAttrGetNumElements(objects) == 0 {
                    return None;
                }
                let obj = mlirArrayAttrGetElement(objects, 0);
                let s = mlirGPUObjectAttrGetObject(obj);
                let bytes = std::slice::from_raw_parts(s.data as *const u8, s.length);
                return Some(String::from_utf8_lossy(bytes).trim_end_matches('\0').to_string());
            }
            op = mlirOperationGetNextInBlock(op);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grid_dependency_control_follows_each_entrys_declarations() {
        let ptx = ".visible .entry k0(\n\t.param .u64 p0\n)\n.maxntid 128, 1, 1\n{\n\t.reg .b32 \t%r<4>;\n\t// demoted\n\t.shared .align 16 .b8 s[64];\n\tld.param.b64 \t%rd1, [p0];\n\tret;\n}\n.entry k1()\n{\n\tret;\n}\n";
        let out = super::with_grid_dependency_control(ptx);
        assert_eq!(out.matches("griddepcontrol.wait;").count(), 2);
        assert_eq!(out.matches("griddepcontrol.launch_dependents;").count(), 2);
        let wait = out.find("griddepcontrol.wait").unwrap();
        assert!(wait > out.find(".shared").unwrap() && wait < out.find("ld.param").unwrap());
        assert!(out.find("griddepcontrol.wait").unwrap() < out.find("ld.param").unwrap());
    }

    #[test]
    fn a_marked_entry_declares_its_cluster_shape_in_its_header() {
        let mark = super::CLUSTER_MARK;
        let ptx = format!(".visible .entry k0(\n\t.param .u64 p0\n)\n.reqntid 128, 1, 1\n{{\n\t// begin inline asm\n\t{mark} 1 6 1\n\t// end inline asm\n\tret;\n}}\n.visible .entry k1(\n)\n{{\n\tret;\n}}\n");
        let out = super::with_cluster_dims(&ptx);
        assert!(!out.contains(mark));
        let (k0, k1) = out.split_at(out.find(".entry k1").unwrap());
        let decl = k0.find(".reqnctapercluster 1, 6, 1\n{").expect("declared before the body");
        assert!(decl > k0.find(".reqntid").unwrap());
        assert!(!k1.contains(".reqnctapercluster"));
    }

    #[test]
    fn a_kernel_that_marks_its_wait_waits_there_only() {
        let mark = super::WAIT_MARK;
        let ptx = format!(".visible .entry k0(\n)\n{{\n\t.reg .b32 %r<4>;\n\tld.global.v4.u32 {{%r0, %r1, %r2, %r3}}, [%rd1];\n\t// begin inline asm\n\t{mark}\n\t// end inline asm\n\tld.global.u32 %r0, [%rd2];\n\tret;\n}}\n.visible .entry k1(\n)\n{{\n\tret;\n}}\n");
        let out = super::with_grid_dependency_control(&ptx);
        assert_eq!(out.matches("griddepcontrol.wait;").count(), 2);
        assert!(!out.contains(mark));
        let (k0, k1) = out.split_at(out.find(".entry k1").unwrap());
        let wait = k0.find("griddepcontrol.wait").unwrap();
        assert!(wait > k0.find("ld.global.v4").unwrap() && wait < k0.find("ld.global.u32").unwrap());
        assert!(k1.find("griddepcontrol.wait").unwrap() < k1.find("ret").unwrap());
    }

    #[test]
    fn a_kernel_that_marks_its_trigger_lets_the_next_launch_there_only() {
        let (wait, trigger) = (super::WAIT_MARK, super::TRIGGER_MARK);
        let ptx = format!(".visible .entry k0(\n)\n{{\n\t.reg .b32 %r<4>;\n\t{wait}\n\tld.global.u32 %r0, [%rd2];\n\t{trigger}\n\tst.global.u32 [%rd3], %r0;\n\tret;\n}}\n.visible .entry k1(\n)\n{{\n\tret;\n}}\n");
        let out = super::with_grid_dependency_control(&ptx);
        assert!(!out.contains(trigger));
        assert_eq!(out.matches("griddepcontrol.launch_dependents;").count(), 2);
        let (k0, k1) = out.split_at(out.find(".entry k1").unwrap());
        let launch = k0.find("griddepcontrol.launch_dependents").unwrap();
        assert!(launch > k0.find("ld.global.u32").unwrap() && launch < k0.find("st.global.u32").unwrap());
        // the other kernel triggers right after its wait, as before
        assert!(k1.find("griddepcontrol.wait").unwrap() < k1.find("griddepcontrol.launch_dependents").unwrap());
    }

    #[test]
    fn tracing_stamps_entry_release_marks_and_exit() {
        use runtime::cuda::trace::{ptx_entries, MARKS_AT};
        let mark = format!("{}2", super::TRACE_MARK);
        let ptx = format!(".version 8.0\n.target sm_90a\n.address_size 64\n\n.visible .entry a(\n)\n{{\n\t.reg .b32 %r<2>;\n\tgriddepcontrol.wait;\n\t{mark}\n\tret;\n}}\n.visible .entry b(\n)\n{{\n\tret;\n}}\n");
        let out = super::with_trace(&ptx);
        assert_eq!(ptx_entries(&out), vec!["a", "b"]);
        assert_eq!(out.matches(".visible .global").count(), 2, "the counter and the log, once per module");
        assert_eq!(out.matches("atom.global.add.u64 %ktd0").count(), 2, "one slot per block, in each entry");
        assert_eq!(out.matches("[%ktd0+16]").count(), 1, "the release, where there is a wait");
        assert_eq!(out.matches("[%ktd0+24]").count(), 2, "the exit, before each ret");
        assert!(out.contains(&format!("[%ktd0+{}]", MARKS_AT + 16)) && !out.contains(&mark));
        assert!(out.contains("mov.u32 %ktr2, 1;"), "the second entry records its index");
        // the declarations come before the first instruction of each entry
        let a = &out[out.find(".entry a").unwrap()..out.find(".entry b").unwrap()];
        assert!(a.find(".reg .b64 %ktd<4>").unwrap() < a.find("griddepcontrol.wait").unwrap());
    }
}
