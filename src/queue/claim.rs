//! The consumer claim on one ring ([`Claim`], internal) and the held form a
//! caller keeps across pops ([`Consumer`]).

use core::fmt;
use core::ptr::NonNull;

use super::ring::{Cell, Ring};
use crate::sync::Ordering;

/// The consumer claim on one ring, released on drop.
pub(super) struct Claim<'a, T> {
    ring: &'a Ring<T>,
    cells: NonNull<Cell<T>>,
    mask: usize,
    /// Next position to take (ours to write while we hold the claim).
    head: usize,
    /// The tail seen when the claim was taken (or refreshed by a held
    /// consumer): a drain takes at most what was queued when it started, so a
    /// busy producer cannot keep it going.
    end: usize,
}

impl<'a, T> Claim<'a, T> {
    /// The claim on `ring`, whose `busy` flag the caller has just set.
    pub(super) fn new(ring: &'a Ring<T>, mask: usize, head: usize, end: usize) -> Self {
        Self {
            ring,
            cells: ring.cells,
            mask,
            head,
            end,
        }
    }

    /// Items left before `end`.
    pub(super) fn left(&self) -> usize {
        self.end.wrapping_sub(self.head)
    }

    pub(super) fn take(&mut self) -> Option<T> {
        if self.head == self.end {
            return None;
        }
        // SAFETY: `head & mask < cells`. `head < end`, and `end` is a tail we
        // acquired, so the producer finished writing this cell before its release
        // store; we hold the claim, so no other consumer reads it; the producer
        // does not write it again until our release store of `head` below. The
        // item is moved out exactly once: `head` advances past it at once.
        let item = unsafe {
            let cell: &Cell<T> = self.cells.add(self.head & self.mask).as_ref();
            cell.with_mut(|cell| cell.read().assume_init())
        };
        self.head = self.head.wrapping_add(1);
        // Per item, not at the end: a drain that is leaked (`mem::forget`) must
        // never leave an item both taken and still queued.
        let head = self.head;
        // SAFETY: written only under the claim, which we hold.
        self.ring
            .consumer
            .taken
            .with_mut(|taken| unsafe { *taken = head });
        self.ring.consumer.head.store(head, Ordering::Release);
        Some(item)
    }
}

impl<T> Drop for Claim<'_, T> {
    fn drop(&mut self) {
        self.ring.consumer.busy.store(false, Ordering::Release);
    }
}

/// The consumer side of one processor's queue, held: [`pop`](Self::pop) takes
/// items without an interlocked instruction, including items queued after the
/// claim was taken. From [`PerCpuQueue::consumer`](super::PerCpuQueue::consumer).
///
/// For a DPC that processes its own processor's queue: claim once, then push
/// and pop freely. While it lives, other consumers find that queue empty (it
/// is being consumed); the producer is not affected. Dropping it releases the
/// claim; items not popped stay queued.
#[must_use = "a Consumer holds the queue's claim until dropped; pop from it"]
pub struct Consumer<'a, T> {
    claim: Claim<'a, T>,
}

impl<'a, T> Consumer<'a, T> {
    pub(super) fn new(claim: Claim<'a, T>) -> Self {
        Self { claim }
    }

    /// Takes the oldest item, if any.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.claim.head == self.claim.end {
            self.claim.end = self.claim.ring.tail.load(Ordering::Acquire);
        }
        self.claim.take()
    }
}

impl<T> fmt::Debug for Consumer<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").finish_non_exhaustive()
    }
}
