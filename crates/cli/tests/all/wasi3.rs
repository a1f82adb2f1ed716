//! Components built for wasi:http 0.3 (`wasi:http/handler@0.3.0`), beside 0.2
//! ones in the same app: served, stopped when they trap or spin, and held to
//! the same outbound rules.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::{App, PATIENCE, Upstream, assert_stopped_by_the_cpu_deadline, call, get, get_with, guest, send};

#[tokio::test]
async fn a_wasi_0_3_component_is_served_beside_0_2_ones() {
    let app = App::new(&[("/p3", "hello-p3"), ("/p2", "hello")]);
    let server = app.start(&[]);
    for _ in 0..3 {
        let reply = get(&server.url("/p3")).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "Hello from a WASI 0.3 component!\n"));
        let reply = get(&server.url("/p2")).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "Hello from dormouse!\n"));
    }
}

#[tokio::test]
async fn a_wasi_0_3_guest_that_traps_or_spins_fails_only_its_own_request() {
    let app = App::new(&[("/trap", "trap-p3"), ("/loop", "loop-p3"), ("/hello", "hello-p3")]);
    let server = app.start(&["--cpu-limit", "200ms", "--timeout", "50s"]);

    let reply = get(&server.url("/trap")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reply.body.contains("component `trap-p3` failed"), "{}", reply.body);
    server.wait_for_log("guest trapped");

    // Once its head is out, a trap aborts the response rather than ending it:
    // the client sees a broken response (or body), never a complete one.
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(server.url("/trap")).header("x-trap", "mid-body").body(Full::new(Bytes::new())).unwrap();
    if let Ok(response) = tokio::time::timeout(PATIENCE, client.request(request)).await.unwrap() {
        assert_eq!(response.status(), StatusCode::OK);
        let body = tokio::time::timeout(PATIENCE, response.into_body().collect()).await.unwrap();
        assert!(body.is_err(), "a truncated body must not look complete");
    }

    // The epoch ticker reaches the 0.3 engine too.
    assert_stopped_by_the_cpu_deadline(&server, "/loop").await;

    assert_eq!(get(&server.url("/hello")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn wasi_0_3_outbound_requests_go_only_where_the_manifest_allows() {
    let allowed = Upstream::start().await;
    let forbidden = Upstream::start().await;
    let app = App::from_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"out\"\n\
         [[trigger.http]]\nroute = \"/fetch\"\ncomponent = \"fetch\"\n\
         [component.fetch]\nsource = \"{}\"\nallowed_outbound_hosts = [\"http://127.0.0.1:{}\"]\n",
        guest("fetch-p3").display(),
        allowed.addr.port()
    ));
    let server = app.start(&[]);

    let reply = get_with(&server.url("/fetch"), &[("x-fetch-url", &allowed.url("/hello"))]).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "200\n"));
    assert_eq!(allowed.connections(), 1);

    let reply = get_with(&server.url("/fetch"), &[("x-fetch-url", &forbidden.url("/hello"))]).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::BAD_GATEWAY, "error: HTTP-request-denied\n"));
    assert_eq!(forbidden.connections(), 0, "a denied request opens no connection");
}

/// Spin's `spin:key-value@3.0.0` and `spin:variables@3.0.0`, from the `kv-p3`
/// guest, over the same store as the 0.2 `kv` guest's `fermyon:spin` calls.
#[tokio::test]
async fn spin_3_key_value_and_variables_serve_wasi_0_3_components() {
    let app = App::from_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"kv3\"\n\
         [variables]\ngreeting = {{ default = \"hi\" }}\n\
         [[trigger.http]]\nroute = \"/kv/...\"\ncomponent = \"kv3\"\n\
         [[trigger.http]]\nroute = \"/var/...\"\ncomponent = \"kv3\"\n\
         [[trigger.http]]\nroute = \"/spin/...\"\ncomponent = \"kv2\"\n\
         [component.kv3]\nsource = \"{}\"\nkey_value_stores = [\"default\"]\n\
         [component.kv3.variables]\ngreeting = \"{{{{ greeting }}}} there\"\n\
         [component.kv2]\nsource = \"{}\"\nkey_value_stores = [\"default\"]\n",
        guest("kv-p3").display(),
        guest("kv").display()
    ));
    let server = app.start(&[]);
    let put = |key: &str, value: &str| {
        let request = Request::put(server.url(&format!("/kv/{key}"))).header("x-value", value);
        send(request.body(Full::new(Bytes::new())).unwrap())
    };

    assert_eq!(put("a", "one").await.body, "ok\n");
    assert_eq!(get(&server.url("/kv/a")).await.body, "one");
    assert_eq!(get(&server.url("/kv/nothing")).await.status, StatusCode::NOT_FOUND);
    // One store, whichever interface wrote to it.
    assert_eq!(get(&server.url("/spin/a")).await.body, "one");
    assert_eq!(call("PUT", &server.url("/spin/b"), "two").await.status, StatusCode::OK);
    assert_eq!(get(&server.url("/kv/b")).await.body, "two");
    // The keys come through the get-keys stream.
    assert_eq!(get(&server.url("/kv")).await.body, "a\nb\n");
    assert_eq!(call("DELETE", &server.url("/kv/a"), "").await.body, "deleted\n");
    assert_eq!(get(&server.url("/kv")).await.body, "b\n");

    // A store the component was not granted.
    let reply = get_with(&server.url("/kv/b"), &[("x-store", "other")]).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::FORBIDDEN, "error: access-denied\n"));

    let reply = get(&server.url("/var/greeting")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "hi there\n"));
    let reply = get(&server.url("/var/nope")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body, "undefined: component `kv3` has no variable `nope`\n");
    assert_eq!(get(&server.url("/var/Bad")).await.status, StatusCode::BAD_REQUEST);
}
