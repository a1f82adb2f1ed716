//! The admin listener: metrics scraped after known traffic and read with a
//! Prometheus text parser, health and readiness that never touch an app,
//! and (in `prometheus.rs`) Debian's Prometheus server scraping it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use prometheus_parse::{Scrape, Value};

use crate::daemon::ok;
use crate::services::{python_app, status};
use crate::support::{App, PATIENCE, Server, call, get, get_with, guest, raw};

/// A scrape of `/metrics`, parsed: a fresh one, past the quarter second an
/// exposition is reused for.
pub async fn scrape(admin: SocketAddr) -> Scrape {
    tokio::time::sleep(Duration::from_millis(260)).await;
    let reply = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.ends_with("# EOF\n"), "not an OpenMetrics exposition: {}", reply.body);
    Scrape::parse(reply.body.lines().map(|line| Ok(line.to_owned()))).unwrap()
}

/// The value of the sample `name` whose labels include `labels`; 0 when
/// there is none (a series appears once it is counted).
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| labels.iter().all(|(key, wanted)| sample.labels.get(key).unwrap_or("") == *wanted))
        .map(|sample| match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{name} is not a single value: {other:?}"),
        })
        .collect();
    assert!(matching.len() <= 1, "{name}{labels:?} matches {} series", matching.len());
    matching.first().copied().unwrap_or(0.0)
}

/// Waits until `/readyz` says ready, as a readiness probe would: the banner
/// comes a moment before the accept loop starts.
pub async fn wait_ready(admin: SocketAddr) {
    let started = Instant::now();
    while get(&format!("http://{admin}/readyz")).await.status != StatusCode::OK {
        assert!(started.elapsed() < PATIENCE, "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many observations the histogram `name` with `labels` holds.
fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, &format!("{name}_count"), labels)
}

/// The app `counted`: one route per fixture, the key-value one with the
/// default store.
fn everything_app() -> App {
    let mut manifest = String::from("spin_manifest_version = 2\n[application]\nname = \"counted\"\n");
    let routes = [
        ("/hello", "hello"),
        ("/trap", "trap"),
        ("/loop", "loop"),
        ("/hog", "hog"),
        ("/slow", "slow"),
        ("/spin/...", "kv"),
        ("/fetch", "fetch"),
    ];
    for (route, component) in routes {
        manifest.push_str(&format!("[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"{component}\"\n"));
        manifest.push_str(&format!("[component.{component}]\nsource = \"{}\"\n", guest(component).display()));
        if component == "kv" {
            manifest.push_str("key_value_stores = [\"default\"]\n");
        }
    }
    App::from_manifest(&manifest)
}

#[tokio::test]
async fn metrics_count_known_traffic_by_app_target_status_and_outcome() {
    let app = everything_app();
    let server = app.start(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--cpu-limit",
        "100ms",
        "--memory-limit",
        "16MiB",
        "--max-body",
        "1KiB",
    ]);
    let admin = server.admin.expect("the banner names the admin listener");
    let before = scrape(admin).await;
    assert_eq!(value(&before, "dormouse_apps", &[]), 1.0);
    assert_eq!(value(&before, "dormouse_instances", &[("target", "hello"), ("state", "standby")]), 1.0);

    for _ in 0..3 {
        assert_eq!(get(&server.url("/hello")).await.status, StatusCode::OK);
    }
    assert_eq!(call("POST", &server.url("/hello"), vec![b'x'; 4096]).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(get(&server.url("/trap")).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(&server.url("/loop")).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(&server.url("/hog?trap=1")).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(get(&server.url("/hog")).await.status, StatusCode::OK);
    assert_eq!(call("PUT", &server.url("/spin/a"), "1").await.status, StatusCode::OK);
    assert_eq!(get(&server.url("/spin/a")).await.status, StatusCode::OK);
    assert_eq!(get(&server.url("/spin/missing")).await.status, StatusCode::NOT_FOUND);
    let fetched = get_with(&server.url("/fetch"), &[("x-fetch-url", "http://127.0.0.1:9/")]).await;
    assert!(fetched.body.contains("HTTP-request-denied"), "{}", fetched.body);
    assert_eq!(get(&server.url("/nowhere")).await.status, StatusCode::NOT_FOUND);
    // A HEAD needs no body: the streaming guest is stopped.
    assert_eq!(call("HEAD", &server.url("/slow?chunks=5&ms=200"), "").await.status, StatusCode::OK);
    let huge = raw(
        server.addr,
        format!("GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(40_000))
            .as_bytes(),
    );
    assert!(huge.starts_with("HTTP/1.1 431"), "{huge}");
    // Health answers on the public listener are not app traffic either.
    assert_eq!(get(&server.url("/.well-known/spin/health")).await.status, StatusCode::OK);

    let after = scrape(admin).await;
    let requests = |target: &str, status: &str| {
        value(&after, "http_requests_total", &[("app", "counted"), ("target", target), ("status", status)])
    };
    assert_eq!(requests("hello", "200"), 3.0);
    assert_eq!(requests("hello", "413"), 1.0, "a refused request counts for the component it was for");
    assert_eq!(requests("hello", "431"), 1.0);
    assert_eq!(requests("trap", "500"), 1.0);
    assert_eq!(requests("loop", "500"), 1.0);
    assert_eq!(requests("hog", "500") + requests("hog", "200"), 2.0);
    assert_eq!(requests("kv", "200"), 2.0);
    assert_eq!(requests("kv", "404"), 1.0);
    assert_eq!(requests("", "404"), 1.0, "a path no route takes counts for the app");
    let total: f64 = after
        .samples
        .iter()
        .filter(|s| s.metric == "http_requests_total")
        .map(|s| match s.value {
            Value::Counter(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(total, 15.0, "every request once, health checks and scrapes never");
    assert_eq!(histogram_count(&after, "http_request_duration_seconds", &[("target", "hello")]), 5.0);

    let rejections =
        |reason: &str| value(&after, "dormouse_rejections_total", &[("target", "hello"), ("reason", reason)]);
    assert_eq!(rejections("body_limit"), 1.0);
    assert_eq!(rejections("header_limit"), 1.0);
    assert_eq!(
        value(&after, "dormouse_instantiations_total", &[("target", "hello")]),
        3.0,
        "refused before any instance"
    );
    let outcome = |target: &str, outcome: &str| {
        value(&after, "dormouse_guest_outcomes_total", &[("target", target), ("outcome", outcome)])
    };
    assert_eq!(outcome("hello", "ok"), 3.0);
    assert_eq!(outcome("trap", "trap"), 1.0);
    assert_eq!(outcome("loop", "cpu_limit"), 1.0);
    assert_eq!(outcome("hog", "memory_limit"), 1.0);
    assert_eq!(outcome("hog", "ok"), 1.0, "running out of memory and coping is fine");
    assert_eq!(outcome("slow", "cancelled"), 1.0, "a guest nobody reads is stopped");
    let kv = |operation: &str| {
        value(
            &after,
            "dormouse_kv_operations_total",
            &[("app", "counted"), ("store", "default"), ("backend", "sqlite"), ("operation", operation)],
        )
    };
    assert_eq!(kv("set"), 1.0);
    assert_eq!(kv("get"), 2.0);
    assert_eq!(value(&after, "dormouse_kv_errors_total", &[("operation", "get")]), 0.0, "a missing key is no error");
    assert_eq!(value(&after, "dormouse_outbound_requests_total", &[("target", "fetch"), ("outcome", "denied")]), 1.0);
    assert_eq!(gauge(&after, "dormouse_instances", &[("target", "hello"), ("state", "running")]), 0.0);
    assert_eq!(gauge(&after, "dormouse_active_instances", &[]), 0.0);

    // No label takes a value from a request: no path, no host, no header.
    tokio::time::sleep(Duration::from_millis(260)).await;
    let text = get(&format!("http://{admin}/metrics")).await.body;
    for leaked in ["nowhere", "/hello", "spin/a", "127.0.0.1:9"] {
        assert!(!text.contains(leaked), "`{leaked}` leaked into a label: {text}");
    }
}

#[tokio::test]
async fn health_and_metrics_never_wake_a_service_or_keep_it_awake() {
    let app = python_app("ok", "scale_to_zero = { cooldown = \"300ms\", standby = \"stop\" }");
    let server = app.start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    wait_ready(admin).await;
    let probe = |path: &str| format!("http://{admin}{path}");
    let probe_for = |span: Duration| async move {
        let until = Instant::now() + span;
        while Instant::now() < until {
            for path in ["/metrics", "/healthz", "/readyz"] {
                assert_eq!(get(&probe(path)).await.status, StatusCode::OK, "{path}");
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    };
    probe_for(Duration::from_millis(1500)).await;
    let asleep = status(&server).await;
    assert_eq!(asleep["starts"], 0, "probes started the service: {asleep:#}");
    let metrics = scrape(admin).await;
    assert_eq!(value(&metrics, "dormouse_instances", &[("target", "py"), ("state", "standby")]), 1.0);
    assert_eq!(value(&metrics, "dormouse_wakes_total", &[("target", "py"), ("cause", "cold_start")]), 0.0);

    // One request wakes it; probes every 30 ms do not keep it past its cooldown.
    assert_eq!(get(&server.url("/")).await.status, StatusCode::OK);
    let woken = scrape(admin).await;
    assert_eq!(value(&woken, "dormouse_wakes_total", &[("target", "py"), ("cause", "cold_start")]), 1.0);
    assert_eq!(histogram_count(&woken, "dormouse_wake_duration_seconds", &[("cause", "cold_start")]), 1.0);
    assert_eq!(value(&woken, "dormouse_instances", &[("target", "py"), ("state", "running")]), 1.0);
    let started = Instant::now();
    loop {
        probe_for(Duration::from_millis(200)).await;
        if status(&server).await["state"] == "standby" {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "probes kept the service awake: {:#}", status(&server).await);
    }
    let slept = scrape(admin).await;
    assert_eq!(value(&slept, "dormouse_instances", &[("target", "py"), ("state", "standby")]), 1.0);
    assert_eq!(gauge(&slept, "dormouse_instances", &[("target", "py"), ("state", "running")]), 0.0);
    assert_eq!(status(&server).await["starts"], 1);
    assert_eq!(value(&slept, "http_requests_total", &[("app", "svc"), ("target", "py"), ("status", "200")]), 1.0);
}

#[tokio::test]
async fn readyz_turns_503_while_draining_and_healthz_stays_200() {
    let app = App::new(&[("/slow", "slow")]);
    let server = app.start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    wait_ready(admin).await;
    // A request in flight (its head answered, its body streaming for 2 s)
    // before the signal.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /slow?chunks=10&ms=200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut received = vec![0u8; 1024];
    let first = slow.read(&mut received).await.unwrap();
    assert!(received[..first].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&received[..first]));
    server.signal("TERM");
    let started = Instant::now();
    let ready = loop {
        let ready = get(&format!("http://{admin}/readyz")).await;
        if ready.status != StatusCode::OK || started.elapsed() > PATIENCE {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.body);
    assert!(ready.body.contains("not accepting"), "{}", ready.body);
    assert_eq!(get(&format!("http://{admin}/healthz")).await.status, StatusCode::OK);
    let mut rest = Vec::new();
    slow.read_to_end(&mut rest).await.unwrap();
    let rest = String::from_utf8_lossy(&rest);
    // Every chunk the guest wrote, to the last one and the end of the body.
    assert!(rest.contains("\r\n10\r\n") && rest.ends_with("0\r\n\r\n"), "the request in flight finishes: {rest:?}");
    assert!(server.wait().success());
}

#[tokio::test]
async fn a_redeployed_app_keeps_counting_and_a_removed_one_leaves_the_exposition() {
    let state = tempfile::tempdir().unwrap();
    let server = Server::daemon(state.path(), &[]);
    let admin = server.admin.expect("the daemon serves the admin listener by default");
    let hello_wasm = guest("hello");
    let deploy = |name: &str| ok(state.path(), &["deploy", "--name", name, hello_wasm.to_str().unwrap()]);
    let hello = |name: &str| {
        let url = format!("http://{}/", server.addr);
        let host = format!("{name}.localhost");
        async move { get_with(&url, &[("host", &host)]).await }
    };
    deploy("counted");
    assert_eq!(hello("counted").await.status, StatusCode::OK);
    assert_eq!(hello("counted").await.status, StatusCode::OK);
    deploy("counted");
    assert_eq!(hello("counted").await.status, StatusCode::OK);
    let metrics = scrape(admin).await;
    let served =
        value(&metrics, "http_requests_total", &[("app", "counted"), ("target", "counted"), ("status", "200")]);
    assert_eq!(served, 3.0, "a new version counts on from the old one's count");
    assert_eq!(value(&metrics, "dormouse_apps", &[]), 1.0);
    assert_eq!(hello("unknown").await.status, StatusCode::NOT_FOUND);
    // The daemon's apps own every path: no report of their services on it.
    let url = format!("http://{}/.well-known/dormouse/services", server.addr);
    let report = get_with(&url, &[("host", "counted.localhost")]).await;
    assert!(report.body.starts_with("Hello"), "{}", report.body);

    ok(state.path(), &["rm", "counted"]);
    tokio::time::sleep(Duration::from_millis(260)).await;
    let text = get(&format!("http://{admin}/metrics")).await.body;
    assert!(!text.contains("app=\"counted\""), "a removed app's series stay: {text}");
    assert!(!text.contains("unknown"), "a host that names no app became a label: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_version_still_counts_and_requests_held_by_a_quota_are_queued() {
    let state = tempfile::tempdir().unwrap();
    let server = Server::daemon(state.path(), &["--max-active-instances", "1"]);
    let admin = server.admin.unwrap();
    let slow = guest("slow");
    ok(state.path(), &["deploy", "--name", "sl", slow.to_str().unwrap()]);
    // Streams for 20 s, longer than the test runs: it is dropped below.
    let url = format!("http://{}/?chunks=100&ms=200", server.addr);
    let get_sl = |url: String| async move { get_with(&url, &[("host", "sl.localhost")]).await };
    let draining = tokio::spawn(get_sl(url.clone()));
    let running = [("app", "sl"), ("target", "sl"), ("state", "running")];
    wait_for_metrics(admin, "the old version running", |m| gauge(m, "dormouse_instances", &running) == 1.0).await;
    // The new version has another component id: the old one's series go,
    // its instance (still streaming) does not.
    let renamed = crate::daemon::component_app("slow");
    ok(state.path(), &["deploy", "--name", "sl", renamed.path().to_str().unwrap()]);
    let metrics = scrape(admin).await;
    assert_eq!(gauge(&metrics, "dormouse_instances", &running), 1.0, "the draining instance counts");
    assert_eq!(gauge(&metrics, "dormouse_active_instances", &[]), 1.0);
    assert!(
        !metrics
            .samples
            .iter()
            .any(|s| s.metric == "dormouse_instantiations_total" && s.labels.get("target") == Some("sl"))
    );
    let new = [("app", "sl"), ("target", "app"), ("state", "standby")];
    assert_eq!(gauge(&metrics, "dormouse_instances", &new), 1.0);

    // The only active instance is the draining one: a request to the new
    // version waits under the quota, and shows as queued.
    let waiting = tokio::spawn(get_sl(url.replace("chunks=100", "chunks=1")));
    let queued = [("app", "sl"), ("target", "app")];
    wait_for_metrics(admin, "queued", |m| gauge(m, "dormouse_queue_depth", &queued) == 1.0).await;
    // The draining request's client leaves: its instance goes, the quota
    // frees, and the waiting request is served.
    draining.abort();
    assert_eq!(waiting.await.unwrap().status, StatusCode::OK);
    wait_for_metrics(admin, "nothing active", |m| gauge(m, "dormouse_active_instances", &[]) == 0.0).await;
    let metrics = scrape(admin).await;
    assert_eq!(gauge(&metrics, "dormouse_queue_depth", &queued), 0.0);
    assert_eq!(value(&metrics, "http_requests_total", &[("app", "sl"), ("target", "app"), ("status", "200")]), 1.0);
}

/// Scrapes until `check` holds, or fails after `PATIENCE`.
async fn wait_for_metrics(admin: SocketAddr, what: &str, check: impl Fn(&Scrape) -> bool) {
    let started = Instant::now();
    while !check(&scrape(admin).await) {
        assert!(started.elapsed() < PATIENCE, "never {what}");
    }
}

/// A gauge's value, which must be in the exposition (gauges always are).
fn gauge(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let present = scrape.samples.iter().any(|sample| {
        sample.metric == name && labels.iter().all(|(key, wanted)| sample.labels.get(key).unwrap_or("") == *wanted)
    });
    assert!(present, "no {name}{labels:?} in the exposition");
    value(scrape, name, labels)
}

#[tokio::test]
async fn json_logs_stay_json_with_guests_writing_and_a_line_per_request_at_debug() {
    let app = App::new(&[("/log", "log")]);
    let server = app.start_with_env(&["--log-format", "json"], &[("RUST_LOG", "info,dormouse_gateway=debug")]);
    assert_eq!(get(&server.url("/log")).await.status, StatusCode::OK);
    let log = server.wait_for_log("\"answered\"");
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line:?} in {log}")))
        .collect();
    let answered = events.iter().find(|event| event["message"] == "answered").unwrap();
    assert_eq!(answered["span"]["app"], "test-app");
    assert_eq!(answered["span"]["route"], "/log");
    assert_eq!(answered["span"]["target"], "log");
    assert_eq!(answered["span"]["start"], "warm");
    assert_eq!(answered["span"]["status"], 200);
    let guest_lines: Vec<&serde_json::Value> = events.iter().filter(|event| event["component"] == "log").collect();
    assert!(guest_lines.iter().any(|event| event["stream"] == "stdout"), "{log}");
    assert!(guest_lines.iter().any(|event| event["stream"] == "stderr"), "{log}");
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_counts_as_499() {
    let app = python_app("ok", "");
    let server = app.start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut client = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        client.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let started = Instant::now();
    loop {
        let metrics = scrape(admin).await;
        if value(&metrics, "http_requests_total", &[("target", "py"), ("status", "499")]) == 1.0 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the request that was left never counted");
    }
}
