//! The in-graph kernel trace (`KILN_GPU_TRACE=1`, docs/gpu.md): where one replay's time goes.
//!
//! Timing each step alone, or as back-to-back copies of itself, hides what a replay pays
//! between different kernels: the wait for the previous grid to finish and flush, and the
//! weight stream when it misses L2. The trace measures the real graph instead. With tracing
//! on, `codegen::gpu` instruments every kernel of the PTX module: thread 0 of each block takes
//! a record slot (an atomic add on [`COUNT_SYMBOL`]) and stores there its kernel's index in
//! the module ([`ptx_entries`]), its SM, its block index and two clocks at three points: at
//! entry, after `griddepcontrol.wait` (zero where the kernel has none) and at exit.
//! `%globaltimer` (ns) is one clock for the whole device, so it orders blocks of different
//! kernels; `%clock64` counts its own SM's cycles, for spans inside a block.
//! `CudaExecutor::trace` replays the graph once and reads the records; [`Trace::steps`]
//! assigns them to the artifact's launch steps and [`Trace::report`] prints the timeline.
//!
//! The records cost a few instructions and two stores per block: a traced replay is slightly
//! slower than an untraced one, and its figures are for finding where time goes, not for
//! reporting speed.

use super::{CudaArtifact, GpuStep};
use std::collections::HashMap;
use std::fmt::Write as _;

/// The module's record counter (`.u64`).
pub const COUNT_SYMBOL: &str = "kiln_trace_count";
/// The module's record array (`CAPACITY x RECORD_BYTES` bytes).
pub const LOG_SYMBOL: &str = "kiln_trace_log";
/// Bytes per record: `u32 entry, u32 sm, u64 start_ns, u64 waited_ns, u64 exit_ns,
/// u64 start_clk, u64 waited_clk, u64 exit_clk, u32 block_x, u32 block_y, u64 marks[MARKS]`.
pub const RECORD_BYTES: usize = 64 + 8 * MARKS;
/// Points inside a kernel that its emitter marks (`%globaltimer` at each; 0 where a block did
/// not pass one). The skinny GEMM's: 1 the norm's statistics combined, 2 every mma done and
/// the warps summed, 3 the block counted in its split-K counter (0 is free).
pub const MARKS: usize = 4;
/// Where the marks start in a record.
pub const MARKS_AT: usize = 64;
/// Records the module holds; blocks past it overwrite the last slot (and the counter says how
/// many there were).
pub const CAPACITY: usize = 1 << 15;

/// One block's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// The kernel's index among the module's entries ([`ptx_entries`]).
    pub entry: u32,
    pub sm: u32,
    pub block: [u32; 2],
    pub start_ns: u64,
    /// 0: the kernel does not wait (no programmatic dependent launch on this target).
    pub waited_ns: u64,
    pub exit_ns: u64,
    pub start_clk: u64,
    pub waited_clk: u64,
    pub exit_clk: u64,
    pub marks: [u64; MARKS],
}

impl TraceRecord {
    /// Decodes one record (little-endian, as the device stores it).
    pub fn from_bytes(b: &[u8; RECORD_BYTES]) -> TraceRecord {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        TraceRecord {
            entry: u32_at(0),
            sm: u32_at(4),
            start_ns: u64_at(8),
            waited_ns: u64_at(16),
            exit_ns: u64_at(24),
            start_clk: u64_at(32),
            waited_clk: u64_at(40),
            exit_clk: u64_at(48),
            block: [u32_at(56), u32_at(60)],
            marks: std::array::from_fn(|i| u64_at(MARKS_AT + 8 * i)),
        }
    }

    /// When the block was released: after its wait, or at entry if it has none.
    pub fn released_ns(&self) -> u64 {
        if self.waited_ns != 0 { self.waited_ns } else { self.start_ns }
    }
}

/// The names of a PTX module's kernel entries, in the order they appear: the index a trace
/// record carries.
pub fn ptx_entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let rest = t.strip_prefix(".visible .entry ").or_else(|| t.strip_prefix(".entry "))?;
            Some(rest.split(['(', ' ']).next().unwrap_or(rest))
        })
        .collect()
}

/// The records of one replay.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub records: Vec<TraceRecord>,
    /// Blocks that found no free slot (their records are lost).
    pub dropped: usize,
}

/// One launch step of the replay, from its blocks' records; times in ns from the replay's
/// first block entry.
#[derive(Clone, Debug, PartialEq)]
pub struct StepTrace {
    pub step: usize,
    pub kernel: String,
    /// Blocks launched, and records found for them.
    pub blocks: usize,
    pub records: usize,
    pub first_start: f64,
    /// The first block past its wait: the step's release.
    pub first_released: f64,
    pub last_released: f64,
    pub last_exit: f64,
    /// Median over blocks of the time from release to exit, and from entry to release.
    pub block_median: f64,
    pub prewait_median: f64,
    /// Per mark: the median over the blocks that passed it of the time from release to it
    /// (`None`: no block did).
    pub marks_median: [Option<f64>; MARKS],
    /// The block that left last: from its last mark to its exit (`None`: it passed none).
    pub last_tail: Option<f64>,
}

impl Trace {
    /// The launch steps of `art` in order, each with the records of its blocks. A kernel
    /// launched by several steps has its records ordered by release and cut into the steps'
    /// grid sizes in step order (a step's blocks are released only after every earlier step
    /// has finished). cuBLASLt GEMMs and copies leave no records and are left out.
    pub fn steps(&self, art: &CudaArtifact) -> Vec<StepTrace> {
        let entries = ptx_entries(&art.ptx);
        let t0 = self.records.iter().map(|r| r.start_ns).min().unwrap_or(0);
        let mut by_symbol: HashMap<&str, Vec<TraceRecord>> = HashMap::new();
        for r in &self.records {
            if let Some(name) = entries.get(r.entry as usize) {
                by_symbol.entry(name).or_default().push(*r);
            }
        }
        for rs in by_symbol.values_mut() {
            rs.sort_by_key(|r| (r.released_ns(), r.start_ns));
        }
        let mut taken: HashMap<&str, usize> = HashMap::new();
        let rel = |t: u64| t.saturating_sub(t0) as f64;
        let mut out = Vec::new();
        for (i, step) in art.steps.iter().enumerate() {
            let GpuStep::Launch(l) = step else { continue };
            let blocks = l.grid.iter().map(|&g| g as usize).product::<usize>();
            let all = by_symbol.get(l.symbol.as_str()).map(Vec::as_slice).unwrap_or(&[]);
            let from = taken.entry(l.symbol.as_str()).or_default();
            let rs = &all[(*from).min(all.len())..(*from + blocks).min(all.len())];
            *from += blocks;
            let median = |mut v: Vec<f64>| -> f64 {
                if v.is_empty() {
                    return 0.0;
                }
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            out.push(StepTrace {
                step: i,
                kernel: l.kernel.clone(),
                blocks,
                records: rs.len(),
                first_start: rs.iter().map(|r| rel(r.start_ns)).fold(f64::INFINITY, f64::min),
                first_released: rs.iter().map(|r| rel(r.released_ns())).fold(f64::INFINITY, f64::min),
                last_released: rs.iter().map(|r| rel(r.released_ns())).fold(0.0, f64::max),
                last_exit: rs.iter().map(|r| rel(r.exit_ns)).fold(0.0, f64::max),
                block_median: median(rs.iter().map(|r| r.exit_ns.saturating_sub(r.released_ns()) as f64).collect()),
                prewait_median: median(rs.iter().map(|r| r.released_ns().saturating_sub(r.start_ns) as f64).collect()),
                marks_median: std::array::from_fn(|i| {
                    let v: Vec<f64> = rs.iter().filter(|r| r.marks[i] != 0).map(|r| r.marks[i].saturating_sub(r.released_ns()) as f64).collect();
                    (!v.is_empty()).then(|| median(v))
                }),
                last_tail: rs.iter().max_by_key(|r| r.exit_ns).and_then(|r| {
                    r.marks.iter().filter(|&&m| m != 0).max().map(|&m| r.exit_ns.saturating_sub(m) as f64)
                }),
            });
        }
        out
    }

    /// SM cycles per ns over all blocks (entry to exit on both clocks), for reading `%clock64`
    /// spans as time; 0 without records.
    pub fn clock_ghz(&self) -> f64 {
        let (clk, ns) = self.records.iter().fold((0u64, 0u64), |(c, n), r| {
            (c + r.exit_clk.saturating_sub(r.start_clk), n + r.exit_ns.saturating_sub(r.start_ns))
        });
        if ns == 0 { 0.0 } else { clk as f64 / ns as f64 }
    }

    /// The timeline as text: per launch step, when its first block entered and was released
    /// and its last block left, the gap from the previous step's last exit to this step's
    /// first release (the kernel boundary), the step's span from release to last exit, the
    /// medians over blocks of release to exit and entry to release, of release to each mark
    /// passed, and the last block's time from its last mark to its exit; then the sums.
    pub fn report(&self, art: &CudaArtifact) -> String {
        let steps = self.steps(art);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>4}  {:<34} {:>6}  {:>9} {:>9} {:>9}  {:>8} {:>8}  {:>8} {:>8}  {}  {:>8}",
            "step",
            "kernel",
            "blocks",
            "enter us",
            "release",
            "exit",
            "gap",
            "span",
            "block50",
            "prewait50",
            (1..MARKS).map(|i| format!("{:>8}", format!("mark{i}"))).collect::<Vec<_>>().join(" "),
            "lasttail"
        );
        let (mut gaps, mut spans, mut prev_exit) = (0.0, 0.0, None::<f64>);
        for st in &steps {
            if st.records == 0 {
                let _ = writeln!(s, "{:>4}  {:<34} {:>6}  (no records)", st.step, short(&st.kernel), st.blocks);
                continue;
            }
            let gap = prev_exit.map_or(0.0, |p| st.first_released - p);
            let span = st.last_exit - st.first_released;
            gaps += gap;
            spans += span;
            prev_exit = Some(st.last_exit);
            let opt = |v: Option<f64>| v.map_or(format!("{:>8}", "-"), |x| format!("{:>8.2}", x / 1e3));
            let _ = writeln!(
                s,
                "{:>4}  {:<34} {:>6}  {:>9.2} {:>9.2} {:>9.2}  {:>8.2} {:>8.2}  {:>8.2} {:>8.2}  {}  {}{}",
                st.step,
                short(&st.kernel),
                st.blocks,
                st.first_start / 1e3,
                st.first_released / 1e3,
                st.last_exit / 1e3,
                gap / 1e3,
                span / 1e3,
                st.block_median / 1e3,
                st.prewait_median / 1e3,
                st.marks_median[1..].iter().map(|&m| opt(m)).collect::<Vec<_>>().join(" "),
                opt(st.last_tail),
                if st.records != st.blocks { format!("  ({} records)", st.records) } else { String::new() }
            );
        }
        let total = steps.iter().filter(|t| t.records > 0).map(|t| t.last_exit).fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "total {:.2} us from the first block's entry to the last exit: spans {:.2} us, gaps {:.2} us, before the first release {:.2} us; {} records, {} dropped, SM clock {:.2} GHz",
            total / 1e3,
            spans / 1e3,
            gaps / 1e3,
            steps.iter().find(|t| t.records > 0).map_or(0.0, |t| t.first_released) / 1e3,
            self.records.len(),
            self.dropped,
            self.clock_ghz()
        );
        s
    }
}

/// A kernel name cut to the report's column.
fn short(k: &str) -> String {
    if k.chars().count() <= 34 { k.to_string() } else { format!("{}~", k.chars().take(33).collect::<String>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::LaunchStep;

    fn record(entry: u32, start: u64, waited: u64, exit: u64) -> TraceRecord {
        TraceRecord { entry, start_ns: start, waited_ns: waited, exit_ns: exit, start_clk: 2 * start, exit_clk: 2 * exit, ..Default::default() }
    }

    fn artifact(ptx: &str, steps: &[(&str, u32)]) -> CudaArtifact {
        CudaArtifact {
            name: "t".into(),
            arch: "sm_90a".into(),
            ptx: ptx.into(),
            buffers: vec![],
            inputs: vec![],
            input_names: vec![],
            outputs: vec![],
            arena_bytes: 0,
            unplanned_bytes: 0,
            steps: steps
                .iter()
                .map(|&(sym, grid)| {
                    GpuStep::Launch(LaunchStep { kernel: format!("k_{sym}"), symbol: sym.into(), grid: [grid, 1, 1], block: [128, 1, 1], args: vec![] })
                })
                .collect(),
        }
    }

    #[test]
    fn a_record_decodes_field_by_field() {
        let mut b = [0u8; RECORD_BYTES];
        b[0..4].copy_from_slice(&7u32.to_le_bytes());
        b[4..8].copy_from_slice(&131u32.to_le_bytes());
        b[8..16].copy_from_slice(&100u64.to_le_bytes());
        b[16..24].copy_from_slice(&150u64.to_le_bytes());
        b[24..32].copy_from_slice(&900u64.to_le_bytes());
        b[48..56].copy_from_slice(&1800u64.to_le_bytes());
        b[56..60].copy_from_slice(&3u32.to_le_bytes());
        b[60..64].copy_from_slice(&4u32.to_le_bytes());
        b[MARKS_AT + 16..MARKS_AT + 24].copy_from_slice(&700u64.to_le_bytes());
        let r = TraceRecord::from_bytes(&b);
        assert_eq!(r.marks, [0, 0, 700, 0]);
        assert_eq!((r.entry, r.sm, r.start_ns, r.waited_ns, r.exit_ns, r.exit_clk, r.block), (7, 131, 100, 150, 900, 1800, [3, 4]));
        assert_eq!(r.released_ns(), 150);
        assert_eq!(TraceRecord { waited_ns: 0, ..r }.released_ns(), 100);
    }

    #[test]
    fn entries_are_listed_in_module_order() {
        let ptx = ".version 8.0\n.visible .entry kiln_a(\n\t.param .u64 p\n)\n{\n\tret;\n}\n.entry kiln_b()\n{\n\tret;\n}\n";
        assert_eq!(ptx_entries(ptx), vec!["kiln_a", "kiln_b"]);
    }

    #[test]
    fn records_of_a_kernel_launched_twice_split_by_release_order() {
        let ptx = ".visible .entry a(\n)\n.visible .entry b(\n)\n";
        // a (2 blocks), b (1 block), a again (2 blocks); records arrive out of order.
        let art = artifact(ptx, &[("a", 2), ("b", 1), ("a", 2)]);
        let trace = Trace {
            records: vec![
                record(0, 5000, 5100, 5600),
                record(0, 1000, 1100, 1500),
                record(1, 1400, 2000, 3000),
                record(0, 1050, 1200, 1600),
                record(0, 4000, 5200, 5500),
            ],
            dropped: 0,
        };
        let mut trace = trace;
        trace.records[1].marks[2] = 1300; // a's first block: summed 200 ns after its release
        let steps = trace.steps(&art);
        assert_eq!(steps.len(), 3);
        assert_eq!(steps[0].marks_median, [None, None, Some(200.0), None]);
        assert_eq!((steps[0].last_tail, steps[1].last_tail), (None, None));
        assert_eq!((steps[0].records, steps[0].first_released, steps[0].last_exit), (2, 100.0, 600.0));
        assert_eq!((steps[1].first_start, steps[1].first_released, steps[1].last_exit), (400.0, 1000.0, 2000.0));
        assert_eq!((steps[2].first_start, steps[2].first_released, steps[2].last_exit), (3000.0, 4100.0, 4600.0));
        let report = trace.report(&art);
        // gaps: b released 400 ns after a's last exit, the second a 2100 ns after b's
        assert!(report.contains("gaps 2.50 us"), "{report}");
        assert!(report.contains("SM clock 2.00 GHz"), "{report}");
    }

    #[test]
    fn a_step_without_records_is_reported_as_such() {
        let art = artifact(".visible .entry a(\n)\n", &[("a", 4)]);
        let trace = Trace::default();
        assert_eq!(trace.steps(&art)[0].records, 0);
        assert!(trace.report(&art).contains("(no records)"));
    }
}
