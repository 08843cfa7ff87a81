//! Per-layer state that lives outside the cache: the descriptor's fields
//! (priority, last access, access count, whether any buffer of the layer is
//! alive) and the flag that tells the eviction policy a layer was used.
//!
//! Hits update it with relaxed atomics only, so the hit path takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// The priority every layer starts with, and returns to on
/// [`MappedModel::reset_priorities`](crate::MappedModel::reset_priorities).
pub const DEFAULT_PRIORITY: f32 = 0.0;

/// One layer's state outside the cache.
#[derive(Debug)]
pub(crate) struct LayerMeta {
    /// `f32` bits of the layer's priority.
    pub(crate) priority: AtomicU32,
    /// The policy clock at the last fetch or insertion (for LRU).
    pub(crate) last_used: AtomicU64,
    /// Nanoseconds after open of the last fetch, 0 if never fetched.
    pub(crate) last_accessed: AtomicU64,
    pub(crate) access_count: AtomicU64,
    /// Live buffers of this layer (cached or held by callers).
    pub(crate) live: AtomicUsize,
    /// Set by every fetch; the cache replays set flags into the eviction
    /// policy before it evicts (so hits take no lock).
    pub(crate) accessed: AtomicBool,
    /// A prefetch of this layer is queued for a permit and has not started:
    /// another `prefetch` call adds nothing (see `Shared::prefetch`).
    pub(crate) prefetch_queued: AtomicBool,
    /// `access_count` at the latest `prefetch` call: a queued prefetch that
    /// finds the count higher when its turn comes was satisfied by a fetch.
    pub(crate) prefetch_asked_at: AtomicU64,
}

impl LayerMeta {
    pub(crate) fn new() -> Self {
        LayerMeta {
            priority: AtomicU32::new(DEFAULT_PRIORITY.to_bits()),
            last_used: AtomicU64::new(0),
            last_accessed: AtomicU64::new(0),
            access_count: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            accessed: AtomicBool::new(false),
            prefetch_queued: AtomicBool::new(false),
            prefetch_asked_at: AtomicU64::new(0),
        }
    }

    pub(crate) fn priority(&self) -> f32 {
        f32::from_bits(self.priority.load(Relaxed))
    }
}
