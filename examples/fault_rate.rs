//! How fast this machine hands out fresh anonymous memory: the cost a layer
//! buffer pays on its first use (the first pass of a fresh model), by page
//! size and by how long ago the memory was freed.
//!
//! ```sh
//! cargo run --release --example fault_rate -- [MIB] [THREADS] [WAIT_S,...]
//! ```
//!
//! For each wait: frees `2 × MIB` of memory it had touched, waits that many
//! seconds, then maps `MIB` fresh and faults it in (`MADV_POPULATE_WRITE`)
//! on `THREADS` threads, once with 4 KiB pages and once advised
//! `MADV_HUGEPAGE` (as layer buffers of 2 MiB and more are). On a VM with
//! free page reporting, memory freed more than ~2 s earlier has been handed
//! back to the host, and a fresh huge page then costs a host fault per 4 KiB
//! inside it. docs/performance.md, "Fresh memory", has a run.

use std::time::{Duration, Instant};

use hyperion::buffer::AlignedBuf;

const MIB: usize = 1 << 20;

fn arg(n: usize, default: &str) -> String {
    std::env::args().nth(n).unwrap_or_else(|| default.into())
}

/// An anonymous mapping of `len` bytes, 2 MiB-aligned, advised
/// `MADV_HUGEPAGE` if `huge`, faulted in on `threads` threads; MB/s.
fn fault_in(len: usize, threads: usize, huge: bool) -> std::io::Result<f64> {
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + 2 * MIB,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = (raw as usize).next_multiple_of(2 * MIB);
    if huge {
        // SAFETY: `start..start + len` lies inside the mapping made above
        // (it has 2 MiB of slack for the alignment); advice changes no byte.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    }
    let per = (len / threads).next_multiple_of(2 * MIB);
    let clock = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let from = t * per;
            let n = per.min(len.saturating_sub(from));
            s.spawn(move || {
                // SAFETY: the range lies inside the mapping, which outlives
                // the scope; populating only faults in zero pages.
                unsafe {
                    libc::madvise(
                        (start + from) as *mut libc::c_void,
                        n,
                        libc::MADV_POPULATE_WRITE,
                    )
                }
            });
        }
    });
    let mb_s = len as f64 / clock.elapsed().as_secs_f64() / 1e6;
    // SAFETY: unmaps exactly the mapping made above, no longer used.
    unsafe { libc::munmap(raw, len + 2 * MIB) };
    Ok(mb_s)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = arg(1, "512").parse()?;
    let threads: usize = arg(2, "1").parse::<usize>()?.max(1);
    let waits = arg(3, "0,3");
    println!("{mib} MiB on {threads} thread(s), MB/s");
    for wait in waits.split(',') {
        let secs: f64 = wait.parse()?;
        let mut line = format!("freed {secs} s before:");
        for huge in [false, true] {
            // Memory the process used and freed, as a closed model's.
            let mut churn = AlignedBuf::new(2 * mib * MIB)?;
            churn.as_mut_slice().fill(1);
            drop(churn);
            std::thread::sleep(Duration::from_secs_f64(secs));
            let rate = fault_in(mib * MIB, threads, huge)?;
            let pages = if huge { "2 MiB" } else { "4 KiB" };
            line += &format!("  {pages} pages {rate:>6.0}");
        }
        println!("{line}");
    }
    Ok(())
}
