//! The platform seam: which processor am I on, keep me there, how many can
//! there be, and where memory comes from.

use crate::{ProcessorIndex, RawAlloc};

/// Proof that the caller runs on one processor and stays there.
///
/// On Windows a guard raises the IRQL to `DISPATCH_LEVEL` (no preemption, no
/// migration); on the host platform it claims the thread's simulated processor.
/// Containers take `&impl PinGuard` for the current processor's slot, and the
/// per-processor state that is changed without interlocked instructions (pool
/// magazines, counters) relies on the promises below.
///
/// # Safety
///
/// An implementation promises, while a guard is alive:
/// 1. `processor()` returns the same index every time, and the thread that made
///    the guard runs on that processor and does not migrate;
/// 2. no other thread holds a live guard for the same index (a thread may nest
///    guards of its own, as nested `KeRaiseIrql` calls do);
/// 3. the guard is neither `Send` nor `Sync`, so it cannot be used from another
///    thread;
/// 4. nothing that runs on the processor while the guard is alive and that is
///    not under the same guard uses the library's per-processor state (on Windows:
///    ISRs above `DISPATCH_LEVEL` do not call into the library);
/// 5. successive guards for one index are ordered: everything done under a
///    guard happens-before everything done under the next guard for that index,
///    on whatever thread (host: the release and acquire on the processor's claim;
///    Windows: one processor's program order, with a context switch between
///    threads). This is what lets plain writes to per-processor state made by one
///    thread be read by the next thread pinned there.
pub unsafe trait PinGuard {
    /// The processor the caller is pinned to.
    fn processor(&self) -> ProcessorIndex;
}

/// What the library needs from the system it runs on.
///
/// ```
/// use perproc::{host::HostPlatform, PinGuard, Platform};
/// let platform = HostPlatform::new(8).unwrap();
/// platform.bind_current_thread(perproc::ProcessorIndex::new(5).unwrap()).unwrap();
/// let pin = platform.pin();
/// assert_eq!(pin.processor().get(), 5);
/// assert_eq!(platform.max_processors(), 8);
/// ```
pub trait Platform {
    /// The allocator containers built on this platform use.
    type Alloc: RawAlloc;
    /// The guard [`pin`](Platform::pin) returns.
    type Guard<'a>: PinGuard
    where
        Self: 'a;

    /// The most processors the system can ever have, room for hot-add included
    /// (Windows: `KeQueryMaximumProcessorCountEx(ALL_PROCESSOR_GROUPS)`). Constant
    /// at run time; containers size their tables from it.
    fn max_processors(&self) -> u32;

    /// The processor the caller runs on now. Without a guard the answer may be
    /// stale by the time it is used; pin for anything that must stay local.
    fn current_processor(&self) -> ProcessorIndex;

    /// Pins the caller to its current processor until the guard is dropped.
    fn pin(&self) -> Self::Guard<'_>;

    /// The allocator for containers of this platform.
    fn allocator(&self) -> Self::Alloc;
}

/// A borrowed platform is a platform, so a container can keep `&platform`
/// (for example to pin in a handle's `Drop`) when the platform is not `Copy`.
impl<P: Platform + ?Sized> Platform for &P {
    type Alloc = P::Alloc;
    type Guard<'a>
        = P::Guard<'a>
    where
        Self: 'a;

    #[inline]
    fn max_processors(&self) -> u32 {
        (**self).max_processors()
    }

    #[inline]
    fn current_processor(&self) -> ProcessorIndex {
        (**self).current_processor()
    }

    #[inline]
    fn pin(&self) -> Self::Guard<'_> {
        (**self).pin()
    }

    #[inline]
    fn allocator(&self) -> Self::Alloc {
        (**self).allocator()
    }
}
