#!/usr/bin/env bash
# The walkthrough: write on command-service (5001), read on query-service (5002).
# Every step prints the curl command and the answer, and checks the answer; a wrong one stops
# the demo with a non-zero exit.
#
#   scripts/demo.sh            against services already running (scripts/run.sh, docker compose)
#   scripts/demo.sh --start    builds and starts both services first, stops them at the end
#
# COMMAND_URL and QUERY_URL override http://127.0.0.1:5001 and http://127.0.0.1:5002.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

COMMAND_URL="${COMMAND_URL:-http://127.0.0.1:5001}"
QUERY_URL="${QUERY_URL:-http://127.0.0.1:5002}"
PIDS=()
NAMES=()

fail() { printf '\n\033[31mDEMO FAILED:\033[0m %s\n' "$*" >&2; exit 1; }

# The services this script started stop with SIGTERM and must exit 0 (a graceful stop);
# anything else fails the demo, even after every step passed.
cleanup() {
  local rc=$? i status
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in "${!PIDS[@]}"; do
    status=0
    wait "${PIDS[$i]}" 2>/dev/null || status=$?
    if ((status != 0)); then
      printf '\033[31mDEMO FAILED:\033[0m %s exited with status %s (log: .local/demo-%s.log)\n' \
        "${NAMES[$i]}" "$status" "${NAMES[$i]}" >&2
      rc=1
    fi
  done
  exit "$rc"
}
trap cleanup EXIT

port_taken() { # url
  local hostport=${1#*://}
  hostport=${hostport%%/*}
  (exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}") 2>/dev/null
}

wait_ready() { # url [pid name]
  for _ in $(seq 1 120); do
    if [[ -n "${2:-}" ]] && ! kill -0 "$2" 2>/dev/null; then
      fail "$3 exited before answering; its log (.local/demo-$3.log) ends with: $(tail -n 5 ".local/demo-$3.log" 2>/dev/null)"
    fi
    if curl -fsS --max-time 2 "$1/ready" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  fail "$1/ready did not answer 200 within 60 s"
}

if [[ "${1:-}" == "--start" ]]; then
  # The walkthrough must talk to the processes it starts, not to whatever already listens.
  for url in "$COMMAND_URL" "$QUERY_URL"; do
    if port_taken "$url"; then
      fail "${url#*://} is already taken by another process: stop it, or run scripts/demo.sh without --start against it"
    fi
  done
  bash scripts/dev-services.sh up >/dev/null
  cargo build --quiet -p command-service -p query-service --bins
  mkdir -p .local
  for name in command-service query-service; do
    ./target/debug/$name >".local/demo-$name.log" 2>&1 &
    PIDS+=($!)
    NAMES+=("$name")
  done
  wait_ready "$COMMAND_URL" "${PIDS[0]}" command-service
  wait_ready "$QUERY_URL" "${PIDS[1]}" query-service
else
  wait_ready "$COMMAND_URL"
  wait_ready "$QUERY_URL"
fi

STATUS=""
BODY=""
# run "description" curl-args... : prints the command, runs it, keeps STATUS and BODY.
run() {
  local what=$1
  shift
  printf '\n\033[1m== %s\033[0m\n$ curl' "$what"
  printf " %q" "$@"
  printf '\n'
  local out
  out="$(curl -sS -w '\n%{http_code}' "$@")" || fail "curl failed: $*"
  STATUS="${out##*$'\n'}"
  BODY="${out%$'\n'*}"
  printf '%s %s\n' "$STATUS" "$BODY"
}

expect_status() { [[ "$STATUS" == "$1" ]] || fail "expected HTTP $1, got $STATUS: $BODY"; }

# json 'python expression over j' : evaluates against the last body.
json() { printf '%s' "$BODY" | python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }

expect_json() { # python-expression description
  local got
  got="$(json "$1")" || fail "answer is not the JSON expected: $BODY"
  [[ "$got" == "True" ]] || fail "$2 (checked: $1) in ${BODY:0:2000}"
}

# Where the event log ends now: it keeps every event the pair ever accepted, so the last steps
# read from here on and see this walkthrough's events whatever ran before.
FEED_START=0
while :; do
  page="$(curl -fsS "$COMMAND_URL/events?after=$FEED_START&limit=1000")" || fail "GET /events failed"
  last="$(printf '%s' "$page" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j[-1]["position"] if j else "")')"
  [[ -n "$last" ]] || break
  FEED_START=$last
done

run "Create a todo on the command side" -X POST "$COMMAND_URL/todos" \
  -H 'content-type: application/json' -d '{"title":"Learn CQRS","description":"outbox, relay, projection"}'
expect_status 201
expect_json 'j["version"] == 1 and j["title"] == "Learn CQRS" and j["completed"] is False' "a new todo at version 1"
ID="$(json 'j["id"]')"

run "Read it on the query side, waiting for version 1 (read-your-writes)" \
  "$QUERY_URL/todos/$ID?min_version=1"
expect_status 200
expect_json "j['id'] == $ID and j['version'] >= 1 and j['title'] == 'Learn CQRS'" "the read model has the todo"

run "List todos on the query side" "$QUERY_URL/todos?sort=-id&limit=5"
expect_status 200
expect_json "any(t['id'] == $ID for t in j)" "the list holds the new todo"

run "Update the title" -X PATCH "$COMMAND_URL/todos/$ID" \
  -H 'content-type: application/json' -d '{"title":"Learn CQRS properly"}'
expect_status 200
expect_json 'j["version"] == 2 and j["title"] == "Learn CQRS properly"' "version 2 with the new title"

run "Complete it, only if still at version 2" -X PATCH "$COMMAND_URL/todos/$ID" \
  -H 'content-type: application/json' -H 'If-Match: "2"' -d '{"completed":true}'
expect_status 200
expect_json 'j["version"] == 3 and j["completed"] is True' "version 3, completed"

run "A stale If-Match is refused" -X PATCH "$COMMAND_URL/todos/$ID" \
  -H 'content-type: application/json' -H 'If-Match: "2"' -d '{"completed":false}'
expect_status 412
expect_json 'j["status"] == 412 and j["current_version"] == 3' "a problem+json naming the current version"

run "Read the completed todo on the query side" "$QUERY_URL/todos/$ID?min_version=3"
expect_status 200
expect_json 'j["version"] == 3 and j["completed"] is True and j["title"] == "Learn CQRS properly"' "the read model caught up"

run "Only completed todos" "$QUERY_URL/todos?completed=true&sort=-id&limit=5"
expect_status 200
expect_json "any(t['id'] == $ID for t in j) and all(t['completed'] for t in j)" "the filter works"

run "Read model statistics" "$QUERY_URL/stats"
expect_status 200
expect_json 'j["total"] >= 1 and j["completed"] >= 1 and j["projection"]["applied"] >= 3' "counts and projection figures"

run "Delete it" -X DELETE "$COMMAND_URL/todos/$ID" -H 'If-Match: "3"'
expect_status 204

run "Deleting again finds nothing" -X DELETE "$COMMAND_URL/todos/$ID"
expect_status 404

run "Gone from the query side once version 4 (the delete) is applied" "$QUERY_URL/todos/$ID?min_version=4"
expect_status 404

run "The event log on the command side, from where it ended before this walkthrough" \
  "$COMMAND_URL/events?after=$FEED_START&limit=100"
expect_status 200
expect_json "[e['event_type'] for e in j if e['todo_id'] == $ID] == ['TodoCreated', 'TodoUpdated', 'TodoUpdated', 'TodoDeleted']" "four events for this todo, in order"

run "Bad input gets a problem+json answer" -X POST "$COMMAND_URL/todos" \
  -H 'content-type: application/json' -d '{"title":""}'
expect_status 422
expect_json 'j["errors"][0]["field"] == "title"' "the offending field is named"

printf '\n\033[32mdemo passed: 15 steps\033[0m\n'
printf 'Watch it live: %s/ (the read model, its stream, and a form writing through %s)\n' "$QUERY_URL" "$COMMAND_URL"
