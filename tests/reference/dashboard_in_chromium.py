#!/usr/bin/env python3
"""The dashboard in a real browser (headless Chromium), checked against the gRPC API.

Starts `sextant serve --demo` with a small generated data set on a free port, loads the page
with `chromium --headless --dump-dom` and checks that the body is ready, every tile of SPEC
§17 is there without an error, and each headline `data-value` equals QueryMetric
GRANULARITY_TOTAL over the page's range; for the default range (the 30 days ending with the
latest event's day) and a 7-day one. Then, with auth on, that the page without a key shows
only the key prompt. Run by scripts/test-dashboard.sh (which installs chromium).
"""
import atexit
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sextant_client import Checks, binary, stubs  # noqa: E402

TILES = ["north-star", "inputs", "goals", "funnel", "retention", "experiments", "anomalies", "attribution"]
USERS = "300"


class Page(HTMLParser):
    """What the checks read from the dumped DOM."""

    def __init__(self):
        super().__init__()
        self.ready = None
        self.tiles = {}
        self.values = {}
        self.inputs = {}
        self.prompt_hidden = None
        self.reason = ""
        self._in_reason = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.ready = a.get("data-ready")
        if "data-tile" in a:
            self.tiles[a["data-tile"]] = a.get("data-error")
        if "data-metric-key" in a:
            self.values[a["data-metric-key"]] = a.get("data-value")
        if tag == "input" and a.get("name") in ("from", "to"):
            self.inputs[a["name"]] = a.get("value")
        if a.get("id") == "key-prompt":
            self.prompt_hidden = "hidden" in a
        self._in_reason = a.get("id") == "key-reason"

    def handle_data(self, data):
        if self._in_reason:
            self.reason += data

    def handle_endtag(self, tag):
        self._in_reason = False


def start(env_extra):
    """A demo server on a free port; returns (process, address) once the demo is seeded."""
    data = tempfile.mkdtemp(prefix="sextant-dash-")
    atexit.register(shutil.rmtree, data, ignore_errors=True)
    env = dict(os.environ, **env_extra)
    env.pop("SEXTANT_API_KEY", None)
    proc = subprocess.Popen(
        [binary(), "serve", "--demo", "--demo-users", USERS, "--addr", "127.0.0.1:0", "--metrics-addr", "off",
         "--data-dir", os.path.join(data, "db")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    addr = None
    for line in proc.stdout:
        if line.startswith("sextant listening on "):
            addr = line.split()[-1]
        if line.startswith("demo project ready"):
            return proc, addr
    proc.kill()
    sys.exit("the demo server did not start")


def dump(url):
    profile = tempfile.mkdtemp(prefix="sextant-chromium-")
    try:
        out = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--virtual-time-budget=15000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    page = Page()
    page.feed(out)
    return page


def midnight(day):
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tzinfo=dt.timezone.utc)


def grpc_totals(addr, keys, day_from, day_to):
    """QueryMetric GRANULARITY_TOTAL of each key over [from, to): the raw number as the page
    writes it (shortest round-trip form), or "" when there is no value."""
    s = stubs()
    m, common = s["metric"], s["common"]
    client = s["metric_grpc"].MetricServiceStub(grpc.insecure_channel(addr))
    totals = {}
    for key in keys:
        time_range = common.TimeRange()
        time_range.__getattribute__("from").FromDatetime(midnight(day_from))
        time_range.to.FromDatetime(midnight(day_to))
        reply = client.QueryMetric(m.QueryMetricRequest(project="demo", metric_key=key, range=time_range,
                                                        granularity=common.GRANULARITY_TOTAL))
        point = reply.series[0].points[0]
        totals[key] = repr(point.value) if point.has_value else ""
    return totals


def as_number(text):
    return float(text) if text else None


def check_page(checks, addr, url, want_range):
    page = dump(url)
    checks.equal(f"{url}: body data-ready", {"ready": page.ready}, {"ready": "true"})
    checks.equal(f"{url}: every tile, none failed", page.tiles, {t: None for t in TILES})
    checks.equal(f"{url}: range", page.inputs, want_range)
    if not page.values:
        checks.equal(f"{url}: headline values", {"count": 0}, {"count": "at least 1"})
        return
    totals = grpc_totals(addr, sorted(page.values), want_range["from"], want_range["to"])
    checks.equal(f"{url}: data-value = QueryMetric TOTAL ({', '.join(sorted(page.values))})",
                 {k: as_number(v) for k, v in page.values.items()}, {k: as_number(v) for k, v in totals.items()})


def main():
    if not shutil.which("chromium"):
        sys.exit("chromium is missing: run scripts/test-dashboard.sh, which installs it")
    checks = Checks()
    proc, addr = start({"SEXTANT_BOOTSTRAP_KEY": ""})
    try:
        base = f"http://{addr}/?project=demo"
        # The generated data covers 2026-01-01 to 2026-03-31: the default range ends with March.
        check_page(checks, addr, base, {"from": "2026-03-02", "to": "2026-04-01"})
        check_page(checks, addr, base + "&from=2026-02-01&to=2026-02-08", {"from": "2026-02-01", "to": "2026-02-08"})
        check_page(checks, addr, base + "&from=2026-01-05&to=2026-02-04&funnel=signup,onboarding_complete,add_to_cart,purchase",
                   {"from": "2026-01-05", "to": "2026-02-04"})
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    proc, addr = start({"SEXTANT_BOOTSTRAP_KEY": "dashboard-check-bootstrap-key"})
    try:
        page = dump(f"http://{addr}/?project=demo")
        checks.equal("auth on, no key: only the prompt",
                     {"prompt shown": page.prompt_hidden is False, "tiles": sorted(page.tiles),
                      "values": sorted(page.values), "reason names the header": "authorization" in page.reason},
                     {"prompt shown": True, "tiles": [], "values": [], "reason names the header": True})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    checks.finish()


if __name__ == "__main__":
    main()
