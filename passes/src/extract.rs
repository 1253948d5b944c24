//! Deterministic, sharing-aware extraction, in two phases.
//!
//! 1. **Cost per class, bottom-up** (egg's fixpoint): an e-node costs its own estimate (from
//!    the [`DeviceProfile`]: a matmul or attention is a kernel, an elementwise op one pass
//!    over its output, movement and sources almost nothing) plus, for each operand, the
//!    operand's cost divided by the number of uses it has in the *input* graph. A value read
//!    by k ops is thus paid once in total (each reader pays 1/k), instead of k times as in
//!    egg's tree cost, which also grows exponentially along a residual stream (measured: a
//!    factor of ~600 per GPT-2 layer, overflowing even f64 at 12 layers). Uses are counted
//!    in the input graph, not the e-graph, so an alternative (a `flash_attention` next to
//!    the written-out attention) does not dilute the share of the values it reads.
//! 2. **Sharing**: the chosen DAG is laid out in topological order, and every live class
//!    switches to an alternative whose operands are all already live *earlier* in that order
//!    when its own cost is lower: a value computed anyway is paid once. Switching only to
//!    earlier operands keeps the order valid, so the result stays acyclic.
//!
//! Because shares divide costs, a choice could close a cycle (x = permute(permute(x))); the
//! chosen graph is checked and a cycle-closing node is banned before re-solving. Classes are
//! processed in `Id` order, nodes in the e-graph's sorted order, and only a strictly smaller
//! cost replaces a choice: the same graph gives the same extraction on every run.

use crate::cost::DeviceProfile;
use crate::lang::{Data, EGraph, Kiln};
use crate::PassError;
use egg::{Id, Language, RecExpr};
use std::collections::{HashMap, HashSet};

/// Own cost of an e-node in femtoseconds (at least 1 for every tensor op).
fn own_cost(eg: &EGraph, n: &Kiln, p: &DeviceProfile) -> f64 {
    own_seconds(eg, n, p)
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
        // A matching aid only: its decomposition is always in the same class.
        Kiln::Softmax(_) => f64::INFINITY,
        Kiln::Sum([_, _, x]) | Kiln::MaxReduce([_, _, x]) => elem_bytes(*x) / p.bandwidth + TINY,
        other => {
            // Elementwise: one pass over the largest operand (an upper bound on its output).
            let m = other.children().iter().map(|&c| elem_bytes(c)).fold(0.0, f64::max);
            m / p.bandwidth + TINY
        }
    }
}

/// Extracts the cheapest graph below `root` as a `RecExpr` (DAG, shared nodes once).
/// `uses` gives, per class of the input graph, how many operand slots read it there (other
/// classes count 1).
/// `position` gives, per class of the input graph, the index of its node there.
pub fn extract(eg: &EGraph, root: Id, uses: &HashMap<Id, f64>, position: &HashMap<Id, usize>, p: &DeviceProfile) -> Result<RecExpr<Kiln>, PassError> {
    let mut classes: Vec<Id> = eg.classes().map(|c| c.id).collect();
    classes.sort();
    // A topological key per class: its position in the input graph, or for a class created
    // by a rewrite, the largest key among its first node's operands (it sits right after
    // them). Propagating costs in key order settles in about one pass.
    let mut key: HashMap<Id, (usize, Id)> = HashMap::new();
    for &c in &classes {
        class_key(eg, c, position, &mut key, 0);
    }
    classes.sort_by_key(|c| key[c]);
    let own: HashMap<(Id, usize), f64> = classes
        .iter()
        .flat_map(|&c| eg[c].nodes.iter().enumerate().map(move |(i, n)| ((c, i), n)))
        .map(|(k, n)| (k, own_cost(eg, n, p)))
        .collect();
    // Discounting shared values by their uses can make a cycle look cheapest; when banning
    // cycle nodes does not settle, extract again without the discount (with positive own
    // costs, cheapest choices then form no cycle).
    extract_with(eg, root, &classes, &key, uses, &own).or_else(|e| {
        tracing::debug!("extraction: {e}; retrying without the shared-use discount");
        extract_with(eg, root, &classes, &key, &HashMap::new(), &own)
    })
}

fn extract_with(
    eg: &EGraph,
    root: Id,
    classes: &[Id],
    key: &HashMap<Id, (usize, Id)>,
    uses: &HashMap<Id, f64>,
    own: &HashMap<(Id, usize), f64>,
) -> Result<RecExpr<Kiln>, PassError> {
    let mut banned: HashSet<(Id, usize)> = HashSet::new();
    for _attempt in 0..64 {
        let mut best = best_nodes(eg, classes, key, uses, own, &banned);
        match find_cycle(eg, root, &best)? {
            None => {
                share(eg, root, &mut best, own);
                return Ok(emit(eg, root, &best));
            }
            Some(cycle) => {
                // Ban a node of the cycle whose class keeps another choice (banning the only
                // node of a class would leave it with no finite cost).
                let alive = |&(c, i): &(Id, usize)| (0..eg[c].nodes.len()).any(|j| j != i && !banned.contains(&(c, j)));
                let edge = cycle.iter().rev().copied().find(alive).unwrap_or(cycle[cycle.len() - 1]);
                tracing::debug!(class = %edge.0, node = edge.1, "extraction: banning a node that closes a cycle");
                banned.insert(edge);
            }
        }
    }
    Err(PassError::Internal { stage: "extract", what: "could not find an acyclic extraction".into() })
}

fn class_key(eg: &EGraph, c: Id, position: &HashMap<Id, usize>, key: &mut HashMap<Id, (usize, Id)>, depth: usize) -> (usize, Id) {
    if let Some(&k) = key.get(&c) {
        return k;
    }
    let k = match position.get(&c) {
        Some(&p) => (2 * p, c),
        None if depth > 64 => (usize::MAX, c),
        None => {
            key.insert(c, (usize::MAX, c)); // cycle guard
            let children: Vec<Id> = eg[c].nodes[0].children().iter().map(|&ch| eg.find(ch)).collect();
            let m = children.into_iter().map(|ch| class_key(eg, ch, position, key, depth + 1).0).filter(|&k| k != usize::MAX).max();
            (m.map_or(0, |m| m | 1), c)
        }
    };
    key.insert(c, k);
    k
}

fn best_nodes(
    eg: &EGraph,
    classes: &[Id],
    key: &HashMap<Id, (usize, Id)>,
    uses: &HashMap<Id, f64>,
    own: &HashMap<(Id, usize), f64>,
    banned: &HashSet<(Id, usize)>,
) -> HashMap<Id, (f64, usize)> {
    let mut best: HashMap<Id, (f64, usize)> = HashMap::new();
    // Evaluates one class; true when its cost improved.
    let relax = |c: Id, best: &mut HashMap<Id, (f64, usize)>| -> bool {
        let mut changed = false;
        for (i, n) in eg[c].nodes.iter().enumerate() {
            if banned.contains(&(c, i)) {
                continue;
            }
            let mut cost = own[&(c, i)];
            let mut ok = true;
            for ch in n.children() {
                let ch = eg.find(*ch);
                match best.get(&ch) {
                    Some(&(cc, _)) => cost += cc / uses.get(&ch).copied().unwrap_or(1.0).max(1.0),
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok && best.get(&c).is_none_or(|&(old, _)| cost < old) {
                best.insert(c, (cost, i));
                changed = true;
            }
        }
        changed
    };
    // One sweep in key order, then a worklist of the parents of every class whose cost
    // improved, smallest key first. (Sweeping in id order until nothing changes needs one more
    // sweep per layer of a deep model, since classes created by rewrites are numbered after
    // their users: quadratic time.)
    let mut work: std::collections::BTreeSet<(usize, Id)> = std::collections::BTreeSet::new();
    for &c in classes {
        if relax(c, &mut best) {
            work.extend(eg[c].parents().map(|p| key[&eg.find(p)]));
        }
    }
    let mut steps = 0usize;
    while let Some((_, c)) = work.pop_first() {
        steps += 1;
        if steps > 100 * classes.len() + 1000 {
            tracing::warn!("extraction: cost propagation did not settle; using the costs so far");
            break;
        }
        if relax(c, &mut best) {
            work.extend(eg[c].parents().map(|p| key[&eg.find(p)]));
        }
    }
    tracing::debug!(classes = classes.len(), steps, "extraction costs settled");
    best
}

/// Phase 2: switch live classes to cheaper alternatives over already-live earlier values.
fn share(eg: &EGraph, root: Id, best: &mut HashMap<Id, (f64, usize)>, own: &HashMap<(Id, usize), f64>) {
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
fn topo_order(eg: &EGraph, root: Id, best: &HashMap<Id, (f64, usize)>) -> Vec<Id> {
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

/// Iterative DFS over the chosen nodes; returns the `(class, node)` edges of a cycle, if any
/// (the last one closes it).
fn find_cycle(eg: &EGraph, root: Id, best: &HashMap<Id, (f64, usize)>) -> Result<Option<Vec<(Id, usize)>>, PassError> {
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
                Some(Mark::Open) => {
                    let from = stack.iter().position(|&(s, _)| s == ch).unwrap_or(0);
                    let cycle = stack[from..].iter().map(|&(s, _)| (s, best[&s].1)).collect();
                    return Ok(Some(cycle));
                }
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
fn emit(eg: &EGraph, root: Id, best: &HashMap<Id, (f64, usize)>) -> RecExpr<Kiln> {
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
