//! Files and the machine: direct-I/O opens, a descriptor's current length,
//! physical memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` read-only with `O_DIRECT` (reads bypass the page cache;
/// buffers, offsets and lengths must be 4 KiB-aligned).
pub(crate) fn open_direct(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// The current length of the open file `file` (`fstat`), which may differ
/// from its length when it was opened.
pub(crate) fn current_len(file: &impl AsRawFd) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `file` is borrowed, so its descriptor stays open for the call,
    // and `st` is a writable `stat` that `fstat` fills on success.
    let rc = unsafe { libc::fstat(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fstat` returned 0, so it initialised `st`.
    Ok(unsafe { st.assume_init() }.st_size as u64)
}

/// Bytes of physical memory, if the system says.
pub(crate) fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}
