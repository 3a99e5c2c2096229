//! A processor's cache: its loaded and previous magazines (Bonwick) and the
//! counters a driver reads.
//!
//! Only code pinned to the processor touches the magazines (and the pool's
//! owner, at drop), so they change with plain loads and stores. How many rounds
//! each magazine holds, and the counters, are atomics written only by that code
//! with a relaxed load and store (no read-modify-write, so no interlocked
//! instruction), which lets anyone read them at any time.
//!
//! Invariant (Bonwick's): the previous magazine is empty or full, so after any
//! exchange with the depot at least a magazine's worth of allocations or frees
//! are served locally before the next one.

use core::ptr::NonNull;

use super::depot::Depot;
use super::magazine::{self, Magazine, MagazineShape, Round};
use super::ProcessorStats;
use crate::sync::{AtomicU64, AtomicUsize, Ordering, UnsafeCell};
use crate::{Error, ProcessorIndex, RawAlloc};

/// One processor's magazines and counters; the value of the pool's `PerCpu`.
pub(super) struct Cache {
    magazines: UnsafeCell<Magazines>,
    /// Rounds in the loaded magazine.
    loaded: AtomicUsize,
    /// Rounds in the previous magazine: 0 or the capacity.
    previous: AtomicUsize,
    alloc_hits: AtomicU64,
    alloc_misses: AtomicU64,
    free_hits: AtomicU64,
    free_misses: AtomicU64,
    exchanges: AtomicU64,
}

struct Magazines {
    loaded: NonNull<Magazine>,
    previous: NonNull<Magazine>,
}

// SAFETY: a cache owns its two magazines (blocks from the pool's allocator that
// any thread may free) and atomics; moving it moves that ownership.
unsafe impl Send for Cache {}

// SAFETY: through `&Cache`, the magazines are touched only by code pinned to
// the cache's processor (every such method is `unsafe` and demands it), and
// PinGuard promises one pinned thread per processor at a time, ordered one after
// the other (promises 2 and 5); everything else is atomic.
unsafe impl Sync for Cache {}

/// Adds one to a counter only its owner writes: a relaxed load and store, which
/// compiles to a plain add (no lock prefix) where a read-modify-write would not.
#[inline(always)]
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

// Every `unsafe fn` below has the same contract:
//
// # Safety
//
// The caller is pinned to this cache's processor (or owns the pool
// exclusively), and the cache belongs to a pool whose magazines have `capacity`
// rounds. Methods that take `depot` are called with the depot locked.
impl Cache {
    /// A cache with two empty magazines placed for `processor`.
    pub(super) fn new<A: RawAlloc>(
        shape: &MagazineShape,
        alloc: &A,
        processor: ProcessorIndex,
    ) -> Result<Self, Error> {
        let loaded = shape.allocate(alloc, Some(processor))?;
        let previous = match shape.allocate(alloc, Some(processor)) {
            Ok(previous) => previous,
            Err(error) => {
                // SAFETY: just allocated from this shape and allocator, unused.
                unsafe { shape.free(alloc, loaded) };
                return Err(error);
            }
        };
        Ok(Self {
            magazines: UnsafeCell::new(Magazines { loaded, previous }),
            loaded: AtomicUsize::new(0),
            previous: AtomicUsize::new(0),
            alloc_hits: AtomicU64::new(0),
            alloc_misses: AtomicU64::new(0),
            free_hits: AtomicU64::new(0),
            free_misses: AtomicU64::new(0),
            exchanges: AtomicU64::new(0),
        })
    }

    /// The fast allocation: the top round of the loaded magazine.
    ///
    /// # Safety
    ///
    /// See the contract above.
    #[inline(always)]
    pub(super) unsafe fn pop(&self) -> Option<Round> {
        // SAFETY: forwarded.
        let round = unsafe { self.pop_loaded() }?;
        bump(&self.alloc_hits);
        Some(round)
    }

    /// The fast free: onto the loaded magazine if it has room; else gives the
    /// round back.
    ///
    /// # Safety
    ///
    /// See the contract above; `round` is a free slot of this pool, in no
    /// magazine and no list.
    #[inline(always)]
    pub(super) unsafe fn push(&self, capacity: usize, round: Round) -> Result<(), Round> {
        // SAFETY: forwarded.
        unsafe { self.push_loaded(capacity, round) }?;
        bump(&self.free_hits);
        Ok(())
    }

    /// An allocation the loaded magazine could not serve, from the previous one
    /// if it is full (swapping them, Bonwick). Still local: counted as a hit.
    ///
    /// # Safety
    ///
    /// See the contract above.
    pub(super) unsafe fn pop_previous(&self) -> Option<Round> {
        if self.previous.load(Ordering::Relaxed) == 0 {
            return None;
        }
        // SAFETY: forwarded.
        unsafe {
            self.swap();
            self.pop()
        }
    }

    /// A free the loaded magazine could not take, into the previous one if it
    /// is empty (swapping them). Still local: counted as a hit.
    ///
    /// # Safety
    ///
    /// As for [`push`](Self::push).
    pub(super) unsafe fn push_previous(&self, capacity: usize, round: Round) -> Result<(), Round> {
        if self.previous.load(Ordering::Relaxed) != 0 {
            return Err(round);
        }
        // SAFETY: forwarded.
        unsafe {
            self.swap();
            self.push(capacity, round)
        }
    }

    /// Alloc miss, depot locked: trades the previous magazine (empty) for a full
    /// one from the depot, which becomes the loaded one, and takes a round.
    ///
    /// # Safety
    ///
    /// See the contract above.
    pub(super) unsafe fn reload(&self, depot: &mut Depot) -> Option<Round> {
        let (full, rounds) = depot.full.pop()?;
        // SAFETY: forwarded; `full` is off the depot's list and holds `rounds`.
        unsafe { self.rotate(depot, full, rounds) };
        // SAFETY: forwarded.
        unsafe { self.pop_loaded() }
    }

    /// Alloc miss, depot locked, no full magazine there: fills the loaded
    /// magazine with loose objects (a batch) and takes a round.
    ///
    /// # Safety
    ///
    /// See the contract above.
    pub(super) unsafe fn fill(&self, depot: &mut Depot, capacity: usize) -> Option<Round> {
        let mut len = self.loaded.load(Ordering::Relaxed);
        self.magazines.with_mut(|magazines| {
            // SAFETY: the magazines are ours (contract); reading a field.
            let loaded = unsafe { (*magazines).loaded };
            while len < capacity {
                let Some(round) = depot.pop_loose() else {
                    break;
                };
                // SAFETY: `len < capacity`; the magazine is ours (contract).
                unsafe { magazine::set(loaded, len, round) };
                len = len.wrapping_add(1); // below the capacity: no overflow
            }
        });
        self.loaded.store(len, Ordering::Relaxed);
        // SAFETY: forwarded.
        unsafe { self.pop_loaded() }
    }

    /// Free miss, depot locked: gives the previous magazine (full) to the
    /// depot, loads `empty` and puts `round` in it.
    ///
    /// # Safety
    ///
    /// As for [`push`](Self::push); `empty` is an empty magazine of this pool
    /// that no one else holds, and the capacity is at least 1.
    pub(super) unsafe fn unload(
        &self,
        depot: &mut Depot,
        empty: NonNull<Magazine>,
        capacity: usize,
        round: Round,
    ) -> Result<(), Round> {
        // SAFETY: forwarded.
        unsafe {
            self.rotate(depot, empty, 0);
            self.push_loaded(capacity, round)
        }
    }

    /// A failed add left this cache retired: hands every round it holds to the
    /// depot as loose objects (the magazines stay, for the next add).
    ///
    /// # Safety
    ///
    /// See the contract above.
    pub(super) unsafe fn flush(&self, depot: &mut Depot) {
        let (loaded, previous) = (
            self.loaded.load(Ordering::Relaxed),
            self.previous.load(Ordering::Relaxed),
        );
        self.magazines.with_mut(|magazines| {
            // SAFETY: the magazines are ours (contract).
            let magazines = unsafe { &*magazines };
            for (magazine, len) in [(magazines.loaded, loaded), (magazines.previous, previous)] {
                for i in 0..len {
                    // SAFETY: round `i < len` is written; the magazine is ours;
                    // a round in a magazine is a free slot in no list.
                    unsafe { depot.push_loose(magazine::get(magazine, i)) };
                }
            }
        });
        self.loaded.store(0, Ordering::Relaxed);
        self.previous.store(0, Ordering::Relaxed);
    }

    /// Frees both magazines (the pool is being dropped) and says how many free
    /// objects they held.
    ///
    /// # Safety
    ///
    /// The caller owns the pool exclusively and never uses this cache again.
    pub(super) unsafe fn release<A: RawAlloc>(&self, shape: &MagazineShape, alloc: &A) -> usize {
        let rounds = self.cached();
        self.magazines.with_mut(|magazines| {
            // SAFETY: the pool is ours alone (caller); the magazines came from
            // this shape and allocator and are not used again.
            unsafe {
                shape.free(alloc, (*magazines).loaded);
                shape.free(alloc, (*magazines).previous);
            }
        });
        rounds
    }

    /// Counts an allocation that needed the depot.
    ///
    /// # Safety
    ///
    /// See the contract above (only the owner writes the counters).
    pub(super) unsafe fn count_alloc_miss(&self) {
        bump(&self.alloc_misses);
    }

    /// Counts a free that needed the depot.
    ///
    /// # Safety
    ///
    /// See the contract above.
    pub(super) unsafe fn count_free_miss(&self) {
        bump(&self.free_misses);
    }

    /// Free objects in the two magazines (any thread; exact when the owner is
    /// idle).
    pub(super) fn cached(&self) -> usize {
        self.loaded
            .load(Ordering::Relaxed)
            .saturating_add(self.previous.load(Ordering::Relaxed))
    }

    /// The counters, read by any thread.
    pub(super) fn stats(&self, processor: ProcessorIndex, retired: bool) -> ProcessorStats {
        ProcessorStats {
            processor,
            alloc_hits: self.alloc_hits.load(Ordering::Relaxed),
            alloc_misses: self.alloc_misses.load(Ordering::Relaxed),
            free_hits: self.free_hits.load(Ordering::Relaxed),
            free_misses: self.free_misses.load(Ordering::Relaxed),
            exchanges: self.exchanges.load(Ordering::Relaxed),
            cached: self.cached(),
            retired,
        }
    }

    /// Top round of the loaded magazine, uncounted.
    ///
    /// # Safety
    ///
    /// See the contract above.
    #[inline(always)]
    unsafe fn pop_loaded(&self) -> Option<Round> {
        let top = self.loaded.load(Ordering::Relaxed).checked_sub(1)?;
        let round = self.magazines.with_mut(|magazines| {
            // SAFETY: the magazines are ours (contract) and the loaded one holds
            // `top + 1` written rounds.
            unsafe { magazine::get((*magazines).loaded, top) }
        });
        self.loaded.store(top, Ordering::Relaxed);
        Some(round)
    }

    /// Puts a round on the loaded magazine if it has room, uncounted.
    ///
    /// # Safety
    ///
    /// As for [`push`](Self::push).
    #[inline(always)]
    unsafe fn push_loaded(&self, capacity: usize, round: Round) -> Result<(), Round> {
        let len = self.loaded.load(Ordering::Relaxed);
        if len >= capacity {
            return Err(round);
        }
        self.magazines.with_mut(|magazines| {
            // SAFETY: the magazines are ours (contract); `len < capacity`.
            unsafe { magazine::set((*magazines).loaded, len, round) }
        });
        // Below the capacity, so no overflow.
        self.loaded.store(len.wrapping_add(1), Ordering::Relaxed);
        Ok(())
    }

    /// Swaps the loaded and previous magazines.
    ///
    /// # Safety
    ///
    /// See the contract above.
    unsafe fn swap(&self) {
        self.magazines.with_mut(|magazines| {
            // SAFETY: the magazines are ours (contract).
            let magazines = unsafe { &mut *magazines };
            core::mem::swap(&mut magazines.loaded, &mut magazines.previous);
        });
        let loaded = self.loaded.load(Ordering::Relaxed);
        self.loaded
            .store(self.previous.load(Ordering::Relaxed), Ordering::Relaxed);
        self.previous.store(loaded, Ordering::Relaxed);
    }

    /// The depot exchange: the previous magazine goes to the depot, the loaded
    /// one becomes previous, and `incoming` (holding `rounds`) is loaded.
    ///
    /// # Safety
    ///
    /// See the contract above; `incoming` is a magazine of this pool that no
    /// one else holds, with `rounds` written rounds.
    unsafe fn rotate(&self, depot: &mut Depot, incoming: NonNull<Magazine>, rounds: usize) {
        let (loaded, previous) = (
            self.loaded.load(Ordering::Relaxed),
            self.previous.load(Ordering::Relaxed),
        );
        self.magazines.with_mut(|magazines| {
            // SAFETY: the magazines are ours (contract).
            let magazines = unsafe { &mut *magazines };
            // SAFETY: the previous magazine leaves our hands with `previous`
            // written rounds; it is on no list.
            unsafe {
                if previous == 0 {
                    depot.empty.push(magazines.previous, 0);
                } else {
                    depot.full.push(magazines.previous, previous);
                }
            }
            magazines.previous = magazines.loaded;
            magazines.loaded = incoming;
        });
        self.previous.store(loaded, Ordering::Relaxed);
        self.loaded.store(rounds, Ordering::Relaxed);
        bump(&self.exchanges);
    }
}
