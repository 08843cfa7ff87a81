//! [`MappedModel`]: the facade that ties the index, the cache, the budget,
//! the backend and the prefetcher together.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::{self, BoxFuture};
use futures::{FutureExt, StreamExt};
use parking_lot::RwLock;
use tokio::sync::{oneshot, Semaphore};
use tracing::Instrument;

use crate::budget::{Budget, Charge, RECHECK};
use crate::cache::{Cache, Lookup, Origin, Published, Slot};
use crate::config::{Backend, MmapConfig};
use crate::error::{Error, Result};
use crate::index::ModelIndex;
use crate::io::ReadBackend;
use crate::policy::PolicyKind;
use crate::stats::{Counters, Stats};
use crate::verify::Verify;
use crate::weights::LayerWeights;

/// The priority every layer starts with, and returns to on
/// [`MappedModel::reset_priorities`].
pub const DEFAULT_PRIORITY: f32 = 0.0;

/// A model opened for layer-by-layer loading.
///
/// Cheap to clone (a reference count); clones share one cache, budget and
/// backend, and may be used from any number of tasks and threads at once.
///
/// # Examples
///
/// A forward pass that reads each layer while the next ones stream in:
///
/// ```
/// use hyperion::{synth, MappedModel, MmapConfig};
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> hyperion::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("model.tmai");
/// # synth::write(&path, &synth::SynthSpec { layers: 8, layer_size: 64 << 10, ..Default::default() })?;
/// let config = MmapConfig { max_cache_size: 256 << 10, ..MmapConfig::default() };
/// let model = MappedModel::open(&path, config).await?;
/// for i in 0..model.layer_count() {
///     for ahead in i + 1..(i + 3).min(model.layer_count()) {
///         let _ = model.prefetch(ahead);
///     }
///     let weights = model.layer(i).await?;
///     assert_eq!(weights.len() as u64, model.descriptor(i)?.size);
///     // ... compute with `weights` ...
/// }
/// assert!(model.stats().peak_memory <= 256 << 10);
/// model.close();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MappedModel {
    shared: Arc<Shared>,
}

/// Per-layer state that lives outside the cache: the spec's descriptor fields.
#[derive(Debug)]
pub(crate) struct LayerMeta {
    /// `f32` bits of the layer's priority.
    priority: AtomicU32,
    /// The policy clock at the last fetch or insertion (for LRU).
    pub(crate) last_used: AtomicU64,
    /// Nanoseconds after open of the last fetch, 0 if never fetched.
    last_accessed: AtomicU64,
    access_count: AtomicU64,
    /// Live buffers of this layer (cached or held by callers).
    pub(crate) live: AtomicUsize,
    /// Set by every fetch; the cache replays set flags into the eviction
    /// policy before it evicts (so hits take no lock).
    pub(crate) accessed: AtomicBool,
}

impl LayerMeta {
    fn new() -> Self {
        LayerMeta {
            priority: AtomicU32::new(DEFAULT_PRIORITY.to_bits()),
            last_used: AtomicU64::new(0),
            last_accessed: AtomicU64::new(0),
            access_count: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            accessed: AtomicBool::new(false),
        }
    }

    pub(crate) fn priority(&self) -> f32 {
        f32::from_bits(self.priority.load(Relaxed))
    }
}

/// What [`MappedModel::prefetch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prefetch {
    /// The layer was cached or being read already: nothing new was started.
    Present,
    /// A read was queued: it starts when one of the `prefetch_threads`
    /// permits is free, if memory allows then.
    Queued,
}

/// A layer's descriptor: the spec's `HyperionLayerDescriptor`, as of the call.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LayerDescriptor {
    /// Offset of the layer's first byte in its file.
    pub offset: u64,
    /// Size of the layer's bytes.
    pub size: u64,
    /// The layer's index in the model.
    pub layer_index: usize,
    /// Bits per weight.
    pub precision: u32,
    /// Whether the cache holds the layer's bytes (a fetch would hit).
    pub cached: bool,
    /// Whether the layer's bytes are in memory at all: cached, or held by a
    /// caller's [`LayerWeights`] after the cache let go of them.
    pub is_active: bool,
    /// Retention priority: higher stays cached longer.
    pub priority: f32,
    /// Nanoseconds between opening the model and the last fetch of this layer
    /// (a coarse monotonic clock: kernel-tick resolution, 1–4 ms); 0 if it
    /// was never fetched.
    pub last_accessed: u64,
    /// How many times the layer was fetched.
    pub access_count: u64,
}

/// A hook awaited before every backend read; tests use it to slow reads down
/// and observe concurrency.
#[doc(hidden)]
pub type ReadGate = Arc<dyn Fn(usize) -> BoxFuture<'static, ()> + Send + Sync>;

pub(crate) struct Shared {
    path: Arc<Path>,
    index: ModelIndex,
    config: MmapConfig,
    granule: u64,
    backend_kind: Backend,
    /// `None` once closed: dropping it lets the ring thread exit once the
    /// reads in flight finish.
    backend: RwLock<Option<Arc<dyn ReadBackend>>>,
    cache: Cache,
    metas: Arc<[LayerMeta]>,
    budget: Arc<Budget>,
    prefetch_slots: Arc<Semaphore>,
    counters: Counters,
    closed: AtomicBool,
    /// Set by the first prefetch (see `prefetch`).
    prefetching: AtomicBool,
    /// [`coarse_nanos`] when the model was opened.
    opened_at: u64,
    clock: AtomicU64,
    runtime: tokio::runtime::Handle,
    read_gate: OnceLock<ReadGate>,
}

impl MappedModel {
    /// Opens the model file at `path`. Reads only its metadata; layers are
    /// read when fetched or prefetched.
    ///
    /// Must be called within a tokio runtime with timers enabled (any flavor).
    /// Reads are spawned onto the runtime of the task that fetches, or, when a
    /// fetch is polled outside any runtime, onto the one the model was opened on.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::Format`] if it is
    /// not a valid model, [`Error::InvalidArgument`] for a bad config or when
    /// called outside a runtime, [`Error::BackendUnavailable`] if
    /// [`Backend::IoUring`] was asked for and the kernel refuses it.
    pub async fn open(path: impl AsRef<Path>, config: MmapConfig) -> Result<MappedModel> {
        let path: PathBuf = path.as_ref().to_path_buf();
        Self::open_path(path, config, None).await
    }

    /// [`open`](Self::open) with a plan of injected I/O faults, for testing
    /// what callers see when the disk misbehaves.
    #[cfg(feature = "fault-injection")]
    pub async fn open_with_faults(
        path: impl AsRef<Path>,
        config: MmapConfig,
        faults: Arc<crate::faults::FaultPlan>,
    ) -> Result<MappedModel> {
        let path: PathBuf = path.as_ref().to_path_buf();
        Self::open_path(path, config, Some(faults)).await
    }

    async fn open_path(
        path: PathBuf,
        config: MmapConfig,
        faults: Option<Arc<crate::faults::FaultPlan>>,
    ) -> Result<MappedModel> {
        let granule = config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidArgument("MappedModel::open must be called within a tokio runtime".into())
        })?;
        // Waiting for memory uses tokio's timers; a runtime built without them
        // would panic there, so refuse it here, where it is clear why.
        if std::panic::catch_unwind(|| drop(tokio::time::sleep(std::time::Duration::ZERO))).is_err()
        {
            return Err(Error::InvalidArgument(
                "MappedModel::open needs a tokio runtime with timers enabled (Builder::enable_time)".into(),
            ));
        }
        let span = tracing::info_span!("open", path = %path.display(), layers = tracing::field::Empty, backend = tracing::field::Empty);
        async move {
            let shared_path: Arc<Path> = Arc::from(path.as_path());
            let index = tokio::task::spawn_blocking(move || crate::format::read_index(&path))
                .await
                .map_err(|_| Error::Aborted {
                    path: Arc::clone(&shared_path),
                    layer: 0,
                })??;
            let counters = Counters::default();
            let backend = crate::io::open_backend(
                &index.files,
                &config,
                faults,
                Arc::clone(&counters.page_cache_bytes),
            )
            .await?;
            let backend_kind = backend.kind();
            let span = tracing::Span::current();
            span.record("layers", index.layers.len());
            span.record("backend", backend_kind.name());
            tracing::debug!("opened");
            let metas: Arc<[LayerMeta]> =
                (0..index.layers.len()).map(|_| LayerMeta::new()).collect();
            Ok(MappedModel {
                shared: Arc::new(Shared {
                    path: shared_path,
                    granule,
                    backend_kind,
                    backend: RwLock::new(Some(backend)),
                    cache: Cache::new(
                        if config.adaptive_caching {
                            PolicyKind::Adaptive
                        } else {
                            PolicyKind::Lru
                        },
                        index.layers.len(),
                        0,
                    ),
                    metas,
                    budget: Budget::new(config.max_cache_size),
                    prefetch_slots: Arc::new(Semaphore::new(config.prefetch_threads.max(1))),
                    counters,
                    closed: AtomicBool::new(false),
                    prefetching: AtomicBool::new(false),
                    opened_at: coarse_nanos(),
                    clock: AtomicU64::new(1),
                    runtime,
                    read_gate: OnceLock::new(),
                    index,
                    config,
                }),
            })
        }
        .instrument(span)
        .await
    }

    /// Closes the model: empties the cache and lets go of the files. Every
    /// clone of this model then fails with [`Error::Closed`]. Handles already
    /// returned stay valid; their memory is freed when they drop.
    pub fn close(self) {
        self.shared.close();
    }

    /// The path the model was opened from.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The model's index: layers, byte ranges and tensors.
    pub fn index(&self) -> &ModelIndex {
        &self.shared.index
    }

    /// The configuration the model was opened with.
    pub fn config(&self) -> &MmapConfig {
        &self.shared.config
    }

    /// The backend that reads this model (never [`Backend::Auto`]).
    pub fn backend(&self) -> Backend {
        self.shared.backend_kind
    }

    /// The number of layers.
    pub fn layer_count(&self) -> usize {
        self.shared.index.layers.len()
    }

    /// The descriptor of layer `layer`, with fields current as of the call.
    ///
    /// # Errors
    /// [`Error::LayerOutOfRange`], [`Error::Closed`].
    pub fn descriptor(&self, layer: usize) -> Result<LayerDescriptor> {
        let s = &self.shared;
        s.check(layer)?;
        let spec = &s.index.layers[layer];
        let meta = &s.metas[layer];
        Ok(LayerDescriptor {
            offset: spec.offset(),
            size: spec.size,
            layer_index: layer,
            precision: spec.precision,
            cached: s.cache.is_ready(layer),
            is_active: meta.live.load(Relaxed) > 0,
            priority: meta.priority(),
            last_accessed: meta.last_accessed.load(Relaxed),
            access_count: meta.access_count.load(Relaxed),
        })
    }

    /// Fetches layer `layer`'s weights.
    ///
    /// A cached layer is found when `layer` is called (that is when the
    /// access is counted), so the returned future is already complete and
    /// resolves on its first poll with no I/O. Otherwise the layer is read
    /// once, however many tasks await it at the same time; the read starts
    /// when the future is first polled and runs as its own task, so it
    /// finishes (and caches the layer) even if every waiter gives up.
    ///
    /// # Cancel safety
    /// Dropping the future at any point leaks no budget and leaves no entry
    /// stuck loading; other waiters of the same read are unaffected.
    ///
    /// # Errors
    /// [`Error::LayerOutOfRange`], [`Error::Closed`], [`Error::LayerTooLarge`]
    /// when the layer alone exceeds `max_cache_size`,
    /// [`Error::BudgetExhausted`] when live handles hold the whole budget
    /// (after waiting up to `memory_wait_timeout`), [`Error::Io`],
    /// [`Error::Truncated`], [`Error::ChecksumMismatch`].
    pub fn layer(&self, layer: usize) -> LayerFetch {
        // A hit is settled here, so the returned future is already complete
        // and a cached fetch costs a map lookup and a few stores, not an `Arc`
        // clone and an async state machine (docs/performance.md, "the hit path").
        let state = match self.shared.fetch_cached(layer) {
            Ok(Some(weights)) => FetchState::Hit(Some(weights)),
            Ok(None) => {
                Counters::bump(&self.shared.counters.misses);
                FetchState::Pending(Arc::clone(&self.shared).fetch_miss(layer).boxed())
            }
            // Rare: boxed, so that the common states stay small to move.
            Err(e) => FetchState::Pending(future::ready(Err(e)).boxed()),
        };
        LayerFetch { state }
    }

    /// Starts reading layer `layer` in the background, so that a later
    /// [`layer`](Self::layer) hits, and says what it did: [`Prefetch::Present`]
    /// if the layer is cached or being read already, [`Prefetch::Queued`] if
    /// a read was queued.
    ///
    /// At most `prefetch_threads` prefetch reads run at once; the rest queue.
    /// A queued prefetch never waits for memory and never evicts a layer with
    /// a higher priority or one prefetched and not yet used: if it finds no
    /// room when its turn comes it is dropped (counted in
    /// [`Stats::prefetch_skipped`]), and a later fetch reads the layer.
    ///
    /// # Errors
    /// [`Error::PrefetchDisabled`] when the model was opened with
    /// `prefetch_enabled = false`, [`Error::LayerOutOfRange`],
    /// [`Error::Closed`], [`Error::LayerTooLarge`] when the layer alone
    /// exceeds `max_cache_size`. A prefetch that is refused is harmless: the
    /// error only says why nothing was started.
    ///
    /// # Examples
    ///
    /// Reading the next two layers while this one is used:
    ///
    /// ```
    /// # use hyperion::{synth, MappedModel, MmapConfig};
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> hyperion::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("model.tmai");
    /// # synth::write(&path, &synth::SynthSpec { layers: 4, layer_size: 64 << 10, ..Default::default() })?;
    /// let model = MappedModel::open(&path, MmapConfig::default()).await?;
    /// for i in 0..model.layer_count() {
    ///     for ahead in i + 1..(i + 3).min(model.layer_count()) {
    ///         // Refused prefetches (out of memory, disabled) only cost a later miss.
    ///         let _ = model.prefetch(ahead);
    ///     }
    ///     let weights = model.layer(i).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn prefetch(&self, layer: usize) -> Result<Prefetch> {
        self.shared.prefetch(layer)
    }

    /// Drops the cache's hold on layer `layer` (cancelling its interest in a
    /// read in flight). The memory returns to the budget when the last
    /// [`LayerWeights`] of the layer drops.
    ///
    /// # Errors
    /// [`Error::LayerOutOfRange`], [`Error::Closed`].
    pub fn release(&self, layer: usize) -> Result<()> {
        let s = &self.shared;
        s.check(layer)?;
        let _span = tracing::debug_span!("release", layer).entered();
        if let Some(slot) = s.cache.remove(layer) {
            s.drop_slot(slot);
        }
        Ok(())
    }

    /// Bytes of layer buffers alive now: cached, held by callers, or being read.
    ///
    /// Buffers the loader keeps idle for reuse after their layer was dropped
    /// are not included (so releasing a layer visibly frees it), but they do
    /// count against `max_cache_size`: see [`Stats::pool_idle_bytes`]. Both
    /// are zero after [`close`](Self::close) once every handle has dropped.
    pub fn memory_usage(&self) -> u64 {
        self.shared.budget.live()
    }

    /// Sets layer `layer`'s retention priority: when memory is needed, lower
    /// priorities are evicted first. The default is [`DEFAULT_PRIORITY`].
    ///
    /// # Errors
    /// [`Error::LayerOutOfRange`], [`Error::Closed`], and
    /// [`Error::InvalidArgument`] for a NaN priority.
    pub fn set_priority(&self, layer: usize, priority: f32) -> Result<()> {
        self.shared.check(layer)?;
        if priority.is_nan() {
            return Err(Error::InvalidArgument(format!(
                "priority of layer {layer} is NaN"
            )));
        }
        self.shared.metas[layer]
            .priority
            .store(priority.to_bits(), Relaxed);
        Ok(())
    }

    /// Sets every layer's priority back to [`DEFAULT_PRIORITY`].
    pub fn reset_priorities(&self) {
        for meta in self.shared.metas.iter() {
            meta.priority.store(DEFAULT_PRIORITY.to_bits(), Relaxed);
        }
    }

    /// Streams the layers `order` names, in that order, keeping up to
    /// `lookahead` of the next layers being read ahead of the consumer.
    ///
    /// This is the pipelined forward pass in one call: while the consumer
    /// computes with layer `order[k]`, layers `order[k+1..=k+lookahead]` are
    /// prefetched. Read-ahead never goes past the budget: a prefetch that
    /// finds no room is dropped and retried on the next step, and the layers
    /// the consumer has passed are ordinary unheld cache entries that the
    /// budget evicts when it needs room. An index out of range yields an
    /// error item and the stream goes on.
    ///
    /// `lookahead: None` uses [`default_lookahead`](Self::default_lookahead).
    /// With `prefetch_enabled = false` nothing is read ahead.
    ///
    /// # Examples
    ///
    /// A forward pass over every layer:
    ///
    /// ```
    /// use futures::StreamExt;
    /// use hyperion::{synth, MappedModel, MmapConfig};
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> hyperion::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("model.tmai");
    /// # synth::write(&path, &synth::SynthSpec { layers: 8, layer_size: 64 << 10, ..Default::default() })?;
    /// let model = MappedModel::open(&path, MmapConfig { max_cache_size: 256 << 10, ..MmapConfig::default() }).await?;
    /// let mut layers = model.stream_layers(0..model.layer_count(), None);
    /// while let Some(weights) = layers.next().await {
    ///     let weights = weights?;
    ///     // ... compute with `weights` while the next layers stream in ...
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn stream_layers(
        &self,
        order: impl IntoIterator<Item = usize>,
        lookahead: Option<usize>,
    ) -> impl futures::Stream<Item = Result<LayerWeights>> + Send + Unpin + 'static {
        let order: Arc<[usize]> = order.into_iter().collect();
        let lookahead = lookahead.unwrap_or_else(|| self.default_lookahead());
        self.shared.cache.reserve_for_prefetch(lookahead);
        futures::stream::unfold((self.clone(), 0usize), move |(model, pos)| {
            let order = Arc::clone(&order);
            async move {
                let &layer = order.get(pos)?;
                for &ahead in order.iter().skip(pos + 1).take(lookahead) {
                    // A refused prefetch is retried on the next step.
                    let _ = model.prefetch(ahead);
                }
                let item = model.layer(layer).await;
                Some((item, (model, pos + 1)))
            }
        })
        .boxed()
    }

    /// The read-ahead [`stream_layers`](Self::stream_layers) uses by default:
    /// as many of the largest layers as fit in the budget beside the one the
    /// consumer holds, at most 4, and at least 1 when two layers fit.
    ///
    /// Four is enough to keep a disk that serves one request at a time busy
    /// through uneven compute; more only ties up budget earlier (and with
    /// `prefetch_threads` reads in flight at once, the rest queue anyway).
    pub fn default_lookahead(&self) -> usize {
        let s = &self.shared;
        let largest = (0..self.layer_count())
            .map(|i| s.footprint(i))
            .max()
            .unwrap_or(1)
            .max(1);
        let fit = (s.budget.max() / largest) as usize;
        fit.saturating_sub(1).min(4)
    }

    /// A snapshot of the model's counters.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let fetches = s.metas.iter().map(|m| m.access_count.load(Relaxed)).sum();
        s.counters.snapshot(fetches, s.budget.snapshot())
    }

    /// Checks the eviction policy's internal invariants (for tests and fuzzing).
    #[doc(hidden)]
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.shared.cache.validate()
    }

    /// Installs a hook awaited before every backend read (once per model).
    #[doc(hidden)]
    pub fn set_read_gate(&self, gate: ReadGate) {
        let _ = self.shared.read_gate.set(gate);
    }
}

impl std::fmt::Debug for MappedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedModel")
            .field("path", &self.shared.path)
            .field("layers", &self.layer_count())
            .field("backend", &self.shared.backend_kind)
            .finish()
    }
}

/// The future [`MappedModel::layer`] returns: already complete when the layer
/// was cached at the call, otherwise waiting for the layer's read.
///
/// `Send`, `'static` and `Unpin`, so it can be stored, spawned or polled by
/// hand. Dropping it at any point is safe (see [`MappedModel::layer`]).
#[must_use = "futures do nothing unless polled"]
pub struct LayerFetch {
    state: FetchState,
}

enum FetchState {
    /// A hit, taken by the first poll.
    Hit(Option<LayerWeights>),
    /// A miss (or a bad argument): the rest of the fetch.
    Pending(BoxFuture<'static, Result<LayerWeights>>),
    /// The rest of the fetch has returned its result.
    Done,
}

impl LayerFetch {
    /// Whether the layer was cached when the fetch was made, so the first
    /// poll returns it at once.
    pub fn is_hit(&self) -> bool {
        matches!(self.state, FetchState::Hit(Some(_)))
    }
}

impl Future for LayerFetch {
    type Output = Result<LayerWeights>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = &mut self.get_mut().state;
        match state {
            FetchState::Hit(weights) => Poll::Ready(weights.take().ok_or_else(polled_again)),
            // Out of line, so that the hit path stays a few instructions.
            FetchState::Pending(_) | FetchState::Done => poll_rest(state, cx),
        }
    }
}

/// Polls a fetch that missed, or one that has completed.
#[inline(never)]
fn poll_rest(state: &mut FetchState, cx: &mut Context<'_>) -> Poll<Result<LayerWeights>> {
    let FetchState::Pending(rest) = state else {
        return Poll::Ready(Err(polled_again()));
    };
    let poll = rest.as_mut().poll(cx);
    if poll.is_ready() {
        *state = FetchState::Done;
    }
    poll
}

/// Polling a completed fetch again is a caller's bug, hit or miss alike: it
/// is reported as this error rather than a panic.
fn polled_again() -> Error {
    Error::InvalidArgument("LayerFetch polled after it completed".into())
}

impl fmt::Debug for LayerFetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerFetch")
            .field("hit", &self.is_hit())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn check(&self, layer: usize) -> Result<()> {
        if self.closed.load(Relaxed) {
            return Err(Error::Closed {
                path: Arc::clone(&self.path),
            });
        }
        let count = self.index.layers.len();
        if layer >= count {
            return Err(Error::LayerOutOfRange {
                path: Arc::clone(&self.path),
                layer,
                count,
            });
        }
        Ok(())
    }

    fn footprint(&self, layer: usize) -> u64 {
        self.index.layers[layer].footprint(self.granule)
    }

    fn touch(&self, layer: usize) {
        let meta = &self.metas[layer];
        // A logical timestamp for the policy's replay order, bumped without
        // an atomic read-modify-write: fetches racing on two threads may
        // share a tick, which only leaves their relative order open.
        let tick = self.clock.load(Relaxed);
        self.clock.store(tick + 1, Relaxed);
        meta.last_used.store(tick, Relaxed);
        let since_open = coarse_nanos().saturating_sub(self.opened_at);
        meta.last_accessed.store(since_open.max(1), Relaxed);
        meta.access_count.fetch_add(1, Relaxed);
        if !meta.accessed.load(Relaxed) {
            meta.accessed.store(true, Relaxed);
        }
    }

    /// The synchronous half of a fetch: checks the argument, records the
    /// access and returns the weights if they are cached; `None` means the
    /// caller must go on with [`Shared::fetch_miss`].
    fn fetch_cached(&self, layer: usize) -> Result<Option<LayerWeights>> {
        self.check(layer)?;
        self.touch(layer);
        let Some((weights, first_use)) = self.cache.get_ready(layer) else {
            return Ok(None);
        };
        let _span = tracing::trace_span!("fetch", layer, hit = true).entered();
        // Not counted: hits are fetches minus misses (`MappedModel::stats`),
        // which spares the hit path an atomic increment.
        if first_use {
            Counters::bump(&self.counters.prefetch_used);
        }
        Ok(Some(weights))
    }

    /// The rest of a fetch whose access [`Shared::fetch_cached`] recorded:
    /// joins or starts the layer's read (or hits, if the layer arrived
    /// in between).
    async fn fetch_miss(self: Arc<Self>, layer: usize) -> Result<LayerWeights> {
        self.check(layer)?;
        let span = tracing::debug_span!(
            "fetch",
            layer,
            hit = false,
            bytes = self.index.layers[layer].size,
            backend = self.backend_kind.name(),
            wait_us = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = async {
            let (lookup, first_use) = self.start_or_join(layer, Origin::Demand, None);
            match lookup {
                // The layer arrived between the call and this poll; the
                // fetch stays counted as the miss it was when called.
                Lookup::Hit(weights) => {
                    if first_use {
                        Counters::bump(&self.counters.prefetch_used);
                    }
                    Ok(weights)
                }
                Lookup::Wait(done) => {
                    Counters::bump(&self.counters.coalesced);
                    done.await
                }
                Lookup::Started { done, .. } => done.await,
            }
        }
        .instrument(span.clone())
        .await;
        span.record("wait_us", started.elapsed().as_micros() as u64);
        result
    }

    /// Finds `layer` in the cache or starts its read as a task of its own.
    /// `charge` is memory a prefetch already reserved for it.
    fn start_or_join(
        self: &Arc<Self>,
        layer: usize,
        origin: Origin,
        reserved: Option<Charge>,
    ) -> (Lookup, bool) {
        let (tx, rx) = oneshot::channel::<Result<LayerWeights>>();
        let path = Arc::clone(&self.path);
        let (lookup, first_use) = self.cache.lookup_or_start(layer, origin, move || {
            rx.map(move |r| r.unwrap_or_else(|_| Err(Error::Aborted { path, layer })))
                .boxed()
        });
        if let Lookup::Started { id, .. } = &lookup {
            let load = Load {
                shared: Arc::clone(self),
                layer,
                id: *id,
                armed: true,
            };
            self.spawn(load.run(origin, reserved, tx));
        }
        (lookup, first_use)
    }

    fn prefetch(self: &Arc<Self>, layer: usize) -> Result<Prefetch> {
        if !self.config.prefetch_enabled {
            return Err(Error::PrefetchDisabled {
                path: Arc::clone(&self.path),
            });
        }
        self.check(layer)?;
        if self.cache.contains(layer) {
            return Ok(Prefetch::Present);
        }
        let needed = self.footprint(layer);
        if needed > self.budget.max() {
            return Err(Error::LayerTooLarge {
                path: Arc::clone(&self.path),
                layer,
                needed,
                budget: self.budget.max(),
            });
        }
        if !self.prefetching.swap(true, Relaxed) {
            // The first prefetch: leave room outside the adaptive policy's
            // protected set for layers read ahead.
            self.cache
                .reserve_for_prefetch(self.config.prefetch_threads);
        }
        let shared = Arc::clone(self);
        let span = tracing::debug_span!("prefetch", layer);
        self.spawn(
            async move {
                let Ok(_permit) = Arc::clone(&shared.prefetch_slots).acquire_owned().await else {
                    return;
                };
                // A fetch may have read it while this prefetch queued.
                if shared.closed.load(Relaxed) || shared.cache.contains(layer) {
                    return;
                }
                let priority = shared.metas[layer].priority();
                let charge = match shared.reserve(layer, Origin::Prefetch, priority).await {
                    Ok(charge) => charge,
                    Err(_) => {
                        Counters::bump(&shared.counters.prefetch_skipped);
                        return;
                    }
                };
                let (lookup, _) = shared.start_or_join(layer, Origin::Prefetch, Some(charge));
                if let Lookup::Started { done, .. } = lookup {
                    Counters::bump(&shared.counters.prefetch_issued);
                    let c = &shared.counters;
                    let in_flight = c.prefetch_in_flight.fetch_add(1, Relaxed) + 1;
                    c.prefetch_peak_in_flight.fetch_max(in_flight, Relaxed);
                    // Hold the permit until the read is done.
                    let _ = done.await;
                    c.prefetch_in_flight.fetch_sub(1, Relaxed);
                }
            }
            .instrument(span),
        );
        Ok(Prefetch::Queued)
    }

    /// Reserves memory for `layer`, evicting by policy. A fetch that finds
    /// nothing to evict waits up to `memory_wait_timeout` for memory to be
    /// freed; a prefetch never waits.
    async fn reserve(&self, layer: usize, origin: Origin, priority: f32) -> Result<Charge> {
        let needed = self.footprint(layer);
        let budget = &self.budget;
        if needed > budget.max() {
            return Err(Error::LayerTooLarge {
                path: Arc::clone(&self.path),
                layer,
                needed,
                budget: budget.max(),
            });
        }
        // `None`: no deadline (the timeout is too long to represent).
        let deadline = tokio::time::Instant::now().checked_add(self.config.memory_wait_timeout);
        let mut waiting = None;
        loop {
            // Register for wake-ups before looking, so none is missed.
            let changed = budget.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(charge) = budget.try_reserve(needed) {
                return Ok(charge);
            }
            if let Some(victim) = self.cache.evict_one(&self.metas, origin, priority) {
                let victim_layer = victim.weights.layer_index();
                let _span = tracing::debug_span!("evict", layer = victim_layer, for_layer = layer)
                    .entered();
                Counters::bump(&self.counters.evictions);
                if victim.prefetched_unused.load(Relaxed) {
                    Counters::bump(&self.counters.prefetch_wasted);
                }
                drop(victim);
                continue;
            }
            let exhausted = || Error::BudgetExhausted {
                path: Arc::clone(&self.path),
                layer,
                needed,
                held: budget.live(),
                budget: budget.max(),
            };
            // `try_reserve` reclaims idle pooled memory before it fails, but a
            // buffer may have been pooled since: use it before giving up.
            if budget.has_idle() {
                continue;
            }
            if origin == Origin::Prefetch || self.closed.load(Relaxed) {
                return Err(exhausted());
            }
            if waiting.is_none() {
                // Count ourselves as waiting, then look once more: a handle
                // dropped before this point is seen by that look; one dropped
                // after it wakes us (or, in a narrow race, the next recheck does).
                waiting = Some(budget.begin_wait());
                continue;
            }
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(exhausted());
            }
            let limit = deadline.map_or(now + RECHECK, |d| d.min(now + RECHECK));
            let _ = tokio::time::timeout_at(limit, changed).await;
        }
    }

    fn drop_slot(&self, slot: Slot) {
        if let Slot::Ready(entry) = &slot {
            if entry.prefetched_unused.load(Relaxed) {
                Counters::bump(&self.counters.prefetch_wasted);
            }
        }
        drop(slot);
    }

    /// Spawns `task` on the runtime of the caller, or, called from outside
    /// any runtime, on the one the model was opened on.
    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn(task)),
            Err(_) => drop(self.runtime.spawn(task)),
        }
    }
    fn close(&self) {
        if self.closed.swap(true, Relaxed) {
            return;
        }
        let _span = tracing::debug_span!("close", path = %self.path.display()).entered();
        // Take the backend first: a read that starts after this fails with
        // `Closed`, and one already reading removes its own slot when it sees
        // the model closed (`Load::run`), so nothing is cached after the drain.
        let backend = self.backend.write().take();
        let slots = self.cache.drain();
        drop(slots);
        drop(backend);
        // Unmap the idle buffers (the drained layers' among them); buffers
        // dropped from now on (handles that outlive close, reads that land
        // late) are unmapped, not pooled.
        self.budget.close_pool();
        self.budget.changed.notify_waiters();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.close();
    }
}

/// One read of one layer, running as its own task. If the task is dropped
/// before it finishes (the runtime shut down), `Drop` clears its `Loading`
/// slot, and its waiters see [`Error::Aborted`] through the dropped sender.
struct Load {
    shared: Arc<Shared>,
    layer: usize,
    id: u64,
    armed: bool,
}

impl Load {
    async fn run(
        mut self,
        origin: Origin,
        reserved: Option<Charge>,
        tx: oneshot::Sender<Result<LayerWeights>>,
    ) {
        let result = self.read(origin, reserved).await;
        let s = &self.shared;
        match &result {
            Ok(weights) => {
                let prefetched = origin == Origin::Prefetch;
                match s
                    .cache
                    .publish(self.layer, self.id, weights.clone(), prefetched)
                {
                    // A fetch joined this prefetch while it was reading.
                    Published::Demanded if prefetched => Counters::bump(&s.counters.prefetch_used),
                    _ => {}
                }
                // `close` may have drained the cache while this read ran.
                if s.closed.load(Relaxed) {
                    drop(s.cache.remove(self.layer));
                }
            }
            Err(_) => s.cache.abandon(self.layer, self.id),
        }
        self.armed = false;
        s.budget.changed.notify_waiters();
        let _ = tx.send(result);
    }

    async fn read(&self, origin: Origin, reserved: Option<Charge>) -> Result<LayerWeights> {
        let s = &self.shared;
        let layer = self.layer;
        let charge = match reserved {
            Some(c) => c,
            None => s.reserve(layer, origin, s.metas[layer].priority()).await?,
        };
        let backend = s.backend.read().clone().ok_or_else(|| Error::Closed {
            path: Arc::clone(&s.path),
        })?;
        if let Some(gate) = s.read_gate.get() {
            gate(layer).await;
        }
        let spec = &s.index.layers[layer];
        let started = Instant::now();
        let busy = s.counters.read_started();
        // Checksums are checked as part of the read, so that an engine can
        // hash each chunk while it reads the next.
        let verify = spec
            .checksum
            .filter(|_| s.config.verify_checksums)
            .map(|expected| Verify {
                expected,
                path: Arc::clone(&s.path),
            });
        let bytes = backend.read(layer, spec, charge, verify).await;
        drop(busy);
        if matches!(bytes, Ok(_) | Err(Error::ChecksumMismatch { .. })) {
            s.counters
                .read_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
            Counters::bump(&s.counters.reads);
            s.counters.bytes_read.fetch_add(spec.size, Relaxed);
        }
        let bytes = bytes?;
        s.metas[layer]
            .last_used
            .store(s.clock.fetch_add(1, Relaxed), Relaxed);
        Ok(LayerWeights::new(
            bytes,
            Arc::clone(&s.budget),
            layer,
            Arc::clone(&spec.tensors),
            Arc::clone(&s.metas),
        ))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if self.armed {
            self.shared.cache.abandon(self.layer, self.id);
            self.shared.budget.changed.notify_waiters();
        }
    }
}

/// Nanoseconds on the kernel's coarse monotonic clock, for `last_accessed`.
///
/// Every fetch stamps its layer, so this is on the hit path: reading the
/// coarse clock is a plain load from the vDSO page, where `Instant::now`
/// reads the TSC and scales it (docs/performance.md has both costs). Its
/// resolution is the kernel tick (1–4 ms), plenty for a "last accessed"
/// timestamp; the order of accesses comes from `Shared::clock`.
fn coarse_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec` that outlives the call, and
    // CLOCK_MONOTONIC_COARSE exists on every Linux since 2.6.32, so the call
    // only writes `ts` and cannot fail.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE) failed");
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
