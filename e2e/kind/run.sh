#!/usr/bin/env bash
# End to end on kind (needs Docker, kind, kubectl, helm, cargo): builds both images, creates a
# three-node cluster (halls a, b, c), starts nats-server, installs the chart, applies
# config/samples, and runs the e2e test binary (e2e/kind-tests). Every step fails loudly.
# KEEP_CLUSTER=1 keeps the cluster for inspection.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cluster="${CLUSTER_NAME:-qis-e2e}"
tag="e2e-$(git rev-parse --short HEAD 2>/dev/null || echo local)"

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 1; }
done

step() { echo; echo "=== $*"; }
cleanup() {
  local code=$?
  if [ "$code" -ne 0 ]; then
    echo "e2e failed (exit $code); state of the cluster:" >&2
    kubectl get qsw,qsub,deploy,pods -A >&2 || true
    kubectl -n qis-system logs deploy/qis-operator --tail=100 >&2 || true
  fi
  if [ -z "${KEEP_CLUSTER:-}" ]; then kind delete cluster --name "$cluster" || true; fi
}
trap cleanup EXIT

step "images ($tag)"
docker buildx build --load -f operator/Dockerfile -t "qis-operator:$tag" .
docker buildx build --load -f agent/Dockerfile -t "qis-agent:$tag" .

step "kind cluster $cluster"
kind create cluster --name "$cluster" --config e2e/kind/kind-config.yaml --wait 180s
kind load docker-image --name "$cluster" "qis-operator:$tag" "qis-agent:$tag"

step "nats-server with JetStream"
kubectl apply -f e2e/kind/nats.yaml
kubectl -n nats rollout status deploy/nats --timeout=180s

step "helm install"
helm install qis-operator charts/qis-operator -n qis-system --create-namespace --wait --timeout 180s \
  --set image.repository=qis-operator --set image.tag="$tag" --set image.pullPolicy=Never \
  --set agent.image="qis-agent:$tag" --set nats.url=nats://nats.nats:4222

step "config/samples"
kubectl apply -k config/samples
kubectl -n factory patch qsw campus --type merge -p '{"spec":{"agent":{"imagePullPolicy":"Never"}}}'

step "e2e tests"
kubectl -n nats port-forward svc/nats 14222:4222 >/dev/null 2>&1 &
pf=$!
trap 'kill $pf 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 1 50); do (echo >/dev/tcp/127.0.0.1/14222) 2>/dev/null && break; sleep 0.2; done
# The halls' agent intakes, as a device on each hall would post to them.
for hall in hall-a hall-b; do
  kubectl -n factory rollout status "deploy/campus-agent-$hall" --timeout=180s
done
kubectl -n factory port-forward deploy/campus-agent-hall-a 18080:8080 >/dev/null 2>&1 &
pfa=$!
kubectl -n factory port-forward deploy/campus-agent-hall-b 18081:8080 >/dev/null 2>&1 &
pfb=$!
trap 'kill $pf $pfa $pfb 2>/dev/null || true; cleanup' EXIT
for port in 18080 18081; do
  for _ in $(seq 1 50); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done
done
QIS_E2E_NATS_URL=nats://127.0.0.1:14222 QIS_E2E_INTAKE_HALL_A=127.0.0.1:18080 \
  QIS_E2E_INTAKE_HALL_B=127.0.0.1:18081 cargo run --locked -p qis-e2e-kind
echo "e2e passed"
