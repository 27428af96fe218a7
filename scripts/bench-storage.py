#!/usr/bin/env python3
"""Storage benchmark (BENCHMARKS.md, issue 14's figures) on a data dir loaded by
scripts/bench-ingest.sh (which prints the load's events/s and peak RssAnon):

- restart: process start -> port open (the server binds only once its data is consistent)
  and -> first funnel answered;
- RssAnon after the restart plus a funnel, a retention table and a daily-uniques breakdown;
- a funnel right after an Alias (an anonymous id's events move to a user), and after a Track;
- p99 of 100-event Track calls on a second project, idle and while the loaded project runs
  funnels and retention back to back and receives writes, and of those writes themselves
  (Track on the project being queried);
- the latency of a short query on the loaded project while it runs funnels and retention, with
  and without writes to it;
- bytes on disk per event, and the data dir before / after retention + Compact (on a copy);
  there also DeleteUser's time with the Track calls on the same project meanwhile, and Track
  latency on the compacted project while Compact runs.

Usage: scripts/bench-storage.py --data /tmp/sxbench/data-700000 --db /tmp/sxbench/db
With --only-restart N, only the restart figures, N times, writing nothing (--cold: from an empty
page cache each time).
"""
import argparse
import datetime as dt
import importlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
from sextant_client import ROOT, stubs  # noqa: E402

spec = importlib.util.spec_from_file_location("bench_query", os.path.join(HERE, "bench-query.py"))
bench_query = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_query)

# SEXTANT_BIN runs another build (e.g. an older commit's, for a before/after in one run).
BIN = os.environ.get("SEXTANT_BIN") or os.path.join(ROOT, "target", "release", "sextant")


def rss_anon_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def evict(path):
    """Drops a file's or a directory's file pages from the page cache, as after a reboot (clean
    pages only)."""
    paths = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, files in os.walk(path) for f in files]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def start(db, *extra):
    started = time.perf_counter()
    # SEXTANT_SERVE_LOG appends the server's log (RUST_LOG picks its level) to that file.
    log = os.environ.get("SEXTANT_SERVE_LOG")
    stderr = open(log, "a") if log else subprocess.DEVNULL
    proc = subprocess.Popen([BIN, "serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off", "--web", "off",
                             "--data-dir", db, *extra], stdout=subprocess.PIPE, stderr=stderr, text=True)
    if log:
        stderr.close()
    addr = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
    channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 << 20)])
    grpc.channel_ready_future(channel).result(timeout=600)
    return proc, channel, time.perf_counter() - started, started


def stop(proc):
    proc.terminate()
    proc.wait(timeout=600)


def track_request(pb, project, prefix, n):
    c, i = pb["common"], pb["ingest"]
    now = dt.datetime.now(dt.timezone.utc)
    request = i.TrackRequest(project=project)
    for k in range(n):
        e = request.events.add(event_id=f"{prefix}-{k}", name="bench_write", user_id=f"w{k % 97}")
        e.timestamp.FromDatetime(now)
    return request


def track_until(ingest, pb, project, stop, tag, out):
    """Tracks 100-event batches on `project` until `stop` is set; each call's seconds go to `out`."""
    k, run = 0, f"{time.time_ns()}"
    while not stop.is_set():
        t = time.perf_counter()
        ingest.Track(track_request(pb, project, f"{run}-{tag}-{k}", 100), timeout=3600)
        out.append(time.perf_counter() - t)
        k += 1


def short_query(pb, channel, project):
    """A query that reads little: purchases per day over two days."""
    m, c = pb["metric"], pb["common"]
    metrics = pb["metric_grpc"].MetricServiceStub(channel)
    request = m.QueryMetricRequest(project=project, granularity=c.GRANULARITY_DAY, definition=m.MetricDefinition(
        key="purchases", kind=m.METRIC_KIND_COUNT, selector=c.EventSelector(event="purchase")))
    start = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
    bench_query.set_range(request.range, start, start + dt.timedelta(days=2))
    return lambda: metrics.QueryMetric(request, timeout=600)


def assign_call(pb, channel, project):
    """An experiment assignment (made with its metric when missing), as product code calls it, and
    a definition change: a new version of that metric."""
    m, c = pb["metric"], pb["common"]
    x = importlib.import_module("sextant.v1.experiment_pb2")
    experiments = importlib.import_module("sextant.v1.experiment_pb2_grpc").ExperimentServiceStub(channel)
    metric = m.MetricDefinition(key="bench_purchases", kind=m.METRIC_KIND_COUNT,
                                selector=c.EventSelector(event="purchase"))
    experiment = x.Experiment(key="bench_assign", variants=[x.Variant(key="control", weight=0.5),
                                                            x.Variant(key="treatment", weight=0.5)],
                              primary_metric_keys=["bench_purchases"])
    for create in (lambda: pb["metric_grpc"].MetricServiceStub(channel).CreateMetric(
                       m.CreateMetricRequest(project=project, metric=metric)),
                   lambda: experiments.CreateExperiment(x.CreateExperimentRequest(project=project, experiment=experiment))):
        try:
            create()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
    k = [0]

    def call():
        k[0] += 1
        experiments.Assign(x.AssignRequest(project=project, experiment_key="bench_assign", user_id=f"u{k[0]}"),
                           timeout=600)

    def change():
        pb["metric_grpc"].MetricServiceStub(channel).UpdateMetric(m.UpdateMetricRequest(project=project, metric=metric),
                                                                  timeout=600)
    return call, change


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--project", default="bench")
    ap.add_argument("--seconds", type=float, default=20, help="how long Track is timed, idle and loaded")
    ap.add_argument("--skip-compact", action="store_true", help="for builds without AdminService.Compact")
    ap.add_argument("--only-compact", action="store_true", help="only the retention + Compact figures")
    ap.add_argument("--only-restart", type=int, default=0, metavar="N",
                    help="only N restarts, each timed to the port and to one funnel; writes nothing")
    ap.add_argument("--cold", action="store_true",
                    help="with --only-restart: drop the data directory's and the binary's pages from the page cache "
                         "before each start")
    args = ap.parse_args()
    pb = stubs()
    if args.only_restart:
        for _ in range(args.only_restart):
            if args.cold:
                evict(args.db)
                evict(shutil.which(BIN) or BIN)
            proc, channel, to_port, started = start(args.db)
            try:
                calls = bench_query.benchmarks(pb, channel, args.project)
                next(call for name, call, *_ in calls if "funnel" in name)()
                print(f"restart{' (cold)' if args.cold else ''}: port open {to_port:.2f} s, "
                      f"first funnel answered {time.perf_counter() - started:.2f} s", flush=True)
            finally:
                stop(proc)
        return
    admin_pb = importlib.import_module("sextant.v1.admin_pb2")
    admin_grpc = importlib.import_module("sextant.v1.admin_pb2_grpc")
    ingest_grpc = importlib.import_module("sextant.v1.ingest_pb2_grpc")

    if not args.only_compact:
        proc, channel, to_port, started = start(args.db)
        try:
            calls = list(bench_query.benchmarks(pb, channel, args.project))
            funnel = next(call for name, call, *_ in calls if "funnel" in name)
            funnel()
            first_funnel = time.perf_counter() - started
            for _, call, *_ in calls:
                call()
            rss_after = rss_anon_mib(proc.pid)
            stats = pb["project"].GetProjectStatsRequest(project=args.project)
            events = pb["project_grpc"].ProjectServiceStub(channel).GetProjectStats(stats).events
            print(f"events: {events}")
            print(f"restart: port open (data consistent) {to_port:.2f} s, first funnel answered {first_funnel:.2f} s")
            print(f"RssAnon after restart + funnel, retention, daily uniques: {rss_after:.0f} MiB")

            # A funnel after an Alias that moves an anonymous id's events to a user, against one
            # after a plain Track (the same tail, no owner change).
            aliases = ingest_grpc.IngestServiceStub(channel)
            tag = f"{time.time_ns()}"
            timed = {"after a Track": [], "after an Alias": []}
            for k in range(5):
                for label in timed:
                    anon = f"bench-alias-{tag}-{k}-{len(timed[label])}"
                    request = track_request(pb, args.project, anon, 1)
                    request.events[0].user_id, request.events[0].anonymous_id = "", anon
                    aliases.Track(request, timeout=600)
                    if label == "after an Alias":
                        aliases.Alias(pb["ingest"].AliasRequest(project=args.project, anonymous_id=anon,
                                                               user_id=f"u{k}_0"), timeout=600)
                    t = time.perf_counter()
                    funnel()
                    timed[label].append(time.perf_counter() - t)
            for label, values in timed.items():
                print(f"funnel {label}: median {statistics.median(values) * 1000:.0f} ms "
                      f"({', '.join(f'{v * 1000:.0f}' for v in values)} ms)")

            projects = pb["project_grpc"].ProjectServiceStub(channel)
            try:
                projects.CreateProject(pb["project"].CreateProjectRequest(project=pb["project"].Project(id="writes")))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
            ingest = ingest_grpc.IngestServiceStub(channel)
            run = f"{time.time_ns()}"

            def track_latencies(tag):
                out = []
                deadline = time.perf_counter() + args.seconds
                k = 0
                while time.perf_counter() < deadline:
                    k += 1
                    request = track_request(pb, "writes", f"{run}-{tag}-{k}", 100)
                    t = time.perf_counter()
                    ingest.Track(request, timeout=600)
                    out.append(time.perf_counter() - t)
                return out

            idle = track_latencies("idle")
            stop_load = threading.Event()
            queries = [0]

            def query_load():
                # Funnels and retention back to back on the loaded project.
                heavy = [call for name, call, *_ in calls if "funnel" in name or "retention" in name]
                while not stop_load.is_set():
                    for call in heavy:
                        call()
                        queries[0] += 1

            own = []
            own_started = []

            def write_load():
                # Its latencies: Track on the queried project itself.
                k = 0
                while not stop_load.is_set():
                    t = time.perf_counter()
                    ingest.Track(track_request(pb, args.project, f"{run}-load-{k}", 100), timeout=600)
                    own.append(time.perf_counter() - t)
                    own_started.append(t)
                    k += 1

            workers = [threading.Thread(target=query_load), threading.Thread(target=write_load)]
            for w in workers:
                w.start()
            time.sleep(1)
            loaded = track_latencies("loaded")
            stop_load.set()
            for w in workers:
                w.join()
            for label, values in (("idle", idle), ("while the other project is queried and written", loaded)):
                print(f"Track of 100 events on another project, {label}: p50 {statistics.median(values) * 1000:.1f} ms, "
                      f"p99 {percentile(values, 99) * 1000:.1f} ms ({len(values)} calls)")
            print(f"Track of 100 events on the queried project itself: p50 {statistics.median(own) * 1000:.1f} ms, "
                  f"p99 {percentile(own, 99) * 1000:.1f} ms, max {max(own) * 1000:.1f} ms ({len(own)} calls)")
            slowest = max(range(len(own)), key=own.__getitem__)
            print(f"  (the slowest was call {slowest + 1}, {own_started[slowest] - own_started[0]:.2f} s into the load)")
            print(f"  ({queries[0]} funnel / retention queries ran meanwhile)")

            # A short query on the project running funnels and retention, without and with
            # writes to it: a read must see every acked write, so when writes (or a definition
            # change) are queued behind a running query it forks the state to apply them.
            short = short_query(pb, channel, args.project)
            assign, change = assign_call(pb, channel, args.project)
            for label, writing in (("queried only", False), ("queried and written", True)):
                stop_load.clear()
                queries[0] = 0
                workers = [threading.Thread(target=query_load)] + ([threading.Thread(target=write_load)] if writing else [])
                for w in workers:
                    w.start()
                time.sleep(1)
                short_times, assign_times, change_times = [], [], []
                deadline = time.perf_counter() + args.seconds
                while time.perf_counter() < deadline:
                    for call, times in ((assign, assign_times), (change, change_times), (short, short_times)):
                        t = time.perf_counter()
                        call()
                        times.append(time.perf_counter() - t)
                    time.sleep(0.02)
                stop_load.set()
                for w in workers:
                    w.join()
                print(f"a 2-day event count on the project itself, {label}: p50 {statistics.median(short_times) * 1000:.1f} ms, "
                      f"p99 {percentile(short_times, 99) * 1000:.1f} ms ({len(short_times)} calls, {queries[0]} heavy queries)")
                print(f"  Assign (reads definitions only) meanwhile: p50 {statistics.median(assign_times) * 1000:.1f} ms, "
                      f"p99 {percentile(assign_times, 99) * 1000:.1f} ms")
                print(f"  UpdateMetric (a definition change) meanwhile: p50 {statistics.median(change_times) * 1000:.1f} ms, "
                      f"p99 {percentile(change_times, 99) * 1000:.1f} ms")
        finally:
            stop(proc)

        size = dir_bytes(args.db)
        print(f"disk: {size} bytes, {size / events:.1f} bytes per event")

    if args.skip_compact:
        return
    # Retention + Compact on a copy, so the data dir stays as loaded.
    copy = args.db.rstrip("/") + ".compact-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(args.db, copy)
    proc, channel, _, _ = start(copy, "--retention-interval-secs", "1")
    try:
        projects = pb["project_grpc"].ProjectServiceStub(channel)
        keep_from = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
        days = (dt.datetime.now(dt.timezone.utc) - keep_from).days
        count = lambda: projects.GetProjectStats(pb["project"].GetProjectStatsRequest(project=args.project)).events
        # DeleteUser of one user (GDPR) while Track runs on the same project: how long the
        # deletion takes and how long the writes wait for it.
        ingest = ingest_grpc.IngestServiceStub(channel)
        user_pb = importlib.import_module("sextant.v1.user_pb2")
        users = importlib.import_module("sextant.v1.user_pb2_grpc").UserServiceStub(channel)
        # Warmed up first, so that the times below are the deletion's: a start's first lookup
        # of a user waits for the lookups it builds, its first Track for the dedupe files' check.
        users.DeleteUser(user_pb.DeleteUserRequest(project=args.project, user_id="bench-nobody"), timeout=3600)
        ingest.Track(track_request(pb, args.project, f"warm-{time.time_ns()}", 1), timeout=600)
        for victim in ("u42_1", "u42_2", "u42_3"):
            deleting, beside = threading.Event(), []
            writer = threading.Thread(target=track_until, args=(ingest, pb, args.project, deleting, victim, beside))
            writer.start()
            time.sleep(0.3)
            t = time.perf_counter()
            users.DeleteUser(user_pb.DeleteUserRequest(project=args.project, user_id=victim), timeout=3600)
            took = time.perf_counter() - t
            time.sleep(0.3)
            deleting.set()
            writer.join()
            print(f"DeleteUser {victim}: {took * 1000:.0f} ms; Track of 100 events on the same project meanwhile: "
                  f"max {max(beside) * 1000:.0f} ms, p50 {statistics.median(beside) * 1000:.1f} ms ({len(beside)} calls)")
        events = count()
        update = pb["project"].UpdateProjectRequest(project=args.project, update=pb["project"].Project(retention_days=days),
                                                    update_mask=["retention_days"])
        projects.UpdateProject(update)
        while count() == events:
            time.sleep(0.5)
        # Retention off again (what expired stays expired), so the count below moves only with
        # the writes, and every acked one can be checked for after the Compact.
        no_retention = pb["project"].Project(retention_days=0)
        projects.UpdateProject(pb["project"].UpdateProjectRequest(project=args.project, update=no_retention,
                                                                  update_mask=["retention_days"]))
        time.sleep(2)
        left = count()
        # Track on the compacted project while Compact runs: how long its writes wait.
        compacting, during = threading.Event(), []
        writer = threading.Thread(target=track_until, args=(ingest, pb, args.project, compacting, "compact", during))
        writer.start()
        while not during:
            time.sleep(0.01)
        t = time.perf_counter()
        reply = admin_grpc.AdminServiceStub(channel).Compact(admin_pb.CompactRequest(), timeout=3600)
        took = time.perf_counter() - t
        compacting.set()
        writer.join()
        stored = count()
        print(f"events after Compact: {stored}, acked {left} + {100 * len(during)} written meanwhile: "
              f"{'all there' if stored == left + 100 * len(during) else 'MISMATCH'}")
        during = during[1:]  # the first call ended before Compact began
        print(f"retention {days} days kept {left} of {events} events; Compact took {took:.1f} s: "
              f"{reply.bytes_before} -> {reply.bytes_after} bytes ({reply.bytes_after / max(left, 1):.1f} bytes per kept event)")
        print(f"Track of 100 events on the compacted project during Compact: p50 {statistics.median(during) * 1000:.1f} ms, "
              f"p99 {percentile(during, 99) * 1000:.1f} ms, max {max(during) * 1000:.1f} ms ({len(during)} calls)")
    finally:
        stop(proc)
    # Stopped: what stays on disk (the person order's scratch files go with the process).
    for part in sorted(os.listdir(copy)):
        path = os.path.join(copy, part)
        size = dir_bytes(path) if os.path.isdir(path) else os.path.getsize(path)
        print(f"  after the stop: {part}: {size} bytes ({size / max(left, 1):.1f} per kept event)")
    shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    main()
