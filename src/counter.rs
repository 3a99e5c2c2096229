//! [`PerCpuCounters`]: a block of `u64` statistics per processor, added to on
//! the local processor without interlocked instructions and summed over all.
//!
//! Why plain loads and stores are enough: only the pinned owner of a processor
//! writes that processor's block ([`PinGuard`] promise 2), so a relaxed load, an
//! add and a relaxed store cannot lose an update; readers on other processors use
//! atomic loads, so they never see a torn value, even on 32-bit targets. The
//! counters need 64-bit atomic loads and stores (`target_has_atomic = "64"`):
//! every Windows target has them (x86 included), so this module is built only
//! where they exist instead of pulling in a lock-based fallback.
//!
//! Why a sum never goes down: a sum reads every block ever built
//! ([`PerCpu::iter_all`], retired ones included, so an aborted add does not take
//! its counts away), plus the shared block where processors without a slot
//! count; each location only grows, and a later sum reads each of them no
//! earlier in its modification order than an earlier sum did.

use core::fmt;

use crate::sync::{AtomicU64, Ordering};
use crate::{
    Component, Error, InitFn, PerCpu, PinGuard, Platform, Prepared, ProcessorIndex, RawAlloc,
    SlotPadding, SlotState,
};

/// Names one counter of a block of `N`: checked when it is made, so adding to
/// it never fails.
///
/// ```
/// use perproc::CounterId;
/// // A driver's statistics, named once.
/// const SUBMITTED: CounterId<3> = CounterId::at::<0>();
/// const COMPLETED: CounterId<3> = CounterId::at::<1>();
/// const ERRORS: CounterId<3> = CounterId::at::<2>();
/// // const BAD: CounterId<3> = CounterId::at::<3>(); // does not compile
/// assert_eq!(ERRORS.get(), 2);
/// assert!(CounterId::<3>::new(3).is_none());
/// # let _ = (SUBMITTED, COMPLETED);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterId<const N: usize>(usize);

impl<const N: usize> CounterId<N> {
    /// Counter `I`, checked at compile time.
    pub const fn at<const I: usize>() -> Self {
        const { assert!(I < N, "counter index past the end of the block") };
        Self(I)
    }

    /// Counter `index`, if `index < N`.
    pub const fn new(index: usize) -> Option<Self> {
        if index < N {
            Some(Self(index))
        } else {
            None
        }
    }

    /// Every counter of the block, in order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..N).map(Self)
    }

    /// The counter's position in the block.
    pub const fn get(self) -> usize {
        self.0
    }
}

/// One processor's counters.
struct Block<const N: usize>([AtomicU64; N]);

impl<const N: usize> Block<N> {
    fn zero(_processor: ProcessorIndex) -> Result<Self, Error> {
        Ok(Self(core::array::from_fn(|_| AtomicU64::new(0))))
    }

    fn read(&self, order: Ordering) -> [u64; N] {
        core::array::from_fn(|i| self.load(i, order))
    }

    #[inline(always)]
    fn load(&self, i: usize, order: Ordering) -> u64 {
        self.0.get(i).map_or(0, |c| c.load(order))
    }
}

/// `N` monotonic `u64` counters per processor (a driver's statistics block),
/// grown by hot-add.
///
/// - [`add`](Self::add) on the pinned processor: its slot, then a relaxed load,
///   an add and a relaxed store. No lock, no interlocked instruction.
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
/// use perproc::{Components, CounterId, PerCpuCounters, Platform, ProcessorIndex};
///
/// const READS: CounterId<2> = CounterId::at::<0>();
/// const BYTES: CounterId<2> = CounterId::at::<1>();
///
/// let platform = HostPlatform::new(4)?;
/// let stats = PerCpuCounters::<2, _>::new(&platform)?;
/// let driver = Components::new([&stats]);
/// for i in 0..2 {
///     driver.start(ProcessorIndex::new(i).unwrap())?;
/// }
///
/// // In the I/O path, pinned:
/// let pin = platform.pin();
/// stats.add(&pin, READS, 1);
/// stats.add(&pin, BYTES, 4096);
/// drop(pin);
///
/// // A status query, anywhere:
/// assert_eq!(stats.sums(), [1, 4096]);
/// assert_eq!(stats.sum(BYTES), 4096);
/// # Ok::<(), perproc::Error>(())
/// ```
pub struct PerCpuCounters<const N: usize, P: Platform, A: RawAlloc = <P as Platform>::Alloc> {
    blocks: PerCpu<Block<N>, P, A>,
    /// Counts from processors with no block.
    unplaced: Block<N>,
}

/// One counter per processor.
pub type PerCpuCounter<P> = PerCpuCounters<1, P>;

impl<const N: usize, P: Platform> PerCpuCounters<N, P> {
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

impl<const N: usize, P: Platform, A: RawAlloc> PerCpuCounters<N, P, A> {
    /// [`new`](PerCpuCounters::new) with memory from `alloc`.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] for the table.
    pub fn new_in(platform: &P, alloc: A) -> Result<Self, Error> {
        let init: InitFn<Block<N>> = Block::zero;
        Ok(Self {
            blocks: PerCpu::with_padding_in(platform, alloc, SlotPadding::CacheLine, init)?,
            unplaced: Block(core::array::from_fn(|_| AtomicU64::new(0))),
        })
    }

    /// Adds `delta` to `counter` of the processor the caller is pinned to.
    ///
    /// No lock and no interlocked instruction when the processor has its block;
    /// one interlocked add (to a shared block) when it has none. For many adds
    /// under one pin, [`local`](Self::local) looks the block up once.
    #[inline]
    pub fn add(&self, pin: &PinGuard<'_, P>, counter: CounterId<N>, delta: u64) {
        self.local(pin).add(counter, delta);
    }

    /// The counters of the processor `pin` holds, looked up once for a batch of
    /// adds (a DPC's loop): each add is then a load, an add and a store.
    ///
    /// ```
    /// use perproc::host::HostPlatform;
    /// use perproc::{CounterId, PerCpuCounters, Platform, ProcessorIndex};
    /// const BYTES: CounterId<1> = CounterId::at::<0>();
    /// let platform = HostPlatform::new(2)?;
    /// let stats = PerCpuCounters::<1, _>::new(&platform)?;
    /// let _ = stats.prepare(ProcessorIndex::ZERO)?;
    /// platform.pinned(|pin| {
    ///     let local = stats.local(pin);
    ///     for request in [512, 4096, 4096] {
    ///         local.add(BYTES, request);
    ///     }
    /// })?;
    /// assert_eq!(stats.sum(BYTES), 8704);
    /// # Ok::<(), perproc::Error>(())
    /// ```
    #[inline]
    pub fn local<'g>(&'g self, pin: &'g PinGuard<'g, P>) -> LocalCounters<'g, N, P> {
        LocalCounters {
            block: self.blocks.current(pin),
            unplaced: &self.unplaced,
            _pin: pin,
        }
    }

    /// The total of `counter` over every processor (retired ones and the
    /// shared block included). Never torn; for a counter only added to, never
    /// lower than a total taken before it.
    pub fn sum(&self, counter: CounterId<N>) -> u64 {
        // The shared block first (acquire), then the list of blocks: see `add`.
        let unplaced = self.unplaced.load(counter.0, Ordering::Acquire);
        self.blocks.iter_all().fold(unplaced, |total, (_, block)| {
            total.wrapping_add(block.load(counter.0, Ordering::Relaxed))
        })
    }

    /// The totals of every counter, in one pass over the processors.
    pub fn sums(&self) -> [u64; N] {
        // The shared block first (acquire), then the list of blocks: see `add`.
        let mut totals = self.unplaced.read(Ordering::Acquire);
        for (_, block) in self.blocks.iter_all() {
            for (total, count) in totals.iter_mut().zip(block.0.iter()) {
                *total = total.wrapping_add(count.load(Ordering::Relaxed));
            }
        }
        totals
    }

    /// Processor `index`'s counters, if it has a block (published or retired).
    pub fn processor(&self, index: ProcessorIndex) -> Option<[u64; N]> {
        self.blocks
            .get(index)
            .or_else(|| self.blocks.retired(index))
            .map(|block| block.read(Ordering::Relaxed))
    }

    /// Every processor that has a block (published or retired) with its
    /// counters, most recently added first.
    pub fn per_processor(&self) -> impl Iterator<Item = (ProcessorIndex, [u64; N])> + '_ {
        self.blocks
            .iter_all()
            .map(|(index, block)| (index, block.read(Ordering::Relaxed)))
    }

    /// What processors without a block added.
    pub fn unplaced(&self) -> [u64; N] {
        self.unplaced.read(Ordering::Acquire)
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
}

impl<const N: usize, P: Platform, A: RawAlloc> Component for PerCpuCounters<N, P, A>
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
pub struct LocalCounters<'g, const N: usize, P: Platform> {
    /// The processor's block, or `None` when it has none (counts go to the
    /// shared block then).
    block: Option<&'g Block<N>>,
    unplaced: &'g Block<N>,
    _pin: &'g PinGuard<'g, P>,
}

impl<const N: usize, P: Platform> LocalCounters<'_, N, P> {
    /// Adds `delta` to `counter`: a load, an add and a store; one interlocked
    /// add to the shared block if the processor has no block.
    #[inline]
    pub fn add(&self, counter: CounterId<N>, delta: u64) {
        match self.block {
            Some(block) => {
                if let Some(count) = block.0.get(counter.0) {
                    // Only the holder of the processor's pin writes its block
                    // (PinGuard promise 2, and we borrow that pin), so no update
                    // can come in between.
                    count.store(
                        count.load(Ordering::Relaxed).wrapping_add(delta),
                        Ordering::Relaxed,
                    );
                }
            }
            None => {
                if let Some(count) = self.unplaced.0.get(counter.0) {
                    // Release, with the sums' acquire load of this block (read
                    // first): a sum that sees what a processor counted after its
                    // add was aborted also sees what it counted before.
                    count.fetch_add(delta, Ordering::Release);
                }
            }
        }
    }
}

impl<const N: usize, P: Platform, A: RawAlloc> fmt::Debug for PerCpuCounters<N, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuCounters")
            .field("sums", &self.sums())
            .finish_non_exhaustive()
    }
}
