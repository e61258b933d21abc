#!/usr/bin/env bash
# Builds the test control plane (e2e/controlplane: etcd, kube-apiserver, kube-controller-manager
# and kube-scheduler from the k8s.io/kubernetes Go modules) once per source version, into a
# cache outside the clone, and prints the binary's path. Progress goes to stderr.
#   QIS_CACHE_DIR   cache root (default ~/.cache/qis-operator)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/e2e/controlplane"
command -v go >/dev/null || { echo "go is missing: the control plane is built from Go modules (Go 1.25 or newer)" >&2; exit 1; }
key="$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-16)"
cache="${QIS_CACHE_DIR:-$HOME/.cache/qis-operator}/controlplane/$key"
bin="$cache/qis-controlplane"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  echo "building the control plane (k8s.io/kubernetes $(grep -m1 'k8s.io/kubernetes v' "$src/go.mod" | awk '{print $2}')) into $cache; a cold build takes about 10 minutes on 2 cores" >&2
  start=$(date +%s)
  (cd "$src" && go build -v -trimpath -ldflags='-s -w' -o "$bin.tmp" . 2>&1) |
    awk '/^go: downloading/ { d++; if (d % 50 == 0) printf "  downloaded %d modules\n", d > "/dev/stderr"; next }
         { n++; if (n % 200 == 0) printf "  compiled %d packages\n", n > "/dev/stderr" }
         /^#|: / { print > "/dev/stderr" }'
  [ -x "$bin.tmp" ] || { echo "control plane build failed" >&2; exit 1; }
  mv "$bin.tmp" "$bin"
  echo "control plane built in $(( $(date +%s) - start )) s" >&2
fi
echo "$bin"
