#!/usr/bin/env bash
# BENCH-ONLY: stands in for the `s2v` command in deployments/start_warm.sh (S2V_BIN) during bench/night.py.
# `server` and `server-status` go to bench/bench_only_model_server.py (no model; never used in production).
# BENCH_PYTHON names the interpreter (default: the project's .venv).
here=$(cd "$(dirname "$0")" && pwd)
python=${BENCH_PYTHON:-$here/../.venv/bin/python}
exec "$python" "$here/bench_only_model_server.py" "$@"
