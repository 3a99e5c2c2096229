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
//! ([`PinGuard`]: only one thread at a time holds that processor), with a
//! release store after the item is written; `head` only by the consumer
//! holding the claim, with a release store after the item is moved out. Items
//! sit in cells that loom sees ([`crate::sync::UnsafeCell`]). The ring's cells
//! are allocated while the processor's slot is built (inside
//! [`PerCpu::prepare_with`]'s constructor, with the table word still
//! `BUILDING`), through the container's [`RawAlloc`] for that processor (NUMA
//! placement), with the capacity chosen at creation: a driver picks its queue
//! depth at load time (from the device or the registry), not at compile time.
//! A ring is therefore never published, retired or revived without its cells,
//! and no event for the same processor can come in between the allocation and
//! the publication (it finds the processor busy).
//!
//! # Where things are
//!
//! `ring` (one processor's ring and the shape all share), `claim` (the
//! consumer claim, [`Consumer`]), `drain` ([`Drain`], [`DrainAll`]), `error`
//! ([`PushError`]), `leftovers` ([`QueueLeftovers`], from teardown); the container
//! is here.

mod claim;
mod drain;
mod error;
mod leftovers;
mod ring;

use core::fmt;

pub use self::claim::Consumer;
pub use self::drain::{Drain, DrainAll};
pub use self::error::PushError;
pub use self::leftovers::QueueLeftovers;
use self::ring::{Ring, RingShape};
use crate::{
    Component, Error, InitFn, PerCpu, PinGuard, Platform, Prepared, ProcessorIndex, RawAlloc,
    SlotPadding, SlotState,
};

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
/// # Nothing is dropped silently
///
/// [`teardown`](Self::teardown) hands back every item still queued, on every
/// processor (retired queues and items under a leaked [`Drain`] included), as
/// an owning iterator ([`QueueLeftovers`]): complete them, fail them, count them.
/// Plain drop drops them instead, each exactly once. For owned pool objects
/// ([`PoolBox`](crate::PoolBox)) that is not a leak either: a dropped box
/// drops its value and returns its memory to its pool's home list (one CAS, at
/// any IRQL, even after the pool moved), which the pool takes back under its
/// lock.
///
/// ```
/// use perproc::host::HostPlatform;
/// use perproc::{Error, PerCpuQueue, Platform, ProcessorIndex};
///
/// let platform = HostPlatform::new(8)?;
/// let submissions = PerCpuQueue::new(&platform, 2)?; // two requests per processor
/// let cpu1 = ProcessorIndex::new(1).unwrap();
/// let _ = submissions.prepare(cpu1)?; // AddStart (registration does this)
///
/// // On processor 1, pinned (a DPC, at DISPATCH_LEVEL on Windows):
/// platform.bind_current_thread(cpu1)?;
/// platform.pinned(|pin| {
///     submissions.push(pin, "read 4K").unwrap();
///     submissions.push(pin, "write 8K").unwrap();
///     let refused = submissions.push(pin, "flush").unwrap_err();
///     assert_eq!(refused.error, Error::Exhausted); // full: the caller keeps "flush"
///     assert_eq!(refused.item, "flush");
/// })?;
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
        // Never called: rings are built by `prepare`, with their cells, through
        // `prepare_with` (a stored constructor could not reach the shape).
        let unused: InitFn<Ring<T>> = |_| Err(Error::NotPrepared);
        Ok(Self {
            rings: PerCpu::with_padding_in(platform, alloc, SlotPadding::CacheLine, unused)?,
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
        // one thread at a time (Platform promise 2), so this thread is the
        // ring's only producer; `push` runs no code of the caller's, so it is
        // not re-entered.
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
            .map_or_else(Drain::empty, |ring| Drain::of(ring, self.shape.mask))
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
    /// let _ = work.prepare(ProcessorIndex::ZERO)?;
    /// platform.pinned(|pin| {
    ///     let mut mine = work.consumer(ProcessorIndex::ZERO).unwrap();
    ///     for request in 0..3 {
    ///         work.push(pin, request).unwrap();
    ///         assert_eq!(mine.pop(), Some(request));
    ///     }
    ///     assert!(work.pop(ProcessorIndex::ZERO).is_none()); // held by `mine`
    /// })?;
    /// # Ok::<(), perproc::Error>(())
    /// ```
    pub fn consumer(&self, index: ProcessorIndex) -> Option<Consumer<'_, T>> {
        let claim = self.ring(index)?.claim(self.shape.mask)?;
        Some(Consumer::new(claim))
    }

    /// Takes every item of every processor's queue, retired ones included, each
    /// queue oldest first, with the processor it was queued on. Queues another
    /// consumer is draining at that moment are skipped (it takes their items).
    ///
    /// Costs O(processors ever prepared) plus the items.
    pub fn drain_all(&self) -> DrainAll<'_, T> {
        DrainAll::new(self.rings.iter_all(), self.shape.mask)
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
    /// The ring and its cells are built in one step, while the processor's
    /// table word says `BUILDING`: an abort (or another prepare) of `index`
    /// that comes meanwhile gets [`Error::Busy`] and changes nothing, so it
    /// can never retire a ring that is still being given its cells.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`], [`Error::OutOfMemory`], [`Error::Busy`]
    /// while another event for `index` is in flight. On error nothing is
    /// published and nothing leaks.
    pub fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        self.rings.prepare_with(index, |index| {
            // The last fallible step of the slot's build: when it fails, the
            // slot is freed by `prepare_with` and no cells exist.
            let cells = self.shape.allocate_cells(self.rings.allocator(), index)?;
            Ok(Ring::new(cells))
        })
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
    /// As [`PerCpu::abort`]: [`Error::AlreadyOnline`] for a completed add,
    /// [`Error::Busy`] while a prepare of `index` is building its queue.
    pub fn abort(&self, index: ProcessorIndex) -> Result<Drain<'_, T>, Error> {
        self.rings.abort(index)?;
        Ok(self
            .rings
            .retired(index)
            .map_or_else(Drain::empty, |ring| Drain::of(ring, self.shape.mask)))
    }

    /// Where processor `index` stands.
    pub fn state(&self, index: ProcessorIndex) -> SlotState {
        self.rings.state(index)
    }

    /// How many processors have a published queue (prepared or online).
    pub fn published_count(&self) -> usize {
        self.rings.published_count()
    }

    /// Tears the queue down and hands back every item still queued, on every
    /// processor (retired queues, and items under a [`Drain`] or [`Consumer`]
    /// leaked with `mem::forget`, included), processor by processor in index
    /// order, each queue oldest first. Nothing is dropped unless the caller
    /// drops it; dropping the [`QueueLeftovers`] drops what was not taken and frees
    /// the queues.
    ///
    /// ```
    /// use perproc::host::HostPlatform;
    /// use perproc::{PerCpuQueue, Platform, ProcessorIndex};
    ///
    /// let platform = HostPlatform::new(2)?;
    /// let requests = PerCpuQueue::new(&platform, 8)?;
    /// let _ = requests.prepare(ProcessorIndex::ZERO)?;
    /// platform.pinned(|pin| {
    ///     requests.push(pin, "read").unwrap();
    ///     requests.push(pin, "write").unwrap();
    /// })?;
    /// // Driver unload: complete what was never processed.
    /// let left = requests.teardown();
    /// assert_eq!(left.len(), 2);
    /// let cancelled: Vec<_> = left.collect();
    /// assert_eq!(cancelled, [(ProcessorIndex::ZERO, "read"), (ProcessorIndex::ZERO, "write")]);
    /// # Ok::<(), perproc::Error>(())
    /// ```
    pub fn teardown(self) -> QueueLeftovers<T, P, A> {
        QueueLeftovers::new(self)
    }

    /// The platform the queue was built for (whose pins it accepts).
    pub fn platform(&self) -> &P {
        self.rings.platform()
    }

    /// The processor's queue, published or retired.
    fn ring(&self, index: ProcessorIndex) -> Option<&Ring<T>> {
        self.rings.get(index).or_else(|| self.rings.retired(index))
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
            // Not through a claim: a drain leaked with `mem::forget` keeps its
            // claim forever, and its items must still be dropped.
            // SAFETY: `&mut self`: no producer or consumer is left, and a leaked
            // claim's borrow of the queue has ended.
            while let Some(item) = unsafe { ring.take_unclaimed(self.shape.mask) } {
                drop(item);
            }
            // SAFETY: every ring's cells come from `allocate_cells` of this
            // shape and allocator (in `prepare`); the items were taken above;
            // the ring is dropped with its slot right after this and never
            // used again.
            unsafe { self.shape.free_cells(self.rings.allocator(), ring.cells) };
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
    /// abort") until a `drain_all`, a `drain` of that processor, its next add,
    /// or [`teardown`](PerCpuQueue::teardown).
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
