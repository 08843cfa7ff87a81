//! The object-store engine: a layer of an `s3://` model read as ranged GETs,
//! `read_chunk_size` bytes each, `reads_in_flight` at a time, every response
//! body streamed straight into its window of the layer's buffer.
//!
//! The layer is laid out in its buffer exactly as the file engines lay it
//! out ([`aligned::spans`]), so its footprint and its charge are the same
//! whichever engine reads it; only the layer's own bytes are requested (a
//! span's block-aligned margins are never returned, so they are not
//! fetched), in requests cut from each range's first byte. The requests are issued here, one
//! per chunk, rather than with `object_store`'s `get_ranges`, which merges
//! neighbouring ranges into one request and would serialise the layer.
//!
//! Memory: the layer's buffer is reserved from the budget before any
//! request is made, as for every engine; a response body is copied into the
//! buffer piece by piece as the connection delivers it, so besides the
//! buffer only the HTTP client's read buffers are in flight (bounded by
//! `max_requests_in_flight` connections). A retried request starts over
//! into the same window, so a retry never holds a second copy.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::aligned::{self, Tuning};
use super::bytes::LayerBytes;
use super::verify::Verify;
use crate::budget::Charge;
use crate::config::{Backend, MmapConfig};
use crate::error::Result;
use crate::index::LayerSpec;
use crate::object::{ObjectVersion, Store};

pub(crate) struct ObjectBackend {
    store: Arc<Store>,
    /// The model's objects, with the version each was opened at, in
    /// [`crate::index::FileRange::file`] order.
    files: Arc<[(Arc<Path>, ObjectVersion)]>,
    tuning: Tuning,
}

impl ObjectBackend {
    pub(crate) fn new(
        store: Arc<Store>,
        files: Vec<(Arc<Path>, ObjectVersion)>,
        config: &MmapConfig,
    ) -> Self {
        ObjectBackend {
            store,
            files: files.into(),
            tuning: Tuning::new(config),
        }
    }
}

impl super::ReadBackend for ObjectBackend {
    fn kind(&self) -> Backend {
        Backend::ObjectStore
    }

    fn read(
        &self,
        layer: usize,
        spec: &LayerSpec,
        charge: Charge,
        verify: Option<Verify>,
    ) -> BoxFuture<'static, Result<LayerBytes>> {
        let store = Arc::clone(&self.store);
        let files = Arc::clone(&self.files);
        let path = Arc::clone(&files[spec.ranges[0].file].0);
        let (spans, buf_len) = aligned::spans(spec);
        let ranges = spec.ranges.clone();
        let size = spec.size as usize;
        let (chunk_len, depth) = (self.tuning.chunk, self.tuning.depth);
        async move {
            let mut buf = aligned::layer_buffer(&path, layer, buf_len, charge).await?;
            {
                // The layer's own bytes of each span, cut into requests of
                // `read_chunk_size` from the first needed byte (not from the
                // block-aligned span: a block-aligned cut would add a tiny
                // request for a range's last few bytes, and a request costs
                // a round trip whatever its size). Each request gets its
                // disjoint window of the buffer, in buffer order.
                let mut requests = Vec::new();
                let mut rest = buf.as_mut_slice();
                let mut rest_at = 0usize; // the buffer offset of `rest[0]`
                for span in &spans {
                    let start = span.buf_offset + (span.needed_start - span.offset) as usize;
                    let end = span.buf_offset + (span.needed_end - span.offset) as usize;
                    let mut at = start;
                    while at < end {
                        let len = (end - at).min(chunk_len as usize);
                        let (_, tail) = std::mem::take(&mut rest).split_at_mut(at - rest_at);
                        let (dst, tail) = tail.split_at_mut(len);
                        rest = tail;
                        rest_at = at + len;
                        let first = span.needed_start + (at - start) as u64;
                        let (url, version) = &files[span.file];
                        let (store, op) = (Arc::clone(&store), format!("read layer {layer}"));
                        requests.push(async move {
                            let range = first..first + dst.len() as u64;
                            store.read_into(url, version, range, dst, &op, layer).await
                        });
                        at += len;
                    }
                }
                // `reads_in_flight` requests at a time; the first error ends
                // the layer (the others are dropped, their windows unread).
                let mut in_flight = futures::stream::iter(requests).buffer_unordered(depth);
                while let Some(done) = in_flight.next().await {
                    done?;
                }
            }
            let bytes = aligned::into_layer(buf, &ranges, &spans, size);
            match verify {
                Some(v) => v.check(layer, bytes).await,
                None => Ok(bytes),
            }
        }
        .boxed()
    }
}
