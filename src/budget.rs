//! The memory budget: a byte counter that can never pass its limit.
//!
//! Memory is reserved *before* a read allocates its buffer, and the
//! reservation (a [`Charge`]) travels inside the buffer, so it is returned
//! exactly when the memory is freed — after the last
//! [`LayerWeights`](crate::LayerWeights) handle drops, or when an abandoned
//! read's buffer is finally dropped. The budget therefore bounds every live
//! layer buffer at every instant: cached, held by callers, or being read.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// How often a fetch waiting for memory looks again even without a wake-up.
pub(crate) const RECHECK: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub(crate) struct Budget {
    max: u64,
    state: Mutex<State>,
    /// Woken whenever memory may have become available: a charge dropped, or a
    /// read finished (its buffer may now be evictable).
    pub(crate) changed: Notify,
    /// Fetches waiting for memory; when non-zero, dropping a handle wakes them
    /// (the layer it held may now be evictable).
    waiters: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    used: u64,
    peak: u64,
}

impl Budget {
    pub(crate) fn new(max: u64) -> Arc<Self> {
        Arc::new(Budget {
            max,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            waiters: AtomicUsize::new(0),
        })
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// Bytes charged right now.
    pub(crate) fn used(&self) -> u64 {
        self.state.lock().used
    }

    /// The most bytes ever charged at once.
    pub(crate) fn peak(&self) -> u64 {
        self.state.lock().peak
    }

    /// Reserves `bytes` if they fit under the limit.
    pub(crate) fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Charge> {
        let mut s = self.state.lock();
        let used = s.used.checked_add(bytes).filter(|&u| u <= self.max)?;
        s.used = used;
        s.peak = s.peak.max(used);
        Some(Charge {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Counts the caller as waiting for memory until the guard drops.
    pub(crate) fn begin_wait(&self) -> Waiting<'_> {
        self.waiters.fetch_add(1, SeqCst);
        Waiting(self)
    }

    /// Whether any fetch is waiting for memory.
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiters.load(SeqCst) > 0
    }

    /// Called after a handle to a layer buffer was dropped while fetches wait
    /// for memory: wakes them, since the buffer may now be evictable.
    ///
    /// The dropper checks [`has_waiters`](Self::has_waiters) *before* its
    /// handle count falls (checking after would cost every drop an `Arc`
    /// clone of the budget), so a waiter that registers in that instant can
    /// miss the wake-up; waiters therefore also look again every [`RECHECK`].
    pub(crate) fn handle_dropped(&self) {
        self.changed.notify_waiters();
    }

    fn release(&self, bytes: u64) {
        {
            let mut s = self.state.lock();
            debug_assert!(s.used >= bytes, "budget released more than it charged");
            s.used -= bytes;
        }
        self.changed.notify_waiters();
    }
}

/// A reservation of budget bytes, returned when dropped.
#[derive(Debug)]
#[must_use = "a charge returns its bytes when dropped"]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// A fetch waiting for memory; see [`Budget::begin_wait`].
pub(crate) struct Waiting<'a>(&'a Budget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_pass_the_limit_and_return_on_drop() {
        let b = Budget::new(10_000);
        let a = b.try_reserve(6_000).unwrap();
        assert!(b.try_reserve(4_001).is_none());
        let c = b.try_reserve(4_000).unwrap();
        assert_eq!(b.used(), 10_000);
        assert!(b.try_reserve(1).is_none());
        drop(a);
        assert_eq!(b.used(), 4_000);
        drop(c);
        assert_eq!(b.used(), 0);
        assert_eq!(b.peak(), 10_000);
        assert!(b.try_reserve(u64::MAX).is_none());
    }
}
