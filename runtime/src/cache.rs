//! The on-disk compile cache.
//!
//! - Location: `$KILN_CACHE_DIR`, else `~/.cache/kiln` ([`Cache::from_env`]).
//! - Key ([`CacheKey`]): a 64-bit FNV-1a hash of the kernel graph's text (which spells every
//!   shape and dtype), the target (`triple/cpu/features`) and Kiln's version; the full key
//!   string is stored inside the entry too, so a hash collision reads as a miss.
//! - Entry format: `KILNART1` magic, payload length (u64 LE), FNV-1a 64 checksum of the
//!   payload (u64 LE), then the payload: bincode of `(key, artifact)`, where the artifact is
//!   a CPU [`Artifact`] or a GPU `CudaArtifact` (any serde type; the target in the key tells
//!   them apart). bincode, not JSON,
//!   because an artifact is mostly shared-library bytes: bincode stores them verbatim (a hit
//!   is a file read plus a memcpy-speed decode), JSON would spell every byte as a number.
//! - A truncated or corrupt entry (bad magic, length, checksum or decode) is reported
//!   ([`Outcome::Rebuilt`], and a `tracing` warning), removed and rebuilt. Writes go to a
//!   temporary file renamed into place, so readers never see half an entry.
//! - A cache directory that cannot be created or written means "run uncached"
//!   ([`Outcome::Uncached`]), never an error.

use crate::KILN_VERSION;
use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"KILNART1";

/// FNV-1a, 64 bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What a cache entry is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey {
    /// Everything the key covers, spelled out.
    pub full: String,
    /// File name of the entry.
    pub file: String,
}

impl CacheKey {
    /// A key from the graph's text (shapes and dtypes included), the target id and this
    /// build's Kiln version.
    pub fn new(graph_text: &str, target: &str) -> CacheKey {
        let full = format!("kiln {KILN_VERSION}\ntarget {target}\n{graph_text}");
        CacheKey { file: format!("{:016x}.kart", fnv1a(full.as_bytes())), full }
    }
}

/// What happened on a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    /// An entry existed but was unreadable (the reason says why); it was rebuilt.
    Rebuilt { reason: String },
    /// The cache directory is unusable (the reason says why); the artifact was built and not stored.
    Uncached { reason: String },
}

/// The on-disk cache of compiled artifacts.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// `$KILN_CACHE_DIR`, else `$HOME/.cache/kiln` (else a `kiln-cache` folder in the temp dir).
    pub fn from_env() -> Cache {
        if let Some(d) = std::env::var_os("KILN_CACHE_DIR") {
            return Cache::new(d);
        }
        match std::env::var_os("HOME") {
            Some(h) => Cache::new(Path::new(&h).join(".cache").join("kiln")),
            None => Cache::new(std::env::temp_dir().join("kiln-cache")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(&key.file)
    }

    /// Reads an entry: `Ok(Some)` on a hit, `Ok(None)` when absent, `Err(reason)` when the
    /// entry exists but is corrupt or truncated (it is then removed).
    pub fn get<A: DeserializeOwned>(&self, key: &CacheKey) -> Result<Option<A>, String> {
        let path = self.path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        match decode(&bytes, key) {
            Ok(Some(a)) => Ok(Some(a)),
            Ok(None) => Ok(None),
            Err(reason) => {
                let _ = std::fs::remove_file(&path);
                Err(format!("{}: {reason}", path.display()))
            }
        }
    }

    /// Stores an entry; `Err(reason)` when the directory is not writable (nothing is stored).
    pub fn put<A: Serialize>(&self, key: &CacheKey, artifact: &A) -> Result<(), String> {
        let payload = bincode::serialize(&(&key.full, artifact)).map_err(|e| format!("cannot encode the artifact: {e}"))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let tmp = self.dir.join(format!(".{}.{}.tmp", key.file, std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&(payload.len() as u64).to_le_bytes())?;
            f.write_all(&fnv1a(&payload).to_le_bytes())?;
            f.write_all(&payload)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.path(key))
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write to {}: {e}", self.dir.display())
        })
    }

    /// The artifact for `key`: from the cache, or built by `build` and stored.
    pub fn get_or_build<A: Serialize + DeserializeOwned, E>(&self, key: &CacheKey, build: impl FnOnce() -> Result<A, E>) -> Result<(A, Outcome), E> {
        let mut outcome = Outcome::Miss;
        match self.get(key) {
            Ok(Some(a)) => return Ok((a, Outcome::Hit)),
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!("kiln cache: corrupt entry rebuilt: {reason}");
                outcome = Outcome::Rebuilt { reason };
            }
        }
        let a = build()?;
        if let Err(reason) = self.put(key, &a) {
            tracing::warn!("kiln cache: running uncached: {reason}");
            outcome = Outcome::Uncached { reason };
        }
        Ok((a, outcome))
    }
}

fn decode<A: DeserializeOwned>(bytes: &[u8], key: &CacheKey) -> Result<Option<A>, String> {
    if bytes.len() < 24 || &bytes[..8] != MAGIC {
        return Err("not a Kiln cache entry (bad header)".into());
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let sum = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let payload = &bytes[24..];
    if payload.len() != len {
        return Err(format!("truncated: {} payload bytes, header says {len}", payload.len()));
    }
    if fnv1a(payload) != sum {
        return Err("checksum mismatch".into());
    }
    let (full, art): (String, A) = bincode::deserialize(payload).map_err(|e| format!("cannot decode: {e}"))?;
    // A different key with the same hash is a miss, not corruption.
    Ok((full == key.full).then_some(art))
}
