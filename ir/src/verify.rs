//! The verifier. A graph is well formed when:
//!
//! 1. every operand of a node precedes it (index order is a topological order), and each
//!    petgraph edge matches the node's operand list;
//! 2. every node's dtype and shape equal what [`crate::infer::infer`] derives from its operands
//!    (sources: `iota`'s axis is in range and its dtype numeric);
//! 3. `inputs` lists exactly the `Input` nodes, in index order, with unique names;
//! 4. there is at least one output, and every output names an existing node;
//! 5. the body of every `fused` node is itself well formed (recursively), and contains no
//!    `fused` node of its own.
//!
//! Passes run it after every stage when `KILN_VERIFY=1`; the parser runs it always.

use crate::{infer, Graph, IrError, NodeId, Op, Result};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::HashSet;

pub fn verify(g: &Graph) -> Result<()> {
    verify_inner(g, false)
}

fn verify_inner(g: &Graph, in_fused: bool) -> Result<()> {
    let mut names = HashSet::new();
    let mut expected_inputs = Vec::new();
    for (id, n) in g.nodes() {
        let err = |reason: String| IrError::Verify { node: id, reason };
        // 1. operands precede and edges match
        for &i in &n.inputs {
            if i.index() >= id.index() {
                return Err(err(format!("operand {i} does not precede the node")));
            }
        }
        let mut edges: Vec<(u32, NodeId)> = g
            .petgraph()
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source())))
            .collect();
        edges.sort();
        let want: Vec<(u32, NodeId)> = n.inputs.iter().enumerate().map(|(p, &i)| (p as u32, i)).collect();
        if edges != want {
            return Err(err("petgraph edges disagree with the operand list".into()));
        }
        // 2. types
        match &n.op {
            Op::Input { name } => {
                if !names.insert(name.clone()) {
                    return Err(IrError::DuplicateInput(name.clone()));
                }
                expected_inputs.push(id);
            }
            Op::Full { .. } => {}
            Op::Iota { axis } => {
                if *axis >= n.shape.rank() || !(n.dtype.is_float() || n.dtype.is_int()) {
                    return Err(err(format!("iota axis {axis} / dtype {} invalid for shape {}", n.dtype, n.shape)));
                }
            }
            op => {
                if let Op::Fused(body) = op {
                    if in_fused {
                        return Err(err("a fused body may not contain a fused node".into()));
                    }
                    verify_inner(&body.0, true).map_err(|e| err(format!("in fused body: {e}")))?;
                }
                let types: Vec<_> = n.inputs.iter().map(|&i| (g.node(i).dtype, &g.node(i).shape)).collect();
                let (d, s) = infer::infer(op, &types).map_err(|e| err(e.to_string()))?;
                if d != n.dtype || s != n.shape {
                    return Err(err(format!("recorded type {}{} but operands give {d}{s}", n.dtype, n.shape)));
                }
            }
        }
    }
    // 3. inputs
    if g.inputs() != expected_inputs.as_slice() {
        return Err(IrError::VerifyGraph("the input list does not match the input nodes in order".into()));
    }
    // 4. outputs
    if g.outputs().is_empty() {
        return Err(IrError::VerifyGraph("the graph has no outputs".into()));
    }
    for &o in g.outputs() {
        if o.index() >= g.len() {
            return Err(IrError::VerifyGraph(format!("output {o} does not exist")));
        }
    }
    Ok(())
}

/// `true` when `KILN_VERIFY` is set to a value other than `0`.
pub fn verify_enabled() -> bool {
    std::env::var("KILN_VERIFY").map(|v| v != "0" && !v.is_empty()).unwrap_or(false)
}
