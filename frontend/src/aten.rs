//! Import of PyTorch ATen graphs (what `make_fx` / AOTAutograd capture) into an [`ir::Graph`].
//!
//! The Python package serializes each supported region of a captured FX graph into an
//! [`AtenGraph`]: inputs with dtype and shape, nodes in topological order with the ATen
//! target (`"aten.add.Tensor"`), their arguments *by schema name* (the Python side normalizes
//! positional arguments with the op's schema) and the dtype/shape PyTorch computed for each
//! result. [`import`] maps every node through the tracing [`Tensor`] API, so decompositions
//! (`_softmax`, `native_layer_norm`, `gelu`, `addmm`, `var_mean`, ...) are the same ones Rust
//! models get, and checks each result's dtype and shape against PyTorch's: a mismatch is an
//! error naming the node, never a silently different graph. The caller runs such a node in
//! PyTorch instead ([`AtenError::node`] says which).
//!
//! [`supported_targets`] lists every target the importer maps.

use crate::error::FrontendError;
use crate::movement::cat;
use crate::promote::Operand;
use crate::tracer::{resolve_dim, Tensor, Tracer};
use crate::GeluApproximate;
use ir::{DType, Op, Scalar, Shape};
use std::collections::BTreeMap;
use thiserror::Error;

/// One argument of an ATen node.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// The value of graph input `i` (for `i < inputs.len()`) or of node `i - inputs.len()`.
    Value(usize),
    Int(i64),
    Float(f64),
    Bool(bool),
    None,
    Str(String),
    /// A `torch.dtype`; `Err` holds PyTorch's name of a dtype Kiln has no counterpart for.
    DType(Result<DType, String>),
    List(Vec<Arg>),
    /// Anything the importer never reads (devices, layouts, memory formats), as text.
    Other(String),
}

/// The dtype and shape PyTorch computed for a value.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    /// `Err` holds the name of a dtype Kiln lacks (`"float64"`).
    pub dtype: Result<DType, String>,
    pub shape: Vec<usize>,
}

/// A graph input (an activation, parameter or buffer of the captured function).
#[derive(Clone, Debug, PartialEq)]
pub struct AtenInput {
    pub name: String,
    pub meta: TensorMeta,
}

/// One call of an ATen op (or `getitem` on a multi-output op).
#[derive(Clone, Debug, PartialEq)]
pub struct AtenNode {
    /// `str(op_overload)`, e.g. `"aten.addmm.default"`; `"getitem"` for `operator.getitem`.
    pub target: String,
    /// Arguments by schema name (`self`, `other`, `alpha`, ...); `getitem` uses `self`, `index`.
    pub args: BTreeMap<String, Arg>,
    /// What PyTorch computed: one entry per output (one for single-output ops).
    pub out: Vec<Option<TensorMeta>>,
}

/// A region of an ATen graph, ready to import.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AtenGraph {
    pub name: String,
    pub inputs: Vec<AtenInput>,
    pub nodes: Vec<AtenNode>,
    /// [`Arg::Value`] references to the results the region returns.
    pub outputs: Vec<usize>,
}

/// Why a graph (or one node of it) could not be imported.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum AtenError {
    /// A node could not be mapped; running it in PyTorch instead is always correct.
    #[error("node {index} ({target}): {reason}")]
    Node { index: usize, target: String, reason: String },
    /// The graph itself is malformed (bad references, a non-tensor output, a bad input).
    #[error("aten graph {name:?}: {reason}")]
    Graph { name: String, reason: String },
}

impl AtenError {
    /// The index of the node that failed, when one did.
    pub fn node(&self) -> Option<usize> {
        match self {
            AtenError::Node { index, .. } => Some(*index),
            AtenError::Graph { .. } => None,
        }
    }
}

/// Every ATen target [`import`] maps (some only for certain arguments or dtypes; the importer
/// says which node failed when it cannot).
pub fn supported_targets() -> &'static [&'static str] {
    SUPPORTED
}

const SUPPORTED: &[&str] = &[
    "getitem",
    // arithmetic
    "aten.add.Tensor", "aten.add.Scalar", "aten.add_.Tensor", "aten.add_.Scalar",
    "aten.sub.Tensor", "aten.sub.Scalar", "aten.rsub.Tensor", "aten.rsub.Scalar",
    "aten.mul.Tensor", "aten.mul.Scalar", "aten.mul_.Tensor", "aten.mul_.Scalar",
    "aten.div.Tensor", "aten.div.Scalar", "aten.div_.Tensor", "aten.div_.Scalar",
    "aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar",
    "aten.maximum.default", "aten.minimum.default",
    "aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default", "aten.hardtanh.default",
    "aten.clamp.Tensor", "aten.clamp_min.Tensor", "aten.clamp_max.Tensor", "aten.isnan.default",
    // unary
    "aten.neg.default", "aten.abs.default", "aten.exp.default", "aten.log.default",
    "aten.sqrt.default", "aten.rsqrt.default", "aten.reciprocal.default", "aten.tanh.default",
    "aten.erf.default", "aten.sin.default", "aten.cos.default", "aten.floor.default",
    "aten.ceil.default", "aten.sigmoid.default", "aten.relu.default", "aten.silu.default",
    "aten.gelu.default", "aten.leaky_relu.default",
    // comparison, logic, selection
    "aten.eq.Tensor", "aten.eq.Scalar", "aten.ne.Tensor", "aten.ne.Scalar",
    "aten.lt.Tensor", "aten.lt.Scalar", "aten.le.Tensor", "aten.le.Scalar",
    "aten.gt.Tensor", "aten.gt.Scalar", "aten.ge.Tensor", "aten.ge.Scalar",
    "aten.logical_not.default", "aten.logical_and.default", "aten.logical_or.default",
    "aten.logical_xor.default", "aten.bitwise_not.default", "aten.bitwise_and.Tensor",
    "aten.bitwise_or.Tensor",
    "aten.where.self", "aten.masked_fill.Scalar", "aten.masked_fill.Tensor",
    // dtype and copies
    "aten._to_copy.default", "aten.clone.default", "aten.alias.default", "aten.alias_copy.default",
    "aten.detach.default", "aten.detach_copy.default", "aten.lift_fresh_copy.default", "aten.contiguous.default",
    // reductions and row ops
    "aten.sum.default", "aten.sum.dim_IntList", "aten.mean.default", "aten.mean.dim",
    "aten.amax.default", "aten.amin.default", "aten.max.default", "aten.min.default",
    "aten.max.dim", "aten.min.dim",
    "aten.var.correction", "aten.var.dim", "aten.std.correction", "aten.var_mean.correction",
    "aten._softmax.default", "aten._log_softmax.default", "aten.softmax.int", "aten.log_softmax.int",
    "aten.native_layer_norm.default", "aten.layer_norm.default", "aten.rms_norm.default",
    // contraction
    "aten.mm.default", "aten.bmm.default", "aten.matmul.default", "aten.addmm.default",
    "aten.linear.default", "aten.dot.default", "aten.mv.default",
    "aten._scaled_dot_product_flash_attention_for_cpu.default",
    "aten._scaled_dot_product_efficient_attention.default",
    "aten._scaled_dot_product_flash_attention.default",
    "aten.scaled_dot_product_attention.default",
    // movement
    "aten.view.default", "aten.view_copy.default", "aten._unsafe_view.default", "aten.reshape.default",
    "aten.permute.default", "aten.permute_copy.default",
    "aten.transpose.int", "aten.transpose_copy.int", "aten.t.default", "aten.t_copy.default",
    "aten.expand.default", "aten.expand_copy.default",
    "aten.unsqueeze.default", "aten.unsqueeze_copy.default",
    "aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default",
    "aten.squeeze_copy.dim", "aten.squeeze_copy.dims", "aten.squeeze_copy.default",
    "aten.slice.Tensor", "aten.slice_copy.Tensor", "aten.select.int", "aten.select_copy.int",
    "aten.narrow.default", "aten.split.Tensor", "aten.split_with_sizes.default",
    "aten.split_copy.Tensor", "aten.split_with_sizes_copy.default", "aten.unbind.int", "aten.unbind_copy.int",
    "aten.index.Tensor", "aten.copy.default",
    "aten.cat.default", "aten.stack.default", "aten.constant_pad_nd.default", "aten.flatten.using_ints",
    // creation
    "aten.full.default", "aten.ones.default", "aten.zeros.default", "aten.scalar_tensor.default",
    "aten.full_like.default", "aten.ones_like.default", "aten.zeros_like.default",
    "aten.arange.default", "aten.arange.start", "aten.arange.start_step",
    "aten.tril.default", "aten.triu.default",
];

/// A value during import: a tensor, or the several results of a multi-output op (an element
/// that cannot be built holds the reason, reported only if a `getitem` asks for it).
#[derive(Clone)]
enum Val {
    Tensor(Tensor),
    Tuple(Vec<Result<Tensor, String>>),
}

/// Imports `g` into a verified [`ir::Graph`] named `g.name`, with inputs in `g.inputs` order
/// and outputs in `g.outputs` order.
pub fn import(g: &AtenGraph) -> Result<ir::Graph, AtenError> {
    let gerr = |reason: String| AtenError::Graph { name: g.name.clone(), reason };
    let tr = Tracer::new(if g.name.is_empty() { "aten" } else { g.name.as_str() });
    let mut vals: Vec<Val> = Vec::with_capacity(g.inputs.len() + g.nodes.len());
    let inner = std::cell::RefCell::new(Vec::new());
    for (i, inp) in g.inputs.iter().enumerate() {
        let dtype = inp.meta.dtype.clone().map_err(|d| gerr(format!("input {i} ({:?}) has dtype {d}, which Kiln does not support", inp.name)))?;
        let t = tr.input(inp.name.clone(), dtype, Shape::new(inp.meta.shape.iter().copied())).map_err(|e| gerr(format!("input {i}: {e}")))?;
        vals.push(Val::Tensor(t));
    }
    for (index, node) in g.nodes.iter().enumerate() {
        let nerr = |reason: String| AtenError::Node { index, target: node.target.clone(), reason };
        let cx = Cx { tr: &tr, vals: &vals, node, inner: &inner };
        let v = cx.lower().map_err(nerr)?;
        check_meta(&v, &node.out).map_err(nerr)?;
        vals.push(v);
    }
    let mut outs = Vec::with_capacity(g.outputs.len());
    for &o in &g.outputs {
        match vals.get(o) {
            Some(Val::Tensor(t)) => outs.push(t.clone()),
            Some(Val::Tuple(_)) => return Err(gerr(format!("output value {o} is a tuple (return its elements through getitem)"))),
            None => return Err(gerr(format!("output refers to value {o}, which does not exist"))),
        }
    }
    let refs: Vec<&Tensor> = outs.iter().collect();
    tr.finish(&refs).map_err(|e| gerr(e.to_string()))
}

/// Checks what the importer built against what PyTorch computed.
fn check_meta(v: &Val, out: &[Option<TensorMeta>]) -> Result<(), String> {
    let check = |t: &Tensor, m: &TensorMeta| -> Result<(), String> {
        let dtype = m.dtype.clone().map_err(|d| format!("PyTorch computes dtype {d}, which Kiln does not support"))?;
        if t.dtype() != dtype || t.dims() != m.shape.as_slice() {
            return Err(format!(
                "Kiln's decomposition gives {}{} but PyTorch computes {}{:?}",
                t.dtype(), t.shape(), dtype, m.shape
            ));
        }
        Ok(())
    };
    match v {
        Val::Tensor(t) => match out.first() {
            Some(Some(m)) => check(t, m),
            _ => Err("PyTorch reported no tensor result for this node".into()),
        },
        Val::Tuple(ts) => {
            for (t, m) in ts.iter().zip(out) {
                if let (Ok(t), Some(m)) = (t, m) {
                    check(t, m)?;
                }
            }
            Ok(())
        }
    }
}

/// Lowering context of one node.
struct Cx<'a> {
    tr: &'a Tracer,
    vals: &'a [Val],
    node: &'a AtenNode,
    /// Tensors built inside a node's lowering that a later view may return (see `bmm`).
    inner: &'a std::cell::RefCell<Vec<Tensor>>,
}

type R<T> = Result<T, String>;

fn fe(e: FrontendError) -> String {
    e.to_string()
}

impl Cx<'_> {
    fn arg(&self, name: &str) -> Option<&Arg> {
        match self.node.args.get(name) {
            None | Some(Arg::None) => None,
            Some(a) => Some(a),
        }
    }
    fn tensor_of(&self, a: &Arg, name: &str) -> R<Tensor> {
        match a {
            Arg::Value(i) => match self.vals.get(*i) {
                Some(Val::Tensor(t)) => Ok(t.clone()),
                Some(Val::Tuple(_)) => Err(format!("argument {name:?} is a tuple, not a tensor")),
                None => Err(format!("argument {name:?} refers to value {i}, which is not defined before this node")),
            },
            other => Err(format!("argument {name:?} should be a tensor, got {other:?}")),
        }
    }
    fn t(&self, name: &str) -> R<Tensor> {
        let a = self.arg(name).ok_or_else(|| format!("missing tensor argument {name:?}"))?;
        self.tensor_of(a, name)
    }
    fn opt_t(&self, name: &str) -> R<Option<Tensor>> {
        self.arg(name).map(|a| self.tensor_of(a, name)).transpose()
    }
    fn tensors(&self, name: &str) -> R<Vec<Tensor>> {
        match self.arg(name) {
            Some(Arg::List(items)) => items.iter().map(|a| self.tensor_of(a, name)).collect(),
            other => Err(format!("argument {name:?} should be a list of tensors, got {other:?}")),
        }
    }
    /// A tensor or a number (PyTorch `Scalar`), as a promotion operand.
    fn operand(&self, name: &str) -> R<Operand> {
        match self.arg(name) {
            Some(Arg::Value(_)) => Ok(Operand::Tensor(self.t(name)?)),
            Some(Arg::Int(v)) => Ok(Operand::Int(*v)),
            Some(Arg::Float(v)) => Ok(Operand::Float(*v)),
            Some(Arg::Bool(v)) => Ok(Operand::Bool(*v)),
            other => Err(format!("argument {name:?} should be a tensor or number, got {other:?}")),
        }
    }
    fn opt_num(&self, name: &str) -> R<Option<f64>> {
        match self.arg(name) {
            None => Ok(None),
            Some(Arg::Int(v)) => Ok(Some(*v as f64)),
            Some(Arg::Float(v)) => Ok(Some(*v)),
            Some(Arg::Bool(v)) => Ok(Some(*v as u8 as f64)),
            Some(other) => Err(format!("argument {name:?} should be a number, got {other:?}")),
        }
    }
    fn num(&self, name: &str, default: f64) -> R<f64> {
        Ok(self.opt_num(name)?.unwrap_or(default))
    }
    fn opt_int(&self, name: &str) -> R<Option<i64>> {
        match self.arg(name) {
            None => Ok(None),
            Some(Arg::Int(v)) => Ok(Some(*v)),
            Some(Arg::Bool(v)) => Ok(Some(*v as i64)),
            Some(other) => Err(format!("argument {name:?} should be an integer, got {other:?}")),
        }
    }
    fn int(&self, name: &str, default: i64) -> R<i64> {
        Ok(self.opt_int(name)?.unwrap_or(default))
    }
    fn req_int(&self, name: &str) -> R<i64> {
        self.opt_int(name)?.ok_or_else(|| format!("missing integer argument {name:?}"))
    }
    fn flag(&self, name: &str, default: bool) -> R<bool> {
        match self.arg(name) {
            None => Ok(default),
            Some(Arg::Bool(v)) => Ok(*v),
            Some(Arg::Int(v)) => Ok(*v != 0),
            Some(other) => Err(format!("argument {name:?} should be a bool, got {other:?}")),
        }
    }
    /// An int list (a lone int counts as a list of one); `None` when absent.
    fn opt_ints(&self, name: &str) -> R<Option<Vec<i64>>> {
        match self.arg(name) {
            None => Ok(None),
            Some(Arg::Int(v)) => Ok(Some(vec![*v])),
            Some(Arg::List(items)) => items
                .iter()
                .map(|a| match a {
                    Arg::Int(v) => Ok(*v),
                    other => Err(format!("argument {name:?} should hold integers, got {other:?}")),
                })
                .collect::<R<Vec<_>>>()
                .map(Some),
            Some(other) => Err(format!("argument {name:?} should be a list of integers, got {other:?}")),
        }
    }
    fn ints(&self, name: &str) -> R<Vec<i64>> {
        self.opt_ints(name)?.ok_or_else(|| format!("missing integer list {name:?}"))
    }
    fn opt_dtype(&self, name: &str) -> R<Option<DType>> {
        match self.arg(name) {
            None => Ok(None),
            Some(Arg::DType(Ok(d))) => Ok(Some(*d)),
            Some(Arg::DType(Err(d))) => Err(format!("dtype {d} is not supported by Kiln")),
            Some(other) => Err(format!("argument {name:?} should be a dtype, got {other:?}")),
        }
    }
    fn opt_str(&self, name: &str) -> R<Option<&str>> {
        match self.arg(name) {
            None => Ok(None),
            Some(Arg::Str(s)) => Ok(Some(s)),
            Some(other) => Err(format!("argument {name:?} should be a string, got {other:?}")),
        }
    }
    /// PyTorch's result metadata for output `i`.
    fn meta(&self, i: usize) -> R<(DType, Shape)> {
        match self.node.out.get(i) {
            Some(Some(m)) => {
                let d = m.dtype.clone().map_err(|d| format!("PyTorch computes dtype {d}, which Kiln does not support"))?;
                Ok((d, Shape::new(m.shape.iter().copied())))
            }
            _ => Err(format!("PyTorch reported no tensor for result {i}")),
        }
    }
    /// Refuses arguments Kiln cannot honour (only their default is accepted).
    fn require_absent(&self, names: &[&str]) -> R<()> {
        for n in names {
            if let Some(a) = self.arg(n) {
                match a {
                    Arg::Bool(false) | Arg::Other(_) => {}
                    _ => return Err(format!("argument {n:?} = {a:?} is not supported")),
                }
            }
        }
        Ok(())
    }
    /// Reduction dims: `None` or `[]` means every dim.
    fn dims_arg(&self, name: &str) -> R<Vec<isize>> {
        Ok(self.opt_ints(name)?.unwrap_or_default().into_iter().map(|d| d as isize).collect())
    }
    /// The output dtype when a `dtype=` argument is given (`sum`, `mean`, `softmax`).
    fn cast_in(&self, x: Tensor) -> R<Tensor> {
        match self.opt_dtype("dtype")? {
            Some(d) => x.to_dtype(d).map_err(fe),
            None => Ok(x),
        }
    }

    fn lower(&self) -> R<Val> {
        let target = self.node.target.as_str();
        let one = |t: Result<Tensor, FrontendError>| t.map(Val::Tensor).map_err(fe);
        let name = target.strip_prefix("aten.").unwrap_or(target);
        let (base, overload) = name.rsplit_once('.').unwrap_or((name, "default"));
        // `op_` (in place) is lowered as `op` when the Python side has checked that nothing
        // else reads the mutated tensor; `op_copy` (functionalized views) is `op`.
        let base = if base == "_to_copy" { base } else { base.strip_suffix("_copy").unwrap_or(base) };
        let base = if base.ends_with('_') && !base.starts_with('_') { &base[..base.len() - 1] } else { base };
        match (base, overload) {
            ("getitem", _) => self.getitem(),

            ("add", _) | ("sub", _) => {
                let x = self.operand("self")?;
                let mut y = self.operand("other")?;
                let alpha = self.opt_num("alpha")?;
                if let Some(a) = alpha.filter(|&a| a != 1.0) {
                    y = match y {
                        Operand::Tensor(t) => {
                            let a = if t.dtype().is_float() || a.fract() != 0.0 { Operand::Float(a) } else { Operand::Int(a as i64) };
                            Operand::Tensor(t.mul(a).map_err(fe)?)
                        }
                        Operand::Float(v) => Operand::Float(v * a),
                        Operand::Int(v) => Operand::Int(v * a as i64),
                        Operand::Bool(v) => Operand::Float(v as u8 as f64 * a),
                    };
                }
                let x = self.tensor_operand(x)?;
                one(if base == "add" { x.add(y) } else { x.sub(y) })
            }
            ("rsub", _) => {
                let x = self.t("self")?;
                let other = self.operand("other")?;
                if self.num("alpha", 1.0)? != 1.0 {
                    return Err("rsub with alpha != 1 is not supported".into());
                }
                one(x.rsub(other))
            }
            ("mul", _) => one(self.t("self")?.mul(self.operand("other")?)),
            ("div", _) => {
                if self.opt_str("rounding_mode")?.is_some() {
                    return Err("div with a rounding_mode is not supported".into());
                }
                one(self.t("self")?.div(self.operand("other")?))
            }
            ("pow", "Scalar") => {
                let base = self.operand("self")?;
                let e = self.t("exponent")?;
                let b = match base {
                    Operand::Tensor(t) => t,
                    o => o.materialize(self.tr, crate::promote::result_type(&[&o, &Operand::Tensor(e.clone())])).map_err(fe)?,
                };
                one(b.pow(e))
            }
            ("pow", _) => one(self.t("self")?.pow(self.operand("exponent")?)),
            ("maximum", _) => one(self.t("self")?.maximum(self.t("other")?)),
            ("minimum", _) => one(self.t("self")?.minimum(self.t("other")?)),
            ("clamp" | "clamp_min" | "clamp_max", "Tensor") => {
                // min then max, as PyTorch's clamp (NaN propagates through maximum/minimum)
                let mut t = self.t("self")?;
                if let Some(lo) = self.opt_t("min")? {
                    t = t.maximum(&lo).map_err(fe)?;
                }
                if let Some(hi) = self.opt_t("max")? {
                    t = t.minimum(&hi).map_err(fe)?;
                }
                Ok(Val::Tensor(t))
            }
            ("isnan", _) => {
                let x = self.t("self")?;
                one(x.ne(&x))
            }
            ("clamp", _) => self.clamp(self.opt_num("min")?, self.opt_num("max")?),
            ("clamp_min", _) => self.clamp(self.opt_num("min")?, None),
            ("clamp_max", _) => self.clamp(None, self.opt_num("max")?),
            ("hardtanh", _) => self.clamp(Some(self.num("min_val", -1.0)?), Some(self.num("max_val", 1.0)?)),

            ("neg", _) => one(self.t("self")?.neg()),
            ("abs", _) => one(self.t("self")?.abs()),
            ("exp", _) => one(self.t("self")?.exp()),
            ("log", _) => one(self.t("self")?.log()),
            ("sqrt", _) => one(self.t("self")?.sqrt()),
            ("rsqrt", _) => one(self.t("self")?.rsqrt()),
            ("reciprocal", _) => one(self.t("self")?.recip()),
            ("tanh", _) => one(self.t("self")?.tanh()),
            ("erf", _) => one(self.t("self")?.erf()),
            ("sin", _) => one(self.t("self")?.sin()),
            ("cos", _) => one(self.t("self")?.cos()),
            ("floor", _) => one(self.t("self")?.floor()),
            ("ceil", _) => {
                let x = self.t("self")?;
                if x.dtype().is_int() {
                    return Ok(Val::Tensor(x));
                }
                one(x.neg().and_then(|n| n.floor()).and_then(|f| f.neg()))
            }
            ("sigmoid", _) => one(self.t("self")?.sigmoid()),
            ("relu", _) => one(self.t("self")?.relu()),
            ("silu", _) => one(self.t("self")?.silu()),
            ("gelu", _) => {
                let approx = match self.opt_str("approximate")?.unwrap_or("none") {
                    "none" => GeluApproximate::None,
                    "tanh" => GeluApproximate::Tanh,
                    other => return Err(format!("gelu approximate={other:?} is not supported")),
                };
                one(self.t("self")?.gelu_with(approx))
            }
            ("leaky_relu", _) => {
                let x = self.t("self")?;
                let slope = self.num("negative_slope", 0.01)?;
                let pos = x.gt(0.0).map_err(fe)?;
                one(pos.where_(&x, x.mul(slope).map_err(fe)?))
            }

            ("eq" | "ne" | "lt" | "le" | "gt" | "ge", _) => {
                let x = self.t("self")?;
                let y = self.operand("other")?;
                one(match base {
                    "eq" => x.eq(y),
                    "ne" => x.ne(y),
                    "lt" => x.lt(y),
                    "le" => x.le(y),
                    "gt" => x.gt(y),
                    _ => x.ge(y),
                })
            }
            ("logical_not", _) => one(self.t("self")?.logical_not()),
            ("logical_and", _) => one(self.t("self")?.logical_and(self.t("other")?)),
            ("logical_or", _) => one(self.t("self")?.logical_or(self.t("other")?)),
            ("logical_xor", _) => {
                let a = self.t("self")?.to_dtype(DType::Bool).map_err(fe)?;
                let b = self.t("other")?.to_dtype(DType::Bool).map_err(fe)?;
                one(a.ne(&b))
            }
            ("bitwise_not" | "bitwise_and" | "bitwise_or", _) => {
                let x = self.t("self")?;
                if x.dtype() != DType::Bool {
                    return Err(format!("{base} is supported on bool tensors only, got {}", x.dtype()));
                }
                match base {
                    "bitwise_not" => one(x.logical_not()),
                    _ => {
                        let y = self.t("other")?;
                        if y.dtype() != DType::Bool {
                            return Err(format!("{base} is supported on bool tensors only, got {}", y.dtype()));
                        }
                        one(if base == "bitwise_and" { x.logical_and(&y) } else { x.logical_or(&y) })
                    }
                }
            }
            ("where", "self") => one(self.t("condition")?.where_(self.operand("self")?, self.operand("other")?)),
            ("masked_fill", _) => one(self.t("self")?.masked_fill(&self.t("mask")?, self.operand("value")?)),

            ("_to_copy", _) => {
                self.require_absent(&["layout", "pin_memory", "non_blocking"])?;
                let x = self.t("self")?;
                match self.opt_dtype("dtype")? {
                    Some(d) => one(x.to_dtype(d)),
                    None => Ok(Val::Tensor(x)),
                }
            }
            ("clone" | "alias" | "detach" | "lift_fresh" | "contiguous", _) => Ok(Val::Tensor(self.t("self")?)),

            ("sum", _) => {
                let x = self.cast_in(self.t("self")?)?;
                one(x.sum(self.dims_arg("dim")?, self.flag("keepdim", false)?))
            }
            ("mean", _) => {
                let x = self.cast_in(self.t("self")?)?;
                one(x.mean(self.dims_arg("dim")?, self.flag("keepdim", false)?))
            }
            ("amax", _) => one(self.t("self")?.amax(self.dims_arg("dim")?, self.flag("keepdim", false)?)),
            ("amin", _) => one(self.t("self")?.amin(self.dims_arg("dim")?, self.flag("keepdim", false)?)),
            ("max" | "min", "default") => {
                let x = self.t("self")?;
                one(if base == "max" { x.max_all() } else { x.min_all() })
            }
            ("max" | "min", "dim") => {
                let x = self.t("self")?;
                let dim = self.req_int("dim")? as isize;
                let keep = self.flag("keepdim", false)?;
                let v = if base == "max" { x.max(dim, keep) } else { x.min(dim, keep) };
                Ok(Val::Tuple(vec![v.map_err(fe), Err(format!("{base}.dim indices (argmax/argmin) are not supported"))]))
            }
            ("var" | "std" | "var_mean", _) => {
                let x = self.t("self")?;
                let dims = self.dims_arg("dim")?;
                let correction = match overload {
                    "dim" => {
                        if self.flag("unbiased", true)? { 1.0 } else { 0.0 }
                    }
                    _ => self.num("correction", 1.0)?,
                };
                let keep = self.flag("keepdim", false)?;
                match base {
                    "var" => one(x.var(dims, correction, keep)),
                    "std" => one(x.std(dims, correction, keep)),
                    _ => {
                        let v = x.var(dims.clone(), correction, keep).map_err(fe);
                        let m = x.mean(dims, keep).map_err(fe);
                        Ok(Val::Tuple(vec![v, m]))
                    }
                }
            }
            ("_softmax" | "_log_softmax" | "softmax" | "log_softmax", _) => {
                let mut x = self.t("self")?;
                let dim = self.req_int("dim")? as isize;
                if self.flag("half_to_float", false)? {
                    x = x.to_dtype(DType::F32).map_err(fe)?;
                }
                let x = self.cast_in(x)?;
                one(if base.ends_with("log_softmax") { x.log_softmax(dim) } else { x.softmax(dim) })
            }
            ("native_layer_norm" | "layer_norm", _) => self.layer_norm(base == "native_layer_norm"),
            ("rms_norm", _) => {
                let x = self.t("self").or_else(|_| self.t("input"))?;
                let shape = self.usizes("normalized_shape")?;
                let w = self.opt_t("weight")?;
                one(x.rms_norm(&shape, w.as_ref(), self.opt_num("eps")?))
            }

            ("mm" | "bmm" | "matmul" | "dot" | "mv", _) => {
                let x = self.t("self")?;
                let other = if base == "mv" { "vec" } else if base == "dot" { "tensor" } else if base == "matmul" { "other" } else { "mat2" };
                let y = self.t(other)?;
                match base {
                    "bmm" => match self.batched_source(&x, &y) {
                        // `bmm(view(a, [b, m, k]), view(c, [b, k, n]))` of `a, c` with the
                        // same batch dims: PyTorch's `matmul` on 4-D tensors. Import it as
                        // that matmul (as the Rust tracer records it) so attention discovery
                        // sees `q @ kᵀ` and `att @ v` over heads.
                        Some((a, c)) => {
                            let dims = [x.dims()[0], x.dims()[1], y.dims()[2]];
                            let p = a.matmul(&c).map_err(fe)?;
                            self.inner.borrow_mut().push(p.clone());
                            one(p.reshape(dims.map(|d| d as i64).to_vec()))
                        }
                        None => one(x.bmm(&y)),
                    },
                    "mm" if x.rank() != 2 || y.rank() != 2 => Err("mm expects two 2-D tensors".into()),
                    "dot" if x.rank() != 1 || y.rank() != 1 => Err("dot expects two 1-D tensors".into()),
                    "mv" if x.rank() != 2 || y.rank() != 1 => Err("mv expects a matrix and a vector".into()),
                    _ => one(x.matmul(&y)),
                }
            }
            ("addmm", _) => {
                let bias = self.t("self")?;
                let (m1, m2) = (self.t("mat1")?, self.t("mat2")?);
                if m1.rank() != 2 || m2.rank() != 2 {
                    return Err("addmm expects 2-D mat1 and mat2".into());
                }
                let (beta, alpha) = (self.num("beta", 1.0)?, self.num("alpha", 1.0)?);
                let mut p = m1.matmul(&m2).map_err(fe)?;
                if alpha != 1.0 {
                    p = p.mul(alpha).map_err(fe)?;
                }
                if beta == 0.0 {
                    return Ok(Val::Tensor(p));
                }
                let b = if beta != 1.0 { bias.mul(beta).map_err(fe)? } else { bias };
                one(p.add(&b))
            }
            ("linear", _) => {
                let x = self.t("input")?;
                let w = self.t("weight")?;
                let b = self.opt_t("bias")?;
                one(x.linear(&w, b.as_ref()))
            }
            (b, _) if b.starts_with("_scaled_dot_product") || b == "scaled_dot_product_attention" => self.sdpa(b),

            ("view" | "_unsafe_view" | "reshape", _) => {
                let x = self.t("self")?;
                let size = self.ints(if self.arg("size").is_some() { "size" } else { "shape" })?;
                let y = x.reshape(size).map_err(fe)?;
                // `view(view(a, s), a.shape)` is `a` (ATen's matmul flattens batch dims and
                // views the result back): the optimizer then sees `a` itself
                match self.reshape_source(&x) {
                    Some(a) if a.dims() == y.dims() => Ok(Val::Tensor(a)),
                    _ => Ok(Val::Tensor(y)),
                }
            }
            ("permute", _) => one(self.t("self")?.permute(self.ints("dims")?)),
            ("transpose", _) => one(self.t("self")?.transpose(self.req_int("dim0")? as isize, self.req_int("dim1")? as isize)),
            ("t", _) => one(self.t("self")?.t()),
            ("expand", _) => one(self.t("self")?.expand(self.ints("size")?)),
            ("unsqueeze", _) => one(self.t("self")?.unsqueeze(self.req_int("dim")? as isize)),
            ("squeeze", _) => {
                let x = self.t("self")?;
                match self.opt_ints("dim")? {
                    None => one(x.squeeze_all()),
                    Some(dims) => {
                        // squeeze each listed size-1 dim (PyTorch ignores the others)
                        let r = x.rank().max(1);
                        let mut axes = dims.iter().map(|&d| resolve_dim("squeeze", d as isize, r).map_err(fe)).collect::<R<Vec<_>>>()?;
                        axes.sort_unstable();
                        axes.dedup();
                        let mut y = x;
                        for &a in axes.iter().rev() {
                            y = if y.rank() == 0 { y } else { y.squeeze(a as isize).map_err(fe)? };
                        }
                        Ok(Val::Tensor(y))
                    }
                }
            }
            ("slice", _) => {
                let x = self.t("self")?;
                let dim = self.int("dim", 0)? as isize;
                let start = self.opt_int("start")?.unwrap_or(0);
                let end = self.opt_int("end")?.unwrap_or(i64::MAX);
                let step = self.int("step", 1)?;
                if step < 1 {
                    return Err(format!("slice step {step} must be positive"));
                }
                let clamp = |v: i64| v.clamp(isize::MIN as i64, isize::MAX as i64) as isize;
                one(x.slice(dim, clamp(start), clamp(end), step as usize))
            }
            ("select", _) => {
                let x = self.t("self")?;
                let dim = self.req_int("dim")? as isize;
                let idx = self.req_int("index")? as isize;
                one(x.narrow(dim, idx, 1).and_then(|y| y.squeeze(dim)))
            }
            ("narrow", _) => {
                let x = self.t("self")?;
                let len = self.req_int("length")?;
                if len < 0 {
                    return Err(format!("narrow length {len} must be >= 0"));
                }
                one(x.narrow(self.req_int("dim")? as isize, self.req_int("start")? as isize, len as usize))
            }
            ("split", _) => {
                let x = self.t("self")?;
                let dim = self.int("dim", 0)? as isize;
                let size = self.req_int("split_size")?;
                if size < 1 {
                    return Err(format!("split_size {size} must be >= 1"));
                }
                let parts = x.split(size as usize, dim).map_err(fe)?;
                Ok(Val::Tuple(parts.into_iter().map(Ok).collect()))
            }
            ("split_with_sizes", _) => {
                let x = self.t("self")?;
                let dim = self.int("dim", 0)? as isize;
                let sizes = self.usizes("split_sizes")?;
                let axis = resolve_dim("split_with_sizes", dim, x.rank()).map_err(fe)?;
                if sizes.iter().sum::<usize>() != x.dims()[axis] {
                    return Err(format!("split sizes {sizes:?} do not add up to dim {axis} of size {}", x.dims()[axis]));
                }
                let mut start = 0;
                let mut parts = Vec::with_capacity(sizes.len());
                for s in sizes {
                    parts.push(x.narrow(axis as isize, start as isize, s).map_err(fe));
                    start += s;
                }
                Ok(Val::Tuple(parts))
            }
            ("unbind", _) => {
                let x = self.t("self")?;
                let dim = self.int("dim", 0)? as isize;
                let axis = resolve_dim("unbind", dim, x.rank()).map_err(fe)?;
                let parts = (0..x.dims()[axis])
                    .map(|i| x.narrow(axis as isize, i as isize, 1).and_then(|y| y.squeeze(axis as isize)).map_err(fe))
                    .collect();
                Ok(Val::Tuple(parts))
            }
            ("cat" | "stack", _) => {
                let ts = self.tensors("tensors")?;
                let dim = self.int("dim", 0)? as isize;
                let refs: Vec<&Tensor> = ts.iter().collect();
                one(if base == "cat" { cat(&refs, dim) } else { crate::movement::stack(&refs, dim) })
            }
            ("index", "Tensor") => self.index_const(),
            ("copy", _) => {
                // functional `copy(self, src)`: src broadcast to self's shape, in self's dtype
                let x = self.t("self")?;
                let src = self.t("src")?;
                one(src.to_dtype(x.dtype()).and_then(|s| s.expand(x.shape())))
            }
            ("flatten", _) => one(self.t("self")?.flatten(self.int("start_dim", 0)? as isize, self.int("end_dim", -1)? as isize)),
            ("constant_pad_nd", _) => self.pad(),

            ("full" | "ones" | "zeros" | "scalar_tensor", _) => {
                let (dtype, shape) = self.meta(0)?;
                let value = match base {
                    "ones" => 1.0,
                    "zeros" => 0.0,
                    "full" => self.opt_num("fill_value")?.ok_or("full needs a numeric fill_value")?,
                    _ => self.opt_num("s")?.ok_or("scalar_tensor needs a numeric value")?,
                };
                one(self.tr.full(value, dtype, shape))
            }
            ("full_like" | "ones_like" | "zeros_like", _) => {
                self.t("self")?; // the template must be a tensor of this graph
                let (dtype, shape) = self.meta(0)?;
                let value = match base {
                    "ones_like" => 1.0,
                    "zeros_like" => 0.0,
                    _ => self.opt_num("fill_value")?.ok_or("full_like needs a numeric fill_value")?,
                };
                one(self.tr.full(value, dtype, shape))
            }
            ("arange", _) => {
                let (dtype, _) = self.meta(0)?;
                let start = self.num("start", 0.0)?;
                let end = self.opt_num("end")?.ok_or("arange needs an end")?;
                let step = self.num("step", 1.0)?;
                one(self.tr.arange(start, end, step, dtype))
            }
            ("tril", _) => one(self.t("self")?.tril(self.int("diagonal", 0)?)),
            ("triu", _) => one(self.t("self")?.triu(self.int("diagonal", 0)?)),

            _ => Err(format!("{target} is not an op Kiln maps")),
        }
    }

    /// For `bmm(x, y)` where `x` and `y` are reshapes that flatten the batch dims of
    /// `a [B.., m, k]` and `c [B.., k, n]` (same `B..`, at least two of them): `(a, c)`.
    fn batched_source(&self, x: &Tensor, y: &Tensor) -> Option<(Tensor, Tensor)> {
        let a = self.reshape_source(x)?;
        let c = self.reshape_source(y)?;
        let r = a.rank();
        if r < 4 || c.rank() != r || a.dims()[..r - 2] != c.dims()[..r - 2] {
            return None;
        }
        let batch: usize = a.dims()[..r - 2].iter().product();
        let ok = |t: &Tensor, flat: &Tensor| flat.rank() == 3 && flat.dims()[0] == batch && t.dims()[r - 2..] == flat.dims()[1..];
        (ok(&a, x) && ok(&c, y)).then_some((a, c))
    }

    /// The imported value `x` is a reshape of, when `x` is a reshape.
    fn reshape_source(&self, x: &Tensor) -> Option<Tensor> {
        let src = {
            let g = self.tr.graph();
            let n = g.node(x.id());
            match n.op {
                Op::Reshape { .. } => *n.inputs.first()?,
                _ => return None,
            }
        };
        let found = self.vals.iter().rev().find_map(|v| match v {
            Val::Tensor(t) if t.id() == src => Some(t.clone()),
            _ => None,
        });
        found.or_else(|| self.inner.borrow().iter().rev().find(|t| t.id() == src).cloned())
    }

    fn tensor_operand(&self, o: Operand) -> R<Tensor> {
        match o {
            Operand::Tensor(t) => Ok(t),
            _ => Err("the first operand must be a tensor".into()),
        }
    }

    fn usizes(&self, name: &str) -> R<Vec<usize>> {
        self.ints(name)?
            .into_iter()
            .map(|v| usize::try_from(v).map_err(|_| format!("argument {name:?} holds a negative size {v}")))
            .collect()
    }

    fn getitem(&self) -> R<Val> {
        let idx = self.req_int("index")?;
        match self.arg("self") {
            Some(Arg::Value(i)) => match self.vals.get(*i) {
                Some(Val::Tuple(items)) => {
                    let k = usize::try_from(idx).ok().filter(|&k| k < items.len()).ok_or(format!("index {idx} is out of range for {} results", items.len()))?;
                    items[k].clone().map(Val::Tensor)
                }
                _ => Err("getitem on a value that is not a tuple".into()),
            },
            other => Err(format!("getitem of {other:?}")),
        }
    }

    /// `x[..., [i0, i1, ..], ...]` with one index list known when the graph was captured
    /// (the Python side inlines constant index tensors as integer lists): a concatenation
    /// of one-element slices. Run-time index tensors (gathers) are refused.
    fn index_const(&self) -> R<Val> {
        let x = self.t("self")?;
        let Some(Arg::List(indices)) = self.arg("indices") else {
            return Err("index expects a list of indices".into());
        };
        let mut dim = None;
        let mut picks: Vec<i64> = Vec::new();
        for (d, a) in indices.iter().enumerate() {
            match a {
                Arg::None => {}
                Arg::List(items) if dim.is_none() => {
                    dim = Some(d);
                    for it in items {
                        match it {
                            Arg::Int(i) => picks.push(*i),
                            other => return Err(format!("index list holds {other:?}, not an integer")),
                        }
                    }
                }
                Arg::List(_) => return Err("indexing with more than one index list is not supported".into()),
                _ => return Err("indexing with a tensor computed at run time (a gather) is not supported".into()),
            }
        }
        let d = dim.ok_or("index without an index list")?;
        if d >= x.rank() || picks.is_empty() {
            return Err(format!("index list at dim {d} does not fit a tensor of rank {}", x.rank()));
        }
        let n = x.dims()[d] as i64;
        let mut parts = Vec::with_capacity(picks.len());
        for &i in &picks {
            let j = if i < 0 { i + n } else { i };
            if !(0..n).contains(&j) {
                return Err(format!("index {i} is out of range for dim {d} of size {n}"));
            }
            parts.push(x.narrow(d as isize, j as isize, 1).map_err(fe)?);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        cat(&refs, d as isize).map(Val::Tensor).map_err(fe)
    }

    fn clamp(&self, min: Option<f64>, max: Option<f64>) -> R<Val> {
        let x = self.t("self")?;
        // PyTorch keeps an integer tensor's dtype only for integral bounds; anything else is
        // caught by the metadata check.
        let mut t = x;
        if let Some(lo) = min {
            let lo = if lo.fract() == 0.0 && !t.dtype().is_float() { Operand::Int(lo as i64) } else { Operand::Float(lo) };
            t = t.maximum(lo).map_err(fe)?;
        }
        if let Some(hi) = max {
            let hi = if hi.fract() == 0.0 && !t.dtype().is_float() { Operand::Int(hi as i64) } else { Operand::Float(hi) };
            t = t.minimum(hi).map_err(fe)?;
        }
        Ok(Val::Tensor(t))
    }

    fn layer_norm(&self, native: bool) -> R<Val> {
        let x = self.t("input")?;
        let shape = self.usizes("normalized_shape")?;
        let w = self.opt_t("weight")?;
        let b = self.opt_t("bias")?;
        let eps = self.num("eps", 1e-5)?;
        let y = x.layer_norm(&shape, w.as_ref(), b.as_ref(), eps).map_err(fe)?;
        if !native {
            return Ok(Val::Tensor(y));
        }
        // native_layer_norm also returns mean and rstd over the normalized dims (keepdim),
        // computed in f32 and stored in the dtype PyTorch reports for them: f32 on CUDA, the
        // input's dtype on the CPU (a bf16 model on the CPU fell back to eager here).
        let stat_dtype = |k: usize| self.node.out.get(k).and_then(|m| m.as_ref()).and_then(|m| m.dtype.clone().ok());
        let stats = || -> Result<(Tensor, Tensor), FrontendError> {
            let r = x.rank();
            let dims: Vec<isize> = (r - shape.len()..r).map(|d| d as isize).collect();
            let xc = if x.dtype().is_float() && x.dtype() != DType::F32 { x.to_dtype(DType::F32)? } else { x.clone() };
            let mean = xc.mean(dims.clone(), true)?;
            let var = xc.var(dims, 0.0, true)?;
            let rstd = var.add(eps)?.rsqrt()?;
            let as_reported = |t: Tensor, k: usize| match stat_dtype(k) {
                Some(d) if d != t.dtype() && d.is_float() => t.to_dtype(d),
                _ => Ok(t),
            };
            Ok((as_reported(mean, 1)?, as_reported(rstd, 2)?))
        };
        let (m, rs) = match stats() {
            Ok((m, rs)) => (Ok(m), Ok(rs)),
            Err(e) => (Err(fe(e.clone())), Err(fe(e))),
        };
        Ok(Val::Tuple(vec![Ok(y), m, rs]))
    }

    fn pad(&self) -> R<Val> {
        let x = self.t("self")?;
        let pad = self.ints("pad")?;
        let value = self.num("value", 0.0)?;
        if pad.len() % 2 != 0 || pad.len() / 2 > x.rank() {
            return Err(format!("pad {pad:?} must hold (before, after) pairs for at most {} dims", x.rank()));
        }
        if pad.iter().any(|&p| p < 0) {
            return Err("negative padding (cropping) is not supported".into());
        }
        let r = x.rank();
        let mut pads = vec![(0usize, 0usize); r];
        for (i, pair) in pad.chunks(2).enumerate() {
            pads[r - 1 - i] = (pair[0] as usize, pair[1] as usize);
        }
        if pads.iter().all(|&p| p == (0, 0)) {
            return Ok(Val::Tensor(x));
        }
        let value = x.dtype().quantize(value);
        x.push("constant_pad_nd", Op::Pad { pads, value: Scalar(value) }, &[]).map(Val::Tensor).map_err(fe)
    }

    /// Scaled dot-product attention written out (`softmax(q k^T * scale + mask) v`); the
    /// optimizer finds the flash-attention composite in it. Only the attention output is
    /// provided; auxiliary results (logsumexp, seeds) are refused if read.
    fn sdpa(&self, base: &str) -> R<Val> {
        let q = self.t("query")?;
        let k = self.t("key")?;
        let v = self.t("value")?;
        if self.num("dropout_p", 0.0)? != 0.0 {
            return Err("attention dropout is not supported".into());
        }
        if self.flag("enable_gqa", false)? {
            return Err("grouped-query attention (enable_gqa) is not supported".into());
        }
        let mask = match self.arg("attn_mask").or_else(|| self.arg("attn_bias")) {
            None => None,
            Some(a) => Some(self.tensor_of(a, "attn_mask")?),
        };
        let causal = self.flag("is_causal", false)?;
        let d = *q.dims().last().ok_or("attention query must have rank >= 1")? as f64;
        let scale = self.opt_num("scale")?.unwrap_or(1.0 / d.sqrt());
        let out = || -> Result<Tensor, FrontendError> {
            let kt = k.transpose(-2, -1)?;
            let mut s = q.matmul(&kt)?.mul(scale)?;
            let (sq, sk) = (q.size(-2)?, k.size(-2)?);
            if causal {
                let keep = self.tr.ones(DType::Bool, [sq, sk])?.tril(0)?;
                s = s.masked_fill(&keep.logical_not()?, f64::NEG_INFINITY)?;
            }
            if let Some(m) = &mask {
                s = if m.dtype() == DType::Bool { s.masked_fill(&m.logical_not()?, f64::NEG_INFINITY)? } else { s.add(m)? };
            }
            s.softmax(-1)?.matmul(&v)
        };
        let o = out().map_err(fe)?;
        if base == "scaled_dot_product_attention" {
            return Ok(Val::Tensor(o));
        }
        let mut items = vec![Ok(o)];
        for _ in 1..self.node.out.len().max(2) {
            items.push(Err("auxiliary attention results (logsumexp, rng state) are not supported".to_string()));
        }
        Ok(Val::Tuple(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir::interp::{run, Value};

    fn meta(dtype: DType, shape: &[usize]) -> Option<TensorMeta> {
        Some(TensorMeta { dtype: Ok(dtype), shape: shape.to_vec() })
    }
    fn node(target: &str, args: &[(&str, Arg)], out: Vec<Option<TensorMeta>>) -> AtenNode {
        AtenNode { target: target.into(), args: args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(), out }
    }
    fn input(name: &str, dtype: DType, shape: &[usize]) -> AtenInput {
        AtenInput { name: name.into(), meta: meta(dtype, shape).unwrap() }
    }
    fn data(n: usize, seed: u64) -> Vec<f64> {
        (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 250.0) - 1.7).collect()
    }

    #[test]
    fn linear_softmax_matches_reference() {
        // y = softmax(addmm(b, x, t(w)) * 0.5, -1)
        let g = AtenGraph {
            name: "lin".into(),
            inputs: vec![input("x", DType::F32, &[3, 5]), input("w", DType::F32, &[4, 5]), input("b", DType::F32, &[4])],
            nodes: vec![
                node("aten.t.default", &[("self", Arg::Value(1))], vec![meta(DType::F32, &[5, 4])]),
                node("aten.addmm.default", &[("self", Arg::Value(2)), ("mat1", Arg::Value(0)), ("mat2", Arg::Value(3))], vec![meta(DType::F32, &[3, 4])]),
                node("aten.mul.Tensor", &[("self", Arg::Value(4)), ("other", Arg::Float(0.5))], vec![meta(DType::F32, &[3, 4])]),
                node("aten._softmax.default", &[("self", Arg::Value(5)), ("dim", Arg::Int(-1)), ("half_to_float", Arg::Bool(false))], vec![meta(DType::F32, &[3, 4])]),
            ],
            outputs: vec![6],
        };
        let ir = import(&g).unwrap();
        let (x, w, b) = (data(15, 1), data(20, 2), data(4, 3));
        let out = run(&ir, &[
            Value::new(DType::F32, [3, 5], x.clone()).unwrap(),
            Value::new(DType::F32, [4, 5], w.clone()).unwrap(),
            Value::new(DType::F32, [4], b.clone()).unwrap(),
        ])
        .unwrap();
        for r in 0..3 {
            let logits: Vec<f64> = (0..4)
                .map(|c| 0.5 * (b[c] as f32 as f64 + (0..5).map(|k| (x[r * 5 + k] as f32 as f64) * (w[c * 5 + k] as f32 as f64)).sum::<f64>()))
                .collect();
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            for (c, l) in logits.iter().enumerate() {
                let want = (l - m).exp() / s;
                assert!((out[0].data[r * 4 + c] - want).abs() < 1e-5, "row {r} col {c}");
            }
        }
    }

    #[test]
    fn layer_norm_tuple_and_getitem() {
        let g = AtenGraph {
            name: "ln".into(),
            inputs: vec![input("x", DType::F32, &[2, 7])],
            nodes: vec![
                node(
                    "aten.native_layer_norm.default",
                    &[("input", Arg::Value(0)), ("normalized_shape", Arg::List(vec![Arg::Int(7)])), ("weight", Arg::None), ("bias", Arg::None), ("eps", Arg::Float(1e-5))],
                    vec![meta(DType::F32, &[2, 7]), meta(DType::F32, &[2, 1]), meta(DType::F32, &[2, 1])],
                ),
                node("getitem", &[("self", Arg::Value(1)), ("index", Arg::Int(0))], vec![meta(DType::F32, &[2, 7])]),
                node("getitem", &[("self", Arg::Value(1)), ("index", Arg::Int(2))], vec![meta(DType::F32, &[2, 1])]),
            ],
            outputs: vec![2, 3],
        };
        let ir = import(&g).unwrap();
        let x = data(14, 5);
        let out = run(&ir, &[Value::new(DType::F32, [2, 7], x.clone()).unwrap()]).unwrap();
        let row = &x[..7];
        let m: f64 = row.iter().map(|&v| v as f32 as f64).sum::<f64>() / 7.0;
        let var: f64 = row.iter().map(|&v| (v as f32 as f64 - m).powi(2)).sum::<f64>() / 7.0;
        let rstd = 1.0 / (var + 1e-5).sqrt();
        assert!((out[1].data[0] - rstd).abs() < 1e-6);
        assert!((out[0].data[3] - (row[3] as f32 as f64 - m) * rstd).abs() < 1e-5);
    }

    #[test]
    fn metadata_mismatch_names_the_node() {
        // PyTorch says the sum of an i32 tensor is i64; claiming i32 must be refused
        let g = AtenGraph {
            name: "bad".into(),
            inputs: vec![input("x", DType::I32, &[3])],
            nodes: vec![node("aten.sum.default", &[("self", Arg::Value(0))], vec![meta(DType::I32, &[])])],
            outputs: vec![1],
        };
        let e = import(&g).unwrap_err();
        assert_eq!(e.node(), Some(0));
        assert!(e.to_string().contains("PyTorch computes i32"), "{e}");
    }

    #[test]
    fn unknown_ops_and_bad_args_are_node_errors() {
        let g = AtenGraph {
            name: "u".into(),
            inputs: vec![input("x", DType::F32, &[3])],
            nodes: vec![
                node("aten.exp.default", &[("self", Arg::Value(0))], vec![meta(DType::F32, &[3])]),
                node("aten.cumsum.default", &[("self", Arg::Value(1)), ("dim", Arg::Int(0))], vec![meta(DType::F32, &[3])]),
            ],
            outputs: vec![2],
        };
        assert_eq!(import(&g).unwrap_err().node(), Some(1));
        let g2 = AtenGraph {
            name: "u2".into(),
            inputs: vec![input("x", DType::F32, &[3])],
            nodes: vec![node("aten.exp.default", &[("self", Arg::Value(7))], vec![meta(DType::F32, &[3])])],
            outputs: vec![1],
        };
        assert!(import(&g2).unwrap_err().to_string().contains("value 7"));
        let g3 = AtenGraph { name: "u3".into(), inputs: vec![input("x", DType::F32, &[3])], nodes: vec![], outputs: vec![4] };
        assert_eq!(import(&g3).unwrap_err().node(), None);
    }

    #[test]
    fn every_supported_target_is_lowered_by_name() {
        // a target in the list must never hit the "not an op Kiln maps" arm
        let tr = Tracer::new("probe");
        let x = tr.input("x", DType::F32, [2, 3]).unwrap();
        let vals = vec![Val::Tensor(x)];
        for t in supported_targets() {
            let n = node(t, &[], vec![meta(DType::F32, &[2, 3])]);
            let cx = Cx { tr: &tr, vals: &vals, node: &n, inner: &Default::default() };
            if let Err(e) = cx.lower() {
                assert!(!e.contains("is not an op Kiln maps"), "{t}: {e}");
            }
        }
    }

    #[test]
    fn constant_index_is_slices() {
        // x[:, [-1, 0], :]
        let g = AtenGraph {
            name: "idx".into(),
            inputs: vec![input("x", DType::F32, &[2, 3, 4])],
            nodes: vec![node(
                "aten.index.Tensor",
                &[("self", Arg::Value(0)), ("indices", Arg::List(vec![Arg::None, Arg::List(vec![Arg::Int(-1), Arg::Int(0)])]))],
                vec![meta(DType::F32, &[2, 2, 4])],
            )],
            outputs: vec![1],
        };
        let ir = import(&g).unwrap();
        let x = data(24, 9);
        let out = run(&ir, &[Value::new(DType::F32, [2, 3, 4], x.clone()).unwrap()]).unwrap();
        let q = |v: f64| v as f32 as f64;
        assert_eq!(out[0].data[0], q(x[8])); // [0, -1, 0] = x[0, 2, 0]
        assert_eq!(out[0].data[4], q(x[0])); // [0, 1, 0] = x[0, 0, 0]
        let mut bad = g.clone();
        bad.nodes[0].args.insert("indices".into(), Arg::List(vec![Arg::None, Arg::Value(0)]));
        assert!(import(&bad).unwrap_err().to_string().contains("gather"));
    }

    #[test]
    fn causal_masked_attention_imports() {
        let g = AtenGraph {
            name: "attn".into(),
            inputs: vec![input("q", DType::F32, &[1, 2, 5, 4]), input("k", DType::F32, &[1, 2, 5, 4]), input("v", DType::F32, &[1, 2, 5, 4])],
            nodes: vec![
                node(
                    "aten._scaled_dot_product_flash_attention_for_cpu.default",
                    &[("query", Arg::Value(0)), ("key", Arg::Value(1)), ("value", Arg::Value(2)), ("dropout_p", Arg::Float(0.0)), ("is_causal", Arg::Bool(true))],
                    vec![meta(DType::F32, &[1, 2, 5, 4]), meta(DType::F32, &[1, 2, 5])],
                ),
                node("getitem", &[("self", Arg::Value(3)), ("index", Arg::Int(0))], vec![meta(DType::F32, &[1, 2, 5, 4])]),
            ],
            outputs: vec![4],
        };
        let ir = import(&g).unwrap();
        let vals: Vec<Value> = (0..3).map(|i| Value::new(DType::F32, [1, 2, 5, 4], data(40, i)).unwrap()).collect();
        let out = run(&ir, &vals).unwrap();
        // the first query row attends only to the first key: output row 0 == v row 0
        for c in 0..4 {
            assert!((out[0].data[c] - vals[2].data[c]).abs() < 1e-6);
        }
    }

    /// `q @ kᵀ` as ATen spells it (`view` to 3-D, `bmm`, `view` back) imports as one 4-D
    /// matmul, and computes the same as the reference.
    #[test]
    fn bmm_of_flattened_heads_is_a_batched_matmul() {
        let ints = |v: &[i64]| Arg::List(v.iter().map(|&i| Arg::Int(i)).collect());
        let g = AtenGraph {
            name: "scores".into(),
            inputs: vec![input("q", DType::F32, &[2, 3, 5, 4]), input("k", DType::F32, &[2, 3, 5, 4])],
            nodes: vec![
                node("aten.transpose.int", &[("self", Arg::Value(1)), ("dim0", Arg::Int(-2)), ("dim1", Arg::Int(-1))], vec![meta(DType::F32, &[2, 3, 4, 5])]),
                node("aten.view.default", &[("self", Arg::Value(0)), ("size", ints(&[6, 5, 4]))], vec![meta(DType::F32, &[6, 5, 4])]),
                node("aten.clone.default", &[("self", Arg::Value(2))], vec![meta(DType::F32, &[2, 3, 4, 5])]),
                node("aten._unsafe_view.default", &[("self", Arg::Value(4)), ("size", ints(&[6, 4, 5]))], vec![meta(DType::F32, &[6, 4, 5])]),
                node("aten.bmm.default", &[("self", Arg::Value(3)), ("mat2", Arg::Value(5))], vec![meta(DType::F32, &[6, 5, 5])]),
                node("aten._unsafe_view.default", &[("self", Arg::Value(6)), ("size", ints(&[2, 3, 5, 5]))], vec![meta(DType::F32, &[2, 3, 5, 5])]),
            ],
            outputs: vec![7],
        };
        let ir = import(&g).unwrap();
        let mm: Vec<_> = ir.nodes().filter(|(_, n)| matches!(n.op, Op::MatMul)).collect();
        assert_eq!(mm.len(), 1);
        assert_eq!(mm[0].1.shape.dims(), &[2, 3, 5, 5], "{ir}");
        // the view back to 4-D is the matmul itself, not a reshape of a reshape of it
        assert_eq!(ir.outputs(), &[mm[0].0], "{ir}");
        let vals: Vec<Value> = (0..2).map(|i| Value::new(DType::F32, [2, 3, 5, 4], data(120, i + 3)).unwrap()).collect();
        let out = run(&ir, &vals).unwrap();
        for (bh, row, col) in [(0, 0, 0), (4, 2, 3), (5, 4, 1)] {
            let want: f64 = (0..4).map(|d| vals[0].data[bh * 20 + row * 4 + d] * vals[1].data[bh * 20 + col * 4 + d]).sum();
            let got = out[0].data[bh * 25 + row * 5 + col];
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
    }
}
