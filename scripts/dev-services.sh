#!/usr/bin/env bash
# Local services for the todo CQRS pair, natively on loopback (no Docker needed):
# PostgreSQL 15 and RabbitMQ from Debian's packages, and MongoDB (a real `mongod` on PATH if
# there is one, else the wire-compatible server secantusdb from PyPI).
#
#   scripts/dev-services.sh up|down|status
#   scripts/dev-services.sh start-postgres|stop-postgres|start-rabbitmq|stop-rabbitmq|start-mongo|stop-mongo
#
# `up` installs what is missing, starts what is not running (idempotent), waits until each
# service really answers, and prints the URLs the services' defaults already use.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${DEV_SERVICES_STATE:-$ROOT/.local}"
MONGO_DIR="$STATE/mongo"
MONGO_LOG="$STATE/mongo.log"
MONGO_PID="$STATE/mongo.pid"
SECANTUS_VERSION="0.7.0b3"
PG_VERSION="15"
PG_CLUSTER="main"

POSTGRES_URL="postgres://postgres:postgres@127.0.0.1:5432/todos"
AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
MONGODB_URI="mongodb://127.0.0.1:27017/?maxIdleTimeMS=60000"

# RabbitMQ's node name must resolve; pin it to localhost so a container's odd hostname does
# not matter.
export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-rabbit@localhost}"
export HOME="${HOME:-/root}"

log() { printf '[dev-services] %s\n' "$*" >&2; }

port_open() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && exec 3>&- 3<&-
}

wait_until() { # seconds description command...
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${seconds}s waiting for: $what"
      return 1
    fi
    sleep 0.5
  done
}

APT_UPDATED=0
apt_install() {
  if ((APT_UPDATED == 0)); then
    log "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL
pg_bin() { echo "/usr/lib/postgresql/$PG_VERSION/bin"; }

install_postgres() {
  if ! command -v pg_ctlcluster >/dev/null || [[ ! -x "$(pg_bin)/postgres" ]]; then
    apt_install "postgresql-$PG_VERSION" postgresql-client
  fi
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$PG_VERSION $PG_CLUSTER"; then
    log "creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
    pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >/dev/null
  fi
}

postgres_answers() { pg_isready -q -h 127.0.0.1 -p 5432; }

start_postgres() {
  install_postgres
  if ! postgres_answers; then
    log "starting PostgreSQL $PG_VERSION"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start || true
  fi
  wait_until 60 "PostgreSQL on 127.0.0.1:5432" postgres_answers
  # Password login over TCP for the services and tests; the database command-service uses.
  su postgres -c "psql -qAt -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
  if [[ "$(su postgres -c "psql -qAt -c \"SELECT 1 FROM pg_database WHERE datname = 'todos'\"")" != 1 ]]; then
    su postgres -c "psql -qAt -c 'CREATE DATABASE todos'" >/dev/null
  fi
}

stop_postgres() {
  if postgres_answers; then
    log "stopping PostgreSQL"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop -m fast || true
  fi
  wait_until 60 "PostgreSQL to stop" bash -c "! pg_isready -q -h 127.0.0.1 -p 5432"
}

# ------------------------------------------------------------------ RabbitMQ
install_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null; then
    apt_install rabbitmq-server
    # The package may start a node with its own name; ours is rabbit@localhost.
    if command -v service >/dev/null; then service rabbitmq-server stop >/dev/null 2>&1 || true; fi
  fi
}

rabbitmq_answers() {
  port_open 127.0.0.1 5672 && rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1
}

start_rabbitmq() {
  install_rabbitmq
  if ! port_open 127.0.0.1 5672; then
    log "starting RabbitMQ ($RABBITMQ_NODENAME)"
    # Loopback only: the AMQP listener and the management plugin's, if enabled.
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 rabbitmq-server -detached
  fi
  wait_until 120 "RabbitMQ on 127.0.0.1:5672" rabbitmq_answers
}

stop_rabbitmq() {
  if port_open 127.0.0.1 5672; then
    log "stopping RabbitMQ"
    rabbitmqctl -q stop >/dev/null 2>&1 || true
  fi
  wait_until 60 "RabbitMQ to stop" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null"
  # Wait for the Erlang VM to exit too, so a following start does not race it.
  wait_until 30 "RabbitMQ node to exit" bash -c "! pgrep -x beam.smp >/dev/null"
}

# ------------------------------------------------------------------- MongoDB
mongo_kind() {
  if command -v mongod >/dev/null; then echo mongod; else echo secantusdb; fi
}

install_mongo() {
  if [[ "$(mongo_kind)" == secantusdb ]] && ! command -v secantusd-py >/dev/null; then
    log "pip install secantusdb==$SECANTUS_VERSION"
    python3 -m pip install -q "secantusdb==$SECANTUS_VERSION"
    hash -r
  fi
}

mongo_answers() {
  port_open 127.0.0.1 27017 || return 1
  # A real ping over the wire protocol (pymongo comes with secantusdb; skip if absent).
  if python3 -c 'import pymongo' 2>/dev/null; then
    python3 - <<'PY'
import pymongo
pymongo.MongoClient("mongodb://127.0.0.1:27017/", serverSelectionTimeoutMS=2000).admin.command("ping")
PY
  fi
}

start_mongo() {
  install_mongo
  mkdir -p "$MONGO_DIR"
  if ! port_open 127.0.0.1 27017; then
    log "starting MongoDB ($(mongo_kind)) with data in $MONGO_DIR"
    if [[ "$(mongo_kind)" == mongod ]]; then
      mongod --bind_ip 127.0.0.1 --port 27017 --dbpath "$MONGO_DIR" --fork --logpath "$MONGO_LOG" \
        --pidfilepath "$MONGO_PID" >/dev/null
    else
      local bin
      bin="$(command -v secantusd-py)"
      nohup "$bin" --host 127.0.0.1 --port 27017 --storage-path "$MONGO_DIR" --standalone \
        >>"$MONGO_LOG" 2>&1 </dev/null &
      echo $! >"$MONGO_PID"
    fi
  fi
  wait_until 60 "MongoDB on 127.0.0.1:27017" mongo_answers
}

stop_mongo() {
  if [[ -f "$MONGO_PID" ]]; then
    local pid
    pid="$(cat "$MONGO_PID")"
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping MongoDB (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$MONGO_PID"
  fi
  if port_open 127.0.0.1 27017; then
    # Started by someone else: find the listener.
    pkill -TERM -f 'secantusd-py .*--port 27017' 2>/dev/null || true
    pkill -TERM -f 'mongod .*--port 27017' 2>/dev/null || true
  fi
  wait_until 30 "MongoDB to stop" bash -c "! (exec 3<>/dev/tcp/127.0.0.1/27017) 2>/dev/null"
}

# -------------------------------------------------------------------- status
status() {
  local rc=0
  if postgres_answers; then echo "postgres  up    $POSTGRES_URL"; else echo "postgres  down"; rc=1; fi
  if port_open 127.0.0.1 5672; then echo "rabbitmq  up    $AMQP_URL"; else echo "rabbitmq  down"; rc=1; fi
  if port_open 127.0.0.1 27017; then echo "mongodb   up    $MONGODB_URI ($(mongo_kind))"; else echo "mongodb   down"; rc=1; fi
  return $rc
}

case "${1:-}" in
  up)
    start_postgres
    start_rabbitmq
    start_mongo
    status
    cat <<EOF

DATABASE_URL=$POSTGRES_URL
AMQP_URL=$AMQP_URL
MONGODB_URI=$MONGODB_URI
EOF
    ;;
  down)
    stop_mongo
    stop_rabbitmq
    stop_postgres
    status || true
    ;;
  status) status ;;
  start-postgres) start_postgres ;;
  stop-postgres) stop_postgres ;;
  start-rabbitmq) start_rabbitmq ;;
  stop-rabbitmq) stop_rabbitmq ;;
  start-mongo) start_mongo ;;
  stop-mongo) stop_mongo ;;
  *)
    echo "usage: $0 up|down|status|start-postgres|stop-postgres|start-rabbitmq|stop-rabbitmq|start-mongo|stop-mongo" >&2
    exit 2
    ;;
esac
