#!/usr/bin/env python3
"""The platform: `dormouse daemon` with many apps.

    bench/daemon.py                 # 1,000 apps
    bench/daemon.py --apps 200      # a quicker look

density: N distinct apps, each a different component (hello.wasm with its
greeting bytes changed, so each compiles to different code and data, not a
copy sharing one compilation), deployed through the control API. Then, idle:
the daemon's RSS, its CPU over 10 s, `instance ls` latency (the CLI, and the
API alone); then the daemon is stopped and started again: time from spawn to
every app routable (the last app restored answers), and RSS after the
restart, when every app came from the compile cache.

deploy: a hello component not seen before (a cold compile) deployed through
the CLI, then requested: deploy → first 200, median of 5; the first request
alone is timed too.

scale-out: a Python app with a step policy on requests in flight (2 per
instance → one more), woken by one request; then 8 clients request `/slow`
(300 ms) in a loop. Reaction: from the burst to the second instance running
(polled on the control API every 2 ms), against that instance's own boot
time (spawn → listening), median of 5.

Writes bench/results/<date>-<host>-daemon.md and .json.
"""

import argparse
import datetime
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as suite  # noqa: E402  (the benchmark suite's helpers)

distinct_hello = suite.distinct_hello


def bundle(wasm, name):
    """A tar bundle: the component and a manifest routing `/...` to it."""
    manifest = (f'spin_manifest_version = 2\n[application]\nname = "{name}"\n[[trigger.http]]\nroute = "/..."\n'
                f'component = "app"\n[component.app]\nsource = "app.wasm"\n').encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for file_name, data in [("app.wasm", wasm), ("spin.toml", manifest)]:
            info = tarfile.TarInfo(file_name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def api(state, method, path, body=None, content_type="application/x-tar"):
    connection = suite.UnixHTTPConnection(Path(state) / "control.sock", timeout=120)
    try:
        headers = {"content-type": content_type} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {data!r}")
        return json.loads(data) if data else None
    finally:
        connection.close()


def get_host(port, host, path="/"):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"host": host})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


class Daemon:
    def __init__(self, dormouse, state, port):
        self.dormouse, self.state, self.port = dormouse, state, port
        self.admin_port = suite.free_port()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [dormouse, "daemon", "--listen", f"127.0.0.1:{port}", "--state-dir", state,
             "--admin-listen", f"127.0.0.1:{self.admin_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    @classmethod
    def fresh(cls, dormouse, name):
        """A daemon on a free port with an empty state directory of its own, its API up."""
        state = suite.BUILD / name
        subprocess.run(["rm", "-rf", str(state)], check=True)
        daemon = cls(dormouse, state, suite.free_port())
        daemon.wait_api()
        return daemon

    def env(self):
        """The environment for CLI commands against this daemon."""
        return dict(os.environ, DORMOUSE_STATE_DIR=str(self.state))

    def wait_api(self, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return api(self.state, "GET", "/v1/apps")
            except (OSError, RuntimeError):
                time.sleep(0.002)
        raise RuntimeError("the control API never answered")

    def stat(self):
        return suite.process_cpu_seconds(self.process.pid)

    def rss_mib(self):
        return suite.process_rss_mib(self.process.pid)

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)


def density(dormouse, apps):
    daemon = Daemon.fresh(dormouse, "platform-density")
    state, port = daemon.state, daemon.port
    empty_rss = daemon.rss_mib()
    started = time.monotonic()
    for index in range(apps):
        api(state, "PUT", f"/v1/apps/a-{index}?scale_to_zero=true", bundle(distinct_hello(index), f"a-{index}"))
    deploy_seconds = time.monotonic() - started
    suite.log(f"density: {apps} distinct apps deployed in {deploy_seconds:.1f} s")
    for index in (0, apps // 2, apps - 1):
        status, body = get_host(port, f"a-{index}.localhost")
        assert status == 200 and body == f"Hello from a-{index:07}\n".encode(), body
    time.sleep(2)
    rss = daemon.rss_mib()
    cpu = daemon.stat()
    time.sleep(10)
    idle_cpu = daemon.stat() - cpu
    cli, raw = [], []
    env = daemon.env()
    for _ in range(5):
        t = time.monotonic()
        subprocess.run([dormouse, "instance", "ls", "-o", "json"], env=env, check=True, stdout=subprocess.DEVNULL)
        cli.append((time.monotonic() - t) * 1000)
    for _ in range(20):
        t = time.monotonic()
        rows = api(state, "GET", "/v1/instances")
        raw.append((time.monotonic() - t) * 1000)
    assert len(rows) == apps
    # Scrapes a quarter second apart: each one a fresh encoding.
    scrapes, exposition = [], b""
    for _ in range(10):
        time.sleep(0.3)
        t = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.admin_port}/metrics") as reply:
            exposition = reply.read()
        scrapes.append((time.monotonic() - t) * 1000)
    daemon.stop()

    # Restart: every app restored from the state and the compile cache.
    daemon = Daemon(dormouse, state, port)
    last = f"a-{apps - 1}.localhost"
    while True:
        try:
            if get_host(port, last)[0] == 200:
                break
        except OSError:
            time.sleep(0.002)
    restart_seconds = time.monotonic() - daemon.started
    time.sleep(2)
    restart_rss = daemon.rss_mib()
    daemon.stop()
    result = {
        "apps": apps, "deploy_seconds": deploy_seconds, "empty_rss_mib": empty_rss, "rss_mib": rss,
        "rss_per_app_kib": (rss - empty_rss) * 1024 / apps, "idle_cpu_seconds_10s": idle_cpu,
        "instance_ls_cli_ms": statistics.median(cli), "instance_ls_api_ms": statistics.median(raw),
        "restart_to_routable_seconds": restart_seconds, "restart_rss_mib": restart_rss,
        "scrape_ms": statistics.median(scrapes), "exposition_kib": len(exposition) / 1024,
        "exposition_samples": sum(1 for line in exposition.splitlines() if line and not line.startswith(b"#")),
    }
    suite.log(f"density: {json.dumps({k: round(v, 3) for k, v in result.items()})}")
    return result


def deploy_to_first_response(dormouse, samples=5):
    daemon = Daemon.fresh(dormouse, "platform-deploy")
    state, port = daemon.state, daemon.port
    env = daemon.env()
    totals, firsts = [], []
    for index in range(samples):
        directory = suite.BUILD / f"platform-deploy-app-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        # A component this daemon has never compiled.
        (directory / "d.wasm").write_bytes(distinct_hello(9_000_000 + index + int(time.time()) % 1000 * 10))
        t = time.monotonic()
        subprocess.run([dormouse, "deploy", "--name", f"d-{index}", directory / "d.wasm"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        deployed = time.monotonic()
        status, _ = get_host(port, f"d-{index}.localhost")
        assert status == 200
        done = time.monotonic()
        totals.append((done - t) * 1000)
        firsts.append((done - deployed) * 1000)
    daemon.stop()
    result = {"deploy_to_first_response_ms": statistics.median(totals), "first_request_ms": statistics.median(firsts),
              "samples": totals}
    suite.log(f"deploy: {json.dumps(result)}")
    return result


def scale_out(dormouse, samples=5):
    daemon = Daemon.fresh(dormouse, "platform-scale")
    state, port = daemon.state, daemon.port
    env = daemon.env()
    app = suite.ROOT / "crates/cli/tests/services"
    cli = lambda *args: subprocess.run([dormouse, *args], env=env, check=True, stdout=subprocess.DEVNULL)
    cli("deploy", "-0", "--name", "py", "--cooldown", "300ms", app, "--", sys.executable, "app.py")
    cli("scale", "init", "py", "--min-size", "0", "--max-size", "4", "--cooldown", "300ms")
    cli("scale", "add", "py", "--name", "out", "--metric", "inflight", "--step", "2:/1")
    reactions, boots = [], []
    for _ in range(samples):
        while any(r["state"] != "standby" for r in api(state, "GET", "/v1/instances")):
            time.sleep(0.05)
        assert get_host(port, "py.localhost")[0] == 200
        stop = threading.Event()

        def client():
            while not stop.is_set():
                get_host(port, "py.localhost", "/slow")

        burst = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        second = None
        while second is None and time.monotonic() - burst < 30:
            running = [r for r in api(state, "GET", "/v1/instances") if r["state"] == "running"]
            if len(running) >= 2:
                second = time.monotonic()
                newest = max(running, key=lambda r: int(r["name"].rsplit("-", 1)[1]))
                boots.append(newest["boot_time_ms"])
            else:
                time.sleep(0.002)
        stop.set()
        for thread in threads:
            thread.join()
        assert second is not None, "no second instance"
        reactions.append((second - burst) * 1000)
    daemon.stop()
    reaction, boot = statistics.median(reactions), statistics.median(boots)
    result = {"reaction_ms": reaction, "second_instance_boot_ms": boot, "overhead_ms": reaction - boot,
              "reactions": reactions, "boots": boots}
    suite.log(f"scale-out: {json.dumps(result)}")
    return result


def report(results):
    d, p, s = results["density"], results["deploy"], results["scale_out"]
    m = results["machine"]
    lines = [
        f"# dormouse platform benchmarks, {results['date']}", "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}"
        f"{', virtualised' if m['virtualised'] else ''}. Command: `python3 bench/daemon.py --apps {d['apps']}`.", "",
        f"## {d['apps']} distinct apps, idle", "",
        "| measure | value |", "| --- | --- |",
        f"| deploy all (API, cold compiles) | {d['deploy_seconds']:.1f} s |",
        f"| daemon RSS, empty → {d['apps']} apps | {d['empty_rss_mib']:.1f} → {d['rss_mib']:.1f} MiB ({d['rss_per_app_kib']:.0f} KiB per app) |",
        f"| idle CPU over 10 s | {d['idle_cpu_seconds_10s']:.2f} s |",
        f"| `instance ls -o json` (CLI process, median of 5) | {d['instance_ls_cli_ms']:.1f} ms |",
        f"| `GET /v1/instances` (API, median of 20) | {d['instance_ls_api_ms']:.1f} ms |",
        f"| restart → every app routable | {d['restart_to_routable_seconds']:.2f} s |",
        f"| RSS after the restart | {d['restart_rss_mib']:.1f} MiB |",
        f"| `GET /metrics` (admin listener, median of 10) | {d['scrape_ms']:.1f} ms, "
        f"{d['exposition_kib']:.0f} KiB, {d['exposition_samples']} samples |", "",
        "## Deploy", "",
        f"A hello component never compiled before, `dormouse deploy` then the first request: "
        f"**{p['deploy_to_first_response_ms']:.0f} ms** (median of {len(p['samples'])}; "
        f"all: {', '.join(f'{x:.0f}' for x in p['samples'])}); the first request alone {p['first_request_ms']:.1f} ms.", "",
        "## Scale-out", "",
        f"Burst (8 clients looping `/slow`) → second instance running: **{s['reaction_ms']:.0f} ms**, "
        f"of which its own boot {s['second_instance_boot_ms']:.0f} ms: **{s['overhead_ms']:.0f} ms** over the app's boot "
        f"(medians of {len(s['reactions'])}; reactions {', '.join(f'{x:.0f}' for x in s['reactions'])}, "
        f"boots {', '.join(f'{x:.0f}' for x in s['boots'])}).", "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--no-build", action="store_true", help="use target/release/dormouse as it is")
    args = parser.parse_args()
    suite.BUILD.mkdir(parents=True, exist_ok=True)
    dormouse = suite.ROOT / "target/release/dormouse" if args.no_build else suite.build_dormouse()[0]
    results = {"date": datetime.date.today().isoformat(), "machine": suite.machine()}
    results["density"] = density(dormouse, args.apps)
    results["deploy"] = deploy_to_first_response(dormouse)
    results["scale_out"] = scale_out(dormouse)
    suite.RESULTS.mkdir(exist_ok=True)
    out = suite.RESULTS / f"{results['date']}-{results['machine']['host'].split('.')[0]}-daemon.md"
    out.write_text(report(results))
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
