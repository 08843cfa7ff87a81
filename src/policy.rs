//! The eviction policy: which cached layer to evict when memory is needed.
//!
//! [`Policy`] is a single-threaded core. The concurrent cache feeds it what
//! happens (accesses, insertions, removals) and asks it for a victim when it
//! must free memory; the policy never decides *when* to evict (the byte
//! budget does) or what is evictable (the cache passes a filter).
//!
//! Two kinds ([`PolicyKind`]):
//!
//! - [`PolicyKind::Lru`]: evict the least recently used layer.
//! - [`PolicyKind::Adaptive`]: LIRS, which tells layers reused at short
//!   distances from the rest, so a pass that cycles through more layers than
//!   fit keeps a stable resident set instead of missing on every access;
//!   and LRU instead while two shadow caches (one LIRS, one LRU, layer
//!   numbers only) show that recency serves the current accesses better.
//!   See `docs/caching.md` for the designs considered and the measurements.
//!
//! With either kind, user priorities come first: the victim is always a
//! candidate of the lowest priority present, and the policy only orders
//! layers of equal priority.
//!
//! [`simulate`] and [`belady`] replay traces (see [`traces`]) through the
//! same code, for the `hyperion simulate` command and the tests.

mod duel;
mod lirs;
mod list;
mod sim;
pub mod traces;

pub use sim::{belady, simulate, simulate_with, Replay, SimResult};

use duel::{Duel, Expert};
use lirs::Lirs;
use list::List;

/// Which eviction policy a [`Policy`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Least recently used first (`adaptive_caching = false`).
    Lru,
    /// Learns from the access pattern (`adaptive_caching = true`): LIRS,
    /// or LRU while LRU does better on the recent accesses.
    Adaptive,
}

impl PolicyKind {
    /// The kind's name on the command line: `lru` or `adaptive`.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Adaptive => "adaptive",
        }
    }
}

/// The eviction policy of one model's cache: a single-threaded core that
/// observes accesses, insertions and removals, and picks victims.
///
/// The protocol, for each layer: every fetch calls [`on_access`] (hit or
/// miss); when the layer's bytes are cached, [`on_insert`]; when they leave
/// the cache (evicted or released), [`on_remove`]. A layer may be inserted
/// without an access (a prefetch), and an access may never be followed by an
/// insertion (a failed read). Insertions of a resident layer and removals of
/// a layer that is not resident are ignored, so the core stays consistent if
/// the cache races with itself.
///
/// # Batched and reordered accesses
///
/// A repeated access to the layer accessed last changes nothing, so calling
/// [`on_access`] `k` times in a row for one layer is the same as calling it
/// once. A cache that records hits lock-free and replays them before each
/// eviction decision should replay each layer once, in the order of the
/// layers' last accesses (see [`Replay`]); replaying in another order, or
/// inserting a layer before its access is replayed, changes the decisions
/// only slightly (measured in `docs/caching.md`).
///
/// # Cost
///
/// With `n` layers: memory O(n); [`on_access`], [`on_insert`] and
/// [`on_remove`] are O(1) amortised; [`victim`] is O(n) in the worst case
/// (it visits resident layers in eviction order, calling the filter and the
/// priority once each).
///
/// [`on_access`]: Policy::on_access
/// [`on_insert`]: Policy::on_insert
/// [`on_remove`]: Policy::on_remove
/// [`victim`]: Policy::victim
///
/// # Example
///
/// ```
/// use hyperion::policy::{Policy, PolicyKind};
///
/// let mut policy = Policy::new(PolicyKind::Adaptive, 4);
/// for layer in [0, 1, 2] {
///     policy.on_access(layer);
///     policy.on_insert(layer);
/// }
/// // Layer 0 is held by a caller; layer 2 has a high priority.
/// let victim = policy.victim(|l| l != 0, |l| if l == 2 { 9.0 } else { 0.0 });
/// assert_eq!(victim, Some(1));
/// policy.on_remove(1);
/// policy.validate().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    kind: PolicyKind,
    /// Resident layers, least recently used first (both kinds).
    lru: List,
    /// The LIRS state (`Adaptive` only).
    lirs: Option<Lirs>,
    /// Whether to follow LIRS or LRU (`Adaptive` only, once the capacity
    /// is known).
    duel: Option<Duel>,
    /// The layer of the latest access, to count repeats once.
    last_access: Option<usize>,
    capacity_hint: Option<usize>,
    /// Entries kept unprotected for prefetched layers.
    prefetch_reserve: usize,
    /// Resident entries seen when the current run of evictions began.
    observed_capacity: Option<usize>,
    /// Set by `victim`, cleared by `on_insert`: later victims of one run of
    /// evictions (one insertion that needs several) see fewer entries and do
    /// not lower the estimate.
    evicting: bool,
}

impl Policy {
    /// A policy for a model of `layers` layers, none of them resident.
    pub fn new(kind: PolicyKind, layers: usize) -> Self {
        Self {
            kind,
            lru: List::new(layers),
            lirs: (kind == PolicyKind::Adaptive).then(|| Lirs::new(layers)),
            duel: None,
            last_access: None,
            capacity_hint: None,
            prefetch_reserve: 0,
            observed_capacity: None,
            evicting: false,
        }
    }

    /// The kind this policy runs.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// Whether `layer` is resident (inserted and not removed since).
    ///
    /// # Panics
    ///
    /// If `layer` is not below the number of layers given to [`Policy::new`]
    /// (as do all methods that take a layer).
    pub fn is_resident(&self, layer: usize) -> bool {
        self.lru.contains(layer)
    }

    /// Whether the adaptive policy protects `layer`: it is resident and was
    /// reused at a short distance (a LIR layer), so the LIRS expert evicts it
    /// only after every unprotected resident layer. Always false for
    /// [`PolicyKind::Lru`].
    pub fn is_protected(&self, layer: usize) -> bool {
        self.lirs.as_ref().is_some_and(|l| l.is_lir(layer))
    }

    /// The number of resident layers.
    pub fn resident_count(&self) -> usize {
        self.lru.len()
    }

    /// The resident layers, least recently used first (the LRU order, whatever
    /// the kind), so a cache can check them against what it holds.
    pub fn resident_layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.lru.iter()
    }

    /// The capacity, in entries, the policy plans for: the hint if one was
    /// given, otherwise the number of resident layers when the latest run of
    /// evictions began, or `None` before the first eviction.
    pub fn capacity(&self) -> Option<usize> {
        self.capacity_hint.or(self.observed_capacity)
    }

    /// Tells the policy how many entries the cache holds when full (for
    /// layers of unequal sizes, the budget over a typical footprint). `None`
    /// (the default) lets the policy observe it: the number of resident
    /// layers when the cache first asks for a victim after an insertion.
    /// Only [`PolicyKind::Adaptive`] uses it (to size its protected set).
    pub fn set_capacity_hint(&mut self, entries: Option<usize>) {
        self.capacity_hint = entries;
        self.apply_capacity();
    }

    /// How many resident entries are left unprotected for layers read ahead
    /// of use. By default (0) the adaptive policy protects all but 1% of the
    /// capacity (at least one entry, which is typically the layer in use), so
    /// a speculative read, which may not evict a protected layer (see
    /// [`Policy::speculative_victim`]), rarely finds room. Only
    /// [`PolicyKind::Adaptive`] uses it.
    pub fn prefetch_reserve(&self) -> usize {
        self.prefetch_reserve
    }

    /// Leaves `entries` more resident entries unprotected; see
    /// [`Policy::prefetch_reserve`]. Set it to the prefetch lookahead.
    pub fn set_prefetch_reserve(&mut self, entries: usize) {
        self.prefetch_reserve = entries;
        self.apply_capacity();
    }

    /// Records a fetch of `layer`, hit or miss, in the order fetches happen.
    pub fn on_access(&mut self, layer: usize) {
        if self.lru.contains(layer) {
            self.lru.move_to_back(layer);
        }
        if self.last_access == Some(layer) {
            return;
        }
        self.last_access = Some(layer);
        if let Some(lirs) = &mut self.lirs {
            lirs.access(layer);
        }
        if let Some(duel) = &mut self.duel {
            duel.access(layer);
        }
    }

    /// Records that `layer`'s bytes are now cached.
    pub fn on_insert(&mut self, layer: usize) {
        self.evicting = false;
        if self.lru.contains(layer) {
            return;
        }
        self.lru.push_back(layer);
        if let Some(lirs) = &mut self.lirs {
            lirs.insert(layer);
        }
    }

    /// Records that `layer`'s bytes left the cache (evicted or released).
    pub fn on_remove(&mut self, layer: usize) {
        self.lru.remove(layer);
        if let Some(lirs) = &mut self.lirs {
            lirs.remove(layer);
        }
    }

    /// The resident layer to evict: among layers for which `candidate` is
    /// true (the cache passes "resident and unheld"), the lowest `priority`
    /// first, then the policy's choice; `None` if no resident layer is a
    /// candidate.
    ///
    /// It does not remove the layer: the cache calls [`Policy::on_remove`]
    /// once it has. `candidate` is only asked about resident layers, and
    /// `priority` only about candidates, each at most once. A NaN priority
    /// counts as +∞.
    pub fn victim(
        &mut self,
        candidate: impl Fn(usize) -> bool,
        priority: impl Fn(usize) -> f32,
    ) -> Option<usize> {
        self.observe_capacity();
        match (&self.lirs, self.expert()) {
            (Some(lirs), Expert::Lirs) => lowest(lirs.eviction_order(), candidate, priority),
            _ => lowest(self.lru.iter(), candidate, priority),
        }
    }

    /// [`Policy::victim`] for a speculative read (a prefetch): the same,
    /// except that while the adaptive policy follows LIRS it never offers a
    /// protected layer, and returns `None` when only protected layers are
    /// candidates. A read that may never be used should not push out a layer
    /// the policy knows is reused; the cache skips the prefetch instead. Give
    /// the policy a [`prefetch reserve`](Policy::set_prefetch_reserve) as
    /// deep as the lookahead, so that prefetches find unprotected room.
    pub fn speculative_victim(
        &mut self,
        candidate: impl Fn(usize) -> bool,
        priority: impl Fn(usize) -> f32,
    ) -> Option<usize> {
        self.observe_capacity();
        match (&self.lirs, self.expert()) {
            (Some(lirs), Expert::Lirs) => lowest(lirs.unprotected_order(), candidate, priority),
            _ => lowest(self.lru.iter(), candidate, priority),
        }
    }

    /// At the first victim after an insertion: the resident count is the
    /// capacity (see [`Policy::capacity`]).
    fn observe_capacity(&mut self) {
        if !self.evicting {
            self.evicting = true;
            self.observed_capacity = Some(self.lru.len());
            self.apply_capacity();
        }
    }

    /// The expert the adaptive policy follows now; LRU for the LRU kind.
    fn expert(&self) -> Expert {
        match (&self.lirs, &self.duel) {
            (None, _) => Expert::Lru,
            (Some(_), None) => Expert::Lirs,
            (Some(_), Some(duel)) => duel.expert(),
        }
    }

    /// Whether the adaptive policy follows LRU now (its access pattern
    /// favours recency); always true for [`PolicyKind::Lru`].
    pub fn follows_lru(&self) -> bool {
        self.expert() == Expert::Lru
    }

    fn apply_capacity(&mut self) {
        let capacity = self.capacity();
        let Some(lirs) = &mut self.lirs else {
            return;
        };
        lirs.set_capacity(capacity, self.prefetch_reserve);
        match (&mut self.duel, capacity) {
            (Some(duel), Some(c)) => duel.set_capacity(c),
            (None, Some(c)) => self.duel = Some(Duel::new(c, lirs.clone(), self.lru.clone())),
            (_, None) => {}
        }
    }

    /// Checks the internal invariants; `Err` describes the first broken one.
    ///
    /// The lists are well formed and agree on which layers are resident; for
    /// [`PolicyKind::Adaptive`], every protected (LIR) layer is resident and
    /// on the recency stack, whose bottom is protected; the queue holds
    /// exactly the resident unprotected layers; and there are no more
    /// protected layers than the capacity allows.
    pub fn validate(&self) -> Result<(), String> {
        self.lru.validate("LRU list")?;
        if let Some(lirs) = &self.lirs {
            lirs.validate()?;
            if lirs.resident_count() != self.lru.len() {
                return Err(format!(
                    "LIRS has {} resident layers, the LRU list {}",
                    lirs.resident_count(),
                    self.lru.len()
                ));
            }
            if let Some(x) = self.lru.iter().find(|&x| !lirs.is_resident(x)) {
                return Err(format!("layer {x} resident for LRU but not for LIRS"));
            }
        }
        if let Some(duel) = &self.duel {
            duel.validate()?;
        }
        Ok(())
    }
}

/// The first layer of `order` that is a candidate of the lowest priority.
fn lowest(
    order: impl Iterator<Item = usize>,
    candidate: impl Fn(usize) -> bool,
    priority: impl Fn(usize) -> f32,
) -> Option<usize> {
    let mut best: Option<(f32, usize)> = None;
    for x in order.filter(|&x| candidate(x)) {
        let p = priority(x);
        let p = if p.is_nan() { f32::INFINITY } else { p };
        if best.is_none_or(|(q, _)| p < q) {
            best = Some((p, x));
        }
    }
    best.map(|(_, x)| x)
}
