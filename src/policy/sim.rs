//! Trace simulation: a cache of uniform entries driven by [`Policy`], and
//! Belady's optimal offline policy for comparison.

use std::collections::BTreeSet;

use super::{Policy, PolicyKind};

/// Hits and misses of one simulated run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimResult {
    /// Accesses that found their layer cached.
    pub hits: u64,
    /// Accesses that had to read their layer.
    pub misses: u64,
}

impl SimResult {
    /// All accesses.
    pub fn accesses(&self) -> u64 {
        self.hits + self.misses
    }

    /// Hits over accesses, 0 for an empty trace.
    pub fn hit_rate(&self) -> f64 {
        match self.accesses() {
            0 => 0.0,
            n => self.hits as f64 / n as f64,
        }
    }
}

/// How [`simulate_with`] delivers accesses to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replay {
    /// Each access is recorded when it happens.
    #[default]
    Immediate,
    /// As the concurrent cache does: accesses are only counted (per layer:
    /// how many, and when the last was) and replayed just before each
    /// eviction decision, each layer once, in the order of their last
    /// accesses. A miss with room to spare inserts its layer before its
    /// access is replayed.
    BatchedByLastUse,
    /// Like `BatchedByLastUse`, but replayed in layer order: the worst
    /// case of a replay that does not keep the order of last accesses.
    BatchedByLayer,
}

/// Replays `trace` through a cache of `capacity` equal-sized entries
/// evicting by `kind`, and counts hits and misses.
///
/// Each access calls [`Policy::on_access`]; a miss evicts with
/// [`Policy::victim`] (every resident layer a candidate, all priorities
/// equal) until there is room, then calls [`Policy::on_insert`]. A capacity
/// of 0 caches nothing.
///
/// # Panics
///
/// If a layer in `trace` is not below `layers`.
pub fn simulate(kind: PolicyKind, trace: &[usize], layers: usize, capacity: usize) -> SimResult {
    simulate_with(kind, trace, layers, capacity, Replay::Immediate)
}

/// [`simulate`], with accesses delivered to the policy as `replay` says.
///
/// # Panics
///
/// If a layer in `trace` is not below `layers`.
pub fn simulate_with(
    kind: PolicyKind,
    trace: &[usize],
    layers: usize,
    capacity: usize,
    replay: Replay,
) -> SimResult {
    let mut policy = Policy::new(kind, layers);
    let mut result = SimResult::default();
    // Per layer: the tick of its last unreplayed access, if any.
    let mut pending: Vec<Option<usize>> = vec![None; layers];
    let mut dirty: Vec<usize> = Vec::new();
    for (tick, &x) in trace.iter().enumerate() {
        assert!(x < layers, "layer {x} in the trace, but {layers} layers");
        let hit = policy.is_resident(x);
        if hit {
            result.hits += 1;
        } else {
            result.misses += 1;
        }
        if replay == Replay::Immediate {
            policy.on_access(x);
        } else {
            if pending[x].is_none() {
                dirty.push(x);
            }
            pending[x] = Some(tick);
        }
        if hit || capacity == 0 {
            continue;
        }
        if policy.resident_count() >= capacity {
            match replay {
                Replay::Immediate => {}
                Replay::BatchedByLastUse => dirty.sort_by_key(|&l| pending[l]),
                Replay::BatchedByLayer => dirty.sort_unstable(),
            }
            for l in dirty.drain(..) {
                pending[l] = None;
                policy.on_access(l);
            }
        }
        while policy.resident_count() >= capacity {
            let victim = policy
                .victim(|_| true, |_| 0.0)
                .expect("a full cache has a victim when every layer is a candidate");
            policy.on_remove(victim);
        }
        policy.on_insert(x);
    }
    result
}

/// Belady's optimal offline policy (MIN) on `trace` with room for
/// `capacity` entries: on a miss with the cache full, evict the resident
/// layer whose next use is furthest in the future (or never comes). No
/// online policy has more hits on the same trace and capacity.
pub fn belady(trace: &[usize], capacity: usize) -> SimResult {
    let never = usize::MAX;
    // next[i]: the position of the next access to trace[i] after i.
    let mut next = vec![never; trace.len()];
    let mut seen: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for (i, &x) in trace.iter().enumerate().rev() {
        next[i] = seen.insert(x, i).unwrap_or(never);
    }
    // Resident layers keyed by (next use, layer); a layer's current key.
    let mut resident: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut key_of: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let mut result = SimResult::default();
    for (i, &x) in trace.iter().enumerate() {
        if let Some(old) = key_of.get(&x) {
            result.hits += 1;
            resident.remove(&(*old, x));
        } else {
            result.misses += 1;
            if capacity == 0 {
                continue;
            }
            if resident.len() >= capacity {
                let (_, victim) = resident.pop_last().expect("full, so not empty");
                key_of.remove(&victim);
            }
        }
        resident.insert((next[i], x));
        key_of.insert(x, next[i]);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn belady_on_a_small_example() {
        let trace = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1];
        // Silberschatz's example: OPT with 3 frames has 9 page faults.
        assert_eq!(belady(&trace, 3).misses, 9);
        assert_eq!(belady(&trace, 0).hits, 0);
        assert_eq!(belady(&trace, 100).misses, 6);
    }

    #[test]
    fn lru_on_the_same_example() {
        let trace = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1];
        // Silberschatz's example: LRU with 3 frames has 12 page faults.
        let r = simulate(PolicyKind::Lru, &trace, 8, 3);
        assert_eq!(r.misses, 12);
        assert_eq!(r.accesses(), 20);
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        for kind in [PolicyKind::Lru, PolicyKind::Adaptive] {
            let r = simulate(kind, &[1, 1, 1], 2, 0);
            assert_eq!((r.hits, r.misses), (0, 3));
        }
    }
}
