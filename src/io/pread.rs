//! The pread engine: blocking `pread(2)` calls on tokio's blocking pool,
//! straight into the layer's final page-aligned buffer.
//!
//! This is what [`Backend::Auto`] falls back to where io_uring cannot be
//! created (seccomp, `io_uring_disabled`, old kernels). Unlike a file mapping,
//! a read never touches a page the file no longer has: a file truncated
//! before or while a layer is read ends the read early, which becomes
//! [`Error::Truncated`], never `SIGBUS`.
//!
//! A layer is one blocking task. It cuts the layer's block-aligned spans into
//! `read_chunk_size` requests, the same chunks as the io_uring engine, and
//! reads them with `O_DIRECT` where the filesystem allows it (buffered where
//! it refuses, as io_uring does); with `reads_in_flight` above 1 and more
//! than one chunk, that many threads of the task take chunks from a shared
//! queue (see [`PreadBackend::read_layer`]). Short reads are resumed,
//! transient errors retried, and every outcome judged by the code the io_uring
//! engine uses ([`super::aligned::judge`]), so both engines give the same bytes
//! and the same typed errors.
//!
//! If the caller gives up, the blocking task still runs to its end: it owns
//! the buffer, so the kernel never writes into freed memory, and the budget
//! charge inside the buffer is returned when the task drops it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;

use super::aligned::{self, Chunk, Span, Step, Tuning};
use crate::budget::Charge;
use crate::buffer::AlignedBuf;
use crate::config::{Backend, MmapConfig};
use crate::error::{Error, Result};
use crate::faults::FaultPlan;
use crate::index::{LayerSpec, BLOCK};
use crate::io::bytes::LayerBytes;
use crate::io::verify::Verify;
use crate::sys::pages::Residency;

pub(crate) struct PreadBackend {
    inner: Arc<Inner>,
}

/// What every read shares; blocking tasks hold it by `Arc`, so the files stay
/// open until the last read in flight ends, even after the model is closed.
struct Inner {
    files: Vec<PreadFile>,
    tuning: Tuning,
    /// Test-only fault injection (`None` otherwise).
    faults: Option<Arc<FaultPlan>>,
    /// Bytes read buffered because they were cached (`Stats::page_cache_bytes`).
    page_cache_bytes: Arc<AtomicU64>,
}

/// One model file, opened once per model (twice with direct I/O).
struct PreadFile {
    path: Arc<Path>,
    direct: Option<File>,
    buffered: File,
    residency: Option<Residency>,
    /// Cleared when the filesystem refuses a direct read; later reads are buffered.
    direct_ok: AtomicBool,
}

impl PreadBackend {
    /// Opens `files` (with `O_DIRECT` too if `config.direct_io`).
    pub(crate) fn open(
        files: &[Arc<Path>],
        config: &MmapConfig,
        faults: Option<Arc<FaultPlan>>,
        page_cache_bytes: Arc<AtomicU64>,
    ) -> Result<Self> {
        let files = aligned::open_files(files, config.direct_io)?
            .into_iter()
            .map(|f| PreadFile {
                path: f.path,
                direct_ok: AtomicBool::new(f.direct.is_some()),
                direct: f.direct,
                buffered: f.buffered,
                residency: f.residency,
            })
            .collect();
        Ok(PreadBackend {
            inner: Arc::new(Inner {
                files,
                tuning: Tuning::new(config),
                faults,
                page_cache_bytes,
            }),
        })
    }
}

impl PreadBackend {
    /// Whether every range of the layer looks cached (sampled: see
    /// `Residency::cached`); never for files read without `O_DIRECT`, which
    /// keep no residency map.
    pub(crate) fn looks_cached(&self, spec: &LayerSpec) -> bool {
        spec.ranges.iter().all(|r| {
            self.inner.files[r.file]
                .residency
                .as_ref()
                .is_some_and(|res| res.cached(r.offset, r.len))
        })
    }
}

impl super::ReadBackend for PreadBackend {
    fn kind(&self) -> Backend {
        Backend::Pread
    }

    /// With `verify`, each chunk is hashed right after it lands, while its
    /// bytes are still in the CPU's cache (see [`Inner::read_layer`]).
    fn read(
        &self,
        layer: usize,
        spec: &LayerSpec,
        charge: Charge,
        verify: Option<Verify>,
    ) -> BoxFuture<'static, Result<LayerBytes>> {
        let inner = Arc::clone(&self.inner);
        let path = Arc::clone(&inner.files[spec.ranges[0].file].path);
        let (spans, buf_len) = aligned::spans(spec);
        let ranges = spec.ranges.clone();
        let size = spec.size as usize;
        async move {
            let mut buf = aligned::layer_buffer(&path, layer, buf_len, charge).await?;
            // The blocking thread's events belong to the span this read runs in.
            let span = tracing::Span::current();
            // The task owns the buffer: dropping this future (or its
            // `JoinHandle`) does not stop the read, and the buffer, with the
            // charge in it, is freed when the task ends.
            let hash = verify.is_some();
            let task = tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                inner
                    .read_layer(layer, &spans, &mut buf, hash)
                    .map(|digest| (buf, spans, digest))
            });
            let (buf, spans, digest) = task.await.map_err(|_| Error::Aborted { path, layer })??;
            let bytes = aligned::into_layer(buf, &ranges, &spans, size);
            match (verify, digest) {
                (Some(v), Some(actual)) => v.compare(layer, bytes, actual),
                _ => Ok(bytes),
            }
        }
        .boxed()
    }
}

impl Inner {
    /// Fills `buf` with the layer's `spans`, chunk by chunk; with `hash`,
    /// returns the xxh3-64 of the layer's bytes.
    ///
    /// With `hash`, `reads_in_flight` = 1, or a layer of one chunk, this
    /// thread reads the chunks in order, and hashes each one's layer bytes
    /// right after reading it: they are still in the CPU's cache then, so the
    /// checksum costs no second trip through memory (a warm read is a copy
    /// from the page cache, bound by memory bandwidth; hashing afterwards
    /// made it 1.5× slower). Otherwise `reads_in_flight` threads (this one and
    /// scoped helpers) take chunks from a queue, so that many `pread`s are in
    /// flight, as io_uring keeps that many requests in flight. After an error
    /// the other threads take no new chunk, and the first error is returned.
    fn read_layer(
        &self,
        layer: usize,
        spans: &[Span],
        buf: &mut AlignedBuf,
        hash: bool,
    ) -> Result<Option<u64>> {
        // One window of the buffer per chunk. The chunks tile the first
        // `buf_len` bytes in order (`aligned::chunks`) and the buffer is at
        // least that long, so each window is its chunk's exact place, and the
        // windows are disjoint `&mut` slices: any thread may fill any of them.
        let mut windows = Vec::new();
        let mut rest = buf.as_mut_slice();
        for chunk in aligned::chunks(spans, self.tuning.chunk) {
            let (window, tail) = std::mem::take(&mut rest).split_at_mut(chunk.len as usize);
            windows.push((chunk, window));
            rest = tail;
        }
        let threads = self.tuning.depth.min(windows.len());
        if hash || threads <= 1 {
            let mut hasher = hash.then(crate::checksum::Xxh3::new);
            for (chunk, window) in windows {
                self.read_chunk(layer, &chunk, window)?;
                if let Some(hasher) = &mut hasher {
                    // `needed` lies inside the chunk, in buffer offsets.
                    let at = chunk.buf_offset;
                    hasher.update(&window[chunk.needed.start - at..chunk.needed.end - at]);
                }
            }
            return Ok(hasher.map(|h| h.digest()));
        }
        let queue = Mutex::new(windows.into_iter());
        let failed = AtomicBool::new(false);
        let work = || -> Result<()> {
            while !failed.load(Relaxed) {
                let Some((chunk, window)) = queue.lock().next() else {
                    break;
                };
                if let Err(e) = self.read_chunk(layer, &chunk, window) {
                    failed.store(true, Relaxed);
                    return Err(e);
                }
            }
            Ok(())
        };
        std::thread::scope(|s| {
            // A helper that cannot be started only means fewer reads in flight.
            let helpers: Vec<_> = (1..threads)
                .filter_map(|_| {
                    std::thread::Builder::new()
                        .name("hyperion-pread".into())
                        .spawn_scoped(s, work)
                        .ok()
                })
                .collect();
            let mut result = work();
            for helper in helpers {
                let joined = helper.join().unwrap_or_else(|_| {
                    Err(Error::Aborted {
                        path: Arc::clone(&self.files[spans[0].file].path),
                        layer,
                    })
                });
                result = result.and(joined);
            }
            result.map(|()| None)
        })
    }

    /// Reads one chunk into `window` (exactly the chunk's length), resuming
    /// short reads and following [`aligned::judge`].
    fn read_chunk(&self, layer: usize, chunk: &Chunk, window: &mut [u8]) -> Result<()> {
        let file = &self.files[chunk.file];
        let mut done = 0usize;
        let mut transient = 0;
        let cached = aligned::read_cached(file.residency.as_ref(), chunk, &self.page_cache_bytes);
        let mut buffered = false;
        while done < window.len() {
            let pos = chunk.offset + done as u64;
            // Direct reads need a block-aligned offset, length and address.
            // The chunk's offset, length and place in the buffer are
            // block-aligned, so an aligned `pos` makes all three aligned; after
            // a short read ends mid-block, finish the chunk buffered.
            let direct = match &file.direct {
                Some(d) if !cached && file.direct_ok.load(Relaxed) && pos % BLOCK == 0 => Some(d),
                _ => None,
            };
            buffered |= direct.is_none();
            let fd = direct.unwrap_or(&file.buffered);
            let mut len = window.len() - done;
            let injected = aligned::inject(self.faults.as_deref(), &mut len);
            if let Some(d) = injected.delay {
                std::thread::sleep(d);
            }
            let res = match injected.error {
                Some(e) => Err(e),
                None => fd.read_at(&mut window[done..done + len], pos),
            };
            let step = aligned::judge(
                res,
                &file.path,
                layer,
                chunk,
                pos,
                direct.is_some(),
                &mut transient,
            )?;
            match step {
                Step::Read(n) => done += n,
                Step::Complete => break,
                Step::Again => {}
                Step::Buffered => file.direct_ok.store(false, Relaxed),
            }
        }
        if buffered {
            aligned::confirm_not_truncated(&file.buffered, &file.path, layer, chunk)?;
        }
        Ok(())
    }
}
