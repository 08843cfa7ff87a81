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
//! The layout of a layer into chunks, the buffer, and the judgement of each
//! request's outcome are shared with the pread engine ([`super::aligned`]).
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
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

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

/// Submission queue entries of the ring: far more than the requests we keep
/// in flight (prefetch_threads × reads_in_flight plus demand reads).
const RING_ENTRIES: u32 = 256;
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
    /// Bytes read buffered because they were cached (`Stats::page_cache_bytes`).
    page_cache_bytes: Arc<AtomicU64>,
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

struct RingFile {
    path: Arc<Path>,
    direct: Option<tokio_uring::fs::File>,
    buffered: tokio_uring::fs::File,
    residency: Option<Residency>,
    /// Cleared when the filesystem refuses a direct read; later reads are buffered.
    direct_ok: Cell<bool>,
}

impl UringBackend {
    /// Starts the ring thread and opens `files` on it. Returns
    /// [`Error::BackendUnavailable`] if the kernel refuses to create a ring.
    pub(crate) async fn open(
        files: &[Arc<Path>],
        config: &MmapConfig,
        faults: Option<Arc<FaultPlan>>,
        page_cache_bytes: Arc<AtomicU64>,
    ) -> Result<Self> {
        let (jobs, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let tuning = Tuning::new(config);
        let paths: Vec<Arc<Path>> = files.to_vec();
        let direct = config.direct_io;
        let first = Arc::clone(&files[0]);
        std::thread::Builder::new()
            .name("hyperion-uring".into())
            .spawn(move || {
                ring_thread(
                    paths,
                    direct,
                    tuning,
                    faults,
                    page_cache_bytes,
                    rx,
                    ready_tx,
                )
            })
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

    /// With `verify`, large layers read with `direct_io` are hashed while
    /// they are read (see the module docs); others after.
    fn read(
        &self,
        layer: usize,
        spec: &LayerSpec,
        charge: Charge,
        verify: Option<Verify>,
    ) -> BoxFuture<'static, Result<LayerBytes>> {
        let path = Arc::clone(&self.files[spec.ranges[0].file]);
        let (spans, buf_len) = aligned::spans(spec);
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
            let buf = Arc::new(aligned::layer_buffer(&path, layer, buf_len, charge).await?);
            let (progress, hasher) = match &verify {
                Some(_) if stream_hash && size >= crate::io::verify::BLOCKING_THRESHOLD => {
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
            let buf = Arc::try_unwrap(buf).map_err(|_| aborted())?;
            let bytes = aligned::into_layer(buf, &ranges, &spans, size);
            match (verify, digest) {
                (None, _) => Ok(bytes),
                (Some(v), Some(actual)) => v.compare(layer, bytes, actual),
                (Some(v), None) => v.check(layer, bytes).await,
            }
        }
        .boxed()
    }
}

/// Hashes the buffer regions `regions` names, in the order it names them,
/// until the job drops its end; returns the xxh3-64. Runs on a blocking
/// thread.
fn hash_regions(buf: &AlignedBuf, mut regions: mpsc::UnboundedReceiver<Range<usize>>) -> u64 {
    let mut hasher = crate::checksum::Xxh3::new();
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
    page_cache_bytes: Arc<AtomicU64>,
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
                page_cache_bytes,
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
    Ok(aligned::open_files(paths, direct)?
        .into_iter()
        .map(|f| RingFile {
            path: f.path,
            direct_ok: Cell::new(f.direct.is_some()),
            direct: f.direct.map(tokio_uring::fs::File::from_std),
            buffered: tokio_uring::fs::File::from_std(f.buffered),
            residency: f.residency,
        })
        .collect())
}

async fn run_job(ring: Rc<Ring>, job: Job, tuning: Tuning) {
    let Job {
        layer,
        spans,
        buf,
        progress,
        reply,
    } = job;
    let chunks = aligned::chunks(&spans, tuning.chunk);
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

/// Reads one chunk, resuming short reads. Reaching end of file is fine only
/// past `needed_end` (the tail of the last block of a file).
async fn read_chunk(ring: &Ring, buf: &Arc<AlignedBuf>, chunk: &Chunk, layer: usize) -> Result<()> {
    let file = &ring.files[chunk.file];
    let mut done = 0u64;
    let mut transient = 0;
    let cached = aligned::read_cached(file.residency.as_ref(), chunk, &ring.page_cache_bytes);
    let mut buffered = false;
    while done < chunk.len {
        let pos = chunk.offset + done;
        // Direct reads need block-aligned offsets; after a short read ends
        // mid-block, finish the chunk buffered.
        let use_direct = !cached && file.direct_ok.get() && pos % BLOCK == 0;
        let fd = match (&file.direct, use_direct) {
            (Some(d), true) => d,
            _ => {
                buffered = true;
                &file.buffered
            }
        };
        let _slot = ring
            .slots
            .acquire()
            .await
            .expect("the ring's semaphore is never closed");
        let mut len = (chunk.len - done) as usize;
        let injected = aligned::inject(ring.faults.as_deref(), &mut len);
        if let Some(d) = injected.delay {
            tokio::time::sleep(d).await;
        }
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
        let res = match injected.error {
            Some(e) => Err(e),
            None => fd.read_at(target, pos).await.0,
        };
        match aligned::judge(
            res,
            &file.path,
            layer,
            chunk,
            pos,
            use_direct,
            &mut transient,
        )? {
            Step::Read(n) => done += n as u64,
            Step::Complete => break,
            Step::Again => {}
            Step::Buffered => file.direct_ok.set(false),
        }
    }
    if buffered {
        aligned::confirm_not_truncated(&file.buffered, &file.path, layer, chunk)?;
    }
    Ok(())
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
