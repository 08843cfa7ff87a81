//! The io_uring backend: tokio-uring on a dedicated ring thread.
//!
//! `tokio_uring::fs::File` is `!Send` and `tokio_uring::start` cannot run
//! inside a tokio worker, so the ring lives on its own `std::thread`; callers
//! on any multi-thread runtime send it jobs through a channel and get the
//! filled buffer back through a oneshot. A layer is read straight into its
//! final page-aligned buffer with `O_DIRECT`, split into `read_chunk_size`
//! requests with `reads_in_flight` of them in flight; short reads are resumed,
//! and reads the filesystem refuses with `O_DIRECT` (`EINVAL`) fall back to
//! buffered reads of the same file.
//!
//! If a caller gives up while a job runs, the job still finishes on the ring
//! thread. Each in-flight request owns a reference to the buffer, which
//! tokio-uring keeps until the kernel completes the request, so the kernel
//! never writes into freed memory, and the budget charge inside the buffer is
//! returned (or the buffer pooled) only when the memory really is free.
//! (tokio-uring drops the buffers of cancelled requests without waiting when
//! its runtime is dropped, so the ring thread does not drop it while any
//! request buffer is alive.)
//!
//! # Checksums while reading
//!
//! When a layer's checksum is to be verified, the ring thread reports each
//! chunk of the buffer as it becomes final — in layer order: a chunk that
//! completes before an earlier one waits for it — through a channel to a
//! hasher on a blocking thread (never the ring thread, which keeps
//! submitting), which feeds those bytes to a streaming xxh3-64. Hashing chunk
//! k thus overlaps the read of chunk k + 1, and the digest is ready moments
//! after the last chunk lands. It equals `xxh3_64` of the whole layer.
//!
//! This is done with `direct_io` (the cold path, where it was measured to
//! help). With buffered reads (`direct_io: false`, the page-cache path), the
//! layer is hashed after the read as by the other engines: there, reads
//! complete so fast that the hash of one layer already overlaps the read of
//! the next through prefetch, and waking a hasher per chunk made the
//! already erratic buffered io_uring reads fall into their slow mode more
//! often (`docs/architecture.md`, "Checksums").

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::budget::Charge;
use crate::buffer::AlignedBuf;
use crate::config::{Backend, MmapConfig};
use crate::error::{Error, Result};
use crate::faults::{Fault, FaultPlan};
use crate::index::{align_down, align_up, LayerSpec, BLOCK};
use crate::weights::{LayerBytes, Storage};

/// Submission queue entries of the ring: far more than the requests we keep
/// in flight (prefetch_threads × reads_in_flight plus demand reads).
const RING_ENTRIES: u32 = 256;
/// Retries of a request that failed with EINTR or EAGAIN before giving up.
const TRANSIENT_RETRIES: u32 = 16;
/// The most requests in flight on the ring across all jobs, well under its
/// submission queue, so a submission never fails for lack of room.
const MAX_RING_REQUESTS: usize = RING_ENTRIES as usize / 2;

/// What every job on the ring thread shares.
struct Ring {
    files: Vec<RingFile>,
    /// Bounds the requests in flight (see [`MAX_RING_REQUESTS`]).
    slots: tokio::sync::Semaphore,
    /// Request buffers not yet given back by tokio-uring. A cancelled
    /// request's buffer lives until the kernel completes it, and tokio-uring
    /// frees such buffers without waiting when its runtime is dropped, so the
    /// ring thread keeps running until this is zero.
    live_buffers: Rc<Cell<usize>>,
    /// Test-only fault injection (`None` otherwise).
    faults: Option<Arc<FaultPlan>>,
}

pub(crate) struct UringBackend {
    jobs: mpsc::UnboundedSender<Job>,
    files: Arc<[Arc<Path>]>,
    /// Whether checksums are computed while reading (with `direct_io`; see
    /// the module docs for why not for buffered reads).
    stream_hash: bool,
}

/// One layer to read: `spans` land back to back in `buf`.
struct Job {
    layer: usize,
    spans: Vec<Span>,
    /// The caller keeps a reference too, and takes the buffer back once the
    /// job has answered (every request completed) and the hasher is done.
    buf: Arc<AlignedBuf>,
    /// Where to report the layer's bytes, in order, as they become final
    /// (for the streaming checksum), if anywhere.
    progress: Option<mpsc::UnboundedSender<Range<usize>>>,
    reply: oneshot::Sender<Result<(), Error>>,
}

/// A block-aligned run of one file, and where its first byte goes in the buffer.
#[derive(Clone, Copy, Debug)]
struct Span {
    file: usize,
    /// Block-aligned file offset.
    offset: u64,
    /// Block-aligned length.
    len: u64,
    /// Start of the bytes the layer needs (the range's first byte).
    needed_start: u64,
    /// End of the bytes the layer needs; the file may end after this but
    /// must not end before it.
    needed_end: u64,
    /// Offset in the buffer.
    buf_offset: usize,
}

struct RingFile {
    path: Arc<Path>,
    direct: Option<tokio_uring::fs::File>,
    buffered: tokio_uring::fs::File,
    /// Cleared when the filesystem refuses a direct read; later reads are buffered.
    direct_ok: Cell<bool>,
}

#[derive(Clone, Copy)]
struct Tuning {
    chunk: u64,
    depth: usize,
}

impl UringBackend {
    /// Starts the ring thread and opens `files` on it. Returns
    /// [`Error::BackendUnavailable`] if the kernel refuses to create a ring.
    pub(crate) async fn open(
        files: &[Arc<Path>],
        config: &MmapConfig,
        faults: Option<Arc<FaultPlan>>,
    ) -> Result<Self> {
        let (jobs, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let tuning = Tuning {
            chunk: align_up(config.read_chunk_size, BLOCK),
            depth: config.reads_in_flight,
        };
        let paths: Vec<Arc<Path>> = files.to_vec();
        let direct = config.direct_io;
        let first = Arc::clone(&files[0]);
        std::thread::Builder::new()
            .name("hyperion-uring".into())
            .spawn(move || ring_thread(paths, direct, tuning, faults, rx, ready_tx))
            .map_err(|e| Error::io(&first, "spawn the io_uring thread", e))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(UringBackend {
                jobs,
                files: files.into(),
                stream_hash: direct,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::BackendUnavailable {
                path: first,
                backend: "io_uring",
                reason: "the ring thread exited during start-up".into(),
            }),
        }
    }
}

impl super::ReadBackend for UringBackend {
    fn kind(&self) -> Backend {
        Backend::IoUring
    }

    fn read(
        &self,
        layer: usize,
        spec: &LayerSpec,
        charge: Charge,
    ) -> BoxFuture<'static, Result<LayerBytes>> {
        self.read_layer(layer, spec, charge, None)
    }

    fn read_verified(
        &self,
        layer: usize,
        spec: &LayerSpec,
        charge: Charge,
        expected: u64,
        path: &Arc<Path>,
    ) -> BoxFuture<'static, Result<LayerBytes>> {
        self.read_layer(layer, spec, charge, Some((expected, Arc::clone(path))))
    }
}

impl UringBackend {
    /// Reads layer `layer`; with `verify` (the expected xxh3-64 and the path
    /// to name in a mismatch), checks it, hashing large layers while they
    /// are read.
    fn read_layer(
        &self,
        layer: usize,
        spec: &LayerSpec,
        charge: Charge,
        verify: Option<(u64, Arc<Path>)>,
    ) -> BoxFuture<'static, Result<LayerBytes>> {
        let path = Arc::clone(&self.files[spec.ranges[0].file]);
        let mut spans = Vec::with_capacity(spec.ranges.len());
        let mut buf_offset = 0usize;
        for r in &spec.ranges {
            let offset = align_down(r.offset, BLOCK);
            let len = align_up(r.end(), BLOCK) - offset;
            spans.push(Span {
                file: r.file,
                offset,
                len,
                needed_start: r.offset,
                needed_end: r.end(),
                buf_offset,
            });
            buf_offset += len as usize;
        }
        let ranges = spec.ranges.clone();
        let size = spec.size as usize;
        let jobs = self.jobs.clone();
        let stream_hash = self.stream_hash;
        async move {
            let aborted = || Error::Aborted {
                path: Arc::clone(&path),
                layer,
            };
            // A pooled buffer holds an earlier layer's bytes: every byte the
            // layer exposes is overwritten below, or the read fails.
            let buf = Arc::new(
                AlignedBuf::charged(buf_offset, Some(charge))
                    .map_err(|e| Error::io(&path, "allocate", e))?,
            );
            let (progress, hasher) = match &verify {
                Some(_) if stream_hash && size >= crate::verify::BLOCKING_THRESHOLD => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let buf = Arc::clone(&buf);
                    let hasher = tokio::task::spawn_blocking(move || hash_regions(&buf, rx));
                    (Some(tx), Some(hasher))
                }
                _ => (None, None),
            };
            let (reply, answer) = oneshot::channel();
            let job = Job {
                layer,
                spans: spans.clone(),
                buf: Arc::clone(&buf),
                progress,
                reply,
            };
            if jobs.send(job).is_err() {
                return Err(aborted());
            }
            // On an error the hasher sees its channel close when the job
            // ends, and exits (letting go of the buffer) by itself.
            answer.await.map_err(|_| aborted())??;
            let digest = match hasher {
                Some(h) => Some(h.await.map_err(|_| aborted())?),
                None => None,
            };
            // Every request has completed and the hasher has returned, so no
            // one else holds the buffer.
            let mut buf = Arc::try_unwrap(buf).map_err(|_| aborted())?;
            // Each span starts at a block boundary of the buffer; the layer's
            // bytes start `skew` into it.
            let first_skew = (ranges[0].offset - spans[0].offset) as usize;
            if ranges.len() > 1 {
                // Move the ranges together. Every destination lies at or before
                // its source, so copying in order never overwrites unread bytes.
                let bytes = buf.as_mut_slice();
                let mut at = first_skew;
                for (r, s) in ranges.iter().zip(&spans) {
                    let src = s.buf_offset + (r.offset - s.offset) as usize;
                    bytes.copy_within(src..src + r.len as usize, at);
                    at += r.len as usize;
                }
            }
            let bytes = LayerBytes {
                storage: Storage::Heap(buf),
                start: first_skew,
                len: size,
            };
            match (verify, digest) {
                (None, _) => Ok(bytes),
                (Some((expected, path)), Some(actual)) => {
                    crate::verify::compare(&path, layer, bytes, expected, actual)
                }
                (Some((expected, path)), None) => {
                    crate::verify::check_layer(&path, layer, bytes, expected).await
                }
            }
        }
        .boxed()
    }
}

/// Hashes the buffer regions `regions` names, in the order it names them,
/// until the job drops its end; returns the xxh3-64. Runs on a blocking
/// thread.
fn hash_regions(buf: &AlignedBuf, mut regions: mpsc::UnboundedReceiver<Range<usize>>) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    while let Some(r) = regions.blocking_recv() {
        // SAFETY: the ring thread sends a region only after every request
        // writing into it has completed (observed on the ring thread, and the
        // channel orders that before this receive), and no request writes it
        // again: the chunks of a job are disjoint windows of the buffer, each
        // written only by its own requests, and the multi-range move happens
        // only after this hasher has returned. The region lies inside the
        // buffer (the job's spans were laid out in it), which `buf` keeps
        // alive. Other regions may be written meanwhile; this slice covers
        // none of their bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(buf.as_mut_ptr().add(r.start).cast_const(), r.len())
        };
        hasher.update(bytes);
    }
    hasher.digest()
}

fn ring_thread(
    paths: Vec<Arc<Path>>,
    direct: bool,
    tuning: Tuning,
    faults: Option<Arc<FaultPlan>>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    ready: oneshot::Sender<Result<()>>,
) {
    let injected = faults.as_ref().is_some_and(|f| f.ring_setup_fails());
    let rt = match tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES)) {
        Ok(_) if injected => {
            let _ = ready.send(Err(Error::BackendUnavailable {
                path: Arc::clone(&paths[0]),
                backend: "io_uring",
                reason: "cannot create a ring: injected failure".into(),
            }));
            return;
        }
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(Error::BackendUnavailable {
                path: Arc::clone(&paths[0]),
                backend: "io_uring",
                reason: format!("cannot create a ring: {e}"),
            }));
            return;
        }
    };
    rt.block_on(async move {
        let ring = match open_files(&paths, direct) {
            Ok(files) => Rc::new(Ring {
                files,
                slots: tokio::sync::Semaphore::new(MAX_RING_REQUESTS),
                live_buffers: Rc::new(Cell::new(0)),
                faults,
            }),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if ready.send(Ok(())).is_err() {
            return;
        }
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => {
                        running.spawn_local(run_job(Rc::clone(&ring), job, tuning));
                    }
                    None => break,
                },
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        // The backend was dropped: let jobs in flight finish, then wait for the
        // kernel to complete requests that were cancelled (a failed job leaves
        // its other requests running): their buffers must outlive the writes.
        while running.join_next().await.is_some() {}
        while ring.live_buffers.get() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    });
}

fn open_files(paths: &[Arc<Path>], direct: bool) -> Result<Vec<RingFile>> {
    paths
        .iter()
        .map(|path| {
            let buffered = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
            // Some filesystems (tmpfs, some network ones) refuse O_DIRECT at
            // open; read those buffered.
            let direct = direct
                .then(|| {
                    OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(path)
                        .ok()
                })
                .flatten();
            Ok(RingFile {
                path: Arc::clone(path),
                direct_ok: Cell::new(direct.is_some()),
                direct: direct.map(tokio_uring::fs::File::from_std),
                buffered: tokio_uring::fs::File::from_std(buffered),
            })
        })
        .collect()
}

async fn run_job(ring: Rc<Ring>, job: Job, tuning: Tuning) {
    let Job {
        layer,
        spans,
        buf,
        progress,
        reply,
    } = job;
    let chunks = chunks(&spans, tuning.chunk);
    // Chunks that completed ahead of an earlier one, by index: their layer
    // bytes are reported once every earlier chunk's are.
    let mut early: BTreeMap<usize, Range<usize>> = BTreeMap::new();
    let mut next = 0usize;
    let result = futures::stream::iter(chunks.enumerate())
        .map(|(i, chunk)| {
            let ring = &ring;
            let buf = &buf;
            async move {
                read_chunk(ring, buf, &chunk, layer).await?;
                Ok((i, chunk.needed))
            }
        })
        .buffer_unordered(tuning.depth)
        .try_for_each(|(i, needed)| {
            early.insert(i, needed);
            while let Some(needed) = early.remove(&next) {
                next += 1;
                if let Some(tx) = progress.as_ref().filter(|_| !needed.is_empty()) {
                    // The hasher is gone only if its reader gave up.
                    let _ = tx.send(needed);
                }
            }
            futures::future::ready(Ok(()))
        })
        .await;
    // Every request of a successful job has completed, so the caller's
    // reference is the last one once ours drops. On error, requests still in
    // flight keep their reference until the kernel completes them; the
    // buffer is pooled (or freed) and its charge kept or returned only then.
    drop(buf);
    drop(progress);
    let _ = reply.send(result);
}

/// The requests a job's spans are split into, in layer order.
fn chunks(spans: &[Span], chunk: u64) -> impl Iterator<Item = Chunk> + '_ {
    spans.iter().flat_map(move |s| {
        // The layer's own bytes of this span, as buffer offsets.
        let needed_start = s.buf_offset + (s.needed_start - s.offset) as usize;
        let needed_end = s.buf_offset + (s.needed_end - s.offset) as usize;
        (0..s.len).step_by(chunk as usize).map(move |at| {
            let len = chunk.min(s.len - at);
            let start = s.buf_offset + at as usize;
            let end = start + len as usize;
            let needed = start.max(needed_start)..end.min(needed_end);
            Chunk {
                file: s.file,
                offset: s.offset + at,
                len,
                needed_end: s.needed_end,
                buf_offset: start,
                // Empty (start == end) when the chunk holds none of them.
                needed: needed.start.min(needed.end)..needed.end,
            }
        })
    })
}

#[derive(Clone, Debug)]
struct Chunk {
    file: usize,
    offset: u64,
    len: u64,
    needed_end: u64,
    buf_offset: usize,
    /// The layer's bytes in this chunk, as buffer offsets (maybe empty).
    needed: Range<usize>,
}

/// Reads one chunk, resuming short reads. Reaching end of file is fine only
/// past `needed_end` (the tail of the last block of a file).
async fn read_chunk(ring: &Ring, buf: &Arc<AlignedBuf>, chunk: &Chunk, layer: usize) -> Result<()> {
    let file = &ring.files[chunk.file];
    let mut done = 0u64;
    let mut transient = 0;
    while done < chunk.len {
        let pos = chunk.offset + done;
        // Direct reads need block-aligned offsets; after a short read ends
        // mid-block, finish the chunk buffered.
        let use_direct = file.direct_ok.get() && pos % BLOCK == 0;
        let fd = match (&file.direct, use_direct) {
            (Some(d), true) => d,
            _ => &file.buffered,
        };
        let _slot = ring
            .slots
            .acquire()
            .await
            .expect("the ring's semaphore is never closed");
        let mut len = (chunk.len - done) as usize;
        let injected = match ring.faults.as_ref().and_then(|f| f.draw(len)) {
            Some(Fault::Error(errno)) => Some(io::Error::from_raw_os_error(errno)),
            Some(Fault::Short(n)) => {
                len = len.min(n);
                None
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                None
            }
            None => None,
        };
        let target = ChunkBuf {
            _live: LiveBuffer::new(&ring.live_buffers),
            _owner: Arc::clone(buf),
            // SAFETY: `buf_offset + done < buf_offset + len <= buf.len()` (the
            // job's spans were laid out inside the buffer), so the pointer
            // stays inside the allocation.
            ptr: unsafe { buf.as_mut_ptr().add(chunk.buf_offset + done as usize) },
            len,
            init: 0,
        };
        let res = match injected {
            Some(e) => Err(e),
            None => fd.read_at(target, pos).await.0,
        };
        match res {
            Ok(0) if pos >= chunk.needed_end => return Ok(()),
            Ok(0) => {
                return Err(Error::Truncated {
                    path: Arc::clone(&file.path),
                    layer,
                    offset: chunk.offset,
                    expected_end: chunk.needed_end,
                    end: pos,
                })
            }
            Ok(n) => done += n as u64,
            Err(e) if is_transient(&e) && transient < TRANSIENT_RETRIES => transient += 1,
            Err(e) if use_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(path = %file.path.display(), "O_DIRECT read refused; reading this file buffered");
                file.direct_ok.set(false);
            }
            Err(e) => {
                return Err(Error::io(
                    &file.path,
                    format!("read layer {layer} at offset {pos}"),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// Errors after which the same request is simply submitted again: an
/// interrupted or cancelled request (we never cancel our own, so a
/// cancellation came from outside) or a momentarily busy kernel.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ECANCELED)
    )
}

/// A window of a shared [`AlignedBuf`] that one read request fills.
///
/// Windows of one buffer never overlap, and nothing reads the buffer until
/// every window's request has completed, so the kernel's writes never race.
struct ChunkBuf {
    /// Keeps the memory alive until tokio-uring gives the buffer back, which
    /// for a cancelled request is when the kernel completes it.
    _owner: Arc<AlignedBuf>,
    _live: LiveBuffer,
    ptr: *mut u8,
    len: usize,
    init: usize,
}

/// Counts a request buffer in [`Ring::live_buffers`] while it exists.
struct LiveBuffer(Rc<Cell<usize>>);

impl LiveBuffer {
    fn new(count: &Rc<Cell<usize>>) -> Self {
        count.set(count.get() + 1);
        LiveBuffer(Rc::clone(count))
    }
}

impl Drop for LiveBuffer {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

// SAFETY: `ptr..ptr + len` lies inside the mapping `_owner` keeps alive, and
// the pointer does not change when the `ChunkBuf` moves.
unsafe impl tokio_uring::buf::IoBuf for ChunkBuf {
    fn stable_ptr(&self) -> *const u8 {
        self.ptr
    }

    fn bytes_init(&self) -> usize {
        self.init
    }

    fn bytes_total(&self) -> usize {
        self.len
    }
}

// SAFETY: as for `IoBuf`; the window is written only by the one request that
// owns this `ChunkBuf`.
unsafe impl tokio_uring::buf::IoBufMut for ChunkBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    unsafe fn set_init(&mut self, pos: usize) {
        self.init = self.init.max(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The chunks' layer bytes, hashed in chunk order, are the layer's bytes
    /// in order, whatever the ranges and the chunk size: the streaming
    /// digest equals the whole-layer `xxh3_64`.
    #[test]
    fn chunk_regions_in_order_are_the_layer_bytes_in_order() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let ranges = rng.random_range(1..5);
            let mut spans = Vec::new();
            let mut buf_offset = 0usize;
            for _ in 0..ranges {
                let start = rng.random_range(0..40_000u64);
                let len = rng.random_range(0..30_000u64);
                let offset = align_down(start, BLOCK);
                let span_len = align_up(start + len, BLOCK) - offset;
                spans.push(Span {
                    file: 0,
                    offset,
                    len: span_len,
                    needed_start: start,
                    needed_end: start + len,
                    buf_offset,
                });
                buf_offset += span_len as usize;
            }
            // Fill the buffer with noise, and the layer's bytes where the
            // spans put them.
            let mut buf: Vec<u8> = (0..buf_offset).map(|_| rng.random()).collect();
            let mut layer = Vec::new();
            for s in &spans {
                let at = s.buf_offset + (s.needed_start - s.offset) as usize;
                let n = (s.needed_end - s.needed_start) as usize;
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                buf[at..at + n].copy_from_slice(&bytes);
                layer.extend_from_slice(&bytes);
            }
            let chunk = BLOCK * rng.random_range(1..6);
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            let mut streamed = Vec::new();
            let mut end = 0;
            for c in chunks(&spans, chunk) {
                assert!(
                    c.needed.start >= c.buf_offset && c.needed.end <= c.buf_offset + c.len as usize
                );
                assert!(
                    c.needed.is_empty() || c.needed.start >= end,
                    "regions overlap or go back"
                );
                end = end.max(c.needed.end);
                hasher.update(&buf[c.needed.clone()]);
                streamed.extend_from_slice(&buf[c.needed]);
            }
            assert_eq!(streamed, layer);
            assert_eq!(hasher.digest(), xxhash_rust::xxh3::xxh3_64(&layer));
        }
    }
}
