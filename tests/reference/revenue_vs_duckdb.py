#!/usr/bin/env python3
"""QueryRevenueBridge against DuckDB SQL on the same `sextant gen` data: exact equality.

Every bucket and every column (MRR movements, customers, NRR, GRR) for DAY in UTC, WEEK in
America/New_York (a DST change inside the range), MONTH, QUARTER and TOTAL. The SQL follows
SPEC §16 on its own: a person's MRR at a bound is their latest `subscription_changed` event
strictly before it, ordered by (time, event_id). Bucket bounds come from Python's zoneinfo.
Run from anywhere: python3 tests/reference/revenue_vs_duckdb.py (needs duckdb, grpcio-tools).
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


def bounds(granularity, zone):
    """Bucket bounds covering [FROM, TO): the first at the local boundary at or before FROM."""
    tz = ZoneInfo(zone)
    if granularity == "total":
        return [FROM, TO]
    local = FROM.astimezone(tz).replace(tzinfo=None)
    if granularity == "day":
        first = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif granularity == "week":
        first = (local - dt.timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    elif granularity == "month":
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        first = local.replace(month=(local.month - 1) // 3 * 3 + 1, day=1, hour=0, minute=0, second=0, microsecond=0)

    def step(t):
        if granularity == "day":
            return t + dt.timedelta(days=1)
        if granularity == "week":
            return t + dt.timedelta(days=7)
        months = 1 if granularity == "month" else 3
        total = t.year * 12 + t.month - 1 + months
        return t.replace(year=total // 12, month=total % 12 + 1)

    out = [first.replace(tzinfo=tz)]
    while out[-1] < TO:
        out.append(step(out[-1].replace(tzinfo=None)).replace(tzinfo=tz))
    return out


def reference(db, edges):
    """Per bucket: (start, starting, new, reactivation, expansion, contraction, churned, ending,
    customers at start, new, churned, at end, NRR, GRR) from SQL."""
    db.execute("DROP TABLE IF EXISTS bounds")
    db.execute("CREATE TABLE bounds (k INTEGER, b TIMESTAMPTZ)")
    db.executemany("INSERT INTO bounds VALUES (?, ?)", list(enumerate(edges)))
    rows = db.execute("""
        WITH mrr_at AS (
            SELECT p.user_id, b.k,
                   coalesce(arg_max(s.mrr, lpad(CAST(epoch_us(s.ts) AS VARCHAR), 20, '0') || s.event_id), 0) AS v,
                   coalesce(bool_or(s.mrr > 0), false) AS paid
            FROM (SELECT DISTINCT user_id FROM subs) p CROSS JOIN bounds b
            LEFT JOIN subs s ON s.user_id = p.user_id AND s.ts < b.b
            GROUP BY p.user_id, b.k
        ), moves AS (
            SELECT a.k, a.v AS a, e.v AS b, a.paid FROM mrr_at a JOIN mrr_at e ON e.user_id = a.user_id AND e.k = a.k + 1
        ), sums AS (
            SELECT k,
                   round(sum(a), 6) AS starting,
                   round(sum(CASE WHEN a = 0 AND b > 0 AND NOT paid THEN b ELSE 0 END), 6) AS new,
                   round(sum(CASE WHEN a = 0 AND b > 0 AND paid THEN b ELSE 0 END), 6) AS reactivation,
                   round(sum(CASE WHEN a > 0 AND b > a THEN b - a ELSE 0 END), 6) AS expansion,
                   round(sum(CASE WHEN b > 0 AND b < a THEN a - b ELSE 0 END), 6) AS contraction,
                   round(sum(CASE WHEN a > 0 AND b = 0 THEN a ELSE 0 END), 6) AS churned,
                   round(sum(b), 6) AS ending,
                   count(*) FILTER (WHERE a > 0) AS c_start,
                   count(*) FILTER (WHERE a = 0 AND b > 0) AS c_new,
                   count(*) FILTER (WHERE a > 0 AND b = 0) AS c_churned,
                   count(*) FILTER (WHERE b > 0) AS c_end
            FROM moves GROUP BY k
        )
        SELECT b.k, s.starting, s.new, s.reactivation, s.expansion, s.contraction, s.churned, s.ending,
               s.c_start, s.c_new, s.c_churned, s.c_end,
               CASE WHEN s.starting > 0 THEN round((s.starting + s.expansion - s.contraction - s.churned) / s.starting, 9) END,
               CASE WHEN s.starting > 0 THEN round((s.starting - s.contraction - s.churned) / s.starting, 9) END
        FROM bounds b LEFT JOIN sums s ON s.k = b.k WHERE b.k < (SELECT max(k) FROM bounds) ORDER BY b.k""").fetchall()
    out = {}
    for row in rows:
        k = row[0]
        values = [0.0 if v is None else float(v) for v in row[1:8]] + [0 if v is None else int(v) for v in row[8:12]]
        out[edges[k].astimezone(dt.timezone.utc).isoformat()] = tuple(values) + (row[12], row[13])
    return out


def main():
    pb = stubs()
    checks = Checks()
    with Server() as server:
        data = server.generate_and_load(users=3000, seed=7, project="ref")
        analysis = pb["analysis_grpc"].AnalysisServiceStub(grpc.insecure_channel(server.addr))
        a, c = pb["analysis"], pb["common"]
        db = duckdb_of(data)
        db.execute("""
            CREATE TABLE subs AS SELECT event_id, user_id, ts, greatest(mrr, 0) AS mrr FROM events
            WHERE name = 'subscription_changed'""")
        subscribers, events = db.execute("SELECT count(DISTINCT user_id), count(*) FROM subs").fetchone()
        print(f"     {events} subscription events of {subscribers} subscribers")
        if events < 500:
            checks.equal("enough subscription events to compare", events >= 500, True)

        cases = [
            ("day", "UTC", c.GRANULARITY_DAY),
            ("week", "America/New_York", c.GRANULARITY_WEEK),
            ("month", "UTC", c.GRANULARITY_MONTH),
            ("quarter", "Europe/Berlin", c.GRANULARITY_QUARTER),
            ("total", "UTC", c.GRANULARITY_TOTAL),
        ]
        for name, zone, granularity in cases:
            request = a.QueryRevenueBridgeRequest(
                project="ref", subscription=c.EventSelector(event="subscription_changed"), mrr_property="mrr",
                granularity=granularity, timezone=zone)
            request.range.__getattribute__("from").FromDatetime(FROM)
            request.range.to.FromDatetime(TO)
            reply = analysis.QueryRevenueBridge(request)
            got = {}
            for p in reply.periods:
                start = p.start.ToDatetime(tzinfo=dt.timezone.utc).isoformat()
                got[start] = (
                    round(p.starting_mrr, 6), round(p.new_mrr, 6), round(p.reactivation_mrr, 6),
                    round(p.expansion_mrr, 6), round(p.contraction_mrr, 6), round(p.churned_mrr, 6),
                    round(p.ending_mrr, 6), p.starting_customers, p.new_customers, p.churned_customers,
                    p.ending_customers,
                    round(p.net_revenue_retention, 9) if p.HasField("net_revenue_retention") else None,
                    round(p.gross_revenue_retention, 9) if p.HasField("gross_revenue_retention") else None,
                )
                moved = p.starting_mrr + p.new_mrr + p.reactivation_mrr + p.expansion_mrr - p.contraction_mrr - p.churned_mrr
                if moved != p.ending_mrr:
                    checks.equal(f"{name} identity at {start}", moved, p.ending_mrr)
            want = reference(db, bounds(name, zone))
            moving = sum(1 for v in want.values() if any(v[1:6]))
            checks.equal(f"revenue bridge by {name} in {zone} ({len(want)} buckets, {moving} with movements)", got, want)
    checks.finish()


if __name__ == "__main__":
    main()
