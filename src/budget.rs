//! The memory budget: a byte counter that can never pass its limit.
//!
//! Memory is reserved *before* a read allocates its buffer, and the
//! reservation (a [`Charge`]) travels inside the buffer, so it is returned
//! exactly when the memory is freed — after the last
//! [`LayerWeights`](crate::LayerWeights) handle drops, or when an abandoned
//! read's buffer is finally dropped. The budget therefore bounds every live
//! layer buffer at every instant: cached, held by callers, or being read.
//!
//! # The buffer pool
//!
//! The budget also keeps the **idle pool**: mappings of layer buffers that
//! were dropped, kept (already faulted in) for the next read instead of being
//! unmapped, because first touch of fresh memory is expensive. An idle
//! mapping **stays charged**: the limit bounds live buffers *plus* idle ones,
//! so the pool can never push the process past `max_cache_size`.
//!
//! - A reservation of `n` bytes first takes over the smallest idle mapping
//!   whose charge is at least `n` and at most `n` + [`REUSE_SLACK`](crate::buffer_pool::REUSE_SLACK)ths of
//!   `n` (the charge moves with it; nothing is added, and the reservation is
//!   charged that mapping's bytes, never less than it holds). Layers of
//!   one model come in a handful of sizes, but "one size" is often two: the
//!   blocks of a GGUF or safetensors file start at different offsets within
//!   a page, so their page-aligned extents alternate by a page or two. An
//!   exact match then missed about one read in four in a streamed Llama
//!   (SmolLM2's 2,220,032- and 2,224,128-byte blocks), and every miss
//!   unmapped an idle mapping and faulted a fresh one in. A mapping at
//!   least `n` long serves `n` (see
//!   [`AlignedBuf::charged`](crate::buffer::AlignedBuf::charged)).
//! - Otherwise it charges `n` fresh bytes if they fit.
//! - If they do not, it **reclaims** idle mappings (the largest first, each
//!   unmapped before its bytes are uncharged) until they fit or the pool is
//!   empty — before the caller evicts any cached layer. So a reservation that
//!   fails leaves the pool empty: the caller never evicts, waits or reports
//!   the budget exhausted while idle memory could have been used.
//! - [`Budget::close_pool`] (the model's close) unmaps every idle mapping and
//!   turns the pool away from then on: buffers dropped after close are
//!   unmapped.
//! - With a [`BufferPool`] (`MmapConfig::buffer_pool`), a reservation the
//!   idle pool cannot serve takes a fitting mapping from that shared pool
//!   before it charges fresh bytes, and what close would unmap goes to it
//!   instead (up to its cap): memory kept from one model to the next.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crate::buffer_pool::{BufferPool, MappingsBySize};
use crate::sys::memory::Mapping;

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
    /// Buffers shared with other models (`MmapConfig::buffer_pool`).
    shared: Option<BufferPool>,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes charged: live buffers and idle pooled mappings.
    used: u64,
    /// Of `used`, the bytes of mappings idle in `pool`.
    idle: u64,
    /// The most `used` ever was.
    peak: u64,
    /// Idle mappings by the bytes they are charged for.
    pool: MappingsBySize,
    /// Set by [`Budget::close_pool`]: buffers are unmapped, not pooled.
    pool_closed: bool,
    /// Reservations that took over an idle mapping.
    reuses: u64,
    /// Idle mappings unmapped to make room.
    reclaimed: u64,
}

impl State {
    /// Removes the largest idle mapping, returning it with its charge.
    fn pop_largest(&mut self) -> Option<(u64, Mapping)> {
        let (bytes, map) = self.pool.pop_largest()?;
        self.idle -= bytes;
        Some((bytes, map))
    }

    /// Removes the smallest idle mapping that serves `bytes` (charged
    /// `bytes` to `bytes + bytes / REUSE_SLACK`), with its charge.
    fn take_fitting(&mut self, bytes: u64) -> Option<(u64, Mapping)> {
        let (charge, map) = self.pool.take_fitting(bytes, u64::MAX)?;
        self.idle -= charge;
        Some((charge, map))
    }
}

/// The budget's figures at one instant (one lock), for [`Stats`](crate::Stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Bytes of live layer buffers: cached, held, or being read.
    pub(crate) live: u64,
    /// Bytes of idle pooled mappings (charged too).
    pub(crate) idle: u64,
    /// The most bytes ever charged at once (live + idle).
    pub(crate) peak: u64,
    pub(crate) pool_reuses: u64,
    pub(crate) pool_reclaimed: u64,
}

impl Budget {
    pub(crate) fn new(max: u64, shared: Option<BufferPool>) -> Arc<Self> {
        Arc::new(Budget {
            max,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            waiters: AtomicUsize::new(0),
            shared,
        })
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// Bytes of live layer buffers (charged and not idle in the pool).
    pub(crate) fn live(&self) -> u64 {
        let s = self.state.lock();
        s.used - s.idle
    }

    /// Whether the pool holds idle memory that a reservation could reclaim.
    pub(crate) fn has_idle(&self) -> bool {
        self.state.lock().idle > 0
    }

    /// The budget's figures, taken under one lock.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let s = self.state.lock();
        Snapshot {
            live: s.used - s.idle,
            idle: s.idle,
            peak: s.peak,
            pool_reuses: s.reuses,
            pool_reclaimed: s.reclaimed,
        }
    }

    /// Reserves `bytes`: takes over an idle mapping that serves them (charged
    /// `bytes` to `bytes + bytes / REUSE_SLACK`; the reservation is then
    /// charged that much) if the pool has one, else charges them if they fit
    /// under the limit,
    /// reclaiming idle mappings first if that is what it takes. `None` if
    /// they do not fit even with the pool empty (it is then empty).
    pub(crate) fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Charge> {
        if bytes > self.max {
            return None;
        }
        loop {
            let mut reclaim = Vec::new();
            {
                let mut s = self.state.lock();
                if let Some((charged, map)) = s.take_fitting(bytes) {
                    s.reuses += 1;
                    return Some(Charge {
                        budget: Arc::clone(self),
                        bytes: charged,
                        pooled: Some(map),
                    });
                }
                if s.used + bytes <= self.max {
                    // Memory another model left in the shared pool, already
                    // faulted in, before fresh memory. The pool never takes
                    // a budget's lock, so this order cannot deadlock.
                    let room = self.max - s.used;
                    if let Some((charged, map)) = self
                        .shared
                        .as_ref()
                        .and_then(|p| p.take_fitting(bytes, room))
                    {
                        s.used += charged;
                        s.peak = s.peak.max(s.used);
                        s.reuses += 1;
                        return Some(Charge {
                            budget: Arc::clone(self),
                            bytes: charged,
                            pooled: Some(map),
                        });
                    }
                    s.used += bytes;
                    s.peak = s.peak.max(s.used);
                    return Some(Charge {
                        budget: Arc::clone(self),
                        bytes,
                        pooled: None,
                    });
                }
                // Reclaim idle mappings until `bytes` fit. They stay charged
                // until they are unmapped, outside the lock.
                let mut freed = 0;
                while s.used - freed + bytes > self.max {
                    let Some((b, map)) = s.pop_largest() else {
                        break;
                    };
                    freed += b;
                    reclaim.push(map);
                }
                if reclaim.is_empty() {
                    return None;
                }
                s.reclaimed += reclaim.len() as u64;
                drop(s);
                drop(reclaim);
                self.release(freed);
            }
        }
    }

    /// Puts `map`, charged `bytes`, in the idle pool, still charged. If the
    /// pool is closed, hands it to the shared pool or unmaps it, and returns
    /// the bytes.
    fn put_idle(&self, bytes: u64, map: Mapping) {
        {
            let mut s = self.state.lock();
            if !s.pool_closed {
                s.idle += bytes;
                s.pool.push(bytes, map);
                drop(s);
                // A fetch waiting for memory can take or reclaim it.
                self.changed.notify_waiters();
                return;
            }
        }
        self.give_away(bytes, map);
        self.release(bytes);
    }

    /// Hands `map` (charged `bytes`) to the shared pool if there is one,
    /// else unmaps it. The caller returns the bytes afterwards, so the
    /// budget never counts less than is mapped for it.
    fn give_away(&self, bytes: u64, map: Mapping) {
        match &self.shared {
            Some(shared) => shared.keep(bytes, map),
            None => drop(map),
        }
    }

    /// Unmaps every idle mapping (or hands it to the shared pool) and
    /// returns its bytes; buffers dropped from now on go the same way
    /// instead of to the idle pool.
    pub(crate) fn close_pool(&self) {
        let (pool, bytes) = {
            let mut s = self.state.lock();
            s.pool_closed = true;
            let bytes = std::mem::take(&mut s.idle);
            (std::mem::take(&mut s.pool), bytes)
        };
        let mut pool = pool;
        while let Some((charged, map)) = pool.pop_largest() {
            self.give_away(charged, map);
        }
        self.release(bytes);
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
///
/// A charge may come with an idle mapping it took over from the pool: that
/// mapping *is* the memory it pays for. Read engines get it through
/// [`AlignedBuf::charged`](crate::buffer::AlignedBuf::charged); an engine
/// that puts the charge in other memory (the mmap backend's views) must
/// first call [`Charge::unpooled`], or the process would hold both.
#[derive(Debug)]
#[must_use = "a charge returns its bytes when dropped"]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    /// 0 once handed to the pool (nothing left to release).
    bytes: u64,
    pooled: Option<Mapping>,
}

impl Charge {
    /// Whether this charge took over an idle mapping (a buffer already
    /// faulted in) rather than fresh bytes.
    pub(crate) fn has_mapping(&self) -> bool {
        self.pooled.is_some()
    }

    /// Takes the idle mapping this charge took over from the pool, if any.
    pub(crate) fn take_mapping(&mut self) -> Option<Mapping> {
        self.pooled.take()
    }

    /// This charge without the pooled mapping it took over, which is
    /// unmapped: for an engine that puts the charge in memory that is not a
    /// buffer (the charge then pays for that memory instead).
    pub(crate) fn unpooled(mut self) -> Charge {
        drop(self.take_mapping());
        self
    }

    /// Hands `map`, the memory this charge paid for, to the idle pool with
    /// the charge; if the pool is closed, unmaps it and then returns the bytes.
    pub(crate) fn recycle(mut self, map: Mapping) {
        debug_assert!(
            self.pooled.is_none(),
            "a buffer's charge has no other mapping"
        );
        let bytes = std::mem::take(&mut self.bytes);
        self.budget.put_idle(bytes, map);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        // A charge dropped unused gives its pooled mapping back to the pool.
        if let Some(map) = self.pooled.take() {
            let bytes = std::mem::take(&mut self.bytes);
            self.budget.put_idle(bytes, map);
            return;
        }
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
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
        let b = Budget::new(10_000, None);
        let a = b.try_reserve(6_000).unwrap();
        assert!(b.try_reserve(4_001).is_none());
        let c = b.try_reserve(4_000).unwrap();
        assert_eq!(b.live(), 10_000);
        assert!(b.try_reserve(1).is_none());
        drop(a);
        assert_eq!(b.live(), 4_000);
        drop(c);
        assert_eq!(b.live(), 0);
        assert_eq!(b.snapshot().peak, 10_000);
        assert!(b.try_reserve(u64::MAX).is_none());
    }

    /// A mapping pooled by a layer a page longer serves the next layer (the
    /// blocks of one file alternate so), charged its own length; one far
    /// longer is reclaimed instead, and fresh memory mapped.
    #[test]
    fn a_pooled_mapping_a_little_longer_is_reused_with_its_charge() {
        const PAGE: u64 = 4096;
        let b = Budget::new(100 * PAGE, None);
        let long = b.try_reserve(17 * PAGE).unwrap();
        long.recycle(Mapping::new(17 * PAGE as usize).unwrap());
        let mut short = b.try_reserve(16 * PAGE).unwrap();
        assert!(
            short.take_mapping().is_some(),
            "the idle mapping is taken over"
        );
        assert_eq!(b.snapshot().live, 17 * PAGE, "charged the mapping's length");
        assert_eq!(b.snapshot().idle, 0);
        drop(short);
        assert_eq!(b.live(), 0);

        let far = b.try_reserve(40 * PAGE).unwrap();
        far.recycle(Mapping::new(40 * PAGE as usize).unwrap());
        let mut small = b.try_reserve(16 * PAGE).unwrap();
        assert!(small.take_mapping().is_none(), "2.5× too long: not reused");
        assert_eq!(b.snapshot().live, 16 * PAGE);
        assert_eq!(b.snapshot().idle, 40 * PAGE, "kept idle: there was room");
    }

    /// Close hands idle mappings to the shared pool (up to its cap) and
    /// returns their bytes; the next budget takes one over before it
    /// charges fresh bytes, but never past its own limit.
    #[test]
    fn a_shared_pool_carries_mappings_from_one_budget_to_the_next() {
        const PAGE: u64 = 4096;
        let pool = BufferPool::new(20 * PAGE);
        let first = Budget::new(100 * PAGE, Some(pool.clone()));
        let a = first.try_reserve(16 * PAGE).unwrap();
        let b = first.try_reserve(16 * PAGE).unwrap();
        a.recycle(Mapping::new(16 * PAGE as usize).unwrap());
        b.recycle(Mapping::new(16 * PAGE as usize).unwrap());
        assert_eq!(first.snapshot().idle, 32 * PAGE);
        first.close_pool();
        assert_eq!(first.live(), 0);
        assert_eq!(first.snapshot().idle, 0);
        assert_eq!(pool.retained_bytes(), 16 * PAGE, "the cap kept one of two");

        let small = Budget::new(15 * PAGE, Some(pool.clone()));
        let mut c = small.try_reserve(15 * PAGE).unwrap();
        assert!(
            c.take_mapping().is_none(),
            "charged 16 pages: past the limit"
        );
        drop(c);
        assert_eq!(pool.retained_bytes(), 16 * PAGE);

        let next = Budget::new(100 * PAGE, Some(pool.clone()));
        let mut c = next.try_reserve(16 * PAGE).unwrap();
        assert!(
            c.take_mapping().is_some(),
            "the pooled mapping is taken over"
        );
        assert_eq!(pool.retained_bytes(), 0);
        assert_eq!(pool.reuses(), 1);
        assert_eq!(next.snapshot().pool_reuses, 1);
        assert_eq!(next.live(), 16 * PAGE);
        drop(c);
        assert_eq!(next.live(), 0);

        // A buffer dropped after close goes to the pool too.
        let late = next.try_reserve(16 * PAGE).unwrap();
        next.close_pool();
        late.recycle(Mapping::new(16 * PAGE as usize).unwrap());
        assert_eq!(next.live(), 0);
        assert_eq!(pool.retained_bytes(), 16 * PAGE);
        pool.clear();
        assert_eq!(pool.retained_bytes(), 0);
    }
}
