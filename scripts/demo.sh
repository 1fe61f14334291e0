#!/usr/bin/env bash
# The walkthrough of README.md, run exactly as printed: write on command-service (5001), read
# on query-service (5002). Every line is echoed, every answer printed, and each answer's status
# checked against the status the line's comment gives; a wrong one stops the demo with a
# non-zero exit.
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

# The walkthrough is README.md's first `bash` block under "## Walkthrough", run as printed (in one
# bash, each line echoed before it runs). Each `call` prints its answer's status first; the
# statuses must be, in order, those the lines' comments give (`# 201`, `# 404: ...`).
BLOCK="$(awk '/^## Walkthrough/{on=1} on && /^```bash/{inblock=1; next} inblock && /^```/{exit} inblock' README.md)"
[[ -n "$BLOCK" ]] || fail "README.md has no bash block under ## Walkthrough"
if [[ "$COMMAND_URL" != http://127.0.0.1:5001 || "$QUERY_URL" != http://127.0.0.1:5002 ]]; then
  BLOCK="${BLOCK//localhost:5001/${COMMAND_URL#http://}}"
  BLOCK="${BLOCK//localhost:5002/${QUERY_URL#http://}}"
fi
mapfile -t EXPECTED < <(printf '%s\n' "$BLOCK" | sed -nE 's/^call .*# ([0-9]{3})\b.*/\1/p')
((${#EXPECTED[@]} > 0)) || fail "the walkthrough has no call with a status in its comment"
mkdir -p .local
printf '\033[1m== The walkthrough (README.md), as printed\033[0m\n'
if ! printf '%s\n' "$BLOCK" | bash -v -e 2>&1 | tee .local/walkthrough.out; then
  fail "the walkthrough stopped on an error"
fi
mapfile -t GOT < <(grep -E '^[0-9]{3}( |$)' .local/walkthrough.out | cut -c1-3)
for i in "${!EXPECTED[@]}"; do
  [[ "${GOT[$i]:-none}" == "${EXPECTED[$i]}" ]] ||
    fail "call $((i + 1)) of the walkthrough answered ${GOT[$i]:-nothing}, its comment says ${EXPECTED[$i]}"
done
((${#GOT[@]} == ${#EXPECTED[@]})) || fail "${#GOT[@]} answers for ${#EXPECTED[@]} calls"

printf '\n\033[32mdemo passed: %s calls, each answered what its comment says\033[0m\n' "${#EXPECTED[@]}"
printf 'Watch it live: %s/ (the read model, its stream, and a form writing through %s)\n' "$QUERY_URL" "$COMMAND_URL"
