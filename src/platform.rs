//! The platform seam: which processor am I on, keep me there, how many can
//! there be, and where memory comes from.
//!
//! Pinning is scoped: [`Platform::pinned`] runs a closure with a
//! [`PinGuard`] that only the library can make and that the closure can only
//! borrow. So guards end in the reverse order they began (Windows restores
//! IRQLs that way: an owned guard dropped out of order would lower the IRQL
//! under a younger guard that still relies on it), a guard cannot outlive its
//! pinning, and a guard of one platform type cannot be passed to a container
//! of another.

use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;

use crate::{ProcessorIndex, RawAlloc};

/// Why the caller could not be pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PinError {
    /// The caller runs above `DISPATCH_LEVEL` (an interrupt service routine):
    /// per-processor state may be in the middle of an update by the code it
    /// interrupted. Queue a DPC and do the work there.
    InterruptLevel,
    /// This thread cannot be pinned through this platform (on the simulated
    /// kernel: a thread that has not entered the platform's kernel).
    Unavailable,
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::InterruptLevel => f.write_str("cannot pin above DISPATCH_LEVEL"),
            PinError::Unavailable => f.write_str("this thread cannot be pinned here"),
        }
    }
}

impl core::error::Error for PinError {}

/// Proof that the caller runs on one processor and stays there, for as long as
/// the closure given to [`Platform::pinned`] runs.
///
/// Containers take `&PinGuard<'_, P>` for the current processor's slot; the
/// per-processor state they change without interlocked instructions (pool
/// magazines, queue rings, counters) relies on it. Only [`Platform::pinned`]
/// makes one, and the closure only borrows it, so no safe code can keep a
/// guard past its pinning, drop two out of order, send one to another thread
/// (it is neither `Send` nor `Sync`), or hand a guard of one platform type to
/// a container of another.
pub struct PinGuard<'a, P: Platform> {
    index: ProcessorIndex,
    platform: &'a P,
    token: ManuallyDrop<P::Token>,
    /// Neither `Send` nor `Sync`: a pin belongs to its thread.
    _thread: PhantomData<*const ()>,
}

impl<'a, P: Platform> PinGuard<'a, P> {
    /// The processor the caller is pinned to.
    #[inline(always)]
    pub fn processor(&self) -> ProcessorIndex {
        self.index
    }

    /// The platform that pinned the caller.
    #[inline(always)]
    pub fn platform(&self) -> &'a P {
        self.platform
    }
}

impl<P: Platform> Drop for PinGuard<'_, P> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `token` came from the `enter_pin` that made this guard and is
        // taken once (drop runs once). Guards are dropped only by `pinned`, at the
        // end of their scope (or while it unwinds), so on this thread every pin
        // entered after this one has already been exited: the LIFO order
        // `exit_pin` requires. Same thread: the guard is not `Send`.
        unsafe {
            let token = ManuallyDrop::take(&mut self.token);
            self.platform.exit_pin(token);
        }
    }
}

impl<P: Platform> fmt::Debug for PinGuard<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinGuard")
            .field("processor", &self.index)
            .finish_non_exhaustive()
    }
}

/// What the library needs from the system it runs on: the current processor,
/// pinning, the maximum count, and memory.
///
/// A platform is a small handle (containers keep a clone of it). Pin through
/// [`pinned`](Platform::pinned):
///
/// ```
/// use perproc::{host::HostPlatform, Platform, ProcessorIndex};
/// let platform = HostPlatform::new(8)?;
/// platform.bind_current_thread(ProcessorIndex::new(5).unwrap())?;
/// let on = platform.pinned(|pin| pin.processor().get())?;
/// assert_eq!(on, 5);
/// assert_eq!(platform.max_processors(), 8);
/// # Ok::<(), perproc::Error>(())
/// ```
///
/// # Safety
///
/// The library's per-processor state is changed without interlocked
/// instructions on the strength of these promises. An implementation promises,
/// between an [`enter_pin`](Platform::enter_pin) that returned `Ok((index, _))`
/// and its matching [`exit_pin`](Platform::exit_pin):
/// 1. the calling thread runs on processor `index` and does not migrate;
/// 2. no other thread is between `enter_pin` and `exit_pin` for `index` on this
///    platform or on any platform `q` with
///    [`shares_processors(q)`](Platform::shares_processors) true (a thread may
///    nest pins of its own);
/// 3. no code that runs on processor `index` without being nested inside this
///    pin can enter a pin for it (on Windows: `enter_pin` refuses above
///    `DISPATCH_LEVEL`, so an ISR that interrupts pinned code cannot pin);
/// 4. successive pins for one index are ordered: everything done under one
///    happens-before everything done under the next, on whatever thread
///    (host: a release and an acquire on the processor's claim; Windows: one
///    processor's program order, with a context switch between threads);
/// 5. `shares_processors` is an equivalence, and true whenever two platforms'
///    pins for one index are not mutually exclusive.
pub unsafe trait Platform: Clone {
    /// The allocator containers built on this platform use by default.
    type Alloc: RawAlloc;
    /// What [`enter_pin`](Platform::enter_pin) hands to
    /// [`exit_pin`](Platform::exit_pin) (on Windows: the IRQL to restore).
    type Token;

    /// The most processors the system can ever have, room for hot-add included
    /// (Windows: `KeQueryMaximumProcessorCountEx(ALL_PROCESSOR_GROUPS)`). Constant
    /// at run time; containers size their tables from it.
    fn max_processors(&self) -> u32;

    /// The processor the caller runs on now. Unpinned, the answer may be stale
    /// by the time it is used; pin for anything that must stay local.
    fn current_processor(&self) -> ProcessorIndex;

    /// The allocator for containers of this platform.
    fn allocator(&self) -> Self::Alloc;

    /// Pins the calling thread to its processor (the raw half of
    /// [`pinned`](Platform::pinned), which is how the library calls it).
    ///
    /// # Errors
    /// [`PinError`] when the caller cannot be pinned here (above
    /// `DISPATCH_LEVEL`); nothing is held then.
    ///
    /// # Safety
    /// The caller calls [`exit_pin`](Platform::exit_pin) with the token on the
    /// same thread, after exiting every pin it entered later (LIFO).
    unsafe fn enter_pin(&self) -> Result<(ProcessorIndex, Self::Token), PinError>;

    /// Ends a pin.
    ///
    /// # Safety
    /// `token` is from this platform's `enter_pin` on this thread, used once,
    /// and every pin this thread entered after it has been exited.
    unsafe fn exit_pin(&self, token: Self::Token);

    /// Whether a guard made by `other` pins processors of the machine this
    /// platform describes (see promise 5). Containers treat a guard from a
    /// platform that does not as pinning a processor they have no slot for.
    /// All instances of a platform type share one machine unless the type says
    /// otherwise (a simulated kernel does: one per kernel).
    #[inline(always)]
    fn shares_processors(&self, other: &Self) -> bool {
        let _ = other;
        true
    }

    /// Runs `f` pinned to the caller's processor and returns its result.
    ///
    /// Pins nest: `f` may pin again (through any platform). The pin ends when
    /// `f` returns or unwinds.
    ///
    /// # Errors
    /// [`PinError`] when the caller cannot be pinned (on Windows above
    /// `DISPATCH_LEVEL`: an ISR must queue a DPC); `f` does not run then.
    #[inline]
    fn pinned<R>(&self, f: impl FnOnce(&PinGuard<'_, Self>) -> R) -> Result<R, PinError> {
        // SAFETY: the guard made here exits the pin in its drop, on this thread
        // (it is not `Send`), at the end of this call or while `f` unwinds; the
        // guard is never moved out of this frame (`f` gets a reference), so
        // pins `f` enters are exited before it: LIFO.
        let (index, token) = unsafe { self.enter_pin() }?;
        let guard = PinGuard {
            index,
            platform: self,
            token: ManuallyDrop::new(token),
            _thread: PhantomData,
        };
        Ok(f(&guard))
    }
}
