//! A pool's *home*: where its objects go back when they are dropped away from
//! the pool (by a thread that holds no pin, above `DISPATCH_LEVEL`, after the
//! pool was moved or even dropped).
//!
//! A list any thread pushes a freed slot onto with one compare-and-swap, which
//! the pool takes whole (one swap) under its depot lock. Push and take-all
//! only, never a single pop, so there is no ABA hazard: a node is never taken
//! off and pushed again while a pusher still compares against it.
//!
//! The home is its own block from the pool's allocator, so it stays put when the
//! pool moves; the pool frees it only when no object is outstanding, and
//! otherwise leaks it with the slabs, so a late drop still lands somewhere
//! valid.

use core::ptr::{self, NonNull};

use super::magazine::Round;
use crate::sync::{AtomicPtr, AtomicUsize, Ordering};

pub(super) struct Home {
    /// The most recently pushed slot; each slot's first word links the next.
    head: AtomicPtr<u8>,
    /// Slots pushed and not yet taken (at least the list's length: counted
    /// before the push).
    count: AtomicUsize,
}

impl Home {
    pub(super) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
            count: AtomicUsize::new(0),
        }
    }

    /// Gives back a free slot from any thread, at any IRQL.
    ///
    /// # Safety
    ///
    /// `round` is a slot of the pool this is the home of, holds no live value,
    /// and no one uses it any more.
    pub(super) unsafe fn push(&self, round: Round) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: a slot is at least a pointer, aligned for one (slab::ObjectSlot),
            // and ours alone until the CAS below publishes it.
            unsafe { round.cast::<*mut u8>().as_ptr().write(head) };
            // Release: the link written through the raw pointer above (and
            // the value's drop) must happen-before `take_all`'s walk and the
            // slot's reuse. Loom cannot see memory written through raw
            // pointers; miri's race detector can: tests/handoff.rs, run with
            // this weakened by `scripts/mutants orderings` (miri tier).
            match self.head.compare_exchange_weak(
                head,
                round.as_ptr(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Takes every slot pushed so far.
    pub(super) fn take_all(&self) -> Taken<'_> {
        // Acquire: pairs with `push`'s release CAS, so the links read through
        // raw pointers below are the ones written there (checked under miri
        // like `push`'s: tests/handoff.rs).
        let first = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        Taken {
            next: NonNull::new(first),
            home: self,
        }
    }

    /// Slots pushed and not yet taken.
    pub(super) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// The slots of one [`Home::take_all`], as free rounds.
pub(super) struct Taken<'a> {
    next: Option<Round>,
    home: &'a Home,
}

impl Iterator for Taken<'_> {
    type Item = Round;

    fn next(&mut self) -> Option<Round> {
        let round = self.next?;
        // SAFETY: a slot on the list was linked before the release CAS that our
        // acquire swap read (or that an earlier slot's link was read after), and
        // nothing touches it until we hand it out.
        self.next = NonNull::new(unsafe { round.cast::<*mut u8>().as_ptr().read() });
        self.home.count.fetch_sub(1, Ordering::Relaxed);
        Some(round)
    }
}
