//! [`Registration`]: the seed's `KeRegisterProcessorChangeCallback` /
//! `KeDeregisterProcessorChangeCallback` pair, made impossible to get wrong.

use core::alloc::Layout;
use core::ffi::c_void;
use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;

use perproc::{Component, RawAlloc};

use crate::callback::{on_processor_change, CallbackContext};
use crate::pool_alloc::PoolAlloc;
use crate::sys::{
    KeDeregisterProcessorChangeCallback, KeRegisterProcessorChangeCallback, ADD_EXISTING, NTSTATUS,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_SUCCESS, STATUS_UNSUCCESSFUL,
};

/// Which processors registration tells the callback about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Replay {
    /// `KE_PROCESSOR_CHANGE_ADD_EXISTING`: every active processor is added
    /// (Start, then Complete) before registration returns, then hot-adds. The
    /// default, and what a driver whose per-CPU parts start empty needs.
    #[default]
    Existing,
    /// Hot-adds only.
    NewOnly,
}

/// Registration failed; nothing is registered, and every processor the replay
/// prepared was aborted again.
pub struct RegisterError<C> {
    /// What `DriverEntry` returns, as in the seed: the status the callback
    /// reported, or `STATUS_UNSUCCESSFUL` when the kernel refused without one
    /// (`STATUS_INSUFFICIENT_RESOURCES` when the context could not be allocated).
    pub status: NTSTATUS,
    /// The components, back.
    pub parts: C,
}

impl<C> fmt::Debug for RegisterError<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterError")
            .field("status", &format_args!("{:#010x}", self.status))
            .finish_non_exhaustive()
    }
}

/// A driver's per-CPU components, registered for processor hot-add.
///
/// Owns the components: the callback's context (the components and the seed's
/// `CallbackStatus`) lives in one nonpaged pool block that stays put until the
/// registration is dropped. Dropping (in `Unload`) deregisters first, which
/// waits for callbacks in flight, and only then drops the components: the
/// order is not up to the caller.
///
/// Register and drop at `PASSIVE_LEVEL`, never from inside a processor-change
/// callback.
///
/// ```ignore-windows
/// use perproc::{InitFn, PerCpu, Platform};
/// use perproc_wdk::{pool_tag, sim::Kernel, KernelPlatform, Registration};
/// use core::sync::atomic::AtomicU64;
///
/// // The driver's per-CPU parts, as one component.
/// struct Parts {
///     hits: PerCpu<AtomicU64, KernelPlatform>,
/// }
/// perproc::components!(Parts => hits);
///
/// let kernel = Kernel::new(&[64], 4)?;                 // off Windows: a simulated one
/// let _on = kernel.enter()?;
/// let platform = KernelPlatform::new(pool_tag(*b"Demo"))?;
/// let zero: InitFn<AtomicU64> = |_| Ok(AtomicU64::new(0));
/// let parts = Parts { hits: PerCpu::new(&platform, zero)? };
///
/// let registration = Registration::register(parts, platform.allocator()).unwrap();
/// assert_eq!(registration.parts().hits.online_count(), 4); // the replay
/// assert!(kernel.hot_add_next()?.added());
/// assert_eq!(registration.parts().hits.online_count(), 5);
/// drop(registration);                                      // Unload
/// assert_eq!(kernel.pool().total_live_bytes(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Registration<C: Component> {
    handle: NonNull<c_void>,
    context: NonNull<CallbackContext<C>>,
    pool: PoolAlloc,
    _owns: PhantomData<CallbackContext<C>>,
}

// SAFETY: the registration owns `C` (so `C: Send` to move it) and an opaque
// kernel handle that may be deregistered from any thread at PASSIVE_LEVEL.
unsafe impl<C: Component + Send> Send for Registration<C> {}
// SAFETY: `&Registration` gives `&C` (Component: Sync) and reads an atomic.
unsafe impl<C: Component> Sync for Registration<C> {}

impl<C: Component + 'static> Registration<C> {
    /// Registers `parts` with `KE_PROCESSOR_CHANGE_ADD_EXISTING`: before this
    /// returns, every active processor is prepared and committed, or (when one
    /// fails) the ones before it are aborted and the error comes back.
    ///
    /// The context block is allocated from `pool` (nonpaged, with its tag).
    ///
    /// `C: 'static` because a registration can be leaked (`mem::forget`), and
    /// the kernel would then keep calling into `C`; for components that borrow,
    /// use [`scoped`](Self::scoped).
    ///
    /// # Errors
    /// [`RegisterError`], with the status `DriverEntry` returns and the parts.
    pub fn register(parts: C, pool: PoolAlloc) -> Result<Self, RegisterError<C>> {
        Self::register_with(parts, pool, Replay::Existing)
    }

    /// [`register`](Self::register), choosing whether existing processors are
    /// replayed.
    ///
    /// # Errors
    /// As for [`register`](Self::register).
    pub fn register_with(
        parts: C,
        pool: PoolAlloc,
        replay: Replay,
    ) -> Result<Self, RegisterError<C>> {
        // SAFETY: `C: 'static`, so nothing the callback uses can go away while
        // the registration exists, even if it is leaked.
        unsafe { Self::register_unchecked(parts, pool, replay) }
    }
}

impl<C: Component> Registration<C> {
    /// Registers `parts` (which may borrow) for the duration of `f` only, then
    /// deregisters and gives them back with `f`'s result.
    ///
    /// ```ignore-windows
    /// use perproc::{PerCpu, Platform};
    /// use perproc_wdk::{pool_tag, sim::Kernel, KernelPlatform, Registration, Replay};
    ///
    /// let kernel = Kernel::new(&[8], 2)?;
    /// let _on = kernel.enter()?;
    /// let platform = KernelPlatform::new(pool_tag(*b"Demo"))?;
    /// let a = PerCpu::new(&platform, |_| Ok(1u32))?;
    /// let b = PerCpu::new(&platform, |_| Ok(2u64))?;
    /// // A tuple of references is a component set: prepared a then b.
    /// let online = Registration::scoped(
    ///     (&a, &b), platform.allocator(), Replay::Existing,
    ///     |registration| registration.parts().1.online_count(),
    /// ).unwrap().0;
    /// assert_eq!((online, a.online_count(), b.online_count()), (2, 2, 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As for [`register`](Self::register); `f` does not run then.
    pub fn scoped<R>(
        parts: C,
        pool: PoolAlloc,
        replay: Replay,
        f: impl FnOnce(&Self) -> R,
    ) -> Result<(R, C), RegisterError<C>> {
        // SAFETY: the registration never leaves this function: `f` only borrows
        // it, and it is deregistered (by `deregister`, or by its drop if `f`
        // unwinds) before `parts`' borrows can end.
        let registration = unsafe { Self::register_unchecked(parts, pool, replay) }?;
        let result = f(&registration);
        Ok((result, registration.deregister()))
    }

    /// # Safety
    /// The registration must be dropped or deregistered before anything `C`
    /// borrows goes away (it must not be leaked unless `C: 'static`).
    unsafe fn register_unchecked(
        parts: C,
        pool: PoolAlloc,
        replay: Replay,
    ) -> Result<Self, RegisterError<C>> {
        let layout = Layout::new::<CallbackContext<C>>();
        let Ok(block) = pool.allocate(layout, None) else {
            return Err(RegisterError {
                status: STATUS_INSUFFICIENT_RESOURCES,
                parts,
            });
        };
        let context = block.cast::<CallbackContext<C>>();
        // SAFETY: a fresh block with the layout of CallbackContext<C> (the
        // allocator honours size and alignment), not reachable by anyone else.
        unsafe { context.as_ptr().write(CallbackContext::new(parts)) };
        let flags = match replay {
            Replay::Existing => ADD_EXISTING,
            Replay::NewOnly => 0,
        };
        // SAFETY: the callback is sound for any thread with this context while
        // it lives; the context lives in its block until after the matching
        // KeDeregisterProcessorChangeCallback (our drop) or, on failure, until
        // the kernel has returned NULL (no more calls). Called at PASSIVE_LEVEL
        // per this type's contract.
        let handle = unsafe {
            KeRegisterProcessorChangeCallback(
                Some(on_processor_change::<C>),
                context.as_ptr().cast::<c_void>(),
                flags,
            )
        };
        match NonNull::new(handle) {
            Some(handle) => Ok(Self {
                handle,
                context,
                pool,
                _owns: PhantomData,
            }),
            None => {
                // SAFETY: registration failed, so the kernel makes no further
                // call with this context; the block holds an initialised value
                // that is moved out once and then freed with its layout.
                let context = unsafe { take_context(context, pool) };
                let reported = context.status.load(Ordering::Relaxed);
                let status = if reported != STATUS_SUCCESS {
                    reported
                } else {
                    STATUS_UNSUCCESSFUL
                };
                Err(RegisterError {
                    status,
                    parts: context.parts,
                })
            }
        }
    }
}

impl<C: Component> Registration<C> {
    /// The components.
    pub fn parts(&self) -> &C {
        &self.context().parts
    }

    /// The status of the last Start this registration's callback failed, if
    /// any (a vetoed hot-add), like the seed's `CallbackStatus`.
    pub fn last_failure(&self) -> Option<NTSTATUS> {
        let status = self.context().status.load(Ordering::Relaxed);
        (status != STATUS_SUCCESS).then_some(status)
    }

    /// Deregisters (waiting for callbacks in flight) and gives the components
    /// back.
    pub fn deregister(self) -> C {
        let this = ManuallyDrop::new(self);
        this.deregister_callback();
        // SAFETY: deregistered, so the kernel no longer uses the context; the
        // registration is not dropped (ManuallyDrop), so this is the only move
        // out of the block and its only free.
        unsafe { take_context(this.context, this.pool) }.parts
    }

    fn context(&self) -> &CallbackContext<C> {
        // SAFETY: the block holds an initialised context from registration until
        // drop; only shared references are made to it.
        unsafe { self.context.as_ref() }
    }

    fn deregister_callback(&self) {
        // SAFETY: the handle came from a successful registration and is
        // deregistered exactly once (by drop or `deregister`, never both);
        // PASSIVE_LEVEL per this type's contract.
        unsafe { KeDeregisterProcessorChangeCallback(self.handle.as_ptr()) };
    }
}

impl<C: Component> Drop for Registration<C> {
    fn drop(&mut self) {
        // First: no callback runs after this returns.
        self.deregister_callback();
        // Then the components, then their block.
        // SAFETY: as in `deregister`: the kernel is done with the context, and
        // drop runs once.
        drop(unsafe { take_context(self.context, self.pool) });
    }
}

impl<C: Component> fmt::Debug for Registration<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("handle", &self.handle)
            .field("last_failure", &self.last_failure())
            .finish_non_exhaustive()
    }
}

/// Moves the context out of its block and frees the block.
///
/// # Safety
/// `context` holds an initialised value in a block from `pool` with its
/// layout; nothing uses it afterwards.
unsafe fn take_context<C>(
    context: NonNull<CallbackContext<C>>,
    pool: PoolAlloc,
) -> CallbackContext<C> {
    // SAFETY: initialised and not used again (caller).
    let value = unsafe { ptr::read(context.as_ptr()) };
    // SAFETY: allocated from `pool` with this layout (caller).
    unsafe { pool.deallocate(context.cast(), Layout::new::<CallbackContext<C>>()) };
    value
}
