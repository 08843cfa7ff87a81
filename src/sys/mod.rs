//! Every raw operating-system call the library makes, behind small safe
//! functions and types: anonymous memory ([`memory`]), the page cache
//! ([`pages`]), files and the machine ([`file`]), and the clock ([`clock`]).
//!
//! The rest of the crate calls no `libc` function directly (io_uring goes
//! through tokio-uring, file mappings through memmap2), so the `unsafe` that
//! talks to the kernel is here, each block with the argument that makes it
//! sound. Linux only: the engines rely on io_uring, `O_DIRECT`,
//! `MADV_HUGEPAGE`, `MADV_POPULATE_WRITE` and `CLOCK_MONOTONIC_COARSE`.

#[cfg(not(target_os = "linux"))]
compile_error!(
    "hyperion supports Linux only: its read engines use io_uring, O_DIRECT and \
     Linux madvise/clock flags (see docs/architecture.md)"
);

pub(crate) mod clock;
pub(crate) mod file;
pub(crate) mod lease;
pub(crate) mod memory;
pub(crate) mod pages;
