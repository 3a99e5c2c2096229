//! [`PoolBox`]: an object of a [`PerCpuPool`], returned to it when dropped.

use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use super::PerCpuPool;
use crate::{PinGuard, Platform, RawAlloc};

/// An object allocated from a [`PerCpuPool`], like a `Box` whose memory is the
/// pool's. It borrows the pool, so the pool cannot be dropped under it.
///
/// Dropping it drops the value and gives the slot to the magazines of the
/// processor the dropping thread runs on (it pins for that, through the pool's
/// platform); [`free`](Self::free) does the same with a pin the caller already
/// holds. Either way a free on another processor than the allocation's is
/// normal: completions migrate.
///
/// ```
/// use perproc::{host::HostPlatform, Limits, PerCpuPool, Platform, ProcessorIndex};
///
/// let platform = HostPlatform::new(4)?;
/// let pool = PerCpuPool::<[u8; 64], _>::new(&platform, Limits { total: 1024, per_cpu: 64 })?;
/// pool.prepare(ProcessorIndex::ZERO)?;
///
/// let pin = platform.pin();
/// let mut request = pool.alloc(&pin, [0u8; 64])?;
/// request[0] = 7;
/// request.free(&pin); // or `drop(request)`, which pins by itself
/// # Ok::<(), perproc::Error>(())
/// ```
pub struct PoolBox<'p, T, P: Platform, A: RawAlloc = <P as Platform>::Alloc> {
    pool: &'p PerCpuPool<T, P, A>,
    object: NonNull<T>,
    /// Owns a `T`.
    _owns: PhantomData<T>,
}

// SAFETY: the box owns its `T` (so `T: Send` to move it) and may free it into
// the pool from the thread it is moved to (so the pool must be shareable).
unsafe impl<T: Send, P: Platform, A: RawAlloc> Send for PoolBox<'_, T, P, A> where
    PerCpuPool<T, P, A>: Sync
{
}

// SAFETY: `&PoolBox` only gives `&T` (so `T: Sync`) and `&PerCpuPool`.
unsafe impl<T: Sync, P: Platform, A: RawAlloc> Sync for PoolBox<'_, T, P, A> where
    PerCpuPool<T, P, A>: Sync
{
}

impl<'p, T, P: Platform, A: RawAlloc> PoolBox<'p, T, P, A> {
    /// Wraps an object of `pool`.
    ///
    /// # Safety
    ///
    /// `object` came from `pool` (an allocation or [`into_raw`](Self::into_raw)),
    /// holds a live `T`, and is owned by the caller, who gives it up.
    pub unsafe fn from_raw(pool: &'p PerCpuPool<T, P, A>, object: NonNull<T>) -> Self {
        Self {
            pool,
            object,
            _owns: PhantomData,
        }
    }

    /// Gives up the handle without freeing: the object stays allocated until
    /// [`PerCpuPool::free_raw`] (for intrusive lists). It counts as outstanding.
    pub fn into_raw(self) -> NonNull<T> {
        ManuallyDrop::new(self).object
    }

    /// Drops the value and frees the slot on the processor `pin` holds: the
    /// fast path when the caller is pinned already (a DPC).
    #[inline]
    pub fn free<G: PinGuard + ?Sized>(self, pin: &G) {
        let this = ManuallyDrop::new(self);
        // SAFETY: the box owns a live object of this pool and gives it up here
        // (`this` is never dropped).
        unsafe { this.pool.free_raw(pin, this.object) }
    }

    /// The pool the object belongs to.
    pub fn pool(&self) -> &'p PerCpuPool<T, P, A> {
        self.pool
    }
}

impl<T, P: Platform, A: RawAlloc> Drop for PoolBox<'_, T, P, A> {
    fn drop(&mut self) {
        let pin = self.pool.platform().pin();
        // SAFETY: the box owns a live object of this pool; it is not used again.
        unsafe { self.pool.free_raw(&pin, self.object) }
    }
}

impl<T, P: Platform, A: RawAlloc> Deref for PoolBox<'_, T, P, A> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the box owns a live, initialised `T` that nothing else aliases.
        unsafe { self.object.as_ref() }
    }
}

impl<T, P: Platform, A: RawAlloc> DerefMut for PoolBox<'_, T, P, A> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { self.object.as_mut() }
    }
}

impl<T: fmt::Debug, P: Platform, A: RawAlloc> fmt::Debug for PoolBox<'_, T, P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
