//! The control API's server: JSON over HTTP/1.1, on a Unix socket (mode
//! 0600: whoever can open it is the operator) or on TCP with a bearer token.
//! Paths and shapes are those of `openapi.json`; [`ROUTES`] lists them for
//! the test that holds the two together.
//!
//! Invariants: every error is a JSON [`ErrorBody`] with the status its kind
//! names (`ControlError`); a request without the token never reaches a
//! handler; an upload is read to at most its limit, then refused with 413.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, UnixListener};

use crate::api::{ErrorBody, PREFIX};
use crate::platform::{ControlError, DeployOptions, Platform};

/// Every method and path the server answers, in OpenAPI's template form.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/apps"),
    ("GET", "/v1/apps/{name}"),
    ("PUT", "/v1/apps/{name}"),
    ("DELETE", "/v1/apps/{name}"),
    ("GET", "/v1/apps/{name}/services"),
    ("POST", "/v1/apps/{name}/services/{service}/start"),
    ("POST", "/v1/apps/{name}/services/{service}/stop"),
    ("GET", "/v1/apps/{name}/kv/{store}"),
    ("GET", "/v1/apps/{name}/kv/{store}/{key}"),
    ("PUT", "/v1/apps/{name}/kv/{store}/{key}"),
    ("GET", "/v1/apps/{name}/logs"),
    ("GET", "/v1/apps/{name}/scale"),
    ("PUT", "/v1/apps/{name}/scale"),
    ("DELETE", "/v1/apps/{name}/scale"),
    ("PUT", "/v1/apps/{name}/scale/policies/{policy}"),
    ("DELETE", "/v1/apps/{name}/scale/policies/{policy}"),
    ("GET", "/v1/instances"),
    ("GET", "/v1/quotas"),
];

/// Largest JSON request body the API reads (uploads have their own limit).
const MAX_JSON_BYTES: usize = 64 << 10;

/// Where the control API listens.
pub enum ControlListener {
    /// A Unix socket; access is the file's mode.
    Unix(UnixListener),
    /// TCP: every request must carry `Authorization: Bearer <token>`.
    Tcp { listener: TcpListener, token: String },
}

impl ControlListener {
    /// Binds `path` with mode 0600, replacing a socket a previous run left
    /// (a regular file or anything else there is an error).
    pub fn unix(path: &Path) -> anyhow::Result<ControlListener> {
        use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
        if let Ok(metadata) = std::fs::symlink_metadata(path) {
            anyhow::ensure!(
                metadata.file_type().is_socket(),
                "`{}` exists and is not a socket: remove it or choose another state directory",
                path.display()
            );
            // Someone still listening there means another dormouse owns it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!("another dormouse is serving its control API on `{}`", path.display());
            }
            std::fs::remove_file(path)?;
        }
        // Created with no access for others from the start: the umask
        // decides the mode of a new socket file.
        let listener = {
            let _umask = Umask::set(0o177);
            UnixListener::bind(path)
        }
        .map_err(|error| anyhow::anyhow!("cannot listen on `{}`: {error}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlListener::Unix(listener))
    }
}

/// Sets the process's umask for as long as it lives.
struct Umask(rustix::fs::Mode);

impl Umask {
    fn set(mask: u32) -> Umask {
        Umask(rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask)))
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        rustix::process::umask(self.0);
    }
}

/// Limits of the control API.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Largest bundle a deploy may upload. Default 256 MiB; larger gets 413.
    pub max_upload_bytes: usize,
    /// How long an upload may take. Default 5 min; past it 408, and the
    /// app's deploy claim is given back.
    pub upload_timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { max_upload_bytes: 256 << 20, upload_timeout: Duration::from_secs(300) }
    }
}

/// Control connections open at once; more wait in the listen backlog, so a
/// flood of them (on TCP, from anyone who can reach the port) cannot take
/// the file descriptors the public listener needs.
const MAX_CONNECTIONS: usize = 64;

/// What a deploy may take once its upload is in: unpacking, compiling every
/// component, starting what it keeps up.
const DEPLOY_TIME: Duration = Duration::from_secs(600);

/// Uploads received at once; more get 503 with `Retry-After`. Each may take
/// `--max-upload` of disk until it is unpacked.
const MAX_UPLOADS: usize = 4;

/// Time a control connection has to send a request head; past it, it is
/// closed (an upload then has `ControlConfig::upload_timeout` for its body).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the control API until `shutdown` resolves.
pub async fn serve(
    platform: Arc<Platform>,
    listener: ControlListener,
    config: ControlConfig,
    shutdown: impl Future<Output = ()>,
) {
    let token: Option<Arc<str>> = match &listener {
        ControlListener::Tcp { token, .. } => Some(token.as_str().into()),
        ControlListener::Unix(_) => None,
    };
    let config = Arc::new(config);
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut accept_errors = dormouse_gateway::AcceptErrors::default();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let place = tokio::select! {
            () = &mut shutdown => return,
            place = places.clone().acquire_owned() => place.expect("never closed"),
        };
        let io = tokio::select! {
            () = &mut shutdown => return,
            accepted = accept(&listener) => match accepted {
                Ok(io) => io,
                Err(error) => {
                    accept_errors.record(&error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A connection lives at most as long as the longest request may (an
        // upload, then compiling and starting what it holds): one that idles
        // between requests cannot keep its place forever.
        let lifetime = config.upload_timeout + DEPLOY_TIME;
        let (platform, token, config) = (platform.clone(), token.clone(), config.clone());
        let service = hyper::service::service_fn(move |request| {
            let (platform, token, config) = (platform.clone(), token.clone(), config.clone());
            async move { Ok::<_, Infallible>(handle(&platform, token.as_deref(), &config, request).await) }
        });
        let builder = builder.clone();
        tokio::spawn(async move {
            let _place = place;
            let _ = tokio::time::timeout(lifetime, builder.serve_connection(io, service)).await;
        });
    }
}

async fn accept(listener: &ControlListener) -> std::io::Result<hyper_util::rt::TokioIo<Box<dyn Stream>>> {
    let stream: Box<dyn Stream> = match listener {
        ControlListener::Unix(listener) => Box::new(listener.accept().await?.0),
        ControlListener::Tcp { listener, .. } => Box::new(listener.accept().await?.0),
    };
    Ok(TokioIo::new(stream))
}

/// A byte stream the server can speak HTTP over.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

async fn handle(
    platform: &Arc<Platform>,
    token: Option<&str>,
    config: &ControlConfig,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Some(token) = token
        && !authorized(&request, token)
    {
        let mut response =
            error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token: pass `--token` or set DORMOUSE_TOKEN");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }
    match route(platform, config, request).await {
        Ok(response) => response,
        Err(failure) => {
            let status = match &failure {
                ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
                ControlError::NotFound(_) => StatusCode::NOT_FOUND,
                ControlError::Conflict(_) => StatusCode::CONFLICT,
                ControlError::NotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
                ControlError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                ControlError::Quota(_) => StatusCode::FORBIDDEN,
                ControlError::Internal(error) => {
                    tracing::error!("control API: {error:#}");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            error(status, &format!("{failure:#}"))
        }
    }
}

/// Whether the request carries `Authorization: Bearer <token>`, compared in
/// time independent of where the first difference is.
fn authorized<B>(request: &Request<B>, token: &str) -> bool {
    let Some(given) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token))
    else {
        return false;
    };
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn route(
    platform: &Arc<Platform>,
    config: &ControlConfig,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ControlError> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Ok(error(StatusCode::NOT_FOUND, &format!("no such path `{path}`: the API is under {PREFIX}")));
    };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["apps"]) => json(StatusCode::OK, &platform.apps()?),
        (&Method::GET, ["apps", name]) => json(StatusCode::OK, &platform.app(name)?),
        (&Method::PUT, ["apps", name]) => {
            let options = deploy_options(&query)?;
            let claim = platform.claim(name)?;
            static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_UPLOADS);
            let Ok(_uploading) = UPLOADS.try_acquire() else {
                let mut response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("{MAX_UPLOADS} uploads are in progress already: retry shortly"),
                );
                response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                return Ok(response);
            };
            let dir = platform.bundles_dir()?;
            let upload = tokio::time::timeout(config.upload_timeout, receive(request, config.max_upload_bytes, &dir));
            let bundle = match upload.await {
                Ok(received) => match received? {
                    Ok(upload) => upload,
                    Err(response) => return Ok(response),
                },
                Err(_) => {
                    let limit = humantime::format_duration(config.upload_timeout);
                    return Ok(error(StatusCode::REQUEST_TIMEOUT, &format!("the upload took longer than {limit}")));
                }
            };
            json(StatusCode::CREATED, &platform.deploy(&claim, bundle, options).await?)
        }
        (&Method::DELETE, ["apps", name]) => {
            platform.remove(name).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::GET, ["apps", name, "services"]) => json(StatusCode::OK, &platform.services(name)?),
        (&Method::POST, ["apps", name, "services", service, action @ ("start" | "stop")]) => {
            let changed = platform.service_action(name, service, *action == "start")?;
            json(StatusCode::OK, &serde_json::json!({ "changed": changed }))
        }
        (&Method::GET, ["apps", name, "kv", store]) => json(StatusCode::OK, &platform.kv_keys(name, store).await?),
        (&Method::GET, ["apps", name, "kv", store, key]) => {
            let value = platform.kv_get(name, store, &decode_segment(key)?).await?;
            let mut response = Response::new(Full::new(Bytes::from(value)));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
            Ok(response)
        }
        (&Method::PUT, ["apps", name, "kv", store, key]) => {
            let key = decode_segment(key)?;
            // A value is at most 1 MiB; a little more is read so the store
            // names the limit.
            let value = match read_body(request, (1 << 20) + 1).await? {
                Ok(bytes) => bytes.to_vec(),
                Err(response) => return Ok(response),
            };
            platform.kv_set(name, store, &key, value).await?;
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::GET, ["apps", name, "logs"]) => {
            let (after, tail) = log_query(&query)?;
            json(StatusCode::OK, &platform.logs(name, after.as_deref(), tail)?)
        }
        (&Method::GET, ["apps", name, "scale"]) => json(StatusCode::OK, &platform.scale(name)?),
        (&Method::PUT, ["apps", name, "scale"]) => {
            let init = read_json(request).await?;
            json(StatusCode::OK, &platform.scale_init(name, init)?)
        }
        (&Method::DELETE, ["apps", name, "scale"]) => json(StatusCode::OK, &platform.scale_reset(name)?),
        (&Method::PUT, ["apps", name, "scale", "policies", policy]) => {
            let mut body: crate::api::PolicyInfo = read_json(request).await?;
            body.name = (*policy).to_owned();
            json(StatusCode::OK, &platform.scale_add(name, body)?)
        }
        (&Method::DELETE, ["apps", name, "scale", "policies", policy]) => {
            json(StatusCode::OK, &platform.scale_remove_policy(name, policy)?)
        }
        (&Method::GET, ["instances"]) => json(StatusCode::OK, &platform.instances()),
        (&Method::GET, ["quotas"]) => json(StatusCode::OK, &platform.quotas()?),
        _ => {
            let known = ROUTES.iter().any(|(_, template)| matches_template(template, &path));
            if known {
                Ok(error(StatusCode::METHOD_NOT_ALLOWED, &format!("`{method} {path}` is not supported")))
            } else {
                Ok(error(StatusCode::NOT_FOUND, &format!("no such path `{path}`")))
            }
        }
    }
}

/// Whether `path` fits an OpenAPI path template (`{x}` is one segment).
pub fn matches_template(template: &str, path: &str) -> bool {
    let (template, path): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    template.len() == path.len()
        && template.iter().zip(&path).all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

/// A path segment, percent-decoded (a key may hold `/` as `%2F`).
fn decode_segment(segment: &str) -> Result<String, ControlError> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| ControlError::Invalid(format!("`{segment}` is not UTF-8 once decoded")))
}

/// `tail` (lines, default 100, at most 10,000) and `after` (a line's
/// timestamp) of a logs request.
fn log_query(query: &str) -> Result<(Option<String>, usize), ControlError> {
    let (mut after, mut tail) = (None, 100);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "after" => after = Some(value.into_owned()),
            "tail" => {
                tail = value
                    .parse::<usize>()
                    .map_err(|_| ControlError::Invalid(format!("`tail` must be a number of lines, not `{value}`")))?
                    .min(10_000);
            }
            other => return Err(ControlError::Invalid(format!("unknown query parameter `{other}`"))),
        }
    }
    Ok((after, tail))
}

/// A deploy's options from its query: `manifest`, `scale_to_zero`
/// (`true`/`false`), `cooldown` (a duration such as `500ms`), `memory` (a
/// size such as `128MiB`).
fn deploy_options(query: &str) -> Result<DeployOptions, ControlError> {
    let mut options =
        DeployOptions { manifest: dormouse_manifest::DEFAULT_MANIFEST_FILE.to_owned(), ..Default::default() };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "manifest" => options.manifest = value.into_owned(),
            "scale_to_zero" => {
                options.scale_to_zero = value.parse().map_err(|_| {
                    ControlError::Invalid(format!("`scale_to_zero` must be `true` or `false`, not `{value}`"))
                })?;
            }
            "cooldown" => {
                let cooldown = humantime::parse_duration(&value)
                    .map_err(|error| ControlError::Invalid(format!("invalid `cooldown` `{value}`: {error}")))?;
                if cooldown < Duration::from_millis(100) {
                    return Err(ControlError::Invalid(format!("`cooldown` `{value}` is below the minimum of 100ms")));
                }
                options.cooldown = Some(cooldown);
            }
            "memory" => {
                let size = value
                    .parse::<bytesize::ByteSize>()
                    .map_err(|error| ControlError::Invalid(format!("invalid `memory` `{value}`: {error}")))?;
                if size.as_u64() < dormouse_manifest::MIN_SERVICE_MEMORY {
                    return Err(ControlError::Invalid(format!("`memory` `{value}` is below the 4MiB minimum")));
                }
                options.memory = Some(size.as_u64());
            }
            other => return Err(ControlError::Invalid(format!("unknown query parameter `{other}`"))),
        }
    }
    Ok(options)
}

/// Receives an upload into a new file in `dir`, hashing it on the way (it
/// is never held whole in memory); past `limit` bytes, the 413 to answer
/// with. A dropped upload (its client left) removes its file.
async fn receive(
    request: Request<Incoming>,
    limit: usize,
    dir: &Path,
) -> Result<Result<crate::platform::Upload, Response<Full<Bytes>>>, ControlError> {
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncWriteExt as _;
    let too_large =
        || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the upload is larger than the limit of {} MiB", limit >> 20));
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Ok(Err(too_large()));
    }
    let (file, path) = tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(dir)
        .map_err(|error| ControlError::Internal(error.into()))?
        .into_parts();
    let mut upload = crate::platform::Upload { path, hash: String::new() };
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = blake3::Hasher::new();
    let mut body = request.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ControlError::Invalid(format!("the upload broke off: {error}")))?;
        let Ok(data) = frame.into_data() else { continue };
        received += data.len();
        if received > limit {
            return Ok(Err(too_large()));
        }
        hasher.update(&data);
        file.write_all(&data).await.map_err(|error| ControlError::Internal(error.into()))?;
    }
    file.flush().await.map_err(|error| ControlError::Internal(error.into()))?;
    upload.hash = hasher.finalize().to_hex().to_string();
    Ok(Ok(upload))
}

/// The request body, read to at most `limit` bytes; past it, the 413 to
/// answer with.
async fn read_body(
    request: Request<Incoming>,
    limit: usize,
) -> Result<Result<Bytes, Response<Full<Bytes>>>, ControlError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let too_large =
        || error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the upload is larger than the limit of {} MiB", limit >> 20));
    if declared.is_some_and(|length| length > limit as u64) {
        return Ok(Err(too_large()));
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(Ok(collected.to_bytes())),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Ok(Err(too_large())),
        Err(error) => Err(ControlError::Invalid(format!("the upload broke off: {error}"))),
    }
}

/// A JSON request body of at most [`MAX_JSON_BYTES`].
async fn read_json<T: serde::de::DeserializeOwned>(request: Request<Incoming>) -> Result<T, ControlError> {
    let body = match Limited::new(request.into_body(), MAX_JSON_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(ControlError::TooLarge(format!(
                "the request body is larger than {} KiB",
                MAX_JSON_BYTES >> 10
            )));
        }
        Err(error) => return Err(ControlError::Invalid(format!("the request body broke off: {error}"))),
    };
    serde_json::from_slice(&body).map_err(|error| ControlError::Invalid(format!("invalid JSON: {error}")))
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Result<Response<Full<Bytes>>, ControlError> {
    let body = serde_json::to_vec_pretty(value).map_err(anyhow::Error::from)?;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    Ok(response)
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &ErrorBody { message: message.to_owned() }).expect("an error body serializes")
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A new bearer token: 32 random bytes from the kernel, hex.
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_one_segment_per_parameter() {
        assert!(matches_template("/v1/apps/{name}", "/v1/apps/hello"));
        assert!(!matches_template("/v1/apps/{name}", "/v1/apps/"));
        assert!(!matches_template("/v1/apps/{name}", "/v1/apps/a/b"));
        assert!(matches_template("/v1/apps/{name}/services/{service}/stop", "/v1/apps/a/services/web/stop"));
    }

    #[test]
    fn deploy_options_from_the_query() {
        let options = deploy_options("scale_to_zero=true&cooldown=250ms&manifest=app%2Fspin.toml").unwrap();
        assert_eq!(options.manifest, "app/spin.toml");
        assert!(options.scale_to_zero);
        assert_eq!(options.cooldown, Some(Duration::from_millis(250)));
        assert!(deploy_options("").is_ok_and(|o| o.manifest == "spin.toml" && !o.scale_to_zero));
        assert_eq!(deploy_options("memory=128MiB").unwrap().memory, Some(128 << 20));
        for bad in ["scale_to_zero=yes", "cooldown=10ms", "cooldown=soon", "colour=blue", "memory=1KiB", "memory=x"] {
            assert!(deploy_options(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_checked_whole() {
        let with = |value: &str| Request::builder().header(header::AUTHORIZATION, value).body(()).unwrap();
        assert!(authorized(&with("Bearer abc"), "abc"));
        assert!(authorized(&with("bearer abc"), "abc"));
        assert!(!authorized(&with("Bearer abd"), "abc"));
        assert!(!authorized(&with("Bearer ab"), "abc"));
        assert!(!authorized(&with("abc"), "abc"));
        assert!(!authorized(&Request::new(()), "abc"));
    }
}
