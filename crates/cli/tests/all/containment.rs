//! Services are contained: nothing an instance starts outlives it or
//! dormouse, requests reach only processes dormouse started, held requests
//! give their place back when their client leaves, and every signal that
//! ends dormouse drains first.

use std::time::{Duration, Instant};

use hyper::StatusCode;

use crate::services::{pid_of, python_app, status, wait_for};
use crate::support::{get, get_owned, process_state, upgraded_to_echo, wait_gone};

#[tokio::test]
async fn services_die_with_a_dormouse_killed_outright() {
    let app = python_app("serve", "scale_to_zero = { cooldown = \"60s\" }");
    let mut server = app.start(&[]);
    let pid = pid_of(&get(&server.url("/")).await.body);
    server.kill_outright();
    // Reaped too: the process helper is its parent, not PID 1.
    let started = Instant::now();
    while process_state(pid).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "service {pid} outlived dormouse: {:?}",
            process_state(pid)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn processes_that_leave_the_process_group_stop_with_their_instance() {
    let pidfile = tempfile::NamedTempFile::new().unwrap();
    let extra = format!(
        "environment = {{ ESCAPEE_PIDFILE = \"{}\" }}\nscale_to_zero = {{ cooldown = \"200ms\" }}",
        pidfile.path().display()
    );
    let app = python_app("escapee", &extra);
    let server = app.start(&[]);
    assert_eq!(get(&server.url("/")).await.status, StatusCode::OK);
    let escapee: u32 = std::fs::read_to_string(pidfile.path()).unwrap().trim().parse().unwrap();
    assert!(process_state(escapee).is_some());
    wait_for(&server, "stopped", |s| s["state"] == "standby").await;
    wait_gone(escapee, "a process in a session of its own");
}

#[tokio::test]
async fn a_leader_that_exits_takes_its_children_along() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/app.py");
    let app = crate::support::App::from_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"svc\"\n[[trigger.http]]\nroute = \"/...\"\nservice = \"sh\"\n\
         [service.sh]\ncommand = [\"sh\", \"-c\", \"python3 {} & sleep 1; exit 3\"]\nscale_to_zero = {{ cooldown = \"60s\" }}\n",
        script.display()
    ));
    let server = app.start(&[]);
    let child = pid_of(&get(&server.url("/")).await.body);
    let stopped =
        wait_for(&server, "the leader's exit noticed", |s| s["stops"].as_array().is_some_and(|s| !s.is_empty())).await;
    assert!(stopped["stops"][0]["reason"].as_str().unwrap().contains("exited on its own"), "{stopped:#}");
    wait_gone(child, "the child of an exited leader");
}

#[tokio::test]
async fn a_fixed_port_held_by_another_process_is_never_proxied_to() {
    let impostor = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = impostor.local_addr().unwrap().port();
    let app = python_app("serve", &format!("port = {port}"));
    let server = app.start(&[]);
    let reply = get(&server.url("/")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.body);
    assert!(reply.body.contains(&format!("port {port} is already in use by another process")), "{}", reply.body);
    assert_eq!(status(&server).await["state"], "failing");
}

#[tokio::test]
async fn held_requests_whose_clients_leave_give_their_places_back() {
    let app = python_app("never-ready", "");
    let server = app.start(&[]);
    // More clients than the wake buffer (100 a service instance) come and go.
    for _ in 0..2 {
        let mut clients = Vec::new();
        for _ in 0..120 {
            use std::io::Write as _;
            let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            clients.push(stream);
        }
        wait_for(&server, "holding requests", |s| s["waiting"].as_u64() > Some(0)).await;
        drop(clients);
        wait_for(&server, "every place given back", |s| s["waiting"] == 0).await;
    }
}

#[tokio::test]
async fn sighup_drains_and_leaves_no_service_behind() {
    let app = python_app("serve", "scale_to_zero = { cooldown = \"60s\" }");
    let server = app.start(&[]);
    let pid = pid_of(&get(&server.url("/")).await.body);
    server.signal("HUP");
    let status = server.wait();
    assert!(status.success(), "{status:?}");
    wait_gone(pid, "a service after SIGHUP");
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let app = python_app("serve", "scale_to_zero = { cooldown = \"60s\" }");
    let server = app.start(&["--drain-timeout", "60s"]);
    let pid = pid_of(&get(&server.url("/")).await.body);
    // A request that would hold the drain for a minute.
    let hanging = tokio::spawn(get_owned(server.url("/hang")));
    wait_for(&server, "the request in flight", |s| s["instances"][0]["in_flight"] == 1).await;
    server.signal("TERM");
    server.wait_for_log("again to exit at once");
    let started = Instant::now();
    server.signal("INT");
    let status = server.wait();
    assert!(!status.success(), "a cut drain is not a clean exit");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    wait_gone(pid, "a service after a second signal");
    hanging.abort();
}

#[tokio::test]
async fn a_drain_cut_short_answers_every_request_still_unanswered_with_503() {
    let app = python_app(
        "serve",
        "scale_to_zero = { cooldown = \"60s\" }\nautoscale = { min = 0, max = 1, target_concurrency = 1 }",
    );
    let server = app.start(&["--drain-timeout", "1s"]);
    assert_eq!(get(&server.url("/")).await.status, StatusCode::OK);
    // One request in flight that the app never answers, and one held behind
    // it for the instance's only place.
    let in_flight = tokio::spawn(get_owned(server.url("/hang")));
    wait_for(&server, "the request in flight", |s| s["instances"][0]["in_flight"] == 1).await;
    let held = tokio::spawn(get_owned(server.url("/")));
    wait_for(&server, "the request held", |s| s["waiting"] == 1).await;
    let started = Instant::now();
    server.signal("TERM");
    for (what, reply) in [("in flight", in_flight), ("held", held)] {
        let reply = reply.await.unwrap_or_else(|error| panic!("the request {what} got no answer: {error}"));
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {}", reply.body);
        assert!(reply.body.contains("drain timeout passed"), "{what}: {}", reply.body);
        assert_eq!(reply.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"), "{what}");
    }
    let answered = started.elapsed();
    assert!(answered >= Duration::from_secs(1), "answered before the drain timeout: {answered:?}");
    let status = server.wait();
    assert!(!status.success(), "a cut drain is not a clean exit: {status:?}");
}

#[tokio::test]
async fn the_drain_waits_for_upgraded_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = python_app("serve", "");
    let server = app.start(&["--drain-timeout", "60s"]);
    let mut stream = upgraded_to_echo(server.addr).await;

    server.signal("TERM");
    server.wait_for_log("shutting down");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(process_state(server.pid()).is_some_and(|state| state != 'Z'), "exited with an upgraded connection open");
    // The connection still works while the drain waits for it.
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    drop(stream);
    let status = server.wait();
    assert!(status.success(), "the drain ended when the connection did: {status:?}");
}

#[tokio::test]
async fn a_fixed_port_instance_waits_for_its_predecessor_to_be_reaped() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The app ignores SIGTERM: each stop takes the whole stop timeout.
    let app = python_app(
        "ignore-term",
        &format!("port = {port}\nstop_timeout = \"1s\"\nscale_to_zero = {{ cooldown = \"100ms\" }}"),
    );
    let server = app.start(&[]);
    let first = pid_of(&get(&server.url("/")).await.body);
    wait_for(&server, "stopping", |s| s["state"] == "stopping").await;
    // A request now must not start a second process on the port (it would
    // fail to bind): it waits until the first is reaped, then wakes a new one.
    let reply = get(&server.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let second = pid_of(&reply.body);
    assert_ne!(second, first);
    assert!(process_state(first).is_none_or(|state| state == 'Z'), "two processes on one port");
    assert_eq!(status(&server).await["failing"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_killed_process_helper_is_started_again_and_its_orphans_killed() {
    let app = python_app("serve", "scale_to_zero = { cooldown = \"60s\" }");
    let server = app.start(&[]);
    let first = pid_of(&get(&server.url("/")).await.body);
    let helper = std::process::Command::new("pgrep")
        .args(["-P", &server.pid().to_string(), "-f", "__process-helper"])
        .output()
        .unwrap();
    let helper: u32 = String::from_utf8_lossy(&helper.stdout).trim().parse().expect("one process helper");
    assert!(std::process::Command::new("kill").args(["-9", &helper.to_string()]).status().unwrap().success());
    // Its service, orphaned, is killed through its cgroup ...
    wait_gone(first, "a service whose helper was killed");
    wait_for(&server, "the orphan's instance gone", |s| s["instances"].as_array().is_some_and(Vec::is_empty)).await;
    // ... and the next request starts a new one under a new helper.
    let reply = get(&server.url("/")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_ne!(pid_of(&reply.body), first);
}

#[test]
fn many_idle_services_keep_a_bounded_number_of_waiting_processes() {
    // Ten services, none ever woken: stubs are kept for eight of them, two
    // each, and nothing else runs.
    let mut manifest = String::from("spin_manifest_version = 2\n[application]\nname = \"many\"\n");
    for i in 0..10 {
        manifest.push_str(&format!(
            "[[trigger.http]]\nroute = \"/s{i}/...\"\nservice = \"s{i}\"\n[service.s{i}]\ncommand = [\"sleep\", \"300\"]\n"
        ));
    }
    let app = crate::support::App::from_manifest(&manifest);
    let server = app.start(&[]);
    let children = |pid: u32| -> Vec<u32> {
        let output = std::process::Command::new("pgrep").args(["-P", &pid.to_string()]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).lines().filter_map(|line| line.parse().ok()).collect()
    };
    let helper = children(server.pid())[0];
    let started = Instant::now();
    let mut waiting = children(helper).len();
    while waiting < 16 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
        waiting = children(helper).len();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(children(helper).len(), 16, "two waiting shells for each of the 8 most recent services");
}
