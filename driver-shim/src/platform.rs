//! perproc's [`Platform`] over kernel calls: the current processor, pinning
//! by raising to `DISPATCH_LEVEL`, the maximum processor count, and nonpaged
//! pool memory.

use core::alloc::Layout;
use core::marker::PhantomData;
use core::mem::size_of;
use core::ptr::{self, NonNull};

use perproc::{AllocError, PinGuard, Platform, ProcessorIndex, RawAlloc};

use crate::sys::{
    ExAllocatePool2, ExFreePool, KeGetCurrentIrql, KeGetCurrentProcessorNumberEx, KeLowerIrql,
    KeQueryMaximumProcessorCountEx, KfRaiseIrql, ALL_GROUPS, DISPATCH, KIRQL, POOL_FLAG_NON_PAGED,
    SIZE_T,
};

/// A pool tag from its four characters as drivers write them (`'Perp'` in C is
/// `pool_tag(*b"Perp")`): the first character is the low byte, so pool
/// tools print it in reading order.
///
/// ```
/// assert_eq!(perproc_wdk::pool_tag(*b"Perp"), 0x7072_6550);
/// ```
pub const fn pool_tag(chars: [u8; 4]) -> u32 {
    u32::from_le_bytes(chars)
}

/// The alignment `ExAllocatePool2` guarantees below a page on 64-bit Windows
/// (`MEMORY_ALLOCATION_ALIGNMENT`).
pub const POOL_ALIGNMENT: usize = 16;

/// The processors of the running system, as perproc's [`Platform`].
///
/// ```ignore-windows
/// use perproc::{PerCpu, PinGuard, Platform};
/// use perproc_wdk::{sim::Kernel, KernelPlatform};
///
/// let kernel = Kernel::new(&[64, 64], 70)?;   // group 1 has processors 64..69
/// std::thread::scope(|s| {
///     kernel.spawn_on(s, 66, || {
///         let platform = KernelPlatform::new(perproc_wdk::pool_tag(*b"Demo"));
///         assert_eq!(platform.max_processors(), 128);
///         assert_eq!(platform.current_processor().get(), 66);
///         let pin = platform.pin();           // DISPATCH_LEVEL on processor 66
///         assert_eq!(pin.processor().get(), 66);
///     }).join().unwrap().unwrap();
/// });
/// # Ok::<(), perproc_wdk::sim::SimError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct KernelPlatform {
    max: u32,
    pool: PoolAlloc,
}

impl KernelPlatform {
    /// The running system; containers built on it allocate nonpaged pool with
    /// `tag`. Reads `KeQueryMaximumProcessorCountEx(ALL_PROCESSOR_GROUPS)`
    /// once (it is constant while the system runs).
    pub fn new(tag: u32) -> Self {
        // SAFETY: callable at any IRQL; no pointers.
        let max = unsafe { KeQueryMaximumProcessorCountEx(ALL_GROUPS) };
        Self {
            max,
            pool: PoolAlloc::new(tag),
        }
    }
}

impl Platform for KernelPlatform {
    type Alloc = PoolAlloc;
    type Guard<'a> = DispatchGuard<'a>;

    fn max_processors(&self) -> u32 {
        self.max
    }

    /// `KeGetCurrentProcessorNumberEx`'s return value, which is the
    /// system-wide index (the same number `KeGetProcessorIndexFromNumber` maps
    /// the filled-in `PROCESSOR_NUMBER` to, so one call is enough).
    #[inline]
    fn current_processor(&self) -> ProcessorIndex {
        // SAFETY: callable at any IRQL; NULL is allowed for the optional number.
        let index = unsafe { KeGetCurrentProcessorNumberEx(ptr::null_mut()) };
        ProcessorIndex::new(index).unwrap_or(ProcessorIndex::ZERO)
    }

    /// Raises to `DISPATCH_LEVEL` (unless already there or above); the guard
    /// lowers back to the caller's IRQL when dropped. Drop nested guards in
    /// reverse order of creation (as `KeLowerIrql` calls must be).
    #[inline]
    fn pin(&self) -> DispatchGuard<'_> {
        // SAFETY: callable at any IRQL.
        let current = unsafe { KeGetCurrentIrql() };
        let restore = if current < DISPATCH {
            // SAFETY: DISPATCH_LEVEL is above the current IRQL, as KfRaiseIrql
            // requires.
            Some(unsafe { KfRaiseIrql(DISPATCH) })
        } else {
            None
        };
        DispatchGuard {
            index: self.current_processor(),
            restore,
            _not_send: PhantomData,
        }
    }

    fn allocator(&self) -> PoolAlloc {
        self.pool
    }
}

/// The caller, kept on its processor at `DISPATCH_LEVEL`; from
/// [`KernelPlatform::pin`].
#[derive(Debug)]
pub struct DispatchGuard<'a> {
    index: ProcessorIndex,
    /// The IRQL to lower back to, if `pin` raised.
    restore: Option<KIRQL>,
    /// Neither `Send` nor `Sync`: an IRQL belongs to its processor.
    _not_send: PhantomData<(*const (), &'a KernelPlatform)>,
}

impl Drop for DispatchGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(old) = self.restore {
            // SAFETY: `old` is the IRQL `KfRaiseIrql` returned, at most the
            // current one, as KeLowerIrql requires.
            unsafe { KeLowerIrql(old) };
        }
    }
}

// SAFETY:
// 1. At DISPATCH_LEVEL the thread dispatcher does not run on this processor:
//    the thread is neither preempted nor migrated, so the index read after
//    raising stays its processor until the guard lowers the IRQL. (A guard
//    that did not raise was made at DISPATCH_LEVEL or above, where the same
//    holds.)
// 2. No other thread runs on this processor until the IRQL drops below
//    DISPATCH_LEVEL, so no other thread holds a guard for it; guards of this
//    thread nest, like nested raises.
//    On the simulator this is made true, not assumed: raising a simulated
//    processor from below DISPATCH_LEVEL to it takes that processor's
//    ownership word (a compare-and-swap from free to the thread's token, with
//    acquire ordering), and lowering below DISPATCH_LEVEL gives it back
//    (release), so a second thread on the same simulated processor waits in
//    its own raise; a thread's processor is fixed while it is entered.
// 3. The PhantomData of a raw pointer makes the guard neither Send nor Sync.
// 4. Code above DISPATCH_LEVEL on this processor (ISRs) must not use perproc
//    state: a documented requirement on drivers (see the crate docs); the
//    simulator has no interrupts.
unsafe impl PinGuard for DispatchGuard<'_> {
    #[inline(always)]
    fn processor(&self) -> ProcessorIndex {
        self.index
    }
}

/// Nonpaged pool (`ExAllocatePool2(POOL_FLAG_NON_PAGED, ..)`) with a tag, as
/// perproc's [`RawAlloc`]. Any alignment is honoured: up to
/// [`POOL_ALIGNMENT`] by the pool itself (checked), above it by allocating
/// `size + align + 8` bytes, returning the first aligned address with room
/// for the original pointer just below it, and freeing through that pointer.
///
/// Placement: the processor hint is not used; blocks come from the pool of
/// whatever node the pool chooses. A NUMA-aware variant would map the index
/// to its node (`KeGetProcessorNumberFromIndex`, then the node whose
/// `KeQueryNodeActiveAffinity` group affinity holds that processor) and
/// allocate with `ExAllocatePool3(POOL_FLAG_NON_PAGED, size, tag, ..)` and a
/// `POOL_EXTENDED_PARAMETER` of type `PoolExtendedParameterNumaNode`
/// naming that node as preferred.
///
/// Allocate and free at `IRQL <= DISPATCH_LEVEL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolAlloc {
    tag: u32,
}

impl PoolAlloc {
    /// Nonpaged pool tagged `tag`.
    pub const fn new(tag: u32) -> Self {
        Self { tag }
    }

    /// The tag.
    pub const fn tag(self) -> u32 {
        self.tag
    }

    fn pool_block(&self, size: usize) -> Result<NonNull<u8>, AllocError> {
        let bytes = SIZE_T::try_from(size).map_err(|_| AllocError)?;
        // SAFETY: callable at IRQL <= DISPATCH_LEVEL (this type's contract) for
        // nonpaged pool; returns NULL or a block of `bytes` bytes.
        let block = unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, bytes, self.tag) };
        NonNull::new(block.cast::<u8>()).ok_or(AllocError)
    }
}

const WORD: usize = size_of::<*mut u8>();

// SAFETY: 1. every block is at least `layout.size()` bytes from the returned
// pointer: direct blocks are exactly that size; over-aligned ones start at an
// offset of at most `WORD + align - 1` into a block of `size + align + WORD`.
// 2. direct blocks are checked for alignment (and refused if the pool gave
// less); over-aligned pointers are rounded up to `align`. 3. pool blocks are
// disjoint. 4. a block stays valid until ExFreePool, which `deallocate` calls
// on the pool's own pointer, from any thread at IRQL <= DISPATCH_LEVEL.
unsafe impl RawAlloc for PoolAlloc {
    fn allocate(
        &self,
        layout: Layout,
        _processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        if layout.size() == 0 {
            return Err(AllocError);
        }
        if layout.align() <= POOL_ALIGNMENT {
            let block = self.pool_block(layout.size())?;
            if block.as_ptr().addr() & layout.align().wrapping_sub(1) == 0 {
                return Ok(block);
            }
            // SAFETY: a block ExAllocatePool2 just returned, freed once.
            unsafe { ExFreePool(block.as_ptr().cast()) };
            return Err(AllocError);
        }
        let total = layout
            .size()
            .checked_add(layout.align())
            .and_then(|n| n.checked_add(WORD))
            .ok_or(AllocError)?;
        let base = self.pool_block(total)?;
        // The first address at least WORD bytes in that is aligned.
        let lowest = base.as_ptr().addr().checked_add(WORD).ok_or(AllocError)?;
        let misalign = lowest & layout.align().wrapping_sub(1); // align is a power of two
        let pad = if misalign == 0 {
            0
        } else {
            layout.align().wrapping_sub(misalign)
        };
        let offset = WORD.wrapping_add(pad); // < WORD + align: fits in `total`
                                             // SAFETY: `offset + size <= total`, so the pointer and the `size` bytes
                                             // after it are inside the block.
        let user = unsafe { base.as_ptr().add(offset) };
        // SAFETY: `user - WORD` is at least `base` (offset >= WORD), inside the
        // block, and aligned for a pointer (user is aligned to align > 16 and
        // WORD divides it).
        unsafe { user.sub(WORD).cast::<*mut u8>().write(base.as_ptr()) };
        NonNull::new(user).ok_or(AllocError)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let block = if layout.align() <= POOL_ALIGNMENT {
            ptr.as_ptr()
        } else {
            // SAFETY: `allocate` stored the pool's pointer just below every
            // over-aligned block (the caller passes the same layout).
            unsafe { ptr.as_ptr().sub(WORD).cast::<*mut u8>().read() }
        };
        // SAFETY: `block` is what ExAllocatePool2 returned, freed once (the
        // caller does not use `ptr` again).
        unsafe { ExFreePool(block.cast()) };
    }
}
