//! The fetch path: [`LayerFetch`], the future [`MappedModel::layer`](crate::MappedModel::layer)(super::MappedModel::layer)
//! returns; a hit settled before the future exists, a miss that joins the
//! layer's read in flight or starts it as a task of its own (single flight).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::load::Load;
use super::shared::Shared;
use crate::budget::Charge;
use crate::cache::{Lookup, Origin};
use crate::error::{Error, Result};
use crate::stats::Counters;
use crate::weights::LayerWeights;

/// The future [`MappedModel::layer`](crate::MappedModel::layer) returns: already complete when the layer
/// was cached at the call, otherwise waiting for the layer's read.
///
/// `Send`, `'static` and `Unpin`, so it can be stored, spawned or polled by
/// hand. Dropping it at any point is safe (see [`MappedModel::layer`](crate::MappedModel::layer)).
#[must_use = "futures do nothing unless polled"]
pub struct LayerFetch {
    pub(super) state: FetchState,
}

pub(super) enum FetchState {
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
    /// The synchronous half of a fetch: checks the argument, records the
    /// access and returns the weights if they are cached; `None` means the
    /// caller must go on with [`Shared::fetch_miss`].
    pub(super) fn fetch_cached(&self, layer: usize) -> Result<Option<LayerWeights>> {
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
    pub(super) async fn fetch_miss(self: Arc<Self>, layer: usize) -> Result<LayerWeights> {
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
    pub(super) fn start_or_join(
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
}
