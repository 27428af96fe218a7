#!/usr/bin/env bash
# Installs what the reference checks need (DuckDB, scipy, statsmodels, chDB and the gRPC tools
# for Python), from PyPI.
set -euo pipefail
python3 -m pip install --quiet --disable-pip-version-check 'duckdb>=1.1' 'grpcio-tools>=1.60' 'scipy>=1.10' 'statsmodels>=0.14' 'chdb>=3'
