//! Waiting in process: a request that stops waiting for a waking service
//! (its client hung up) gives its place among the waiting back, so impatient
//! clients can never wedge a service at its wake buffer; requests held at a
//! full instance get its room in the order they came, and one that leaves
//! as its turn comes passes the turn on.

use std::sync::Arc;
use std::time::Duration;

use dormouse_manifest::model::{Service, Standby};
use dormouse_supervisor::{Lease, Processes, ServiceHandle, Supervisor, WAKE_BUFFER, WakeError};

/// A service that never listens: every request for it waits.
fn never_ready() -> Service {
    Service {
        id: "s".into(),
        command: vec!["sleep".into(), "30".into()],
        environment: Default::default(),
        workdir: std::env::temp_dir(),
        port: None,
        ready_path: None,
        cooldown: Duration::from_secs(1),
        standby: Standby::Stop,
        min: 0,
        max: 1,
        target_concurrency: 10,
        ready_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(1),
        memory: dormouse_manifest::DEFAULT_SERVICE_MEMORY,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_waits_give_their_places_back() {
    let processes = Processes::new(None, true, None);
    let supervisor = Supervisor::new("app", [never_ready()], &processes, None, None);
    let service = supervisor.service("s").unwrap().clone();

    // More waiters than the buffer holds, all dropped mid-wait at once.
    let waits: Vec<_> = (0..WAKE_BUFFER + 20).map(|_| Box::pin(service.acquire())).collect();
    let all = futures_like_join(waits);
    assert!(tokio::time::timeout(Duration::from_millis(200), all).await.is_err(), "nothing can be ready");
    assert_eq!(service.status().waiting, 0, "every dropped wait gave its place back");

    // So the next request is held, not refused as if the buffer were full.
    let held = tokio::time::timeout(Duration::from_millis(100), service.acquire()).await;
    assert!(
        !matches!(held, Ok(Err(WakeError::Overloaded { .. }))),
        "refused after impatient clients left: {:?}",
        held.map(|r| r.map(drop))
    );
    supervisor.shutdown().await;
    processes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_for_an_app_that_stops_is_refused_at_once() {
    let (processes, supervisor, service) = supervised("stopping", never_ready());
    let held = tokio::spawn({
        let service = service.clone();
        async move { service.acquire().await.map(drop) }
    });
    until_waiting(&service, 1).await;
    let started = std::time::Instant::now();
    supervisor.stop("its app was removed").await;
    let refused = tokio::time::timeout(Duration::from_secs(5), held).await.expect("refused before its ready timeout");
    match refused.unwrap() {
        Err(WakeError::Stopping { reason, .. }) => assert_eq!(reason, "its app was removed"),
        other => panic!("expected a refusal for the stop, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(service.status().waiting, 0, "its place was given back");
    // And so is every request that comes after.
    assert!(matches!(service.acquire().await, Err(WakeError::Stopping { .. })));
    processes.shutdown().await;
}

/// A service that listens at once (Python's http.server on the `PORT`
/// dormouse picks) and takes one request at a time.
fn one_at_a_time() -> Service {
    let listen = "exec python3 -m http.server --bind 127.0.0.1 \"$PORT\"";
    Service { command: vec!["sh".into(), "-c".into(), listen.into()], target_concurrency: 1, ..never_ready() }
}

/// `service` supervised as `app` (a name of its own per test: tests run at
/// once, and an app's processes are named by it), with no cgroups (those of
/// two supervisors in one process share names).
fn supervised(app: &str, service: Service) -> (Arc<Processes>, Supervisor, Arc<ServiceHandle>) {
    let processes = Processes::new(None, false, None);
    let supervisor = Supervisor::new(app, [service], &processes, None, None);
    let service = supervisor.service("s").unwrap().clone();
    (processes, supervisor, service)
}

/// Starts `one_at_a_time` as `app` and holds its one place.
async fn started_and_full(app: &str) -> (Arc<Processes>, Supervisor, Arc<ServiceHandle>, Lease) {
    let (processes, supervisor, service) = supervised(app, one_at_a_time());
    let first = tokio::time::timeout(Duration::from_secs(20), service.acquire()).await.expect("ready in 20 s").unwrap();
    (processes, supervisor, service, first)
}

/// Waits until `n` requests are held.
async fn until_waiting(service: &ServiceHandle, n: usize) {
    while service.status().waiting != n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Five requests for `service`, held one after another (each in its place
/// before the next comes), each holding its lease 10 ms once it has one:
/// their numbers (1 to 5) arrive on the receiver in the order served.
async fn hold_five(service: &Arc<ServiceHandle>) -> tokio::sync::mpsc::UnboundedReceiver<usize> {
    let (served, order) = tokio::sync::mpsc::unbounded_channel();
    for n in 1..=5 {
        let (waiter, served) = (service.clone(), served.clone());
        tokio::spawn(async move {
            let lease = waiter.acquire().await.unwrap();
            served.send(n).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(lease);
        });
        until_waiting(service, n).await;
    }
    order
}

/// The five numbers `hold_five` sends, in order, within 20 s.
async fn served_order(mut order: tokio::sync::mpsc::UnboundedReceiver<usize>) -> Vec<usize> {
    let mut came = Vec::new();
    while came.len() < 5 {
        came.push(tokio::time::timeout(Duration::from_secs(20), order.recv()).await.expect("served in 20 s").unwrap());
    }
    came
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_at_a_full_instance_get_its_room_in_the_order_they_came() {
    let (processes, supervisor, service, first) = started_and_full("in-order").await;
    let order = hold_five(&service).await;
    drop(first);
    let came = served_order(order).await;
    assert_eq!(came, [1, 2, 3, 4, 5], "first come, first served");
    supervisor.shutdown().await;
    processes.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_while_an_instance_starts_get_its_room_in_the_order_they_came() {
    let mut slow = one_at_a_time();
    slow.command[2] = format!("sleep 0.5; {}", slow.command[2]);
    let (processes, supervisor, service) = supervised("cold-order", slow);
    let came = served_order(hold_five(&service).await).await;
    assert_eq!(came, [1, 2, 3, 4, 5], "first come, first served, from a cold start too");
    supervisor.shutdown().await;
    processes.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_that_leaves_as_its_turn_comes_passes_the_turn_on() {
    let (processes, supervisor, service, first) = started_and_full("passes-on").await;
    let leaving = tokio::spawn({
        let service = service.clone();
        async move { service.acquire().await.map(drop) }
    });
    until_waiting(&service, 1).await;
    let next = tokio::spawn({
        let service = service.clone();
        async move { service.acquire().await }
    });
    until_waiting(&service, 2).await;
    // The place goes to the first waiter, which leaves before it runs (one
    // thread: it cannot run before this test yields).
    drop(first);
    leaving.abort();
    let lease = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("the turn passed on: served long before the ready timeout")
        .unwrap();
    assert!(lease.is_ok());
    assert_eq!(service.status().waiting, 0);
    drop(lease);
    supervisor.shutdown().await;
    processes.shutdown().await;
}

/// Polls every future until all are done (never, here), without a crate for it.
async fn futures_like_join<F: std::future::Future + Unpin>(mut futures: Vec<F>) {
    std::future::poll_fn(|cx| {
        futures.retain_mut(|future| std::pin::Pin::new(future).poll(cx).is_pending());
        if futures.is_empty() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await
}
