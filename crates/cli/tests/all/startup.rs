//! Strict start-up checks: what cannot work is refused before dormouse
//! serves, at once, with an error that names the file and what is wrong.

use crate::support::{App, guest};

const ONE_COMPONENT: &str = "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n";

#[test]
fn a_component_source_that_cannot_be_a_component_is_refused_at_start() {
    let app = App::from_manifest(ONE_COMPONENT);
    let source = app.path().join("a.wasm");

    std::fs::write(&source, b"not wasm").unwrap();
    let stderr = app.fails_to_start(&[]);
    assert!(stderr.contains("component `a`") && stderr.contains("is not a WebAssembly binary"), "{stderr}");

    std::fs::write(&source, b"").unwrap();
    let stderr = app.fails_to_start(&[]);
    assert!(stderr.contains("a.wasm` is empty"), "{stderr}");

    // A core module is WebAssembly, but not a component.
    std::fs::write(&source, b"\0asm\x01\0\0\0").unwrap();
    let stderr = app.fails_to_start(&[]);
    assert!(stderr.contains("is a core WebAssembly module, not a component"), "{stderr}");

    std::fs::remove_file(&source).unwrap();
    std::fs::create_dir(&source).unwrap();
    let stderr = app.fails_to_start(&[]);
    assert!(stderr.contains("a.wasm` is a directory, not a regular file"), "{stderr}");

    // A named pipe would block the first read forever.
    std::fs::remove_dir(&source).unwrap();
    let status = std::process::Command::new("mkfifo").arg(&source).status().unwrap();
    assert!(status.success());
    let stderr = app.fails_to_start(&[]);
    assert!(stderr.contains("a.wasm` is a named pipe (FIFO), not a regular file"), "{stderr}");
}

#[test]
fn a_component_that_is_not_an_http_handler_is_refused_at_start() {
    let app = App::from_manifest(ONE_COMPONENT);
    // A real component, but one that exports no HTTP handler: the files guest
    // with its export renamed would do; a service-less `wasi:cli` command is
    // what a user most often tries. The 0.3 trap guest exports a handler, so
    // use a component that only imports: the empty component.
    std::fs::write(app.path().join("a.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
    let stderr = app.fails_to_start(&[]);
    assert!(stderr.contains("is not a wasi:http/proxy component"), "{stderr}");
}

#[test]
fn file_sources_outside_the_app_directory_are_refused_with_their_place() {
    let files = guest("files");
    for source in ["../outside", "/etc"] {
        let manifest = format!(
            "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n\
             [component.a]\nsource = \"{}\"\nfiles = [{{ source = \"{source}\", destination = \"/o\" }}]\n",
            files.display()
        );
        let app = App::from_manifest(&manifest);
        let stderr = app.fails_to_start(&[]);
        let expected =
            format!("spin.toml:9:10: file source `{source}` (component `a`) must stay inside the app directory");
        assert!(stderr.contains(&expected), "{stderr}");
    }
}

#[test]
fn a_corrupt_key_value_file_fails_at_once_naming_it() {
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n\
         [component.a]\nsource = \"{}\"\nkey_value_stores = [\"default\"]\n",
        guest("kv").display()
    );
    let app = App::from_manifest(&manifest);
    let store = app.path().join(".dormouse/sqlite_key_value.db");
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    std::fs::write(&store, vec![0x5a; 8192]).unwrap();
    let started = std::time::Instant::now();
    let stderr = app.fails_to_start(&[]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(stderr.contains("sqlite_key_value.db") && stderr.contains("not a database"), "{stderr}");
    assert_eq!(stderr.matches("ERROR").count(), 0, "one error, not a retry log: {stderr}");
}

#[test]
fn a_file_source_that_links_out_of_the_app_directory_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "TOP-SECRET").unwrap();
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n\
         [component.a]\nsource = \"{}\"\nfiles = [{{ source = \"link\", destination = \"/o\" }}]\n",
        guest("files").display()
    );
    let app = App::from_manifest(&manifest);
    std::os::unix::fs::symlink(outside.path(), app.path().join("link")).unwrap();
    let stderr = app.fails_to_start(&[]);
    assert!(
        stderr.contains(
            "spin.toml:9:10: file source `link` (component `a`) is a link that leads outside the app directory"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn mounting_the_app_directory_itself_stages_it_once() {
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/files/...\"\ncomponent = \"a\"\n\
         [component.a]\nsource = \"{}\"\nfiles = [{{ source = \".\", destination = \"/\" }}]\n",
        guest("files").display()
    );
    let app = App::from_manifest(&manifest);
    app.write("www/index.html", "home");
    app.write(".dormouse/marker", "state");
    let server = app.start(&[]);
    let reply = crate::support::get(&server.url("/files/www/index.html")).await;
    assert_eq!(reply.body, "home");
    // dormouse's own state (staged files, compile cache) is not mounted.
    let reply = crate::support::get(&server.url("/files/.dormouse/marker")).await;
    assert_eq!(reply.status, hyper::StatusCode::NOT_FOUND, "{}", reply.body);
}

#[test]
fn a_manifest_or_runtime_config_that_is_a_named_pipe_is_refused_at_once() {
    let app = App::from_manifest(ONE_COMPONENT);
    let fifo = app.path().join("pipe.toml");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let started = std::time::Instant::now();
    let mut child = crate::support::dormouse()
        .args(["up", "--listen", "127.0.0.1:0", "--from"])
        .arg(&fifo)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("start-up hangs on a manifest that is a named pipe");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("not a regular file"), "{stderr}");
    std::fs::write(app.path().join("a.wasm"), std::fs::read(guest("hello")).unwrap()).unwrap();
    let stderr = app.fails_to_start(&["--runtime-config-file", fifo.to_str().unwrap()]);
    assert!(stderr.contains("pipe.toml") && stderr.contains("not a regular file"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn dormouse_state_is_never_mounted_even_through_a_link() {
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/files/...\"\ncomponent = \"a\"\n\
         [component.a]\nsource = \"{}\"\nfiles = [\"d/dm/*\", {{ source = \".\", destination = \"/all\" }}]\n",
        guest("files").display()
    );
    let app = App::from_manifest(&manifest);
    app.write(".dormouse/marker", "state");
    app.write("d/ok.txt", "ok");
    std::os::unix::fs::symlink("../.dormouse", app.path().join("d/dm")).unwrap();
    let server = app.start(&[]);
    assert_eq!(crate::support::get(&server.url("/files/all/d/ok.txt")).await.body, "ok");
    for path in ["/files/d/dm/marker", "/files/all/d/dm/marker", "/files/all/.dormouse/marker"] {
        let reply = crate::support::get(&server.url(path)).await;
        assert_eq!(reply.status, hyper::StatusCode::NOT_FOUND, "{path}: {}", reply.body);
    }

    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n\
         [component.a]\nsource = \"{}\"\nfiles = [{{ source = \".dormouse\", destination = \"/s\" }}]\n",
        guest("files").display()
    );
    let app = App::from_manifest(&manifest);
    app.write(".dormouse/marker", "state");
    let stderr = app.fails_to_start(&[]);
    assert!(stderr.contains("is dormouse's own state"), "{stderr}");
}
