//! A JavaScript app built with Spin's JS SDK (`@spinframework/build-tools`,
//! `@spinframework/wasi-http-proxy` from npm), using key-value and variables,
//! run from its own, unchanged `spin.toml`.

use std::path::{Path, PathBuf};
use std::process::Command;

use hyper::StatusCode;

use crate::support::{App, call, get};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/counter-js").canonicalize().unwrap()
}

/// Builds the example with its own build command unless a build newer than
/// its source is there already (scripts/test.sh builds it first).
fn built_component() -> PathBuf {
    let dir = example_dir();
    let component = dir.join("dist/counter.wasm");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let sources = ["src/index.js", "package.json", "wit/spin.wit"].map(|source| modified(&dir.join(source)));
    let fresh =
        modified(&component).is_some_and(|built| sources.iter().all(|source| source.is_some_and(|s| s <= built)));
    if !fresh {
        let status = Command::new("sh")
            .args(["-c", "npm install --no-audit --no-fund && npm run build"])
            .current_dir(&dir)
            .status()
            .expect("npm is installed (Node.js comes with the machine)");
        assert!(status.success(), "building examples/counter-js failed");
    }
    assert!(component.exists(), "the build wrote no {}", component.display());
    component
}

#[tokio::test]
async fn a_spin_js_sdk_app_runs_unchanged_with_key_value_and_variables() {
    let component = built_component();
    // The app as Spin would deploy it: its manifest, byte for byte, and its build.
    let manifest = std::fs::read_to_string(example_dir().join("spin.toml")).unwrap();
    let app = App::from_manifest(&manifest);
    std::fs::create_dir_all(app.path().join("dist")).unwrap();
    std::fs::copy(&component, app.path().join("dist/counter.wasm")).unwrap();
    // A 12 MB component takes seconds to compile: keep the code between runs.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("counter-js-cache");
    let cache_arg = ["--cache-dir", cache.to_str().unwrap()];

    let server = app.start_with_env(&cache_arg, &[("SPIN_VARIABLE_GREETING", "Howdy")]);
    let reply = get(&server.url("/hello")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "Howdy from JavaScript!\n"));
    assert_eq!(call("POST", &server.url("/count/visits"), "").await.body, "1\n");
    assert_eq!(call("POST", &server.url("/count/visits"), "").await.body, "2\n");
    assert_eq!(call("POST", &server.url("/count/other"), "").await.body, "1\n");
    assert_eq!(get(&server.url("/counters")).await.body, "other=1\nvisits=2\n");
    server.signal("TERM");
    assert!(server.wait().success());

    // Defaults apply without the environment, and the counts were kept.
    let server = app.start(&cache_arg);
    assert_eq!(get(&server.url("/hello")).await.body, "Hello from JavaScript!\n");
    assert_eq!(call("POST", &server.url("/count/visits"), "").await.body, "3\n");
}
