#!/usr/bin/env python3
"""Live-watcher benchmark (BENCHMARKS.md): does WatchMetric slow ingestion down?

Generates `sextant gen --users N` data ending two days ago (so the current quarter holds data
and every watched value moves while events load), then, for each configuration, starts a fresh
release server, creates the project and its metrics, loads the users, opens the watchers
(`sextant watch --streams K`) and times `sextant load` of the events. Configurations alternate
within each round so that machine noise spreads evenly, and the script reports the median
events/s per configuration, how many messages the watchers got, and the server's live
evaluations (count and mean time, from its Prometheus endpoint).

Usage: scripts/bench-live.py [--users 200000] [--watchers 50] [--rounds 6] [--work /tmp/sextant-live-bench]
(rounds: a multiple of 3 puts each configuration in each position equally often)
"""
import argparse
import datetime as dt
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from sextant_client import ROOT, stubs  # noqa: E402

# Watched metrics: (key, kind, event, property).
METRICS = [
    ("sessions", "METRIC_KIND_COUNT", "session_start", ""),
    ("active_users", "METRIC_KIND_UNIQUE_USERS", "session_start", ""),
    ("revenue", "METRIC_KIND_SUM", "purchase", "revenue"),
    ("signups", "METRIC_KIND_COUNT", "signup", ""),
    ("item_views", "METRIC_KIND_COUNT", "view_item", ""),
]


BINARY = None


def build(work):
    """Builds the release binary and copies it into `work`: a shared target dir may be rebuilt
    from another checkout while the benchmark runs."""
    global BINARY
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    BINARY = os.path.join(work, "sextant")
    shutil.copy2(os.path.join(target, "release", "sextant"), BINARY)
    if subprocess.run([BINARY, "watch", "--help"], capture_output=True).returncode != 0:
        sys.exit("the release binary has no `watch` subcommand: built from another checkout?")


def binary():
    return BINARY


def start_server(db):
    proc = subprocess.Popen(
        [binary(), "serve", "--addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--data-dir", db],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    metrics_url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    return proc, addr, metrics_url


def cpu_seconds(pid):
    """User + system CPU time of a process so far (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def live_evaluations(metrics_url):
    """(count, total seconds) of the server's live evaluations."""
    text = urllib.request.urlopen(metrics_url, timeout=30).read().decode()
    count = re.search(r"^sextant_live_evaluation_seconds_count (\S+)", text, re.M)
    total = re.search(r"^sextant_live_evaluation_seconds_sum (\S+)", text, re.M)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


def run(pb, data, work, watchers, spread):
    """One fresh server: load users, open `watchers` streams over `spread` metrics, time the event load."""
    db = os.path.join(work, "db")
    shutil.rmtree(db, ignore_errors=True)
    server, addr, metrics_url = start_server(db)
    watch_procs = []
    try:
        channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(channel).result(timeout=60)
        p, m, c = pb["project"], pb["metric"], pb["common"]
        pb["project_grpc"].ProjectServiceStub(channel).CreateProject(
            p.CreateProjectRequest(project=p.Project(id="bench")))
        metric_stub = pb["metric_grpc"].MetricServiceStub(channel)
        for key, kind, event, prop in METRICS:
            metric_stub.CreateMetric(m.CreateMetricRequest(project="bench", metric=m.MetricDefinition(
                key=key, kind=getattr(m, kind), selector=c.EventSelector(event=event), property=prop)))
        subprocess.run([binary(), "load", "--addr", addr, "--project", "bench",
                        "--users", os.path.join(data, "users.jsonl")], check=True, stdout=subprocess.DEVNULL)
        per_metric = [watchers // spread + (1 if i < watchers % spread else 0) for i in range(spread)] if watchers else []
        for (key, *_), streams in zip(METRICS, per_metric):
            if streams:
                watch_procs.append(subprocess.Popen(
                    [binary(), "watch", "--addr", addr, "--project", "bench", "--granularity", "quarter",
                     "--streams", str(streams), key],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(2)  # every stream open and its first message sent
        before = live_evaluations(metrics_url)
        cpu_before = cpu_seconds(server.pid)
        out = subprocess.run([binary(), "load", "--addr", addr, "--project", "bench",
                              "--events", os.path.join(data, "events.jsonl")],
                             check=True, capture_output=True, text=True).stdout
        after = live_evaluations(metrics_url)
        cpu = cpu_seconds(server.pid) - cpu_before
        rate = float(re.search(r"([0-9.]+) events/s", out).group(1))
        events = int(re.search(r"accepted (\d+)", out).group(1))
        messages = 0
        for proc in watch_procs:
            proc.send_signal(signal.SIGINT)
            text = proc.communicate(timeout=60)[0]
            summary = re.search(r"(\d+) updates on the first, (\d+) on the others", text)
            if summary:
                messages += int(summary.group(1)) + int(summary.group(2))
            else:
                # A single stream prints one line per update.
                messages += sum(1 for line in text.splitlines() if line.strip())
        evaluations = after[0] - before[0]
        mean_ms = (after[1] - before[1]) / evaluations * 1000 if evaluations else 0.0
        # Live evaluation time as a share of the load's wall time (of one core).
        share = (after[1] - before[1]) / (events / rate)
        return rate, cpu / events * 1e6, messages, evaluations, mean_ms, share
    finally:
        for proc in watch_procs:
            if proc.poll() is None:
                proc.kill()
        server.terminate()
        server.wait(timeout=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--watchers", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--work", default="/tmp/sextant-live-bench")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    build(args.work)
    pb = stubs()
    start = dt.date.today() - dt.timedelta(days=92)
    data = os.path.join(args.work, f"data-{args.users}-{start}")
    if not os.path.exists(os.path.join(data, "events.jsonl")):
        subprocess.run([binary(), "gen", "--users", str(args.users), "--seed", "42", "--days", "90",
                        "--start", str(start), "--out", data], check=True)
    configs = [(0, 1), (args.watchers, 1), (args.watchers, len(METRICS))]
    results = {config: [] for config in configs}
    cpu = {config: [] for config in configs}
    shares = {config: [] for config in configs}
    for r in range(args.rounds):
        # Rotate the order each round so no configuration always runs first.
        for config in configs[r % len(configs):] + configs[:r % len(configs)]:
            rate, cpu_per_m, messages, evaluations, mean_ms, share = run(pb, data, args.work, *config)
            results[config].append(rate)
            cpu[config].append(cpu_per_m)
            shares[config].append(share)
            watchers, spread = config
            print(f"round {r + 1}: {watchers:3} watchers on {spread} metric(s): {rate:,.0f} events/s, "
                  f"server CPU {cpu_per_m:.2f} s per M events; {messages} messages; "
                  f"{evaluations:.0f} live evaluations, mean {mean_ms:.1f} ms ({share * 100:.1f}% of a core)",
                  flush=True)
    base = statistics.median(results[configs[0]])
    best_base = max(results[configs[0]])
    base_cpu = statistics.median(cpu[configs[0]])
    print(f"\n{args.rounds} rounds, {args.users} users; median and best (least disturbed) events/s:")
    for config in configs:
        rate, best = statistics.median(results[config]), max(results[config])
        cpu_per_m = statistics.median(cpu[config])
        watchers, spread = config
        print(f"  {watchers:3} watchers on {spread} metric(s): median {rate:,.0f} ({(rate / base - 1) * 100:+.1f}%), "
              f"best {best:,.0f} ({(best / best_base - 1) * 100:+.1f}%); server CPU {cpu_per_m:.2f} s per M events "
              f"({(cpu_per_m / base_cpu - 1) * 100:+.1f}%); live evaluations "
              f"{statistics.median(shares[config]) * 100:.1f}% of a core")


if __name__ == "__main__":
    main()
