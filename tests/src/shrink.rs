//! Greedy shrinking of a failing graph to a small one that still fails the same way, and
//! saving it as a regression file (IR text).
//!
//! Steps, repeated until none helps: drop an output; replace a node by a fresh input of the
//! same type; bypass a node whose operand has its type (movement, elementwise); shrink a
//! dim of an input where every op still type-checks. Dead code and unused inputs go after
//! every step, so each candidate is a valid, minimal graph.

use ir::{BinaryOp, Graph, Node, NodeId, Op, Shape, UnaryOp};
use smallvec::SmallVec;
use std::path::{Path, PathBuf};

/// What happens to one node when rebuilding.
#[derive(Clone, Debug)]
enum Edit {
    /// Replace node `NodeId` by a fresh input of its type.
    ToInput(NodeId),
    /// Every use of `.0` reads `.1` instead.
    Bypass(NodeId, NodeId),
    /// Input `.0` gets shape `.1` (everything downstream re-inferred).
    Reshape(NodeId, Shape),
    /// Keep only these outputs.
    Outputs(Vec<NodeId>),
}

/// Applies one edit; `None` when the result does not type-check.
fn apply(g: &Graph, edit: &Edit) -> Option<Graph> {
    let mut out = Graph::new(g.name());
    let mut map: Vec<Option<NodeId>> = vec![None; g.len()];
    let outputs = match edit {
        Edit::Outputs(o) => o.clone(),
        _ => g.outputs().to_vec(),
    };
    // Liveness from the outputs only, so unused inputs disappear too.
    let mut live = vec![false; g.len()];
    for o in &outputs {
        live[o.index()] = true;
    }
    for id in g.ids().rev() {
        if !live[id.index()] {
            continue;
        }
        match edit {
            Edit::ToInput(r) if *r == id => continue,
            Edit::Bypass(r, to) if *r == id => {
                live[to.index()] = true;
                continue;
            }
            _ => {}
        }
        for i in &g.node(id).inputs {
            live[i.index()] = true;
        }
    }
    let reinfer = matches!(edit, Edit::Reshape(..));
    for (id, n) in g.nodes() {
        if !live[id.index()] {
            continue;
        }
        let new = match edit {
            Edit::ToInput(r) if *r == id => {
                let name = format!("s{}", id.index());
                let fresh = Node { op: Op::Input { name }, dtype: n.dtype, shape: n.shape.clone(), inputs: SmallVec::new() };
                let nid = out.push(fresh);
                out.register_input(nid);
                nid
            }
            Edit::Bypass(r, to) if *r == id => map[to.index()]?,
            Edit::Reshape(r, s) if *r == id => {
                let nid = out.push(Node { shape: s.clone(), ..n.clone() });
                out.register_input(nid);
                nid
            }
            _ => {
                let ins: Vec<NodeId> = n.inputs.iter().map(|i| map[i.index()]).collect::<Option<_>>()?;
                match &n.op {
                    Op::Input { .. } => {
                        let nid = out.push(n.clone());
                        out.register_input(nid);
                        nid
                    }
                    Op::Full { .. } | Op::Iota { .. } => out.push(n.clone()),
                    op if reinfer => out.add(op.clone(), &ins).ok()?,
                    _ => out.push(Node { inputs: ins.into(), ..n.clone() }),
                }
            }
        };
        map[id.index()] = Some(new);
    }
    out.set_outputs(outputs.iter().map(|o| map[o.index()]).collect::<Option<_>>()?);
    ir::verify::verify(&out).ok()?;
    Some(out)
}

/// Nodes whose removal would take away a guard that keeps the reference well conditioned
/// (`|x| + c` under log, sqrt, div, ...): never bypassed.
fn is_guard(g: &Graph, id: NodeId) -> bool {
    let n = g.node(id);
    match n.op {
        Op::Unary(UnaryOp::Abs) => true,
        Op::Binary(BinaryOp::Add) => n.inputs.iter().any(|&i| matches!(g.node(i).op, Op::Full { .. })),
        _ => false,
    }
}

fn candidates(g: &Graph) -> Vec<Edit> {
    let mut c = Vec::new();
    let outs = g.outputs();
    if outs.len() > 1 {
        for i in 0..outs.len() {
            let mut o = outs.to_vec();
            o.remove(i);
            c.push(Edit::Outputs(o));
        }
    }
    let live = g.live();
    // Later nodes first: cutting near the outputs removes the most.
    for (id, n) in g.nodes().collect::<Vec<_>>().into_iter().rev() {
        if !live[id.index()] || matches!(n.op, Op::Input { .. } | Op::Full { .. }) {
            continue;
        }
        for &i in n.inputs.iter().rev() {
            let m = g.node(i);
            if m.dtype == n.dtype && m.shape == n.shape && !is_guard(g, id) {
                c.push(Edit::Bypass(id, i));
            }
        }
    }
    for (id, n) in g.nodes() {
        if live[id.index()] && !matches!(n.op, Op::Input { .. }) {
            c.push(Edit::ToInput(id));
        }
    }
    for &i in g.inputs() {
        let s = &g.node(i).shape;
        for (a, &d) in s.dims().iter().enumerate() {
            for smaller in [1, d / 2, d - 1] {
                if smaller >= 1 && smaller < d {
                    let mut dims = s.dims().to_vec();
                    dims[a] = smaller;
                    c.push(Edit::Reshape(i, Shape::new(dims)));
                }
            }
        }
    }
    c
}

/// A measure of size: live nodes, then elements (smaller is better).
pub fn size(g: &Graph) -> (usize, usize) {
    let live = g.live();
    let nodes = live.iter().filter(|&&l| l).count();
    let elems = g.nodes().filter(|(id, _)| live[id.index()]).map(|(_, n)| n.shape.numel()).sum();
    (nodes, elems)
}

/// Shrinks `g` while `fails` holds; `budget` bounds the number of `fails` calls.
pub fn shrink(g: &Graph, mut budget: usize, fails: &mut dyn FnMut(&Graph) -> bool) -> Graph {
    let mut best = apply(g, &Edit::Outputs(g.outputs().to_vec())).unwrap_or_else(|| g.clone());
    if !fails(&best) {
        best = g.clone();
    }
    'outer: loop {
        for edit in candidates(&best) {
            if budget == 0 {
                break 'outer;
            }
            let Some(cand) = apply(&best, &edit) else { continue };
            if size(&cand) >= size(&best) {
                continue;
            }
            budget -= 1;
            if fails(&cand) {
                best = cand;
                continue 'outer;
            }
        }
        break;
    }
    best
}

/// Writes `g` as `dir/NAME.kir`: `#` comment lines (`header`), then the IR text.
pub fn save(dir: &Path, name: &str, g: &Graph, header: &[String]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.kir"));
    let mut text = String::new();
    for h in header {
        text.push_str("# ");
        text.push_str(h);
        text.push('\n');
    }
    text.push_str(&g.to_string());
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Reads a regression file: drops `#` comment lines, parses the rest.
pub fn load(path: &Path) -> Result<Graph, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let body: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).map(|l| format!("{l}\n")).collect();
    ir::text::parse(&body).map_err(|e| format!("{}: {e}", path.display()))
}
