//! The platform: `dormouse daemon` driven through the CLI binary, as an
//! operator would (deploy, ls, instance ls, rm), with apps reached by their
//! host names on loopback.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::Value;

use crate::support::{PATIENCE, Reply, Server, dormouse, get_with, guest, process_state, wait_gone};

/// Runs `dormouse ARGS` against the daemon whose state is in `state_dir`.
fn cli(state_dir: &Path, args: &[&str]) -> Output {
    dormouse().args(args).env("DORMOUSE_STATE_DIR", state_dir).env("NO_COLOR", "1").output().unwrap()
}

/// Runs a command that must succeed, and returns its standard output.
pub fn ok(state_dir: &Path, args: &[&str]) -> String {
    let output = cli(state_dir, args);
    assert!(
        output.status.success(),
        "`dormouse {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a command that must fail, and returns its standard error.
fn fails(state_dir: &Path, args: &[&str]) -> String {
    let output = cli(state_dir, args);
    assert!(
        !output.status.success(),
        "`dormouse {}` succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).unwrap()
}

fn json(state_dir: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    serde_json::from_str(&ok(state_dir, &args)).unwrap()
}

/// The `instance ls` row of `name` in `app`.
fn instance(state_dir: &Path, app: &str, name: &str) -> Value {
    let rows = json(state_dir, &["instance", "ls"]);
    rows.as_array()
        .unwrap()
        .iter()
        .find(|row| {
            row["app"] == app && row["name"].as_str().is_some_and(|n| n == name || n.starts_with(&format!("{name}-")))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no instance `{name}` of `{app}` in {rows:#}"))
}

/// Polls `instance ls` until the row of `name` in `app` is in `state`.
fn wait_for_state(state_dir: &Path, app: &str, name: &str, state: &str) -> Value {
    let started = Instant::now();
    loop {
        let row = instance(state_dir, app, name);
        if row["state"] == state {
            return row;
        }
        assert!(started.elapsed() < PATIENCE, "`{app}/{name}` never became {state}: {row:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A request to `app` through the daemon's listener, by host name.
async fn request(server: &Server, app: &str, path: &str) -> Reply {
    get_with(&server.url(path), &[("host", &format!("{app}.localhost"))]).await
}

/// A directory holding the test service (`app.py`), to deploy with a command.
fn service_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/app.py");
    std::fs::copy(script, dir.path().join("app.py")).unwrap();
    dir
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_scale_to_zero_wakes_on_a_request_and_sleeps_after_the_cooldown() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &[]);
    let service = service_dir();

    let printed = ok(
        state_dir,
        &["deploy", "-0", "--name", "py", "--cooldown", "300ms", path_str(service.path()), "--", "python3", "app.py"],
    );
    for field in ["name: py", "state: standby", "url: http://py.localhost:", "routes: /... → py (service)"] {
        assert!(printed.contains(field), "deploy printed no `{field}`: {printed}");
    }
    let row = instance(state_dir, "py", "py");
    assert_eq!((row["kind"].as_str(), row["state"].as_str()), (Some("service"), Some("standby")), "{row:#}");
    assert_eq!(json(state_dir, &["ls"])[0]["state"], "standby");

    let reply = request(&server, "py", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let row = instance(state_dir, "py", "py");
    assert_eq!(row["state"], "running", "{row:#}");
    assert_eq!(row["name"], "py-1");
    assert_eq!(reply.body.trim(), format!("pid {}", row["pid"]), "the request reached the instance listed");
    assert!(row["boot_time_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{row:#}");
    assert_eq!(json(state_dir, &["ls"])[0]["state"], "running");
    let pid = row["pid"].as_u64().unwrap() as u32;

    let row = wait_for_state(state_dir, "py", "py", "standby");
    assert_eq!(row["stop_reason"], "idle", "{row:#}");
    assert_eq!(row["requests"], 1);
    wait_gone(pid, "the idle instance");

    // A bare component: instances only while a request is in flight.
    let hello = guest("hello");
    ok(state_dir, &["deploy", "--name", "greet", path_str(&hello)]);
    let row = instance(state_dir, "greet", "greet");
    assert_eq!(
        (row["kind"].as_str(), row["state"].as_str(), row["requests"].as_u64()),
        (Some("component"), Some("standby"), Some(0))
    );
    let reply = request(&server, "greet", "/anything").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "Hello from dormouse!\n"));
    assert_eq!(instance(state_dir, "greet", "greet")["requests"], 1);

    // Hosts that name no app.
    let reply = request(&server, "nope", "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.contains("no app `nope`"), "{}", reply.body);
    let reply = get_with(&server.url("/"), &[]).await;
    assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{}", reply.body);

    // The table a person reads.
    let table = ok(state_dir, &["instance", "ls"]);
    let header = table.lines().next().unwrap();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "APP", "KIND", "STATE", "BOOT-TIME", "MEMORY", "REQUESTS", "UPTIME", "STOP-REASON"]
    );
    assert!(!table.contains('\x1b'), "no colour off a terminal");
    // A reader that goes away (`| head`) ends the command quietly.
    let mut gone = dormouse()
        .args(["instance", "ls"])
        .env("DORMOUSE_STATE_DIR", state_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(gone.stdout.take());
    let ended = gone.wait_with_output().unwrap();
    assert!(ended.status.success(), "{}", String::from_utf8_lossy(&ended.stderr));

    // Without `-0`, an instance is up from the deploy on, and its boot time
    // is in the deploy's answer.
    let args = ["deploy", "-o", "json", "--name", "always", path_str(service.path()), "--", "python3", "app.py"];
    let reply: Value = serde_json::from_str(&ok(state_dir, &args)).unwrap();
    assert!(reply["boot_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{reply:#}");
    assert_eq!(instance(state_dir, "always", "always")["state"], "running");

    let bundles = || std::fs::read_dir(state_dir.join("bundles")).unwrap().count();
    let before = bundles();
    ok(state_dir, &["rm", "py"]);
    assert_eq!(request(&server, "py", "/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(bundles(), before - 1, "its bundle goes with it");
    assert!(!state_dir.join("apps/py").exists(), "and its data");
    assert!(fails(state_dir, &["rm", "py"]).contains("no app `py`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_or_killed_daemon_restores_every_app() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let service = service_dir();
    let server = Server::daemon(state_dir, &[]);
    ok(state_dir, &["deploy", "--name", "greet", path_str(&guest("hello"))]);
    ok(state_dir, &["deploy", "-0", "--name", "py", path_str(service.path()), "--", "python3", "app.py"]);
    let pid = pid_of(&request(&server, "py", "/").await);

    server.signal("TERM");
    assert!(server.wait().success());
    wait_gone(pid, "a service of a daemon that stopped");

    let mut server = Server::daemon(state_dir, &[]);
    server.wait_for_log("2 apps restored");
    let names: Vec<String> =
        json(state_dir, &["ls"]).as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["greet", "py"]);
    assert_eq!(instance(state_dir, "py", "py")["state"], "standby", "restored in standby");
    assert_eq!(request(&server, "greet", "/").await.status, StatusCode::OK);
    let pid = pid_of(&request(&server, "py", "/").await);

    server.kill_outright();
    wait_gone(pid, "a service of a daemon killed outright");
    let server = Server::daemon(state_dir, &[]);
    assert_eq!(request(&server, "greet", "/").await.status, StatusCode::OK);
    assert_eq!(request(&server, "py", "/").await.status, StatusCode::OK);
}

fn pid_of(reply: &Reply) -> u32 {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let pid = reply.body.trim().strip_prefix("pid ").unwrap().parse().unwrap();
    assert!(process_state(pid).is_some());
    pid
}

/// An app directory whose manifest routes `/...` to a copy of guest `name`.
pub fn component_app(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest(name), dir.path().join("app.wasm")).unwrap();
    let manifest = "spin_manifest_version = 2\n[application]\nname = \"site\"\n\
                    [[trigger.http]]\nroute = \"/...\"\ncomponent = \"app\"\n[component.app]\nsource = \"app.wasm\"\n";
    std::fs::write(dir.path().join("spin.toml"), manifest).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deploy_leaves_the_old_version_serving_and_says_why() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &[]);
    let app = component_app("hello");
    ok(state_dir, &["deploy", path_str(app.path())]);
    assert_eq!(request(&server, "site", "/").await.body, "Hello from dormouse!\n");

    // A manifest error is caught before the upload, with file:line:column.
    std::fs::write(
        app.path().join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"site\"\nbogus = 1\n",
    )
    .unwrap();
    let error = fails(state_dir, &["deploy", path_str(app.path())]);
    assert!(error.contains("spin.toml:4:1"), "{error}");

    // One only the daemon finds: the component is not WebAssembly.
    let broken = component_app("hello");
    std::fs::write(broken.path().join("app.wasm"), "not wasm").unwrap();
    let error = fails(state_dir, &["deploy", path_str(broken.path())]);
    assert!(error.contains("is not a WebAssembly binary") && error.contains("400"), "{error}");
    assert_eq!(request(&server, "site", "/").await.body, "Hello from dormouse!\n", "the old version still serves");
    assert_eq!(json(state_dir, &["ls"])[0]["version"], 1);

    let echo = component_app("echo");
    ok(state_dir, &["deploy", path_str(echo.path())]);
    let reply = request(&server, "site", "/x").await;
    assert!(reply.body.starts_with("GET /x"), "the new version serves: {}", reply.body);
    assert_eq!(json(state_dir, &["ls"])[0]["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_deploy_of_an_app_in_progress_gets_409() {
    use tokio::io::AsyncWriteExt as _;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let _server = Server::daemon(state_dir, &[]);
    let app = component_app("hello");

    // A deploy whose upload has begun and not ended holds the app.
    let mut slow = tokio::net::UnixStream::connect(state_dir.join("control.sock")).await.unwrap();
    slow.write_all(b"PUT /v1/apps/site HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let error = fails(state_dir, &["deploy", path_str(app.path())]);
    assert!(error.contains("409") && error.contains("being deployed"), "{error}");

    // The first deploy's client hangs up: the app is free again.
    drop(slow);
    let started = Instant::now();
    while !cli(state_dir, &["deploy", path_str(app.path())]).status.success() {
        assert!(started.elapsed() < Duration::from_secs(10), "the claim of a dropped upload was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The control API on TCP: `(status, body)` of a raw request.
async fn control_raw(address: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_on_tcp_needs_the_token_and_names_every_error() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &["--control-listen", "127.0.0.1:0", "--max-upload", "64KiB"]);
    let banner = server.stdout();
    let address = banner
        .lines()
        .find_map(|line| line.strip_prefix("Control API at http://"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no control address in {banner}"))
        .to_owned();
    let token = std::fs::read_to_string(state_dir.join("token")).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(state_dir.join("token")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert!(!state_dir.join("control.sock").exists(), "no socket when the API is on TCP");

    let (status, body) = control_raw(&address, "GET /v1/apps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 401);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["message"].as_str().unwrap().contains("token"), "{body}");
    let wrong = "GET /v1/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n";
    assert_eq!(control_raw(&address, wrong).await.0, 401);
    let authorized = |request: &str| request.replace("\r\n\r\n", &format!("\r\nAuthorization: Bearer {token}\r\n\r\n"));
    let (status, body) =
        control_raw(&address, &authorized("GET /v1/apps/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["message"], "no app `nope` is deployed");
    let garbage = authorized("PUT /v1/apps/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n");
    let (status, body) = control_raw(&address, &format!("{garbage}hello")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tar"), "{body}");
    let bad_name =
        authorized("PUT /v1/apps/Bad_Name HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let (status, body) = control_raw(&address, &bad_name).await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid app name `Bad_Name`"), "{body}");

    // The CLI finds the token in the state directory, or takes one given.
    let with_control = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--control", &address]);
        cli(state_dir, &all)
    };
    assert!(with_control(&["ls"]).status.success());
    let denied = with_control(&["ls", "--token", "wrong"]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401"), "{denied:?}");

    // An upload over the limit.
    let big = tempfile::tempdir().unwrap();
    std::fs::copy(guest("hello"), big.path().join("app.wasm")).unwrap();
    std::fs::write(big.path().join("padding"), vec![b'x'; 100 << 10]).unwrap();
    let output = with_control(&["deploy", "--name", "big", path_str(&big.path().join("app.wasm"))]);
    assert!(output.status.success(), "a small component fits: {output:?}");
    let manifest = "spin_manifest_version = 2\n[application]\nname = \"big\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"app\"\n[component.app]\nsource = \"app.wasm\"\n";
    std::fs::write(big.path().join("spin.toml"), manifest).unwrap();
    let output = with_control(&["deploy", path_str(big.path())]);
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("413") && error.contains("larger than the limit"), "{error}");
    assert_eq!(request(&server, "big", "/").await.status, StatusCode::OK, "the first version still serves");
}

/// How many instances of `app`'s service `name` are starting or running.
fn awake(state_dir: &Path, app: &str) -> usize {
    let rows = json(state_dir, &["instance", "ls"]);
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|row| row["app"] == app && matches!(row["state"].as_str(), Some("starting" | "running")))
        .count()
}

/// Sends `count` requests for `/slow` (300 ms each) at once and returns the
/// most instances seen awake while they ran.
async fn burst(server: &Server, state_dir: &Path, app: &str, count: usize) -> usize {
    let requests: Vec<_> = (0..count)
        .map(|_| {
            let url = server.url("/slow");
            let host = format!("{app}.localhost");
            tokio::spawn(async move { get_with(&url, &[("host", &host)]).await.status })
        })
        .collect();
    let mut most = 0;
    let started = Instant::now();
    while requests.iter().any(|r| !r.is_finished()) && started.elapsed() < PATIENCE {
        most = most.max(awake(state_dir, app));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for request in requests {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_policy_scales_out_under_a_burst_and_back_to_zero_after() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &[]);
    let service = service_dir();
    ok(state_dir, &["deploy", "-0", "--name", "py", path_str(service.path()), "--", "python3", "app.py"]);
    ok(state_dir, &["scale", "init", "py", "--min-size", "0", "--max-size", "4", "--cooldown", "300ms"]);

    // Eight requests at once are within one instance's target concurrency
    // (10): on demand alone, one instance takes them all.
    assert_eq!(burst(&server, state_dir, "py", 8).await, 1);
    wait_for_state(state_dir, "py", "py", "standby");

    // A policy on requests in flight per instance scales out for the same burst.
    ok(state_dir, &["scale", "add", "py", "--name", "out", "--metric", "inflight", "--step", "2:/1"]);
    let scale = json(state_dir, &["scale", "get", "py"]);
    assert_eq!(scale["policies"][0]["steps"][0], "2:/1", "{scale:#}");
    assert_eq!((scale["min_size"].as_u64(), scale["max_size"].as_u64()), (Some(0), Some(4)));
    let most = burst(&server, state_dir, "py", 8).await;
    assert!(most >= 2, "the policy started more instances: at most {most} were awake");
    assert!(most <= 4, "never past the max size: {most}");

    // Once the load is gone, every instance goes back to standby.
    let started = Instant::now();
    while awake(state_dir, "py") > 0 {
        assert!(started.elapsed() < PATIENCE, "instances stayed up after the burst");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The settings survive a restart; bad ones are refused with a reason.
    drop(server);
    let _server = Server::daemon(state_dir, &[]);
    assert_eq!(json(state_dir, &["scale", "get", "py"]), scale);
    let error = fails(state_dir, &["scale", "add", "py", "--name", "x", "--metric", "cpu", "--step", "600:500/1"]);
    assert!(error.contains("invalid step `600:500/1`"), "{error}");
    let error = fails(state_dir, &["scale", "init", "py", "--min-size", "5", "--max-size", "2"]);
    assert!(error.contains("min size 5 is above max size 2"), "{error}");
    ok(state_dir, &["deploy", "--name", "greet", path_str(&guest("hello"))]);
    let error = fails(state_dir, &["scale", "init", "greet", "--max-size", "2"]);
    assert!(error.contains("no services to scale"), "{error}");
    ok(state_dir, &["scale", "rm", "py", "--name", "out"]);
    assert_eq!(json(state_dir, &["scale", "get", "py"])["policies"], serde_json::json!([]));
}

/// The test service as an app with a manifest: `[service.<name>]` with
/// `extra` lines.
fn service_app(name: &str, extra: &str) -> tempfile::TempDir {
    let dir = service_dir();
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"{name}\"\n[[trigger.http]]\nroute = \"/...\"\nservice = \"{name}\"\n\
         [service.{name}]\ncommand = [\"python3\", \"app.py\"]\n{extra}\n"
    );
    std::fs::write(dir.path().join("spin.toml"), manifest).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_requests_then_refuse_them_by_name_and_refuse_deploys_past_them() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let flags = ["--max-active-instances", "1", "--max-active-memory", "300MiB", "--max-apps", "3", "--timeout", "3s"];
    let server = Server::daemon(state_dir, &flags);
    let a = service_app("a", "scale_to_zero = { cooldown = \"300ms\" }");
    let b = service_app("b", "scale_to_zero = { cooldown = \"300ms\" }\nready_timeout = \"1s\"");
    ok(state_dir, &["deploy", "-0", path_str(a.path())]);
    ok(state_dir, &["deploy", "-0", path_str(b.path())]);

    // `a` busy for as long as this request hangs: it holds the one active place.
    let hanging = {
        let url = server.url("/hang");
        tokio::spawn(async move { get_with(&url, &[("host", "a.localhost")]).await })
    };
    wait_for_state(state_dir, "a", "a", "running");
    let quotas = json(state_dir, &["quotas"]);
    assert_eq!(quotas["active_instances"], serde_json::json!({ "used": 1, "limit": 1 }), "{quotas:#}");
    assert_eq!(quotas["active_memory_bytes"]["used"], 256 << 20, "a service's default size");
    assert_eq!(quotas["apps"], serde_json::json!({ "used": 2, "limit": 3 }));

    // `b` waits for room until its wake deadline, then is refused by name.
    let started = Instant::now();
    let reply = request(&server, "b", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.body);
    assert!(reply.body.contains("active instances quota"), "{}", reply.body);
    assert!(reply.headers.contains_key("retry-after"));
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited in the queue first");

    // Once `a` is idle and in standby, `b` gets its place.
    hanging.abort();
    let reply = request(&server, "b", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(instance(state_dir, "a", "a")["state"], "standby");

    // Deploys past a quota are refused, and change nothing.
    ok(state_dir, &["deploy", "--name", "greet", path_str(&guest("hello"))]);
    let error = fails(state_dir, &["deploy", "--name", "fourth", path_str(&guest("hello"))]);
    assert!(error.contains("apps quota") && error.contains("403"), "{error}");
    let large = service_app("b", "memory = \"512MiB\"");
    let error = fails(state_dir, &["deploy", "-0", path_str(large.path())]);
    assert!(error.contains("can never run") && error.contains("active memory quota"), "{error}");
    assert_eq!(json(state_dir, &["ls"]).as_array().unwrap().len(), 3);
    let table = ok(state_dir, &["quotas"]);
    assert!(table.contains("active instances:") && table.contains("/ 1"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_removed_past_its_drain_answers_its_unfinished_requests_503() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &["--drain-timeout", "1s"]);
    let a = service_app(
        "a",
        "scale_to_zero = { cooldown = \"60s\" }\nautoscale = { min = 0, max = 1, target_concurrency = 1 }",
    );
    ok(state_dir, &["deploy", "-0", path_str(a.path())]);
    // One request the app never answers, and one held for the instance's
    // only place behind it.
    let send = |path: &str| {
        let url = server.url(path);
        tokio::spawn(async move { get_with(&url, &[("host", "a.localhost")]).await })
    };
    let in_flight = send("/hang");
    wait_for_state(state_dir, "a", "a", "running");
    let held = send("/");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    ok(state_dir, &["rm", "a"]);
    for (what, reply) in [("in flight", in_flight), ("held", held)] {
        let reply = tokio::time::timeout(PATIENCE, reply).await.unwrap().unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {}", reply.body);
        assert!(reply.body.contains("service `a` is stopping: its app was removed"), "{what}: {}", reply.body);
        assert!(reply.headers.contains_key("retry-after"), "{what}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_past_its_memory_size_is_killed_and_says_so() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &[]);
    let app = service_app("small", "memory = \"64MiB\"");
    ok(state_dir, &["deploy", "-0", path_str(app.path())]);
    let pid = pid_of(&request(&server, "small", "/").await);
    let row = instance(state_dir, "small", "small");
    assert!(row["memory_bytes"].as_u64().is_some_and(|bytes| bytes > 0 && bytes < 64 << 20), "{row:#}");

    let reply = request(&server, "small", "/hog").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    wait_gone(pid, "the instance past its memory size");
    let row = wait_for_state(state_dir, "small", "small", "standby");
    let reason = row["stop_reason"].as_str().unwrap();
    assert!(reason.contains("memory size of 64 MiB"), "{reason}");

    // The next request gets a fresh instance.
    assert_eq!(request(&server, "small", "/").await.status, StatusCode::OK);

    // `-M` sizes a command's instances.
    let service = service_dir();
    let args = ["deploy", "-0", "-M", "96MiB", "--name", "sized", path_str(service.path()), "--", "python3", "app.py"];
    let mut with_json = args.to_vec();
    with_json.splice(1..1, ["-o", "json"]);
    let reply: Value = serde_json::from_str(&ok(state_dir, &with_json)).unwrap();
    assert_eq!(reply["memory_bytes"], 96 << 20);
    assert_eq!(request(&server, "sized", "/hog").await.status, StatusCode::BAD_GATEWAY);
    let row = wait_for_state(state_dir, "sized", "sized", "standby");
    assert!(row["stop_reason"].as_str().unwrap().contains("memory size of 96 MiB"), "{row:#}");
}

/// Polls `dormouse logs` until a line contains every text in `wanted`.
fn wait_for_lines(state_dir: &Path, app: &str, wanted: &[&str]) -> String {
    let started = Instant::now();
    loop {
        let logs = ok(state_dir, &["logs", app]);
        if wanted.iter().all(|text| logs.contains(text)) {
            return logs;
        }
        assert!(started.elapsed() < PATIENCE, "`dormouse logs {app}` never showed {wanted:?}: {logs}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_hold_what_guests_and_services_wrote_with_timestamps() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &[]);
    ok(state_dir, &["deploy", "--name", "noisy", path_str(&guest("log"))]);
    assert_eq!(request(&server, "noisy", "/").await.body, "logged\n");
    let logs = wait_for_lines(
        state_dir,
        "noisy",
        &[
            "noisy stdout: handled a request",
            "noisy stderr: a warning in two writes",
            "noisy stderr: and an unfinished line",
        ],
    );
    for line in logs.lines() {
        let stamp = line.split(' ').next().unwrap();
        assert!(stamp.len() > 20 && stamp.ends_with('Z'), "every line starts with its time: {line}");
    }

    // A service's output, by process, in the same stream of lines.
    let service = service_app("chatty", "");
    std::fs::write(
        service.path().join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"chatty\"\n[[trigger.http]]\nroute = \"/...\"\nservice = \"chatty\"\n\
         [service.chatty]\ncommand = [\"sh\", \"-c\", \"echo starting up; echo oops >&2; exec python3 app.py\"]\n",
    )
    .unwrap();
    ok(state_dir, &["deploy", "-0", path_str(service.path())]);
    let pid = pid_of(&request(&server, "chatty", "/").await);
    wait_for_lines(
        state_dir,
        "chatty",
        &[&format!("chatty[{pid}] stdout: starting up"), &format!("chatty[{pid}] stderr: oops")],
    );
    let last = ok(state_dir, &["logs", "chatty", "--tail", "1"]);
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(fails(state_dir, &["logs", "nope"]).contains("no app `nope`"));

    // `-f` prints what comes next, and only that.
    let before = ok(state_dir, &["logs", "noisy", "--tail", "1"]);
    let before = before.split(' ').next().unwrap().to_owned();
    let mut follow = dormouse()
        .args(["logs", "noisy", "-f", "--tail", "0"])
        .env("DORMOUSE_STATE_DIR", state_dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    request(&server, "noisy", "/").await;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("noisy stdout: handled a request"), "{first}");
    assert!(first.split(' ').next().unwrap() > before.as_str(), "a new line, not history: {first} after {before}");
    follow.kill().unwrap();
    follow.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_reads_and_writes_the_store_the_components_use() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(guest("kv"), dir.path().join("kv.wasm")).unwrap();
    let manifest = "spin_manifest_version = 2\n[application]\nname = \"store\"\n[[trigger.http]]\nroute = \"/...\"\n\
                    component = \"kv\"\n[component.kv]\nsource = \"kv.wasm\"\nkey_value_stores = [\"default\"]\n";
    std::fs::write(dir.path().join("spin.toml"), manifest).unwrap();
    ok(state_dir, &["deploy", path_str(dir.path())]);

    // Written by the operator, read by the guest.
    ok(state_dir, &["kv", "set", "store", "greeting", "hello there"]);
    assert_eq!(request(&server, "store", "/spin/greeting").await.body, "hello there");
    ok(state_dir, &["kv", "set", "store", "a/b c", "any key"]);
    assert_eq!(ok(state_dir, &["kv", "get", "store", "a/b c"]), "any key");
    // Written by the guest, read by the operator.
    let put = crate::support::send(
        hyper::Request::put(server.url("/spin/count"))
            .header("host", "store.localhost")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"42")))
            .unwrap(),
    )
    .await;
    assert!(put.status.is_success(), "{}", put.body);
    assert_eq!(ok(state_dir, &["kv", "get", "store", "count"]), "42");
    let keys = json(state_dir, &["kv", "ls", "store"]);
    assert_eq!(keys, serde_json::json!(["a/b c", "count", "greeting"]));

    assert!(fails(state_dir, &["kv", "get", "store", "missing"]).contains("no key `missing`"));
    assert!(fails(state_dir, &["kv", "ls", "store", "--store", "other"]).contains("no key-value store `other`"));
    let long = "k".repeat(300);
    assert!(fails(state_dir, &["kv", "set", "store", &long, "v"]).contains("256 bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_owns_its_state_and_its_apps_only_their_bundles() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &[]);

    // One daemon per state directory.
    let second = dormouse().args(["daemon", "--listen", "127.0.0.1:0", "--state-dir"]).arg(state_dir).output().unwrap();
    let error = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && error.contains("another dormouse daemon"), "{error}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(state_dir).unwrap().permissions());
    let fresh = tempfile::tempdir().unwrap();
    let private = fresh.path().join("state");
    let _other = Server::daemon(&private, &[]);
    let mode_of_new = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&private).unwrap().permissions());
    assert_eq!(mode_of_new & 0o777, 0o700, "a state directory it makes is its owner's only (was {mode:o})");

    // Nothing a bundle names may lead out of it; a command must exist.
    let outside = component_app("hello");
    std::fs::write(
        outside.path().join("spin.toml"),
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"out\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = \"{}\"\n",
            guest("hello").display()
        ),
    )
    .unwrap();
    std::fs::remove_file(outside.path().join("app.wasm")).unwrap();
    // The CLI packs a source outside the directory into the bundle; through
    // the API, an absolute path is refused.
    ok(state_dir, &["deploy", path_str(outside.path())]);
    let manifest = std::fs::read(outside.path().join("spin.toml")).unwrap();
    let mut bundle = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    bundle.append_data(&mut header, "spin.toml", &manifest[..]).unwrap();
    let body = bytes::Bytes::from(bundle.into_inner().unwrap());
    let (status, answer) =
        server.control().raw(hyper::Method::PUT, "/v1/apps/escape", Some(("application/x-tar", body))).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&answer).contains("is outside the bundle"), "{answer:?}");
    let service = service_dir();
    let error = fails(state_dir, &["deploy", "--name", "nope", path_str(service.path()), "--", "no-such-program"]);
    assert!(error.contains("`no-such-program` is not an executable on PATH"), "{error}");

    // A service starts from a clean environment: the daemon's RUST_LOG does
    // not reach it.
    ok(
        state_dir,
        &[
            "deploy",
            "-0",
            "--name",
            "env",
            path_str(service.path()),
            "--",
            "sh",
            "-c",
            "echo log=[$RUST_LOG] path=[${PATH:+set}]; exec python3 app.py",
        ],
    );
    assert_eq!(request(&server, "env", "/").await.status, StatusCode::OK);
    let logs = wait_for_lines(state_dir, "env", &["path=[set]"]);
    assert!(logs.contains("log=[]"), "the daemon's environment leaked: {logs}");

    // Redeployed on its fixed port, an app that keeps an instance up gets
    // it back as soon as the old version has let the port go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let fixed = ["deploy", "--name", "fixed", "-p", &port, path_str(service.path()), "--", "python3", "app.py"];
    ok(state_dir, &fixed);
    let first = wait_for_state(state_dir, "fixed", "fixed", "running")["pid"].clone();
    ok(state_dir, &fixed);
    let started = Instant::now();
    loop {
        let row = instance(state_dir, "fixed", "fixed");
        if row["state"] == "running" && row["pid"] != first {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the new version's instance never came up: {row:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An HTTP/1.0 app (Python's http.server) still answers in HTTP/1.1.
    ok(
        state_dir,
        &[
            "deploy",
            "-0",
            "--name",
            "old",
            path_str(service.path()),
            "--",
            "sh",
            "-c",
            "exec python3 -m http.server --bind 127.0.0.1 $PORT",
        ],
    );
    let answer =
        crate::support::raw(server.addr, b"GET /app.py HTTP/1.1\r\nHost: old.localhost\r\nConnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{}", &answer[..answer.len().min(200)]);

    // Requests routed by their target's authority, refused without a Host.
    let absolute = crate::support::raw(
        server.addr,
        b"GET http://out.localhost/ HTTP/1.1\r\nHost: nope.localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(absolute.starts_with("HTTP/1.1 200") && absolute.contains("Hello from dormouse!"), "{absolute}");
    let no_host = crate::support::raw(server.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let bracketed =
        crate::support::raw(server.addr, b"GET / HTTP/1.1\r\nHost: [out.localhost]\r\nConnection: close\r\n\r\n");
    assert!(!bracketed.starts_with("HTTP/1.1 200"), "{bracketed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_earlier_content_serves_its_first_request() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &[]);
    let v1 = service_app("rb", "scale_to_zero = { cooldown = \"200ms\" }");
    ok(state_dir, &["deploy", "-0", path_str(v1.path())]);
    assert_eq!(request(&server, "rb", "/").await.status, StatusCode::OK);
    // Another version (whose bundle replaces v1's, which is collected),
    // then v1's very content again, unpacked to the same directory anew.
    let hello = guest("hello");
    ok(state_dir, &["deploy", "--name", "rb", path_str(&hello)]);
    assert_eq!(request(&server, "rb", "/").await.status, StatusCode::OK);
    ok(state_dir, &["deploy", "-0", path_str(v1.path())]);
    let reply = request(&server, "rb", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "the first request after the rollback: {}", reply.body);
    assert!(reply.body.starts_with("pid "), "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_app_leaves_no_waiting_processes_behind() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path();
    let server = Server::daemon(state_dir, &[]);
    let app = service_app("gone", "");
    ok(state_dir, &["deploy", "-0", path_str(app.path())]);
    // The process helper keeps two shells waiting for the service's wakes.
    let children = |pid: u32| -> Vec<u32> {
        let output = std::process::Command::new("pgrep").args(["-P", &pid.to_string()]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).lines().filter_map(|line| line.parse().ok()).collect()
    };
    let helper = children(server.pid())[0];
    let waiting = |count: usize| {
        let started = Instant::now();
        while children(helper).len() != count {
            assert!(started.elapsed() < PATIENCE, "{:?} waiting, not {count}", children(helper));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    waiting(2);
    ok(state_dir, &["rm", "gone"]);
    // Their app is gone, and so are they.
    waiting(0);
}
