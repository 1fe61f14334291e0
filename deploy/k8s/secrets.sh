#!/usr/bin/env bash
# Makes the five Secrets deploy/k8s/base reads, in one namespace: each store's (postgres,
# rabbitmq, mongo: the passwords its users are made with) and each service's (command-service,
# query-service: the URLs naming those users and passwords, and the tokens). Run it before
# `kubectl apply -k deploy/k8s/overlays/local`; it lives outside the folders one applies, and
# nothing in them holds a Secret.
#
#   deploy/k8s/secrets.sh [--namespace todo-cqrs] [--open-writes] [--print]
#
#   --open-writes  empty write and feed tokens: writes and GET /events are open, as in
#                  docker-compose.yml's demo (the live page and scripts/demo.sh then write
#                  without a token). For a local cluster only.
#   --print        print the Secrets as YAML instead of making them (no cluster needed).
#
# A Secret that exists is kept as it is, and its values are used for the others (a store's
# volume is initialised once, with the passwords it had then): running it again changes
# nothing. Every password and token is 48 random hex digits unless given by variable:
#   POSTGRES_SUPERUSER_PASSWORD TODO_PASSWORD
#   RABBITMQ_COMMAND_SERVICE_PASSWORD RABBITMQ_QUERY_SERVICE_PASSWORD RABBITMQ_ADMIN_PASSWORD
#   MONGO_ROOT_PASSWORD MONGO_QUERY_SERVICE_PASSWORD MONGO_OPERATOR_PASSWORD
#   WRITE_TOKENS FEED_TOKEN
# RABBITMQ_ADMIN_PASSWORD (the operator's `admin`, management UI) and MONGO_OPERATOR_PASSWORD
# (the operator's read-only `operator`) are put in only when given. Passwords go into URLs
# unescaped, so each is 16 or more of A-Z a-z 0-9 . _ ~ -. Values reach kubectl as files in a
# private temporary folder, never on a command line. KUBECTL names the kubectl to use.
set -euo pipefail

NAMESPACE=todo-cqrs
OPEN=0
PRINT=0
while (($#)); do
  case $1 in
    --namespace | -n) NAMESPACE=$2; shift 2 ;;
    --open-writes) OPEN=1; shift ;;
    --print) PRINT=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "secrets.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
KUBECTL=${KUBECTL:-kubectl}
WORK=$(mktemp -d)
chmod 700 "$WORK"
trap 'rm -rf "$WORK"' EXIT

exists() { # secret
  ((PRINT == 0)) && "$KUBECTL" -n "$NAMESPACE" get secret "$1" >/dev/null 2>&1
}
existing() { # secret key: the value the Secret holds, when it exists and has the key
  exists "$1" || return 0
  "$KUBECTL" -n "$NAMESPACE" get secret "$1" -o "jsonpath={.data.$2}" | base64 -d
}
random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
# value VARIABLE SECRET KEY [optional]: the variable's value, else the existing Secret's, else
# a new one (none for an optional one).
value() {
  local v=${!1:-}
  [[ -n $v ]] || v=$(existing "$2" "$3")
  [[ -n $v || ${4:-} == optional ]] || v=$(random)
  if [[ -n $v && ! $v =~ ^[A-Za-z0-9._~-]{16,}$ ]]; then
    echo "secrets.sh: $1 ($2/$3) must be 16 or more of A-Z a-z 0-9 . _ ~ -" >&2
    exit 1
  fi
  printf '%s' "$v"
}
put() { # secret key value: one key of a Secret to make
  mkdir -p "$WORK/$1"
  printf '%s' "$3" >"$WORK/$1/$2"
}
make() { # secret: makes it from what put gave it, unless it exists
  if exists "$1"; then
    echo "[secrets] $NAMESPACE/$1 exists: kept as it is" >&2
    return
  fi
  local yaml
  yaml=$("$KUBECTL" create secret generic "$1" --namespace "$NAMESPACE" \
    --from-file="$WORK/$1/" --dry-run=client -o yaml |
    "$KUBECTL" label --local -f - -o yaml \
      "app.kubernetes.io/name=$1" app.kubernetes.io/part-of=todo-cqrs)
  if ((PRINT)); then
    printf -- '---\n%s\n' "$yaml"
  else
    printf '%s\n' "$yaml" | "$KUBECTL" create -f - >/dev/null
    echo "[secrets] $NAMESPACE/$1 made" >&2
  fi
}

postgres_superuser=$(value POSTGRES_SUPERUSER_PASSWORD postgres superuser-password)
todo=$(value TODO_PASSWORD postgres todo-password)
rabbitmq_command=$(value RABBITMQ_COMMAND_SERVICE_PASSWORD rabbitmq command-service-password)
rabbitmq_query=$(value RABBITMQ_QUERY_SERVICE_PASSWORD rabbitmq query-service-password)
rabbitmq_admin=$(value RABBITMQ_ADMIN_PASSWORD rabbitmq admin-password optional)
mongo_root=$(value MONGO_ROOT_PASSWORD mongo root-password)
mongo_query=$(value MONGO_QUERY_SERVICE_PASSWORD mongo query-service-password)
mongo_operator=$(value MONGO_OPERATOR_PASSWORD mongo operator-password optional)
# The feed token query-service sends is one of command-service's feed tokens.
if ((OPEN)); then
  write_tokens='' feed_token=''
else
  write_tokens=${WRITE_TOKENS:-$(existing command-service write-tokens)}
  write_tokens=${write_tokens:-$(random)}
  feed_token=${FEED_TOKEN:-$(existing query-service feed-token)}
  feed_token=${feed_token:-$(existing command-service feed-tokens | cut -d, -f1)}
  feed_token=${feed_token:-$(random)}
fi

# PostgreSQL: the superuser (the image's `postgres`, for operators) and role `todo`'s password.
put postgres superuser-password "$postgres_superuser"
put postgres todo-password "$todo"
make postgres
# RabbitMQ: the services' users' passwords (put into definitions.json at every start).
put rabbitmq command-service-password "$rabbitmq_command"
put rabbitmq query-service-password "$rabbitmq_query"
[[ -z $rabbitmq_admin ]] || put rabbitmq admin-password "$rabbitmq_admin"
make rabbitmq
# MongoDB: the root user (runs the init scripts) and user `query-service`'s password.
put mongo root-password "$mongo_root"
put mongo query-service-password "$mongo_query"
[[ -z $mongo_operator ]] || put mongo operator-password "$mongo_operator"
make mongo
# command-service: its role and broker user, the tokens that may write and read the log.
put command-service database-url "postgres://todo:$todo@postgres:5432/todos"
put command-service amqp-url "amqp://command-service:$rabbitmq_command@rabbitmq:5672/todo"
put command-service write-tokens "$write_tokens"
put command-service feed-tokens "$feed_token"
make command-service
# query-service: its MongoDB user and broker user, and the feed token replay and verify send.
put query-service mongodb-uri \
  "mongodb://query-service:$mongo_query@mongo:27017/todo_read?authSource=todo_read&maxIdleTimeMS=60000"
put query-service amqp-url "amqp://query-service:$rabbitmq_query@rabbitmq:5672/todo"
put query-service feed-token "$feed_token"
make query-service

if ((PRINT == 0)); then
  if ((OPEN)); then
    echo "[secrets] writes and GET /events are open (--open-writes)" >&2
  else
    echo "[secrets] the write token: $KUBECTL -n $NAMESPACE get secret command-service -o jsonpath='{.data.write-tokens}' | base64 -d" >&2
  fi
fi
