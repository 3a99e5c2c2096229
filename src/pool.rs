//! [`PerCpuPool<T>`]: a per-processor object pool after Bonwick's magazines
//! (Bonwick and Adams, *Magazines and Vmem*, USENIX 2001), grown on hot-add.
//!
//! # How it works
//!
//! Each processor has a cache of two *magazines* (fixed-size stacks of free
//! objects): the loaded one and the previous one. An allocation pops the
//! loaded magazine and a free pushes onto it; when the loaded magazine is empty
//! (or full) and the previous one is full (or empty) they swap. Only when both
//! are exhausted does the processor go to the shared *depot*, under its lock, to
//! trade a whole magazine: an empty one for a full one, or the other way. So the
//! lock is taken at most once per magazine's worth of operations, and the fast
//! path is a few plain loads and stores: no lock and no interlocked instruction.
//!
//! The caches live in a [`PerCpu`]: each on its own cache lines, placed for its
//! processor, grown by hot-add. A processor's magazines are touched only by code
//! pinned to it ([`PinGuard`]); no thread ever reads or writes another
//! processor's magazines. A free is local too: an object freed on processor `q`
//! goes into `q`'s magazines, wherever it was allocated (completions migrate).
//! Nothing is a lock-free list, so there is no ABA hazard anywhere.
//!
//! A DPC that handles a batch under one pin can take a [`LocalPool`]
//! ([`PerCpuPool::local`]): the processor's cache is then looked up once per
//! batch instead of once per operation.
//!
//! Objects live in *slabs* allocated from the pool's [`RawAlloc`] for the
//! processor whose demand grew the pool (NUMA placement), never more than
//! [`Limits::total`] objects in all. A processor caches at most
//! [`Limits::per_cpu`] free objects (two magazines of half that).
//!
//! # Hot-add
//!
//! The pool is a [`Component`]: AddStart ([`prepare`](PerCpuPool::prepare))
//! gives the new processor two empty magazines and publishes its cache (it can
//! fail; nothing leaks then); AddComplete ([`commit`](PerCpuPool::commit)) is
//! trivial; AddFailure ([`abort`](PerCpuPool::abort)) hides the cache again.
//!
//! Abort does not empty the failed processor's magazines: code may already run
//! on that processor (the kernel may run ISRs and DPCs there right after
//! AddStart returns), and a thread other than the owner touching them would
//! need an interlocked instruction on every fast path to be safe. So what that
//! processor cached stays in its hidden cache, counted as *stranded* in
//! [`PoolStats`]; code pinned there hands it back to the depot the next time it
//! uses the pool, a new add of the processor reuses the cache as it is, and
//! dropping the pool reclaims it. A processor that never ran driver code (the
//! usual case) cached nothing, and abort has nothing to give back.
//!
//! A processor without a cache (before its AddStart, after a failed add, or
//! past the table) allocates and frees through the depot directly: slower,
//! never refused for that reason.
//!
//! # Objects, owned
//!
//! [`PoolBox<T>`] owns its object and does not borrow the pool, so a driver
//! keeps requests in queues beside the pool, in a `'static` driver struct,
//! anywhere. [`free`](PerCpuPool::free) on a pinned processor is the fast
//! path. A box dropped instead (unpinned, at any IRQL, after the pool moved or
//! went) drops its value and pushes its memory onto the pool's *home* list
//! with one compare-and-swap; the pool takes the whole list back under its lock
//! before it would grow, and at teardown. Push and take-all only: no ABA.
//!
//! # Teardown
//!
//! [`teardown`](PerCpuPool::teardown) reports how many objects are still
//! handed out (boxes alive, raw pointers never freed) and then keeps the slabs
//! and the home (leaks them) rather than free memory a driver still points
//! into. Dropping the pool does the same without the count.
//!
//! # The one lock
//!
//! The depot's lock is a spin lock and is taken only by pinned code (on Windows,
//! at `DISPATCH_LEVEL`, never above: pinning refuses there): the slow paths of pinned operations, once per
//! magazine's worth of them. Statistics, prepare, commit and abort never take
//! it. A slab is allocated with the lock held (growth is rare, and the
//! allocator must then be callable at `DISPATCH_LEVEL`: nonpaged memory), so
//! no processor sees the pool exhausted while another is growing it.

mod cache;
mod depot;
mod handle;
mod home;
mod magazine;
mod slab;
mod stats;

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::mem;
use core::ptr::{self, NonNull};

use crossbeam_utils::CachePadded;

use self::cache::Cache;
use self::depot::{Depot, SharedDepot};
pub use self::handle::PoolBox;
use self::home::Home;
use self::magazine::Round;
pub use self::stats::{PoolStats, ProcessorStats};
use crate::sync::Ordering;
use crate::{
    Component, Error, PerCpu, PinGuard, Platform, Prepared, ProcessorIndex, RawAlloc, SlotPadding,
    SlotState,
};

/// A slab holds as many slots as fit in this many bytes, and at least a magazine's worth.
const SLAB_BYTES: usize = 4096;

/// The bounds of a [`PerCpuPool`].
///
/// Objects cached by one processor are not available to another until they go
/// back to the depot, so an allocation can find the pool exhausted while up to
/// `per_cpu` objects sit free in each other processor's cache: size `total`
/// for what the driver holds at once plus `per_cpu` per processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most objects the pool ever holds (handed out or free).
    pub total: usize,
    /// The most free objects one processor caches: two magazines of
    /// `per_cpu / 2`. Below 2, processors cache nothing and every operation
    /// goes to the depot.
    pub per_cpu: usize,
}

/// A pool of `T` objects with a lock-free, interlocked-free cache per processor.
///
/// `P` is the platform (whose pins the pool accepts); `A` the allocator the
/// slabs, magazines and caches come from (the platform's by default).
///
/// ```
/// use perproc::{host::HostPlatform, Component, Limits, PerCpuPool, Platform, ProcessorIndex};
///
/// #[derive(Default)]
/// struct Request { lba: u64, sectors: u32 }
///
/// let platform = HostPlatform::new(8)?;
/// let requests = PerCpuPool::<Request, _>::new(&platform, Limits { total: 4096, per_cpu: 64 })?;
/// for i in 0..2 {
///     let _ = requests.prepare(ProcessorIndex::new(i).unwrap())?; // AddStart (replayed at registration)
///     requests.commit(ProcessorIndex::new(i).unwrap())?;
/// }
///
/// // Hot path, pinned (a DPC): no lock, no interlocked instruction.
/// platform.pinned(|pin| {
///     let mut request = requests.alloc(pin, Request::default())?;
///     request.lba = 2048;
///     request.sectors = 8;
///     requests.free(pin, request);
///     Ok::<_, perproc::Error>(())
/// })??;
///
/// let stats = requests.stats();
/// assert_eq!(stats.outstanding, 0);
/// assert_eq!(requests.processor_stats(ProcessorIndex::ZERO).unwrap().allocs(), 1);
/// # Ok::<(), perproc::Error>(())
/// ```
pub struct PerCpuPool<T, P: Platform, A: RawAlloc = <P as Platform>::Alloc> {
    caches: PerCpu<Cache, P, A>,
    magazine: magazine::MagazineShape,
    slab: slab::SlabShape,
    limits: Limits,
    /// Where dropped boxes go back; its own block (see `home`).
    home: NonNull<Home>,
    /// Written by every processor's slow path: kept off the lines the fast
    /// path reads.
    depot: CachePadded<SharedDepot>,
    released: bool,
    /// Hands out `T`s; holds none itself (free slots are uninitialised), so
    /// the pool is `Send`/`Sync` whatever `T` is: `T`s cross threads only in
    /// `PoolBox`es (which need `T: Send`) or raw pointers (the caller's promise).
    _objects: PhantomData<fn() -> T>,
}

// SAFETY: the pool owns its caches (Send with them) and its home block, whose
// list is atomics only; it holds no `T` (see `_objects`).
unsafe impl<T, P: Platform, A: RawAlloc> Send for PerCpuPool<T, P, A> where PerCpu<Cache, P, A>: Send
{}

// SAFETY: through `&PerCpuPool` threads use the caches (Sync with them: each
// processor's only under its pin), the depot behind its lock, and the home
// through atomics.
unsafe impl<T, P: Platform, A: RawAlloc> Sync for PerCpuPool<T, P, A> where PerCpu<Cache, P, A>: Sync
{}

/// The pool builds its caches with [`PerCpu::prepare_with`]; this constructor
/// is never called.
fn no_cache(_: ProcessorIndex) -> Result<Cache, Error> {
    Err(Error::NotPrepared)
}

impl<T, P: Platform> PerCpuPool<T, P> {
    /// A pool for every processor the platform can have, with memory from the
    /// platform's allocator. No processor has a cache yet: registration (or
    /// [`prepare`](Self::prepare)) adds them; until then allocations go
    /// through the depot. No object exists before the first allocation.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] for the processor table; [`Error::CapacityOverflow`]
    /// if a magazine or slab would not fit the address space.
    pub fn new(platform: &P, limits: Limits) -> Result<Self, Error> {
        Self::new_in(platform, platform.allocator(), limits)
    }
}

impl<T, P: Platform, A: RawAlloc> PerCpuPool<T, P, A> {
    /// A pool whose memory comes from `alloc`.
    ///
    /// ```
    /// use perproc::host::{HostAlloc, HostPlatform};
    /// use perproc::testing::CountingAlloc;
    /// use perproc::{Limits, PerCpuPool, Platform};
    ///
    /// let platform = HostPlatform::new(4)?;
    /// let counting = CountingAlloc::new(HostAlloc);
    /// let pool = PerCpuPool::<u64, _, _>::new_in(&platform, &counting, Limits { total: 64, per_cpu: 8 })?;
    /// let object = platform.pinned(|pin| pool.alloc(pin, 42))??; // through the depot: no processor prepared
    /// assert_eq!(*object, 42);
    /// drop(object); // unpinned: back through the home list
    /// assert_eq!(pool.teardown(), 0);
    /// assert_eq!(counting.live_blocks(), 0);
    /// # Ok::<(), perproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](PerCpuPool::new).
    pub fn new_in(platform: &P, alloc: A, limits: Limits) -> Result<Self, Error> {
        let magazine = magazine::MagazineShape::new(limits.per_cpu / 2)?;
        let slot = slab::SlabShape::new::<T>(1)?.slot_size();
        let per_slab = SLAB_BYTES
            .checked_div(slot)
            .unwrap_or(1)
            .max(magazine.capacity());
        let slab = slab::SlabShape::new::<T>(per_slab)?;
        let init: fn(ProcessorIndex) -> Result<Cache, Error> = no_cache;
        let caches = PerCpu::with_padding_in(platform, alloc, SlotPadding::CacheLine, init)?;
        // On error `caches` drops and frees its table.
        let home = caches
            .allocator()
            .allocate(Layout::new::<Home>(), None)?
            .cast::<Home>();
        // SAFETY: a fresh block with Home's layout (allocator promises 1 and 2).
        unsafe { home.as_ptr().write(Home::new()) };
        Ok(Self {
            caches,
            magazine,
            slab,
            limits,
            home,
            depot: CachePadded::new(SharedDepot::new()),
            released: false,
            _objects: PhantomData,
        })
    }

    /// AddStart: gives processor `index` a cache of two empty magazines, placed
    /// for it, and publishes it. Idempotent; a processor whose add was aborted
    /// gets its kept cache back as it is.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] (nothing is published, nothing leaks),
    /// [`Error::IndexOutOfRange`], [`Error::Busy`] (another event for `index`).
    pub fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        self.caches.prepare_with(index, |index| {
            let cache = Cache::new(&self.magazine, self.caches.allocator(), index)?;
            self.depot.magazines.fetch_add(2, Ordering::Relaxed);
            Ok(cache)
        })
    }

    /// AddComplete: marks the processor online. O(1), allocates nothing.
    ///
    /// # Errors
    /// As [`PerCpu::commit`].
    pub fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.caches.commit(index)
    }

    /// AddFailure: hides the processor's cache. Idempotent; accepts a processor
    /// never prepared. What the cache holds is not touched (code may run on that
    /// processor): see the module documentation.
    ///
    /// # Errors
    /// As [`PerCpu::abort`].
    pub fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.caches.abort(index).map(|_| ())
    }

    /// Where processor `index` stands in the pool.
    pub fn state(&self, index: ProcessorIndex) -> SlotState {
        self.caches.state(index)
    }

    /// Allocates an object holding `value`, on the processor `pin` holds.
    ///
    /// # Errors
    /// [`Error::Exhausted`] when [`Limits::total`] objects exist and none is
    /// free in this processor's cache or the depot; [`Error::OutOfMemory`] when
    /// the pool had to grow and the allocator refused. `value` is dropped then
    /// (use [`alloc_with`](Self::alloc_with) to build it only on success).
    #[inline]
    pub fn alloc(&self, pin: &PinGuard<'_, P>, value: T) -> Result<PoolBox<T>, Error> {
        let object = self.alloc_raw(pin, value)?;
        // SAFETY: a fresh object of this pool, holding `value`, owned by us.
        Ok(unsafe { PoolBox::new(object, self.home) })
    }

    /// Gives an object back on the processor `pin` holds: drops its value and
    /// puts its memory in that processor's magazines (no lock, no interlocked
    /// instruction on the fast path), whichever processor allocated it. A box of
    /// another pool is dropped instead, which returns it to its own pool.
    #[inline]
    pub fn free(&self, pin: &PinGuard<'_, P>, object: PoolBox<T>) {
        if !object.is_from(self.home) {
            return drop(object);
        }
        let (object, _) = object.into_parts();
        // SAFETY: the box owned a live object of this pool and gave it up.
        unsafe { self.free_raw(pin, object) }
    }

    /// Allocates an object and builds its value with `init`, which runs only
    /// once a slot is secured (and with no lock held: it may use the pool).
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc); `init` is not called then.
    #[inline]
    pub fn alloc_with(
        &self,
        pin: &PinGuard<'_, P>,
        init: impl FnOnce() -> T,
    ) -> Result<PoolBox<T>, Error> {
        let round = self.take(pin)?;
        // If `init` unwinds (host builds), the slot goes back.
        let give_back = GiveBack {
            pool: self,
            pin,
            round,
        };
        let value = init();
        mem::forget(give_back);
        let object = round.cast::<T>();
        // SAFETY: the slot is ours, sized and aligned for `T` (slab::ObjectSlot).
        unsafe { object.as_ptr().write(value) };
        // SAFETY: as in `alloc`.
        Ok(unsafe { PoolBox::new(object, self.home) })
    }

    /// Allocates an object holding `value` and returns its address, for
    /// drivers that keep objects in intrusive lists. Free it with
    /// [`free_raw`](Self::free_raw); until then it counts as outstanding.
    ///
    /// # Errors
    /// As [`alloc`](Self::alloc).
    #[inline]
    pub fn alloc_raw(&self, pin: &PinGuard<'_, P>, value: T) -> Result<NonNull<T>, Error> {
        let object = self.take(pin)?.cast::<T>();
        // SAFETY: the slot is ours, sized and aligned for `T` (slab::ObjectSlot).
        unsafe { object.as_ptr().write(value) };
        Ok(object)
    }

    /// Drops the object's value and frees its slot into the magazines of the
    /// processor `pin` holds (any processor: completions migrate).
    ///
    /// ```
    /// use perproc::{host::HostPlatform, Limits, PerCpuPool, Platform, ProcessorIndex};
    /// let platform = HostPlatform::new(2)?;
    /// let pool = PerCpuPool::<u32, _>::new(&platform, Limits { total: 16, per_cpu: 4 })?;
    /// let _ = pool.prepare(ProcessorIndex::ZERO)?;
    /// platform.pinned(|pin| {
    ///     let object = pool.alloc_raw(pin, 5)?;
    ///     // SAFETY: from this pool, freed once, not used afterwards.
    ///     unsafe { pool.free_raw(pin, object) };
    ///     Ok::<_, perproc::Error>(())
    /// })??;
    /// # Ok::<(), perproc::Error>(())
    /// ```
    ///
    /// # Safety
    ///
    /// `object` came from this pool ([`alloc_raw`](Self::alloc_raw) or
    /// [`PoolBox::into_raw`]), holds a live `T`, is freed once and not used
    /// afterwards; if `T` is not `Send`, this runs on the thread that
    /// allocated it.
    #[inline]
    pub unsafe fn free_raw(&self, pin: &PinGuard<'_, P>, object: NonNull<T>) {
        // SAFETY: a live `T` the caller gives up (caller). Dropped before the
        // slot is touched, so a destructor that uses the pool is fine.
        unsafe { ptr::drop_in_place(object.as_ptr()) };
        // SAFETY: the slot is this pool's and free now (caller).
        unsafe { self.put(pin, object.cast()) }
    }

    /// The pool as seen from the processor `pin` holds, for a batch of
    /// operations under one pin (a DPC's loop over completions): the
    /// processor's cache is looked up once instead of once per operation.
    ///
    /// ```
    /// use perproc::{host::HostPlatform, Limits, PerCpuPool, Platform, ProcessorIndex};
    /// let platform = HostPlatform::new(2)?;
    /// let pool = PerCpuPool::<[u8; 64], _>::new(&platform, Limits { total: 512, per_cpu: 64 })?;
    /// let _ = pool.prepare(ProcessorIndex::ZERO)?;
    ///
    /// platform.pinned(|pin| {
    ///     let local = pool.local(pin);
    ///     let batch: Vec<_> = (0..32).map(|_| local.alloc([0; 64])).collect::<Result<_, _>>()?;
    ///     for object in batch {
    ///         local.free(object);
    ///     }
    ///     Ok::<_, perproc::Error>(())
    /// })??;
    /// # Ok::<(), perproc::Error>(())
    /// ```
    #[inline]
    pub fn local<'g>(&'g self, pin: &'g PinGuard<'g, P>) -> LocalPool<'g, T, P, A> {
        let (cache, at) = self.pinned_cache(pin);
        LocalPool {
            pool: self,
            pin,
            at,
            cache,
        }
    }

    /// The processor `pin` holds, if it is one of this pool's machine (a pin
    /// of a platform that does not share processors with the pool's goes to
    /// the depot and touches no processor's cache), and its published cache.
    /// The platforms are compared once, here.
    #[inline(always)]
    fn pinned_cache(&self, pin: &PinGuard<'_, P>) -> (Option<&Cache>, Option<ProcessorIndex>) {
        let at = self
            .caches
            .platform()
            .shares_processors(pin.platform())
            .then(|| pin.processor());
        (at.and_then(|index| self.caches.get(index)), at)
    }

    /// The whole pool's figures. Never blocks, never takes the lock.
    pub fn stats(&self) -> PoolStats {
        let (mut cached, mut stranded) = (0usize, 0usize);
        for (index, cache) in self.caches.iter_all() {
            if self.caches.state(index) == SlotState::Retired {
                stranded = stranded.saturating_add(cache.cached());
            } else {
                cached = cached.saturating_add(cache.cached());
            }
        }
        let shared = &*self.depot;
        let objects = shared.objects.load(Ordering::Relaxed);
        let in_depot = shared.free.load(Ordering::Relaxed);
        PoolStats {
            limit: self.limits.total,
            objects,
            outstanding: objects
                .saturating_sub(in_depot)
                .saturating_sub(cached)
                .saturating_sub(stranded)
                .saturating_sub(self.home().count()),
            in_depot,
            cached,
            stranded,
            returning: self.home().count(),
            processors: self.caches.published_count(),
            slabs: shared.slabs.load(Ordering::Relaxed),
            magazines: shared.magazines.load(Ordering::Relaxed),
            direct_allocs: shared.direct_allocs.load(Ordering::Relaxed),
            direct_frees: shared.direct_frees.load(Ordering::Relaxed),
        }
    }

    /// Processor `index`'s figures, if it has a cache (published or retired).
    pub fn processor_stats(&self, index: ProcessorIndex) -> Option<ProcessorStats> {
        if let Some(cache) = self.caches.get(index) {
            return Some(cache.stats(index, false));
        }
        self.caches
            .retired(index)
            .map(|cache| cache.stats(index, true))
    }

    /// Every processor's figures (those with a cache, retired ones included).
    pub fn processors(&self) -> impl Iterator<Item = ProcessorStats> + '_ {
        self.caches.iter_all().map(|(index, cache)| {
            let retired = self.caches.state(index) == SlotState::Retired;
            cache.stats(index, retired)
        })
    }

    /// The bounds the pool was built with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Objects per magazine (`per_cpu / 2`).
    pub fn magazine_size(&self) -> usize {
        self.magazine.capacity()
    }

    /// Objects per full slab.
    pub fn slab_size(&self) -> usize {
        self.slab.per_slab()
    }

    /// The platform whose pins the pool accepts.
    pub fn platform(&self) -> &P {
        self.caches.platform()
    }

    fn home(&self) -> &Home {
        // SAFETY: the home block holds an initialised Home from construction
        // until `release` frees it (after which `&self` is not used).
        unsafe { self.home.as_ref() }
    }

    /// Drops the pool and says how many objects were still handed out (boxes
    /// alive, raw pointers never freed). If any, the slabs and the home are kept
    /// (leaked) so those objects stay valid and can still be dropped;
    /// everything else is freed. A stranded cache of a failed add is reclaimed.
    pub fn teardown(mut self) -> usize {
        self.release()
    }

    /// Takes one free object, on the fast path if this processor has one cached.
    #[inline(always)]
    fn take(&self, pin: &PinGuard<'_, P>) -> Result<Round, Error> {
        let (cache, at) = self.pinned_cache(pin);
        // SAFETY: `pin` pins us to `at`'s processor; the cache is that processor's.
        unsafe { self.take_from(cache, at) }
    }

    /// [`take`](Self::take) with the processor's cache already looked up.
    ///
    /// # Safety
    ///
    /// The caller is pinned to `at` (when `Some`: a processor of this pool's
    /// machine; `None` for a pin of another machine's platform), and `cache`,
    /// if any, is `at`'s (published or retired).
    #[inline(always)]
    unsafe fn take_from(
        &self,
        cache: Option<&Cache>,
        at: Option<ProcessorIndex>,
    ) -> Result<Round, Error> {
        if let Some(cache) = cache {
            // SAFETY: pinned to the cache's processor (caller).
            if let Some(round) = unsafe { cache.pop() } {
                return Ok(round);
            }
        }
        // SAFETY: pinned to `at` (caller).
        unsafe { self.take_slow(at) }
    }

    /// An allocation the loaded magazine could not serve.
    ///
    /// # Safety
    ///
    /// As for [`take_from`](Self::take_from).
    #[cold]
    #[inline(never)]
    unsafe fn take_slow(&self, at: Option<ProcessorIndex>) -> Result<Round, Error> {
        let Some(index) = at else {
            return self.take_direct(ProcessorIndex::ZERO);
        };
        let Some(cache) = self.caches.get(index) else {
            // SAFETY: pinned to `index` (caller).
            unsafe { self.reclaim_retired(index) };
            return self.take_direct(index);
        };
        // SAFETY: pinned to `index`, whose cache this is (caller),
        // with the depot locked where one is passed.
        unsafe {
            if let Some(round) = cache.pop_previous() {
                return Ok(round);
            }
            cache.count_alloc_miss();
            let capacity = self.magazine.capacity();
            if capacity == 0 {
                return self.take_direct(index);
            }
            let mut depot = self.depot.lock();
            if let Some(round) = cache.reload(&mut depot) {
                return Ok(round);
            }
            if let Some(round) = cache.fill(&mut depot, capacity) {
                return Ok(round);
            }
            if !self.adopt_returned(&mut depot) {
                self.grow(&mut depot, index)?;
            }
            cache.fill(&mut depot, capacity).ok_or(Error::Exhausted)
        }
    }

    /// An allocation straight from the depot (no cache, or caching disabled);
    /// `index` only places a slab if the pool grows. Called by pinned code only
    /// (the lock's rule).
    fn take_direct(&self, index: ProcessorIndex) -> Result<Round, Error> {
        let mut depot = self.depot.lock();
        let round = match depot.take_one() {
            Some(round) => round,
            None => {
                if !self.adopt_returned(&mut depot) {
                    self.grow(&mut depot, index)?;
                }
                depot.take_one().ok_or(Error::Exhausted)?
            }
        };
        depot.count_direct_alloc();
        Ok(round)
    }

    /// Moves every object dropped away from the pool (its home list) into the
    /// depot; whether there was any.
    fn adopt_returned(&self, depot: &mut Depot) -> bool {
        let mut any = false;
        for round in self.home().take_all() {
            // SAFETY: a free slot of this pool (pushed by a box's drop), now in
            // no list but this one.
            unsafe { depot.push_loose(round) };
            any = true;
        }
        any
    }

    /// Grows the pool by a slab placed for `index`; its objects go loose.
    ///
    /// The slab is allocated with the depot locked: growth is rare (at most
    /// `total / slab_size` times), and releasing the lock meanwhile would let
    /// another processor find the pool exhausted while it is in fact growing.
    fn grow(&self, depot: &mut Depot, index: ProcessorIndex) -> Result<(), Error> {
        let objects = depot.room(self.limits.total, self.slab.per_slab());
        if objects == 0 {
            return Err(Error::Exhausted);
        }
        let slab = self
            .slab
            .allocate(self.caches.allocator(), objects, index)?;
        // SAFETY: a fresh slab of this shape from our allocator, known to no one
        // else.
        unsafe { depot.add_slab(slab, &self.slab) };
        Ok(())
    }

    /// Gives back a free slot, on the fast path if this processor's loaded
    /// magazine has room.
    ///
    /// # Safety
    ///
    /// `round` is a slot of this pool that no one uses any more.
    #[inline(always)]
    unsafe fn put(&self, pin: &PinGuard<'_, P>, round: Round) {
        let (cache, at) = self.pinned_cache(pin);
        // SAFETY: `pin` pins us to `at`'s processor; the cache is that processor's;
        // a free slot (caller).
        unsafe { self.put_into(cache, at, round) }
    }

    /// [`put`](Self::put) with the processor's cache already looked up.
    ///
    /// # Safety
    ///
    /// As for [`take_from`](Self::take_from); `round` is a slot of this pool
    /// that no one uses any more.
    #[inline(always)]
    unsafe fn put_into(&self, cache: Option<&Cache>, at: Option<ProcessorIndex>, round: Round) {
        let mut round = round;
        if let Some(cache) = cache {
            // SAFETY: pinned to the cache's processor; a free slot (caller).
            match unsafe { cache.push(self.magazine.capacity(), round) } {
                Ok(()) => return,
                Err(back) => round = back,
            }
        }
        // SAFETY: pinned to `at`; a free slot (caller).
        unsafe { self.put_slow(at, round) }
    }

    /// A free the loaded magazine could not take.
    ///
    /// # Safety
    ///
    /// As for [`take_from`](Self::take_from); `round` is a free slot of this
    /// pool.
    #[cold]
    #[inline(never)]
    unsafe fn put_slow(&self, at: Option<ProcessorIndex>, round: Round) {
        let Some(index) = at else {
            // SAFETY: a free slot (caller).
            return unsafe { self.put_direct(round) };
        };
        let Some(cache) = self.caches.get(index) else {
            // SAFETY: pinned to `index`; a free slot (caller).
            unsafe {
                self.reclaim_retired(index);
                self.put_direct(round);
            }
            return;
        };
        let capacity = self.magazine.capacity();
        // SAFETY: pinned to `index`, whose cache this is (caller);
        // `round` is a free slot; the depot is locked where one is passed.
        unsafe {
            let Err(round) = cache.push_previous(capacity, round) else {
                return;
            };
            cache.count_free_miss();
            if capacity == 0 {
                return self.put_direct(round);
            }
            let mut depot = self.depot.lock();
            let empty = match depot.empty.pop() {
                Some((empty, _)) => empty,
                None => {
                    drop(depot);
                    match self.magazine.allocate(self.caches.allocator(), Some(index)) {
                        Ok(empty) => {
                            self.depot.magazines.fetch_add(1, Ordering::Relaxed);
                            depot = self.depot.lock();
                            empty
                        }
                        // No magazine to be had: the object goes back alone.
                        Err(_) => return self.put_direct(round),
                    }
                }
            };
            if let Err(round) = cache.unload(&mut depot, empty, capacity, round) {
                // Not reached: `empty` has room (capacity >= 1). Keep the object.
                depot.push_loose(round);
            }
        }
    }

    /// A free straight into the depot. Called by pinned code only.
    ///
    /// # Safety
    ///
    /// `round` is a free slot of this pool, in no magazine and no list.
    unsafe fn put_direct(&self, round: Round) {
        let mut depot = self.depot.lock();
        // SAFETY: forwarded.
        unsafe { depot.push_loose(round) };
        depot.count_direct_free();
    }

    /// If processor `index`'s add was aborted after it cached objects, hands
    /// them back to the depot (only the owner may touch its magazines).
    ///
    /// # Safety
    ///
    /// The caller is pinned to `index`.
    unsafe fn reclaim_retired(&self, index: ProcessorIndex) {
        if let Some(cache) = self.caches.retired(index) {
            if cache.cached() > 0 {
                let mut depot = self.depot.lock();
                // SAFETY: pinned to the cache's processor (caller), depot locked.
                unsafe { cache.flush(&mut depot) };
            }
        }
    }

    /// Frees everything but the slabs of outstanding objects; returns how many
    /// objects are outstanding. Runs once.
    fn release(&mut self) -> usize {
        if mem::replace(&mut self.released, true) {
            return 0;
        }
        // `&mut self`: no pinned code uses the pool; boxes may still be dropped
        // on other threads, onto the home list, which is taken last of all.
        let depot = self.depot.get_mut();
        for round in
            // SAFETY: the home is alive until the end of this function.
            unsafe { self.home.as_ref() }.take_all()
        {
            // SAFETY: a free slot of this pool, in no other list.
            unsafe { depot.push_loose(round) };
        }
        let alloc = self.caches.allocator();
        let mut free = 0usize;
        for (_, cache) in self.caches.iter_all() {
            // SAFETY: `&mut self`: no pinned code uses any cache, and none is
            // used again (the pool is going).
            free = free.saturating_add(unsafe { cache.release(&self.magazine, alloc) });
        }
        let depot = self.depot.get_mut();
        free = free.saturating_add(depot.free_objects());
        let outstanding = depot.objects().saturating_sub(free);
        // SAFETY: the pool is going; the slabs are freed only if no object is
        // outstanding, so nothing uses them again.
        unsafe { depot.release(alloc, &self.magazine, &self.slab, outstanding == 0) };
        if outstanding == 0 {
            // SAFETY: no object is outstanding, so no box can push onto the home
            // any more; it was allocated from `alloc` with this layout and is
            // freed once (release runs once).
            unsafe {
                ptr::drop_in_place(self.home.as_ptr());
                alloc.deallocate(self.home.cast(), Layout::new::<Home>());
            }
        }
        outstanding
    }
}

impl<T, P: Platform, A: RawAlloc> Component for PerCpuPool<T, P, A>
where
    Self: Sync,
{
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        PerCpuPool::prepare(self, index)
    }

    fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        PerCpuPool::commit(self, index)
    }

    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        PerCpuPool::abort(self, index)
    }
}

impl<T, P: Platform, A: RawAlloc> Drop for PerCpuPool<T, P, A> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<T, P: Platform, A: RawAlloc> fmt::Debug for PerCpuPool<T, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpuPool")
            .field("limits", &self.limits)
            .field("magazine_size", &self.magazine_size())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A pool seen from one pinned processor, from [`PerCpuPool::local`]: the
/// same operations as the pool's, with the processor's cache looked up once.
///
/// It borrows the pin, so it lives no longer than the pinning (and, like the
/// pin, stays on its thread). If the processor's add is aborted while a batch
/// runs, the batch keeps using the hidden cache; what it leaves there is
/// stranded until code pinned to that processor next goes to the depot, as
/// after any abort.
#[must_use = "a LocalPool does nothing until used for allocations"]
pub struct LocalPool<'g, T, P: Platform, A: RawAlloc> {
    pool: &'g PerCpuPool<T, P, A>,
    pin: &'g PinGuard<'g, P>,
    /// The pinned processor, if it is one of the pool's machine.
    at: Option<ProcessorIndex>,
    /// The processor's cache when the batch began: `at`'s, published then, and
    /// alive as long as the pool.
    cache: Option<&'g Cache>,
}

impl<T, P: Platform, A: RawAlloc> LocalPool<'_, T, P, A> {
    /// [`PerCpuPool::alloc`] on this processor.
    ///
    /// # Errors
    /// As [`PerCpuPool::alloc`].
    #[inline]
    pub fn alloc(&self, value: T) -> Result<PoolBox<T>, Error> {
        let object = self.alloc_raw(value)?;
        // SAFETY: a fresh object of this pool, holding `value`, owned by us.
        Ok(unsafe { PoolBox::new(object, self.pool.home) })
    }

    /// [`PerCpuPool::alloc_raw`] on this processor.
    ///
    /// # Errors
    /// As [`PerCpuPool::alloc`].
    #[inline]
    pub fn alloc_raw(&self, value: T) -> Result<NonNull<T>, Error> {
        // SAFETY: the pin pins us to `at`, and `cache` is that processor's.
        let object = unsafe { self.pool.take_from(self.cache, self.at) }?.cast::<T>();
        // SAFETY: the slot is ours, sized and aligned for `T` (slab::ObjectSlot).
        unsafe { object.as_ptr().write(value) };
        Ok(object)
    }

    /// [`PerCpuPool::free`] on this processor. A box of another pool is dropped,
    /// which returns it to its own pool.
    #[inline]
    pub fn free(&self, object: PoolBox<T>) {
        if !object.is_from(self.pool.home) {
            return drop(object);
        }
        let (object, _) = object.into_parts();
        // SAFETY: the box owned a live object of this pool and gave it up.
        unsafe { self.free_raw(object) }
    }

    /// [`PerCpuPool::free_raw`] on this processor.
    ///
    /// # Safety
    ///
    /// As for [`PerCpuPool::free_raw`].
    #[inline]
    pub unsafe fn free_raw(&self, object: NonNull<T>) {
        // SAFETY: a live `T` the caller gives up, dropped before the slot is
        // touched.
        unsafe { ptr::drop_in_place(object.as_ptr()) };
        // SAFETY: pinned to `at`, `cache` is its; the slot is free now.
        unsafe { self.pool.put_into(self.cache, self.at, object.cast()) }
    }

    /// The pin this view was made with.
    pub fn pin(&self) -> &PinGuard<'_, P> {
        self.pin
    }
}

/// Gives a slot back if an `alloc_with` constructor unwinds.
struct GiveBack<'a, 'g, T, P: Platform, A: RawAlloc> {
    pool: &'a PerCpuPool<T, P, A>,
    pin: &'a PinGuard<'g, P>,
    round: Round,
}

impl<T, P: Platform, A: RawAlloc> Drop for GiveBack<'_, '_, T, P, A> {
    fn drop(&mut self) {
        // SAFETY: the slot was taken by `alloc_with` and never handed out.
        unsafe { self.pool.put(self.pin, self.round) }
    }
}
