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

/// Spin's `spin:key-value@3.0.0` and `spin:variables@3.0.0`, whose functions
/// are `async func`s: implemented with access to the store's event loop
/// (`store`), for WASI 0.3 components only.
pub mod wasi3 {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "dormouse:host/capabilities-wasi3",
        imports: { default: store | trappable },
        with: {
            "spin:key-value/key-value.store": crate::kv::Bucket,
        },
    });
}
