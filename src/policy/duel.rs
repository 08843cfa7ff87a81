//! Which expert the adaptive policy follows: LIRS or LRU, by duelling
//! shadow caches (the set dueling of Qureshi et al., ISCA 2007, with whole
//! shadow caches instead of sampled sets, since a model has few layers).
//!
//! Two shadow caches of the estimated capacity see every access: one evicts
//! by LIRS, one by LRU. They hold no data, only layer numbers, and decide
//! residency by themselves (uniform entries, no priorities, nothing held), so
//! they measure what each policy would achieve on this access pattern alone.
//! A running score, an exponentially weighted sum of "LRU hit, LIRS missed"
//! (+1) and the reverse (−1) over about the last [`WINDOW`]·capacity
//! accesses, picks the expert; a margin of [`MARGIN`] (as a hit-rate
//! difference) keeps it from flapping between two experts that do equally
//! well. LIRS is the default: it is the one that matters for passes over
//! more layers than fit, where LRU hits nothing.

use super::lirs::Lirs;
use super::list::List;

/// The score's memory, in multiples of the capacity (in accesses).
pub(crate) const WINDOW: usize = 16;

/// The hit-rate difference that makes the policy switch experts.
pub(crate) const MARGIN: f64 = 0.01;

/// An expert the adaptive policy can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expert {
    Lirs,
    Lru,
}

#[derive(Debug, Clone)]
pub(crate) struct Duel {
    capacity: usize,
    lirs: Lirs,
    lru: List,
    /// Exponentially weighted (LRU hits − LIRS hits).
    score: f64,
    expert: Expert,
}

impl Duel {
    /// Shadows of `capacity` entries starting from the real policy's state
    /// (`lirs`, `lru`), so they need no warm-up.
    pub(crate) fn new(capacity: usize, mut lirs: Lirs, mut lru: List) -> Self {
        let capacity = capacity.max(1);
        lirs.set_capacity(Some(capacity), 0);
        shrink_lirs(&mut lirs, capacity);
        while lru.len() > capacity {
            lru.pop_front();
        }
        Self {
            capacity,
            lirs,
            lru,
            score: 0.0,
            expert: Expert::Lirs,
        }
    }

    pub(crate) fn expert(&self) -> Expert {
        self.expert
    }

    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        let capacity = capacity.max(1);
        if capacity != self.capacity {
            self.capacity = capacity;
            self.lirs.set_capacity(Some(capacity), 0);
            shrink_lirs(&mut self.lirs, capacity);
            while self.lru.len() > capacity {
                self.lru.pop_front();
            }
        }
    }

    /// Feeds one access to both shadows and updates the score.
    pub(crate) fn access(&mut self, x: usize) {
        let lirs_hit = self.lirs.is_resident(x);
        self.lirs.access(x);
        if !lirs_hit {
            shrink_lirs(&mut self.lirs, self.capacity - 1);
            self.lirs.insert(x);
        }
        let lru_hit = self.lru.contains(x);
        self.lru.move_to_back(x);
        if self.lru.len() > self.capacity {
            self.lru.pop_front();
        }
        let window = (WINDOW * self.capacity) as f64;
        self.score = self.score * (1.0 - 1.0 / window) + (lru_hit as i32 - lirs_hit as i32) as f64;
        // The score's steady state is window × (LRU rate − LIRS rate).
        let margin = MARGIN * window;
        if self.score > margin {
            self.expert = Expert::Lru;
        } else if self.score < -margin {
            self.expert = Expert::Lirs;
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.lirs
            .validate()
            .map_err(|e| format!("LIRS shadow: {e}"))?;
        self.lru.validate("LRU shadow")?;
        if self.lirs.resident_count() > self.capacity || self.lru.len() > self.capacity {
            return Err(format!(
                "shadows hold {} (LIRS) and {} (LRU) layers, over the capacity {}",
                self.lirs.resident_count(),
                self.lru.len(),
                self.capacity
            ));
        }
        if !self.score.is_finite() {
            return Err(format!("duel score {}", self.score));
        }
        Ok(())
    }
}

/// Evicts from a shadow LIRS, in its own order, down to `entries`.
fn shrink_lirs(lirs: &mut Lirs, entries: usize) {
    while lirs.resident_count() > entries {
        let v = lirs.first_victim().expect("resident layers");
        lirs.remove(v);
    }
}
