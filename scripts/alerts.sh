#!/usr/bin/env bash
# The Prometheus alert rules and dashboard of deploy/prometheus/, checked by Prometheus's own
# promtool: `promtool check rules` on the rules, `promtool test rules` on their unit tests
# (deploy/prometheus/alerts_test.yml: each alert fires when it must and not otherwise), and
# every PromQL expression of the dashboard parsed the same way (as recording rules of a file
# written to target/). scripts/test.sh runs it. Which metrics the rules and the dashboard name,
# and that the services export each one: query-service's test
# observability::every_metric_the_alerts_and_the_dashboard_name_is_exported.
#
# What it changes: it downloads Debian's prometheus package (apt-get download; needs
# `apt-get update` to have run once, which it does if the package is unknown) and unpacks
# promtool alone into target/tools/prometheus/ (dpkg -x: nothing is installed or started).
# PROMTOOL=/path/to/promtool uses that one instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tools=target/tools/prometheus
promtool=${PROMTOOL:-$PWD/$tools/usr/bin/promtool}
if [[ ! -x $promtool ]]; then
  echo "[alerts] fetching promtool (Debian's prometheus package, unpacked into $tools)" >&2
  mkdir -p "$tools/deb"
  if [[ $(id -u) == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  if ! apt-cache show prometheus >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update -qq
  fi
  (cd "$tools/deb" && rm -f ./*.deb && apt-get download prometheus 2>/dev/null)
  dpkg -x "$tools"/deb/prometheus_*.deb "$tools"
  rm -rf "$tools/deb"
fi
"$promtool" --version 2>&1 | head -n 1

"$promtool" check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && "$promtool" test rules alerts_test.yml)

# The dashboard's expressions, each as a recording rule, for promtool to parse.
mkdir -p target/tools
exprs=target/tools/dashboard-expressions.yml
python3 - deploy/prometheus/dashboard.json "$exprs" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
rules = []
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        rules.append({"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": target["expr"]})
if not rules:
    sys.exit("deploy/prometheus/dashboard.json has no expressions")
# JSON is YAML: promtool reads it as a rules file.
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"), indent=1)
print(f"[alerts] {len(rules)} dashboard expressions")
PY
"$promtool" check rules "$exprs"
echo "[alerts] rules, their unit tests and the dashboard's expressions: ok"
