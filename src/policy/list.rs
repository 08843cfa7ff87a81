//! An intrusive doubly linked list over the layer indices `0..n`.
//!
//! Every layer is in a list at most once, so the links live in one vector
//! indexed by layer and every operation is O(1) with no allocation after
//! construction. The front is the oldest end (the bottom of a LIRS stack, the
//! next victim of a queue, the least recently used layer); the back is the
//! newest.

const NIL: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: usize,
    next: usize,
    linked: bool,
}

/// A list of distinct layer indices, oldest at the front.
#[derive(Debug, Clone)]
pub(crate) struct List {
    links: Vec<Link>,
    front: usize,
    back: usize,
    len: usize,
}

impl List {
    /// An empty list for the layers `0..n`.
    pub(crate) fn new(n: usize) -> Self {
        let unlinked = Link {
            prev: NIL,
            next: NIL,
            linked: false,
        };
        Self {
            links: vec![unlinked; n],
            front: NIL,
            back: NIL,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, x: usize) -> bool {
        self.links[x].linked
    }

    pub(crate) fn front(&self) -> Option<usize> {
        (self.front != NIL).then_some(self.front)
    }

    pub(crate) fn back(&self) -> Option<usize> {
        (self.back != NIL).then_some(self.back)
    }

    /// Appends `x`, which must not be in the list, at the back.
    pub(crate) fn push_back(&mut self, x: usize) {
        debug_assert!(!self.links[x].linked, "layer {x} is already linked");
        self.links[x] = Link {
            prev: self.back,
            next: NIL,
            linked: true,
        };
        if self.back == NIL {
            self.front = x;
        } else {
            self.links[self.back].next = x;
        }
        self.back = x;
        self.len += 1;
    }

    /// Unlinks `x`; does nothing if it is not in the list.
    pub(crate) fn remove(&mut self, x: usize) {
        let Link { prev, next, linked } = self.links[x];
        if !linked {
            return;
        }
        if prev == NIL {
            self.front = next;
        } else {
            self.links[prev].next = next;
        }
        if next == NIL {
            self.back = prev;
        } else {
            self.links[next].prev = prev;
        }
        self.links[x] = Link {
            prev: NIL,
            next: NIL,
            linked: false,
        };
        self.len -= 1;
    }

    /// Moves `x` to the back, linking it if it was not in the list.
    pub(crate) fn move_to_back(&mut self, x: usize) {
        if self.back == x {
            return;
        }
        self.remove(x);
        self.push_back(x);
    }

    /// Removes and returns the front.
    pub(crate) fn pop_front(&mut self) -> Option<usize> {
        let x = self.front()?;
        self.remove(x);
        Some(x)
    }

    /// The layers from front (oldest) to back (newest).
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            list: self,
            at: self.front,
        }
    }

    /// Checks the links: both directions agree, `linked` flags match
    /// membership, and `len` is the number of members.
    pub(crate) fn validate(&self, name: &str) -> Result<(), String> {
        let mut count = 0;
        let mut prev = NIL;
        let mut at = self.front;
        while at != NIL {
            let link = self.links.get(at).ok_or_else(|| {
                format!("{name}: link to layer {at} outside 0..{}", self.links.len())
            })?;
            if !link.linked {
                return Err(format!(
                    "{name}: layer {at} reachable but not marked linked"
                ));
            }
            if link.prev != prev {
                return Err(format!("{name}: layer {at} has a wrong back link"));
            }
            count += 1;
            if count > self.links.len() {
                return Err(format!("{name}: cycle"));
            }
            prev = at;
            at = link.next;
        }
        if prev != self.back {
            return Err(format!("{name}: back is not the last element"));
        }
        if count != self.len {
            return Err(format!("{name}: len {} but {count} linked", self.len));
        }
        let marked = self.links.iter().filter(|l| l.linked).count();
        if marked != count {
            return Err(format!(
                "{name}: {marked} marked linked but {count} reachable"
            ));
        }
        Ok(())
    }
}

/// Iterator over a [`List`], front to back.
pub(crate) struct Iter<'a> {
    list: &'a List,
    at: usize,
}

impl Iterator for Iter<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.at == NIL {
            return None;
        }
        let x = self.at;
        self.at = self.list.links[x].next;
        Some(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(l: &List) -> Vec<usize> {
        l.iter().collect()
    }

    #[test]
    fn push_remove_move() {
        let mut l = List::new(5);
        for x in [3, 1, 4] {
            l.push_back(x);
        }
        assert_eq!(items(&l), [3, 1, 4]);
        l.move_to_back(3);
        assert_eq!(items(&l), [1, 4, 3]);
        l.remove(4);
        l.remove(4);
        assert_eq!(items(&l), [1, 3]);
        l.move_to_back(0);
        assert_eq!(items(&l), [1, 3, 0]);
        assert_eq!(l.pop_front(), Some(1));
        assert_eq!((l.front(), l.back(), l.len()), (Some(3), Some(0), 2));
        l.validate("l").unwrap();
        l.remove(3);
        l.remove(0);
        assert_eq!((l.front(), l.back(), l.len()), (None, None, 0));
        l.validate("l").unwrap();
    }
}
