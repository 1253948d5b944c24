//! Every knob Kiln reads, in one place. Documented in `docs/env_vars.md`.

use std::path::PathBuf;

/// Where compiled graphs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// CUDA if a driver and GPU are present, else the CPU.
    Auto,
    Cpu,
    Cuda,
    /// The f64 reference interpreter (slow; an oracle, not a backend for users).
    Interpreter,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Backend> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "" => Some(Backend::Auto),
            "cpu" => Some(Backend::Cpu),
            "cuda" | "gpu" => Some(Backend::Cuda),
            "interp" | "interpreter" => Some(Backend::Interpreter),
            _ => None,
        }
    }
}

/// Compiler settings. `Config::from_env()` reads the `KILN_*` variables; fields can be set
/// directly too.
#[derive(Clone, Debug)]
pub struct Config {
    /// `KILN_BACKEND` = auto | cpu | cuda | interp.
    pub backend: Backend,
    /// `KILN_DEBUG` = 0..5: 1 summary, 2 per-kernel timing, 3 fused graph, 4 generated
    /// MLIR/LLVM, 5 PTX.
    pub debug: u8,
    /// `KILN_DUMP` = a directory to write every stage's text into.
    pub dump_dir: Option<PathBuf>,
    /// `KILN_VERIFY=1`: run the verifier after every stage.
    pub verify: bool,
    /// `KILN_CACHE_DIR` (default `~/.cache/kiln`); `KILN_CACHE=0` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// `KILN_OPTIMIZE=0` skips the optimizer: one kernel per op (the "eager-style" baseline).
    pub optimize: bool,
    /// `KILN_CUDA_GRAPH=0`: launch each kernel from the host on every call instead of
    /// replaying the whole graph as one CUDA graph (for debugging and the eager-style
    /// baseline; `Compiled::run_device` always replays a graph).
    pub cuda_graph: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            backend: Backend::Auto,
            debug: 0,
            dump_dir: None,
            verify: false,
            cache_dir: default_cache_dir(),
            optimize: true,
            cuda_graph: true,
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("kiln"))
}

fn flag(name: &str) -> Option<bool> {
    std::env::var(name).ok().map(|v| !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")))
}

impl Config {
    /// Reads the `KILN_*` environment variables over the defaults. An unparsable value is an
    /// error naming the variable.
    pub fn from_env() -> Result<Config, crate::Error> {
        let mut c = Config::default();
        if let Ok(b) = std::env::var("KILN_BACKEND") {
            c.backend = Backend::parse(&b).ok_or_else(|| crate::Error::Config(format!("KILN_BACKEND={b:?}: expected auto, cpu, cuda or interp")))?;
        }
        if let Ok(d) = std::env::var("KILN_DEBUG") {
            c.debug = d.parse().ok().filter(|d| *d <= 5).ok_or_else(|| crate::Error::Config(format!("KILN_DEBUG={d:?}: expected 0..5")))?;
        }
        c.dump_dir = std::env::var_os("KILN_DUMP").map(PathBuf::from);
        c.verify = flag("KILN_VERIFY").unwrap_or(false);
        if let Some(d) = std::env::var_os("KILN_CACHE_DIR") {
            c.cache_dir = Some(PathBuf::from(d));
        }
        if flag("KILN_CACHE") == Some(false) {
            c.cache_dir = None;
        }
        c.optimize = flag("KILN_OPTIMIZE").unwrap_or(true);
        c.cuda_graph = flag("KILN_CUDA_GRAPH").unwrap_or(true);
        Ok(c)
    }
}
