//! Deterministic, sharing-aware extraction, in two phases.
//!
//! 1. **Cost per class, bottom-up** (egg's fixpoint): an e-node costs its own estimate (from
//!    the [`DeviceProfile`]: a matmul or attention is a kernel, an elementwise op one pass
//!    over its output, movement and sources almost nothing) plus the costs of its children.
//!    Costs are exact integers (femtoseconds, `u128`, saturating), so sums that grow with
//!    the depth of a residual stream never lose the small differences that decide between
//!    alternatives (with f64 a 48-layer model would round `flash` and its decomposition to
//!    the same cost). Every tensor node costs at least 1 fs, so a choice's children are
//!    strictly cheaper than the choice and the chosen graph is acyclic.
//! 2. **Sharing**: the chosen DAG is laid out in topological order, and every live class
//!    switches to an alternative whose operands are all already live *earlier* in that order
//!    when its own cost is lower: a value computed anyway is paid once, not again per use
//!    (a tree cost alone would charge it at every use). Switching only to earlier operands
//!    keeps the order valid, so the result stays acyclic. Dead classes drop out on emission.
//!
//! Classes are processed in `Id` order, nodes in the e-graph's sorted order, and only a
//! strictly smaller cost replaces a choice: the same graph gives the same extraction.

use crate::cost::DeviceProfile;
use crate::lang::{Data, EGraph, Kiln};
use crate::PassError;
use egg::{Id, Language, RecExpr};
use std::collections::{HashMap, HashSet};

/// Own cost of an e-node in femtoseconds (at least 1 for every tensor op).
fn own_cost(eg: &EGraph, n: &Kiln, p: &DeviceProfile) -> u128 {
    match n {
        Kiln::Attr(_) | Kiln::Root(_) | Kiln::Input(_) => 0,
        _ => ((own_seconds(eg, n, p) * 1e15).round() as u128).max(1),
    }
}

/// Own cost of an e-node, in (estimated) seconds.
fn own_seconds(eg: &EGraph, n: &Kiln, p: &DeviceProfile) -> f64 {
    const TINY: f64 = 1e-15;
    let t = |id: Id| match &eg[id].data {
        Data::Tensor(t) => Some(t),
        _ => None,
    };
    let elem_bytes = |id: Id| t(id).map(|t| (t.shape.numel() * t.dtype.size_bytes()) as f64).unwrap_or(0.0);
    let is_source = |id: Id| eg[id].nodes.iter().any(|n| matches!(n, Kiln::Input(_) | Kiln::Full(_) | Kiln::Iota(_)));
    match n {
        Kiln::Attr(_) | Kiln::Root(_) | Kiln::Input(_) => 0.0,
        Kiln::Full(_) | Kiln::Iota(_) => TINY,
        Kiln::Reshape([_, x]) | Kiln::Permute([_, x]) | Kiln::Expand([_, x]) | Kiln::Slice([_, x]) | Kiln::Pad([_, _, x]) => {
            // Prefer movement on sources (a free index map on a load) to movement of a
            // computed value (which may force a copy between kernels).
            if is_source(*x) { TINY } else { 1e-12 }
        }
        Kiln::Concat(_) => 1e-12,
        Kiln::MatMul([a, b]) | Kiln::Flash([_, _, a, b, _]) => {
            let (ta, tb) = (t(*a).expect("tensor"), t(*b).expect("tensor"));
            let bytes = elem_bytes(*a) + elem_bytes(*b) + if let Kiln::Flash([_, _, _, _, v]) = n { 2.0 * elem_bytes(*v) } else { 0.0 };
            let flops = match n {
                Kiln::MatMul(_) => {
                    let k = ta.shape.dims()[ta.shape.rank() - 1] as f64;
                    let n_ = tb.shape.dims()[tb.shape.rank() - 1] as f64;
                    let m = ta.shape.numel() as f64 / k;
                    2.0 * m * n_ * k
                }
                _ => {
                    let r = ta.shape.rank();
                    4.0 * ta.shape.numel() as f64 * tb.shape.dims()[r - 2] as f64
                }
            };
            p.kernel_seconds(bytes, flops)
        }
        Kiln::Softmax(x) => 4.0 * elem_bytes(*x) / p.bandwidth,
        Kiln::Sum([_, _, x]) | Kiln::MaxReduce([_, _, x]) => elem_bytes(*x) / p.bandwidth + TINY,
        other => {
            // Elementwise: one pass over the largest operand (an upper bound on its output).
            let m = other.children().iter().map(|&c| elem_bytes(c)).fold(0.0, f64::max);
            m / p.bandwidth + TINY
        }
    }
}

/// Extracts the cheapest graph below `root` as a `RecExpr` (DAG, shared nodes once).
pub fn extract(eg: &EGraph, root: Id, p: &DeviceProfile) -> Result<RecExpr<Kiln>, PassError> {
    let mut classes: Vec<Id> = eg.classes().map(|c| c.id).collect();
    classes.sort();
    let own: HashMap<(Id, usize), u128> = classes
        .iter()
        .flat_map(|&c| eg[c].nodes.iter().enumerate().map(move |(i, n)| ((c, i), n)))
        .map(|(k, n)| (k, own_cost(eg, n, p)))
        .collect();
    let mut banned: HashSet<(Id, usize)> = HashSet::new();
    for _attempt in 0..64 {
        let mut best = best_nodes(eg, &classes, &own, &banned);
        match find_cycle(eg, root, &best)? {
            None => {
                share(eg, root, &mut best, &own);
                return Ok(emit(eg, root, &best));
            }
            Some(edge) => {
                tracing::debug!(class = %edge.0, node = edge.1, "extraction: banning a node that closes a cycle");
                banned.insert(edge);
            }
        }
    }
    Err(PassError::Internal { stage: "extract", what: "could not find an acyclic extraction".into() })
}

fn best_nodes(eg: &EGraph, classes: &[Id], own: &HashMap<(Id, usize), u128>, banned: &HashSet<(Id, usize)>) -> HashMap<Id, (u128, usize)> {
    let mut best: HashMap<Id, (u128, usize)> = HashMap::new();
    for _pass in 0..1000 {
        let mut changed = false;
        for &c in classes {
            for (i, n) in eg[c].nodes.iter().enumerate() {
                if banned.contains(&(c, i)) {
                    continue;
                }
                let mut cost = own[&(c, i)];
                let mut ok = true;
                for ch in n.children() {
                    match best.get(&eg.find(*ch)) {
                        Some(&(cc, _)) => cost = cost.saturating_add(cc),
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                if !ok {
                    continue;
                }
                match best.get(&c) {
                    Some(&(old, _)) if cost >= old => {}
                    _ => {
                        best.insert(c, (cost, i));
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    best
}

/// Phase 2: switch live classes to cheaper alternatives over already-live earlier values.
fn share(eg: &EGraph, root: Id, best: &mut HashMap<Id, (u128, usize)>, own: &HashMap<(Id, usize), u128>) {
    let order = topo_order(eg, root, best);
    let pos: HashMap<Id, usize> = order.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    for &c in &order {
        let (cost, cur) = best[&c];
        let mut choice = cur;
        for (i, n) in eg[c].nodes.iter().enumerate() {
            let earlier = n.children().iter().all(|ch| pos.get(&eg.find(*ch)).is_some_and(|&p| p < pos[&c]));
            if earlier && own[&(c, i)] < own[&(c, choice)] {
                choice = i;
            }
        }
        if choice != cur {
            best.insert(c, (cost, choice));
        }
    }
}

/// Classes reachable from the root under the current choice, children before parents.
fn topo_order(eg: &EGraph, root: Id, best: &HashMap<Id, (u128, usize)>) -> Vec<Id> {
    let mut order = Vec::new();
    let mut seen: HashSet<Id> = HashSet::new();
    let mut stack: Vec<(Id, bool)> = vec![(eg.find(root), false)];
    while let Some((c, expanded)) = stack.pop() {
        if expanded {
            order.push(c);
            continue;
        }
        if !seen.insert(c) {
            continue;
        }
        stack.push((c, true));
        for ch in eg[c].nodes[best[&c].1].children().iter().rev() {
            let ch = eg.find(*ch);
            if !seen.contains(&ch) {
                stack.push((ch, false));
            }
        }
    }
    order
}

/// Iterative DFS over the chosen nodes; returns a `(class, node)` closing a cycle, if any.
fn find_cycle(eg: &EGraph, root: Id, best: &HashMap<Id, (u128, usize)>) -> Result<Option<(Id, usize)>, PassError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut mark: HashMap<Id, Mark> = HashMap::new();
    let mut stack: Vec<(Id, usize)> = vec![(eg.find(root), 0)];
    mark.insert(eg.find(root), Mark::Open);
    while let Some(&mut (c, ref mut next)) = stack.last_mut() {
        let Some(&(_, ni)) = best.get(&c) else {
            return Err(PassError::Internal { stage: "extract", what: format!("e-class {c} has no finite-cost node") });
        };
        let children = eg[c].nodes[ni].children();
        if *next < children.len() {
            let ch = eg.find(children[*next]);
            *next += 1;
            match mark.get(&ch) {
                Some(Mark::Open) => return Ok(Some((c, ni))),
                Some(Mark::Done) => {}
                None => {
                    mark.insert(ch, Mark::Open);
                    stack.push((ch, 0));
                }
            }
        } else {
            mark.insert(c, Mark::Done);
            stack.pop();
        }
    }
    Ok(None)
}

/// Post-order emission of the chosen DAG.
fn emit(eg: &EGraph, root: Id, best: &HashMap<Id, (u128, usize)>) -> RecExpr<Kiln> {
    let mut expr = RecExpr::default();
    let mut done: HashMap<Id, Id> = HashMap::new();
    let mut stack: Vec<(Id, bool)> = vec![(eg.find(root), false)];
    while let Some((c, expanded)) = stack.pop() {
        if done.contains_key(&c) {
            continue;
        }
        let node = &eg[c].nodes[best[&c].1];
        if expanded {
            let n = node.clone().map_children(|ch| done[&eg.find(ch)]);
            done.insert(c, expr.add(n));
        } else {
            stack.push((c, true));
            for ch in node.children().iter().rev() {
                let ch = eg.find(*ch);
                if !done.contains_key(&ch) {
                    stack.push((ch, false));
                }
            }
        }
    }
    expr
}
