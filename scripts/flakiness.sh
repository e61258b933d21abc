#!/usr/bin/env bash
# Runs the whole cargo test suite N times back to back (default 20) and prints, per run, its
# wall time and the tests that failed; then how many runs passed. The suite is built once
# first, so the times are test time. Needs what scripts/test.sh installs (run it once first).
# Usage: bash scripts/flakiness.sh [N] [LOG_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
runs="${1:-20}"
logs="${2:-$(mktemp -d)}"
mkdir -p "$logs"
export PATH="$root/.tools/bin:$root/.tools/venv/bin:$PATH"
QIS_CONTROLPLANE="$(bash scripts/controlplane.sh)"
export QIS_CONTROLPLANE
cargo build --workspace --bins --locked -q
cargo test --workspace --locked --no-run -q
passed=0
printf '%-4s %-8s %s\n' run seconds failed
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if cargo test --workspace --locked >"$logs/run-$i.log" 2>&1; then
    passed=$((passed + 1))
    failed="-"
  else
    failed="$(grep -E '^    [A-Za-z0-9_:]+$' "$logs/run-$i.log" | tr -d ' ' | sort -u | tr '\n' ' ')"
    failed="${failed:-"(see $logs/run-$i.log)"}"
  fi
  printf '%-4s %-8s %s\n' "$i" "$(($(date +%s) - start))" "$failed"
done
echo "$passed of $runs runs passed; logs in $logs"
