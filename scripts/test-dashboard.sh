#!/usr/bin/env bash
# The dashboard in a real browser: installs Debian's chromium when it is missing, then
# tests/reference/dashboard_in_chromium.py starts demo servers (a small generated data set),
# loads the page headless and checks every tile and headline value against the gRPC API,
# and that with auth on the page without a key shows only the key prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
cargo build --locked --quiet
python3 tests/reference/dashboard_in_chromium.py
