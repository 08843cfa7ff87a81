//! Dropping a file's pages from the OS page cache, so the next read is cold.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Writes back and drops every cached page of the file at `path`
/// (`fsync` + `posix_fadvise(POSIX_FADV_DONTNEED)`), so that the next read
/// comes from the disk. Used by the demo and benchmarks to measure cold reads.
///
/// Pages mapped by a process stay cached; the kernel may also ignore the
/// advice. Check by timing when it matters.
pub fn drop_cached_pages(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    file.sync_all()?;
    // SAFETY: `file` is an open descriptor for the duration of the call;
    // offset 0 with length 0 means "to the end of the file".
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}
