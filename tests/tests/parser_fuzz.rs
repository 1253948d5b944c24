//! Fuzz targets (proptest) for the IR text parser: arbitrary text and mutations of valid
//! graphs are a parse error or a valid graph, never a panic; what parses prints back the same
//! and the interpreter accepts it (or refuses it with an error).

use kiln_tests::gen::{self, GenConfig};
use proptest::prelude::*;

fn check_text(text: &str) {
    if let Ok(g) = ir::text::parse(text) {
        ir::verify::verify(&g).expect("parse returned an unverified graph");
        assert_eq!(ir::text::parse(&g.to_string()).expect("printed graph parses"), g);
        let small = g.nodes().all(|(_, n)| n.shape.numel() <= 1 << 16);
        if small && g.len() < 400 {
            let ins = kiln_tests::diff::random_inputs(&g, 0);
            let _ = ir::interp::run(&g, &ins);
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, char),
    DupLine(usize),
    SwapLines(usize, usize),
    BigNumber(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop::sample::select(vec![
        "%", "(", ")", "{", "}", "[", "]", ",", ":", "=", "\"", "-1", "99999999999999999999", "1e308", "nan", "f16", "bool",
        "i64", "axes=[]", "perm=[1,0]", "return", "graph @x {", "input", "matmul", "concat", "fused", "body=", "\n", "%0", "%999",
    ]);
    prop_oneof![
        (any::<usize>(), 1usize..20).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), token).prop_map(|(a, t)| Mutation::Insert(a, t.to_string())),
        (any::<usize>(), any::<char>()).prop_map(|(a, c)| Mutation::Replace(a, c)),
        any::<usize>().prop_map(Mutation::DupLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        any::<usize>().prop_map(Mutation::BigNumber),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len().max(1);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    match m {
        Mutation::Delete(a, k) => {
            let a = a % n;
            chars[..a].iter().chain(chars[(a + k).min(chars.len())..].iter()).collect()
        }
        Mutation::Insert(a, t) => {
            let a = a % n;
            let mut s: String = chars[..a.min(chars.len())].iter().collect();
            s.push_str(t);
            s.extend(&chars[a.min(chars.len())..]);
            s
        }
        Mutation::Replace(a, c) => {
            let mut c2 = chars.clone();
            if !c2.is_empty() {
                c2[a % n] = *c;
            }
            c2.into_iter().collect()
        }
        Mutation::DupLine(a) => {
            if !lines.is_empty() {
                let l = lines[a % lines.len()].clone();
                lines.insert(a % lines.len(), l);
            }
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            if !lines.is_empty() {
                let len = lines.len();
                lines.swap(a % len, b % len);
            }
            lines.join("\n")
        }
        Mutation::BigNumber(a) => {
            // Replace the a-th number by a huge one (dims, ids, axes).
            let digits: Vec<usize> = chars.iter().enumerate().filter(|(_, c)| c.is_ascii_digit()).map(|(i, _)| i).collect();
            if digits.is_empty() {
                return text.to_string();
            }
            let i = digits[a % digits.len()];
            let mut s: String = chars[..i].iter().collect();
            s.push_str("4294967297");
            s.extend(&chars[i + 1..]);
            s
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,400}") {
        check_text(&s);
    }

    #[test]
    fn arbitrary_graph_like_text_never_panics(s in "(graph @[a-z]{1,3} \\{\n)?(  %[0-9]{1,2} = [a-z_]{2,8}(\\((%[0-9],? ?){0,3}\\))? (\\{[a-z]+=[-0-9a-z\\[\\],.\"]{0,12}\\} )?: [a-z0-9]{2,4}\\[[0-9,]{0,8}\\]\n){0,6}(  return( %[0-9]){0,3}\n)?\\}?") {
        check_text(&s);
    }

    #[test]
    fn mutated_valid_graphs_never_panic(seed in 0u64..5000, ms in prop::collection::vec(mutation(), 1..4)) {
        let g = gen::generate(seed, &GenConfig::default());
        let mut text = g.to_string();
        for m in &ms {
            text = apply(&text, m);
        }
        check_text(&text);
    }
}
