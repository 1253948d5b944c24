//! MLIR text -> PTX through melior: parse, run the NVVM pipeline of `TOOLCHAIN.md`, and read
//! the PTX out of the `gpu.binary` op's object attribute.

use super::{GpuError, SmVersion};
use melior::{
    dialect::DialectRegistry,
    ir::Module,
    pass::PassManager,
    utility::{parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes},
    Context,
};
use std::cell::RefCell;
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
    Ok(ptx)
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
