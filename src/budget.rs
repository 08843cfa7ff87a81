//! The memory budget: a byte counter that can never pass its limit.
//!
//! Memory is reserved *before* a read allocates its buffer, and the
//! reservation (a [`Charge`]) travels inside the buffer, so it is returned
//! exactly when the memory is freed — after the last
//! [`LayerWeights`](crate::LayerWeights) handle drops, or when an abandoned
//! read's buffer is finally dropped. The budget therefore bounds every live
//! layer buffer at every instant: cached, held by callers, or being read.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct Budget {
    max: u64,
    state: Mutex<State>,
    /// Woken whenever memory may have become available: a charge dropped, or a
    /// read finished (its buffer may now be evictable).
    pub(crate) changed: Notify,
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

impl Charge {
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
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
