#![allow(clippy::result_large_err)]
//! Faults, each with a test: corrupt and truncated cache entries (rebuilt), an unusable cache
//! directory (runs uncached), no CUDA driver (typed error, the CPU still works), GPU out of
//! memory (error naming the allocation, the process stays usable; `--features cuda` only).

use ir::{BinaryOp, DType, Graph, Op, UnaryOp};
use kiln::{Backend, Config, HostTensor};
use kiln_tests::diff::{self, Target, Verdict};
use std::path::Path;

/// A small graph with a few kernels.
fn graph() -> Graph {
    let mut g = Graph::new("faults");
    let x = g.input("x", DType::F32, [7, 13]).unwrap();
    let y = g.input("y", DType::F32, [13]).unwrap();
    let a = g.add(Op::Binary(BinaryOp::Mul), &[x, y]).unwrap();
    let t = g.add(Op::Unary(UnaryOp::Tanh), &[a]).unwrap();
    let s = g.add(Op::Reduce { op: ir::ReduceOp::Sum, axes: vec![1], keepdim: false }, &[t]).unwrap();
    g.set_outputs(vec![t, s]);
    g
}

fn cached_config(dir: &Path) -> Config {
    Config { cache_dir: Some(dir.to_path_buf()), ..kiln_tests::cpu_config() }
}

/// Compiles with `config`, runs, and checks against the interpreter.
fn compile_and_check(g: &Graph, config: &Config) -> kiln::Compiled {
    let c = kiln::compile(g, config).expect("compile");
    let ins = diff::random_inputs(g, 5);
    let outs: Vec<_> = c.run(&ins.iter().map(HostTensor::from_value).collect::<Vec<_>>()).unwrap().iter().map(HostTensor::to_value).collect();
    let want = ir::interp::run(g, &ins).unwrap();
    assert_eq!(diff::compare(g, &outs, &want), Verdict::Pass);
    c
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                v.push(p);
            }
        }
    }
    v
}

fn damaged_entry_is_rebuilt(damage: impl Fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cached_config(dir.path());
    let g = graph();
    assert!(!compile_and_check(&g, &cfg).stats().cache_hit);
    let files = entries(dir.path());
    assert!(!files.is_empty(), "the compile wrote no cache entry");
    for f in &files {
        damage(f);
    }
    // The damaged entry is not used (a miss, with a warning on stderr), the result is right...
    let c = compile_and_check(&g, &cfg);
    assert!(!c.stats().cache_hit, "a damaged entry must not count as a hit");
    // ...and the rebuilt entry serves the next compile.
    assert!(compile_and_check(&g, &cfg).stats().cache_hit, "the entry was not rewritten");
}

#[test]
fn corrupt_cache_entry_is_rebuilt() {
    damaged_entry_is_rebuilt(|f| {
        let mut b = std::fs::read(f).unwrap();
        let n = b.len();
        for x in &mut b[n / 2..] {
            *x ^= 0x5a;
        }
        std::fs::write(f, b).unwrap();
    });
}

#[test]
fn garbage_cache_entry_is_rebuilt() {
    damaged_entry_is_rebuilt(|f| std::fs::write(f, b"not a cache entry at all").unwrap());
}

#[test]
fn truncated_cache_entry_is_rebuilt() {
    damaged_entry_is_rebuilt(|f| {
        let b = std::fs::read(f).unwrap();
        std::fs::write(f, &b[..b.len() / 3]).unwrap();
    });
}

#[test]
fn empty_cache_entry_is_rebuilt() {
    damaged_entry_is_rebuilt(|f| std::fs::write(f, b"").unwrap());
}

/// A cache "directory" that cannot be created (its parent is a file): compiles run uncached.
#[test]
fn unusable_cache_dir_runs_uncached() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a_file");
    std::fs::write(&file, b"x").unwrap();
    let cfg = cached_config(&file.join("cache"));
    let g = graph();
    assert!(!compile_and_check(&g, &cfg).stats().cache_hit);
    assert!(!compile_and_check(&g, &cfg).stats().cache_hit, "nothing could have been cached");
}

/// A read-only cache directory (chmod 555). Root ignores permissions, so there the test
/// checks only that compiles succeed.
#[test]
fn read_only_cache_dir_runs_uncached() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ro");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let writable = std::fs::write(dir.join("probe"), b"").is_ok();
    let cfg = cached_config(&dir);
    let g = graph();
    compile_and_check(&g, &cfg);
    let second = compile_and_check(&g, &cfg);
    if !writable {
        assert!(!second.stats().cache_hit);
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Without a CUDA driver (or without CUDA in this build) asking for CUDA is a typed error,
/// `Auto` picks the CPU, and the CPU still works in the same process.
#[test]
fn no_cuda_driver_is_a_typed_error_and_cpu_works() {
    let have_gpu = cfg!(feature = "cuda") && kiln::resolve_backend(Backend::Auto).unwrap() == Backend::Cuda;
    if have_gpu {
        eprintln!("a CUDA device is present: nothing to check here");
        return;
    }
    assert_eq!(kiln::resolve_backend(Backend::Auto).unwrap(), Backend::Cpu);
    let g = graph();
    let r = std::panic::catch_unwind(|| kiln::compile(&g, &Config { backend: Backend::Cuda, ..kiln_tests::cpu_config() }));
    let Err(e) = r.expect("no panic") else { panic!("CUDA without a driver must fail") };
    let msg = e.to_string();
    assert!(msg.contains("CUDA") || msg.contains("cuda"), "{msg}");
    if !cfg!(feature = "cuda") {
        assert!(matches!(e, kiln::Error::Unavailable(_)), "{e:?}");
        assert!(kiln::resolve_backend(Backend::Cuda).is_err());
    }
    // The fuzzer's own check reports it as an error, not a panic.
    assert!(matches!(diff::check(&g, &Target { backend: Backend::Cuda, optimize: true }, 0), Verdict::Error(_)));
    compile_and_check(&g, &kiln_tests::cpu_config());
}

/// GPU out of memory: an intermediate far larger than any GPU is an error that names the
/// allocation and its size; a small graph compiles and runs right afterwards.
#[cfg(feature = "cuda")]
#[test]
fn gpu_out_of_memory_names_the_allocation_and_recovers() {
    if kiln::resolve_backend(Backend::Auto).unwrap() != Backend::Cuda {
        eprintln!("no CUDA driver/device: skipped");
        return;
    }
    // [2^17, 2^19] f32 = 256 GiB, materialised one kernel per op (exp of an expand).
    let mut g = Graph::new("oom");
    let x = g.input("x", DType::F32, [1, 1 << 19]).unwrap();
    let e = g.add(Op::Expand { shape: [1 << 17, 1 << 19].into() }, &[x]).unwrap();
    let e = g.add(Op::Unary(UnaryOp::Exp), &[e]).unwrap();
    let e = g.add(Op::Unary(UnaryOp::Sin), &[e]).unwrap();
    let s = g.add(Op::Reduce { op: ir::ReduceOp::Sum, axes: vec![0, 1], keepdim: false }, &[e]).unwrap();
    g.set_outputs(vec![s]);
    let cfg = Config { backend: Backend::Cuda, optimize: false, ..kiln_tests::cpu_config() };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> kiln::Result<()> {
        let c = kiln::compile(&g, &cfg)?;
        let ins = diff::random_inputs(&g, 0);
        c.run(&ins.iter().map(HostTensor::from_value).collect::<Vec<_>>())?;
        Ok(())
    }));
    let e = r.expect("OOM must not panic").err().expect("256 GiB cannot fit");
    let msg = e.to_string();
    assert!(msg.contains("out of GPU memory") && msg.contains("bytes"), "{msg}");
    // The process (and the device) stay usable.
    let small = graph();
    let v = diff::check(&small, &Target { backend: Backend::Cuda, optimize: true }, 1);
    assert_eq!(v, Verdict::Pass);
}
