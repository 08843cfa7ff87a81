//! Admission: reserving a layer's memory in the budget before its read,
//! evicting by policy, and, for a fetch that finds nothing to evict, waiting
//! (up to `memory_wait_timeout`) for memory that callers still hold.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::shared::Shared;
use crate::budget::{Charge, RECHECK};
use crate::cache::Origin;
use crate::error::{Error, Result};
use crate::stats::Counters;

impl Shared {
    /// Reserves memory for `layer`, evicting by policy. A fetch that finds
    /// nothing to evict waits up to `memory_wait_timeout` for memory to be
    /// freed; a prefetch never waits.
    pub(super) async fn reserve(
        &self,
        layer: usize,
        origin: Origin,
        priority: f32,
    ) -> Result<Charge> {
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
}
