//! Page-aligned layer buffers, ready for direct I/O, and the mappings the
//! buffer pool keeps between reads.
//!
//! Buffers are anonymous memory mappings rather than heap allocations:
//! the kernel hands them out zero-filled without touching them (so nothing is
//! ever uninitialised, and no `memset` doubles the first-touch cost), they are
//! at least 4 KiB-aligned as `O_DIRECT` needs, buffers of 2 MiB and more are
//! 2 MiB-aligned and advised `MADV_HUGEPAGE` (so a 4 MiB direct read becomes
//! one 4 MiB device request instead of many 0.5 MiB ones, see
//! `docs/architecture.md`), and `munmap` gives the memory back to the OS at once.
//!
//! # The pool
//!
//! First touch of fresh anonymous memory is expensive (the kernel zeroes and
//! maps every page on the first write), so the loader reuses layer buffers:
//! when a buffer that carries a budget charge drops, its mapping goes to the
//! budget's idle pool *with its charge* instead of being unmapped, and a
//! later reservation of the same number of bytes takes it over
//! (`Budget::try_reserve`, which also reclaims idle mappings before anything
//! is evicted; `docs/architecture.md`, "The buffer pool").
//! `AlignedBuf::charged` (crate-private) is the one entry point through which
//! a read engine gets a charged buffer:
//! it uses the mapping the charge took over when that is large enough, and
//! maps fresh memory otherwise. A reused mapping keeps the alignment and
//! `MADV_HUGEPAGE` advice it was created with, and is *not* zeroed: it holds
//! the bytes of an earlier layer until the read overwrites them.

use std::io;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::budget::Charge;

pub(crate) use crate::sys::memory::HUGE_PAGE;
use crate::sys::memory::{Mapping, PAGE};

/// An owned, page-aligned byte buffer: what the loader reads layers into,
/// public for tools that want the same memory (the benchmark's ceiling
/// reader).
///
/// Inside the loader it carries the budget charge that paid for it, so the
/// budget is credited exactly when the memory is unmapped, and its mapping
/// goes back to the budget's pool when it drops (see the [module](self) docs).
/// A buffer made with [`AlignedBuf::new`] is never pooled.
///
/// ```
/// let mut buf = hyperion::buffer::AlignedBuf::new(4 << 20).unwrap();
/// assert_eq!(buf.as_slice().as_ptr() as usize % (2 << 20), 0);
/// buf.as_mut_slice()[0] = 1;
/// ```
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Always `Some` until `drop` takes it. Declared before `charge`: when
    /// both drop as fields, the memory is unmapped before it is uncharged.
    map: Option<Mapping>,
    charge: Option<Charge>,
    /// The mapping was made for this buffer (not taken from the pool), so
    /// none of its pages has been touched yet.
    fresh: bool,
}

// SAFETY: `AlignedBuf` owns its mapping exclusively (like a `Box<[u8]>`);
// shared access only reads, mutation needs `&mut self` or goes through the raw
// pointer under the I/O layer's own exclusivity rules.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above; `&AlignedBuf` only gives out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Maps a zeroed buffer of `len` bytes (rounded up to whole pages),
    /// 2 MiB-aligned and advised `MADV_HUGEPAGE` from 2 MiB on. Never pooled:
    /// its memory is unmapped when it drops.
    pub fn new(len: usize) -> io::Result<Self> {
        Self::charged(len, None)
    }

    /// A buffer of `len` bytes (rounded up to whole pages) paid for by
    /// `charge`: the one way a read engine gets a layer buffer.
    ///
    /// If the charge took over an idle mapping from the pool and that
    /// mapping holds at least the rounded `len`, the buffer is that mapping
    /// (same alignment, same huge-page advice), and its bytes are whatever
    /// the previous layer left there: **the caller must overwrite every byte
    /// it exposes, or fail.** Otherwise (no charge, no pooled mapping, or one
    /// too small, which is unmapped first) fresh zeroed memory is mapped as
    /// by [`AlignedBuf::new`]. When the buffer drops, a charged buffer's
    /// mapping returns to the pool with its charge.
    pub(crate) fn charged(len: usize, mut charge: Option<Charge>) -> io::Result<Self> {
        let rounded = len
            .max(1)
            .checked_next_multiple_of(PAGE)
            .ok_or_else(crate::sys::memory::too_large)?;
        let (map, fresh) = match charge.as_mut().and_then(Charge::take_mapping) {
            Some(m) if m.capacity() >= rounded => (m, false),
            Some(small) => {
                drop(small);
                (Mapping::new(rounded)?, true)
            }
            None => (Mapping::new(rounded)?, true),
        };
        Ok(AlignedBuf {
            ptr: map.start(),
            len: rounded,
            map: Some(map),
            charge,
            fresh,
        })
    }

    /// Whether the buffer's memory was mapped for it (none of its pages
    /// touched yet) rather than taken over from the pool.
    pub(crate) fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Faults every page of the buffer in now (`MADV_POPULATE_WRITE`), so
    /// that a read into it does not (see `io::aligned::layer_buffer`), in
    /// steps of `step` bytes (a multiple of 4 KiB), calling `each(bytes,
    /// took)` after each: how fast fresh memory comes in is known after the
    /// first step, not after the whole buffer. Best effort: on a kernel
    /// without it (before 5.14), or when the memory cannot be had now,
    /// nothing happens and the read faults the pages in.
    pub(crate) fn prefault_in_steps(&self, step: usize, mut each: impl FnMut(usize, Duration)) {
        let Some(map) = &self.map else {
            return;
        };
        let mut at = 0;
        while at < self.len {
            let len = step.min(self.len - at);
            let start = Instant::now();
            map.populate_write_range(at, len);
            each(len, start.elapsed());
            at += len;
        }
    }

    /// A raw pointer for I/O into the buffer. Writers through it must not
    /// overlap each other nor any live `&[u8]` of the same bytes.
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping holds at least `len` readable bytes from `ptr`
        // (zero-filled by the kernel or written by our reads) and lives as
        // long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The whole buffer, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // A charged buffer's mapping goes to the pool with its charge (or, if
        // the pool is closed, is unmapped and then uncharged). An uncharged
        // one is unmapped when the `map` field drops.
        if self.charge.is_some() {
            if let (Some(map), Some(charge)) = (self.map.take(), self.charge.take()) {
                charge.recycle(map);
            }
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budget;

    #[test]
    fn buffers_are_aligned_zeroed_and_writable() {
        for len in [1, 4096, 4097, HUGE_PAGE, 3 * HUGE_PAGE + 5] {
            let mut b = AlignedBuf::new(len).unwrap();
            assert!(b.as_slice().len() >= len && b.as_slice().len() % PAGE == 0);
            let align = if b.as_slice().len() >= HUGE_PAGE {
                HUGE_PAGE
            } else {
                PAGE
            };
            assert_eq!(b.as_mut_ptr() as usize % align, 0);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice().fill(7);
            assert!(b.as_slice().iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn a_reused_mapping_keeps_its_address_and_huge_page_alignment() {
        for len in [3 * PAGE, HUGE_PAGE, 3 * HUGE_PAGE] {
            let budget = Budget::new(64 << 20, None);
            let bytes = len as u64;
            let mut first = AlignedBuf::charged(len, budget.try_reserve(bytes)).unwrap();
            first.as_mut_slice().fill(9);
            let addr = first.as_mut_ptr() as usize;
            drop(first);
            assert_eq!(
                budget.snapshot().idle,
                bytes,
                "the mapping went to the pool"
            );
            let again = AlignedBuf::charged(len, budget.try_reserve(bytes)).unwrap();
            assert_eq!(again.as_mut_ptr() as usize, addr, "the same mapping");
            let align = if len >= HUGE_PAGE { HUGE_PAGE } else { PAGE };
            assert_eq!(addr % align, 0);
            // Not zeroed: the previous contents are still there (the reader
            // must overwrite what it exposes).
            assert!(again.as_slice().iter().all(|&x| x == 9));
            let s = budget.snapshot();
            assert_eq!((s.live, s.idle, s.pool_reuses), (bytes, 0, 1));
            drop(again);
            budget.close_pool();
            assert_eq!(budget.snapshot().live + budget.snapshot().idle, 0);
        }
    }

    /// Resident pages of `buf` (`mincore`), out of its pages.
    fn resident(buf: &AlignedBuf) -> (usize, usize) {
        let map = buf.map.as_ref().unwrap();
        (map.resident_pages(buf.len), buf.len / PAGE)
    }

    #[test]
    fn prefault_makes_a_fresh_buffer_resident_and_keeps_it_zeroed() {
        let budget = Budget::new(64 << 20, None);
        let len = 2 * HUGE_PAGE;
        let b = AlignedBuf::charged(len, budget.try_reserve(len as u64)).unwrap();
        assert!(b.is_fresh());
        assert_eq!(resident(&b).0, 0, "nothing touched yet");
        let mut steps = Vec::new();
        b.prefault_in_steps(HUGE_PAGE, |bytes, _| steps.push(bytes));
        assert_eq!(steps, [HUGE_PAGE, HUGE_PAGE], "timed step by step");
        let (resident, pages) = resident(&b);
        assert_eq!(resident, pages, "every page faulted in");
        assert!(b.as_slice().iter().all(|&x| x == 0));
        drop(b);
        // Taken from the pool: not fresh, nothing to fault in.
        let again = AlignedBuf::charged(len, budget.try_reserve(len as u64)).unwrap();
        assert!(!again.is_fresh());
    }

    #[test]
    fn a_pooled_mapping_too_small_for_the_buffer_is_replaced() {
        let budget = Budget::new(1 << 20, None);
        drop(AlignedBuf::charged(PAGE, budget.try_reserve(2 * PAGE as u64)).unwrap());
        // The same charge, a larger buffer: the small mapping is unmapped and
        // a fresh, zeroed one is mapped under the same charge.
        let b = AlignedBuf::charged(2 * PAGE, budget.try_reserve(2 * PAGE as u64)).unwrap();
        assert_eq!(b.as_slice().len(), 2 * PAGE);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        assert_eq!(budget.snapshot().live, 2 * PAGE as u64);
    }
}
