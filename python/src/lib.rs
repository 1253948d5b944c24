//! `kiln._kiln`: the native half of Kiln's Python package.
//!
//! The Python side captures a function at the ATen level, partitions it, and sends each
//! supported region here as JSON (see [`json`]). [`Region`] imports it through
//! [`frontend::aten::import`] into an [`ir::Graph`], compiles it, and runs it on PyTorch's own
//! memory: `run(input_pointers, output_pointers)`, with the outputs allocated by PyTorch.
//!
//! Exceptions: `UnsupportedNode(message, node_index)` when one node cannot be imported (the
//! caller runs that node in PyTorch and tries again), `CompileError(message)` for anything else.

// Errors from the frontend are large (they carry shapes); they are cold.
#![allow(clippy::result_large_err)]

pub mod engine;
pub mod json;
pub mod tensor_ptr;

use engine::Engine;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyList;

create_exception!(_kiln, CompileError, PyException, "Kiln could not import or compile a graph.");
create_exception!(_kiln, UnsupportedNode, CompileError, "One node of a region cannot be imported: args = (message, node_index).");

/// Every ATen target the importer maps.
#[pyfunction]
fn supported_targets() -> Vec<&'static str> {
    frontend::aten::supported_targets().to_vec()
}

fn import(text: &str) -> PyResult<ir::Graph> {
    let g = json::parse(text).map_err(CompileError::new_err)?;
    frontend::aten::import(&g).map_err(|e| match e.node() {
        Some(i) => UnsupportedNode::new_err((e.to_string(), i)),
        None => CompileError::new_err(e.to_string()),
    })
}

/// Imports a region and returns the IR text (no compilation).
#[pyfunction]
fn import_graph(text: &str) -> PyResult<String> {
    Ok(import(text)?.to_string())
}

/// A compiled region of a captured graph.
#[pyclass(frozen, module = "kiln._kiln")]
struct Region {
    engine: Engine,
    ir_text: String,
    inputs: Vec<(ir::DType, Vec<usize>)>,
    outputs: Vec<(ir::DType, Vec<usize>)>,
    /// Where each input lies in the plan's value list (set once by the planner).
    slots: std::sync::OnceLock<Vec<usize>>,
}

fn specs(g: &ir::Graph, ids: &[ir::NodeId]) -> Vec<(ir::DType, Vec<usize>)> {
    ids.iter().map(|&id| (g.node(id).dtype, g.node(id).shape.dims().to_vec())).collect()
}

impl Region {
    /// Runs with the input of each value slot (set by `set_input_slots`) from `input` and the
    /// outputs' data pointers; `what` names the entry point in errors. The caller of each
    /// entry point guarantees live contiguous tensors of the region's types.
    fn run_slots(
        &self,
        py: Python<'_>,
        what: &str,
        mut input: impl FnMut(usize) -> PyResult<usize>,
        outputs: &Bound<'_, PyList>,
        stream: Option<u64>,
    ) -> PyResult<()> {
        let slots = self.slots.get().ok_or_else(|| CompileError::new_err(format!("{what} before set_input_slots")))?;
        if outputs.len() != self.outputs.len() {
            return Err(CompileError::new_err(format!("region has {} outputs, got {}", self.outputs.len(), outputs.len())));
        }
        let ins = slots.iter().map(|&i| input(i)).collect::<PyResult<Vec<_>>>()?;
        let outs = outputs.iter().map(|o| tensor_ptr::data_ptr(&o)).collect::<PyResult<Vec<_>>>()?;
        py.detach(|| {
            // SAFETY: forwarded from the entry points' contracts (see each).
            unsafe { self.engine.run(&self.inputs, &ins, &self.outputs, &outs, stream) }
        })
        .map_err(CompileError::new_err)
    }
}

#[pymethods]
impl Region {
    /// Imports the JSON region and compiles it for `backend` ("auto", "cpu", "cuda",
    /// "interp"); `None` reads `KILN_BACKEND`.
    #[new]
    #[pyo3(signature = (text, backend=None))]
    fn new(py: Python<'_>, text: &str, backend: Option<&str>) -> PyResult<Region> {
        let graph = import(text)?;
        let ir_text = graph.to_string();
        let inputs = specs(&graph, graph.inputs());
        let outputs = specs(&graph, graph.outputs());
        let backend = backend.map(str::to_string);
        let engine = py.detach(move || Engine::compile(graph, backend.as_deref())).map_err(CompileError::new_err)?;
        Ok(Region { engine, ir_text, inputs, outputs, slots: std::sync::OnceLock::new() })
    }

    /// Runs on PyTorch's memory: one pointer per input (contiguous, of the input's dtype and
    /// shape) and one per output (contiguous, allocated by the caller). The caller (the
    /// Python package) guarantees the types; counts are checked here. CUDA regions take
    /// device pointers and `stream`, the `cudaStream_t` to enqueue on (PyTorch's current
    /// stream's `cuda_stream`); the call returns once the work is enqueued.
    #[pyo3(signature = (inputs, outputs, stream=None))]
    fn run(&self, py: Python<'_>, inputs: Vec<usize>, outputs: Vec<usize>, stream: Option<u64>) -> PyResult<()> {
        if inputs.len() != self.inputs.len() || outputs.len() != self.outputs.len() {
            return Err(CompileError::new_err(format!(
                "region takes {} inputs and {} outputs, got {} and {}",
                self.inputs.len(),
                self.outputs.len(),
                inputs.len(),
                outputs.len()
            )));
        }
        py.detach(|| {
            // SAFETY: the Python caller passes data_ptr()s of live contiguous tensors whose
            // dtype and shape it checked against `input_meta` / allocated from `output_meta`.
            unsafe { self.engine.run(&self.inputs, &inputs, &self.outputs, &outputs, stream) }
        })
        .map_err(CompileError::new_err)
    }

    /// Sets, once, the index in the plan's value list of each input (for [`Region::run_env`]).
    fn set_input_slots(&self, slots: Vec<usize>) -> PyResult<()> {
        if slots.len() != self.inputs.len() {
            return Err(CompileError::new_err(format!("region takes {} inputs, got {} slots", self.inputs.len(), slots.len())));
        }
        self.slots.set(slots).map_err(|_| CompileError::new_err("the input slots of a region are set once"))
    }

    /// The per-call path: reads each input tensor from the plan's value list `env` at the
    /// slots set by `set_input_slots`, takes the data pointers of those and of `outputs`
    /// (tensors the caller allocated from `output_meta`), and runs, in one call. The caller
    /// guarantees what the guards check: every input is contiguous and of its spec's dtype,
    /// shape and device (the planner calls this only for inputs that are guarded graph
    /// inputs, outputs of other regions, or constants it checked).
    #[pyo3(signature = (env, outputs, stream=None))]
    fn run_env(&self, py: Python<'_>, env: &Bound<'_, PyList>, outputs: &Bound<'_, PyList>, stream: Option<u64>) -> PyResult<()> {
        // SAFETY (of the run): the planner's contract above: live contiguous tensors of the
        // region's types, kept alive by `env` and `outputs` for the call.
        self.run_slots(py, "run_env", |i| tensor_ptr::data_ptr(&env.get_item(i)?), outputs, stream)
    }

    /// `run_env` for a plan that is this region alone, with its leading inputs (the module's
    /// parameters and buffers) at the addresses of `state` (which the caller just checked
    /// with `Addresses.same`): value slot `i < len(state)` is `state`'s pointer `i`, slot
    /// `len(state) + j` is `args[j]`. No pointer of a parameter is read again.
    #[pyo3(signature = (state, args, outputs, stream=None))]
    fn run_static(&self, py: Python<'_>, state: &Bound<'_, tensor_ptr::Addresses>, args: &Bound<'_, PyList>, outputs: &Bound<'_, PyList>, stream: Option<u64>) -> PyResult<()> {
        let fixed = &state.get().ptrs;
        // SAFETY (of the run): as `run_env`; the state's tensors are at the snapshot's
        // addresses (the caller checked them this call) and are kept alive by the module.
        self.run_slots(
            py,
            "run_static",
            |i| match fixed.get(i) {
                Some(&p) => Ok(p),
                None => tensor_ptr::data_ptr(&args.get_item(i - fixed.len())?),
            },
            outputs,
            stream,
        )
    }

    /// The region's IR (after import, before optimization).
    #[getter]
    fn ir_text(&self) -> &str {
        &self.ir_text
    }

    /// `[(dtype, shape)]` of the inputs, PyTorch dtype names.
    #[getter]
    fn input_meta(&self) -> Vec<(&'static str, Vec<usize>)> {
        self.inputs.iter().map(|(d, s)| (json::dtype_to_torch(*d), s.clone())).collect()
    }

    /// `[(dtype, shape)]` of the outputs, PyTorch dtype names.
    #[getter]
    fn output_meta(&self) -> Vec<(&'static str, Vec<usize>)> {
        self.outputs.iter().map(|(d, s)| (json::dtype_to_torch(*d), s.clone())).collect()
    }

    /// One line: backend, ops, kernels, compile times.
    fn summary(&self) -> String {
        self.engine.summary()
    }

    /// The kernel graph (which ops form which kernel), as text.
    fn kernels_text(&self) -> String {
        self.engine.kernels_text()
    }

    /// Kernel launches per call.
    #[getter]
    fn n_kernels(&self) -> usize {
        self.engine.n_kernels()
    }

    /// The backend the region runs on ("cpu", "cuda", "interp").
    #[getter]
    fn backend(&self) -> &'static str {
        self.engine.backend_name()
    }
}

#[pymodule]
fn _kiln(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CompileError", m.py().get_type::<CompileError>())?;
    m.add("UnsupportedNode", m.py().get_type::<UnsupportedNode>())?;
    m.add_function(wrap_pyfunction!(supported_targets, m)?)?;
    m.add_function(wrap_pyfunction!(import_graph, m)?)?;
    m.add_function(wrap_pyfunction!(tensor_ptr::set_tensor_access, m)?)?;
    m.add_class::<tensor_ptr::Addresses>()?;
    m.add_class::<tensor_ptr::Frozen>()?;
    m.add_class::<Region>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
