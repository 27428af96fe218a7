#!/usr/bin/env bash
# The test command: Rust unit and end-to-end tests (the ClickHouse backend's against a local
# two-shard cluster), then the cross-checks against DuckDB and the forecasts against
# statsmodels on generated data and the ClickHouse backend's SQL on chDB (installing their
# Python dependencies first),
# then the client examples in Python, Node and Go against a fresh server (scripts/test-clients.sh
# installs their tools), and the dashboard in headless Chromium (scripts/test-dashboard.sh
# installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test-deps.sh
# The ClickHouse backend's tests run against a local two-shard cluster (clickhouse-server is
# installed with apt when missing), stopped and removed on exit.
clickhouse_dir=$(mktemp -d /tmp/sextant-clickhouse.XXXXXX)
trap 'bash scripts/clickhouse-cluster.sh down "$clickhouse_dir" >/dev/null; rm -rf "$clickhouse_dir"' EXIT
clickhouse_url=$(bash scripts/clickhouse-cluster.sh up "$clickhouse_dir" | tail -1)
export "$clickhouse_url"
export SEXTANT_REQUIRE_CLICKHOUSE=1
cargo test --locked
cargo build --locked --quiet
for check in tests/reference/*_vs_duckdb.py tests/reference/*_vs_statsmodels.py tests/reference/*_vs_chdb.py; do
  echo "== $check"
  python3 "$check"
done
bash scripts/test-clients.sh
bash scripts/test-dashboard.sh
