//! The page cache: which pages of a file are resident (`mincore`), and
//! advice to drop them (`posix_fadvise`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Drops the file's clean cached pages (`POSIX_FADV_DONTNEED` over the
/// whole file). Dirty pages stay: write them back first.
pub(crate) fn advise_dont_need(file: &File) -> io::Result<()> {
    // SAFETY: `file` is an open descriptor for the duration of the call;
    // offset 0 with length 0 means "to the end of the file".
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Tells which parts of a file are in the page cache, so that a direct-I/O
/// reader can copy those from memory instead of reading them from the disk
/// again (an `O_DIRECT` read ignores cached pages and always goes to the
/// device).
///
/// It holds a read-only shared mapping of the file that is **never
/// dereferenced**: it only gives `mincore(2)` an address range. Nothing is
/// faulted in, so the mapping pins no pages, costs only address space, and
/// cannot raise `SIGBUS` even if the file is truncated (`mincore` reports
/// pages past the end as not cached).
pub(crate) struct Residency {
    map: std::ptr::NonNull<libc::c_void>,
    len: usize,
}

// SAFETY: the mapping is only ever passed to `mincore` and `munmap`, which
// are thread-safe; no memory is accessed through it.
unsafe impl Send for Residency {}
// SAFETY: as above.
unsafe impl Sync for Residency {}

/// Pages sampled per range by [`Residency::cached`].
const SAMPLES: usize = 3;
const PAGE: u64 = 4096;

impl Residency {
    /// Maps `file` (its current length) for residency checks; `None` if it
    /// is empty or cannot be mapped (then every check says "not cached").
    pub(crate) fn new(file: &File) -> Option<Self> {
        Self::map(file).ok()
    }

    pub(crate) fn map(file: &File) -> io::Result<Self> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty file"));
        }
        // SAFETY: a read-only shared mapping of an open file with no address
        // hint; the result is checked against MAP_FAILED. It is never
        // dereferenced (see the type's docs) and unmapped in `drop`.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Residency {
            map: std::ptr::NonNull::new(map).ok_or_else(io::Error::last_os_error)?,
            len,
        })
    }

    /// The fraction of the mapped length whose pages are cached, every page
    /// counted.
    pub(crate) fn fraction(&self) -> io::Result<f64> {
        let pages = self.len.div_ceil(PAGE as usize);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is exactly our live mapping, and `vec` has one
        // byte per page of it, as `mincore` requires. Nothing is dereferenced.
        let rc = unsafe { libc::mincore(self.map.as_ptr(), self.len, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(vec.iter().filter(|&&b| b & 1 == 1).count() as f64 / pages as f64)
    }

    /// Whether the `len` bytes at `offset` look cached: their first, middle
    /// and last pages are. A sample, not a census (a full `mincore` of a
    /// 4 MiB range costs a page-cache lookup per 4 KiB page); a wrong "yes"
    /// only means a buffered read fetches the missing pages from the disk,
    /// and a wrong "no" a direct read of cached bytes: either way the bytes
    /// are the same.
    pub(crate) fn cached(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if len == 0 || end > self.len as u64 {
            return false;
        }
        let first = offset / PAGE;
        let last = (end - 1) / PAGE;
        let pages = [first, first + (last - first) / 2, last];
        pages.iter().take(SAMPLES).all(|&page| {
            let mut vec = 0u8;
            // SAFETY: `page * PAGE` lies inside the mapping (`end <= len`),
            // so the one-page range is part of our live mapping; `vec` holds
            // the one byte `mincore` writes for it. Nothing is dereferenced.
            let rc = unsafe {
                libc::mincore(
                    self.map
                        .as_ptr()
                        .cast::<u8>()
                        .add((page * PAGE) as usize)
                        .cast(),
                    1,
                    &mut vec,
                )
            };
            rc == 0 && vec & 1 == 1
        })
    }
}

impl Drop for Residency {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.map.as_ptr(), self.len);
        }
    }
}
