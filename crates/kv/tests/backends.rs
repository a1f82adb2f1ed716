//! The same behaviour from every backend: SQLite in a file and in memory, and
//! a real `redis-server` (Debian's) started on loopback for the test.

use std::time::Duration;

use dormouse_kv::{Error, MAX_KEY_BYTES, MAX_VALUE_BYTES, Store};
use dormouse_testkit::{RedisServer, free_port};

/// Every operation, as a guest would use them.
async fn behaves_as_a_store(store: &Store) {
    assert_eq!(store.get("missing").await.unwrap(), None);
    assert!(!store.exists("missing").await.unwrap());
    store.delete("missing").await.expect("deleting an absent key is not an error");

    store.set("greeting", b"hello".to_vec()).await.unwrap();
    assert_eq!(store.get("greeting").await.unwrap().as_deref(), Some(&b"hello"[..]));
    assert!(store.exists("greeting").await.unwrap());
    store.set("greeting", b"\0binary\xff".to_vec()).await.unwrap();
    assert_eq!(store.get("greeting").await.unwrap().as_deref(), Some(&b"\0binary\xff"[..]));

    store.set_many(vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]).await.unwrap();
    let values = store.get_many(vec!["b".into(), "nope".into(), "a".into()]).await.unwrap();
    assert_eq!(values, vec![Some(b"2".to_vec()), None, Some(b"1".to_vec())]);
    let mut keys = store.all_keys().await.unwrap();
    keys.sort();
    assert_eq!(keys, ["a", "b", "greeting"]);
    store.delete_many(vec!["a".into(), "b".into()]).await.unwrap();
    store.delete("greeting").await.unwrap();
    assert_eq!(store.all_keys().await.unwrap(), Vec::<String>::new());

    assert_eq!(store.increment("counter", 5).await.unwrap(), 5);
    assert_eq!(store.increment("counter", -7).await.unwrap(), -2);
    assert_eq!(store.get("counter").await.unwrap().as_deref(), Some(&b"-2"[..]), "counters are decimal text");
    store.set("text", b"abc".to_vec()).await.unwrap();
    assert!(matches!(store.increment("text", 1).await, Err(Error::NotAnInteger(_))));
    store.set("big", i64::MAX.to_string().into_bytes()).await.unwrap();
    assert!(matches!(store.increment("big", 1).await, Err(Error::Overflow(_))));

    assert!(store.compare_and_swap("cas", None, b"first".to_vec()).await.unwrap());
    assert!(!store.compare_and_swap("cas", None, b"again".to_vec()).await.unwrap(), "the key exists now");
    assert!(!store.compare_and_swap("cas", Some(b"stale".to_vec()), b"x".to_vec()).await.unwrap());
    assert!(store.compare_and_swap("cas", Some(b"first".to_vec()), b"second".to_vec()).await.unwrap());
    assert_eq!(store.get("cas").await.unwrap().as_deref(), Some(&b"second"[..]));

    let long_key = "k".repeat(MAX_KEY_BYTES + 1);
    assert!(matches!(store.set(&long_key, b"v".to_vec()).await, Err(Error::KeyTooLong(257))));
    assert!(matches!(store.get(&long_key).await, Err(Error::KeyTooLong(_))));
    store.set(&"k".repeat(MAX_KEY_BYTES), b"v".to_vec()).await.expect("a key of exactly the limit is fine");
    let error = store.set("big-value", vec![0; MAX_VALUE_BYTES + 1]).await.unwrap_err();
    assert_eq!(error.to_string(), "value is 1048577 bytes long: values are limited to 1048576 bytes (1 MiB)");
    store.set("big-value", vec![7; MAX_VALUE_BYTES]).await.expect("a value of exactly 1 MiB is fine");
    assert_eq!(store.get("big-value").await.unwrap().map(|v| v.len()), Some(MAX_VALUE_BYTES));
}

/// Concurrent increments from many tasks lose no update.
async fn increments_are_atomic(store: &Store) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    store.increment("shared", 1).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.get("shared").await.unwrap().as_deref(), Some(&b"200"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/kv.db");
    let store = Store::sqlite(Some(&path), "default").unwrap();
    behaves_as_a_store(&store).await;
    increments_are_atomic(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory() {
    let store = Store::sqlite(None, "default").unwrap();
    behaves_as_a_store(&store).await;
    increments_are_atomic(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    let server = RedisServer::start();
    let store = Store::redis(&server.url()).unwrap();
    behaves_as_a_store(&store).await;
    increments_are_atomic(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_acknowledged_writes_and_separates_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    {
        let default = Store::sqlite(Some(&path), "default").unwrap();
        let other = Store::sqlite(Some(&path), "other").unwrap();
        default.set("k", b"in default".to_vec()).await.unwrap();
        other.set("k", b"in other".to_vec()).await.unwrap();
        assert_eq!(other.all_keys().await.unwrap(), ["k"]);
    }
    let reopened = Store::sqlite(Some(&path), "default").unwrap();
    assert_eq!(reopened.get("k").await.unwrap().as_deref(), Some(&b"in default"[..]));
    let other = Store::sqlite(Some(&path), "other").unwrap();
    assert_eq!(other.get("k").await.unwrap().as_deref(), Some(&b"in other"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_many_keys() {
    let store = Store::sqlite(None, "default").unwrap();
    let pairs: Vec<(String, Vec<u8>)> =
        (0..dormouse_kv::LIST_PAGE_KEYS + 5).map(|i| (format!("key{i:06}"), vec![1])).collect();
    store.set_many(pairs).await.unwrap();
    let first = store.list_keys(None).await.unwrap();
    assert_eq!(first.keys.len(), dormouse_kv::LIST_PAGE_KEYS);
    let second = store.list_keys(first.cursor).await.unwrap();
    assert_eq!(second.keys.len(), 5);
    assert_eq!(second.cursor, None);
    assert_eq!(store.all_keys().await.unwrap().len(), dormouse_kv::LIST_PAGE_KEYS + 5);
}

#[tokio::test]
async fn an_unreachable_redis_fails_the_call_with_a_reason() {
    // A port nothing listens on: bound, then released.
    let port = free_port();
    let store = Store::redis(&format!("redis://127.0.0.1:{port}")).unwrap();
    let error =
        tokio::time::timeout(Duration::from_secs(30), store.get("k")).await.expect("fails in time").unwrap_err();
    assert!(error.to_string().starts_with("redis: "), "{error}");
    assert!(Store::redis("not a url").is_err());
}

#[test]
fn a_file_that_is_not_a_database_fails_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sqlite_key_value.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let started = std::time::Instant::now();
    let Err(error) = Store::sqlite(Some(&path), "default") else { panic!("a corrupt file must not open") };
    let error = error.to_string();
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(error.contains(&path.display().to_string()) && error.contains("not a database"), "{error}");
}

#[test]
fn a_database_whose_table_is_not_spins_fails_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection.execute_batch("CREATE TABLE spin_key_value (k TEXT, v BLOB)").unwrap();
    drop(connection);
    let Err(error) = Store::sqlite(Some(&path), "default") else { panic!("a foreign table must not open") };
    let error = error.to_string();
    assert!(error.contains("kv.db") && error.contains("columns (k, v)"), "{error}");
}

#[test]
fn a_store_path_that_is_not_a_regular_file_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("kv.db");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let Err(error) = Store::sqlite(Some(&fifo), "default") else { panic!("a named pipe must not open") };
    assert!(error.to_string().contains("not a regular file"), "{error}");
    let Err(error) = Store::sqlite(Some(dir.path()), "default") else { panic!("a directory must not open") };
    assert!(error.to_string().contains("not a regular file"), "{error}");
    let dangling = dir.path().join("dangling.db");
    std::os::unix::fs::symlink(dir.path().join("nothere"), &dangling).unwrap();
    let Err(error) = Store::sqlite(Some(&dangling), "default") else { panic!("a dangling link must not open") };
    assert!(error.to_string().contains("a link to nothing"), "{error}");
    assert!(!dir.path().join("nothere").exists());
}
