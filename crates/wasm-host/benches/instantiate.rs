//! Instantiate + handle + teardown of the hello guest through the host's own
//! API (no sockets): one request per iteration, from a fresh `Store` to the
//! end of the response body and the instance back in the pool.
//!
//!     cargo bench -p dormouse-wasm-host --bench instantiate

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use dormouse_wasm_host::{ComponentSpec, Host, HostConfig};
use http_body_util::{BodyExt, Full};

fn instantiate(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let guests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/wasm");
    let mut group = c.benchmark_group("instantiate+handle+teardown");
    // The 0.2 hello with and without the pooling allocator, and the same
    // greeting from a wasi:http 0.3 guest (on the engine with concurrency
    // support).
    let cases = [
        ("pooling", "hello.wasm", true, &b"Hello from dormouse!\n"[..]),
        ("no-pooling", "hello.wasm", false, &b"Hello from dormouse!\n"[..]),
        ("wasi-0.3-pooling", "hello-p3.wasm", true, &b"Hello from a WASI 0.3 component!\n"[..]),
    ];
    for (name, guest, pooling, greeting) in cases {
        let host = Host::new(HostConfig { pooling, max_instances: 100, ..HostConfig::default() }).unwrap();
        let spec = ComponentSpec { id: "hello".into(), source: guests.join(guest), ..ComponentSpec::default() };
        let pre = host.load(&spec, &|_| {}).unwrap();
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let request = http::Request::get("http://localhost/").body(Full::new(Bytes::new())).unwrap();
                let response = pre.handle(request).await.unwrap();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], greeting);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, instantiate);
criterion_main!(benches);
