#!/usr/bin/env bash
# Validates deploy/ offline (part of the test command, deploy/local/test.sh):
# - every YAML file under deploy/ and docker-compose.yml parses;
# - the Kubernetes manifests validate against the Kubernetes schemas
#   (kubernetes-validate --strict, schemas bundled; installed by deploy/local/setup.sh);
# - the Grafana dashboard is JSON and queries only series regua records;
# - KEDA ScaledObjects validate against deploy/schemas/keda-scaledobject.json;
# - every consumer a ScaledObject names is a channel worker's (per accounts.conf);
# - the NATS cluster configuration is accepted by `nats-server -t`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${REGUA_TOOLS:-/opt/regua-tools}
py="$tools/bin/python"
[ -x "$py" ] || { echo "validate: $tools is missing; run deploy/local/setup.sh" >&2; exit 1; }

"$py" - <<'PY'
import glob, json, sys, yaml, jsonschema, re

files = sorted(glob.glob("deploy/**/*.yaml", recursive=True) + glob.glob("deploy/**/*.yml", recursive=True)) + ["docker-compose.yml"]
docs = {}
for f in files:
    try:
        docs[f] = [d for d in yaml.safe_load_all(open(f)) if d is not None]
    except yaml.YAMLError as e:
        sys.exit(f"validate: {f} does not parse: {e}")
print(f"validate: {len(files)} YAML files parse")

compose = docs["docker-compose.yml"][0]
for name, svc in compose["services"].items():
    if "image" not in svc and "build" not in svc:
        sys.exit(f"validate: docker-compose.yml service {name} has no image or build")

schema = json.load(open("deploy/schemas/keda-scaledobject.json"))
# The consumers the dispatch user may pull (deploy/nats/accounts.conf).
accounts = open("deploy/nats/accounts.conf").read()
known = set(re.findall(r"\$JS\.API\.CONSUMER\.MSG\.NEXT\.REGUA_CMD\.([a-z-]+)", accounts))
n = 0
for f, ds in docs.items():
    for d in ds:
        if isinstance(d, dict) and d.get("kind") == "ScaledObject":
            try:
                jsonschema.validate(d, schema)
            except jsonschema.ValidationError as e:
                sys.exit(f"validate: {f} {d['metadata']['name']}: {e.message} at {list(e.absolute_path)}")
            for t in d["spec"]["triggers"]:
                m = t["metadata"]
                if m.get("consumer") not in known or m.get("stream") != "REGUA_CMD":
                    sys.exit(f"validate: {f}: {m.get('stream')}/{m.get('consumer')} is not a regua consumer")
            n += 1
print(f"validate: {n} KEDA ScaledObjects match their schema")

# The Grafana dashboard: JSON, and every series it queries is one regua records.
names = set(re.findall(r'"(regua_[a-z0-9_]+)"', open("crates/platform/src/metrics.rs").read()))
dash = json.load(open("deploy/grafana/regua.json"))
queried = set()
for p in dash["panels"]:
    for t in p.get("targets", []):
        for m in re.findall(r"regua_[a-z0-9_]+", t["expr"]):
            queried.add(re.sub(r"_(bucket|count|sum)$", "", m))
unknown = sorted(q for q in queried if q not in names)
if unknown:
    sys.exit(f"validate: deploy/grafana/regua.json queries series regua does not record: {unknown}")
print(f"validate: the Grafana dashboard queries {len(queried)} series, all recorded by regua")
PY

k8s=$(ls deploy/k8s/*.yaml)
"$tools/bin/kubernetes-validate" --strict --quiet $k8s 2>&1 | grep -v "Couldn't find schema for kind ScaledObject" || true
# kubernetes-validate exits non-zero on any invalid resource; re-run for the status.
"$tools/bin/kubernetes-validate" --strict --quiet --no-warn $k8s >/dev/null
echo "validate: Kubernetes manifests match the Kubernetes $("$tools/bin/kubernetes-validate" --help | sed -n 's/.*Defaults to \([0-9.]*\).*/\1/p' | head -n 1) schemas"

# The NATS config as deployed, with stand-in passwords.
env -i PATH="$PATH" NATS_SERVER_NAME=nats-0 NATS_SYS_PASSWORD=x \
  REGUA_NATS_PROVISIONER_PASSWORD=x REGUA_NATS_INTAKE_PASSWORD=x REGUA_NATS_SCHEDULER_PASSWORD=x \
  REGUA_NATS_DISPATCH_PASSWORD=x REGUA_NATS_RECONCILE_PASSWORD=x REGUA_NATS_INTEGRATOR_PASSWORD=x \
  REGUA_NATS_OPERATOR_PASSWORD=x \
  nats-server -c deploy/nats/nats-server.conf -t
