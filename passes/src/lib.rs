//! Kiln's optimizer: equality saturation with egg, cost-model extraction, kernel grouping.
//!
//! ```text
//! ir::Graph --lang::add_graph--> e-graph --saturate(rules::all)--> extract (DeviceProfile)
//!           --> ir::Graph (primitives + flash_attention) --fuse::group--> ir::KernelGraph
//! ```
//!
//! - [`lang`]: the egg language, the shape/dtype analysis, IR <-> `RecExpr`.
//! - [`rules`]: rewrite rules as data (`algebra`, `movement`, `attention`) and the fusion
//!   rules of the grouping pass (`fusion`); `passes/RULES.md` argues each one's soundness.
//! - [`extract`]: deterministic, sharing-aware extraction under the [`cost`] model.
//! - [`fuse`]: the grouping pass; [`explain()`] says why each kernel boundary exists.
//!
//! ```
//! use ir::{DType, Graph, Op, BinaryOp, UnaryOp};
//! let mut g = Graph::new("chain");
//! let x = g.input("x", DType::F32, [3, 5]).unwrap();
//! let one = g.full(1.0, DType::F32, [3, 5]);
//! let a = g.add(Op::Binary(BinaryOp::Mul), &[x, one]).unwrap();   // folded away
//! let b = g.add(Op::Unary(UnaryOp::Exp), &[a]).unwrap();
//! let c = g.add(Op::Binary(BinaryOp::Add), &[b, x]).unwrap();
//! g.set_outputs(vec![c]);
//! let opt = passes::optimize(&g, &passes::DeviceProfile::cpu()).unwrap();
//! assert_eq!(opt.kernels.kernels.len(), 1);
//! ```

pub mod cost;
mod explain;
pub mod extract;
pub mod fuse;
pub mod lang;
pub mod rules;

pub use cost::DeviceProfile;
pub use explain::{explain, Explanation};

use ir::{Graph, KernelGraph};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Everything that can go wrong in the optimizer.
#[derive(Debug, Error)]
pub enum PassError {
    #[error("the optimizer does not accept node {node}: {what}")]
    Unsupported { node: String, what: String },
    #[error("the input graph is not well formed: {0}")]
    InvalidInput(#[source] Box<ir::IrError>),
    #[error("after {stage}, the graph no longer verifies (an optimizer bug): {source}")]
    Verify { stage: &'static str, #[source] source: Box<ir::IrError> },
    #[error("internal optimizer error in {stage}: {what}")]
    Internal { stage: &'static str, what: String },
}

/// Saturation limits. Saturation always stops at the first limit reached.
#[derive(Clone, Debug)]
pub struct Limits {
    pub iterations: usize,
    /// E-node limit; the effective limit is `max(nodes, nodes_per_input_node * graph size)`.
    pub nodes: usize,
    pub nodes_per_input_node: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { iterations: 16, nodes: 50_000, nodes_per_input_node: 12, time: Duration::from_secs(10) }
    }
}

/// What the optimizer did and how long it took.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Why saturation stopped (egg's `StopReason`, printed).
    pub stop_reason: String,
    pub iterations: usize,
    pub egraph_nodes: usize,
    pub egraph_classes: usize,
    /// Number of times each rule was applied, by name (sorted by name).
    pub rules_applied: Vec<(String, usize)>,
    pub flash_attention_nodes: usize,
    pub input_nodes: usize,
    pub extracted_nodes: usize,
    pub kernels: usize,
    /// Cost-model estimates (seconds): one kernel per op, and the optimized kernel graph.
    pub baseline_seconds: f64,
    pub optimized_seconds: f64,
    pub time_saturate: Duration,
    pub time_extract: Duration,
    pub time_fuse: Duration,
}

/// The optimizer's answer: the kernel graph and a report.
#[derive(Clone, Debug)]
pub struct Optimized {
    pub kernels: KernelGraph,
    pub report: Report,
}

fn check(stage: &'static str, g: &Graph) -> Result<(), PassError> {
    if ir::verify::verify_enabled() {
        ir::verify::verify(g).map_err(|e| PassError::Verify { stage, source: Box::new(e) })?;
    }
    Ok(())
}

/// Rewrites and extraction only: the simplified primitive graph (plus `flash_attention`).
pub fn simplify(g: &Graph, profile: &DeviceProfile) -> Result<(Graph, Report), PassError> {
    simplify_with(g, profile, &rules::all(), &Limits::default())
}

/// [`simplify`] with an explicit rule set and limits.
pub fn simplify_with(g: &Graph, profile: &DeviceProfile, rules: &[lang::Rewrite], limits: &Limits) -> Result<(Graph, Report), PassError> {
    ir::verify::verify(g).map_err(|e| PassError::InvalidInput(Box::new(e)))?;
    let g = &g.without_dead_code();
    let mut report = Report { input_nodes: g.len(), ..Default::default() };
    let t0 = Instant::now();
    let (expr, names) = lang::to_rec_expr(g)?;
    let node_limit = limits.nodes.max(limits.nodes_per_input_node * g.len());
    let runner = egg::Runner::<lang::Kiln, lang::TypeAnalysis>::new(lang::TypeAnalysis)
        .with_iter_limit(limits.iterations)
        .with_node_limit(node_limit)
        .with_time_limit(limits.time)
        .with_expr(&expr)
        .run(rules);
    let root = runner.egraph.find(runner.roots[0]);
    let stop = runner.stop_reason.clone().map(|r| format!("{r:?}")).unwrap_or_default();
    tracing::info!(graph = g.name(), stop_reason = %stop, iterations = runner.iterations.len(),
        nodes = runner.egraph.total_number_of_nodes(), classes = runner.egraph.number_of_classes(), "saturation stopped");
    let mut applied: std::collections::BTreeMap<String, usize> = Default::default();
    for it in &runner.iterations {
        for (r, n) in &it.applied {
            *applied.entry(r.to_string()).or_default() += n;
        }
    }
    report.stop_reason = stop;
    report.iterations = runner.iterations.len();
    report.egraph_nodes = runner.egraph.total_number_of_nodes();
    report.egraph_classes = runner.egraph.number_of_classes();
    report.rules_applied = applied.into_iter().collect();
    report.time_saturate = t0.elapsed();

    let t1 = Instant::now();
    let ids = runner.egraph.lookup_expr_ids(&expr).ok_or(PassError::Internal { stage: "extract", what: "the input graph is no longer in the e-graph".into() })?;
    let mut uses: std::collections::HashMap<egg::Id, f64> = Default::default();
    let mut position: std::collections::HashMap<egg::Id, usize> = Default::default();
    for (i, n) in expr.as_ref().iter().enumerate() {
        position.entry(runner.egraph.find(ids[i])).or_insert(i);
        for &c in egg::Language::children(n) {
            *uses.entry(runner.egraph.find(ids[usize::from(c)])).or_default() += 1.0;
        }
    }
    let best = extract::extract(&runner.egraph, root, &uses, &position, profile)?;
    let out = lang::from_rec_expr(&best, &names, g.name())?;
    check("extraction", &out)?;
    report.time_extract = t1.elapsed();
    report.extracted_nodes = out.len();
    report.flash_attention_nodes = out.nodes().filter(|(_, n)| matches!(n.op, ir::Op::FlashAttention { .. })).count();
    Ok((out, report))
}

/// The whole optimizer: saturate, extract, group into kernels.
pub fn optimize(g: &Graph, profile: &DeviceProfile) -> Result<Optimized, PassError> {
    check("input", g)?;
    let (simple, mut report) = simplify(g, profile)?;
    let t2 = Instant::now();
    let grouping = fuse::group(&simple);
    let kernels = grouping.kernels;
    kernels.verify().map_err(|e| PassError::Verify { stage: "fusion", source: Box::new(e) })?;
    report.time_fuse = t2.elapsed();
    report.kernels = kernels.kernels.len();
    report.optimized_seconds = cost::graph_seconds(&kernels, profile);
    report.baseline_seconds = cost::graph_seconds(&KernelGraph::one_per_op(g), profile);
    tracing::info!(graph = g.name(), kernels = report.kernels, flash = report.flash_attention_nodes,
        saturate_ms = report.time_saturate.as_secs_f64() * 1e3, extract_ms = report.time_extract.as_secs_f64() * 1e3,
        fuse_ms = report.time_fuse.as_secs_f64() * 1e3, "optimized");
    Ok(Optimized { kernels, report })
}
