//! Key-value for guests: `wasi:keyvalue` 0.2.0-draft (`wasmtime serve`'s) and
//! 0.2.0-draft2 (Spin's), Spin's `fermyon:spin/key-value@2.0.0` and, for WASI
//! 0.3 components, `spin:key-value@3.0.0`, all over the same
//! [`dormouse_kv::Store`]s.
//!
//! A store opens only under a label the component was granted; the label ``""``
//! (the only store `wasmtime serve` has) means `default`.

use dormouse_kv::Store;
use wasmtime::component::{Access, Accessor, FutureReader, Resource, StreamReader};

use crate::bindings::fermyon::spin::key_value as spin2;
use crate::bindings::wasi::keyvalue0_2_0_draft as draft;
use crate::bindings::wasi::keyvalue0_2_0_draft2 as draft2;
use crate::bindings::wasi3::spin::key_value::key_value as spin3;
use crate::caps::{Caps, CapsView};
use crate::ctx::RequestCtx;

/// An open store, as a guest holds it.
pub struct Bucket {
    store: Store,
}

/// A compare-and-swap in progress (draft2's `cas`): the value read when it
/// began, which the swap expects to still be there.
pub struct Cas {
    store: Store,
    key: String,
    current: Option<Vec<u8>>,
}

/// What the three interfaces' errors have in common.
enum KvError {
    AccessDenied,
    Other(String),
}

impl From<dormouse_kv::Error> for KvError {
    fn from(error: dormouse_kv::Error) -> Self {
        KvError::Other(error.to_string())
    }
}

impl From<KvError> for draft::store::Error {
    fn from(error: KvError) -> Self {
        match error {
            KvError::AccessDenied => Self::AccessDenied,
            KvError::Other(text) => Self::Other(text),
        }
    }
}

impl From<KvError> for draft2::store::Error {
    fn from(error: KvError) -> Self {
        match error {
            KvError::AccessDenied => Self::AccessDenied,
            KvError::Other(text) => Self::Other(text),
        }
    }
}

impl From<KvError> for spin3::Error {
    fn from(error: KvError) -> Self {
        match error {
            KvError::AccessDenied => Self::AccessDenied,
            KvError::Other(text) => Self::Other(text),
        }
    }
}

impl From<KvError> for spin2::Error {
    fn from(error: KvError) -> Self {
        match error {
            KvError::AccessDenied => Self::AccessDenied,
            KvError::Other(text) => Self::Other(text),
        }
    }
}

type Outcome<T, E> = wasmtime::Result<Result<T, E>>;

/// Runs a store operation and converts its error to the interface's.
async fn run<T, E: From<KvError>>(operation: impl Future<Output = dormouse_kv::Result<T>>) -> Outcome<T, E> {
    Ok(operation.await.map_err(|error| E::from(KvError::from(error))))
}

impl CapsView<'_> {
    fn open(&mut self, label: &str) -> wasmtime::Result<Result<Resource<Bucket>, KvError>> {
        let label = if label.is_empty() { "default" } else { label };
        match self.caps.key_value.iter().find(|(granted, _)| granted == label) {
            Some((_, store)) => Ok(Ok(self.table.push(Bucket { store: store.clone() })?)),
            None => {
                tracing::debug!(component = %self.caps.id, "key-value store `{label}` denied: not in key_value_stores");
                Ok(Err(KvError::AccessDenied))
            }
        }
    }

    fn store(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<Store> {
        Ok(self.table.get(bucket)?.store.clone())
    }
}

fn parse_cursor(cursor: Option<String>) -> Result<Option<u64>, KvError> {
    cursor
        .map(|text| text.parse::<u64>().map_err(|_| KvError::Other(format!("invalid list-keys cursor `{text}`"))))
        .transpose()
}

impl draft::store::Host for CapsView<'_> {
    async fn open(&mut self, identifier: String) -> Outcome<Resource<Bucket>, draft::store::Error> {
        Ok(CapsView::open(self, &identifier)?.map_err(Into::into))
    }
}

impl draft::store::HostBucket for CapsView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<Option<Vec<u8>>, draft::store::Error> {
        run(self.store(&bucket)?.get(&key)).await
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Outcome<(), draft::store::Error> {
        run(self.store(&bucket)?.set(&key, value)).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<(), draft::store::Error> {
        run(self.store(&bucket)?.delete(&key)).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<bool, draft::store::Error> {
        run(self.store(&bucket)?.exists(&key)).await
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Outcome<draft::store::KeyResponse, draft::store::Error> {
        let page = run(self.store(&bucket)?.list_keys(cursor)).await?;
        Ok(page.map(|page| draft::store::KeyResponse { keys: page.keys, cursor: page.cursor }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl draft::atomics::Host for CapsView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Outcome<u64, draft::store::Error> {
        let store = self.store(&bucket)?;
        let Ok(delta) = i64::try_from(delta) else {
            return Ok(Err(draft::store::Error::Other(format!(
                "increment of {delta} is above the 64-bit signed range"
            ))));
        };
        let value = run::<i64, draft::store::Error>(store.increment(&key, delta)).await?;
        Ok(value.and_then(|value| {
            u64::try_from(value)
                .map_err(|_| draft::store::Error::Other(format!("the counter `{key}` is negative ({value})")))
        }))
    }
}

impl draft::batch::Host for CapsView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Outcome<Vec<Option<(String, Vec<u8>)>>, draft::store::Error> {
        let values = run(self.store(&bucket)?.get_many(keys.clone())).await?;
        Ok(values.map(|values| keys.into_iter().zip(values).map(|(key, value)| value.map(|v| (key, v))).collect()))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Outcome<(), draft::store::Error> {
        run(self.store(&bucket)?.set_many(key_values)).await
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Outcome<(), draft::store::Error> {
        run(self.store(&bucket)?.delete_many(keys)).await
    }
}

impl draft2::store::Host for CapsView<'_> {
    async fn open(&mut self, identifier: String) -> Outcome<Resource<Bucket>, draft2::store::Error> {
        Ok(CapsView::open(self, &identifier)?.map_err(Into::into))
    }
}

impl draft2::store::HostBucket for CapsView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<Option<Vec<u8>>, draft2::store::Error> {
        run(self.store(&bucket)?.get(&key)).await
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Outcome<(), draft2::store::Error> {
        run(self.store(&bucket)?.set(&key, value)).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<(), draft2::store::Error> {
        run(self.store(&bucket)?.delete(&key)).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<bool, draft2::store::Error> {
        run(self.store(&bucket)?.exists(&key)).await
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> Outcome<draft2::store::KeyResponse, draft2::store::Error> {
        let store = self.store(&bucket)?;
        let cursor = match parse_cursor(cursor) {
            Ok(cursor) => cursor,
            Err(error) => return Ok(Err(error.into())),
        };
        let page = run(store.list_keys(cursor)).await?;
        Ok(page.map(|page| draft2::store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor.map(|cursor| cursor.to_string()),
        }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl draft2::atomics::Host for CapsView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Outcome<i64, draft2::store::Error> {
        run(self.store(&bucket)?.increment(&key, delta)).await
    }

    async fn swap(&mut self, cas: Resource<Cas>, value: Vec<u8>) -> Outcome<(), draft2::atomics::CasError> {
        let Cas { store, key, current } = self.table.delete(cas)?;
        match store.compare_and_swap(&key, current, value).await {
            Ok(true) => Ok(Ok(())),
            // Someone changed it since: hand back a fresh read to retry with.
            Ok(false) => match store.get(&key).await {
                Ok(current) => {
                    let retry = self.table.push(Cas { store, key, current })?;
                    Ok(Err(draft2::atomics::CasError::CasFailed(retry)))
                }
                Err(error) => Ok(Err(draft2::atomics::CasError::StoreError(KvError::from(error).into()))),
            },
            Err(error) => Ok(Err(draft2::atomics::CasError::StoreError(KvError::from(error).into()))),
        }
    }
}

impl draft2::atomics::HostCas for CapsView<'_> {
    async fn new(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<Resource<Cas>, draft2::store::Error> {
        let store = self.store(&bucket)?;
        match store.get(&key).await {
            Ok(current) => Ok(Ok(self.table.push(Cas { store, key, current })?)),
            Err(error) => Ok(Err(KvError::from(error).into())),
        }
    }

    async fn current(&mut self, cas: Resource<Cas>) -> Outcome<Option<Vec<u8>>, draft2::store::Error> {
        Ok(Ok(self.table.get(&cas)?.current.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl draft2::batch::Host for CapsView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Outcome<Vec<(String, Option<Vec<u8>>)>, draft2::store::Error> {
        let values = run(self.store(&bucket)?.get_many(keys.clone())).await?;
        Ok(values.map(|values| keys.into_iter().zip(values).collect()))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Outcome<(), draft2::store::Error> {
        run(self.store(&bucket)?.set_many(key_values)).await
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Outcome<(), draft2::store::Error> {
        run(self.store(&bucket)?.delete_many(keys)).await
    }
}

impl spin2::Host for CapsView<'_> {}

impl spin2::HostStore for CapsView<'_> {
    async fn open(&mut self, label: String) -> Outcome<Resource<Bucket>, spin2::Error> {
        Ok(CapsView::open(self, &label)?.map_err(Into::into))
    }

    async fn get(&mut self, store: Resource<Bucket>, key: String) -> Outcome<Option<Vec<u8>>, spin2::Error> {
        run(self.store(&store)?.get(&key)).await
    }

    async fn set(&mut self, store: Resource<Bucket>, key: String, value: Vec<u8>) -> Outcome<(), spin2::Error> {
        run(self.store(&store)?.set(&key, value)).await
    }

    async fn delete(&mut self, store: Resource<Bucket>, key: String) -> Outcome<(), spin2::Error> {
        run(self.store(&store)?.delete(&key)).await
    }

    async fn exists(&mut self, store: Resource<Bucket>, key: String) -> Outcome<bool, spin2::Error> {
        run(self.store(&store)?.exists(&key)).await
    }

    async fn get_keys(&mut self, store: Resource<Bucket>) -> Outcome<Vec<String>, spin2::Error> {
        run(self.store(&store)?.all_keys()).await
    }

    async fn drop(&mut self, store: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

/// `spin:key-value@3.0.0`: the same operations as 2.0.0, as `async func`s.
/// The store is looked up with the event loop's data, and the operation runs
/// without it, so other tasks of the component may run meanwhile.
impl spin3::HostStoreWithStore<RequestCtx> for Caps {
    async fn open(accessor: &Accessor<RequestCtx, Self>, label: String) -> Outcome<Resource<Bucket>, spin3::Error> {
        accessor.with(|mut access| Ok(access.get().open(&label)?.map_err(Into::into)))
    }

    async fn get(
        accessor: &Accessor<RequestCtx, Self>,
        store: Resource<Bucket>,
        key: String,
    ) -> Outcome<Option<Vec<u8>>, spin3::Error> {
        run(store_of(accessor, &store)?.get(&key)).await
    }

    async fn set(
        accessor: &Accessor<RequestCtx, Self>,
        store: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Outcome<(), spin3::Error> {
        run(store_of(accessor, &store)?.set(&key, value)).await
    }

    async fn delete(
        accessor: &Accessor<RequestCtx, Self>,
        store: Resource<Bucket>,
        key: String,
    ) -> Outcome<(), spin3::Error> {
        run(store_of(accessor, &store)?.delete(&key)).await
    }

    async fn exists(
        accessor: &Accessor<RequestCtx, Self>,
        store: Resource<Bucket>,
        key: String,
    ) -> Outcome<bool, spin3::Error> {
        run(store_of(accessor, &store)?.exists(&key)).await
    }

    /// Every key, listed before the stream opens: the stream then hands them
    /// over as fast as the guest reads, and the future reports a failed listing
    /// (with an empty stream).
    async fn get_keys(
        accessor: &Accessor<RequestCtx, Self>,
        store: Resource<Bucket>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), spin3::Error>>)> {
        let listed = run::<_, spin3::Error>(store_of(accessor, &store)?.all_keys()).await?;
        let (keys, outcome) = match listed {
            Ok(keys) => (keys, Ok(())),
            Err(error) => (Vec::new(), Err(error)),
        };
        accessor.with(|mut access| {
            let keys = StreamReader::new(&mut access, keys)?;
            let outcome = FutureReader::new(&mut access, async move { Ok::<_, wasmtime::Error>(outcome) })?;
            Ok((keys, outcome))
        })
    }

    fn drop(mut access: Access<'_, RequestCtx, Self>, store: Resource<Bucket>) -> wasmtime::Result<()> {
        access.get().table.delete(store)?;
        Ok(())
    }
}

impl spin3::HostStore for CapsView<'_> {}

impl spin3::Host for CapsView<'_> {}

/// The store behind a guest's handle, read through the event loop's data.
fn store_of(accessor: &Accessor<RequestCtx, Caps>, bucket: &Resource<Bucket>) -> wasmtime::Result<Store> {
    accessor.with(|mut access| access.get().store(bucket))
}
