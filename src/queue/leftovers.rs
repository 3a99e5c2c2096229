//! [`QueueLeftovers`]: what a queue still held when it was torn down.

use core::fmt;

use super::PerCpuQueue;
use crate::{Platform, ProcessorIndex, RawAlloc};

/// The items still queued when a [`PerCpuQueue`] was torn down, on every
/// processor (retired queues and items under a leaked drain included), from
/// [`PerCpuQueue::teardown`]: processor by processor in index order, each
/// queue oldest first.
///
/// It owns the queue: items not taken are dropped, and the queues' memory is
/// freed, when it is dropped.
#[must_use = "dropping the leftovers drops the items still queued; take them"]
pub struct QueueLeftovers<T, P: Platform, A: RawAlloc = <P as Platform>::Alloc> {
    queue: PerCpuQueue<T, P, A>,
    /// The processor whose queue is taken from next.
    next: usize,
}

impl<T, P: Platform, A: RawAlloc> QueueLeftovers<T, P, A> {
    pub(super) fn new(queue: PerCpuQueue<T, P, A>) -> Self {
        Self { queue, next: 0 }
    }

    /// How many items are left (an exact count: nothing else can reach the
    /// queue).
    pub fn len(&self) -> usize {
        self.queue.total_len()
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T, P: Platform, A: RawAlloc> Iterator for QueueLeftovers<T, P, A> {
    type Item = (ProcessorIndex, T);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let index = ProcessorIndex::from_usize(self.next)?;
            if let Some(ring) = self.queue.ring(index) {
                // SAFETY: we own the queue, so no producer or consumer of it is
                // left; a drain or consumer leaked with `mem::forget` borrowed
                // the queue, and that borrow ended before it was moved here, so
                // it is never used again.
                if let Some(item) = unsafe { ring.take_unclaimed(self.queue.shape.mask) } {
                    return Some((index, item));
                }
            }
            if self.next >= self.queue.rings.capacity() {
                return None;
            }
            self.next = self.next.wrapping_add(1);
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len();
        (left, Some(left))
    }
}

impl<T, P: Platform, A: RawAlloc> ExactSizeIterator for QueueLeftovers<T, P, A> {}

impl<T, P: Platform, A: RawAlloc> fmt::Debug for QueueLeftovers<T, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueLeftovers")
            .field("left", &self.len())
            .finish_non_exhaustive()
    }
}
