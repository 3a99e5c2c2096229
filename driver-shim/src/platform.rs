//! perproc's [`Platform`] over kernel calls: the current processor, pinning
//! by raising to `DISPATCH_LEVEL`, and the maximum processor count.

use core::ptr;

use perproc::{Error, PinError, Platform, ProcessorIndex};

use crate::pool_alloc::PoolAlloc;
use crate::sys::{
    KeGetCurrentIrql, KeGetCurrentProcessorNumberEx, KeLowerIrql, KeQueryMaximumProcessorCountEx,
    KfRaiseIrql, ALL_GROUPS, DISPATCH, KIRQL,
};

/// The processors of the running system, as perproc's [`Platform`].
///
/// Pinning ([`Platform::pinned`]) raises to `DISPATCH_LEVEL` (unless the
/// caller is already there) for the duration of the closure; pins nest, and
/// only the outermost one lowers the IRQL again, so no live pin ever runs
/// below `DISPATCH_LEVEL`.
///
/// **Above `DISPATCH_LEVEL` (an interrupt service routine) pinning fails**
/// with [`PinError::InterruptLevel`]: an ISR may have interrupted pinned code
/// of its own processor in the middle of a magazine, ring or counter update,
/// so it must not touch per-processor state at all. Queue a DPC and do the
/// work there. (Dropping a [`PoolBox`](perproc::PoolBox) is safe at any IRQL:
/// it does not pin.)
///
/// ```ignore-windows
/// use perproc::{PinError, Platform};
/// use perproc_wdk::{sim::Kernel, sys, KernelPlatform};
///
/// let kernel = Kernel::new(&[64, 64], 70)?;   // group 1 has processors 64..69
/// std::thread::scope(|s| {
///     kernel.spawn_on(s, 66, || {
///         let platform = KernelPlatform::new(perproc_wdk::pool_tag(*b"Demo")).unwrap();
///         assert_eq!(platform.max_processors(), 128);
///         assert_eq!(platform.current_processor().get(), 66);
///         let on = platform.pinned(|pin| {
///             // SAFETY: reads the simulated IRQL.
///             assert_eq!(unsafe { sys::KeGetCurrentIrql() }, 2); // DISPATCH_LEVEL
///             pin.processor().get()
///         });
///         assert_eq!(on, Ok(66));
///         // SAFETY: simulated IRQL calls, balanced: an "ISR" at DIRQL 5.
///         let old = unsafe { sys::KfRaiseIrql(5) };
///         assert_eq!(platform.pinned(|_| ()), Err(PinError::InterruptLevel));
///         // SAFETY: back to the IRQL raised from.
///         unsafe { sys::KeLowerIrql(old) };
///     }).join().unwrap().unwrap();
/// });
/// // Outside an entered (simulated) kernel there is no processor count.
/// assert!(KernelPlatform::new(7).is_err());
/// # Ok::<(), perproc_wdk::sim::SimError>(())
/// ```
///
/// A guard cannot leave its `pinned` call, so the out-of-order sequence that
/// once lowered the IRQL under a live guard (`let a = pin(); let b = pin();
/// drop(a);`) cannot be written:
///
/// ```compile_fail
/// use perproc::Platform;
/// use perproc_wdk::{sim::Kernel, KernelPlatform};
///
/// let kernel = Kernel::new(&[4], 1).unwrap();
/// let _on = kernel.enter().unwrap();
/// let platform = KernelPlatform::new(7).unwrap();
/// let a = platform.pinned(|pin| pin).unwrap(); // error: the guard escapes its closure
/// let b = platform.pinned(|pin| pin).unwrap();
/// drop(a);
/// let _ = b.processor();
/// ```
///
/// Nor can one be kept through a variable outside the closure:
///
/// ```compile_fail
/// use perproc::{PinGuard, Platform};
/// use perproc_wdk::{sim::Kernel, KernelPlatform};
///
/// let kernel = Kernel::new(&[4], 1).unwrap();
/// let _on = kernel.enter().unwrap();
/// let platform = KernelPlatform::new(7).unwrap();
/// let mut kept: Option<&PinGuard<'_, KernelPlatform>> = None;
/// platform.pinned(|pin| kept = Some(pin)).unwrap(); // error: borrowed data escapes
/// let _ = kept.map(|pin| pin.processor());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct KernelPlatform {
    max: u32,
    pool: PoolAlloc,
    /// The simulated machine this platform describes: its pins are refused on
    /// a thread that runs on another one. (Windows has one kernel.)
    #[cfg(any(feature = "sim", not(windows)))]
    kernel: crate::sim::KernelId,
}

impl KernelPlatform {
    /// The running system; containers built on it allocate nonpaged pool with
    /// `tag`. Reads `KeQueryMaximumProcessorCountEx(ALL_PROCESSOR_GROUPS)`
    /// once (it is constant while the system runs). On the simulator, the
    /// platform is the kernel the calling thread has entered.
    ///
    /// # Errors
    /// [`Error::Pin`]`(`[`PinError::Unavailable`]`)` when the system reports no
    /// processor: on the simulator, a thread that has entered no kernel.
    pub fn new(tag: u32) -> Result<Self, Error> {
        #[cfg(any(feature = "sim", not(windows)))]
        let kernel = crate::sim::entered_kernel().ok_or(Error::Pin(PinError::Unavailable))?;
        // SAFETY: callable at any IRQL; no pointers.
        let max = unsafe { KeQueryMaximumProcessorCountEx(ALL_GROUPS) };
        if max == 0 {
            return Err(Error::Pin(PinError::Unavailable));
        }
        Ok(Self {
            max,
            pool: PoolAlloc::new(tag),
            #[cfg(any(feature = "sim", not(windows)))]
            kernel,
        })
    }

    /// Whether the calling thread runs on this platform's system (always on
    /// Windows; on the simulator, whether it entered this platform's kernel).
    #[inline(always)]
    fn on_this_system(&self) -> bool {
        #[cfg(any(feature = "sim", not(windows)))]
        return crate::sim::entered_kernel() == Some(self.kernel);
        #[cfg(all(windows, not(feature = "sim")))]
        return true;
    }
}

// SAFETY: the promises of `Platform`, between an `enter_pin` that returned
// `Ok((index, _))` and its `exit_pin`:
// 1. The caller runs at DISPATCH_LEVEL: `enter_pin` raised to it, or found the
//    IRQL already there (and refuses above it). At DISPATCH_LEVEL the thread
//    dispatcher does not run on this processor, so the thread is neither
//    preempted nor migrated; the index is read after the raise, so it is the
//    processor the thread stays on. The IRQL stays there until this pin's
//    `exit_pin`: pins are exited LIFO (the caller's promise, enforced by
//    `pinned`), an inner pin that raised lowers only back to DISPATCH_LEVEL
//    (the IRQL it found), and an inner pin that did not raise does not lower.
// 2. No other thread runs on processor `index` until its IRQL drops below
//    DISPATCH_LEVEL, which (1) rules out before this pin exits; so no other
//    thread is inside a pin for `index`. All `KernelPlatform`s describe the
//    one machine on Windows (`shares_processors` is then always true).
//    On the simulator this is made true, not assumed: raising a simulated
//    processor from below DISPATCH_LEVEL takes that processor's ownership
//    word (a compare-and-swap from free to the thread's token, acquire),
//    lowering below DISPATCH_LEVEL gives it back (release), so a second
//    thread on the same simulated processor waits in its raise; and
//    `enter_pin` refuses a thread that has not entered this platform's
//    kernel, so only that kernel's ownership words are involved for platforms
//    that share processors (the same kernel).
// 3. `enter_pin` refuses above DISPATCH_LEVEL (`PinError::InterruptLevel`).
//    Code on processor `index` that is not nested inside this pin is either
//    another thread (excluded by 2) or an interrupt that preempted this
//    thread, which runs above DISPATCH_LEVEL and so cannot pin. The simulator
//    has no asynchronous interrupts; tests raise the thread's own IRQL to
//    stand for one, and get the same refusal.
// 4. Windows: everything done under one pin and everything under the next
//    pin for `index` run on the one processor, in its program order, with a
//    context switch between threads (which the kernel makes a full barrier).
//    Simulator: the release when the ownership word is given back and the
//    acquire when the next thread takes it.
// 5. `shares_processors` is equality of the kernel identity (an
//    equivalence), and true on Windows; two platforms whose pins are not
//    mutually exclusive are two simulated kernels' (different identities),
//    whose processors are disjoint.
unsafe impl Platform for KernelPlatform {
    type Alloc = PoolAlloc;
    /// The IRQL to lower back to, when `enter_pin` raised.
    type Token = Option<KIRQL>;

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

    fn allocator(&self) -> PoolAlloc {
        self.pool
    }

    /// Raises to `DISPATCH_LEVEL` (the token is `Some(old IRQL)`), or, already
    /// at `DISPATCH_LEVEL`, keeps it (`None`). Above `DISPATCH_LEVEL`:
    /// [`PinError::InterruptLevel`]. On the simulator, a thread that has not
    /// entered this platform's kernel: [`PinError::Unavailable`].
    #[inline]
    unsafe fn enter_pin(&self) -> Result<(ProcessorIndex, Option<KIRQL>), PinError> {
        if !self.on_this_system() {
            return Err(PinError::Unavailable);
        }
        // SAFETY: callable at any IRQL.
        let current = unsafe { KeGetCurrentIrql() };
        if current > DISPATCH {
            return Err(PinError::InterruptLevel);
        }
        let token = if current < DISPATCH {
            // SAFETY: DISPATCH_LEVEL is above the current IRQL, as KfRaiseIrql
            // requires.
            Some(unsafe { KfRaiseIrql(DISPATCH) })
        } else {
            None
        };
        // SAFETY: callable at any IRQL; NULL is allowed for the optional number.
        let raw = unsafe { KeGetCurrentProcessorNumberEx(ptr::null_mut()) };
        match ProcessorIndex::new(raw) {
            Some(index) => Ok((index, token)),
            None => {
                // SAFETY: undoes the raise above, on this thread (nothing was
                // handed out).
                unsafe { self.exit_pin(token) };
                Err(PinError::Unavailable)
            }
        }
    }

    #[inline]
    unsafe fn exit_pin(&self, token: Option<KIRQL>) {
        if let Some(old) = token {
            // SAFETY: `old` is the IRQL `KfRaiseIrql` returned when this pin
            // raised; every later pin of this thread has exited (the caller's
            // promise), so the IRQL is DISPATCH_LEVEL again, at least `old`,
            // as KeLowerIrql requires.
            unsafe { KeLowerIrql(old) };
        }
    }

    /// Whether `other` describes the same machine: always on Windows; on the
    /// simulator, whether both were made on the same kernel.
    #[inline(always)]
    fn shares_processors(&self, other: &Self) -> bool {
        #[cfg(any(feature = "sim", not(windows)))]
        return self.kernel == other.kernel;
        #[cfg(all(windows, not(feature = "sim")))]
        {
            let _ = other;
            true
        }
    }
}
