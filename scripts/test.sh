#!/usr/bin/env bash
# Every check and test dormouse has, as CI runs them: formatting, lints, guest
# fixtures in step with their sources, then the unit, golden and end-to-end
# tests. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the checks use; the Rust toolchain itself comes with the machine.
rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== guest fixtures match their sources (guests/SHA256SUMS; rebuild with guests/build.sh)"
(cd guests && sha256sum --quiet --strict -c SHA256SUMS)
echo "== tests"
# nextest ends with one summary line for the whole run; cargo test is the
# fallback where nextest is not installed.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
