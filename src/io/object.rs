//! The object-store engine: a layer of an `s3://` model read as ranged GETs,
//! `read_chunk_size` bytes each, `reads_in_flight` at a time, every response
//! body streamed straight into its window of the layer's buffer.
//!
//! The layer is laid out in its buffer exactly as the file engines lay it
//! out ([`aligned::spans`], [`aligned::chunks`]), so its footprint and its
//! charge are the same whichever engine reads it; only the layer's own
//! bytes are requested (a chunk's block-aligned margins are never
//! returned, so they are not fetched). The requests are issued here, one
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
                // One window of the buffer per chunk, disjoint, in buffer
                // order (as the pread engine cuts them); each request fills
                // the part of its window that holds the layer's bytes.
                let mut requests = Vec::new();
                let mut rest = buf.as_mut_slice();
                for chunk in aligned::chunks(&spans, chunk_len) {
                    let (window, tail) = std::mem::take(&mut rest).split_at_mut(chunk.len as usize);
                    rest = tail;
                    if chunk.needed.is_empty() {
                        continue;
                    }
                    let at = chunk.buf_offset;
                    let dst = &mut window[chunk.needed.start - at..chunk.needed.end - at];
                    let start = chunk.offset + (chunk.needed.start - at) as u64;
                    let (url, version) = &files[chunk.file];
                    let op = format!("read layer {layer}");
                    let store = Arc::clone(&store);
                    requests.push(async move {
                        store
                            .read_into(
                                url,
                                version,
                                start..start + dst.len() as u64,
                                dst,
                                &op,
                                layer,
                            )
                            .await
                    });
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
