//! Cancellation in process: a request that stops waiting for a waking
//! service (its client hung up) gives its place among the waiting back, so
//! impatient clients can never wedge a service at its wake buffer.

use std::time::Duration;

use dormouse_manifest::model::{Service, Standby};
use dormouse_supervisor::{Processes, Supervisor, WAKE_BUFFER, WakeError};

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

/// Polls every future until all are done (never, here), without a crate for it.
async fn futures_like_join<F: std::future::Future + Unpin>(mut futures: Vec<F>) {
    std::future::poll_fn(|cx| {
        futures.retain_mut(|future| std::pin::Pin::new(future).poll(cx).is_pending());
        if futures.is_empty() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await
}
