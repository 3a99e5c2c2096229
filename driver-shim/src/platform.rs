//! perproc's [`Platform`] over kernel calls: the current processor, pinning
//! by raising to `DISPATCH_LEVEL`, and the maximum processor count.

use core::marker::PhantomData;
use core::ptr;

use perproc::{PinGuard, Platform, ProcessorIndex};

use crate::pool_alloc::PoolAlloc;
use crate::sys::{
    KeGetCurrentIrql, KeGetCurrentProcessorNumberEx, KeLowerIrql, KeQueryMaximumProcessorCountEx,
    KfRaiseIrql, ALL_GROUPS, DISPATCH, KIRQL,
};

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
