#!/usr/bin/env bash
# An older pair and the pair as it is now, side by side in every mix while writes go on: an old
# command-service with old and new query-services on one queue, the new command-service with
# both, the new one with the old reader alone (a rolling upgrade in the wrong order), then the
# old reader replaced and its dead letters redriven. Run twice by scripts/test.sh: against the
# pair of contract version 1 (before due dates: its reader dead-letters newer events), and
# against the pair of version 2 (before who, why and erasure: its reader reads newer events as
# its own, MIXED_OLD_READS_NEWER=1, so nothing may be dead-lettered).
# Prints one table and exits 1 if something does not hold: nothing lost, nothing a newer reader
# can apply left dead-lettered, the read model equal to the log. The program is
# scripts/bench/src/bin/mixed.rs.
#
#   scripts/mixed_versions.sh                # the old pair: MIXED_OLD_REF (below)
#   MIXED_OLD_REF=<commit> scripts/mixed_versions.sh
#   MIXED_OLD_REF=853b16c MIXED_OLD_READS_NEWER=1 scripts/mixed_versions.sh   # version 2
#
# It builds the old pair from git (a worktree in target/mixed/old-src, binaries copied to
# target/mixed/old-bin) with the same target directory, so only the workspace's own crates
# build again; then the new debug binaries again. It needs the repository's history (a shallow
# clone lacks the old commit: `git fetch --unshallow`).
# What it changes: it brings the local services up (scripts/dev-services.sh up); it creates a
# PostgreSQL and a MongoDB database mixed_<run> and RabbitMQ names mixed.<run>* (removed at
# the end), and runs the services on MIXED_PORT (5501) and the next two ports. Logs stay in
# target/mixed/<run>/; each old pair's binaries in target/mixed/old-bin-<commit>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The last commit whose contract is version 1 (before due dates).
OLD_REF=${MIXED_OLD_REF:-47aa31f}
bash scripts/dev-services.sh up >&2

if ! git cat-file -e "$OLD_REF^{commit}" 2>/dev/null; then
  echo "[mixed] commit $OLD_REF is not in this clone (a shallow one?): git fetch --unshallow" >&2
  exit 2
fi
old_src=target/mixed/old-src
old_bin=target/mixed/old-bin-$(git rev-parse --short=12 "$OLD_REF")
mkdir -p target/mixed
if [[ ! -x $old_bin/command-service || ! -x $old_bin/query-service || "$(cat "$old_bin/ref" 2>/dev/null)" != "$(git rev-parse "$OLD_REF")" ]]; then
  rm -rf "$old_src"
  git worktree prune
  git worktree add --detach --force "$old_src" "$OLD_REF" >&2
  echo "[mixed] building the old pair ($OLD_REF)" >&2
  (cd "$old_src" && CARGO_TARGET_DIR="$PWD/../../../target" cargo build --quiet -p command-service -p query-service --bins)
  mkdir -p "$old_bin"
  cp target/debug/command-service target/debug/query-service "$old_bin/"
  git rev-parse "$OLD_REF" >"$old_bin/ref"
  git worktree remove --force "$old_src"
fi
# The new pair (again: the old build put its binaries where the new ones were).
cargo build --quiet -p command-service -p query-service -p bench --bins
MIXED_OLD_BIN_DIR=$old_bin SERVICE_BIN_DIR=target/debug exec target/debug/mixed "$@"
