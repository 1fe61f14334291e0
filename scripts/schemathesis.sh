#!/usr/bin/env bash
# Runs schemathesis (pinned below) with all its checks against command-service and
# query-service as debug binaries (cargo build first), each on a port, a PostgreSQL database,
# a MongoDB database and RabbitMQ names of this script's own (both databases made empty for
# each run and dropped after it), so it runs beside anything on 5001/5002. Prints one summary line; exits non-zero on any failure. Needs the local services
# (scripts/dev-services.sh up). Installs schemathesis into .local/venv (a venv; where Python
# has no venv module, pip's --user install).
#
# Phases: coverage, fuzzing and stateful, SCHEMATHESIS_EXAMPLES (100) cases per operation and
# phase; about a minute on two cores. GET /todos/stream is left out (it stays open).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCHEMATHESIS_VERSION=4.32.5
# Newer hypothesis releases describe each filter by parsing the whole source file of the
# lambda, which Python 3.11 (Debian 12's) fails on for schemathesis' largest module
# ("AST constructor recursion depth mismatch"); this one does not.
HYPOTHESIS_VERSION=6.130.12
# To drop the run's MongoDB database.
PYMONGO_VERSION=4.20.1
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-100}
COMMAND_PORT=${SCHEMATHESIS_COMMAND_PORT:-5301}
QUERY_PORT=${SCHEMATHESIS_QUERY_PORT:-5302}
DATABASE=${SCHEMATHESIS_DATABASE:-todos_schemathesis}
MONGODB_DATABASE=${SCHEMATHESIS_MONGODB_DB:-todo_read_schemathesis}
MONGODB=${SCHEMATHESIS_MONGODB_URI:-mongodb://127.0.0.1:27017}
PG=${SCHEMATHESIS_PG:-postgres://todo:todo@127.0.0.1:5432}
mkdir -p .local

# schemathesis, pinned: in a venv under .local/ (PEP 668 keeps pip out of Debian's own
# Python), else pip --user.
if [[ ! -x .local/venv/bin/python ]] && ! python3 -m venv .local/venv >/dev/null 2>&1; then
  rm -rf .local/venv
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null 2>&1 || true
    python3 -m venv .local/venv >/dev/null 2>&1 || rm -rf .local/venv
  fi
fi
if [[ -x .local/venv/bin/python ]]; then
  PYTHON=$PWD/.local/venv/bin/python
  PIP=("$PYTHON" -m pip install -q)
else
  PYTHON=python3
  PIP=(python3 -m pip install -q --user)
fi
if [[ $("$PYTHON" -c 'import importlib.metadata as m; print(*(m.version(p) for p in ("schemathesis", "hypothesis", "pymongo")))' 2>/dev/null) \
      != "$SCHEMATHESIS_VERSION $HYPOTHESIS_VERSION $PYMONGO_VERSION" ]]; then
  echo "[schemathesis] installing schemathesis==$SCHEMATHESIS_VERSION" >&2
  "${PIP[@]}" "schemathesis==$SCHEMATHESIS_VERSION" "hypothesis==$HYPOTHESIS_VERSION" \
    "pymongo==$PYMONGO_VERSION"
fi
SCHEMATHESIS=("$PYTHON" -c 'import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())')

cargo build -q -p command-service -p query-service --bins

# Stores of this run's own, empty: what earlier runs wrote would only slow this one.
drop_stores() {
  PGOPTIONS="-c client_min_messages=warning" \
    psql "$PG/postgres" -qAtX -c "DROP DATABASE IF EXISTS $DATABASE WITH (FORCE)" >/dev/null
  "$PYTHON" -c 'import sys, pymongo; pymongo.MongoClient(sys.argv[1]).drop_database(sys.argv[2])' \
    "$MONGODB" "$MONGODB_DATABASE"
}
drop_stores
psql "$PG/postgres" -qAtX -c "CREATE DATABASE $DATABASE" >/dev/null

export RUST_LOG=warn AMQP_EXCHANGE=schemathesis.events
DATABASE_URL="$PG/$DATABASE" HTTP_ADDR="127.0.0.1:$COMMAND_PORT" \
  CORS_ORIGINS="http://127.0.0.1:$QUERY_PORT" \
  ./target/debug/command-service >.local/test-schemathesis-command.log 2>&1 &
PAIR=($!)
MONGODB_URI=$MONGODB MONGODB_DB=$MONGODB_DATABASE AMQP_QUEUE=schemathesis.todo-events HTTP_ADDR="127.0.0.1:$QUERY_PORT" \
  COMMAND_SERVICE_URL="http://127.0.0.1:$COMMAND_PORT" MIN_VERSION_WAIT_MS=300 \
  ./target/debug/query-service >.local/test-schemathesis-query.log 2>&1 &
PAIR+=($!)
stop_pair() { kill -TERM "${PAIR[@]}" 2>/dev/null || true; wait "${PAIR[@]}" 2>/dev/null || true; }
trap 'stop_pair; drop_stores' EXIT
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$COMMAND_PORT/ready" >/dev/null 2>&1 \
    && curl -fsS "http://127.0.0.1:$QUERY_PORT/ready" >/dev/null 2>&1 && break
  sleep 0.5
done

export SCHEMATHESIS_HOOKS=$PWD/scripts/schemathesis/hooks.py
summary=()
failed=0
for service in command-service query-service; do
  port=$COMMAND_PORT
  extra=()
  if [[ $service == query-service ]]; then
    port=$QUERY_PORT
    extra=(--exclude-path /todos/stream)
  fi
  out=$PWD/.local/test-schemathesis-$service.txt
  # From .local/: schemathesis keeps its cache (.schemathesis/, .hypothesis/) in the
  # working directory.
  if (cd .local && "${SCHEMATHESIS[@]}" --config-file "../scripts/schemathesis/$service.toml" \
        run "http://127.0.0.1:$port/openapi.json" --checks all \
        --phases coverage,fuzzing,stateful --max-examples "$EXAMPLES" --workers 2 \
        --request-timeout 10 "${extra[@]}") >"$out" 2>&1; then
    :
  else
    failed=1
    echo "[schemathesis] $service: FAILED (full output in $out):" >&2
    sed -n '/FAILURES\|ERRORS/,$p' "$out" | head -n 80 >&2
  fi
  cases=$(grep -Eo '[0-9]+ generated, [^=]*' "$out" | tail -n 1 | sed 's/ *$//' || true)
  verdict=$(grep -E '^=+ .* =+$' "$out" | tail -n 1 | sed -E 's/^=+ (.*) =+$/\1/' || true)
  summary+=("$service: ${verdict:-no verdict} (${cases:-no cases})")
done
stop_pair
drop_stores
trap - EXIT
echo "[test] schemathesis $SCHEMATHESIS_VERSION: ${summary[0]}; ${summary[1]}"
exit "$failed"
