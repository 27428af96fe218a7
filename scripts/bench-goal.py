#!/usr/bin/env python3
"""Goal benchmark (BENCHMARKS.md): GetGoalProgress on the bench project that
scripts/bench-ingest.sh loaded (a COUNT of signups for March, and the same within the
behavioural cohort of repeat buyers), median of three calls after a warm-up. Creates the
metric, cohort and goals when missing. Usage: scripts/bench-goal.py HOST:PORT
"""
import datetime as dt
import importlib
import os
import statistics
import sys
import time

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from sextant_client import stubs  # noqa: E402

addr = sys.argv[1]
pb = stubs()
pb["goal"] = importlib.import_module("sextant.v1.goal_pb2")
pb["goal_grpc"] = importlib.import_module("sextant.v1.goal_pb2_grpc")
ch = grpc.insecure_channel(addr)
m, c, g, co = pb["metric"], pb["common"], pb["goal"], pb["cohort"]
metrics = pb["metric_grpc"].MetricServiceStub(ch)
goals = pb["goal_grpc"].GoalServiceStub(ch)
cohorts = pb["cohort_grpc"].CohortServiceStub(ch)
def ignore(f):
    try: f()
    except grpc.RpcError: pass
ignore(lambda: metrics.CreateMetric(m.CreateMetricRequest(project="bench", metric=m.MetricDefinition(
    key="bench_signups", name="Signups", kind=m.METRIC_KIND_COUNT, selector=c.EventSelector(event="signup")))))
ignore(lambda: cohorts.CreateCohort(co.CreateCohortRequest(project="bench", cohort=co.Cohort(
    id="bench-repeat-buyers", conditions=co.CohortConditionGroup(conditions=[co.CohortCondition(
        behavioural=co.BehaviouralCondition(event=c.EventSelector(event="purchase"), min_count=2))])))))
for gid, cohort in [("bench-march", ""), ("bench-march-buyers", "bench-repeat-buyers")]:
    goal = g.Goal(id=gid, name=gid, metric_key="bench_signups", granularity=c.GRANULARITY_DAY, relative_target=0.2, cohort_id=cohort)
    getattr(goal.period, "from").FromDatetime(dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc))
    goal.period.to.FromDatetime(dt.datetime(2026, 4, 1, tzinfo=dt.timezone.utc))
    ignore(lambda: goals.CreateGoal(g.CreateGoalRequest(project="bench", goal=goal)))
    req = g.GetGoalProgressRequest(project="bench", id=gid)
    req.as_of.FromDatetime(dt.datetime(2026, 3, 20, tzinfo=dt.timezone.utc))
    goals.GetGoalProgress(req, timeout=600)
    times = []
    for _ in range(3):
        t = time.perf_counter(); r = goals.GetGoalProgress(req, timeout=600); times.append(time.perf_counter() - t)
    print(f"{gid}: median {statistics.median(times):.2f} s (runs {', '.join(f'{x:.2f}' for x in times)}); current {r.current:.0f}, baseline {r.baseline:.0f}")
