#!/usr/bin/env bash
# Ingest benchmark (BENCHMARKS.md): `sextant load` of `sextant gen --users N` into a fresh
# server with durable acks; reports events/s, the server's peak RSS, bytes on disk per event
# and the time to reload everything at restart. Usage: scripts/bench-ingest.sh [USERS] [WORKDIR]
# SEXTANT_SERVE_ARGS adds `serve` flags: '--storage clickhouse --clickhouse-url URL
# --clickhouse-database DB' loads into a ClickHouse cluster (scripts/clickhouse-cluster.sh);
# SEXTANT_LOAD_ARGS adds `load` flags to the events' load (e.g. '--batch 5000 --inflight 8').
set -euo pipefail
users=${1:-700000}
work=${2:-/tmp/sextant-bench}
port=50290
cd "$(dirname "$0")/.."
# SEXTANT_BIN runs another build (e.g. an older commit's, for a before/after in one run).
bin=${SEXTANT_BIN:-target/release/sextant}
[ -n "${SEXTANT_BIN:-}" ] || cargo build --release --quiet
mkdir -p "$work"
if [ ! -s "$work/data-$users/events.jsonl" ]; then
  "$bin" gen --users "$users" --seed 42 --out "$work/data-$users"
fi
rm -rf "$work/db"
"$bin" serve --addr 127.0.0.1:$port --metrics-addr off --data-dir "$work/db" ${SEXTANT_SERVE_ARGS:-} >"$work/serve.out" 2>"$work/serve.err" &
server=$!
# The server is waited for: a next run must not start while this one still writes its files.
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
sleep 1
# Anonymous memory (RssAnon: heap, not the file pages the kernel may drop) sampled during the load.
( peak=0; while kill -0 $server 2>/dev/null; do
    anon=$(awk '/RssAnon/ {print $2}' /proc/$server/status 2>/dev/null || echo 0)
    [ "${anon:-0}" -gt "$peak" ] && peak=$anon && echo "$peak" >"$work/rss-anon-peak"
    sleep 0.2
  done ) &
sampler=$!
"$bin" load --addr 127.0.0.1:$port --project bench --users "$work/data-$users/users.jsonl"
# Both sides share the machine's cores: the CPU each spends on the events is printed too
# (the client's from `time`, the server's from /proc, counted from the events' load only).
server_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' /proc/$server/stat; }
server_before=$(server_cpu)
TIMEFORMAT='%U %S'
export LC_NUMERIC=C
# Only `time`'s line goes to the file; the client's own stderr (warnings) stays on stderr.
{ time "$bin" load --addr 127.0.0.1:$port --project bench --events "$work/data-$users/events.jsonl" ${SEXTANT_LOAD_ARGS:-} 2>&3 | tee "$work/load.out"; } 3>&2 2>"$work/load.time"
server_after=$(server_cpu)
tail -n 1 "$work/load.time" | awk -v s0="$server_before" -v s1="$server_after" \
  '{printf "CPU during the events load: client %.2f s, server %.2f s\n", $1 + $2, s1 - s0}'
peak_kb=$(awk '/VmHWM/ {print $2}' /proc/$server/status)
echo "server peak RssAnon during the load: $(($(cat "$work/rss-anon-peak") / 1024)) MiB"
events=$(grep -o 'accepted [0-9]*' "$work/load.out" | awk '{print $2}')
kill -TERM $server; wait $server || true
kill $sampler 2>/dev/null || true
bytes=$(du -sb "$work/db" | awk '{print $1}')
echo "server peak RSS: $((peak_kb / 1024)) MiB"
echo "bytes on disk: $bytes ($(awk -v b="$bytes" -v e="$events" 'BEGIN {printf "%.1f", b / e}') per event)"
"$bin" serve --addr 127.0.0.1:$port --metrics-addr off --data-dir "$work/db" ${SEXTANT_SERVE_ARGS:-} >"$work/serve.out" 2>"$work/serve.err" &
server=$!
for _ in $(seq 1 300); do
  grep -q "storage loaded" "$work/serve.err" && break
  sleep 1
done
sed 's/\x1b\[[0-9;]*m//g' "$work/serve.err" | grep -o 'storage loaded.*'
echo "server RSS after reload: $(($(awk '/VmHWM/ {print $2}' /proc/$server/status) / 1024)) MiB"
