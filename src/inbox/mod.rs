//! [`PerCpuInbox`]: steering queues (see the type for the protocol).
mod ring;

use core::fmt;

use self::ring::{Claim, InboxShape, Ring};
use crate::{
    Component, Error, InitFn, Iter, PerCpu, PinGuard, Platform, Prepared, ProcessorIndex,
    PushError, RawAlloc, SlotPadding, SlotState,
};

/// Where an item pushed by [`PerCpuInbox::push_to`] went: its processor and
/// its place in that processor's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    processor: ProcessorIndex,
    /// The position after the item's.
    end: usize,
}

impl Ticket {
    /// The processor the item was steered to.
    pub fn processor(&self) -> ProcessorIndex {
        self.processor
    }
}

/// [`PerCpuInbox<T>`]: a bounded queue per processor that *any* processor
/// pushes into and its owner consumes: steering work to a chosen processor
/// (RSS receive, completion on the submitting processor).
///
/// # The protocol
///
/// Each processor's inbox is a ring of entries with sequence numbers (Dmitry
/// Vyukov's bounded queue, producer side): a producer takes a position with one
/// compare-and-swap on `tail` and publishes its item with a release store of the
/// entry's sequence number; the one consumer at a time reads entries in order
/// and frees each for the next lap with a release store. The consumer takes no
/// lock and no interlocked instruction per item: it claims the inbox once per
/// batch (one CAS, never waited for, so a preempted consumer cannot deadlock a
/// DPC) and pops with plain loads and stores. A full inbox hands the item back.
/// A producer that loses the race for a position to another producer retries at
/// the next position: one interlocked instruction per successful attempt, and
/// the system as a whole always makes progress. There is no ABA hazard: a
/// position is a counter that only grows, and an entry's sequence number tells
/// which lap it is on.
///
/// Producers must be pinned ([`PinGuard`]): not for exclusivity (any number push
/// at once) but so that a producer cannot be preempted between taking a position
/// and filling it, which would stall the consumer behind that position.
///
/// # Why not `crossbeam` or `heapless`
///
/// `crossbeam_queue::ArrayQueue` and `heapless::mpmc::Queue` are the same
/// algorithm for many *consumers*: each pop is a CAS too, an interlocked
/// instruction per item on the owner's DPC loop that a single consumer does not
/// need. `ArrayQueue` allocates with the global allocator (infallible `Box`,
/// no NUMA placement), which a driver does not have; `heapless` stores its
/// entries inline with a compile-time capacity (a per-processor slot built by
/// value on a kernel stack), and loom cannot see its memory.
///
/// # Hot-add and abort
///
/// A processor's inbox is allocated, placed for it, at AddStart
/// ([`prepare`](PerCpuInbox::prepare)) and published at once: work may be
/// steered to it before AddComplete. [`push_to`](PerCpuInbox::push_to) a
/// processor with no inbox (not added yet, or its add aborted) hands the item
/// back with [`Error::NotPrepared`]. An abort hides the inbox but keeps it,
/// items included: a push that found the inbox just before the abort lands in
/// it afterwards, so **items in an aborted processor's inbox are still queued**.
/// [`abort`](PerCpuInbox::abort) drains what is there;
/// [`leftovers`](PerCpuInbox::leftovers) takes what arrived since, from every aborted
/// processor; a later add of the processor gets its inbox back as it was.
///
/// # Moving a flow without reordering it
///
/// [`push_to`](PerCpuInbox::push_to) returns a [`Ticket`]; a consumer
/// publishes, when it ends its batch, how far it has *delivered*. A steering
/// table that moves a flow from processor A to processor B (a hot-added
/// processor taking indirection-table entries) keeps sending the flow to A
/// until [`is_delivered`](PerCpuInbox::is_delivered) says A has finished with
/// the flow's last ticket, and only then switches to B: every packet B delivers
/// was pushed after A delivered all earlier ones, so the flow stays in order.
/// (`examples/network_driver.rs` does exactly this for RSS.)
///
/// Two conditions make that argument hold. The flow's packets are pushed by
/// one producer at a time (an RSS receive queue's DPC), in order; and A
/// *processes* what it pops before it ends the batch (drops the
/// [`InboxConsumer`]): "delivered" is published when the batch ends, with
/// release ordering that [`is_delivered`](PerCpuInbox::is_delivered) acquires,
/// so A's processing happens-before B's. A consumer that collects a batch and
/// processes it after dropping the consumer gives up the second condition.
///
/// ```
/// use perproc::host::HostPlatform;
/// use perproc::{Component, Error, PerCpuInbox, Platform, ProcessorIndex};
///
/// let platform = HostPlatform::new(4)?;
/// let inbox = PerCpuInbox::new(&platform, 64)?;
/// let cpu2 = ProcessorIndex::new(2).unwrap();
/// let _ = inbox.prepare(cpu2)?;
///
/// // On processor 0: steer a packet to processor 2.
/// let ticket = platform.pinned(|pin| inbox.push_to(pin, cpu2, "packet"))?.map_err(|e| e.error)?;
///
/// // Processor 2's DPC consumes its inbox, then the ticket is delivered.
/// platform.bind_current_thread(cpu2)?;
/// let got: Vec<_> = platform.pinned(|pin| inbox.consumer(pin).map(|c| c.collect()))?.unwrap_or_default();
/// assert_eq!(got, ["packet"]);
/// assert!(inbox.is_delivered(ticket));
/// # Ok::<(), Error>(())
/// ```
pub struct PerCpuInbox<T, P: Platform, A: RawAlloc = <P as Platform>::Alloc> {
    rings: PerCpu<Ring<T>, P, A>,
    shape: InboxShape,
}

/// The inbox builds its rings with [`PerCpu::prepare_with`]; this constructor
/// is never called.
fn no_ring<T>(_: ProcessorIndex) -> Result<Ring<T>, Error> {
    Err(Error::NotPrepared)
}

impl<T, P: Platform> PerCpuInbox<T, P> {
    /// An inbox of `capacity` items (rounded up to a power of two, at least 2)
    /// for each processor the platform can have. No processor has one yet:
    /// registration (or [`prepare`](Self::prepare)) adds them, and only then is
    /// memory allocated for a processor.
    ///
    /// # Errors
    /// [`Error::CapacityOverflow`] for a `capacity` of 0 or one that does not
    /// fit the address space; [`Error::OutOfMemory`] for the table.
    pub fn new(platform: &P, capacity: usize) -> Result<Self, Error> {
        Self::new_in(platform, platform.allocator(), capacity)
    }
}

impl<T, P: Platform, A: RawAlloc> PerCpuInbox<T, P, A> {
    /// [`new`](PerCpuInbox::new) with memory from `alloc`.
    ///
    /// # Errors
    /// As [`new`](PerCpuInbox::new).
    pub fn new_in(platform: &P, alloc: A, capacity: usize) -> Result<Self, Error> {
        let shape = InboxShape::new::<T>(capacity)?;
        let init: InitFn<Ring<T>> = no_ring;
        Ok(Self {
            rings: PerCpu::with_padding_in(platform, alloc, SlotPadding::CacheLine, init)?,
            shape,
        })
    }

    /// Steers `item` to processor `target`'s inbox, from any processor.
    ///
    /// No lock, one interlocked instruction (a compare-and-swap; retried only
    /// when another producer took the same position), no allocation, never
    /// waits.
    ///
    /// ```
    /// use perproc::host::HostPlatform;
    /// use perproc::{Error, PerCpuInbox, Platform, ProcessorIndex};
    ///
    /// let platform = HostPlatform::new(2)?;
    /// let inbox = PerCpuInbox::new(&platform, 2)?;
    /// let cpu1 = ProcessorIndex::new(1).unwrap();
    /// platform.pinned(|pin| {
    ///     // No inbox yet (processor 1 not added): the item comes back.
    ///     let back = inbox.push_to(pin, cpu1, 'a').unwrap_err();
    ///     assert_eq!((back.item, back.error), ('a', Error::NotPrepared));
    ///     let _ = inbox.prepare(cpu1)?; // AddStart
    ///     let ticket = inbox.push_to(pin, cpu1, 'b').map_err(|e| e.error)?;
    ///     assert_eq!(ticket.processor(), cpu1);
    ///     inbox.push_to(pin, cpu1, 'c').map_err(|e| e.error)?;
    ///     // Full (a capacity of 2): back again, with the reason.
    ///     let back = inbox.push_to(pin, cpu1, 'd').unwrap_err();
    ///     assert_eq!((back.item, back.error), ('d', Error::Exhausted));
    ///     Ok::<(), Error>(())
    /// })??;
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// The item comes back in a [`PushError`]: [`Error::Exhausted`] when the
    /// inbox is full, [`Error::NotPrepared`] when `target` has no inbox (not
    /// added yet, or its add was aborted), [`Error::IndexOutOfRange`].
    #[inline]
    pub fn push_to(
        &self,
        pin: &PinGuard<'_, P>,
        target: ProcessorIndex,
        item: T,
    ) -> Result<Ticket, PushError<T>> {
        // The pin only keeps this thread from being preempted mid-push.
        let _ = pin;
        let Some(ring) = self.rings.get(target) else {
            let error = if target.as_usize() >= self.rings.capacity() {
                Error::IndexOutOfRange {
                    index: target,
                    capacity: self.rings.capacity(),
                }
            } else {
                Error::NotPrepared
            };
            return Err(PushError { item, error });
        };
        match ring.push(item) {
            Ok(position) => Ok(Ticket {
                processor: target,
                end: position.wrapping_add(1),
            }),
            Err(item) => Err(PushError {
                item,
                error: Error::Exhausted,
            }),
        }
    }

    /// The inbox of the processor `pin` holds, claimed for a batch of pops
    /// (a DPC loop). `None` if that processor has no inbox, or if another
    /// consumer (an abort's drain) holds it right now: its items are being
    /// taken.
    ///
    /// While the consumer lives, pops take no interlocked instruction; when it
    /// is dropped, everything it popped counts as delivered
    /// ([`is_delivered`](Self::is_delivered)).
    #[inline]
    pub fn consumer(&self, pin: &PinGuard<'_, P>) -> Option<InboxConsumer<'_, T>> {
        let claim = self.rings.current(pin)?.claim()?;
        Some(InboxConsumer { claim })
    }

    /// Pops one item of the pinned processor's inbox (a consumer for one item).
    #[inline]
    pub fn pop(&self, pin: &PinGuard<'_, P>) -> Option<T> {
        self.consumer(pin)?.pop()
    }

    /// Whether the consumer of the ticket's processor has delivered the item
    /// and everything pushed there before it (popped them and ended its batch).
    ///
    /// `false` (ask again later) for the instant an add or an abort of that
    /// processor is switching its inbox between published and retired: the
    /// answer errs on the side that keeps a flow in order. A ticket of another
    /// container means nothing here.
    pub fn is_delivered(&self, ticket: Ticket) -> bool {
        // An inbox, once built, lives until the container drops, so a ticket's
        // processor always has one; `None` is only the switch's instant, and
        // answering `true` there would let a steering table move a flow early.
        self.ring(ticket.processor).is_some_and(|ring| {
            // Positions only grow: `delivered >= end`, compared on the circle.
            ring.delivered().wrapping_sub(ticket.end) <= usize::MAX / 2
        })
    }

    /// Items in processor `index`'s inbox (published or retired) now: a
    /// snapshot, for statistics. Counted from the last batch's end: items a
    /// consumer popped in a batch still running are included.
    pub fn len(&self, index: ProcessorIndex) -> usize {
        self.ring(index).map_or(0, Ring::len)
    }

    /// Whether processor `index`'s inbox is empty now (a snapshot).
    pub fn is_empty(&self, index: ProcessorIndex) -> bool {
        self.len(index) == 0
    }

    /// Items each inbox holds at most.
    pub fn capacity(&self) -> usize {
        self.shape.entries
    }

    /// AddStart: allocates processor `index`'s inbox, placed for it, and
    /// publishes it. Idempotent; an aborted processor gets its inbox back as
    /// the abort left it.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`], [`Error::OutOfMemory`], [`Error::Busy`]
    /// while another event for `index` is in flight. On error nothing is
    /// published and nothing leaks.
    pub fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        self.rings.prepare_with(index, |index| {
            Ring::new(&self.shape, self.rings.allocator(), index)
        })
    }

    /// AddComplete. O(1), allocates nothing.
    ///
    /// # Errors
    /// As [`PerCpu::commit`].
    pub fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.rings.commit(index)
    }

    /// AddFailure: hides processor `index`'s inbox and drains what it holds
    /// (see "Hot-add and abort" in the module documentation: pushes that raced
    /// the abort are found later by [`leftovers`](Self::leftovers)).
    ///
    /// ```
    /// use perproc::host::HostPlatform;
    /// use perproc::{Error, PerCpuInbox, Platform, ProcessorIndex, SlotState};
    ///
    /// let platform = HostPlatform::new(2)?;
    /// let inbox = PerCpuInbox::new(&platform, 4)?;
    /// let cpu1 = ProcessorIndex::new(1).unwrap();
    /// let _ = inbox.prepare(cpu1)?; // AddStart: work may be steered there now
    /// platform.pinned(|pin| inbox.push_to(pin, cpu1, 7).map_err(|e| e.error))??;
    /// // AddFailure: the drain hands back what was steered there.
    /// let back: Vec<i32> = inbox.abort(cpu1)?.collect();
    /// assert_eq!(back, [7]);
    /// assert_eq!(inbox.state(cpu1), SlotState::Retired);
    /// assert_eq!(inbox.leftovers().count(), 0);
    /// // Pushes to it are refused from now on.
    /// let refused = platform.pinned(|pin| inbox.push_to(pin, cpu1, 8))?;
    /// assert_eq!(refused.unwrap_err().error, Error::NotPrepared);
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`PerCpu::abort`].
    pub fn abort(&self, index: ProcessorIndex) -> Result<InboxDrain<'_, T>, Error> {
        self.rings.abort(index)?;
        Ok(InboxDrain {
            claim: self.rings.retired(index).and_then(Ring::claim),
        })
    }

    /// What is queued in aborted processors' inboxes, with their indexes: for
    /// the driver to process elsewhere. An inbox whose claim is held right now
    /// is skipped (its holder takes the items).
    pub fn leftovers(&self) -> InboxDrainAll<'_, T, P, A> {
        InboxDrainAll {
            inbox: self,
            rings: self.rings.iter_all(),
            current: None,
            retired_only: true,
        }
    }

    /// Everything queued anywhere (published and aborted inboxes), with the
    /// processor it was steered to: for unload, after the I/O path stopped.
    /// Inboxes most recently built first, each in its order.
    ///
    /// ```
    /// use perproc::host::HostPlatform;
    /// use perproc::{Error, PerCpuInbox, Platform, ProcessorIndex};
    ///
    /// let platform = HostPlatform::new(2)?;
    /// let inbox = PerCpuInbox::new(&platform, 4)?;
    /// let cpus = [ProcessorIndex::ZERO, ProcessorIndex::new(1).unwrap()];
    /// for cpu in cpus {
    ///     let _ = inbox.prepare(cpu)?;
    /// }
    /// platform.pinned(|pin| {
    ///     for (cpu, item) in cpus.into_iter().zip(["x", "y"]) {
    ///         inbox.push_to(pin, cpu, item).map_err(|e| e.error)?;
    ///     }
    ///     Ok::<(), Error>(())
    /// })??;
    /// let all: Vec<_> = inbox.drain_all().map(|(cpu, item)| (cpu.get(), item)).collect();
    /// assert_eq!(all, [(1, "y"), (0, "x")]);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn drain_all(&self) -> InboxDrainAll<'_, T, P, A> {
        InboxDrainAll {
            inbox: self,
            rings: self.rings.iter_all(),
            current: None,
            retired_only: false,
        }
    }

    /// Where processor `index` stands.
    pub fn state(&self, index: ProcessorIndex) -> SlotState {
        self.rings.state(index)
    }

    /// The processor's inbox, published or retired.
    fn ring(&self, index: ProcessorIndex) -> Option<&Ring<T>> {
        self.rings.get(index).or_else(|| self.rings.retired(index))
    }
}

impl<T, P: Platform, A: RawAlloc> Component for PerCpuInbox<T, P, A>
where
    Self: Sync,
{
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        PerCpuInbox::prepare(self, index)
    }

    fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        PerCpuInbox::commit(self, index)
    }

    /// Hides the inbox; its items stay queued until
    /// [`leftovers`](PerCpuInbox::leftovers), [`drain_all`](PerCpuInbox::drain_all) or the
    /// processor's next add.
    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.rings.abort(index).map(|_| ())
    }
}

impl<T, P: Platform, A: RawAlloc> Drop for PerCpuInbox<T, P, A> {
    /// Drops the items still queued (an owned [`PoolBox`](crate::PoolBox) goes
    /// back to its pool) and frees every inbox.
    fn drop(&mut self) {
        for (_, ring) in self.rings.iter_all() {
            // SAFETY: `&mut self`: no push or claim is in progress, and the
            // ring is not used again (the table drops right after); built with
            // this allocator and shape in `prepare`.
            unsafe { ring.free(self.rings.allocator(), &self.shape) };
        }
    }
}

impl<T, P: Platform, A: RawAlloc> fmt::Debug for PerCpuInbox<T, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuInbox")
            .field("capacity", &self.shape.entries)
            .field("published", &self.rings.published_count())
            .finish_non_exhaustive()
    }
}

/// The pinned processor's inbox, claimed: from [`PerCpuInbox::consumer`].
/// Pops without an interlocked instruction; also an iterator of what is queued.
#[must_use = "an InboxConsumer holds the inbox's claim until dropped; pop from it"]
pub struct InboxConsumer<'a, T> {
    claim: Claim<'a, T>,
}

impl<T> InboxConsumer<'_, T> {
    /// Takes the oldest fully pushed item, if any.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.claim.take()
    }
}

impl<T> Iterator for InboxConsumer<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.pop()
    }
}

impl<T> fmt::Debug for InboxConsumer<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxConsumer").finish_non_exhaustive()
    }
}

/// What an aborted processor's inbox held, from [`PerCpuInbox::abort`].
#[must_use = "an InboxDrain takes items only as it is iterated"]
pub struct InboxDrain<'a, T> {
    claim: Option<Claim<'a, T>>,
}

impl<T> Iterator for InboxDrain<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let item = self.claim.as_mut()?.take();
        if item.is_none() {
            self.claim = None;
        }
        item
    }
}

impl<T> fmt::Debug for InboxDrain<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxDrain").finish_non_exhaustive()
    }
}

/// Items of several inboxes with their processor, from
/// [`PerCpuInbox::leftovers`] or [`PerCpuInbox::drain_all`].
#[must_use = "an InboxDrainAll takes items only as it is iterated"]
pub struct InboxDrainAll<'a, T, P: Platform, A: RawAlloc> {
    inbox: &'a PerCpuInbox<T, P, A>,
    rings: Iter<'a, Ring<T>>,
    current: Option<(ProcessorIndex, Claim<'a, T>)>,
    retired_only: bool,
}

impl<T, P: Platform, A: RawAlloc> Iterator for InboxDrainAll<'_, T, P, A> {
    type Item = (ProcessorIndex, T);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((index, claim)) = &mut self.current {
                if let Some(item) = claim.take() {
                    return Some((*index, item));
                }
            }
            // Dropping the finished claim releases it.
            self.current = None;
            let (index, ring) = self.rings.next()?;
            if self.retired_only && self.inbox.state(index) != SlotState::Retired {
                continue;
            }
            self.current = ring.claim().map(|claim| (index, claim));
        }
    }
}

impl<T, P: Platform, A: RawAlloc> fmt::Debug for InboxDrainAll<'_, T, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboxDrainAll").finish_non_exhaustive()
    }
}
