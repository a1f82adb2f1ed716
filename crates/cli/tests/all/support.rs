//! Test harness: write an app, start `dormouse up` on port 0, talk HTTP to it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Longest any test waits for a server to start or a response to arrive.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The committed guest fixture `name`.wasm.
pub fn guest(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/wasm").join(format!("{name}.wasm"));
    assert!(path.exists(), "missing guest fixture {}", path.display());
    path.canonicalize().unwrap()
}

/// An app directory with a `spin.toml` routing `route` → guest for each pair.
pub struct App {
    pub dir: tempfile::TempDir,
}

impl App {
    pub fn new(routes: &[(&str, &str)]) -> App {
        let mut manifest = String::from("spin_manifest_version = 2\n\n[application]\nname = \"test-app\"\n");
        let mut guests: Vec<&str> = Vec::new();
        for (route, guest_name) in routes {
            manifest.push_str(&format!("\n[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"{guest_name}\"\n"));
            if !guests.contains(guest_name) {
                guests.push(guest_name);
            }
        }
        for name in guests {
            manifest.push_str(&format!("\n[component.{name}]\nsource = \"{}\"\n", guest(name).display()));
        }
        App::from_manifest(&manifest)
    }

    pub fn from_manifest(manifest: &str) -> App {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spin.toml"), manifest).unwrap();
        App { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn start(&self, extra_args: &[&str]) -> Server {
        Server::start(self.path(), extra_args)
    }

    /// Starts with extra environment variables for dormouse itself.
    pub fn start_with_env(&self, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with_env(self.path(), extra_args, env)
    }

    /// Writes `contents` to `relative` inside the app directory.
    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Runs `dormouse up` expecting it to refuse to start; returns its stderr.
    pub fn fails_to_start(&self, extra_args: &[&str]) -> String {
        let mut child = dormouse()
            .args(["up", "--listen", "127.0.0.1:0", "--from"])
            .arg(self.path())
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > PATIENCE {
                let _ = child.kill();
                panic!("dormouse started but should have refused to: {}", stderr.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "dormouse exited 0 but should have failed");
        // The collector thread finishes once the pipe closes.
        std::thread::sleep(Duration::from_millis(50));
        stderr.lock().unwrap().clone()
    }
}

/// Reads `read` until it holds `text`, or fails after `PATIENCE`.
fn wait_for_text(what: &str, text: &str, read: impl Fn() -> String) -> String {
    let started = Instant::now();
    loop {
        let output = read();
        if output.contains(text) {
            return output;
        }
        assert!(started.elapsed() < PATIENCE, "{what} never said `{text}`: {output}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`), when it has one.
    pub admin: Option<SocketAddr>,
    /// Where its control socket is.
    pub state_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

pub fn dormouse() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dormouse"))
}

impl Server {
    pub fn start(app_dir: &Path, extra_args: &[&str]) -> Server {
        Server::start_with_env(app_dir, extra_args, &[])
    }

    pub fn start_with_env(app_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut command = dormouse();
        command
            .args(["up", "--listen", "127.0.0.1:0", "--from"])
            .arg(app_dir)
            .args(extra_args)
            .envs(env.iter().copied());
        let state_dir = extra_args
            .iter()
            .position(|arg| *arg == "--state-dir")
            .map(|at| PathBuf::from(extra_args[at + 1]))
            .unwrap_or_else(|| app_dir.join(".dormouse"));
        Server::spawn(command, state_dir)
    }

    /// `dormouse daemon` on a free port with its state in `state_dir`.
    pub fn daemon(state_dir: &Path, extra_args: &[&str]) -> Server {
        let mut command = dormouse();
        command.args(["daemon", "--listen", "127.0.0.1:0", "--state-dir"]).arg(state_dir).args(extra_args);
        // Not the default port: tests run side by side.
        if !extra_args.contains(&"--admin-listen") {
            command.args(["--admin-listen", "127.0.0.1:0"]);
        }
        Server::spawn(command, state_dir.to_owned())
    }

    /// Runs `command` and waits for its banner (`up`'s or the daemon's).
    fn spawn(mut command: Command, state_dir: PathBuf) -> Server {
        // `info`, unless the test asked for another level.
        if !command.get_envs().any(|(name, _)| name == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting dormouse");
        let stderr = collect(child.stderr.take().unwrap());
        let stdout = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let admin = Arc::new(Mutex::new(None));
        let admin_seen = admin.clone();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stdout_text = stdout.clone();
        std::thread::spawn(move || {
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("Admin at http://").and_then(|l| l.split(' ').next()) {
                    *admin_seen.lock().unwrap() = Some(addr.parse::<SocketAddr>().unwrap());
                }
                // `https` when serving TLS.
                let banner = line.replace("https://", "http://");
                if let Some(addr) = banner.strip_prefix("Serving http://") {
                    let _ = addr_tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                if let Some(port) =
                    banner.strip_prefix("Serving apps at http://<app>.").and_then(|l| l.rsplit(':').next())
                {
                    let _ = addr_tx.send(SocketAddr::from(([127, 0, 0, 1], port.parse().unwrap())));
                }
                let mut text = stdout_text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let addr = match addr_rx.recv_timeout(PATIENCE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("dormouse did not start: {}", stderr.lock().unwrap());
            }
        };
        // The admin line comes before the one with the address.
        let admin = *admin.lock().unwrap();
        Server { child, addr, admin, state_dir, stderr, stdout }
    }

    /// A client of its control API.
    pub fn control(&self) -> dormouse_control::client::Client {
        use dormouse_control::client::{Client, Endpoint};
        Client::new(Endpoint::Unix(self.state_dir.join("control.sock")))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the log holds `text` (lines arrive through a pipe, a
    /// little after the events they report), and returns the log.
    pub fn wait_for_log(&self, text: &str) -> String {
        wait_for_text("the log", text, || self.stderr())
    }

    /// Waits until what the server printed holds `text`, and returns it.
    pub fn wait_for_stdout(&self, text: &str) -> String {
        wait_for_text("stdout", text, || self.stdout())
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args(["-s", signal, &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Kills dormouse outright (SIGKILL), as the OOM killer would.
    pub fn kill_outright(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < PATIENCE, "dormouse did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Context switches of all the process's threads so far.
    pub fn context_switches(&self) -> u64 {
        let mut total = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid())).unwrap() {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
            for line in status.lines().filter(|l| l.contains("ctxt_switches:")) {
                total += line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
            }
        }
        total
    }

    /// A line of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    text
}

/// Sends `request` as raw bytes on a new connection and returns everything
/// the server sent until it closed the connection (or 10 s passed).
pub fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A connection to `addr` upgraded (`101 Switching Protocols`) to the test
/// app's raw echo: `GET /chat` with `Upgrade: echo`.
pub async fn upgraded_to_echo(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// The state letter of a process (`R`, `S`, `Z` …), `None` once it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("State:")).and_then(|s| s.trim().chars().next())
}

/// Waits until process `pid` is gone (or a zombie, dead but not yet reaped),
/// failing after `PATIENCE`.
pub fn wait_gone(pid: u32, what: &str) {
    let started = Instant::now();
    while process_state(pid).is_some_and(|state| state != 'Z') {
        assert!(started.elapsed() < PATIENCE, "{what} (pid {pid}) is still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The value of `name` as the echo guest reported it.
    pub fn echoed(&self, name: &str) -> Option<String> {
        let head = self.body.split("\n\n").next().unwrap();
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            (key == name).then(|| value.to_owned())
        })
    }
}

/// [`get`] of an owned URL, for a spawned task.
pub async fn get_owned(url: String) -> Reply {
    get(&url).await
}

pub async fn get(url: &str) -> Reply {
    send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

/// A request with a method and a body.
pub async fn call(method: &str, url: &str, body: impl Into<Bytes>) -> Reply {
    send(Request::builder().method(method).uri(url).body(Full::new(body.into())).unwrap()).await
}

/// A GET with extra headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request.body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn send(request: Request<Full<Bytes>>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(PATIENCE, client.request(request)).await.expect("response in time").unwrap();
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(PATIENCE, body.collect()).await.expect("body in time").unwrap().to_bytes();
    Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// A plain HTTP server in the test process, on a free loopback port, that
/// counts the connections it accepts. `/hello` answers a greeting,
/// `/redirect?to=URL` a 302 to URL, `/silent` nothing at all.
pub struct Upstream {
    pub addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        use hyper::body::Incoming;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|request: Request<Incoming>| async move {
                        let query = request.uri().query().unwrap_or_default().to_owned();
                        let response = match request.uri().path() {
                            "/hello" => hyper::Response::new(Full::new(Bytes::from("upstream says hi"))),
                            "/redirect" => hyper::Response::builder()
                                .status(StatusCode::FOUND)
                                .header("location", query.strip_prefix("to=").unwrap_or_default())
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                            "/silent" => {
                                tokio::time::sleep(PATIENCE).await;
                                hyper::Response::new(Full::new(Bytes::new()))
                            }
                            _ => hyper::Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, connections, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asks `path` of a server started with a CPU limit far below its wall-clock
/// limit (`--cpu-limit 200ms --timeout 50s`), from a guest that never stops:
/// the CPU deadline answers 500 long before the wall clock would answer 504.
pub async fn assert_stopped_by_the_cpu_deadline(server: &Server, path: &str) {
    let started = Instant::now();
    let reply = get(&server.url(path)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", reply.body);
    assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
    server.wait_for_log("CPU budget");
}
