//! The depot: what every processor shares. Full and empty magazines, single
//! free objects (the "loose" list), the slabs all objects come from, and the
//! bound on how many objects exist.
//!
//! One lock guards it. It is taken only on slow paths, a magazine at a time,
//! and only by pinned code: a `spin` lock does not raise the IRQL, and a holder
//! preempted at `PASSIVE_LEVEL` would leave a DPC on its processor spinning
//! forever. The counters a driver reads are mirrored into atomics on every
//! unlock, so statistics never take the lock.

use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use super::magazine::{self, List, Round};
use super::slab::{self, SlabHeader};
use crate::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};
use crate::RawAlloc;

/// The shared state behind the lock.
#[derive(Debug, Default)]
pub(super) struct Depot {
    /// Magazines holding at least one round (usually full).
    pub(super) full: List,
    /// Magazines holding none.
    pub(super) empty: List,
    /// Free objects outside magazines, linked through their slots.
    loose: Option<Round>,
    loose_count: usize,
    /// Every slab, newest first.
    slabs: Option<NonNull<SlabHeader>>,
    slab_count: usize,
    /// Objects in the slabs.
    objects: usize,
    /// Objects handed out and taken back without magazines.
    direct_allocs: u64,
    direct_frees: u64,
}

// SAFETY: the depot owns the magazines, slabs and free slots its pointers
// reach; nothing else uses them while they are in the depot, so moving it (and
// using it from whichever thread holds the lock) is sound.
unsafe impl Send for Depot {}

impl Depot {
    /// A free object taken from the loose list.
    pub(super) fn pop_loose(&mut self) -> Option<Round> {
        let round = self.loose?;
        // SAFETY: a loose round is a free slot in one of our slabs, aligned for
        // and holding its link (written by `push_loose`), and used by no one but
        // the lock holder.
        self.loose = unsafe { round.cast::<Option<Round>>().read() };
        self.loose_count = self.loose_count.saturating_sub(1);
        Some(round)
    }

    /// Puts a free object on the loose list.
    ///
    /// # Safety
    ///
    /// `round` is a slot of this pool's slabs that no one uses (freed or never
    /// handed out) and that is in no magazine and no list.
    pub(super) unsafe fn push_loose(&mut self, round: Round) {
        // SAFETY: the slot is ours (caller) and at least a pointer, aligned for
        // one (slab::ObjectSlot).
        unsafe { round.cast::<Option<Round>>().write(self.loose) };
        self.loose = Some(round);
        self.loose_count = self.loose_count.saturating_add(1);
    }

    /// One free object for code without magazines: a loose one, else a round of
    /// a full magazine.
    pub(super) fn take_one(&mut self) -> Option<Round> {
        if let Some(round) = self.pop_loose() {
            return Some(round);
        }
        let (magazine, len) = self.full.pop()?;
        let top = len.checked_sub(1)?;
        // SAFETY: a magazine in the depot is ours under the lock; the list keeps
        // `len` written rounds for it, so `top` is one of them.
        let round = unsafe { magazine::get(magazine, top) };
        // SAFETY: the magazine is off the list and keeps `top` written rounds.
        unsafe {
            if top == 0 {
                self.empty.push(magazine, 0);
            } else {
                self.full.push(magazine, top);
            }
        }
        Some(round)
    }

    /// Counts an object handed out without magazines.
    pub(super) fn count_direct_alloc(&mut self) {
        self.direct_allocs = self.direct_allocs.wrapping_add(1);
    }

    /// Counts an object taken back without magazines.
    pub(super) fn count_direct_free(&mut self) {
        self.direct_frees = self.direct_frees.wrapping_add(1);
    }

    /// How many objects the next slab may hold: up to `per_slab`, within
    /// `total` (0: the total is reached).
    pub(super) fn room(&self, total: usize, per_slab: usize) -> usize {
        total.saturating_sub(self.objects).min(per_slab)
    }

    /// Adds a new slab; its slots become loose objects.
    ///
    /// # Safety
    ///
    /// `slab` is a fresh slab of `shape`, allocated from this pool's allocator
    /// and known to no one else.
    pub(super) unsafe fn add_slab(&mut self, slab: NonNull<SlabHeader>, shape: &slab::SlabShape) {
        // SAFETY: the header is live and ours (caller).
        let objects = unsafe {
            (*slab.as_ptr()).next = self.slabs;
            (*slab.as_ptr()).objects
        };
        self.slabs = Some(slab);
        self.slab_count = self.slab_count.saturating_add(1);
        self.objects = self.objects.saturating_add(objects);
        // Last slot first, so the first slots come out first.
        for i in (0..objects).rev() {
            // SAFETY: `i < objects`, the slab is live and of this shape; its
            // slots were never handed out.
            if let Ok(round) = unsafe { shape.slot(slab, i) } {
                // SAFETY: a fresh slot, in no list.
                unsafe { self.push_loose(round) };
            }
        }
    }

    /// Free objects in the depot (loose and in magazines).
    pub(super) fn free_objects(&self) -> usize {
        self.loose_count.saturating_add(self.full.rounds())
    }

    /// Objects in the slabs.
    pub(super) fn objects(&self) -> usize {
        self.objects
    }

    /// Frees every magazine in the depot and, if `slabs` says so, every slab.
    ///
    /// # Safety
    ///
    /// The pool is being dropped: nothing uses the depot's magazines again, and
    /// if `slabs`, no object of any slab is used again either. The shapes and
    /// the allocator are the ones everything was allocated with.
    pub(super) unsafe fn release<A: RawAlloc>(
        &mut self,
        alloc: &A,
        magazines: &magazine::MagazineShape,
        slab_shape: &slab::SlabShape,
        slabs: bool,
    ) {
        while let Some((magazine, _)) = self.full.pop().or_else(|| self.empty.pop()) {
            // SAFETY: off the list, unused from now on (caller).
            unsafe { magazines.free(alloc, magazine) };
        }
        self.loose = None;
        self.loose_count = 0;
        if slabs {
            let mut next = self.slabs.take();
            while let Some(slab) = next {
                // SAFETY: a slab on our list is live; its objects are unused
                // from now on (caller).
                unsafe {
                    next = (*slab.as_ptr()).next;
                    slab_shape.free(alloc, slab);
                }
            }
        }
    }
}

/// The depot, its lock, and the counters mirrored for lock-free reading.
pub(super) struct SharedDepot {
    lock: Mutex<Depot>,
    /// Magazines allocated (in the depot or held by processors).
    pub(super) magazines: AtomicUsize,
    pub(super) objects: AtomicUsize,
    pub(super) free: AtomicUsize,
    pub(super) slabs: AtomicUsize,
    pub(super) direct_allocs: AtomicU64,
    pub(super) direct_frees: AtomicU64,
}

impl SharedDepot {
    pub(super) fn new() -> Self {
        Self {
            lock: Mutex::new(Depot::default()),
            magazines: AtomicUsize::new(0),
            objects: AtomicUsize::new(0),
            free: AtomicUsize::new(0),
            slabs: AtomicUsize::new(0),
            direct_allocs: AtomicU64::new(0),
            direct_frees: AtomicU64::new(0),
        }
    }

    /// Locks the depot. Only pinned code may call this (see the module).
    pub(super) fn lock(&self) -> Locked<'_> {
        Locked {
            depot: self.lock.lock(),
            shared: self,
        }
    }

    /// The depot, with the pool held exclusively.
    pub(super) fn get_mut(&mut self) -> &mut Depot {
        self.lock.get_mut()
    }
}

/// The locked depot; unlocking mirrors its counters.
pub(super) struct Locked<'a> {
    depot: MutexGuard<'a, Depot>,
    shared: &'a SharedDepot,
}

impl Deref for Locked<'_> {
    type Target = Depot;
    fn deref(&self) -> &Depot {
        &self.depot
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Depot {
        &mut self.depot
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Still under the lock: these are the values as of this unlock.
        let (depot, shared) = (&*self.depot, self.shared);
        shared.objects.store(depot.objects, Ordering::Relaxed);
        shared.free.store(depot.free_objects(), Ordering::Relaxed);
        shared.slabs.store(depot.slab_count, Ordering::Relaxed);
        shared
            .direct_allocs
            .store(depot.direct_allocs, Ordering::Relaxed);
        shared
            .direct_frees
            .store(depot.direct_frees, Ordering::Relaxed);
    }
}
