//! Key-value stores, through the `kv` guest, which speaks every interface:
//! `draft` (wasi:keyvalue@0.2.0-draft), `draft2` (@0.2.0-draft2) and `spin`
//! (fermyon:spin/key-value@2.0.0).

use std::time::Duration;

use hyper::StatusCode;

use dormouse_testkit::RedisServer;

use crate::support::{App, call, get, guest};

fn kv_app(stores: &str) -> App {
    App::from_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"kv\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"kv\"\n\
         [component.kv]\nsource = \"{}\"\nkey_value_stores = [{stores}]\n",
        guest("kv").display()
    ))
}

fn lines(body: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = body.lines().collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn every_interface_shares_the_default_store_and_it_survives_a_restart() {
    let app = kv_app("\"default\"");
    let server = app.start(&[]);
    let url = |path: &str| server.url(path);

    assert_eq!(get(&url("/spin/greeting")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(call("PUT", &url("/draft/greeting"), "hello").await.status, StatusCode::OK);
    for api in ["draft", "draft2", "spin"] {
        let reply = get(&url(&format!("/{api}/greeting"))).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "hello"), "{api}");
        assert_eq!(get(&url(&format!("/{api}/greeting?exists=1"))).await.body, "true\n", "{api}");
        assert_eq!(get(&url(&format!("/{api}/nothing?exists=1"))).await.body, "false\n", "{api}");
    }
    call("PUT", &url("/spin/second"), "2").await;
    for api in ["draft", "draft2", "spin"] {
        assert_eq!(lines(&get(&url(&format!("/{api}"))).await.body), ["greeting", "second"], "{api}");
    }
    assert_eq!(call("DELETE", &url("/draft2/second"), "").await.status, StatusCode::OK);
    assert_eq!(get(&url("/spin/second")).await.status, StatusCode::NOT_FOUND);

    // Atomics and batches.
    assert_eq!(call("POST", &url("/draft/visits?incr=3"), "").await.body, "3\n");
    assert_eq!(call("POST", &url("/draft2/visits?incr=4"), "").await.body, "7\n");
    assert_eq!(get(&url("/spin/visits")).await.body, "7", "counters are decimal text, readable by `get`");
    assert_eq!(call("PUT", &url("/draft?many=1"), "a=1\nb=2\n").await.status, StatusCode::OK);
    assert_eq!(get(&url("/draft2?many=a,missing,b")).await.body, "a=1\nmissing\nb=2\n");
    assert_eq!(get(&url("/draft?many=b,a")).await.body, "b=2\na=1\n");
    call("DELETE", &url("/draft2?many=a,b"), "").await;
    assert_eq!(get(&url("/draft?many=a,b")).await.body, "a\nb\n");
    let swapped = call("POST", &url("/draft2/greeting"), "hello again").await;
    assert_eq!((swapped.status, swapped.body.as_str()), (StatusCode::OK, "swapped\n"));

    // Stop, start again: what was acknowledged is still there.
    server.signal("TERM");
    assert!(server.wait().success());
    assert!(app.path().join(".dormouse/sqlite_key_value.db").exists());
    let server = app.start(&[]);
    let reply = get(&server.url("/spin/greeting")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "hello again"));
    assert_eq!(get(&server.url("/draft/visits")).await.body, "7");
}

#[tokio::test]
async fn a_compare_and_swap_fails_when_the_value_changed_meanwhile() {
    let app = kv_app("\"default\"");
    let server = app.start(&[]);
    call("PUT", &server.url("/draft2/doc"), "v1").await;
    // The swap reads v1, waits 500 ms, then swaps; meanwhile another write.
    let swap_url = server.url("/draft2/doc?pause_ms=500");
    let swap = tokio::spawn(async move { call("POST", &swap_url, "mine").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(call("PUT", &server.url("/draft/doc"), "theirs").await.status, StatusCode::OK);
    let swap = swap.await.unwrap();
    assert_eq!((swap.status, swap.body.as_str()), (StatusCode::CONFLICT, "conflict\n"));
    assert_eq!(get(&server.url("/spin/doc")).await.body, "theirs");
}

#[tokio::test]
async fn only_granted_stores_open() {
    let app = kv_app("");
    let server = app.start(&[]);
    for api in ["draft", "draft2", "spin"] {
        let reply = get(&server.url(&format!("/{api}/k"))).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "error: access-denied\n"));
    }
    drop(server);

    let app = kv_app("\"default\"");
    let server = app.start(&[]);
    let reply = get(&server.url("/spin/k?store=other")).await;
    assert_eq!(reply.body, "error: access-denied\n");
    // `wasmtime serve`'s only store is "": here it is the default store.
    call("PUT", &server.url("/draft/k"), "v").await;
    assert_eq!(get(&server.url("/draft/k?store=")).await.body, "v");
}

#[tokio::test]
async fn keys_and_values_over_the_limits_are_refused_with_the_reason() {
    let app = kv_app("\"default\"");
    let server = app.start(&[]);
    let long_key = "k".repeat(257);
    let reply = call("PUT", &server.url(&format!("/spin/{long_key}")), "v").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body, "error: other: key is 257 bytes long: keys are limited to 256 bytes\n");
    assert_eq!(call("PUT", &server.url(&format!("/spin/{}", "k".repeat(256))), "v").await.status, StatusCode::OK);

    let reply = call("PUT", &server.url("/draft2/big"), vec![b'x'; (1 << 20) + 1]).await;
    assert_eq!(reply.body, "error: other: value is 1048577 bytes long: values are limited to 1048576 bytes (1 MiB)\n");
    assert_eq!(call("PUT", &server.url("/draft2/big"), vec![b'x'; 1 << 20]).await.status, StatusCode::OK);
    assert_eq!(get(&server.url("/draft2/big")).await.body.len(), 1 << 20);
}

#[tokio::test]
async fn stores_from_a_runtime_config_file_sqlite_and_a_real_redis() {
    let redis = RedisServer::start();
    let app = kv_app("\"default\", \"files\"");
    let config = app.write(
        "runtime-config.toml",
        &format!(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n\n\
             [key_value_store.files]\ntype = \"spin\"\npath = \"data/files.db\"\n",
            redis.url()
        ),
    );
    let config = config.to_str().unwrap();
    let server = app.start(&["--runtime-config-file", config]);
    server.wait_for_log(&format!("key-value store `default`: Redis `{}`", redis.url()));

    assert_eq!(call("PUT", &server.url("/spin/colour"), "blue").await.status, StatusCode::OK);
    assert_eq!(call("POST", &server.url("/draft2/hits?incr=2"), "").await.body, "2\n");
    assert_eq!(call("PUT", &server.url("/draft/colour?store=files"), "green").await.status, StatusCode::OK);
    // The data is where the runtime config says, read back without dormouse.
    let direct = dormouse_kv::Store::redis(&redis.url()).unwrap();
    assert_eq!(direct.get("colour").await.unwrap().as_deref(), Some(&b"blue"[..]));
    assert_eq!(direct.get("hits").await.unwrap().as_deref(), Some(&b"2"[..]));
    let file = app.path().join("data/files.db");
    let sqlite = dormouse_kv::Store::sqlite(Some(&file), "files").unwrap();
    assert_eq!(sqlite.get("colour").await.unwrap().as_deref(), Some(&b"green"[..]));
    assert!(!app.path().join(".dormouse/sqlite_key_value.db").exists(), "the default store moved to Redis");

    // Redis going away fails the call with the reason; the server keeps serving.
    drop(redis);
    let reply = get(&server.url("/spin/colour")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.starts_with("error: other: redis: "), "{}", reply.body);
    assert_eq!(get(&server.url("/draft/colour?store=files")).await.body, "green");
}

#[test]
fn an_undefined_store_or_a_bad_runtime_config_stops_start_up() {
    let app = kv_app("\"cache\"");
    let stderr = app.fails_to_start(&[]);
    assert!(
        stderr.contains(
            "component `kv` cannot open its key-value store `cache`: no store is defined under that label: add `[key_value_store.cache]` to a runtime config file (--runtime-config-file)"
        ),
        "{stderr}"
    );

    let config = app.write("rc.toml", "[key_value_store.cache]\ntype = \"dynamo\"\n");
    let stderr = app.fails_to_start(&["--runtime-config-file", config.to_str().unwrap()]);
    assert!(stderr.contains("rc.toml:2:8: key-value store type `dynamo` (store `cache`) is not supported"), "{stderr}");
}
