//! Checking a layer's bytes against the checksum its file records.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::bytes::LayerBytes;

/// Layers at least this large are hashed on a blocking thread, so a long
/// hash never stalls an async worker (and the io_uring backend hashes them
/// while it reads them).
pub(crate) const BLOCKING_THRESHOLD: usize = 256 << 10;

/// A read's checksum check: the xxh3-64 the file records for the layer,
/// and the path to name in a mismatch.
#[derive(Clone, Debug)]
pub(crate) struct Verify {
    pub(crate) expected: u64,
    pub(crate) path: Arc<Path>,
}

impl Verify {
    /// `bytes` if `actual`, their xxh3-64, is the expected one; else
    /// [`Error::ChecksumMismatch`] (and the bytes are dropped).
    pub(crate) fn compare(
        &self,
        layer: usize,
        bytes: LayerBytes,
        actual: u64,
    ) -> Result<LayerBytes> {
        if actual == self.expected {
            Ok(bytes)
        } else {
            Err(Error::ChecksumMismatch {
                path: Arc::clone(&self.path),
                layer,
                expected: self.expected,
                actual,
            })
        }
    }

    /// Hashes `bytes` (on a blocking thread when large) and compares.
    pub(crate) async fn check(&self, layer: usize, bytes: LayerBytes) -> Result<LayerBytes> {
        let (bytes, actual) = if bytes.len < BLOCKING_THRESHOLD {
            let h = crate::checksum::xxh3_64(bytes.as_slice());
            (bytes, h)
        } else {
            tokio::task::spawn_blocking(move || {
                let h = crate::checksum::xxh3_64(bytes.as_slice());
                (bytes, h)
            })
            .await
            .map_err(|_| Error::Aborted {
                path: Arc::clone(&self.path),
                layer,
            })?
        };
        self.compare(layer, bytes, actual)
    }
}
