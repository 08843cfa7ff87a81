//! How fast fresh anonymous memory faults in right now, as the reads that
//! fault it in measure it — for `ColdSharing::WhenFreshMemoryIsSlow`.
//!
//! A layer read into a fresh buffer first faults the buffer in
//! ([`layer_buffer`](super::aligned::layer_buffer)), and that is the read's
//! whole cost when the host must back the memory again: on these VMs a
//! fresh huge page faults in at ~10 GB/s right after the guest freed
//! memory and at ~200 MB/s a few seconds later (free page reporting),
//! while the disk gives ~3 GB/s and a read through the page cache
//! ~1.1–2.5 GB/s. So each fresh fault-in is timed here, and while the
//! latest was slower than [`SLOW_BELOW`], cold layers that would need a
//! fresh buffer are read through the page cache instead
//! (`io/shared.rs`). The verdict lasts [`RECHECK_AFTER`]; then the next
//! fresh buffer is faulted in and timed again, so a state that passed is
//! noticed within a layer.
//!
//! The state is the process's, not a model's: the memory is.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::buffer::HUGE_PAGE;
use crate::sys::clock;
use crate::sys::memory::Mapping;

/// Fault-in rate under which fresh memory counts as slow: well below the
/// disk's `O_DIRECT` rate and the page cache's read rate here (so reading
/// through the page cache wins below it), far above the ~200 MB/s of
/// memory the host has taken back.
pub(crate) const SLOW_BELOW: u64 = 1_000_000_000;

/// How long a slow verdict stands before a fresh buffer is tried again.
pub(crate) const RECHECK_AFTER: Duration = Duration::from_secs(2);

/// Fault-ins smaller than this are not timed: too short to say anything
/// against the clock's resolution and a syscall's cost.
const MIN_TIMED: usize = HUGE_PAGE;

/// The latest verdict on fresh memory.
#[derive(Debug, Default)]
pub(crate) struct FreshMemory {
    /// Coarse-clock nanoseconds until which fresh memory counts as slow
    /// (0: not slow).
    slow_until: AtomicU64,
}

/// The process's monitor.
pub(crate) static FRESH_MEMORY: FreshMemory = FreshMemory {
    slow_until: AtomicU64::new(0),
};

impl FreshMemory {
    /// Records that `bytes` of fresh memory took `took` to fault in.
    pub(crate) fn record(&self, bytes: usize, took: Duration) {
        self.record_at(bytes, took, clock::coarse_nanos());
    }

    fn record_at(&self, bytes: usize, took: Duration, now: u64) {
        if bytes < MIN_TIMED {
            return;
        }
        let rate = bytes as f64 / took.as_secs_f64().max(1e-9);
        let slow = rate < SLOW_BELOW as f64;
        let until = if slow {
            now.saturating_add(RECHECK_AFTER.as_nanos() as u64)
        } else {
            0
        };
        tracing::debug!(bytes, mb_s = rate / 1e6, slow, "fresh memory faulted in");
        self.slow_until.store(until, Relaxed);
    }

    /// Faults one fresh huge page in and records how fast it came: a
    /// verdict before the first read needs one (≤ ~10 ms where memory is
    /// slow, well under 1 ms where it is not). Where no memory can be
    /// mapped, nothing is recorded.
    pub(crate) fn probe(&self) {
        let Ok(map) = Mapping::new(HUGE_PAGE) else {
            return;
        };
        let start = Instant::now();
        map.populate_write(HUGE_PAGE);
        self.record(HUGE_PAGE, start.elapsed());
    }

    /// Whether the latest fresh fault-in, within [`RECHECK_AFTER`], was slow.
    pub(crate) fn is_slow(&self) -> bool {
        self.is_slow_at(clock::coarse_nanos())
    }

    fn is_slow_at(&self, now: u64) -> bool {
        now < self.slow_until.load(Relaxed)
    }

    /// A monitor that finds fresh memory slow forever and records nothing
    /// (`FaultPlan::with_slow_fresh_memory`). Leaked: one per model opened
    /// with such a plan, in tests.
    pub(crate) fn always_slow() -> &'static FreshMemory {
        Box::leak(Box::new(FreshMemory {
            slow_until: AtomicU64::new(u64::MAX),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_slow_fault_in_holds_for_a_while_and_a_fast_one_clears_it() {
        let m = FreshMemory::default();
        assert!(!m.is_slow_at(10 * SEC), "nothing measured yet");
        // 64 MiB in 0.3 s: ~220 MB/s, what host-reclaimed memory gives.
        m.record_at(64 << 20, Duration::from_millis(300), 10 * SEC);
        assert!(m.is_slow_at(10 * SEC + 1));
        assert!(m.is_slow_at(11 * SEC));
        assert!(!m.is_slow_at(12 * SEC + 1), "the verdict expires");
        m.record_at(64 << 20, Duration::from_millis(300), 20 * SEC);
        // 64 MiB in 8 ms: ~8 GB/s, memory just freed by the guest.
        m.record_at(64 << 20, Duration::from_millis(8), 20 * SEC + 1);
        assert!(!m.is_slow_at(20 * SEC + 2));
        // A real probe records something either way.
        m.probe();
        // Too small to time: ignored.
        m.slow_until.store(0, Relaxed);
        m.record_at(4096, Duration::from_secs(1), 30 * SEC);
        assert!(!m.is_slow_at(30 * SEC + 1));
    }
}
