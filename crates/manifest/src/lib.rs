//! The dormouse application manifest: Spin's `spin.toml` (version 2), read,
//! checked and resolved into the [`model::App`] the runtime uses.
//!
//! Invariant: this crate knows nothing of wasmtime, hyper or processes. Every
//! error it returns names the file, line and column of the offending value.

#![forbid(unsafe_code)]

pub mod model;
pub mod outbound;
mod raw;
pub mod route;
pub mod runtime_config;
pub mod variables;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub use model::App;
pub use outbound::AllowedHosts;
pub use route::{RouteError, RouteMatch, RoutePattern};
pub use runtime_config::RuntimeConfig;
pub use variables::{VariableError, Variables};

/// The most instances a service may have (`autoscale.max`): each may hold
/// 100 waiting requests while it wakes, and a port and a process.
pub const MAX_SERVICE_INSTANCES: u32 = 1000;

/// The shortest idle cooldown a service may set.
pub const MIN_COOLDOWN: Duration = Duration::from_millis(100);

/// A service instance's memory size when its manifest gives none: enough
/// for nginx, a Python or a Node app; a JVM wants `memory` set.
pub const DEFAULT_SERVICE_MEMORY: u64 = 256 << 20;

/// The smallest memory size a service instance may have: its shell stub and
/// a small server.
pub const MIN_SERVICE_MEMORY: u64 = 4 << 20;

/// The file `dormouse up` looks for in a directory.
pub const DEFAULT_MANIFEST_FILE: &str = "spin.toml";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file (a manifest or a runtime config) could not be read; the
    /// reason is the source.
    #[error("cannot read `{}`", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, column: usize, message: String },
}

/// Reads a file that must be a regular one: a named pipe would block the
/// read (and start-up) forever, a device could be endless.
pub fn read_regular_file(path: &Path) -> Result<String, ManifestError> {
    let read_error = |source| ManifestError::Read { path: path.to_owned(), source };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if !metadata.is_file() {
        return Err(read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a directory, named pipe, socket or device)",
        )));
    }
    std::fs::read_to_string(path).map_err(read_error)
}

/// Reads the manifest at `path`: a manifest file, or a directory holding `spin.toml`.
pub fn load(path: &Path) -> Result<App, ManifestError> {
    let file = if path.is_dir() { path.join(DEFAULT_MANIFEST_FILE) } else { path.to_owned() };
    let text = read_regular_file(&file)?;
    let absolute = std::path::absolute(&file).unwrap_or_else(|_| file.clone());
    let base_dir = absolute.parent().map(Path::to_owned).unwrap_or_default();
    let mut app = parse(&text, &file, &base_dir)?;
    app.manifest_path = absolute;
    Ok(app)
}

/// Parses manifest text. `file` names it in errors; relative paths in the
/// manifest are resolved against `base_dir`.
pub fn parse(text: &str, file: &Path, base_dir: &Path) -> Result<App, ManifestError> {
    let resolver = Resolver { text, file, base_dir, chained: Default::default() };
    let fail = |span, message| resolver.fail(span, message);
    let from_toml = |error: toml::de::Error| {
        let span = error.span().unwrap_or(0..0);
        let mut message = error.message().trim_end().to_owned();
        if message == "duplicate key" {
            let key = text.get(span.clone()).unwrap_or_default();
            message = format!("duplicate key `{key}`: a key or table may be defined once");
        }
        fail(span, message)
    };

    // The version decides the schema, so it is read before anything else: a
    // Spin 1 manifest should hear that, not a list of unknown fields.
    #[derive(Deserialize)]
    struct VersionOnly {
        spin_manifest_version: Option<Spanned<toml::Value>>,
    }
    let version: VersionOnly = toml::from_str(text).map_err(from_toml)?;
    match version.spin_manifest_version {
        None => return Err(fail(0..0, "missing `spin_manifest_version = 2`".into())),
        Some(v) if v.get_ref().as_integer() == Some(2) => {}
        Some(v) => {
            return Err(fail(
                v.span(),
                format!("unsupported manifest version `{}`: dormouse reads `spin_manifest_version = 2`", v.get_ref()),
            ));
        }
    }

    let manifest: raw::Manifest = toml::from_str(text).map_err(from_toml)?;
    resolver.resolve(manifest)
}

struct Resolver<'a> {
    text: &'a str,
    file: &'a Path,
    base_dir: &'a Path,
    /// Service-chaining targets named in `allowed_outbound_hosts`, checked
    /// once every component (inline ones included) is known.
    chained: std::cell::RefCell<Vec<(String, Range<usize>)>>,
}

impl Resolver<'_> {
    fn fail(&self, span: Range<usize>, message: String) -> ManifestError {
        let (line, column) = line_column(self.text, span.start);
        ManifestError::Invalid { path: self.file.to_owned(), line, column, message }
    }

    fn resolve(&self, manifest: raw::Manifest) -> Result<App, ManifestError> {
        let fail = |span, message| self.fail(span, message);
        let application = manifest.application;
        if application.name.get_ref().trim().is_empty() {
            return Err(fail(application.name.span(), "`application.name` must not be empty".into()));
        }
        if let Some(trigger) = &application.trigger {
            return Err(fail(
                trigger.span(),
                "application-level trigger settings are not supported: dormouse serves HTTP triggers only".into(),
            ));
        }
        if let Some(kind) = manifest.trigger.other.first() {
            return Err(fail(
                kind.span(),
                format!("trigger type `{}` is not supported: dormouse serves `[[trigger.http]]` only", kind.get_ref()),
            ));
        }

        let mut variables = BTreeMap::new();
        for (name, variable) in manifest.variables {
            check_variable_name(name.get_ref()).map_err(|why| fail(name.span(), why))?;
            if variable.required && variable.default.is_some() {
                return Err(fail(
                    name.span(),
                    format!("variable `{}` is `required` and has a `default`: choose one", name.get_ref()),
                ));
            }
            let model =
                model::Variable { default: variable.default, required: variable.required, secret: variable.secret };
            variables.insert(name.into_inner(), model);
        }

        let mut components = BTreeMap::new();
        for (id, component) in manifest.component {
            check_kebab_id(id.get_ref())
                .map_err(|why| fail(id.span(), format!("invalid component id `{}`: {why}", id.get_ref())))?;
            let resolved = self.component(id.get_ref(), component, &variables)?;
            components.insert(id.into_inner(), resolved);
        }

        let mut services = BTreeMap::new();
        for (id, service) in manifest.service {
            check_kebab_id(id.get_ref())
                .map_err(|why| fail(id.span(), format!("invalid service id `{}`: {why}", id.get_ref())))?;
            if components.contains_key(id.get_ref()) {
                return Err(fail(id.span(), format!("`{}` is both a component and a service", id.get_ref())));
            }
            let resolved = self.service(id.get_ref(), service)?;
            services.insert(id.into_inner(), resolved);
        }

        let triggers = manifest.trigger.http;
        let trigger_ids = self.trigger_ids(&triggers)?;
        let mut http_triggers: Vec<model::HttpTrigger> = Vec::new();
        // Where each trigger's route stands, to point a duplicate at the original.
        let mut route_positions: Vec<(usize, usize)> = Vec::new();
        for (trigger, trigger_id) in triggers.into_iter().zip(trigger_ids) {
            let trigger_span = trigger.span();
            let trigger = trigger.into_inner();
            if let Some(executor) = &trigger.executor
                && executor.get_ref().kind != "spin"
            {
                return Err(fail(
                    executor.span(),
                    format!(
                        "executor `{}` is not supported: dormouse runs wasi:http components",
                        executor.get_ref().kind
                    ),
                ));
            }
            let target = match (trigger.component, trigger.service) {
                (Some(_), Some(service)) => {
                    return Err(fail(
                        service.span(),
                        "a trigger names either a `component` or a `service`, not both".into(),
                    ));
                }
                (None, None) => return Err(fail(trigger_span, "HTTP trigger has no `component` or `service`".into())),
                (None, Some(service)) if services.contains_key(service.get_ref()) => {
                    model::Target::Service(service.into_inner())
                }
                (None, Some(service)) => {
                    return Err(fail(
                        service.span(),
                        format!("trigger refers to undefined service `{}`", service.get_ref()),
                    ));
                }
                (Some(component_ref), None) => {
                    let component_span = component_ref.span();
                    model::Target::Component(match component_ref.into_inner() {
                        raw::ComponentRef::Id(id) if components.contains_key(&id) => id,
                        raw::ComponentRef::Id(id) => {
                            return Err(fail(component_span, format!("trigger refers to undefined component `{id}`")));
                        }
                        raw::ComponentRef::Inline(component) => {
                            // Spin's rule: `<trigger id>-component`, else the first free
                            // `inline-component<n>`.
                            let natural = format!("{trigger_id}-component");
                            let id = if check_kebab_id(&natural).is_ok() && !components.contains_key(&natural) {
                                natural
                            } else {
                                first_free(|n| format!("inline-component{n}"), |id| components.contains_key(id))
                            };
                            let resolved = self.component(&id, *component, &variables)?;
                            components.insert(id.clone(), resolved);
                            id
                        }
                    })
                }
            };

            let route_span = trigger.route.span();
            let route = match trigger.route.into_inner() {
                raw::Route::Private(raw::PrivateRoute { private: true }) => model::Route::Private,
                raw::Route::Private(raw::PrivateRoute { private: false }) => {
                    return Err(fail(
                        route_span,
                        "`route = { private = false }` is not allowed: write a route string or `{ private = true }`"
                            .into(),
                    ));
                }
                raw::Route::Path(path) => {
                    let pattern = RoutePattern::parse(&path)
                        .map_err(|why| fail(route_span.clone(), format!("invalid route `{path}`: {why}")))?;
                    let earlier = http_triggers.iter().zip(&route_positions).find(|(t, _)| match &t.route {
                        model::Route::Public(other) => other.same_route_as(&pattern),
                        model::Route::Private => false,
                    });
                    if let Some((other, (line, column))) = earlier {
                        return Err(fail(
                            route_span,
                            format!(
                                "duplicate route `{path}`: `{}` already serves it (line {line}, column {column})",
                                other.target.id()
                            ),
                        ));
                    }
                    model::Route::Public(pattern)
                }
            };
            route_positions.push(line_column(self.text, route_span.start));
            http_triggers.push(model::HttpTrigger { id: trigger_id, route, target });
        }

        for (target, span) in self.chained.take() {
            if !components.contains_key(&target) && !services.contains_key(&target) {
                return Err(fail(
                    span,
                    format!("allowed host names component `{target}` (`{target}.spin.internal`), which is not defined"),
                ));
            }
        }

        Ok(App {
            name: application.name.into_inner(),
            version: application.version,
            description: application.description,
            authors: application.authors,
            manifest_path: PathBuf::new(),
            base_dir: self.base_dir.to_owned(),
            variables,
            components,
            services,
            http_triggers,
        })
    }

    /// Trigger ids as Spin assigns them: the explicit `id`, else
    /// `<component>-http-trigger` for the first trigger of a component, else the
    /// first free `http-trigger<n>`.
    fn trigger_ids(&self, triggers: &[Spanned<raw::HttpTrigger>]) -> Result<Vec<String>, ManifestError> {
        let mut taken = std::collections::HashSet::new();
        for id in triggers.iter().filter_map(|t| t.get_ref().id.as_ref()) {
            if !taken.insert(id.get_ref().clone()) {
                return Err(self.fail(id.span(), format!("duplicate trigger id `{}`", id.get_ref())));
            }
        }
        let mut ids = Vec::with_capacity(triggers.len());
        for trigger in triggers {
            let trigger = trigger.get_ref();
            let id = match (&trigger.id, trigger.component.as_ref().map(Spanned::get_ref)) {
                (Some(id), _) => id.get_ref().clone(),
                (None, Some(raw::ComponentRef::Id(component)))
                    if !taken.contains(&format!("{component}-http-trigger")) =>
                {
                    format!("{component}-http-trigger")
                }
                _ => first_free(|n| format!("http-trigger{n}"), |id| taken.contains(id)),
            };
            taken.insert(id.clone());
            ids.push(id);
        }
        Ok(ids)
    }

    fn service(&self, id: &str, service: raw::Service) -> Result<model::Service, ManifestError> {
        let fail = |span, message| self.fail(span, message);
        let command_span = service.command.span();
        let command = service.command.into_inner();
        if command.first().is_none_or(|program| program.trim().is_empty()) {
            return Err(fail(command_span, format!("service `{id}` needs a `command`: the program and its arguments")));
        }
        let duration =
            |value: &Option<Spanned<String>>, default: Duration, what: &str| -> Result<Duration, ManifestError> {
                match value {
                    None => Ok(default),
                    Some(text) => humantime::parse_duration(text.get_ref()).map_err(|error| {
                        fail(
                            text.span(),
                            format!(
                                "invalid {what} `{}` (service `{id}`): {error}: write e.g. `500ms` or `2s`",
                                text.get_ref()
                            ),
                        )
                    }),
                }
            };
        let scale = service.scale_to_zero.unwrap_or(raw::ScaleToZero { cooldown: None, standby: None });
        let cooldown = duration(&scale.cooldown, Duration::from_secs(1), "cooldown")?;
        if cooldown < MIN_COOLDOWN {
            let span = scale.cooldown.as_ref().map(Spanned::span).unwrap_or(0..0);
            return Err(fail(span, format!("cooldown of service `{id}` is below the 100ms minimum")));
        }
        let standby = match scale.standby.as_ref().map(|s| s.get_ref().as_str()) {
            None | Some("stop") => model::Standby::Stop,
            Some("pause") => model::Standby::Pause,
            Some(other) => {
                let span = scale.standby.as_ref().expect("matched Some").span();
                return Err(fail(
                    span,
                    format!("unknown standby `{other}` (service `{id}`): use \"stop\" or \"pause\""),
                ));
            }
        };
        let autoscale = service.autoscale.unwrap_or(raw::Autoscale { min: None, max: None, target_concurrency: None });
        let value = |field: &Option<Spanned<u32>>, default: u32| field.as_ref().map_or(default, |v| *v.get_ref());
        let (min, max) = (value(&autoscale.min, 0), value(&autoscale.max, 1));
        let target_concurrency = value(&autoscale.target_concurrency, 10);
        let span_of = |field: &Option<Spanned<u32>>| field.as_ref().map(Spanned::span).unwrap_or(0..0);
        if max == 0 || min > max || max > MAX_SERVICE_INSTANCES {
            return Err(fail(
                span_of(&autoscale.max),
                format!(
                    "service `{id}`: autoscale needs 1 ≤ max ≤ {MAX_SERVICE_INSTANCES} and min ≤ max (min {min}, max {max})"
                ),
            ));
        }
        if target_concurrency == 0 {
            return Err(fail(
                span_of(&autoscale.target_concurrency),
                format!("service `{id}`: target_concurrency must be at least 1"),
            ));
        }
        if let Some(port) = &service.port
            && *port.get_ref() == 0
        {
            return Err(fail(
                port.span(),
                format!("service `{id}` has `port = 0`: omit `port` to have one picked, and read `PORT`"),
            ));
        }
        if let Some(port) = &service.port
            && max > 1
        {
            return Err(fail(
                port.span(),
                format!(
                    "service `{id}` has a fixed `port` and `max = {max}`: instances cannot share a port; omit `port` and read `PORT`"
                ),
            ));
        }
        if let Some(path) = &service.ready_path
            && !path.get_ref().starts_with('/')
        {
            return Err(fail(path.span(), format!("ready_path `{}` must start with `/`", path.get_ref())));
        }
        let ready_timeout = duration(&service.ready_timeout, Duration::from_secs(30), "ready_timeout")?;
        let stop_timeout = duration(&service.stop_timeout, Duration::from_secs(10), "stop_timeout")?;
        for (value, field, name) in [
            (ready_timeout, &service.ready_timeout, "ready_timeout"),
            (stop_timeout, &service.stop_timeout, "stop_timeout"),
        ] {
            if value.is_zero() {
                let span = field.as_ref().map(Spanned::span).unwrap_or(0..0);
                return Err(fail(span, format!("{name} of service `{id}` must be more than 0")));
            }
        }
        let memory = match &service.memory {
            None => DEFAULT_SERVICE_MEMORY,
            Some(text) => {
                let size = text.get_ref().parse::<bytesize::ByteSize>().map_err(|error| {
                    fail(
                        text.span(),
                        format!("invalid memory `{}` (service `{id}`): {error}: write e.g. `256MiB`", text.get_ref()),
                    )
                })?;
                if size.as_u64() < MIN_SERVICE_MEMORY {
                    return Err(fail(
                        text.span(),
                        format!("memory `{}` of service `{id}` is below the 4MiB minimum", text.get_ref()),
                    ));
                }
                size.as_u64()
            }
        };
        Ok(model::Service {
            id: id.to_owned(),
            command,
            environment: service.environment,
            workdir: service.workdir.map_or_else(|| self.base_dir.to_owned(), |dir| self.base_dir.join(dir)),
            port: service.port.map(Spanned::into_inner),
            ready_path: service.ready_path.map(Spanned::into_inner),
            cooldown,
            standby,
            min,
            max,
            target_concurrency,
            ready_timeout,
            stop_timeout,
            memory,
        })
    }

    fn component(
        &self,
        id: &str,
        component: raw::Component,
        app_variables: &BTreeMap<String, model::Variable>,
    ) -> Result<model::Component, ManifestError> {
        let fail = |span, message| self.fail(span, message);
        let unsupported = [
            ("sqlite_databases", &component.sqlite_databases),
            ("ai_models", &component.ai_models),
            ("dependencies", &component.dependencies),
            ("dependencies_inherit_configuration", &component.dependencies_inherit_configuration),
        ];
        for (key, value) in unsupported {
            if let Some(value) = value {
                return Err(fail(value.span(), format!("`{key}` (component `{id}`) is not supported by dormouse yet")));
            }
        }
        if let Some(value) = &component.allowed_http_hosts {
            return Err(fail(
                value.span(),
                format!("`allowed_http_hosts` (component `{id}`) is Spin 1 syntax: use `allowed_outbound_hosts`"),
            ));
        }

        let source_span = component.source.span();
        let source = match component.source.into_inner() {
            raw::Source::Path(path) if path.trim().is_empty() => {
                return Err(fail(source_span, format!("component `{id}` has an empty `source`")));
            }
            raw::Source::Path(path) => self.base_dir.join(path),
            raw::Source::Remote(remote) => {
                let what = match (&remote.url, &remote.package) {
                    (Some(url), _) => format!("`{url}`"),
                    (None, Some(package)) => format!("package `{package}`"),
                    (None, None) => "a table without `url` or `package`".to_owned(),
                };
                return Err(fail(
                    source_span,
                    format!(
                        "component `{id}`: remote sources ({what}) are not supported yet: download the file and set `source` to its path"
                    ),
                ));
            }
        };

        let mut variables = BTreeMap::new();
        for (name, template) in component.variables {
            check_variable_name(name.get_ref()).map_err(|why| fail(name.span(), why))?;
            for reference in template_references(template.get_ref()).map_err(|why| fail(template.span(), why))? {
                if !app_variables.contains_key(reference) {
                    return Err(fail(
                        template.span(),
                        format!(
                            "component variable `{}` refers to undefined variable `{reference}`: declare it under `[variables]`",
                            name.get_ref()
                        ),
                    ));
                }
            }
            variables.insert(name.into_inner(), template.into_inner());
        }

        for entry in &component.allowed_outbound_hosts {
            let text = entry.get_ref();
            if text.contains("{{") {
                // Checked again once rendered, at start-up.
                for reference in template_references(text).map_err(|why| fail(entry.span(), why))? {
                    if !app_variables.contains_key(reference) {
                        return Err(fail(
                            entry.span(),
                            format!(
                                "allowed host `{text}` (component `{id}`) refers to undefined variable `{reference}`: declare it under `[variables]`"
                            ),
                        ));
                    }
                }
            } else {
                outbound::AllowedHost::parse(text)
                    .map_err(|why| fail(entry.span(), format!("{why} (component `{id}`)")))?;
                let host = text.split_once("://").map_or("", |(_, rest)| rest);
                let host = host.split([':', '/']).next().unwrap_or_default();
                if let Some(target) = outbound::chained_component(host)
                    && target != "*"
                {
                    self.chained.borrow_mut().push((target.to_owned(), entry.span()));
                }
            }
        }

        let mut files = Vec::new();
        for mount in component.files {
            let span = mount.span();
            files.push(match mount.into_inner() {
                raw::FileMount::Pattern(glob) => {
                    if glob.starts_with('/') || has_parent_segment(&glob) {
                        return Err(fail(
                            span,
                            format!(
                                "file pattern `{glob}` (component `{id}`) must stay inside the app directory: no leading `/`, no `..`"
                            ),
                        ));
                    }
                    model::FileMount::Pattern(glob)
                }
                raw::FileMount::Placement(placement) => {
                    // Staged from the app directory only: a source outside it
                    // would hand the guest host files nobody listed in the app.
                    if Path::new(&placement.source).is_absolute() || has_parent_segment(&placement.source) {
                        return Err(fail(
                            span,
                            format!(
                                "file source `{}` (component `{id}`) must stay inside the app directory: no leading `/`, no `..`",
                                placement.source
                            ),
                        ));
                    }
                    // A link inside the app directory must not lead out of it
                    // either (checked where the app directory exists: not in
                    // golden tests).
                    let source = self.base_dir.join(&placement.source);
                    if self.base_dir.is_dir() && std::fs::symlink_metadata(&source).is_err() {
                        return Err(fail(
                            span,
                            format!("file source `{}` (component `{id}`) does not exist", placement.source),
                        ));
                    }
                    if let (Ok(real), Ok(base)) = (source.canonicalize(), self.base_dir.canonicalize())
                        && !real.starts_with(&base)
                    {
                        return Err(fail(
                            span,
                            format!(
                                "file source `{}` (component `{id}`) is a link that leads outside the app directory, to `{}`",
                                placement.source,
                                real.display()
                            ),
                        ));
                    }
                    if !placement.destination.starts_with('/') {
                        return Err(fail(
                            span,
                            format!("file destination `{}` must be an absolute path", placement.destination),
                        ));
                    }
                    if has_parent_segment(&placement.destination) {
                        return Err(fail(
                            span,
                            format!("file destination `{}` must not contain `..`", placement.destination),
                        ));
                    }
                    model::FileMount::Placement {
                        source: self.base_dir.join(placement.source),
                        destination: placement.destination,
                    }
                }
            });
        }

        Ok(model::Component {
            id: id.to_owned(),
            description: component.description,
            source,
            allowed_outbound_hosts: component.allowed_outbound_hosts.into_iter().map(Spanned::into_inner).collect(),
            key_value_stores: component.key_value_stores.into_iter().map(Spanned::into_inner).collect(),
            variables,
            environment: component.environment,
            files,
            exclude_files: component.exclude_files,
        })
    }
}

/// The first `make(n)`, counting from 1, that is not `taken`.
fn first_free(make: impl Fn(usize) -> String, taken: impl Fn(&str) -> bool) -> String {
    (1..).map(make).find(|id| !taken(id)).expect("an unbounded range has a free id")
}

/// Spin's component ids: lower-kebab-case, starting with a letter.
fn check_kebab_id(id: &str) -> Result<(), &'static str> {
    if !id.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a lowercase letter");
    }
    if !id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err("use only lowercase letters, digits and `-`");
    }
    if id.ends_with('-') || id.contains("--") {
        return Err("`-` must separate words");
    }
    Ok(())
}

/// Spin's variable names: lowercase letters, digits and `_`, starting with a letter.
fn check_variable_name(name: &str) -> Result<(), String> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!("invalid variable name `{name}`: use lowercase letters, digits and `_`, starting with a letter"))
    }
}

/// The variable names a `{{ name }}` template refers to.
pub fn template_references(template: &str) -> Result<Vec<&str>, String> {
    let parts = variables::template_parts(template)?;
    Ok(parts
        .into_iter()
        .filter_map(|part| match part {
            variables::TemplatePart::Variable(name) => Some(name),
            variables::TemplatePart::Literal(_) => None,
        })
        .collect())
}

/// Whether a `/`-separated path has a `..` segment.
fn has_parent_segment(path: &str) -> bool {
    path.split(['/', '\\']).any(|segment| segment == "..")
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, text.find('=').unwrap()), (1, 3));
        assert_eq!(line_column(text, text.rfind('=').unwrap()), (2, 4));
    }

    #[test]
    fn templates_name_their_variables() {
        assert_eq!(template_references("{{ a }}-{{b_2}}").unwrap(), vec!["a", "b_2"]);
        assert_eq!(template_references("plain").unwrap(), Vec::<&str>::new());
        assert!(template_references("{{ a").is_err());
        assert!(template_references("{{ A }}").is_err());
    }

    #[test]
    fn kebab_ids() {
        assert!(check_kebab_id("hello-world2").is_ok());
        assert!(check_kebab_id("Hello").is_err());
        assert!(check_kebab_id("2x").is_err());
        assert!(check_kebab_id("a--b").is_err());
        assert!(check_kebab_id("a_b").is_err());
    }
}
