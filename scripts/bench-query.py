#!/usr/bin/env python3
"""Query benchmark (BENCHMARKS.md): Sextant's metric, funnel, retention and cohort calls against
DuckDB on the same data.

Starts a release server on a data dir already loaded by scripts/bench-ingest.sh, loads the
same events.jsonl into DuckDB (in memory), and times each query several times in the same
run, reporting medians and the ratio. Usage:
  scripts/bench-query.py --data /tmp/sextant-bench/data-700000 --db /tmp/sextant-bench/db --project bench
With --serve-args '--storage clickhouse --clickhouse-url URL --clickhouse-database DB' the server
reads a ClickHouse database that scripts/bench-ingest.sh loaded with the same SEXTANT_SERVE_ARGS.
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


FROM = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
TO = dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc)


def set_range(request_range, from_=FROM, to=TO):
    getattr(request_range, "from").FromDatetime(from_)
    request_range.to.FromDatetime(to)


def funnel_duckdb(people=""):
    """DuckDB SQL of the 4-step funnel: each step the first event at or after the previous
    step's (ASOF), kept when within 7 days of the attempt's signup; each user with their
    furthest attempt. `people`: a condition on user_id that signups must pass."""
    only = f" AND {people}" if people else ""
    return f"""
        WITH s AS (SELECT user_id, ts AS t1 FROM events
                   WHERE name = 'signup' AND ts >= '2026-01-01' AND ts < '2026-04-01'{only}),
        o AS (SELECT user_id, ts FROM events WHERE name = 'onboarding_complete'),
        c AS (SELECT user_id, ts FROM events WHERE name = 'add_to_cart'),
        p AS (SELECT user_id, ts FROM events WHERE name = 'purchase'),
        s2 AS (SELECT s.user_id, s.t1, CASE WHEN o.ts <= s.t1 + INTERVAL 7 DAY THEN o.ts END AS t2
               FROM s ASOF LEFT JOIN o ON o.user_id = s.user_id AND o.ts >= s.t1),
        s3 AS (SELECT s2.*, CASE WHEN c.ts <= s2.t1 + INTERVAL 7 DAY THEN c.ts END AS t3
               FROM s2 ASOF LEFT JOIN c ON c.user_id = s2.user_id AND c.ts >= s2.t2),
        s4 AS (SELECT s3.*, CASE WHEN p.ts <= s3.t1 + INTERVAL 7 DAY THEN p.ts END AS t4
               FROM s3 ASOF LEFT JOIN p ON p.user_id = s3.user_id AND p.ts >= s3.t3),
        best AS (SELECT user_id, max(1 + (t2 IS NOT NULL)::INT + (t3 IS NOT NULL)::INT + (t4 IS NOT NULL)::INT) AS reached
                 FROM s4 GROUP BY user_id)
        SELECT count(*) FILTER (WHERE reached >= 1), count(*) FILTER (WHERE reached >= 2),
               count(*) FILTER (WHERE reached >= 3), count(*) FILTER (WHERE reached >= 4) FROM best"""


def funnel_chdb(people=""):
    """chDB SQL of the same funnel (windowFunnel); `people` as in funnel_duckdb."""
    only = f" AND {people}" if people else ""
    return f"""
        SELECT countIf(level >= 1), countIf(level >= 2), countIf(level >= 3), countIf(level >= 4) FROM (
            SELECT user_id, windowFunnel(604800000)(toUInt64(toUnixTimestamp64Milli(ts)),
                       name = 'signup' AND ts >= '2026-01-01' AND ts < '2026-04-01', name = 'onboarding_complete',
                       name = 'add_to_cart', name = 'purchase') AS level
            FROM events WHERE name IN ('signup', 'onboarding_complete', 'add_to_cart', 'purchase')
                AND ts >= '2026-01-01'{only}
            GROUP BY user_id)"""


def benchmarks(pb, channel, project, data=None):
    """(name, sextant call returning a comparable answer, DuckDB SQL, chDB SQL, SQL rows to the same shape).
    With `data` (the generated files), also the funnel within a static cohort of every seventh user."""
    m, c, a, co = pb["metric"], pb["common"], pb["analysis"], pb["cohort"]
    metrics = pb["metric_grpc"].MetricServiceStub(channel)
    analysis = pb["analysis_grpc"].AnalysisServiceStub(channel)
    cohorts = pb["cohort_grpc"].CohortServiceStub(channel)

    dau = m.QueryMetricRequest(
        project=project,
        definition=m.MetricDefinition(key="dau", kind=m.METRIC_KIND_UNIQUE_USERS,
                                      selector=c.EventSelector(event="session_start")),
        granularity=c.GRANULARITY_DAY, breakdown="user.channel", breakdown_limit=10)
    set_range(dau.range)

    def dau_call():
        reply = metrics.QueryMetric(dau, timeout=600)
        return {(s.breakdown_value, p.start.seconds): p.value for s in reply.series for p in s.points if p.value}

    yield ("daily unique users of session_start by user.channel, 90 days", dau_call, """
        SELECT u.channel, CAST(epoch(date_trunc('day', e.ts)) AS BIGINT) AS day, COUNT(DISTINCT e.user_id)
        FROM events e JOIN users u USING (user_id)
        WHERE e.name = 'session_start' AND e.ts >= '2026-01-01' AND e.ts < '2026-04-01'
        GROUP BY 1, 2""", """
        SELECT u.channel, toUnixTimestamp(toStartOfDay(e.ts)) AS day, uniqExact(e.user_id)
        FROM events e JOIN users u USING (user_id)
        WHERE e.name = 'session_start' AND e.ts >= '2026-01-01' AND e.ts < '2026-04-01'
        GROUP BY 1, 2""", lambda rows: {(ch, day): float(n) for ch, day, n in rows})

    steps = ["signup", "onboarding_complete", "add_to_cart", "purchase"]
    funnel = a.QueryFunnelRequest(project=project, steps=[c.EventSelector(event=s) for s in steps])
    set_range(funnel.range)
    funnel.window.FromTimedelta(dt.timedelta(days=7))

    def funnel_call():
        return [s.users for s in analysis.QueryFunnel(funnel, timeout=600).steps]

    yield ("4-step funnel signup → purchase, 7-day window, 90 days", funnel_call, funnel_duckdb(), funnel_chdb(),
           lambda rows: list(rows[0]))

    retention = a.QueryRetentionRequest(project=project, cohort_event=c.EventSelector(event="signup"),
                                        return_event=c.EventSelector(event="session_start"), first_time=True,
                                        period=c.PERIOD_WEEK, periods=8, breakdown="user.channel")
    set_range(retention.range)

    def retention_call():
        reply = analysis.QueryRetention(retention, timeout=600)
        return {(r.start.seconds, r.breakdown_value, k): n for r in reply.cohorts for k, n in enumerate(r.retained)}

    yield ("weekly first-time retention signup → session_start by user.channel, 8 weeks", retention_call, """
        WITH first AS (SELECT user_id, min(ts) AS t0 FROM events WHERE name = 'signup' GROUP BY user_id),
        cohort AS (SELECT f.user_id, f.t0, date_trunc('week', f.t0) AS week, coalesce(u.channel, '$none') AS channel
                   FROM first f LEFT JOIN users u USING (user_id)
                   WHERE f.t0 >= '2026-01-01' AND f.t0 < '2026-04-01'),
        sizes AS (SELECT week, channel, count(*) AS size FROM cohort GROUP BY ALL),
        returns AS (SELECT DISTINCT c.week, c.channel, c.user_id,
                           CAST(date_diff('day', c.week, date_trunc('week', e.ts)) / 7 AS INT) AS k
                    FROM cohort c JOIN events e ON e.user_id = c.user_id AND e.name = 'session_start' AND e.ts >= c.t0),
        counts AS (SELECT week, channel, k, count(*) AS n FROM returns WHERE k < 8 GROUP BY ALL)
        SELECT CAST(epoch(s.week) AS BIGINT), s.channel, p.k, coalesce(n, 0)
        FROM sizes s CROSS JOIN range(8) p(k) LEFT JOIN counts USING (week, channel, k)""", """
        WITH first AS (SELECT user_id, min(ts) AS t0 FROM events WHERE name = 'signup' GROUP BY user_id),
        cohort AS (SELECT f.user_id AS user_id, f.t0 AS t0, toStartOfWeek(f.t0, 1) AS week,
                          if(u.channel = '', '$none', u.channel) AS channel
                   FROM first f LEFT JOIN users u ON u.user_id = f.user_id
                   WHERE f.t0 >= '2026-01-01' AND f.t0 < '2026-04-01'),
        returns AS (SELECT DISTINCT c.week AS week, c.channel AS channel, c.user_id AS user_id,
                           intDiv(dateDiff('day', c.week, toStartOfWeek(e.ts, 1)), 7) AS k
                    FROM cohort c JOIN events e ON e.user_id = c.user_id
                    WHERE e.name = 'session_start' AND e.ts >= c.t0),
        counts AS (SELECT week, channel, k, count() AS n FROM returns WHERE k < 8 GROUP BY week, channel, k),
        cells AS (SELECT week, channel, arrayJoin(range(8)) AS k FROM cohort GROUP BY week, channel)
        SELECT toUnixTimestamp(toDateTime(cells.week, 'UTC')), cells.channel, cells.k, counts.n
        FROM cells LEFT JOIN counts ON counts.week = cells.week AND counts.channel = cells.channel
                                       AND counts.k = cells.k""",
           lambda rows: {(w, ch, k): n for w, ch, k, n in rows})

    try:
        cohorts.DeleteCohort(co.DeleteCohortRequest(project=project, id="bench-repeat-buyers"))
    except grpc.RpcError:
        pass
    cohorts.CreateCohort(co.CreateCohortRequest(project=project, cohort=co.Cohort(
        id="bench-repeat-buyers", conditions=co.CohortConditionGroup(conditions=[co.CohortCondition(
            behavioural=co.BehaviouralCondition(event=c.EventSelector(event="purchase"), min_count=2))]))))

    def cohort_call():
        return cohorts.GetCohortSize(co.GetCohortSizeRequest(project=project, id="bench-repeat-buyers")).size

    yield ("behavioural cohort size: purchased at least twice", cohort_call, """
        SELECT count(*) FROM (SELECT user_id FROM events WHERE name = 'purchase' GROUP BY 1 HAVING count(*) >= 2)""", """
        SELECT count() FROM (SELECT user_id FROM events WHERE name = 'purchase' GROUP BY user_id HAVING count() >= 2)""",
           lambda rows: rows[0][0])

    def funnel_in(cohort_id):
        """The funnel above within a cohort, as a call."""
        request = a.QueryFunnelRequest()
        request.CopyFrom(funnel)
        request.cohort_id = cohort_id
        return lambda: [s.users for s in analysis.QueryFunnel(request, timeout=600).steps]

    # The funnel above, for the cohort's members only.
    repeat_buyers = "SELECT user_id FROM events WHERE name = 'purchase' GROUP BY user_id HAVING count(*) >= 2"
    yield ("the same funnel within the cohort", funnel_in("bench-repeat-buyers"), funnel_duckdb(f"user_id IN ({repeat_buyers})"),
           funnel_chdb(f"user_id IN ({repeat_buyers.replace('count(*)', 'count()')})"), lambda rows: list(rows[0]))
    if data is None:
        return

    # A static (uploaded) cohort: the generated user ids u<seed>_<n> with n divisible by 7.
    import json
    with open(os.path.join(data, "users.jsonl")) as f:
        listed = [u["user_id"] for u in map(json.loads, f) if int(u["user_id"].rsplit("_", 1)[1]) % 7 == 0]
    try:
        cohorts.DeleteCohort(co.DeleteCohortRequest(project=project, id="bench-every-seventh"))
    except grpc.RpcError:
        pass
    cohorts.CreateCohort(co.CreateCohortRequest(project=project, cohort=co.Cohort(
        id="bench-every-seventh", static_members=co.StaticCohortMembers(user_ids=listed))))
    seventh = "user_id IN (SELECT user_id FROM users WHERE CAST(split_part(user_id, '_', 2) AS BIGINT) % 7 = 0)"
    yield (f"the same funnel within a static cohort ({len(listed):,} uploaded ids)", funnel_in("bench-every-seventh"),
           funnel_duckdb(seventh), funnel_chdb("toUInt64(splitByChar('_', user_id)[2]) % 7 = 0"),
           lambda rows: list(rows[0]))


def load_chdb(data):
    """Loads the same files into a chDB MergeTree sorted by user and time; returns a query function."""
    import json

    from chdb import session

    sess = session.Session()
    start = time.perf_counter()
    sess.query("""CREATE TABLE events (event_id String, name LowCardinality(String), user_id String,
                                       ts DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY (user_id, ts)""")
    sess.query(f"""INSERT INTO events SELECT event_id, any(name), any(user_id),
                          any(parseDateTime64BestEffort(timestamp, 3, 'UTC'))
                   FROM file('{os.path.join(data, 'events.jsonl')}', 'JSONEachRow',
                             'event_id String, name String, user_id String, timestamp String')
                   GROUP BY event_id""")
    sess.query("CREATE TABLE users (user_id String, channel String) ENGINE = MergeTree ORDER BY user_id")
    sess.query(f"""INSERT INTO users SELECT user_id, JSONExtractString(traits, 'channel')
                   FROM file('{os.path.join(data, 'users.jsonl')}', 'JSONEachRow', 'user_id String, traits String')""")
    sess.query("OPTIMIZE TABLE events FINAL")
    print(f"chDB {sess.query('SELECT version()', 'CSV').bytes().decode().strip()} load: "
          f"{time.perf_counter() - start:.1f} s (not timed below)")

    def query(sql):
        result = sess.query(sql + " SETTINGS output_format_json_quote_64bit_integers = 0, session_timezone = 'UTC'",
                            "JSONCompact")
        return [tuple(row) for row in json.loads(result.bytes())["data"]]

    return query


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--project", default="bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--chdb", action="store_true", help="also time chDB (pip install chdb)")
    ap.add_argument("--only", default="", help="time only the queries whose name contains this")
    ap.add_argument("--serve-args", default="",
                    help="more `sextant serve` flags, e.g. '--storage clickhouse --clickhouse-url URL'")
    args = ap.parse_args()
    pb = stubs()
    # SEXTANT_BIN runs another build (e.g. an older commit's, for a before/after in one run).
    binary = os.environ.get("SEXTANT_BIN") or os.path.join(ROOT, "target", "release", "sextant")
    server = subprocess.Popen([binary, "serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off", "--data-dir", args.db]
                              + args.serve_args.split(),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = server.stdout.readline().strip().rsplit(" ", 1)[-1]
    try:
        channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 64 << 20)])
        grpc.channel_ready_future(channel).result(timeout=600)
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
        events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        print(f"events: {events}; DuckDB {duckdb.__version__} load from JSON: {load_s:.1f} s (not timed below)")
        chdb_query = load_chdb(args.data) if args.chdb else None
        print(f"median of {args.runs} runs after one warm-up; Sextant over gRPC, DuckDB and chDB in-process")
        print("| query | Sextant | DuckDB | chDB | fastest other / Sextant | same answer (DuckDB, chDB) |")
        print("|---|---|---|---|---|---|")
        for name, sextant_call, duck_sql, chdb_sql, shape in benchmarks(pb, channel, args.project, args.data):
            if args.only not in name:
                continue
            sextant_call()  # warm-up
            sextant_s, got = timed(sextant_call, args.runs)
            db.execute(duck_sql).fetchall()
            duck_s, rows = timed(lambda: db.execute(duck_sql).fetchall(), args.runs)
            same = ["yes" if got == shape(rows) else "NO"]
            others = [duck_s]
            chdb_cell = "-"
            if chdb_query:
                chdb_query(chdb_sql)
                chdb_s, rows = timed(lambda: chdb_query(chdb_sql), args.runs)
                others.append(chdb_s)
                chdb_cell = f"{chdb_s * 1000:.0f} ms"
                same.append("yes" if got == shape(rows) else "NO")
            print(f"| {name} | {sextant_s * 1000:.0f} ms | {duck_s * 1000:.0f} ms | {chdb_cell} | "
                  f"{min(others) / sextant_s:.2f}x | {', '.join(same)} |", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
