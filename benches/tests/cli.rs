//! The `kiln-bench` command line: what it says when asked for something it cannot do here.

use std::process::Command;

/// `trace` records GPU kernels: on the CPU backend it fails with a message that says so,
/// never a panic or an empty success.
#[test]
fn trace_on_the_cpu_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-bench"))
        .args(["--backend", "cpu", "trace", "--filter", "gpt2_small_b1"])
        .output()
        .expect("kiln-bench runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kiln-bench: error:") && err.contains("--backend cuda"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
