#!/usr/bin/env bash
# Local services for the todo CQRS pair, natively on loopback (no Docker needed):
# PostgreSQL 15 and RabbitMQ from Debian's packages, and MongoDB (a real `mongod` on PATH if
# there is one, else the wire-compatible server secantusdb from PyPI).
#
#   scripts/dev-services.sh up|down|status
#   scripts/dev-services.sh owns postgres|rabbitmq|mongo    (exit 0 if this script started it)
#   scripts/dev-services.sh start-postgres|stop-postgres|start-rabbitmq|stop-rabbitmq|start-mongo|stop-mongo
#
# `up` installs what is missing, starts what is not running (a running service is left alone),
# waits until each really answers, and prints the URLs the services' defaults already use.
# `status` exits non-zero if any service is down. The stop-*/start-* pairs simulate outages
# for the integration tests: a stop returns once the port is closed, a start once the service
# answers; data (PostgreSQL rows, durable RabbitMQ queues and persistent messages, MongoDB
# documents) survives them.
#
# What it changes on this machine, and nothing else:
# - installs missing packages with apt-get (postgresql-15, postgresql-client, rabbitmq-server)
#   and secantusdb with pip (into a virtualenv under the state directory if the system Python
#   refuses); while apt-get runs, a /usr/sbin/policy-rc.d that keeps the packages from
#   starting their daemons exists, and it is removed on exit even when interrupted;
# - creates PostgreSQL cluster 15/main if there is none; creates, if missing, the role `todo`
#   (password `todo`, allowed to create databases) and the database `todos` it owns. It never
#   changes an existing role, database or password;
# - starts and stops only what it started: a PostgreSQL cluster, a RabbitMQ node
#   (rabbit@localhost, on loopback) or a MongoDB server that was running before it is used as
#   it is, and `stop-*`/`down` refuse to stop it (a marker in the state directory records what
#   this script started);
# - keeps the MongoDB server's data, pid and log, and those markers, in .local/ (git-ignored;
#   DEV_SERVICES_STATE overrides). MONGO_PORT, RABBITMQ_NODE_PORT and RABBITMQ_NODENAME may be
#   overridden to run a second, separate set (PostgreSQL is always cluster 15/main on 5432).
# The RabbitMQ node is `rabbit@localhost`: to reach it with rabbitmqctl by hand, run
# `RABBITMQ_NODENAME=rabbit@localhost rabbitmqctl ...`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${DEV_SERVICES_STATE:-$ROOT/.local}"
SECANTUS_VERSION="0.7.0b3"
PG_VERSION="15"
PG_CLUSTER="main"
PG_PORT="5432"
MONGO_PORT="${MONGO_PORT:-27017}"
MONGO_NAME="mongo"
if [[ "$MONGO_PORT" != 27017 ]]; then MONGO_NAME="mongo-$MONGO_PORT"; fi
MONGO_DIR="$STATE/$MONGO_NAME"
MONGO_LOG="$STATE/$MONGO_NAME.log"
MONGO_PID="$STATE/$MONGO_NAME.pid"
MONGO_VENV="$STATE/venv"

# RabbitMQ: a node name that always resolves (a container's hostname may not), AMQP on
# loopback only, Erlang distribution on loopback too.
export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-rabbit@localhost}"
export RABBITMQ_NODE_PORT="${RABBITMQ_NODE_PORT:-5672}"
AMQP_PORT="$RABBITMQ_NODE_PORT"
export HOME="${HOME:-/root}"

PG_ROLE="todo"
DATABASE_URL="postgres://$PG_ROLE:$PG_ROLE@127.0.0.1:$PG_PORT/todos"
ADMIN_DATABASE_URL="postgres://$PG_ROLE:$PG_ROLE@127.0.0.1:$PG_PORT/postgres"
AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
MONGODB_URI="mongodb://127.0.0.1:$MONGO_PORT/?maxIdleTimeMS=60000"

mkdir -p "$STATE"

log() { printf '[dev-services] %s\n' "$*" >&2; }

# Milliseconds since the epoch, for the timings printed.
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((10#$t / 1000)); }
took() { local ms=$(($(now_ms) - $1)); printf '%d.%01ds' $((ms / 1000)) $((ms % 1000 / 100)); }

port_open() { # port (on 127.0.0.1)
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
port_closed() { ! port_open "$1"; }

wait_until() { # seconds description command...
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${seconds}s waiting for: $what"
      return 1
    fi
    sleep 0.25
  done
}

show_log() { # file
  if [[ -r "$1" ]]; then
    log "last lines of $1:"
    tail -n 30 "$1" >&2 || true
  fi
}

# Protocol-level probes (stdlib Python: python3 is there wherever RabbitMQ or secantusdb is).
PYTHON="$(command -v /usr/bin/python3 || command -v python3 || true)"
probe() { # amqp|mongo port
  if [[ -z "$PYTHON" ]]; then port_open "$2"; return; fi
  "$PYTHON" - "$1" "$2" <<'PY'
import socket, struct, sys

kind, port = sys.argv[1], int(sys.argv[2])

def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf

def amqp(sock):
    # The broker must answer the AMQP 0-9-1 header with connection.start on channel 0.
    sock.sendall(b"AMQP\x00\x00\x09\x01")
    ftype, channel, size = struct.unpack(">BHI", recv_exact(sock, 7))
    payload = recv_exact(sock, size + 1)
    return ftype == 1 and channel == 0 and payload[:4] == b"\x00\x0a\x00\x0a" and payload[-1] == 0xCE

def mongo(sock):
    # OP_MSG {ping: 1, $db: "admin"}; the reply must carry ok: 1.
    def cstr(text):
        return text.encode() + b"\x00"
    elements = (b"\x10" + cstr("ping") + struct.pack("<i", 1)
                + b"\x02" + cstr("$db") + struct.pack("<i", 6) + b"admin\x00")
    doc = struct.pack("<i", len(elements) + 5) + elements + b"\x00"
    body = struct.pack("<I", 0) + b"\x00" + doc
    sock.sendall(struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body)
    length, _, _, opcode = struct.unpack("<iiii", recv_exact(sock, 16))
    reply = recv_exact(sock, length - 16)
    return opcode == 2013 and (
        b"\x01ok\x00" + struct.pack("<d", 1.0) in reply or b"\x10ok\x00" + struct.pack("<i", 1) in reply
    )

try:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        ok = (amqp if kind == "amqp" else mongo)(sock)
except (OSError, struct.error):
    ok = False
sys.exit(0 if ok else 1)
PY
}

# One invocation at a time (e.g. `up` from demo.sh while a test restarts a service). Daemons
# are started with fd 9 closed so they never hold the lock.
LOCKED=0
lock() {
  if ((LOCKED == 0)) && command -v flock >/dev/null; then
    exec 9>"$STATE/dev-services.lock"
    flock -w 600 9 || { log "could not lock $STATE/dev-services.lock"; exit 1; }
    LOCKED=1
  fi
}

# ---------------------------------------------------------------- installing
APT_UPDATED=0
# The policy-rc.d this script created, removed on exit whatever ends it.
POLICY_CREATED=""
remove_policy() {
  if [[ -n "$POLICY_CREATED" ]]; then rm -f "$POLICY_CREATED"; POLICY_CREATED=""; fi
}
trap remove_policy EXIT
trap 'remove_policy; exit 130' INT
trap 'remove_policy; exit 143' TERM

# Markers of what this script started (and so may stop).
started_mark() { echo "$STATE/$1.started-here"; }
mark_started() { : >"$(started_mark "$1")"; }
unmark_started() { rm -f "$(started_mark "$1")"; }
# A marker older than the machine's boot is stale: what was started then is gone, and what runs
# now (a system service started at boot) is not this script's.
started_here() {
  local mark boot
  mark="$(started_mark "$1")"
  [[ -e "$mark" ]] || return 1
  boot=$(awk '/^btime /{print $2}' /proc/stat 2>/dev/null || echo 0)
  if (($(stat -c %Y "$mark") < boot)); then
    rm -f "$mark"
    return 1
  fi
}
refuse_stop() { # service
  log "not stopping $1: it was running before this script started it (see the header)"
  return 1
}
apt_install() {
  if ((APT_UPDATED == 0)); then
    log "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  # Keep the packages' own init scripts from starting daemons (rabbit@<hostname> may not
  # resolve in a container); this script starts them itself.
  local policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && POLICY_CREATED=$policy
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null >/dev/null || rc=$?
  remove_policy
  return $rc
}

install_missing() {
  local pkgs=()
  if ! command -v pg_ctlcluster >/dev/null || [[ ! -x /usr/lib/postgresql/$PG_VERSION/bin/postgres ]]; then
    pkgs+=("postgresql-$PG_VERSION" postgresql-client)
  fi
  if ! command -v rabbitmq-server >/dev/null; then pkgs+=(rabbitmq-server); fi
  if ((${#pkgs[@]})); then apt_install "${pkgs[@]}"; fi
}

# ---------------------------------------------------------------- PostgreSQL
postgres_answers() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }
postgres_down() { ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }
psql_admin() { su postgres -c "psql -qAtX -p $PG_PORT -c \"$1\"" </dev/null; }

start_postgres() {
  install_missing
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$PG_VERSION $PG_CLUSTER"; then
    log "creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER" -p "$PG_PORT" >/dev/null
  fi
  if ! postgres_answers; then
    local t0
    t0=$(now_ms)
    log "starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
    # pg_ctl puts the postmaster in its own session; its output goes to the cluster's log.
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start </dev/null >/dev/null 2>&1 9>&- || true
    mark_started postgres
    wait_until 60 "PostgreSQL on 127.0.0.1:$PG_PORT" postgres_answers ||
      { show_log "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"; return 1; }
    log "PostgreSQL answers ($(took "$t0"))"
  fi
  # A role and a database of the project's own, created once; nothing existing is changed.
  if [[ "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE'")" != 1 ]]; then
    log "creating PostgreSQL role $PG_ROLE (password $PG_ROLE, CREATEDB)"
    psql_admin "CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_ROLE'" >/dev/null
  fi
  if [[ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = 'todos'")" != 1 ]]; then
    log "creating PostgreSQL database todos owned by $PG_ROLE"
    psql_admin "CREATE DATABASE todos OWNER $PG_ROLE" >/dev/null
  fi
}

stop_postgres() {
  if postgres_answers || pg_lsclusters -h 2>/dev/null | grep -q "^$PG_VERSION  *$PG_CLUSTER .* online"; then
    started_here postgres || refuse_stop "PostgreSQL $PG_VERSION/$PG_CLUSTER" || return 1
    local t0
    t0=$(now_ms)
    log "stopping PostgreSQL"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast </dev/null >/dev/null 2>&1 9>&- || true
    wait_until 60 "PostgreSQL to stop" postgres_down
    wait_until 30 "PostgreSQL port $PG_PORT to close" port_closed "$PG_PORT"
    unmark_started postgres
    log "PostgreSQL stopped ($(took "$t0"))"
  fi
}

# ------------------------------------------------------------------ RabbitMQ
rabbitmq_answers() { probe amqp "$AMQP_PORT"; }
rabbitmq_short_name() { echo "${RABBITMQ_NODENAME%@*}"; }
# The Erlang node is registered with epmd from early boot until the VM exits.
rabbitmq_node_alive() {
  command -v epmd >/dev/null || return 1
  epmd -names 2>/dev/null | grep -q "^name $(rabbitmq_short_name) at port "
}
rabbitmq_gone() { port_closed "$AMQP_PORT" && ! rabbitmq_node_alive; }

start_rabbitmq() {
  install_missing
  if rabbitmq_answers; then return 0; fi
  local t0
  t0=$(now_ms)
  if rabbitmq_node_alive; then
    log "RabbitMQ ($RABBITMQ_NODENAME) is booting; waiting"
  else
    log "starting RabbitMQ ($RABBITMQ_NODENAME)"
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS:-} -kernel inet_dist_use_interface {127,0,0,1}" \
      rabbitmq-server -detached </dev/null >"$STATE/rabbitmq-start.log" 2>&1 9>&- || true
    mark_started rabbitmq
  fi
  wait_until 120 "RabbitMQ on 127.0.0.1:$AMQP_PORT" rabbitmq_answers || {
    show_log "$STATE/rabbitmq-start.log"
    show_log "/var/log/rabbitmq/$RABBITMQ_NODENAME.log"
    return 1
  }
  log "RabbitMQ answers ($(took "$t0"))"
}

stop_rabbitmq() {
  if rabbitmq_gone; then return 0; fi
  started_here rabbitmq || refuse_stop "RabbitMQ on port $AMQP_PORT" || return 1
  local t0
  t0=$(now_ms)
  log "stopping RabbitMQ ($RABBITMQ_NODENAME)"
  if ! rabbitmqctl -q stop </dev/null >"$STATE/rabbitmq-stop.log" 2>&1 9>&-; then
    log "rabbitmqctl stop failed: $(tr '\n' ' ' <"$STATE/rabbitmq-stop.log" | cut -c1-300)"
    return 1
  fi
  wait_until 60 "RabbitMQ port $AMQP_PORT to close" port_closed "$AMQP_PORT"
  # Wait for the Erlang VM to exit too, so a following start does not race it.
  wait_until 60 "RabbitMQ node to exit" bash -c "! epmd -names 2>/dev/null | grep -q '^name $(rabbitmq_short_name) at port '"
  unmark_started rabbitmq
  log "RabbitMQ stopped ($(took "$t0"))"
}

# ------------------------------------------------------------------- MongoDB
mongo_kind() {
  if command -v mongod >/dev/null; then echo mongod; else echo secantusdb; fi
}

secantusd_bin() {
  if [[ -x "$MONGO_VENV/bin/secantusd-py" ]]; then echo "$MONGO_VENV/bin/secantusd-py"; return; fi
  command -v secantusd-py || true
}

install_mongo() {
  [[ "$(mongo_kind)" == secantusdb && -z "$(secantusd_bin)" ]] || return 0
  log "pip install secantusdb==$SECANTUS_VERSION"
  if python3 -m pip install -q "secantusdb==$SECANTUS_VERSION" </dev/null >"$STATE/pip-install.log" 2>&1 &&
    hash -r && [[ -n "$(secantusd_bin)" ]]; then
    return 0
  fi
  # A Debian-managed Python refuses global installs (PEP 668): use a venv under $STATE.
  log "global pip install refused ($(grep -m1 -o 'error: [a-z-]*' "$STATE/pip-install.log" || echo "see $STATE/pip-install.log")); using a virtualenv at $MONGO_VENV"
  if ! python3 -m venv "$MONGO_VENV" >/dev/null 2>&1; then
    rm -rf "$MONGO_VENV"
    local ver
    ver="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    apt_install "python3.$(cut -d. -f2 <<<"$ver")-venv" || apt_install python3-venv
    python3 -m venv "$MONGO_VENV"
  fi
  "$MONGO_VENV/bin/pip" install -q "secantusdb==$SECANTUS_VERSION" </dev/null
}

mongo_answers() { probe mongo "$MONGO_PORT"; }

# The pid file names a live server on our port (not a recycled pid).
mongo_pid_alive() {
  local pid
  pid="$(cat "$MONGO_PID" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--port $MONGO_PORT "
}

start_mongo() {
  install_mongo
  mkdir -p "$MONGO_DIR"
  if mongo_answers; then return 0; fi
  local t0
  t0=$(now_ms)
  if port_open "$MONGO_PORT" || mongo_pid_alive; then
    log "MongoDB on port $MONGO_PORT is starting; waiting"
  elif [[ "$(mongo_kind)" == mongod ]]; then
    log "starting mongod with data in $MONGO_DIR"
    mongod --bind_ip 127.0.0.1 --port "$MONGO_PORT" --dbpath "$MONGO_DIR" --fork --logpath "$MONGO_LOG" \
      --logappend --pidfilepath "$MONGO_PID" </dev/null >/dev/null 9>&-
  else
    log "starting secantusd-py with data in $MONGO_DIR, log $MONGO_LOG"
    # Own session, so a test's process group or a terminal's Ctrl-C never reaches it.
    setsid sh -c 'echo $$ >"$0"; exec "$@"' "$MONGO_PID" "$(secantusd_bin)" \
      --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$MONGO_DIR" --standalone \
      </dev/null >>"$MONGO_LOG" 2>&1 9>&- &
  fi
  wait_until 60 "MongoDB on 127.0.0.1:$MONGO_PORT" mongo_answers || { show_log "$MONGO_LOG"; return 1; }
  log "MongoDB answers ($(took "$t0"))"
}

stop_mongo() {
  local pid=""
  if mongo_pid_alive; then
    pid="$(cat "$MONGO_PID")"
  elif port_open "$MONGO_PORT"; then
    refuse_stop "MongoDB on port $MONGO_PORT"
    return 1
  fi
  if [[ -n "$pid" ]]; then
    local t0
    t0=$(now_ms)
    log "stopping MongoDB (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # A clean shutdown closes WiredTiger (checkpoint); force it only if that hangs.
    if ! wait_until 30 "MongoDB (pid $pid) to exit" bash -c "! kill -0 $pid"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "MongoDB stopped ($(took "$t0"))"
  fi
  rm -f "$MONGO_PID"
  wait_until 30 "MongoDB port $MONGO_PORT to close" port_closed "$MONGO_PORT"
}

# -------------------------------------------------------------------- status
status() {
  local rc=0
  if postgres_answers; then echo "postgres  up    $DATABASE_URL"; else echo "postgres  down"; rc=1; fi
  if rabbitmq_answers; then echo "rabbitmq  up    $AMQP_URL ($RABBITMQ_NODENAME)"; else echo "rabbitmq  down"; rc=1; fi
  if mongo_answers; then echo "mongodb   up    $MONGODB_URI ($(mongo_kind))"; else echo "mongodb   down"; rc=1; fi
  return $rc
}

case "${1:-}" in
  up)
    lock
    start_postgres
    start_rabbitmq
    start_mongo
    status
    cat <<EOF

DATABASE_URL=$DATABASE_URL
TEST_ADMIN_DATABASE_URL=$ADMIN_DATABASE_URL
AMQP_URL=$AMQP_URL
MONGODB_URI=$MONGODB_URI
EOF
    ;;
  down)
    lock
    # Each one this script started; what it did not start stays up (and is said so).
    stop_mongo || true
    stop_rabbitmq || true
    stop_postgres || true
    status || true
    ;;
  status) status ;;
  owns)
    # Whether this script started the service (and so may stop it): the outage tests stop
    # only those; scripts/test.sh leaves out the ones that would stop another's.
    case "${2:-}" in
      postgres | rabbitmq) started_here "$2" ;;
      mongo) mongo_pid_alive ;;
      *) echo "usage: $0 owns postgres|rabbitmq|mongo" >&2; exit 2 ;;
    esac
    ;;
  start-postgres) lock; start_postgres ;;
  stop-postgres) lock; stop_postgres ;;
  start-rabbitmq) lock; start_rabbitmq ;;
  stop-rabbitmq) lock; stop_rabbitmq ;;
  start-mongo) lock; start_mongo ;;
  stop-mongo) lock; stop_mongo ;;
  *)
    echo "usage: $0 up|down|status|owns <service>|start-postgres|stop-postgres|start-rabbitmq|stop-rabbitmq|start-mongo|stop-mongo" >&2
    exit 2
    ;;
esac
