#!/usr/bin/env python3
"""QueryFunnel, QueryRetention and QueryCohortTable against DuckDB on the same `sextant gen` data.

The DuckDB queries are written from SPEC §7, independently of Sextant's code:
- funnel signup → onboarding_complete → add_to_cart → purchase, ORDERED, 7-day window from each
  attempt's signup, users entering with a signup in [2026-01-01, 2026-03-01), each user counted
  with their furthest attempt (earliest on ties), per step users and median / mean seconds from
  the previous step, also broken down by user.channel;
- weekly (ISO, UTC) first-time retention of signup → session_start by user.channel, 8 periods,
  bounded and unbounded;
- a monthly cohort table of revenue per user (LTV curve) by user.channel.
Exact equality (floats rounded to 6 decimals). Run: python3 tests/reference/analysis_vs_duckdb.py
"""
import datetime as dt
import os
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sextant_client import Checks, Server, duckdb_of, stubs  # noqa: E402

FROM = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
TO = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
STEPS = ["signup", "onboarding_complete", "add_to_cart", "purchase"]


def set_range(request_range):
    getattr(request_range, "from").FromDatetime(FROM)
    request_range.to.FromDatetime(TO)


FUNNEL_SQL = """
WITH s1 AS (
    SELECT user_id, ts AS t1 FROM events
    WHERE name = 'signup' AND ts >= TIMESTAMPTZ '2026-01-01' AND ts < TIMESTAMPTZ '2026-03-01'),
s2 AS (
    SELECT s1.user_id, s1.t1,
           (SELECT min(e.ts) FROM events e WHERE e.user_id = s1.user_id AND e.name = 'onboarding_complete'
                AND e.ts >= s1.t1 AND e.ts <= s1.t1 + INTERVAL 7 DAY) AS t2
    FROM s1),
s3 AS (
    SELECT s2.*,
           (SELECT min(e.ts) FROM events e WHERE e.user_id = s2.user_id AND e.name = 'add_to_cart'
                AND e.ts >= s2.t2 AND e.ts <= s2.t1 + INTERVAL 7 DAY) AS t3
    FROM s2),
s4 AS (
    SELECT s3.*,
           (SELECT min(e.ts) FROM events e WHERE e.user_id = s3.user_id AND e.name = 'purchase'
                AND e.ts >= s3.t3 AND e.ts <= s3.t1 + INTERVAL 7 DAY) AS t4
    FROM s3),
attempts AS (
    SELECT *, 1 + (t2 IS NOT NULL)::INT + (t3 IS NOT NULL)::INT + (t4 IS NOT NULL)::INT AS reached FROM s4),
best AS (
    SELECT * FROM attempts
    QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY reached DESC, t1) = 1)
SELECT coalesce(u.channel, '$none') AS channel, reached,
       epoch_us(t2) - epoch_us(t1) AS d2, epoch_us(t3) - epoch_us(t2) AS d3, epoch_us(t4) - epoch_us(t3) AS d4
FROM best LEFT JOIN users u USING (user_id)
"""


def funnel_summary(rows):
    """Per step: users, conversions, median and mean seconds from the previous step (durations in µs,
    summed exactly as integers)."""
    steps = []
    for k in range(4):
        reached = [r for r in rows if r[1] >= k + 1]
        durations = sorted(r[1 + k] for r in reached) if k > 0 else []
        n = len(durations)
        median = 0.0
        if n:
            median = durations[n // 2] / 1e6 if n % 2 else (float(durations[n // 2 - 1]) + float(durations[n // 2])) / 2.0 / 1e6
        users = len(reached)
        previous = steps[-1][0] if steps else users
        first = steps[0][0] if steps else users
        steps.append((
            users,
            round(1.0 if k == 0 else (users / previous if previous else 0.0), 6),
            round(users / first if first else 0.0, 6),
            round(median, 6),
            round(sum(durations) / n / 1e6, 6) if n else 0.0,
        ))
    return steps


def main():
    pb = stubs()
    checks = Checks()
    with Server() as server:
        data = server.generate_and_load(users=3000, seed=7, project="ref")
        channel = grpc.insecure_channel(server.addr)
        analysis = pb["analysis_grpc"].AnalysisServiceStub(channel)
        a, c = pb["analysis"], pb["common"]
        db = duckdb_of(data)

        # Funnel, whole and by channel.
        request = a.QueryFunnelRequest(project="ref", steps=[c.EventSelector(event=s) for s in STEPS],
                                       breakdown="user.channel")
        set_range(request.range)
        request.window.FromTimedelta(dt.timedelta(days=7))
        reply = analysis.QueryFunnel(request)

        def steps_of(steps):
            return [(s.users, round(s.conversion_from_previous, 6), round(s.conversion_from_start, 6),
                     round(s.median_seconds_from_previous, 6), round(s.mean_seconds_from_previous, 6)) for s in steps]

        rows = db.execute(FUNNEL_SQL).fetchall()
        checks.equal("4-step funnel, 7-day window", dict(enumerate(steps_of(reply.steps))),
                     dict(enumerate(funnel_summary(rows))))
        got = {b.value: steps_of(b.steps) for b in reply.breakdowns}
        want = {ch: funnel_summary([r for r in rows if r[0] == ch]) for ch in {r[0] for r in rows}}
        checks.equal("4-step funnel by user.channel", got, want)
        order = [b.value for b in reply.breakdowns]
        checks.equal("funnel breakdowns by step-1 users descending", order,
                     sorted(want, key=lambda ch: (-want[ch][0][0], ch)))

        # Weekly first-time retention signup → session_start by channel, bounded and unbounded.
        for unbounded in (False, True):
            request = a.QueryRetentionRequest(project="ref", cohort_event=c.EventSelector(event="signup"),
                                              return_event=c.EventSelector(event="session_start"), first_time=True,
                                              period=c.PERIOD_WEEK, periods=8, breakdown="user.channel",
                                              unbounded=unbounded)
            set_range(request.range)
            reply = analysis.QueryRetention(request)
            got = {(r.start.ToDatetime().date().isoformat(), r.breakdown_value): (r.size, list(r.retained))
                   for r in reply.cohorts}
            comparison = ">=" if unbounded else "="
            rows = db.execute(f"""
                WITH first AS (
                    SELECT user_id, min(ts) AS t0 FROM events WHERE name = 'signup' GROUP BY user_id),
                cohort AS (
                    SELECT f.user_id, f.t0, date_trunc('week', f.t0) AS week, coalesce(u.channel, '$none') AS channel
                    FROM first f LEFT JOIN users u USING (user_id)
                    WHERE f.t0 >= TIMESTAMPTZ '2026-01-01' AND f.t0 < TIMESTAMPTZ '2026-03-01'),
                returns AS (
                    SELECT DISTINCT c.user_id,
                           CAST(date_diff('day', c.week, date_trunc('week', e.ts)) / 7 AS INT) AS k
                    FROM cohort c JOIN events e ON e.user_id = c.user_id AND e.name = 'session_start' AND e.ts >= c.t0),
                periods AS (SELECT range AS k FROM range(8))
                SELECT CAST(c.week AS DATE), c.channel, p.k, count(DISTINCT c.user_id) AS size,
                       count(DISTINCT r.user_id) AS retained
                FROM cohort c CROSS JOIN periods p
                LEFT JOIN returns r ON r.user_id = c.user_id AND r.k {comparison} p.k
                GROUP BY ALL ORDER BY ALL""").fetchall()
            want = {}
            for week, ch, k, size, retained in rows:
                entry = want.setdefault((week.isoformat(), ch), (size, [0] * 8))
                entry[1][k] = retained
            label = "unbounded" if unbounded else "bounded"
            checks.equal(f"weekly first-time retention signup → session_start by channel ({label})", got, want)
            total = {}
            for (_, _), (size, retained) in want.items():
                for k in range(8):
                    s, r = total.get(k, (0, 0))
                    total[k] = (s + size, r + retained[k])
            checks.equal(f"retention average shares ({label})",
                         [round(x, 6) for x in reply.average_shares],
                         [round(r / s, 6) if s else 0.0 for s, r in (total[k] for k in range(8))])

        # Monthly LTV curve (cumulative revenue per user) by channel, rows by first-event month.
        request = a.QueryCohortTableRequest(project="ref", period=c.PERIOD_MONTH, periods=3, breakdown="user.channel",
                                            value=a.COHORT_TABLE_VALUE_CUMULATIVE_REVENUE_PER_USER,
                                            revenue=c.EventSelector(event="purchase"), revenue_property="revenue")
        set_range(request.range)
        reply = analysis.QueryCohortTable(request)
        got = {(r.start.ToDatetime().date().isoformat(), r.breakdown_value): (r.users, [round(v, 6) for v in r.values])
               for r in reply.rows}
        rows = db.execute("""
            WITH first AS (SELECT user_id, min(ts) AS t0 FROM events GROUP BY user_id),
            cohort AS (
                SELECT f.user_id, f.t0, date_trunc('month', f.t0) AS month, coalesce(u.channel, '$none') AS channel
                FROM first f LEFT JOIN users u USING (user_id)
                WHERE f.t0 >= TIMESTAMPTZ '2026-01-01' AND f.t0 < TIMESTAMPTZ '2026-03-01'),
            revenue AS (
                SELECT c.user_id, date_diff('month', c.month, date_trunc('month', e.ts)) AS k, sum(e.revenue) AS r
                FROM cohort c JOIN events e ON e.user_id = c.user_id AND e.name = 'purchase' AND e.ts >= c.t0
                     AND e.revenue IS NOT NULL
                GROUP BY ALL)
            SELECT CAST(c.month AS DATE), c.channel, count(DISTINCT c.user_id),
                   [coalesce(sum(r.r) FILTER (WHERE r.k <= 0), 0), coalesce(sum(r.r) FILTER (WHERE r.k <= 1), 0),
                    coalesce(sum(r.r) FILTER (WHERE r.k <= 2), 0)]
            FROM cohort c LEFT JOIN revenue r USING (user_id)
            GROUP BY ALL""").fetchall()
        want = {(m.isoformat(), ch): (n, [round(x / n, 6) for x in sums]) for m, ch, n, sums in rows}
        checks.equal("monthly cumulative revenue per user by channel", got, want)
    checks.finish()


if __name__ == "__main__":
    main()
