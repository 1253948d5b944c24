//! The tracer (one graph under construction) and the `Tensor` handle that records into it.

use crate::error::{invalid, FrontendError, Result};
use crate::module::Init;
use ir::{DType, Graph, NodeId, Op, Shape};
use std::cell::{Ref, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

/// Tensors whose element count does not fit this many bits are refused (indexing and size
/// arithmetic everywhere downstream stays far from overflow).
const MAX_NUMEL_BITS: u32 = 48;

/// Records tensor ops into one [`ir::Graph`]. Cheap to clone (a reference-counted handle);
/// every [`Tensor`] holds the tracer it was made by.
#[derive(Clone)]
pub struct Tracer(Rc<State>);

struct State {
    graph: RefCell<Graph>,
    /// Rank-0 constants already made, by (dtype, bits): a scalar used twice is one node.
    scalars: RefCell<HashMap<(DType, u64), NodeId>>,
    /// Parameter inputs, by name, in creation order.
    params: RefCell<Vec<ParamRecord>>,
}

#[derive(Clone, Debug)]
pub(crate) struct ParamRecord {
    pub name: String,
    pub id: NodeId,
    pub init: Init,
}

/// A tensor being traced: a node of the tracer's graph, with its dtype and shape.
/// Cloning is cheap; ops never modify a tensor, they return new ones.
#[derive(Clone)]
pub struct Tensor {
    tracer: Tracer,
    id: NodeId,
    dtype: DType,
    shape: Shape,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({} {}{})", self.id, self.dtype, self.shape)
    }
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tracer(@{}, {} nodes)", self.0.graph.borrow().name(), self.0.graph.borrow().len())
    }
}

/// Checks that a shape's element count is small enough to index.
pub(crate) fn check_numel(op: &'static str, shape: &Shape) -> Result<()> {
    let mut n: u128 = 1;
    for &d in shape.dims() {
        n = n.saturating_mul(d as u128);
    }
    if n >= 1u128 << MAX_NUMEL_BITS {
        return Err(FrontendError::TooLarge { op, shape: shape.clone().into() });
    }
    Ok(())
}

impl Tracer {
    /// A tracer recording into a new, empty graph called `name`.
    pub fn new(name: impl Into<String>) -> Tracer {
        Tracer(Rc::new(State {
            graph: RefCell::new(Graph::new(name)),
            scalars: RefCell::new(HashMap::new()),
            params: RefCell::new(Vec::new()),
        }))
    }

    /// True when both handles are the same tracer.
    pub fn same(&self, other: &Tracer) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// A named graph input (an activation; parameters come from [`crate::Vars::get`]).
    pub fn input(&self, name: impl Into<String>, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        check_numel("input", &shape)?;
        let id = self.0.graph.borrow_mut().input(name, dtype, shape.clone())?;
        Ok(self.wrap(id, dtype, shape))
    }

    /// Declares a parameter input (used by [`crate::Vars`]). Asking again for the same name
    /// with the same type returns the same tensor (weight tying).
    pub(crate) fn param(&self, name: String, dtype: DType, shape: Shape, init: Init) -> Result<Tensor> {
        let existing = self.0.params.borrow().iter().find(|p| p.name == name).map(|p| p.id);
        if let Some(id) = existing {
            let (d, s) = self.type_of(id);
            if d != dtype || s != shape {
                return Err(FrontendError::ParamConflict { name, dtype: d, shape: s.into(), requested_dtype: dtype, requested: shape.into() });
            }
            return Ok(self.wrap(id, d, s));
        }
        let t = self.input(name.clone(), dtype, shape)?;
        self.0.params.borrow_mut().push(ParamRecord { name, id: t.id, init });
        Ok(t)
    }

    pub(crate) fn params(&self) -> Vec<ParamRecord> {
        self.0.params.borrow().clone()
    }

    /// `torch.full(shape, value, dtype=dtype)`.
    pub fn full(&self, value: f64, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        check_numel("full", &shape)?;
        if shape.rank() == 0 {
            return Ok(self.scalar(value, dtype));
        }
        let id = self.0.graph.borrow_mut().full(value, dtype, shape.clone());
        Ok(self.wrap(id, dtype, shape))
    }

    /// `torch.zeros(shape, dtype=dtype)`.
    pub fn zeros(&self, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        self.full(0.0, dtype, shape)
    }

    /// `torch.ones(shape, dtype=dtype)`.
    pub fn ones(&self, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        self.full(1.0, dtype, shape)
    }

    /// A rank-0 constant (PyTorch's wrapped Python number), shared when made twice.
    pub fn scalar(&self, value: f64, dtype: DType) -> Tensor {
        let value = dtype.quantize(value);
        let key = (dtype, ir::Scalar(value).0.to_bits());
        if let Some(&id) = self.0.scalars.borrow().get(&key) {
            return self.wrap(id, dtype, Shape::scalar());
        }
        let id = self.0.graph.borrow_mut().full(value, dtype, Shape::scalar());
        self.0.scalars.borrow_mut().insert(key, id);
        self.wrap(id, dtype, Shape::scalar())
    }

    /// `torch.arange(start, end, step, dtype=dtype)`: `ceil((end - start) / step)` values
    /// `start + i * step`, built from `iota`.
    pub fn arange(&self, start: f64, end: f64, step: f64, dtype: DType) -> Result<Tensor> {
        if !(start.is_finite() && end.is_finite() && step.is_finite()) {
            return Err(invalid("arange", format!("start {start}, end {end} and step {step} must be finite")));
        }
        if step == 0.0 || (end - start) * step < 0.0 {
            return Err(invalid("arange", format!("step {step} does not lead from {start} to {end}")));
        }
        if dtype == DType::Bool {
            return Err(FrontendError::BadDType { op: "arange", dtype, expected: "a numeric dtype" });
        }
        let n = ((end - start) / step).ceil();
        if n >= (1u64 << MAX_NUMEL_BITS) as f64 {
            return Err(invalid("arange", format!("{n} elements is too many")));
        }
        let n = n as usize;
        let id = self.0.graph.borrow_mut().iota(0, dtype, [n])?;
        let iota = self.wrap(id, dtype, Shape::new([n]));
        let mut t = iota;
        if step != 1.0 {
            t = t.mul_same(step)?;
        }
        if start != 0.0 {
            t = t.add_same(start)?;
        }
        Ok(t)
    }

    /// `out[i_0, .., i_n] = i_axis` (the IR's `iota`).
    pub fn iota(&self, axis: usize, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        check_numel("iota", &shape)?;
        let id = self.0.graph.borrow_mut().iota(axis, dtype, shape.clone())?;
        Ok(self.wrap(id, dtype, shape))
    }

    /// Marks `outputs` as the graph's outputs and returns the finished graph: dead code
    /// removed (inputs are always kept) and verified. The tracer can keep recording.
    pub fn finish(&self, outputs: &[&Tensor]) -> Result<Graph> {
        if outputs.is_empty() {
            return Err(invalid("finish", "a traced graph needs at least one output"));
        }
        for o in outputs {
            self.check_owner("finish", o)?;
        }
        let mut g = self.0.graph.borrow().clone();
        g.set_outputs(outputs.iter().map(|t| t.id).collect());
        let g = g.without_dead_code();
        ir::verify::verify(&g)?;
        Ok(g)
    }

    /// The graph recorded so far (borrowed; do not record while holding it).
    pub fn graph(&self) -> Ref<'_, Graph> {
        self.0.graph.borrow()
    }

    /// Adds a non-source op over tensors of this tracer, inferring its type.
    pub(crate) fn push(&self, op_name: &'static str, op: Op, inputs: &[&Tensor]) -> Result<Tensor> {
        for t in inputs {
            self.check_owner(op_name, t)?;
        }
        let ids: Vec<NodeId> = inputs.iter().map(|t| t.id).collect();
        let id = self.0.graph.borrow_mut().add(op, &ids)?;
        let (dtype, shape) = self.type_of(id);
        check_numel(op_name, &shape)?;
        Ok(self.wrap(id, dtype, shape))
    }

    pub(crate) fn check_owner(&self, op: &'static str, t: &Tensor) -> Result<()> {
        if self.same(&t.tracer) { Ok(()) } else { Err(FrontendError::TracerMismatch { op }) }
    }

    fn type_of(&self, id: NodeId) -> (DType, Shape) {
        let g = self.0.graph.borrow();
        let n = g.node(id);
        (n.dtype, n.shape.clone())
    }

    fn wrap(&self, id: NodeId, dtype: DType, shape: Shape) -> Tensor {
        Tensor { tracer: self.clone(), id, dtype, shape }
    }
}

impl Tensor {
    /// The node this tensor is in the tracer's graph.
    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The sizes, like `x.shape` in PyTorch.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }
    /// `x.size(dim)`, negative dims allowed.
    pub fn size(&self, dim: isize) -> Result<usize> {
        Ok(self.shape.dims()[self.dim_index("size", dim)?])
    }

    /// Resolves a PyTorch dim (negative counts from the end) against this tensor's rank.
    pub(crate) fn dim_index(&self, op: &'static str, dim: isize) -> Result<usize> {
        resolve_dim(op, dim, self.rank())
    }

    pub(crate) fn push(&self, op_name: &'static str, op: Op, others: &[&Tensor]) -> Result<Tensor> {
        let mut ins = Vec::with_capacity(others.len() + 1);
        ins.push(self);
        ins.extend_from_slice(others);
        self.tracer.push(op_name, op, &ins)
    }

    /// A scalar constant of this tensor's dtype.
    pub(crate) fn scalar_like(&self, value: f64) -> Tensor {
        self.tracer.scalar(value, self.dtype)
    }
}

/// Resolves a PyTorch dim against a rank (`-1` is the last dim).
pub(crate) fn resolve_dim(op: &'static str, dim: isize, rank: usize) -> Result<usize> {
    let r = rank as isize;
    let d = if dim < 0 { dim.checked_add(r) } else { Some(dim) };
    match d {
        Some(d) if d >= 0 && d < r => Ok(d as usize),
        _ => Err(FrontendError::BadDim { op, dim, rank }),
    }
}
