//! What the two engines that read into aligned buffers, [`uring`](super::uring)
//! and [`pread`](super::pread), share, so that they cannot drift apart:
//!
//! - opening each file twice, with `O_DIRECT` where the filesystem allows it
//!   and buffered ([`open_files`]);
//! - laying a layer's ranges out as block-aligned [`Span`]s of one buffer and
//!   cutting them into [`Chunk`] requests;
//! - allocating that buffer ([`layer_buffer`], the one place a layer buffer is
//!   made, so a buffer pool can replace it);
//! - judging the outcome of one read request ([`judge`]): progress, end of
//!   file past the layer's bytes, [`Error::Truncated`], a retry, a switch to
//!   buffered reads, or an [`Error::Io`];
//! - applying the test fault plan to one request ([`inject`]);
//! - moving a multi-range layer's bytes together once the buffer is full
//!   ([`into_layer`]).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::budget::Charge;
use crate::buffer::{AlignedBuf, HUGE_PAGE};
use crate::config::MmapConfig;
use crate::error::{Error, Result};
use crate::faults::{Fault, FaultPlan};
use crate::index::{align_down, align_up, FileRange, LayerSpec, BLOCK};
use crate::io::bytes::{LayerBytes, Storage};
use crate::io::fresh_memory::FRESH_MEMORY;
use crate::sys::pages::Residency;

/// Retries of a request that failed with a transient error before giving up.
pub(crate) const TRANSIENT_RETRIES: u32 = 16;

/// How a layer is cut into requests: `chunk` bytes each (block-aligned),
/// `depth` of them in flight at once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tuning {
    pub(crate) chunk: u64,
    pub(crate) depth: usize,
}

impl Tuning {
    pub(crate) fn new(config: &MmapConfig) -> Self {
        Tuning {
            chunk: align_up(config.read_chunk_size, BLOCK),
            depth: config.reads_in_flight.max(1),
        }
    }
}

/// One model file, opened for reading twice.
pub(crate) struct OpenFile {
    pub(crate) path: Arc<Path>,
    /// Opened with `O_DIRECT`; `None` if direct I/O was not asked for or the
    /// filesystem refused it at open (tmpfs, some network filesystems).
    pub(crate) direct: Option<File>,
    pub(crate) buffered: File,
    /// With `direct`: which parts of the file are in the page cache. An
    /// `O_DIRECT` read ignores cached pages and reads the device again, so a
    /// chunk that is cached already is read buffered (a copy from memory,
    /// several times faster) instead: see [`read_cached`].
    pub(crate) residency: Option<Residency>,
}

/// Whether `chunk` of `file` should be read buffered because its pages are
/// cached (only asked of files opened with `O_DIRECT`; see
/// [`OpenFile::residency`]). Adds the chunk's bytes to `counter` if so.
pub(crate) fn read_cached(
    residency: Option<&Residency>,
    chunk: &Chunk,
    counter: &AtomicU64,
) -> bool {
    let cached = residency.is_some_and(|r| r.cached(chunk.offset, chunk.len));
    if cached {
        counter.fetch_add(chunk.len, std::sync::atomic::Ordering::Relaxed);
    }
    cached
}

/// Opens every file of the model, each once for the life of the backend.
pub(crate) fn open_files(paths: &[Arc<Path>], direct: bool) -> Result<Vec<OpenFile>> {
    paths
        .iter()
        .map(|path| {
            let buffered = File::open(path).map_err(|e| Error::io(path, "open", e))?;
            // Some filesystems refuse O_DIRECT at open; read those buffered.
            let direct = direct
                .then(|| crate::sys::file::open_direct(path).ok())
                .flatten();
            let residency = direct.as_ref().and_then(|_| Residency::new(&buffered));
            Ok(OpenFile {
                path: Arc::clone(path),
                direct,
                buffered,
                residency,
            })
        })
        .collect()
}

/// A block-aligned run of one file, and where its first byte goes in the buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    pub(crate) file: usize,
    /// Block-aligned file offset.
    pub(crate) offset: u64,
    /// Block-aligned length.
    pub(crate) len: u64,
    /// Start of the bytes the layer needs (the range's first byte).
    pub(crate) needed_start: u64,
    /// End of the bytes the layer needs; the file may end after this but
    /// must not end before it.
    pub(crate) needed_end: u64,
    /// Offset in the buffer (block-aligned).
    pub(crate) buf_offset: usize,
}

/// One read request: a piece of a [`Span`] at most `chunk` bytes long.
#[derive(Clone, Debug)]
pub(crate) struct Chunk {
    pub(crate) file: usize,
    /// Block-aligned file offset.
    pub(crate) offset: u64,
    /// Block-aligned length.
    pub(crate) len: u64,
    pub(crate) needed_end: u64,
    /// Offset in the buffer (block-aligned).
    pub(crate) buf_offset: usize,
    /// The layer's bytes in this chunk, as buffer offsets (empty when the
    /// chunk holds none of them): what a streaming checksum hashes.
    pub(crate) needed: Range<usize>,
}

/// The layer's ranges widened to whole blocks and laid back to back, and the
/// buffer length they need (the layer's footprint before the granule).
pub(crate) fn spans(spec: &LayerSpec) -> (Vec<Span>, usize) {
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
    (spans, buf_offset)
}

/// The spans cut into requests of at most `chunk` bytes, in buffer order;
/// together they cover the buffer exactly once.
pub(crate) fn chunks(spans: &[Span], chunk: u64) -> impl Iterator<Item = Chunk> + '_ {
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
                needed: needed.start.min(needed.end)..needed.end,
            }
        })
    })
}

/// Bytes faulted in (and timed) at a time when a fresh buffer is
/// prefaulted: four huge pages.
const PREFAULT_STEP: usize = 4 * HUGE_PAGE;

/// The buffer layer `layer`, of `len` bytes, is read into, carrying the
/// budget `charge` that paid for it: a mapping from the pool if the charge
/// took one over, else fresh memory. Every engine that reads into a buffer
/// gets it here (and only here).
///
/// A fresh buffer of a huge page or more is faulted in on a blocking thread
/// first ([`AlignedBuf::prefault_in_steps`]). Otherwise a direct read takes those
/// faults inside the read, as the kernel pins the pages — for io_uring on
/// its one ring thread, which then neither submits nor reaps meanwhile —
/// while done apart they overlap the reads of other layers on the second
/// core. Measured on a whole-model load (all of its memory fresh):
/// docs/performance.md, "Fresh memory".
pub(crate) async fn layer_buffer(
    path: &Arc<Path>,
    layer: usize,
    len: usize,
    charge: Charge,
) -> Result<AlignedBuf> {
    let buf = AlignedBuf::charged(len, Some(charge)).map_err(|e| Error::io(path, "allocate", e))?;
    if !buf.is_fresh() || len < HUGE_PAGE {
        return Ok(buf);
    }
    // The task owns the buffer: if this future is dropped, the buffer (and
    // its charge) is freed when the task ends.
    tokio::task::spawn_blocking(move || {
        // How fast fresh memory is now decides where the next cold layers
        // go under `ColdSharing::WhenFreshMemoryIsSlow` (io/fresh_memory.rs):
        // timed in steps, so that a slow host is noticed after the first
        // few MiB rather than after a buffer that may take a second.
        buf.prefault_in_steps(PREFAULT_STEP, |bytes, took| {
            FRESH_MEMORY.record(bytes, took);
        });
        buf
    })
    .await
    .map_err(|_| Error::Aborted {
        path: Arc::clone(path),
        layer,
    })
}

/// Turns a buffer filled according to `spans` into the layer's bytes. Each
/// span starts at a block boundary of the buffer, so a layer of several
/// ranges has gaps; they are closed by moving the ranges together.
pub(crate) fn into_layer(
    mut buf: AlignedBuf,
    ranges: &[FileRange],
    spans: &[Span],
    size: usize,
) -> LayerBytes {
    // The layer's bytes start `skew` into the buffer.
    let first_skew = (ranges[0].offset - spans[0].offset) as usize;
    if ranges.len() > 1 {
        // Every destination lies at or before its source, so copying in order
        // never overwrites unread bytes.
        let bytes = buf.as_mut_slice();
        let mut at = first_skew;
        for (r, s) in ranges.iter().zip(spans) {
            let src = s.buf_offset + (r.offset - s.offset) as usize;
            bytes.copy_within(src..src + r.len as usize, at);
            at += r.len as usize;
        }
    }
    LayerBytes {
        storage: Storage::Heap(buf),
        start: first_skew,
        len: size,
    }
}

/// What to do after one read request of a chunk.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// `n` more bytes landed; go on from there.
    Read(usize),
    /// End of file past every byte the layer needs (the tail of the file's
    /// last block): the chunk is complete.
    Complete,
    /// A transient error: submit the same request again.
    Again,
    /// The filesystem refused a direct read: read this file buffered from now on.
    Buffered,
}

/// Judges the result `res` of a read request at file offset `pos` in `chunk`
/// of layer `layer`. `transient` counts the chunk's transient errors so far.
///
/// End of file before `chunk.needed_end` is [`Error::Truncated`]; other
/// errors that are neither transient nor a refused direct read are
/// [`Error::Io`] naming the layer and the offset. An engine that follows the
/// returned steps never returns fewer bytes than the layer has.
pub(crate) fn judge(
    res: io::Result<usize>,
    path: &Arc<Path>,
    layer: usize,
    chunk: &Chunk,
    pos: u64,
    used_direct: bool,
    transient: &mut u32,
) -> Result<Step> {
    match res {
        Ok(0) if pos >= chunk.needed_end => Ok(Step::Complete),
        Ok(0) => Err(Error::Truncated {
            path: Arc::clone(path),
            layer,
            offset: chunk.offset,
            expected_end: chunk.needed_end,
            end: pos,
        }),
        Ok(n) => Ok(Step::Read(n)),
        Err(e) if is_transient(&e) && *transient < TRANSIENT_RETRIES => {
            *transient += 1;
            Ok(Step::Again)
        }
        Err(e) if used_direct && e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!(path = %path.display(), "O_DIRECT read refused; reading this file buffered");
            Ok(Step::Buffered)
        }
        Err(e) => Err(Error::io(
            path,
            format!("read layer {layer} at offset {pos}"),
            e,
        )),
    }
}

/// After a chunk was read (partly) buffered: [`Error::Truncated`] if the
/// file is now shorter than the bytes the chunk needed.
///
/// A buffered read does not exclude a concurrent truncation (a direct read
/// does, on ext4 and xfs: both take the inode lock), and truncation zeroes
/// the tail of the page at the new end before it drops the pages past it,
/// so a copy that raced with it may hold zeros where the file had data, and
/// report every byte read. The kernel sets the new size before it zeroes
/// anything, so a size still at least `needed_end` after the copy means the
/// copy saw the file's bytes. (Layers with checksums would catch this as a
/// mismatch; safetensors and GGUF layers have none.)
pub(crate) fn confirm_not_truncated(
    file: &impl std::os::fd::AsRawFd,
    path: &Arc<Path>,
    layer: usize,
    chunk: &Chunk,
) -> Result<()> {
    let size = crate::sys::file::current_len(file)
        .map_err(|e| Error::io(path, format!("stat after reading layer {layer}"), e))?;
    if size < chunk.needed_end {
        return Err(Error::Truncated {
            path: Arc::clone(path),
            layer,
            offset: chunk.offset,
            expected_end: chunk.needed_end,
            end: size,
        });
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

/// What the test fault plan does to one request.
#[derive(Debug, Default)]
pub(crate) struct Injected {
    /// Fail the request with this error instead of submitting it.
    pub(crate) error: Option<io::Error>,
    /// Wait this long before submitting it.
    pub(crate) delay: Option<Duration>,
}

/// Draws the fault for a request of `*len` bytes from `faults` (`None`
/// outside tests); a short read lowers `*len`.
pub(crate) fn inject(faults: Option<&FaultPlan>, len: &mut usize) -> Injected {
    match faults.and_then(|f| f.draw(*len)) {
        Some(Fault::Error(errno)) => Injected {
            error: Some(io::Error::from_raw_os_error(errno)),
            delay: None,
        },
        Some(Fault::Short(n)) => {
            *len = (*len).min(n);
            Injected::default()
        }
        Some(Fault::Delay(d)) => Injected {
            error: None,
            delay: Some(d),
        },
        None => Injected::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_spans_back_to_back() {
        let spans = [
            Span {
                file: 0,
                offset: 8192,
                len: 5 * 4096,
                needed_start: 8192 + 3,
                needed_end: 8192 + 5 * 4096 - 7,
                buf_offset: 0,
            },
            Span {
                file: 1,
                offset: 0,
                len: 4096,
                needed_start: 0,
                needed_end: 100,
                buf_offset: 5 * 4096,
            },
        ];
        let cs: Vec<Chunk> = chunks(&spans, 8192).collect();
        let lens: Vec<u64> = cs.iter().map(|c| c.len).collect();
        assert_eq!(lens, [8192, 8192, 4096, 4096]);
        let mut at = 0;
        for c in &cs {
            assert_eq!(c.buf_offset, at);
            at += c.len as usize;
        }
        assert_eq!(at, 6 * 4096);
    }

    #[test]
    fn end_of_file_is_complete_only_past_the_needed_bytes() {
        let path: Arc<Path> = Path::new("m").into();
        let chunk = Chunk {
            file: 0,
            offset: 0,
            len: 8192,
            needed_end: 5000,
            buf_offset: 0,
            needed: 0..5000,
        };
        let mut t = 0;
        let j = |res: io::Result<usize>, pos: u64, t: &mut u32| {
            judge(res, &path, 3, &chunk, pos, true, t)
        };
        assert_eq!(j(Ok(0), 5000, &mut t).unwrap(), Step::Complete);
        assert!(matches!(
            j(Ok(0), 4096, &mut t),
            Err(Error::Truncated {
                layer: 3,
                end: 4096,
                expected_end: 5000,
                ..
            })
        ));
        assert_eq!(j(Ok(10), 0, &mut t).unwrap(), Step::Read(10));
        let errno = |n| Err(io::Error::from_raw_os_error(n));
        assert_eq!(j(errno(libc::EINVAL), 0, &mut t).unwrap(), Step::Buffered);
        for _ in 0..TRANSIENT_RETRIES {
            assert_eq!(j(errno(libc::EINTR), 0, &mut t).unwrap(), Step::Again);
        }
        assert!(matches!(
            j(errno(libc::EINTR), 0, &mut t),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            j(errno(libc::EIO), 0, &mut t),
            Err(Error::Io { .. })
        ));
    }
    /// The chunks' layer bytes, hashed in chunk order, are the layer's bytes
    /// in order, whatever the ranges and the chunk size: a streaming digest
    /// equals the whole-layer `xxh3_64`.
    #[test]
    fn chunk_regions_in_order_are_the_layer_bytes_in_order() {
        use rand::{Rng, SeedableRng};
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
            // Noise in the buffer, and the layer's bytes where the spans put them.
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
            let mut hasher = crate::checksum::Xxh3::new();
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
