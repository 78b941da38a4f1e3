#!/usr/bin/env bash
# Validates the deployment artifacts offline (run by .ci/run):
#  - Kubernetes manifests against the Kubernetes JSON schemas (kubernetes-validate,
#    strict: unknown fields fail);
#  - the Grafana dashboard parses and uses only metric families docs/operations.md lists;
#  - docker-compose.yml parses and runs Tessera read-only next to Redis;
#  - the systemd unit passes `systemd-analyze verify` (when systemd-analyze exists).
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

compose = yaml.safe_load(open("deploy/docker-compose.yml"))
services = compose.get("services", {})
for name in ("tessera", "redis"):
    if name not in services:
        sys.exit(f"deploy/docker-compose.yml: no service {name}")
t = services["tessera"]
if t.get("read_only") is not True or "ALL" not in t.get("cap_drop", []):
    sys.exit("deploy/docker-compose.yml: tessera must run read_only with cap_drop ALL")
print("deploy/validate.sh: docker-compose.yml: tessera (read-only, no capabilities) + redis")
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
