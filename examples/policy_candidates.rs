//! Compares eviction designs on the simulator's traces: the crate's two
//! policies (`lru`, `adaptive`), Belady's optimum, and textbook versions of
//! ARC, S3-FIFO and W-TinyLFU (fixed 1% window, and with a hill-climbing
//! window) written here only for this comparison. `docs/caching.md` records
//! the output.
//!
//! ```sh
//! cargo run --release --example policy_candidates            # N = 64 and 256
//! cargo run --release --example policy_candidates -- 1024    # other sizes
//! ```
//!
//! A second table runs cyclic passes with sequential prefetching through the
//! crate's [`Policy`], the way the loader uses it: the layer being computed
//! is held, the next `k` layers are prefetched, and a prefetch never evicts
//! a prefetched layer not used yet (the cache's rule).
//!
//! The textbook designs are classic caches (they admit and evict by
//! themselves, every entry the same size), kept as simple as possible: linear
//! searches in short vectors, exact per-layer counters instead of a sketch.

use std::collections::VecDeque;

use hyperion::policy::{belady, simulate, simulate_with, traces, Policy, PolicyKind, Replay};

/// A cache simulation that decides residency by itself.
trait Cache {
    /// Records an access; returns whether it was a hit.
    fn access(&mut self, x: usize) -> bool;
}

fn remove(q: &mut VecDeque<usize>, x: usize) -> bool {
    match q.iter().position(|&y| y == x) {
        Some(i) => {
            q.remove(i);
            true
        }
        None => false,
    }
}

/// ARC (Megiddo and Modha, FAST 2003), as in the paper's Figure 4.
struct Arc {
    c: usize,
    p: usize,
    t1: VecDeque<usize>,
    t2: VecDeque<usize>,
    b1: VecDeque<usize>,
    b2: VecDeque<usize>,
}

impl Arc {
    fn new(c: usize) -> Self {
        Self {
            c,
            p: 0,
            t1: VecDeque::new(),
            t2: VecDeque::new(),
            b1: VecDeque::new(),
            b2: VecDeque::new(),
        }
    }

    fn replace(&mut self, in_b2: bool) {
        let t1 = self.t1.len();
        if t1 >= 1 && ((in_b2 && t1 == self.p) || t1 > self.p) {
            let v = self.t1.pop_front().unwrap();
            self.b1.push_back(v);
        } else if let Some(v) = self.t2.pop_front() {
            self.b2.push_back(v);
        } else if let Some(v) = self.t1.pop_front() {
            self.b1.push_back(v);
        }
    }
}

impl Cache for Arc {
    fn access(&mut self, x: usize) -> bool {
        if remove(&mut self.t1, x) || remove(&mut self.t2, x) {
            self.t2.push_back(x);
            return true;
        }
        let full = self.t1.len() + self.t2.len() >= self.c;
        if remove(&mut self.b1, x) {
            let delta = (self.b2.len() / (self.b1.len() + 1)).max(1);
            self.p = (self.p + delta).min(self.c);
            if full {
                self.replace(false);
            }
            self.t2.push_back(x);
        } else if remove(&mut self.b2, x) {
            let delta = (self.b1.len() / (self.b2.len() + 1)).max(1);
            self.p = self.p.saturating_sub(delta);
            if full {
                self.replace(true);
            }
            self.t2.push_back(x);
        } else {
            let l1 = self.t1.len() + self.b1.len();
            let total = l1 + self.t2.len() + self.b2.len();
            if l1 >= self.c {
                if self.t1.len() < self.c {
                    self.b1.pop_front();
                    if full {
                        self.replace(false);
                    }
                } else {
                    self.t1.pop_front();
                }
            } else if total >= self.c {
                if total >= 2 * self.c {
                    self.b2.pop_front();
                }
                if full {
                    self.replace(false);
                }
            }
            self.t1.push_back(x);
        }
        false
    }
}

/// S3-FIFO (Yang et al., SOSP 2023): a small FIFO (10%) filters new
/// entries, a main FIFO with reinsertion (CLOCK) keeps the rest, and a ghost
/// FIFO of as many keys as the main queue holds sends re-accessed evictees
/// straight to the main queue.
struct S3Fifo {
    c: usize,
    small_target: usize,
    small: VecDeque<usize>,
    main: VecDeque<usize>,
    ghost: VecDeque<usize>,
    freq: Vec<u8>,
    resident: Vec<bool>,
}

impl S3Fifo {
    fn new(n: usize, c: usize) -> Self {
        Self {
            c,
            small_target: c.div_ceil(10).max(1),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            freq: vec![0; n],
            resident: vec![false; n],
        }
    }

    fn evict(&mut self) {
        if self.small.len() >= self.small_target || self.main.is_empty() {
            while let Some(t) = self.small.pop_front() {
                if self.freq[t] > 1 {
                    self.main.push_back(t);
                    if self.main.len() > self.c - self.small_target.min(self.c - 1) {
                        self.evict_main();
                    }
                } else {
                    self.resident[t] = false;
                    self.ghost.push_back(t);
                    let ghost_cap = (self.c - self.small_target.min(self.c)).max(1);
                    while self.ghost.len() > ghost_cap {
                        self.ghost.pop_front();
                    }
                    return;
                }
            }
        }
        self.evict_main();
    }

    fn evict_main(&mut self) {
        while let Some(t) = self.main.pop_front() {
            if self.freq[t] > 0 {
                self.freq[t] -= 1;
                self.main.push_back(t);
            } else {
                self.resident[t] = false;
                return;
            }
        }
    }
}

impl Cache for S3Fifo {
    fn access(&mut self, x: usize) -> bool {
        if self.resident[x] {
            self.freq[x] = (self.freq[x] + 1).min(3);
            return true;
        }
        while self.small.len() + self.main.len() >= self.c {
            self.evict();
        }
        self.freq[x] = 0;
        self.resident[x] = true;
        if remove(&mut self.ghost, x) {
            self.main.push_back(x);
        } else {
            self.small.push_back(x);
        }
        false
    }
}

/// W-TinyLFU (Einziger, Friedman and Manes, ACM TOS 2017): an LRU window
/// admits into a segmented LRU main region (20% probation, 80% protected)
/// only candidates more frequent than the main region's victim. Exact
/// counters, halved every 10·c accesses (TinyLFU's reset). With `climb`,
/// the window size is tuned by hill climbing on the hit rate (Einziger et
/// al., Middleware 2018; Caffeine): every 10·c accesses, keep moving the
/// window the same way if the hit rate improved, else turn around; the step
/// starts at 6.25% of the capacity and decays by 2% per sample.
struct WTinyLfu {
    c: usize,
    window_max: usize,
    window: VecDeque<usize>,
    probation: VecDeque<usize>,
    protected: VecDeque<usize>,
    freq: Vec<u32>,
    accesses: usize,
    climb: bool,
    hits_in_sample: usize,
    previous_rate: f64,
    step: f64,
    window_exact: f64,
}

impl WTinyLfu {
    fn new(n: usize, c: usize, climb: bool) -> Self {
        let window_max = c.div_ceil(100).max(1).min(c);
        Self {
            c,
            window_max,
            window: VecDeque::new(),
            probation: VecDeque::new(),
            protected: VecDeque::new(),
            freq: vec![0; n],
            accesses: 0,
            climb,
            hits_in_sample: 0,
            previous_rate: 0.0,
            step: -(c as f64) * 0.0625,
            window_exact: window_max as f64,
        }
    }

    fn protected_max(&self) -> usize {
        (self.c - self.window_max) * 8 / 10
    }

    fn evict(&mut self) {
        while self.window.len() > self.window_max {
            let candidate = self.window.pop_front().unwrap();
            if self.window.len() + self.probation.len() + self.protected.len() < self.c {
                self.probation.push_back(candidate);
                continue;
            }
            let victim_q = if self.probation.is_empty() {
                &mut self.protected
            } else {
                &mut self.probation
            };
            match victim_q.front().copied() {
                Some(victim) if self.freq[candidate] > self.freq[victim] => {
                    victim_q.pop_front();
                    self.probation.push_back(candidate);
                }
                Some(_) => {}
                None => self.probation.push_back(candidate),
            }
        }
        while self.window.len() + self.probation.len() + self.protected.len() > self.c {
            if self.probation.pop_front().is_none() && self.protected.pop_front().is_none() {
                self.window.pop_front();
            }
        }
    }

    fn adapt(&mut self, hit: bool) {
        self.hits_in_sample += hit as usize;
        let sample = 10 * self.c;
        if !self.climb || self.accesses % sample != 0 {
            return;
        }
        let rate = self.hits_in_sample as f64 / sample as f64;
        if rate < self.previous_rate {
            self.step = -self.step;
        }
        self.previous_rate = rate;
        self.hits_in_sample = 0;
        self.window_exact = (self.window_exact + self.step).clamp(1.0, (self.c - 1) as f64);
        self.step *= 0.98;
        self.window_max = self.window_exact.round() as usize;
        while self.protected.len() > self.protected_max() {
            let v = self.protected.pop_front().unwrap();
            self.probation.push_back(v);
        }
    }
}

impl Cache for WTinyLfu {
    fn access(&mut self, x: usize) -> bool {
        self.accesses += 1;
        self.freq[x] += 1;
        if self.accesses % (10 * self.c) == 0 {
            for f in &mut self.freq {
                *f /= 2;
            }
        }
        let hit = if remove(&mut self.window, x) {
            self.window.push_back(x);
            true
        } else if remove(&mut self.probation, x) {
            self.protected.push_back(x);
            if self.protected.len() > self.protected_max() {
                let v = self.protected.pop_front().unwrap();
                self.probation.push_back(v);
            }
            true
        } else if remove(&mut self.protected, x) {
            self.protected.push_back(x);
            true
        } else {
            self.window.push_back(x);
            self.evict();
            false
        };
        self.adapt(hit);
        hit
    }
}

/// Ten passes over every layer, then `20·n` accesses of `mixed`, five
/// times: a workload whose best policy changes every few thousand accesses.
fn alternating(n: usize) -> Vec<usize> {
    (0..5)
        .flat_map(|i| {
            let mut t = traces::cyclic(n, 10);
            t.extend(traces::mixed(n, 20 * n, i));
            t
        })
        .collect()
}

fn run(cache: &mut dyn Cache, trace: &[usize]) -> f64 {
    let hits = trace.iter().filter(|&&x| cache.access(x)).count();
    hits as f64 / trace.len() as f64
}

/// How a prefetch picks its victim in [`lookahead`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prefetch {
    /// `Policy::victim`, like a fetch.
    Victim,
    /// `Policy::speculative_victim`, with a prefetch reserve of `k`.
    Speculative,
}

/// `passes` passes over `n` layers with `c` slots, prefetching `k` layers
/// ahead; returns (demand misses, reads) per pass, averaged over the passes
/// after the first.
fn lookahead(kind: PolicyKind, n: usize, c: usize, k: usize, how: Prefetch) -> (f64, f64) {
    let passes = 20;
    let mut policy = Policy::new(kind, n);
    if how == Prefetch::Speculative {
        policy.set_prefetch_reserve(k);
    }
    let mut unused = vec![false; n];
    let (mut misses, mut reads) = (0usize, 0usize);
    for pass in 0..passes {
        for i in 0..n {
            let counted = pass > 0;
            policy.on_access(i);
            unused[i] = false;
            if !policy.is_resident(i) {
                while policy.resident_count() >= c {
                    let v = policy.victim(|_| true, |_| 0.0).expect("nothing held");
                    policy.on_remove(v);
                    unused[v] = false;
                }
                policy.on_insert(i);
                misses += counted as usize;
                reads += counted as usize;
            }
            // Layer i is held while the next k layers are prefetched.
            for x in (i + 1..=i + k).map(|x| x % n) {
                if policy.is_resident(x) || x == i {
                    continue;
                }
                let mut room = true;
                while room && policy.resident_count() >= c {
                    let candidate = |l: usize| l != i && !unused[l];
                    let v = match how {
                        Prefetch::Victim => policy.victim(candidate, |_| 0.0),
                        Prefetch::Speculative => policy.speculative_victim(candidate, |_| 0.0),
                    };
                    match v {
                        Some(v) => policy.on_remove(v),
                        None => room = false,
                    }
                }
                if room {
                    policy.on_insert(x);
                    unused[x] = true;
                    reads += counted as usize;
                }
            }
        }
    }
    let per_pass = |x: usize| x as f64 / (passes - 1) as f64;
    (per_pass(misses), per_pass(reads))
}

fn lookahead_table() {
    println!();
    println!("Cyclic passes with prefetching k layers ahead: demand misses / reads, per pass");
    println!();
    println!("| N | C | k | LRU | adaptive, prefetch by victim | adaptive, speculative_victim + reserve k |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (n, c) in [(64, 16), (64, 32)] {
        for k in [0, 1, 2, 4] {
            let cell = |(m, r): (f64, f64)| format!("{m:.1} / {r:.1}");
            let lru = lookahead(PolicyKind::Lru, n, c, k, Prefetch::Victim);
            let ada = lookahead(PolicyKind::Adaptive, n, c, k, Prefetch::Victim);
            let spec = lookahead(PolicyKind::Adaptive, n, c, k, Prefetch::Speculative);
            println!(
                "| {n} | {c} | {k} | {} | {} | {} |",
                cell(lru),
                cell(ada),
                cell(spec)
            );
        }
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("layer counts"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![64, 256]
    } else {
        sizes
    };
    println!(
        "| trace | N | C | Belady | LRU | adaptive | adaptive, batched | adaptive, batched out of order | ARC | S3-FIFO | W-TinyLFU 1% | W-TinyLFU climbing |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for n in sizes {
        let len = 100_000;
        let cases: Vec<(String, Vec<usize>)> = vec![
            ("cyclic".into(), traces::cyclic(n, 20)),
            ("zipf 0.8".into(), traces::zipf(n, len, 0.8, 1)),
            ("zipf 1.0".into(), traces::zipf(n, len, 1.0, 1)),
            ("zipf 1.2".into(), traces::zipf(n, len, 1.2, 1)),
            ("mixed".into(), traces::mixed(n, len, 1)),
            ("cyclic/mixed".into(), alternating(n)),
        ];
        for (name, trace) in &cases {
            for c in [n / 4, n / 2] {
                let opt = belady(trace, c).hit_rate();
                let lru = simulate(PolicyKind::Lru, trace, n, c).hit_rate();
                let ada = simulate(PolicyKind::Adaptive, trace, n, c).hit_rate();
                let batched =
                    simulate_with(PolicyKind::Adaptive, trace, n, c, Replay::BatchedByLastUse)
                        .hit_rate();
                let shuffled =
                    simulate_with(PolicyKind::Adaptive, trace, n, c, Replay::BatchedByLayer)
                        .hit_rate();
                let arc = run(&mut Arc::new(c), trace);
                let s3 = run(&mut S3Fifo::new(n, c), trace);
                let tiny = run(&mut WTinyLfu::new(n, c, false), trace);
                let climb = run(&mut WTinyLfu::new(n, c, true), trace);
                println!(
                    "| {name} | {n} | {c} | {opt:.3} | {lru:.3} | {ada:.3} | {batched:.3} | {shuffled:.3} | {arc:.3} | {s3:.3} | {tiny:.3} | {climb:.3} |"
                );
            }
        }
    }
    lookahead_table();
}
