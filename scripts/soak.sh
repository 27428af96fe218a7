#!/usr/bin/env bash
# Soak (BENCHMARKS.md): a fresh release server with auth on, then `sextant soak` — several
# clients mixing Track (half the calls), QueryMetric, GetUser, ListUserEvents and
# GetProjectStats — for a bounded time. Prints calls, errors and p50/p99/max per call, and
# the server's peak RSS. Usage: scripts/soak.sh [SECONDS] [CLIENTS] [WORKDIR]
set -euo pipefail
seconds=${1:-60}
clients=${2:-4}
work=${3:-/tmp/sextant-soak}
port=50291
cd "$(dirname "$0")/.."
rm -rf "$work" && mkdir -p "$work"
# Copy the binary out of the target dir at once: a shared target dir may be rebuilt from
# another checkout meanwhile.
bin="$work/sextant"
for _ in 1 2 3; do
  cargo build --release --quiet
  cp "${CARGO_TARGET_DIR:-target}/release/sextant" "$bin"
  "$bin" --help | grep -q soak && break
done
key=soak-bootstrap-key-0123456789
"$bin" serve --addr 127.0.0.1:$port --metrics-addr off --data-dir "$work/db" --bootstrap-key "$key" \
  >"$work/serve.out" 2>"$work/serve.err" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do grep -q listening "$work/serve.out" && break; sleep 0.1; done
"$bin" soak --addr 127.0.0.1:$port --api-key "$key" --seconds "$seconds" --clients "$clients"
echo "server peak RSS: $(($(awk '/VmHWM/ {print $2}' /proc/$server/status) / 1024)) MiB"
kill -TERM $server
wait $server && echo "server exited 0 after SIGTERM"
errors=$(grep -c ' ERROR ' "$work/serve.err" || true)
echo "server error log lines: $errors"
