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
}
