//! [`PerCpu<T>`]: one value per processor, in a table that hot-add grows while
//! every other processor keeps reading it.
//!
//! # How it is laid out
//!
//! The table is one word per possible processor, allocated once at creation with
//! the platform's maximum count (so an absent processor costs one pointer and
//! growth never copies). A word is either a pointer to the processor's *slot* or
//! an odd value that hides it:
//!
//! | word                 | meaning                                             |
//! |----------------------|-----------------------------------------------------|
//! | `ABSENT` (1)         | never prepared, or its prepare failed               |
//! | `BUILDING` (3)       | a prepare is allocating and constructing the slot   |
//! | `slot`               | published: prepared or online                       |
//! | `slot \| HIDDEN`     | retired: an aborted add; kept for the next add      |
//!
//! so a reader's whole job is one acquire load and one bit test. A slot is
//! allocated on its own cache lines, for its processor (NUMA), and holds the
//! value, the slot's state (prepared, online, retired, or a transition) and a
//! link in a list of every slot ever built, which iteration walks.
//!
//! # Why slots are never freed before the container
//!
//! A reader on another processor may hold `&T` into any slot it saw. An aborted
//! add therefore only hides its slot; the slot (value included) is kept and
//! published again, as is, by the next prepare of that index, and freed when the
//! container is dropped.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use bytemuck::Zeroable;

#[cfg(loom)]
use crate::sync::ZeroedInPlace;
use crate::sync::{AtomicPtr, AtomicU8, AtomicUsize, Ordering, UnsafeCell, PUBLISH};
use crate::{Component, Error, PinGuard, Platform, Prepared, ProcessorIndex, RawAlloc};

/// The bytes each processor's slot is aligned and padded to: the size that keeps
/// two processors' slots from sharing a cache line, with the adjacent-line
/// prefetcher counted (128 on x86_64 and aarch64). Taken from
/// `crossbeam_utils::CachePadded`, which keeps that table per architecture.
pub const CACHE_LINE: usize = core::mem::align_of::<crossbeam_utils::CachePadded<u8>>();

/// How a [`PerCpu`] lays out each processor's slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlotPadding {
    /// Each slot starts on a cache line and fills whole lines ([`CACHE_LINE`]):
    /// no false sharing between processors. The default.
    #[default]
    CacheLine,
    /// Each slot takes only the bytes it needs: for read-mostly data, where
    /// false sharing costs nothing and memory does.
    Compact,
}

/// Where a processor stands in a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// No slot: never prepared, or the prepare failed.
    Absent,
    /// Published by `prepare`; code on the processor may already use it.
    Prepared,
    /// Committed: the add completed.
    Online,
    /// Hidden by `abort`; kept, and published again by the next `prepare`.
    Retired,
    /// An event for this processor is being handled right now.
    Busy,
}

impl SlotState {
    /// Whether readers see the processor's value (prepared or online).
    ///
    /// ```
    /// use perproc::SlotState;
    /// assert!(SlotState::Prepared.is_published() && SlotState::Online.is_published());
    /// assert!(!SlotState::Retired.is_published() && !SlotState::Absent.is_published());
    /// ```
    pub const fn is_published(self) -> bool {
        matches!(self, SlotState::Prepared | SlotState::Online)
    }
}

// Table words that are not slot pointers. Slots are aligned to at least 8, so a
// pointer never has these bits set; a set HIDDEN bit means "no visible slot".
const HIDDEN: usize = 0b01;
const ABSENT: usize = HIDDEN;
const BUILDING: usize = HIDDEN | 0b10;

// A slot's state. Transitions are CASes on this byte, which serialise the
// events of one processor; the table word follows.
const PREPARED: u8 = 0;
const ONLINE: u8 = 1;
const RETIRING: u8 = 2;
const RETIRED: u8 = 3;
const REVIVING: u8 = 4;

/// One processor's slot. `value` first, so a reader's `&T` is the slot's address.
#[repr(C, align(8))]
struct Slot<T> {
    value: UnsafeCell<T>,
    /// The slot built before this one (iteration's list). Written once, before the
    /// slot is linked.
    next: AtomicPtr<Slot<T>>,
    state: AtomicU8,
    index: ProcessorIndex,
}

impl<T> Slot<T> {
    /// The value, for as long as the slot lives.
    #[inline(always)]
    fn value(&self) -> &T {
        // SAFETY: the value is written once, before the slot is published with a
        // release store that every reader acquires, and afterwards only read
        // through shared references (mutation needs `&mut PerCpu`, at drop). So
        // the pointer is valid, initialised, and not mutably aliased.
        self.value.with(|value| unsafe { &*value })
    }
}

/// What changes in a container besides its table words; at the start of the
/// table's block.
struct TableHeader<T> {
    /// The most recently built slot; the list runs through `Slot::next`.
    head: AtomicPtr<Slot<T>>,
    published: AtomicUsize,
    online: AtomicUsize,
}

/// A constructor that is a plain function (or a closure that captures nothing),
/// the default constructor type of [`PerCpu`], so the container's type can be
/// named in a struct field: `PerCpu<Stats, KernelPlatform>`.
///
/// ```
/// use perproc::{host::HostPlatform, InitFn, PerCpu};
/// struct Driver {
///     stats: PerCpu<u64, HostPlatform>,
/// }
/// let zero: InitFn<u64> = |_cpu| Ok(0);
/// let driver = Driver { stats: PerCpu::new(&HostPlatform::new(4)?, zero)? };
/// # Ok::<(), perproc::Error>(())
/// ```
pub type InitFn<T> = fn(ProcessorIndex) -> Result<T, Error>;

/// An in-place constructor (from [`PerCpu::new_zeroed`]): it fills in a value
/// that starts as all zero bytes where it lives, in the slot, so a `T` larger
/// than a kernel stack is never on one.
#[derive(Clone, Copy, Debug)]
pub struct InPlace<F>(F);

/// [`InPlace`] with a plain function, so the container's type can be named.
pub type InPlaceFn<T> = InPlace<fn(ProcessorIndex, &mut T) -> Result<(), Error>>;

/// Per-processor values that grow on hot-add.
///
/// `T` is built for a processor by the constructor `init` when the processor is
/// *prepared* (AddStart); from then on every processor can read it with
/// [`get`](Self::get), code on that processor with [`current`](Self::current),
/// and [`iter`](Self::iter) visits it. `commit` (AddComplete) marks it online;
/// `abort` (AddFailure) hides it again.
///
/// Guarantees (see the crate documentation for the contracts):
/// - a `&T` stays valid until the container is dropped; growth never moves a slot;
/// - a reader is one bounds check, one acquire load and one bit test: no lock,
///   no read-modify-write, and never a slot that is not fully built;
/// - prepares of different processors may run at once, and alongside readers;
/// - an absent processor costs one pointer; no `T` exists for a processor that
///   never arrives; each slot is allocated for its own processor, on its own
///   cache lines ([`SlotPadding`]).
///
/// ```
/// use perproc::{host::HostPlatform, PerCpu, Platform, ProcessorIndex};
/// use core::sync::atomic::{AtomicU64, Ordering};
///
/// let platform = HostPlatform::new(4)?;
/// let hits = PerCpu::new(&platform, |_cpu| Ok(AtomicU64::new(0)))?;
/// let cpu1 = ProcessorIndex::new(1).unwrap();
///
/// let _ = hits.prepare(cpu1)?;          // AddStart: allocate and publish
/// platform.bind_current_thread(cpu1)?;  // this thread now runs "on" processor 1
/// platform.pinned(|pin| hits.current(pin).unwrap().fetch_add(1, Ordering::Relaxed))?;
/// hits.commit(cpu1)?;                   // AddComplete
///
/// let total: u64 = hits.iter().map(|(_, h)| h.load(Ordering::Relaxed)).sum();
/// assert_eq!(total, 1);
/// assert!(hits.get(ProcessorIndex::new(2).unwrap()).is_none()); // not added yet
/// # Ok::<(), perproc::Error>(())
/// ```
pub struct PerCpu<T, P: Platform, A: RawAlloc = <P as Platform>::Alloc, F = InitFn<T>> {
    // No field of the container itself is ever written after construction: what
    // changes (the table's words, the list head, the counts) lives in the block
    // these pointers point into. So `PerCpu` has no interior mutability of its
    // own, and a function holding `&PerCpu` may keep `table` and `capacity` in
    // registers across its reads (the compiler knows they cannot change), which
    // it could not do across an acquire load if the atomics lived here.
    /// The bookkeeping at the start of the block (see `block_layout`).
    shared: NonNull<TableHeader<T>>,
    /// `capacity` words, in the same block after `shared`. Never reallocated.
    table: NonNull<AtomicPtr<Slot<T>>>,
    capacity: usize,
    slot_layout: Layout,
    alloc: A,
    init: F,
    /// Whose pins [`current`](Self::current) accepts.
    platform: P,
    /// Owns `T`s (for drop check) and is as thread-safe as the impls below say.
    _owns: PhantomData<T>,
}

// SAFETY: the container owns its slots and values; moving it to another thread
// moves the `T`s (so `T: Send`), the allocator that frees them (`A: Send`), the
// constructor (`F: Send`) and the platform handle (`P: Send`). The raw pointers
// are to memory it owns.
unsafe impl<T: Send, P: Platform + Send, A: RawAlloc + Send, F: Send> Send for PerCpu<T, P, A, F> {}

// SAFETY: through `&PerCpu`, other threads read `&T` (so `T: Sync`), build `T`s
// that the owner later drops (so `T: Send`), and call the allocator, the
// constructor and the platform concurrently (so `A`, `F`, `P: Sync`). All shared
// state is atomic.
unsafe impl<T: Send + Sync, P: Platform + Sync, A: RawAlloc + Sync, F: Sync> Sync
    for PerCpu<T, P, A, F>
{
}

impl<T, P: Platform, F> PerCpu<T, P, P::Alloc, F> {
    /// A container for every processor the platform can have, with slots on
    /// their own cache lines, memory from the platform's allocator. No processor
    /// is prepared yet: registration (or your own calls to
    /// [`prepare`](Self::prepare)) adds them.
    ///
    /// `init` builds a processor's value at its AddStart; its error fails that
    /// add. For a large value, build it in place with
    /// [`new_zeroed`](PerCpu::new_zeroed).
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] for the table; [`Error::CapacityOverflow`].
    pub fn new(platform: &P, init: F) -> Result<Self, Error>
    where
        // Stated here (not needed to build the table) so a closure's argument
        // and `T` are inferred from `init` alone.
        F: Fn(ProcessorIndex) -> Result<T, Error>,
    {
        Self::with_padding_in(platform, platform.allocator(), SlotPadding::CacheLine, init)
    }
}

impl<T, P: Platform, A: RawAlloc, F> PerCpu<T, P, A, F> {
    /// [`new`](PerCpu::new) with memory from `alloc` (a pool tag of its own, a
    /// counting or failing allocator in tests).
    ///
    /// # Errors
    /// As [`new`](PerCpu::new).
    pub fn new_in(platform: &P, alloc: A, init: F) -> Result<Self, Error>
    where
        F: Fn(ProcessorIndex) -> Result<T, Error>,
    {
        Self::with_padding_in(platform, alloc, SlotPadding::CacheLine, init)
    }

    /// [`new_in`](Self::new_in) choosing how slots are laid out.
    ///
    /// ```
    /// use perproc::{host::{HostAlloc, HostPlatform}, PerCpu, ProcessorIndex, SlotPadding};
    /// let platform = HostPlatform::new(2048)?;
    /// let names = PerCpu::with_padding_in(&platform, HostAlloc, SlotPadding::Compact, |cpu: ProcessorIndex| {
    ///     Ok(cpu.get() * 10)
    /// })?;
    /// let cpu = ProcessorIndex::new(2047).unwrap();
    /// let _ = names.prepare(cpu)?;
    /// assert_eq!(names.get(cpu), Some(&20470));
    /// assert!(names.prepare(ProcessorIndex::new(2048).unwrap()).is_err());
    /// # Ok::<(), perproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](PerCpu::new).
    pub fn with_padding_in(
        platform: &P,
        alloc: A,
        padding: SlotPadding,
        init: F,
    ) -> Result<Self, Error> {
        let capacity =
            usize::try_from(platform.max_processors()).map_err(|_| Error::CapacityOverflow)?;
        let slot_layout = slot_layout::<T>(padding)?;
        let (layout, words) = block_layout::<T>(capacity)?;
        let block = alloc.allocate(layout, None)?;
        let shared = block.cast::<TableHeader<T>>();
        // SAFETY: `words <= layout.size()` (it is the offset of the words within
        // `layout`), so the result stays in the block (allocator promise 1).
        let table = unsafe { block.add(words) }.cast::<AtomicPtr<Slot<T>>>();
        // SAFETY: the block has `layout`: a `TableHeader<T>` at offset 0 and
        // `capacity` words at offset `words`, each aligned for its type
        // (allocator promises 1 and 2); `i < capacity`; each is written once,
        // before the container exists, so before anything reads it.
        unsafe {
            shared.as_ptr().write(TableHeader {
                head: AtomicPtr::new(ptr::null_mut()),
                published: AtomicUsize::new(0),
                online: AtomicUsize::new(0),
            });
            for i in 0..capacity {
                table.as_ptr().add(i).write(AtomicPtr::new(absent()));
            }
        }
        Ok(Self {
            shared,
            table,
            capacity,
            slot_layout,
            alloc,
            init,
            platform: platform.clone(),
            _owns: PhantomData,
        })
    }
}

impl<T, P: Platform, A: RawAlloc, F> PerCpu<T, P, A, F>
where
    F: Fn(ProcessorIndex) -> Result<T, Error>,
{
    /// AddStart: builds processor `index`'s value with the constructor, on memory
    /// placed for that processor, and publishes it: from the moment this returns
    /// `Ok`, [`get`](Self::get), [`current`](Self::current) and
    /// [`iter`](Self::iter) see it.
    ///
    /// Idempotent: a processor already prepared or online is left as it is. A
    /// processor whose add was aborted gets its kept slot back, value as the
    /// abort left it, without allocating or calling the constructor.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`], [`Error::OutOfMemory`], the constructor's
    /// error, or [`Error::Busy`] while another event for `index` is in flight. On
    /// error nothing is published and nothing leaks.
    pub fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        self.prepare_with(index, &self.init)
    }
}

impl<T: Zeroable, P: Platform, F> PerCpu<T, P, P::Alloc, InPlace<F>>
where
    F: Fn(ProcessorIndex, &mut T) -> Result<(), Error>,
{
    /// [`new`](PerCpu::new) for a value built in place: a processor's slot is
    /// allocated zeroed and `init` fills in the value where it lives, so no `T`
    /// is ever moved through the stack (a kernel stack is 12 to 24 KiB; a
    /// per-processor ring or table can be larger).
    ///
    /// ```
    /// use perproc::{host::HostPlatform, PerCpu, ProcessorIndex};
    /// let platform = HostPlatform::new(4)?;
    /// // 1 MiB per processor (32 rows of 4096 words), never on a stack.
    /// let tables = PerCpu::new_zeroed(&platform, |cpu, table: &mut [[u64; 4096]; 32]| {
    ///     table[0][0] = u64::from(cpu.get());
    ///     Ok(())
    /// })?;
    /// let _ = tables.prepare(ProcessorIndex::new(3).unwrap())?;
    /// assert_eq!(tables.get(ProcessorIndex::new(3).unwrap()).unwrap()[0][0], 3);
    /// # Ok::<(), perproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](PerCpu::new).
    pub fn new_zeroed(platform: &P, init: F) -> Result<Self, Error> {
        Self::with_padding_in(
            platform,
            platform.allocator(),
            SlotPadding::CacheLine,
            InPlace(init),
        )
    }
}

impl<T: Zeroable, P: Platform, A: RawAlloc, F> PerCpu<T, P, A, InPlace<F>>
where
    F: Fn(ProcessorIndex, &mut T) -> Result<(), Error>,
{
    /// [`new_zeroed`](PerCpu::new_zeroed) with memory from `alloc`.
    ///
    /// # Errors
    /// As [`new`](PerCpu::new).
    pub fn new_zeroed_in(platform: &P, alloc: A, init: F) -> Result<Self, Error> {
        Self::with_padding_in(platform, alloc, SlotPadding::CacheLine, InPlace(init))
    }

    /// AddStart for a container built in place: the value is zeroed in its slot
    /// and filled in there by the constructor; otherwise as for a container of
    /// [`new`](PerCpu::new) (idempotent, revives a retired slot as is).
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`], [`Error::OutOfMemory`], the constructor's
    /// error (the value it half filled in is dropped), or [`Error::Busy`].
    pub fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        let InPlace(init) = &self.init;
        self.prepare_zeroed_with(index, init)
    }
}

impl<T, P: Platform, A: RawAlloc, F> PerCpu<T, P, A, F> {
    /// [`prepare`](Self::prepare) with a constructor given for this call instead
    /// of the stored one: for containers whose values are built from state they
    /// own next to the table (a pool's magazines come from its allocator and
    /// shape), which a stored constructor could only reach by self-reference.
    ///
    /// `init` runs only if a fresh slot is built (not for a processor already
    /// prepared or online, nor for a retired slot, which is revived as is).
    ///
    /// ```
    /// use perproc::{host::HostPlatform, PerCpu, Prepared, ProcessorIndex};
    /// let table = PerCpu::new(&HostPlatform::new(4)?, |_| Ok(0u32))?;
    /// let cpu = ProcessorIndex::new(1).unwrap();
    /// assert_eq!(table.prepare_with(cpu, |cpu| Ok(cpu.get() + 100))?, Prepared::New);
    /// // Already prepared: the constructor is not called.
    /// let again = table.prepare_with(cpu, |_| Err(perproc::Error::OutOfMemory))?;
    /// assert_eq!(again, Prepared::Already);
    /// assert_eq!(table.get(cpu), Some(&101));
    /// # Ok::<(), perproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`prepare`](Self::prepare), with `init`'s error in place of the
    /// stored constructor's.
    pub fn prepare_with(
        &self,
        index: ProcessorIndex,
        init: impl FnOnce(ProcessorIndex) -> Result<T, Error>,
    ) -> Result<Prepared, Error> {
        self.prepare_by(index, |value| {
            let built = init(index)?;
            // SAFETY: `value` is the fresh slot's value field, valid for a write
            // (`prepare_by`'s promise); nothing was there to drop.
            unsafe { value.write(UnsafeCell::new(built)) };
            Ok(())
        })
    }

    /// [`prepare_with`](Self::prepare_with) building the value in place: it is
    /// zeroed where it lives, in the slot, and `init` fills it in there.
    ///
    /// # Errors
    /// As [`prepare_with`](Self::prepare_with); when `init` fails, the value it
    /// half filled in is dropped.
    pub fn prepare_zeroed_with(
        &self,
        index: ProcessorIndex,
        init: impl FnOnce(ProcessorIndex, &mut T) -> Result<(), Error>,
    ) -> Result<Prepared, Error>
    where
        T: Zeroable,
    {
        self.prepare_by(index, |cell| {
            // SAFETY: `cell` is the fresh slot's value field, valid for writes
            // and aligned (`prepare_by`'s promise), and `T: Zeroable`.
            let value = unsafe { UnsafeCell::zeroed_in_place(cell) };
            match init(index, value) {
                Ok(()) => Ok(()),
                Err(error) => {
                    // SAFETY: an initialised `T` (zeroed, then changed through
                    // `&mut T` only), dropped once; the slot is freed next.
                    unsafe { ptr::drop_in_place(value) };
                    Err(error)
                }
            }
        })
    }

    /// The state machine of a prepare; `write` initialises a fresh slot's value.
    fn prepare_by(
        &self,
        index: ProcessorIndex,
        write: impl FnOnce(*mut UnsafeCell<T>) -> Result<(), Error>,
    ) -> Result<Prepared, Error> {
        let entry = self.entry(index)?;
        let word = entry.load(Ordering::Acquire);
        match word.addr() {
            ABSENT => {
                entry
                    // ordering: equivalent: winning ABSENT -> BUILDING, the builder reads nothing another thread
                    // wrote: its block comes from the allocator (synchronised on its own) and is written fresh.
                    .compare_exchange(word, building(), Ordering::Acquire, Ordering::Relaxed)
                    .map_err(|_| Error::Busy)?;
                self.build(entry, index, write)
            }
            BUILDING => Err(Error::Busy),
            addr if addr & HIDDEN == 0 => {
                // SAFETY: a pointer word is a live slot (see `slot_at`).
                // ordering: equivalent: only the answer (Already/Busy) depends on it, nothing is read after;
                // the slot itself was acquired by the load of its table word above.
                match unsafe { slot_at(word) }.state.load(Ordering::Acquire) {
                    PREPARED | ONLINE => Ok(Prepared::Already),
                    _ => Err(Error::Busy),
                }
            }
            _ => self.revive(entry, word),
        }
    }

    /// Builds, links and publishes a fresh slot; `entry` is `BUILDING` and ours.
    /// `write` gets the slot's value field (valid for writes, aligned, not
    /// initialised) and must initialise it when it returns `Ok`, and leave
    /// nothing to drop when it returns `Err`.
    fn build(
        &self,
        entry: &AtomicPtr<Slot<T>>,
        index: ProcessorIndex,
        write: impl FnOnce(*mut UnsafeCell<T>) -> Result<(), Error>,
    ) -> Result<Prepared, Error> {
        // Until disarmed, an early return (or an unwinding constructor on a host)
        // frees the block and puts the word back to ABSENT.
        let mut undo = UndoBuild {
            entry,
            block: None,
            layout: self.slot_layout,
            alloc: &self.alloc,
        };
        let block = self.alloc.allocate(self.slot_layout, Some(index))?;
        undo.block = Some(block);
        let slot = block.cast::<Slot<T>>();
        // SAFETY: the block has `slot_layout`, which is at least the size and
        // alignment of `Slot<T>` (allocator promises 1 and 2), and no one else can
        // reach it before it is linked and published below: each field is
        // written once, the value by `write` (in place: never on the stack).
        unsafe {
            let raw = slot.as_ptr();
            write(ptr::addr_of_mut!((*raw).value))?;
            ptr::addr_of_mut!((*raw).next).write(AtomicPtr::new(ptr::null_mut()));
            ptr::addr_of_mut!((*raw).state).write(AtomicU8::new(PREPARED));
            ptr::addr_of_mut!((*raw).index).write(index);
        }
        undo.disarm();
        self.link(slot);
        entry.store(slot.as_ptr(), PUBLISH);
        self.shared().published.fetch_add(1, Ordering::Relaxed);
        Ok(Prepared::New)
    }

    /// Publishes a retired slot again, unchanged.
    fn revive(&self, entry: &AtomicPtr<Slot<T>>, word: *mut Slot<T>) -> Result<Prepared, Error> {
        let bare = word.map_addr(|addr| addr & !HIDDEN);
        // SAFETY: a hidden word with a pointer is a retired slot, which lives until
        // the container drops (see `slot_at`).
        let slot = unsafe { slot_at(bare) };
        slot.state
            // ordering: equivalent: the reviver writes no slot field but `state`; what it republishes
            // (built before the slot's first publication) was acquired with the hidden word in `prepare_by`.
            .compare_exchange(RETIRED, REVIVING, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| Error::Busy)?;
        entry.store(bare, PUBLISH);
        // ordering: equivalent: a revival writes no data; every reader of `state` acquires the table
        // word first, and the bare word stored just above (PUBLISH) is what orders the slot for them.
        slot.state.store(PREPARED, Ordering::Release);
        self.shared().published.fetch_add(1, Ordering::Relaxed);
        Ok(Prepared::New)
    }

    /// Pushes a new slot onto the list iteration walks.
    fn link(&self, slot: NonNull<Slot<T>>) {
        // SAFETY: the slot was just written and lives until the container drops.
        let next = unsafe { &slot.as_ref().next };
        let mut head = self.shared().head.load(Ordering::Relaxed);
        loop {
            next.store(head, Ordering::Relaxed);
            match self.shared().head.compare_exchange(
                head,
                slot.as_ptr(),
                PUBLISH,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }
}

impl<T, P: Platform, A: RawAlloc, F> PerCpu<T, P, A, F> {
    /// AddComplete: marks a prepared processor online. O(1); allocates nothing.
    ///
    /// Idempotent for a processor already online.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`]; [`Error::NotPrepared`] for a processor that was
    /// never prepared or was aborted; [`Error::Busy`] while another event for it
    /// is in flight. Nothing changes on error.
    pub fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        let word = self.entry(index)?.load(Ordering::Acquire);
        match word.addr() {
            BUILDING => return Err(Error::Busy),
            addr if addr & HIDDEN != 0 => return Err(Error::NotPrepared),
            _ => {}
        }
        // SAFETY: a pointer word is a live slot (see `slot_at`).
        let slot = unsafe { slot_at(word) };
        match slot
            .state
            // ordering: equivalent (both): a commit writes no data and reads nothing after the CAS; the
            // slot was acquired with its table word above.
            .compare_exchange(PREPARED, ONLINE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                self.shared().online.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(ONLINE) => Ok(()),
            Err(_) => Err(Error::Busy),
        }
    }

    /// AddFailure: hides a prepared processor's slot again and returns its value,
    /// so the caller can take back what was put there (queued work, cached
    /// objects). The slot is kept, not freed: readers may still hold references.
    ///
    /// Idempotent, and accepts a processor that was never prepared or whose
    /// prepare failed: those give `Ok(None)`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`]; [`Error::AlreadyOnline`] for a processor whose
    /// add completed (it stays online); [`Error::Busy`] while another event for it
    /// is in flight. Nothing changes on error.
    pub fn abort(&self, index: ProcessorIndex) -> Result<Option<&T>, Error> {
        let entry = self.entry(index)?;
        let word = entry.load(Ordering::Acquire);
        match word.addr() {
            ABSENT => return Ok(None),
            BUILDING => return Err(Error::Busy),
            addr if addr & HIDDEN != 0 => {
                let bare = word.map_addr(|addr| addr & !HIDDEN);
                // SAFETY: a hidden word with a pointer is a retired slot, alive
                // until the container drops (see `slot_at`).
                // ordering: equivalent: only the answer depends on it; the slot was acquired with the
                // word above.
                let state = unsafe { slot_at(bare) }.state.load(Ordering::Acquire);
                return if state == RETIRED {
                    Ok(None)
                } else {
                    Err(Error::Busy)
                };
            }
            _ => {}
        }
        // SAFETY: a pointer word is a live slot (see `slot_at`).
        let slot = unsafe { slot_at(word) };
        match slot
            .state
            // ordering: equivalent (both): the value returned below was acquired with the table word above
            // (the slot's fields are written before its publication, never after).
            .compare_exchange(PREPARED, RETIRING, Ordering::Acquire, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(ONLINE) => return Err(Error::AlreadyOnline),
            Err(_) => return Err(Error::Busy),
        }
        entry.store(word.map_addr(|addr| addr | HIDDEN), Ordering::Release);
        // ordering: equivalent: every reader of RETIRED (revive, abort, state, retired) acquires the
        // hidden word first, released just above after everything this thread did to the slot.
        slot.state.store(RETIRED, Ordering::Release);
        self.shared().published.fetch_sub(1, Ordering::Relaxed);
        Ok(Some(slot.value()))
    }

    /// Processor `index`'s value, if it is published (prepared or online).
    ///
    /// One bounds check, one acquire load, one bit test. Never blocks.
    #[inline]
    pub fn get(&self, index: ProcessorIndex) -> Option<&T> {
        let word = self.table().get(index.as_usize())?.load(Ordering::Acquire);
        // SAFETY: no table word is null (each is ABSENT, BUILDING or a slot
        // pointer from the allocator, maybe tagged). Said here, before the bit
        // test, the compiler keeps it and decides the caller's `Option<&T>` by
        // that test alone instead of adding a null test.
        unsafe { core::hint::assert_unchecked(!word.is_null()) };
        if word.addr() & HIDDEN != 0 {
            return None;
        }
        // SAFETY: a word without HIDDEN is a published slot: fully built before the
        // release store this load acquired, and alive until the container drops.
        Some(unsafe { slot_at(word) }.value())
    }

    /// The value of the processor the caller is pinned to, if it is published.
    ///
    /// `None` only for a processor that has no slot yet (between its arrival and
    /// its AddStart, or after a failed add), one past the capacity, or a pin
    /// from a platform of another machine.
    #[inline]
    pub fn current(&self, pin: &PinGuard<'_, P>) -> Option<&T> {
        if !self.platform.shares_processors(pin.platform()) {
            return None;
        }
        self.get(pin.processor())
    }

    /// The platform the container was built for (whose pins it accepts).
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Where processor `index` stands (`Absent` for an index past the capacity).
    pub fn state(&self, index: ProcessorIndex) -> SlotState {
        let Some(entry) = self.table().get(index.as_usize()) else {
            return SlotState::Absent;
        };
        let word = entry.load(Ordering::Acquire);
        match word.addr() {
            ABSENT => return SlotState::Absent,
            BUILDING => return SlotState::Busy,
            _ => {}
        }
        let bare = word.map_addr(|addr| addr & !HIDDEN);
        // SAFETY: any other word is a slot pointer, maybe tagged HIDDEN, and slots
        // live until the container drops (see `slot_at`).
        // ordering: equivalent: only the answer depends on it; the slot was acquired with its table
        // word above.
        match unsafe { slot_at(bare) }.state.load(Ordering::Acquire) {
            PREPARED => SlotState::Prepared,
            ONLINE => SlotState::Online,
            RETIRED => SlotState::Retired,
            _ => SlotState::Busy,
        }
    }

    /// Every published value (prepared or online), each once, with its index.
    ///
    /// Costs O(slots ever built), not O(capacity): sparse and large tables cost
    /// nothing for their absent processors. Never blocks; a processor published
    /// while the iteration runs may or may not be visited. Order: most recently
    /// built first.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            next: self.shared().head.load(Ordering::Acquire),
            table: Some(self.table()),
        }
    }

    /// Every slot ever built, published or retired, each once, with its index.
    ///
    /// For work that must not lose what an aborted add left behind: summing
    /// monotonic counters (a sum never goes down when an add fails), draining
    /// every queue. Same cost and concurrency as [`iter`](Self::iter).
    pub fn iter_all(&self) -> Iter<'_, T> {
        Iter {
            next: self.shared().head.load(Ordering::Acquire),
            table: None,
        }
    }

    /// Processor `index`'s value if its add was aborted (its slot is retired).
    ///
    /// The slot is hidden from [`get`](Self::get) but kept; code pinned to that
    /// processor may still use it to hand back what it holds.
    pub fn retired(&self, index: ProcessorIndex) -> Option<&T> {
        let word = self.table().get(index.as_usize())?.load(Ordering::Acquire);
        if word.addr() & HIDDEN == 0 || matches!(word.addr(), ABSENT | BUILDING) {
            return None;
        }
        // SAFETY: a hidden word with a pointer is a retired (or transitioning)
        // slot, alive until the container drops (see `slot_at`).
        let slot = unsafe { slot_at(word.map_addr(|addr| addr & !HIDDEN)) };
        // ordering: equivalent: the value was acquired with the hidden word above (released by the
        // abort after the value's writes, and a revival writes no data).
        (slot.state.load(Ordering::Acquire) == RETIRED).then(|| slot.value())
    }

    /// How many processors are published now (prepared or online).
    pub fn published_count(&self) -> usize {
        self.shared().published.load(Ordering::Relaxed)
    }

    /// How many processors are online (committed).
    pub fn online_count(&self) -> usize {
        self.shared().online.load(Ordering::Relaxed)
    }

    /// The number of processor indexes the table holds (`0..capacity`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The bytes each slot takes (`T`, its state and its link, padded).
    pub fn slot_size(&self) -> usize {
        self.slot_layout.size()
    }

    /// The allocator the container allocates its slots from, for containers built
    /// on `PerCpu` that keep more per-processor memory (a queue's ring), so it is
    /// placed and accounted the same way.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// The table's word for `index`, or the out-of-range error.
    fn entry(&self, index: ProcessorIndex) -> Result<&AtomicPtr<Slot<T>>, Error> {
        self.table()
            .get(index.as_usize())
            .ok_or(Error::IndexOutOfRange {
                index,
                capacity: self.capacity,
            })
    }

    /// The list head and the counts.
    #[inline(always)]
    fn shared(&self) -> &TableHeader<T> {
        // SAFETY: `shared` points to the `TableHeader` written in the constructor,
        // alive until drop, and only accessed atomically through shared
        // references.
        unsafe { self.shared.as_ref() }
    }

    #[inline(always)]
    fn table(&self) -> &[AtomicPtr<Slot<T>>] {
        // SAFETY: `table` holds `capacity` initialised words for the container's
        // whole life (with `capacity == 0`, an aligned pointer to no words: a
        // valid empty slice); they are only accessed atomically through shared
        // references.
        unsafe { core::slice::from_raw_parts(self.table.as_ptr(), self.capacity) }
    }
}

impl<T, P: Platform, A: RawAlloc, F> Component for PerCpu<T, P, A, F>
where
    Self: Sync,
    F: Fn(ProcessorIndex) -> Result<T, Error>,
{
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        self.prepare_with(index, &self.init)
    }

    fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        PerCpu::commit(self, index)
    }

    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        PerCpu::abort(self, index).map(|_| ())
    }
}

impl<T: Zeroable, P: Platform, A: RawAlloc, F> Component for PerCpu<T, P, A, InPlace<F>>
where
    Self: Sync,
    F: Fn(ProcessorIndex, &mut T) -> Result<(), Error>,
{
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        let InPlace(init) = &self.init;
        self.prepare_zeroed_with(index, init)
    }

    fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        PerCpu::commit(self, index)
    }

    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        PerCpu::abort(self, index).map(|_| ())
    }
}

impl<T, P: Platform, A: RawAlloc, F> Drop for PerCpu<T, P, A, F> {
    fn drop(&mut self) {
        // ordering: equivalent: `&mut self`: whatever handed this thread the container exclusively
        // (a join, an Arc's last drop) already ordered every slot's writes before the drop.
        let mut next = self.shared().head.load(Ordering::Acquire);
        while let Some(slot) = NonNull::new(next) {
            // SAFETY: every slot on the list was built by `build` with
            // `slot_layout` from `alloc` and is freed only here, once; `&mut self`
            // means no reader or writer is left.
            unsafe {
                next = slot.as_ref().next.load(Ordering::Relaxed);
                ptr::drop_in_place(slot.as_ptr());
                self.alloc.deallocate(slot.cast(), self.slot_layout);
            }
        }
        if let Ok((layout, _)) = block_layout::<T>(self.capacity) {
            // SAFETY: the block was allocated with this layout in the
            // constructor (the same computation succeeded there) and its
            // `TableHeader` and words were initialised; nothing uses them after this.
            unsafe {
                ptr::drop_in_place(ptr::slice_from_raw_parts_mut(
                    self.table.as_ptr(),
                    self.capacity,
                ));
                ptr::drop_in_place(self.shared.as_ptr());
                self.alloc.deallocate(self.shared.cast(), layout);
            }
        }
    }
}

impl<T: fmt::Debug, P: Platform, A: RawAlloc, F> fmt::Debug for PerCpu<T, P, A, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpu")
            .field("capacity", &self.capacity)
            .field("published", &self.published_count())
            .field("online", &self.online_count())
            .finish_non_exhaustive()
    }
}

/// Iterator over a [`PerCpu`]'s values, from [`PerCpu::iter`] (published ones)
/// or [`PerCpu::iter_all`] (retired ones too).
#[must_use = "iterators are lazy"]
pub struct Iter<'a, T> {
    next: *mut Slot<T>,
    /// `Some`: yield only slots the table publishes now.
    table: Option<&'a [AtomicPtr<Slot<T>>]>,
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = (ProcessorIndex, &'a T);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // SAFETY: `next` is null or a slot on the container's list, which
            // lives as long as the container borrowed for 'a; the list link was
            // written before the slot was pushed with a release CAS that our
            // acquire load of the head (or of the previous link) saw.
            let slot: &'a Slot<T> = unsafe { self.next.as_ref() }?;
            // ordering: equivalent: every slot was pushed by a release CAS on `head`, and read-modify-writes
            // continue release sequences, so the acquire load of `head` that began the walk ordered every
            // slot's fields (`next` included) already.
            self.next = slot.next.load(Ordering::Acquire);
            let Some(table) = self.table else {
                return Some((slot.index, slot.value()));
            };
            // Visible only if the table publishes this very slot now.
            let published = table
                .get(slot.index.as_usize())
                // ordering: equivalent: only compared with the slot pointer; the slot's value was ordered by
                // the walk's acquire of `head`.
                .is_some_and(|entry| ptr::eq(entry.load(Ordering::Acquire), slot));
            if published {
                return Some((slot.index, slot.value()));
            }
        }
    }
}

// SAFETY: the iterator hands out `&T` across threads only if `T: Sync`; its raw
// pointer is into the container it borrows.
unsafe impl<T: Sync> Send for Iter<'_, T> {}

/// Frees a half-built slot and resets its table word unless disarmed.
struct UndoBuild<'a, T, A: RawAlloc> {
    entry: &'a AtomicPtr<Slot<T>>,
    block: Option<NonNull<u8>>,
    layout: Layout,
    alloc: &'a A,
}

impl<T, A: RawAlloc> UndoBuild<'_, T, A> {
    fn disarm(self) {
        core::mem::forget(self);
    }
}

impl<T, A: RawAlloc> Drop for UndoBuild<'_, T, A> {
    fn drop(&mut self) {
        if let Some(block) = self.block {
            // SAFETY: the block came from `alloc` with `layout` and was never
            // published, so no one else holds it.
            unsafe { self.alloc.deallocate(block, self.layout) };
        }
        // ordering: equivalent: ABSENT carries nothing: whoever reads it reads no memory of this failed
        // build (the block went back to the allocator, synchronised on its own).
        self.entry.store(absent(), Ordering::Release);
    }
}

/// The slot a published (untagged) word points to.
///
/// # Safety
///
/// `word` must be a slot pointer read from a table word, with any HIDDEN tag
/// removed, and the container it came from must be alive for `'a`. Such a slot
/// was fully written before the release store that made it reachable (and the
/// caller's load acquired it), and is freed only when the container drops.
#[inline(always)]
unsafe fn slot_at<'a, T>(word: *mut Slot<T>) -> &'a Slot<T> {
    // SAFETY: guaranteed by the caller, as above.
    unsafe { &*word }
}

fn absent<T>() -> *mut Slot<T> {
    ptr::without_provenance_mut(ABSENT)
}

fn building<T>() -> *mut Slot<T> {
    ptr::without_provenance_mut(BUILDING)
}

/// The block of a container's bookkeeping and table: a `TableHeader<T>`, then
/// `capacity` words; and the offset of the words. Never zero-sized.
fn block_layout<T>(capacity: usize) -> Result<(Layout, usize), Error> {
    let words =
        Layout::array::<AtomicPtr<Slot<T>>>(capacity).map_err(|_| Error::CapacityOverflow)?;
    let (layout, offset) = Layout::new::<TableHeader<T>>()
        .extend(words)
        .map_err(|_| Error::CapacityOverflow)?;
    Ok((layout.pad_to_align(), offset))
}

/// A slot's layout: its fields, then aligned and padded to whole cache lines
/// unless compact.
fn slot_layout<T>(padding: SlotPadding) -> Result<Layout, Error> {
    let layout = Layout::new::<Slot<T>>();
    let layout = match padding {
        SlotPadding::CacheLine => layout
            .align_to(CACHE_LINE)
            .map_err(|_| Error::CapacityOverflow)?,
        SlotPadding::Compact => layout,
    };
    Ok(layout.pad_to_align())
}
