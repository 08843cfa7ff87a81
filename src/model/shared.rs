//! The state every clone of a [`MappedModel`](super::MappedModel) shares,
//! how it is opened and closed, and the small helpers the fetch, admission
//! and load paths have in common.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::ReadGate;
use crate::budget::Budget;
use crate::cache::{Cache, Slot};
use crate::config::{Backend, MmapConfig};
use crate::error::{Error, Result};
use crate::index::ModelIndex;
use crate::io::ReadBackend;
use crate::meta::LayerMeta;
use crate::policy::PolicyKind;
use crate::source::is_object_url;
use crate::stats::Counters;
use crate::sys::clock;

pub(crate) struct Shared {
    pub(super) path: Arc<Path>,
    pub(super) index: ModelIndex,
    pub(super) config: MmapConfig,
    pub(super) granule: u64,
    pub(super) backend_kind: Backend,
    /// `None` once closed: dropping it lets the ring thread exit once the
    /// reads in flight finish.
    pub(super) backend: RwLock<Option<Arc<dyn ReadBackend>>>,
    pub(super) cache: Cache,
    pub(super) metas: Arc<[LayerMeta]>,
    pub(super) budget: Arc<Budget>,
    pub(super) prefetch_slots: Arc<Semaphore>,
    pub(super) counters: Counters,
    pub(super) closed: AtomicBool,
    /// Set by the first prefetch (see `prefetch`).
    pub(super) prefetching: AtomicBool,
    /// [`coarse_nanos`] when the model was opened.
    pub(super) opened_at: u64,
    pub(super) clock: AtomicU64,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) read_gate: OnceLock<ReadGate>,
}

impl Shared {
    pub(super) async fn open(
        path: PathBuf,
        config: MmapConfig,
        faults: Option<Arc<crate::faults::FaultPlan>>,
    ) -> Result<Shared> {
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
            let counters = Counters::default();
            let (index, backend) = if is_object_url(&path) {
                crate::io::open_object_model(&shared_path, &config).await?
            } else {
                let index = tokio::task::spawn_blocking(move || crate::format::read_index(&path))
                    .await
                    .map_err(|_| Error::Aborted {
                        path: Arc::clone(&shared_path),
                        layer: 0,
                    })??;
                let backend = crate::io::open_backend(
                    &index.files,
                    &config,
                    faults,
                    Arc::clone(&counters.page_cache_bytes),
                    Arc::clone(&counters.page_cache_shared_bytes),
                )
                .await?;
                (index, backend)
            };
            let backend_kind = backend.kind();
            let span = tracing::Span::current();
            span.record("layers", index.layers.len());
            span.record("backend", backend_kind.name());
            tracing::debug!("opened");
            let metas: Arc<[LayerMeta]> =
                (0..index.layers.len()).map(|_| LayerMeta::new()).collect();
            Ok(Shared {
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
                budget: Budget::new(config.max_cache_size, config.buffer_pool.clone()),
                prefetch_slots: Arc::new(Semaphore::new(config.prefetch_threads.max(1))),
                counters,
                closed: AtomicBool::new(false),
                prefetching: AtomicBool::new(false),
                opened_at: clock::coarse_nanos(),
                clock: AtomicU64::new(1),
                runtime,
                read_gate: OnceLock::new(),
                index,
                config,
            })
        }
        .instrument(span)
        .await
    }

    pub(super) fn check(&self, layer: usize) -> Result<()> {
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

    pub(super) fn footprint(&self, layer: usize) -> u64 {
        self.index.layers[layer].footprint(self.granule)
    }

    pub(super) fn touch(&self, layer: usize) {
        let meta = &self.metas[layer];
        // A logical timestamp for the policy's replay order, bumped without
        // an atomic read-modify-write: fetches racing on two threads may
        // share a tick, which only leaves their relative order open.
        let tick = self.clock.load(Relaxed);
        self.clock.store(tick + 1, Relaxed);
        meta.last_used.store(tick, Relaxed);
        let since_open = clock::coarse_nanos().saturating_sub(self.opened_at);
        meta.last_accessed.store(since_open.max(1), Relaxed);
        meta.access_count.fetch_add(1, Relaxed);
        if !meta.accessed.load(Relaxed) {
            meta.accessed.store(true, Relaxed);
        }
    }

    pub(super) fn drop_slot(&self, slot: Slot) {
        if let Slot::Ready(entry) = &slot {
            if entry.prefetched_unused.load(Relaxed) {
                Counters::bump(&self.counters.prefetch_wasted);
            }
        }
        drop(slot);
    }

    /// Spawns `task` on the runtime of the caller, or, called from outside
    /// any runtime, on the one the model was opened on.
    pub(super) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn(task)),
            Err(_) => drop(self.runtime.spawn(task)),
        }
    }

    pub(super) fn close(&self) {
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
