#!/usr/bin/env bash
# The pair against clients and peers that do not play along: silent, trickling and
# half-HTTP/2 sockets, bodies that never end and readers that never read (all at once, while
# /health is timed on both services), 200 streams from one address, 100 replays at size whose
# clients never read, forged events on the broker, the feed's tokens, two replicas' streams;
# the services run as the least-privilege broker users deploy/rabbitmq/definitions.json ships.
# Prints one table (attack | what must hold | what was seen) and exits 1 if something does not
# hold. The program is scripts/bench/src/bin/abuse.rs.
#
#   scripts/abuse.sh            # release binaries, 2,000 sockets a service, 100,000 todos
#   scripts/abuse.sh --short    # 300 sockets a service, 3,000 todos (scripts/test.sh runs this)
#
# What it changes: it brings the local services up (scripts/dev-services.sh up); it creates a
# RabbitMQ vhost (holding the exchanges, queues and bindings definitions.json makes) and two
# users named abuse-<run>* (with the permissions it gives its users), a PostgreSQL and a MongoDB database abuse_<run>, and removes them all at the end;
# it runs the services on ABUSE_PORT (5401) and the next two ports and opens connections from
# loopback addresses 127.0.1.1 to 127.0.20.200. Logs stay in target/abuse/<run>/.
# SERVICE_BIN_DIR=target/debug runs the debug binaries instead of building release ones.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/dev-services.sh up >&2
if [[ -z ${SERVICE_BIN_DIR:-} ]]; then
  cargo build --release --quiet -p command-service -p query-service -p bench --bins
  abuse=target/release/abuse
else
  cargo build --quiet -p bench --bin abuse
  abuse=target/debug/abuse
fi

export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-rabbit@localhost}"
run="$(date +%Y%m%d%H%M%S)$$"
vhost="abuse-$run"
writer="abuse-$run-command"
reader="abuse-$run-query"
secret() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
writer_password=$(secret)
reader_password=$(secret)

cleanup() {
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_user "$writer" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_user "$reader" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The permissions deploy/rabbitmq/definitions.json gives command-service and query-service.
permissions() {
  python3 - "$1" <<'EOF'
import json, sys
d = json.load(open("deploy/rabbitmq/definitions.json"))
p = next(p for p in d["permissions"] if p["user"] == sys.argv[1])
print(p["configure"], p["write"], p["read"], sep="\n")
EOF
}
mapfile -t writer_perms < <(permissions command-service)
mapfile -t reader_perms < <(permissions query-service)

rabbitmqctl -q add_vhost "$vhost" >/dev/null
# The exchanges, queues and bindings the definitions make (query-service's user may configure
# none of them), on this run's vhost.
topology="$(mktemp --suffix=.json)"
python3 - "$vhost" >"$topology" <<'PY'
import json, sys
d = json.load(open("deploy/rabbitmq/definitions.json"))
out = {k: d[k] for k in ("exchanges", "queues", "bindings")}
for k in out:
    for item in out[k]:
        item["vhost"] = sys.argv[1]
print(json.dumps(out))
PY
chmod 644 "$topology"
rabbitmqctl -q import_definitions "$topology" >/dev/null
rm -f "$topology"
printf '%s' "$writer_password" | rabbitmqctl -q add_user "$writer" >/dev/null
printf '%s' "$reader_password" | rabbitmqctl -q add_user "$reader" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" "$writer" "${writer_perms[@]}" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" "$reader" "${reader_perms[@]}" >/dev/null

# 2,000 sockets a service and the services' own: more than a default descriptor limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ABUSE_RUN="$run" \
ABUSE_AMQP_COMMAND_URL="amqp://$writer:$writer_password@127.0.0.1:5672/$vhost" \
ABUSE_AMQP_QUERY_URL="amqp://$reader:$reader_password@127.0.0.1:5672/$vhost" \
  "$abuse" "$@"
