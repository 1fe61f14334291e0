#!/usr/bin/env bash
# Runs the whole pair without Docker: the local stores and broker, then command-service on
# :5001 and query-service on :5002 (release builds), in the foreground. Ctrl-C stops both
# services gracefully (SIGTERM: in-flight requests and messages finish); the stores keep
# running (scripts/dev-services.sh down stops them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/dev-services.sh up
cargo build --release -p command-service -p query-service --bins

./target/release/command-service &
COMMAND_PID=$!
./target/release/query-service &
QUERY_PID=$!

stop() {
  trap - INT TERM
  kill -TERM "$COMMAND_PID" "$QUERY_PID" 2>/dev/null || true
  wait "$COMMAND_PID" "$QUERY_PID" 2>/dev/null || true
}
trap stop INT TERM EXIT

echo "command-service: http://127.0.0.1:5001   query-service: http://127.0.0.1:5002   (Ctrl-C stops)"
# Exit when either service exits, taking the other one down with it.
wait -n "$COMMAND_PID" "$QUERY_PID"
