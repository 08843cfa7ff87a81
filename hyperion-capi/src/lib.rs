//! Hyperion's C ABI: the functions and types of
//! `include/hyperion/utils/mmap_loader.h` (the `mmap_loader` API, described in
//! the repository's `docs/api.md`), plus `hyperionLastError`.
//!
//! C programs use it through the header and `libhyperion.so` / `libhyperion.a`
//! (see `docs/c-api.md`); Rust programs should use [`MappedModel`] instead.
//! The header's doc comments are the contract; this module keeps it:
//!
//! - **Handles.** A `HyperionMappedModel *` is the address of the model's
//!   state, registered in a global table until it is closed. Calls look the
//!   handle up in the table and never dereference it, so a NULL, closed or
//!   foreign handle is an error (`hyperionLastError`), not undefined behaviour
//!   — unless the address was reused by a model opened later (as with
//!   `free`, the handle is dead once closed).
//! - **Weights.** The C side holds one [`LayerWeights`] per layer it returned
//!   a pointer to; the pointer stays valid until the layer is released or the
//!   model closed, whatever the cache evicts meanwhile.
//! - **Descriptors.** Each thread gets its own descriptor table per model
//!   (thread-local), refreshed by each call, so no thread ever writes a
//!   descriptor another thread may be reading.
//! - **Blocking.** The async core runs on one internal multi-thread tokio
//!   runtime, created on first use and shared by all models. A blocking call
//!   first polls its future once on the calling thread (a cache hit completes
//!   there, with no thread switch); otherwise it hands the future to the
//!   internal runtime and waits on a plain channel. It never calls
//!   `Runtime::block_on`, so it works from any thread, inside a tokio runtime
//!   or not.
//! - **Errors and panics.** Every export runs inside `catch_unwind`; failures
//!   become NULL / false / 0 / -1 and a thread-local message.
#![allow(non_snake_case)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString, OsStr};
use std::fmt;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc, LazyLock, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use parking_lot::{Mutex, RwLock};

use hyperion::config::MAX_PARALLEL;
use hyperion::{Error, LayerWeights, MappedModel, MmapConfig};

// ---------------------------------------------------------------------------
// Types (must match the header field for field)
// ---------------------------------------------------------------------------

/// The API's `HyperionMmapConfig` (docs/api.md): how a model is loaded and cached.
///
/// Fields not listed here (backend, direct I/O, read sizes, checksums, how
/// long a fetch waits for memory) take their [`MmapConfig::default`] values.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HyperionMmapConfig {
    /// Bytes of layer buffers held at once (cached, returned to the caller,
    /// or being read); never exceeded. Must be > 0.
    pub maxCacheSize: usize,
    /// Whether `hyperionPrefetchLayerWeights` reads ahead.
    pub prefetchEnabled: bool,
    /// The most prefetch reads in flight at once (not OS threads): 1..=1024
    /// when prefetching is enabled, 0..=1024 when it is not.
    pub prefetchThreads: c_int,
    /// Whether eviction learns from the access pattern.
    pub adaptiveCaching: bool,
    /// The allocation granule: each cached layer is charged whole multiples
    /// of this, rounded up to 4 KiB.
    pub minLayerCacheSize: usize,
}

/// The API's `HyperionLayerDescriptor` (docs/api.md): a layer's place in its file and its
/// cache state, as of the `hyperionGetLayerDescriptor` call that filled it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HyperionLayerDescriptor {
    /// File offset of the layer's first byte. For formats that split a layer
    /// over several byte ranges (safetensors, GGUF), that of the first range;
    /// the layer's bytes are then the ranges concatenated.
    pub offset: usize,
    /// Size of the layer's bytes.
    pub size: usize,
    /// The layer's index.
    pub layerIndex: c_int,
    /// Bits per weight.
    pub precision: c_int,
    /// The pointer `hyperionGetLayerWeights` returned for this layer and that
    /// is still valid (the C side holds the layer), else NULL.
    pub cachedWeights: *mut c_void,
    /// Whether the layer's bytes are in memory: held by the C side, or cached
    /// by the loader (for example after a prefetch).
    pub isActive: bool,
    /// Retention priority (higher stays cached longer; default 0).
    pub priority: f32,
    /// Nanoseconds between opening the model and the last fetch of this layer
    /// (monotonic clock); 0 if it was never fetched.
    pub lastAccessed: u64,
    /// How many times the layer was fetched.
    pub accessCount: u64,
}

/// The opaque model handle of the C API. C code only ever holds pointers to
/// it; they are never dereferenced (see the module docs).
pub struct HyperionMappedModel {
    _opaque: [u8; 0],
}

/// What `hyperionOpenMappedModel` reads through its `config` pointer: the
/// layout of [`HyperionMmapConfig`] with its `bool`s as bytes, so that a
/// caller's garbage in a `bool` field is read as "true" instead of being
/// undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawMmapConfig {
    max_cache_size: usize,
    prefetch_enabled: u8,
    prefetch_threads: c_int,
    adaptive_caching: u8,
    min_layer_cache_size: usize,
}

// The layouts the header declares, checked at compile time. The C tests check
// the same numbers against the header (`examples/c/layout.c`).
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    type D = HyperionLayerDescriptor;
    type C = HyperionMmapConfig;
    type R = RawMmapConfig;
    assert!(size_of::<bool>() == 1 && size_of::<c_int>() == 4 && size_of::<f32>() == 4);
    assert!(size_of::<usize>() == size_of::<*mut c_void>());
    assert!(offset_of!(C, maxCacheSize) == offset_of!(R, max_cache_size));
    assert!(offset_of!(C, prefetchEnabled) == offset_of!(R, prefetch_enabled));
    assert!(offset_of!(C, prefetchThreads) == offset_of!(R, prefetch_threads));
    assert!(offset_of!(C, adaptiveCaching) == offset_of!(R, adaptive_caching));
    assert!(offset_of!(C, minLayerCacheSize) == offset_of!(R, min_layer_cache_size));
    assert!(size_of::<C>() == size_of::<R>() && align_of::<C>() == align_of::<R>());
    #[cfg(target_pointer_width = "64")]
    {
        assert!(size_of::<D>() == 56 && align_of::<D>() == 8);
        assert!(offset_of!(D, offset) == 0 && offset_of!(D, size) == 8);
        assert!(offset_of!(D, layerIndex) == 16 && offset_of!(D, precision) == 20);
        assert!(offset_of!(D, cachedWeights) == 24 && offset_of!(D, isActive) == 32);
        assert!(offset_of!(D, priority) == 36 && offset_of!(D, lastAccessed) == 40);
        assert!(offset_of!(D, accessCount) == 48);
        assert!(size_of::<C>() == 32 && align_of::<C>() == 8);
        assert!(offset_of!(C, maxCacheSize) == 0 && offset_of!(C, prefetchEnabled) == 8);
        assert!(offset_of!(C, prefetchThreads) == 12 && offset_of!(C, adaptiveCaching) == 16);
        assert!(offset_of!(C, minLayerCacheSize) == 24);
    }
};

impl HyperionLayerDescriptor {
    const EMPTY: HyperionLayerDescriptor = HyperionLayerDescriptor {
        offset: 0,
        size: 0,
        layerIndex: 0,
        precision: 0,
        cachedWeights: ptr::null_mut(),
        isActive: false,
        priority: 0.0,
        lastAccessed: 0,
        accessCount: 0,
    };
}

impl From<&MmapConfig> for HyperionMmapConfig {
    fn from(c: &MmapConfig) -> Self {
        HyperionMmapConfig {
            maxCacheSize: saturating_usize(c.max_cache_size),
            prefetchEnabled: c.prefetch_enabled,
            prefetchThreads: c_int::try_from(c.prefetch_threads).unwrap_or(c_int::MAX),
            adaptiveCaching: c.adaptive_caching,
            minLayerCacheSize: saturating_usize(c.min_layer_cache_size),
        }
    }
}

impl RawMmapConfig {
    /// The Rust configuration, or why this one is invalid (in the C field names).
    fn to_config(self) -> Result<MmapConfig, FfiError> {
        let prefetch_enabled = self.prefetch_enabled != 0;
        if self.max_cache_size == 0 {
            return Err(FfiError::new("config.maxCacheSize must be > 0"));
        }
        let threads = self.prefetch_threads;
        if threads < 0 || (threads == 0 && prefetch_enabled) || threads as usize > MAX_PARALLEL {
            return Err(FfiError::new(format!(
                "config.prefetchThreads is {threads}; it must be between {} and {MAX_PARALLEL} \
                 when prefetchEnabled is {prefetch_enabled}",
                u8::from(prefetch_enabled),
            )));
        }
        if self.min_layer_cache_size as u64 > 1 << 40 {
            return Err(FfiError::new(format!(
                "config.minLayerCacheSize is {}, above the limit of 1 TiB",
                self.min_layer_cache_size
            )));
        }
        Ok(MmapConfig {
            max_cache_size: self.max_cache_size as u64,
            prefetch_enabled,
            prefetch_threads: threads as usize,
            adaptive_caching: self.adaptive_caching != 0,
            min_layer_cache_size: self.min_layer_cache_size as u64,
            ..MmapConfig::default()
        })
    }
}

// ---------------------------------------------------------------------------
// Model state and the handle table
// ---------------------------------------------------------------------------

/// What a handle stands for.
struct ModelState {
    model: MappedModel,
    /// Per layer: the weights whose pointer the C side was given, until released.
    held: Box<[Mutex<Option<LayerWeights>>]>,
    /// Set by close, for calls that looked the handle up just before.
    closed: AtomicBool,
}

/// Open models by handle address. Each call clones the `Arc` out under the
/// read lock, so a model's state lives until the last call using it returns.
static MODELS: LazyLock<RwLock<HashMap<usize, Arc<ModelState>>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

fn handle_of(state: &Arc<ModelState>) -> *mut HyperionMappedModel {
    Arc::as_ptr(state).cast::<HyperionMappedModel>().cast_mut()
}

/// The state of the open model `model`.
fn lookup(model: *const HyperionMappedModel) -> Result<Arc<ModelState>, FfiError> {
    if model.is_null() {
        return Err(FfiError::new("model is NULL"));
    }
    let state = MODELS.read().get(&model.addr()).cloned();
    state.ok_or_else(|| not_open(model))
}

fn not_open(model: *const HyperionMappedModel) -> FfiError {
    FfiError::new(format!(
        "{model:p} is not an open model (closed, or not returned by hyperionOpenMappedModel)"
    ))
}

impl ModelState {
    /// Checks that the model is open and `index` names one of its layers.
    fn layer(&self, index: c_int) -> Result<usize, FfiError> {
        if self.closed.load(SeqCst) {
            return Err(Error::Closed {
                path: Arc::from(self.model.path()),
            }
            .into());
        }
        let Ok(layer) = usize::try_from(index) else {
            return Err(FfiError::new(format!("layerIndex {index} is negative")));
        };
        let count = self.model.layer_count();
        if layer >= count {
            return Err(Error::LayerOutOfRange {
                path: Arc::from(self.model.path()),
                layer,
                count,
            }
            .into());
        }
        Ok(layer)
    }

    /// The pointer the C side holds for `layer`, or NULL.
    fn held_ptr(&self, layer: usize) -> *mut c_void {
        self.held[layer]
            .lock()
            .as_ref()
            .map_or(ptr::null_mut(), weights_ptr)
    }
}

fn weights_ptr(weights: &LayerWeights) -> *mut c_void {
    // Read-only memory handed out as `void *` because the API (docs/api.md) says so; the
    // header forbids writing through it.
    weights.bytes().as_ptr().cast::<c_void>().cast_mut()
}

fn saturating_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

// ---------------------------------------------------------------------------
// The internal runtime and blocking
// ---------------------------------------------------------------------------

/// The runtime every model opened through the C API runs on.
///
/// One for the process, not one per model: a runtime per model would cost
/// threads per model, and dropping a runtime at close panics when close is
/// called from inside another runtime. Two workers are plenty: the futures
/// here only do bookkeeping (cache, budget, waking readers); the reads run
/// on the io_uring ring thread or tokio's blocking pool. It is never shut
/// down; its threads end with the process.
fn runtime() -> Result<&'static tokio::runtime::Runtime, FfiError> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    // Build under a lock, so no second runtime is built and then dropped
    // (dropping one inside a caller's runtime would panic).
    let _building = BUILDING.lock();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hyperion-c")
        .enable_all()
        .build()
        .map_err(|e| FfiError::new(format!("cannot start the internal runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Runs `future` to completion, blocking the calling thread.
///
/// The first poll happens here, inside the internal runtime's context (so
/// whatever the future spawns lands on the internal runtime, never on a
/// runtime the caller may be blocking); a cache hit completes in that poll.
/// Otherwise the future moves to the internal runtime and this thread waits
/// on a std channel, which, unlike `Runtime::block_on` or tokio's
/// `blocking_recv`, may be used inside a runtime.
fn block_on<F>(future: F) -> Result<F::Output, FfiError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime()?;
    let mut future = Box::pin(future);
    {
        let _context = rt.enter();
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Ok(out);
        }
    }
    let (tx, rx) = mpsc::sync_channel(1);
    drop(rt.spawn(async move {
        let _ = tx.send(future.await);
    }));
    rx.recv()
        .map_err(|_| FfiError::new("internal error: the task running the call was lost"))
}

// ---------------------------------------------------------------------------
// Errors and the panic boundary
// ---------------------------------------------------------------------------

/// A failure reported through `hyperionLastError`.
struct FfiError(String);

impl FfiError {
    fn new(msg: impl Into<String>) -> Self {
        FfiError(msg.into())
    }
}

impl From<Error> for FfiError {
    /// The library's message, with its config field names spelled as the C
    /// struct spells them (`max_cache_size` → `config.maxCacheSize`), so a C
    /// caller can tell which field to change.
    fn from(e: Error) -> Self {
        let mut message = e.to_string();
        for (rust, c) in [
            ("max_cache_size", "config.maxCacheSize"),
            ("prefetch_enabled", "config.prefetchEnabled"),
            ("prefetch_threads", "config.prefetchThreads"),
            ("adaptive_caching", "config.adaptiveCaching"),
            ("min_layer_cache_size", "config.minLayerCacheSize"),
        ] {
            message = message.replace(rust, c);
        }
        FfiError(message)
    }
}

impl fmt::Display for FfiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(msg: Option<String>) {
    let msg = msg.map(|m| {
        // Messages may quote file contents; a NUL would end the C string early.
        CString::new(m.replace('\0', "\\0")).unwrap_or_default()
    });
    // Fails only while the thread's locals are being destroyed; nothing to report to then.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = msg);
}

/// Runs the body of export `name`: clears the thread's last error, and turns
/// an error or a panic into `fallback` and a last error that names `name`.
fn boundary<T>(name: &str, fallback: T, body: impl FnOnce() -> Result<T, FfiError>) -> T {
    set_last_error(None);
    // AssertUnwindSafe: after a panic, no state is left half-updated that a
    // later call could observe: the locks (parking_lot) do not poison, a held
    // slot is replaced in one assignment, and the core's own state is only
    // touched through its public API.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => {
            set_last_error(Some(format!("{name}: {e}")));
            fallback
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            set_last_error(Some(format!("{name}: internal error (panic): {what}")));
            fallback
        }
    }
}

// ---------------------------------------------------------------------------
// Descriptors: one table per thread and model
// ---------------------------------------------------------------------------

/// A thread's descriptor table for one model. The `Weak` names the model and
/// keeps its address from being reused while the table exists.
type DescriptorTable = (Weak<ModelState>, Box<[HyperionLayerDescriptor]>);

thread_local! {
    static DESCRIPTORS: RefCell<Vec<DescriptorTable>> = const { RefCell::new(Vec::new()) };
}

/// Frees the tables of closed models: their pointers are dead.
fn prune(tables: &mut Vec<DescriptorTable>) {
    tables.retain(|(model, _)| model.strong_count() > 0);
}

fn prune_descriptor_tables() {
    let _ = DESCRIPTORS.try_with(|tables| prune(&mut tables.borrow_mut()));
}

/// Stores `value` in this thread's table for `state` and returns its address,
/// stable until the model is closed or the thread exits.
fn store_descriptor(
    state: &Arc<ModelState>,
    value: HyperionLayerDescriptor,
) -> Result<*const HyperionLayerDescriptor, FfiError> {
    let layer = value.layerIndex as usize;
    DESCRIPTORS
        .try_with(|tables| {
            let mut tables = tables.borrow_mut();
            prune(&mut tables);
            let at = match tables
                .iter()
                .position(|(model, _)| ptr::eq(model.as_ptr(), Arc::as_ptr(state)))
            {
                Some(at) => at,
                None => {
                    let table = vec![HyperionLayerDescriptor::EMPTY; state.model.layer_count()];
                    tables.push((Arc::downgrade(state), table.into_boxed_slice()));
                    tables.len() - 1
                }
            };
            let slot = &mut tables[at].1[layer];
            *slot = value;
            ptr::from_ref(slot)
        })
        .map_err(|_| FfiError::new("the calling thread is exiting"))
}

// ---------------------------------------------------------------------------
// The exports
// ---------------------------------------------------------------------------

/// Returns the default configuration (`MmapConfig::default()`'s values).
#[no_mangle]
pub extern "C" fn hyperionCreateDefaultMmapConfig() -> HyperionMmapConfig {
    // Returned only if computing the defaults panicked: the same values with
    // the smallest default budget.
    let fallback = HyperionMmapConfig {
        maxCacheSize: 256 << 20,
        prefetchEnabled: true,
        prefetchThreads: 2,
        adaptiveCaching: true,
        minLayerCacheSize: 4096,
    };
    boundary("hyperionCreateDefaultMmapConfig", fallback, || {
        Ok(HyperionMmapConfig::from(&MmapConfig::default()))
    })
}

/// Opens the model file at `filepath` (any format [`MappedModel::open`]
/// reads) with `config`, or the defaults when `config` is NULL. Returns NULL
/// on failure.
///
/// # Safety
/// `filepath` must be NULL or point to a NUL-terminated string, and `config`
/// must be NULL or point to a readable `HyperionMmapConfig`; both are only
/// read during the call.
#[no_mangle]
pub unsafe extern "C" fn hyperionOpenMappedModel(
    filepath: *const c_char,
    config: *const HyperionMmapConfig,
) -> *mut HyperionMappedModel {
    boundary("hyperionOpenMappedModel", ptr::null_mut(), || {
        if filepath.is_null() {
            return Err(FfiError::new("filepath is NULL"));
        }
        // SAFETY: the caller promises `filepath` points to a NUL-terminated
        // string (checked non-NULL above), unchanged during the call; the
        // bytes are copied into `path` before it returns.
        let path = Path::new(OsStr::from_bytes(
            unsafe { CStr::from_ptr(filepath) }.to_bytes(),
        ))
        .to_path_buf();
        let config = if config.is_null() {
            MmapConfig::default()
        } else {
            // SAFETY: the caller promises `config` points to a readable
            // `HyperionMmapConfig`; `RawMmapConfig` has the same size and
            // field offsets (asserted at compile time), and any initialized
            // bytes are a valid value of it (its bools are read as plain
            // bytes). `read_unaligned` does not need the pointer aligned.
            unsafe { config.cast::<RawMmapConfig>().read_unaligned() }.to_config()?
        };
        let model = block_on(MappedModel::open(path, config))??;
        let held = (0..model.layer_count()).map(|_| Mutex::new(None)).collect();
        let state = Arc::new(ModelState {
            model,
            held,
            closed: AtomicBool::new(false),
        });
        let handle = handle_of(&state);
        MODELS.write().insert(handle.addr(), state);
        Ok(handle)
    })
}

/// Closes `model`: invalidates the handle, every pointer `hyperionGetLayerWeights`
/// returned for it, and its descriptors. A NULL or already closed handle is
/// a no-op that sets the last error.
#[no_mangle]
pub extern "C" fn hyperionCloseMappedModel(model: *mut HyperionMappedModel) {
    boundary("hyperionCloseMappedModel", (), || {
        if model.is_null() {
            return Err(FfiError::new("model is NULL"));
        }
        // Removed under the write lock: one close wins, a second finds nothing.
        let removed = MODELS.write().remove(&model.addr());
        let state = removed.ok_or_else(|| not_open(model))?;
        // Calls that looked the handle up just before now fail with "closed".
        state.closed.store(true, SeqCst);
        state.model.clone().close();
        // Take the held weights out under each lock, drop them after.
        let held: Vec<LayerWeights> = state.held.iter().filter_map(|h| h.lock().take()).collect();
        drop(held);
        drop(state);
        // This thread's descriptors of the model can go now; other threads
        // free theirs on their next call, or when they exit.
        prune_descriptor_tables();
        Ok(())
    })
}

/// Returns the number of layers of `model`, or -1 if `model` is NULL or not
/// an open model.
#[no_mangle]
pub extern "C" fn hyperionGetMappedLayerCount(model: *const HyperionMappedModel) -> c_int {
    boundary("hyperionGetMappedLayerCount", -1, || {
        let state = lookup(model)?;
        let count = state.model.layer_count();
        c_int::try_from(count).map_err(|_| {
            FfiError::new(format!(
                "the model has {count} layers, more than an int holds"
            ))
        })
    })
}

/// Returns layer `layerIndex`'s descriptor, filled as of this call, in
/// storage of the calling thread (see the header), or NULL.
#[no_mangle]
pub extern "C" fn hyperionGetLayerDescriptor(
    model: *const HyperionMappedModel,
    layerIndex: c_int,
) -> *const HyperionLayerDescriptor {
    boundary("hyperionGetLayerDescriptor", ptr::null(), || {
        let state = lookup(model)?;
        let layer = state.layer(layerIndex)?;
        let d = state.model.descriptor(layer)?;
        let cached_weights = state.held_ptr(layer);
        let value = HyperionLayerDescriptor {
            offset: saturating_usize(d.offset),
            size: saturating_usize(d.size),
            layerIndex,
            precision: c_int::try_from(d.precision).unwrap_or(c_int::MAX),
            cachedWeights: cached_weights,
            isActive: d.is_active || !cached_weights.is_null(),
            priority: d.priority,
            lastAccessed: d.last_accessed,
            accessCount: d.access_count,
        };
        store_descriptor(&state, value)
    })
}

/// Returns a pointer to layer `layerIndex`'s bytes, reading them if needed
/// (blocking), or NULL. Valid until the layer is released or the model closed.
#[no_mangle]
pub extern "C" fn hyperionGetLayerWeights(
    model: *mut HyperionMappedModel,
    layerIndex: c_int,
) -> *mut c_void {
    boundary("hyperionGetLayerWeights", ptr::null_mut(), || {
        let state = lookup(model)?;
        let layer = state.layer(layerIndex)?;
        // Fetch even when the C side holds the layer: that is a cache hit
        // (a held layer cannot be evicted) and counts as an access.
        let fetched = block_on(state.model.layer(layer))?;
        let (result, spare) = {
            let mut held = state.held[layer].lock();
            if state.closed.load(SeqCst) {
                (
                    Err(Error::Closed {
                        path: Arc::from(state.model.path()),
                    }
                    .into()),
                    fetched.ok(),
                )
            } else {
                match (held.as_ref(), fetched) {
                    // Hand out the pointer already handed out. The fetched
                    // buffer differs only if a release raced with a read.
                    (Some(weights), fetched) => (Ok(weights_ptr(weights)), fetched.ok()),
                    (None, Ok(weights)) => {
                        let p = weights_ptr(&weights);
                        *held = Some(weights);
                        (Ok(p), None)
                    }
                    (None, Err(e)) => (Err(e.into()), None),
                }
            }
        };
        // A buffer whose last handle this was is unmapped here, outside the lock.
        drop(spare);
        result
    })
}

/// Starts reading layer `layerIndex` in the background. Returns whether it is
/// cached, being read or queued; false (with the last error saying why) if
/// not.
#[no_mangle]
pub extern "C" fn hyperionPrefetchLayerWeights(
    model: *mut HyperionMappedModel,
    layerIndex: c_int,
) -> bool {
    boundary("hyperionPrefetchLayerWeights", false, || {
        let state = lookup(model)?;
        let layer = state.layer(layerIndex)?;
        let rt = runtime()?;
        // The prefetch task is spawned on the current runtime: make that ours.
        let _context = rt.enter();
        state.model.prefetch(layer)?;
        Ok(true)
    })
}

/// Lets go of layer `layerIndex`: the pointer returned for it becomes
/// invalid, and the loader drops its cached copy, freeing the memory.
#[no_mangle]
pub extern "C" fn hyperionReleaseLayerWeights(model: *mut HyperionMappedModel, layerIndex: c_int) {
    boundary("hyperionReleaseLayerWeights", (), || {
        let state = lookup(model)?;
        let layer = state.layer(layerIndex)?;
        let held = state.held[layer].lock().take();
        let released = state.model.release(layer);
        // The last handle: its memory returns to the budget here, outside any lock.
        drop(held);
        Ok(released?)
    })
}

/// Returns the bytes of layer buffers alive for `model` (cached, held, being
/// read), or 0 if `model` is NULL or not an open model.
#[no_mangle]
pub extern "C" fn hyperionGetMappedModelMemoryUsage(model: *const HyperionMappedModel) -> usize {
    boundary("hyperionGetMappedModelMemoryUsage", 0, || {
        let state = lookup(model)?;
        Ok(saturating_usize(state.model.memory_usage()))
    })
}

/// Sets layer `layerIndex`'s retention priority (higher stays cached longer).
#[no_mangle]
pub extern "C" fn hyperionSetLayerPriority(
    model: *mut HyperionMappedModel,
    layerIndex: c_int,
    priority: f32,
) {
    boundary("hyperionSetLayerPriority", (), || {
        let state = lookup(model)?;
        let layer = state.layer(layerIndex)?;
        Ok(state.model.set_priority(layer, priority)?)
    })
}

/// Sets every layer's priority back to the default (0).
#[no_mangle]
pub extern "C" fn hyperionResetLayerPriorities(model: *mut HyperionMappedModel) {
    boundary("hyperionResetLayerPriorities", (), || {
        let state = lookup(model)?;
        if state.closed.load(SeqCst) {
            return Err(Error::Closed {
                path: Arc::from(state.model.path()),
            }
            .into());
        }
        state.model.reset_priorities();
        Ok(())
    })
}

/// Returns the message of the calling thread's last failed call, or NULL if
/// its last call succeeded. Valid until the thread's next call of any other
/// function of the API.
#[no_mangle]
pub extern "C" fn hyperionLastError() -> *const c_char {
    catch_unwind(|| {
        LAST_ERROR
            .try_with(|e| e.borrow().as_ref().map_or(ptr::null(), |m| m.as_ptr()))
            .unwrap_or(ptr::null())
    })
    .unwrap_or(ptr::null())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> Option<String> {
        let p = hyperionLastError();
        // SAFETY: non-NULL means a NUL-terminated string owned by this thread.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    #[test]
    fn a_panic_becomes_the_fallback_and_a_last_error() {
        let out = boundary("hyperionTest", -1, || -> Result<i32, FfiError> {
            panic!("boom {}", 42)
        });
        assert_eq!(out, -1);
        let err = last_error().unwrap();
        assert!(err.contains("hyperionTest") && err.contains("panic") && err.contains("boom 42"));
        assert_eq!(boundary("hyperionTest", -1, || Ok(7)), 7);
        assert_eq!(last_error(), None);
    }

    #[test]
    fn nul_bytes_in_messages_do_not_truncate_them() {
        boundary("hyperionTest", (), || Err(FfiError::new("a\0b")));
        assert_eq!(last_error().unwrap(), "hyperionTest: a\\0b");
    }

    #[test]
    fn block_on_finishes_pending_futures_on_the_internal_runtime() {
        let out = block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            std::thread::current().name().map(str::to_owned)
        })
        .ok()
        .flatten();
        assert_eq!(out.as_deref(), Some("hyperion-c"));
        assert_eq!(
            block_on(async { 5 }).ok(),
            Some(5),
            "ready futures finish in place"
        );
    }
}
