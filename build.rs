//! Computes `KILN_BUILD_ID`: a hash of the sources that turn a kernel graph into an artifact
//! (codegen and runtime). It goes into every compile-cache key, so an artifact cached by
//! another build of Kiln with the same version number is never reused by this one.

use std::hash::Hasher;
use std::path::Path;

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            visit(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs" || x == "toml") {
            files.push(p);
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in ["codegen/src", "runtime/src", "codegen/Cargo.toml", "runtime/Cargo.toml"] {
        let p = root.join(d);
        println!("cargo:rerun-if-changed={}", p.display());
        if p.is_dir() {
            visit(&p, &mut files);
        } else {
            files.push(p);
        }
    }
    files.sort();
    // FNV-1a over (relative path, contents) of every file, in path order.
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for f in &files {
        h.write(f.strip_prefix(root).unwrap_or(f).to_string_lossy().as_bytes());
        h.write(&std::fs::read(f).unwrap_or_default());
    }
    println!("cargo:rustc-env=KILN_BUILD_ID={:016x}", h.finish());
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
