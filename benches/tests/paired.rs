//! The memory-bound workloads' fraction of copy is taken against a copy measured in
//! alternation with them (`paired_copy`), not against the suite's one-off ceiling.

use kiln::Backend;
use kiln_bench::workloads::{Bound, Size, WORKLOADS};
use kiln_bench::{measure_ceilings, run_workload, CopyBench, SuiteOptions};
use std::time::Duration;

#[test]
fn memory_bound_workloads_report_a_paired_copy() {
    let opts = SuiteOptions { backend: Backend::Cpu, size: Size::Check, dtype: ir::DType::F32, repeat: 5, budget: Duration::from_secs(2) };
    let copy = CopyBench::new(Backend::Cpu, Size::Check).expect("copy graph");
    let ceilings = measure_ceilings(Backend::Cpu, Size::Check, ir::DType::F32, &copy).expect("ceilings");
    let memory: Vec<_> = WORKLOADS.iter().filter(|w| matches!(w.bound, Bound::Memory)).collect();
    assert!(memory.len() >= 3, "ew_chain, layernorm_residual, softmax");
    for w in memory {
        let r = run_workload(w, &opts, &ceilings, &copy).expect("runs");
        let copy = r.paired_copy_bytes_per_s.expect("a memory-bound workload measures its own copy");
        assert!(copy.is_finite() && copy > 0.0, "{}: copy {copy}", w.name);
        assert!((r.fraction_of_ceiling - r.achieved / copy).abs() <= 1e-9 * r.fraction_of_ceiling.abs(), "{}", w.name);
        let row = kiln_bench::table(std::slice::from_ref(&r), &ceilings);
        assert!(row.contains("% of copy "), "{row}");
    }
}
