//! Fault injection for tests (`--features fault-injection`): a plan of
//! errors, short reads and delays that the backends apply to their own read
//! requests, so the real retry, resume and error paths run.
//!
//! Per read request (a request on the io_uring ring or a `pread` call,
//! first or resumed; a layer on the mmap backend), the plan draws from a
//! seeded generator:
//! - an **error** with one of the given errnos, instead of the read
//!   (`EINTR`, `EAGAIN` and `ECANCELED` are retried by the io_uring and pread
//!   backends; anything else is an [`Error::Io`](crate::Error::Io));
//! - a **short read**: the request is cut to a random whole number of blocks
//!   before it is submitted, so the backend must resume it (io_uring and
//!   pread);
//! - a **delay** before the request is submitted, which reorders completions.
//!
//! A plan can also make creating the io_uring ring fail, so that
//! `Backend::Auto` falls back to the pread backend.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

/// What happens to one read request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Fail with this errno instead of reading.
    Error(i32),
    /// Read at most this many bytes.
    Short(usize),
    /// Wait this long, then read.
    Delay(Duration),
}

/// A seeded plan of faults. Build one with the `with_*` methods and pass it
/// to [`MappedModel::open_with_faults`](crate::MappedModel::open_with_faults).
///
/// ```
/// # // The module is public only with the `fault-injection` feature.
/// # #[cfg(feature = "fault-injection")] {
/// use hyperion::faults::FaultPlan;
/// let plan = FaultPlan::new(7)
///     .with_errors(0.2, &[libc::EINTR, libc::EIO])
///     .with_short_reads(0.3)
///     .with_delays(0.1, std::time::Duration::from_millis(2));
/// assert_eq!(plan.injected(), 0);
/// # }
/// ```
#[derive(Debug)]
pub struct FaultPlan {
    rng: Mutex<u64>,
    error_rate: f64,
    errnos: Vec<i32>,
    short_rate: f64,
    delay_rate: f64,
    max_delay: Duration,
    fail_ring_setup: bool,
    slow_fresh_memory: bool,
    injected: AtomicU64,
}

// Without the feature only the backends' side of the plan is reachable.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
impl FaultPlan {
    /// A plan that injects nothing yet, drawing from a generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        FaultPlan {
            rng: Mutex::new(seed ^ 0x9e37_79b9_7f4a_7c15),
            error_rate: 0.0,
            errnos: Vec::new(),
            short_rate: 0.0,
            delay_rate: 0.0,
            max_delay: Duration::ZERO,
            fail_ring_setup: false,
            slow_fresh_memory: false,
            injected: AtomicU64::new(0),
        }
    }

    /// Fails a request with probability `rate`, with an errno picked from `errnos`.
    pub fn with_errors(mut self, rate: f64, errnos: &[i32]) -> Self {
        self.error_rate = rate;
        self.errnos = errnos.to_vec();
        self
    }

    /// Cuts a request short with probability `rate`.
    pub fn with_short_reads(mut self, rate: f64) -> Self {
        self.short_rate = rate;
        self
    }

    /// Delays a request by up to `max` with probability `rate`.
    pub fn with_delays(mut self, rate: f64, max: Duration) -> Self {
        self.delay_rate = rate;
        self.max_delay = max;
        self
    }

    /// Makes creating the io_uring ring fail (as under seccomp):
    /// `Backend::IoUring` fails to open, `Backend::Auto` falls back to pread.
    pub fn with_ring_setup_failure(mut self) -> Self {
        self.fail_ring_setup = true;
        self
    }

    /// Makes the model see fresh memory as slow to fault in, always, as on
    /// a host that has taken the guest's free memory back: under
    /// `ColdSharing::WhenFreshMemoryIsSlow` every cold layer whose read
    /// would need a fresh buffer is then shared.
    pub fn with_slow_fresh_memory(mut self) -> Self {
        self.slow_fresh_memory = true;
        self
    }

    pub(crate) fn fresh_memory_is_slow(&self) -> bool {
        self.slow_fresh_memory
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Relaxed)
    }

    pub(crate) fn ring_setup_fails(&self) -> bool {
        self.fail_ring_setup
    }

    /// The fault for a request of `len` bytes, if any.
    pub(crate) fn draw(&self, len: usize) -> Option<Fault> {
        let (a, b, c, d) = {
            let mut s = self.rng.lock();
            (next(&mut s), next(&mut s), next(&mut s), next(&mut s))
        };
        let fault = if unit(a) < self.error_rate && !self.errnos.is_empty() {
            Some(Fault::Error(
                self.errnos[(b % self.errnos.len() as u64) as usize],
            ))
        } else if unit(a) < self.error_rate + self.short_rate && len > 4096 {
            let blocks = (len / 4096) as u64;
            Some(Fault::Short(((c % blocks).max(1) * 4096) as usize))
        } else if unit(d) < self.delay_rate {
            Some(Fault::Delay(self.max_delay.mul_f64(unit(c))))
        } else {
            None
        };
        if fault.is_some() {
            self.injected.fetch_add(1, Relaxed);
        }
        fault
    }
}

/// SplitMix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unit(r: u64) -> f64 {
    (r >> 11) as f64 / (1u64 << 53) as f64
}
