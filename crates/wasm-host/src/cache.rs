//! On-disk cache of compiled components.
//!
//! An entry is keyed by the BLAKE3 hash of the component's bytes and a
//! fingerprint of everything that makes compiled code incompatible (wasmtime's
//! own compatibility hash of the engine configuration, and this crate's
//! version). The file holds wasmtime's serialized artifact followed by the
//! BLAKE3 hash of that artifact: an entry whose hash does not check out, or that
//! wasmtime refuses, is compiled again and rewritten, never loaded.

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
    /// Same bytes as a component already loaded: its compiled code is shared.
    Shared,
}

const CHECKSUM_LEN: usize = blake3::OUT_LEN;

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

    /// Returns the compiled component for `bytes` (whose hash is `content`),
    /// from the cache when a valid entry exists, else by compiling (and
    /// caching) it; `on_compile` is called just before a compilation starts.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        content: &blake3::Hash,
        bytes: &[u8],
        on_compile: &dyn Fn(),
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let Some(path) = self.entry_path(content) else {
            on_compile();
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Disabled));
        };
        let outcome = match std::fs::read(&path) {
            Ok(entry) => match deserialize_checked(engine, &entry) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(why) => {
                    tracing::warn!(path = %path.display(), "discarding compile cache entry: {why:#}");
                    CacheOutcome::Replaced
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => CacheOutcome::Miss,
            Err(error) => {
                tracing::warn!(path = %path.display(), "cannot read compile cache entry: {error}");
                CacheOutcome::Replaced
            }
        };

        on_compile();
        let mut artifact = engine.precompile_component(bytes)?;
        let checksum = blake3::hash(&artifact);
        artifact.extend_from_slice(checksum.as_bytes());
        // A failure to write the cache costs the next start a compile, nothing more.
        if let Err(error) = write_atomically(&path, &artifact) {
            tracing::warn!(path = %path.display(), "cannot write compile cache entry: {error:#}");
        }
        let component = deserialize_checked(engine, &artifact)?;
        Ok((component, outcome))
    }
}

fn deserialize_checked(engine: &Engine, entry: &[u8]) -> anyhow::Result<Component> {
    let Some(split) = entry.len().checked_sub(CHECKSUM_LEN) else {
        anyhow::bail!("entry is truncated ({} bytes)", entry.len());
    };
    let (artifact, checksum) = entry.split_at(split);
    if blake3::hash(artifact).as_bytes() != checksum {
        anyhow::bail!("checksum mismatch");
    }
    // SAFETY: `deserialize` trusts its input to be an artifact this wasmtime
    // produced. The bytes are exactly what `precompile_component` returned when
    // the entry was written (the checksum above proves they were not altered),
    // and wasmtime itself rejects artifacts from another version or config.
    unsafe { Component::deserialize(engine, artifact) }.map_err(anyhow::Error::from)
}

/// Writes to a temporary file in the same directory, then renames it over
/// `path`, so a reader never sees a half-written entry.
fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("cache entry has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
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
        let (_, outcome) = cache.load_or_compile(engine, &blake3::hash(bytes), bytes, &|| compiled.set(true)).unwrap();
        (outcome, compiled.get())
    }

    fn only_entry(dir: &Path) -> PathBuf {
        let entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
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
