//! One layer's read, running as a task of its own: reserve memory (unless a
//! prefetch already did), read through the engine (checksum included),
//! publish the result to the cache and to every waiter.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::shared::Shared;
use crate::budget::Charge;
use crate::cache::{Origin, Published};
use crate::error::{Error, Result};
use crate::io::verify::Verify;
use crate::stats::Counters;
use crate::weights::LayerWeights;

/// One read of one layer, running as its own task. If the task is dropped
/// before it finishes (the runtime shut down), `Drop` clears its `Loading`
/// slot, and its waiters see [`Error::Aborted`] through the dropped sender.
pub(super) struct Load {
    pub(super) shared: Arc<Shared>,
    pub(super) layer: usize,
    pub(super) id: u64,
    pub(super) armed: bool,
}

impl Load {
    pub(super) async fn run(
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
