#!/usr/bin/env python3
"""Where a server's time goes per request, by thread: the counters #13's
profile is built on.

    bench/profile.py --port 18080 -- target/release/dormouse up --from APP --listen 127.0.0.1:18080
    bench/profile.py --port 18080 --connections 1 -- target/release/native-hello 127.0.0.1:18080

Starts the command, waits for the port, warms up with `wrk` for 1 s, then
loads `http://127.0.0.1:PORT/PATH` with `wrk` (2 threads, or 1 for a single
connection) for `--seconds`, and prints, per request: each thread's user and
system CPU (from /proc/PID/task/*/stat), its voluntary and involuntary
context switches (/proc/PID/task/*/status), and the machine's rescheduling,
function-call and TLB-shootdown interrupts (/proc/interrupts; the whole
machine's, load generator included). The last line, `SUMMARY`, is for
scripts: req/s, p50, user µs, system µs, voluntary and involuntary switches.
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import time

INTERRUPTS = ("RES", "CAL", "TLB")


def threads(pid):
    """Per thread: name, user and system ticks, voluntary and involuntary switches."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                name = comm.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                text = status.read()
        except FileNotFoundError:
            continue
        voluntary = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
        involuntary = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
        found[tid] = (name, int(fields[11]), int(fields[12]), voluntary, involuntary)
    return found


def interrupts():
    counts = {}
    with open("/proc/interrupts") as table:
        for line in table:
            name, _, rest = line.strip().partition(":")
            if name in INTERRUPTS:
                counts[name] = sum(int(v) for v in rest.split() if v.isdigit())
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/hello")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the server's command after --")

    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", args.port), 0.1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the server did not listen")
                time.sleep(0.05)
        url = f"http://127.0.0.1:{args.port}{args.path}"
        wrk = ["wrk", f"-t{min(2, args.connections)}", "-c", str(args.connections)]
        subprocess.run(wrk + ["-d1s", url], capture_output=True, check=True)
        before, irq_before = threads(server.pid), interrupts()
        out = subprocess.run(wrk + [f"-d{args.seconds}s", "--latency", url], capture_output=True, text=True,
                             check=True).stdout
        after, irq_after = threads(server.pid), interrupts()
    finally:
        server.terminate()
        server.wait()

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = re.search(r"50%\s+(\S+)", out).group(1)
    ticks = os.sysconf("SC_CLK_TCK")
    per = lambda value: value / requests
    cpu_us = lambda value: value / ticks * 1e6 / requests
    print(f"{requests / args.seconds:.0f} req/s, p50 {p50}, {args.connections} connections")
    total = [0, 0, 0, 0]
    for tid, (name, user, system, voluntary, involuntary) in sorted(after.items()):
        if tid not in before:
            continue
        delta = [a - b for a, b in zip((user, system, voluntary, involuntary), before[tid][1:])]
        if any(delta):
            total = [t + d for t, d in zip(total, delta)]
            print(f"  {name:18} user {cpu_us(delta[0]):6.2f} µs  system {cpu_us(delta[1]):6.2f} µs  "
                  f"switches {per(delta[2]):.3f} voluntary {per(delta[3]):.3f} involuntary")
    print(f"  {'all threads':18} user {cpu_us(total[0]):6.2f} µs  system {cpu_us(total[1]):6.2f} µs  "
          f"switches {per(total[2]):.3f} voluntary {per(total[3]):.3f} involuntary")
    print("  machine interrupts per request: " +
          ", ".join(f"{name} {per(irq_after[name] - irq_before[name]):.3f}" for name in INTERRUPTS if name in irq_after))
    print(f"SUMMARY {requests / args.seconds:.0f} {p50} {cpu_us(total[0]):.2f} {cpu_us(total[1]):.2f} "
          f"{per(total[2]):.3f} {per(total[3]):.3f}")


if __name__ == "__main__":
    main()
