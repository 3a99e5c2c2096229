//! Magazines: fixed-capacity stacks of free objects, the unit a processor
//! exchanges with the depot (Bonwick). A magazine is one block: a small header
//! and `capacity` rounds (addresses of free object slots).

use core::alloc::Layout;
use core::mem::{offset_of, size_of};
use core::ptr::{self, NonNull};

use crate::sync::UnsafeCell;
use crate::{Error, ProcessorIndex, RawAlloc};

/// A free object: the address of an object slot that no one holds.
pub(super) type Round = NonNull<u8>;

/// A magazine's header; its rounds follow in the same block.
#[repr(C)]
pub(super) struct Magazine {
    /// The next magazine in a depot list; only touched under the depot lock.
    next: Option<NonNull<Magazine>>,
    /// How many rounds it holds while it sits in the depot. While a processor
    /// has it loaded, the processor's count is the truth and this is stale.
    len: usize,
    /// Tells loom who touches the rounds (zero-sized outside loom).
    access: UnsafeCell<()>,
    rounds: [Round; 0],
}

// The rounds start right after the header, where `MagazineShape` puts them.
const _: () = assert!(offset_of!(Magazine, rounds) == size_of::<Magazine>());

/// The layout every magazine of a pool has.
#[derive(Clone, Copy, Debug)]
pub(super) struct MagazineShape {
    capacity: usize,
    layout: Layout,
}

impl MagazineShape {
    /// Magazines of `capacity` rounds.
    pub(super) fn new(capacity: usize) -> Result<Self, Error> {
        let rounds = Layout::array::<Round>(capacity).map_err(|_| Error::CapacityOverflow)?;
        let (layout, offset) = Layout::new::<Magazine>()
            .extend(rounds)
            .map_err(|_| Error::CapacityOverflow)?;
        if offset != size_of::<Magazine>() {
            // Cannot happen (the assertion above); refuse rather than misplace.
            return Err(Error::CapacityOverflow);
        }
        Ok(Self {
            capacity,
            layout: layout.pad_to_align(),
        })
    }

    /// Rounds per magazine.
    #[inline(always)]
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// An empty magazine, placed for `processor`.
    pub(super) fn allocate<A: RawAlloc>(
        &self,
        alloc: &A,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<Magazine>, Error> {
        let block = alloc.allocate(self.layout, processor)?.cast::<Magazine>();
        // SAFETY: the block is valid for `layout`, which starts with a `Magazine`
        // and is aligned for it (allocator promises 1 and 2); no one else has it.
        unsafe {
            block.as_ptr().write(Magazine {
                next: None,
                len: 0,
                access: UnsafeCell::new(()),
                rounds: [],
            })
        };
        Ok(block)
    }

    /// Returns a magazine's block.
    ///
    /// # Safety
    ///
    /// `magazine` came from [`allocate`](Self::allocate) of this shape with
    /// `alloc`, is in no list and no processor's hands, and is not used again.
    pub(super) unsafe fn free<A: RawAlloc>(&self, alloc: &A, magazine: NonNull<Magazine>) {
        // SAFETY: per the caller, the header is initialised and the block is
        // ours alone; it goes back with the layout it was allocated with.
        unsafe {
            ptr::drop_in_place(magazine.as_ptr());
            alloc.deallocate(magazine.cast(), self.layout);
        }
    }
}

/// Round `i` of `magazine`.
///
/// # Safety
///
/// `magazine` is live, `i` is below its capacity, round `i` was written, and
/// the caller has the magazine to itself: it is loaded by the processor the
/// caller is pinned to, or it is in the depot and the caller holds the lock, or
/// the caller owns the whole pool (`&mut`).
#[inline(always)]
pub(super) unsafe fn get(magazine: NonNull<Magazine>, i: usize) -> Round {
    // SAFETY: the header is live (caller); the rounds are in the same block, so
    // `i` below the capacity stays inside it, and round `i` is initialised;
    // exclusive use makes the read race-free.
    unsafe {
        (*magazine.as_ptr())
            .access
            .with_mut(|_| rounds(magazine).add(i).read())
    }
}

/// Writes round `i` of `magazine`.
///
/// # Safety
///
/// As for [`get`], except that round `i` need not have been written.
#[inline(always)]
pub(super) unsafe fn set(magazine: NonNull<Magazine>, i: usize, round: Round) {
    // SAFETY: as in `get`; the write stays inside the block and is exclusive.
    unsafe {
        (*magazine.as_ptr())
            .access
            .with_mut(|_| rounds(magazine).add(i).write(round))
    }
}

/// The first round's address (no reference is made, so the whole block's
/// provenance is kept).
///
/// # Safety
///
/// `magazine` is a live magazine.
#[inline(always)]
unsafe fn rounds(magazine: NonNull<Magazine>) -> *mut Round {
    // SAFETY: the caller passes a live magazine; this only computes a field's
    // address.
    unsafe { ptr::addr_of_mut!((*magazine.as_ptr()).rounds).cast::<Round>() }
}

/// A singly linked list of magazines, each with its count of rounds. Lives in
/// the depot, so every call is made under the depot lock (or with `&mut`).
#[derive(Debug, Default)]
pub(super) struct List {
    head: Option<NonNull<Magazine>>,
    rounds: usize,
}

impl List {
    /// Puts `magazine`, holding `len` rounds, on the list.
    ///
    /// # Safety
    ///
    /// `magazine` is live, on no list, held by no processor, and its first
    /// `len` rounds are written.
    pub(super) unsafe fn push(&mut self, magazine: NonNull<Magazine>, len: usize) {
        // SAFETY: per the caller the header is live and nobody else uses it.
        unsafe {
            (*magazine.as_ptr()).next = self.head;
            (*magazine.as_ptr()).len = len;
        }
        self.head = Some(magazine);
        self.rounds = self.rounds.saturating_add(len);
    }

    /// Takes a magazine and its count of rounds off the list.
    pub(super) fn pop(&mut self) -> Option<(NonNull<Magazine>, usize)> {
        let magazine = self.head?;
        // SAFETY: a listed magazine is live and only touched under the lock we
        // hold (`&mut self` is the depot's).
        let (next, len) = unsafe { ((*magazine.as_ptr()).next, (*magazine.as_ptr()).len) };
        self.head = next;
        self.rounds = self.rounds.saturating_sub(len);
        Some((magazine, len))
    }

    /// Rounds in all the listed magazines.
    pub(super) fn rounds(&self) -> usize {
        self.rounds
    }
}
