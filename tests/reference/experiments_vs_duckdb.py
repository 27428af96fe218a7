#!/usr/bin/env python3
"""GetExperimentResults against an independent computation on the same `sextant gen` data.

The generator's A/B test `checkout_v2` (control / treatment, 50/50, exposures from day 30 of
the 90 days from 2026-01-01) is created as a backfilled experiment with four metrics:
purchasers (UNIQUE_USERS of purchase: a proportion), revenue (SUM of purchase.revenue per
user), sessions (COUNT of session_start per user) and revenue per session (RATIO). DuckDB
computes each exposed user's values (first exposure in the window, events at or after it,
users who saw both variants left out); numpy and scipy compute means, Welch's t-test with
Satterthwaite degrees of freedom, the delta-method relative effect, confidence intervals and
Holm-adjusted p-values. Everything must agree to 4 significant digits (users exactly).
Run from anywhere: python3 tests/reference/experiments_vs_duckdb.py (needs duckdb, scipy,
grpcio-tools).
"""
import datetime as dt
import importlib
import math
import os
import sys

import grpc
import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sextant_client import Checks, Server, duckdb_of, stubs  # noqa: E402

START = dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc)
END = dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc)
ALPHA = 0.05


class Close(Checks):
    """Checks that also compare numbers to 4 significant digits."""

    def close(self, what, got, want):
        if math.isclose(got, want, rel_tol=5e-4, abs_tol=1e-12):
            self.passed += 1
            print(f"ok   {what}: {got:.6g}")
        else:
            self.failed += 1
            print(f"FAIL {what}: sextant {got!r} != reference {want!r}")


def welch(control, treatment):
    """Means and per-user variances in, (absolute, relative) estimates out, each as
    (effect, ci_lower, ci_upper, p_value), with Welch–Satterthwaite degrees of freedom."""
    (na, ma, va), (nb, mb, vb) = control, treatment
    dof = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    q = stats.t.ppf(1 - ALPHA / 2, dof)
    out = []
    for effect, variance in [
        (mb - ma, va / na + vb / nb),
        ((mb - ma) / abs(ma), vb / (nb * ma**2) + va * mb**2 / (na * ma**4)),
    ]:
        se = math.sqrt(variance)
        p = 2 * stats.t.sf(abs(effect / se), dof)
        out.append((effect, effect - q * se, effect + q * se, p))
    # The absolute p-value once more from scipy's own Welch test on the summary statistics.
    scipy_p = stats.ttest_ind_from_stats(mb, math.sqrt(vb), nb, ma, math.sqrt(va), na, equal_var=False).pvalue
    assert math.isclose(scipy_p, out[0][3], rel_tol=1e-9), (scipy_p, out[0][3])
    return out


def holm(p_values):
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def main():
    pb = stubs()
    e = importlib.import_module("sextant.v1.experiment_pb2")
    e_grpc = importlib.import_module("sextant.v1.experiment_pb2_grpc")
    m, c = pb["metric"], pb["common"]
    checks = Close()
    with Server() as server:
        data = server.generate_and_load(users=20000, seed=11, project="ref")
        channel = grpc.insecure_channel(server.addr)
        metrics = pb["metric_grpc"].MetricServiceStub(channel)
        experiments = e_grpc.ExperimentServiceStub(channel)
        for definition in [
            m.MetricDefinition(key="purchasers", kind=m.METRIC_KIND_UNIQUE_USERS, selector=c.EventSelector(event="purchase")),
            m.MetricDefinition(key="revenue", kind=m.METRIC_KIND_SUM, selector=c.EventSelector(event="purchase"),
                               property="revenue"),
            m.MetricDefinition(key="sessions", kind=m.METRIC_KIND_COUNT, selector=c.EventSelector(event="session_start")),
            m.MetricDefinition(key="revenue_per_session", kind=m.METRIC_KIND_RATIO, numerator_key="revenue",
                               denominator_key="sessions"),
        ]:
            metrics.CreateMetric(m.CreateMetricRequest(project="ref", metric=definition))
        experiment = e.Experiment(
            key="checkout_v2",
            variants=[e.Variant(key="control", weight=0.5), e.Variant(key="treatment", weight=0.5)],
            primary_metric_keys=["purchasers"],
            secondary_metric_keys=["revenue", "revenue_per_session"],
            guardrail_metric_keys=["sessions"],
            stats=e.StatsConfig(correction=e.CORRECTION_HOLM),
        )
        experiment.start_time.FromDatetime(START)
        experiment.end_time.FromDatetime(END)
        experiments.CreateExperiment(e.CreateExperimentRequest(project="ref", experiment=experiment))
        reply = experiments.GetExperimentResults(e.GetExperimentResultsRequest(project="ref", experiment_key="checkout_v2"))

        db = duckdb_of(data)
        window = f"TIMESTAMPTZ '{START.isoformat()}' AND e.ts < TIMESTAMPTZ '{END.isoformat()}'"
        db.execute(f"""
            CREATE TABLE exposed AS
            SELECT user_id, min(ts) AS first_exposure, min(variant) AS variant, count(DISTINCT variant) AS variants
            FROM events e
            WHERE name = '$exposure' AND experiment = 'checkout_v2' AND variant IN ('control', 'treatment')
              AND e.ts >= {window}
            GROUP BY user_id""")
        excluded = db.execute("SELECT count(*) FROM exposed WHERE variants > 1").fetchone()[0]
        rows = db.execute(f"""
            SELECT x.variant,
                   CAST(count(e.name) FILTER (WHERE e.name = 'purchase') > 0 AS DOUBLE),
                   CAST(coalesce(sum(e.revenue) FILTER (WHERE e.name = 'purchase'), 0) AS DOUBLE),
                   CAST(count(e.name) FILTER (WHERE e.name = 'session_start') AS DOUBLE)
            FROM exposed x
            LEFT JOIN events e ON e.user_id = x.user_id AND e.ts >= x.first_exposure
                                AND e.ts < TIMESTAMPTZ '{END.isoformat()}'
            WHERE x.variants = 1
            GROUP BY x.user_id, x.variant""").fetchall()
        values = {}
        for variant, purchased, revenue, sessions in rows:
            values.setdefault(variant, []).append((purchased, revenue, sessions))
        arrays = {v: np.array(values[v], dtype=float) for v in ("control", "treatment")}

        checks.equal("excluded users (exposed to both variants)", {"excluded": reply.excluded_users},
                     {"excluded": excluded})
        checks.equal("exposed users per variant", list(reply.variant_users),
                     [len(arrays["control"]), len(arrays["treatment"])])
        srm = stats.chisquare([len(arrays["control"]), len(arrays["treatment"])]).pvalue
        checks.close("srm p-value", reply.srm_p_value, srm)

        def moments(metric, variant):
            a = arrays[variant]
            if metric == "purchasers":
                p = a[:, 0].mean()
                return len(a), p, p * (1 - p)
            if metric == "revenue_per_session":
                x, y = a[:, 1], a[:, 2]
                ratio = x.sum() / y.sum()
                # Delta method: the variance of the linearised values (x − R y) / ȳ.
                return len(a), ratio, np.var((x - ratio * y) / y.mean(), ddof=1)
            column = a[:, 1] if metric == "revenue" else a[:, 2]
            return len(a), column.mean(), np.var(column, ddof=1)

        family_raw, family_reported = [], []
        for result in reply.metrics:
            key = result.metric_key
            control, treatment = moments(key, "control"), moments(key, "treatment")
            for variant, (n, mean, variance) in zip(result.variants, [control, treatment]):
                checks.equal(f"{key} {variant.variant} users", {"users": variant.users}, {"users": n})
                checks.close(f"{key} {variant.variant} mean", variant.mean, mean)
                half = stats.norm.ppf(1 - ALPHA / 2) * math.sqrt(variance / n)
                checks.close(f"{key} {variant.variant} ci_lower", variant.ci_lower, mean - half)
                checks.close(f"{key} {variant.variant} ci_upper", variant.ci_upper, mean + half)
            absolute, relative = welch(control, treatment)
            comparison = result.comparisons[0]
            for name, got, want in [
                ("relative effect", comparison.effect, relative[0]),
                ("relative ci_lower", comparison.ci_lower, relative[1]),
                ("relative ci_upper", comparison.ci_upper, relative[2]),
                ("relative p-value", comparison.p_value, relative[3]),
                ("absolute effect", comparison.absolute_effect, absolute[0]),
                ("absolute ci_lower", comparison.absolute_ci_lower, absolute[1]),
                ("absolute ci_upper", comparison.absolute_ci_upper, absolute[2]),
            ]:
                checks.close(f"{key} {name}", got, want)
            if result.role != e.EXPERIMENT_METRIC_ROLE_GUARDRAIL:
                family_raw.append(relative[3])
                family_reported.append((key, comparison.adjusted_p_value))
            else:
                checks.close(f"{key} adjusted p-value (guardrail: not corrected)", comparison.adjusted_p_value,
                             comparison.p_value)
        for (key, got), want in zip(family_reported, holm(family_raw)):
            checks.close(f"{key} Holm-adjusted p-value", got, want)
        print("decision:", e.Decision.Name(reply.decision))
        for reason in reply.reasons:
            print("  ", reason)
    checks.finish()


if __name__ == "__main__":
    main()
