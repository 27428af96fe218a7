#!/usr/bin/env python3
"""ApplyFramework's metrics against DuckDB SQL on the same `sextant gen` data: exact equality.

Applies NORTH_STAR_AARRR (signup, onboarding_complete, session_start, purchase/revenue) and
SAAS_REVENUE (subscription_changed/mrr), then compares, bucket by bucket in UTC:
activation_rate (weekly: share of the week's signups with onboarding_complete within 7 days),
retention_d7 (weekly: share of the week's first signups with a session_start on calendar day 7),
arpu (weekly revenue / weekly distinct session users) and mrr (daily: each subscriber's latest
mrr before the day's end, summed).
Run from anywhere: python3 tests/reference/frameworks_vs_duckdb.py (needs duckdb, grpcio-tools).
"""
import datetime as dt
import os
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sextant_client import Checks, Server, duckdb_of, stubs  # noqa: E402

FROM = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)  # a Monday
TO = dt.datetime(2026, 3, 30, tzinfo=dt.timezone.utc)  # 12 whole weeks


def main():
    pb = stubs()
    checks = Checks()
    with Server() as server:
        data = server.generate_and_load(users=3000, seed=7, project="ref")
        channel = grpc.insecure_channel(server.addr)
        metrics = pb["metric_grpc"].MetricServiceStub(channel)
        m, c = pb["metric"], pb["common"]

        applied = metrics.ApplyFramework(m.ApplyFrameworkRequest(project="ref", framework=m.FRAMEWORK_NORTH_STAR_AARRR,
            mapping=m.FrameworkMapping(signup_event="signup", activation_event="onboarding_complete",
                                       core_event="session_start", purchase_event="purchase",
                                       revenue_property="revenue")))
        checks.equal("AARRR metrics created", sorted(applied.created), sorted([
            "north_star", "acquisition_signups", "activation_rate", "retention_d7", "revenue", "paying_users",
            "active_users", "arpu"]))
        applied = metrics.ApplyFramework(m.ApplyFrameworkRequest(project="ref", framework=m.FRAMEWORK_SAAS_REVENUE,
            mapping=m.FrameworkMapping(subscription_event="subscription_changed", mrr_property="mrr")))
        checks.equal("SaaS metrics skipped", list(applied.skipped), [])

        def query(key, granularity):
            request = m.QueryMetricRequest(project="ref", metric_key=key, granularity=granularity)
            request.range.__getattribute__("from").FromDatetime(FROM)
            request.range.to.FromDatetime(TO)
            reply = metrics.QueryMetric(request)
            return {p.start.ToDatetime().date().isoformat(): (round(p.value, 9) if p.has_value else None)
                    for p in reply.series[0].points}

        db = duckdb_of(data)
        weeks = [r[0].isoformat() for r in db.execute(
            f"SELECT CAST(d AS DATE) FROM range(TIMESTAMP '{FROM.date()}', TIMESTAMP '{TO.date()}', INTERVAL 7 DAY) t(d)"
        ).fetchall()]
        days = [r[0].isoformat() for r in db.execute(
            f"SELECT CAST(d AS DATE) FROM range(TIMESTAMP '{FROM.date()}', TIMESTAMP '{TO.date()}', INTERVAL 1 DAY) t(d)"
        ).fetchall()]

        def by_bucket(rows, buckets, empty):
            found = {k.isoformat(): (None if v is None else round(float(v), 9)) for k, v in rows}
            return {b: found.get(b, empty) for b in buckets}

        # Activation: users with a signup in the week; converted when onboarding_complete follows
        # one of those signups within 7 days (inclusive), at or after it.
        rows = db.execute(f"""
            WITH a AS (SELECT user_id, ts, CAST(date_trunc('week', ts) AS DATE) AS week FROM events
                       WHERE name = 'signup' AND ts >= '{FROM}' AND ts < '{TO}'),
                 per_user AS (
                    SELECT a.week, a.user_id, bool_or(EXISTS (
                        SELECT 1 FROM events b WHERE b.name = 'onboarding_complete' AND b.user_id = a.user_id
                          AND b.ts >= a.ts AND b.ts <= a.ts + INTERVAL 7 DAY)) AS converted
                    FROM a GROUP BY 1, 2)
            SELECT week, avg(CASE WHEN converted THEN 1.0 ELSE 0.0 END) FROM per_user GROUP BY 1""").fetchall()
        checks.equal("activation_rate by week", query("activation_rate", c.GRANULARITY_WEEK), by_bucket(rows, weeks, None))

        # D7 retention: users whose first signup falls in the week; retained when they have a
        # session_start on the 7th calendar day after the signup's day.
        rows = db.execute(f"""
            WITH first AS (SELECT user_id, min(ts) AS t0 FROM events WHERE name = 'signup' GROUP BY 1),
                 cohort AS (SELECT user_id, t0, CAST(date_trunc('week', t0) AS DATE) AS week,
                                   date_trunc('day', t0) + INTERVAL 7 DAY AS d7 FROM first
                            WHERE t0 >= '{FROM}' AND t0 < '{TO}')
            SELECT week, avg(CASE WHEN EXISTS (SELECT 1 FROM events e WHERE e.name = 'session_start'
                                    AND e.user_id = cohort.user_id AND e.ts >= d7 AND e.ts < d7 + INTERVAL 1 DAY)
                              THEN 1.0 ELSE 0.0 END)
            FROM cohort GROUP BY 1""").fetchall()
        checks.equal("retention_d7 by week", query("retention_d7", c.GRANULARITY_WEEK), by_bucket(rows, weeks, None))

        # ARPU: the week's purchase revenue over the week's distinct session_start users.
        rows = db.execute(f"""
            WITH revenue AS (SELECT CAST(date_trunc('week', ts) AS DATE) AS week, sum(revenue) AS r FROM events
                             WHERE name = 'purchase' AND revenue IS NOT NULL AND ts >= '{FROM}' AND ts < '{TO}' GROUP BY 1),
                 active AS (SELECT CAST(date_trunc('week', ts) AS DATE) AS week, count(DISTINCT user_id) AS u FROM events
                            WHERE name = 'session_start' AND ts >= '{FROM}' AND ts < '{TO}' GROUP BY 1)
            SELECT active.week, coalesce(revenue.r, 0) / active.u FROM active LEFT JOIN revenue USING (week)""").fetchall()
        checks.equal("arpu by week", query("arpu", c.GRANULARITY_WEEK), by_bucket(rows, weeks, None))

        # MRR: per day's end, each subscriber's latest mrr by (time, event_id), summed.
        rows = db.execute(f"""
            WITH ends AS (SELECT CAST(d AS DATE) AS day, d + INTERVAL 1 DAY AS e
                          FROM range(TIMESTAMP '{FROM.date()}', TIMESTAMP '{TO.date()}', INTERVAL 1 DAY) t(d)),
                 latest AS (SELECT ends.day, s.user_id,
                                   arg_max(s.mrr, lpad(CAST(epoch_us(s.ts) AS VARCHAR), 20, '0') || s.event_id) AS mrr
                            FROM ends JOIN events s ON s.name = 'subscription_changed' AND s.ts < ends.e
                            GROUP BY 1, 2)
            SELECT day, round(sum(mrr), 6) FROM latest GROUP BY 1""").fetchall()
        checks.equal("mrr by day", query("mrr", c.GRANULARITY_DAY), by_bucket(rows, days, 0.0))
    checks.finish()


if __name__ == "__main__":
    main()
