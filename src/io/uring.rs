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
//! returned only when the memory really is. (tokio-uring drops the buffers of
//! cancelled requests without waiting when its runtime is dropped, so the
//! ring thread does not drop it while any request buffer is alive.)

use std::cell::Cell;
use std::fs::OpenOptions;
use std::io;
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
}

/// One layer to read: `spans` land back to back in `buf`.
struct Job {
    layer: usize,
    spans: Vec<Span>,
    buf: AlignedBuf,
    reply: oneshot::Sender<Result<AlignedBuf, Error>>,
}

/// A block-aligned run of one file, and where its first byte goes in the buffer.
#[derive(Clone, Copy, Debug)]
struct Span {
    file: usize,
    /// Block-aligned file offset.
    offset: u64,
    /// Block-aligned length.
    len: u64,
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
                needed_end: r.end(),
                buf_offset,
            });
            buf_offset += len as usize;
        }
        let ranges = spec.ranges.clone();
        let size = spec.size as usize;
        let jobs = self.jobs.clone();
        async move {
            let buf = AlignedBuf::charged(buf_offset, Some(charge))
                .map_err(|e| Error::io(&path, "allocate", e))?;
            let (reply, answer) = oneshot::channel();
            let job = Job {
                layer,
                spans: spans.clone(),
                buf,
                reply,
            };
            if jobs.send(job).is_err() {
                return Err(Error::Aborted { path, layer });
            }
            let mut buf = answer.await.map_err(|_| Error::Aborted {
                path: Arc::clone(&path),
                layer,
            })??;
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
            Ok(LayerBytes {
                storage: Storage::Heap(buf),
                start: first_skew,
                len: size,
            })
        }
        .boxed()
    }
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
        reply,
    } = job;
    let buf = Arc::new(buf);
    let chunks = spans.iter().flat_map(|s| {
        (0..s.len)
            .step_by(tuning.chunk as usize)
            .map(move |at| Chunk {
                file: s.file,
                offset: s.offset + at,
                len: tuning.chunk.min(s.len - at),
                needed_end: s.needed_end,
                buf_offset: s.buf_offset + at as usize,
            })
    });
    let result = futures::stream::iter(chunks)
        .map(|chunk| read_chunk(&ring, &buf, chunk, layer))
        .buffer_unordered(tuning.depth)
        .try_for_each(|()| async { Ok(()) })
        .await;
    let answer = result.map(|()| {
        // Every request completed, so no operation holds the buffer any more.
        Arc::try_unwrap(buf).unwrap_or_else(|_| unreachable!("all reads of the job have completed"))
    });
    // On error, requests still in flight keep their reference to the buffer
    // until the kernel completes them; it is freed (and uncharged) then.
    let _ = reply.send(answer);
}

#[derive(Clone, Copy, Debug)]
struct Chunk {
    file: usize,
    offset: u64,
    len: u64,
    needed_end: u64,
    buf_offset: usize,
}

/// Reads one chunk, resuming short reads. Reaching end of file is fine only
/// past `needed_end` (the tail of the last block of a file).
async fn read_chunk(ring: &Ring, buf: &Arc<AlignedBuf>, chunk: Chunk, layer: usize) -> Result<()> {
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
