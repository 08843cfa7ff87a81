//! The layer cache: one slot per layer that is cached or being read.
//!
//! A slot is either `Loading` (a read is in flight; every fetch of the layer
//! awaits the same shared future, so concurrent requests cause one read) or
//! `Ready` (a hit clones the handle under a shard read lock; no I/O, no await).
//!
//! Eviction picks, among `Ready` entries that no caller holds, the lowest
//! priority first, then the policy's choice ([`crate::policy`]: least
//! recently used, or with `adaptive_caching` the scan-resistant adaptive
//! policy). Hits are recorded lock-free in per-layer atomics and replayed into
//! the single-threaded policy core before each eviction. "No caller holds" is
//! checked under the shard's write lock at removal, where no hit can clone the
//! handle concurrently, so an eviction always frees the memory it counts on.
//! Evicted entries are returned to the caller and dropped outside every lock.
//!
//! The policy tracks exactly the `Ready` slots: every change into or out of
//! `Ready` (`publish`, `remove`, `drain`, `evict_one`) changes the slot and
//! tells the policy under one hold of the policy lock, taken before the shard
//! lock. Hits and `Loading` slots (`lookup_or_start`, `abandon`) take shard
//! locks only; the policy never sees a `Loading` slot.

use std::ops::DerefMut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use futures::future::{BoxFuture, Shared};
use parking_lot::{Mutex, MutexGuard};

use self::probe::{Point, Probes};

use crate::error::Result;
use crate::meta::LayerMeta;
use crate::policy::{Policy, PolicyKind};
use crate::weights::LayerWeights;

/// The future every waiter of one read awaits.
pub(crate) type LoadFuture = Shared<BoxFuture<'static, Result<LayerWeights>>>;

pub(crate) enum Slot {
    Loading {
        id: u64,
        done: LoadFuture,
        /// Set when a fetch joins the read, so a prefetch that a fetch is
        /// already waiting for is published as used.
        demanded: AtomicBool,
    },
    Ready(Entry),
}

/// What [`Cache::publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Published {
    /// The layer is cached; no fetch waited for it.
    Cached,
    /// The layer is cached, and a fetch joined the read while it ran.
    Demanded,
    /// The slot was released meanwhile: the read is detached, not cached.
    Detached,
}

pub(crate) struct Entry {
    pub(crate) weights: LayerWeights,
    /// Set while a prefetched layer waits for its first fetch.
    pub(crate) prefetched_unused: AtomicBool,
}

/// What a fetch found in the cache.
pub(crate) enum Lookup {
    Hit(LayerWeights),
    /// A read is in flight; await it.
    Wait(LoadFuture),
    /// The slot was empty and is now `Loading` with this id: the caller must
    /// start the read and later call [`Cache::publish`] or [`Cache::abandon`].
    Started {
        id: u64,
        done: LoadFuture,
    },
}

/// Who wants a layer: a fetch (may evict anything unheld, may wait) or a
/// prefetch (never waits, and never evicts a layer that is more important or
/// that was prefetched and not used yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Demand,
    Prefetch,
}

/// Hashes the slot map's keys, layer indices: small integers the loader
/// chooses, so SipHash's protection against chosen keys buys nothing, and
/// it was 5% of the hit path's profile (`perf record` of the criterion hit
/// bench). A Fibonacci multiply spreads consecutive indices over both the
/// high bits (DashMap's shard) and the low bits (hashbrown's bucket).
#[derive(Clone, Copy, Default)]
pub(crate) struct IndexHasher(u64);

const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

impl std::hash::Hasher for IndexHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0 ^ n as u64).wrapping_mul(FIBONACCI);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type SlotMap = DashMap<usize, Slot, std::hash::BuildHasherDefault<IndexHasher>>;

/// The locks a [`Cache`] is built on. Production uses [`Real`] (DashMap's
/// shard locks and a parking_lot mutex); the tests also run the same cache
/// code on shuttle's instrumented locks, which explore thread schedules.
pub(crate) trait Locks {
    type Slots: Slots;
    type Policy: PolicyLock;
}

/// The locks of the real cache.
pub(crate) enum Real {}

impl Locks for Real {
    type Slots = SlotMap;
    type Policy = Mutex<Policy>;
}

/// The slot map: what the cache does to a slot, each under one shard lock
/// (a layer's shard is fixed).
pub(crate) trait Slots: Default {
    /// `f` of `layer`'s slot, under the shard's read lock.
    fn read<R>(&self, layer: usize, f: impl FnOnce(&Slot) -> R) -> Option<R>;
    /// `f` of `layer`'s slot, under the shard's write lock.
    fn write<R>(&self, layer: usize, f: impl FnOnce(&mut Slot) -> R) -> Option<R>;
    /// Under the shard's write lock: `found` of `layer`'s slot, or, if there
    /// is none, the result of `vacant`, whose slot is inserted.
    fn find_or_insert<R>(
        &self,
        layer: usize,
        found: impl FnOnce(&Slot) -> R,
        vacant: impl FnOnce() -> (Slot, R),
    ) -> R;
    /// Removes `layer`'s slot if `remove` accepts it, under the write lock.
    fn remove_if(&self, layer: usize, remove: impl FnOnce(&Slot) -> bool) -> Option<Slot>;
    /// The layers whose slot `select` accepts, one shard at a time (a slot
    /// that changes meanwhile may or may not be listed).
    fn layers(&self, select: impl FnMut(&Slot) -> bool) -> Vec<usize>;
}

impl Slots for SlotMap {
    fn read<R>(&self, layer: usize, f: impl FnOnce(&Slot) -> R) -> Option<R> {
        self.get(&layer).map(|slot| f(&slot))
    }

    fn write<R>(&self, layer: usize, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        self.get_mut(&layer).map(|mut slot| f(&mut slot))
    }

    fn find_or_insert<R>(
        &self,
        layer: usize,
        found: impl FnOnce(&Slot) -> R,
        vacant: impl FnOnce() -> (Slot, R),
    ) -> R {
        match self.entry(layer) {
            MapEntry::Occupied(o) => found(o.get()),
            MapEntry::Vacant(v) => {
                let (slot, r) = vacant();
                v.insert(slot);
                r
            }
        }
    }

    fn remove_if(&self, layer: usize, remove: impl FnOnce(&Slot) -> bool) -> Option<Slot> {
        DashMap::remove_if(self, &layer, |_, slot| remove(slot)).map(|(_, slot)| slot)
    }

    fn layers(&self, mut select: impl FnMut(&Slot) -> bool) -> Vec<usize> {
        self.iter()
            .filter(|r| select(r.value()))
            .map(|r| *r.key())
            .collect()
    }
}

/// The mutex around the policy core.
pub(crate) trait PolicyLock {
    type Guard<'a>: DerefMut<Target = Policy>
    where
        Self: 'a;
    fn new(policy: Policy) -> Self;
    fn lock(&self) -> Self::Guard<'_>;
    fn try_lock(&self) -> Option<Self::Guard<'_>>;
}

impl PolicyLock for Mutex<Policy> {
    type Guard<'a> = MutexGuard<'a, Policy>;

    fn new(policy: Policy) -> Self {
        Mutex::new(policy)
    }

    fn lock(&self) -> Self::Guard<'_> {
        Mutex::lock(self)
    }

    fn try_lock(&self) -> Option<Self::Guard<'_>> {
        Mutex::try_lock(self)
    }
}

pub(crate) struct Cache<L: Locks = Real> {
    slots: L::Slots,
    next_id: AtomicU64,
    /// The eviction policy's single-threaded core. Lock order: this mutex
    /// before any shard lock, never the reverse. Held across every change
    /// into or out of `Ready`, so its resident set is the `Ready` slots.
    policy: L::Policy,
    /// Test-only callbacks at the points where threads may interleave
    /// (nothing outside tests).
    probes: Probes,
}

impl Cache {
    pub(crate) fn new(kind: PolicyKind, layers: usize, prefetch_reserve: usize) -> Self {
        Self::with_locks(kind, layers, prefetch_reserve)
    }
}

impl<L: Locks> Cache<L> {
    /// [`Cache::new`], on the locks `L`.
    fn with_locks(kind: PolicyKind, layers: usize, prefetch_reserve: usize) -> Self {
        let mut policy = Policy::new(kind, layers);
        policy.set_prefetch_reserve(prefetch_reserve);
        Cache {
            slots: L::Slots::default(),
            next_id: AtomicU64::new(0),
            policy: L::Policy::new(policy),
            probes: Probes::default(),
        }
    }

    /// Locks the policy. In tests, a thread about to block on it first fires
    /// [`Point::Contended`], so a test can tell that it waits.
    fn lock_policy(&self) -> <L::Policy as PolicyLock>::Guard<'_> {
        if cfg!(test) {
            if let Some(policy) = self.policy.try_lock() {
                return policy;
            }
            self.probes.fire(Point::Contended);
        }
        self.policy.lock()
    }

    /// The cached handle of `layer`, if it is `Ready`. Returns whether that
    /// was the first use of a prefetched layer too.
    pub(crate) fn get_ready(&self, layer: usize) -> Option<(LayerWeights, bool)> {
        self.slots
            .read(layer, |slot| match slot {
                Slot::Ready(e) => Some((e.weights.clone(), take_flag(&e.prefetched_unused))),
                Slot::Loading { .. } => None,
            })
            .flatten()
    }

    pub(crate) fn contains(&self, layer: usize) -> bool {
        self.slots.read(layer, |_| ()).is_some()
    }

    pub(crate) fn is_ready(&self, layer: usize) -> bool {
        self.slots
            .read(layer, |slot| matches!(slot, Slot::Ready(_)))
            .unwrap_or(false)
    }

    /// Finds `layer`, or marks it `Loading` with the future `make` builds.
    /// The flag says whether this was the first fetch of a prefetched layer.
    pub(crate) fn lookup_or_start(
        &self,
        layer: usize,
        origin: Origin,
        make: impl FnOnce() -> BoxFuture<'static, Result<LayerWeights>>,
    ) -> (Lookup, bool) {
        let demand = origin == Origin::Demand;
        let found = |slot: &Slot| match slot {
            Slot::Ready(e) => (
                Lookup::Hit(e.weights.clone()),
                demand && take_flag(&e.prefetched_unused),
            ),
            Slot::Loading { done, demanded, .. } => {
                if demand {
                    demanded.store(true, Relaxed);
                }
                (Lookup::Wait(done.clone()), false)
            }
        };
        let vacant = || {
            let id = self.next_id.fetch_add(1, Relaxed);
            let done = futures::FutureExt::shared(make());
            let slot = Slot::Loading {
                id,
                done: done.clone(),
                demanded: AtomicBool::new(false),
            };
            (slot, (Lookup::Started { id, done }, false))
        };
        self.slots.find_or_insert(layer, found, vacant)
    }

    /// Turns the `Loading` slot `id` into a `Ready` entry. A prefetched layer
    /// stays marked unused unless a fetch joined its read.
    pub(crate) fn publish(
        &self,
        layer: usize,
        id: u64,
        weights: LayerWeights,
        prefetched: bool,
    ) -> Published {
        // The slot turns `Ready` and the policy learns of it under one hold
        // of the policy lock, so a release cannot come in between (it would
        // `on_remove` a layer not inserted yet, then this `on_insert` would
        // track a layer with no slot). Lock order: the policy, then the shard.
        let mut policy = self.lock_policy();
        let swapped = self.swap_in(layer, id, weights, prefetched);
        if swapped.is_ok() {
            self.probes.fire(Point::Published);
            policy.on_insert(layer);
        }
        drop(policy);
        // Outside the locks: the `Loading` slot's future, or the weights of
        // a read that was detached, may be the last handle to their memory.
        match swapped {
            Ok((old, demanded)) => {
                drop(old);
                if demanded {
                    Published::Demanded
                } else {
                    Published::Cached
                }
            }
            Err(weights) => {
                drop(weights);
                Published::Detached
            }
        }
    }

    /// Replaces the `Loading` slot `id` with `Ready(weights)`; returns the old
    /// slot and whether a fetch joined the read, or the weights back if the
    /// slot is gone or belongs to another read. Call it with the policy locked.
    fn swap_in(
        &self,
        layer: usize,
        id: u64,
        weights: LayerWeights,
        prefetched: bool,
    ) -> Result<(Slot, bool), LayerWeights> {
        let mut weights = Some(weights);
        let swapped = self.slots.write(layer, |slot| {
            let demanded = match &*slot {
                Slot::Loading {
                    id: cur, demanded, ..
                } if *cur == id => demanded.load(Relaxed),
                _ => return None,
            };
            let ready = Slot::Ready(Entry {
                weights: weights.take()?,
                prefetched_unused: AtomicBool::new(prefetched && !demanded),
            });
            Some((std::mem::replace(slot, ready), demanded))
        });
        match (swapped.flatten(), weights) {
            (Some(swapped), _) => Ok(swapped),
            (None, Some(weights)) => Err(weights),
            (None, None) => unreachable!("the weights are taken only on success"),
        }
    }

    /// Removes the `Loading` slot `id` after its read failed or was dropped.
    /// A `Loading` slot is not in the policy, so this takes no policy lock.
    pub(crate) fn abandon(&self, layer: usize, id: u64) {
        let removed = self.slots.remove_if(
            layer,
            |s| matches!(s, Slot::Loading { id: cur, .. } if *cur == id),
        );
        drop(removed);
    }

    /// Removes `layer`'s slot, whatever its state. Returns the entry if it was
    /// `Ready`, to be dropped by the caller outside the lock.
    pub(crate) fn remove(&self, layer: usize) -> Option<Slot> {
        // As in `publish`: the slot leaves and the policy forgets it under one
        // hold of the policy lock, so a new read of the layer cannot be
        // published in between and then be forgotten by this `on_remove`.
        let mut policy = self.lock_policy();
        self.remove_locked(&mut policy, layer)
    }

    /// [`Cache::remove`], with the policy already locked.
    fn remove_locked(&self, policy: &mut Policy, layer: usize) -> Option<Slot> {
        let slot = self.slots.remove_if(layer, |_| true);
        if matches!(slot, Some(Slot::Ready(_))) {
            self.probes.fire(Point::Removed);
            policy.on_remove(layer);
        }
        slot
    }

    /// Removes every slot; returns them for dropping outside the locks.
    pub(crate) fn drain(&self) -> Vec<Slot> {
        let mut policy = self.lock_policy();
        let layers = self.slots.layers(|_| true);
        layers
            .into_iter()
            .filter_map(|layer| self.remove_locked(&mut policy, layer))
            .collect()
    }

    /// Evicts one unheld `Ready` entry chosen by the policy, if there is one,
    /// and returns it (drop it outside any lock to free its memory).
    ///
    /// A fetch may evict any unheld layer, but a layer prefetched and not
    /// yet used only when there is no other; a prefetch never evicts a layer
    /// of higher priority than its own, nor one prefetched and not yet used,
    /// and asks the policy for a speculative victim (the adaptive policy
    /// then keeps its protected layers).
    pub(crate) fn evict_one(
        &self,
        metas: &[LayerMeta],
        origin: Origin,
        target_priority: f32,
    ) -> Option<Entry> {
        // Lock order: the policy, then shard locks (the filter reads slots).
        let mut policy = self.lock_policy();
        replay_accesses(&mut policy, metas);
        let priority = |layer: usize| metas[layer].priority();
        self.evict_locked(&mut policy, origin, target_priority, priority)
    }

    /// [`Cache::evict_one`], with the policy locked and the hits replayed.
    fn evict_locked(
        &self,
        policy: &mut Policy,
        origin: Origin,
        target_priority: f32,
        priority: impl Fn(usize) -> f32,
    ) -> Option<Entry> {
        let priority = &priority;
        loop {
            // `read_ahead_too`: whether a layer prefetched and not used yet
            // may go.
            let candidate = |read_ahead_too: bool| {
                move |layer: usize| {
                    self.slots
                        .read(layer, |slot| match slot {
                            Slot::Ready(e) => {
                                let unused = e.prefetched_unused.load(Relaxed);
                                e.weights.handle_count() == 1
                                    && (read_ahead_too || !unused)
                                    && (origin == Origin::Demand
                                        || priority(layer) <= target_priority)
                            }
                            Slot::Loading { .. } => false,
                        })
                        .unwrap_or(false)
                }
            };
            let victim = match origin {
                // A fetch spares the layers read ahead and not used yet while
                // it has another victim: a consumer that outruns the disk
                // would otherwise evict what was read for its next steps,
                // and read it again (seen in tests/stream.rs).
                Origin::Demand => policy
                    .victim(candidate(false), priority)
                    .or_else(|| policy.victim(candidate(true), priority)),
                Origin::Prefetch => policy.speculative_victim(candidate(false), priority),
            }?;
            // Re-check under the write lock: a hit may have cloned it since.
            let removed = self.slots.remove_if(
                victim,
                |s| matches!(s, Slot::Ready(e) if e.weights.handle_count() == 1),
            );
            if let Some(Slot::Ready(e)) = removed {
                policy.on_remove(victim);
                return Some(e);
            }
        }
    }

    /// Sets how many layers the caller reads ahead, so the adaptive policy
    /// leaves that many entries unprotected for them (never lowers it).
    pub(crate) fn reserve_for_prefetch(&self, entries: usize) {
        let mut policy = self.lock_policy();
        if entries > policy.prefetch_reserve() {
            policy.set_prefetch_reserve(entries);
        }
    }

    /// Checks the policy's invariants, and that the policy tracks exactly the
    /// `Ready` slots: a layer the policy holds resident without a `Ready` slot
    /// is a phantom it may pick as a victim that frees nothing; a `Ready`
    /// slot it does not track is never evicted, and its memory never returns
    /// to the budget while the model is open.
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn validate(&self) -> Result<(), String> {
        // Lock order: the policy, then shard locks (reading the slots). With
        // the policy locked no slot enters or leaves `Ready`, so the check is
        // exact even while other threads use the cache.
        let policy = self.lock_policy();
        policy.validate()?;
        let mut ready = self.slots.layers(|slot| matches!(slot, Slot::Ready(_)));
        ready.sort_unstable();
        let mut resident: Vec<usize> = policy.resident_layers().collect();
        resident.sort_unstable();
        if let Some(x) = resident.iter().find(|x| ready.binary_search(x).is_err()) {
            return Err(format!(
                "layer {x} is resident for the policy but has no Ready slot"
            ));
        }
        if let Some(x) = ready.iter().find(|x| resident.binary_search(x).is_err()) {
            return Err(format!(
                "layer {x} has a Ready slot the policy does not track"
            ));
        }
        Ok(())
    }
}

/// Feeds the hits recorded lock-free since the last eviction into the policy,
/// oldest first. Each layer counts once per batch; the policy is robust to
/// that (docs/caching.md, "Batched replay").
fn replay_accesses(policy: &mut Policy, metas: &[LayerMeta]) {
    let mut pending: Vec<(u64, usize)> = metas
        .iter()
        .enumerate()
        .filter(|(_, m)| take_flag(&m.accessed))
        .map(|(layer, m)| (m.last_used.load(Relaxed), layer))
        .collect();
    pending.sort_unstable();
    for (_, layer) in pending {
        policy.on_access(layer);
    }
}

/// Clears a flag, returning whether it was set, without writing when it is not.
fn take_flag(flag: &AtomicBool) -> bool {
    flag.load(Relaxed) && flag.swap(false, Relaxed)
}

/// Test-only callbacks at the points of the cache where another thread may
/// run in between, to force one interleaving deterministically. Outside
/// tests, [`Probes`] is empty and firing a point does nothing.
mod probe {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Point {
        /// In `publish`: the slot is `Ready`, the policy not told yet.
        Published,
        /// In `remove`: a `Ready` slot is gone, the policy not told yet.
        Removed,
        /// A thread found the policy mutex held and is about to block on it.
        Contended,
    }

    #[cfg(not(test))]
    #[derive(Default)]
    pub(crate) struct Probes {}

    #[cfg(not(test))]
    impl Probes {
        #[inline(always)]
        pub(crate) fn fire(&self, _point: Point) {}
    }

    #[cfg(test)]
    type Callback = Box<dyn FnOnce() + Send>;

    /// Callbacks to run, each once, the next time its point is reached.
    #[cfg(test)]
    #[derive(Default)]
    pub(crate) struct Probes(parking_lot::Mutex<Vec<(Point, Callback)>>);

    #[cfg(test)]
    impl Probes {
        /// Runs `f` the next time a thread reaches `point`.
        pub(crate) fn on(&self, point: Point, f: impl FnOnce() + Send + 'static) {
            self.0.lock().push((point, Box::new(f)));
        }

        /// Runs (outside the probes' lock) the first callback set for `point`.
        pub(crate) fn fire(&self, point: Point) {
            let f = {
                let mut probes = self.0.lock();
                let i = probes.iter().position(|(p, _)| *p == point);
                i.map(|i| probes.remove(i).1)
            };
            if let Some(f) = f {
                f();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::{Backend, MappedModel, MmapConfig};

    /// `n` real layer handles, each from a read of its own (the cache only
    /// stores, clones and counts them), from a small synthetic model.
    fn reads(n: usize) -> Vec<LayerWeights> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.tmai");
        let spec = crate::synth::SynthSpec {
            layers: 1,
            layer_size: 4096,
            ..Default::default()
        };
        crate::synth::write(&path, &spec).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = MmapConfig {
                backend: Backend::Mmap,
                max_cache_size: (n as u64 + 1) * spec.layer_size,
                ..MmapConfig::default()
            };
            let model = MappedModel::open(&path, config).await.unwrap();
            let mut handles = Vec::with_capacity(n);
            for _ in 0..n {
                handles.push(model.layer(0).await.unwrap());
                // The next fetch misses and reads again.
                model.release(0).unwrap();
            }
            model.close();
            handles
        })
    }

    fn weights() -> LayerWeights {
        reads(1).pop().unwrap()
    }

    /// Marks `layer` `Loading`, as a fetch that misses does; returns the id.
    fn start(cache: &Cache, layer: usize) -> u64 {
        let never =
            || -> BoxFuture<'static, Result<LayerWeights>> { Box::pin(futures::future::pending()) };
        match cache.lookup_or_start(layer, Origin::Demand, never).0 {
            Lookup::Started { id, .. } => id,
            _ => panic!("layer {layer} was not empty"),
        }
    }

    /// `validate`, and the same thing said plainly for one layer.
    fn check(cache: &Cache, layer: usize) {
        if let Err(e) = cache.validate() {
            panic!("{:?}: {e}", cache.policy.lock().kind());
        }
        let resident = cache.policy.lock().is_resident(layer);
        assert_eq!(resident, cache.is_ready(layer), "layer {layer}");
    }

    const KINDS: [PolicyKind; 2] = [PolicyKind::Lru, PolicyKind::Adaptive];

    /// A fetch that needs room evicts a layer already used before one read
    /// ahead and not used yet, even where the policy would pick the latter
    /// (here the older of the two, so LRU would): evicting it would make the
    /// consumer read it again at its next step.
    #[test]
    fn a_fetch_spares_layers_read_ahead_and_not_used_yet() {
        for kind in KINDS {
            // Moved into the cache: an evictable layer has no other holder.
            let mut handles = reads(2);
            let cache = Cache::new(kind, 3, 1);
            let metas: Vec<LayerMeta> = (0..3).map(|_| LayerMeta::new()).collect();
            // Layer 1 read ahead first, then layer 0 fetched (and used).
            let id = start(&cache, 1);
            cache.publish(1, id, handles.pop().unwrap(), true);
            let id = start(&cache, 0);
            cache.publish(0, id, handles.pop().unwrap(), false);
            // (The handles all come from one layer of the file: which slot
            // was emptied says which one went.)
            assert!(cache.evict_one(&metas, Origin::Demand, 0.0).is_some());
            assert!(!cache.is_ready(0) && cache.is_ready(1), "{kind:?}");
            check(&cache, 1);
            // With nothing else left, the read-ahead layer goes too.
            assert!(cache.evict_one(&metas, Origin::Demand, 0.0).is_some());
            assert!(!cache.is_ready(1), "{kind:?}");
            check(&cache, 1);
        }
    }

    /// A release lands in `publish` between the slot turning `Ready` and the
    /// policy being told: it must not leave the policy tracking a layer that
    /// has no slot (a phantom `on_insert` after the `on_remove`).
    #[test]
    fn a_release_during_publish_leaves_no_phantom_in_the_policy() {
        let w = weights();
        for kind in KINDS {
            let cache = Cache::new(kind, 2, 0);
            let id = start(&cache, 0);
            // `publish` stops at the probe until the release has run, or is
            // blocked on the policy lock (then it runs after `publish`).
            let (reached, go) = mpsc::channel();
            let (done, wait) = mpsc::channel();
            let blocked = done.clone();
            cache.probes.on(Point::Published, move || {
                reached.send(()).unwrap();
                wait.recv().unwrap();
            });
            cache.probes.on(Point::Contended, move || {
                let _ = blocked.send("blocked");
            });
            let cache = &cache;
            std::thread::scope(|s| {
                s.spawn(move || {
                    go.recv().unwrap();
                    drop(cache.remove(0));
                    let _ = done.send("released");
                });
                cache.publish(0, id, w.clone(), false);
            });
            check(cache, 0);
        }
    }

    /// A new read of the layer is published in `remove` between the slot
    /// leaving and the policy being told: the new `Ready` slot must stay
    /// tracked by the policy (else it is never evicted).
    #[test]
    fn a_publish_during_release_stays_tracked_by_the_policy() {
        let w = weights();
        for kind in KINDS {
            let cache = Cache::new(kind, 2, 0);
            let id = start(&cache, 0);
            cache.publish(0, id, w.clone(), false);
            check(&cache, 0);
            let (reached, go) = mpsc::channel();
            let (done, wait) = mpsc::channel();
            let blocked = done.clone();
            cache.probes.on(Point::Removed, move || {
                reached.send(()).unwrap();
                wait.recv().unwrap();
            });
            cache.probes.on(Point::Contended, move || {
                let _ = blocked.send("blocked");
            });
            std::thread::scope(|s| {
                s.spawn(|| drop(cache.remove(0)));
                go.recv().unwrap();
                let id = start(&cache, 0);
                cache.publish(0, id, w.clone(), false);
                let _ = done.send("published");
            });
            check(&cache, 0);
        }
    }

    /// The cache's own code on shuttle's locks, under random schedules of
    /// threads that fetch, publish, fail reads, release, hit, evict and
    /// validate. The policy must track exactly the `Ready` slots whenever its
    /// lock is free (so `validate` must pass mid-run too), and an eviction
    /// must return an entry no one else holds.
    ///
    /// The seed is fixed so runs repeat; set `HYPERION_SHUTTLE_SEED` to try
    /// others. On a failure shuttle prints the schedule, which
    /// `shuttle::replay(schedule(kind, pool), "...")` runs again.
    mod schedules {
        use std::collections::HashMap;
        use std::sync::Arc;

        use shuttle::sync::RwLock;

        use super::*;

        enum Shuttle {}

        impl Locks for Shuttle {
            type Slots = ShardedSlots;
            type Policy = shuttle::sync::Mutex<Policy>;
        }

        impl PolicyLock for shuttle::sync::Mutex<Policy> {
            type Guard<'a> = shuttle::sync::MutexGuard<'a, Policy>;

            fn new(policy: Policy) -> Self {
                shuttle::sync::Mutex::new(policy)
            }

            fn lock(&self) -> Self::Guard<'_> {
                shuttle::sync::Mutex::lock(self).unwrap()
            }

            fn try_lock(&self) -> Option<Self::Guard<'_>> {
                shuttle::sync::Mutex::try_lock(self).ok()
            }
        }

        /// A slot map of two shards, as DashMap's: a layer's shard is fixed,
        /// and neighbouring layers are in different shards.
        #[derive(Default)]
        struct ShardedSlots([RwLock<HashMap<usize, Slot>>; 2]);

        impl ShardedSlots {
            fn shard(&self, layer: usize) -> &RwLock<HashMap<usize, Slot>> {
                &self.0[layer % 2]
            }
        }

        impl Slots for ShardedSlots {
            fn read<R>(&self, layer: usize, f: impl FnOnce(&Slot) -> R) -> Option<R> {
                self.shard(layer).read().unwrap().get(&layer).map(f)
            }

            fn write<R>(&self, layer: usize, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
                self.shard(layer).write().unwrap().get_mut(&layer).map(f)
            }

            fn find_or_insert<R>(
                &self,
                layer: usize,
                found: impl FnOnce(&Slot) -> R,
                vacant: impl FnOnce() -> (Slot, R),
            ) -> R {
                let mut shard = self.shard(layer).write().unwrap();
                if let Some(slot) = shard.get(&layer) {
                    return found(slot);
                }
                let (slot, r) = vacant();
                shard.insert(layer, slot);
                r
            }

            fn remove_if(&self, layer: usize, remove: impl FnOnce(&Slot) -> bool) -> Option<Slot> {
                let mut shard = self.shard(layer).write().unwrap();
                if shard.get(&layer).is_some_and(remove) {
                    shard.remove(&layer)
                } else {
                    None
                }
            }

            fn layers(&self, mut select: impl FnMut(&Slot) -> bool) -> Vec<usize> {
                let mut layers = Vec::new();
                for shard in &self.0 {
                    let shard = shard.read().unwrap();
                    layers.extend(shard.iter().filter(|(_, s)| select(s)).map(|(&l, _)| l));
                }
                layers
            }
        }

        type ShuttleCache = Arc<Cache<Shuttle>>;

        /// A fetch (or prefetch) of `layer`: on a miss, the read runs (a
        /// scheduling point), then is published, or abandoned if it `fails`.
        fn fetch(cache: &ShuttleCache, layer: usize, origin: Origin, w: LayerWeights, fails: bool) {
            let never = || -> BoxFuture<'static, Result<LayerWeights>> {
                Box::pin(futures::future::pending())
            };
            if let (Lookup::Started { id, .. }, _) = cache.lookup_or_start(layer, origin, never) {
                shuttle::thread::yield_now();
                if fails {
                    cache.abandon(layer, id);
                } else {
                    cache.publish(layer, id, w, origin == Origin::Prefetch);
                }
            }
        }

        fn evict(cache: &ShuttleCache, origin: Origin) {
            let mut policy = cache.lock_policy();
            let evicted = cache.evict_locked(&mut policy, origin, 0.0, |_| 0.0);
            drop(policy);
            if let Some(e) = evicted {
                assert_eq!(e.weights.handle_count(), 1, "evicted a held entry");
            }
        }

        fn validate(cache: &ShuttleCache) {
            if let Err(e) = cache.validate() {
                panic!("{e}");
            }
        }

        /// Handles each run takes from the pool.
        const HANDLES: usize = 4;

        /// One run: four threads on one cache of three layers.
        fn schedule(
            kind: PolicyKind,
            pool: Arc<std::sync::Mutex<Vec<LayerWeights>>>,
        ) -> impl Fn() + Send + Sync + 'static {
            move || {
                let cache: ShuttleCache = Arc::new(Cache::with_locks(kind, 3, 0));
                let mut w = {
                    let mut pool = pool.lock().unwrap();
                    let rest = pool.len().checked_sub(HANDLES).expect("pool too small");
                    pool.split_off(rest)
                };
                let (w0, w1, w2, w3) = (w.pop(), w.pop(), w.pop(), w.pop());
                let (w0, w1, w2, w3) = (w0.unwrap(), w1.unwrap(), w2.unwrap(), w3.unwrap());
                let threads = [
                    shuttle::thread::spawn({
                        let c = Arc::clone(&cache);
                        move || {
                            fetch(&c, 0, Origin::Demand, w0, false);
                            fetch(&c, 1, Origin::Demand, w1, false);
                        }
                    }),
                    shuttle::thread::spawn({
                        let c = Arc::clone(&cache);
                        move || {
                            fetch(&c, 0, Origin::Prefetch, w2, false);
                            drop(c.remove(1));
                            validate(&c);
                        }
                    }),
                    shuttle::thread::spawn({
                        let c = Arc::clone(&cache);
                        move || {
                            drop(c.remove(0));
                            evict(&c, Origin::Demand);
                            fetch(&c, 2, Origin::Demand, w3, true);
                        }
                    }),
                    shuttle::thread::spawn({
                        let c = Arc::clone(&cache);
                        move || {
                            validate(&c);
                            let held = c.get_ready(0);
                            evict(&c, Origin::Prefetch);
                            drop(held);
                            validate(&c);
                        }
                    }),
                ];
                for t in threads {
                    t.join().unwrap();
                }
                validate(&cache);
                drop(cache.drain());
                validate(&cache);
                assert_eq!(cache.lock_policy().resident_count(), 0);
            }
        }

        fn check(kind: PolicyKind) {
            const ITERATIONS: usize = 1000;
            let seed = std::env::var("HYPERION_SHUTTLE_SEED")
                .map_or(0x4859_5045, |s| s.parse().expect("HYPERION_SHUTTLE_SEED"));
            let pool = Arc::new(std::sync::Mutex::new(reads(ITERATIONS * HANDLES)));
            shuttle::check_random_with_seed(schedule(kind, pool), seed, ITERATIONS);
        }

        #[test]
        fn the_policy_tracks_the_ready_slots_under_random_schedules_lru() {
            check(PolicyKind::Lru);
        }

        #[test]
        fn the_policy_tracks_the_ready_slots_under_random_schedules_adaptive() {
            check(PolicyKind::Adaptive);
        }
    }
}
