//! Every shrunk failure the fuzzer saved (`tests/regressions/*.kir`) through the whole
//! pipeline, optimizer on and off, against the interpreter. Each file runs in a child
//! process (`kiln-fuzz --check FILE`), so a crash is reported by name instead of taking the
//! test down. Cases listed in `tests/regressions/KNOWN_FAILURES` (a bug filed in
//! /work/notes/bugs.md for a crate this team does not own) are run and reported by name but
//! do not fail the test; a listed case that passes is reported so it can be taken off.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn known_failures(dir: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(dir.join("KNOWN_FAILURES")).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(':') {
            Some((n, why)) => (n.trim().to_string(), why.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// The seed the fuzzer used for the inputs (`# kiln-fuzz seed N ...`), else 0.
fn seed_of(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("# kiln-fuzz seed ").and_then(|r| r.split_whitespace().next()).and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn every_regression_file_matches_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let known = known_failures(&dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "kir"));
    files.sort();
    assert!(!files.is_empty(), "no regression files in {}", dir.display());
    let mut failed = Vec::new();
    let mut known_seen = Vec::new();
    for path in &files {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        // Every file must at least parse.
        kiln_tests::shrink::load(path).unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new(env!("CARGO_BIN_EXE_kiln-fuzz"))
            .args(["--check", &path.to_string_lossy(), "--seed", &seed_of(path).to_string()])
            .output()
            .expect("run kiln-fuzz --check");
        let problem = if out.status.success() {
            None
        } else {
            let text = String::from_utf8_lossy(&out.stdout);
            let bad: Vec<&str> = text.lines().filter(|l| !l.ends_with(": pass")).collect();
            Some(match out.status.code() {
                Some(_) => bad.join("; "),
                None => format!("crashed ({:?}) {}", out.status, bad.join("; ")),
            })
        };
        match (known.get(&name), problem) {
            (Some(why), Some(p)) => known_seen.push(format!("{name} (known: {why}): {p}")),
            (Some(_), None) => eprintln!("regression {name} is listed in KNOWN_FAILURES but passes now: take it off the list"),
            (None, Some(p)) => failed.push(format!("{name}: {p}")),
            (None, None) => {}
        }
    }
    for k in &known_seen {
        eprintln!("KNOWN FAILURE {k}");
    }
    eprintln!("{} regression files, {} known failures", files.len(), known_seen.len());
    assert!(failed.is_empty(), "regressions failed:\n{}", failed.join("\n"));
}
