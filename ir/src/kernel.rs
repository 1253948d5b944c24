//! `KernelGraph`: the optimizer's answer, and codegen's input.
//!
//! A DAG of kernels over explicit buffers. Each kernel has a body: a small primitive graph
//! whose inputs bind the kernel's input buffers (in order) and whose outputs bind its output
//! buffers. The kind says how codegen should build it: one pass of loops, or a template
//! (GEMM with an epilogue, flash attention). Kernels are listed in a valid execution order.

use crate::{interp, DType, Graph, IrError, Op, OpClass, Result, Shape};
use std::fmt::{self, Write};

/// A buffer id; prints as `b3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub u32);
impl fmt::Display for BufferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// A kernel id; prints as `k2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelId(pub u32);
impl fmt::Display for KernelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Buffer {
    pub dtype: DType,
    pub shape: Shape,
}

impl Buffer {
    pub fn bytes(&self) -> usize {
        self.shape.numel() * self.dtype.size_bytes()
    }
}

/// How a kernel is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// Elementwise and movement ops only: one pass over the output.
    Elementwise,
    /// Elementwise work around reductions (softmax, layer_norm): a pass per output row.
    Reduction,
    /// One matmul with an elementwise prologue-free epilogue (bias, activation, residual, cast).
    Gemm,
    /// One flash-attention node, possibly with an epilogue.
    Attention,
    /// Only movement (a copy that could not stay an index map, e.g. a graph output view).
    Copy,
}

impl KernelKind {
    /// The kind a body needs: a template if it holds a matmul or attention, else by its ops.
    pub fn classify(body: &Graph) -> KernelKind {
        let mut kind = KernelKind::Copy;
        for (_, n) in body.nodes() {
            match (&n.op, n.op.class()) {
                (Op::FlashAttention { .. }, _) => return KernelKind::Attention,
                (Op::MatMul, _) => return KernelKind::Gemm,
                (_, OpClass::Reduction) => kind = KernelKind::Reduction,
                (_, OpClass::Elementwise) if kind == KernelKind::Copy => kind = KernelKind::Elementwise,
                _ => {}
            }
        }
        kind
    }

    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Elementwise => "elementwise",
            KernelKind::Reduction => "reduction",
            KernelKind::Gemm => "gemm",
            KernelKind::Attention => "attention",
            KernelKind::Copy => "copy",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub name: String,
    pub kind: KernelKind,
    pub body: Graph,
    pub inputs: Vec<BufferId>,
    pub outputs: Vec<BufferId>,
}

/// Kernels over buffers; graph inputs and outputs are buffers too.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KernelGraph {
    pub name: String,
    pub buffers: Vec<Buffer>,
    pub inputs: Vec<BufferId>,
    /// Names of the graph inputs, parallel to `inputs`.
    pub input_names: Vec<String>,
    pub outputs: Vec<BufferId>,
    pub kernels: Vec<Kernel>,
}

impl KernelGraph {
    pub fn buffer(&self, b: BufferId) -> &Buffer {
        &self.buffers[b.0 as usize]
    }

    pub fn add_buffer(&mut self, dtype: DType, shape: Shape) -> BufferId {
        self.buffers.push(Buffer { dtype, shape });
        BufferId(self.buffers.len() as u32 - 1)
    }

    /// An empty kernel graph named after `g` with one buffer per graph input, and the buffer
    /// of each node of `g` so far (`Some` for the inputs, `None` elsewhere). Every lowering of
    /// a graph to kernels starts here.
    pub fn with_inputs_of(g: &Graph) -> (KernelGraph, Vec<Option<BufferId>>) {
        let mut kg = KernelGraph { name: g.name().to_string(), ..Default::default() };
        let mut buf = vec![None; g.len()];
        for &i in g.inputs() {
            let n = g.node(i);
            let b = kg.add_buffer(n.dtype, n.shape.clone());
            buf[i.index()] = Some(b);
            kg.inputs.push(b);
            kg.input_names.push(g.input_name(i).unwrap_or_default().to_string());
        }
        (kg, buf)
    }

    /// The trivial lowering: one kernel per compute node (movement ops included), every
    /// value in its own buffer. The baseline for "eager-style" runs and for backends before
    /// the optimizer groups kernels.
    pub fn one_per_op(g: &Graph) -> KernelGraph {
        let (mut kg, mut buf) = KernelGraph::with_inputs_of(g);
        let live = g.live();
        for (id, n) in g.nodes() {
            if buf[id.index()].is_some() || !live[id.index()] {
                continue;
            }
            let mut body = Graph::new(format!("k{}", kg.kernels.len()));
            let mut inputs: Vec<BufferId> = Vec::new();
            let mut body_inputs = Vec::new();
            let mut operands = smallvec::SmallVec::new();
            for &i in &n.inputs {
                let b = buf[i.index()].expect("operand has a buffer");
                let pos = inputs.iter().position(|&x| x == b).unwrap_or_else(|| {
                    let m = g.node(i);
                    let name = format!("in{}", inputs.len());
                    body_inputs.push(body.input(name, m.dtype, m.shape.clone()).expect("fresh name"));
                    inputs.push(b);
                    inputs.len() - 1
                });
                operands.push(body_inputs[pos]);
            }
            let out = body.push(crate::Node { op: n.op.clone(), dtype: n.dtype, shape: n.shape.clone(), inputs: operands });
            body.set_outputs(vec![out]);
            let ob = kg.add_buffer(n.dtype, n.shape.clone());
            buf[id.index()] = Some(ob);
            kg.kernels.push(Kernel { name: body.name().to_string(), kind: KernelKind::classify(&body), body, inputs, outputs: vec![ob] });
        }
        kg.outputs = g.outputs().iter().map(|o| buf[o.index()].unwrap()).collect();
        kg
    }

    /// Checks: every buffer is written by at most one kernel (graph inputs by none); a kernel
    /// reads only buffers written before it (or graph inputs); each body's inputs and outputs
    /// match its buffers' types; every graph output is written or is an input; bodies verify.
    pub fn verify(&self) -> Result<()> {
        let bad = |s: String| Err(IrError::VerifyGraph(format!("kernel graph @{}: {s}", self.name)));
        let mut written = vec![false; self.buffers.len()];
        for &b in &self.inputs {
            written[b.0 as usize] = true;
        }
        for k in &self.kernels {
            crate::verify::verify(&k.body).map_err(|e| IrError::VerifyGraph(format!("kernel {}: {e}", k.name)))?;
            if k.body.inputs().len() != k.inputs.len() || k.body.outputs().len() != k.outputs.len() {
                return bad(format!("kernel {} body arity differs from its buffers", k.name));
            }
            for (&b, &i) in k.inputs.iter().zip(k.body.inputs()) {
                if !written.get(b.0 as usize).copied().unwrap_or(false) {
                    return bad(format!("kernel {} reads {b} before it is written", k.name));
                }
                let (buf, n) = (self.buffer(b), k.body.node(i));
                if buf.dtype != n.dtype || buf.shape != n.shape {
                    return bad(format!("kernel {} input {b} is {}{} but the body expects {}{}", k.name, buf.dtype, buf.shape, n.dtype, n.shape));
                }
            }
            for (&b, &o) in k.outputs.iter().zip(k.body.outputs()) {
                if b.0 as usize >= self.buffers.len() || std::mem::replace(&mut written[b.0 as usize], true) {
                    return bad(format!("kernel {} writes {b}, which is already written", k.name));
                }
                let (buf, n) = (self.buffer(b), k.body.node(o));
                if buf.dtype != n.dtype || buf.shape != n.shape {
                    return bad(format!("kernel {} output {b} type differs from its body", k.name));
                }
            }
        }
        for &o in &self.outputs {
            if !written[o.0 as usize] {
                return bad(format!("output {o} is never written"));
            }
        }
        Ok(())
    }

    /// Runs the kernel graph with the reference interpreter, kernel by kernel. Inputs are
    /// rounded to their dtypes once; buffers between kernels are not rounded (see
    /// [`interp::run_unrounded`]), so the result equals interpreting the original graph.
    pub fn interpret(&self, inputs: &[interp::Value]) -> Result<Vec<interp::Value>> {
        if inputs.len() != self.inputs.len() {
            return Err(IrError::Interp(format!("kernel graph takes {} inputs, {} given", self.inputs.len(), inputs.len())));
        }
        let mut vals: Vec<Option<interp::Value>> = vec![None; self.buffers.len()];
        for (&b, v) in self.inputs.iter().zip(inputs) {
            let d = self.buffer(b).dtype;
            vals[b.0 as usize] = Some(interp::Value { data: v.data.iter().map(|&x| d.quantize(x)).collect(), ..v.clone() });
        }
        for k in &self.kernels {
            let ins: Vec<interp::Value> = k.inputs.iter().map(|b| vals[b.0 as usize].clone().expect("verified order")).collect();
            for (b, v) in k.outputs.iter().zip(interp::run_unrounded(&k.body, &ins)?) {
                vals[b.0 as usize] = Some(v);
            }
        }
        Ok(self.outputs.iter().map(|b| vals[b.0 as usize].clone().expect("output written")).collect())
    }

    /// Total bytes of all intermediate buffers (an upper bound before memory planning).
    pub fn intermediate_bytes(&self) -> usize {
        let mut skip = vec![false; self.buffers.len()];
        for b in self.inputs.iter().chain(&self.outputs) {
            skip[b.0 as usize] = true;
        }
        self.buffers.iter().enumerate().filter(|(i, _)| !skip[*i]).map(|(_, b)| b.bytes()).sum()
    }
}

impl fmt::Display for KernelGraph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        let _ = writeln!(s, "kernels @{} {{", self.name);
        for (i, (&b, name)) in self.inputs.iter().zip(&self.input_names).enumerate() {
            let buf = self.buffer(b);
            let _ = writeln!(s, "  {b} = input {i} {name:?} : {}{}", buf.dtype, buf.shape);
        }
        for k in &self.kernels {
            let list = |bs: &[BufferId]| bs.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
            let outs: Vec<String> = k.outputs.iter().map(|&b| { let x = self.buffer(b); format!("{b}: {}{}", x.dtype, x.shape) }).collect();
            let _ = write!(s, "  {} {}({}) -> ({}) ", k.kind.name(), k.name, list(&k.inputs), outs.join(", "));
            let body = k.body.to_string();
            for (j, line) in body.trim_end().lines().enumerate() {
                if j > 0 {
                    s.push_str("\n  ");
                }
                s.push_str(line);
            }
            s.push('\n');
        }
        let outs: Vec<String> = self.outputs.iter().map(|b| b.to_string()).collect();
        let _ = writeln!(s, "  return {}\n}}", outs.join(", "));
        f.write_str(&s)
    }
}
