//! The compile cache: hit, corrupt or truncated entry rebuilt, unwritable dir runs uncached.

use runtime::cache::{Cache, CacheKey, Outcome};
use runtime::{Artifact, BufferDesc, Location};

fn artifact(tag: u8) -> Artifact {
    Artifact {
        name: "g".into(),
        target: "x86_64-test".into(),
        kiln_version: runtime::KILN_VERSION.into(),
        library: vec![tag; 4096],
        buffers: vec![BufferDesc { dtype: ir::DType::F32, shape: vec![3, 5], location: Location::Input(0), live: (0, 0) }],
        inputs: vec![0],
        input_names: vec!["x".into()],
        outputs: vec![0],
        arena_bytes: 0,
        unplanned_bytes: 0,
        steps: vec![],
    }
}

#[test]
fn hit_after_miss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    let key = CacheKey::new("kernels @g { }", "x86_64-test");
    let (a, o) = cache.get_or_build(&key, || Ok::<_, ()>(artifact(1))).unwrap();
    assert_eq!(o, Outcome::Miss);
    let (b, o) = cache.get_or_build(&key, || -> Result<Artifact, ()> { panic!("must not rebuild") }).unwrap();
    assert_eq!(o, Outcome::Hit);
    assert_eq!(a, b);
    // Another target or graph is another entry.
    assert_ne!(key, CacheKey::new("kernels @g { }", "x86_64-other"));
    assert_eq!(cache.get::<Artifact>(&CacheKey::new("kernels @h { }", "x86_64-test")), Ok(None));
}

#[test]
fn corrupt_and_truncated_entries_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    let key = CacheKey::new("kernels @g { }", "x86_64-test");
    cache.put(&key, &artifact(1)).unwrap();
    let path = dir.path().join(&key.file);
    // Flip one byte in the payload.
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (a, o) = cache.get_or_build(&key, || Ok::<_, ()>(artifact(2))).unwrap();
    assert!(matches!(&o, Outcome::Rebuilt { reason } if reason.contains("checksum")), "{o:?}");
    assert_eq!(a.library[0], 2);
    assert_eq!(cache.get(&key), Ok(Some(artifact(2))));
    // Truncate it.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (_, o) = cache.get_or_build(&key, || Ok::<_, ()>(artifact(3))).unwrap();
    assert!(matches!(&o, Outcome::Rebuilt { reason } if reason.contains("truncated")), "{o:?}");
    let (a, o) = cache.get_or_build(&key, || Ok::<_, ()>(artifact(4))).unwrap();
    assert_eq!((a.library[0], o), (3, Outcome::Hit));
    // Garbage with no header.
    std::fs::write(&path, b"garbage").unwrap();
    let (_, o) = cache.get_or_build(&key, || Ok::<_, ()>(artifact(5))).unwrap();
    assert!(matches!(o, Outcome::Rebuilt { .. }));
}

#[test]
fn unwritable_cache_dir_runs_uncached() {
    let dir = tempfile::tempdir().unwrap();
    // A cache "directory" below a regular file can never be created, even by root.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let cache = Cache::new(file.join("cache"));
    let key = CacheKey::new("kernels @g { }", "x86_64-test");
    let (a, o) = cache.get_or_build(&key, || Ok::<_, ()>(artifact(1))).unwrap();
    assert!(matches!(o, Outcome::Uncached { .. }), "{o:?}");
    assert_eq!(a.library[0], 1);
    // A read-only directory (when permissions apply to this user).
    use std::os::unix::fs::PermissionsExt;
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let cache = Cache::new(&ro);
    let writable = std::fs::write(ro.join("probe"), b"").is_ok();
    let (_, o) = cache.get_or_build(&key, || Ok::<_, ()>(artifact(1))).unwrap();
    if !writable {
        assert!(matches!(o, Outcome::Uncached { .. }), "{o:?}");
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}
