//! [`MappedModel`]: the facade that ties the index, the cache, the budget,
//! the engine and the prefetcher together.
//!
//! - `shared.rs`: the state every clone shares; open and close.
//! - `fetch.rs`: [`LayerFetch`], hits and single-flight misses.
//! - `prefetch.rs`: read-ahead tasks under `prefetch_threads`.
//! - `admission.rs`: reserving memory, evicting, waiting for memory.
//! - `load.rs`: one layer's read as a task, and publishing it.

mod admission;
mod fetch;
mod load;
mod prefetch;
mod shared;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures::future::{self, BoxFuture};
use futures::{FutureExt, StreamExt};

pub use crate::meta::DEFAULT_PRIORITY;
use fetch::FetchState;
pub use fetch::LayerFetch;
use shared::Shared;
use stream::ReadAhead;

use crate::config::{Backend, MmapConfig};
use crate::error::{Error, Result};
use crate::index::ModelIndex;
use crate::stats::{Counters, Stats};
use crate::weights::{LayerWeights, TensorHandle};

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

/// A hook awaited before every engine read, with the layer's index; tests
/// use it to hold reads back and observe concurrency (`test-hooks` feature).
pub type ReadGate = Arc<dyn Fn(usize) -> BoxFuture<'static, ()> + Send + Sync>;

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
    ///
    /// # Cancel safety
    /// Dropping the future leaks nothing: the metadata read runs on a
    /// blocking thread and its result is dropped; no model exists until the
    /// future completes, so there is nothing to close.
    ///
    /// # Examples
    ///
    /// Opening a model with a 64 MiB budget and reading its first layer:
    ///
    /// ```
    /// # use hyperion::{synth, MappedModel, MmapConfig};
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> hyperion::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("model.tmai");
    /// # synth::write(&path, &synth::SynthSpec::default())?;
    /// let config = MmapConfig { max_cache_size: 64 << 20, ..MmapConfig::default() };
    /// let model = MappedModel::open(&path, config).await?;
    /// println!("{} layers, read by {:?}", model.layer_count(), model.backend());
    /// let first = model.layer(0).await?;
    /// assert_eq!(first.len() as u64, model.descriptor(0)?.size);
    /// # Ok(())
    /// # }
    /// ```
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
        Ok(MappedModel {
            shared: Arc::new(Shared::open(path, config, faults).await?),
        })
    }

    /// Closes the model: empties the cache and lets go of the files. Every
    /// clone of this model then fails with [`Error::Closed`]. Handles already
    /// returned stay valid; their memory is freed when they drop.
    ///
    /// `close` returns at once; await [`closed`](Self::closed) (on a clone
    /// taken before) to know when the memory is actually back.
    pub fn close(self) {
        self.shared.close();
    }

    /// Waits until the model is closed (by [`close`](Self::close) on any
    /// clone) and every byte of layer memory it held is freed: no cached,
    /// pooled or in-flight buffer left, and every [`LayerWeights`] handed out
    /// dropped. After it returns, [`memory_usage`](Self::memory_usage) and
    /// [`Stats::pool_idle_bytes`] are 0.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    ///
    /// # Examples
    ///
    /// Shutting a model down and waiting for its memory, as a server that
    /// opens the next model in the same budget would:
    ///
    /// ```
    /// # use hyperion::{synth, MappedModel, MmapConfig};
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> hyperion::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("model.tmai");
    /// # synth::write(&path, &synth::SynthSpec { layers: 4, layer_size: 64 << 10, ..Default::default() })?;
    /// let model = MappedModel::open(&path, MmapConfig::default()).await?;
    /// let weights = model.layer(0).await?;
    /// let watcher = model.clone();
    /// model.close();
    /// drop(weights); // the last handle: its buffer is freed now
    /// watcher.closed().await;
    /// assert_eq!(watcher.memory_usage(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn closed(&self) {
        let budget = &self.shared.budget;
        loop {
            // Registered before looking, so a release in between wakes us.
            let changed = budget.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let s = budget.snapshot();
            if self.shared.closed.load(Relaxed) && s.live == 0 && s.idle == 0 {
                return;
            }
            changed.await;
        }
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

    /// Fetches the tensor called `name`: the layer that holds it is fetched
    /// as by [`layer`](Self::layer) (a hit if it is cached, one shared read
    /// otherwise), and the handle keeps that layer's bytes alive.
    ///
    /// # Cancel safety
    /// As for [`layer`](Self::layer).
    ///
    /// # Errors
    /// [`Error::TensorNotFound`] if no tensor has that name; otherwise those
    /// of [`layer`](Self::layer).
    ///
    /// # Examples
    ///
    /// Reading one tensor of a model without knowing its layer:
    ///
    /// ```
    /// # use hyperion::{synth, MappedModel, MmapConfig};
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> hyperion::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("model.tmai");
    /// # synth::write(&path, &synth::SynthSpec { layers: 4, layer_size: 64 << 10, ..Default::default() })?;
    /// let model = MappedModel::open(&path, MmapConfig::default()).await?;
    /// let name = model.index().tensor_names().next().unwrap().to_string();
    /// let tensor = model.tensor(&name).await?;
    /// assert_eq!(tensor.view().name(), name);
    /// assert!(model.tensor("no.such.tensor").await.is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn tensor(&self, name: &str) -> Result<TensorHandle> {
        let s = &self.shared;
        let (layer, position) = s
            .index
            .find_tensor(name)
            .map(|at| (at.layer, at.position))
            .ok_or_else(|| Error::TensorNotFound {
                path: Arc::clone(&s.path),
                name: name.to_string(),
            })?;
        let weights = self.layer(layer).await?;
        Ok(TensorHandle::new(weights, position))
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
    /// Asking again for a layer whose prefetch is still queued adds nothing,
    /// so a loop may ask for its whole window at every step; and a queued
    /// prefetch whose layer is fetched before its turn (the fetch reads the
    /// layer itself) is dropped, so a layer used and released is not read
    /// again for no one.
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
    /// computes with layer `order[k]`, the next layers of `order` that are
    /// not cached are prefetched, `lookahead` of them at a time. Layers
    /// ahead that are cached already are passed over (they need no read), up
    /// to as many positions ahead as the budget holds layers. Read-ahead
    /// never goes past the budget: a prefetch that finds no room is dropped
    /// and retried on the next step, and the layers the consumer has passed
    /// are ordinary unheld cache entries that the budget evicts when it needs
    /// room. An index out of range yields an error item and the stream goes
    /// on.
    ///
    /// `order` may name more layers than the consumer will take: a forward
    /// pass that is run again and again (one per generated token) can pass
    /// this pass's order followed by the next pass's, take only this pass's
    /// items, and drop the stream; the next pass's first layers are then
    /// already being read while this pass ends.
    ///
    /// `lookahead: None` uses [`default_lookahead`](Self::default_lookahead).
    /// With `prefetch_enabled = false` nothing is read ahead.
    ///
    /// # Errors
    /// Each item is the layer's weights or the error its fetch gave (see
    /// [`layer`](Self::layer)): [`Error::LayerOutOfRange`] for an index past
    /// the end, [`Error::Closed`] once the model is closed, and the read
    /// errors. An error item does not end the stream.
    ///
    /// # Cancel safety
    /// Dropping the stream (or the future of its `next()`) at any point
    /// leaks nothing: the fetch in progress is cancelled as
    /// [`layer`](Self::layer)'s is, and read-ahead already started finishes
    /// as ordinary prefetches whose layers the budget may evict.
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
        // Looking further ahead than the budget holds layers would only
        // read what evicts a layer needed sooner.
        let window = (self.shared.budget.max() / self.largest_footprint()) as usize;
        let window = window.max(lookahead);
        let state = (self.clone(), 0usize, ReadAhead::default());
        futures::stream::unfold(state, move |(model, pos, mut ahead)| {
            let order = Arc::clone(&order);
            async move {
                let &layer = order.get(pos)?;
                ahead.advance(&model, &order, pos, lookahead, window);
                let item = model.layer(layer).await;
                ahead.consumed(layer);
                Some((item, (model, pos + 1, ahead)))
            }
        })
        .boxed()
    }

    /// The bytes layer `layer` is charged against `max_cache_size` when it
    /// is in memory: its size rounded up to the allocation granule
    /// (`min_layer_cache_size`, a whole number of 4 KiB pages).
    ///
    /// # Errors
    /// [`Error::LayerOutOfRange`], [`Error::Closed`].
    pub fn footprint(&self, layer: usize) -> Result<u64> {
        self.shared.check(layer)?;
        Ok(self.shared.footprint(layer))
    }

    /// The read-ahead [`stream_layers`](Self::stream_layers) uses by default:
    /// as many of the largest layers as fit in the budget beside the one the
    /// consumer holds, at most 4, and at least 1 when two layers fit.
    ///
    /// Four is enough to keep a disk that serves one request at a time busy
    /// through uneven compute; more only ties up budget earlier (and with
    /// `prefetch_threads` reads in flight at once, the rest queue anyway).
    pub fn default_lookahead(&self) -> usize {
        self.max_lookahead().min(4)
    }

    /// The deepest read-ahead the budget holds: as many of the largest
    /// layers as fit beside the one the consumer holds (0 when fewer than
    /// two fit). Reading further ahead only evicts what is needed sooner.
    pub fn max_lookahead(&self) -> usize {
        let fit = (self.shared.budget.max() / self.largest_footprint()) as usize;
        fit.saturating_sub(1)
    }

    /// The budget charge of the model's largest layer (at least 1).
    fn largest_footprint(&self) -> u64 {
        (0..self.layer_count())
            .map(|i| self.shared.footprint(i))
            .max()
            .unwrap_or(1)
            .max(1)
    }

    /// A snapshot of the model's counters.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let fetches = s.metas.iter().map(|m| m.access_count.load(Relaxed)).sum();
        s.counters.snapshot(fetches, s.budget.snapshot())
    }
}

/// Test hooks (`--features test-hooks`): for this crate's tests and fuzzing,
/// not for users.
#[cfg(feature = "test-hooks")]
impl MappedModel {
    /// Checks the cache's and the eviction policy's invariants.
    ///
    /// # Errors
    /// A description of the first invariant that does not hold.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.shared.cache.validate()
    }

    /// Installs a hook awaited before every engine read (once per model), to
    /// hold reads back and observe concurrency.
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
