#!/usr/bin/env python3
"""Times the dashboard's HTML (GET /api/dashboard: every tile's query and the rendering) on a
running server, over plain HTTP/1.1 like a browser's fetch. Prints the median and the range
of --runs timed requests after one warm-up request.

Usage: scripts/bench-dashboard.py --addr 127.0.0.1:50051 --project bench [--query 'from=…&to=…'] [--runs 7]
"""
import argparse
import statistics
import time
import urllib.request


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--query", default="", help="extra query string, e.g. from=2026-03-02&to=2026-04-01")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--key", default="", help="API key (sent as authorization: Bearer)")
    args = parser.parse_args()
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
        elapsed, size = fetch()
        times.append(elapsed * 1000)
    print(f"{url}\n{args.runs} runs, {size} bytes of HTML: median {statistics.median(times):.0f} ms, "
          f"min {min(times):.0f} ms, max {max(times):.0f} ms")


if __name__ == "__main__":
    main()
