//! Outbound HTTP from components (the `fetch` guest): allowed exactly as
//! `allowed_outbound_hosts` says, denied without a connection, and requests to
//! the app itself served in-process.

use hyper::StatusCode;

use crate::support::{App, Upstream, get_with, guest};

/// An app whose `fetch` component may reach `allowed`, plus `extra` manifest text.
fn fetch_app(allowed: &[String], extra: &str) -> App {
    let allowed: Vec<String> = allowed.iter().map(|host| format!("\"{host}\"")).collect();
    App::from_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"out\"\n\
         [[trigger.http]]\nroute = \"/fetch\"\ncomponent = \"fetch\"\n\
         [component.fetch]\nsource = \"{}\"\nallowed_outbound_hosts = [{}]\n{extra}",
        guest("fetch").display(),
        allowed.join(", ")
    ))
}

async fn fetch(server: &crate::support::Server, url: &str) -> crate::support::Reply {
    get_with(&server.url("/fetch"), &[("x-fetch-url", url)]).await
}

#[tokio::test]
async fn requests_go_out_only_where_the_manifest_allows() {
    let allowed = Upstream::start().await;
    let forbidden = Upstream::start().await;
    let app = fetch_app(&[format!("http://127.0.0.1:{}", allowed.addr.port())], "");
    let server = app.start(&[]);

    let reply = fetch(&server, &allowed.url("/hello")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "200\n\nupstream says hi"));
    assert_eq!(allowed.connections(), 1);

    // Another port of the same host, another scheme, another host: denied,
    // and nothing reaches the network.
    let reply = fetch(&server, &forbidden.url("/hello")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::BAD_GATEWAY, "error: HTTP-request-denied\n"));
    let https = format!("https://127.0.0.1:{}/hello", allowed.addr.port());
    assert_eq!(fetch(&server, &https).await.body, "error: HTTP-request-denied\n");
    let by_name = format!("http://localhost:{}/hello", allowed.addr.port());
    assert_eq!(fetch(&server, &by_name).await.body, "error: HTTP-request-denied\n");
    assert_eq!(forbidden.connections(), 0, "a denied request opens no connection");
    assert_eq!(allowed.connections(), 1, "nor does a denied request to an allowed host's other port or scheme");
    server.wait_for_log(&format!(
        "outbound request to `http://127.0.0.1:{}` denied: add its scheme, host and port to `allowed_outbound_hosts`",
        forbidden.addr.port()
    ));

    // A redirect to a forbidden host is not followed by the host; a guest
    // that follows it makes a new request, which is denied in turn.
    let redirect = allowed.url(&format!("/redirect?to={}", forbidden.url("/hello")));
    let reply = fetch(&server, &redirect).await;
    assert_eq!(reply.body, format!("302\nlocation: {}\n\n", forbidden.url("/hello")));
    let reply = get_with(&server.url("/fetch"), &[("x-fetch-url", &redirect), ("x-fetch-follow", "1")]).await;
    assert_eq!(reply.body, "error: HTTP-request-denied\n");
    assert_eq!(forbidden.connections(), 0);
}

#[tokio::test]
async fn nothing_is_allowed_by_default_and_wildcards_and_templates_widen_it() {
    let upstream = Upstream::start().await;
    let server = fetch_app(&[], "").start(&[]);
    assert_eq!(fetch(&server, &upstream.url("/hello")).await.body, "error: HTTP-request-denied\n");
    assert_eq!(upstream.connections(), 0);
    drop(server);

    // A port range (end excluded) and a host from a variable.
    let port = upstream.addr.port();
    let app = fetch_app(
        &[format!("http://{{{{ upstream_host }}}}:{}..{}", port - 1, port + 1)],
        "[variables]\nupstream_host = { default = \"127.0.0.1\" }\n",
    );
    let server = app.start(&[]);
    assert_eq!(fetch(&server, &upstream.url("/hello")).await.body, "200\n\nupstream says hi");
    assert_eq!(upstream.connections(), 1);

    let server = fetch_app(&["*://*:*".to_owned()], "").start(&[]);
    assert_eq!(fetch(&server, &upstream.url("/hello")).await.body, "200\n\nupstream says hi");
}

#[tokio::test]
async fn a_silent_upstream_times_out_with_the_error_code() {
    let upstream = Upstream::start().await;
    let server = fetch_app(&[format!("http://127.0.0.1:{}", upstream.addr.port())], "").start(&[]);
    let reply =
        get_with(&server.url("/fetch"), &[("x-fetch-url", &upstream.url("/silent")), ("x-fetch-timeout-ms", "300")])
            .await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::BAD_GATEWAY, "error: connection-read-timeout\n"));
}

#[tokio::test]
async fn the_app_itself_and_its_components_are_reached_in_process() {
    let manifest_extra = format!(
        "[[trigger.http]]\nroute = \"/hello\"\ncomponent = \"hello\"\n\
         [component.hello]\nsource = \"{}\"\n\
         [[trigger.http]]\nroute = {{ private = true }}\ncomponent = \"backend\"\n\
         [component.backend]\nsource = \"{}\"\n\
         [[trigger.http]]\nroute = \"/narrow\"\ncomponent = \"narrow\"\n\
         [component.narrow]\nsource = \"{}\"\nallowed_outbound_hosts = [\"http://hello.spin.internal\"]\n",
        guest("hello").display(),
        guest("echo").display(),
        guest("fetch").display(),
    );
    let app = fetch_app(&["http://self".to_owned(), "http://backend.spin.internal".to_owned()], &manifest_extra);
    let server = app.start(&[]);

    let reply = fetch(&server, "http://self.alt/hello").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "200\n\nHello from dormouse!\n"));
    assert_eq!(fetch(&server, "http://self.alt/nowhere").await.body, "404\n\n");

    // A private component has no route from outside, but chaining reaches it.
    let reply = fetch(&server, "http://backend.spin.internal/private/path?q=1").await;
    assert!(reply.body.starts_with("200\n\nGET /private/path?q=1\n"), "{}", reply.body);
    assert!(reply.body.contains("spin-path-info: /private/path\n"), "{}", reply.body);

    // `narrow` may chain to `hello` only.
    let narrow = server.url("/narrow");
    for (url, answer) in [
        ("http://hello.spin.internal/", "200\n\nHello from dormouse!\n"),
        ("http://backend.spin.internal/", "error: HTTP-request-denied\n"),
        ("http://self.alt/hello", "error: HTTP-request-denied\n"),
    ] {
        assert_eq!(get_with(&narrow, &[("x-fetch-url", url)]).await.body, answer, "{url}");
    }
}

#[tokio::test]
async fn a_component_calling_itself_forever_is_stopped() {
    let app = fetch_app(&["http://self".to_owned()], "");
    let server = app.start(&[]);
    let reply =
        get_with(&server.url("/fetch"), &[("x-fetch-url", "http://self.alt/fetch"), ("x-fetch-loop", "1")]).await;
    // Each hop reports the answer of the next. The tenth hop's own request
    // is refused, so it answers 502, which the nine before it pass on.
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.ends_with("502\n\nerror: loop-detected\n"), "{}", reply.body);
    assert_eq!(reply.body.matches("200\n\n").count(), 9, "{}", reply.body);
    assert!(get_with(&server.url("/fetch"), &[]).await.status == StatusCode::BAD_REQUEST, "still serving");
}

#[tokio::test]
async fn a_component_reaches_a_service_of_its_app_by_id() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/app.py");
    let app = fetch_app(
        &["http://py.spin.internal".to_owned()],
        &format!("[service.py]\ncommand = [\"python3\", \"{}\"]\n", script.display()),
    );
    let server = app.start(&[]);
    let reply = fetch(&server, "http://py.spin.internal/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.starts_with("200\n\npid "), "{}", reply.body);
}

#[tokio::test]
async fn a_guest_waiting_on_an_outbound_request_is_not_held_up_by_busy_guests() {
    let upstream = Upstream::start().await;
    let busy_component = format!(
        "[[trigger.http]]\nroute = \"/loop\"\ncomponent = \"loop\"\n[component.loop]\nsource = \"{}\"\n",
        guest("loop").display()
    );
    let app = fetch_app(&[format!("http://127.0.0.1:{}", upstream.addr.port())], &busy_component);
    let server = app.start(&["--cpu-limit", "100ms", "--timeout", "30s"]);
    assert_eq!(fetch(&server, &upstream.url("/hello")).await.status, StatusCode::OK);
    // Sixty guests busy for 100 ms of CPU each, 3 s of both CPUs.
    let busy: Vec<_> = (0..60).map(|_| tokio::spawn(crate::support::get_owned(server.url("/loop")))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut took = Vec::new();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(fetch(&server, &upstream.url("/hello")).await.body, "200\n\nupstream says hi");
        took.push(started.elapsed());
    }
    // Each of its waits behind the busy guests' 10 ms slices would cost
    // some 300 ms.
    assert!(
        took.iter().all(|t| *t < std::time::Duration::from_millis(150)),
        "outbound requests took {took:?} beside 60 busy guests"
    );
    for request in busy {
        assert_eq!(request.await.unwrap().status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
