#!/usr/bin/env python3
"""Experiment readout benchmark (BENCHMARKS.md): GetExperimentResults for the generator's
`checkout_v2` A/B test with 3 metrics, on a data dir already loaded by scripts/bench-ingest.sh.

Starts a release server on that data, creates (once) the metrics purchasers (UNIQUE_USERS of
purchase), revenue (SUM of purchase.revenue) and sessions (COUNT of session_start) and the
backfilled experiment over [2026-01-31, 2026-04-01), then times GetExperimentResults several
times and reports the median, with and without CUPED; then the same for GetHoldoutResults of a
10% holdout over that window on the same metrics. Usage:
  scripts/bench-experiment.py --db /tmp/sextant-bench/db --project bench
The binary is target/release/sextant, or $SEXTANT_BIN; --serve-args adds `serve` flags (e.g. a
ClickHouse database that scripts/bench-ingest.sh loaded).
"""
import argparse
import datetime as dt
import importlib
import os
import statistics
import subprocess
import sys
import time

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from sextant_client import ROOT, stubs  # noqa: E402


def create_once(call, request):
    """Creates a definition, unless an earlier run did."""
    try:
        call(request)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--project", default="bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--serve-args", default="",
                    help="more `sextant serve` flags, e.g. '--storage clickhouse --clickhouse-url URL'")
    args = ap.parse_args()
    pb = stubs()
    e = importlib.import_module("sextant.v1.experiment_pb2")
    e_grpc = importlib.import_module("sextant.v1.experiment_pb2_grpc")
    m, c = pb["metric"], pb["common"]
    binary = os.environ.get("SEXTANT_BIN") or os.path.join(ROOT, "target", "release", "sextant")
    server = subprocess.Popen([binary, "serve", "--addr", "127.0.0.1:0", "--metrics-addr", "off", "--data-dir", args.db,
                               *args.serve_args.split()], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    addr = server.stdout.readline().strip().rsplit(" ", 1)[-1]
    try:
        channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(channel).result(timeout=600)
        metrics = pb["metric_grpc"].MetricServiceStub(channel)
        experiments = e_grpc.ExperimentServiceStub(channel)
        for definition in [
            m.MetricDefinition(key="purchasers", kind=m.METRIC_KIND_UNIQUE_USERS, selector=c.EventSelector(event="purchase")),
            m.MetricDefinition(key="revenue", kind=m.METRIC_KIND_SUM, selector=c.EventSelector(event="purchase"),
                               property="revenue"),
            m.MetricDefinition(key="sessions", kind=m.METRIC_KIND_COUNT, selector=c.EventSelector(event="session_start")),
        ]:
            create_once(metrics.CreateMetric, m.CreateMetricRequest(project=args.project, metric=definition))
        experiment = e.Experiment(
            key="checkout_v2",
            variants=[e.Variant(key="control", weight=0.5), e.Variant(key="treatment", weight=0.5)],
            primary_metric_keys=["purchasers"],
            secondary_metric_keys=["revenue"],
            guardrail_metric_keys=["sessions"],
        )
        experiment.start_time.FromDatetime(dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc))
        experiment.end_time.FromDatetime(dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc))
        create_once(experiments.CreateExperiment, e.CreateExperimentRequest(project=args.project, experiment=experiment))
        def timed(call, request):
            """`call(request)` after a warm-up, `--runs` times: its last reply and a summary of the times."""
            call(request, timeout=600)
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                reply = call(request, timeout=600)
                times.append(time.perf_counter() - start)
            return reply, (f"median {statistics.median(times) * 1000:.0f} ms over {args.runs} runs "
                           f"(min {min(times) * 1000:.0f} ms)")

        for label, stats in [("plain", None), ("cuped", e.StatsConfig(cuped=True))]:
            request = e.GetExperimentResultsRequest(project=args.project, experiment_key="checkout_v2", stats=stats)
            reply, took = timed(experiments.GetExperimentResults, request)
            print(f"{label}: {took}; users {list(reply.variant_users)}, decision {e.Decision.Name(reply.decision)}")
        for reason in reply.reasons:
            print("  ", reason)
        # A holdout of 10% over the same window and metrics: everyone seen there is exposed.
        holdout = e.Holdout(key="bench-holdout", percent=0.1, metric_keys=["purchasers", "revenue", "sessions"])
        holdout.start_time.FromDatetime(dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc))
        holdout.end_time.FromDatetime(dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc))
        create_once(experiments.CreateHoldout, e.CreateHoldoutRequest(project=args.project, holdout=holdout))
        request = e.GetHoldoutResultsRequest(project=args.project, holdout_key="bench-holdout")
        reply, took = timed(experiments.GetHoldoutResults, request)
        lifts = [f"{r.metric_key} {c.relative_effect:+.6f} (p {c.p_value:.4f})" for r in reply.metrics for c in r.comparisons]
        print(f"holdout: {took}; users {list(reply.variant_users)}; {', '.join(lifts)}")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
