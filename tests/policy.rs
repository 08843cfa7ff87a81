//! The eviction policy core (`hyperion::policy`): invariants under random
//! operation sequences, Belady's optimality, the named scenarios of issue 5
//! (cyclic passes, skewed and recency-friendly traces, user priorities), and
//! the `hyperion simulate` command.
//!
//! "Not worse than LRU by more than a few percent" is tested as: the adaptive
//! hit rate is at least LRU's minus 0.03 (three points of hit rate,
//! absolute). Three points is the cost the design accepts for switching
//! experts late; measured, the adaptive policy is above LRU on every Zipf
//! trace and within half a point of it on the recency-friendly ones
//! (`docs/caching.md`).

use std::cell::RefCell;
use std::collections::BTreeSet;

use hyperion::policy::{
    belady, simulate, simulate_with, traces, Policy, PolicyKind, Replay, SimResult,
};
use proptest::prelude::*;

const KINDS: [PolicyKind; 2] = [PolicyKind::Lru, PolicyKind::Adaptive];
const REPLAYS: [Replay; 3] = [
    Replay::Immediate,
    Replay::BatchedByLastUse,
    Replay::BatchedByLayer,
];

// --- Random operation sequences ------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Access(usize),
    Insert(usize),
    Remove(usize),
    /// Bit `l` of `mask` says whether layer `l` is a candidate; `priorities`
    /// are small integers so that ties are common.
    Victim {
        mask: u32,
        priorities: Vec<i8>,
    },
    /// `speculative_victim`, with the same arguments as `Victim`.
    Speculative {
        mask: u32,
        priorities: Vec<i8>,
    },
    Hint(Option<usize>),
    Reserve(usize),
}

fn op(layers: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..layers).prop_map(Op::Access),
        3 => (0..layers).prop_map(Op::Insert),
        1 => (0..layers).prop_map(Op::Remove),
        2 => (any::<u32>(), prop::collection::vec(-2i8..3, layers))
            .prop_map(|(mask, priorities)| Op::Victim { mask, priorities }),
        1 => (any::<u32>(), prop::collection::vec(-2i8..3, layers))
            .prop_map(|(mask, priorities)| Op::Speculative { mask, priorities }),
        1 => prop::option::of(0..layers + 2).prop_map(Op::Hint),
        1 => (0..4usize).prop_map(Op::Reserve),
    ]
}

fn ops() -> impl Strategy<Value = (usize, Vec<Op>)> {
    (1usize..12).prop_flat_map(|layers| (Just(layers), prop::collection::vec(op(layers), 0..300)))
}

/// Applies `ops` to a policy of `kind`, checking after every step that the
/// invariants hold, that residency is what the operations made it, and that
/// every victim is a resident candidate of the lowest priority present.
fn drive(kind: PolicyKind, layers: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut policy = Policy::new(kind, layers);
    let mut resident = BTreeSet::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Access(l) => policy.on_access(*l),
            Op::Insert(l) => {
                policy.on_insert(*l);
                resident.insert(*l);
            }
            Op::Remove(l) => {
                policy.on_remove(*l);
                resident.remove(l);
            }
            Op::Hint(h) => policy.set_capacity_hint(*h),
            Op::Reserve(r) => policy.set_prefetch_reserve(*r),
            Op::Victim { mask, priorities } => {
                check_victim(&mut policy, &resident, *mask, priorities, false, step)?;
            }
            Op::Speculative { mask, priorities } => {
                check_victim(&mut policy, &resident, *mask, priorities, true, step)?;
            }
        }
        if let Err(e) = policy.validate() {
            return Err(TestCaseError::fail(format!("step {step} ({op:?}): {e}")));
        }
        prop_assert_eq!(policy.resident_count(), resident.len());
        for l in 0..layers {
            prop_assert_eq!(policy.is_resident(l), resident.contains(&l));
            prop_assert!(!policy.is_protected(l) || resident.contains(&l));
        }
    }
    Ok(())
}

/// Calls `victim` (or `speculative_victim`) with the filter `mask` and the
/// given priorities, and checks the answer: only resident layers are
/// offered, each once; the victim is a candidate of the lowest priority among
/// the candidates it may choose from (for a speculative victim while the
/// policy follows LIRS: the unprotected ones); `None` only if there is none.
fn check_victim(
    policy: &mut Policy,
    resident: &BTreeSet<usize>,
    mask: u32,
    priorities: &[i8],
    speculative: bool,
    step: usize,
) -> Result<(), TestCaseError> {
    let is_candidate = |l: usize| mask & (1 << l) != 0;
    let asked = RefCell::new(Vec::new());
    let prioritised = RefCell::new(Vec::new());
    let filter = |l| {
        asked.borrow_mut().push(l);
        is_candidate(l)
    };
    let priority = |l: usize| {
        prioritised.borrow_mut().push(l);
        f32::from(priorities[l])
    };
    let victim = if speculative {
        policy.speculative_victim(filter, priority)
    } else {
        policy.victim(filter, priority)
    };
    let asked = asked.into_inner();
    let prioritised = prioritised.into_inner();
    let asked_set: BTreeSet<usize> = asked.iter().copied().collect();
    prop_assert_eq!(
        asked.len(),
        asked_set.len(),
        "step {}: a layer asked twice",
        step
    );
    prop_assert!(
        asked_set.is_subset(resident),
        "step {}: asked {:?}",
        step,
        asked
    );
    let prioritised_set: BTreeSet<usize> = prioritised.iter().copied().collect();
    prop_assert_eq!(prioritised.len(), prioritised_set.len());
    prop_assert!(prioritised.iter().all(|&l| is_candidate(l)));
    let spare_protected = speculative && !policy.follows_lru();
    let eligible: Vec<usize> = resident
        .iter()
        .copied()
        .filter(|&l| is_candidate(l) && !(spare_protected && policy.is_protected(l)))
        .collect();
    if !spare_protected {
        // A plain victim (or LRU's) considers every resident layer.
        prop_assert_eq!(&asked_set, resident, "step {}: asked {:?}", step, asked);
    }
    match victim {
        None => prop_assert!(
            eligible.is_empty(),
            "step {}: no victim among {:?}",
            step,
            eligible
        ),
        Some(v) => {
            prop_assert!(eligible.contains(&v), "step {}: {} not eligible", step, v);
            let lowest = eligible.iter().map(|&l| priorities[l]).min().unwrap();
            prop_assert_eq!(priorities[v], lowest, "step {}: priority ignored", step);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_operations_keep_the_invariants((layers, ops) in ops()) {
        for kind in KINDS {
            drive(kind, layers, &ops)?;
        }
    }

    /// Operations as the cache issues them: an access per fetch, evictions
    /// (the victim removed) when full, then the insertion of a miss; with
    /// random holds and priorities.
    #[test]
    fn cache_like_sequences_keep_the_invariants(
        layers in 2usize..16,
        capacity in 1usize..8,
        steps in prop::collection::vec((0usize..16, any::<u32>(), 0u8..3), 0..400),
    ) {
        for kind in KINDS {
            let mut policy = Policy::new(kind, layers);
            for &(l, held, prio) in &steps {
                let l = l % layers;
                policy.on_access(l);
                if !policy.is_resident(l) {
                    while policy.resident_count() >= capacity {
                        let victim = policy.victim(
                            |x| held & (1 << x) == 0,
                            |x| f32::from((x as u8).wrapping_mul(prio) % 3),
                        );
                        match victim {
                            Some(v) => policy.on_remove(v),
                            None => break,
                        }
                    }
                    policy.on_insert(l);
                }
                policy.validate().map_err(TestCaseError::fail)?;
            }
        }
    }

    /// Belady's MIN is optimal: no policy, under any replay, has more hits.
    #[test]
    fn belady_is_never_beaten(
        layers in 1usize..9,
        capacity in 0usize..7,
        raw in prop::collection::vec(0usize..9, 0..300),
    ) {
        let trace: Vec<usize> = raw.iter().map(|x| x % layers).collect();
        let best = belady(&trace, capacity);
        prop_assert_eq!(best.accesses(), trace.len() as u64);
        for kind in KINDS {
            for replay in REPLAYS {
                let r = simulate_with(kind, &trace, layers, capacity, replay);
                prop_assert_eq!(r.accesses(), trace.len() as u64);
                prop_assert!(r.hits <= best.hits, "{:?} {:?}: {:?} > {:?}", kind, replay, r, best);
            }
        }
    }

    /// On tiny traces, Belady's misses equal the true optimum found by
    /// searching every eviction choice.
    #[test]
    fn belady_matches_exhaustive_search(
        layers in 1usize..6,
        capacity in 1usize..4,
        raw in prop::collection::vec(0usize..6, 0..14),
    ) {
        let trace: Vec<usize> = raw.iter().map(|x| x % layers).collect();
        prop_assert_eq!(belady(&trace, capacity).misses, exhaustive_min_misses(&trace, capacity));
    }
}

/// The fewest misses of any eviction schedule: breadth over the sets of
/// resident layers (bitmasks) reachable after each access.
fn exhaustive_min_misses(trace: &[usize], capacity: usize) -> u64 {
    use std::collections::HashMap;
    let mut states: HashMap<u32, u64> = HashMap::from([(0, 0)]);
    for &x in trace {
        let bit = 1u32 << x;
        let mut next: HashMap<u32, u64> = HashMap::new();
        for (&set, &misses) in &states {
            let mut offer = |s: u32, m: u64| {
                let e = next.entry(s).or_insert(m);
                *e = (*e).min(m);
            };
            if set & bit != 0 {
                offer(set, misses);
            } else if (set.count_ones() as usize) < capacity {
                offer(set | bit, misses + 1);
            } else {
                for v in 0..32 {
                    if set & (1 << v) != 0 {
                        offer((set & !(1 << v)) | bit, misses + 1);
                    }
                }
            }
        }
        states = next;
    }
    states.into_values().min().unwrap_or(0)
}

// --- Named scenarios -----------------------------------------------------------

fn rate(r: SimResult) -> f64 {
    r.hit_rate()
}

#[test]
fn cyclic_64_layers_16_slots_adaptive_reaches_nine_tenths_of_belady_and_lru_hits_nothing() {
    let trace = traces::cyclic(64, 20);
    let best = rate(belady(&trace, 16));
    let lru = simulate(PolicyKind::Lru, &trace, 64, 16);
    assert_eq!(lru.hits, 0, "LRU on a loop larger than the cache");
    for replay in REPLAYS {
        let adaptive = rate(simulate_with(PolicyKind::Adaptive, &trace, 64, 16, replay));
        assert!(
            adaptive >= 0.9 * best,
            "{replay:?}: adaptive {adaptive:.3} vs Belady {best:.3}"
        );
    }
}

/// Accesses `l` as a cache with room for `capacity` layers does: on a miss,
/// evicts the policy's victims (nothing held, equal priorities) until there
/// is room, then inserts `l`. Returns whether the access hit.
fn access(policy: &mut Policy, l: usize, capacity: usize) -> bool {
    policy.on_access(l);
    if policy.is_resident(l) {
        return true;
    }
    while policy.resident_count() >= capacity {
        let v = policy.victim(|_| true, |_| 0.0).unwrap();
        policy.on_remove(v);
    }
    policy.on_insert(l);
    false
}

#[test]
fn cyclic_passes_keep_a_stable_protected_set() {
    let (layers, capacity) = (64, 16);
    let mut policy = Policy::new(PolicyKind::Adaptive, layers);
    let mut protected_after_pass = Vec::new();
    let mut hits_per_pass = Vec::new();
    for _ in 0..10 {
        let mut hits = 0;
        for l in 0..layers {
            hits += access(&mut policy, l, capacity) as usize;
        }
        hits_per_pass.push(hits);
        let protected: Vec<usize> = (0..layers).filter(|&l| policy.is_protected(l)).collect();
        protected_after_pass.push(protected);
        assert!(!policy.follows_lru());
    }
    // After the first pass: capacity − 1 protected layers, the same ones,
    // each hit every pass; the one unprotected slot streams the rest.
    assert_eq!(hits_per_pass[0], 0);
    assert!(
        hits_per_pass[1..].iter().all(|&h| h == capacity - 1),
        "{hits_per_pass:?}"
    );
    assert_eq!(protected_after_pass[1].len(), capacity - 1);
    assert!(protected_after_pass[1..].windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn cyclic_half_capacity_and_other_sizes_stay_near_belady() {
    for (layers, capacity) in [
        (16, 4),
        (64, 32),
        (256, 64),
        (256, 128),
        (1000, 250),
        (100, 99),
    ] {
        let trace = traces::cyclic(layers, 20);
        let best = rate(belady(&trace, capacity));
        let adaptive = rate(simulate(PolicyKind::Adaptive, &trace, layers, capacity));
        assert!(
            adaptive >= 0.9 * best,
            "{layers} layers, {capacity} slots: adaptive {adaptive:.3} vs Belady {best:.3}"
        );
    }
}

/// Adaptive ≥ LRU − 0.03 (absolute hit rate), with every replay.
fn assert_not_worse_than_lru(name: &str, trace: &[usize], layers: usize) {
    for capacity in [layers / 4, layers / 2] {
        let lru = rate(simulate(PolicyKind::Lru, trace, layers, capacity));
        for replay in REPLAYS {
            let adaptive = rate(simulate_with(
                PolicyKind::Adaptive,
                trace,
                layers,
                capacity,
                replay,
            ));
            assert!(
                adaptive >= lru - 0.03,
                "{name}, {layers} layers, capacity {capacity}, {replay:?}: \
                 adaptive {adaptive:.3} vs LRU {lru:.3}"
            );
        }
    }
}

#[test]
fn zipf_adaptive_is_not_worse_than_lru() {
    for layers in [64, 256] {
        for exponent in [0.8, 1.0, 1.2] {
            for seed in [1, 2] {
                let trace = traces::zipf(layers, 50_000, exponent, seed);
                assert_not_worse_than_lru(&format!("zipf {exponent} seed {seed}"), &trace, layers);
            }
        }
    }
}

#[test]
fn mixed_adaptive_is_not_worse_than_lru() {
    for layers in [64, 256] {
        for seed in [1, 2, 3] {
            let trace = traces::mixed(layers, 50_000, seed);
            assert_not_worse_than_lru(&format!("mixed seed {seed}"), &trace, layers);
        }
    }
}

#[test]
fn on_recency_friendly_traces_the_adaptive_policy_follows_lru() {
    let layers = 64;
    let mut policy = Policy::new(PolicyKind::Adaptive, layers);
    let trace = traces::mixed(layers, 20_000, 1);
    let mut followed_lru = 0;
    for &l in &trace {
        access(&mut policy, l, 16);
        followed_lru += policy.follows_lru() as usize;
    }
    assert!(
        followed_lru > trace.len() / 2,
        "{followed_lru} of {}",
        trace.len()
    );
}

#[test]
fn user_priorities_win_over_what_the_policy_learned() {
    let (layers, capacity) = (8, 4);
    for kind in KINDS {
        let mut policy = Policy::new(kind, layers);
        // Warm up on a loop so that the adaptive policy protects 0, 1, 2.
        for _ in 0..5 {
            for l in 0..layers {
                access(&mut policy, l, capacity);
            }
        }
        let resident: Vec<usize> = (0..layers).filter(|&l| policy.is_resident(l)).collect();
        assert_eq!(resident.len(), capacity);
        let preferred = policy.victim(|_| true, |_| 0.0).unwrap();
        // Every other resident layer in turn gets the lowest priority: it is
        // the victim, whatever the policy learned.
        for &low in &resident {
            let v = policy.victim(|_| true, |l| if l == low { -1.0 } else { 0.0 });
            assert_eq!(v, Some(low), "{kind:?}");
        }
        // A higher priority protects the preferred victim.
        let v = policy
            .victim(|_| true, |l| if l == preferred { 5.0 } else { 0.0 })
            .unwrap();
        assert_ne!(v, preferred);
        // Held (not a candidate): the next choice, still by priority.
        let v = policy.victim(|l| l != preferred, |_| 0.0).unwrap();
        assert_ne!(v, preferred);
        assert!(resident.contains(&v));
        // NaN counts as +∞: never chosen over a number.
        let v = policy
            .victim(|_| true, |l| if l == preferred { f32::NAN } else { 1.0 })
            .unwrap();
        assert_ne!(v, preferred);
        // Nothing evictable.
        assert_eq!(policy.victim(|_| false, |_| 0.0), None);
        policy.validate().unwrap();
    }
}

#[test]
fn the_adaptive_policy_prefers_unprotected_layers_and_falls_back_when_they_are_held() {
    let (layers, capacity) = (8, 4);
    let mut policy = Policy::new(PolicyKind::Adaptive, layers);
    for _ in 0..5 {
        for l in 0..layers {
            access(&mut policy, l, capacity);
        }
    }
    let unprotected: Vec<usize> = (0..layers)
        .filter(|&l| policy.is_resident(l) && !policy.is_protected(l))
        .collect();
    assert_eq!(unprotected.len(), 1);
    let v = policy.victim(|_| true, |_| 0.0).unwrap();
    assert_eq!(v, unprotected[0]);
    // The unprotected layer is held: a protected one goes instead.
    let v = policy.victim(|l| l != unprotected[0], |_| 0.0).unwrap();
    assert!(policy.is_protected(v));
}

/// Passes over `n` layers with `c` slots, prefetching `k` layers ahead as
/// the loader does (the layer in use is held; a prefetch never evicts a
/// prefetched layer not used yet), prefetches evicting by
/// `speculative_victim` with a reserve of `k`. Returns the demand misses and
/// the reads of each pass.
fn passes_with_lookahead(n: usize, c: usize, k: usize, passes: usize) -> Vec<(usize, usize)> {
    let mut policy = Policy::new(PolicyKind::Adaptive, n);
    policy.set_prefetch_reserve(k);
    let mut unused = vec![false; n];
    let mut out = Vec::new();
    for _ in 0..passes {
        let (mut misses, mut reads) = (0, 0);
        for i in 0..n {
            policy.on_access(i);
            unused[i] = false;
            if !policy.is_resident(i) {
                while policy.resident_count() >= c {
                    let v = policy.victim(|_| true, |_| 0.0).unwrap();
                    policy.on_remove(v);
                    unused[v] = false;
                }
                policy.on_insert(i);
                misses += 1;
                reads += 1;
            }
            for x in (i + 1..=i + k).map(|x| x % n) {
                if policy.is_resident(x) {
                    continue;
                }
                let mut room = true;
                while room && policy.resident_count() >= c {
                    match policy.speculative_victim(|l| l != i && !unused[l], |_| 0.0) {
                        Some(v) => policy.on_remove(v),
                        None => room = false,
                    }
                }
                if room {
                    policy.on_insert(x);
                    unused[x] = true;
                    reads += 1;
                }
            }
            policy.validate().unwrap();
        }
        out.push((misses, reads));
    }
    out
}

#[test]
fn prefetching_ahead_with_a_reserve_hides_every_read_and_keeps_the_protected_set() {
    let (n, c) = (64, 16);
    for k in [1, 2, 4] {
        let passes = passes_with_lookahead(n, c, k, 6);
        // After the first pass: no demand miss, and only the layers outside
        // the c − 1 − k protected ones are read (LRU reads all n).
        for &(misses, reads) in &passes[1..] {
            assert_eq!(misses, 0, "k {k}: {passes:?}");
            assert_eq!(reads, n - (c - 1 - k), "k {k}: {passes:?}");
        }
    }
}

#[test]
fn repeated_accesses_are_counted_once() {
    let trace = traces::zipf(32, 5_000, 1.0, 9);
    let repeated: Vec<usize> = trace.iter().flat_map(|&l| [l, l, l]).collect();
    for kind in KINDS {
        let once = simulate(kind, &trace, 32, 8);
        let thrice = simulate(kind, &repeated, 32, 8);
        // Every repeat is a hit, and the rest is the same run.
        assert_eq!(thrice.misses, once.misses, "{kind:?}");
        assert_eq!(thrice.hits, once.hits + 2 * trace.len() as u64, "{kind:?}");
    }
}

#[test]
fn a_capacity_hint_sizes_the_protected_set_before_any_eviction() {
    let mut policy = Policy::new(PolicyKind::Adaptive, 10);
    policy.set_capacity_hint(Some(4));
    assert_eq!(policy.capacity(), Some(4));
    for l in 0..4 {
        policy.on_access(l);
        policy.on_insert(l);
    }
    // Capacity 4: 3 protected layers and one probationary (1% of 4, at least 1).
    let protected = (0..10).filter(|&l| policy.is_protected(l)).count();
    assert_eq!(protected, 3);
    policy.set_capacity_hint(Some(2));
    let protected = (0..10).filter(|&l| policy.is_protected(l)).count();
    assert_eq!(protected, 1);
    policy.validate().unwrap();
    // Without a hint, the capacity is what the cache held at its first eviction.
    policy.set_capacity_hint(None);
    assert_eq!(policy.capacity(), None);
    policy.victim(|_| true, |_| 0.0);
    assert_eq!(policy.capacity(), Some(4));
}
