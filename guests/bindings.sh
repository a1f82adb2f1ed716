#!/usr/bin/env bash
# Regenerates the committed C bindings in bindings/ from the WIT worlds, after
# a WIT change. Needs wit-bindgen (crates.io: wit-bindgen-cli 0.63.0,
# features `c`); a normal build (build.sh) does not.
set -euo pipefail
cd "$(dirname "$0")"
wit-bindgen c wit --world dormouse:guests/proxy --out-dir bindings/proxy
# The 0.3 guests call these `async func` imports synchronously from their
# async handler, which may block.
sync=(
  'import:wasi:http/client@0.3.0#send'
  'import:spin:variables/variables@3.0.0#get'
  'import:spin:key-value/key-value@3.0.0#[static]store.open'
)
for method in get set delete exists get-keys; do
  sync+=("import:spin:key-value/key-value@3.0.0#[method]store.$method")
done
wit-bindgen c wit-p3 --world dormouse:guests-p3/service --out-dir bindings/service \
  --sync "$(IFS=,; echo "${sync[*]}")"
