#!/usr/bin/env bash
# Runs every test of the workspace against real PostgreSQL, RabbitMQ and MongoDB(-wire), which
# it installs (apt-get / pip) and starts on loopback first. Extra arguments go to nextest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/dev-services.sh up

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "[test] installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

# Style gates: formatting and lints (warnings are errors).
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all --check; fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --quiet -- -D warnings
fi

# One build for every test binary; tests named *outage* run alone (.config/nextest.toml).
cargo nextest run --workspace --no-fail-fast "$@"

# The walkthrough a person runs, against the services as binaries.
bash scripts/demo.sh --start
