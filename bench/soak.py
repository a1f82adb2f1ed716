#!/usr/bin/env python3
"""Soak and churn: what hours of service do to dormouse, in minutes.

    bench/soak.py                          # 10 min soak, then 50 stop/wake cycles
    bench/soak.py --minutes 2 --cycles 10  # a quicker look

soak: one app with the hello component and an nginx service. The mixed load
(wrk on each route, both at once) is first run flat out for 5 s to find its
maximum; then each route gets half of its share of that maximum, for the
given minutes, with wrk pacing its connections (`delay()`). Every 10 s the
dormouse process's RSS and open file descriptors are sampled. Goals: 0 errors
and non-2xx answers, RSS growth < 1 MiB from the end of the first minute,
open descriptors flat.

churn: one app with a Python service (cooldown 100 ms, standby stop). Each
cycle sends 10 requests 20 ms apart, then waits for the instance to go to
standby. Goals: every request answered 200, every cycle woke a fresh
instance, and no service process left once dormouse exits.

Writes bench/results/<date>-<host>-soak.md and .json.
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as suite  # noqa: E402  (the benchmark suite's helpers)

WRK_PACED = """
local pause_ms = {pause_ms}
function delay() return pause_ms end
"""


def wrk_paced(wrk, url, connections, seconds, rate):
    """wrk at about `rate` req/s: each connection waits between requests."""
    pause_ms = max(1, int(connections * 1000 / rate)) if rate else 0
    script = suite.BUILD / f"paced-{abs(hash(url))}.lua"
    script.write_text((WRK_PACED.format(pause_ms=pause_ms) if rate else "") + suite.WRK_SCRIPT)
    return subprocess.Popen([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script, url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wrk_result(process):
    out = process.communicate()[0]
    line = next(l for l in out.splitlines() if l.startswith("WRK "))
    result = json.loads(line[4:])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def soak(dormouse, wrk, minutes):
    nginx_port = suite.free_port()
    directory, nginx = suite.nginx_app("soak", nginx_port, '{ cooldown = "60s" }')
    manifest = (directory / "spin.toml").read_text().replace('route = "/..."', 'route = "/svc/..."')
    manifest += (f'[[trigger.http]]\nroute = "/hello"\ncomponent = "hello"\n'
                 f'[component.hello]\nsource = "{suite.ROOT / "guests/wasm/hello.wasm"}"\n')
    (directory / "spin.toml").write_text(manifest)
    command = lambda p: [dormouse, "up", "--from", directory, "--listen", f"127.0.0.1:{p}"]
    with suite.Server(command, "/hello") as server:
        server.ready()
        urls = {"component": server.url(), "service": f"http://127.0.0.1:{server.port}/svc/x"}
        # The maximum of the mix: both routes flat out at once.
        flat_out = {name: wrk_paced(wrk, url, 25, 5, None) for name, url in urls.items()}
        peak = {name: wrk_result(p)["rps"] for name, p in flat_out.items()}
        suite.log(f"soak: mixed maximum {json.dumps({k: round(v) for k, v in peak.items()})} req/s")
        seconds = int(minutes * 60)
        load = {name: wrk_paced(wrk, url, 25, seconds, peak[name] / 2) for name, url in urls.items()}
        samples = []
        started = time.monotonic()
        while any(p.poll() is None for p in load.values()):
            samples.append({"t_s": round(time.monotonic() - started), "rss_mib": server.rss_mib(),
                            "fds": fds(server.process.pid)})
            time.sleep(10)
        results = {name: wrk_result(p) for name, p in load.items()}
    warm = next((s for s in samples if s["t_s"] >= 60), samples[0])
    last = samples[-1]
    summary = {
        "minutes": minutes,
        "peak_rps": peak,
        "rps": {name: r["rps"] for name, r in results.items()},
        "errors": sum(r["errors"] for r in results.values()),
        "non2xx": sum(r["non2xx"] for r in results.values()),
        "requests": sum(r["requests"] for r in results.values()),
        "p99_us": {name: r["p99_us"] for name, r in results.items()},
        "rss_mib_after_1_min": warm["rss_mib"],
        "rss_mib_end": last["rss_mib"],
        "rss_growth_mib": last["rss_mib"] - warm["rss_mib"],
        "fds_after_1_min": warm["fds"],
        "fds_end": last["fds"],
        "fds_max": max(s["fds"] for s in samples),
        "samples": samples,
    }
    suite.log(f"soak: {summary['requests']} requests, {summary['errors']} errors, {summary['non2xx']} non-2xx, "
              f"RSS {warm['rss_mib']:.1f} → {last['rss_mib']:.1f} MiB, fds {warm['fds']} → {last['fds']}")
    return summary


def churn(dormouse, cycles):
    script = suite.BUILD / "slow_app.py"
    script.write_text(suite.SLOW_APP)
    directory = suite.service_app("churn", [sys.executable, script, 0], '{ cooldown = "100ms" }')
    command = lambda p: [dormouse, "up", "--from", directory, "--listen", f"127.0.0.1:{p}"]
    statuses, wakes, standby_waits = [], [], []
    with suite.Server(command, "/.well-known/spin/health") as server:
        server.ready()
        state = lambda: suite.control_get(Path(directory) / ".dormouse", "/v1/apps/churn/services")[0]
        for _ in range(cycles):
            for i in range(10):
                elapsed, status = suite.timed_get(server.port, "/churn")
                statuses.append(status)
                if i == 0:
                    wakes.append(elapsed * 1000)
                time.sleep(0.02)
            waited = time.monotonic()
            while state()["state"] != "standby" and time.monotonic() - waited < 10:
                time.sleep(0.02)
            standby_waits.append((time.monotonic() - waited) * 1000)
        starts = state()["starts"]
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", str(script)], capture_output=True, text=True).stdout.split()
    summary = {
        "cycles": cycles,
        "requests": len(statuses),
        "errors": sum(1 for s in statuses if s != 200),
        "starts": starts,
        "wake_ms_median": statistics.median(wakes),
        "wake_ms_max": max(wakes),
        "standby_wait_ms_median": statistics.median(standby_waits),
        "processes_left": len(left),
    }
    suite.log(f"churn: {json.dumps(summary)}")
    return summary


def report(results):
    s, c = results["soak"], results["churn"]
    m = results["machine"]
    lines = [
        f"# dormouse soak and churn, {results['date']}", "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}"
        f"{' (virtual machine)' if m['virtualised'] else ''}. Load generator on the same machine. "
        f"Command: `{results['command']}`.", "",
        "| measure | goal | measured | met |", "| --- | --- | ---: | --- |",
        f"| soak: errors and non-2xx over {s['requests']} requests | 0 | {s['errors'] + s['non2xx']} | "
        f"{'yes' if s['errors'] + s['non2xx'] == 0 else 'no'} |",
        f"| soak: RSS growth from minute 1 to the end | < 1 MiB | {s['rss_growth_mib']:.2f} MiB | "
        f"{'yes' if s['rss_growth_mib'] < 1 else 'no'} |",
        f"| soak: open file descriptors, minute 1 → end (max) | flat | {s['fds_after_1_min']} → {s['fds_end']} "
        f"({s['fds_max']}) | {'yes' if s['fds_end'] <= s['fds_after_1_min'] + 2 else 'no'} |",
        f"| churn: failed requests over {c['cycles']} stop/wake cycles | 0 | {c['errors']} of {c['requests']} | "
        f"{'yes' if c['errors'] == 0 else 'no'} |",
        f"| churn: instances started | {c['cycles']} | {c['starts']} | {'yes' if c['starts'] == c['cycles'] else 'no'} |",
        f"| churn: service processes left after exit | 0 | {c['processes_left']} | "
        f"{'yes' if c['processes_left'] == 0 else 'no'} |", "",
        f"Soak: {s['minutes']} min; mixed maximum {s['peak_rps']['component']:.0f} req/s (component) + "
        f"{s['peak_rps']['service']:.0f} req/s (service) at once; held at {s['rps']['component']:.0f} + "
        f"{s['rps']['service']:.0f} req/s; p99 {s['p99_us']['component'] / 1000:.2f} ms (component), "
        f"{s['p99_us']['service'] / 1000:.2f} ms (service); RSS {s['rss_mib_after_1_min']:.1f} → "
        f"{s['rss_mib_end']:.1f} MiB.", "",
        f"Churn: wake from stop → first response, median {c['wake_ms_median']:.1f} ms (max {c['wake_ms_max']:.1f}); "
        f"idle → standby {c['standby_wait_ms_median']:.0f} ms after the last request (cooldown 100 ms).", "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--cycles", type=int, default=50)
    args = parser.parse_args()
    suite.BUILD.mkdir(parents=True, exist_ok=True)
    dormouse = suite.build_dormouse()[0]
    wrk = suite.wrk()
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        suite.run(["apt-get", "install", "-y", "-qq", "nginx-light"])
    results = {"date": datetime.date.today().isoformat(), "machine": suite.machine(),
               "command": "bench/soak.py " + " ".join(sys.argv[1:])}
    results["churn"] = churn(dormouse, args.cycles)
    results["soak"] = soak(dormouse, wrk, args.minutes)
    suite.RESULTS.mkdir(exist_ok=True)
    out = suite.RESULTS / f"{results['date']}-{results['machine']['host']}-soak"
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
