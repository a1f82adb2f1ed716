//! On-disk cache of compiled components.
//!
//! An entry is keyed by the BLAKE3 hash of the component's bytes and a
//! fingerprint of everything that makes compiled code incompatible (wasmtime's
//! own compatibility hash of the engine configuration, and this crate's
//! version). `<key>.cwasm` holds wasmtime's serialized artifact and
//! `<key>.cwasm.b3` the BLAKE3 hash of it: an entry whose hash does not check
//! out, or that wasmtime refuses, is compiled again and rewritten, never loaded.
//!
//! A valid entry is loaded by mapping the file, not reading it: the code pages
//! come from the page cache as they are first used, and memory images are
//! mapped from the file too. For a 37 MB artifact (a JavaScript guest) that
//! turns ~65 ms of copying into ~10 ms.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component came to be ready, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid cache entry: no compilation.
    Hit,
    /// No entry: compiled and written.
    Miss,
    /// An entry existed but was corrupt or incompatible: compiled and rewritten.
    Replaced,
    /// No cache directory configured: compiled in memory.
    Disabled,
    /// Compiled, but the cache could not be written (logged): compiled again
    /// on the next start, and kept in memory meanwhile.
    Unwritable,
    /// Same bytes as a component already loaded: its compiled code is shared.
    Shared,
}

#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    fingerprint: String,
}

impl CompileCache {
    /// A cache in `dir` (created when first written), or none.
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        let fingerprint = hasher.0.finalize().to_hex()[..16].to_owned();
        CompileCache { dir, fingerprint }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The cache file for component bytes whose hash is `content`.
    fn entry_path(&self, content: &blake3::Hash) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{}-{}.cwasm", &content.to_hex()[..32], self.fingerprint)))
    }

    /// Returns the compiled component whose bytes hash to `content`, from the
    /// cache when a valid entry exists, else by compiling (and caching) the
    /// bytes `read` returns; it is called only when a compilation is needed.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        content: &blake3::Hash,
        read: &dyn Fn() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let Some(path) = self.entry_path(content) else {
            return Ok((Component::new(engine, read()?)?, CacheOutcome::Disabled));
        };
        let outcome = match load_checked(engine, &path) {
            Ok(component) => return Ok((component, CacheOutcome::Hit)),
            Err(LoadError::Missing) => CacheOutcome::Miss,
            Err(LoadError::Invalid(why)) => {
                tracing::warn!(path = %path.display(), "discarding compile cache entry: {why:#}");
                CacheOutcome::Replaced
            }
        };

        let artifact = engine.precompile_component(&read()?)?;
        // A failure to write the cache costs the next start a compile, nothing more.
        let outcome = match write_entry(&path, &artifact) {
            Ok(()) => outcome,
            Err(error) => {
                tracing::warn!(path = %path.display(), "cannot write compile cache entry: {error:#}");
                CacheOutcome::Unwritable
            }
        };
        // SAFETY: the bytes are what `precompile_component` just returned.
        let component = unsafe { Component::deserialize(engine, &artifact) }?;
        Ok((component, outcome))
    }
}

enum LoadError {
    Missing,
    Invalid(anyhow::Error),
}

/// Loads the entry at `path` if its checksum file exists and matches.
fn load_checked(engine: &Engine, path: &Path) -> Result<Component, LoadError> {
    let invalid = |error: anyhow::Error| LoadError::Invalid(error);
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        // No entry, or no cache directory to hold one (a file in its place).
        Err(error) if matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Err(LoadError::Missing);
        }
        Err(error) => return Err(invalid(error.into())),
    };
    let expected = std::fs::read(checksum_path(path)).map_err(|e| invalid(anyhow::anyhow!("checksum file: {e}")))?;
    // Every later step goes through this one open file, so the bytes that are
    // verified are the bytes that are mapped, whatever happens to the path.
    let same_file = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file)));
    let started = std::time::Instant::now();
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(&same_file).map_err(|e| invalid(e.into()))?;
    if hasher.finalize().as_bytes()[..] != expected[..] {
        return Err(invalid(anyhow::anyhow!("checksum mismatch")));
    }
    tracing::debug!(path = %path.display(), "cache entry checksum verified in {:.1?}", started.elapsed());
    // SAFETY: `deserialize_file` trusts the file to hold an artifact this
    // wasmtime produced and to stay unchanged while mapped. Its bytes are those
    // `precompile_component` returned when the entry was written (the checksum
    // above proves it); entries are only ever replaced by rename, never written
    // in place, so the mapped file does not change; and wasmtime itself rejects
    // artifacts from another version or configuration.
    let component = unsafe { Component::deserialize_file(engine, &same_file) }.map_err(|e| invalid(e.into()))?;
    drop(file);
    Ok(component)
}

fn checksum_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".b3");
    PathBuf::from(name)
}

/// Writes the artifact, then its checksum, each to a temporary file renamed
/// into place, so a reader never sees a half-written file; an artifact
/// without its checksum yet is simply not loaded.
fn write_entry(path: &Path, artifact: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("cache entry has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(checksum_path(path));
    write_atomically(path, artifact)?;
    write_atomically(&checksum_path(path), blake3::hash(artifact).as_bytes())
}

fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp{}", std::process::id()));
    std::fs::write(&temporary, contents)?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

/// Feeds `std::hash::Hash` output into BLAKE3, for a fingerprint that is stable
/// across runs (std's `DefaultHasher` makes no such promise).
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let hash = self.0.finalize();
        u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../guests/wasm/hello.wasm")).unwrap()
    }

    fn load(cache: &CompileCache, engine: &Engine, bytes: &[u8]) -> (CacheOutcome, bool) {
        let compiled = std::cell::Cell::new(false);
        let read = || {
            compiled.set(true);
            Ok(bytes.to_vec())
        };
        let (_, outcome) = cache.load_or_compile(engine, &blake3::hash(bytes), &read).unwrap();
        (outcome, compiled.get())
    }

    fn only_entry(dir: &Path) -> PathBuf {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        assert_eq!(entries.len(), 2, "an artifact and its checksum: {entries:?}");
        assert_eq!(checksum_path(&entries[0]), entries[1]);
        entries[0].clone()
    }

    #[test]
    fn a_second_load_uses_the_entry_without_compiling() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = CompileCache::new(&engine, Some(dir.path().to_owned()));
        assert_eq!(load(&cache, &engine, &hello()), (CacheOutcome::Miss, true));
        assert_eq!(load(&cache, &engine, &hello()), (CacheOutcome::Hit, false));
    }

    #[test]
    fn corrupt_or_truncated_entries_are_compiled_again() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = CompileCache::new(&engine, Some(dir.path().to_owned()));
        load(&cache, &engine, &hello());
        let entry = only_entry(dir.path());

        let mut bytes = std::fs::read(&entry).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&entry, &bytes).unwrap();
        assert_eq!(load(&cache, &engine, &hello()), (CacheOutcome::Replaced, true));
        assert_eq!(load(&cache, &engine, &hello()), (CacheOutcome::Hit, false), "the entry was rewritten");

        std::fs::write(&entry, b"short").unwrap();
        assert_eq!(load(&cache, &engine, &hello()), (CacheOutcome::Replaced, true));

        std::fs::remove_file(checksum_path(&entry)).unwrap();
        assert_eq!(load(&cache, &engine, &hello()), (CacheOutcome::Replaced, true), "no checksum, no trust");
        assert_eq!(load(&cache, &engine, &hello()), (CacheOutcome::Hit, false));
    }

    #[test]
    fn an_entry_from_another_engine_configuration_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = CompileCache::new(&engine, Some(dir.path().to_owned()));
        load(&cache, &engine, &hello());

        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let other = Engine::new(&config).unwrap();
        let other_cache = CompileCache::new(&other, Some(dir.path().to_owned()));
        assert_eq!(load(&other_cache, &other, &hello()), (CacheOutcome::Miss, true));
    }

    #[test]
    fn without_a_directory_every_load_compiles() {
        let engine = Engine::default();
        let cache = CompileCache::new(&engine, None);
        assert_eq!(load(&cache, &engine, &hello()), (CacheOutcome::Disabled, true));
        assert_eq!(load(&cache, &engine, &hello()), (CacheOutcome::Disabled, true));
    }
}
