#!/usr/bin/env bash
# Issue 14's storage figures in one run (BENCHMARKS.md), on `sextant gen --users USERS`:
# 1. the load with durable acks: events/s, the server's peak RssAnon, bytes on disk per event,
#    the CPU of each side (scripts/bench-ingest.sh);
# 2. funnel, retention and daily uniques against DuckDB and chDB in the same run, answers
#    compared (scripts/bench-query.py --chdb), before anything else writes to the project;
# 3. on the loaded data directory: restart to the port (data consistent) and to the first
#    funnel, RssAnon after restart + queries, Track p99 on one project while another is queried
#    and written, a short query there, and the directory's bytes before and after retention +
#    Compact on a copy (scripts/bench-storage.py).
# Usage: scripts/bench-storage.sh [USERS] [WORKDIR]   (700000 users: 10.55 M events; 2100000:
# 31.66 M). Needs python3 with grpcio, grpcio-tools, duckdb and chdb (pip install).
set -euo pipefail
users=${1:-700000}
work=${2:-/tmp/sextant-bench}
cd "$(dirname "$0")/.."
# SEXTANT_BIN runs another build (e.g. an older commit's, for a before/after).
if [ -z "${SEXTANT_BIN:-}" ]; then
  cargo build --release --quiet
  export SEXTANT_BIN="$PWD/target/release/sextant"
fi
echo "== load"
bash scripts/bench-ingest.sh "$users" "$work"
echo "== queries against DuckDB and chDB"
python3 scripts/bench-query.py --data "$work/data-$users" --db "$work/db" --chdb
echo "== restart, memory, latency under load, retention + Compact"
python3 scripts/bench-storage.py --data "$work/data-$users" --db "$work/db"
