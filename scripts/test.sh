#!/usr/bin/env bash
# The project's test command (README "Run all tests"); CI runs exactly this.
# Installs what the tests need (scripts/install-tools.sh), then: format, lints, the whole
# cargo test suite, the Python SDK's tests, and offline validation of the generated CRDs
# against Kubernetes' schemas.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/install-tools.sh
export PATH="$root/.tools/bin:$root/.tools/venv/bin:$PATH"

echo "== shellcheck"
command -v shellcheck >/dev/null || { echo "shellcheck is missing (apt-get install shellcheck)" >&2; exit 1; }
shellcheck scripts/*.sh e2e/kind/run.sh .ci/run
echo "== kind e2e script: syntax (it needs Docker and kind to run)"
bash -n e2e/kind/run.sh
echo "== the control plane (kube-apiserver, controller-manager, scheduler, etcd from the Go modules)"
QIS_CONTROLPLANE="$(bash scripts/controlplane.sh)"
export QIS_CONTROLPLANE
echo "control plane: $QIS_CONTROLPLANE"
echo "== go vet, gofmt (e2e/controlplane)"
(cd e2e/controlplane && go vet . && test -z "$(gofmt -l .)")
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (every binary: the full-loop test runs qis-agent next to qis-operator)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
echo "== Python SDK (clients/python): installed as users install it, tested against the built agent"
"$root/.tools/venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps ./clients/python
(cd clients/python && "$root/.tools/venv/bin/python" -m pytest -q -p no:cacheprovider tests)
echo "== CRDs against Kubernetes 1.33 and 1.37 schemas (kubernetes-validate --strict)"
for version in 1.33.0 1.37.0; do
  kubernetes-validate --strict --quiet -k "$version" crds/*.yaml
done
# static_agent TARGET: checks the built agent is static and within 12 MiB; prints its path.
static_agent() {
  local bin="target/$1/release/qis-agent" size
  file "$bin" | grep -q "static" || { echo "the $1 agent is not statically linked" >&2; return 1; }
  size=$(stat -c %s "$bin")
  echo "static $1 agent: $size bytes" >&2
  [ "$size" -le $((12 * 1024 * 1024)) ] || { echo "the $1 agent is over 12 MiB" >&2; return 1; }
  echo "$bin"
}
echo "== static musl agent (amd64): builds, stays within 12 MiB, smoke run"
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked -q -p qis-agent --target x86_64-unknown-linux-musl
amd_bin="$(static_agent x86_64-unknown-linux-musl)"
bash scripts/smoke-agent.sh "$amd_bin"
echo "== static musl agent (arm64): cross-built as the Dockerfile does, smoke run under qemu"
CC_aarch64_unknown_linux_musl=clang AR_aarch64_unknown_linux_musl=llvm-ar \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
  cargo build --release --locked -q -p qis-agent --target aarch64-unknown-linux-musl
arm_bin="$(static_agent aarch64-unknown-linux-musl)"
file "$arm_bin" | grep -q "ARM aarch64" || { echo "the arm64 agent is not an aarch64 binary" >&2; exit 1; }
bash scripts/smoke-agent.sh "$arm_bin" qemu-aarch64-static
echo "== the local full loop (README main command, in check mode)"
bash scripts/demo.sh --check
echo "== all tests passed"
