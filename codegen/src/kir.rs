//! The loop-level kernel IR, shared by the CPU and (later) GPU backends.
//!
//! A [`LoopKernel`] is an iteration space plus a list of [`Stage`]s:
//! - `outer`: the parallel dims. The executor splits their flattened range across threads
//!   (a GPU backend maps it to the grid). Loop variables `i0..i{k-1}` are bound to them.
//! - each stage loops over the remaining dims of its target (`i{k}..`) and, for a reduction,
//!   over reduction dims (`r0..`), then stores an expression into a buffer. Stages of one
//!   outer iteration run in order, so a stage may read what an earlier stage of the same
//!   outer iteration wrote: a whole softmax or layer_norm is one kernel whose row stays in
//!   cache between its passes (the two-pass form: max, then sum of exp, then normalize).
//!
//! Expressions are hash-consed in one arena per kernel ([`Expr`], typed by [`Ty`]). Index
//! expressions are i64 expressions over loop variables: broadcast, permute, slice, pad,
//! concat and reshape (div/mod) are index maps, never copies. Floats are computed in f32
//! (f16/bf16 are converted on load and store); [`Expr::Cast`] to f16/bf16 rounds.

use ir::{BinaryOp, CmpOp, DType, ReduceOp, Scalar, UnaryOp};
use std::collections::HashMap;
use std::fmt::{self, Write};

/// Loop variables `Var(v)` with `v >= RED` are reduction variables (`r{v-RED}`).
pub const RED: u32 = 64;

/// An expression's id in its kernel's arena.
pub type ExprId = u32;

/// Register types: how values are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    F32,
    I32,
    I64,
    Bool,
}

impl Ty {
    /// The register type a stored dtype is computed in (f16/bf16 in f32).
    pub fn of(d: DType) -> Ty {
        match d {
            DType::F32 | DType::F16 | DType::BF16 => Ty::F32,
            DType::I32 => Ty::I32,
            DType::I64 => Ty::I64,
            DType::Bool => Ty::Bool,
        }
    }

    /// The dtype kernel-local and scratch storage of a value of this type uses.
    pub fn storage(self) -> DType {
        match self {
            Ty::F32 => DType::F32,
            Ty::I32 => DType::I32,
            Ty::I64 => DType::I64,
            Ty::Bool => DType::Bool,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Ty::F32 => "f32",
            Ty::I32 => "i32",
            Ty::I64 => "i64",
            Ty::Bool => "bool",
        }
    }
}

/// A buffer a kernel reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BufId {
    /// Parameter `p{n}`: a pointer the caller passes (row-major over its dims).
    Param(u32),
    /// Local `t{n}`: per-outer-iteration storage (its first `outer.len()` dims are not stored).
    Local(u32),
}

impl fmt::Display for BufId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BufId::Param(n) => write!(f, "p{n}"),
            BufId::Local(n) => write!(f, "t{n}"),
        }
    }
}

/// One expression node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expr {
    /// A loop variable (i64).
    Var(u32),
    /// An i64 constant (index arithmetic).
    Int(i64),
    /// A constant of a register type.
    Const(Ty, Scalar),
    /// `buf[idx..]`, one index per dim of the buffer.
    Load(BufId, Vec<ExprId>),
    Unary(UnaryOp, ExprId),
    /// Same-typed operands; on i64 also index arithmetic (`div` truncates).
    Binary(BinaryOp, ExprId, ExprId),
    /// i64 remainder (index arithmetic on non-negative values).
    Rem(ExprId, ExprId),
    Compare(CmpOp, ExprId, ExprId),
    Select(ExprId, ExprId, ExprId),
    /// Convert to `DType`'s register type, rounding to its precision (f16/bf16 round-trip).
    Cast(DType, ExprId),
}

/// A kernel parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub dtype: DType,
    pub dims: Vec<usize>,
    /// Written by the kernel (else read-only).
    pub written: bool,
}

/// Kernel-local storage of one outer iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct Local {
    pub ty: Ty,
    /// Full dims; the first `outer.len()` are the outer dims and take no space.
    pub dims: Vec<usize>,
}

/// `target[i..] = value` for every index of `dims` past the outer ones, or with `reduce`,
/// `target[i..] = op over r.. of value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub target: BufId,
    pub dims: Vec<usize>,
    pub reduce: Option<(ReduceOp, Vec<usize>)>,
    pub value: ExprId,
}

/// A loop kernel: parallel dims, parameters, locals, and stages over one expression arena.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopKernel {
    pub name: String,
    pub outer: Vec<usize>,
    pub params: Vec<Param>,
    pub locals: Vec<Local>,
    pub exprs: Vec<(Expr, Ty)>,
    pub stages: Vec<Stage>,
}

impl LoopKernel {
    pub fn outer_count(&self) -> u64 {
        self.outer.iter().map(|&d| d as u64).product()
    }

    /// Elements each outer iteration touches (sum over stages), to decide parallel splits.
    pub fn work_per_iter(&self) -> u64 {
        let k = self.outer.len();
        self.stages
            .iter()
            .map(|s| {
                let inner: u64 = s.dims[k.min(s.dims.len())..].iter().map(|&d| d as u64).product();
                let red: u64 = s.reduce.as_ref().map(|(_, r)| r.iter().map(|&d| d as u64).product()).unwrap_or(1);
                inner * red
            })
            .sum()
    }

    pub fn ty(&self, e: ExprId) -> Ty {
        self.exprs[e as usize].1
    }
}

/// Hash-consing builder with constant folding for index arithmetic.
#[derive(Clone, Debug, Default)]
pub struct Builder {
    pub exprs: Vec<(Expr, Ty)>,
    map: HashMap<Expr, ExprId>,
}

impl Builder {
    pub fn get(&self, e: ExprId) -> &Expr {
        &self.exprs[e as usize].0
    }
    pub fn ty(&self, e: ExprId) -> Ty {
        self.exprs[e as usize].1
    }

    pub fn push(&mut self, e: Expr, ty: Ty) -> ExprId {
        if let Some(&id) = self.map.get(&e) {
            return id;
        }
        let id = self.exprs.len() as ExprId;
        self.exprs.push((e.clone(), ty));
        self.map.insert(e, id);
        id
    }

    pub fn int_of(&self, e: ExprId) -> Option<i64> {
        match self.get(e) {
            Expr::Int(c) => Some(*c),
            _ => None,
        }
    }

    pub fn var(&mut self, v: u32) -> ExprId {
        self.push(Expr::Var(v), Ty::I64)
    }
    pub fn int(&mut self, c: i64) -> ExprId {
        self.push(Expr::Int(c), Ty::I64)
    }
    pub fn constant(&mut self, ty: Ty, v: f64) -> ExprId {
        let v = match ty {
            Ty::F32 => v as f32 as f64,
            Ty::I32 => DType::I32.quantize(v),
            Ty::I64 => DType::I64.quantize(v),
            Ty::Bool => (v != 0.0) as u8 as f64,
        };
        self.push(Expr::Const(ty, Scalar(v)), ty)
    }

    pub fn add(&mut self, a: ExprId, b: ExprId) -> ExprId {
        match (self.int_of(a), self.int_of(b)) {
            (Some(x), Some(y)) => self.int(x + y),
            (Some(0), _) => b,
            (_, Some(0)) => a,
            _ => self.push(Expr::Binary(BinaryOp::Add, a, b), Ty::I64),
        }
    }
    pub fn mul(&mut self, a: ExprId, c: i64) -> ExprId {
        match self.int_of(a) {
            Some(x) => self.int(x * c),
            None if c == 0 => self.int(0),
            None if c == 1 => a,
            None => {
                let c = self.int(c);
                self.push(Expr::Binary(BinaryOp::Mul, a, c), Ty::I64)
            }
        }
    }
    pub fn div(&mut self, a: ExprId, c: i64) -> ExprId {
        match self.int_of(a) {
            Some(x) => self.int(x / c),
            None if c == 1 => a,
            None => {
                let c = self.int(c);
                self.push(Expr::Binary(BinaryOp::Div, a, c), Ty::I64)
            }
        }
    }
    pub fn rem(&mut self, a: ExprId, c: i64) -> ExprId {
        match self.int_of(a) {
            Some(x) => self.int(x % c),
            None if c == 1 => self.int(0),
            None => {
                let c = self.int(c);
                self.push(Expr::Rem(a, c), Ty::I64)
            }
        }
    }
    /// `min(max(a, lo), hi)` on i64.
    pub fn clamp(&mut self, a: ExprId, lo: i64, hi: i64) -> ExprId {
        if let Some(x) = self.int_of(a) {
            return self.int(x.clamp(lo, hi));
        }
        let (l, h) = (self.int(lo), self.int(hi));
        let m = self.push(Expr::Binary(BinaryOp::Max, a, l), Ty::I64);
        self.push(Expr::Binary(BinaryOp::Min, m, h), Ty::I64)
    }
    pub fn cmp(&mut self, c: CmpOp, a: ExprId, b: ExprId) -> ExprId {
        self.push(Expr::Compare(c, a, b), Ty::Bool)
    }
    pub fn and(&mut self, a: ExprId, b: ExprId) -> ExprId {
        self.push(Expr::Binary(BinaryOp::And, a, b), Ty::Bool)
    }
    pub fn select(&mut self, c: ExprId, a: ExprId, b: ExprId) -> ExprId {
        if a == b {
            return a;
        }
        let ty = self.ty(a);
        self.push(Expr::Select(c, a, b), ty)
    }
    pub fn unary(&mut self, u: UnaryOp, a: ExprId) -> ExprId {
        let ty = self.ty(a);
        self.push(Expr::Unary(u, a), ty)
    }
    pub fn binary(&mut self, b: BinaryOp, x: ExprId, y: ExprId) -> ExprId {
        let ty = self.ty(x);
        self.push(Expr::Binary(b, x, y), ty)
    }
    pub fn cast(&mut self, to: DType, a: ExprId) -> ExprId {
        let ty = Ty::of(to);
        if self.ty(a) == ty && !matches!(to, DType::F16 | DType::BF16) {
            return a;
        }
        self.push(Expr::Cast(to, a), ty)
    }
    pub fn load(&mut self, buf: BufId, idx: Vec<ExprId>, ty: Ty) -> ExprId {
        self.push(Expr::Load(buf, idx), ty)
    }

    /// Operands of an expression.
    pub fn children(e: &Expr) -> Vec<ExprId> {
        match e {
            Expr::Var(_) | Expr::Int(_) | Expr::Const(..) => vec![],
            Expr::Load(_, idx) => idx.clone(),
            Expr::Unary(_, a) | Expr::Cast(_, a) => vec![*a],
            Expr::Binary(_, a, b) | Expr::Rem(a, b) | Expr::Compare(_, a, b) => vec![*a, *b],
            Expr::Select(c, a, b) => vec![*c, *a, *b],
        }
    }

    /// Copies the expressions reachable from `roots` into `dst`, renaming buffers with
    /// `rename`; returns the new ids of the roots.
    pub fn export(&self, roots: &[ExprId], dst: &mut Builder, rename: &dyn Fn(BufId) -> BufId) -> Vec<ExprId> {
        let mut memo: HashMap<ExprId, ExprId> = HashMap::new();
        roots.iter().map(|&r| self.export_one(r, dst, rename, &mut memo)).collect()
    }

    fn export_one(&self, e: ExprId, dst: &mut Builder, rename: &dyn Fn(BufId) -> BufId, memo: &mut HashMap<ExprId, ExprId>) -> ExprId {
        if let Some(&n) = memo.get(&e) {
            return n;
        }
        let (expr, ty) = self.exprs[e as usize].clone();
        let mut m = |x: ExprId, dst: &mut Builder| self.export_one(x, dst, rename, memo);
        let new = match expr {
            Expr::Load(b, idx) => {
                let idx = idx.into_iter().map(|i| m(i, dst)).collect();
                Expr::Load(rename(b), idx)
            }
            Expr::Unary(u, a) => Expr::Unary(u, m(a, dst)),
            Expr::Cast(d, a) => Expr::Cast(d, m(a, dst)),
            Expr::Binary(b, x, y) => {
                let x = m(x, dst);
                Expr::Binary(b, x, m(y, dst))
            }
            Expr::Rem(x, y) => {
                let x = m(x, dst);
                Expr::Rem(x, m(y, dst))
            }
            Expr::Compare(c, x, y) => {
                let x = m(x, dst);
                Expr::Compare(c, x, m(y, dst))
            }
            Expr::Select(c, x, y) => {
                let c = m(c, dst);
                let x = m(x, dst);
                Expr::Select(c, x, m(y, dst))
            }
            other => other,
        };
        let id = dst.push(new, ty);
        memo.insert(e, id);
        id
    }
}

fn var_name(v: u32) -> String {
    if v >= RED { format!("r{}", v - RED) } else { format!("i{v}") }
}

fn list<T: fmt::Display>(xs: &[T]) -> String {
    xs.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

impl fmt::Display for LoopKernel {
    /// Text form: parameters, locals, then each stage as its loops and the SSA expressions it
    /// evaluates (golden-testable).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        let k = self.outer.len();
        let ps: Vec<String> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| format!("p{i}: {}[{}]{}", p.dtype, list(&p.dims), if p.written { " out" } else { "" }))
            .collect();
        let _ = writeln!(s, "loop_kernel {}({}) outer [{}] {{", self.name, ps.join(", "), list(&self.outer));
        for (i, l) in self.locals.iter().enumerate() {
            let _ = writeln!(s, "  local t{i}: {}[{}]", l.ty.name(), list(&l.dims[k.min(l.dims.len())..]));
        }
        for st in &self.stages {
            let idx: Vec<String> = (0..st.dims.len() as u32).map(var_name).collect();
            let loops: Vec<String> = (k..st.dims.len()).map(|d| format!("i{d} < {}", st.dims[d])).collect();
            let _ = write!(s, "  {}[{}] = ", st.target, idx.join(","));
            if let Some((op, red)) = &st.reduce {
                let rs: Vec<String> = red.iter().enumerate().map(|(j, n)| format!("r{j} < {n}")).collect();
                let _ = write!(s, "{} over ({}) of ", if *op == ReduceOp::Sum { "sum" } else { "max" }, rs.join(", "));
            }
            let _ = writeln!(s, "e{} for ({}) {{", st.value, loops.join(", "));
            let mut seen = vec![false; self.exprs.len()];
            let mut order = Vec::new();
            fn visit(k: &LoopKernel, e: ExprId, seen: &mut Vec<bool>, order: &mut Vec<ExprId>) {
                if seen[e as usize] {
                    return;
                }
                seen[e as usize] = true;
                for c in Builder::children(&k.exprs[e as usize].0) {
                    visit(k, c, seen, order);
                }
                order.push(e);
            }
            visit(self, st.value, &mut seen, &mut order);
            for e in order {
                let (ex, ty) = &self.exprs[e as usize];
                let rhs = match ex {
                    Expr::Var(v) => var_name(*v),
                    Expr::Int(c) => c.to_string(),
                    Expr::Const(_, c) => c.to_string(),
                    Expr::Load(b, idx) => format!("load {b}[{}]", idx.iter().map(|i| format!("e{i}")).collect::<Vec<_>>().join(",")),
                    Expr::Unary(u, a) => format!("{} e{a}", u.name()),
                    Expr::Binary(b, x, y) => format!("{} e{x}, e{y}", b.name()),
                    Expr::Rem(x, y) => format!("rem e{x}, e{y}"),
                    Expr::Compare(c, x, y) => format!("{} e{x}, e{y}", c.name()),
                    Expr::Select(c, x, y) => format!("select e{c}, e{x}, e{y}"),
                    Expr::Cast(d, a) => format!("cast.{d} e{a}"),
                };
                let _ = writeln!(s, "    e{e}: {} = {rhs}", ty.name());
            }
            s.push_str("  }\n");
        }
        s.push_str("}\n");
        f.write_str(&s)
    }
}
