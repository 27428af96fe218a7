#!/usr/bin/env python3
"""Times the dashboard's HTML (GET /api/dashboard: every tile's query and the rendering) on a
running server, over plain HTTP/1.1 like a browser's fetch. Prints the median and the range
of --runs timed requests after one warm-up request.

With --after-write, each timed request is the first after a write: one `session_start` event
(a new event id, inside the default range) is tracked over gRPC just before it, so nothing
cached from earlier pages that depends on the data can answer (the stopped experiment's
readout, for one, is computed again). Needs the Python gRPC tools (tests/reference).

Usage: scripts/bench-dashboard.py --addr 127.0.0.1:50051 --project bench [--query 'from=…&to=…'] [--runs 7]
       [--after-write --event-time 2026-03-31T12:00:00Z]
"""
import argparse
import datetime as dt
import os
import statistics
import sys
import time
import urllib.request
import uuid


def tracker(addr, project, key, event_time):
    """A function that tracks one new `session_start` event (returns when it is stored)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
    import grpc
    from sextant_client import stubs

    pb = stubs()
    import importlib

    ingest_grpc = importlib.import_module("sextant.v1.ingest_pb2_grpc")
    channel = grpc.insecure_channel(addr)
    ingest = ingest_grpc.IngestServiceStub(channel)
    metadata = [("authorization", f"Bearer {key}")] if key else []
    at = dt.datetime.fromisoformat(event_time.replace("Z", "+00:00"))

    def track():
        event = pb["common"].Event(event_id=f"bench-{uuid.uuid4()}", name="session_start", user_id="bench-writer")
        event.timestamp.FromDatetime(at)
        reply = ingest.Track(pb["ingest"].TrackRequest(project=project, events=[event]), metadata=metadata)
        if reply.accepted != 1:
            raise SystemExit(f"the write was not stored: {reply}")

    return track


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--query", default="", help="extra query string, e.g. from=2026-03-02&to=2026-04-01")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--key", default="", help="API key (sent as authorization: Bearer)")
    parser.add_argument("--after-write", action="store_true", help="time each page right after a write")
    parser.add_argument("--event-time", default="2026-03-31T12:00:00Z", help="time of the written events")
    args = parser.parse_args()
    write = tracker(args.addr, args.project, args.key, args.event_time) if args.after_write else None
    url = f"http://{args.addr}/api/dashboard?project={args.project}" + (f"&{args.query}" if args.query else "")
    headers = {"authorization": f"Bearer {args.key}"} if args.key else {}

    def fetch():
        started = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=300) as response:
            body = response.read()
        elapsed = time.perf_counter() - started
        if b"data-error" in body:
            raise SystemExit(f"a tile failed: {body[:2000]!r}")
        return elapsed, len(body)

    fetch()
    times = []
    size = 0
    for _ in range(args.runs):
        if write:
            write()
        elapsed, size = fetch()
        times.append(elapsed * 1000)
    kind = "first page after a write" if write else "repeated page"
    print(f"{url} ({kind})\n{args.runs} runs, {size} bytes of HTML: median {statistics.median(times):.0f} ms, "
          f"min {min(times):.0f} ms, max {max(times):.0f} ms")


if __name__ == "__main__":
    main()
