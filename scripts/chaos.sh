#!/usr/bin/env bash
# The pair under a steady write load while RabbitMQ, MongoDB and PostgreSQL are stopped and
# started and each service is SIGKILLed and restarted, one fault at a time; then the proof that
# nothing accepted was lost, nothing applied twice or backwards, and the read model equals the
# log (`query-service verify`). Prints one table; exits 1 if a must-be-zero is not zero.
#
#   scripts/chaos.sh                         # 5 minutes at 100 writes/s
#   scripts/chaos.sh --minutes 15 --rate 200 # longer: the cycle of faults repeats
#   scripts/chaos.sh --keep                  # keep the run's databases, queue and exchange
#
# What it changes: it brings the local services up (scripts/dev-services.sh up) and then stops
# and starts them (run it where nothing else uses them); it creates a PostgreSQL and a MongoDB
# database named chaos_<run> and RabbitMQ names chaos.<run>*, removed at the end unless --keep;
# it runs the services on CHAOS_PORT (5301) and the next port. Logs stay in target/chaos/<run>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/dev-services.sh up >&2
cargo build --release --quiet -p command-service -p query-service -p bench --bins
exec target/release/chaos "$@"
