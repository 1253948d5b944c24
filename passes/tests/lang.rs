//! The IR <-> RecExpr conversion and the analysis' invariants.

mod common;

use egg::RecExpr;
use frontend::models::gpt2::{Gpt2, Gpt2Config};
use passes::lang::{self, Attr, EGraph, Kiln, TypeAnalysis};

fn roundtrip(g: &ir::Graph) -> ir::Graph {
    let (expr, names) = lang::to_rec_expr(g).unwrap();
    lang::from_rec_expr(&expr, &names, g.name()).unwrap()
}

#[test]
fn a_small_graph_round_trips_through_s_expression_text() {
    // (The s-expression text expands shared nodes into a tree, so only for small graphs.)
    let g = ir::text::parse(
        "graph @t {\n  %0 = input {name=\"x\"} : f32[3,5]\n  %1 = full {value=0.5} : f32[]\n  %2 = mul(%0, %1) : f32[3,5]\n  %3 = sum(%2) {axes=[1], keepdim=true} : f32[3,1]\n  %4 = permute(%2) {perm=[1, 0]} : f32[5,3]\n  return %3, %4\n}\n",
    )
    .unwrap();
    let (expr, names) = lang::to_rec_expr(&g).unwrap();
    let reparsed: RecExpr<Kiln> = expr.to_string().parse().unwrap();
    let back = lang::from_rec_expr(&reparsed, &names, g.name()).unwrap();
    common::assert_same_values("s-expression", &g, &back, 22);
    assert_eq!(back.to_string(), roundtrip(&g).to_string());
}

#[test]
fn graphs_round_trip_through_rec_expr() {
    let cfg = Gpt2Config::tiny();
    let g = frontend::trace(&Gpt2::new(cfg), &[cfg.input_spec(1, 5)]).unwrap().graph;
    let once = roundtrip(&g);
    ir::verify::verify(&once).unwrap();
    assert_eq!(roundtrip(&once), once, "the conversion is a fixed point after one trip");
    assert_eq!(once.inputs().len(), g.inputs().len());
    let names = |g: &ir::Graph| g.inputs().iter().map(|&i| g.input_name(i).unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&once), names(&g));
    common::assert_same_values("round trip", &g, &once, 21);
}

#[test]
fn attributes_print_and_parse_back() {
    let attrs = [
        Attr::Int(3),
        Attr::Int(-1),
        Attr::Bool(true),
        Attr::float(0.125),
        Attr::float(2.0),
        Attr::float(f64::NEG_INFINITY),
        Attr::float(1e-5),
        Attr::float(-3.4028234663852886e38),
        Attr::DType(ir::DType::BF16),
        Attr::Ty(ir::DType::F32, ir::Shape::new([2, 3])),
        Attr::Ty(ir::DType::I64, ir::Shape::scalar()),
        Attr::List(vec![0, 2, 1]),
        Attr::List(vec![]),
        Attr::Pads(vec![(0, 1), (2, 0)]),
    ];
    for a in attrs {
        let s = a.to_string();
        assert_eq!(s.parse::<Attr>().unwrap(), a, "{s}");
    }
}

#[test]
#[should_panic(expected = "invariant: a rewrite merged e-classes of different types")]
fn merging_classes_of_different_types_panics() {
    let mut eg = EGraph::new(TypeAnalysis);
    let a: RecExpr<Kiln> = "(input 0 f32[2,3])".parse().unwrap();
    let b: RecExpr<Kiln> = "(input 1 f32[3,2])".parse().unwrap();
    let (a, b) = (eg.add_expr(&a), eg.add_expr(&b));
    eg.union(a, b);
    eg.rebuild();
}

#[test]
fn constant_folding_adds_a_full_node() {
    let mut eg = EGraph::new(TypeAnalysis);
    let e: RecExpr<Kiln> = "(mul (full 2.0 f32[3]) (full 0.25 f32[]))".parse().unwrap();
    let id = eg.add_expr(&e);
    eg.rebuild();
    let t = eg[id].data.tensor();
    assert_eq!(t.konst, Some(0.5));
    assert_eq!(t.shape, ir::Shape::new([3]));
    assert!(eg[id].nodes.iter().any(|n| matches!(n, Kiln::Full(_))));
}
