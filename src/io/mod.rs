//! Read backends: how the bytes of a layer that is not cached get into memory.
//!
//! One small trait, three engines in their own files: [`uring`] (io_uring on
//! a dedicated ring thread, direct I/O into aligned buffers), [`pread`]
//! (blocking `pread` on tokio's blocking pool into the same buffers, what
//! [`Backend::Auto`] falls back to) and [`mmap`] (views into a mapping of the
//! file, paged in with `madvise`; only when asked for, as it can `SIGBUS` on
//! a truncated file). The two that read into buffers share [`aligned`]. The cache
//! reserves budget first and hands the [`Charge`] to the backend, which puts
//! it inside the memory it fills, so the charge lives exactly as long as
//! the memory.

pub(crate) mod aligned;
pub(crate) mod auto;
pub(crate) mod bytes;
pub(crate) mod fresh_memory;
pub(crate) mod mmap;
#[cfg(feature = "object-store")]
pub(crate) mod object;
pub(crate) mod pread;
pub(crate) mod shared;
pub(crate) mod uring;
pub(crate) mod verify;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::budget::Charge;
use crate::config::{Backend, MmapConfig};
use crate::error::{Error, Result};
use crate::faults::FaultPlan;
use crate::index::{LayerSpec, ModelIndex};
use bytes::LayerBytes;
use verify::Verify;

/// A read engine. Implementations must return either the layer's exact
/// bytes or an error; never fewer bytes, never stale ones.
pub(crate) trait ReadBackend: Send + Sync + 'static {
    /// Which engine this is (never `Auto`).
    fn kind(&self) -> Backend;

    /// Reads the bytes of `spec` (layer `layer`) into memory paid for by
    /// `charge`; with `verify`, checks them against the layer's xxh3-64 (a
    /// mismatch is [`Error::ChecksumMismatch`] and no bytes). Engines that
    /// can hash while they read do (io_uring, pread); the others hash after.
    ///
    /// The charge may come with an idle pooled buffer (see `buffer.rs`): an
    /// engine that reads into a buffer gets it with `AlignedBuf::charged`
    /// and must overwrite every byte it returns, or fail; one that puts the
    /// charge in other memory calls `Charge::unpooled` first.
    fn read(
        &self,
        layer: usize,
        spec: &LayerSpec,
        charge: Charge,
        verify: Option<Verify>,
    ) -> BoxFuture<'static, Result<LayerBytes>>;
}

/// Opens the engine `config.backend` asks for over `files`, with the test
/// fault plan `faults` (always `None` outside tests). Engines that read with
/// `O_DIRECT` count into `page_cache_bytes` the bytes they copied from the
/// page cache instead (see [`aligned::OpenFile::residency`]).
///
/// `Auto` is io_uring, or pread where the ring cannot be created; never mmap,
/// so that a file truncated under an open model cannot raise `SIGBUS`. With
/// io_uring and `direct_io`, layers found in the page cache are read by the
/// pread engine ([`auto`]).
pub(crate) async fn open_backend(
    files: &[Arc<Path>],
    config: &MmapConfig,
    faults: Option<Arc<FaultPlan>>,
    page_cache_bytes: Arc<AtomicU64>,
    page_cache_shared_bytes: Arc<AtomicU64>,
) -> Result<Arc<dyn ReadBackend>> {
    let engine = open_file_backend(files, config, faults.clone(), page_cache_bytes).await?;
    // Cached layers shared under a lease (io/shared.rs); the mmap engine
    // maps everything anyway.
    if config.share_page_cache && engine.kind() != Backend::Mmap {
        // A few system calls per file and one thread: quick enough to make here.
        let shared = shared::SharedBackend::open(
            files,
            engine,
            page_cache_shared_bytes,
            config.share_cold_layers,
            config.share_writable,
            faults.as_deref(),
        );
        return Ok(Arc::new(shared));
    }
    Ok(engine)
}

/// The engine `config.backend` names, without page-cache sharing.
async fn open_file_backend(
    files: &[Arc<Path>],
    config: &MmapConfig,
    faults: Option<Arc<FaultPlan>>,
    page_cache_bytes: Arc<AtomicU64>,
) -> Result<Arc<dyn ReadBackend>> {
    let uring =
        || uring::UringBackend::open(files, config, faults.clone(), Arc::clone(&page_cache_bytes));
    let pread =
        |faults| pread::PreadBackend::open(files, config, faults, Arc::clone(&page_cache_bytes));
    match config.backend {
        // Only a model opened from an object URL reads with it
        // (`open_object_backend`).
        Backend::ObjectStore => Err(Error::InvalidArgument(
            "Backend::ObjectStore reads models opened from an object URL (s3://bucket/key), not local files"
                .into(),
        )),
        Backend::Mmap => Ok(Arc::new(mmap::MmapBackend::open(files, faults.clone())?)),
        Backend::Pread => Ok(Arc::new(pread(faults)?)),
        Backend::IoUring => Ok(Arc::new(uring().await?)),
        // Buffered reads copy from the page cache, where blocking pread was
        // steadier and faster than buffered io_uring (warm 13.6–15.4 GB/s
        // against 1.6–15.7; cold the same): docs/architecture.md, "Backends".
        Backend::Auto if !config.direct_io => Ok(Arc::new(pread(faults)?)),
        // Layers in the page cache go to pread (io/auto.rs).
        Backend::Auto => match uring().await {
            Ok(b) => Ok(Arc::new(auto::AutoBackend::new(b, pread(faults)?))),
            Err(e @ Error::BackendUnavailable { .. }) => {
                warn_fallback_once(&e);
                Ok(Arc::new(pread(faults)?))
            }
            Err(e) => Err(e),
        },
    }
}

/// Opens a model in object storage (`s3://bucket/key`): reads its index
/// with ranged GETs (one HEAD per object, then the headers) and returns it
/// with the engine that reads its layers, over the same client and the same
/// object versions. Must run inside a tokio runtime (the parsers block on it
/// from a blocking-pool thread).
#[cfg(feature = "object-store")]
pub(crate) async fn open_object_model(
    path: &Arc<Path>,
    config: &MmapConfig,
) -> Result<(ModelIndex, Arc<dyn ReadBackend>)> {
    check_object_backend(path, config)?;
    let store = crate::object::Store::connect(path, &config.object_store)?;
    let runtime = tokio::runtime::Handle::current();
    let (index, files) = {
        let store = Arc::clone(&store);
        let url = Arc::clone(path);
        tokio::task::spawn_blocking(move || {
            let mut files = crate::object::RemoteFiles::new(store, runtime);
            let index = crate::format::read_index_with(&url, &mut files)?;
            Ok::<_, Error>((index, files))
        })
        .await
        .map_err(|_| Error::Aborted {
            path: Arc::clone(path),
            layer: 0,
        })??
    };
    let versions = index
        .files
        .iter()
        .map(|p| {
            let version = files.version_of(p).cloned().ok_or_else(|| {
                crate::object::config_error(
                    p,
                    "open",
                    "the index names an object that was not opened",
                )
            })?;
            Ok((Arc::clone(p), version))
        })
        .collect::<Result<Vec<_>>>()?;
    let backend = object::ObjectBackend::new(store, versions, config);
    Ok((index, Arc::new(backend)))
}

/// Without the `object-store` feature: the error that says so.
#[cfg(not(feature = "object-store"))]
pub(crate) async fn open_object_model(
    path: &Arc<Path>,
    config: &MmapConfig,
) -> Result<(ModelIndex, Arc<dyn ReadBackend>)> {
    check_object_backend(path, config)?;
    Err(crate::object::not_built(path))
}

/// An object model reads with the object-store engine: `Auto` or
/// `ObjectStore` may be asked for, no file engine.
fn check_object_backend(path: &Arc<Path>, config: &MmapConfig) -> Result<()> {
    match config.backend {
        Backend::Auto | Backend::ObjectStore => Ok(()),
        other => Err(Error::InvalidArgument(format!(
            "{}: a model in object storage is read by Backend::ObjectStore (or Auto), not {}",
            path.display(),
            other.name()
        ))),
    }
}

fn warn_fallback_once(e: &Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(
        || tracing::warn!(error = %e, "io_uring unavailable, falling back to the pread backend"),
    );
}
