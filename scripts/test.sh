#!/usr/bin/env bash
# Every check and test dormouse has, as CI runs them: formatting, lints, guest
# fixtures in step with their sources, then the unit, golden and end-to-end
# tests. Installs what the tests need first.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the checks use; the Rust toolchain itself comes with the machine.
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The service tests run Debian's nginx and a Python app; the key-value tests a
# Redis server; the JavaScript app is built with npm. Services run in cgroups
# (v2) where the machine has them, under /bin/sh stubs.
missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v python3 >/dev/null || missing+=(python3)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v npm >/dev/null || missing+=(nodejs npm)
# pgrep and kill: the containment tests find and signal processes.
command -v pgrep >/dev/null || missing+=(procps)
# GNU tar: the control crate's test packs a sparse file with `tar --sparse`.
command -v tar >/dev/null || missing+=(tar)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]/nginx-light/nginx}" >/dev/null
fi
# Prometheus: the metrics test has Debian's server scrape dormouse and
# evaluates KEDA's query through its HTTP API. Without its recommends (node
# exporter and friends), which would only start servers the tests do not use.
if ! command -v prometheus >/dev/null; then
  echo "== installing prometheus"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== guest fixtures match their sources (guests/SHA256SUMS; rebuild with guests/build.sh)"
(cd guests && sha256sum --quiet --strict -c SHA256SUMS)
echo "== JavaScript example (Spin's JS SDK, from npm)"
(cd examples/counter-js && npm install --no-audit --no-fund --loglevel=error && npm run --silent build)
echo "== tests"
# nextest ends with one summary line for the whole run; cargo test is the
# fallback where nextest is not installed.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
