#!/usr/bin/env bash
# The test command: Rust unit and end-to-end tests (the ClickHouse backend's against a local
# two-shard cluster, and the end-to-end tests a second time with the server on it), then the
# cross-checks against DuckDB and the forecasts against statsmodels on generated data (on both
# backends) and the ClickHouse backend's SQL on chDB (installing their Python dependencies
# first), then the client examples in Python, Node and Go against a fresh server (scripts/test-clients.sh
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
# The end-to-end tests again with every server on the cluster (`serve --storage clickhouse`,
# see tests/common), but for the few about the embedded engine's own machinery: its applier
# and project locks, checkpoint and log files, files under the data dir, and backups (a
# ClickHouse deployment's are the cluster's own).
SEXTANT_TEST_STORAGE=clickhouse cargo test --locked --test '*' -- \
  --skip settings_and_definitions_are_read_past_a_query_with_writes_queued \
  --skip past_its_memory_bound_a_busy_projects_writes_spill_and_are_still_acked \
  --skip a_checkpoint_waits_for_a_busy_project_without_holding_up_acks \
  --skip a_corrupt_checkpoint_file_stops_the_start_naming_it \
  --skip a_checkpoint_whose_rows_name_no_person_stops_the_server \
  --skip a_checkpoint_naming_a_user_twice_stops_the_server \
  --skip a_corrupt_dedupe_file_stops_the_server_naming_it \
  --skip a_version_2_checkpoint_loads_and_is_rewritten_in_the_current_version \
  --skip a_version_3_checkpoint_loads_with_its_properties_and_times_converted \
  --skip a_version_4_checkpoint_loads_with_its_properties_encoded \
  --skip new_property_keys_past_the_projects_limit_are_rejected_per_item \
  --skip replayed_events_count_against_the_property_key_limit \
  --skip a_clean_stop_leaves_no_dead_bytes_and_loses_nothing \
  --skip sigkills_during_checkpoints_lose_and_duplicate_nothing_acked \
  --skip deletions_during_background_checkpoints_leave_every_listed_file \
  --skip after_delete_user_and_compact_no_file_holds_the_user_and_answers_stay \
  --skip backup_while_ingesting_restores_into_a_server_that_answers_the_same
cargo build --locked --quiet
for check in tests/reference/*_vs_duckdb.py tests/reference/*_vs_statsmodels.py tests/reference/*_vs_chdb.py; do
  echo "== $check"
  python3 "$check"
done
# The same independent checks with the server on the cluster.
for check in tests/reference/*_vs_duckdb.py tests/reference/*_vs_statsmodels.py; do
  echo "== $check (server on ClickHouse)"
  SEXTANT_TEST_STORAGE=clickhouse python3 "$check"
done
bash scripts/test-clients.sh
bash scripts/test-dashboard.sh
