#!/usr/bin/env bash
# The main command: the whole loop on this machine, no Docker, no cluster.
#
#   scripts/demo.sh               run until Ctrl-C, refreshing `kubectl get qsw,qsub`
#   scripts/demo.sh --rounds 8    stop after 8 rounds of outcomes
#   scripts/demo.sh --check       8 rounds, then fail unless bearing wear reached consensus
#
# It starts a real nats-server (JetStream); a real Kubernetes control plane (etcd,
# kube-apiserver, controller manager and scheduler: scripts/controlplane.sh builds it once,
# ~10 min cold); the node agent with three tainted edge nodes, one per hall, whose kubelet role
# runs the agent pods as local qis-agent processes under their ServiceAccounts; and the real
# operator under its ServiceAccount and the RBAC the chart renders. It applies config/samples (a
# factory campus: three halls, bearing-wear, HVAC and maintenance subjects), then feeds simulated
# site outcomes: bearing wear starts at hall-a and hall-b, hall-c stays normal. Everything is
# stopped and removed on exit (logs are kept on failure).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

rounds=0
check=false
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --check) check=true; rounds="${rounds/#0/8}"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

bash scripts/install-tools.sh >/dev/null
export PATH="$root/.tools/bin:$root/.tools/venv/bin:$PATH"
echo "building..."
cargo build -q --bins --locked
bin="$root/target/debug"
cp_bin="$(bash scripts/controlplane.sh)"

work="$(mktemp -d /tmp/qis-demo.XXXXXX)"
# Long-running processes, in start order; stopped in reverse.
pids=()
# The control plane and the node agent read their stdin from a fifo whose only writer is this
# shell (fd 3 and fd 4), and stop when it closes: even if this shell is killed without running
# its trap. No other process may inherit those fds (hence `3>&- 4>&-` on every command below).
mkfifo "$work/cp.in" "$work/nodeagent.in"
exec 3<>"$work/cp.in"

stop() { # stop PID: SIGTERM, SIGKILL after 20 s
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local code=$? i p cwd
  trap '' INT TERM
  # The operator first, then the node agent (which kills its pods' processes), the control
  # plane, nats-server.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    if [ "${pids[i]}" = "${nodeagent_pid:-}" ]; then
      # The node agent stops on SIGTERM or when its stdin closes: both.
      kill -TERM "${pids[i]}" 2>/dev/null || true
      exec 4>&-
    fi
    stop "${pids[i]}"
  done
  exec 3>&- 4>&-
  # Pod processes lead their own process groups: should the node agent have died without
  # killing them, find them by their working directory (under $work/pods).
  for p in /proc/[0-9]*; do
    cwd="$(readlink "$p/cwd" 2>/dev/null)" || continue
    case "$cwd" in "$work"/*) kill -KILL "${p#/proc/}" 2>/dev/null || true ;; esac
  done
  if [ "$code" -ne 0 ] && [ "$code" -ne 130 ]; then
    echo "logs kept in $work" >&2
    tail -n 20 "$work/operator.log" "$work/nodeagent.log" "$work/cp/logs/kube-apiserver.log" >&2 2>/dev/null || true
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 0.3
  done
}
wait_line() { # wait_line SECONDS DESCRIPTION PID FILE PATTERN: the first line of FILE matching PATTERN
  local deadline=$((SECONDS + $1)) what="$2" pid="$3" file="$4" pattern="$5" line
  until line="$(grep -m1 -- "$pattern" "$file" 2>/dev/null)"; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "$what exited before it was ready" >&2; return 1; fi
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $what" >&2; return 1; fi
    sleep 0.3
  done
  printf '%s\n' "$line"
}
field() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

nats_port="$(free_port)"
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/js" >"$work/nats.log" 2>&1 3>&- 4>&- &
pids+=($!)

echo "starting the control plane (logs in $work/cp/logs)"
"$cp_bin" up --dir "$work/cp" <"$work/cp.in" >"$work/cp.out" 2>"$work/cp.err" 3>&- 4>&- &
pids+=($!)
if ! ready_line="$(wait_line 180 "the control plane" "${pids[-1]}" "$work/cp.out" '"kubeconfig"')"; then
  tail -n 20 "$work/cp.err" >&2 || true
  exit 1
fi
export KUBECONFIG
KUBECONFIG="$(field "$ready_line" kubeconfig)"
server="$(field "$ready_line" server)"
ca="$(field "$ready_line" ca)"

kubectl apply --server-side -f crds/qis.dev_qisswarms.yaml -f crds/qis.dev_qissubjects.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/qisswarms.qis.dev crd/qissubjects.qis.dev >/dev/null

# The operator as its own ServiceAccount, under the chart's RBAC.
kubectl create namespace qis-system >/dev/null
helm template qis-operator charts/qis-operator -n qis-system \
  --show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml |
  kubectl apply --server-side -f - >/dev/null
account="$(kubectl get serviceaccounts -n qis-system -l app.kubernetes.io/instance=qis-operator -o jsonpath='{.items[0].metadata.name}')"
token="$(kubectl create token "$account" -n qis-system --duration=24h)"
(
  umask 077
  cat >"$work/operator.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: qis
  cluster:
    server: $server
    certificate-authority: $ca
users:
- name: qis-operator
  user:
    token: $token
contexts:
- name: qis
  context:
    cluster: qis
    user: qis-operator
    namespace: qis-system
current-context: qis
KUBECONFIG
)

# Three edge nodes, one per hall, tainted as the samples' sites tolerate.
exec 4<>"$work/nodeagent.in"
"$bin/qis-nodeagent" --kubeconfig "$KUBECONFIG" --work-dir "$work/pods" --binary "$bin/qis-agent" \
  --exit-on-stdin-eof --taint node-role.kubernetes.io/edge:NoSchedule \
  --node edge-hall-a:qis.dev/site=hall-a --node edge-hall-b:qis.dev/site=hall-b \
  --node edge-hall-c:qis.dev/site=hall-c \
  <"$work/nodeagent.in" >"$work/nodeagent.out" 2>"$work/nodeagent.log" 3>&- 4>&- &
nodeagent_pid=$!
pids+=("$nodeagent_pid")
wait_line 60 "the node agent" "$nodeagent_pid" "$work/nodeagent.out" '^{"nodes"' >/dev/null

KUBECONFIG="$work/operator.kubeconfig" POD_NAMESPACE=qis-system \
  "$bin/qis-operator" --nats-url "nats://127.0.0.1:$nats_port" --listen "127.0.0.1:$(free_port)" \
  --resync 5s --scratch-dir "$work/scratch" --log-format text >"$work/operator.log" 2>&1 3>&- 4>&- &
pids+=($!)

echo "applying config/samples"
kubectl apply -k config/samples
ready() { [ "$(kubectl get qsw campus -n factory -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = "True" ]; }
wait_for 120 "the swarm and its agents to be Ready" ready

site_ports() {
  kubectl get pods -n factory -o jsonpath='{range .items[*]}{.metadata.labels.qis\.dev/site} {.metadata.annotations.nodeagent\.qis\.dev/port}{"\n"}{end}'
}
packet() { # packet AGENT DOMAIN CLASS CONFIDENCE SITE
  printf '{"agent_id": "%s", "domain": "%s", "problem_class": "%s", "conclusion": "%s", "confidence": %s, "context_vector": [0.31, 0.87, 0.05], "timestamp": %s, "source_node": "%s"}\n' \
    "$1" "$2" "$3" "$2/$3 observed at $5" "$4" "$(date +%s.%N)" "$5"
}

round=0
while [ "$rounds" -eq 0 ] || [ "$round" -lt "$rounds" ]; do
  round=$((round + 1))
  while read -r site port; do
    [ -n "$port" ] || continue
    case "$site" in
      hall-a|hall-b)
        if [ "$round" -ge 2 ]; then
          conf="$(python3 -c "print(min(0.95, 0.55 + 0.05 * $round))")"
          packet "vibration-$site" predictive-maintenance bearing-wear "$conf" "$site"
        else
          packet "vibration-$site" predictive-maintenance normal-wear 0.7 "$site"
        fi
        # One hall alone sees an HVAC energy anomaly: below quorum, no alert.
        if [ "$site" = hall-b ]; then packet "hvac-$site" hvac energy-anomaly 0.62 "$site"; fi ;;
      *)
        packet "vibration-$site" predictive-maintenance normal-wear 0.8 "$site" ;;
    esac | "$bin/qis-agent" publish --agent "127.0.0.1:$port" >/dev/null
  done < <(site_ports)
  sleep 2
  [ -t 1 ] && [ "$check" = false ] && clear
  echo "round $round: bearing wear started at hall-a and hall-b in round 2 (Ctrl-C to stop)"
  kubectl get qsw,qsub -n factory
  echo
done

if [ "$check" = true ]; then
  alert="$(kubectl get qsub bearing-wear -n factory -o jsonpath='{.status.consensus.alert}')"
  agents="$(kubectl get qsub bearing-wear -n factory -o jsonpath='{.status.consensus.agents}')"
  problem="$(kubectl get qsub maintenance -n factory -o jsonpath='{.status.consensus.problem}')"
  hvac="$(kubectl get qsub hvac-energy -n factory -o jsonpath='{.status.consensus.alert}')"
  echo "check: bearing-wear alert=$alert agents=$agents; maintenance consensus=$problem; hvac alert=$hvac"
  if ! { [ "$alert" = "true" ] && [ "$agents" = "2" ] && [ "$problem" = "predictive-maintenance.bearing-wear" ] && [ "$hvac" = "false" ]; }; then
    echo "the demo did not reach the expected consensus" >&2
    exit 1
  fi
  echo "demo check passed"
fi
