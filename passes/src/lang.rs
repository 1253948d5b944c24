//! The egg language mirroring the IR, its shape/dtype analysis, and the one conversion
//! between `ir::Graph` and `RecExpr<Kiln>`.
//!
//! Attributes are leaf e-nodes ([`Attr`]): `(reshape [2,3] ?x)`, `(sum [1] true ?x)`,
//! `(cast f32 ?x)`, `(input 0 f32[2,3])`. A whole graph is one expression whose root is
//! `(graph n_inputs inputs.. outputs..)`, so a DAG with several outputs round-trips exactly.
//!
//! `softmax` is a helper composite that rules create next to the written-out softmax over
//! the last axis; it lowers back to its decomposition and exists so attention rules can
//! match one node instead of eight.

use egg::{define_language, DidMerge, Id, Language, RecExpr};
use ir::{BinaryOp, CmpOp, DType, Graph, Node, NodeId, Op, ReduceOp, Scalar, Shape, UnaryOp};
use smallvec::SmallVec;
use std::fmt;
use std::str::FromStr;

/// An attribute leaf. Prints so that every variant parses back unambiguously.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attr {
    /// `3` (axes, input positions, counts).
    Int(i64),
    /// `true` / `false` (keepdim, causal).
    Bool(bool),
    /// A float by its bits: prints like `0.125`, `-inf`, `1e-5`.
    Float(u64),
    /// `f32` (cast targets).
    DType(DType),
    /// `f32[2,3]` (the type of a source).
    Ty(DType, Shape),
    /// `[2,3]` (shapes, permutations, axes, slice ranges).
    List(Vec<usize>),
    /// `pads[0:1,2:0]` (before:after per axis).
    Pads(Vec<(usize, usize)>),
}

impl Attr {
    pub fn float(x: f64) -> Attr {
        Attr::Float(Scalar(x).0.to_bits()).canonical()
    }
    fn canonical(self) -> Attr {
        match self {
            Attr::Float(b) if f64::from_bits(b).is_nan() => Attr::Float(f64::NAN.to_bits()),
            a => a,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Attr::Float(b) => Some(f64::from_bits(*b)),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&[usize]> {
        match self {
            Attr::List(l) => Some(l),
            _ => None,
        }
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |l: &[usize]| l.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
        match self {
            Attr::Int(i) => write!(f, "{i}"),
            Attr::Bool(b) => write!(f, "{b}"),
            Attr::Float(b) => {
                let x = f64::from_bits(*b);
                if x.is_finite() && x == x.trunc() && !format!("{x:?}").contains(['.', 'e']) {
                    write!(f, "{x:?}.0")
                } else {
                    write!(f, "{}", Scalar(x))
                }
            }
            Attr::DType(d) => write!(f, "{d}"),
            Attr::Ty(d, s) => write!(f, "{d}[{}]", list(s.dims())),
            Attr::List(l) => write!(f, "[{}]", list(l)),
            Attr::Pads(p) => {
                let s: Vec<String> = p.iter().map(|(a, b)| format!("{a}:{b}")).collect();
                write!(f, "pads[{}]", s.join(","))
            }
        }
    }
}

fn parse_list(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    inner.split(',').map(|x| x.trim().parse().ok()).collect()
}

impl FromStr for Attr {
    type Err = String;
    fn from_str(s: &str) -> Result<Attr, String> {
        if s == "true" || s == "false" {
            return Ok(Attr::Bool(s == "true"));
        }
        if let Some(d) = DType::from_name(s) {
            return Ok(Attr::DType(d));
        }
        if let Some(rest) = s.strip_prefix("pads") {
            let inner = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')).ok_or("bad pads")?;
            let mut v = Vec::new();
            for p in inner.split(',').filter(|p| !p.is_empty()) {
                let (a, b) = p.split_once(':').ok_or("bad pad pair")?;
                v.push((a.parse().map_err(|_| "bad pad")?, b.parse().map_err(|_| "bad pad")?));
            }
            return Ok(Attr::Pads(v));
        }
        if s.starts_with('[') {
            return parse_list(s).map(Attr::List).ok_or_else(|| format!("bad list {s}"));
        }
        if let Some(i) = s.find('[') {
            if let Some(d) = DType::from_name(&s[..i]) {
                let dims = parse_list(&s[i..]).ok_or_else(|| format!("bad type {s}"))?;
                return Ok(Attr::Ty(d, Shape::new(dims)));
            }
        }
        let intlike = !s.is_empty() && s.trim_start_matches('-').chars().all(|c| c.is_ascii_digit());
        if intlike {
            return s.parse().map(Attr::Int).map_err(|_| format!("bad int {s}"));
        }
        match s.parse::<f64>() {
            Ok(x) if s.chars().next().is_some_and(|c| c.is_ascii_digit() || c == '-' || c == 'i' || c == 'n') => Ok(Attr::float(x)),
            _ => Err(format!("not an attribute: {s}")),
        }
    }
}

define_language! {
    /// Kiln's ops as an egg language; attributes are leaf children ([`Attr`]).
    pub enum Kiln {
        // sources: (input position ty), (full value ty), (iota axis ty)
        "input" = Input([Id; 2]),
        "full" = Full([Id; 2]),
        "iota" = Iota([Id; 2]),
        // unary
        "neg" = Neg(Id), "abs" = Abs(Id), "exp" = Exp(Id), "log" = Log(Id), "sqrt" = Sqrt(Id),
        "rsqrt" = Rsqrt(Id), "recip" = Recip(Id), "tanh" = Tanh(Id), "erf" = Erf(Id),
        "sin" = Sin(Id), "cos" = Cos(Id), "floor" = Floor(Id), "not" = Not(Id),
        // binary
        "add" = Add([Id; 2]), "sub" = Sub([Id; 2]), "mul" = Mul([Id; 2]), "div" = Div([Id; 2]),
        "max" = Max([Id; 2]), "min" = Min([Id; 2]), "pow" = Pow([Id; 2]), "and" = And([Id; 2]),
        "or" = Or([Id; 2]),
        // compare
        "eq" = Eq([Id; 2]), "ne" = Ne([Id; 2]), "lt" = Lt([Id; 2]), "le" = Le([Id; 2]),
        "gt" = Gt([Id; 2]), "ge" = Ge([Id; 2]),
        "where" = Where([Id; 3]),
        // (cast dtype x)
        "cast" = Cast([Id; 2]),
        // (sum axes keepdim x), (max_reduce axes keepdim x)
        "sum" = Sum([Id; 3]),
        "max_reduce" = MaxReduce([Id; 3]),
        // movement: (reshape shape x) (permute perm x) (expand shape x)
        // (slice [axis,start,end,step] x) (concat axis xs..) (pad pads value x)
        "reshape" = Reshape([Id; 2]),
        "permute" = Permute([Id; 2]),
        "expand" = Expand([Id; 2]),
        "slice" = Slice([Id; 2]),
        "concat" = Concat(Box<[Id]>),
        "pad" = Pad([Id; 3]),
        "matmul" = MatMul([Id; 2]),
        // (flash_attention causal scale q k v)
        "flash_attention" = Flash([Id; 5]),
        // helper composite: softmax over the last axis
        "softmax" = Softmax(Id),
        // (graph n_inputs inputs.. outputs..)
        "graph" = Root(Box<[Id]>),
        Attr(Attr),
    }
}

pub type EGraph = egg::EGraph<Kiln, TypeAnalysis>;
pub type Rewrite = egg::Rewrite<Kiln, TypeAnalysis>;

/// What the analysis knows about a tensor-valued e-class.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Shape,
    /// Every element equals this value (constant folding and rule conditions use it).
    pub konst: Option<f64>,
    /// The value depends on no graph input (masks built from `iota`, constants).
    pub pure: bool,
}

/// Analysis data: an attribute leaf, a tensor, or the graph root.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Attr(Attr),
    Tensor(TensorInfo),
    Root,
}

impl Data {
    pub fn tensor(&self) -> &TensorInfo {
        match self {
            Data::Tensor(t) => t,
            other => panic!("invariant: expected a tensor e-class, found {other:?}"),
        }
    }
    pub fn attr(&self) -> &Attr {
        match self {
            Data::Attr(a) => a,
            other => panic!("invariant: expected an attribute e-class, found {other:?}"),
        }
    }
}

/// Carries dtype and shape (and constant-ness) per e-class; panics when a rewrite merges two
/// classes of different types, since that means a rule is unsound.
#[derive(Default, Clone, Debug)]
pub struct TypeAnalysis;

impl egg::Analysis<Kiln> for TypeAnalysis {
    type Data = Data;

    fn make(egraph: &mut EGraph, enode: &Kiln) -> Data {
        let attr = |id: Id| egraph[id].data.attr().clone();
        match enode {
            Kiln::Attr(a) => return Data::Attr(a.clone()),
            Kiln::Root(_) => return Data::Root,
            _ => {}
        }
        let lowered = lower(enode, &attr).unwrap_or_else(|e| panic!("invariant: malformed e-node {enode}: {e}"));
        let ins: Vec<&TensorInfo> = lowered.tensor_children.iter().map(|&c| egraph[c].data.tensor()).collect();
        let (dtype, shape) = match (&lowered.op, &lowered.source_type) {
            (_, Some((d, s))) => (*d, s.clone()),
            (None, None) => (ins[0].dtype, ins[0].shape.clone()), // softmax
            (Some(op), None) => {
                let types: Vec<(DType, &Shape)> = ins.iter().map(|t| (t.dtype, &t.shape)).collect();
                ir::infer::infer(op, &types).unwrap_or_else(|e| {
                    panic!("invariant: a rewrite built an ill-typed node {enode}: {e}")
                })
            }
        };
        let pure = !matches!(enode, Kiln::Input(_)) && ins.iter().all(|t| t.pure);
        let konst = lowered.op.as_ref().and_then(|op| fold(op, dtype, &ins));
        Data::Tensor(TensorInfo { dtype, shape, konst, pure })
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        match (&mut *a, b) {
            (Data::Attr(x), Data::Attr(y)) => {
                assert_eq!(*x, y, "invariant: two different attributes were merged");
                DidMerge(false, false)
            }
            (Data::Root, Data::Root) => DidMerge(false, false),
            (Data::Tensor(x), Data::Tensor(y)) => {
                assert!(
                    x.dtype == y.dtype && x.shape == y.shape,
                    "invariant: a rewrite merged e-classes of different types: {}{} and {}{}",
                    x.dtype, x.shape, y.dtype, y.shape
                );
                let mut changed_a = false;
                if x.konst.is_none() && y.konst.is_some() {
                    x.konst = y.konst;
                    changed_a = true;
                }
                if !x.pure && y.pure {
                    x.pure = true;
                    changed_a = true;
                }
                let changed_b = (y.konst.is_none() && x.konst.is_some()) || (!y.pure && x.pure);
                DidMerge(changed_a, changed_b)
            }
            (x, y) => panic!("invariant: merged e-classes of different sorts: {x:?} and {y:?}"),
        }
    }

    /// Constant folding: a class whose every element is known gets a `full` node.
    fn modify(egraph: &mut EGraph, id: Id) {
        let Data::Tensor(t) = &egraph[id].data else { return };
        let Some(v) = t.konst else { return };
        if egraph[id].nodes.iter().any(|n| matches!(n, Kiln::Full(_))) {
            return;
        }
        let ty = Attr::Ty(t.dtype, t.shape.clone());
        let v = egraph.add(Kiln::Attr(Attr::float(v)));
        let ty = egraph.add(Kiln::Attr(ty));
        let full = egraph.add(Kiln::Full([v, ty]));
        egraph.union(id, full);
    }
}

/// Folds an op over constant operands (same semantics as `ir::interp`, rounded to `dtype`).
fn fold(op: &Op, dtype: DType, ins: &[&TensorInfo]) -> Option<f64> {
    if let Op::Full { value } = op {
        return Some(value.0);
    }
    if ins.is_empty() {
        return None;
    }
    let ks: Option<Vec<f64>> = ins.iter().map(|t| t.konst).collect();
    let ks = ks?;
    let v = match op {
        Op::Unary(u) => eval_unary(*u, ks[0]),
        Op::Binary(b) => eval_binary(*b, ins[0].dtype, ks[0], ks[1]),
        Op::Compare(c) => eval_compare(*c, ks[0], ks[1]),
        Op::Where => {
            if ks[0] != 0.0 { ks[1] } else { ks[2] }
        }
        Op::Cast { to } => to.quantize(ks[0]),
        Op::Reduce { op: ReduceOp::Max, .. } => ks[0],
        Op::Reduce { op: ReduceOp::Sum, axes, .. } => {
            let n: usize = axes.iter().map(|&a| ins[0].shape.dims()[a]).product();
            ks[0] * n as f64
        }
        Op::Reshape { .. } | Op::Permute { .. } | Op::Expand { .. } | Op::Slice { .. } => ks[0],
        Op::Concat { .. } if ks.iter().all(|k| k.to_bits() == ks[0].to_bits()) => ks[0],
        Op::Pad { value, .. } if value.0.to_bits() == ks[0].to_bits() => ks[0],
        _ => return None,
    };
    Some(if dtype.is_float() { v } else { dtype.quantize(v) })
}

// Scalar semantics are the interpreter's, so folded constants agree with the oracle exactly.
pub use ir::interp::{eval_binary, eval_compare, eval_unary};

/// An e-node read as an IR op: the op (None for the `softmax` helper), its tensor children,
/// and for sources their declared type.
pub struct Lowered {
    pub op: Option<Op>,
    pub tensor_children: SmallVec<[Id; 3]>,
    pub source_type: Option<(DType, Shape)>,
}

fn int(a: &Attr) -> Result<usize, String> {
    match a {
        Attr::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(format!("expected a non-negative integer, got {other}")),
    }
}
fn list(a: &Attr) -> Result<Vec<usize>, String> {
    a.as_list().map(|l| l.to_vec()).ok_or_else(|| format!("expected a list, got {a}"))
}

/// Reads an e-node as an IR op; `attr` gives the attribute of an attribute child.
pub fn lower(n: &Kiln, attr: &dyn Fn(Id) -> Attr) -> Result<Lowered, String> {
    use Kiln as K;
    let t = |c: &[Id]| -> SmallVec<[Id; 3]> { c.iter().copied().collect() };
    let unary = |u: UnaryOp, c: Id| Lowered { op: Some(Op::Unary(u)), tensor_children: t(&[c]), source_type: None };
    let bin = |b: Op, c: &[Id; 2]| Lowered { op: Some(b), tensor_children: t(c), source_type: None };
    let ty = |id: Id| match attr(id) {
        Attr::Ty(d, s) => Ok((d, s)),
        other => Err(format!("expected a type, got {other}")),
    };
    Ok(match n {
        K::Input([i, ty_]) => Lowered { op: Some(Op::Input { name: format!("in{}", int(&attr(*i))?) }), tensor_children: t(&[]), source_type: Some(ty(*ty_)?) },
        K::Full([v, ty_]) => {
            let v = attr(*v).as_f64().ok_or("full value must be a float")?;
            Lowered { op: Some(Op::Full { value: Scalar(v) }), tensor_children: t(&[]), source_type: Some(ty(*ty_)?) }
        }
        K::Iota([a, ty_]) => Lowered { op: Some(Op::Iota { axis: int(&attr(*a))? }), tensor_children: t(&[]), source_type: Some(ty(*ty_)?) },
        K::Neg(c) => unary(UnaryOp::Neg, *c),
        K::Abs(c) => unary(UnaryOp::Abs, *c),
        K::Exp(c) => unary(UnaryOp::Exp, *c),
        K::Log(c) => unary(UnaryOp::Log, *c),
        K::Sqrt(c) => unary(UnaryOp::Sqrt, *c),
        K::Rsqrt(c) => unary(UnaryOp::Rsqrt, *c),
        K::Recip(c) => unary(UnaryOp::Recip, *c),
        K::Tanh(c) => unary(UnaryOp::Tanh, *c),
        K::Erf(c) => unary(UnaryOp::Erf, *c),
        K::Sin(c) => unary(UnaryOp::Sin, *c),
        K::Cos(c) => unary(UnaryOp::Cos, *c),
        K::Floor(c) => unary(UnaryOp::Floor, *c),
        K::Not(c) => unary(UnaryOp::Not, *c),
        K::Add(c) => bin(Op::Binary(BinaryOp::Add), c),
        K::Sub(c) => bin(Op::Binary(BinaryOp::Sub), c),
        K::Mul(c) => bin(Op::Binary(BinaryOp::Mul), c),
        K::Div(c) => bin(Op::Binary(BinaryOp::Div), c),
        K::Max(c) => bin(Op::Binary(BinaryOp::Max), c),
        K::Min(c) => bin(Op::Binary(BinaryOp::Min), c),
        K::Pow(c) => bin(Op::Binary(BinaryOp::Pow), c),
        K::And(c) => bin(Op::Binary(BinaryOp::And), c),
        K::Or(c) => bin(Op::Binary(BinaryOp::Or), c),
        K::Eq(c) => bin(Op::Compare(CmpOp::Eq), c),
        K::Ne(c) => bin(Op::Compare(CmpOp::Ne), c),
        K::Lt(c) => bin(Op::Compare(CmpOp::Lt), c),
        K::Le(c) => bin(Op::Compare(CmpOp::Le), c),
        K::Gt(c) => bin(Op::Compare(CmpOp::Gt), c),
        K::Ge(c) => bin(Op::Compare(CmpOp::Ge), c),
        K::Where(c) => Lowered { op: Some(Op::Where), tensor_children: t(c), source_type: None },
        K::Cast([d, x]) => match attr(*d) {
            Attr::DType(to) => Lowered { op: Some(Op::Cast { to }), tensor_children: t(&[*x]), source_type: None },
            other => return Err(format!("cast target must be a dtype, got {other}")),
        },
        K::Sum([a, k, x]) | K::MaxReduce([a, k, x]) => {
            let op = if matches!(n, K::Sum(_)) { ReduceOp::Sum } else { ReduceOp::Max };
            let keepdim = matches!(attr(*k), Attr::Bool(true));
            Lowered { op: Some(Op::Reduce { op, axes: list(&attr(*a))?, keepdim }), tensor_children: t(&[*x]), source_type: None }
        }
        K::Reshape([s, x]) => Lowered { op: Some(Op::Reshape { shape: Shape::new(list(&attr(*s))?) }), tensor_children: t(&[*x]), source_type: None },
        K::Permute([p, x]) => Lowered { op: Some(Op::Permute { perm: list(&attr(*p))? }), tensor_children: t(&[*x]), source_type: None },
        K::Expand([s, x]) => Lowered { op: Some(Op::Expand { shape: Shape::new(list(&attr(*s))?) }), tensor_children: t(&[*x]), source_type: None },
        K::Slice([r, x]) => {
            let r = list(&attr(*r))?;
            let [axis, start, end, step] = r[..] else { return Err("slice needs [axis,start,end,step]".into()) };
            Lowered { op: Some(Op::Slice { axis, start, end, step }), tensor_children: t(&[*x]), source_type: None }
        }
        K::Concat(c) => {
            let (a, xs) = c.split_first().ok_or("concat needs an axis")?;
            Lowered { op: Some(Op::Concat { axis: int(&attr(*a))? }), tensor_children: xs.iter().copied().collect(), source_type: None }
        }
        K::Pad([p, v, x]) => {
            let Attr::Pads(pads) = attr(*p) else { return Err("pad needs pads".into()) };
            let value = Scalar(attr(*v).as_f64().ok_or("pad value must be a float")?);
            Lowered { op: Some(Op::Pad { pads, value }), tensor_children: t(&[*x]), source_type: None }
        }
        K::MatMul(c) => bin(Op::MatMul, c),
        K::Flash([c, s, q, k, v]) => {
            let causal = matches!(attr(*c), Attr::Bool(true));
            let scale = Scalar(attr(*s).as_f64().ok_or("flash scale must be a float")?);
            Lowered { op: Some(Op::FlashAttention { causal, scale }), tensor_children: t(&[*q, *k, *v]), source_type: None }
        }
        K::Softmax(x) => Lowered { op: None, tensor_children: t(&[*x]), source_type: None },
        K::Root(_) | K::Attr(_) => return Err("not an op".into()),
    })
}

/// Builds the e-node for an IR node whose operands are already `ins`; `leaf` adds attributes.
pub fn raise(n: &Node, input_pos: Option<usize>, ins: &[Id], leaf: &mut dyn FnMut(Attr) -> Id) -> Kiln {
    use Kiln as K;
    let ty = |leaf: &mut dyn FnMut(Attr) -> Id| leaf(Attr::Ty(n.dtype, n.shape.clone()));
    let two = || [ins[0], ins[1]];
    match &n.op {
        Op::Input { .. } => K::Input([leaf(Attr::Int(input_pos.expect("an input has a position") as i64)), ty(leaf)]),
        Op::Full { value } => K::Full([leaf(Attr::float(value.0)), ty(leaf)]),
        Op::Iota { axis } => K::Iota([leaf(Attr::Int(*axis as i64)), ty(leaf)]),
        Op::Unary(u) => {
            let c = ins[0];
            match u {
                UnaryOp::Neg => K::Neg(c),
                UnaryOp::Abs => K::Abs(c),
                UnaryOp::Exp => K::Exp(c),
                UnaryOp::Log => K::Log(c),
                UnaryOp::Sqrt => K::Sqrt(c),
                UnaryOp::Rsqrt => K::Rsqrt(c),
                UnaryOp::Recip => K::Recip(c),
                UnaryOp::Tanh => K::Tanh(c),
                UnaryOp::Erf => K::Erf(c),
                UnaryOp::Sin => K::Sin(c),
                UnaryOp::Cos => K::Cos(c),
                UnaryOp::Floor => K::Floor(c),
                UnaryOp::Not => K::Not(c),
            }
        }
        Op::Binary(b) => match b {
            BinaryOp::Add => K::Add(two()),
            BinaryOp::Sub => K::Sub(two()),
            BinaryOp::Mul => K::Mul(two()),
            BinaryOp::Div => K::Div(two()),
            BinaryOp::Max => K::Max(two()),
            BinaryOp::Min => K::Min(two()),
            BinaryOp::Pow => K::Pow(two()),
            BinaryOp::And => K::And(two()),
            BinaryOp::Or => K::Or(two()),
        },
        Op::Compare(c) => match c {
            CmpOp::Eq => K::Eq(two()),
            CmpOp::Ne => K::Ne(two()),
            CmpOp::Lt => K::Lt(two()),
            CmpOp::Le => K::Le(two()),
            CmpOp::Gt => K::Gt(two()),
            CmpOp::Ge => K::Ge(two()),
        },
        Op::Where => K::Where([ins[0], ins[1], ins[2]]),
        Op::Cast { to } => K::Cast([leaf(Attr::DType(*to)), ins[0]]),
        Op::Reduce { op, axes, keepdim } => {
            let c = [leaf(Attr::List(axes.clone())), leaf(Attr::Bool(*keepdim)), ins[0]];
            match op {
                ReduceOp::Sum => K::Sum(c),
                ReduceOp::Max => K::MaxReduce(c),
            }
        }
        Op::Reshape { shape } => K::Reshape([leaf(Attr::List(shape.dims().to_vec())), ins[0]]),
        Op::Permute { perm } => K::Permute([leaf(Attr::List(perm.clone())), ins[0]]),
        Op::Expand { shape } => K::Expand([leaf(Attr::List(shape.dims().to_vec())), ins[0]]),
        Op::Slice { axis, start, end, step } => K::Slice([leaf(Attr::List(vec![*axis, *start, *end, *step])), ins[0]]),
        Op::Concat { axis } => {
            let mut c = vec![leaf(Attr::Int(*axis as i64))];
            c.extend_from_slice(ins);
            K::Concat(c.into())
        }
        Op::Pad { pads, value } => K::Pad([leaf(Attr::Pads(pads.clone())), leaf(Attr::float(value.0)), ins[0]]),
        Op::MatMul => K::MatMul(two()),
        Op::FlashAttention { causal, scale } => {
            K::Flash([leaf(Attr::Bool(*causal)), leaf(Attr::float(scale.0)), ins[0], ins[1], ins[2]])
        }
        Op::Fused(_) => unreachable!("callers reject fused nodes before raising"),
    }
}

/// `ir::Graph` -> `RecExpr`: one e-node per IR node (attributes become leaves), rooted at
/// `(graph n_inputs inputs.. outputs..)`. Returns the expression and the input names.
pub fn to_rec_expr(g: &Graph) -> Result<(RecExpr<Kiln>, Vec<String>), crate::PassError> {
    let mut expr = RecExpr::default();
    let mut map: Vec<Id> = Vec::with_capacity(g.len());
    let pos: std::collections::HashMap<NodeId, usize> = g.inputs().iter().enumerate().map(|(i, &n)| (n, i)).collect();
    for (id, n) in g.nodes() {
        if matches!(n.op, Op::Fused(_)) {
            return Err(crate::PassError::Unsupported { node: id.to_string(), what: "an already fused node".into() });
        }
        let ins: Vec<Id> = n.inputs.iter().map(|i| map[i.index()]).collect();
        let node = raise(n, pos.get(&id).copied(), &ins, &mut |a| expr.add(Kiln::Attr(a)));
        map.push(expr.add(node));
    }
    let mut root = vec![expr.add(Kiln::Attr(Attr::Int(g.inputs().len() as i64)))];
    root.extend(g.inputs().iter().map(|i| map[i.index()]));
    root.extend(g.outputs().iter().map(|o| map[o.index()]));
    expr.add(Kiln::Root(root.into()));
    let names = g.inputs().iter().map(|&i| g.input_name(i).unwrap_or_default().to_string()).collect();
    Ok((expr, names))
}

/// `RecExpr` -> `ir::Graph`: the inverse of [`to_rec_expr`]. The `softmax` helper is
/// expanded into its decomposition (max-subtract, exp, sum, divide over the last axis).
pub fn from_rec_expr(expr: &RecExpr<Kiln>, names: &[String], name: &str) -> Result<Graph, crate::PassError> {
    let nodes = expr.as_ref();
    let bad = |what: String| crate::PassError::Internal { stage: "from_rec_expr", what };
    let Some(Kiln::Root(root)) = nodes.last() else { return Err(bad("the expression has no graph root".into())) };
    let attr = |id: Id| match &nodes[usize::from(id)] {
        Kiln::Attr(a) => a.clone(),
        other => Attr::Int(-1 - other.children().len() as i64),
    };
    let n_in = match attr(root[0]) {
        Attr::Int(n) if n >= 0 => n as usize,
        _ => return Err(bad("graph root lacks its input count".into())),
    };
    let mut g = Graph::new(name);
    let mut map: Vec<Option<NodeId>> = vec![None; nodes.len()];
    let mut by_position: Vec<NodeId> = Vec::with_capacity(n_in);
    let mut seen: std::collections::HashMap<Node, NodeId> = std::collections::HashMap::new();
    // Inputs first, in their declared order, so positions survive extraction.
    for (pos, &i) in root[1..1 + n_in].iter().enumerate() {
        let Kiln::Input([_, ty]) = &nodes[usize::from(i)] else { return Err(bad("graph root lists a non-input as input".into())) };
        let Attr::Ty(d, s) = attr(*ty) else { return Err(bad("input without type".into())) };
        let nm = names.get(pos).cloned().unwrap_or_else(|| format!("in{pos}"));
        let id = g.input(nm, d, s).map_err(|e| bad(e.to_string()))?;
        map[usize::from(i)] = Some(id);
        by_position.push(id);
    }
    for (idx, n) in nodes.iter().enumerate() {
        if map[idx].is_some() || matches!(n, Kiln::Attr(_) | Kiln::Root(_)) {
            continue;
        }
        let l = lower(n, &attr).map_err(bad)?;
        let ins: Vec<NodeId> = l
            .tensor_children
            .iter()
            .map(|c| map[usize::from(*c)].ok_or_else(|| bad(format!("operand {c} of {n} is not a tensor"))))
            .collect::<Result<_, _>>()?;
        let id = match (l.op, l.source_type) {
            // A copy of a listed input (tree-shaped text repeats shared nodes): by position.
            (Some(Op::Input { .. }), _) => match n {
                Kiln::Input([p, _]) => match attr(*p) {
                    Attr::Int(p) if (p as usize) < by_position.len() => by_position[p as usize],
                    _ => return Err(bad(format!("input {n} is not listed by the graph root"))),
                },
                _ => unreachable!("lowered from an input node"),
            },
            // Identical nodes become one (tree-shaped text repeats shared nodes).
            (Some(op), Some((d, s))) => {
                let node = Node { op, dtype: d, shape: s, inputs: SmallVec::new() };
                *seen.entry(node.clone()).or_insert_with(|| g.push(node))
            }
            (Some(op), None) => {
                let (dtype, shape) = {
                    let types: Vec<(ir::DType, &Shape)> = ins.iter().map(|&i| (g.node(i).dtype, &g.node(i).shape)).collect();
                    ir::infer::infer(&op, &types).map_err(|e| bad(format!("{n}: {e}")))?
                };
                let node = Node { op, dtype, shape, inputs: ins.iter().copied().collect() };
                *seen.entry(node.clone()).or_insert_with(|| g.push(node))
            }
            (None, _) => softmax_decomposed(&mut g, ins[0]).map_err(|e| bad(e.to_string()))?,
        };
        map[idx] = Some(id);
    }
    let outs: Vec<NodeId> = root[1 + n_in..]
        .iter()
        .map(|o| map[usize::from(*o)].ok_or_else(|| bad("an output is not a tensor".into())))
        .collect::<Result<_, _>>()?;
    g.set_outputs(outs);
    Ok(g)
}

/// `e = exp(s - max(s)); e / sum(e)` over the last axis, keepdim.
#[allow(clippy::result_large_err)] // the IR's error type
pub fn softmax_decomposed(g: &mut Graph, s: NodeId) -> ir::Result<NodeId> {
    let last = g.node(s).shape.rank() - 1;
    let m = g.add(Op::Reduce { op: ReduceOp::Max, axes: vec![last], keepdim: true }, &[s])?;
    let d = g.add(Op::Binary(BinaryOp::Sub), &[s, m])?;
    let e = g.add(Op::Unary(UnaryOp::Exp), &[d])?;
    let z = g.add(Op::Reduce { op: ReduceOp::Sum, axes: vec![last], keepdim: true }, &[e])?;
    g.add(Op::Binary(BinaryOp::Div), &[e, z])
}
