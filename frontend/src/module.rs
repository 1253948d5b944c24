//! Models with parameters: the `Module` trait, `Vars` (named parameter inputs), and `trace`.
//!
//! Parameters are graph *inputs*, never constants baked into the graph, so new weights need
//! no recompilation. A module asks `vars.get("c_attn.weight", shape, init)` while tracing;
//! that creates (or, for a name seen before, returns) an input named with the full dotted
//! path, e.g. `h.0.attn.c_attn.weight`. [`trace`] returns the graph together with the list
//! of its inputs, each marked [`Role::Activation`] or [`Role::Param`] with how to initialise
//! it, so callers can make seeded random weights.

use crate::error::{FrontendError, Result};
use crate::rng::Rng;
use crate::tracer::{Tensor, Tracer};
use ir::interp::Value;
use ir::{DType, Graph, Shape};

/// How a parameter (or a test activation) is filled with random values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// `mean + std * N(0, 1)`.
    Normal { mean: f64, std: f64 },
    /// Uniform in `[lo, hi)`.
    Uniform { lo: f64, hi: f64 },
}

impl Init {
    /// Linear weights and biases, embeddings: `N(0, 0.02)` as in GPT-2.
    pub const WEIGHT: Init = Init::Normal { mean: 0.0, std: 0.02 };
    /// Norm scales: around 1 but not exactly (tests see that the weight is applied).
    pub const NORM_WEIGHT: Init = Init::Normal { mean: 1.0, std: 0.1 };
    /// Norm shifts: around 0 but not zero.
    pub const NORM_BIAS: Init = Init::Normal { mean: 0.0, std: 0.05 };
    /// Activations in tests: `N(0, 1)`.
    pub const ACTIVATION: Init = Init::Normal { mean: 0.0, std: 1.0 };
}

/// Whether a graph input is fed per call (an activation) or is a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Activation,
    Param,
}

/// One graph input: its name, type, role, and how to make random values for it.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
    pub role: Role,
    pub init: Init,
}

impl InputSpec {
    /// An activation input (what callers pass to [`trace`]).
    pub fn new(name: impl Into<String>, dtype: DType, shape: impl Into<Shape>) -> InputSpec {
        InputSpec { name: name.into(), dtype, shape: shape.into(), role: Role::Activation, init: Init::ACTIVATION }
    }

    /// Seeded random values for this input; the stream depends only on `seed` and the name,
    /// so the same parameter gets the same values in every graph that has it.
    pub fn random_value(&self, seed: u64) -> Value {
        let mut rng = Rng::for_name(seed, &self.name);
        let n = self.shape.numel();
        let data = match self.init {
            Init::Normal { mean, std } => rng.normal_vec(n, mean, std),
            Init::Uniform { lo, hi } => (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect(),
        };
        Value::new(self.dtype, self.shape.clone(), data).expect("numel matches the shape")
    }
}

/// Hands out named parameters while tracing (like candle's `VarBuilder`): a tracer, a dotted
/// name prefix, and the dtype new parameters get.
#[derive(Clone, Debug)]
pub struct Vars {
    tracer: Tracer,
    prefix: String,
    dtype: DType,
}

impl Vars {
    pub fn new(tracer: &Tracer, dtype: DType) -> Vars {
        Vars { tracer: tracer.clone(), prefix: String::new(), dtype }
    }

    /// Vars under `prefix.name` (`vars.pp("h").pp(0).pp("attn")`).
    pub fn pp(&self, name: impl std::fmt::Display) -> Vars {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Vars { prefix, ..self.clone() }
    }

    /// The same vars making parameters of another dtype.
    pub fn with_dtype(&self, dtype: DType) -> Vars {
        Vars { dtype, ..self.clone() }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The parameter `prefix.name` of the given shape (created on first use).
    pub fn get(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Tensor> {
        let full = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        let shape = shape.into();
        crate::tracer::check_numel("parameter", &shape)?;
        self.tracer.param(full, self.dtype, shape, init)
    }
}

/// A model with parameters. `forward` receives the traced activation inputs (in the order of
/// the specs given to [`trace`]) and a [`Vars`] to fetch its parameters from.
pub trait Module {
    /// The graph's name.
    fn name(&self) -> String {
        "module".into()
    }
    fn forward(&self, vars: &Vars, inputs: &[Tensor]) -> Result<Vec<Tensor>>;
    /// The dtype of the module's parameters.
    fn param_dtype(&self) -> DType {
        DType::F32
    }
}

/// A closure as a [`Module`] (for small functions and tests).
pub struct FnModule<F> {
    name: String,
    dtype: DType,
    f: F,
}

/// Wraps `f(vars, inputs) -> outputs` as a module named `name` with `f32` parameters.
pub fn module_fn<F>(name: impl Into<String>, f: F) -> FnModule<F>
where
    F: Fn(&Vars, &[Tensor]) -> Result<Vec<Tensor>>,
{
    FnModule { name: name.into(), dtype: DType::F32, f }
}

impl<F> FnModule<F> {
    pub fn with_param_dtype(self, dtype: DType) -> FnModule<F> {
        FnModule { dtype, ..self }
    }
}

impl<F: Fn(&Vars, &[Tensor]) -> Result<Vec<Tensor>>> Module for FnModule<F> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn forward(&self, vars: &Vars, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        (self.f)(vars, inputs)
    }
    fn param_dtype(&self) -> DType {
        self.dtype
    }
}

/// A traced module: a verified graph without dead code, and its inputs in graph order
/// (the activations given to [`trace`] first, then the parameters in the order first used).
#[derive(Clone, Debug)]
pub struct Traced {
    pub graph: Graph,
    pub inputs: Vec<InputSpec>,
}

impl Traced {
    /// The parameter inputs.
    pub fn params(&self) -> impl Iterator<Item = &InputSpec> {
        self.inputs.iter().filter(|s| s.role == Role::Param)
    }
    /// The activation inputs.
    pub fn activations(&self) -> impl Iterator<Item = &InputSpec> {
        self.inputs.iter().filter(|s| s.role == Role::Activation)
    }
    /// Seeded random values for every input, in graph order.
    pub fn random_inputs(&self, seed: u64) -> Vec<Value> {
        self.inputs.iter().map(|s| s.random_value(seed)).collect()
    }
    /// Seeded random values for the parameters only, in graph order (the same values
    /// `random_inputs` gives them).
    pub fn random_params(&self, seed: u64) -> Vec<Value> {
        self.params().map(|s| s.random_value(seed)).collect()
    }
    /// Runs the graph in the reference interpreter.
    pub fn interpret(&self, inputs: &[Value]) -> Result<Vec<Value>> {
        Ok(ir::interp::run(&self.graph, inputs)?)
    }
}

/// Traces `module` on activation inputs of the given specs into one verified graph.
///
/// ```
/// use frontend::{trace, InputSpec, models::{Mlp, MlpConfig}};
/// use ir::DType;
/// let mlp = Mlp::new(MlpConfig { in_features: 8, hidden: 32, out_features: 4, ..MlpConfig::default() });
/// let t = trace(&mlp, &[InputSpec::new("x", DType::F32, [3, 8])]).unwrap();
/// assert_eq!(t.params().count(), 4); // fc1.{weight,bias}, fc2.{weight,bias}
/// let out = t.interpret(&t.random_inputs(0)).unwrap();
/// assert_eq!(out[0].shape.dims(), &[3, 4]);
/// ```
pub fn trace<M: Module + ?Sized>(module: &M, inputs: &[InputSpec]) -> Result<Traced> {
    let tracer = Tracer::new(module.name());
    let xs = inputs
        .iter()
        .map(|s| tracer.input(s.name.clone(), s.dtype, s.shape.clone()))
        .collect::<Result<Vec<_>>>()?;
    let vars = Vars::new(&tracer, module.param_dtype());
    let outs = module.forward(&vars, &xs)?;
    let refs: Vec<&Tensor> = outs.iter().collect();
    let graph = tracer.finish(&refs)?;
    let params = tracer.params();
    let mut specs: Vec<InputSpec> = inputs.iter().map(|s| InputSpec { role: Role::Activation, ..s.clone() }).collect();
    for p in &params {
        let n = tracer.graph().node(p.id).clone();
        specs.push(InputSpec { name: p.name.clone(), dtype: n.dtype, shape: n.shape, role: Role::Param, init: p.init });
    }
    // Graph inputs are activations first, then params, in creation order; check the pairing.
    let names: Vec<&str> = graph.inputs().iter().map(|&i| graph.input_name(i).unwrap_or("")).collect();
    if names.len() != specs.len() || names.iter().zip(&specs).any(|(n, s)| *n != s.name) {
        return Err(FrontendError::Invalid {
            op: "trace",
            reason: "the module created graph inputs outside Vars (use Vars::get for parameters)".into(),
        });
    }
    Ok(Traced { graph, inputs: specs })
}

/// Checks a module got the number of inputs it expects.
pub fn expect_inputs(module: &str, inputs: &[Tensor], n: usize) -> Result<()> {
    if inputs.len() != n {
        return Err(FrontendError::InputCount { module: module.into(), expected: n, got: inputs.len() });
    }
    Ok(())
}
