//! What a driver writer would otherwise hand-write for per-processor data, and
//! the loops the hot-path benchmark, the growth benchmark and the callgrind
//! example share.
//!
//! Every container holds the same payload, [`Stats`], one per processor on its
//! own cache lines, and every read does the same work: the processor's index,
//! then its slot, then one relaxed load of `hits`. The index comes from the same
//! place for all of them (the pin guard, through [`read_loop`]); only
//! `thread_local` finds the slot from its own thread id, which is the point of
//! comparing with it.
//!
//! Included by `benches/hot_path.rs`, `benches/growth.rs` and
//! `examples/hot_path_callgrind.rs` with `#[path]`; not every includer uses every
//! item.
#![allow(dead_code)]

use std::alloc::{self, Layout};
use std::hint::black_box;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use perproc::host::HostPlatform;
use perproc::{PerCpu, PinGuard, Prepared, ProcessorIndex};

/// The pin every read goes through: the host platform's guard.
pub type Pin<'a> = PinGuard<'a, HostPlatform>;

/// The per-processor payload: two counters a driver bumps on its hot path.
#[derive(Debug)]
pub struct Stats {
    /// Requests seen on this processor.
    pub hits: AtomicU64,
    /// Bytes moved on this processor.
    pub bytes: AtomicU64,
}

impl Default for Stats {
    /// `hits` starts at 1, so a read that found no slot (0) shows in a sum.
    fn default() -> Self {
        Self {
            hits: AtomicU64::new(1),
            bytes: AtomicU64::new(0),
        }
    }
}

/// The constructor perproc's containers use.
pub fn stats(_cpu: ProcessorIndex) -> Result<Stats, perproc::Error> {
    Ok(Stats::default())
}

/// perproc's container as the benchmarks build it.
pub type Ours = PerCpu<Stats, HostPlatform>;

/// An empty perproc container for a machine of `capacity` processors, slots on
/// their own cache lines, from the system allocator (the host platform's).
pub fn ours(capacity: usize) -> Ours {
    let platform = HostPlatform::new(u32::try_from(capacity).unwrap()).unwrap();
    PerCpu::new(&platform, stats as _).unwrap()
}

/// A container whose current processor's slot can be read.
pub trait CurrentSlot {
    /// `hits` of the slot of the processor `pin` is on, or 0 without a slot.
    fn read(&self, pin: &Pin<'_>) -> u64;
}

/// `iters` reads of the current processor's slot, with the pin held across the
/// loop, as code at `DISPATCH_LEVEL` holds it.
///
/// The guard goes through `black_box` on every iteration: its address is
/// opaque, so the index is loaded again each time (as a real hot path reads the
/// processor index each time), and the compiler must assume any memory it could
/// reach changed (so nothing is cached from one read to the next that a fresh
/// call could not cache). The container reference itself is a plain argument: a
/// container whose layout lets the compiler keep its base in a register across
/// iterations gets that benefit, as it would in a driver's loop.
#[inline(never)]
pub fn read_loop<C: CurrentSlot + ?Sized>(container: &C, pin: &Pin<'_>, iters: u64) -> u64 {
    let mut sum = 0u64;
    for _ in 0..iters {
        sum = sum.wrapping_add(container.read(black_box(pin)));
    }
    sum
}

/// The platform's index lookup alone, with the same `black_box` and the same
/// loop: what every other loop pays besides its own container's work.
#[inline(never)]
pub fn index_loop(pin: &Pin<'_>, iters: u64) -> u64 {
    let mut sum = 0u64;
    for _ in 0..iters {
        let index = black_box(pin).processor().get();
        sum = sum.wrapping_add(u64::from(index));
    }
    sum
}

impl CurrentSlot for Ours {
    #[inline(always)]
    fn read(&self, pin: &Pin<'_>) -> u64 {
        self.current(pin)
            .map_or(0, |stats| stats.hits.load(Ordering::Relaxed))
    }
}

/// The floor: a preallocated array of cache-padded slots, one per possible
/// processor, allocated up front whether or not the processor ever arrives.
pub struct Fixed {
    slots: Box<[CachePadded<Stats>]>,
}

impl Fixed {
    /// Slots for processors `0..capacity`.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: (0..capacity)
                .map(|_| CachePadded::new(Stats::default()))
                .collect(),
        }
    }

    /// Processor `index`'s slot.
    #[inline(always)]
    pub fn get(&self, index: usize) -> Option<&Stats> {
        self.slots.get(index).map(|slot| &**slot)
    }
}

impl CurrentSlot for Fixed {
    #[inline(always)]
    fn read(&self, pin: &Pin<'_>) -> u64 {
        self.get(pin.processor().as_usize())
            .map_or(0, |stats| stats.hits.load(Ordering::Relaxed))
    }
}

/// A plain directory: one atomic slot pointer per possible processor, null until
/// the processor is added. Slots are freed when the directory is dropped.
pub struct Directory {
    slots: Box<[AtomicPtr<CachePadded<Stats>>]>,
}

impl Directory {
    /// An empty directory for processors `0..capacity`.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: (0..capacity)
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
        }
    }

    /// Adds processor `index` (allocates its slot and publishes it).
    pub fn add(&self, index: usize) {
        let entry = &self.slots[index];
        let slot = Box::into_raw(Box::new(CachePadded::new(Stats::default())));
        if entry
            .compare_exchange(ptr::null_mut(), slot, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            // SAFETY: `slot` was never published; we own it.
            drop(unsafe { Box::from_raw(slot) });
        }
    }

    /// Processor `index`'s slot, if added.
    #[inline(always)]
    pub fn get(&self, index: usize) -> Option<&Stats> {
        let slot = self.slots.get(index)?.load(Ordering::Acquire);
        // SAFETY: a non-null entry is a slot published with a release store this
        // load acquired, freed only when the directory is dropped.
        unsafe { slot.as_ref() }.map(|slot| &**slot)
    }
}

impl CurrentSlot for Directory {
    #[inline(always)]
    fn read(&self, pin: &Pin<'_>) -> u64 {
        self.get(pin.processor().as_usize())
            .map_or(0, |stats| stats.hits.load(Ordering::Relaxed))
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        for entry in self.slots.iter_mut() {
            let slot = *entry.get_mut();
            if !slot.is_null() {
                // SAFETY: every non-null entry came from `Box::into_raw` in `add`
                // and is freed only here.
                drop(unsafe { Box::from_raw(slot) });
            }
        }
    }
}

/// A copy-on-grow array, as Xen's Windows drivers keep per-processor state: an
/// array of slot pointers for processors `0..len`, replaced on every add by a
/// copy one longer, published with a pointer swap.
///
/// Readers load the current array with one acquire load and never take a lock.
/// An array a reader may still hold is never freed while the container lives:
/// each new array links the one it replaced, and the whole chain is freed on
/// drop (the leak a driver without an epoch scheme must accept). Processors are
/// dense (processor `len` is the next one added), so a read is a bounds check
/// and no null check: the most favourable form of this design.
pub struct CopyOnGrow {
    current: AtomicPtr<Array>,
    /// Serialises adds.
    writer: spin::Mutex<()>,
}

/// An array's header; `len` slot pointers follow it.
#[repr(C)]
struct Array {
    len: usize,
    /// The array this one replaced (freed on drop, not before).
    replaced: *mut Array,
}

impl Array {
    fn layout(len: usize) -> Layout {
        Layout::new::<Array>()
            .extend(Layout::array::<NonNull<CachePadded<Stats>>>(len).unwrap())
            .unwrap()
            .0
            .pad_to_align()
    }

    /// A new array of `len` pointers, the first `len - 1` copied from `old`.
    fn grown(old: *mut Array, last: NonNull<CachePadded<Stats>>) -> *mut Array {
        // SAFETY: `old` is the current array, alive (arrays are freed on drop).
        let old_len = unsafe { (*old).len };
        let len = old_len + 1;
        let layout = Self::layout(len);
        // SAFETY: the layout is not zero-sized (it has the header).
        let new = unsafe { alloc::alloc(layout) }.cast::<Array>();
        if new.is_null() {
            alloc::handle_alloc_error(layout);
        }
        // SAFETY: `new` has room for the header and `len` pointers (layout
        // above); `old` holds `old_len` initialised pointers after its header;
        // the two blocks do not overlap.
        unsafe {
            new.write(Array { len, replaced: old });
            ptr::copy_nonoverlapping(Self::slots(old), Self::slots(new), old_len);
            Self::slots(new).add(old_len).write(last);
        }
        new
    }

    /// The pointers after the header.
    #[inline(always)]
    fn slots(array: *mut Array) -> *mut NonNull<CachePadded<Stats>> {
        // SAFETY: the header is 16 bytes and pointer-aligned, so the pointers
        // start right after it (`layout` places them there).
        unsafe { array.add(1).cast() }
    }
}

impl CopyOnGrow {
    /// An empty array.
    pub fn new() -> Self {
        let layout = Array::layout(0);
        // SAFETY: the layout is not zero-sized (it has the header).
        let empty = unsafe { alloc::alloc(layout) }.cast::<Array>();
        if empty.is_null() {
            alloc::handle_alloc_error(layout);
        }
        // SAFETY: freshly allocated for the header.
        unsafe {
            empty.write(Array {
                len: 0,
                replaced: ptr::null_mut(),
            })
        };
        Self {
            current: AtomicPtr::new(empty),
            writer: spin::Mutex::new(()),
        }
    }

    /// Adds the next processor (index `len`): allocates its slot and an array one
    /// longer, copies, and publishes the copy. O(processors present).
    pub fn add(&self) -> usize {
        let _writer = self.writer.lock();
        let slot = new_slot();
        let old = self.current.load(Ordering::Relaxed);
        let new = Array::grown(old, slot);
        self.current.store(new, Ordering::Release);
        // SAFETY: `new` was just written.
        unsafe { (*new).len - 1 }
    }

    /// Processor `index`'s slot, if added.
    #[inline(always)]
    pub fn get(&self, index: usize) -> Option<&Stats> {
        let array = self.current.load(Ordering::Acquire);
        // SAFETY: the current array was fully written before the release store
        // that published it, which this load acquired, and no array is freed
        // before the container.
        let len = unsafe { (*array).len };
        if index >= len {
            return None;
        }
        // SAFETY: `index < len`, so the pointer is initialised; slots are freed
        // only on drop. (Stored as `NonNull`, so the compiler knows it is not
        // null and adds no test: the array is dense.)
        Some(unsafe { (*Array::slots(array).add(index)).as_ref() })
    }

    /// Processors present.
    pub fn len(&self) -> usize {
        // SAFETY: as in `get`.
        unsafe { (*self.current.load(Ordering::Acquire)).len }
    }
}

impl Default for CopyOnGrow {
    fn default() -> Self {
        Self::new()
    }
}

impl CurrentSlot for CopyOnGrow {
    #[inline(always)]
    fn read(&self, pin: &Pin<'_>) -> u64 {
        self.get(pin.processor().as_usize())
            .map_or(0, |stats| stats.hits.load(Ordering::Relaxed))
    }
}

impl Drop for CopyOnGrow {
    fn drop(&mut self) {
        let mut array = *self.current.get_mut();
        // SAFETY: the newest array holds every slot (each from `Box::into_raw`,
        // freed only here); every array in the chain came from `alloc` with the
        // layout of its length and is freed once.
        unsafe {
            for i in 0..(*array).len {
                drop(Box::from_raw((*Array::slots(array).add(i)).as_ptr()));
            }
            while let Some(this) = NonNull::new(array) {
                array = (*this.as_ptr()).replaced;
                alloc::dealloc(this.as_ptr().cast(), Array::layout((*this.as_ptr()).len));
            }
        }
    }
}

// SAFETY: the raw pointers are to memory the container owns; shared access is
// through atomics and immutable-after-publication arrays and slots, and adds are
// serialised by the mutex.
unsafe impl Send for CopyOnGrow {}
// SAFETY: as above.
unsafe impl Sync for CopyOnGrow {}

/// A slot on the heap, owned by the array until it is dropped.
fn new_slot() -> NonNull<CachePadded<Stats>> {
    NonNull::from(Box::leak(Box::new(CachePadded::new(Stats::default()))))
}

/// A lock around a vector of cache-padded slots: readers take the read lock
/// (two interlocked operations per read), an add takes the write lock and pushes.
pub struct Locked {
    slots: spin::RwLock<Vec<CachePadded<Stats>>>,
}

impl Locked {
    /// Slots for processors `0..present`.
    pub fn new(present: usize) -> Self {
        Self {
            slots: spin::RwLock::new(
                (0..present)
                    .map(|_| CachePadded::new(Stats::default()))
                    .collect(),
            ),
        }
    }
}

impl CurrentSlot for Locked {
    #[inline(always)]
    fn read(&self, pin: &Pin<'_>) -> u64 {
        self.slots
            .read()
            .get(pin.processor().as_usize())
            .map_or(0, |stats| stats.hits.load(Ordering::Relaxed))
    }
}

/// The `thread_local` crate: a slot per thread, found from the thread's id (its
/// own index source; the pin is not needed).
pub struct PerThread {
    slots: thread_local::ThreadLocal<CachePadded<Stats>>,
}

impl PerThread {
    /// An empty set; a thread's slot is made by its first [`touch`](Self::touch).
    pub fn new() -> Self {
        Self {
            slots: thread_local::ThreadLocal::new(),
        }
    }

    /// Makes the calling thread's slot.
    pub fn touch(&self) {
        self.slots.get_or(|| CachePadded::new(Stats::default()));
    }
}

impl Default for PerThread {
    fn default() -> Self {
        Self::new()
    }
}

impl CurrentSlot for PerThread {
    #[inline(always)]
    fn read(&self, _pin: &Pin<'_>) -> u64 {
        self.slots
            .get()
            .map_or(0, |stats| stats.hits.load(Ordering::Relaxed))
    }
}

/// The hot-path variants, in the order the benchmark and the callgrind example
/// run them.
pub const VARIANTS: [&str; 7] = [
    "index_only",
    "fixed_array",
    "perproc",
    "directory",
    "copy_on_grow",
    "thread_local",
    "spin_rwlock_vec",
];

/// Every contender of the hot-path benchmark, with `processors` processors
/// present (all added, in index order).
pub struct Contenders {
    ours: Ours,
    fixed: Fixed,
    directory: Directory,
    copy_on_grow: CopyOnGrow,
    per_thread: PerThread,
    locked: Locked,
}

impl Contenders {
    /// Builds them all; the calling thread's `thread_local` slot is made too.
    pub fn new(processors: usize) -> Self {
        let ours = ours(processors);
        let directory = Directory::new(processors);
        let copy_on_grow = CopyOnGrow::new();
        for i in 0..processors {
            let index = ProcessorIndex::from_usize(i).unwrap();
            assert_eq!(ours.prepare(index).unwrap(), Prepared::New);
            ours.commit(index).unwrap();
            directory.add(i);
            copy_on_grow.add();
        }
        let per_thread = PerThread::new();
        per_thread.touch();
        Self {
            ours,
            fixed: Fixed::new(processors),
            directory,
            copy_on_grow,
            per_thread,
            locked: Locked::new(processors),
        }
    }

    /// `iters` reads through `variant` (one of [`VARIANTS`]); `None` for an
    /// unknown name.
    pub fn run(&self, variant: &str, pin: &Pin<'_>, iters: u64) -> Option<u64> {
        Some(match variant {
            "index_only" => index_loop(pin, iters),
            "fixed_array" => read_loop(&self.fixed, pin, iters),
            "perproc" => read_loop(&self.ours, pin, iters),
            "directory" => read_loop(&self.directory, pin, iters),
            "copy_on_grow" => read_loop(&self.copy_on_grow, pin, iters),
            "thread_local" => read_loop(&self.per_thread, pin, iters),
            "spin_rwlock_vec" => read_loop(&self.locked, pin, iters),
            _ => return None,
        })
    }
}
