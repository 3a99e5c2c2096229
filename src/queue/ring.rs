//! One processor's ring: the single-producer, claimed-consumer FIFO that a
//! [`PerCpuQueue`](super::PerCpuQueue) keeps per processor, and the geometry
//! (and cell storage) every ring of a queue shares.

use core::alloc::Layout;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};

use crossbeam_utils::CachePadded;

use super::claim::Claim;
use super::error::PushError;
use crate::sync::{AtomicBool, AtomicUsize, Ordering, UnsafeCell, PUBLISH};
use crate::{Error, ProcessorIndex, RawAlloc, CACHE_LINE};

/// One item's place in a ring.
pub(super) type Cell<T> = UnsafeCell<MaybeUninit<T>>;

/// The geometry every processor's ring shares.
#[derive(Clone, Copy, Debug)]
pub(super) struct RingShape {
    /// Items a ring holds at most (what the caller asked for).
    pub(super) capacity: usize,
    /// Cells per ring: `capacity` rounded up to a power of two, so a position
    /// maps to its cell with a mask.
    cells: usize,
    /// `cells - 1`.
    pub(super) mask: usize,
    /// The cells' block: cache-line aligned and padded.
    layout: Layout,
}

impl RingShape {
    pub(super) fn new<T>(capacity: usize) -> Result<Self, Error> {
        if capacity == 0 {
            return Err(Error::CapacityOverflow);
        }
        let cells = capacity
            .checked_next_power_of_two()
            .ok_or(Error::CapacityOverflow)?;
        let layout = Layout::array::<Cell<T>>(cells)
            .and_then(|layout| layout.align_to(CACHE_LINE))
            .map_err(|_| Error::CapacityOverflow)?
            .pad_to_align();
        Ok(Self {
            capacity,
            cells,
            mask: cells.wrapping_sub(1),
            layout,
        })
    }

    /// Allocates and initialises a ring's cells from `alloc`, placed for
    /// `index`.
    pub(super) fn allocate_cells<T, A: RawAlloc>(
        &self,
        alloc: &A,
        index: ProcessorIndex,
    ) -> Result<NonNull<Cell<T>>, Error> {
        let cells = if self.layout.size() == 0 {
            // Zero-sized items: no memory, any aligned pointer will do.
            NonNull::dangling()
        } else {
            alloc.allocate(self.layout, Some(index))?.cast::<Cell<T>>()
        };
        for i in 0..self.cells {
            // SAFETY: the block holds `self.cells` cells and is aligned for them
            // (allocator promises 1 and 2; a dangling pointer is aligned and fine
            // for zero-sized cells); `i` is in bounds; nothing else can reach the
            // block yet.
            unsafe { cells.add(i).write(UnsafeCell::new(MaybeUninit::uninit())) };
        }
        Ok(cells)
    }

    /// Drops the cells' bookkeeping and returns their block to `alloc`.
    ///
    /// # Safety
    ///
    /// `cells` came from [`allocate_cells`](Self::allocate_cells) of this shape
    /// with this allocator, holds no item that is still owed to anyone, and
    /// nobody uses it after this call.
    pub(super) unsafe fn free_cells<T, A: RawAlloc>(&self, alloc: &A, cells: NonNull<Cell<T>>) {
        for i in 0..self.cells {
            // SAFETY: in bounds and initialised by `allocate_cells`; the cells
            // themselves hold no live item (caller's promise), only what loom's
            // cell keeps for its bookkeeping.
            unsafe { ptr::drop_in_place(cells.add(i).as_ptr()) };
        }
        if self.layout.size() != 0 {
            // SAFETY: allocated from this allocator with this layout in
            // `allocate_cells`; not used after (caller's promise).
            unsafe { alloc.deallocate(cells.cast(), self.layout) };
        }
    }
}

/// What consumers share: written under the claim.
pub(super) struct ConsumerSide {
    /// Position of the next item to take, published to the producer. Written
    /// only by the claim holder.
    pub(super) head: AtomicUsize,
    /// The claim holder's own copy of `head`: consumers never load the atomic
    /// they store. (Cheaper, and loom's scheduler tracks only an object's last
    /// access, so a load before a store of the same thread would hide that store
    /// from the race it has with the producer's load.)
    pub(super) taken: UnsafeCell<usize>,
    /// The claim: set by the one consumer taking items from this ring.
    pub(super) busy: AtomicBool,
}

/// What only the producer touches.
struct ProducerSide {
    /// Its own copy of `tail` (never loads the atomic it stores, as above).
    tail: usize,
    /// Its last view of `head`, so it reads the consumers' line only when the
    /// ring looks full.
    head_seen: usize,
}

/// One processor's queue: the consumers' state on its own cache line, the
/// producer's on the next, so a remote drain does not evict what the producer
/// writes on every push (beyond the `tail` it reads).
///
/// A ring is built with its cells, inside the processor's slot construction
/// (see `PerCpuQueue::prepare`): no ring is ever published, retired or
/// revived without them, so no later step has to install them.
#[repr(C)]
pub(super) struct Ring<T> {
    pub(super) consumer: CachePadded<ConsumerSide>,
    /// Position of the next item to put, published to consumers. Written only
    /// by the producer.
    pub(super) tail: AtomicUsize,
    producer: UnsafeCell<ProducerSide>,
    /// The cells, from the queue's `RingShape::allocate_cells`; fixed until
    /// the container drops, which frees them.
    pub(super) cells: NonNull<Cell<T>>,
    /// Owns `T`s: sending a ring sends its items.
    _items: PhantomData<T>,
}

// SAFETY: a ring moves items from its producer's thread to consumers' threads
// (so `T: Send`), never shares a `&T`. Its shared state is atomic, the
// producer-only fields are touched only by the pinned owner (see `push`), and a
// cell is accessed by the producer only before the release store of `tail` that
// hands it over, and by the claim holder only before the release store of
// `head` that hands it back. The cells pointer is written once, before the
// ring is published with its slot.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// An empty ring over `cells` (from `RingShape::allocate_cells`).
    pub(super) fn new(cells: NonNull<Cell<T>>) -> Self {
        Self {
            consumer: CachePadded::new(ConsumerSide {
                head: AtomicUsize::new(0),
                taken: UnsafeCell::new(0),
                busy: AtomicBool::new(false),
            }),
            tail: AtomicUsize::new(0),
            producer: UnsafeCell::new(ProducerSide {
                tail: 0,
                head_seen: 0,
            }),
            cells,
            _items: PhantomData,
        }
    }

    /// Puts `item` at the tail.
    ///
    /// # Safety
    ///
    /// The caller is the ring's only producer for the whole call: it holds a
    /// [`PinGuard`](crate::PinGuard) for the ring's processor (only one thread
    /// can), and does not re-enter.
    #[inline(always)]
    pub(super) unsafe fn push(&self, shape: &RingShape, item: T) -> Result<(), PushError<T>> {
        // SAFETY: producer-only state and we are the producer (caller's
        // promise), so nothing else reads or writes it during this call.
        let producer = self.producer.with_mut(|producer| unsafe { &mut *producer });
        let tail = producer.tail;
        if tail.wrapping_sub(producer.head_seen) >= shape.capacity {
            // Acquire: the consumer moved the items out of the cells it freed
            // before its release store, so we may overwrite them.
            producer.head_seen = self.consumer.head.load(Ordering::Acquire);
            if tail.wrapping_sub(producer.head_seen) >= shape.capacity {
                return Err(PushError {
                    item,
                    error: Error::Exhausted,
                });
            }
        }
        // SAFETY: `tail & mask < cells`, the block's length. The cell at `tail`
        // is free: fewer than `capacity` items sit between `head` and `tail`, and
        // no consumer touches a cell at or past the `tail` it acquired. Only we
        // write it until the release store below hands it to consumers.
        unsafe {
            let cell: &Cell<T> = self.cells.add(tail & shape.mask).as_ref();
            cell.with_mut(|cell| cell.write(MaybeUninit::new(item)));
        }
        producer.tail = tail.wrapping_add(1);
        self.tail.store(producer.tail, PUBLISH);
        Ok(())
    }

    /// The consumer side, unless another consumer holds it. One CAS.
    pub(super) fn claim(&self, mask: usize) -> Option<Claim<'_, T>> {
        self.consumer
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // SAFETY: `taken` is written only under the claim, which we hold; the
        // claim's acquire made the previous holder's write visible.
        let head = self.consumer.taken.with(|taken| unsafe { *taken });
        let end = self.tail.load(Ordering::Acquire);
        Some(Claim::new(self, mask, head, end))
    }

    /// Items queued now (a snapshot).
    pub(super) fn len(&self, capacity: usize) -> usize {
        // ordering: equivalent (both loads): a snapshot count; no memory is read
        // through it, and callers that act on items get them through a claim.
        let head = self.consumer.head.load(Ordering::Acquire);
        // ordering: equivalent: the same snapshot.
        let tail = self.tail.load(Ordering::Acquire);
        tail.wrapping_sub(head).min(capacity)
    }

    /// Takes the oldest item without the claim: for the owner of the whole
    /// queue (teardown, drop), which also takes what a leaked claim holds.
    ///
    /// # Safety
    ///
    /// No producer or consumer of this ring is left: the caller owns the
    /// queue (`&mut` or by value), and no claim or drain of it is alive (a
    /// leaked one is never used again).
    pub(super) unsafe fn take_unclaimed(&self, mask: usize) -> Option<T> {
        // ordering: equivalent (the loads here and the store below): the caller
        // owns the queue (`&mut` or by value), and whatever handed it over
        // exclusively (a join, an Arc's last drop) ordered every push and claim.
        let head = self.consumer.head.load(Ordering::Acquire);
        // ordering: equivalent: as the load above (the caller owns the queue).
        if head == self.tail.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: nobody else touches the ring (caller's promise). The cells
        // from `head` to `tail` hold the items queued and not taken, each
        // initialised once by a push; this one is moved out once: `head`
        // advances past it below. `head & mask` is in bounds.
        let item = unsafe {
            let cell: &Cell<T> = self.cells.add(head & mask).as_ref();
            cell.with_mut(|cell| cell.read().assume_init())
        };
        let head = head.wrapping_add(1);
        // SAFETY: no claim holder is left (caller's promise), so we are the
        // only writer of `taken`.
        self.consumer
            .taken
            .with_mut(|taken| unsafe { *taken = head });
        // ordering: equivalent: see above (the queue is owned: no other thread
        // reads `head` until whatever hands the queue on orders it).
        self.consumer.head.store(head, Ordering::Release);
        Some(item)
    }
}
