//! Key-value get and set latency, through `dormouse_kv::Store` (what a
//! guest's call costs below the wasm boundary) and, as the baseline in the same
//! run, the same operation made directly with the client library on the
//! calling thread: rusqlite on the same kind of file (WAL, synchronous = FULL),
//! and the redis crate on one multiplexed connection to the same server.
//!
//! Needs `redis-server` (Debian's) on PATH; it is started on a free loopback
//! port. `cargo bench -p dormouse-kv --bench kv`; bench/run.py runs it as the
//! `kv` scenario.

use criterion::{Criterion, criterion_group, criterion_main};
use dormouse_kv::Store;
use dormouse_testkit::RedisServer;

const VALUE: &[u8] = &[b'v'; 100];

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);

    let sqlite = Store::sqlite(Some(&dir.path().join("store.db")), "default").unwrap();
    let redis_store = runtime.block_on(async { Store::redis(&url) }).unwrap();
    for store in [&sqlite, &redis_store] {
        runtime.block_on(store.set("key", VALUE.to_vec())).unwrap();
    }

    let mut group = c.benchmark_group("kv");
    group.bench_function("sqlite/get", |b| b.to_async(&runtime).iter(|| sqlite.get("key")));
    group.bench_function("sqlite/set", |b| b.to_async(&runtime).iter(|| sqlite.set("key", VALUE.to_vec())));
    group.bench_function("redis/get", |b| b.to_async(&runtime).iter(|| redis_store.get("key")));
    group.bench_function("redis/set", |b| b.to_async(&runtime).iter(|| redis_store.set("key", VALUE.to_vec())));

    // Baselines: the libraries themselves, no pool, no blocking-pool hop.
    let direct = rusqlite::Connection::open(dir.path().join("direct.db")).unwrap();
    direct.pragma_update(None, "journal_mode", "WAL").unwrap();
    direct.pragma_update(None, "synchronous", "FULL").unwrap();
    direct.execute_batch("CREATE TABLE kv (store TEXT, key TEXT, value BLOB, PRIMARY KEY (store, key))").unwrap();
    direct.execute("INSERT INTO kv VALUES ('default', 'key', ?1)", [VALUE]).unwrap();
    group.bench_function("sqlite-direct/get", |b| {
        b.iter(|| {
            direct
                .prepare_cached("SELECT value FROM kv WHERE store = 'default' AND key = 'key'")
                .unwrap()
                .query_row([], |row| row.get::<_, Vec<u8>>(0))
                .unwrap()
        })
    });
    group.bench_function("sqlite-direct/set", |b| {
        b.iter(|| {
            direct
                .prepare_cached(
                    "INSERT INTO kv VALUES ('default', 'key', ?1) ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                )
                .unwrap()
                .execute([VALUE])
                .unwrap()
        })
    });
    let client = redis::Client::open(url.as_str()).unwrap();
    let connection = runtime.block_on(client.get_multiplexed_async_connection()).unwrap();
    group.bench_function("redis-direct/get", |b| {
        b.to_async(&runtime).iter(|| {
            let mut connection = connection.clone();
            async move { redis::AsyncCommands::get::<_, Vec<u8>>(&mut connection, "key").await.unwrap() }
        })
    });
    group.bench_function("redis-direct/set", |b| {
        b.to_async(&runtime).iter(|| {
            let mut connection = connection.clone();
            async move { redis::AsyncCommands::set::<_, _, ()>(&mut connection, "key", VALUE).await.unwrap() }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
