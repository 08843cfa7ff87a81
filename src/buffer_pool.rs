//! Layer buffers kept across models: [`BufferPool`].
//!
//! A model's own idle pool (`budget.rs`) dies with the model: `close`
//! unmaps it, because it promises the memory back. A process that opens
//! model after model (a server that swaps models, a test suite, a bench)
//! then pays for fresh memory again in every new model's first pass: the
//! kernel zeroes every page, and on VMs whose host takes freed memory back
//! (free page reporting) each new huge page also costs a host fault per
//! 4 KiB — 207 MB/s here a few seconds after a free, against ~3 GB/s from
//! the disk (`docs/performance.md`, "Deep read-ahead and the first pass").
//!
//! A `BufferPool` shared through [`MmapConfig::buffer_pool`] keeps what a
//! closed model's pool held, up to its own cap, faulted in, and hands it to
//! the next model's reads that fit it. The memory is the pool's: it is
//! counted in no model's budget while it sits there, and in the budget of
//! the model that takes it over.
//!
//! [`MmapConfig::buffer_pool`]: crate::MmapConfig::buffer_pool

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::sys::memory::Mapping;

/// A reservation of `n` bytes may take over an idle mapping of up to
/// `n + n / REUSE_SLACK` bytes (6%): enough for extents that differ by a
/// few pages, too little to waste much budget on a mapping far larger.
/// The rule of a model's own idle pool (`budget.rs`) and of a shared one.
pub(crate) const REUSE_SLACK: u64 = 16;

/// Faulted-in layer buffers kept for the next model, across `close`.
///
/// Cloning gives another handle to the same pool. The memory is unmapped
/// when the last handle and every model opened with it are gone, or at
/// [`clear`](Self::clear).
///
/// ```
/// # async fn demo(paths: &[std::path::PathBuf]) -> hyperion::Result<()> {
/// use hyperion::{BufferPool, MappedModel, MmapConfig};
///
/// // Keep up to 1 GiB of layer buffers from one model to the next.
/// let pool = BufferPool::new(1 << 30);
/// for path in paths {
///     let config = MmapConfig {
///         buffer_pool: Some(pool.clone()),
///         ..MmapConfig::default()
///     };
///     let model = MappedModel::open(path, config).await?;
///     // ... stream its layers ...
///     model.close(); // its idle buffers go to `pool`, not back to the kernel
/// }
/// println!("kept {} bytes", pool.retained_bytes());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct BufferPool {
    inner: Arc<Inner>,
}

struct Inner {
    max_bytes: u64,
    state: Mutex<State>,
}

/// Mappings by the bytes a budget is charged for them: a model's idle pool
/// (`budget.rs`) and a shared [`BufferPool`] alike.
#[derive(Debug, Default)]
pub(crate) struct MappingsBySize(BTreeMap<u64, Vec<Mapping>>);

impl MappingsBySize {
    pub(crate) fn push(&mut self, charge: u64, map: Mapping) {
        self.0.entry(charge).or_default().push(map);
    }

    /// Removes the smallest mapping that serves a reservation of `bytes`
    /// (charged `bytes` to `bytes + bytes / REUSE_SLACK`, and at most
    /// `room`), with its charge.
    pub(crate) fn take_fitting(&mut self, bytes: u64, room: u64) -> Option<(u64, Mapping)> {
        let most = bytes.saturating_add(bytes / REUSE_SLACK).min(room);
        if most < bytes {
            return None;
        }
        let (&charge, maps) = self.0.range_mut(bytes..=most).next()?;
        let map = maps.pop()?;
        if maps.is_empty() {
            self.0.remove(&charge);
        }
        Some((charge, map))
    }

    /// Removes the largest mapping, with its charge.
    pub(crate) fn pop_largest(&mut self) -> Option<(u64, Mapping)> {
        let mut entry = self.0.last_entry()?;
        let charge = *entry.key();
        let map = entry.get_mut().pop();
        if entry.get().is_empty() {
            entry.remove();
        }
        Some((charge, map?))
    }
}

#[derive(Default)]
struct State {
    /// Bytes of the mappings held.
    bytes: u64,
    maps: MappingsBySize,
    /// Mappings a model took over.
    reuses: u64,
}

impl BufferPool {
    /// A pool that keeps at most `max_bytes` of buffers. Memory beyond that
    /// is unmapped as it would be without a pool.
    pub fn new(max_bytes: u64) -> Self {
        BufferPool {
            inner: Arc::new(Inner {
                max_bytes,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The most bytes the pool keeps.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Bytes of buffers the pool holds now (resident memory no model
    /// counts).
    pub fn retained_bytes(&self) -> u64 {
        self.inner.state.lock().bytes
    }

    /// How many buffers models have taken over from the pool.
    pub fn reuses(&self) -> u64 {
        self.inner.state.lock().reuses
    }

    /// Unmaps every buffer the pool holds.
    pub fn clear(&self) {
        let maps = {
            let mut s = self.inner.state.lock();
            s.bytes = 0;
            std::mem::take(&mut s.maps)
        };
        drop(maps);
    }

    /// Keeps `map`, charged `bytes` in the budget it came from, if the cap
    /// allows; otherwise it is unmapped here.
    pub(crate) fn keep(&self, bytes: u64, map: Mapping) {
        let mut s = self.inner.state.lock();
        if s.bytes + bytes > self.inner.max_bytes {
            drop(s);
            drop(map);
            return;
        }
        s.bytes += bytes;
        s.maps.push(bytes, map);
    }

    /// Takes the smallest mapping that serves a reservation of `bytes`
    /// (charged `bytes` to `bytes + bytes / REUSE_SLACK`, the rule of a
    /// model's own pool) and is charged at most `room`, with the bytes its
    /// new budget is to be charged.
    pub(crate) fn take_fitting(&self, bytes: u64, room: u64) -> Option<(u64, Mapping)> {
        let mut s = self.inner.state.lock();
        let (charge, map) = s.maps.take_fitting(bytes, room)?;
        s.bytes -= charge;
        s.reuses += 1;
        Some((charge, map))
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.inner.state.lock();
        f.debug_struct("BufferPool")
            .field("max_bytes", &self.inner.max_bytes)
            .field("retained_bytes", &s.bytes)
            .field("reuses", &s.reuses)
            .finish()
    }
}

/// Two configs are equal when they share the same pool.
impl PartialEq for BufferPool {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
