//! `explain`: which kernels the optimizer formed and, for every op that starts a kernel of
//! its own instead of joining a neighbour, why.

use crate::fuse::{self, Placement};
use crate::{cost, DeviceProfile, PassError};
use ir::{Graph, KernelGraph, Op};
use std::fmt;

/// The kernels formed and the reasons behind each boundary. Prints as text.
pub struct Explanation {
    pub kernels: KernelGraph,
    /// One line per kernel: name, kind, ops, estimated cost.
    pub formed: Vec<String>,
    /// One entry per op that was not fused into a producer's kernel: `(op, reasons)`.
    pub unfused: Vec<(String, Vec<String>)>,
    pub report: crate::Report,
}

/// Optimizes `g` and explains the result.
pub fn explain(g: &Graph, profile: &DeviceProfile) -> Result<Explanation, PassError> {
    let (simple, mut report) = crate::simplify(g, profile)?;
    let grouping = fuse::group(&simple);
    let kg = &grouping.kernels;
    report.kernels = kg.kernels.len();
    report.optimized_seconds = cost::graph_seconds(kg, profile);
    report.baseline_seconds = cost::graph_seconds(&KernelGraph::one_per_op(g), profile);
    let formed = kg
        .kernels
        .iter()
        .map(|k| {
            let c = cost::kernel_cost(kg, k, profile);
            let ops: Vec<&str> = k.body.nodes().filter(|(_, n)| !matches!(n.op, Op::Input { .. })).map(|(_, n)| n.op.name()).collect();
            format!(
                "{} {}: {} ops [{}], reads {} buffer(s), writes {}, {:.2} us",
                k.name,
                k.kind.name(),
                ops.len(),
                ops.join(" "),
                k.inputs.len(),
                k.outputs.len(),
                c.seconds * 1e6
            )
        })
        .collect();
    let mut unfused = Vec::new();
    for (id, n) in simple.nodes() {
        if let Placement::Alone { reasons } = &grouping.placement[id.index()] {
            let k = grouping.kernel_of[id.index()].map(|k| format!("k{k}")).unwrap_or_default();
            unfused.push((format!("{id} {} {}{} (starts {k})", n.op.name(), n.dtype, n.shape), reasons.clone()));
        }
    }
    Ok(Explanation { kernels: grouping.kernels, formed, unfused, report })
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        writeln!(
            f,
            "{} kernels (one per op: {:.1} us estimated, optimized: {:.1} us); saturation: {} after {} iterations, {} e-nodes; {} flash attention(s)",
            self.formed.len(),
            r.baseline_seconds * 1e6,
            r.optimized_seconds * 1e6,
            r.stop_reason,
            r.iterations,
            r.egraph_nodes,
            r.flash_attention_nodes
        )?;
        writeln!(f, "kernels formed:")?;
        for k in &self.formed {
            writeln!(f, "  {k}")?;
        }
        writeln!(f, "ops that start their own kernel:")?;
        for (op, reasons) in &self.unfused {
            writeln!(f, "  {op}")?;
            for r in reasons {
                writeln!(f, "    - {r}")?;
            }
        }
        Ok(())
    }
}
