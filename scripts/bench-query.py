#!/usr/bin/env python3
"""Query benchmark (BENCHMARKS.md): Sextant's QueryMetric against DuckDB on the same data.

Starts a release server on a data dir already loaded by scripts/bench-ingest.sh, loads the
same events.jsonl into DuckDB (in memory), and times each query several times in the same
run, reporting medians and the ratio. Usage:
  scripts/bench-query.py --data /tmp/sextant-bench/data-700000 --db /tmp/sextant-bench/db --project bench
"""
import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time

import duckdb
import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from sextant_client import ROOT, stubs  # noqa: E402


def timed(fn, runs):
    times = []
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--project", default="bench")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    pb = stubs()
    binary = os.path.join(ROOT, "target", "release", "sextant")
    server = subprocess.Popen([binary, "serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off", "--data-dir", args.db],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = server.stdout.readline().strip().rsplit(" ", 1)[-1]
    try:
        channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 << 20)])
        grpc.channel_ready_future(channel).result(timeout=600)
        m, c = pb["metric"], pb["common"]
        metrics = pb["metric_grpc"].MetricServiceStub(channel)
        request = m.QueryMetricRequest(
            project=args.project,
            definition=m.MetricDefinition(key="dau", kind=m.METRIC_KIND_UNIQUE_USERS,
                                          selector=c.EventSelector(event="session_start")),
            granularity=c.GRANULARITY_DAY, breakdown="user.channel", breakdown_limit=10)
        getattr(request.range, "from").FromDatetime(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
        request.range.to.FromDatetime(dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc))
        metrics.QueryMetric(request, timeout=600)  # warm-up
        sextant_s, reply = timed(lambda: metrics.QueryMetric(request, timeout=600), args.runs)
        sextant_cells = {(s.breakdown_value, p.start.seconds): p.value for s in reply.series for p in s.points if p.value}

        db = duckdb.connect()
        start = time.perf_counter()
        db.execute(f"""
            CREATE TABLE events AS SELECT DISTINCT ON (event_id) event_id, name, user_id,
                   CAST(timestamp AS TIMESTAMPTZ) AS ts
            FROM read_json_auto('{os.path.join(args.data, 'events.jsonl')}', format='newline_delimited',
                 columns={{'event_id': 'VARCHAR', 'name': 'VARCHAR', 'user_id': 'VARCHAR', 'timestamp': 'VARCHAR',
                           'properties': 'JSON'}})""")
        db.execute(f"""CREATE TABLE users AS SELECT user_id, traits->>'channel' AS channel
            FROM read_json_auto('{os.path.join(args.data, 'users.jsonl')}', format='newline_delimited',
                 columns={{'user_id': 'VARCHAR', 'traits': 'JSON'}})""")
        load_s = time.perf_counter() - start
        db.execute("SET TimeZone = 'UTC'")
        sql = """SELECT u.channel, CAST(epoch(date_trunc('day', e.ts)) AS BIGINT) AS day, COUNT(DISTINCT e.user_id)
                 FROM events e JOIN users u USING (user_id)
                 WHERE e.name = 'session_start' AND e.ts >= '2026-01-01' AND e.ts < '2026-04-01'
                 GROUP BY 1, 2"""
        duck_s, rows = timed(lambda: db.execute(sql).fetchall(), args.runs)
        duck_cells = {(ch, day): float(n) for ch, day, n in rows}
        events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        same = "yes" if duck_cells == sextant_cells else "NO"
        print(f"events: {events}; DuckDB {duckdb.__version__} load from JSON: {load_s:.1f} s (not timed below)")
        print(f"daily unique users of session_start by user.channel, 90 days (median of {args.runs}):")
        print(f"  sextant QueryMetric over gRPC: {sextant_s * 1000:.0f} ms")
        print(f"  duckdb in-process:             {duck_s * 1000:.0f} ms")
        print(f"  ratio duckdb / sextant:        {duck_s / sextant_s:.2f}x; same answer: {same}")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
