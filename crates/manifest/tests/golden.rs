//! Golden tests: every `tests/golden/valid/*.toml` resolves to the model in the
//! `.model` file beside it; every `tests/golden/invalid/*.toml` fails with the
//! text in its `.err` file. `BLESS=1 cargo test -p dormouse-manifest` rewrites
//! the expected files; review the diff before committing it.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use dormouse_manifest::model::{App, FileMount, Route, Target};

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(kind);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases in {}", dir.display());
    cases
}

fn check(case: &Path, extension: &str, actual: &str) -> Option<String> {
    let expected_path = case.with_extension(extension);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&expected_path, actual).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    (expected != actual).then(|| format!("{}:\n--- expected\n{expected}--- actual\n{actual}", case.display()))
}

fn parse(case: &Path) -> Result<App, dormouse_manifest::ManifestError> {
    let text = std::fs::read_to_string(case).unwrap();
    let name = Path::new(case.file_name().unwrap());
    dormouse_manifest::parse(&text, name, Path::new("/app"))
}

/// A stable, readable rendering of the resolved model.
fn render(app: &App) -> String {
    let mut out = String::new();
    writeln!(
        out,
        "app {:?} version={:?} description={:?} authors={:?}",
        app.name, app.version, app.description, app.authors
    )
    .unwrap();
    for (name, variable) in &app.variables {
        writeln!(
            out,
            "variable {name} default={:?} required={} secret={}",
            variable.default, variable.required, variable.secret
        )
        .unwrap();
    }
    for trigger in &app.http_triggers {
        let route = match &trigger.route {
            Route::Public(pattern) => {
                format!("{} (raw {:?}, wildcard={})", pattern.normalized(), pattern.raw(), pattern.is_wildcard())
            }
            Route::Private => "private".to_owned(),
        };
        let target = match &trigger.target {
            Target::Component(id) => id.clone(),
            Target::Service(id) => format!("service {id}"),
        };
        writeln!(out, "trigger {} route={route} -> {target}", trigger.id).unwrap();
    }
    for (id, component) in &app.components {
        writeln!(out, "component {id}").unwrap();
        writeln!(out, "  source {}", component.source.display()).unwrap();
        if let Some(description) = &component.description {
            writeln!(out, "  description {description:?}").unwrap();
        }
        writeln!(out, "  allowed_outbound_hosts {:?}", component.allowed_outbound_hosts).unwrap();
        writeln!(out, "  key_value_stores {:?}", component.key_value_stores).unwrap();
        writeln!(out, "  variables {:?}", component.variables).unwrap();
        writeln!(out, "  environment {:?}", component.environment).unwrap();
        for file in &component.files {
            match file {
                FileMount::Pattern(glob) => writeln!(out, "  file {glob:?}").unwrap(),
                FileMount::Placement { source, destination } => {
                    writeln!(out, "  file {} -> {destination}", source.display()).unwrap()
                }
            }
        }
        if !component.exclude_files.is_empty() {
            writeln!(out, "  exclude_files {:?}", component.exclude_files).unwrap();
        }
    }
    for (id, service) in &app.services {
        writeln!(out, "service {id}").unwrap();
        writeln!(out, "  command {:?} workdir {}", service.command, service.workdir.display()).unwrap();
        writeln!(
            out,
            "  environment {:?} port {:?} ready_path {:?}",
            service.environment, service.port, service.ready_path
        )
        .unwrap();
        writeln!(
            out,
            "  cooldown {:?} standby {:?} min {} max {} target_concurrency {} ready_timeout {:?} stop_timeout {:?} memory {}",
            service.cooldown,
            service.standby,
            service.min,
            service.max,
            service.target_concurrency,
            service.ready_timeout,
            service.stop_timeout,
            service.memory
        )
        .unwrap();
    }
    out
}

#[test]
fn valid_manifests_resolve_to_the_expected_model() {
    let failures: Vec<String> = cases("valid")
        .iter()
        .filter_map(|case| match parse(case) {
            Ok(app) => check(case, "model", &render(&app)),
            Err(error) => Some(format!("{}: unexpected error: {error}", case.display())),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_manifests_fail_with_the_expected_message() {
    let failures: Vec<String> = cases("invalid")
        .iter()
        .filter_map(|case| match parse(case) {
            Ok(_) => Some(format!("{}: parsed, but should have failed", case.display())),
            Err(error) => check(case, "err", &format!("{error}\n")),
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn load_finds_spin_toml_in_a_directory_and_resolves_paths_against_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\n",
    )
    .unwrap();
    let app = dormouse_manifest::load(dir.path()).unwrap();
    assert_eq!(app.components["c"].source, dir.path().join("c.wasm"));
    assert_eq!(app.manifest_path, dir.path().join("spin.toml"));

    let missing = dormouse_manifest::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(missing.to_string().starts_with("cannot read `"), "{missing}");
}
