//! File read leases (`fcntl(F_SETLEASE, F_RDLCK)`) and what the shared
//! page-cache reader does with them: the calls behind `io/shared.rs`.
//!
//! A read lease on a file makes every other open of it for writing, and
//! every `truncate(2)` of it, wait until the lease holder lets go (at most
//! `/proc/sys/fs/lease-break-time` seconds, after which the kernel breaks the
//! lease by force). While the lease is held the file cannot shrink, so a
//! mapping of it cannot raise `SIGBUS`. A lease is refused (`EAGAIN`) while
//! anyone has the file open for writing, and granted only to the file's
//! owner or a process with `CAP_LEASE`; some filesystems (network, FUSE,
//! overlay) do not grant them at all.
//!
//! Breaking a lease sends the holder a signal. Hyperion sets it to `SIGURG`
//! (`F_SETSIG`), whose default action is to do nothing, and directs it
//! (`F_SETOWN_EX`) to its own watcher thread, which blocks it; the watcher
//! learns of the break by asking `F_GETLEASE` (the pending break reads as
//! `F_UNLCK`), never from the signal. Leases are taken only while `SIGURG`
//! is at its default or ignored ([`sigurg_is_unhandled`]): between
//! `F_SETLEASE` and `F_SETOWN_EX` the signal would go to the process.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;

use memmap2::Mmap;

// Not in the libc crate for every Linux target (stable values of the
// generic Linux ABI: include/uapi/asm-generic/fcntl.h).
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// Whether the process leaves `SIGURG` at its default (ignore) or ignores
/// it: then a lease-break signal that reaches the process does nothing.
pub(crate) fn sigurg_is_unhandled() -> bool {
    // SAFETY: `sigaction` with a null new action only reads the current
    // disposition into `old`, a zeroed `sigaction` we own.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGURG, std::ptr::null(), &mut old) != 0 {
            return false;
        }
        old.sa_sigaction == libc::SIG_DFL || old.sa_sigaction == libc::SIG_IGN
    }
}

/// Blocks `SIGURG` in the calling thread (the watcher), so a lease-break
/// signal directed at it stays pending and is never delivered.
pub(crate) fn block_sigurg_in_this_thread() -> io::Result<()> {
    // SAFETY: `set` is a local signal set we initialise before use;
    // `pthread_sigmask` changes only the calling thread's mask.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGURG);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// The calling thread's id.
pub(crate) fn this_thread_id() -> libc::pid_t {
    // SAFETY: `gettid` has no preconditions.
    unsafe { libc::gettid() }
}

/// `/proc/sys/fs/lease-break-time`: how long the kernel lets a lease holder
/// take before it breaks the lease by force (default 45 s).
pub(crate) fn lease_break_secs() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/lease-break-time")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn fcntl(file: &File, cmd: libc::c_int, arg: libc::c_long) -> io::Result<libc::c_int> {
    // SAFETY: the descriptor is open for the call; the commands used here
    // (F_SETSIG, F_SETLEASE, F_GETLEASE) take an integer argument.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Takes a read lease on `file` (opened read-only), its break signal set to
/// `SIGURG` and directed at thread `watcher`. On error nothing is held.
pub(crate) fn take_read_lease(file: &File, watcher: libc::pid_t) -> io::Result<()> {
    // The signal first: with F_SETSIG 0 a break would send SIGIO, whose
    // default action ends the process.
    fcntl(file, F_SETSIG, libc::SIGURG as libc::c_long)?;
    fcntl(file, libc::F_SETLEASE, libc::F_RDLCK as libc::c_long)?;
    let owner = FOwnerEx {
        kind: F_OWNER_TID,
        pid: watcher,
    };
    // SAFETY: F_SETOWN_EX reads one `f_owner_ex` (layout as the kernel's:
    // two ints) from the pointer, which points at our local for the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), F_SETOWN_EX, &owner as *const FOwnerEx) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        let _ = release_lease(file);
        return Err(e);
    }
    Ok(())
}

/// Whether the read lease on `file` is still held and not being broken
/// (`F_GETLEASE` reads `F_UNLCK` once another process waits on it).
pub(crate) fn lease_intact(file: &File) -> bool {
    fcntl(file, libc::F_GETLEASE, 0).is_ok_and(|t| t == libc::F_RDLCK)
}

/// Gives the lease up: a writer or truncation waiting on it proceeds.
pub(crate) fn release_lease(file: &File) -> io::Result<()> {
    fcntl(file, libc::F_SETLEASE, libc::F_UNLCK as libc::c_long).map(|_| ())
}

/// Pages `range` of `map` in now (`MADV_POPULATE_READ`, Linux 5.14),
/// without touching them one by one. `Ok(false)` where the kernel does not
/// know the advice (the caller touches the pages instead).
pub(crate) fn populate_read(map: &Mmap, range: Range<usize>) -> io::Result<bool> {
    assert!(range.start <= range.end && range.end <= map.len());
    if range.is_empty() {
        return Ok(true);
    }
    // SAFETY: the range lies inside the live mapping (asserted above), and
    // `map.as_ptr() + range.start` is page-aligned (the caller's windows
    // are). MADV_POPULATE_READ only fills page tables as read faults would;
    // it changes no byte.
    let rc = unsafe {
        libc::madvise(
            map.as_ptr().add(range.start) as *mut libc::c_void,
            range.len(),
            libc::MADV_POPULATE_READ,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        return Ok(false);
    }
    Err(e)
}

/// Makes `range` of the private file mapping `map` writable
/// (`mprotect`): a write then gives the written page an anonymous copy
/// (copy on write), and the file and its page cache never change.
///
/// `map` must be a private mapping (`MAP_PRIVATE`) and `range.start`
/// page-aligned.
pub(crate) fn make_writable(map: &Mmap, range: Range<usize>) -> io::Result<()> {
    assert!(range.start <= range.end && range.end <= map.len());
    if range.is_empty() {
        return Ok(());
    }
    // SAFETY: the range lies inside the live mapping (asserted above) and
    // starts on a page (the callers' windows do); mprotect rounds its end up
    // to the page, still inside the mapping. Adding PROT_WRITE to a private
    // mapping changes no byte and no mapping: only what a later write does
    // (copy the page, then write the copy). Rust code never writes through
    // it; the writer is the caller's caller (Python arrays over the view).
    let rc = unsafe {
        libc::mprotect(
            map.as_ptr().add(range.start) as *mut libc::c_void,
            range.len(),
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces the pages of `range` of the file mapping `map` with a private
/// anonymous copy of the same bytes, in one `mremap`: after it, those
/// addresses no longer depend on the file (a truncation cannot make them
/// fault) and read exactly what they read before. The copy is writable if
/// `writable` (the range was: `make_writable`), else read-only.
///
/// The caller must hold the file's read lease (so the copy reads the file's
/// bytes, not a hole), and `range.start` must be page-aligned. A write into
/// a writable range by another thread between the copy and the `mremap` is
/// lost (the copy predates it).
pub(crate) fn replace_with_copy(map: &Mmap, range: Range<usize>, writable: bool) -> io::Result<()> {
    assert!(range.start <= range.end && range.end <= map.len());
    if range.is_empty() {
        return Ok(());
    }
    let page = 4096usize;
    let len = range.len().next_multiple_of(page);
    // SAFETY: `dst` is page-aligned inside our live mapping (the caller's
    // windows start on pages; the map starts on one), and `len` covers only
    // pages of the mapping: the mapping's length is rounded up to whole
    // pages by the kernel, and `range.end <= map.len()`.
    let dst = unsafe { map.as_ptr().add(range.start) } as *mut libc::c_void;
    debug_assert_eq!(dst as usize % page, 0);
    // SAFETY: an anonymous private mapping with no address hint; checked
    // against MAP_FAILED.
    let anon = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if anon == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `anon` is a fresh writable mapping of `len >= range.len()`
    // bytes no one else knows; the source is `range.len()` readable bytes of
    // our mapping, whose pages are the file's (the caller holds the lease, so
    // none lies past the end of the file). The two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(dst as *const u8, anon as *mut u8, range.len());
        // As the range was: read-only unless made writable.
        if !writable {
            libc::mprotect(anon, len, libc::PROT_READ);
        }
    }
    // SAFETY: moves our anonymous mapping onto `dst..dst + len`, pages of
    // our own file mapping (see above). The kernel unmaps the destination
    // and moves the copy in under the address-space write lock, so a thread
    // reading those addresses meanwhile waits and then reads the copy: the
    // same bytes. Live `&[u8]`s into the range stay valid and unchanged,
    // and the memmap2 `Mmap` still unmaps the whole range when it drops.
    let moved = unsafe {
        libc::mremap(
            anon,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            dst,
        )
    };
    if moved == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        // SAFETY: the copy was not moved: it is still our mapping at `anon`.
        unsafe { libc::munmap(anon, len) };
        return Err(e);
    }
    Ok(())
}
