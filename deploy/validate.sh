#!/usr/bin/env bash
# Validates the deployment artifacts offline (run by .ci/run):
#  - Kubernetes manifests against the Kubernetes JSON schemas (kubernetes-validate,
#    strict: unknown fields fail);
#  - the Grafana dashboard parses and uses only metric families docs/operations.md lists;
#  - kustomization.yaml lists every manifest;
#  - docker-compose.yml parses and runs Tessera (built from deploy/Dockerfile) read-only
#    next to Redis 7;
#  - the systemd unit passes `systemd-analyze verify` (when systemd-analyze exists);
#  - the dashboard's queries parse as PromQL (when promtool exists; `PROMTOOL=path`).
# The Tessera configs inside these files are checked by tests/deploy_samples.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.30.0

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install -q kubernetes-validate
fi

manifests=()
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
kubernetes-validate --strict -k "$K8S_VERSION" "${manifests[@]}"
echo "deploy/validate.sh: ${#manifests[@]} Kubernetes manifests valid against $K8S_VERSION (strict)"

python3 - <<'PY'
import glob, json, re, sys

import yaml

ops = open("docs/operations.md").read()
section = ops.split("## Metrics", 1)[1].split("\n## ", 1)[0]
families = set(re.findall(r"`(tessera_[a-z0-9_]+)`", section))
if not families:
    sys.exit("docs/operations.md has no metric families under ## Metrics")
for path in glob.glob("deploy/grafana/*.json"):
    dash = json.load(open(path))
    used = set()
    def walk(node):
        if isinstance(node, dict):
            expr = node.get("expr")
            if isinstance(expr, str):
                used.update(re.findall(r"tessera_[a-z0-9_]+", expr))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(dash)
    unknown = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used} - families
    if not used or unknown:
        sys.exit(f"{path}: metrics not in docs/operations.md: {sorted(unknown)}")
    print(f"deploy/validate.sh: {path}: {len(used)} metric names, all documented")

kust = yaml.safe_load(open("deploy/kubernetes/kustomization.yaml"))
listed = set(kust.get("resources", []))
files = {p.split("/")[-1] for p in glob.glob("deploy/kubernetes/*.yaml")} - {"kustomization.yaml"}
if listed != files:
    sys.exit(f"deploy/kubernetes/kustomization.yaml: resources {sorted(listed)} != files {sorted(files)}")
print(f"deploy/validate.sh: kustomization.yaml lists all {len(files)} manifests")

compose = yaml.safe_load(open("deploy/docker-compose.yml"))
services = compose.get("services", {})
for name in ("tessera", "redis"):
    if name not in services:
        sys.exit(f"deploy/docker-compose.yml: no service {name}")
t = services["tessera"]
if t.get("build", {}).get("dockerfile") != "deploy/Dockerfile":
    sys.exit("deploy/docker-compose.yml: tessera must be built from deploy/Dockerfile")
if not str(services["redis"].get("image", "")).startswith("redis:7"):
    sys.exit("deploy/docker-compose.yml: redis must be redis:7 (Tessera needs 7.0 or newer)")
if t.get("read_only") is not True or "ALL" not in t.get("cap_drop", []):
    sys.exit("deploy/docker-compose.yml: tessera must run read_only with cap_drop ALL")
if str(t.get("user", "0")).split(":")[0] in ("0", "root"):
    sys.exit("deploy/docker-compose.yml: tessera must run as a non-root user")
print("deploy/validate.sh: docker-compose.yml: tessera (built, read-only, non-root, no capabilities) + redis:7")
PY

if command -v systemd-analyze >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # verify wants ExecStart to exist; the unit is otherwise checked as shipped.
  sed 's#/usr/local/bin/tessera#/bin/true#' deploy/systemd/tessera.service > "$tmp/tessera.service"
  out=$(systemd-analyze verify "$tmp/tessera.service" 2>&1)
  if [ -n "$out" ]; then
    echo "$out"
    exit 1
  fi
  echo "deploy/validate.sh: systemd unit verified ($(systemd-analyze security --offline=yes "$tmp/tessera.service" 2>/dev/null | tail -1 | sed 's/.*level for [^:]*: //'))"
else
  echo "deploy/validate.sh: systemd-analyze not installed; systemd unit not verified" >&2
fi

# PromQL syntax of every dashboard query, as recording rules (promtool has no bare
# expression check). Optional: promtool comes with Prometheus, which CI does not install.
PROMTOOL=${PROMTOOL:-promtool}
if command -v "$PROMTOOL" >/dev/null 2>&1; then
  rules=$(mktemp)
  python3 - "$rules" <<'PY'
import glob, json, sys
exprs = []
def walk(node):
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            exprs.append(node["expr"].replace("$instance", ".*"))
        for v in node.values():
            walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)
for path in sorted(glob.glob("deploy/grafana/*.json")):
    walk(json.load(open(path)))
rules = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[1], "w"))
PY
  "$PROMTOOL" check rules "$rules" >/dev/null || { "$PROMTOOL" check rules "$rules"; rm -f "$rules"; exit 1; }
  rm -f "$rules"
  echo "deploy/validate.sh: dashboard queries parse as PromQL ($("$PROMTOOL" --version 2>&1 | head -1))"
else
  echo "deploy/validate.sh: promtool not installed; dashboard PromQL not parsed" >&2
fi
