//! Files mounted into components, read-only, and nothing else: the `files`
//! guest is a naive static file server that decodes `%XX` and opens whatever
//! path it is given below `/`.

use hyper::StatusCode;

use crate::support::{App, call, get, get_owned, guest};

/// An app serving `www/` at `/` through the `files` guest, with a secret next
/// to `www/` and another outside the app, both linked from inside `www/`.
fn files_app(files: &str) -> (App, tempfile::TempDir) {
    let app = App::from_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"files\"\n\
         [[trigger.http]]\nroute = \"/files/...\"\ncomponent = \"files\"\n\
         [component.files]\nsource = \"{}\"\n{files}\n",
        guest("files").display()
    ));
    app.write("www/index.html", "<h1>home</h1>");
    app.write("www/docs/guide.txt", "the guide");
    app.write("www/notes.bak", "old notes");
    app.write("assets/site.css", "body {}");
    app.write("assets/other.txt", "not matched");
    app.write("secret.txt", "app secret");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("outside.txt"), "outside secret").unwrap();
    std::os::unix::fs::symlink(app.path().join("secret.txt"), app.path().join("www/escape.txt")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("outside.txt"), app.path().join("www/far.txt")).unwrap();
    std::os::unix::fs::symlink(app.path().join("www/docs"), app.path().join("www/manual")).unwrap();
    (app, outside)
}

#[tokio::test]
async fn mounted_files_are_served_and_nothing_outside_them() {
    let (app, _outside) = files_app(
        "files = [{ source = \"www\", destination = \"/\" }, \"assets/*.css\"]\nexclude_files = [\"**/*.bak\"]",
    );
    let server = app.start(&[]);
    let base = server.url("/files/");
    let fetch = |path: &str| get_owned(format!("{base}{path}"));

    let reply = fetch("index.html").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "<h1>home</h1>"));
    assert_eq!(fetch("docs/guide.txt").await.body, "the guide");
    assert_eq!(fetch("manual/guide.txt").await.body, "the guide", "a link that stays inside the mount works");
    assert_eq!(fetch("assets/site.css").await.body, "body {}");
    assert_eq!(fetch("assets/other.txt").await.status, StatusCode::NOT_FOUND, "not matched by the glob");
    assert_eq!(fetch("notes.bak").await.status, StatusCode::NOT_FOUND, "excluded");
    assert_eq!(fetch("spin.toml").await.status, StatusCode::NOT_FOUND, "the app directory is not mounted");

    // Escapes: `..` (plain and percent-encoded) and links out of the mount.
    for path in [
        "../secret.txt",
        "%2e%2e/secret.txt",
        "%2E%2E%2Fsecret.txt",
        "docs/%2e%2e/%2e%2e/secret.txt",
        "..%2f..%2f..%2f..%2f..%2fetc/passwd",
        "escape.txt",
        "far.txt",
        "%2fetc%2fpasswd",
    ] {
        let reply = fetch(path).await;
        assert!(
            reply.status == StatusCode::NOT_FOUND || reply.status == StatusCode::FORBIDDEN,
            "{path}: {} {}",
            reply.status,
            reply.body
        );
        // The guest refused it, or the path left the route once its dot
        // segments were resolved and the router found nothing.
        assert!(reply.body.starts_with("error: ") || reply.body.is_empty(), "{path}: {}", reply.body);
        assert!(!reply.body.contains("secret") && !reply.body.contains("root:"), "{path}: {}", reply.body);
    }
    server.wait_for_log("is a link to");

    // Read-only: the guest cannot create files.
    let reply = call("PUT", &server.url("/files/new.txt"), "x").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::FORBIDDEN, "error: not-permitted\n"));
    assert!(!app.path().join("www/new.txt").exists());
}

#[tokio::test]
async fn a_component_without_files_sees_none() {
    let (app, _outside) = files_app("");
    let server = app.start(&[]);
    let reply = get(&server.url("/files/index.html")).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::NOT_FOUND, "error: nothing is mounted\n"));
}
