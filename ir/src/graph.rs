//! The tensor graph: plain-value nodes in a petgraph `DiGraph`.
//!
//! Graphs are append-only: a node's operands always exist before it, so node index order is
//! a topological order. Passes build new graphs rather than editing in place. Edges run from
//! operand to user and carry the operand position.

use crate::{infer, DType, IrError, Op, Result, Scalar, Shape};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;
use smallvec::SmallVec;
use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};

/// A node's id; prints as `%N` like the text format.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub NodeIndex<u32>);

impl NodeId {
    pub fn index(self) -> usize {
        self.0.index()
    }
    pub fn from_index(i: usize) -> NodeId {
        NodeId(NodeIndex::new(i))
    }
}
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0.index())
    }
}
impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One IR node: a plain value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub op: Op,
    pub dtype: DType,
    pub shape: Shape,
    pub inputs: SmallVec<[NodeId; 3]>,
}

/// A typed tensor graph with named inputs and ordered outputs.
#[derive(Clone)]
pub struct Graph {
    name: String,
    g: DiGraph<Node, u32>,
    inputs: Vec<NodeId>,
    outputs: Vec<NodeId>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), g: DiGraph::default(), inputs: Vec::new(), outputs: Vec::new() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// Adds a named graph input.
    pub fn input(&mut self, name: impl Into<String>, dtype: DType, shape: impl Into<Shape>) -> Result<NodeId> {
        let name = name.into();
        if self.inputs.iter().any(|&i| matches!(&self.node(i).op, Op::Input { name: n } if *n == name)) {
            return Err(IrError::DuplicateInput(name));
        }
        let id = self.push(Node { op: Op::Input { name }, dtype, shape: shape.into(), inputs: SmallVec::new() });
        self.inputs.push(id);
        Ok(id)
    }

    /// A tensor of one value.
    pub fn full(&mut self, value: f64, dtype: DType, shape: impl Into<Shape>) -> NodeId {
        let value = Scalar(dtype.quantize(value));
        self.push(Node { op: Op::Full { value }, dtype, shape: shape.into(), inputs: SmallVec::new() })
    }

    /// `out[..] = index along axis`.
    pub fn iota(&mut self, axis: usize, dtype: DType, shape: impl Into<Shape>) -> Result<NodeId> {
        let shape = shape.into();
        if axis >= shape.rank() {
            return Err(IrError::BadAxis { axis: axis as isize, rank: shape.rank() });
        }
        if dtype == DType::Bool {
            return Err(IrError::BadDType { op: "iota", dtype, expected: "a numeric dtype" });
        }
        Ok(self.push(Node { op: Op::Iota { axis }, dtype, shape, inputs: SmallVec::new() }))
    }

    /// Adds an op over existing nodes, inferring its dtype and shape. Sources (input, full,
    /// iota) have their own constructors because they carry a type instead of inferring one.
    pub fn add(&mut self, op: Op, inputs: &[NodeId]) -> Result<NodeId> {
        for &i in inputs {
            if i.index() >= self.g.node_count() {
                return Err(IrError::UnknownNode(i));
            }
        }
        let (dtype, shape) = {
            let types: SmallVec<[(DType, &Shape); 3]> =
                inputs.iter().map(|&i| (self.g[i.0].dtype, &self.g[i.0].shape)).collect();
            infer::infer(&op, &types)?
        };
        Ok(self.push(Node { op, dtype, shape, inputs: inputs.into() }))
    }

    /// Appends a node as given, with no checks (the parser and passes use this; run the
    /// verifier afterwards). Operands must already exist.
    pub fn push(&mut self, node: Node) -> NodeId {
        let ins = node.inputs.clone();
        let id = NodeId(self.g.add_node(node));
        for (port, i) in ins.iter().enumerate() {
            assert!(i.index() < id.index(), "operand {i} of new node {id} does not precede it");
            self.g.add_edge(i.0, id.0, port as u32);
        }
        id
    }

    /// Registers an already-pushed `Input` node as the next graph input (parser, passes).
    pub fn register_input(&mut self, id: NodeId) {
        self.inputs.push(id);
    }

    pub fn set_outputs(&mut self, outputs: Vec<NodeId>) {
        self.outputs = outputs;
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.0]
    }
    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.g.node_weight(id.0)
    }
    pub fn len(&self) -> usize {
        self.g.node_count()
    }
    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }
    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }
    /// All node ids in topological (insertion) order.
    pub fn ids(&self) -> impl DoubleEndedIterator<Item = NodeId> + ExactSizeIterator + '_ {
        (0..self.g.node_count()).map(NodeId::from_index)
    }
    /// `(id, node)` in topological order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> + '_ {
        self.ids().map(move |i| (i, self.node(i)))
    }
    /// The nodes that read `id`, in ascending order (a node reading it twice appears once).
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut u: Vec<NodeId> = self.g.neighbors_directed(id.0, Direction::Outgoing).map(NodeId).collect();
        u.sort();
        u.dedup();
        u
    }
    /// The name of a graph input node.
    pub fn input_name(&self, id: NodeId) -> Option<&str> {
        match &self.node(id).op {
            Op::Input { name } => Some(name),
            _ => None,
        }
    }
    /// The petgraph underneath, for algorithms (read-only).
    pub fn petgraph(&self) -> &DiGraph<Node, u32> {
        &self.g
    }

    /// Nodes reachable backwards from the outputs (the rest is dead code).
    pub fn live(&self) -> Vec<bool> {
        let mut live = vec![false; self.len()];
        for &o in &self.outputs {
            live[o.index()] = true;
        }
        for &i in &self.inputs {
            live[i.index()] = true;
        }
        for id in self.ids().rev() {
            if live[id.index()] {
                for &i in &self.node(id).inputs {
                    live[i.index()] = true;
                }
            }
        }
        live
    }

    /// A copy without dead nodes (graph inputs are always kept), ids renumbered densely.
    pub fn without_dead_code(&self) -> Graph {
        let live = self.live();
        let mut out = Graph::new(self.name.clone());
        let mut map = vec![None; self.len()];
        for (id, n) in self.nodes() {
            if !live[id.index()] {
                continue;
            }
            let mut n = n.clone();
            n.inputs = n.inputs.iter().map(|i| map[i.index()].expect("live operand mapped")).collect();
            let new = out.push(n);
            map[id.index()] = Some(new);
        }
        out.inputs = self.inputs.iter().map(|i| map[i.index()].unwrap()).collect();
        out.outputs = self.outputs.iter().map(|i| map[i.index()].unwrap()).collect();
        out
    }

    /// A hash of the graph's structure (ops, types, wiring, inputs, outputs), stable within a
    /// build of Kiln; keys compile caches.
    pub fn structural_hash(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash_into(&mut h);
        h.finish()
    }

    fn hash_into<H: Hasher>(&self, h: &mut H) {
        self.name.hash(h);
        self.len().hash(h);
        for (_, n) in self.nodes() {
            n.hash(h);
        }
        self.inputs.hash(h);
        self.outputs.hash(h);
    }
}

impl PartialEq for Graph {
    fn eq(&self, o: &Graph) -> bool {
        self.name == o.name
            && self.inputs == o.inputs
            && self.outputs == o.outputs
            && self.len() == o.len()
            && self.nodes().zip(o.nodes()).all(|((_, a), (_, b))| a == b)
    }
}
impl Eq for Graph {}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
