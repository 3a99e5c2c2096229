//! [`DriverSlot`]: where a driver keeps its state between `DriverEntry` and
//! `Unload`.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;
// Loom's atomics under `cfg(loom)`, so the loom models (loom-tests/tests/slot.rs)
// see every access; `core`'s otherwise.
#[cfg(not(loom))]
use core::sync::atomic::{AtomicPtr, AtomicUsize};
#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, AtomicUsize};

use perproc::RawAlloc;

use crate::pool_alloc::PoolAlloc;
use crate::sys::{NTSTATUS, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_STATE};

struct Stored<T> {
    pool: PoolAlloc,
    value: T,
}

/// Rundown word: bit 0 is "closing", the rest counts active users.
const CLOSING: usize = 1;
/// One active user.
const USER: usize = 2;

/// A `static` home for a driver's state (typically its [`Registration`]),
/// in nonpaged pool: `DriverEntry` installs it, dispatch routines use it
/// through [`with`](Self::with), `Unload` takes it out and drops it. No `alloc`
/// crate or global allocator needed.
///
/// The slot is rundown-protected, like the kernel's `EX_RUNDOWN_REF`:
/// [`with`](Self::with) counts itself as an active user for the duration of
/// its closure; [`take`](Self::take) marks the slot closing (new users get
/// `None`), waits until the active users have left, and only then moves the
/// value out. So a dispatch routine racing `Unload` either runs on the live
/// state or is told it is gone, never runs on freed memory.
///
/// ```ignore-windows
/// use perproc_wdk::{sim::Kernel, DriverSlot, PoolAlloc};
///
/// static STATE: DriverSlot<[u64; 4]> = DriverSlot::new();
/// let kernel = Kernel::new(&[4], 1)?;
/// let _on = kernel.enter()?;
/// assert_eq!(STATE.with(|v| v[2]), None);                       // not installed yet
/// STATE.install([1, 2, 3, 4], PoolAlloc::new(7)).unwrap();
/// assert!(STATE.install([0; 4], PoolAlloc::new(7)).is_err());   // occupied
/// assert_eq!(STATE.with(|v| v[2]), Some(3));                    // a dispatch routine
/// assert_eq!(STATE.take(), Some([1, 2, 3, 4]));                 // Unload
/// assert_eq!(STATE.with(|v| v[2]), None);
/// assert_eq!(kernel.pool().live_bytes(7), 0);
/// # Ok::<(), perproc_wdk::sim::SimError>(())
/// ```
///
/// [`Registration`]: crate::Registration
pub struct DriverSlot<T> {
    stored: AtomicPtr<Stored<T>>,
    /// [`CLOSING`] and the count of active users (in [`USER`]s).
    rundown: AtomicUsize,
    _owns: PhantomData<T>,
}

// SAFETY: the slot hands `&T` to any thread (`get`) and moves `T` out on any
// thread (`take`), so it is shareable when `T` is both `Send` and `Sync`.
unsafe impl<T: Send + Sync> Sync for DriverSlot<T> {}
// SAFETY: moving the slot moves the `T` it owns.
unsafe impl<T: Send> Send for DriverSlot<T> {}

impl<T> DriverSlot<T> {
    /// An empty slot (usable in a `static`).
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            stored: AtomicPtr::new(ptr::null_mut()),
            rundown: AtomicUsize::new(0),
            _owns: PhantomData,
        }
    }

    /// An empty slot (loom's atomics have no `const fn new`: under `cfg(loom)`
    /// a slot is made inside the model, not in a `static`).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            stored: AtomicPtr::new(ptr::null_mut()),
            rundown: AtomicUsize::new(0),
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
        // ordering: equivalent: the pointer is only compared with null, never
        // dereferenced, and when it is not null `install` returns its own value;
        // the compare-and-swap below decides and publishes either way.
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
            // ordering: equivalent: on failure the block found is not touched:
            // `install` frees its own (never published) block and returns its
            // own value, so there is nothing to acquire.
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

    /// Runs `f` on the installed value, as an active user of the slot: a
    /// concurrent [`take`](Self::take) waits until `f` has returned. `None`
    /// (and `f` does not run) when nothing is installed or the slot is being
    /// taken.
    ///
    /// Lock-free (a compare-and-swap loop, two atomics in all); callable at any
    /// IRQL up to `DISPATCH_LEVEL`. `f` must not call [`take`](Self::take) on
    /// this slot (it would wait for itself).
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        let mut now = self.rundown.load(Ordering::Relaxed);
        loop {
            if now & CLOSING != 0 {
                return None;
            }
            let next = now.checked_add(USER)?;
            // Acquire: pairs with `take` reopening the slot (Release), so a
            // user that comes after a `take` sees its swap: an empty slot,
            // never the freed block.
            match self.rundown.compare_exchange_weak(
                now,
                next,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => now = seen,
            }
        }
        let _user = ActiveUser(&self.rundown);
        let block = self.stored.load(Ordering::Acquire);
        // SAFETY: a published block holds an initialised value until `take`
        // frees it, and `take` frees only after marking the slot closing and
        // seeing no active user; this call counted itself as one (the
        // compare-and-swap above saw the slot not closing) until `_user` drops,
        // after `f` is done with the reference.
        unsafe { block.as_ref() }.map(|stored| f(&stored.value))
    }

    /// Takes the value out (and frees its block); `None` if empty.
    ///
    /// Marks the slot closing (new [`with`](Self::with) calls get `None`),
    /// waits (spinning) until every active user has left, moves the value out,
    /// then reopens the slot for a later [`install`](Self::install). Call it at
    /// `PASSIVE_LEVEL` (in `Unload`), never from inside `with`.
    pub fn take(&self) -> Option<T> {
        // Become the only closer.
        let mut now = self.rundown.load(Ordering::Relaxed);
        loop {
            if now & CLOSING != 0 {
                spin();
                now = self.rundown.load(Ordering::Relaxed);
                continue;
            }
            match self.rundown.compare_exchange_weak(
                now,
                now | CLOSING,
                // ordering: equivalent: nothing is read between this and the
                // wait loop below, whose Acquire load reads this value or a
                // later one; every change of `rundown` is a read-modify-write,
                // so that value is in the release sequence of every release
                // before this one (users leaving, an earlier `take` reopening)
                // and the loop synchronizes with each of them.
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => now = seen,
            }
        }
        // Wait for the active users; acquire pairs with their release, so their
        // uses of the value happen before it is moved out.
        while self.rundown.load(Ordering::Acquire) != CLOSING {
            spin();
        }
        // Acquire: pairs with the install's release, so the value moved out is
        // the one written.
        let block = NonNull::new(self.stored.swap(ptr::null_mut(), Ordering::AcqRel));
        // Release: a later `with` acquires it (its compare-and-swap), so it
        // sees the swap above.
        self.rundown.fetch_and(!CLOSING, Ordering::Release);
        // SAFETY: a published block, unpublished by the swap above, so this is
        // its only owner; no user of `with` holds a reference (none was active
        // while the slot was closing, and new ones find it empty), and no
        // reference from `get` outlives the value (its contract).
        block.map(|block| unsafe { free_block(block) }.value)
    }

    /// The installed value, without rundown protection (prefer
    /// [`with`](Self::with)).
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
    ///
    /// `true` also means the [`install`](Self::install) happened before this
    /// call (an acquire): what the installing thread did before it is visible
    /// to the caller, so a flag-like use ("is the driver initialised?") is
    /// sound.
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

/// An active user of a slot, counted until dropped (also when the closure
/// unwinds).
struct ActiveUser<'a>(&'a AtomicUsize);

impl Drop for ActiveUser<'_> {
    fn drop(&mut self) {
        // Release: the user's reads of the value happen before `take`, which
        // acquires the count, moves the value out.
        self.0.fetch_sub(USER, Ordering::Release);
    }
}

/// One turn of a spin-wait (loom's yield under `cfg(loom)`, so the models
/// make progress).
#[inline]
fn spin() {
    #[cfg(loom)]
    loom::hint::spin_loop();
    #[cfg(not(loom))]
    core::hint::spin_loop();
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
