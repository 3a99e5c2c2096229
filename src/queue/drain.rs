//! Draining: [`Drain`] (one processor's queue, under its claim) and
//! [`DrainAll`] (every processor's, queue after queue).

use core::fmt;

use super::claim::Claim;
use super::ring::Ring;
use crate::{Iter, ProcessorIndex};

/// The items of one processor's queue, oldest first, from
/// [`PerCpuQueue::drain`](super::PerCpuQueue::drain),
/// [`PerCpuQueue::abort`](super::PerCpuQueue::abort) or
/// [`PerCpuQueue::pop`](super::PerCpuQueue::pop).
///
/// While it lives it holds that queue's consumer claim: other consumers find
/// the queue empty in the meantime (the producer is not affected). It yields
/// at most what was queued when it was made. Each item is removed from the
/// queue as it is yielded; dropping the drain early leaves the rest queued.
#[must_use = "a drain takes items only as it is iterated; dropped, it leaves them queued"]
pub struct Drain<'a, T> {
    claim: Option<Claim<'a, T>>,
}

impl<'a, T> Drain<'a, T> {
    pub(super) fn empty() -> Self {
        Self { claim: None }
    }

    /// Claims `ring`'s consumer side and drains what is queued now, or an
    /// empty drain if another consumer holds the claim.
    pub(super) fn of(ring: &'a Ring<T>, mask: usize) -> Self {
        Self {
            claim: ring.claim(mask),
        }
    }
}

impl<T> Iterator for Drain<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let item = self.claim.as_mut()?.take();
        if item.is_none() {
            // Done: let other consumers in now rather than when dropped.
            self.claim = None;
        }
        item
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.claim.as_ref().map_or(0, Claim::left);
        (left, Some(left))
    }
}

impl<T> fmt::Debug for Drain<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("left", &self.size_hint().0)
            .finish()
    }
}

/// Every processor's items, queue after queue, from
/// [`PerCpuQueue::drain_all`](super::PerCpuQueue::drain_all).
#[must_use = "a drain takes items only as it is iterated"]
pub struct DrainAll<'a, T> {
    rings: Iter<'a, Ring<T>>,
    current: Option<(ProcessorIndex, Drain<'a, T>)>,
    mask: usize,
}

impl<'a, T> DrainAll<'a, T> {
    pub(super) fn new(rings: Iter<'a, Ring<T>>, mask: usize) -> Self {
        Self {
            rings,
            current: None,
            mask,
        }
    }
}

impl<T> Iterator for DrainAll<'_, T> {
    type Item = (ProcessorIndex, T);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((index, drain)) = &mut self.current {
                if let Some(item) = drain.next() {
                    return Some((*index, item));
                }
            }
            // Dropping the finished drain releases its claim.
            let (index, ring) = self.rings.next()?;
            self.current = Some((index, Drain::of(ring, self.mask)));
        }
    }
}

impl<T> fmt::Debug for DrainAll<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainAll").finish_non_exhaustive()
    }
}
