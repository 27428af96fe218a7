#!/usr/bin/env bash
# Makes docs/dashboard.png: a release demo server (generated data) on a free port, the
# dashboard's default range in headless Chromium at laptop size, then the server stops.
# Usage: scripts/screenshot.sh [OUT.png] [WIDTH,HEIGHT]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/dashboard.png}"
size="${2:-1400,1500}"
command -v chromium >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
cargo build --release --locked --quiet
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
env -u SEXTANT_BOOTSTRAP_KEY target/release/sextant serve --demo --demo-users 2000 --addr 127.0.0.1:0 \
  --metrics-addr off --data-dir "$work/db" >"$work/log" 2>/dev/null &
pid=$!
for _ in $(seq 1 600); do
  grep -q '^demo project ready' "$work/log" && break
  sleep 0.2
done
url=$(grep -o 'http://[^ ]*?project=demo' "$work/log" | head -1)
[ -n "$url" ] || { cat "$work/log"; echo "the demo server did not start" >&2; exit 1; }
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$work/profile" --virtual-time-budget=15000 \
  --window-size="$size" --screenshot="$out" "$url" 2>/dev/null
echo "wrote $out from $url"
