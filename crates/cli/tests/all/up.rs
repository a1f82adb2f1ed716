//! `dormouse up` serving real components.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::{
    App, PATIENCE, Reply, Server, assert_stopped_by_the_cpu_deadline, dormouse, get, get_owned, send,
};

#[tokio::test]
async fn routes_follow_spin_precedence_and_set_every_spin_header() {
    let app = App::new(&[
        ("/...", "echo"),
        ("/exact", "echo"),
        ("/wild/...", "echo"),
        ("/wild/deeper/...", "echo"),
        ("/users/:id/posts/:post", "echo"),
    ]);
    let server = app.start(&[]);

    let reply = get(&server.url("/wild/deeper/a/b?x=1")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.starts_with("GET /wild/deeper/a/b?x=1\n"), "{}", reply.body);
    assert_eq!(reply.echoed("spin-matched-route").as_deref(), Some("/wild/deeper/..."));
    assert_eq!(reply.echoed("spin-raw-component-route").as_deref(), Some("/wild/deeper/..."));
    assert_eq!(reply.echoed("spin-component-route").as_deref(), Some("/wild/deeper"));
    assert_eq!(reply.echoed("spin-path-info").as_deref(), Some("/a/b"));
    assert_eq!(reply.echoed("spin-base-path").as_deref(), Some("/"));
    let full_url = format!("http://{}/wild/deeper/a/b?x=1", server.addr);
    assert_eq!(reply.echoed("spin-full-url"), Some(full_url));
    let client_addr = reply.echoed("spin-client-addr").unwrap();
    assert!(client_addr.starts_with("127.0.0.1:"), "{client_addr}");

    let reply = get(&server.url("/wild/x")).await;
    assert_eq!(reply.echoed("spin-matched-route").as_deref(), Some("/wild/..."));
    assert_eq!(reply.echoed("spin-path-info").as_deref(), Some("/x"));

    let reply = get(&server.url("/exact")).await;
    assert_eq!(reply.echoed("spin-matched-route").as_deref(), Some("/exact"));
    assert_eq!(reply.echoed("spin-path-info").as_deref(), Some(""));

    let reply = get(&server.url("/exact/more")).await;
    assert_eq!(reply.echoed("spin-matched-route").as_deref(), Some("/..."), "an exact route matches only itself");
    assert_eq!(reply.echoed("spin-path-info").as_deref(), Some("/exact/more"));

    let reply = get(&server.url("/users/42/posts/7")).await;
    assert_eq!(reply.echoed("spin-matched-route").as_deref(), Some("/users/:id/posts/:post"));
    assert_eq!(reply.echoed("spin-path-match-id").as_deref(), Some("42"));
    assert_eq!(reply.echoed("spin-path-match-post").as_deref(), Some("7"));
}

#[tokio::test]
async fn client_cannot_spoof_spin_headers() {
    let app = App::new(&[("/...", "echo")]);
    let server = app.start(&[]);
    let request = Request::get(server.url("/a"))
        .header("spin-client-addr", "6.6.6.6:6")
        .header("spin-path-match-admin", "yes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(request).await;
    assert!(reply.echoed("spin-client-addr").unwrap().starts_with("127.0.0.1:"));
    assert_eq!(reply.echoed("spin-path-match-admin"), None);
}

#[tokio::test]
async fn unrouted_paths_get_an_empty_404_and_health_answers() {
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&[]);

    let reply = get(&server.url("/hello")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "Hello from dormouse!\n"));

    let reply = get(&server.url("/nothing/here")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::NOT_FOUND, ""));

    let reply = get(&server.url("/.well-known/spin/health")).await;
    assert_eq!(reply.status, StatusCode::OK);

    let banner = server.stdout();
    assert!(banner.contains(&format!("hello: http://{}/hello", server.addr)), "{banner}");
}

#[tokio::test]
async fn a_trap_fails_only_its_own_request() {
    let app = App::new(&[("/trap", "trap"), ("/hello", "hello")]);
    let server = app.start(&[]);
    for _ in 0..3 {
        let reply = get(&server.url("/trap")).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(reply.body.contains("component `trap` failed"), "{}", reply.body);
        let reply = get(&server.url("/hello")).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    server.wait_for_log("guest trapped");
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_by_the_cpu_deadline() {
    let app = App::new(&[("/loop", "loop"), ("/hello", "hello")]);
    let server = app.start(&["--cpu-limit", "200ms", "--timeout", "50s"]);
    assert_stopped_by_the_cpu_deadline(&server, "/loop").await;
    assert_eq!(get(&server.url("/hello")).await.status, StatusCode::OK);
}

/// Starts `loops` requests to `/loop` at once, waits `after`, then times
/// `hellos` requests to `/hello` one after another, each on a new
/// connection; returns their times and the loops' requests.
async fn hellos_beside_busy_guests(
    server: &Server,
    loops: usize,
    after: Duration,
    hellos: usize,
) -> (Vec<Duration>, Vec<tokio::task::JoinHandle<Reply>>) {
    assert_eq!(get(&server.url("/hello")).await.status, StatusCode::OK);
    let busy: Vec<_> = (0..loops).map(|_| tokio::spawn(get_owned(server.url("/loop")))).collect();
    tokio::time::sleep(after).await;
    let mut took = Vec::new();
    for _ in 0..hellos {
        let started = Instant::now();
        assert_eq!(get(&server.url("/hello")).await.status, StatusCode::OK);
        took.push(started.elapsed());
    }
    (took, busy)
}

#[tokio::test]
async fn guests_busy_on_the_cpu_do_not_hold_up_the_requests_of_their_io_thread() {
    let app = App::new(&[("/loop", "loop"), ("/hello", "hello")]);
    // One I/O thread: every connection is served on it, and every guest
    // starts there.
    let server = app.start(&["--io-threads", "1", "--cpu-limit", "1s", "--timeout", "30s"]);
    let (mut took, loops) = hellos_beside_busy_guests(&server, 6, Duration::from_millis(300), 5).await;
    // Six loops sharing the thread in 10 ms slices would hold each of a
    // request's turns for some 60 ms.
    took.sort();
    assert!(took[2] < Duration::from_millis(50), "hello took {took:?} beside six busy guests");
    for busy in loops {
        assert_eq!(busy.await.unwrap().status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}

#[tokio::test]
async fn a_burst_of_busy_guests_holds_up_the_requests_of_their_io_thread_for_a_tick_or_two() {
    let app = App::new(&[("/loop", "loop"), ("/hello", "hello")]);
    let server = app.start(&["--io-threads", "1", "--cpu-limit", "100ms", "--timeout", "30s"]);
    // Forty at once: each that started on the I/O thread would hold it for
    // a 10 ms tick before moving, some 400 ms in all.
    let (took, burst) = hellos_beside_busy_guests(&server, 40, Duration::from_millis(20), 3).await;
    assert!(
        took.iter().all(|t| *t < Duration::from_millis(200)),
        "hello took {took:?} after a burst of 40 busy guests"
    );
    for busy in burst {
        assert_eq!(busy.await.unwrap().status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}

#[tokio::test]
async fn a_signal_is_acted_on_at_once_while_guests_are_busy() {
    let app = App::new(&[("/loop", "loop")]);
    let server = app.start(&["--cpu-limit", "5s", "--timeout", "30s", "--drain-timeout", "1s"]);
    let busy: Vec<_> = (0..20).map(|_| tokio::spawn(get_owned(server.url("/loop")))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    server.signal("TERM");
    // The drain starts by closing the listener: new connections are refused.
    while tokio::net::TcpStream::connect(server.addr).await.is_ok() {
        assert!(signalled.elapsed() < Duration::from_secs(5), "still accepting 5 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let noticed = signalled.elapsed();
    assert!(
        noticed < Duration::from_millis(200),
        "the listener closed {noticed:?} after SIGTERM beside 20 busy guests"
    );
    // Past the drain timeout, the loops still running are answered 503.
    for request in busy {
        assert_eq!(request.await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let _ = server.wait();
}

#[tokio::test]
async fn the_wall_clock_limit_answers_504() {
    let app = App::new(&[("/loop", "loop")]);
    let server = app.start(&["--cpu-limit", "60s", "--timeout", "300ms"]);
    let reply = get(&server.url("/loop")).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
}

#[tokio::test]
async fn memory_growth_stops_at_the_cap_and_host_memory_stays_bounded() {
    let app = App::new(&[("/hog", "hog")]);
    let server = app.start(&["--memory-limit", "32MiB"]);
    let baseline_kib = server.memory_kib("VmRSS");

    let reply = get(&server.url("/hog")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let mib: u64 = reply.body.trim().strip_prefix("grew to ").unwrap().strip_suffix(" MiB").unwrap().parse().unwrap();
    assert!((31..=32).contains(&mib), "guest memory ended at {mib} MiB with a 32 MiB cap");

    let reply = get(&server.url("/hog?trap=1")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);

    // Eight hogs, four at a time: the host's peak is bounded by what four
    // capped guests can touch, and it gives the memory back afterwards.
    for _ in 0..2 {
        let batch: Vec<_> = (0..4).map(|_| tokio::spawn(get_owned(server.url("/hog")))).collect();
        for reply in batch {
            assert_eq!(reply.await.unwrap().status, StatusCode::OK);
        }
    }
    let peak_kib = server.memory_kib("VmHWM");
    let after_kib = server.memory_kib("VmRSS");
    assert!(peak_kib < baseline_kib + 4 * 32 * 1024 + 64 * 1024, "peak {peak_kib} KiB from {baseline_kib} KiB");
    assert!(after_kib < baseline_kib + 64 * 1024, "RSS {after_kib} KiB after the hogs, {baseline_kib} KiB before");
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let app = App::new(&[("/echo", "echo")]);
    let server = app.start(&["--max-body", "1KiB"]);

    let small = Request::post(server.url("/echo")).body(Full::new(Bytes::from(vec![b'a'; 1000]))).unwrap();
    let reply = send(small).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.ends_with(&"a".repeat(1000)));

    let declared = Request::post(server.url("/echo")).body(Full::new(Bytes::from(vec![b'a'; 2048]))).unwrap();
    let reply = send(declared).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.body);
    assert!(reply.body.contains("larger than 1024 bytes"), "{}", reply.body);

    // No content-length: chunked, cut off while the guest reads it. A guest
    // that reads before it answers: 413, whatever it answered.
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(chunked_post(server.url("/echo?buffer=1"), 4, 600)).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // A guest that answered first and streams: its response is aborted.
    let response = client.request(chunked_post(server.url("/echo"), 4, 600)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect()).await.unwrap();
    assert!(body.is_err(), "a response made from a cut-off request must not look complete");

    // Under the limit, chunked, is fine both ways.
    let reply = client.request(chunked_post(server.url("/echo?buffer=1"), 2, 500)).await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let body = reply.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(&[b'b'; 1000]));
}

fn chunked_post(
    url: String,
    chunks: usize,
    chunk_len: usize,
) -> Request<impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible>> {
    let frames = (0..chunks).map(move |_| Ok(Frame::data(Bytes::from(vec![b'b'; chunk_len]))));
    Request::post(url).body(StreamBody::new(futures_util::stream::iter(frames))).unwrap()
}

#[tokio::test]
async fn long_urls_and_large_headers_are_refused() {
    let app = App::new(&[("/...", "echo")]);
    let server = app.start(&[]);
    let reply = get(&server.url(&format!("/{}", "x".repeat(9000)))).await;
    assert_eq!(reply.status, StatusCode::URI_TOO_LONG);
    let mut request = Request::get(server.url("/")).body(Full::new(Bytes::new())).unwrap();
    for i in 0..40 {
        request.headers_mut().insert(
            format!("x-big-{i}").parse::<hyper::header::HeaderName>().unwrap(),
            "v".repeat(1000).parse().unwrap(),
        );
    }
    assert_eq!(send(request).await.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // Both limits follow their flags.
    let strict = app.start(&["--max-url", "100B", "--max-headers", "1KiB"]);
    assert_eq!(get(&strict.url(&format!("/{}", "x".repeat(120)))).await.status, StatusCode::URI_TOO_LONG);
    assert_eq!(get(&strict.url(&format!("/{}", "x".repeat(80)))).await.status, StatusCode::OK);
    let request =
        Request::get(strict.url("/")).header("x-big", "v".repeat(1100)).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send(request).await.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = App::new(&[("/hello", "hello")]);
    let server = app.start(&["--header-timeout", "300ms"]);
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buffer = Vec::new();
    // Closed (or reset) by the server: either way the read ends.
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buffer))
        .await
        .expect("the server closes the connection");
    // Well under the 10 s default: the flag took effect.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(get(&server.url("/hello")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_trap_after_the_headers_aborts_the_body_instead_of_ending_it() {
    let app = App::new(&[("/slow", "slow")]);
    let server = app.start(&[]);
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(server.url("/slow?chunks=3&ms=10&trap_after=1")).body(Full::new(Bytes::new())).unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect()).await.unwrap();
    assert!(body.is_err(), "a truncated body must not look complete");
}

#[tokio::test]
async fn busy_instances_and_a_full_queue_answer_503_with_retry_after() {
    let app = App::new(&[("/slow", "slow"), ("/hello", "hello")]);
    let server = app.start(&["--max-instances", "1", "--queue-limit", "0"]);
    let slow = tokio::spawn(get_owned(server.url("/slow?chunks=2&ms=500")));
    // Wait until the slow request holds the only instance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = get(&server.url("/hello")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(get(&server.url("/hello")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let app = App::new(&[("/slow", "slow")]);
    let server = app.start(&[]);
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(server.url("/slow?chunks=4&ms=150")).body(Full::new(Bytes::new())).unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = Vec::new();
    while !received.ends_with(b"chunk 1\n") {
        let frame = body.frame().await.unwrap().unwrap();
        received.extend_from_slice(frame.data_ref().unwrap());
    }

    server.signal("TERM");
    let rest = tokio::time::timeout(PATIENCE, body.collect()).await.unwrap().unwrap().to_bytes();
    received.extend_from_slice(&rest);
    assert_eq!(received, b"chunk 1\nchunk 2\nchunk 3\nchunk 4\n");
    let status = tokio::task::spawn_blocking(move || server.wait()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn a_warm_restart_loads_from_the_compile_cache() {
    let app = App::new(&[("/hello", "hello"), ("/echo", "echo")]);
    let cold = app.start(&[]);
    assert_eq!(get(&cold.url("/hello")).await.status, StatusCode::OK);
    let log = cold.stderr();
    assert_eq!(log.matches("compiled (cache miss)").count(), 2, "{log}");
    drop(cold);

    let warm = app.start(&[]);
    assert_eq!(get(&warm.url("/hello")).await.status, StatusCode::OK);
    let log = warm.stderr();
    assert_eq!(log.matches("loaded from the compile cache").count(), 2, "{log}");
    assert!(!log.contains("compiled"), "{log}");
    drop(warm);

    // A damaged entry is compiled again, never loaded.
    let cache = app.path().join(".dormouse/cache");
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let repaired = app.start(&[]);
    assert_eq!(get(&repaired.url("/hello")).await.status, StatusCode::OK);
    let log = repaired.stderr();
    assert_eq!(log.matches("cache entry was invalid").count(), 2, "{log}");
}

#[test]
fn a_bad_manifest_fails_with_file_line_and_column() {
    let app = App::from_manifest(
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/a/.../b\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n",
    );
    let output = dormouse().args(["up", "--listen", "127.0.0.1:0", "--from"]).arg(app.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("spin.toml:5:9: invalid route `/a/.../b`"), "{stderr}");
}

#[tokio::test]
async fn components_see_their_environment_and_cli_values_win() {
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"env\"\n\
         [[trigger.http]]\nroute = \"/env\"\ncomponent = \"env\"\n\
         [component.env]\nsource = \"{}\"\nenvironment = {{ GREETING = \"manifest\", ONLY_MANIFEST = \"1\" }}\n",
        crate::support::guest("env").display()
    );
    let app = App::from_manifest(&manifest);
    let server = app.start(&["-e", "GREETING=cli", "-e", "EXTRA=a=b"]);
    let reply = get(&server.url("/env")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut lines: Vec<&str> = reply.body.lines().collect();
    lines.sort();
    assert_eq!(lines, ["EXTRA=a=b", "GREETING=cli", "ONLY_MANIFEST=1"], "nothing of dormouse's own environment leaks");
}

#[tokio::test]
async fn an_idle_server_does_not_wake_up() {
    let app = App::new(&[("/slow", "slow")]);
    let server = app.start(&[]);
    // A request runs the epoch ticker; once it is over, nothing should tick.
    assert_eq!(get(&server.url("/slow?chunks=2&ms=50")).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.context_switches();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let woken = server.context_switches() - before;
    // The ticker alone would switch 100 times a second.
    assert!(woken <= 5, "idle threads woke {woken} times in one second");
}

#[tokio::test]
async fn identical_components_share_their_compiled_code() {
    let hello = crate::support::guest("hello");
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"twins\"\n\
         [[trigger.http]]\nroute = \"/a\"\ncomponent = \"a\"\n[[trigger.http]]\nroute = \"/b\"\ncomponent = \"b\"\n\
         [component.a]\nsource = \"{0}\"\n[component.b]\nsource = \"{0}\"\n",
        hello.display()
    );
    let app = App::from_manifest(&manifest);
    let server = app.start(&[]);
    assert_eq!(get(&server.url("/a")).await.status, StatusCode::OK);
    assert_eq!(get(&server.url("/b")).await.status, StatusCode::OK);
    let log = server.wait_for_log("component `b` shares the code of an identical component");
    assert_eq!(log.matches("compiled (cache miss)").count(), 1, "{log}");
}

#[tokio::test]
async fn a_banner_nobody_reads_does_not_stop_the_server() {
    let app = App::new(&[("/hello", "hello")]);
    let port = dormouse_testkit::free_port();
    // Its standard output is a pipe already closed at the other end.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = dormouse()
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--from"])
        .arg(app.path())
        .stdout(writer)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/hello");
    let started = std::time::Instant::now();
    loop {
        if let Ok(Ok(reply)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(("127.0.0.1", port))).await
        {
            drop(reply);
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "dormouse exited");
        assert!(started.elapsed() < PATIENCE, "never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&url).await.body, "Hello from dormouse!\n");
    let status = std::process::Command::new("kill").args(["-s", "TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success(), "a signal still ends it cleanly");
}
