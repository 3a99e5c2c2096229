//! The atomics and the cell the core is built on.
//!
//! Under `cfg(loom)` they are loom's, so loom sees every slot and table access
//! (loom cannot see memory written through raw pointers; everything a reader can
//! reach after a publication lives in [`UnsafeCell`] or an atomic from here).
//! Elsewhere they are `core`'s, with the same small API.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize};

// 64-bit counters need 64-bit atomic loads and stores (every Windows target has
// them: x86 through cmpxchg8b/SSE, x64, arm64); the counter module is built only
// where they exist.
#[cfg(all(not(loom), target_has_atomic = "64"))]
pub(crate) use core::sync::atomic::AtomicU64;
#[cfg(all(loom, target_has_atomic = "64"))]
pub(crate) use loom::sync::atomic::AtomicU64;

pub(crate) use core::sync::atomic::Ordering;

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// The ordering of the stores that publish a slot to readers.
///
/// `Release`, always, except in the mutant build (`--cfg perproc_mutant="relaxed_publish"`)
/// that the test command uses to prove the loom models catch a weakened publication.
#[cfg(not(perproc_mutant = "relaxed_publish"))]
pub(crate) const PUBLISH: Ordering = Ordering::Release;
#[cfg(perproc_mutant = "relaxed_publish")]
pub(crate) const PUBLISH: Ordering = Ordering::Relaxed;

/// `core::cell::UnsafeCell` behind loom's closure-based API.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }
}

#[cfg(not(loom))]
impl<T: bytemuck::Zeroable> UnsafeCell<T> {
    /// Zeroes the cell at `cell` where it is and returns its value: for values
    /// too large for a kernel stack.
    ///
    /// # Safety
    /// `cell` is valid for writes and aligned, and the value is not used through
    /// any other pointer while the reference lives.
    #[inline]
    pub(crate) unsafe fn zeroed_in_place<'a>(cell: *mut Self) -> &'a mut T {
        // `UnsafeCell<T>` (this one and core's) has `T`'s layout.
        let value = cell.cast::<T>();
        // SAFETY: valid for writes and aligned (caller); all-zero bytes are a
        // valid `T` (`Zeroable`), so the reference is to an initialised value,
        // not aliased (caller).
        unsafe {
            value.write_bytes(0, 1);
            &mut *value
        }
    }
}

#[cfg(not(loom))]
impl<T: ?Sized> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    #[inline(always)]
    #[allow(dead_code)] // used by the containers that mutate per-processor state
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// The lock of slow paths that move work in batches (the pool's depot).
///
/// `spin`'s test-and-test-and-set lock: no allocation, no OS, usable at
/// `DISPATCH_LEVEL`. It does not raise the IRQL itself, so it must only be taken
/// by code that is pinned (a lock holder preempted at `PASSIVE_LEVEL` would leave
/// a DPC on its processor spinning forever). Under `cfg(loom)` it is loom's
/// mutex, so the models see every acquisition.
pub(crate) struct Mutex<T> {
    #[cfg(not(loom))]
    inner: spin::mutex::SpinMutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

/// The guard of a locked [`Mutex`].
#[cfg(not(loom))]
pub(crate) type MutexGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T>;
/// The guard of a locked [`Mutex`].
#[cfg(loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: spin::mutex::SpinMutex::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(not(loom))]
        return self.inner.lock();
        // Nothing panics while holding it, so it is never poisoned; take it anyway.
        #[cfg(loom)]
        return match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
    }

    pub(crate) fn get_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        return self.inner.get_mut();
        #[cfg(loom)]
        return match self.inner.get_mut() {
            Ok(value) => value,
            Err(poisoned) => poisoned.into_inner(),
        };
    }
}

/// Loom's cell has state of its own, so under loom the zeroed value is built
/// and moved in (loom models use small values).
#[cfg(loom)]
pub(crate) trait ZeroedInPlace<T> {
    /// # Safety
    /// As the non-loom `zeroed_in_place`.
    unsafe fn zeroed_in_place<'a>(cell: *mut Self) -> &'a mut T;
}

#[cfg(loom)]
impl<T: bytemuck::Zeroable> ZeroedInPlace<T> for UnsafeCell<T> {
    unsafe fn zeroed_in_place<'a>(cell: *mut Self) -> &'a mut T {
        // SAFETY: valid for writes and aligned (caller); the cell's value is
        // not used elsewhere while the reference lives (caller).
        unsafe {
            cell.write(UnsafeCell::new(T::zeroed()));
            (*cell).with_mut(|value| &mut *value)
        }
    }
}
