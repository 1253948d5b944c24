//! The text format: prints every graph and parses it back exactly.
//!
//! ```text
//! graph @mlp {
//!   %0 = input {name="x"} : f32[8,16]
//!   %1 = input {name="w"} : f32[16,32]
//!   %2 = matmul(%0, %1) : f32[8,32]
//!   %3 = full {value=0.5} : f32[8,32]
//!   %4 = mul(%2, %3) : f32[8,32]
//!   %5 = sum(%4) {axes=[1], keepdim=true} : f32[8,1]
//!   return %4, %5
//! }
//! ```
//!
//! A node is `%id = op(operands) {attrs} : dtype[dims]`; operands and attrs are omitted when
//! empty. A fused node's body is a nested `graph` in its `body` attribute. Ids in the text
//! need not be dense (they are renumbered on parse); the printer always writes node indices.
//! `parse` verifies the graph it builds, so text that parses is well formed.

use crate::{
    verify, BinaryOp, CmpOp, DType, FusedBody, Graph, IrError, Node, NodeId, Op, ReduceOp, Result, Scalar, Shape,
    UnaryOp,
};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::fmt::{self, Write};
use std::sync::Arc;

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        print_graph(self, 0, &mut s);
        f.write_str(&s)
    }
}

/// Prints a graph in the text format (same as `to_string()`).
pub fn print(g: &Graph) -> String {
    g.to_string()
}

fn write_name(name: &str, out: &mut String) {
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if plain {
        out.push_str(name);
    } else {
        let _ = write!(out, "{name:?}");
    }
}

fn print_graph(g: &Graph, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    out.push_str("graph @");
    write_name(g.name(), out);
    out.push_str(" {\n");
    for (id, n) in g.nodes() {
        let _ = write!(out, "{pad}  {id} = {}", n.op.name());
        if !n.inputs.is_empty() {
            out.push('(');
            for (i, x) in n.inputs.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{x}");
            }
            out.push(')');
        }
        print_attrs(&n.op, indent + 1, out);
        let _ = writeln!(out, " : {}{}", n.dtype, n.shape);
    }
    let _ = write!(out, "{pad}  return");
    for (i, o) in g.outputs().iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        let _ = write!(out, "{o}");
    }
    let _ = write!(out, "\n{pad}}}");
    if indent == 0 {
        out.push('\n');
    }
}

fn list<T: fmt::Display>(xs: &[T]) -> String {
    let items: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}

fn print_attrs(op: &Op, indent: usize, out: &mut String) {
    let attrs: Vec<String> = match op {
        Op::Input { name } => vec![format!("name={name:?}")],
        Op::Full { value } => vec![format!("value={value}")],
        Op::Iota { axis } => vec![format!("axis={axis}")],
        Op::Cast { to } => vec![format!("to={to}")],
        Op::Reduce { axes, keepdim, .. } => vec![format!("axes={}", list(axes)), format!("keepdim={keepdim}")],
        Op::Reshape { shape } | Op::Expand { shape } => vec![format!("shape={}", list(shape.dims()))],
        Op::Permute { perm } => vec![format!("perm={}", list(perm))],
        Op::Slice { axis, start, end, step } => {
            vec![format!("axis={axis}"), format!("start={start}"), format!("end={end}"), format!("step={step}")]
        }
        Op::Concat { axis } => vec![format!("axis={axis}")],
        Op::Pad { pads, value } => {
            let p: Vec<String> = pads.iter().map(|(b, a)| format!("({b}, {a})")).collect();
            vec![format!("pads=[{}]", p.join(", ")), format!("value={value}")]
        }
        Op::FlashAttention { causal, scale } => vec![format!("causal={causal}"), format!("scale={scale}")],
        Op::Fused(body) => {
            let mut s = String::from("body=");
            print_graph(&body.0, indent, &mut s);
            vec![s]
        }
        Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where | Op::MatMul => vec![],
    };
    if !attrs.is_empty() {
        let _ = write!(out, " {{{}}}", attrs.join(", "));
    }
}

// ----------------------------------------------------------------------------------------
// Parsing
// ----------------------------------------------------------------------------------------

/// Parses one graph from text and verifies it.
pub fn parse(src: &str) -> Result<Graph> {
    let mut p = Parser { toks: lex(src)?, pos: 0 };
    let g = p.graph()?;
    p.expect_end()?;
    verify::verify(&g)?;
    Ok(g)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Value(String),  // %12
    Global(String), // @name
    Ident(String),
    Int(u64),
    Float(f64),
    Str(String),
    Punct(char),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: usize,
    col: usize,
}

fn lex(src: &str) -> Result<Vec<Token>> {
    let chars: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut col) = (0, 1, 1);
    let mut out = Vec::new();
    let err = |line, col, msg: String| IrError::Parse { line, col, msg };
    while i < chars.len() {
        let c = chars[i];
        let (l0, c0) = (line, col);
        let start = i;
        let adv = |i: &mut usize, col: &mut usize| {
            *i += 1;
            *col += 1;
        };
        if c == '\n' {
            i += 1;
            line += 1;
            col = 1;
            continue;
        }
        if c.is_whitespace() {
            adv(&mut i, &mut col);
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
        let tok = if c == '%' || c == '@' {
            adv(&mut i, &mut col);
            let name = if c == '@' && chars.get(i) == Some(&'"') {
                let (s, n) = lex_string(&chars[i..]).map_err(|m| err(line, col, m))?;
                i += n;
                col += n;
                s
            } else {
                let b = i;
                while i < chars.len() && ident_char(chars[i]) {
                    adv(&mut i, &mut col);
                }
                chars[b..i].iter().collect()
            };
            if name.is_empty() {
                return Err(err(l0, c0, format!("expected a name after '{c}'")));
            }
            if c == '%' { Tok::Value(name) } else { Tok::Global(name) }
        } else if c == '"' {
            let (s, n) = lex_string(&chars[i..]).map_err(|m| err(line, col, m))?;
            i += n;
            col += n;
            Tok::Str(s)
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit() || *d == 'i')) {
            adv(&mut i, &mut col);
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || ((chars[i] == '-' || chars[i] == '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                adv(&mut i, &mut col);
            }
            let text: String = chars[start..i].iter().collect();
            if let Ok(v) = text.parse::<u64>() {
                Tok::Int(v)
            } else if text.chars().all(|c| c.is_ascii_digit()) {
                return Err(err(l0, c0, format!("integer {text} is too large")));
            } else {
                match text.as_str() {
                    "-inf" => Tok::Float(f64::NEG_INFINITY),
                    t => Tok::Float(t.parse::<f64>().map_err(|_| err(l0, c0, format!("bad number {t:?}")))?),
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && ident_char(chars[i]) {
                adv(&mut i, &mut col);
            }
            Tok::Ident(chars[start..i].iter().collect())
        } else if "=(){}[],:".contains(c) {
            adv(&mut i, &mut col);
            Tok::Punct(c)
        } else {
            return Err(err(l0, c0, format!("unexpected character {c:?}")));
        };
        out.push(Token { tok, line: l0, col: c0 });
    }
    Ok(out)
}

/// Lexes a double-quoted string with Rust's escapes; returns it and the chars consumed.
fn lex_string(chars: &[char]) -> std::result::Result<(String, usize), String> {
    let mut s = String::new();
    let mut i = 1;
    loop {
        match chars.get(i) {
            None | Some('\n') => return Err("unterminated string".into()),
            Some('"') => return Ok((s, i + 1)),
            Some('\\') => {
                let e = chars.get(i + 1).ok_or("unterminated escape")?;
                i += 2;
                match e {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    '0' => s.push('\0'),
                    '\\' => s.push('\\'),
                    '"' => s.push('"'),
                    '\'' => s.push('\''),
                    'u' => {
                        if chars.get(i) != Some(&'{') {
                            return Err("expected '{' after \\u".into());
                        }
                        let end = chars[i..].iter().position(|&c| c == '}').ok_or("unterminated \\u{..}")? + i;
                        let hex: String = chars[i + 1..end].iter().collect();
                        let code = u32::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\u{{{hex}}}"))?;
                        s.push(char::from_u32(code).ok_or(format!("bad code point {code:#x}"))?);
                        i = end + 1;
                    }
                    other => return Err(format!("unknown escape \\{other}")),
                }
            }
            Some(&c) => {
                s.push(c);
                i += 1;
            }
        }
    }
}

/// An attribute value.
#[derive(Debug)]
enum Attr {
    Int(u64),
    Float(f64),
    Bool(bool),
    Ident(String),
    Str(String),
    List(Vec<Attr>),
    Pair(Box<Attr>, Box<Attr>),
    Graph(Graph),
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn err(&self, msg: impl Into<String>) -> IrError {
        let (line, col) = match self.toks.get(self.pos).or(self.toks.last()) {
            Some(t) => (t.line, t.col),
            None => (1, 1),
        };
        IrError::Parse { line, col, msg: msg.into() }
    }

    fn next(&mut self) -> Result<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.tok.clone()).ok_or_else(|| self.err("unexpected end of input"))?;
        self.pos += 1;
        Ok(t)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<()> {
        if self.eat(c) { Ok(()) } else { Err(self.err(format!("expected '{c}'"))) }
    }

    fn expect_ident(&mut self, word: &str) -> Result<()> {
        match self.peek() {
            Some(Tok::Ident(w)) if w == word => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.err(format!("expected '{word}'"))),
        }
    }

    fn expect_end(&self) -> Result<()> {
        if self.pos == self.toks.len() { Ok(()) } else { Err(self.err("unexpected text after the graph")) }
    }

    fn graph(&mut self) -> Result<Graph> {
        self.expect_ident("graph")?;
        let name = match self.next()? {
            Tok::Global(n) => n,
            _ => return Err(self.err("expected the graph name, e.g. @main")),
        };
        self.expect('{')?;
        let mut g = Graph::new(name);
        let mut ids: HashMap<String, NodeId> = HashMap::new();
        loop {
            match self.peek() {
                Some(Tok::Ident(w)) if w == "return" => {
                    self.pos += 1;
                    let mut outs = vec![self.value(&ids)?];
                    while self.eat(',') {
                        outs.push(self.value(&ids)?);
                    }
                    g.set_outputs(outs);
                    self.expect('}')?;
                    return Ok(g);
                }
                Some(Tok::Value(v)) => {
                    let v = v.clone();
                    if ids.contains_key(&v) {
                        return Err(self.err(format!("%{v} is defined twice")));
                    }
                    self.pos += 1;
                    self.expect('=')?;
                    let node = self.node(&ids)?;
                    let is_input = matches!(node.op, Op::Input { .. });
                    let id = g.push(node);
                    if is_input {
                        g.register_input(id);
                    }
                    ids.insert(v, id);
                }
                None => return Err(self.err("unexpected end of input: the graph has no 'return'")),
                _ => return Err(self.err("expected '%name = ...' or 'return'")),
            }
        }
    }

    fn value(&mut self, ids: &HashMap<String, NodeId>) -> Result<NodeId> {
        match self.next()? {
            Tok::Value(v) => ids.get(&v).copied().ok_or_else(|| {
                self.pos -= 1;
                self.err(format!("%{v} is used before it is defined"))
            }),
            _ => {
                self.pos -= 1;
                Err(self.err("expected a value such as %3"))
            }
        }
    }

    fn node(&mut self, ids: &HashMap<String, NodeId>) -> Result<Node> {
        let op_pos = self.pos;
        let opname = match self.next()? {
            Tok::Ident(w) => w,
            _ => return Err(self.err("expected an op name")),
        };
        let mut inputs = SmallVec::new();
        if self.eat('(') {
            if !self.eat(')') {
                inputs.push(self.value(ids)?);
                while self.eat(',') {
                    inputs.push(self.value(ids)?);
                }
                self.expect(')')?;
            }
        }
        let mut attrs: Vec<(String, Attr)> = Vec::new();
        if self.eat('{') {
            loop {
                let key = match self.next()? {
                    Tok::Ident(k) => k,
                    _ => return Err(self.err("expected an attribute name")),
                };
                self.expect('=')?;
                let v = self.attr()?;
                attrs.push((key, v));
                if self.eat('}') {
                    break;
                }
                self.expect(',')?;
            }
        }
        self.expect(':')?;
        let (dtype, shape) = self.ty()?;
        let saved = self.pos;
        self.pos = op_pos;
        let op = self.build_op(&opname, attrs)?;
        self.pos = saved;
        Ok(Node { op, dtype, shape, inputs })
    }

    fn ty(&mut self) -> Result<(DType, Shape)> {
        let d = match self.next()? {
            Tok::Ident(d) => DType::from_name(&d).ok_or_else(|| {
                self.pos -= 1;
                self.err(format!("unknown dtype {d:?} (expected f32, f16, bf16, i32, i64 or bool)"))
            })?,
            _ => return Err(self.err("expected a type such as f32[2,3]")),
        };
        self.expect('[')?;
        let mut dims = Vec::new();
        if !self.eat(']') {
            loop {
                dims.push(self.usize()?);
                if self.eat(']') {
                    break;
                }
                self.expect(',')?;
            }
        }
        if dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none() {
            return Err(self.err("shape has too many elements"));
        }
        Ok((d, Shape::from(dims)))
    }

    fn usize(&mut self) -> Result<usize> {
        match self.next()? {
            Tok::Int(v) => usize::try_from(v).map_err(|_| self.err("integer too large")),
            _ => {
                self.pos -= 1;
                Err(self.err("expected a non-negative integer"))
            }
        }
    }

    fn attr(&mut self) -> Result<Attr> {
        Ok(match self.next()? {
            Tok::Int(v) => Attr::Int(v),
            Tok::Float(v) => Attr::Float(v),
            Tok::Str(s) => Attr::Str(s),
            Tok::Ident(w) if w == "true" => Attr::Bool(true),
            Tok::Ident(w) if w == "false" => Attr::Bool(false),
            Tok::Ident(w) if w == "inf" => Attr::Float(f64::INFINITY),
            Tok::Ident(w) if w == "nan" => Attr::Float(f64::NAN),
            Tok::Ident(w) if w == "graph" => {
                self.pos -= 1;
                Attr::Graph(self.graph()?)
            }
            Tok::Ident(w) => Attr::Ident(w),
            Tok::Punct('[') => {
                let mut xs = Vec::new();
                if !self.eat(']') {
                    loop {
                        xs.push(self.attr()?);
                        if self.eat(']') {
                            break;
                        }
                        self.expect(',')?;
                    }
                }
                Attr::List(xs)
            }
            Tok::Punct('(') => {
                let a = self.attr()?;
                self.expect(',')?;
                let b = self.attr()?;
                self.expect(')')?;
                Attr::Pair(Box::new(a), Box::new(b))
            }
            _ => {
                self.pos -= 1;
                return Err(self.err("expected an attribute value"));
            }
        })
    }

    fn build_op(&self, name: &str, attrs: Vec<(String, Attr)>) -> Result<Op> {
        let mut a = Attrs { attrs, p: self, op: name.to_string() };
        let op = if let Some(u) = UnaryOp::from_name(name) {
            Op::Unary(u)
        } else if let Some(b) = BinaryOp::from_name(name) {
            Op::Binary(b)
        } else if let Some(c) = CmpOp::from_name(name) {
            Op::Compare(c)
        } else {
            match name {
                "input" => Op::Input { name: a.string("name")? },
                "full" => Op::Full { value: Scalar(a.float("value")?) },
                "iota" => Op::Iota { axis: a.usize("axis")? },
                "where" => Op::Where,
                "cast" => Op::Cast { to: a.dtype("to")? },
                "sum" | "max_reduce" => Op::Reduce {
                    op: if name == "sum" { ReduceOp::Sum } else { ReduceOp::Max },
                    axes: a.usizes("axes")?,
                    keepdim: a.bool("keepdim")?,
                },
                "reshape" => Op::Reshape { shape: Shape::from(a.usizes("shape")?) },
                "expand" => Op::Expand { shape: Shape::from(a.usizes("shape")?) },
                "permute" => Op::Permute { perm: a.usizes("perm")? },
                "slice" => Op::Slice { axis: a.usize("axis")?, start: a.usize("start")?, end: a.usize("end")?, step: a.usize("step")? },
                "concat" => Op::Concat { axis: a.usize("axis")? },
                "pad" => Op::Pad { pads: a.pairs("pads")?, value: Scalar(a.float("value")?) },
                "matmul" => Op::MatMul,
                "flash_attention" => Op::FlashAttention { causal: a.bool("causal")?, scale: Scalar(a.float("scale")?) },
                "fused" => Op::Fused(FusedBody(Arc::new(a.graph("body")?))),
                _ => return Err(self.err(format!("unknown op {name:?}"))),
            }
        };
        a.finish()?;
        Ok(op)
    }
}

struct Attrs<'p> {
    attrs: Vec<(String, Attr)>,
    p: &'p Parser,
    op: String,
}

impl Attrs<'_> {
    fn take(&mut self, key: &str) -> Result<Attr> {
        let i = self.attrs.iter().position(|(k, _)| k == key).ok_or_else(|| self.p.err(format!("{}: missing attribute {key:?}", self.op)))?;
        Ok(self.attrs.remove(i).1)
    }
    fn bad(&self, key: &str, want: &str) -> IrError {
        self.p.err(format!("{}: attribute {key:?} must be {want}", self.op))
    }
    fn usize(&mut self, key: &str) -> Result<usize> {
        match self.take(key)? {
            Attr::Int(v) => usize::try_from(v).map_err(|_| self.bad(key, "a smaller integer")),
            _ => Err(self.bad(key, "an integer")),
        }
    }
    fn float(&mut self, key: &str) -> Result<f64> {
        match self.take(key)? {
            Attr::Int(v) => Ok(v as f64),
            Attr::Float(v) => Ok(v),
            _ => Err(self.bad(key, "a number")),
        }
    }
    fn bool(&mut self, key: &str) -> Result<bool> {
        match self.take(key)? {
            Attr::Bool(b) => Ok(b),
            _ => Err(self.bad(key, "true or false")),
        }
    }
    fn string(&mut self, key: &str) -> Result<String> {
        match self.take(key)? {
            Attr::Str(s) => Ok(s),
            _ => Err(self.bad(key, "a string")),
        }
    }
    fn dtype(&mut self, key: &str) -> Result<DType> {
        match self.take(key)? {
            Attr::Ident(d) => DType::from_name(&d).ok_or_else(|| self.bad(key, "a dtype (f32, f16, bf16, i32, i64, bool)")),
            _ => Err(self.bad(key, "a dtype")),
        }
    }
    fn usizes(&mut self, key: &str) -> Result<Vec<usize>> {
        match self.take(key)? {
            Attr::List(xs) => xs
                .into_iter()
                .map(|x| match x {
                    Attr::Int(v) => usize::try_from(v).map_err(|_| self.bad(key, "a list of smaller integers")),
                    _ => Err(self.bad(key, "a list of integers")),
                })
                .collect(),
            _ => Err(self.bad(key, "a list of integers")),
        }
    }
    fn pairs(&mut self, key: &str) -> Result<Vec<(usize, usize)>> {
        match self.take(key)? {
            Attr::List(xs) => xs
                .into_iter()
                .map(|x| match x {
                    Attr::Pair(a, b) => match (*a, *b) {
                        (Attr::Int(a), Attr::Int(b)) => Ok((a as usize, b as usize)),
                        _ => Err(self.bad(key, "a list of (int, int) pairs")),
                    },
                    _ => Err(self.bad(key, "a list of (int, int) pairs")),
                })
                .collect(),
            _ => Err(self.bad(key, "a list of (int, int) pairs")),
        }
    }
    fn graph(&mut self, key: &str) -> Result<Graph> {
        match self.take(key)? {
            Attr::Graph(g) => Ok(g),
            _ => Err(self.bad(key, "a graph")),
        }
    }
    fn finish(self) -> Result<()> {
        match self.attrs.first() {
            None => Ok(()),
            Some((k, _)) => Err(self.p.err(format!("{}: unknown attribute {k:?}", self.op))),
        }
    }
}
