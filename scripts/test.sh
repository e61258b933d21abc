#!/usr/bin/env bash
# The project's test command (README "Run all tests"); CI runs exactly this.
# Installs what the tests need (scripts/install-tools.sh), then: format, lints, the whole
# cargo test suite, and offline validation of the generated CRDs against Kubernetes' schemas.
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
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (every binary: the full-loop test runs qis-agent next to qis-operator)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
echo "== CRDs against Kubernetes 1.33 and 1.37 schemas (kubernetes-validate --strict)"
for version in 1.33.0 1.37.0; do
  kubernetes-validate --strict --quiet -k "$version" crds/*.yaml
done
echo "== static musl agent: builds, stays within 12 MiB, runs"
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked -q -p qis-agent --target x86_64-unknown-linux-musl
agent_bin=target/x86_64-unknown-linux-musl/release/qis-agent
file "$agent_bin" | grep -q "static" || { echo "the agent is not statically linked" >&2; exit 1; }
size=$(stat -c %s "$agent_bin")
echo "static agent: $size bytes"
[ "$size" -le $((12 * 1024 * 1024)) ] || { echo "the static agent is over 12 MiB" >&2; exit 1; }
"$agent_bin" synthesize --method seed agent/testdata/seed-demo.jsonl | grep -q "consensus_strength:  1.000"
echo "== the local full loop (README main command, in check mode)"
bash scripts/demo.sh --check
echo "== all tests passed"
