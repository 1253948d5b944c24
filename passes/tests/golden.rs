//! Golden `input => expected` tests, one file per rule family under `tests/golden/`, and the
//! soundness check of every rule: each case is run through the optimizer, the named rule
//! must fire, and input and output are evaluated with the reference interpreter on seeded
//! random inputs (odd shapes: 3, 5, 7). `KILN_BLESS=1` rewrites the expectations.

mod common;

use passes::fuse::Placement;
use passes::DeviceProfile;
use std::path::PathBuf;

struct Case {
    rule: String,
    input: String,
    expected: String,
}

const SEP: &str = "====\n";

fn path(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{family}.txt"))
}

fn parse_cases(text: &str) -> (String, Vec<Case>) {
    let mut chunks = text.split(SEP);
    let header = chunks.next().unwrap_or_default().to_string();
    let cases = chunks
        .map(|c| {
            let (first, rest) = c.split_once('\n').expect("case header");
            let rule = first.strip_prefix("# rule: ").expect("`# rule: NAME` line").trim().to_string();
            let (input, expected) = rest.split_once("\n=>\n").expect("`=>` separator");
            Case { rule, input: input.to_string(), expected: expected.trim_end().to_string() }
        })
        .collect();
    (header, cases)
}

/// Runs one family; returns the rules its cases exercised.
fn run_family(family: &str) -> Vec<String> {
    let file = path(family);
    let text = std::fs::read_to_string(&file).unwrap();
    let (header, cases) = parse_cases(&text);
    let bless = std::env::var("KILN_BLESS").is_ok_and(|v| v == "1");
    let profile = DeviceProfile::h200();
    let mut out = header;
    let mut failures = Vec::new();
    let mut rules = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let g = ir::text::parse(&c.input).unwrap_or_else(|e| panic!("{family} case {} ({}): {e}", i, c.rule));
        let got = if family == "fusion" {
            let opt = passes::optimize(&g, &profile).unwrap();
            common::assert_kernels_agree(&c.rule, &g, &opt.kernels, 17 + i as u64);
            let (simple, _) = passes::simplify(&g, &profile).unwrap();
            let grouping = passes::fuse::group(&simple);
            let fired = grouping.placement.iter().any(|p| matches!(p, Placement::Joined { rule } if *rule == c.rule));
            assert!(fired, "{family}: fusion rule {} did not fire", c.rule);
            opt.kernels.to_string()
        } else {
            let (simple, report) = passes::simplify(&g, &profile).unwrap();
            common::assert_same_values(&c.rule, &g, &simple, 17 + i as u64);
            if c.rule == "constant-fold" {
                assert!(simple.len() < g.len(), "constant folding removed nothing");
            } else {
                assert!(report.rules_applied.iter().any(|(r, _)| *r == c.rule), "{family}: rule {} did not fire: {:?}", c.rule, report.rules_applied);
            }
            simple.to_string()
        };
        rules.push(c.rule.clone());
        let got = got.trim_end().to_string();
        if got != c.expected {
            failures.push(format!("case {} ({}):\n--- expected\n{}\n--- got\n{}", i, c.rule, c.expected, got));
        }
        out.push_str(&format!("{SEP}# rule: {}\n{}\n=>\n{}\n", c.rule, c.input.trim_end(), got));
    }
    if bless {
        std::fs::write(&file, out).unwrap();
    } else if !failures.is_empty() {
        panic!("{} golden case(s) of {family} differ (rerun with KILN_BLESS=1 to accept):\n{}", failures.len(), failures.join("\n"));
    }
    rules
}

#[test]
fn algebra() {
    run_family("algebra");
}

#[test]
fn movement() {
    run_family("movement");
}

#[test]
fn attention() {
    run_family("attention");
}

#[test]
fn fusion() {
    run_family("fusion");
}

#[test]
fn every_rule_has_a_golden_soundness_case() {
    let mut covered = Vec::new();
    for family in ["algebra", "movement", "attention", "fusion"] {
        let (_, cases) = parse_cases(&std::fs::read_to_string(path(family)).unwrap());
        covered.extend(cases.into_iter().map(|c| c.rule));
    }
    let mut missing: Vec<String> = passes::rules::all().iter().map(|r| r.name.to_string()).filter(|n| !covered.contains(n)).collect();
    missing.extend(passes::rules::fusion::RULES.iter().map(|r| r.name.to_string()).filter(|n| !covered.contains(n)));
    assert!(missing.is_empty(), "rules without a golden soundness case: {missing:?}");
}
