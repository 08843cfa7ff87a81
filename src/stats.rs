//! Counters the loader keeps, and the snapshot [`Stats`] it reports.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A snapshot of a model's counters, from [`MappedModel::stats`](crate::MappedModel::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// Fetches answered from the cache without I/O.
    pub hits: u64,
    /// Fetches that did not find the layer cached when called: they waited
    /// for a read, their own or one in flight (or, rarely, for nothing, when
    /// the layer arrived before their first poll).
    pub misses: u64,
    /// Misses that joined a read already in flight instead of starting one.
    pub coalesced: u64,
    /// Layer reads issued to the backend.
    pub reads: u64,
    /// Bytes of layers read from disk.
    pub bytes_read: u64,
    /// Of the bytes read with `direct_io`, those copied from the OS page
    /// cache instead, because they were cached already (an `O_DIRECT` read
    /// would have fetched them from the disk again): `docs/architecture.md`,
    /// "Cached pages and direct I/O".
    pub page_cache_bytes: u64,
    /// Bytes of layers returned as views of the page cache's own pages,
    /// neither read nor copied (`MmapConfig::share_page_cache`).
    pub page_cache_shared_bytes: u64,
    /// Nanoseconds spent in backend reads, summed over reads (reads that
    /// overlap each other count twice).
    pub read_nanos: u64,
    /// Wall-clock nanoseconds during which at least one read was in flight:
    /// the time the disk was busy for this model.
    pub read_busy_nanos: u64,
    /// Layers the cache dropped to make room.
    pub evictions: u64,
    /// Prefetch reads started.
    pub prefetch_issued: u64,
    /// Prefetched layers that a fetch then used.
    pub prefetch_used: u64,
    /// Prefetched layers evicted or released before any fetch used them.
    pub prefetch_wasted: u64,
    /// Prefetches dropped because the budget had no room they could take.
    pub prefetch_skipped: u64,
    /// The most prefetch reads ever in flight at once (≤ `prefetch_threads`).
    pub prefetch_peak_in_flight: u64,
    /// Bytes of layer buffers alive now (cached, held, or being read); the
    /// same as [`MappedModel::memory_usage`](crate::MappedModel::memory_usage).
    /// Idle pooled buffers are not included: see `pool_idle_bytes`.
    pub memory_usage: u64,
    /// The most bytes of layer memory ever held at once: live buffers plus
    /// idle pooled ones, the sum that `max_cache_size` bounds (so
    /// ≤ `max_cache_size`, and ≥ every `memory_usage` ever seen).
    pub peak_memory: u64,
    /// Bytes of buffers idle in the pool now, kept mapped (and charged to the
    /// budget) for the next read. `memory_usage + pool_idle_bytes` is all
    /// the layer memory the model holds, never more than `max_cache_size`.
    pub pool_idle_bytes: u64,
    /// Reads whose memory was an idle pooled buffer rather than a fresh one:
    /// the model's own, or one a closed model left in the shared
    /// [`BufferPool`](crate::BufferPool) (`MmapConfig::buffer_pool`).
    pub pool_reuses: u64,
    /// Idle pooled buffers unmapped to make room for a read of another size
    /// (before any cached layer is evicted).
    pub pool_reclaimed: u64,
}

impl Stats {
    /// Hits over all fetches, or 0 when there were none.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) misses: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    /// Shared with the read engine, which counts into it.
    pub(crate) page_cache_bytes: std::sync::Arc<AtomicU64>,
    /// Shared with the page-cache sharing engine (`io/shared.rs`).
    pub(crate) page_cache_shared_bytes: std::sync::Arc<AtomicU64>,
    pub(crate) read_nanos: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) prefetch_issued: AtomicU64,
    pub(crate) prefetch_used: AtomicU64,
    pub(crate) prefetch_wasted: AtomicU64,
    pub(crate) prefetch_skipped: AtomicU64,
    pub(crate) prefetch_in_flight: AtomicU64,
    pub(crate) prefetch_peak_in_flight: AtomicU64,
    busy: Mutex<Busy>,
}

/// Tracks the union of read intervals.
#[derive(Debug, Default)]
struct Busy {
    in_flight: u64,
    since: Option<Instant>,
    total: Duration,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Marks a read as started; the returned guard marks it finished.
    pub(crate) fn read_started(&self) -> ReadInFlight<'_> {
        let mut b = self.busy.lock();
        b.in_flight += 1;
        if b.in_flight == 1 {
            b.since = Some(Instant::now());
        }
        ReadInFlight(self)
    }

    fn busy_nanos(&self) -> u64 {
        let b = self.busy.lock();
        let open = b.since.map_or(Duration::ZERO, |t| t.elapsed());
        (b.total + open).as_nanos() as u64
    }

    /// The counters now; `fetches` is every fetch of a valid layer (the sum
    /// of the layers' access counts), of which those not misses were hits.
    pub(crate) fn snapshot(&self, fetches: u64, budget: crate::budget::Snapshot) -> Stats {
        let misses = self.misses.load(Relaxed);
        Stats {
            // Saturating: the counters are read one after another while
            // fetches run, so a snapshot may see a miss whose access it missed.
            hits: fetches.saturating_sub(misses),
            misses,
            coalesced: self.coalesced.load(Relaxed),
            reads: self.reads.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            page_cache_bytes: self.page_cache_bytes.load(Relaxed),
            page_cache_shared_bytes: self.page_cache_shared_bytes.load(Relaxed),
            read_nanos: self.read_nanos.load(Relaxed),
            read_busy_nanos: self.busy_nanos(),
            evictions: self.evictions.load(Relaxed),
            prefetch_issued: self.prefetch_issued.load(Relaxed),
            prefetch_used: self.prefetch_used.load(Relaxed),
            prefetch_wasted: self.prefetch_wasted.load(Relaxed),
            prefetch_skipped: self.prefetch_skipped.load(Relaxed),
            prefetch_peak_in_flight: self.prefetch_peak_in_flight.load(Relaxed),
            memory_usage: budget.live,
            peak_memory: budget.peak,
            pool_idle_bytes: budget.idle,
            pool_reuses: budget.pool_reuses,
            pool_reclaimed: budget.pool_reclaimed,
        }
    }
}

/// A read in flight, for [`Stats::read_busy_nanos`].
pub(crate) struct ReadInFlight<'a>(&'a Counters);

impl Drop for ReadInFlight<'_> {
    fn drop(&mut self) {
        let mut b = self.0.busy.lock();
        b.in_flight -= 1;
        if b.in_flight == 0 {
            if let Some(t) = b.since.take() {
                b.total += t.elapsed();
            }
        }
    }
}
