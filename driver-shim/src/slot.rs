//! [`DriverSlot`]: where a driver keeps its state between `DriverEntry` and
//! `Unload`.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use perproc::RawAlloc;

use crate::pool_alloc::PoolAlloc;
use crate::sys::{NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_STATE};

struct Stored<T> {
    pool: PoolAlloc,
    value: T,
}

/// A `static` home for a driver's state (typically its [`Registration`]),
/// in nonpaged pool: `DriverEntry` installs it, `Unload` takes it out and drops
/// it. No `alloc` crate or global allocator needed.
///
/// ```ignore-windows
/// use perproc_wdk::{sim::Kernel, DriverSlot, PoolAlloc};
///
/// static STATE: DriverSlot<[u64; 4]> = DriverSlot::new();
/// let kernel = Kernel::new(&[4], 1)?;
/// let _on = kernel.enter()?;
/// STATE.install([1, 2, 3, 4], PoolAlloc::new(7)).unwrap();
/// assert!(STATE.install([0; 4], PoolAlloc::new(7)).is_err()); // occupied
/// assert_eq!(unsafe { STATE.get() }.map(|v| v[2]), Some(3));
/// assert_eq!(STATE.take(), Some([1, 2, 3, 4]));
/// assert_eq!(kernel.pool().live_bytes(7), 0);
/// # Ok::<(), perproc_wdk::sim::SimError>(())
/// ```
///
/// [`Registration`]: crate::Registration
pub struct DriverSlot<T> {
    stored: AtomicPtr<Stored<T>>,
    _owns: PhantomData<T>,
}

// SAFETY: the slot hands `&T` to any thread (`get`) and moves `T` out on any
// thread (`take`), so it is shareable when `T` is both `Send` and `Sync`.
unsafe impl<T: Send + Sync> Sync for DriverSlot<T> {}
// SAFETY: moving the slot moves the `T` it owns.
unsafe impl<T: Send> Send for DriverSlot<T> {}

impl<T> DriverSlot<T> {
    /// An empty slot (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            stored: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// Moves `value` into a pool block from `pool` and installs it.
    ///
    /// # Errors
    /// The value back, with `STATUS_INVALID_DEVICE_STATE` if the slot is
    /// occupied or `STATUS_INSUFFICIENT_RESOURCES` if the block could not be
    /// allocated.
    pub fn install(&self, value: T, pool: PoolAlloc) -> Result<(), (T, NTSTATUS)> {
        if !self.stored.load(Ordering::Acquire).is_null() {
            return Err((value, STATUS_INVALID_DEVICE_STATE));
        }
        let Ok(block) = pool.allocate(Layout::new::<Stored<T>>(), None) else {
            return Err((value, STATUS_INSUFFICIENT_RESOURCES));
        };
        let block = block.cast::<Stored<T>>();
        // SAFETY: a fresh block with the layout of Stored<T>.
        unsafe { block.as_ptr().write(Stored { pool, value }) };
        match self.stored.compare_exchange(
            ptr::null_mut(),
            block.as_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(()),
            Err(_) => {
                // SAFETY: the block was never published; move out and free it.
                let stored = unsafe { free_block(block) };
                Err((stored.value, STATUS_INVALID_DEVICE_STATE))
            }
        }
    }

    /// Takes the value out (and frees its block); `None` if empty.
    pub fn take(&self) -> Option<T> {
        let block = NonNull::new(self.stored.swap(ptr::null_mut(), Ordering::AcqRel))?;
        // SAFETY: a published block, unpublished by the swap above, so this is
        // its only owner; no reference from `get` outlives the value (its
        // contract).
        Some(unsafe { free_block(block) }.value)
    }

    /// The installed value.
    ///
    /// # Safety
    /// No [`take`](Self::take) may run until the returned reference is dropped
    /// (the I/O manager, for example, calls no dispatch routine once `Unload`
    /// has started).
    pub unsafe fn get(&self) -> Option<&T> {
        let block = self.stored.load(Ordering::Acquire);
        // SAFETY: a published block holds an initialised value until `take`,
        // which the caller promises does not run meanwhile.
        unsafe { block.as_ref() }.map(|stored| &stored.value)
    }

    /// Whether a value is installed.
    pub fn is_installed(&self) -> bool {
        !self.stored.load(Ordering::Acquire).is_null()
    }
}

impl<T> Default for DriverSlot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for DriverSlot<T> {
    fn drop(&mut self) {
        drop(self.take());
    }
}

impl<T> fmt::Debug for DriverSlot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverSlot")
            .field("installed", &self.is_installed())
            .finish()
    }
}

/// Moves the value out of its block and frees the block.
///
/// # Safety
/// `block` holds an initialised `Stored<T>` allocated from its own `pool` with
/// its layout, and nothing uses it afterwards.
unsafe fn free_block<T>(block: NonNull<Stored<T>>) -> Stored<T> {
    // SAFETY: initialised, used once (caller).
    let stored = unsafe { ptr::read(block.as_ptr()) };
    // SAFETY: allocated from `stored.pool` with this layout (caller).
    unsafe {
        stored
            .pool
            .deallocate(block.cast(), Layout::new::<Stored<T>>())
    };
    stored
}
