//! Runs `wasi:http/proxy` components: one [`Host`] (engine, linker, epoch
//! ticker, instance permits), one [`ComponentPre`] per component built at load
//! time, and a fresh `Store` per request that is dropped when the request ends.
//!
//! Components built for `wasi:http` 0.3 (`wasi:http/service@0.3.0`, where
//! `handle` is an `async func`) run on a second engine with the component
//! model's concurrency support, made the first time one is loaded: that
//! support costs every store about 2.7 µs (29 % of a hello request), which
//! 0.2 components do not pay.
//!
//! Invariants: no guest code runs outside a request; nothing here routes HTTP
//! (the gateway decides which component gets a request); one thread advances
//! the epoch for every store, never a timer per request.

mod bindings;
mod body;
mod cache;
mod caps;
mod ctx;
mod kv;
mod outbound;
mod output;
mod p3;
mod variables;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::task::TaskTracker;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use body::Outcome;
pub use body::{GuardedBody, GuestError};
pub use cache::{CacheOutcome, CompileCache};
use caps::ComponentCaps;
pub use caps::Preopen;
use ctx::RequestCtx;
pub use outbound::{Hops, IoFuture, OutboundHttp, OutgoingFuture};
pub use output::GuestOutput;
/// The error type of request bodies handed to a guest.
pub use wasmtime_wasi_http::Error as WasiHttpError;
pub use wasmtime_wasi_http::{RequestOptions, WasiBody, default_send_request};

/// How often the shared ticker advances the engine's epoch. The CPU budget is
/// counted in these ticks, and a running guest yields to other tasks once a tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A tick that comes this soon after a guest was polled is a deadline that
/// passed while it waited (for I/O, or for a thread), not CPU it used: it
/// is not counted, and the guest does not yield for it.
const RESUMED_WITHIN: Duration = Duration::from_millis(1);

/// The largest per-instance memory cap a user may configure.
pub const MAX_MEMORY_LIMIT: usize = 1 << 30;

/// Limits and knobs of the host. Each default is the one in DESIGN.md.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Linear memory per instance (each memory). Default 128 MiB, at most 1 GiB.
    /// Costs address space only until a guest touches it.
    pub memory_limit: usize,
    /// Guest CPU time per request, counted in epoch ticks. Default 1 s; past it
    /// the guest traps and the request gets 500.
    pub cpu_limit: Duration,
    /// Wall-clock time per request, from arrival to the end of the response
    /// body. Default 30 s; past it the request gets 504 (or its body is cut).
    pub wall_limit: Duration,
    /// Instances alive at once. Default 1000; each reserves a pooling slot.
    pub max_instances: u32,
    /// Requests that may wait for an instance when all are busy. Default 1000;
    /// past it a request gets 503 + Retry-After at once.
    pub queue_limit: usize,
    /// Where compiled components are cached; `None` compiles on every start.
    pub cache_dir: Option<PathBuf>,
    /// Instance memory from a pre-reserved pool (default) rather than fresh
    /// mappings per instance. The pool reserves address space up front
    /// (`max_instances` slots) and reuses it; off is for comparison only.
    pub pooling: bool,
    /// The platform's quotas, which every instance is admitted under (as an
    /// active instance of `memory_limit` bytes) while it lives; `None`
    /// (default, `dormouse up`) counts nothing.
    pub quotas: Option<Arc<dormouse_quota::Quotas>>,
    /// How long a component's code stays in memory after its last request
    /// began (or its load ended), counted in whole seconds. Default 60 s;
    /// past it the code is let go, and its next request loads it again from
    /// the compile cache (~0.25 ms for a small guest). Only components in
    /// the compile cache are let go (see [`Code`]).
    pub unload_after: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            memory_limit: 128 << 20,
            cpu_limit: Duration::from_secs(1),
            wall_limit: Duration::from_secs(30),
            max_instances: 1000,
            queue_limit: 1000,
            cache_dir: None,
            pooling: true,
            quotas: None,
            unload_after: Duration::from_secs(60),
        }
    }
}

/// Why a request did not get a response from its guest.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("all {0} instances are busy and the wait queue is full")]
    Overloaded(u32),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("guest answered with error code {0}")]
    ErrorCode(String),
    #[error("guest returned without setting a response")]
    NoResponse,
    /// The component's code could not be loaded for its first request.
    #[error("cannot load the component: {0}")]
    Load(String),
    /// A platform quota stayed full until the request's deadline.
    #[error(transparent)]
    Quota(#[from] dormouse_quota::QuotaExceeded),
}

/// A component's request handler and what it was granted. Anything not
/// listed here, the guest cannot reach.
#[derive(Clone, Default)]
pub struct ComponentSpec {
    pub id: String,
    pub source: PathBuf,
    /// Environment variables the guest sees (`wasi:cli/environment`).
    pub environment: Vec<(String, String)>,
    /// Resolved variables (`wasi:config/store`, Spin's variables interfaces).
    pub variables: BTreeMap<String, String>,
    /// Key-value stores the guest may open, by label.
    pub key_value: Vec<(String, dormouse_kv::Store)>,
    /// Directories the guest may read.
    pub preopens: Vec<Preopen>,
    /// Where its outbound HTTP requests go: the app's policy, set once the
    /// app is assembled (the policy needs the app, the app its
    /// components). Empty, as by default, denies every request.
    pub outbound: OutboundSlot,
    /// Where its stdout and stderr lines go; `None`: dormouse's own.
    pub output: Option<Arc<dyn GuestOutput>>,
    /// Where its instantiations and guest outcomes are counted; `None`: no
    /// metrics are kept.
    pub metrics: Option<Arc<dormouse_telemetry::TargetMetrics>>,
}

/// An app's outbound HTTP handler, shared by its components and set once.
pub type OutboundSlot = Arc<OnceLock<Arc<dyn OutboundHttp>>>;

/// Reported while loading, so a CLI can show progress and tests can see
/// whether the cache was used.
#[derive(Debug)]
pub enum LoadEvent<'a> {
    CompileStarted { id: &'a str, bytes: usize },
    Loaded { id: &'a str, outcome: CacheOutcome, elapsed: Duration },
}

/// The engine and everything shared by all components and requests.
#[derive(Clone)]
pub struct Host {
    shared: Arc<Shared>,
}

struct Shared {
    /// WASI 0.2 components.
    wasi2: Runtime,
    /// WASI 0.3 components, on an engine of their own made on first use.
    wasi3: std::sync::Mutex<Option<Arc<Runtime>>>,
    config: HostConfig,
    instances: Arc<Semaphore>,
    waiting: AtomicUsize,
    tasks: TaskTracker,
    /// The runtime guests that wait go on on, made by the first that does:
    /// its own threads, so that busy guests delay neither connections nor
    /// dormouse's own work (signals, the drain, services, the admin and
    /// control APIs).
    guests: OnceLock<GuestRuntime>,
    /// The same for the guests of components that run long (`runs_long`):
    /// apart, so that a guest waiting for I/O does not queue behind their
    /// 10 ms slices; the kernel shares the CPUs between the two.
    busy_guests: OnceLock<GuestRuntime>,
    ticker: Arc<EpochTicker>,
    /// Components already loaded, by the BLAKE3 hash of their bytes: a second
    /// component with the same bytes shares the compiled code and the
    /// pre-instantiation instead of paying for them again. Weak: the code
    /// goes when the last component using it does (an app removed).
    loaded: std::sync::Mutex<std::collections::HashMap<blake3::Hash, std::sync::Weak<Code>>>,
    /// When the host was made: components' last uses are counted from it.
    started: Instant,
    /// The thread that lets go of idle components' code.
    unloader: Unloader,
}

/// An engine with its linker and compile cache: one for WASI 0.2 components,
/// one (with concurrency support) for WASI 0.3 components.
pub(crate) struct Runtime {
    engine: Engine,
    linker: Linker<RequestCtx>,
    cache: CompileCache,
}

impl Runtime {
    fn new(config: &HostConfig, wasi3: bool) -> anyhow::Result<Runtime> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true);
        wasm.epoch_interruption(true);
        // Per store, concurrency support costs time whether or not a guest
        // uses it: only the engine that needs it has it.
        wasm.concurrency_support(wasi3);
        if config.pooling {
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(config)));
        }
        let engine = Engine::new(&wasm).map_err(anyhow::Error::from).context("creating the wasm engine")?;

        let mut linker = Linker::new(&engine);
        // The whole WASI 0.2 set: guests from componentize-py and -js import
        // cli, filesystem and sockets; what they may do is denied per request
        // (no environment, preopens or socket addresses unless granted).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        if wasi3 {
            // WASI 0.3 components may import either generation.
            wasmtime_wasi::p3::add_to_linker(&mut linker)?;
            wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        }
        // Key-value and variables, in every version guests in the field import.
        caps::add_to_linker(&mut linker, wasi3)?;
        let cache = CompileCache::new(&engine, config.cache_dir.clone());
        Ok(Runtime { engine, linker, cache })
    }

    /// Links `component` against everything this runtime provides.
    fn instantiate_pre(
        &self,
        id: &str,
        source: &Path,
        component: &Component,
    ) -> anyhow::Result<wasmtime::component::InstancePre<RequestCtx>> {
        self.linker.instantiate_pre(component).map_err(anyhow::Error::from).with_context(|| {
            format!("component `{id}` (`{}`) imports something dormouse does not provide", source.display())
        })
    }
}

/// Task polls between a guest worker's looks at the runtime's queue of new
/// tasks and at its I/O.
const GUEST_POLLS_BETWEEN_LOOKS: u32 = 4;

/// The multi-threaded runtime that guests which wait run on, one worker per
/// CPU (`dormouse-guest`); shut down without waiting when the host goes.
struct GuestRuntime(Option<tokio::runtime::Runtime>);

impl GuestRuntime {
    fn start(name: &str) -> GuestRuntime {
        // A poll of a busy guest is a 10 ms slice: a worker looks at new
        // tasks and at its sockets every 4 polls, not tokio's 31 and 61, so
        // that a guest arriving or woken by I/O waits a few slices at most.
        let built = tokio::runtime::Builder::new_multi_thread()
            .thread_name(name)
            .global_queue_interval(GUEST_POLLS_BETWEEN_LOOKS)
            .event_interval(GUEST_POLLS_BETWEEN_LOOKS)
            .enable_all()
            .build();
        GuestRuntime(
            built
                .inspect_err(|error| {
                    tracing::warn!("cannot start the guests' runtime, guests that wait stay where they began: {error}")
                })
                .ok(),
        )
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for GuestRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A pre-instantiated component of either `wasi:http` generation.
#[derive(Clone)]
enum Pre {
    Wasi2(ProxyPre<RequestCtx>),
    Wasi3(wasmtime_wasi_http::p3::bindings::ServicePre<RequestCtx>, Arc<Runtime>),
}

impl Host {
    pub fn new(config: HostConfig) -> anyhow::Result<Host> {
        anyhow::ensure!(
            config.memory_limit <= MAX_MEMORY_LIMIT,
            "memory limit {} MiB is above the ceiling of {} MiB",
            config.memory_limit >> 20,
            MAX_MEMORY_LIMIT >> 20
        );
        anyhow::ensure!(config.max_instances > 0, "the instance limit must be at least 1");

        let instances = config.max_instances;
        let wasi2 = Runtime::new(&config, false)?;
        let ticker = EpochTicker::start(&wasi2.engine);
        let shared = Shared {
            instances: Arc::new(Semaphore::new(instances as usize)),
            waiting: AtomicUsize::new(0),
            tasks: TaskTracker::new(),
            guests: OnceLock::new(),
            busy_guests: OnceLock::new(),
            ticker,
            loaded: Default::default(),
            started: Instant::now(),
            unloader: Unloader::start(),
            wasi2,
            wasi3: Default::default(),
            config,
        };
        let shared = Arc::new(shared);
        shared.unloader.watch(&shared);
        Ok(Host { shared })
    }

    pub fn config(&self) -> &HostConfig {
        &self.shared.config
    }

    pub fn engine(&self) -> &Engine {
        &self.shared.wasi2.engine
    }

    /// Guest tasks still running (a guest may run on after its response head
    /// was sent). Shutdown waits for these.
    pub fn tasks(&self) -> &TaskTracker {
        &self.shared.tasks
    }

    /// Compiles (or loads from the cache) and pre-instantiates a component,
    /// so that a component that cannot run fails here, not at its first
    /// request. With a compile cache, its code is then let go again, and
    /// loaded from the cache by its first request (see [`Code`]).
    /// Blocking: call it off the async runtime's worker threads.
    pub fn load(&self, spec: &ComponentSpec, on_event: &dyn Fn(LoadEvent<'_>)) -> anyhow::Result<ComponentPre> {
        let started = Instant::now();
        let cannot_read = || format!("component `{}`: cannot read `{}`", spec.id, spec.source.display());
        check_source(&spec.source).with_context(|| format!("component `{}`", spec.id))?;
        // Hashed through a mapping: the bytes themselves are read only if the
        // component has to be compiled.
        let mut hasher = blake3::Hasher::new();
        hasher.update_mmap(&spec.source).with_context(cannot_read)?;
        let content = hasher.finalize();
        tracing::debug!(id = %spec.id, "source hashed in {:.1?}", started.elapsed());
        let shared = self.shared.loaded.lock().expect("not poisoned").get(&content).and_then(std::sync::Weak::upgrade);
        let (code, outcome) = match shared {
            Some(code) => (code, CacheOutcome::Shared),
            None => {
                let read = || {
                    let bytes = std::fs::read(&spec.source).with_context(cannot_read)?;
                    on_event(LoadEvent::CompileStarted { id: &spec.id, bytes: bytes.len() });
                    Ok(bytes)
                };
                let recipe = Recipe { content, wasi3: false };
                let (pre, outcome) = self.shared.compile_and_link(&spec.id, &spec.source, &recipe, &read)?;
                let code = match outcome {
                    // Not in the cache, so not cheap to load again: kept.
                    CacheOutcome::Disabled | CacheOutcome::Unwritable => Code::loaded(pre),
                    _ => Code::unloaded(Recipe { wasi3: matches!(pre, Pre::Wasi3(..)), ..recipe }),
                };
                let code = Arc::new(code);
                let mut loaded = self.shared.loaded.lock().expect("not poisoned");
                loaded.retain(|_, code| code.strong_count() > 0);
                loaded.insert(content, Arc::downgrade(&code));
                (code, outcome)
            }
        };
        on_event(LoadEvent::Loaded { id: &spec.id, outcome, elapsed: started.elapsed() });
        let caps = ComponentCaps {
            id: spec.id.clone().into(),
            environment: spec.environment.clone(),
            config: spec.variables.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect(),
            variables: spec.variables.clone(),
            key_value: spec.key_value.clone(),
            preopens: spec.preopens.clone(),
            outbound: spec.outbound.clone(),
            output: spec.output.clone(),
        };
        Ok(ComponentPre {
            code,
            source: spec.source.as_path().into(),
            caps: Arc::new(caps),
            shared: self.shared.clone(),
            stats: Arc::default(),
            metrics: spec.metrics.clone(),
        })
    }
}

impl Shared {
    /// Runs a guest's task on a guest runtime, the busy guests' one for a
    /// component that runs long (or, if it could not be made, the caller's),
    /// tracked for the drain.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static, runs_long: bool) {
        let runtime = match runs_long {
            false => self.guests.get_or_init(|| GuestRuntime::start("dormouse-guest")),
            true => self.busy_guests.get_or_init(|| GuestRuntime::start("dormouse-busy")),
        };
        match runtime.handle() {
            Some(runtime) => drop(self.tasks.spawn_on(task, runtime)),
            None => drop(self.tasks.spawn(task)),
        }
    }
}

impl Shared {
    /// Loads the component `recipe` names from the compile cache, or
    /// compiles it from the bytes `read` returns (and caches it), then links
    /// it: on the WASI 0.3 engine if `recipe.wasi3`, or if the 0.2 engine
    /// finds it uses the component model's async features.
    fn compile_and_link(
        self: &Arc<Self>,
        id: &str,
        source: &Path,
        recipe: &Recipe,
        read: &dyn Fn() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<(Pre, CacheOutcome)> {
        let content = &recipe.content;
        let cannot_compile =
            |error: anyhow::Error| error.context(format!("component `{id}`: cannot compile `{}`", source.display()));
        let wasi2 = &self.wasi2;
        let compiled = (!recipe.wasi3).then(|| wasi2.cache.load_or_compile(&wasi2.engine, content, read));
        // A component that uses the component model's async features
        // (wasi:http 0.3, Spin's `spin:*@3.0.0` interfaces) fails
        // validation on the 0.2 engine, and goes to the 0.3 one.
        let wasi3 = match &compiled {
            None => true,
            Some(Err(error)) => format!("{error:#}").contains("component model async feature"),
            Some(Ok(_)) => false,
        };
        let linked = Instant::now();
        let (pre, outcome) = match compiled {
            Some(compiled) if !wasi3 => {
                let (component, outcome) = compiled.map_err(cannot_compile)?;
                (Pre::Wasi2(proxy_pre(wasi2, id, source, &component)?), outcome)
            }
            _ => {
                let runtime = self.wasi3()?;
                let (component, outcome) =
                    runtime.cache.load_or_compile(&runtime.engine, content, read).map_err(cannot_compile)?;
                (Pre::Wasi3(p3::service_pre(&runtime, id, source, &component)?, runtime), outcome)
            }
        };
        tracing::debug!(%id, "pre-instantiated in {:.1?}", linked.elapsed());
        Ok((pre, outcome))
    }

    /// The WASI 0.3 runtime, made (and ticked) on first use.
    fn wasi3(&self) -> anyhow::Result<Arc<Runtime>> {
        let mut wasi3 = self.wasi3.lock().expect("not poisoned");
        if let Some(runtime) = &*wasi3 {
            return Ok(runtime.clone());
        }
        let runtime = Arc::new(Runtime::new(&self.config, true)?);
        self.ticker.add(&runtime.engine);
        *wasi3 = Some(runtime.clone());
        Ok(runtime)
    }
}

/// A thread that lets go of the code of components with no request for
/// [`HostConfig::unload_after`]. It sleeps until the soonest one could be
/// let go, and for good (no wake-ups) while none is loaded.
struct Unloader {
    thread: std::thread::Thread,
    /// Gives the thread its host, once.
    host: std::sync::mpsc::SyncSender<std::sync::Weak<Shared>>,
}

impl Unloader {
    fn start() -> Unloader {
        let (host_tx, host_rx) = std::sync::mpsc::sync_channel::<std::sync::Weak<Shared>>(1);
        let thread = std::thread::Builder::new()
            .name("dormouse-unload".into())
            .spawn(move || {
                let Ok(host) = host_rx.recv() else { return };
                loop {
                    // Goes with the host; `Drop` below unparks it to see that.
                    let Some(shared) = host.upgrade() else { return };
                    let next = shared.unload_idle();
                    drop(shared);
                    match next {
                        Some(wait) => std::thread::park_timeout(wait),
                        None => std::thread::park(),
                    }
                }
            })
            .expect("spawning the unloader thread");
        Unloader { thread: thread.thread().clone(), host: host_tx }
    }

    fn watch(&self, shared: &Arc<Shared>) {
        let _ = self.host.try_send(Arc::downgrade(shared));
    }

    /// A component's code was loaded: it is to be let go in time.
    fn wake(&self) {
        self.thread.unpark();
    }
}

impl Drop for Unloader {
    fn drop(&mut self) {
        self.thread.unpark();
    }
}

impl Shared {
    /// Lets go of the code of components idle for `unload_after`, and says
    /// how long until the next one could be; `None` if none is loaded. A
    /// request that took the code before it was let go keeps it until it
    /// ends (and its store keeps the code it runs).
    fn unload_idle(&self) -> Option<Duration> {
        let codes: Vec<Arc<Code>> = {
            let loaded = self.loaded.lock().expect("not poisoned");
            loaded.values().filter_map(std::sync::Weak::upgrade).collect()
        };
        let keep = self.config.unload_after;
        let now = self.started.elapsed();
        let mut soonest: Option<Duration> = None;
        for code in codes.iter().filter(|code| code.recipe.is_some() && !code.keep.load(Ordering::Relaxed)) {
            if code.pre.load().is_none() {
                continue;
            }
            let last_used = Duration::from_secs(code.last_used_s.load(Ordering::Relaxed));
            // Its last second counted whole, so that it is never let go early.
            let idle = now.saturating_sub(last_used + Duration::from_secs(1));
            if idle >= keep {
                code.pre.store(None);
                let hash = code.recipe.as_ref().map(|recipe| recipe.content.to_hex());
                tracing::debug!(code = %hash.as_deref().map_or("", |hash| &hash[..16]), "code let go after {idle:.0?} with no request");
            } else {
                let left = keep - idle;
                soonest = Some(soonest.map_or(left, |soonest| soonest.min(left)));
            }
        }
        // Uses are counted in whole seconds: looking again sooner than a
        // second on would find nothing new to let go.
        soonest.map(|soonest| soonest.max(Duration::from_secs(1)))
    }
}

/// How to load a component's code again: the cache entry of these bytes
/// (or, if it is gone, the requesting component's own source, if it still
/// has them).
struct Recipe {
    /// The BLAKE3 hash of the bytes checked at start: the cache entry's key,
    /// and what the source must still hash to if it has to be compiled again.
    content: blake3::Hash,
    /// Whether it runs on the WASI 0.3 engine.
    wasi3: bool,
}

/// A component's compiled code and pre-instantiation, in memory only while
/// it is used.
///
/// A component whose code is in the compile cache is loaded and linked at
/// start (so that one that cannot run fails the start) and let go; its first
/// request loads it again from the cache (a mapping of the file, ~0.25 ms
/// for a small guest, on a blocking thread), and it is let go again after
/// [`HostConfig::unload_after`] with no request. Components with the same
/// bytes share it; if the cache entry is gone, the requesting component's
/// own source is compiled, provided it still has the bytes checked at start.
/// An app of 1,000 components nobody calls holds none of their code, and a
/// start from a warm cache maps each entry once. Without a cache (or one that
/// cannot be written), the code is kept from the start.
struct Code {
    pre: arc_swap::ArcSwapOption<Pre>,
    /// When a request last asked for it, in seconds since the host started.
    last_used_s: AtomicU64,
    /// Held by the one request that loads it; others wait for it.
    loading: Arc<tokio::sync::Mutex<()>>,
    /// How to load it; `None` when it is kept from the start.
    recipe: Option<Recipe>,
    /// Set when a load had to compile and could not write the cache: kept
    /// from then on, since loading it again would mean compiling again.
    keep: std::sync::atomic::AtomicBool,
}

impl Code {
    fn loaded(pre: Pre) -> Code {
        Code {
            pre: arc_swap::ArcSwapOption::from_pointee(pre),
            last_used_s: 0.into(),
            loading: Default::default(),
            recipe: None,
            keep: true.into(),
        }
    }

    fn unloaded(recipe: Recipe) -> Code {
        Code {
            pre: arc_swap::ArcSwapOption::empty(),
            last_used_s: 0.into(),
            loading: Default::default(),
            recipe: Some(recipe),
            keep: false.into(),
        }
    }

    /// The pre-instantiated component, loaded by the first request that
    /// needs it. The load runs to its end even if that request is dropped
    /// (its client hung up), so that the next one finds it done.
    ///
    /// Errors: [`HandleError::Load`] when the cache entry is gone and the
    /// source no longer has the bytes checked at start, or cannot be read.
    async fn get(self: &Arc<Self>, shared: &Arc<Shared>, id: &str, source: &Path) -> Result<Arc<Pre>, HandleError> {
        self.touch(shared);
        if let Some(pre) = self.pre.load_full() {
            return Ok(pre);
        }
        let held = self.loading.clone().lock_owned().await;
        if let Some(pre) = self.pre.load_full() {
            return Ok(pre);
        }
        let (code, shared, id, source) = (self.clone(), shared.clone(), id.to_owned(), source.to_owned());
        let loading = tokio::task::spawn_blocking(move || {
            let _held = held;
            let recipe = code.recipe.as_ref().expect("code kept from the start is always loaded");
            let started = Instant::now();
            let read = || {
                let bytes = std::fs::read(&source).with_context(|| format!("cannot read `{}`", source.display()))?;
                anyhow::ensure!(
                    blake3::hash(&bytes) == recipe.content,
                    "`{}` changed since the app started, and its compiled code is no longer in the cache: \
                     start (or deploy) the app again to load it",
                    source.display()
                );
                Ok(bytes)
            };
            let (pre, outcome) = shared.compile_and_link(&id, &source, recipe, &read)?;
            if outcome == CacheOutcome::Unwritable {
                code.keep.store(true, Ordering::Relaxed);
            }
            let pre = Arc::new(pre);
            // Idle from now on, not from the request that began the load.
            code.touch(&shared);
            code.pre.store(Some(pre.clone()));
            shared.unloader.wake();
            tracing::debug!(%id, "loaded for its first request in {:.1?}", started.elapsed());
            Ok::<_, anyhow::Error>(pre)
        });
        match loading.await {
            Ok(Ok(pre)) => Ok(pre),
            Ok(Err(error)) => Err(HandleError::Load(format!("{error:#}"))),
            Err(error) => Err(HandleError::Load(error.to_string())),
        }
    }

    /// Notes a use now. Written once a second at most, so that a busy
    /// component's requests on several threads do not contend for the line.
    fn touch(&self, shared: &Shared) {
        let now = shared.started.elapsed().as_secs();
        if self.last_used_s.load(Ordering::Relaxed) != now {
            self.last_used_s.store(now, Ordering::Relaxed);
        }
    }
}

/// The first bytes of a WebAssembly binary (`\0asm`), and the version and
/// layer words that follow: a component says layer 1, a core module layer 0
/// (the Component Model's binary format, `Binary.md`).
const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// Refuses, before anything reads it whole, a source that cannot be a
/// component: not a regular file (a FIFO would block start-up forever, a
/// directory fails obscurely), empty, not WebAssembly, or a core module.
fn check_source(source: &Path) -> anyhow::Result<()> {
    use std::io::Read as _;
    let shown = source.display();
    let metadata = std::fs::metadata(source).with_context(|| format!("cannot read `{shown}`"))?;
    let kind = metadata.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt as _;
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a named pipe (FIFO)"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        anyhow::bail!("`{shown}` is {what}, not a regular file");
    }
    anyhow::ensure!(metadata.len() > 0, "`{shown}` is empty, not a WebAssembly component");
    let mut head = [0u8; 8];
    let read = std::fs::File::open(source)
        .and_then(|mut file| file.read(&mut head))
        .with_context(|| format!("cannot read `{shown}`"))?;
    anyhow::ensure!(
        read == head.len() && &head[..4] == WASM_MAGIC,
        "`{shown}` is not a WebAssembly binary (it does not start with `\\0asm`)"
    );
    anyhow::ensure!(
        head[6..8] == [1, 0],
        "`{shown}` is a core WebAssembly module, not a component: wrap it with `wasm-tools component new`"
    );
    Ok(())
}

/// A WASI 0.2 component, linked and checked for the `wasi:http/proxy` export.
fn proxy_pre(
    runtime: &Runtime,
    id: &str,
    source: &Path,
    component: &Component,
) -> anyhow::Result<ProxyPre<RequestCtx>> {
    ProxyPre::new(runtime.instantiate_pre(id, source, component)?).map_err(anyhow::Error::from).with_context(|| {
        format!(
            "component `{id}` (`{}`) is not a wasi:http/proxy component: it must export `wasi:http/incoming-handler@0.2.x`",
            source.display()
        )
    })
}

/// Slots of the pooling allocator, sized from the instance limit, and tuned so
/// that returning an instance to the pool costs no system call in the common
/// case: pages a guest dirtied are found with `PAGEMAP_SCAN` (Linux 6.7+) and
/// zeroed with `memset` up to the keep-resident size, instead of `madvise`,
/// whose cross-CPU TLB shootdowns dominate per-request cost inside a VM.
fn pooling_config(config: &HostConfig) -> PoolingAllocationConfig {
    let instances = config.max_instances;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances);
    pool.total_stacks(instances);
    // A component instance holds several core instances (the guest, and the
    // shims and adapters wit-component adds), each with a table; two memories
    // cover guests built with a separate allocator module.
    pool.total_core_instances(instances.saturating_mul(8));
    pool.total_tables(instances.saturating_mul(8));
    pool.total_memories(instances.saturating_mul(2));
    pool.max_memory_size(config.memory_limit);
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    // Costs up to this much resident memory per warm slot; a small guest
    // (C, Rust) dirties less and is reset with no system call at all.
    pool.linear_memory_keep_resident(KEEP_RESIDENT);
    pool.table_keep_resident(KEEP_RESIDENT);
    pool
}

/// Memory a pooled slot keeps resident (and resets by `memset`) between uses.
const KEEP_RESIDENT: usize = 1 << 20;

/// A guest's response head with its body, or the error code it answered with
/// (as text: 0.2 and 0.3 have a type each); an error if it never answered.
type HeadResult = Result<Result<hyper::Response<body::Inner>, String>, oneshot::error::RecvError>;

/// The head a guest sends on `receiver`, of either generation.
async fn head_of<T, E>(receiver: oneshot::Receiver<Result<hyper::Response<T>, E>>) -> HeadResult
where
    T: Into<body::Inner>,
    E: std::fmt::Debug,
{
    Ok(receiver.await?.map(|response| response.map(Into::into)).map_err(|code| format!("{code:?}")))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while any guest is in
/// flight, and sleeps (parked, no wake-ups) while none is: an idle host uses
/// no CPU at all.
struct EpochTicker {
    in_flight: AtomicUsize,
    thread: std::thread::Thread,
    /// Engines made after the first (the WASI 0.3 one), ticked alongside it.
    more: std::sync::Mutex<Vec<wasmtime::EngineWeak>>,
}

/// Held for as long as a guest may run; the ticker runs while any is held.
struct TickerGuard(Arc<EpochTicker>);

impl EpochTicker {
    fn start(engine: &Engine) -> Arc<EpochTicker> {
        let engine = engine.weak();
        let (ticker_tx, ticker_rx) = std::sync::mpsc::channel::<std::sync::Weak<EpochTicker>>();
        let thread = std::thread::Builder::new()
            .name("dormouse-epoch".into())
            .spawn(move || {
                let Ok(ticker) = ticker_rx.recv() else { return };
                loop {
                    // Both go when the host does; `Drop` below unparks us to see it.
                    let (Some(state), Some(engine)) = (ticker.upgrade(), engine.upgrade()) else { return };
                    let idle = state.in_flight.load(Ordering::Acquire) == 0;
                    if idle {
                        drop((state, engine));
                        std::thread::park();
                    } else {
                        engine.increment_epoch();
                        for more in state.more.lock().expect("not poisoned").iter() {
                            if let Some(engine) = more.upgrade() {
                                engine.increment_epoch();
                            }
                        }
                        drop((state, engine));
                        std::thread::sleep(EPOCH_TICK);
                    }
                }
            })
            .expect("spawning the epoch ticker thread");
        let ticker = Arc::new(EpochTicker {
            in_flight: AtomicUsize::new(0),
            thread: thread.thread().clone(),
            more: Default::default(),
        });
        let _ = ticker_tx.send(Arc::downgrade(&ticker));
        ticker
    }

    fn add(&self, engine: &Engine) {
        self.more.lock().expect("not poisoned").push(engine.weak());
    }

    fn enter(self: &Arc<Self>) -> TickerGuard {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.thread.unpark();
        }
        TickerGuard(self.clone())
    }
}

impl Drop for TickerGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.thread.unpark();
    }
}

/// A component ready to serve: compiled, linked and pre-instantiated. Cheap to
/// clone; each request gets its own `Store` and instance from it.
#[derive(Clone)]
pub struct ComponentPre {
    code: Arc<Code>,
    /// Its own source, which its code is compiled from again if the cache
    /// entry is gone.
    source: Arc<Path>,
    caps: Arc<ComponentCaps>,
    shared: Arc<Shared>,
    stats: Arc<ComponentStats>,
    metrics: Option<Arc<dormouse_telemetry::TargetMetrics>>,
}

/// What a component's instances are doing, for `instance ls`.
#[derive(Default)]
struct ComponentStats {
    /// Instances alive now: 0 is standby.
    live: AtomicUsize,
    /// Instances made so far, one per request.
    instantiated: std::sync::atomic::AtomicU64,
    /// Requests waiting in the host's queue for an instance of this one.
    waiting: AtomicUsize,
    /// A guest of it was still running when two epoch ticks passed (10 ms
    /// or more), and none has since finished in one poll: its next guest
    /// starts on the guest runtime, not in a connection's task, so that a
    /// burst of busy guests holds an I/O thread up for a tick or two, not a
    /// tick each.
    runs_long: AtomicBool,
}

/// Counts how a guest's handling of a request ended; a guest dropped before
/// it ended (nobody could read its answer any more) counts as cancelled.
struct OutcomeRecord {
    metrics: Arc<dormouse_telemetry::TargetMetrics>,
    /// Set if a `memory.grow` was refused.
    flags: Arc<ctx::GuestFlags>,
    done: bool,
}

impl OutcomeRecord {
    fn finish(mut self, outcome: &Result<(), GuestError>) {
        use dormouse_telemetry::GuestOutcome;
        self.done = true;
        let refused = self.flags.memory_refused.load(Ordering::Relaxed);
        self.metrics.guest_outcome(match outcome {
            Ok(()) => GuestOutcome::Ok,
            Err(GuestError::Trap(_)) if refused => GuestOutcome::MemoryLimit,
            Err(GuestError::CpuLimit(_)) => GuestOutcome::CpuLimit,
            Err(GuestError::Timeout(_)) => GuestOutcome::Timeout,
            Err(GuestError::Trap(_) | GuestError::Lost) => GuestOutcome::Trap,
        });
    }
}

impl Drop for OutcomeRecord {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.guest_outcome(if self.flags.error_code.load(Ordering::Relaxed) {
                dormouse_telemetry::GuestOutcome::ErrorCode
            } else {
                dormouse_telemetry::GuestOutcome::Cancelled
            });
        }
    }
}

/// A request counted as waiting for an instance of a component (its queue
/// depth), until dropped however the wait ends.
struct WaitingMark<'a>(&'a AtomicUsize);

impl WaitingMark<'_> {
    fn new(waiting: &AtomicUsize) -> WaitingMark<'_> {
        waiting.fetch_add(1, Ordering::Relaxed);
        WaitingMark(waiting)
    }
}

impl Drop for WaitingMark<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One instance counted alive, until dropped with its store's permit.
struct Live(Arc<ComponentStats>);

impl Live {
    fn new(stats: &Arc<ComponentStats>) -> Live {
        stats.live.fetch_add(1, Ordering::Relaxed);
        stats.instantiated.fetch_add(1, Ordering::Relaxed);
        Live(stats.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ComponentPre {
    pub fn id(&self) -> &str {
        &self.caps.id
    }

    /// Whether the component's compiled code is in memory now: from its first
    /// request until it has had none for [`HostConfig::unload_after`] (and
    /// always, without a compile cache).
    pub fn code_loaded(&self) -> bool {
        self.code.pre.load().is_some()
    }

    /// Instances of this component alive now (requests being handled).
    pub fn live_instances(&self) -> usize {
        self.stats.live.load(Ordering::Relaxed)
    }

    /// Instances made so far: one per request admitted.
    pub fn instantiated(&self) -> u64 {
        self.stats.instantiated.load(Ordering::Relaxed)
    }

    /// Requests waiting for an instance of this component (all instance
    /// slots taken).
    pub fn waiting(&self) -> usize {
        self.stats.waiting.load(Ordering::Relaxed)
    }

    /// Where this component's requests are counted, if metrics are kept.
    pub fn metrics(&self) -> Option<&Arc<dormouse_telemetry::TargetMetrics>> {
        self.metrics.as_ref()
    }

    /// Linear memory each instance may use, in bytes.
    pub fn memory_limit(&self) -> usize {
        self.shared.config.memory_limit
    }

    /// Instantiates the component, hands it the request and returns the
    /// response head as soon as the guest sets it. The body streams from the
    /// guest, which runs on in its own task until it returns.
    pub async fn handle<B>(&self, request: hyper::Request<B>) -> Result<hyper::Response<GuardedBody>, HandleError>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let config = &self.shared.config;
        let deadline = tokio::time::Instant::now() + config.wall_limit;
        // Loading the code (a first request) counts against the wall-clock
        // limit like the rest; when loaded, this is ready at once and sets
        // no timer.
        let pre =
            match tokio::time::timeout_at(deadline, self.code.get(&self.shared, &self.caps.id, &self.source)).await {
                Ok(pre) => pre?,
                Err(_) => return Err(GuestError::Timeout(config.wall_limit).into()),
            };
        let hops = request.extensions().get::<Hops>().copied().unwrap_or_default();
        let permit = self.acquire_instance(deadline).await?;
        let quota = match &config.quotas {
            Some(quotas) => Some(match quotas.try_admit(config.memory_limit as u64) {
                Ok(permit) => permit,
                // Waiting for room under a quota is waiting for an instance.
                Err(_) => {
                    let _waiting = WaitingMark::new(&self.stats.waiting);
                    quotas.admit(config.memory_limit as u64, deadline).await?
                }
            }),
            None => None,
        };
        let live = Live::new(&self.stats);
        let ticking = self.shared.ticker.enter();
        let metrics = self.metrics.clone();

        let engine = match &*pre {
            Pre::Wasi2(_) => &self.shared.wasi2.engine,
            Pre::Wasi3(_, runtime) => &runtime.engine,
        };
        let mut store = Store::new(engine, RequestCtx::new(&self.caps, config.memory_limit, hops));
        // Whether a `memory.grow` was refused (a trap after one is counted
        // as running out of memory), and whether it was stopped for an
        // error code. Only kept when someone counts them.
        let flags = metrics.as_ref().map(|_| store.data_mut().limits.watch());
        store.limiter(|ctx| &mut ctx.limits);
        let budget_ticks = config.cpu_limit.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1) as u64;
        let mut ticks_used = 0u64;
        store.set_epoch_deadline(1);
        // Each callback means the guest was running when a tick passed: count it
        // against the CPU budget and yield, so one busy guest cannot hold a
        // worker thread. Unless it was polled (resumed) just now: then the
        // deadline passed while it waited (for I/O, or its turn on a thread),
        // which is no CPU of its own; it runs on to the next tick.
        let stats = self.stats.clone();
        let clock = self.shared.started;
        let resumed = Arc::new(AtomicU64::new(0));
        let polled = resumed.clone();
        let mark_resumed = move || polled.store(clock.elapsed().as_nanos() as u64, Ordering::Relaxed);
        store.epoch_deadline_callback(move |_| {
            let running = (clock.elapsed().as_nanos() as u64).saturating_sub(resumed.load(Ordering::Relaxed));
            if running < RESUMED_WITHIN.as_nanos() as u64 {
                return Ok(UpdateDeadline::Continue(1));
            }
            ticks_used += 1;
            // Two ticks: it ran for 10 ms at least. One may land in a short
            // guest's microseconds (or while its thread was preempted).
            if ticks_used == 2 {
                stats.runs_long.store(true, Ordering::Relaxed);
            }
            if ticks_used > budget_ticks { Err(Trap::Interrupt.into()) } else { Ok(UpdateDeadline::Yield(1)) }
        });

        let run: Pin<Box<dyn Future<Output = wasmtime::Result<()>> + Send>>;
        let head: Pin<Box<dyn Future<Output = HeadResult> + Send>>;
        match &*pre {
            Pre::Wasi2(pre) => {
                let (response_tx, response_rx) = oneshot::channel();
                let (incoming, outparam) = {
                    let mut http = ctx::http_view(store.data_mut());
                    let incoming =
                        http.new_incoming_request(Scheme::Http, request).map_err(|e| GuestError::Trap(e.into()))?;
                    let outparam = http.new_response_outparam(response_tx).map_err(|e| GuestError::Trap(e.into()))?;
                    (incoming, outparam)
                };
                let pre = pre.clone();
                run = Box::pin(async move {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy.wasi_http_incoming_handler().call_handle(&mut store, incoming, outparam).await
                });
                head = Box::pin(head_of(response_rx));
            }
            Pre::Wasi3(pre, _) => {
                let (response_tx, response_rx) = oneshot::channel();
                run = Box::pin(p3::run(pre.clone(), store, request, response_tx));
                head = Box::pin(head_of(response_rx));
            }
        }

        let cpu_limit = config.cpu_limit;
        let wall_limit = config.wall_limit;
        // Counted once it is set up: from here on it ends in an outcome.
        let stopped = flags.clone();
        let record = metrics.zip(flags).map(|(metrics, flags)| {
            metrics.instantiated();
            OutcomeRecord { metrics, flags, done: false }
        });
        // What the guest's run came to (`None`: past the wall-clock limit);
        // counted, and its instance's places given back.
        let finish = move |ran: Option<wasmtime::Result<()>>| {
            let outcome = match ran {
                Some(Ok(())) => Ok(()),
                Some(Err(error)) if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => {
                    Err(GuestError::CpuLimit(cpu_limit))
                }
                Some(Err(error)) => Err(GuestError::Trap(error.into())),
                None => Err(GuestError::Timeout(wall_limit)),
            };
            if let Some(record) = record {
                record.finish(&outcome);
            }
            drop(permit);
            drop(quota);
            drop(live);
            drop(ticking);
            outcome
        };

        // The guest runs right here, in the connection's task, until it first
        // waits. Most guests (answer, write, return) never do: they cost no
        // task and no wake-up of another thread. A guest that waits (for I/O,
        // or because a tick passed while it ran) goes on in a task of its own
        // on the guest runtime, so that it never holds up the other
        // connections of this I/O thread, and the wall-clock limit holds even
        // when the client stops reading the body. A component whose guests
        // run past a tick starts there (`runs_long`).
        //
        // The guest is polled before its head is looked for: one that finishes
        // in this poll sets its head before anyone waits for it.
        let mut run = run;
        let inline = !self.stats.runs_long.load(Ordering::Relaxed);
        let first = match inline {
            true => {
                std::future::poll_fn(|cx| {
                    mark_resumed();
                    std::task::Poll::Ready(run.as_mut().poll(cx))
                })
                .await
            }
            false => std::task::Poll::Pending,
        };
        match first {
            // The store (and with it the response sender) went with `run`, so
            // the receiver holds either a response or a closed channel.
            // Unconstrained: a receiver that holds its value would still say
            // "pending" once the task's cooperative budget is spent, and a
            // finished guest's answer would be lost.
            std::task::Poll::Ready(ran) => {
                drop(run);
                let outcome = finish(Some(ran));
                match tokio::task::unconstrained(head).now_or_never() {
                    Some(Ok(Ok(response))) => Ok(response.map(|body| GuardedBody::new(body, Outcome::Ready(outcome)))),
                    Some(Ok(Err(code))) => Err(HandleError::ErrorCode(code)),
                    _ => Err(outcome.err().map_or(HandleError::NoResponse, HandleError::Guest)),
                }
            }
            std::task::Poll::Pending => {
                let (mut outcome_tx, outcome_rx) = oneshot::channel();
                let stats = self.stats.clone();
                let guest = async move {
                    let mut polls = 0u32;
                    let counted = std::future::poll_fn(|cx| {
                        polls += 1;
                        mark_resumed();
                        run.as_mut().poll(cx)
                    });
                    let ran = tokio::time::timeout_at(deadline, counted).await.ok();
                    // Started here for a guest that ran long, and done in
                    // one poll: the next may start inline again.
                    if !inline && polls == 1 {
                        stats.runs_long.store(false, Ordering::Relaxed);
                    }
                    finish(ran)
                };
                let task = async move {
                    // The response body holds the receiver (this request, until
                    // its head): once it is dropped (the client hung up, or a
                    // HEAD response needed no body), nobody can read what the
                    // guest writes, so the guest is dropped, its instance torn
                    // down and its slot freed.
                    tokio::select! {
                        outcome = guest => {
                            let _ = outcome_tx.send(outcome);
                        }
                        () = outcome_tx.closed() => {}
                    }
                };
                self.shared.spawn(task, !inline);
                match head.await {
                    Ok(Ok(response)) => Ok(response.map(|body| GuardedBody::new(body, Outcome::Pending(outcome_rx)))),
                    // The guest answered with an error code: nothing it does
                    // next can reach the client, so it is stopped (the
                    // receiver dropped).
                    Ok(Err(code)) => {
                        if let Some(flags) = stopped {
                            flags.error_code.store(true, Ordering::Relaxed);
                        }
                        Err(HandleError::ErrorCode(code))
                    }
                    Err(_closed) => {
                        let failed = outcome_rx.await.ok().and_then(Result::err);
                        Err(failed.map_or(HandleError::NoResponse, HandleError::Guest))
                    }
                }
            }
        }
    }

    /// An instance permit, waiting in the bounded queue when all are taken.
    async fn acquire_instance(&self, deadline: tokio::time::Instant) -> Result<OwnedSemaphorePermit, HandleError> {
        let shared = &self.shared;
        if let Ok(permit) = shared.instances.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let overloaded = || HandleError::Overloaded(shared.config.max_instances);
        // A place in the queue, given back however the wait ends: also when
        // the request is dropped mid-wait because its client hung up.
        struct QueuePlace<'a>(&'a AtomicUsize);
        impl Drop for QueuePlace<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let place = (QueuePlace(&shared.waiting), WaitingMark::new(&self.stats.waiting));
        if shared.waiting.fetch_add(1, Ordering::AcqRel) >= shared.config.queue_limit {
            return Err(overloaded());
        }
        let permit = tokio::time::timeout_at(deadline, shared.instances.clone().acquire_owned()).await;
        drop(place);
        match permit {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(overloaded()),
        }
    }
}
