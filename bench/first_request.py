#!/usr/bin/env python3
"""Time from starting `dormouse up` to the first 200, with a cold and a warm
compile cache.

    bench/first_request.py [--dormouse target/release/dormouse] [--app examples/hello]
                           [--path /hello] [--runs 5]

Each run starts dormouse on a free loopback port and sends `GET PATH` every
millisecond until one answers 200. Cold: a new, empty cache directory; warm:
the cache the cold run filled. Prints the median and the range of each.
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_ok(port, path, deadline):
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request)
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            time.sleep(0.001)
    return False


def run_once(dormouse, app, path, cache_dir):
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [dormouse, "up", "--from", app, "--listen", f"127.0.0.1:{port}", "--cache-dir", cache_dir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not first_ok(port, path, started + 120):
            raise SystemExit("no 200 within 120 s")
        return time.monotonic() - started
    finally:
        process.terminate()
        process.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dormouse", default="target/release/dormouse")
    parser.add_argument("--app", default="examples/hello")
    parser.add_argument("--path", default="/hello")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cold, warm = [], []
    for _ in range(args.runs):
        cache_dir = tempfile.mkdtemp(prefix="dormouse-bench-cache-")
        try:
            cold.append(run_once(args.dormouse, args.app, args.path, cache_dir))
            warm.append(run_once(args.dormouse, args.app, args.path, cache_dir))
        finally:
            shutil.rmtree(cache_dir)
    for name, times in (("cold cache", cold), ("warm cache", warm)):
        ms = sorted(t * 1000 for t in times)
        print(f"{name}: start → first 200 median {statistics.median(ms):.1f} ms "
              f"(min {ms[0]:.1f}, max {ms[-1]:.1f}, {len(ms)} runs)")


if __name__ == "__main__":
    main()
