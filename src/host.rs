//! The host platform: ordinary threads standing in for processors, for tests,
//! examples and benchmarks.
//!
//! A thread *binds* itself to a simulated processor index; pinning
//! ([`Platform::pinned`]) then claims that processor for the thread (as raising to `DISPATCH_LEVEL`
//! keeps everything else off a real one), so two threads bound to the same
//! index take turns. Memory comes from the system allocator, alignment honoured.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use std::alloc::System;

use crate::{
    AllocError, Error, PinError, Platform, ProcessorIndex, RawAlloc, UniformGroups, MAX_GROUP_SIZE,
};

/// The most simulated processors the host supports.
pub const HOST_MAX_PROCESSORS: u32 = 8192;

const FREE: u64 = 0;

/// Which thread holds each simulated processor (`FREE` or a thread's id). Each
/// word on its own cache lines: threads pinning different processors must not
/// contend here, or host benchmarks would measure this table, not the library.
static OCCUPANCY: [CachePadded<AtomicU64>; 8192] =
    [const { CachePadded::new(AtomicU64::new(FREE)) }; 8192];
const _: () = assert!(OCCUPANCY.len() == 8192 && HOST_MAX_PROCESSORS == 8192);

static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);

std::thread_local! {
    static BOUND: Cell<Option<ProcessorIndex>> = const { Cell::new(None) };
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static THREAD_ID: u64 = NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed);
}

/// The system allocator behind [`RawAlloc`]; ignores the placement hint.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostAlloc;

// SAFETY: `System` returns blocks valid for `layout`, aligned as asked, disjoint
// from every other live block, until they are deallocated with the same layout
// (GlobalAlloc's contract). Zero-sized requests, which `System` must not see, are
// refused.
unsafe impl RawAlloc for HostAlloc {
    fn allocate(
        &self,
        layout: Layout,
        _processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        if layout.size() == 0 {
            return Err(AllocError);
        }
        // SAFETY: the layout is not zero-sized (checked above).
        NonNull::new(unsafe { System.alloc(layout) }).ok_or(AllocError)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller passes a block from `allocate` (so from `System`)
        // with the layout it was allocated with.
        unsafe { System.dealloc(ptr.as_ptr(), layout) }
    }
}

/// A machine of simulated processors: threads bind to an index and pin to it.
///
/// Every `HostPlatform` shares one set of simulated processors (pinning
/// processor 3 through one excludes pinning it through any other), so the
/// handle is a plain value: copy it freely.
///
/// ```
/// use perproc::host::HostPlatform;
/// use perproc::{Platform, ProcessorIndex};
///
/// let platform = HostPlatform::with_groups(128, 64)?; // two groups of 64
/// std::thread::scope(|s| {
///     for i in [0, 70] {
///         s.spawn(move || {
///             let cpu = ProcessorIndex::new(i).unwrap();
///             platform.bind_current_thread(cpu).unwrap();
///             assert_eq!(platform.pinned(|pin| pin.processor()), Ok(cpu));
///             assert_eq!(platform.groups().number_of(cpu).unwrap().group(), u16::from(i >= 64));
///         });
///     }
/// });
/// # Ok::<(), perproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPlatform {
    max: u32,
    groups: UniformGroups,
}

impl HostPlatform {
    /// `max` simulated processors in groups of 64.
    ///
    /// # Errors
    /// [`Error::CapacityOverflow`] for `max` above [`HOST_MAX_PROCESSORS`].
    pub fn new(max: u32) -> Result<Self, Error> {
        Self::with_groups(max, MAX_GROUP_SIZE)
    }

    /// `max` simulated processors in groups of `group_size` (1 to 64).
    ///
    /// # Errors
    /// [`Error::CapacityOverflow`] for `max` above [`HOST_MAX_PROCESSORS`] or a
    /// group size outside 1..=64.
    pub fn with_groups(max: u32, group_size: u8) -> Result<Self, Error> {
        let groups = UniformGroups::new(group_size).ok_or(Error::CapacityOverflow)?;
        if max > HOST_MAX_PROCESSORS {
            return Err(Error::CapacityOverflow);
        }
        Ok(Self { max, groups })
    }

    /// How indexes map to (group, number) on this machine.
    pub fn groups(&self) -> UniformGroups {
        self.groups
    }

    /// Makes the calling thread run "on" processor `index` from now on.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] past this platform's maximum;
    /// [`Error::Busy`] while the thread is pinned.
    pub fn bind_current_thread(&self, index: ProcessorIndex) -> Result<(), Error> {
        if index.get() >= self.max {
            return Err(Error::IndexOutOfRange {
                index,
                capacity: usize::try_from(self.max).unwrap_or(usize::MAX),
            });
        }
        if DEPTH.with(Cell::get) > 0 {
            return Err(Error::Busy);
        }
        BOUND.with(|bound| bound.set(Some(index)));
        Ok(())
    }

    /// The processor the calling thread is bound to, if any. Threads that never
    /// bind run on processor 0.
    pub fn bound_processor() -> Option<ProcessorIndex> {
        BOUND.with(Cell::get)
    }
}

// SAFETY:
// 1. A thread's processor is the one it is bound to, and rebinding is refused
//    while the thread is pinned (DEPTH > 0), so it does not "migrate".
// 2. The outermost pin of a thread takes the processor's OCCUPANCY word (an
//    acquire CAS from FREE to the thread's id, waiting while another thread
//    holds it) and the last exit gives it back; nested pins of the same thread
//    only count. The table is process-wide, so this holds across every
//    HostPlatform (shares_processors is the default `true`).
// 3. The host has no interrupts; only the pinned thread runs its code.
// 4. The claim is taken with an acquire CAS and given back with a release
//    store, so each holder of an index happens-before the next.
// 5. Always true: an equivalence.
unsafe impl Platform for HostPlatform {
    type Alloc = HostAlloc;
    type Token = ProcessorIndex;

    fn max_processors(&self) -> u32 {
        self.max
    }

    fn current_processor(&self) -> ProcessorIndex {
        Self::bound_processor().unwrap_or(ProcessorIndex::ZERO)
    }

    fn allocator(&self) -> HostAlloc {
        HostAlloc
    }

    unsafe fn enter_pin(&self) -> Result<(ProcessorIndex, ProcessorIndex), PinError> {
        let index = self.current_processor();
        // Bound indexes are below this platform's maximum, itself at most
        // HOST_MAX_PROCESSORS, so the lookup finds a word.
        let word = OCCUPANCY
            .get(index.as_usize())
            .ok_or(PinError::Unavailable)?;
        let me = THREAD_ID.with(|id| *id);
        if DEPTH.with(Cell::get) == 0 {
            while word
                .compare_exchange_weak(FREE, me, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                std::thread::yield_now();
            }
        }
        DEPTH.with(|depth| depth.set(depth.get().saturating_add(1)));
        Ok((index, index))
    }

    unsafe fn exit_pin(&self, index: ProcessorIndex) {
        let depth = DEPTH.with(|depth| {
            let left = depth.get().saturating_sub(1);
            depth.set(left);
            left
        });
        if depth == 0 {
            if let Some(word) = OCCUPANCY.get(index.as_usize()) {
                word.store(FREE, Ordering::Release);
            }
        }
    }
}
