#!/usr/bin/env bash
# Smoke run of a built agent binary, of any architecture:
#   scripts/smoke-agent.sh <qis-agent> [runner...]
# e.g. scripts/smoke-agent.sh target/aarch64-unknown-linux-musl/release/qis-agent qemu-aarch64-static
#
# Against a nats-server 2.15.1 on a free loopback port, the agent (standalone, making its own
# stream and consumer) must: synthesize the seed's demo offline; start and report ready;
# accept two agents' outcomes on its intake; pull them back from JetStream and reach a
# consensus of two agents; stop gracefully (exit 0) on SIGTERM. Every wait has a deadline
# (generous: an emulated binary is 5-20x slower).
set -euo pipefail
bin="$1"
shift
runner=("$@")
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$root/.tools/venv/bin:$PATH"

work="$(mktemp -d)"
nats_pid=""
agent_pid=""
cleanup() {
  if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; fi
  if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A free port below the ephemeral range (no clash with outgoing connections).
free_port() {
  python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
while True:
    p = random.randrange(10000, low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        print(p)
        break
    except OSError:
        pass
    finally:
        s.close()
PY
}

# http METHOD URL [BODY] -> prints "<status> <body>"; status 0 when nothing answers.
http() {
  python3 - "$@" <<'PY'
import sys, urllib.request, urllib.error
method, url = sys.argv[1], sys.argv[2]
data = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except Exception:
    print(0)
PY
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "smoke: timed out waiting for $what" >&2
      [ -f "$work/agent.log" ] && tail -20 "$work/agent.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

echo "smoke: $(file -b "$bin" | cut -d, -f1-2) ${runner[*]:+(under ${runner[*]})}"
"${runner[@]}" "$bin" --version
offline="$("${runner[@]}" "$bin" synthesize --method seed "$root/agent/testdata/seed-demo.jsonl")"
grep -q "consensus_strength:  1.000" <<<"$offline" || { echo "smoke: offline synthesis differs: $offline" >&2; exit 1; }

nats_port="$(free_port)"
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/js" >"$work/nats.log" 2>&1 &
nats_pid=$!
greets() { python3 -c "import socket,sys; s=socket.create_connection(('127.0.0.1',$nats_port),1); sys.exit(0 if s.recv(5)==b'INFO ' else 1)" 2>/dev/null; }
wait_for 20 "nats-server" greets

agent_port="$(free_port)"
cat >"$work/agent.yaml" <<EOF
agentId: smoke
site: smoke
nats: {url: 'nats://127.0.0.1:$nats_port'}
subjectPrefix: qis.smoke
stream: QIS_SMOKE
subjects:
- {name: wear, domain: predictive-maintenance, problemClass: bearing-wear}
listen: '127.0.0.1:$agent_port'
dataDir: '$work/data'
EOF
RUST_LOG=warn "${runner[@]}" "$bin" run --config "$work/agent.yaml" >"$work/agent.log" 2>&1 &
agent_pid=$!
ready() { [ "$(http GET "http://127.0.0.1:$agent_port/readyz" | cut -d' ' -f1)" = 200 ]; }
wait_for 120 "the agent to be ready" ready

now="$(date +%s)"
for i in 1 2; do
  body="{\"agent_id\": \"pump-$i\", \"domain\": \"predictive-maintenance\", \"problem_class\": \"bearing-wear\", \"conclusion\": \"47 Hz harmonic\", \"confidence\": 0.8, \"context_vector\": [0.4, 0.7], \"timestamp\": $now.5, \"source_node\": \"node-$i\"}"
  code="$(http POST "http://127.0.0.1:$agent_port/v1/outcomes" "$body" | cut -d' ' -f1)"
  [ "$code" = 202 ] || { echo "smoke: intake answered $code" >&2; exit 1; }
done
two_agents() { http GET "http://127.0.0.1:$agent_port/v1/consensus/wear" | grep -q '"agents":2'; }
wait_for 120 "a consensus of two agents from JetStream" two_agents

kill -TERM "$agent_pid"
deadline=$((SECONDS + 60))
while kill -0 "$agent_pid" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "smoke: no graceful stop within 60 s" >&2; exit 1; }
  sleep 0.2
done
status=0
wait "$agent_pid" || status=$?
agent_pid=""
[ "$status" = 0 ] || { echo "smoke: the agent exited with $status" >&2; tail -20 "$work/agent.log" >&2; exit 1; }
echo "smoke: ok (ready, intake, deposit, twins, consensus of 2 agents, graceful stop)"
