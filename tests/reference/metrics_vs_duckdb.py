#!/usr/bin/env python3
"""QueryMetric against DuckDB on the same `sextant gen` data: exact equality.

Daily unique users of session_start, daily revenue, weekly signups by user.channel (UTC), and
7-day rolling unique users in Europe/Berlin across the 2026-03-29 DST change (local days).
Run from anywhere: python3 tests/reference/metrics_vs_duckdb.py (needs duckdb, grpcio-tools).
"""
import datetime as dt
import os
import sys
from zoneinfo import ZoneInfo

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sextant_client import Checks, Server, duckdb_of, stubs  # noqa: E402

FROM = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
TO = dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc)


def main():
    pb = stubs()
    checks = Checks()
    with Server() as server:
        data = server.generate_and_load(users=3000, seed=7, project="ref")
        channel = grpc.insecure_channel(server.addr)
        metrics = pb["metric_grpc"].MetricServiceStub(channel)
        m, c = pb["metric"], pb["common"]

        def query(definition, granularity, breakdown=""):
            request = m.QueryMetricRequest(project="ref", definition=definition, granularity=granularity, breakdown=breakdown)
            request.range.__getattribute__("from").FromDatetime(FROM)
            request.range.to.FromDatetime(TO)
            reply = metrics.QueryMetric(request)
            return {
                (s.breakdown_value, p.start.ToDatetime().date().isoformat()): round(p.value, 6)
                for s in reply.series
                for p in s.points
            }

        def selector(event):
            return c.EventSelector(event=event)

        db = duckdb_of(data)
        days = [r[0].isoformat() for r in db.execute(
            "SELECT CAST(d AS DATE) FROM range(TIMESTAMP '2026-01-01', TIMESTAMP '2026-04-01', INTERVAL 1 DAY) t(d)").fetchall()]

        got = query(m.MetricDefinition(key="dau", kind=m.METRIC_KIND_UNIQUE_USERS, selector=selector("session_start")),
                    c.GRANULARITY_DAY)
        rows = dict(db.execute("""
            SELECT CAST(date_trunc('day', ts) AS DATE), COUNT(DISTINCT user_id) FROM events
            WHERE name = 'session_start' AND ts >= '2026-01-01' AND ts < '2026-04-01' GROUP BY 1""").fetchall())
        want = {("", d): float(rows.get(dt.date.fromisoformat(d), 0)) for d in days}
        checks.equal("daily unique users of session_start", got, want)

        got = query(m.MetricDefinition(key="revenue", kind=m.METRIC_KIND_SUM, selector=selector("purchase"), property="revenue"),
                    c.GRANULARITY_DAY)
        rows = dict(db.execute("""
            SELECT CAST(date_trunc('day', ts) AS DATE), round(SUM(revenue), 6) FROM events
            WHERE name = 'purchase' AND revenue IS NOT NULL AND ts >= '2026-01-01' AND ts < '2026-04-01'
            GROUP BY 1""").fetchall())
        want = {("", d): float(rows.get(dt.date.fromisoformat(d), 0.0)) for d in days}
        checks.equal("daily revenue sum of purchase", got, want)

        got = query(m.MetricDefinition(key="signups", kind=m.METRIC_KIND_COUNT, selector=selector("signup")),
                    c.GRANULARITY_WEEK, breakdown="user.channel")
        rows = db.execute("""
            SELECT coalesce(u.channel, '$none'), CAST(date_trunc('week', e.ts) AS DATE), COUNT(*) FROM events e
            LEFT JOIN users u USING (user_id)
            WHERE e.name = 'signup' AND e.ts >= '2026-01-01' AND e.ts < '2026-04-01' GROUP BY 1, 2""").fetchall()
        weeks = sorted({w for _, w, _ in rows})
        channels = sorted({ch for ch, _, _ in rows})
        want = {(ch, w.isoformat()): 0.0 for ch in channels for w in weeks}
        want.update({(ch, w.isoformat()): float(n) for ch, w, n in rows})
        checks.equal("weekly signups by user.channel", got, want)

        # Rolling 7-day unique users by Berlin day: day D covers the local dates D - 6 ..= D (a
        # window holding the spring DST change is 167 hours long, not 168).
        berlin = ZoneInfo("Europe/Berlin")
        wau = m.MetricDefinition(key="wau", kind=m.METRIC_KIND_UNIQUE_USERS, selector=selector("session_start"))
        wau.rolling_window.seconds = 7 * 86_400
        request = m.QueryMetricRequest(project="ref", definition=wau, granularity=c.GRANULARITY_DAY,
                                       timezone="Europe/Berlin")
        request.range.__getattribute__("from").FromDatetime(dt.datetime(2026, 3, 24, tzinfo=berlin))
        request.range.to.FromDatetime(dt.datetime(2026, 4, 5, tzinfo=berlin))
        reply = metrics.QueryMetric(request)
        got = {dt.datetime.fromtimestamp(p.start.seconds, berlin).date().isoformat(): p.value
               for p in reply.series[0].points}
        rows = db.execute("""
            WITH local AS (
                SELECT user_id, CAST(timezone('Europe/Berlin', ts) AS DATE) AS d FROM events
                WHERE name = 'session_start')
            SELECT CAST(g.day AS DATE), COUNT(DISTINCT l.user_id)
            FROM range(TIMESTAMP '2026-03-24', TIMESTAMP '2026-04-05', INTERVAL 1 DAY) g(day)
            LEFT JOIN local l ON l.d > CAST(g.day AS DATE) - 7 AND l.d <= CAST(g.day AS DATE)
            GROUP BY 1""").fetchall()
        want = {d.isoformat(): float(n) for d, n in rows}
        checks.equal("7-day rolling unique users by Europe/Berlin day across DST", got, want)
    checks.finish()


if __name__ == "__main__":
    main()
