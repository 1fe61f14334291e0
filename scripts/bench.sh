#!/usr/bin/env bash
# The pair against the limits of its own stores, in one run on this machine, printed as one
# table: each figure beside the limit measured in the same run, and their ratio. It asserts
# nothing about speed; it prints figures (and where the CPU went, phase by phase).
#
#   scripts/bench.sh                       # about 6 minutes on a 2-core machine
#   BENCH_SECONDS=5 BENCH_OPEN_SECONDS=10 BENCH_RATES=200 scripts/bench.sh   # a shorter run
#
# What it does: brings the local services up (scripts/dev-services.sh up), installs wrk with
# apt-get if it is missing, builds release binaries (both services and scripts/bench), then
# runs scripts/bench (see its src/main.rs for each phase). What it changes: it creates
# PostgreSQL databases and MongoDB databases named bench_*, a RabbitMQ exchange and queues
# named bench.*, and starts the services on ports BENCH_PORT (5201) to BENCH_PORT+3; it
# removes them all at the end. Logs stay in target/bench/<run>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/dev-services.sh up >&2

if ! command -v wrk >/dev/null; then
  echo "[bench] installing wrk" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
command -v pgbench >/dev/null || { echo "[bench] pgbench is missing (Debian: postgresql-client)" >&2; exit 1; }

cargo build --release --quiet -p command-service -p query-service -p bench --bins
exec target/release/bench "$@"
