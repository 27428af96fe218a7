#!/usr/bin/env python3
"""Attribution benchmark (BENCHMARKS.md): Sextant's QueryAttribution against DuckDB SQL of the same model.

Generates `sextant gen --users N` data (events, touches, aliases, spend) unless DIR holds it, starts a
release server on a fresh data dir, loads everything with `sextant load`, loads the same files into DuckDB
(in memory; not timed), then times each model several times in the same run and reports medians and the
ratio, checking the answers channel by channel. The timed DuckDB SQL resolves aliases itself, as Sextant
does at query time. Usage:
  scripts/bench-attribution.py --users 100000 --dir /tmp/sextant-bench-attribution
"""
import argparse
import datetime as dt
import importlib.util
import os
import shutil
import subprocess
import sys
import time

import duckdb
import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
from sextant_client import ROOT, stubs  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_query", os.path.join(HERE, "bench-query.py"))
bench_query = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_query)
timed = bench_query.timed

FROM = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
TO = dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc)
LOOKBACK_DAYS, HALF_LIFE_DAYS = 30, 7

# Per model: the share of touch `rn` of `n` (ranked by time, event_id) in a conversion.
SHARES = {
    "LINEAR": "1.0 / n",
    "POSITION_BASED": "CASE WHEN n = 1 THEN 1.0 WHEN n = 2 THEN 0.5 WHEN rn = 1 OR rn = n THEN 0.4 ELSE 0.2 / (n - 2) END",
    "TIME_DECAY": "w / sum(w) OVER (PARTITION BY conversion_id)",
}

TOUCHES = """
    SELECT t.event_id, coalesce(a.user_id, t.anonymous_id) AS person, t.ts, t.channel
    FROM touches t LEFT JOIN aliases a USING (anonymous_id)"""

CONVERSIONS = f"""
    SELECT event_id AS conversion_id, user_id AS person, ts FROM conversions
    WHERE ts >= TIMESTAMPTZ '{FROM.isoformat()}' AND ts < TIMESTAMPTZ '{TO.isoformat()}'"""


def last_touch_sql():
    # ASOF: each conversion's latest touch at or before it, kept when inside the lookback.
    return f"""
        WITH c AS ({CONVERSIONS}), t AS ({TOUCHES}),
        last AS (SELECT c.conversion_id, t.ts AS touch_ts, t.channel
                 FROM c ASOF LEFT JOIN t ON t.person = c.person AND t.ts <= c.ts)
        SELECT CASE WHEN touch_ts >= c.ts - INTERVAL {LOOKBACK_DAYS} DAY THEN channel ELSE '$direct' END, count(*)
        FROM last JOIN c USING (conversion_id) GROUP BY 1"""


def multi_touch_sql(model):
    return f"""
        WITH c AS ({CONVERSIONS}), t AS ({TOUCHES}),
        joined AS (
            SELECT c.conversion_id, t.channel,
                   row_number() OVER (PARTITION BY c.conversion_id ORDER BY t.ts, t.event_id) AS rn,
                   count(*) OVER (PARTITION BY c.conversion_id) AS n,
                   pow(2.0, -(epoch_us(c.ts) - epoch_us(t.ts)) / ({HALF_LIFE_DAYS} * 86400e6)) AS w
            FROM c JOIN t ON t.person = c.person AND t.ts >= c.ts - INTERVAL {LOOKBACK_DAYS} DAY AND t.ts <= c.ts),
        shares AS (SELECT channel, {SHARES[model]} AS share FROM joined)
        SELECT channel, sum(share) FROM shares GROUP BY 1
        UNION ALL
        SELECT '$direct', count(*) FROM c WHERE conversion_id NOT IN (SELECT conversion_id FROM joined)"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    pb = stubs()
    binary = os.path.join(ROOT, "target", "release", "sextant")
    data = os.path.join(args.dir, f"data-{args.users}")
    if not os.path.exists(os.path.join(data, "spend.jsonl")):
        subprocess.run([binary, "gen", "--users", str(args.users), "--seed", str(args.seed), "--out", data], check=True)
    db_dir = os.path.join(args.dir, f"db-{args.users}")
    shutil.rmtree(db_dir, ignore_errors=True)
    server = subprocess.Popen([binary, "serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off", "--data-dir", db_dir],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = server.stdout.readline().strip().rsplit(" ", 1)[-1]
    try:
        start = time.perf_counter()
        files = {name: os.path.join(data, f"{name}.jsonl") for name in ["users", "events", "touches", "aliases", "spend"]}
        subprocess.run([binary, "load", "--addr", addr, "--project", "bench", "--users", files["users"],
                        "--events", files["events"], "--touches", files["touches"], "--aliases", files["aliases"],
                        "--spend", files["spend"], "--spend-metric", "ad_spend"], check=True)
        print(f"sextant load (events, touches, aliases, spend): {time.perf_counter() - start:.1f} s (not timed below)")
        channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 << 20)])
        analysis = pb["analysis_grpc"].AnalysisServiceStub(channel)
        a, c = pb["analysis"], pb["common"]

        db = duckdb.connect()
        db.execute("SET TimeZone = 'UTC'")
        start = time.perf_counter()
        db.execute(f"""CREATE TABLE conversions AS SELECT DISTINCT ON (event_id) event_id, user_id,
                           CAST(timestamp AS TIMESTAMPTZ) AS ts
                       FROM read_json_auto('{files['events']}', format='newline_delimited',
                            columns={{'event_id': 'VARCHAR', 'name': 'VARCHAR', 'user_id': 'VARCHAR',
                                      'timestamp': 'VARCHAR', 'properties': 'JSON'}})
                       WHERE name = 'purchase'""")
        db.execute(f"""CREATE TABLE touches AS SELECT event_id, anonymous_id, CAST(timestamp AS TIMESTAMPTZ) AS ts,
                           properties->>'utm_source' AS channel
                       FROM read_json_auto('{files['touches']}', format='newline_delimited',
                            columns={{'event_id': 'VARCHAR', 'name': 'VARCHAR', 'anonymous_id': 'VARCHAR',
                                      'timestamp': 'VARCHAR', 'properties': 'JSON'}})
                       WHERE coalesce(properties->>'utm_source', '') <> ''""")
        db.execute(f"""CREATE TABLE aliases AS SELECT anonymous_id, user_id
                       FROM read_json_auto('{files['aliases']}', format='newline_delimited',
                            columns={{'anonymous_id': 'VARCHAR', 'user_id': 'VARCHAR'}})""")
        counts = db.execute("SELECT (SELECT count(*) FROM conversions), (SELECT count(*) FROM touches)").fetchone()
        events = sum(1 for _ in open(files["events"])) + sum(1 for _ in open(files["touches"]))
        print(f"{args.users} users, {events} event lines (touches included), {counts[0]} purchases, "
              f"{counts[1]} tagged touches; DuckDB {duckdb.__version__} load: {time.perf_counter() - start:.1f} s")
        print(f"median of {args.runs} runs after one warm-up; Sextant over gRPC, DuckDB in-process; "
              f"conversions purchase in 2026-01..03, touches page_view by utm_source, lookback {LOOKBACK_DAYS} d")
        print("| model | Sextant | DuckDB | Sextant / DuckDB | same answer |")
        print("|---|---|---|---|---|")
        for model in ["LAST_TOUCH", "LINEAR", "POSITION_BASED", "TIME_DECAY"]:
            request = a.QueryAttributionRequest(
                project="bench", conversion=c.EventSelector(event="purchase"), touch=c.EventSelector(event="page_view"),
                channel_property="utm_source", model=a.AttributionModel.Value(f"ATTRIBUTION_MODEL_{model}"))
            getattr(request.range, "from").FromDatetime(FROM)
            request.range.to.FromDatetime(TO)
            request.lookback.FromTimedelta(dt.timedelta(days=LOOKBACK_DAYS))
            request.half_life.FromTimedelta(dt.timedelta(days=HALF_LIFE_DAYS))

            def call():
                return {r.channel: round(r.credit, 6) for r in analysis.QueryAttribution(request, timeout=600).rows
                        if r.credit > 0}

            sql = last_touch_sql() if model == "LAST_TOUCH" else multi_touch_sql(model)
            call()
            sextant_s, got = timed(call, args.runs)
            db.execute(sql).fetchall()
            duck_s, rows = timed(lambda: db.execute(sql).fetchall(), args.runs)
            want = {ch: round(float(v), 6) for ch, v in rows if v > 0}
            print(f"| {model} | {sextant_s * 1000:.0f} ms | {duck_s * 1000:.0f} ms | {sextant_s / duck_s:.2f}x | "
                  f"{'yes' if got == want else 'NO'} |", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
