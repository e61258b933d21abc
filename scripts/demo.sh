#!/usr/bin/env bash
# The main command: the whole loop on this machine, no Docker, no cluster.
#
#   scripts/demo.sh               run until Ctrl-C, refreshing `kubectl get qsw,qsub`
#   scripts/demo.sh --rounds 8    stop after 8 rounds of outcomes
#   scripts/demo.sh --check       8 rounds, then fail unless bearing wear reached consensus
#
# It starts a real nats-server (JetStream), the Kubernetes API stand-in with its stand-in
# kubelet (agent Deployments run as local qis-agent processes), and the real operator; applies
# config/samples (a factory campus: three halls, bearing-wear, HVAC and maintenance subjects);
# then feeds simulated site outcomes: bearing wear starts at hall-a and hall-b, hall-c stays
# normal. Everything is stopped and removed on exit.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

rounds=0
check=false
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --check) check=true; rounds="${rounds/#0/8}"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

bash scripts/install-tools.sh >/dev/null
export PATH="$root/.tools/bin:$root/.tools/venv/bin:$PATH"
echo "building..."
cargo build -q --bins --locked
bin="$root/target/debug"

work="$(mktemp -d /tmp/qis-demo.XXXXXX)"
pids=()
cleanup() {
  local code=$?
  # Children first: the stand-in kubelet's agent processes, then the services.
  for p in "${pids[@]}"; do pkill -P "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$code" -ne 0 ] && [ "$code" -ne 130 ]; then
    echo "logs kept in $work" >&2
    tail -n 20 "$work"/operator.log "$work"/standin.log >&2 2>/dev/null || true
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

nats_port="$(free_port)"
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
"$bin/kube-standin" --kubeconfig "$work/kubeconfig" --crds crds --kubelet-agent "$bin/qis-agent" \
  --work-dir "$work/pods" >"$work/standin.log" 2>&1 &
pids+=($!)
export KUBECONFIG="$work/kubeconfig"
wait_for 20 "the API stand-in" kubectl get crd qisswarms.qis.dev
"$bin/qis-operator" --nats-url "nats://127.0.0.1:$nats_port" --listen "127.0.0.1:$(free_port)" \
  --resync 5s --scratch-dir "$work/scratch" --log-format text >"$work/operator.log" 2>&1 &
pids+=($!)

echo "applying config/samples"
kubectl apply --validate=false -k config/samples
ready() { [ "$(kubectl get qsw campus -n factory -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = "True" ]; }
wait_for 90 "the swarm and its agents to be Ready" ready

site_ports() {
  kubectl get pods -n factory -o jsonpath='{range .items[*]}{.metadata.labels.qis\.dev/site} {.metadata.annotations.standin\.qis\.dev/port}{"\n"}{end}'
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
