#!/usr/bin/env bash
# Runs, as written, every command the READMEs show that is safe to run against the local
# services and a running pair (reads: a `curl` without a method, a body or an upload,
# `dev-services.sh status`, `cargo nextest list`, `rabbitmqctl list_*`), and fails if one fails
# (curl through a curlrc of its own that adds --fail: an error status fails too). The
# walkthrough is run by scripts/demo.sh; what writes, stops, deletes or needs Docker or a
# cluster is counted as not run. scripts/test.sh runs this with the pair up. Changes nothing on
# the machine but .local/ (git-ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mapfile -t COMMANDS < <(python3 - <<'PY'
import re, glob
SAFE = [
    r"curl (?!.*(-X|--request|-d |--data|--json|-F |--form|-T |--upload))\S.*",
    r"scripts/dev-services\.sh status",
    r"cargo nextest list --workspace",
    r"(RABBITMQ_NODENAME=\S+ )?rabbitmqctl (-p \S+ )?list_\w+.*",
]
seen = set()
for path in ["README.md"] + sorted(glob.glob("*/README.md")):
    text = open(path).read()
    fenced = re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S)
    candidates = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for block in fenced:
        if "\ncall " in "\n" + block:  # the walkthrough: scripts/demo.sh runs it
            continue
        candidates += [l.split("  #")[0].strip() for l in block.splitlines()]
    for c in candidates:
        c = c.strip()
        if not c or c.startswith("#") or c in seen:
            continue
        if not re.match(r"(curl|scripts/|cargo|docker|kubectl|rabbitmq|RABBITMQ_NODENAME=|query-service |command-service |bash )", c):
            continue
        seen.add(c)
        safe = any(re.fullmatch(p, c) for p in SAFE)
        print(("run\t" if safe else "skip\t") + path + "\t" + c)
PY
)

mkdir -p .local/readme-curl
printf -- '--fail\n--show-error\n' >.local/readme-curl/.curlrc
export CURL_HOME="$PWD/.local/readme-curl"
ran=0
skipped=0
for line in "${COMMANDS[@]}"; do
  IFS=$'\t' read -r what path command <<<"$line"
  if [[ $what == skip ]]; then
    skipped=$((skipped + 1))
    continue
  fi
  echo "[readme] $path: \$ $command"
  if ! timeout 120 bash -c "$command" >.local/readme-command.out 2>&1; then
    echo "[readme] FAILED ($path): $command" >&2
    tail -n 5 .local/readme-command.out >&2
    exit 1
  fi
  ran=$((ran + 1))
done
((ran > 0)) || { echo "[readme] no command to run: the extraction is broken" >&2; exit 1; }
echo "[readme] $ran commands the READMEs show ran as written; $skipped not run (they write, stop, delete, or need Docker or a cluster)"
