//! Cancellation in process: a request dropped at any await gives back what
//! it took (a place in the instance queue, an instance slot), and a guest
//! whose response body nobody reads any more is stopped.

use std::time::Duration;

use bytes::Bytes;
use dormouse_wasm_host::{ComponentPre, ComponentSpec, HandleError, Host, HostConfig};
use http_body_util::Full;

fn slow_guest(host: &Host) -> ComponentPre {
    let guests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/wasm");
    let spec = ComponentSpec { id: "slow".into(), source: guests.join("slow.wasm"), ..ComponentSpec::default() };
    host.load(&spec, &|_| {}).unwrap()
}

fn request(uri: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_requests_give_back_their_queue_place_and_their_instance() {
    let host = Host::new(HostConfig { max_instances: 1, queue_limit: 1, ..HostConfig::default() }).unwrap();
    let slow = slow_guest(&host);

    // A streams for 10 s, holding the only instance.
    let streaming = slow.handle(request("http://localhost/slow?chunks=40&ms=250")).await.unwrap();

    // B waits in the queue, and its client leaves: the future is dropped.
    let waited = tokio::time::timeout(Duration::from_millis(100), slow.handle(request("http://localhost/slow"))).await;
    assert!(waited.is_err(), "B should still have been waiting");

    // Had B kept its place, C would be refused at once (queue of 1): it waits.
    let waited = tokio::time::timeout(Duration::from_millis(100), slow.handle(request("http://localhost/slow"))).await;
    assert!(waited.is_err(), "C was refused instead of queued: {:?}", waited.map(|r| r.map(drop)));

    // A's client leaves mid-stream: its guest is stopped and the instance
    // freed, long before the stream's 10 s.
    drop(streaming);
    let started = std::time::Instant::now();
    let next =
        tokio::time::timeout(Duration::from_secs(2), slow.handle(request("http://localhost/slow?chunks=1&ms=1")))
            .await
            .expect("the instance was not freed within 2 s of the client leaving");
    assert!(!matches!(next, Err(HandleError::Overloaded(_))), "{:?}", next.map(drop));
    assert!(started.elapsed() < Duration::from_millis(500), "freed after {:?}", started.elapsed());
}
