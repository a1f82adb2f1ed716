//! A component's compiled code is in memory only while it is used: loaded
//! from the compile cache by its first request, let go after it has had none
//! for `unload_after`, and loaded again by the next.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dormouse_wasm_host::{ComponentPre, ComponentSpec, HandleError, Host, HostConfig};
use http_body_util::{BodyExt as _, Full};

fn guest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/wasm").join(name)
}

fn load(host: &Host, source: &Path) -> ComponentPre {
    let id = source.file_stem().unwrap().to_str().unwrap().to_owned();
    let spec = ComponentSpec { id, source: source.to_owned(), ..ComponentSpec::default() };
    host.load(&spec, &|_| {}).unwrap()
}

async fn get(component: &ComponentPre) -> Result<String, HandleError> {
    let request = http::Request::get("http://localhost/hello").body(Full::new(Bytes::new())).unwrap();
    let response = component.handle(request).await?;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("the body streams").to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn code_is_loaded_by_the_first_request_and_let_go_when_idle() {
    let cache = tempfile::tempdir().unwrap();
    let config = HostConfig {
        cache_dir: Some(cache.path().to_owned()),
        unload_after: Duration::from_millis(300),
        ..HostConfig::default()
    };
    let host = Host::new(config).unwrap();
    let hello = load(&host, &guest("hello.wasm"));
    assert!(!hello.code_loaded(), "checked at start, then let go until a request comes");

    assert_eq!(get(&hello).await.unwrap(), "Hello from dormouse!\n");
    assert!(hello.code_loaded());

    // Idle past `unload_after` (counted in whole seconds): let go.
    let idle = Instant::now();
    while hello.code_loaded() {
        assert!(idle.elapsed() < Duration::from_secs(5), "still loaded after {:?} idle", idle.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(idle.elapsed() >= Duration::from_millis(300), "let go after only {:?}", idle.elapsed());

    // The next request loads it again.
    assert_eq!(get(&hello).await.unwrap(), "Hello from dormouse!\n");
    assert!(hello.code_loaded());
}

#[tokio::test]
async fn without_a_compile_cache_the_code_stays_loaded() {
    let config = HostConfig { unload_after: Duration::from_millis(1), ..HostConfig::default() };
    let host = Host::new(config).unwrap();
    let hello = load(&host, &guest("hello.wasm"));
    assert!(hello.code_loaded(), "nowhere to load it from again");
    assert_eq!(get(&hello).await.unwrap(), "Hello from dormouse!\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(hello.code_loaded());
}

#[tokio::test]
async fn a_lost_cache_entry_is_compiled_again_only_from_the_bytes_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let source = dir.path().join("app.wasm");
    std::fs::copy(guest("hello.wasm"), &source).unwrap();
    let host = Host::new(HostConfig { cache_dir: Some(cache.clone()), ..HostConfig::default() }).unwrap();

    // The entry is gone (a cleaned cache), the source unchanged: compiled
    // again from it.
    let first = load(&host, &source);
    std::fs::remove_dir_all(&cache).unwrap();
    assert_eq!(get(&first).await.unwrap(), "Hello from dormouse!\n");

    // The entry is gone and the source replaced: the new bytes were never
    // checked, so the request fails and says why.
    let host = Host::new(HostConfig { cache_dir: Some(cache.clone()), ..HostConfig::default() }).unwrap();
    let second = load(&host, &source);
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::copy(guest("slow.wasm"), &source).unwrap();
    let error = get(&second).await.unwrap_err();
    let HandleError::Load(why) = &error else { panic!("not a load error: {error}") };
    assert!(why.contains("app.wasm") && why.contains("changed since the app started"), "{why}");
    assert!(!second.code_loaded());
}

#[tokio::test]
async fn copies_share_their_code_but_each_compiles_it_again_from_its_own_source() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let (a, b) = (dir.path().join("a.wasm"), dir.path().join("b.wasm"));
    std::fs::copy(guest("hello.wasm"), &a).unwrap();
    std::fs::copy(guest("hello.wasm"), &b).unwrap();
    let host = Host::new(HostConfig { cache_dir: Some(cache.clone()), ..HostConfig::default() }).unwrap();
    let (_a, b_component) = (load(&host, &a), load(&host, &b));
    // The first copy's source and the cache entry are gone: the second
    // still has the bytes.
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_dir_all(&cache).unwrap();
    assert_eq!(get(&b_component).await.unwrap(), "Hello from dormouse!\n");
}

#[tokio::test]
async fn code_whose_cache_entry_cannot_be_written_stays_loaded() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the cache directory should be: nothing can be written.
    let cache = dir.path().join("cache");
    std::fs::write(&cache, "not a directory").unwrap();
    let config = HostConfig { cache_dir: Some(cache), unload_after: Duration::from_millis(1), ..HostConfig::default() };
    let host = Host::new(config).unwrap();
    let hello = load(&host, &guest("hello.wasm"));
    assert!(hello.code_loaded(), "loading it again would mean compiling it again");
    assert_eq!(get(&hello).await.unwrap(), "Hello from dormouse!\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(hello.code_loaded());
}
