//! Reading ahead: a prefetch is a task that waits for one of
//! `prefetch_threads` permits, reserves memory without waiting and without
//! evicting anything more important, then starts the layer's read.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tracing::Instrument;

use super::shared::Shared;
use super::Prefetch;
use crate::cache::{Lookup, Origin};
use crate::error::{Error, Result};
use crate::stats::Counters;

impl Shared {
    pub(super) fn prefetch(self: &Arc<Self>, layer: usize) -> Result<Prefetch> {
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
        let meta = &self.metas[layer];
        // A fetch of the layer after the latest call satisfies it: the fetch
        // read the layer itself, or hit, and the caller may have released
        // it since.
        meta.prefetch_asked_at
            .store(meta.access_count.load(Relaxed), Relaxed);
        // One queued task per layer: a caller that asks again for every layer
        // of its window at every step (the documented pattern) would
        // otherwise queue a task per call, and the stale ones, run after the
        // layer was used and released, would read it again (seen with a
        // 14-layer window: 1,053 skipped and 18 wasted prefetches in 3 passes).
        if meta.prefetch_queued.swap(true, Relaxed) {
            return Ok(Prefetch::Queued);
        }
        let queued = Queued {
            shared: Arc::clone(self),
            layer,
        };
        let shared = Arc::clone(self);
        let span = tracing::debug_span!("prefetch", layer);
        self.spawn(
            async move {
                let permit = Arc::clone(&shared.prefetch_slots).acquire_owned().await;
                drop(queued);
                let Ok(_permit) = permit else {
                    return;
                };
                // A fetch may have read it, or used and released it, while
                // this prefetch queued.
                let meta = &shared.metas[layer];
                let fetched_since =
                    meta.access_count.load(Relaxed) > meta.prefetch_asked_at.load(Relaxed);
                if shared.closed.load(Relaxed) || shared.cache.contains(layer) || fetched_since {
                    return;
                }
                let priority = meta.priority();
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
}

/// Marks a layer's prefetch as queued until the task gets its permit or is
/// dropped (the runtime shut down), whichever comes first.
struct Queued {
    shared: Arc<Shared>,
    layer: usize,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.shared.metas[self.layer]
            .prefetch_queued
            .store(false, Relaxed);
    }
}
