//! What [`Backend::Auto`] reads with where io_uring works and `direct_io` is
//! on: layers on the disk through io_uring, layers in the page cache through
//! the pread engine.
//!
//! Both engines copy a cached chunk out of the page cache instead of
//! reading it from the disk (`aligned::read_cached`), but io_uring makes
//! those copies on its one ring thread, while pread makes them on a
//! blocking thread per layer in flight, so both cores copy. Measured
//! (`hyperion bench`, docs/bench/bench-runs.md): a cached 2 GiB model
//! through the io_uring engine 14,879 MB/s, through pread 17,191. So a layer
//! whose every range looks cached (`PreadBackend::looks_cached`, sampled)
//! goes to pread; any other to io_uring. A wrong guess costs speed, never bytes:
//! either engine returns the same bytes and errors (`aligned`).
//!
//! Measured with this router (seven interleaved rounds of `POOLED=1 WARM=1
//! examples/stream FILE 512 auto`, 2 GiB cached, default config): median
//! 16,315 MB/s against 14,142 without it; cold unchanged (3,730 against
//! 3,730 median, five rounds).

use futures::future::BoxFuture;

use super::pread::PreadBackend;
use super::uring::UringBackend;
use super::ReadBackend;
use crate::budget::Charge;
use crate::config::Backend;
use crate::error::Result;
use crate::index::LayerSpec;
use crate::io::bytes::LayerBytes;
use crate::io::verify::Verify;

pub(crate) struct AutoBackend {
    disk: UringBackend,
    cache: PreadBackend,
}

impl AutoBackend {
    pub(crate) fn new(disk: UringBackend, cache: PreadBackend) -> Self {
        AutoBackend { disk, cache }
    }
}

impl ReadBackend for AutoBackend {
    /// io_uring: the engine that reads from the disk.
    fn kind(&self) -> Backend {
        Backend::IoUring
    }

    fn read(
        &self,
        layer: usize,
        spec: &LayerSpec,
        charge: Charge,
        verify: Option<Verify>,
    ) -> BoxFuture<'static, Result<LayerBytes>> {
        if self.cache.looks_cached(spec) {
            self.cache.read(layer, spec, charge, verify)
        } else {
            self.disk.read(layer, spec, charge, verify)
        }
    }
}
