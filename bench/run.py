#!/usr/bin/env python3
"""The dormouse benchmark suite: one command, peers and baselines in the same run.

    bench/run.py                    # every scenario, 3 rounds (about 30 min on 2 cores)
    bench/run.py --only hello       # some scenarios: hello instantiate heavy density load services kv wasi3
    bench/run.py --quick            # 1 round, short runs: for trying a change, not for results

It builds dormouse and the native hyper hello server in release mode, installs
what is missing into bench/.tools (wasmtime-cli 48 and oha with `cargo install
--locked`, wrk from Debian, componentize-py from PyPI, componentize-js from npm),
builds the heavy guests into bench/.build, runs each scenario with the
contenders alternating, and writes bench/results/<date>-<host>.md and .json.

Figures are medians over the rounds. Everything runs on this one machine: the
load generator shares the CPUs with the server, as it does for every contender.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TOOLS = BENCH / ".tools"
BUILD = BENCH / ".build"
RESULTS = BENCH / "results"
WASMTIME_VERSION = "48.0.8"
OHA_VERSION = "1.16.0"
COMPONENTIZE_PY = "componentize-py==0.25.1"
SCENARIOS = ["hello", "instantiate", "heavy", "density", "load", "services", "kv", "wasi3", "metrics", "hop"]
GUESTS = ROOT / "guests" / "wasm"


def log(message):
    print(f"[bench {datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def run(command, **kwargs):
    log("$ " + " ".join(str(c) for c in command))
    return subprocess.run([str(c) for c in command], check=True, **kwargs)


# ---------------------------------------------------------------- set-up ----

def build_dormouse():
    run(["cargo", "build", "--release", "--locked", "-p", "dormouse-cli", "-p", "dormouse-bench-native-hello"], cwd=ROOT)
    return ROOT / "target/release/dormouse", ROOT / "target/release/native-hello", ROOT / "target/release/native-proxy"


def cargo_tool(binary, crate, version):
    path = TOOLS / "bin" / binary
    if not path.exists():
        run(["cargo", "install", "--locked", "--root", TOOLS, f"{crate}@{version}"])
    return path


def wrk():
    if shutil.which("wrk") is None:
        run(["apt-get", "install", "-y", "-qq", "wrk"])
    return shutil.which("wrk")


def venv_tool(name, requirement):
    venv = TOOLS / "venv"
    if not (venv / "bin" / name).exists():
        run([sys.executable, "-m", "venv", venv])
        run([venv / "bin" / "pip", "install", "-q", requirement])
    return venv / "bin" / name


def wit_copy(version):
    """guests/wit with every 0.2.x WASI version relabelled (componentize-js
    exports exactly wasi:http/incoming-handler@0.2.10)."""
    target = BUILD / f"wit-{version}"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(ROOT / "guests" / "wit", target)
    for wit in target.rglob("*.wit"):
        text = wit.read_text()
        for minor in range(10, 20):
            text = text.replace(f"0.2.{minor}", version)
        wit.write_text(text)
    return target


def build_heavy_guests():
    BUILD.mkdir(parents=True, exist_ok=True)
    js_dir = BENCH / "guests" / "js"
    js = BUILD / "js-hello.wasm"
    if not js.exists() or js.stat().st_mtime < (js_dir / "app.js").stat().st_mtime:
        if not (js_dir / "node_modules").exists():
            # `npm ci` trips over optional platform packages; install keeps the lock.
            run(["npm", "install", "--no-audit", "--no-fund"], cwd=js_dir)
        run([js_dir / "node_modules/.bin/componentize-js", "--wit", wit_copy("0.2.10"),
             "--world-name", "dormouse:guests/proxy", "-d", "stdio", "-o", js, js_dir / "app.js"])
    py_dir = BENCH / "guests" / "python"
    py = BUILD / "py-hello.wasm"
    if not py.exists() or py.stat().st_mtime < (py_dir / "app.py").stat().st_mtime:
        componentize_py = venv_tool("componentize-py", COMPONENTIZE_PY)
        run([componentize_py, "-d", ROOT / "guests" / "wit", "-w", "dormouse:guests/proxy",
             "componentize", "app", "-o", py], cwd=py_dir)
    return js, py


def app_dir(name, components):
    """An app directory routing `/...` (or one route per component)."""
    manifest = [f'spin_manifest_version = 2\n[application]\nname = "{name}"\n']
    for route, component_id, source in components:
        manifest.append(f'[[trigger.http]]\nroute = "{route}"\ncomponent = "{component_id}"\n')
        manifest.append(f'[component.{component_id}]\nsource = "{source}"\n')
    return fresh_app(name, "".join(manifest))


def fresh_app(name, manifest):
    """An empty app directory `name` holding `manifest` as its spin.toml."""
    directory = BUILD / "apps" / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / "spin.toml").write_text(manifest)
    return directory


def service_app(name, command, scale_to_zero):
    """An app whose one service, `app`, runs `command` (argv) on every path."""
    argv = ", ".join(json.dumps(str(part)) for part in command)
    return fresh_app(name, f'spin_manifest_version = 2\n[application]\nname = "{name}"\n'
                           f'[[trigger.http]]\nroute = "/..."\nservice = "app"\n'
                           f'[service.app]\ncommand = [{argv}]\nscale_to_zero = {scale_to_zero}\n')


# ------------------------------------------------------------ processes ----

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: dormouse's control API."""

    def __init__(self, socket_path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(socket_path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def control_get(state_dir, path):
    """GET `path` from the control API of the dormouse whose state is in `state_dir`."""
    connection = UnixHTTPConnection(Path(state_dir) / "control.sock")
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"control API {path}: {response.status} {body!r}")
        return json.loads(body)
    finally:
        connection.close()


def http_status(port, path):
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        head = s.recv(64)
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else 0


def process_cpu_seconds(pid):
    """User and system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    """A server process on a free port; `ready` waits for its first 200."""

    def __init__(self, command_for_port, path="/hello"):
        self.port = free_port()
        self.path = path
        self.started = time.monotonic()
        self.process = subprocess.Popen([str(c) for c in command_for_port(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)

    def ready(self, timeout=300):
        """Seconds from spawn to the first 200."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if http_status(self.port, self.path) == 200:
                    return time.monotonic() - self.started
            except OSError:
                time.sleep(0.001)
        raise RuntimeError("server not ready in time")

    def url(self):
        return f"http://127.0.0.1:{self.port}{self.path}"

    def cpu_seconds(self):
        return process_cpu_seconds(self.process.pid)

    def rss_mib(self):
        return process_rss_mib(self.process.pid)

    def stop(self):
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()


WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk_load(wrk_path, url, connections, seconds, method="GET", body=None):
    script = BUILD / "report.lua"
    request = f'wrk.method = "{method}"\n' + (f'wrk.body = "{body}"\n' if body is not None else "")
    script.write_text(request + WRK_SCRIPT)
    threads = min(2, connections)
    out = subprocess.run([wrk_path, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("WRK "))
    result = json.loads(line[4:])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    if result["errors"] or result["non2xx"]:
        log(f"warning: {result['errors']} errors, {result['non2xx']} non-2xx from {url}")
    return result


def oha_rate(oha_path, url, connections, rate, seconds):
    """Open loop at a constant rate, latency measured from when each request
    was due (coordinated-omission corrected)."""
    out = subprocess.run([oha_path, "-z", f"{seconds}s", "-c", str(connections), "-q", str(int(rate)),
                          "--latency-correction", "--no-tui", "--output-format", "json", url],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    percentiles = report["latencyPercentiles"]
    return {
        "rate": rate,
        "rps": report["summary"]["requestsPerSec"],
        "success": report["summary"]["successRate"],
        "p50_us": percentiles["p50"] * 1e6,
        "p99_us": percentiles["p99"] * 1e6,
        "p999_us": percentiles["p99.9"] * 1e6,
    }


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def one_and_fifty(ctx, url, method="GET", body=None):
    """p50 and p99 at 1 connection and req/s at 50 (after a 1 s warm-up)."""
    wrk_load(ctx["wrk"], url, 1, 1, method, body)
    single = wrk_load(ctx["wrk"], url, 1, ctx["seconds"], method, body)
    many = wrk_load(ctx["wrk"], url, 50, ctx["seconds"], method, body)
    return {"p50_us": single["p50_us"], "p99_us": single["p99_us"], "rps": many["rps"]}


def medians(runs):
    """Per name, the median of each `one_and_fifty` figure over the rounds."""
    return {name: {"p50_us": median_of(r, "p50_us"), "p99_us": median_of(r, "p99_us"),
                   "rps": median_of(r, "rps"), "runs": r} for name, r in runs.items()}


# ------------------------------------------------------------- scenarios ----

def hello_contenders(ctx, name):
    """The hello guest under dormouse and `wasmtime serve`, and the native server."""
    hello = GUESTS / "hello.wasm"
    app = app_dir(name, [("/hello", "hello", hello)])
    cache = BUILD / f"cache-{name}"
    return {
        "dormouse": lambda p: [ctx["dormouse"], "up", "--from", app, "--listen", f"127.0.0.1:{p}", "--cache-dir", cache],
        "wasmtime serve": lambda p: [ctx["wasmtime"], "serve", "--addr", f"127.0.0.1:{p}", hello],
        "native hyper": lambda p: [ctx["native"], f"127.0.0.1:{p}"],
    }


def scenario_hello(ctx):
    contenders = hello_contenders(ctx, "hello")
    runs = {(name, c): [] for name in contenders for c in ctx["connections"]}
    for round_number in range(ctx["rounds"]):
        for connections in ctx["connections"]:
            for name, command in contenders.items():
                with Server(command) as server:
                    server.ready()
                    wrk_load(ctx["wrk"], server.url(), connections, 1)  # warm-up
                    cpu_before = server.cpu_seconds()
                    result = wrk_load(ctx["wrk"], server.url(), connections, ctx["seconds"])
                    # The server's user and system time per request.
                    result["cpu_us"] = (server.cpu_seconds() - cpu_before) / max(result["requests"], 1) * 1e6
                    runs[(name, connections)].append(result)
                    log(f"hello round {round_number + 1} c={connections} {name}: {result['rps']:.0f} req/s, "
                        f"p50 {result['p50_us']} µs, {result['cpu_us']:.1f} µs CPU/request")
    table = []
    for (name, connections), results in runs.items():
        table.append({"contender": name, "connections": connections, "runs": results,
                      "rps": median_of(results, "rps"), "p50_us": median_of(results, "p50_us"),
                      "p99_us": median_of(results, "p99_us"), "p999_us": median_of(results, "p999_us"),
                      "cpu_us": median_of(results, "cpu_us")})
    return table


def scenario_metrics(ctx):
    """The cost of metrics on the hot path: the hello app with no admin
    listener (nothing is counted) against one with it, scraped once a second
    as Prometheus would, alternated in each round."""
    hello = GUESTS / "hello.wasm"
    app = app_dir("metrics", [("/hello", "hello", hello)])
    cache = BUILD / "cache-metrics"
    admin_port = free_port()
    base = lambda p: [ctx["dormouse"], "up", "--from", app, "--listen", f"127.0.0.1:{p}", "--cache-dir", cache]
    contenders = {
        "metrics off": base,
        "metrics on": lambda p: base(p) + ["--admin-listen", f"127.0.0.1:{admin_port}"],
    }
    runs = {name: [] for name in contenders}
    for round_number in range(ctx["rounds"]):
        for name, command in contenders.items():
            with Server(command) as server:
                server.ready()
                scraping = name == "metrics on"
                stop = threading.Event()
                scrapes = []

                def scrape():
                    while not stop.wait(1.0):
                        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics") as reply:
                            scrapes.append(len(reply.read()))

                scraper = threading.Thread(target=scrape, daemon=True)
                if scraping:
                    scraper.start()
                result = one_and_fifty(ctx, server.url())
                stop.set()
                if scraping:
                    scraper.join()
                    result["scrapes"] = len(scrapes)
                runs[name].append(result)
                log(f"metrics round {round_number + 1} {name}: {result['rps']:.0f} req/s at 50, "
                    f"p50 {result['p50_us']} µs at 1")
    return medians(runs)


def scenario_instantiate(ctx):
    args = ["cargo", "bench", "--locked", "-p", "dormouse-wasm-host", "--bench", "instantiate", "--", "--noplot"]
    if ctx["quick"]:
        args += ["--warm-up-time", "1", "--measurement-time", "2"]
    run(args, cwd=ROOT)
    results = {}
    for variant in ["pooling", "no-pooling", "wasi-0.3-pooling"]:
        estimates = json.loads((ROOT / "target/criterion/instantiate+handle+teardown" / variant / "new/estimates.json").read_text())
        results[variant] = {"median_us": estimates["median"]["point_estimate"] / 1000,
                            "mean_us": estimates["mean"]["point_estimate"] / 1000}
        log(f"instantiate {variant}: median {results[variant]['median_us']:.1f} µs")
    return results


def scenario_heavy(ctx):
    js, py = ctx["heavy_guests"]
    results = {}
    for name, wasm in [("javascript", js), ("python", py)]:
        app = app_dir(f"heavy-{name}", [("/...", "app", wasm)])
        precompiled = BUILD / f"{name}.cwasm"
        run([ctx["wasmtime"], "compile", "-o", precompiled, wasm])
        first = {"dormouse cold": [], "dormouse warm": [], "wasmtime serve cold": [], "wasmtime serve precompiled": []}
        for _ in range(ctx["rounds"]):
            cache = Path(tempfile.mkdtemp(prefix="dormouse-bench-"))
            try:
                dormouse = lambda p: [ctx["dormouse"], "up", "--from", app, "--listen", f"127.0.0.1:{p}", "--cache-dir", cache]
                with Server(dormouse, "/") as server:
                    first["dormouse cold"].append(server.ready())
                with Server(dormouse, "/") as server:
                    first["dormouse warm"].append(server.ready())
            finally:
                shutil.rmtree(cache)
            wasmtime_cold = lambda p: [ctx["wasmtime"], "serve", "-Scli", "-C", "cache=n", "--addr", f"127.0.0.1:{p}", wasm]
            with Server(wasmtime_cold, "/") as server:
                first["wasmtime serve cold"].append(server.ready())
            wasmtime_warm = lambda p: [ctx["wasmtime"], "serve", "-Scli", "--allow-precompiled", "--addr", f"127.0.0.1:{p}", precompiled]
            with Server(wasmtime_warm, "/") as server:
                first["wasmtime serve precompiled"].append(server.ready())
        throughput = {"dormouse": [], "wasmtime serve": []}
        cache = BUILD / f"cache-heavy-{name}"
        for _ in range(ctx["rounds"]):
            commands = {
                "dormouse": lambda p: [ctx["dormouse"], "up", "--from", app, "--listen", f"127.0.0.1:{p}", "--cache-dir", cache],
                "wasmtime serve": lambda p: [ctx["wasmtime"], "serve", "-Scli", "--allow-precompiled", "--addr", f"127.0.0.1:{p}", precompiled],
            }
            for contender, command in commands.items():
                with Server(command, "/") as server:
                    server.ready()
                    wrk_load(ctx["wrk"], server.url(), 50, 1)
                    throughput[contender].append(wrk_load(ctx["wrk"], server.url(), 50, ctx["seconds"]))
        results[name] = {
            "size_mib": wasm.stat().st_size / 2**20,
            "first_response_ms": {k: statistics.median(v) * 1000 for k, v in first.items()},
            "first_response_runs_ms": {k: [t * 1000 for t in v] for k, v in first.items()},
            "rps": {k: median_of(v, "rps") for k, v in throughput.items()},
        }
        log(f"heavy {name}: {json.dumps(results[name]['first_response_ms'])} rps {json.dumps(results[name]['rps'])}")
    return results


GREETING = b"Hello from dormouse!\n"


def distinct_hello(index):
    """hello.wasm with its greeting changed to one of the same length: a
    different file, which compiles to its own code."""
    data = (GUESTS / "hello.wasm").read_bytes()
    assert data.count(GREETING) == 1, "the greeting is in the data segment once"
    replacement = f"Hello from a-{index:07}\n".encode()
    assert len(replacement) == len(GREETING)
    return data.replace(GREETING, replacement)


def scenario_density(ctx):
    """`density_count` components in one app, no traffic: copies of one
    file (one compilation, shared) and distinct files (each compiled)."""
    return {kind: density_of(ctx, kind) for kind in ("copies", "distinct")}


def density_of(ctx, kind):
    count = ctx["density_count"]
    directory = BUILD / "apps" / f"density-{kind}"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    manifest = [f'spin_manifest_version = 2\n[application]\nname = "density-{kind}"\n']
    if kind == "copies":
        shutil.copy(GUESTS / "hello.wasm", directory / "hello.wasm")
    for i in range(count):
        source = "hello.wasm"
        if kind == "distinct":
            source = f"c{i}.wasm"
            (directory / source).write_bytes(distinct_hello(i))
        manifest.append(f'[[trigger.http]]\nroute = "/c{i}"\ncomponent = "c{i}"\n[component.c{i}]\nsource = "{source}"\n')
    (directory / "spin.toml").write_text("".join(manifest))
    cache = BUILD / f"cache-density-{kind}"
    shutil.rmtree(cache, ignore_errors=True)
    runs = []
    for round_number in range(ctx["rounds"]):
        command = lambda p: [ctx["dormouse"], "up", "--from", directory, "--listen", f"127.0.0.1:{p}", "--cache-dir", cache]
        with Server(command, f"/c{count - 1}") as server:
            ready = server.ready()
            time.sleep(2)
            cpu_before = server.cpu_seconds()
            time.sleep(10)
            cpu = server.cpu_seconds() - cpu_before
            rss = server.rss_mib()
            # Then every component serves one request: a component's code is
            # loaded by its first request, so this is what the first request
            # costs, and the memory of an app whose components all ran.
            first_us = [timed_get(server.port, f"/c{i}")[0] * 1e6 for i in range(count)]
            runs.append({"ready_s": ready, "rss_mib": rss, "idle_cpu_percent": cpu / 10 * 100,
                         "first_request_p50_us": statistics.median(first_us),
                         "first_request_max_us": max(first_us),
                         "rss_all_served_mib": server.rss_mib(),
                         "cache": "cold" if round_number == 0 else "warm"})
            log(f"density ({kind}): ready {ready:.2f} s, RSS {rss:.1f} MiB, "
                f"idle CPU {runs[-1]['idle_cpu_percent']:.2f} %; each served once: first request p50 "
                f"{runs[-1]['first_request_p50_us']:.0f} µs, RSS {runs[-1]['rss_all_served_mib']:.1f} MiB")
    warm = [r for r in runs if r["cache"] == "warm"] or runs
    return {"components": count, "runs": runs,
            "ready_s": statistics.median(r["ready_s"] for r in warm),
            "rss_mib": statistics.median(r["rss_mib"] for r in warm),
            "first_request_p50_us": statistics.median(r["first_request_p50_us"] for r in warm),
            "rss_all_served_mib": statistics.median(r["rss_all_served_mib"] for r in warm),
            "idle_cpu_percent": statistics.median(r["idle_cpu_percent"] for r in runs)}


def scenario_load(ctx):
    """p99 at a constant 50 % of each contender's measured maximum."""
    contenders = hello_contenders(ctx, "load")
    results = {name: [] for name in contenders}
    for _ in range(ctx["rounds"]):
        for name, command in contenders.items():
            with Server(command) as server:
                server.ready()
                maximum = wrk_load(ctx["wrk"], server.url(), 50, ctx["seconds"])["rps"]
                result = oha_rate(ctx["oha"], server.url(), 50, maximum / 2, ctx["seconds"])
                result["max_rps"] = maximum
                results[name].append(result)
                log(f"load {name}: max {maximum:.0f} req/s, at {maximum / 2:.0f}/s p99 {result['p99_us']:.0f} µs")
    return {name: {"runs": runs, "max_rps": median_of(runs, "max_rps"), "p50_us": median_of(runs, "p50_us"),
                   "p99_us": median_of(runs, "p99_us"), "p999_us": median_of(runs, "p999_us")}
            for name, runs in results.items()}


NGINX_CONF = """daemon off;
pid nginx.pid;
error_log stderr;
worker_processes 1;
events {{}}
http {{
  access_log off;
  client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "Hello from nginx!\\n"; }} }}
}}
"""


def nginx_app(name, port, scale_to_zero):
    directory = BUILD / "apps" / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / "nginx.conf").write_text(NGINX_CONF.format(port=port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    (directory / "spin.toml").write_text(
        f'spin_manifest_version = 2\n[application]\nname = "{name}"\n'
        f'[[trigger.http]]\nroute = "/..."\nservice = "web"\n'
        f'[service.web]\ncommand = ["{nginx}", "-p", ".", "-c", "nginx.conf", "-e", "stderr"]\nport = {port}\n'
        f'scale_to_zero = {scale_to_zero}\n')
    return directory, nginx


def own_start(command, port, cwd=None, env=None):
    """Seconds from spawning an app to its first 200 on `port`, asked in a
    busy loop (the soonest any prober could see it); the app is then stopped."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    while True:
        try:
            if http_status(port, "/") == 200:
                break
        except OSError:
            pass
    elapsed = time.monotonic() - started
    os.killpg(process.pid, signal.SIGTERM)
    process.wait()
    return elapsed


def timed_get(port, path="/"):
    """Seconds for one GET on a new connection, until the status line."""
    started = time.monotonic()
    status = http_status(port, path)
    return time.monotonic() - started, status


def scenario_services(ctx):
    """nginx behind dormouse: wake from stop and from pause, and the proxy hop."""
    samples = 5 if ctx["quick"] else 15
    # The app's own start: spawn nginx and connect until it accepts, then GET.
    port = free_port()
    directory, nginx = nginx_app("services-direct", port, '{ cooldown = "60s" }')
    own = [own_start([nginx, "-p", ".", "-c", "nginx.conf", "-e", "stderr"], port, cwd=directory)
           for _ in range(samples)]
    results = {"nginx_start_to_first_200_ms": statistics.median(own) * 1000}

    for standby in ["stop", "pause"]:
        port = free_port()
        directory, _ = nginx_app(f"services-{standby}", port, f'{{ cooldown = "100ms", standby = "{standby}" }}')
        command = lambda p: [ctx["dormouse"], "up", "--from", directory, "--listen", f"127.0.0.1:{p}"]
        with Server(command, "/") as server:
            server.ready()
            wakes, warm = [], []
            for _ in range(samples):
                time.sleep(0.4)  # past the cooldown: stopped or paused
                elapsed, status = timed_get(server.port)
                assert status == 200, status
                wakes.append(elapsed)
                warm.append(timed_get(server.port)[0])
        results[standby] = {"first_response_ms": statistics.median(wakes) * 1000,
                            "warm_response_ms": statistics.median(warm) * 1000,
                            "runs_ms": [w * 1000 for w in wakes]}
        log(f"services {standby}: wake {results[standby]['first_response_ms']:.2f} ms, warm {results[standby]['warm_response_ms']:.2f} ms")
    results["stop"]["overhead_ms"] = results["stop"]["first_response_ms"] - results["nginx_start_to_first_200_ms"]
    results["pause"]["overhead_ms"] = results["pause"]["first_response_ms"] - results["pause"]["warm_response_ms"]
    results["slow"] = slow_starting_apps(ctx, samples)

    # The proxy hop: req/s through dormouse against nginx directly.
    port = free_port()
    directory, _ = nginx_app("services-hop", port, '{ cooldown = "60s" }')
    hop = {"direct": [], "dormouse": []}
    command = lambda p: [ctx["dormouse"], "up", "--from", directory, "--listen", f"127.0.0.1:{p}"]
    with Server(command, "/") as server:
        server.ready()
        for _ in range(ctx["rounds"]):
            for name, url in [("direct", f"http://127.0.0.1:{port}/"), ("dormouse", server.url())]:
                wrk_load(ctx["wrk"], url, 50, 1)
                hop[name].append(wrk_load(ctx["wrk"], url, 50, ctx["seconds"]))
    results["hop"] = {name: median_of(runs, "rps") for name, runs in hop.items()}
    log(f"services hop: {json.dumps(results['hop'])}")
    return results


HAPROXY_CONF = """global
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend web
  bind 127.0.0.1:{port}
  default_backend app
backend app
  server app 127.0.0.1:{backend}
"""

NGINX_PROXY_CONF = """daemon off;
pid nginx.pid;
error_log stderr;
worker_processes 2;
events {{}}
http {{
  access_log off;
  client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
  upstream app {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""


def group_cpu_seconds(pgid):
    """User and system CPU time so far of every process in group `pgid`
    (nginx's master and workers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def scenario_hop(ctx):
    """The proxy hop to one nginx (one worker), through dormouse, HAProxy
    (`nbthread 2`, `http-reuse always`), nginx as a reverse proxy (two
    workers, keep-alive upstream) and a plain hyper proxy (bench/native-hello's
    `native-proxy`, on tokio's multi-threaded runtime as dormouse, and with
    one single-threaded runtime per CPU), alternated in each round: p50 and
    p99 at 1 connection, req/s at 50, and each proxy's CPU per request at 50.

    The other proxies send all 50 connections' requests to the backend at
    once (no per-server `maxconn`), so dormouse's service does too
    (`target_concurrency = 100`): with the default of 10, 40 of the 50
    requests would wait in dormouse's queue, and the figure would be the
    queue's, not the hop's."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "haproxy"])
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    backend = free_port()
    # The backend is dormouse's own nginx service, kept up for every contender.
    directory, _ = nginx_app("hop", backend, '{ cooldown = "60s" }')
    manifest = directory / "spin.toml"
    manifest.write_text(manifest.read_text() + "autoscale = { min = 1, max = 1, target_concurrency = 100 }\n")
    proxy_dir = BUILD / "apps" / "hop-proxies"
    shutil.rmtree(proxy_dir, ignore_errors=True)
    (proxy_dir / "tmp").mkdir(parents=True)
    contenders = {
        "direct": None,
        "dormouse": lambda p: [ctx["dormouse"], "up", "--from", directory, "--listen", f"127.0.0.1:{p}"],
        "HAProxy": lambda p: (
            (proxy_dir / "haproxy.cfg").write_text(HAPROXY_CONF.format(port=p, backend=backend)),
            [haproxy, "-db", "-f", proxy_dir / "haproxy.cfg"])[1],
        "nginx proxy": lambda p: (
            (proxy_dir / "nginx.conf").write_text(NGINX_PROXY_CONF.format(port=p, backend=backend)),
            [nginx, "-p", proxy_dir, "-c", "nginx.conf", "-e", "stderr"])[1],
        # dormouse's own libraries with nothing of dormouse: the floor for a
        # hop built on hyper and tokio.
        "hyper proxy": lambda p: [ctx["native_proxy"], f"127.0.0.1:{p}", f"127.0.0.1:{backend}"],
        # The same, with a connection, its backend connection and their tasks
        # kept on one thread, as dormouse's I/O threads keep them: what
        # tokio's work-stealing costs the hop.
        "hyper proxy, per core": lambda p: [ctx["native_proxy"], f"127.0.0.1:{p}", f"127.0.0.1:{backend}", "per-core"],
    }
    runs = {name: [] for name in contenders}
    # dormouse serves the backend throughout; the proxies come and go.
    with Server(contenders["dormouse"], "/") as host:
        host.ready()
        for round_number in range(ctx["rounds"]):
            for name, command in contenders.items():
                if name == "direct":
                    url, cpu = f"http://127.0.0.1:{backend}/", None
                    result = one_and_fifty(ctx, url)
                elif name == "dormouse":
                    result = measured_hop(ctx, host.url(), lambda: process_cpu_seconds(host.process.pid))
                else:
                    with Server(command, "/") as proxy:
                        proxy.ready()
                        result = measured_hop(ctx, proxy.url(), lambda: group_cpu_seconds(proxy.process.pid))
                runs[name].append(result)
                log(f"hop round {round_number + 1} {name}: {result['rps']:.0f} req/s at 50, p50 {result['p50_us']} µs"
                    + (f", {result['cpu_us']:.1f} µs CPU/request" if "cpu_us" in result else ""))
    table = medians(runs)
    for name, rows in runs.items():
        if rows and "cpu_us" in rows[0]:
            table[name]["cpu_us"] = median_of(rows, "cpu_us")
    return table


def measured_hop(ctx, url, cpu_seconds):
    """`one_and_fifty` through a proxy, with the proxy's CPU per request
    over the 50-connection run."""
    wrk_load(ctx["wrk"], url, 1, 1)
    single = wrk_load(ctx["wrk"], url, 1, ctx["seconds"])
    before = cpu_seconds()
    many = wrk_load(ctx["wrk"], url, 50, ctx["seconds"])
    used = cpu_seconds() - before
    return {"p50_us": single["p50_us"], "p99_us": single["p99_us"], "rps": many["rps"],
            "cpu_us": used / max(many["requests"], 1) * 1e6}


SLOW_APP = """
import http.server, os, sys, time
time.sleep(float(sys.argv[1]))
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    first = None
    def do_GET(self):
        if H.first is None:
            H.first = time.monotonic()
        body = f"listening to first request {(H.first - listening) * 1e6:.0f} us\\n".encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
server = http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
listening = time.monotonic()
server.serve_forever()
"""


def first_request_us(port):
    """GET / and the app's own count of microseconds from listening to its
    first request (SLOW_APP's answer); None while nothing listens."""
    import http.client
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/")
        body = connection.getresponse().read().decode()
        connection.close()
        return float(body.split()[-2])
    except (OSError, ValueError, IndexError):
        return None


def slow_starting_apps(ctx, samples):
    """Apps that take from ~40 ms (Python's own start) to 2 s to listen, woken
    from stop behind dormouse. The app itself times how long after it began
    listening its first request came (CLOCK_MONOTONIC, in the app): with a
    client polling in a busy loop, and behind dormouse. The difference is
    what dormouse's readiness probe and the first hop add, free of the
    app's own start-up jitter (±10 ms for Python here), which a comparison
    of start → first 200 times would drown in. Also dormouse's CPU time per
    wake (mostly the probe)."""
    BUILD.mkdir(parents=True, exist_ok=True)
    script = BUILD / "slow_app.py"
    script.write_text(SLOW_APP)
    python = sys.executable
    results = {}
    for delay in [0.0, 0.5, 2.0]:
        name = f"python +{delay:g}s"
        directory = service_app(f"slow-{delay:g}", [python, script, delay], '{ cooldown = "100ms" }')
        command = lambda p: [ctx["dormouse"], "up", "--from", directory, "--listen", f"127.0.0.1:{p}"]
        own, behind, wakes, cpu = [], [], [], []
        with Server(command, "/.well-known/spin/health") as server:
            server.ready()
            for _ in range(samples):
                # The app alone, polled by a busy client.
                app_port = free_port()
                process = subprocess.Popen([python, script, str(delay)], env={**os.environ, "PORT": str(app_port)},
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True)
                while (seen := first_request_us(app_port)) is None:
                    pass
                own.append(seen)
                os.killpg(process.pid, signal.SIGTERM)
                process.wait()
                # Behind dormouse, from stop.
                time.sleep(0.5)
                before, started = server.cpu_seconds(), time.monotonic()
                behind.append(first_request_us(server.port))
                wakes.append(time.monotonic() - started)
                cpu.append(server.cpu_seconds() - before)
        own_us, behind_us = statistics.median(own), statistics.median(behind)
        results[name] = {"own_us": own_us, "behind_us": behind_us, "overhead_ms": (behind_us - own_us) / 1000,
                         "own_runs_us": own, "behind_runs_us": behind,
                         "wake_ms": statistics.median(wakes) * 1000,
                         "dormouse_cpu_ms_per_wake": statistics.median(cpu) * 1000,
                         "dormouse_cpu_percent_of_wake": statistics.median(c / w for c, w in zip(cpu, wakes)) * 100}
        log(f"services {name}: listening → first request {own_us:.0f} µs alone, {behind_us:.0f} µs behind dormouse "
            f"(overhead {results[name]['overhead_ms']:.2f} ms); wake {results[name]['wake_ms']:.0f} ms, "
            f"dormouse CPU {results[name]['dormouse_cpu_ms_per_wake']:.1f} ms a wake")
    return results


def criterion_median_us(group, name):
    """Criterion keeps `group/a/b` in `target/criterion/group/a_b`."""
    estimates = json.loads((ROOT / "target/criterion" / group / name.replace("/", "_") / "new/estimates.json").read_text())
    return estimates["median"]["point_estimate"] / 1000


def redis_server():
    """Debian's redis-server on a free loopback port, no persistence."""
    if shutil.which("redis-server") is None:
        run(["apt-get", "install", "-y", "-qq", "redis-server"])
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="dormouse-bench-redis-"))
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(directory)],
                               stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def scenario_kv(ctx):
    """Key-value get and set: in process (criterion, against the client
    libraries alone), and through the `kv` guest over HTTP (wrk, against the
    same guest answering without a store call), for SQLite and Redis."""
    redis, redis_port = redis_server()
    try:
        args = ["cargo", "bench", "--locked", "-p", "dormouse-kv", "--bench", "kv", "--", "--noplot"]
        if ctx["quick"]:
            args += ["--warm-up-time", "1", "--measurement-time", "2"]
        run(args, cwd=ROOT)
        in_process = {f"{backend}/{op}": criterion_median_us("kv", f"{backend}/{op}")
                      for backend in ["sqlite", "sqlite-direct", "redis", "redis-direct"] for op in ["get", "set"]}
        log(f"kv in process (median µs): {json.dumps(in_process)}")

        value = "v" * 100
        over_http = {}
        for backend in ["sqlite", "redis"]:
            directory = BUILD / "apps" / f"kv-{backend}"
            if directory.exists():
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
            (directory / "spin.toml").write_text(
                'spin_manifest_version = 2\n[application]\nname = "kv"\n'
                '[[trigger.http]]\nroute = "/..."\ncomponent = "kv"\n'
                f'[component.kv]\nsource = "{GUESTS / "kv.wasm"}"\nkey_value_stores = ["default"]\n')
            extra = []
            if backend == "redis":
                (directory / "runtime-config.toml").write_text(
                    f'[key_value_store.default]\ntype = "redis"\nurl = "redis://127.0.0.1:{redis_port}"\n')
                extra = ["--runtime-config-file", directory / "runtime-config.toml"]
            command = lambda p: [ctx["dormouse"], "up", "--from", directory, "--listen", f"127.0.0.1:{p}", *extra]
            runs = {"no store call": [], "get": [], "set": []}
            with Server(command, "/none/ready") as server:
                server.ready()
                base = f"http://127.0.0.1:{server.port}"
                for _ in range(ctx["rounds"]):
                    for name, url, method, body in [("no store call", base + "/none/bench", "GET", None),
                                                    ("set", base + "/spin/bench", "PUT", value),
                                                    ("get", base + "/spin/bench", "GET", None)]:
                        runs[name].append(one_and_fifty(ctx, url, method, body))
            over_http[backend] = medians(runs)
            log(f"kv over HTTP, {backend}: " + ", ".join(
                f"{n} p50 {v['p50_us']:.0f} µs {v['rps']:.0f} req/s" for n, v in over_http[backend].items()))
    finally:
        os.killpg(redis.pid, signal.SIGTERM)
        redis.wait()
    return {"in_process_us": in_process, "over_http": over_http}


def scenario_wasi3(ctx):
    """wasi:http 0.3 against 0.2 in one dormouse: the hello guests, and a
    key-value get through Spin's 3.0.0 interface (`kv-p3`) against the same
    get through fermyon:spin@2.0.0 (`kv`), on one SQLite store."""
    directory = BUILD / "apps" / "wasi3"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / "spin.toml").write_text(
        'spin_manifest_version = 2\n[application]\nname = "wasi3"\n'
        '[[trigger.http]]\nroute = "/p2"\ncomponent = "hello"\n'
        '[[trigger.http]]\nroute = "/p3"\ncomponent = "hello-p3"\n'
        '[[trigger.http]]\nroute = "/spin/..."\ncomponent = "kv"\n'
        '[[trigger.http]]\nroute = "/kv/..."\ncomponent = "kv-p3"\n'
        f'[component.hello]\nsource = "{GUESTS / "hello.wasm"}"\n'
        f'[component.hello-p3]\nsource = "{GUESTS / "hello-p3.wasm"}"\n'
        f'[component.kv]\nsource = "{GUESTS / "kv.wasm"}"\nkey_value_stores = ["default"]\n'
        f'[component.kv-p3]\nsource = "{GUESTS / "kv-p3.wasm"}"\nkey_value_stores = ["default"]\n')
    command = lambda p: [ctx["dormouse"], "up", "--from", directory, "--listen", f"127.0.0.1:{p}"]
    cases = [("hello, wasi:http 0.2", "/p2"), ("hello, wasi:http 0.3", "/p3"),
             ("kv get, fermyon:spin/key-value@2.0.0 (0.2)", "/spin/bench"),
             ("kv get, spin:key-value@3.0.0 (0.3)", "/kv/bench")]
    runs = {name: [] for name, _ in cases}
    with Server(command, "/p2") as server:
        server.ready()
        base = f"http://127.0.0.1:{server.port}"
        request = urllib.request.Request(base + "/spin/bench", data=b"v" * 100, method="PUT")
        urllib.request.urlopen(request, timeout=10).read()
        for _ in range(ctx["rounds"]):
            for name, path in cases:
                runs[name].append(one_and_fifty(ctx, base + path))
    results = medians(runs)
    log("wasi3: " + ", ".join(f"{n} p50 {v['p50_us']:.0f} µs {v['rps']:.0f} req/s" for n, v in results.items()))
    return results


# --------------------------------------------------------------- report ----

def machine():
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_kib = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
    return {"host": platform.node(), "cpu": model, "cpus": os.cpu_count(), "memory_gib": round(memory_kib / 2**20, 1),
            "kernel": platform.release(), "virtualised": Path("/sys/hypervisor").exists() or "hypervisor" in Path("/proc/cpuinfo").read_text(),
            "hypervisor": hypervisor()}


def hypervisor():
    """What the machine runs on, as far as the guest can see: the
    hypervisor's type and the DMI vendor and product, where visible."""
    seen = []
    for path in ["/sys/hypervisor/type", "/sys/class/dmi/id/sys_vendor", "/sys/class/dmi/id/product_name"]:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text and text not in seen:
            seen.append(text)
    if shutil.which("systemd-detect-virt"):
        detected = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True).stdout.strip()
        if detected and detected != "none" and detected not in seen:
            seen.append(detected)
    return ", ".join(seen) or "not visible"


def report(results, ctx):
    lines = [f"# dormouse benchmarks, {results['date']}", "",
             f"Machine: {results['machine']['cpu']}, {results['machine']['cpus']} CPUs, "
             f"{results['machine']['memory_gib']} GiB, Linux {results['machine']['kernel']}"
             f"{' (virtual machine' + (': ' + results['machine']['hypervisor'] if results['machine'].get('hypervisor') else '') + ')' if results['machine']['virtualised'] else ''}. "
             f"Load generator on the same machine. Medians of {ctx['rounds']} rounds; "
             f"{ctx['seconds']} s per load run. Command: `{results['command']}`.", ""]
    goals = []
    hello = results.get("hello")
    if hello:
        lines += ["## hello: req/s and latency (wrk, closed loop)", "",
                  "| contender | connections | req/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/request |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in hello:
            lines.append(f"| {row['contender']} | {row['connections']} | {row['rps']:.0f} | {row['p50_us']:.0f} | "
                         f"{row['p99_us']:.0f} | {row['p999_us']:.0f} | {row.get('cpu_us', float('nan')):.1f} |")
        lines.append("")
        pick = lambda name, c: next((r for r in hello if r["contender"] == name and r["connections"] == c), None)
        d50, w50, n50 = pick("dormouse", 50), pick("wasmtime serve", 50), pick("native hyper", 50)
        d1, n1 = pick("dormouse", 1), pick("native hyper", 1)
        if d50 and w50:
            goals.append(("hello req/s ÷ `wasmtime serve` (50 connections)", "≥ 3.5", d50["rps"] / w50["rps"], lambda v: v >= 3.5, "{:.2f}"))
        if d50 and n50:
            goals.append(("hello req/s ÷ native hyper hello (50 connections)", "≥ 0.5", d50["rps"] / n50["rps"], lambda v: v >= 0.5, "{:.2f}"))
        if d1 and n1:
            goals.append(("single-connection p50 − native p50", "≤ 25 µs", d1["p50_us"] - n1["p50_us"], lambda v: v <= 25, "{:.0f} µs"))
    inst = results.get("instantiate")
    if inst:
        lines += ["## instantiate + handle + teardown (criterion, hello guest, in process)", "",
                  "`wasi-0.3-pooling` is the same greeting from a wasi:http 0.3 guest, on the engine with "
                  "concurrency support.", "",
                  "| variant | median µs | mean µs |", "| --- | ---: | ---: |"]
        for variant, values in inst.items():
            lines.append(f"| {variant} | {values['median_us']:.1f} | {values['mean_us']:.1f} |")
        lines.append("")
        goals.append(("instantiate + teardown, p50 (pooling)", "≤ 10 µs", inst["pooling"]["median_us"], lambda v: v <= 10, "{:.1f} µs"))
        d50 = next((r for r in results.get("hello") or [] if r["contender"] == "dormouse" and r["connections"] == 50), None)
        if d50 and "cpu_us" in d50:
            goals.append(("hello server CPU per request (50 connections) ÷ in-process instantiate + handle + teardown",
                          "≤ 1.5", d50["cpu_us"] / inst["pooling"]["median_us"], lambda v: v <= 1.5, "{:.2f}"))
    load = results.get("load")
    if load:
        lines += ["## latency at 50 % of each contender's maximum (oha, open loop, latency-corrected)", "",
                  "| contender | max req/s | rate | p50 µs | p99 µs | p99.9 µs |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, row in load.items():
            lines.append(f"| {name} | {row['max_rps']:.0f} | {row['max_rps'] / 2:.0f}/s | {row['p50_us']:.0f} | {row['p99_us']:.0f} | {row['p999_us']:.0f} |")
        lines.append("")
        goals.append(("p99 at 50 % of max load", "≤ 1 ms", load["dormouse"]["p99_us"] / 1000, lambda v: v <= 1, "{:.2f} ms"))
    heavy = results.get("heavy")
    if heavy:
        lines += ["## heavy guests: start → first response, and req/s (50 connections)", "",
                  "| guest | size | dormouse cold | dormouse warm | wasmtime serve cold | wasmtime serve precompiled | dormouse req/s | wasmtime serve req/s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, row in heavy.items():
            f = row["first_response_ms"]
            lines.append(f"| {name} | {row['size_mib']:.1f} MiB | {f['dormouse cold']:.0f} ms | {f['dormouse warm']:.0f} ms | "
                         f"{f['wasmtime serve cold']:.0f} ms | {f['wasmtime serve precompiled']:.0f} ms | "
                         f"{row['rps']['dormouse']:.0f} | {row['rps']['wasmtime serve']:.0f} |")
        lines.append("")
        if "javascript" in heavy:
            goals.append(("warm-cache restart → first response, JS", "≤ 50 ms",
                          heavy["javascript"]["first_response_ms"]["dormouse warm"], lambda v: v <= 50, "{:.0f} ms"))
    for kind, density in (results.get("density") or {}).items():
        what = {"copies": "copies of hello (one file)", "distinct": "distinct hellos (each its own file)"}[kind]
        lines += [f"## density: {density['components']} {what}, no traffic, then one request each", "",
                  "RSS and idle CPU with no traffic (one request, the readiness probe's); then every component "
                  "serves one request, in turn: its first request's time (which loads its code from the cache) "
                  "and the RSS after all have run.", "",
                  "| run | compile cache | ready s | RSS MiB | idle CPU % | first request p50 µs | RSS all served MiB |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for i, run_ in enumerate(density["runs"]):
            lines.append(f"| {i + 1} | {run_['cache']} | {run_['ready_s']:.2f} | {run_['rss_mib']:.1f} | "
                         f"{run_['idle_cpu_percent']:.2f} | {run_.get('first_request_p50_us', 0):.0f} | "
                         f"{run_.get('rss_all_served_mib', 0):.1f} |")
        lines.append("")
        count = f"{density['components']:,} components ({kind})"
        goals.append((f"{count}: RSS", "≤ 100 MiB", density["rss_mib"], lambda v: v <= 100, "{:.1f} MiB"))
        goals.append((f"{count}: ready from a warm cache", "≤ 0.3 s", density["ready_s"], lambda v: v <= 0.3, "{:.2f} s"))
        goals.append((f"{count}: idle CPU", "~0 %", density["idle_cpu_percent"], lambda v: v < 0.5, "{:.2f} %"))
    services = results.get("services")
    if services:
        lines += ["## services: nginx behind dormouse", "",
                  "| measure | value |", "| --- | ---: |",
                  f"| nginx alone: spawn → first 200 | {services['nginx_start_to_first_200_ms']:.2f} ms |",
                  f"| wake from stop → first response | {services['stop']['first_response_ms']:.2f} ms |",
                  f"| wake from pause → first response | {services['pause']['first_response_ms']:.2f} ms |",
                  f"| warm response (paused service's next request) | {services['pause']['warm_response_ms']:.2f} ms |",
                  f"| req/s direct to nginx (50 connections) | {services['hop']['direct']:.0f} |",
                  f"| req/s through dormouse (50 connections) | {services['hop']['dormouse']:.0f} |", ""]
        slow = services.get("slow", {})
        if slow:
            lines += ["Slow-starting apps (Python, sleeping before it listens), woken from stop: the app's own "
                      "count of µs from listening to its first request, polled by a busy client and behind "
                      "dormouse (medians); the difference is the wake overhead. Also dormouse's CPU time during "
                      "a wake (the readiness probe, mostly; /proc ticks of 10 ms).", "",
                      "| app | alone µs | behind dormouse µs | overhead ms | wake ms | dormouse CPU ms a wake | % of a core |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for name, row in slow.items():
                lines.append(f"| {name} | {row['own_us']:.0f} | {row['behind_us']:.0f} | {row['overhead_ms']:.2f} | "
                             f"{row['wake_ms']:.0f} | {row['dormouse_cpu_ms_per_wake']:.1f} | "
                             f"{row['dormouse_cpu_percent_of_wake']:.1f} |")
            lines.append("")
        goals.append(("wake from stop − the app's own spawn → first 200", "≤ 1 ms", services["stop"]["overhead_ms"], lambda v: v <= 1, "{:.2f} ms"))
        for name, row in slow.items():
            goals.append((f"wake from stop − own start, {name}", "≤ 1 ms", row["overhead_ms"], lambda v: v <= 1, "{:.2f} ms"))
        goals.append(("wake from pause, extra over a warm request", "≤ 1 ms", services["pause"]["overhead_ms"], lambda v: v <= 1, "{:.2f} ms"))
        goals.append(("warm proxy hop to nginx, req/s ÷ direct", "≥ 0.85", services["hop"]["dormouse"] / services["hop"]["direct"], lambda v: v >= 0.85, "{:.2f}"))
    kv = results.get("kv")
    if kv:
        ip = kv["in_process_us"]
        lines += ["## key-value get and set (100-byte values)", "",
                  "In process, median of criterion samples: `dormouse_kv::Store` (what a guest's call costs below the "
                  "wasm boundary) against the client library alone on the calling thread.", "",
                  "| backend | get µs | set µs | library alone: get µs | set µs | get ÷ library | set ÷ library |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for backend, label in [("sqlite", "SQLite (WAL, synchronous=FULL)"), ("redis", "Redis (loopback)")]:
            get, set_ = ip[f"{backend}/get"], ip[f"{backend}/set"]
            dget, dset = ip[f"{backend}-direct/get"], ip[f"{backend}-direct/set"]
            lines.append(f"| {label} | {get:.1f} | {set_:.1f} | {dget:.1f} | {dset:.1f} | {get / dget:.2f} | {set_ / dset:.2f} |")
        lines += ["", "Through the `kv` guest over HTTP (`GET`/`PUT /spin/KEY`, Spin's key-value interface), against "
                  "the same guest answering without a store call (`/none/...`): p50 and p99 at 1 connection, req/s "
                  "at 50; the last column is the p50 the store call adds.", "",
                  "| backend | request | p50 µs | p99 µs | req/s | p50 − no store call |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for backend, rows in kv["over_http"].items():
            base = rows["no store call"]["p50_us"]
            for name, row in rows.items():
                lines.append(f"| {backend} | {name} | {row['p50_us']:.0f} | {row['p99_us']:.0f} | {row['rps']:.0f} | "
                             f"{row['p50_us'] - base:+.0f} µs |")
        lines.append("")
    wasi3 = results.get("wasi3")
    if wasi3:
        lines += ["## wasi:http 0.3 against 0.2 (one dormouse, wrk)", "",
                  "p50 and p99 at 1 connection, req/s at 50. The key-value rows read the same 100-byte value from "
                  "the same SQLite store.", "",
                  "| request | p50 µs | p99 µs | req/s |", "| --- | ---: | ---: | ---: |"]
        for name, row in wasi3.items():
            lines.append(f"| {name} | {row['p50_us']:.0f} | {row['p99_us']:.0f} | {row['rps']:.0f} |")
        lines.append("")
    hop = results.get("hop")
    if hop:
        lines += ["## the proxy hop to nginx (one worker), against general-purpose proxies", "",
                  "p50 and p99 at 1 connection, req/s at 50 (medians of the rounds, contenders alternated in each); "
                  "CPU per request: the proxy's user and system time over the 50-connection run ÷ its requests.", "",
                  "| path | p50 µs | p99 µs | req/s | proxy CPU µs/request |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, row in hop.items():
            cpu = f"{row['cpu_us']:.1f}" if "cpu_us" in row else "—"
            lines.append(f"| {name} | {row['p50_us']:.0f} | {row['p99_us']:.0f} | {row['rps']:.0f} | {cpu} |")
        best = max((hop[name] for name in ("HAProxy", "nginx proxy")), key=lambda row: row["rps"])
        lines.append("")
        if "hyper proxy" in hop:
            threaded = hop["hyper proxy"]
            # dormouse serves connections on one single-threaded runtime per
            # CPU: the per-core proxy is its floor when it ran.
            floor = hop.get("hyper proxy, per core", threaded)
            lines += [f"The hyper proxy reaches {threaded['rps'] / best['rps']:.2f} of the faster general-purpose "
                      "proxy's req/s on tokio's work-stealing runtime"
                      + (f", and {floor['rps'] / best['rps']:.2f} with one single-threaded runtime per CPU "
                         "(as dormouse's I/O threads)" if floor is not threaded else "")
                      + f": the floor for a hop built on hyper and tokio. dormouse reaches "
                      f"{hop['dormouse']['rps'] / floor['rps']:.2f} of that floor"
                      + (f", at {hop['dormouse']['cpu_us'] - floor['cpu_us']:+.1f} µs of CPU a request" if "cpu_us" in floor else "")
                      + "."]
            lines.append("")
        goals.append(("service hop req/s ÷ the faster of HAProxy and nginx as proxies (50 connections)", "≥ 1.0",
                      hop["dormouse"]["rps"] / best["rps"], lambda v: v >= 1.0, "{:.2f}"))
        goals.append(("service hop p50 − that proxy's p50 (1 connection)", "≤ 0 µs",
                      hop["dormouse"]["p50_us"] - best["p50_us"], lambda v: v <= 0, "{:+.0f} µs"))
    metrics = results.get("metrics")
    if metrics:
        off, on = metrics["metrics off"], metrics["metrics on"]
        lines += ["## the cost of metrics (hello, one dormouse each, alternated)", "",
                  "Off: no admin listener, nothing counted. On: `--admin-listen`, scraped once a second. "
                  "p50 and p99 at 1 connection, req/s at 50 (medians of the rounds).", "",
                  "| | p50 µs | p99 µs | req/s |", "| --- | ---: | ---: | ---: |"]
        for name, row in metrics.items():
            lines.append(f"| {name} | {row['p50_us']:.0f} | {row['p99_us']:.0f} | {row['rps']:.0f} |")
        lines += ["", f"On ÷ off, req/s: {on['rps'] / off['rps']:.3f}; per-round ratios: "
                  + ", ".join(f"{b['rps'] / a['rps']:.3f}" for a, b in zip(off["runs"], on["runs"])), ""]
        goals.append(("hello req/s with metrics on ÷ off (50 connections)", "≥ 0.97", on["rps"] / off["rps"],
                      lambda v: v >= 0.97, "{:.3f}"))
    if goals:
        table = ["## goals", "", "| measure | goal | measured | met |", "| --- | --- | ---: | --- |"]
        for name, goal, value, met, fmt in goals:
            table.append(f"| {name} | {goal} | {fmt.format(value)} | {'yes' if met(value) else 'no'} |")
        lines = lines[:3] + table + [""] + lines[3:]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=SCENARIOS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=int)
    args = parser.parse_args()
    ctx = {"quick": args.quick, "rounds": args.rounds or (1 if args.quick else 3),
           "seconds": args.seconds or (3 if args.quick else 10), "connections": [1, 50, 200], "density_count": 1000}
    BUILD.mkdir(parents=True, exist_ok=True)
    ctx["dormouse"], ctx["native"], ctx["native_proxy"] = build_dormouse()
    ctx["wrk"] = wrk()
    if "services" in args.only and shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        run(["apt-get", "install", "-y", "-qq", "nginx-light"])
    if set(args.only) & {"hello", "heavy", "load"}:
        ctx["wasmtime"] = cargo_tool("wasmtime", "wasmtime-cli", WASMTIME_VERSION)
    if "load" in args.only:
        ctx["oha"] = cargo_tool("oha", "oha", OHA_VERSION)
    if "heavy" in args.only:
        ctx["heavy_guests"] = build_heavy_guests()
    results = {"date": datetime.date.today().isoformat(), "machine": machine(),
               "command": "bench/run.py " + " ".join(sys.argv[1:]), "rounds": ctx["rounds"], "seconds": ctx["seconds"]}
    for scenario in SCENARIOS:
        if scenario in args.only:
            log(f"scenario {scenario}")
            results[scenario] = globals()[f"scenario_{scenario}"](ctx)
    RESULTS.mkdir(exist_ok=True)
    # A partial or quick run never replaces the full results of the day.
    suffix = "" if set(args.only) == set(SCENARIOS) else "-only-" + "-".join(args.only)
    suffix += "-quick" if args.quick else ""
    stem = RESULTS / f"{results['date']}-{results['machine']['host']}{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report(results, ctx))
    print(stem.with_suffix(".md").read_text())
    log(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
