//! Rust bindings of the interfaces in `wit/` (key-value and variables in the
//! versions Spin and `wasmtime serve` guests import), generated at build time.

wasmtime::component::bindgen!({
    path: "wit",
    world: "dormouse:host/capabilities",
    imports: { default: async | trappable },
    with: {
        "wasi:keyvalue/store@0.2.0-draft.bucket": crate::kv::Bucket,
        "wasi:keyvalue/store@0.2.0-draft2.bucket": crate::kv::Bucket,
        "wasi:keyvalue/atomics@0.2.0-draft2.cas": crate::kv::Cas,
        "fermyon:spin/key-value.store": crate::kv::Bucket,
    },
});
