//! Page-aligned layer buffers, ready for direct I/O.
//!
//! Buffers are anonymous memory mappings rather than heap allocations:
//! the kernel hands them out zero-filled without touching them (so nothing is
//! ever uninitialised, and no `memset` doubles the first-touch cost), they are
//! at least 4 KiB-aligned as `O_DIRECT` needs, buffers of 2 MiB and more are
//! 2 MiB-aligned and advised `MADV_HUGEPAGE` (so a 4 MiB direct read becomes
//! one 4 MiB device request instead of many 0.5 MiB ones, see
//! `docs/architecture.md`), and `munmap` gives the memory back to the OS at once.

use std::io;
use std::ptr::NonNull;

use crate::budget::Charge;

/// Buffers at least this large are 2 MiB-aligned and advised to use huge pages.
pub(crate) const HUGE_PAGE: usize = 2 << 20;
const PAGE: usize = 4096;

/// An owned, page-aligned, zero-initialised byte buffer: what the loader
/// reads layers into, public for tools that want the same memory (the
/// benchmark's ceiling reader).
///
/// Inside the loader it carries the budget charge that paid for it, so the
/// budget is credited exactly when the memory is unmapped.
///
/// ```
/// let mut buf = hyperion::buffer::AlignedBuf::new(4 << 20).unwrap();
/// assert_eq!(buf.as_slice().as_ptr() as usize % (2 << 20), 0);
/// buf.as_mut_slice()[0] = 1;
/// ```
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// The whole mapping, of which `ptr..ptr + len` is the aligned part; kept
    /// to unmap exactly what was mapped.
    map_ptr: NonNull<u8>,
    map_len: usize,
    _charge: Option<Charge>,
}

// SAFETY: `AlignedBuf` owns its mapping exclusively (like a `Box<[u8]>`);
// shared access only reads, mutation needs `&mut self` or goes through the raw
// pointer under the I/O layer's own exclusivity rules.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above; `&AlignedBuf` only gives out `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Maps a zeroed buffer of `len` bytes (rounded up to whole pages),
    /// 2 MiB-aligned and advised `MADV_HUGEPAGE` from 2 MiB on.
    pub fn new(len: usize) -> io::Result<Self> {
        Self::charged(len, None)
    }

    /// [`AlignedBuf::new`], carrying the budget charge that paid for it.
    pub(crate) fn charged(len: usize, charge: Option<Charge>) -> io::Result<Self> {
        let len = len.max(1);
        let rounded = len.checked_next_multiple_of(PAGE).ok_or_else(too_large)?;
        let align = if rounded >= HUGE_PAGE {
            HUGE_PAGE
        } else {
            PAGE
        };
        // Map `align - PAGE` extra bytes so an `align`-aligned start exists inside.
        let map_len = rounded.checked_add(align - PAGE).ok_or_else(too_large)?;
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; the result is checked for MAP_FAILED below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map_ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let skew = (align - (map_ptr.as_ptr() as usize) % align) % align;
        // SAFETY: `skew < align` and `map_len = rounded + align - PAGE`, and the
        // mapping is page-aligned so `skew` is a multiple of PAGE and at most
        // `align - PAGE`: `skew + rounded <= map_len`, in bounds.
        let ptr = unsafe { NonNull::new_unchecked(map_ptr.as_ptr().add(skew)) };
        if align == HUGE_PAGE {
            // SAFETY: the range lies inside our own fresh mapping. The advice is a
            // hint; failure (THP disabled) only costs speed, so it is ignored.
            unsafe {
                libc::madvise(ptr.as_ptr().cast(), rounded, libc::MADV_HUGEPAGE);
            }
        }
        Ok(AlignedBuf {
            ptr,
            len: rounded,
            map_ptr,
            map_len,
            _charge: charge,
        })
    }

    /// A raw pointer for I/O into the buffer. Writers through it must not
    /// overlap each other nor any live `&[u8]` of the same bytes.
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, zero-filled by the kernel
        // or written by our reads, and lives as long as `self`.
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
        // SAFETY: `map_ptr`/`map_len` are exactly the mapping made in `new`,
        // unmapped once, here; no reference into it outlives `self`.
        unsafe {
            libc::munmap(self.map_ptr.as_ptr().cast(), self.map_len);
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

fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::OutOfMemory, "buffer size overflows")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
