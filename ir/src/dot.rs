//! Graphviz output for graphs and kernel graphs.

use crate::{Graph, KernelGraph, Op};
use std::fmt::Write;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Graph {
    /// The graph in Graphviz DOT: one box per node (`%id op : type`), edges labelled by operand
    /// position when an op has more than one operand.
    pub fn to_dot(&self) -> String {
        let mut s = format!("digraph \"{}\" {{\n  node [shape=box, fontname=monospace];\n", escape(self.name()));
        for (id, n) in self.nodes() {
            let label = match &n.op {
                Op::Input { name } => format!("{id} input {name}"),
                op => format!("{id} {}", op.name()),
            };
            let style = match n.op {
                Op::Input { .. } => ", style=filled, fillcolor=lightblue",
                Op::FlashAttention { .. } | Op::Fused(_) => ", style=filled, fillcolor=orange",
                _ => "",
            };
            let _ = writeln!(s, "  n{} [label=\"{}\\n{}{}\"{style}];", id.index(), escape(&label), n.dtype, n.shape);
            for (p, i) in n.inputs.iter().enumerate() {
                let lbl = if n.inputs.len() > 1 { format!(" [label=\"{p}\"]") } else { String::new() };
                let _ = writeln!(s, "  n{} -> n{}{lbl};", i.index(), id.index());
            }
        }
        for (k, o) in self.outputs().iter().enumerate() {
            let _ = writeln!(s, "  out{k} [label=\"output {k}\", shape=oval];\n  n{} -> out{k};", o.index());
        }
        s.push_str("}\n");
        s
    }
}

impl KernelGraph {
    /// Kernels as boxes, buffers as ellipses.
    pub fn to_dot(&self) -> String {
        let mut s = format!("digraph \"{}\" {{\n  node [fontname=monospace];\n", escape(&self.name));
        for (i, b) in self.buffers.iter().enumerate() {
            let _ = writeln!(s, "  b{i} [label=\"b{i}\\n{}{}\", shape=ellipse];", b.dtype, b.shape);
        }
        for (i, k) in self.kernels.iter().enumerate() {
            let _ = writeln!(s, "  k{i} [label=\"{} {}\\n{} ops\", shape=box, style=filled, fillcolor=orange];", k.kind.name(), escape(&k.name), k.body.len());
            for b in &k.inputs {
                let _ = writeln!(s, "  {b} -> k{i};");
            }
            for b in &k.outputs {
                let _ = writeln!(s, "  k{i} -> {b};");
            }
        }
        s.push_str("}\n");
        s
    }
}
