//! [`PerCpuQueue<T>`]: a bounded FIFO queue per processor, filled by its own
//! processor without contention and drained by any processor.
//!
//! # Why not `heapless` or `crossbeam`
//!
//! - `heapless::spsc::Queue` is close (one producer, no interlocked
//!   instruction), but its storage is an inline `[T; N]` (a per-processor slot
//!   built by value could put kilobytes on a 24 KiB kernel stack), it allows one
//!   consumer (we need any processor to drain), and its memory is invisible to
//!   loom, which has to see every cell here.
//! - `heapless::mpmc` and `crossbeam_queue::ArrayQueue` are Vyukov's bounded
//!   MPMC queue: every push is a CAS, the interlocked instruction the local
//!   producer must not pay. `ArrayQueue` also needs the global allocator
//!   (infallible `Box`), which a driver does not have.
//! - `crossbeam_deque` (Chase-Lev) grows without bound (no backpressure) and
//!   allocates globally.
//!
//! So each processor owns a single-producer ring whose consumer side is claimed
//! with a try-lock. The claim is never waited for: a consumer that finds another
//! one draining a queue moves on (that one takes the items), so a drainer
//! preempted at `PASSIVE_LEVEL` can never deadlock a DPC that drains the same
//! queue.
//!
//! # The protocol of one ring
//!
//! `tail` is written only by the producer, the processor's pinned owner
//! ([`PinGuard`] promises that only one thread at a time holds that processor),
//! with a release store after the item is written; `head` only by the consumer
//! holding the claim, with a release store after the item is moved out. Items
//! sit in cells that loom sees ([`crate::sync::UnsafeCell`]). The ring's storage
//! is allocated at the processor's prepare, through the container's
//! [`RawAlloc`] for that processor (NUMA placement), with the capacity chosen
//! at creation: a driver picks its queue depth at load time (from the device or
//! the registry), not at compile time.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicBool, AtomicPtr, AtomicUsize, Ordering, UnsafeCell, PUBLISH};
use crate::{
    Component, Error, InitFn, Iter, PerCpu, PinGuard, Platform, Prepared, ProcessorIndex, RawAlloc,
    SlotPadding, SlotState, CACHE_LINE,
};

/// One item's place in a ring.
type Cell<T> = UnsafeCell<MaybeUninit<T>>;

/// A push the queue refused: the item comes back with the reason.
///
/// `error` is [`Error::Exhausted`] when the processor's queue is full
/// (backpressure: retry later, complete the request with a busy status, or queue
/// it elsewhere) and [`Error::NotPrepared`] when the pinned processor has no
/// queue (its add has not started, or was aborted).
pub struct PushError<T> {
    /// The item that was not queued, unchanged.
    pub item: T,
    /// Why.
    pub error: Error,
}

impl<T> PushError<T> {
    /// The item that was not queued.
    pub fn into_inner(self) -> T {
        self.item
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item not queued: {}", self.error)
    }
}

impl<T> core::error::Error for PushError<T> {}

/// The geometry every processor's ring shares.
#[derive(Clone, Copy, Debug)]
struct RingShape {
    /// Items a ring holds at most (what the caller asked for).
    capacity: usize,
    /// Cells per ring: `capacity` rounded up to a power of two, so a position
    /// maps to its cell with a mask.
    cells: usize,
    /// `cells - 1`.
    mask: usize,
    /// The cells' block: cache-line aligned and padded.
    layout: Layout,
}

impl RingShape {
    fn new<T>(capacity: usize) -> Result<Self, Error> {
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
}

/// What consumers share: written under the claim.
struct ConsumerSide {
    /// Position of the next item to take, published to the producer. Written
    /// only by the claim holder.
    head: AtomicUsize,
    /// The claim holder's own copy of `head`: consumers never load the atomic
    /// they store. (Cheaper, and loom's scheduler tracks only an object's last
    /// access, so a load before a store of the same thread would hide that store
    /// from the race it has with the producer's load.)
    taken: UnsafeCell<usize>,
    /// The claim: set by the one consumer taking items from this ring.
    busy: AtomicBool,
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
#[repr(C)]
struct Ring<T> {
    consumer: CachePadded<ConsumerSide>,
    /// Position of the next item to put, published to consumers. Written only
    /// by the producer.
    tail: AtomicUsize,
    producer: UnsafeCell<ProducerSide>,
    /// The cells: null until the processor's prepare installs them, then fixed
    /// until the container drops.
    cells: AtomicPtr<Cell<T>>,
    /// Owns `T`s: sending a ring sends its items.
    _items: PhantomData<T>,
}

// SAFETY: a ring moves items from its producer's thread to consumers' threads
// (so `T: Send`), never shares a `&T`. Its shared state is atomic, the
// producer-only fields are touched only by the pinned owner (see `push`), and a
// cell is accessed by the producer only before the release store of `tail` that
// hands it over, and by the claim holder only before the release store of
// `head` that hands it back.
unsafe impl<T: Send> Send for Ring<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Ring<T> {}

impl<T> Ring<T> {
    /// A ring with no cells yet (the constructor `PerCpu` calls).
    fn empty(_processor: ProcessorIndex) -> Result<Self, Error> {
        Ok(Self {
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
            cells: AtomicPtr::new(ptr::null_mut()),
            _items: PhantomData,
        })
    }

    fn has_cells(&self) -> bool {
        !self.cells.load(Ordering::Acquire).is_null()
    }

    /// Puts `item` at the tail.
    ///
    /// # Safety
    ///
    /// The caller is the ring's only producer for the whole call: it holds a
    /// [`PinGuard`] for the ring's processor (only one thread can), and does not
    /// re-enter.
    #[inline(always)]
    unsafe fn push(&self, shape: &RingShape, item: T) -> Result<(), PushError<T>> {
        let Some(cells) = NonNull::new(self.cells.load(Ordering::Acquire)) else {
            return Err(PushError {
                item,
                error: Error::NotPrepared,
            });
        };
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
            let cell: &Cell<T> = cells.add(tail & shape.mask).as_ref();
            cell.with_mut(|cell| cell.write(MaybeUninit::new(item)));
        }
        producer.tail = tail.wrapping_add(1);
        self.tail.store(producer.tail, PUBLISH);
        Ok(())
    }

    /// Claims the consumer side and drains what is queued now, or an empty
    /// drain if another consumer holds the claim or there are no cells.
    fn drain(&self, mask: usize) -> Drain<'_, T> {
        Drain {
            claim: self.claim(mask),
        }
    }

    /// The consumer side, unless another consumer holds it or there are no
    /// cells. One CAS.
    fn claim(&self, mask: usize) -> Option<Claim<'_, T>> {
        let cells = NonNull::new(self.cells.load(Ordering::Acquire))?;
        self.consumer
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // SAFETY: `taken` is written only under the claim, which we hold; the
        // claim's acquire made the previous holder's write visible.
        let head = self.consumer.taken.with(|taken| unsafe { *taken });
        let end = self.tail.load(Ordering::Acquire);
        Some(Claim {
            ring: self,
            cells,
            mask,
            head,
            end,
        })
    }

    /// Items queued now (a snapshot).
    fn len(&self, capacity: usize) -> usize {
        let head = self.consumer.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        tail.wrapping_sub(head).min(capacity)
    }
}

/// The consumer claim on one ring, released on drop.
struct Claim<'a, T> {
    ring: &'a Ring<T>,
    cells: NonNull<Cell<T>>,
    mask: usize,
    /// Next position to take (ours to write while we hold the claim).
    head: usize,
    /// The tail seen when the claim was taken: a drain takes at most what was
    /// queued when it started, so a busy producer cannot keep it going.
    end: usize,
}

impl<T> Claim<'_, T> {
    fn take(&mut self) -> Option<T> {
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

/// The items of one processor's queue, oldest first, from
/// [`PerCpuQueue::drain`], [`PerCpuQueue::abort`] or [`PerCpuQueue::pop`].
///
/// While it lives it holds that queue's consumer claim: other consumers find
/// the queue empty in the meantime (the producer is not affected). It yields
/// at most what was queued when it was made. Each item is removed from the
/// queue as it is yielded; dropping the drain early leaves the rest queued.
pub struct Drain<'a, T> {
    claim: Option<Claim<'a, T>>,
}

impl<T> Drain<'_, T> {
    fn empty() -> Self {
        Self { claim: None }
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
        let left = self
            .claim
            .as_ref()
            .map_or(0, |claim| claim.end.wrapping_sub(claim.head));
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

/// The consumer side of one processor's queue, held: [`pop`](Self::pop) takes
/// items without an interlocked instruction, including items queued after the
/// claim was taken. From [`PerCpuQueue::consumer`].
///
/// For a DPC that processes its own processor's queue: claim once, then push
/// and pop freely. While it lives, other consumers find that queue empty (it
/// is being consumed); the producer is not affected. Dropping it releases the
/// claim; items not popped stay queued.
pub struct Consumer<'a, T> {
    claim: Claim<'a, T>,
}

impl<T> Consumer<'_, T> {
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

/// Every processor's items, queue after queue, from [`PerCpuQueue::drain_all`].
pub struct DrainAll<'a, T> {
    rings: Iter<'a, Ring<T>>,
    current: Option<(ProcessorIndex, Drain<'a, T>)>,
    mask: usize,
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
            self.current = Some((index, ring.drain(self.mask)));
        }
    }
}

impl<T> fmt::Debug for DrainAll<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainAll").finish_non_exhaustive()
    }
}

/// A bounded FIFO queue per processor, grown by hot-add.
///
/// - **Produce** ([`push`](Self::push)): only on the caller's own processor,
///   pinned. No lock, no interlocked instruction, no allocation: a few plain
///   loads and stores and one release store. A full queue hands the item back
///   ([`PushError`], [`Error::Exhausted`]): backpressure, never a drop.
/// - **Consume** ([`pop`](Self::pop), [`drain`](Self::drain),
///   [`drain_all`](Self::drain_all)): from any processor, pinned or not.
///   Consumers of one queue exclude each other with a try-claim (one CAS per
///   drain, not per item) and never wait: a queue another consumer is draining
///   looks empty to the others, and that consumer takes its items. A
///   [`Consumer`] holds the claim across pops (a DPC working off its own
///   processor's queue).
/// - **Hot-add** ([`Component`]): a processor's queue is allocated (for that
///   processor) and published at AddStart, so work may be queued on it before
///   AddComplete.
///
/// # Nothing is lost across an abort
///
/// An aborted add hides the processor's queue but keeps it, items included:
/// [`abort`](Self::abort) drains what it holds back to the caller. A push that
/// was already running on that processor when the abort came may still land
/// after that drain (the processor's code may run until the kernel stops it), so
/// the rule is: **items in an aborted processor's queue are still queued**.
/// [`drain_all`](Self::drain_all), [`drain`](Self::drain) and
/// [`pop`](Self::pop) visit retired queues too, and a later add of that
/// processor gets its queue back as it was. A driver that drains everything at
/// unload (or periodically with `drain_all`) never loses an item.
///
/// A processor with no queue (its add has not started, or was aborted) gets
/// [`Error::NotPrepared`] from `push`, with the item back: queue it on another
/// processor, or process it inline.
///
/// Items left in the queues when the container is dropped are dropped with it.
///
/// ```
/// use perproc::host::HostPlatform;
/// use perproc::{Components, Error, PerCpuQueue, Platform, ProcessorIndex};
///
/// let platform = HostPlatform::new(8)?;
/// let submissions = PerCpuQueue::new(&platform, 2)?; // two requests per processor
/// let driver = Components::new([&submissions]);
/// let cpu1 = ProcessorIndex::new(1).unwrap();
/// driver.start(cpu1)?;
///
/// // On processor 1, pinned (a DPC, at DISPATCH_LEVEL on Windows):
/// platform.bind_current_thread(cpu1)?;
/// let pin = platform.pin();
/// submissions.push(&pin, "read 4K").unwrap();
/// submissions.push(&pin, "write 8K").unwrap();
/// let refused = submissions.push(&pin, "flush").unwrap_err();
/// assert_eq!(refused.error, Error::Exhausted); // full: the caller keeps "flush"
/// assert_eq!(refused.item, "flush");
/// drop(pin);
///
/// // Anywhere: a completion DPC drains every processor's queue.
/// let drained: Vec<_> = submissions.drain_all().collect();
/// assert_eq!(drained, [(cpu1, "read 4K"), (cpu1, "write 8K")]);
/// # Ok::<(), perproc::Error>(())
/// ```
pub struct PerCpuQueue<T, P: Platform, A: RawAlloc = <P as Platform>::Alloc> {
    rings: PerCpu<Ring<T>, P, A>,
    shape: RingShape,
}

impl<T, P: Platform> PerCpuQueue<T, P> {
    /// A queue of `capacity` items for each processor the platform can have. No
    /// processor is prepared yet: registration (or [`prepare`](Self::prepare))
    /// adds them; only then is memory allocated for a processor.
    ///
    /// # Errors
    /// [`Error::CapacityOverflow`] for a `capacity` of 0 or one whose storage
    /// does not fit the address space; [`Error::OutOfMemory`] for the table.
    pub fn new(platform: &P, capacity: usize) -> Result<Self, Error> {
        Self::new_in(platform, platform.allocator(), capacity)
    }
}

impl<T, P: Platform, A: RawAlloc> PerCpuQueue<T, P, A> {
    /// [`new`](PerCpuQueue::new) with memory from `alloc` (a pool tag of its
    /// own, a counting or failing allocator in tests).
    ///
    /// ```
    /// use perproc::{host::{HostAlloc, HostPlatform}, PerCpuQueue, ProcessorIndex};
    /// let platform = HostPlatform::new(64)?;
    /// let completions = PerCpuQueue::<u64, _, _>::new_in(&platform, HostAlloc, 256)?;
    /// let _ = completions.prepare(ProcessorIndex::new(63).unwrap())?;
    /// assert_eq!(completions.capacity(), 256);
    /// # Ok::<(), perproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](PerCpuQueue::new).
    pub fn new_in(platform: &P, alloc: A, capacity: usize) -> Result<Self, Error> {
        let shape = RingShape::new::<T>(capacity)?;
        let init: InitFn<Ring<T>> = Ring::empty;
        Ok(Self {
            rings: PerCpu::with_padding_in(platform, alloc, SlotPadding::CacheLine, init)?,
            shape,
        })
    }

    /// Queues `item` on the processor the caller is pinned to.
    ///
    /// No lock, no interlocked instruction, no allocation, never blocks.
    ///
    /// # Errors
    /// The item comes back in a [`PushError`] with [`Error::Exhausted`] if that
    /// processor's queue is full, or [`Error::NotPrepared`] if the processor has
    /// no queue (not added yet, or its add was aborted).
    #[inline]
    pub fn push(&self, pin: &PinGuard<'_, P>, item: T) -> Result<(), PushError<T>> {
        let Some(ring) = self.rings.current(pin) else {
            return Err(PushError {
                item,
                error: Error::NotPrepared,
            });
        };
        // SAFETY: `ring` is the queue of the processor `pin` holds (of this
        // queue's machine: `current` checks), and a pin for an index exists on
        // one thread at a time (Platform promise 2),
        // so this thread is the ring's only producer; `push` runs no code of the
        // caller's, so it is not re-entered.
        unsafe { ring.push(&self.shape, item) }
    }

    /// Takes the oldest item of processor `index`'s queue (published or
    /// retired), from any processor.
    ///
    /// `None` if that queue is empty, does not exist, or another consumer is
    /// draining it right now (that consumer takes its items).
    #[inline]
    pub fn pop(&self, index: ProcessorIndex) -> Option<T> {
        self.drain(index).next()
    }

    /// Takes every item queued now on processor `index` (published or retired),
    /// oldest first, from any processor. See [`Drain`].
    ///
    /// Empty if the queue is empty, does not exist, or another consumer is
    /// draining it right now.
    pub fn drain(&self, index: ProcessorIndex) -> Drain<'_, T> {
        self.ring(index)
            .map_or_else(Drain::empty, |ring| ring.drain(self.shape.mask))
    }

    /// Holds the consumer side of processor `index`'s queue (published or
    /// retired) until the [`Consumer`] is dropped, so that popping takes no
    /// interlocked instruction per item. One CAS.
    ///
    /// `None` if that queue does not exist or another consumer holds it.
    ///
    /// ```
    /// use perproc::host::HostPlatform;
    /// use perproc::{PerCpuQueue, Platform, ProcessorIndex};
    ///
    /// let platform = HostPlatform::new(1)?;
    /// let work = PerCpuQueue::new(&platform, 64)?;
    /// work.prepare(ProcessorIndex::ZERO)?;
    /// let pin = platform.pin();
    /// let mut mine = work.consumer(ProcessorIndex::ZERO).unwrap();
    /// for request in 0..3 {
    ///     work.push(&pin, request).unwrap();
    ///     assert_eq!(mine.pop(), Some(request));
    /// }
    /// assert!(work.pop(ProcessorIndex::ZERO).is_none()); // held by `mine`
    /// # Ok::<(), perproc::Error>(())
    /// ```
    pub fn consumer(&self, index: ProcessorIndex) -> Option<Consumer<'_, T>> {
        let claim = self.ring(index)?.claim(self.shape.mask)?;
        Some(Consumer { claim })
    }

    /// Takes every item of every processor's queue, retired ones included, each
    /// queue oldest first, with the processor it was queued on. Queues another
    /// consumer is draining at that moment are skipped (it takes their items).
    ///
    /// Costs O(processors ever prepared) plus the items.
    pub fn drain_all(&self) -> DrainAll<'_, T> {
        DrainAll {
            rings: self.rings.iter_all(),
            current: None,
            mask: self.shape.mask,
        }
    }

    /// How many items processor `index`'s queue holds now (0 if it has none).
    /// A snapshot: producers and consumers may change it at once.
    pub fn len(&self, index: ProcessorIndex) -> usize {
        self.ring(index)
            .map_or(0, |ring| ring.len(self.shape.capacity))
    }

    /// How many items all queues hold now, retired ones included (a snapshot).
    pub fn total_len(&self) -> usize {
        self.rings.iter_all().fold(0, |total, (_, ring)| {
            total.saturating_add(ring.len(self.shape.capacity))
        })
    }

    /// The items each processor's queue holds at most.
    pub fn capacity(&self) -> usize {
        self.shape.capacity
    }

    /// AddStart: allocates processor `index`'s queue (placed for it) and
    /// publishes it; from then on code on that processor can push. Idempotent;
    /// an aborted processor gets its queue back as the abort left it, without
    /// allocating.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`], [`Error::OutOfMemory`], [`Error::Busy`]
    /// while another event for `index` is in flight. On error nothing is
    /// published and nothing leaks.
    pub fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        if index.as_usize() >= self.rings.capacity() {
            return Err(Error::IndexOutOfRange {
                index,
                capacity: self.rings.capacity(),
            });
        }
        // A queue kept from an aborted add (or already prepared) has its cells.
        let fresh = if self.ring(index).is_some_and(Ring::has_cells) {
            None
        } else {
            Some(self.allocate_cells(index)?)
        };
        // On error `fresh` is dropped, which frees the cells.
        let prepared = self.rings.prepare(index)?;
        // Between our prepare and this, a concurrent abort may have hidden the
        // ring (then it is retired) or be hiding it (then neither finds it:
        // `fresh` is freed and the next prepare of `index` allocates again).
        let ring = self.ring(index).ok_or(Error::Busy)?;
        if let Some(fresh) = fresh {
            fresh.install(ring);
        }
        Ok(prepared)
    }

    /// AddComplete: marks processor `index` online. O(1), allocates nothing.
    ///
    /// # Errors
    /// As [`PerCpu::commit`].
    pub fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.rings.commit(index)
    }

    /// AddFailure: hides processor `index`'s queue and drains what it holds
    /// back to the caller. The queue is kept (see "Nothing is lost across an
    /// abort"): a push that raced the abort is found by a later
    /// [`drain_all`](Self::drain_all).
    ///
    /// Idempotent: an already aborted processor's queue is drained again; a
    /// processor never prepared gives an empty drain.
    ///
    /// # Errors
    /// As [`PerCpu::abort`]: [`Error::AlreadyOnline`] for a completed add.
    pub fn abort(&self, index: ProcessorIndex) -> Result<Drain<'_, T>, Error> {
        self.rings.abort(index)?;
        Ok(self
            .rings
            .retired(index)
            .map_or_else(Drain::empty, |ring| ring.drain(self.shape.mask)))
    }

    /// Where processor `index` stands.
    pub fn state(&self, index: ProcessorIndex) -> SlotState {
        self.rings.state(index)
    }

    /// How many processors have a published queue (prepared or online).
    pub fn published_count(&self) -> usize {
        self.rings.published_count()
    }

    /// The processor's queue, published or retired.
    fn ring(&self, index: ProcessorIndex) -> Option<&Ring<T>> {
        self.rings.get(index).or_else(|| self.rings.retired(index))
    }

    /// Allocates and initialises a ring's cells, placed for `index`.
    fn allocate_cells(&self, index: ProcessorIndex) -> Result<FreshCells<'_, T, P, A>, Error> {
        let cells = if self.shape.layout.size() == 0 {
            // Zero-sized items: no memory, any aligned pointer will do.
            NonNull::dangling()
        } else {
            self.rings
                .allocator()
                .allocate(self.shape.layout, Some(index))?
                .cast::<Cell<T>>()
        };
        for i in 0..self.shape.cells {
            // SAFETY: the block holds `shape.cells` cells and is aligned for them
            // (allocator promises 1 and 2; a dangling pointer is aligned and fine
            // for zero-sized cells); `i` is in bounds; nothing else can reach the
            // block yet.
            unsafe { cells.add(i).write(UnsafeCell::new(MaybeUninit::uninit())) };
        }
        Ok(FreshCells { queue: self, cells })
    }

    /// Drops the cells' bookkeeping and returns their block.
    ///
    /// # Safety
    ///
    /// `cells` came from `allocate_cells` of this queue, holds no item that is
    /// still owed to anyone, and nobody uses it after this call.
    unsafe fn free_cells(&self, cells: NonNull<Cell<T>>) {
        for i in 0..self.shape.cells {
            // SAFETY: in bounds and initialised by `allocate_cells`; the cells
            // themselves hold no live item (caller's promise), only what loom's
            // cell keeps for its bookkeeping.
            unsafe { ptr::drop_in_place(cells.add(i).as_ptr()) };
        }
        if self.shape.layout.size() != 0 {
            // SAFETY: allocated from this allocator with this layout in
            // `allocate_cells`; not used after (caller's promise).
            unsafe {
                self.rings
                    .allocator()
                    .deallocate(cells.cast(), self.shape.layout)
            };
        }
    }
}

/// Cells allocated by a prepare, freed on drop unless installed.
struct FreshCells<'a, T, P: Platform, A: RawAlloc> {
    queue: &'a PerCpuQueue<T, P, A>,
    cells: NonNull<Cell<T>>,
}

impl<T, P: Platform, A: RawAlloc> FreshCells<'_, T, P, A> {
    /// Gives the cells to a ring that has none; frees them if another prepare
    /// got there first.
    fn install(self, ring: &Ring<T>) {
        if ring
            .cells
            .compare_exchange(
                ptr::null_mut(),
                self.cells.as_ptr(),
                PUBLISH,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            core::mem::forget(self);
        }
    }
}

impl<T, P: Platform, A: RawAlloc> Drop for FreshCells<'_, T, P, A> {
    fn drop(&mut self) {
        // SAFETY: ours from `allocate_cells`, never published, so empty and
        // unreachable by anyone else.
        unsafe { self.queue.free_cells(self.cells) };
    }
}

impl<T, P: Platform, A: RawAlloc> Drop for PerCpuQueue<T, P, A> {
    fn drop(&mut self) {
        // A loom model that failed inside a cell access unwinds through here with
        // that access still open; touching the cells again would abort the run
        // instead of reporting the failure.
        #[cfg(loom)]
        if std::thread::panicking() {
            return;
        }
        for (_, ring) in self.rings.iter_all() {
            let Some(cells) = NonNull::new(ring.cells.swap(ptr::null_mut(), Ordering::Acquire))
            else {
                continue;
            };
            // Not through a claim: a drain leaked with `mem::forget` keeps its
            // claim forever, and its items must still be dropped.
            let mut head = ring.consumer.head.load(Ordering::Acquire);
            let tail = ring.tail.load(Ordering::Acquire);
            while head != tail {
                // SAFETY: `&mut self`: no producer or consumer is left. Cells from
                // `head` to `tail` hold the items queued and not taken, each
                // initialised once by a push; each is dropped once here.
                unsafe {
                    let cell: &Cell<T> = cells.add(head & self.shape.mask).as_ref();
                    cell.with_mut(|cell| ptr::drop_in_place(cell.cast::<T>()));
                }
                head = head.wrapping_add(1);
            }
            // SAFETY: from `allocate_cells` (only installed cells are on a ring);
            // the items were dropped above; the ring no longer points to them.
            unsafe { self.free_cells(cells) };
        }
    }
}

impl<T, P: Platform, A: RawAlloc> Component for PerCpuQueue<T, P, A>
where
    Self: Sync,
{
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        PerCpuQueue::prepare(self, index)
    }

    fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        PerCpuQueue::commit(self, index)
    }

    /// Hides the queue; its items stay queued (see "Nothing is lost across an
    /// abort") until a `drain_all`, a `drain` of that processor, or its next add.
    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.rings.abort(index).map(|_| ())
    }
}

impl<T, P: Platform, A: RawAlloc> fmt::Debug for PerCpuQueue<T, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuQueue")
            .field("capacity", &self.shape.capacity)
            .field("processors", &self.rings.capacity())
            .field("published", &self.rings.published_count())
            .finish_non_exhaustive()
    }
}
