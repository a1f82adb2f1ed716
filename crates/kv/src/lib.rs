//! Key-value stores for components: a SQLite file (the embedded default) or a
//! Redis server, behind one [`Store`] with the operations every key-value
//! interface a guest may import needs (get, set, delete, exists, listing,
//! batches, increment, compare-and-swap).
//!
//! Invariants: knows nothing of wasm or of which component asks; enforces the
//! key and value limits on every write, whatever the backend; a `set` that
//! returned `Ok` is durable (SQLite commits with `synchronous = FULL`; Redis is
//! as durable as its own configuration makes it).

#![forbid(unsafe_code)]

mod redis_store;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

use dormouse_telemetry::{KvMetrics, KvOperation};

/// Longest key, in bytes of UTF-8 (Spin's limit).
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, in bytes (Spin's limit).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Keys returned by one page of a listing.
pub const LIST_PAGE_KEYS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key is {0} bytes long: keys are limited to {MAX_KEY_BYTES} bytes")]
    KeyTooLong(usize),
    #[error("value is {0} bytes long: values are limited to {MAX_VALUE_BYTES} bytes (1 MiB)")]
    ValueTooLarge(usize),
    #[error("the value of key `{0}` is not a decimal integer, so it cannot be incremented")]
    NotAnInteger(String),
    #[error("incrementing key `{0}` overflows a 64-bit integer")]
    Overflow(String),
    #[error("sqlite: {0}")]
    Sqlite(String),
    #[error("redis: {0}")]
    Redis(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One page of keys and, when more follow, the cursor that continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    pub keys: Vec<String>,
    pub cursor: Option<u64>,
}

/// A key-value store, cheap to clone. All operations are async; SQLite's run
/// in place (reads inline; writes under `block_in_place` on a multi-thread
/// runtime, inline elsewhere), Redis's on one multiplexed connection.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
    /// Where its operations are counted; `None`: nowhere.
    metrics: Option<Arc<KvMetrics>>,
}

enum Backend {
    Sqlite(sqlite::SqliteStore),
    Redis(redis_store::RedisStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Store {
    /// The store `label` in the SQLite file at `path` (created if missing),
    /// or in memory when `path` is `None`. Several labels may share a file.
    pub fn sqlite(path: Option<&Path>, label: &str) -> Result<Store> {
        Ok(Store { backend: Arc::new(Backend::Sqlite(sqlite::SqliteStore::open(path, label)?)), metrics: None })
    }

    /// A Redis server. The URL is checked now; the connection is made on first
    /// use and remade after a failure.
    pub fn redis(url: &str) -> Result<Store> {
        Ok(Store { backend: Arc::new(Backend::Redis(redis_store::RedisStore::new(url)?)), metrics: None })
    }

    /// The same store, with its operations and their errors counted in
    /// `metrics` (get them for [`Store::backend`]).
    pub fn with_metrics(&self, metrics: Arc<KvMetrics>) -> Store {
        Store { backend: self.backend.clone(), metrics: Some(metrics) }
    }

    /// `sqlite` or `redis`: the `backend` label of its metrics.
    pub fn backend(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Redis(_) => "redis",
        }
    }

    /// Runs `operation`, counting it if the store is counted.
    async fn observe<T>(&self, kind: KvOperation, operation: impl Future<Output = Result<T>>) -> Result<T> {
        let result = operation.await;
        if let Some(metrics) = &self.metrics {
            metrics.record(kind, result.is_ok());
        }
        result
    }

    /// Where the data lives, for logs and banners.
    pub fn describe(&self) -> String {
        match &*self.backend {
            Backend::Sqlite(store) => store.describe(),
            Backend::Redis(store) => store.describe(),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.observe(KvOperation::Get, async {
            check_key(key)?;
            match &*self.backend {
                Backend::Sqlite(store) => store.get(key).await,
                Backend::Redis(store) => store.get(key).await,
            }
        })
        .await
    }

    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.observe(KvOperation::Set, async {
            check_key(key)?;
            check_value(&value)?;
            match &*self.backend {
                Backend::Sqlite(store) => store.set_many(vec![(key.to_owned(), value)]).await,
                Backend::Redis(store) => store.set(key, value).await,
            }
        })
        .await
    }

    /// Deleting a key that does not exist is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.observe(KvOperation::Delete, async {
            check_key(key)?;
            match &*self.backend {
                Backend::Sqlite(store) => store.delete_many(vec![key.to_owned()]).await,
                Backend::Redis(store) => store.delete_many(vec![key.to_owned()]).await,
            }
        })
        .await
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        self.observe(KvOperation::Exists, async {
            check_key(key)?;
            match &*self.backend {
                Backend::Sqlite(store) => store.exists(key).await,
                Backend::Redis(store) => store.exists(key).await,
            }
        })
        .await
    }

    /// A page of keys, starting at `cursor` (from the previous page) or at the
    /// beginning. The cursor is opaque: an offset for SQLite, Redis's `SCAN`
    /// cursor for Redis.
    pub async fn list_keys(&self, cursor: Option<u64>) -> Result<KeyPage> {
        self.observe(KvOperation::ListKeys, async {
            match &*self.backend {
                Backend::Sqlite(store) => store.list_keys(cursor.unwrap_or(0)).await,
                Backend::Redis(store) => store.list_keys(cursor.unwrap_or(0)).await,
            }
        })
        .await
    }

    /// Every key, following the pages.
    pub async fn all_keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.list_keys(cursor).await?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Values of `keys`, in the same order (`None` where a key is absent).
    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>> {
        self.observe(KvOperation::GetMany, async {
            keys.iter().try_for_each(|key| check_key(key))?;
            match &*self.backend {
                Backend::Sqlite(store) => store.get_many(keys).await,
                Backend::Redis(store) => store.get_many(keys).await,
            }
        })
        .await
    }

    /// Sets every pair, all or nothing for SQLite, in one round trip for Redis.
    pub async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<()> {
        self.observe(KvOperation::SetMany, async {
            for (key, value) in &pairs {
                check_key(key)?;
                check_value(value)?;
            }
            match &*self.backend {
                Backend::Sqlite(store) => store.set_many(pairs).await,
                Backend::Redis(store) => store.set_many(pairs).await,
            }
        })
        .await
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        self.observe(KvOperation::DeleteMany, async {
            keys.iter().try_for_each(|key| check_key(key))?;
            match &*self.backend {
                Backend::Sqlite(store) => store.delete_many(keys).await,
                Backend::Redis(store) => store.delete_many(keys).await,
            }
        })
        .await
    }

    /// Adds `delta` to the integer stored at `key` (absent counts as 0) and
    /// returns the new value, atomically. Counters are stored as decimal text,
    /// as Redis's `INCRBY` keeps them, so `get` reads them on either backend.
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        self.observe(KvOperation::Increment, async {
            check_key(key)?;
            match &*self.backend {
                Backend::Sqlite(store) => store.increment(key, delta).await,
                Backend::Redis(store) => store.increment(key, delta).await,
            }
        })
        .await
    }

    /// Sets `key` to `value` if its current value is `expected` (`None`:
    /// absent), atomically. Returns whether it did.
    pub async fn compare_and_swap(&self, key: &str, expected: Option<Vec<u8>>, value: Vec<u8>) -> Result<bool> {
        self.observe(KvOperation::CompareAndSwap, async {
            check_key(key)?;
            check_value(&value)?;
            match &*self.backend {
                Backend::Sqlite(store) => store.compare_and_swap(key, expected, value).await,
                Backend::Redis(store) => store.compare_and_swap(key, expected, value).await,
            }
        })
        .await
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_BYTES { Err(Error::KeyTooLong(key.len())) } else { Ok(()) }
}

fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES { Err(Error::ValueTooLarge(value.len())) } else { Ok(()) }
}

/// Parses a stored counter.
fn parse_counter(key: &str, value: &[u8]) -> Result<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .ok_or_else(|| Error::NotAnInteger(key.to_owned()))
}
