//! Data pointers of PyTorch tensors without a Python method call per tensor.
//!
//! A compiled GPT-2 region takes ~150 tensors (every parameter is an input), and
//! `tensor.data_ptr()` through Python costs ~150 ns each: more than the CUDA graph launch.
//! PyTorch exports, for Inductor's generated C++ wrappers, a C function that returns a
//! tensor's data pointer from its `PyObject*`
//! (`torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr`, an address). The
//! Python package hands that address here once ([`set_tensor_access`]) with the exact types
//! it is used for (`torch.Tensor`, `torch.nn.Parameter`); anything else, or a PyTorch without
//! the export, goes through `data_ptr()`.
//!
//! The function throws a C++ exception for a non-tensor (and `data_ptr()` does for tensors
//! without strided storage); an exception must never unwind into Rust, so it is called only
//! for objects whose type is exactly one of the registered tensor types, and the planner only
//! sends strided tensors (its guards refuse other layouts).

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyType};
use std::ffi::c_void;
use std::sync::OnceLock;

type DataPtrFn = unsafe extern "C-unwind" fn(*mut ffi::PyObject) -> *mut c_void;

struct Access {
    data_ptr: DataPtrFn,
    /// The exact types the function is used for (strong references, held for the process).
    types: Vec<Py<PyType>>,
}

static ACCESS: OnceLock<Access> = OnceLock::new();

/// Registers PyTorch's exported data-pointer function (its address) for objects of exactly
/// these types. Once per process; later calls are ignored. Returns whether it is in use.
#[pyfunction]
pub fn set_tensor_access(address: usize, types: Vec<Bound<'_, PyType>>) -> bool {
    if address == 0 || types.is_empty() {
        return ACCESS.get().is_some();
    }
    // SAFETY: the Python package passes the address PyTorch exports for exactly this
    // signature (`void* (*)(PyObject*)`, the C calling convention on every platform PyTorch
    // ships for); it stays valid while torch is loaded, which outlives every region.
    let data_ptr: DataPtrFn = unsafe { std::mem::transmute::<usize, DataPtrFn>(address) };
    let _ = ACCESS.set(Access { data_ptr, types: types.into_iter().map(|t| t.unbind()).collect() });
    true
}

/// The data pointer of `t`, a live strided tensor.
pub fn data_ptr(t: &Bound<'_, PyAny>) -> PyResult<usize> {
    if let Some(a) = ACCESS.get() {
        // SAFETY: `t` is a live object; reading its type is what `Py_TYPE` does.
        let ty = unsafe { ffi::Py_TYPE(t.as_ptr()) };
        if a.types.iter().any(|k| k.as_ptr() as *mut ffi::PyTypeObject == ty) {
            // SAFETY: `t` is exactly a registered tensor type (so the function does not throw
            // for a non-tensor) and the caller's contract makes it a strided tensor; the GIL
            // is held and `t` is borrowed for the call.
            return Ok(unsafe { (a.data_ptr)(t.as_ptr()) } as usize);
        }
    }
    t.call_method0(intern!(t.py(), "data_ptr"))?.extract::<usize>()
}

/// Buffers compiled in as constants (`kiln.compile` freezes causal-mask buffers): `(index,
/// version, data pointer)` each, checked against a call's tensors in one native call (a
/// Python loop over GPT-2's 12 masks cost ~3 us a call).
#[pyclass(frozen, module = "kiln._kiln")]
pub struct Frozen {
    checks: Vec<(usize, i64, usize)>,
}

#[pymethods]
impl Frozen {
    #[new]
    fn new(checks: Vec<(usize, i64, usize)>) -> Frozen {
        Frozen { checks }
    }

    /// Whether each frozen buffer in `tensors` is still at its address and version.
    fn ok(&self, tensors: &Bound<'_, PyList>) -> PyResult<bool> {
        for &(i, v, p) in &self.checks {
            let Ok(t) = tensors.get_item(i) else { return Ok(false) };
            if data_ptr(&t)? != p || version(&t)? != v {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn __len__(&self) -> usize {
        self.checks.len()
    }
}

/// The data pointers of a list of tensors (and the version counters of some of them), as of
/// one call: a later list is checked against them in one native call, and a region can run
/// on the pointers without reading them again (the address guard of
/// `kiln.compile(static_weights=True)`).
#[pyclass(frozen, module = "kiln._kiln")]
pub struct Addresses {
    pub(crate) ptrs: Vec<usize>,
    /// `(index, version)`: tensors whose contents were compiled in as constants, so a write
    /// in place (a new version) must be seen too.
    versions: Vec<(usize, i64)>,
}

fn version(t: &Bound<'_, PyAny>) -> PyResult<i64> {
    t.getattr(intern!(t.py(), "_version"))?.extract::<i64>()
}

#[pymethods]
impl Addresses {
    #[new]
    #[pyo3(signature = (tensors, watch=Vec::new()))]
    fn new(tensors: &Bound<'_, PyList>, watch: Vec<usize>) -> PyResult<Addresses> {
        let ptrs = tensors.iter().map(|t| data_ptr(&t)).collect::<PyResult<_>>()?;
        let versions = watch.into_iter().map(|i| Ok((i, version(&tensors.get_item(i)?)?))).collect::<PyResult<_>>()?;
        Ok(Addresses { ptrs, versions })
    }

    /// Whether `tensors` has as many tensors as the snapshot, each at the same address, and
    /// the watched ones at the same version.
    fn same(&self, tensors: &Bound<'_, PyList>) -> PyResult<bool> {
        if tensors.len() != self.ptrs.len() {
            return Ok(false);
        }
        for (t, &p) in tensors.iter().zip(&self.ptrs) {
            if data_ptr(&t)? != p {
                return Ok(false);
            }
        }
        for &(i, v) in &self.versions {
            if version(&tensors.get_item(i)?)? != v {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn __len__(&self) -> usize {
        self.ptrs.len()
    }
}
