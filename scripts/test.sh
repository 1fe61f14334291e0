#!/usr/bin/env bash
# Runs every test of the workspace against real PostgreSQL, RabbitMQ and MongoDB(-wire), which
# it installs (apt-get / pip) and starts on loopback first. Extra arguments go to nextest: test
# names narrow the run; a filterset (-E) is OR-ed by nextest with the one below, so it widens it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/dev-services.sh up

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "[test] installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi

# Style gates: formatting and lints (warnings are errors). Never skipped: installed if missing.
for component in rustfmt clippy; do
  tool=${component/rustfmt/fmt}
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    echo "[test] installing $component" >&2
    rustup component add "$component"
  fi
done
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

# Tests named outage_of_<service> stop and start that service. Where it was running before
# scripts/dev-services.sh came (a system PostgreSQL, RabbitMQ or MongoDB), they are left out,
# one line each, and nextest's summary counts them as skipped: stopping another's service is
# not this suite's to do.
FILTER="all()"
SKIPPED=0
for pair in postgresql:postgres rabbitmq:rabbitmq mongodb:mongo; do
  name=${pair%%:*}
  if ! bash scripts/dev-services.sh owns "${pair##*:}"; then
    FILTER="$FILTER - test(/outage_of_${name}/)"
    tests=$(cargo nextest list --workspace --message-format oneline -E "test(/outage_of_${name}/)")
    while read -r test; do
      [[ -n $test ]] || continue
      echo "[test] skipped: $test: it stops $name, which scripts/dev-services.sh did not start"
      SKIPPED=$((SKIPPED + 1))
    done <<<"$tests"
  fi
done
if ((SKIPPED > 0)); then
  echo "[test] $SKIPPED tests skipped: they would stop a service this machine was already running"
fi

# One build for every test binary; tests named *outage* run alone (.config/nextest.toml).
cargo nextest run --workspace --no-fail-fast -E "$FILTER" "$@"

# The Prometheus alert rules and dashboard (deploy/prometheus/): promtool check rules, promtool
# test rules on their unit tests, and the dashboard's expressions parsed (scripts/alerts.sh).
bash scripts/alerts.sh

# Both services as debug binaries against their own OpenAPI documents: schemathesis (pinned)
# sends what each document allows and what it forbids, with every check, and fails on any
# answer the document does not describe (scripts/schemathesis/ has its configuration).
bash scripts/schemathesis.sh

# Hostile and careless clients against the pair as binaries (scripts/abuse.sh), with smaller
# numbers and the debug binaries just built: every attack's outcome must hold; its bounds on
# time are measured only here (a full run on release binaries holds them).
SERVICE_BIN_DIR=target/debug bash scripts/abuse.sh --short

# The pair before contract version 2 beside the pair now, in every mix while writes go on
# (scripts/mixed_versions.sh): nothing lost, nothing a newer reader can apply left
# dead-lettered, the read model equal to the log. Then the pair of version 2 (the last before
# version 3: who, why, erasure), whose reader reads newer events as its own: nothing may be
# dead-lettered at all.
bash scripts/mixed_versions.sh
MIXED_OLD_REF=853b16c MIXED_OLD_READS_NEWER=1 bash scripts/mixed_versions.sh

# `scripts/demo.sh --start` must refuse to run its walkthrough against services it did not
# start: with another instance of the pair already on 5001 and 5002 it has to fail.
./target/debug/command-service >.local/test-blocker-command.log 2>&1 &
BLOCKERS=($!)
./target/debug/query-service >.local/test-blocker-query.log 2>&1 &
BLOCKERS+=($!)
stop_blockers() { kill -TERM "${BLOCKERS[@]}" 2>/dev/null || true; wait "${BLOCKERS[@]}" 2>/dev/null || true; }
trap stop_blockers EXIT
for _ in $(seq 1 120); do
  curl -fsS http://127.0.0.1:5001/ready >/dev/null 2>&1 && curl -fsS http://127.0.0.1:5002/ready >/dev/null 2>&1 && break
  sleep 0.5
done
if bash scripts/demo.sh --start >.local/test-demo-blocked.log 2>&1; then
  echo "[test] FAILED: scripts/demo.sh --start passed with 5001 and 5002 taken by other processes" >&2
  exit 1
fi
grep -q "already taken" .local/test-demo-blocked.log || {
  echo "[test] FAILED: scripts/demo.sh --start failed, but not for the ports:" >&2
  tail -n 5 .local/test-demo-blocked.log >&2
  exit 1
}
echo "[test] scripts/demo.sh --start refuses ports taken by other processes: ok"
stop_blockers
trap - EXIT

# The walkthrough a person runs, against the services as binaries.
bash scripts/demo.sh --start

# The live page in headless Chromium against the pair as binaries (scripts/browser_test.py):
# create, complete and delete from the form; screenshots at desktop and phone width in
# .local/screenshots/.
if ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing chromium" >&2
  if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q chromium >/dev/null
fi
# Into the project's own venv (scripts/schemathesis.sh made it): a stock Debian's pip refuses
# installs into the system Python (PEP 668).
PY=python3
PIP=(python3 -m pip install -q --user)
if [[ -x .local/venv/bin/python ]]; then
  PY=.local/venv/bin/python
  PIP=("$PY" -m pip install -q)
fi
"$PY" -c "import websockets" 2>/dev/null || "${PIP[@]}" websockets
./target/debug/command-service >.local/test-page-command.log 2>&1 &
PAGE_PAIR=($!)
./target/debug/query-service >.local/test-page-query.log 2>&1 &
PAGE_PAIR+=($!)
stop_pair() { kill -TERM "${PAGE_PAIR[@]}" 2>/dev/null || true; wait "${PAGE_PAIR[@]}" 2>/dev/null || true; }
trap stop_pair EXIT
for _ in $(seq 1 120); do
  curl -fsS http://127.0.0.1:5001/ready >/dev/null 2>&1 && curl -fsS http://127.0.0.1:5002/ready >/dev/null 2>&1 && break
  sleep 0.5
done
"$PY" scripts/browser_test.py
# Every command the READMEs show that only reads, run as written against this pair.
bash scripts/readme_commands.sh
stop_pair
trap - EXIT

# deploy/k8s as `kubectl apply -k deploy/k8s/overlays/local` builds it, with kustomize itself
# (kubectl, pinned, in .local/venv), validated strictly against Kubernetes' schemas with the
# Secrets deploy/k8s/secrets.sh makes (scripts/k8s_check.sh; no cluster needed).
bash scripts/k8s_check.sh
