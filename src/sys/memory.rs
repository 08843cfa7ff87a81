//! Anonymous memory: the mappings layer buffers live in.
//!
//! A [`Mapping`] is a private anonymous `mmap` with an aligned window inside
//! it: 2 MiB-aligned and advised `MADV_HUGEPAGE` from 2 MiB on (so a 4 MiB
//! direct read is one device request), 4 KiB-aligned below. The kernel
//! hands the pages out zero-filled and untouched; `munmap` on drop gives
//! them back at once.

use std::io;
use std::ptr::NonNull;

/// Buffers at least this large are 2 MiB-aligned and advised to use huge pages.
pub(crate) const HUGE_PAGE: usize = 2 << 20;
/// The page size direct I/O and the buffers are aligned to.
pub(crate) const PAGE: usize = 4096;

/// An anonymous private mapping and the aligned window inside it that a
/// buffer uses. Unmapped when dropped.
pub(crate) struct Mapping {
    /// The aligned start: 2 MiB-aligned if `cap >= HUGE_PAGE`, else 4 KiB.
    ptr: NonNull<u8>,
    /// Usable bytes from `ptr`, a whole number of pages.
    cap: usize,
    /// The whole mapping, of which `ptr..ptr + cap` is the aligned part; kept
    /// to unmap exactly what was mapped.
    map_ptr: NonNull<u8>,
    map_len: usize,
}

// SAFETY: a `Mapping` owns its memory exclusively (like a `Box<[u8]>`) and has
// no thread affinity; it hands out no references itself.
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` gives access to nothing but its sizes.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `rounded` zeroed bytes (a non-zero multiple of [`PAGE`]),
    /// 2 MiB-aligned and advised `MADV_HUGEPAGE` from 2 MiB on.
    pub(crate) fn new(rounded: usize) -> io::Result<Self> {
        debug_assert!(rounded > 0 && rounded % PAGE == 0);
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
        Ok(Mapping {
            ptr,
            cap: rounded,
            map_ptr,
            map_len,
        })
    }

    /// Usable bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `map_ptr`/`map_len` are exactly the mapping made in `new`,
        // unmapped once, here; every buffer that pointed into it was dropped
        // before the mapping (an `AlignedBuf` owns its `Mapping`).
        unsafe {
            libc::munmap(self.map_ptr.as_ptr().cast(), self.map_len);
        }
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("cap", &self.cap).finish()
    }
}

impl Mapping {
    /// The aligned start of the usable bytes.
    pub(crate) fn start(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Faults the first `len` usable bytes in now (`MADV_POPULATE_WRITE`).
    /// Best effort: on a kernel without it (before 5.14), or when the memory
    /// cannot be had now, nothing happens and later writes fault the pages in.
    pub(crate) fn populate_write(&self, len: usize) {
        self.populate_write_range(0, len);
    }

    /// [`Mapping::populate_write`] of the usable bytes `start..start + len`
    /// (`start` a multiple of [`PAGE`]; clamped to the usable bytes).
    pub(crate) fn populate_write_range(&self, start: usize, len: usize) {
        debug_assert!(start % PAGE == 0);
        let start = start.min(self.cap);
        let len = len.min(self.cap - start);
        if len == 0 {
            return;
        }
        // SAFETY: `ptr + start..ptr + start + len` lies inside this live,
        // writable private anonymous mapping (`start + len <= cap`), and
        // `start` keeps it page-aligned as madvise requires.
        // MADV_POPULATE_WRITE only populates page tables as a write fault
        // would: pages already present keep their contents and new ones are
        // zero-filled, so no byte that anyone could observe changes.
        unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(start).cast(),
                len,
                libc::MADV_POPULATE_WRITE,
            );
        }
    }

    /// How many of the pages of the first `len` usable bytes are resident.
    #[cfg(test)]
    pub(crate) fn resident_pages(&self, len: usize) -> usize {
        let len = len.min(self.cap);
        let mut vec = vec![0u8; len.div_ceil(PAGE)];
        // SAFETY: the range is part of this live mapping, and `vec` has one
        // byte per page of it, as `mincore` requires.
        let rc = unsafe { libc::mincore(self.ptr.as_ptr().cast(), len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }
}

pub(crate) fn too_large() -> io::Error {
    io::Error::new(io::ErrorKind::OutOfMemory, "buffer size overflows")
}
