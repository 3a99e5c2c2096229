//! One processor's inbox: a bounded ring many producers push into (Vyukov's
//! per-entry sequence numbers) and one consumer at a time empties.

use core::alloc::Layout;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::NonNull;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicBool, AtomicUsize, Ordering, UnsafeCell, PUBLISH};
use crate::{Error, ProcessorIndex, RawAlloc, CACHE_LINE};

/// The geometry every processor's inbox shares.
#[derive(Clone, Copy, Debug)]
pub(super) struct InboxShape {
    /// Entries per inbox: the capacity asked for, rounded up to a power of two
    /// and at least 2 (a position maps to its entry with a mask, and a
    /// sequence number says which lap an entry is on).
    pub(super) entries: usize,
    /// `entries - 1`.
    pub(super) mask: usize,
    /// The entries' block: cache-line aligned and padded.
    pub(super) layout: Layout,
}

impl InboxShape {
    pub(super) fn new<T>(capacity: usize) -> Result<Self, Error> {
        if capacity == 0 {
            return Err(Error::CapacityOverflow);
        }
        // At least 2: with one entry, "holds the item of position p" (`seq ==
        // p + 1`) and "free for position p + 1" (`seq == p + entries`) would be
        // the same sequence number, and a push would overwrite a queued item.
        let entries = capacity
            .max(2)
            .checked_next_power_of_two()
            .ok_or(Error::CapacityOverflow)?;
        let layout = Layout::array::<Entry<T>>(entries)
            .and_then(|layout| layout.align_to(CACHE_LINE))
            .map_err(|_| Error::CapacityOverflow)?
            .pad_to_align();
        Ok(Self {
            entries,
            mask: entries.wrapping_sub(1),
            layout,
        })
    }
}

/// One place in the ring.
///
/// `seq` says whose turn it is: `pos` means free for the producer of position
/// `pos`; `pos + 1` means it holds the item of position `pos` for the consumer;
/// the consumer frees it for the next lap with `pos + entries`.
pub(super) struct Entry<T> {
    seq: AtomicUsize,
    item: UnsafeCell<MaybeUninit<T>>,
}

/// What the one consumer at a time owns.
struct ConsumerSide {
    /// The claim: set while one consumer takes items.
    busy: AtomicBool,
    /// Position of the next item to take, as the last claim left it; read and
    /// written only under the claim.
    head: UnsafeCell<usize>,
    /// `head` as of the last claim's end, published for steering hand-overs:
    /// every item below it was taken *and* the consumer that took it finished
    /// with it (released its claim).
    delivered: AtomicUsize,
}

/// One processor's inbox: producers' `tail` on one cache line, the consumer's
/// state on another, the entries in their own block.
pub(super) struct Ring<T> {
    /// Position of the next item to put; producers take positions with a CAS.
    tail: CachePadded<AtomicUsize>,
    consumer: CachePadded<ConsumerSide>,
    /// `shape.entries` entries, allocated for the ring's processor with the
    /// ring and freed by the container at drop.
    entries: NonNull<Entry<T>>,
    mask: usize,
    /// Owns `T`s: sending a ring sends its items.
    _items: PhantomData<T>,
}

// SAFETY: a ring moves items from producers' threads to the consumer's (so
// `T: Send`) and never shares a `&T`. Its shared state is atomic; an entry's item
// is written only by the producer that won its position (before the release store
// of `seq` that hands it to the consumer) and read only by the claim holder
// (before the release store of `seq` that hands it back).
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// A ring for `processor` with its entries allocated (placed for it) and
    /// initialised.
    pub(super) fn new<A: RawAlloc>(
        shape: &InboxShape,
        alloc: &A,
        processor: ProcessorIndex,
    ) -> Result<Self, Error> {
        let entries = alloc
            .allocate(shape.layout, Some(processor))?
            .cast::<Entry<T>>();
        for i in 0..shape.entries {
            // SAFETY: the block holds `shape.entries` entries, aligned (allocator
            // promises 1 and 2); `i` is in bounds; no one else can reach it yet.
            unsafe {
                entries.add(i).write(Entry {
                    seq: AtomicUsize::new(i),
                    item: UnsafeCell::new(MaybeUninit::uninit()),
                })
            };
        }
        Ok(Self {
            tail: CachePadded::new(AtomicUsize::new(0)),
            consumer: CachePadded::new(ConsumerSide {
                busy: AtomicBool::new(false),
                head: UnsafeCell::new(0),
                delivered: AtomicUsize::new(0),
            }),
            entries,
            mask: shape.mask,
            _items: PhantomData,
        })
    }

    fn entry(&self, pos: usize) -> &Entry<T> {
        // SAFETY: `pos & mask < entries`, initialised in `new` and alive until
        // `free` (which needs the ring exclusively).
        unsafe { self.entries.add(pos & self.mask).as_ref() }
    }

    /// Puts `item` at the tail from any thread: one CAS when no other producer
    /// takes the same position (a lost race retries at the next one). Returns
    /// the item's position.
    pub(super) fn push(&self, item: T) -> Result<usize, T> {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let entry = self.entry(pos);
            // Acquire: the consumer moved the previous lap's item out before its
            // release store freed the entry.
            let seq = entry.seq.load(Ordering::Acquire);
            match Lap::of(seq, pos) {
                Lap::Free => match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: winning the CAS made position `pos`, and so
                        // this entry (free: `seq == pos`), ours alone until the
                        // release store below hands it to the consumer.
                        entry
                            .item
                            .with_mut(|slot| unsafe { slot.write(MaybeUninit::new(item)) });
                        entry.seq.store(pos.wrapping_add(1), PUBLISH);
                        return Ok(pos);
                    }
                    Err(now) => pos = now,
                },
                Lap::Full => return Err(item),
                Lap::Stale => pos = self.tail.load(Ordering::Relaxed),
            }
        }
    }

    /// Claims the consumer side: one CAS, never waits. `None` while another
    /// consumer holds it.
    pub(super) fn claim(&self) -> Option<Claim<'_, T>> {
        self.consumer
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // SAFETY: `head` is touched only under the claim, which we hold; the
        // claim's acquire made the previous holder's writes visible.
        let head = self.consumer.head.with(|head| unsafe { *head });
        Some(Claim {
            ring: self,
            entries: self.entries,
            mask: self.mask,
            head,
        })
    }

    /// Items queued now (a snapshot; may count items being pushed).
    pub(super) fn len(&self) -> usize {
        // ordering: equivalent (both loads): a snapshot count; no memory is read
        // through it, and callers that act on items get them through a claim.
        let tail = self.tail.load(Ordering::Acquire);
        // ordering: equivalent: the same snapshot.
        let delivered = self.consumer.delivered.load(Ordering::Acquire);
        tail.wrapping_sub(delivered).min(self.mask.wrapping_add(1))
    }

    /// The delivered watermark (see `ConsumerSide::delivered`).
    pub(super) fn delivered(&self) -> usize {
        self.consumer.delivered.load(Ordering::Acquire)
    }

    /// Drops the items still queued and frees the entries.
    ///
    /// # Safety
    ///
    /// The ring is not used again; `alloc` and `shape` are the ones it was built
    /// with; no push or claim is in progress.
    pub(super) unsafe fn free<A: RawAlloc>(&self, alloc: &A, shape: &InboxShape) {
        // A loom model that failed inside an entry access unwinds through here
        // with that access still open; touching the entries again would abort
        // the run instead of reporting the failure.
        #[cfg(loom)]
        if std::thread::panicking() {
            return;
        }
        if let Some(mut claim) = self.claim() {
            while claim.take().is_some() {}
        }
        for i in 0..shape.entries {
            // SAFETY: in bounds and initialised by `new`; no item is left in it
            // (taken above), only what loom's cell keeps for its bookkeeping.
            unsafe { core::ptr::drop_in_place(self.entries.add(i).as_ptr()) };
        }
        // SAFETY: allocated from `alloc` with this layout in `new` (caller).
        unsafe { alloc.deallocate(self.entries.cast(), shape.layout) };
    }
}

/// What a producer about to write position `pos` finds in its entry, from
/// the entry's sequence number `seq` (positions and sequences only grow, and
/// wrap: compared by difference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lap {
    /// `seq == pos`: the entry is free for `pos`.
    Free,
    /// `seq` is behind `pos` (by `entries - 1`): the entry still holds the
    /// previous lap's item, not yet consumed: the ring is full.
    Full,
    /// `seq` is ahead of `pos`: another producer took `pos` (`seq == pos + 1`),
    /// or took it and the consumer already freed the entry for the next lap
    /// (`seq == pos + entries`); either way `pos` is stale, read the tail again.
    Stale,
}

impl Lap {
    #[inline(always)]
    fn of(seq: usize, pos: usize) -> Self {
        match seq.wrapping_sub(pos) {
            0 => Self::Free,
            // Half the range: far more than any ring's entries either way.
            behind if behind > usize::MAX / 2 => Self::Full,
            _ => Self::Stale,
        }
    }
}

/// The consumer side of one ring, held; released (and the delivered watermark
/// published) on drop.
pub(super) struct Claim<'a, T> {
    ring: &'a Ring<T>,
    /// The ring's `entries` and `mask`, copied: a pop's stores to the ring
    /// would otherwise make the compiler load them again for every item.
    entries: NonNull<Entry<T>>,
    mask: usize,
    /// Next position to take (written back to the ring when the claim ends).
    head: usize,
}

impl<T> Claim<'_, T> {
    /// Takes the oldest item if it is fully pushed. No interlocked instruction.
    pub(super) fn take(&mut self) -> Option<T> {
        // SAFETY: the ring's own block and mask (see `Ring::entry`): `head &
        // mask` is in bounds, initialised in `new`, and alive while the ring is
        // borrowed.
        let entry = unsafe { self.entries.add(self.head & self.mask).as_ref() };
        let next = self.head.wrapping_add(1);
        if entry.seq.load(Ordering::Acquire) != next {
            // Empty, or the next producer has its position but has not
            // finished writing: a later take finds it.
            return None;
        }
        // SAFETY: `seq == head + 1`: the producer of `head` wrote the item before
        // its release store, which we acquired; we hold the claim, so no other
        // consumer reads it; no producer writes it until we free it below. The
        // item is moved out once: `head` moves past it at once.
        let item = entry
            .item
            .with_mut(|slot| unsafe { (*slot).assume_init_read() });
        // Free the entry for the producer of position `head + entries`.
        entry
            .seq
            .store(next.wrapping_add(self.mask), Ordering::Release);
        // Written back to the ring when the claim ends, not per item: a claim
        // that is leaked (`mem::forget`) never releases `busy`, so no one reads
        // the ring's `head` again (its items leak; none is taken twice).
        self.head = next;
        Some(item)
    }
}

impl<T> Drop for Claim<'_, T> {
    fn drop(&mut self) {
        let head = self.head;
        // SAFETY: written only under the claim, which we hold until the release
        // store of `busy` below hands it (and this write) to the next holder.
        self.ring.consumer.head.with_mut(|at| unsafe { *at = head });
        self.ring.consumer.delivered.store(self.head, PUBLISH);
        self.ring.consumer.busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::Lap;

    #[test]
    fn a_producer_tells_free_full_and_stale_entries_apart_at_every_lap() {
        for entries in [2usize, 4, 64, 1 << 20] {
            for pos in [
                0,
                1,
                5,
                entries,
                3 * entries + 1,
                usize::MAX - 1,
                usize::MAX,
            ] {
                assert_eq!(Lap::of(pos, pos), Lap::Free);
                // The previous lap's item, still there (pos - entries + 1).
                let previous_lap = pos.wrapping_sub(entries).wrapping_add(1);
                assert_eq!(Lap::of(previous_lap, pos), Lap::Full, "{entries} {pos}");
                // Taken by another producer, and then consumed and freed for
                // the next lap: stale, never full.
                assert_eq!(Lap::of(pos.wrapping_add(1), pos), Lap::Stale);
                let next_lap = pos.wrapping_add(entries);
                assert_eq!(Lap::of(next_lap, pos), Lap::Stale, "{entries} {pos}");
            }
        }
    }
}
