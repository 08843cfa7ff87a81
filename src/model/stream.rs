//! `stream_layers`' read-ahead: keep `lookahead` layers being read ahead of
//! the consumer, passing over the layers ahead that are cached already.
//!
//! Counting positions instead ("prefetch the next `lookahead` entries of
//! the order") stalls a pass whose cache holds most of its layers: when the
//! next few positions are hits, nothing is read until the consumer is
//! within `lookahead` steps of the first miss, and a run of misses then
//! waits on the disk one after another (measured on a streamed Llama at
//! half its size in the budget: 70% of the reads hidden by compute, 0.84×
//! the eager model's tokens/s, before; see docs/candle.md for after).

use super::{MappedModel, Prefetch};

/// The layers one stream has asked to be read ahead and not yet consumed.
#[derive(Debug, Default)]
pub(super) struct ReadAhead {
    issued: Vec<usize>,
}

impl ReadAhead {
    /// Before the consumer awaits `order[pos]`: prefetches the next layers
    /// of `order` that are neither cached nor being read, until `lookahead`
    /// of this stream's read-ahead layers are outstanding, looking at most
    /// `window` positions ahead (beyond what the budget holds, a read would
    /// only evict a layer needed sooner).
    pub(super) fn advance(
        &mut self,
        model: &MappedModel,
        order: &[usize],
        pos: usize,
        lookahead: usize,
        window: usize,
    ) {
        for &ahead in order.iter().skip(pos + 1).take(window) {
            if self.issued.len() >= lookahead {
                break;
            }
            if self.issued.contains(&ahead) {
                continue;
            }
            // `Present`: cached or being read already, no read to start. A
            // refused prefetch (disabled, too large, closed) is retried on
            // the next step, where it is refused again at no cost.
            if let Ok(Prefetch::Queued) = model.prefetch(ahead) {
                self.issued.push(ahead);
            }
        }
    }

    /// The consumer has fetched `layer`: it no longer counts as read-ahead.
    pub(super) fn consumed(&mut self, layer: usize) {
        if let Some(i) = self.issued.iter().position(|&l| l == layer) {
            self.issued.swap_remove(i);
        }
    }
}
