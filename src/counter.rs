//! [`PerCpuCounters`]: a block of `u64` statistics per processor, added to on
//! the local processor without interlocked instructions and summed over all.
//!
//! Why plain loads and stores are enough: only the pinned owner of a processor
//! writes that processor's block ([`PinGuard`]: one thread per processor at a
//! time), so a relaxed load, an add and a relaxed store cannot lose an update;
//! readers on other processors use atomic loads, so they never see a torn value,
//! even on 32-bit targets. The counters need 64-bit atomic loads and stores
//! (`target_has_atomic = "64"`): every Windows target has them (x86 included),
//! so this module is built only where they exist instead of pulling in a
//! lock-based fallback.
//!
//! Why a sum never goes down: a sum reads every block ever built
//! ([`PerCpu::iter_all`], retired ones included, so an aborted add does not take
//! its counts away), plus the shared block where processors without a slot
//! count; each location only grows, and a later sum reads each of them no
//! earlier in its modification order than an earlier sum did.
//!
//! Counters are named with [`counters!`](crate::counters) (see `set` for why a
//! macro).

mod set;

use core::fmt;

pub use self::set::{Counter, CounterSet, Counts};
use crate::sync::{AtomicU64, Ordering};
use crate::{
    Component, Error, InitFn, PerCpu, PinGuard, Platform, Prepared, ProcessorIndex, RawAlloc,
    SlotPadding, SlotState,
};

/// One processor's counters (or the shared block).
type Block<S> = <<S as CounterSet>::Counts as Counts>::Atomics;

/// The counter at `index` of a block, if it is in the block.
#[inline(always)]
fn slot<S: CounterSet>(block: &Block<S>, index: usize) -> Option<&AtomicU64> {
    <S::Counts as Counts>::slots(block).get(index)
}

/// Per-processor `u64` counters (a driver's statistics), grown by hot-add. `S`
/// names them: a struct declared with [`counters!`](crate::counters), or
/// `[u64; N]` for `N` anonymous ones.
///
/// - [`add`](Self::add) on the pinned processor: its slot, then a relaxed load,
///   an add and a relaxed store. No lock, no interlocked instruction, and for a
///   counter constant no bounds check left after inlining.
/// - [`sum`](Self::sum) / [`sums`](Self::sums) from anywhere: never torn, and
///   for counters that are only added to, never lower than a sum taken before
///   it, across hot-adds and aborted adds alike.
/// - A processor without a slot (not added yet, or its add was aborted) adds to
///   a shared block with an interlocked add instead, so no count is lost.
///
/// Counts wrap at 2^64 (they never panic).
///
/// ```
/// use perproc::host::HostPlatform;
/// use perproc::{PerCpuCounters, Platform, ProcessorIndex};
///
/// perproc::counters! {
///     pub struct Reads { requests, bytes }
/// }
///
/// let platform = HostPlatform::new(4)?;
/// let stats = PerCpuCounters::<Reads, _>::new(&platform)?;
/// for i in 0..2 {
///     let _ = stats.prepare(ProcessorIndex::new(i).unwrap())?;
/// }
///
/// // In the I/O path, pinned:
/// platform.pinned(|pin| {
///     stats.add(pin, Reads::requests, 1);
///     stats.add(pin, Reads::bytes, 4096);
/// })?;
///
/// // A status query, anywhere:
/// assert_eq!(stats.sums(), Reads { requests: 1, bytes: 4096 });
/// assert_eq!(stats.sum(Reads::bytes), 4096);
/// # Ok::<(), perproc::Error>(())
/// ```
///
/// Without the macro, counters are positions in an array:
///
/// ```
/// use perproc::{host::HostPlatform, Counter, PerCpuCounters, Platform, ProcessorIndex};
/// const HITS: Counter<[u64; 2]> = Counter::at::<0>();
/// let platform = HostPlatform::new(1)?;
/// let stats = PerCpuCounters::<[u64; 2], _>::new(&platform)?;
/// platform.pinned(|pin| stats.add(pin, HITS, 3))?; // no block yet: the shared one
/// assert_eq!(stats.sums(), [3, 0]);
/// # Ok::<(), perproc::Error>(())
/// ```
pub struct PerCpuCounters<S: CounterSet, P: Platform, A: RawAlloc = <P as Platform>::Alloc> {
    blocks: PerCpu<Block<S>, P, A>,
    /// Counts from processors with no block.
    unplaced: Block<S>,
}

/// One counter per processor.
pub type PerCpuCounter<P> = PerCpuCounters<[u64; 1], P>;

impl<S: CounterSet, P: Platform> PerCpuCounters<S, P> {
    /// Counters for every processor the platform can have, each processor's
    /// block on its own cache lines. Memory for a processor is allocated at its
    /// prepare.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] for the table.
    pub fn new(platform: &P) -> Result<Self, Error> {
        Self::new_in(platform, platform.allocator())
    }
}

impl<S: CounterSet, P: Platform, A: RawAlloc> PerCpuCounters<S, P, A> {
    /// [`new`](PerCpuCounters::new) with memory from `alloc`.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] for the table.
    pub fn new_in(platform: &P, alloc: A) -> Result<Self, Error> {
        let init: InitFn<Block<S>> = |_| Ok(<S::Counts as Counts>::zero());
        Ok(Self {
            blocks: PerCpu::with_padding_in(platform, alloc, SlotPadding::CacheLine, init)?,
            unplaced: <S::Counts as Counts>::zero(),
        })
    }

    /// Adds `delta` to `counter` of the processor the caller is pinned to.
    ///
    /// No lock and no interlocked instruction when the processor has its block;
    /// one interlocked add (to a shared block) when it has none. For many adds
    /// under one pin, [`local`](Self::local) looks the block up once.
    #[inline]
    pub fn add(&self, pin: &PinGuard<'_, P>, counter: Counter<S>, delta: u64) {
        self.local(pin).add(counter, delta);
    }

    /// The counters of the processor `pin` holds, looked up once for a batch of
    /// adds (a DPC's loop): each add is then a load, an add and a store.
    ///
    /// ```
    /// use perproc::host::HostPlatform;
    /// use perproc::{PerCpuCounters, Platform, ProcessorIndex};
    /// perproc::counters! { struct Io { bytes } }
    /// let platform = HostPlatform::new(2)?;
    /// let stats = PerCpuCounters::<Io, _>::new(&platform)?;
    /// let _ = stats.prepare(ProcessorIndex::ZERO)?;
    /// platform.pinned(|pin| {
    ///     let local = stats.local(pin);
    ///     for request in [512, 4096, 4096] {
    ///         local.add(Io::bytes, request);
    ///     }
    /// })?;
    /// assert_eq!(stats.sum(Io::bytes), 8704);
    /// # Ok::<(), perproc::Error>(())
    /// ```
    #[inline]
    pub fn local<'g>(&'g self, pin: &'g PinGuard<'g, P>) -> LocalCounters<'g, S, P> {
        LocalCounters {
            block: self.blocks.current(pin),
            unplaced: &self.unplaced,
            _pin: pin,
        }
    }

    /// The total of `counter` over every processor (retired ones and the
    /// shared block included). Never torn; for a counter only added to, never
    /// lower than a total taken before it.
    pub fn sum(&self, counter: Counter<S>) -> u64 {
        // The shared block first (acquire), then the list of blocks: see `add`.
        let unplaced =
            slot::<S>(&self.unplaced, counter.get()).map_or(0, |c| c.load(Ordering::Acquire));
        self.blocks.iter_all().fold(unplaced, |total, (_, block)| {
            let count = slot::<S>(block, counter.get()).map_or(0, |c| c.load(Ordering::Relaxed));
            total.wrapping_add(count)
        })
    }

    /// The totals of every counter, in one pass over the processors.
    pub fn sums(&self) -> S {
        S::from_counts(self.sum_counts())
    }

    /// Processor `index`'s counters, if it has a block (published or retired).
    pub fn processor(&self, index: ProcessorIndex) -> Option<S> {
        self.blocks
            .get(index)
            .or_else(|| self.blocks.retired(index))
            .map(|block| S::from_counts(<S::Counts as Counts>::read(block, Ordering::Relaxed)))
    }

    /// Every processor that has a block (published or retired) with its
    /// counters, most recently added first.
    pub fn per_processor(&self) -> impl Iterator<Item = (ProcessorIndex, S)> + '_ {
        self.blocks.iter_all().map(|(index, block)| {
            let counts = <S::Counts as Counts>::read(block, Ordering::Relaxed);
            (index, S::from_counts(counts))
        })
    }

    /// What processors without a block added.
    pub fn unplaced(&self) -> S {
        // ordering: equivalent: only the shared block is read here, so no load of
        // this call is ordered after it (the sums' acquire is what `add` pairs with).
        S::from_counts(<S::Counts as Counts>::read(
            &self.unplaced,
            Ordering::Acquire,
        ))
    }

    /// AddStart: allocates and publishes processor `index`'s block (zeroed, or
    /// as an aborted add left it).
    ///
    /// # Errors
    /// As [`PerCpu::prepare`].
    pub fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        self.blocks.prepare(index)
    }

    /// AddComplete.
    ///
    /// # Errors
    /// As [`PerCpu::commit`].
    pub fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.blocks.commit(index)
    }

    /// AddFailure: hides the block; its counts stay in every sum.
    ///
    /// # Errors
    /// As [`PerCpu::abort`].
    pub fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.blocks.abort(index).map(|_| ())
    }

    /// Where processor `index` stands.
    pub fn state(&self, index: ProcessorIndex) -> SlotState {
        self.blocks.state(index)
    }

    /// The platform the counters were built for (whose pins they accept).
    pub fn platform(&self) -> &P {
        self.blocks.platform()
    }

    fn sum_counts(&self) -> S::Counts {
        // The shared block first (acquire), then the list of blocks: see `add`.
        let mut totals = <S::Counts as Counts>::read(&self.unplaced, Ordering::Acquire);
        for (_, block) in self.blocks.iter_all() {
            let slots = <S::Counts as Counts>::slots(block);
            for (total, count) in totals.counts_mut().iter_mut().zip(slots) {
                *total = total.wrapping_add(count.load(Ordering::Relaxed));
            }
        }
        totals
    }
}

impl<S: CounterSet, P: Platform, A: RawAlloc> Component for PerCpuCounters<S, P, A>
where
    Self: Sync,
{
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        PerCpuCounters::prepare(self, index)
    }

    fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        PerCpuCounters::commit(self, index)
    }

    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        PerCpuCounters::abort(self, index)
    }
}

/// The counters of one pinned processor, from [`PerCpuCounters::local`]. It
/// borrows the pin, so it is used only while the caller stays on that
/// processor, and only on its thread.
#[must_use = "LocalCounters does nothing until added to"]
pub struct LocalCounters<'g, S: CounterSet, P: Platform> {
    /// The processor's block, or `None` when it has none (counts go to the
    /// shared block then).
    block: Option<&'g Block<S>>,
    unplaced: &'g Block<S>,
    _pin: &'g PinGuard<'g, P>,
}

impl<S: CounterSet, P: Platform> LocalCounters<'_, S, P> {
    /// Adds `delta` to `counter`: a load, an add and a store; one interlocked
    /// add to the shared block if the processor has no block.
    #[inline]
    pub fn add(&self, counter: Counter<S>, delta: u64) {
        match self.block {
            Some(block) => {
                // For a constant `counter` the position is known and below the
                // block's length (`Counter` checks it when made): the bounds
                // test folds away.
                if let Some(count) = slot::<S>(block, counter.get()) {
                    // Only the holder of the processor's pin writes its block
                    // (Platform promise 2, and we borrow that pin), so no update
                    // can come in between.
                    count.store(
                        count.load(Ordering::Relaxed).wrapping_add(delta),
                        Ordering::Relaxed,
                    );
                }
            }
            None => {
                if let Some(count) = slot::<S>(self.unplaced, counter.get()) {
                    // Release, with the sums' acquire load of this block (read
                    // first): a sum that sees what a processor counted after its
                    // add was aborted also sees what it counted before.
                    count.fetch_add(delta, Ordering::Release);
                }
            }
        }
    }
}

impl<S: CounterSet, P: Platform> fmt::Debug for LocalCounters<'_, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCounters")
            .field("placed", &self.block.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: CounterSet + fmt::Debug, P: Platform, A: RawAlloc> fmt::Debug for PerCpuCounters<S, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuCounters")
            .field("sums", &self.sums())
            .finish_non_exhaustive()
    }
}
