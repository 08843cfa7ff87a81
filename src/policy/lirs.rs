//! LIRS (Jiang and Zhang, SIGMETRICS 2002), adapted to a loader.
//!
//! Terms, as in the paper:
//!
//! - **LIR** layers have a low inter-reference recency (they were reused
//!   within a short distance); they are resident, and evicted last.
//! - **HIR** layers are the rest. Resident HIR layers wait in the queue `q`
//!   and are evicted first, oldest first: this is the probation class a
//!   loader needs, since it cannot refuse to load a layer that was asked for.
//! - The stack `s` holds, in recency order, every LIR layer and the HIR
//!   layers (resident or not) accessed more recently than the least recent
//!   LIR layer. Its bottom (front) is always an LIR layer ("pruning"). An HIR
//!   layer found in `s` when it is accessed has been reused more recently
//!   than some LIR layer, so it is promoted to LIR and the bottom LIR layer
//!   is demoted to HIR.
//!
//! What differs from the paper, because the cache and not the policy decides
//! residency:
//!
//! - The capacity (in entries) may be unknown (`None`): then every inserted
//!   layer is LIR, as in the paper's warm-up ("while the LIR set is not
//!   full"). When it becomes known, or changes, the excess LIR layers are
//!   demoted, bottom first.
//! - A miss is recorded at access time and the layer becomes resident later
//!   (`insert`), after the cache has evicted for it. Whether it was in `s` at
//!   the access (its reuse was short) is remembered in `admit` and decides
//!   its status at insertion. Inserting first and accessing afterwards gives
//!   the same status: a resident HIR layer accessed while in `s` is promoted.
//! - Any resident layer may be removed at any time (released, or evicted out
//!   of the policy's order because of a user priority or because the layer
//!   the policy preferred is held). A removed LIR layer becomes a
//!   non-resident HIR layer and keeps its place in `s`, so a prompt reuse
//!   promotes it again.
//! - An access to the layer at the top of `s` (the layer accessed last) does
//!   nothing, so a batch of repeated accesses counts as one.

use super::list::List;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Lir,
    Hir,
}

/// The LIRS state of `n` layers.
#[derive(Debug, Clone)]
pub(crate) struct Lirs {
    status: Vec<Status>,
    resident: Vec<bool>,
    /// Accessed while not resident and found in `s`: LIR when inserted.
    admit: Vec<bool>,
    s: List,
    q: List,
    lir_count: usize,
    resident_count: usize,
    /// The most LIR layers to keep: the capacity less the HIR share.
    lir_target: usize,
}

/// The resident HIR share of a capacity of `entries`: 1% as the LIRS paper
/// recommends, and at least one entry.
pub(crate) fn hir_share(entries: usize) -> usize {
    entries.div_ceil(100).max(1)
}

impl Lirs {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            status: vec![Status::Hir; n],
            resident: vec![false; n],
            admit: vec![false; n],
            s: List::new(n),
            q: List::new(n),
            lir_count: 0,
            resident_count: 0,
            lir_target: usize::MAX,
        }
    }

    pub(crate) fn is_resident(&self, x: usize) -> bool {
        self.resident[x]
    }

    pub(crate) fn resident_count(&self) -> usize {
        self.resident_count
    }

    pub(crate) fn is_lir(&self, x: usize) -> bool {
        self.status[x] == Status::Lir
    }

    /// Sets the capacity in entries (`None`: unknown, no LIR limit) and how
    /// many entries to leave to HIR layers on top of the paper's 1%
    /// (`reserve`), and demotes LIR layers beyond the new limit.
    pub(crate) fn set_capacity(&mut self, entries: Option<usize>, reserve: usize) {
        self.lir_target = entries.map_or(usize::MAX, |c| {
            c.saturating_sub(hir_share(c).saturating_add(reserve))
        });
        self.rebalance();
    }

    pub(crate) fn access(&mut self, x: usize) {
        if self.s.back() == Some(x) {
            return;
        }
        match (self.status[x], self.resident[x]) {
            (Status::Lir, _) => {
                let was_bottom = self.s.front() == Some(x);
                self.s.move_to_back(x);
                if was_bottom {
                    self.prune();
                }
            }
            (Status::Hir, true) => {
                if self.s.contains(x) {
                    // Reused within the LIR recency horizon: promote.
                    self.q.remove(x);
                    self.s.move_to_back(x);
                    self.status[x] = Status::Lir;
                    self.lir_count += 1;
                    self.rebalance();
                } else {
                    self.s.push_back(x);
                    self.q.move_to_back(x);
                    // Only prunes when `s` holds no LIR layer at all (a
                    // capacity of one entry, or every LIR layer removed).
                    self.prune();
                }
            }
            (Status::Hir, false) => {
                self.admit[x] = self.s.contains(x);
                self.s.move_to_back(x);
                // Only prunes when `s` holds no LIR layer at all.
                self.prune();
            }
        }
    }

    pub(crate) fn insert(&mut self, x: usize) {
        if self.resident[x] {
            return;
        }
        self.resident[x] = true;
        self.resident_count += 1;
        if std::mem::take(&mut self.admit[x]) || self.lir_count < self.lir_target {
            self.status[x] = Status::Lir;
            self.lir_count += 1;
            if !self.s.contains(x) {
                self.s.push_back(x);
            }
            self.rebalance();
        } else {
            self.q.push_back(x);
        }
    }

    pub(crate) fn remove(&mut self, x: usize) {
        self.admit[x] = false;
        if !self.resident[x] {
            return;
        }
        self.resident[x] = false;
        self.resident_count -= 1;
        match self.status[x] {
            Status::Lir => {
                self.status[x] = Status::Hir;
                self.lir_count -= 1;
                self.prune();
            }
            Status::Hir => self.q.remove(x),
        }
    }

    /// Resident layers in the order LIRS evicts them: resident HIR layers,
    /// oldest first, then LIR layers from the bottom of the stack up.
    pub(crate) fn eviction_order(&self) -> impl Iterator<Item = usize> + '_ {
        self.q
            .iter()
            .chain(self.s.iter().filter(|&x| self.status[x] == Status::Lir))
    }

    /// Resident HIR layers, oldest first: the unprotected part of
    /// [`Self::eviction_order`].
    pub(crate) fn unprotected_order(&self) -> impl Iterator<Item = usize> + '_ {
        self.q.iter()
    }

    /// The first layer of [`Self::eviction_order`], in O(1).
    pub(crate) fn first_victim(&self) -> Option<usize> {
        // The bottom of `s` is LIR whenever `s` is not empty.
        self.q.front().or_else(|| self.s.front())
    }

    /// Demotes bottom LIR layers while there are more than the target.
    fn rebalance(&mut self) {
        while self.lir_count > self.lir_target {
            let Some(bottom) = self.s.front() else {
                debug_assert!(false, "LIR layers but an empty stack");
                return;
            };
            debug_assert_eq!(self.status[bottom], Status::Lir);
            self.status[bottom] = Status::Hir;
            self.lir_count -= 1;
            self.s.remove(bottom);
            self.q.push_back(bottom);
            self.prune();
        }
    }

    /// Removes HIR layers from the bottom of `s` until an LIR layer is there.
    fn prune(&mut self) {
        while let Some(bottom) = self.s.front() {
            if self.status[bottom] == Status::Lir {
                break;
            }
            self.s.remove(bottom);
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.s.validate("LIRS stack")?;
        self.q.validate("LIRS queue")?;
        let n = self.status.len();
        let mut lir = 0;
        let mut resident = 0;
        for x in 0..n {
            let (status, res) = (self.status[x], self.resident[x]);
            if res {
                resident += 1;
            }
            if status == Status::Lir {
                lir += 1;
                if !res {
                    return Err(format!("LIR layer {x} is not resident"));
                }
                if !self.s.contains(x) {
                    return Err(format!("LIR layer {x} is not in the stack"));
                }
            }
            let hir_resident = res && status == Status::Hir;
            if self.q.contains(x) != hir_resident {
                return Err(format!(
                    "layer {x}: in queue {} but resident HIR {hir_resident}",
                    self.q.contains(x)
                ));
            }
            if self.admit[x] && res {
                return Err(format!("resident layer {x} still marked for admission"));
            }
        }
        if lir != self.lir_count {
            return Err(format!("lir_count {} but {lir} LIR layers", self.lir_count));
        }
        if resident != self.resident_count {
            return Err(format!(
                "resident_count {} but {resident} resident",
                self.resident_count
            ));
        }
        if self.lir_count > self.lir_target {
            return Err(format!(
                "{} LIR layers exceed the target {}",
                self.lir_count, self.lir_target
            ));
        }
        if let Some(bottom) = self.s.front() {
            if self.status[bottom] != Status::Lir {
                return Err(format!("stack bottom {bottom} is not LIR"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LIRS cache of `cap` entries driven by itself, as in the paper.
    fn run(trace: &[usize], n: usize, cap: usize) -> (Lirs, Vec<bool>) {
        let mut l = Lirs::new(n);
        l.set_capacity(Some(cap), 0);
        let mut hits = Vec::new();
        for &x in trace {
            let hit = l.is_resident(x);
            hits.push(hit);
            l.access(x);
            if !hit {
                while l.resident_count() >= cap {
                    let v = l.first_victim().unwrap();
                    l.remove(v);
                }
                l.insert(x);
            }
            l.validate().unwrap();
        }
        (l, hits)
    }

    #[test]
    fn a_loop_keeps_a_stable_lir_set() {
        let trace: Vec<usize> = (0..10).flat_map(|_| 0..8).collect();
        let (l, hits) = run(&trace, 8, 4);
        // Three LIR layers, one HIR slot: three hits per pass after the first.
        let per_pass: Vec<usize> = hits
            .chunks(8)
            .map(|c| c.iter().filter(|&&h| h).count())
            .collect();
        assert_eq!(per_pass[0], 0);
        assert!(per_pass[2..].iter().all(|&h| h == 3), "{per_pass:?}");
        assert_eq!(l.lir_count, 3);
    }

    #[test]
    fn insert_before_or_after_the_access_gives_the_same_state() {
        let mut states = Vec::new();
        for insert_first in [false, true] {
            let mut l = Lirs::new(4);
            l.set_capacity(Some(3), 0);
            // 0 and 1 fill the LIR set (target 2), 2 is resident HIR.
            for x in [0, 1, 2] {
                l.access(x);
                l.insert(x);
            }
            l.access(0);
            assert!(!l.is_lir(2));
            // 2 is evicted, then reused: it is still in the stack, above 1.
            l.remove(2);
            if insert_first {
                l.insert(2);
                l.access(2);
            } else {
                l.access(2);
                l.insert(2);
            }
            l.validate().unwrap();
            assert!(l.is_lir(2), "insert_first {insert_first}");
            assert!(!l.is_lir(1), "insert_first {insert_first}");
            states.push((l.status.clone(), l.s.iter().collect::<Vec<_>>()));
        }
        assert_eq!(states[0], states[1]);
    }

    #[test]
    fn repeated_accesses_count_once() {
        let mut a = Lirs::new(6);
        let mut b = Lirs::new(6);
        a.set_capacity(Some(3), 0);
        b.set_capacity(Some(3), 0);
        for x in [0, 1, 2, 3, 3, 3, 4, 0, 0] {
            for l in [&mut a, &mut b] {
                if !l.is_resident(x) {
                    while l.resident_count() >= 3 {
                        let v = l.first_victim().unwrap();
                        l.remove(v);
                    }
                    l.insert(x);
                }
            }
            a.access(x);
            b.access(x);
            b.access(x);
        }
        assert_eq!(a.status, b.status);
        assert_eq!(
            a.s.iter().collect::<Vec<_>>(),
            b.s.iter().collect::<Vec<_>>()
        );
    }
}
