//! Services: real processes (a Python app, nginx) woken by requests and put on
//! standby when idle.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::Value;

use crate::support::{App, PATIENCE, Server, get, get_owned, process_state, upgraded_to_echo};

pub fn python_app(mode: &str, service_extra: &str) -> App {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/app.py").canonicalize().unwrap();
    App::from_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"svc\"\n\
         [[trigger.http]]\nroute = \"/...\"\nservice = \"py\"\n\
         [service.py]\ncommand = [\"python3\", \"{}\", \"{mode}\"]\n{service_extra}\n",
        script.display()
    ))
}

/// The app's first service as the control API reports it.
pub async fn status(server: &Server) -> Value {
    let control = server.control();
    let apps: Value = control.get("/v1/apps").await.unwrap();
    let name = apps[0]["name"].as_str().unwrap().to_owned();
    let services: Value = control.get(&format!("/v1/apps/{name}/services")).await.unwrap();
    services[0].clone()
}

/// Polls the services JSON until `check` holds, or fails after `PATIENCE`.
pub async fn wait_for(server: &Server, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let current = status(server).await;
        if check(&current) {
            return current;
        }
        assert!(started.elapsed() < PATIENCE, "never {what}: {current:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn pid_of(body: &str) -> u32 {
    body.trim().strip_prefix("pid ").unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_request_wakes_a_stopped_service_and_idle_stops_it_again() {
    let app = python_app("serve", "scale_to_zero = { cooldown = \"200ms\" }");
    let server = app.start(&[]);
    assert_eq!(status(&server).await["state"], "standby", "nothing runs before the first request");

    let reply = get(&server.url("/hello")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let first = pid_of(&reply.body);
    let ready = status(&server).await;
    assert_eq!(ready["instances"][0]["pid"], first);
    assert!(ready["instances"][0]["boot_time_ms"].as_f64().unwrap() > 0.0);
    // Measured from its cgroup, where the host gives one.
    if ready["instances"][0]["freezer"] == "cgroup-v2" {
        assert!(ready["instances"][0]["memory_bytes"].as_u64().unwrap() > 1 << 20, "{ready:#}");
        assert!(ready["instances"][0]["cpu_ms"].as_f64().unwrap() > 0.0, "{ready:#}");
    }

    let stopped = wait_for(&server, "stopped", |s| s["state"] == "standby").await;
    assert_eq!(stopped["stops"][0]["reason"], "idle");
    assert_eq!(stopped["stops"][0]["served"], 1);
    let started = Instant::now();
    while process_state(first).is_some_and(|s| s != 'Z') {
        assert!(started.elapsed() < PATIENCE, "process {first} outlived its instance");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let reply = get(&server.url("/again")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_ne!(pid_of(&reply.body), first, "a fresh instance");
    assert_eq!(status(&server).await["starts"], 2);
}

#[tokio::test]
async fn a_paused_service_is_frozen_when_idle_and_thawed_by_a_request() {
    let app = python_app("serve", "scale_to_zero = { cooldown = \"200ms\", standby = \"pause\" }");
    let server = app.start(&[]);
    let pid = pid_of(&get(&server.url("/")).await.body);
    let paused = wait_for(&server, "paused", |s| s["state"] == "paused").await;
    let freezer = paused["instances"][0]["freezer"].as_str().unwrap().to_owned();
    // A cgroup v2 freeze completes asynchronously: `frozen 1` shows once every
    // task in the group has stopped.
    let started = Instant::now();
    while !is_frozen(pid, &freezer) {
        assert!(started.elapsed() < PATIENCE, "process {pid} is not frozen ({freezer})");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let reply = get(&server.url("/")).await;
    assert_eq!((reply.status, pid_of(&reply.body)), (StatusCode::OK, pid), "the same process, thawed");
    assert_eq!(status(&server).await["starts"], 1);
    // Thawed by a request, it goes back to standby after its cooldown.
    wait_for(&server, "paused again", |s| s["state"] == "paused").await;
    let started = Instant::now();
    while !is_frozen(pid, &freezer) {
        assert!(started.elapsed() < PATIENCE, "process {pid} is not frozen again ({freezer})");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_request_longer_than_the_cooldown_keeps_its_instance_and_the_cooldown_counts_from_its_end() {
    // `/slow` takes 300 ms, three of the instance's cooldowns.
    let app = python_app("serve", "scale_to_zero = { cooldown = \"100ms\" }");
    let server = app.start(&[]);
    let reply = get(&server.url("/slow")).await;
    assert_eq!(reply.status, StatusCode::OK, "served to its end: {}", reply.body);
    let stopped = wait_for(&server, "stopped", |s| s["state"] == "standby").await;
    let stop = &stopped["stops"][0];
    assert_eq!((stop["reason"].as_str(), stop["served"].as_u64()), (Some("idle"), Some(1)), "{stopped:#}");
    assert_eq!(stopped["starts"], 1);
}

/// Whether `pid` is frozen, asked of the mechanism that froze it.
fn is_frozen(pid: u32, freezer: &str) -> bool {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path_in = |prefix: &str| cgroups.lines().find_map(|l| l.split_once(prefix).map(|(_, p)| p.to_owned()));
    match freezer {
        "sigstop" => process_state(pid) == Some('T'),
        "cgroup-v2" => {
            let group = path_in("0::").unwrap();
            ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].iter().any(|root| {
                std::fs::read_to_string(format!("{root}{group}/cgroup.events"))
                    .is_ok_and(|events| events.lines().any(|l| l == "frozen 1"))
            })
        }
        other => panic!("unknown freezer {other}"),
    }
}

#[tokio::test]
async fn concurrent_requests_at_zero_start_at_most_max_instances() {
    let app =
        python_app("serve", "autoscale = { max = 4, target_concurrency = 10 }\nscale_to_zero = { cooldown = \"5s\" }");
    let server = app.start(&[]);
    let requests: Vec<_> = (0..200).map(|_| tokio::spawn(get_owned(server.url("/slow")))).collect();
    let mut pids = HashSet::new();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        pids.insert(pid_of(&reply.body));
    }
    let current = status(&server).await;
    let starts = current["starts"].as_u64().unwrap();
    assert!(starts <= 4, "{current:#}");
    assert!(pids.len() as u64 <= starts, "one process per started instance: {pids:?}");
    assert!(pids.len() > 1, "200 requests at 10 per instance scale out: {pids:?}");
}

#[tokio::test]
async fn an_app_that_never_gets_ready_is_refused_in_time_then_backed_off() {
    let app = python_app("never-ready", "ready_timeout = \"500ms\"\nstop_timeout = \"200ms\"");
    let server = app.start(&[]);
    let started = Instant::now();
    let reply = get(&server.url("/")).await;
    // The held request's deadline and the start's deadline are the same 500 ms:
    // whichever passes first answers, 504 (timed out) or 503 (start failed).
    assert!([StatusCode::GATEWAY_TIMEOUT, StatusCode::SERVICE_UNAVAILABLE].contains(&reply.status), "{}", reply.status);
    assert!(reply.body.contains("ready within 500ms"), "{}", reply.body);
    assert!(started.elapsed() < Duration::from_secs(10));

    let failing = wait_for(&server, "failing", |s| s["state"] == "failing").await;
    assert!(failing["failing"].as_str().unwrap().contains("not ready within"), "{failing:#}");
    let reply = get(&server.url("/")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.body);
    assert!(reply.headers.contains_key("retry-after"));
    assert!(reply.body.contains("is failing"), "{}", reply.body);
}

#[tokio::test]
async fn a_crash_fails_only_its_request_and_the_next_one_wakes_a_fresh_instance() {
    let app = python_app("serve", "");
    let server = app.start(&[]);
    let first = pid_of(&get(&server.url("/")).await.body);
    assert_eq!(get(&server.url("/crash")).await.status, StatusCode::BAD_GATEWAY);
    let exited = wait_for(&server, "gone", |s| s["instances"].as_array().unwrap().is_empty()).await;
    assert!(exited["stops"][0]["reason"].as_str().unwrap().contains("exited on its own"), "{exited:#}");
    let reply = get(&server.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_ne!(pid_of(&reply.body), first);
}

#[tokio::test]
async fn an_app_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let app = python_app("ignore-term", "scale_to_zero = { cooldown = \"100ms\" }\nstop_timeout = \"300ms\"");
    let server = app.start(&[]);
    let pid = pid_of(&get(&server.url("/")).await.body);
    wait_for(&server, "stopped", |s| s["state"] == "standby").await;
    assert!(process_state(pid).is_none_or(|s| s == 'Z'), "process {pid} still runs");
    server.wait_for_log("ignored SIGTERM");
}

#[tokio::test]
async fn nginx_sleeps_and_wakes() {
    let Some(nginx) = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists()) else {
        panic!("nginx is not installed: scripts/test.sh installs it");
    };
    let port = dormouse_testkit::free_port();
    let app = App::from_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"web\"\n\
         [[trigger.http]]\nroute = \"/...\"\nservice = \"web\"\n\
         [service.web]\ncommand = [\"{nginx}\", \"-p\", \".\", \"-c\", \"nginx.conf\", \"-e\", \"stderr\"]\nport = {port}\n\
         scale_to_zero = {{ cooldown = \"200ms\" }}\n"
    ));
    std::fs::write(
        app.path().join("nginx.conf"),
        format!(
            "daemon off;\npid nginx.pid;\nerror_log stderr;\nevents {{}}\n\
             http {{ access_log off; client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"nginx says hi\\n\"; }} }} }}\n"
        ),
    )
    .unwrap();
    let server = app.start(&[]);
    for _ in 0..2 {
        let reply = get(&server.url("/index")).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "nginx says hi\n"));
        wait_for(&server, "stopped", |s| s["state"] == "standby").await;
    }
    assert_eq!(status(&server).await["starts"], 2);
}

#[tokio::test]
async fn an_upgraded_connection_keeps_its_instance_awake_while_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = python_app("serve", "scale_to_zero = { cooldown = \"200ms\" }");
    let server = app.start(&[]);
    let mut stream = upgraded_to_echo(server.addr).await;

    for message in [&b"ping"[..], b"pong"] {
        // Four cooldowns pass with the connection open but quiet.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(status(&server).await["state"], "ready", "an open upgraded connection is activity");
        stream.write_all(message).await.unwrap();
        let mut echo = [0u8; 4];
        stream.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, message);
    }
    drop(stream);
    wait_for(&server, "stopped after the connection closed", |s| s["state"] == "standby").await;
}

#[tokio::test]
async fn up_reports_its_services_at_the_well_known_path_without_waking_them() {
    let app = python_app("ok", "scale_to_zero = { cooldown = \"300ms\" }");
    let server = app.start(&[]);
    let reply = get(&server.url("/.well-known/dormouse/services")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    let services: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(services[0]["id"], "py");
    assert_eq!(services[0]["state"], "standby");
    assert_eq!(services[0]["starts"], 0, "reading the report woke the service");
    assert_eq!(status(&server).await["starts"], 0);
}
