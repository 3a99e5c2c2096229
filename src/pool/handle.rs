//! [`PoolBox`]: an object of a [`PerCpuPool`](super::PerCpuPool), owned.

use core::fmt;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

use super::home::Home;

/// An object allocated from a [`PerCpuPool`](super::PerCpuPool), like a `Box`
/// whose memory is the pool's.
///
/// Owned: it does not borrow the pool, so a driver keeps it anywhere (in a
/// queue beside the pool, in a `'static` driver struct, on another processor).
/// Give it back with the pool's [`free`](super::PerCpuPool::free), on the
/// processor the caller is pinned to: the fast path, no lock, no interlocked
/// instruction, any processor (completions migrate). Dropping it instead is
/// safe anywhere, unpinned, at any IRQL, even after the pool is gone: the value
/// is dropped and the memory goes back to the pool's *home*, a list the pool
/// drains under its lock (one compare-and-swap).
///
/// ```
/// use perproc::{host::HostPlatform, Component, Limits, PerCpuPool, Platform, ProcessorIndex};
///
/// let platform = HostPlatform::new(4)?;
/// let pool = PerCpuPool::<[u8; 64], _>::new(&platform, Limits { total: 1024, per_cpu: 64 })?;
/// let _ = pool.prepare(ProcessorIndex::ZERO)?;
///
/// let mut request = platform.pinned(|pin| pool.alloc(pin, [0u8; 64]))??;
/// request[0] = 7;
/// let request = std::thread::spawn(move || request).join().unwrap(); // owned: it moves
/// platform.pinned(|pin| pool.free(pin, request))?;                   // or `drop(request)`
/// assert_eq!(pool.stats().outstanding, 0);
/// # Ok::<(), perproc::Error>(())
/// ```
#[must_use = "dropping a PoolBox gives the object back through the pool's home list; free it on a pin for the fast path"]
pub struct PoolBox<T> {
    object: NonNull<T>,
    home: NonNull<Home>,
    /// Owns a `T`.
    _owns: PhantomData<T>,
}

// SAFETY: the box owns its `T` (so `T: Send` to move it); its drop pushes onto
// the home list, which is made for any thread (atomics only).
unsafe impl<T: Send> Send for PoolBox<T> {}

// SAFETY: `&PoolBox` only gives `&T`.
unsafe impl<T: Sync> Sync for PoolBox<T> {}

impl<T> PoolBox<T> {
    /// Wraps a live object of the pool whose home is `home`.
    ///
    /// # Safety
    ///
    /// `object` is a slot of that pool holding a live `T`, owned by the caller,
    /// who gives it up; `home` is that pool's home.
    pub(super) unsafe fn new(object: NonNull<T>, home: NonNull<Home>) -> Self {
        Self {
            object,
            home,
            _owns: PhantomData,
        }
    }

    /// Gives up the handle without freeing: the object stays allocated until
    /// [`PerCpuPool::free_raw`](super::PerCpuPool::free_raw) (for intrusive
    /// lists). It counts as outstanding.
    pub fn into_raw(self) -> NonNull<T> {
        ManuallyDrop::new(self).object
    }

    /// Takes the object out of the box, giving up ownership without dropping
    /// (for the pool's free path).
    pub(super) fn into_parts(self) -> (NonNull<T>, NonNull<Home>) {
        let this = ManuallyDrop::new(self);
        (this.object, this.home)
    }

    /// Whether the object belongs to the pool whose home is `home`.
    pub(super) fn is_from(&self, home: NonNull<Home>) -> bool {
        self.home == home
    }
}

impl<T> Drop for PoolBox<T> {
    fn drop(&mut self) {
        // SAFETY: the box owns a live `T`, dropped once, here; then its slot is
        // free and pushed onto its pool's home, which stays valid while any
        // object of the pool is outstanding (the pool leaks it otherwise), and
        // this one is until the push completes.
        unsafe {
            ptr::drop_in_place(self.object.as_ptr());
            self.home.as_ref().push(self.object.cast());
        }
    }
}

impl<T> Deref for PoolBox<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the box owns a live, initialised `T` that nothing else aliases.
        unsafe { self.object.as_ref() }
    }
}

impl<T> DerefMut for PoolBox<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { self.object.as_mut() }
    }
}

impl<T: fmt::Debug> fmt::Debug for PoolBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
