//! The seed document's driver ("Registering for Synchronous Driver
//! Notification"), in Rust: `DriverEntry` registers the processor-change
//! callback with `KE_PROCESSOR_CHANGE_ADD_EXISTING` and returns the callback's
//! status when registration fails; `Unload` deregisters.
//!
//! The flow is written once, here, over the [`sys`](crate::sys) seam. On
//! Windows, `driver-shim/seed-driver` exports it as a WDM driver's
//! `DriverEntry` and `DriverUnload`; off Windows, the tests run it on the
//! simulated kernel.
//!
//! ```ignore-windows
//! use perproc_wdk::seed::{self, SeedDriver, SEED_TAG};
//! use perproc_wdk::{sim::Kernel, sys, DriverSlot};
//!
//! static DRIVER: DriverSlot<SeedDriver> = DriverSlot::new();
//! let kernel = Kernel::new(&[64, 64], 8)?;
//! let _on = kernel.enter()?;
//!
//! assert_eq!(seed::driver_entry(&DRIVER), sys::STATUS_SUCCESS);
//! assert!(kernel.hot_add_index(64)?.added());   // processor 64: group 1, number 0
//! // The I/O path, on processor 0: a dispatch routine reaches the driver's
//! // state through the slot (rundown-protected against Unload).
//! assert!(seed::on_request(&DRIVER));
//! assert_eq!(DRIVER.with(seed::total_requests), Some(1));
//! seed::driver_unload(&DRIVER);
//! assert!(!seed::on_request(&DRIVER));          // unloaded: refused, not a crash
//! assert_eq!(kernel.pool().live_bytes(SEED_TAG), 0);
//! # Ok::<(), perproc_wdk::sim::SimError>(())
//! ```

use core::sync::atomic::{AtomicU64, Ordering};

use perproc::{Error, InitFn, PerCpu, Platform};

use crate::platform::KernelPlatform;
use crate::pool_alloc::pool_tag;
use crate::registration::Registration;
use crate::slot::DriverSlot;
use crate::status::status_of;
use crate::sys::{NTSTATUS, STATUS_SUCCESS};

/// The seed driver's pool tag.
pub const SEED_TAG: u32 = pool_tag(*b"Seed");

/// Scratch bytes each processor gets (a stand-in for a per-CPU request buffer).
pub const SCRATCH: usize = 256;

/// The seed driver's per-CPU parts: a request counter and a scratch buffer per
/// processor. A [`Component`](perproc::Component) through
/// [`perproc::components!`]: AddStart prepares `requests` then `scratch`
/// (rolling `requests` back if `scratch` fails), AddComplete commits both,
/// AddFailure aborts both.
pub struct SeedParts {
    /// The platform the parts were built on (the I/O path pins through it).
    pub platform: KernelPlatform,
    /// Requests seen on each processor.
    pub requests: PerCpu<AtomicU64, KernelPlatform>,
    /// A buffer per processor.
    pub scratch: PerCpu<[u8; SCRATCH], KernelPlatform>,
}

perproc::components!(SeedParts => requests, scratch);

impl SeedParts {
    /// Empty parts sized for every processor the platform can have.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when a table cannot be allocated.
    pub fn new(platform: &KernelPlatform) -> Result<Self, Error> {
        let counter: InitFn<AtomicU64> = |_| Ok(AtomicU64::new(0));
        let buffer: InitFn<[u8; SCRATCH]> = |_| Ok([0; SCRATCH]);
        Ok(Self {
            platform: *platform,
            requests: PerCpu::new(platform, counter)?,
            scratch: PerCpu::new(platform, buffer)?,
        })
    }
}

/// The driver's state between `DriverEntry` and `Unload`.
pub type SeedDriver = Registration<SeedParts>;

/// `DriverEntry`'s body: build the per-CPU parts, register (replaying the
/// active processors), keep the registration in `slot`. Returns what
/// `DriverEntry` returns: `STATUS_SUCCESS`, or (as in the seed) the status the
/// callback reported when registration returned NULL, else
/// `STATUS_UNSUCCESSFUL`. On failure everything built is freed again ("perform
/// any necessary cleanup").
pub fn driver_entry(slot: &DriverSlot<SeedDriver>) -> NTSTATUS {
    let platform = match KernelPlatform::new(SEED_TAG) {
        Ok(platform) => platform,
        Err(error) => return status_of(error),
    };
    let parts = match SeedParts::new(&platform) {
        Ok(parts) => parts,
        Err(error) => return status_of(error),
    };
    let registration = match Registration::register(parts, platform.allocator()) {
        Ok(registration) => registration,
        Err(failed) => return failed.status,
    };
    match slot.install(registration, platform.allocator()) {
        Ok(()) => STATUS_SUCCESS,
        Err((registration, status)) => {
            drop(registration);
            status
        }
    }
}

/// `Unload`'s body: wait for dispatch routines using the driver (the slot's
/// rundown), deregister (waiting for callbacks in flight), then free the
/// per-CPU parts.
pub fn driver_unload(slot: &DriverSlot<SeedDriver>) {
    drop(slot.take());
}

/// A dispatch routine's body: count the request through the driver in `slot`.
/// `false` if the driver is not loaded (or unloading) or the processor has no
/// slot yet.
pub fn on_request(slot: &DriverSlot<SeedDriver>) -> bool {
    slot.with(count_request).unwrap_or(false)
}

/// What the driver's I/O path does per request: count it on the current
/// processor, at `DISPATCH_LEVEL`, without an interlocked instruction being
/// needed for exclusivity. `false` if the processor has no slot yet (or the
/// caller cannot pin: above `DISPATCH_LEVEL`).
pub fn count_request(driver: &SeedDriver) -> bool {
    let parts = driver.parts();
    parts
        .platform
        .pinned(|pin| match parts.requests.current(pin) {
            Some(counter) => {
                // Pinned: only this thread touches this processor's counter, so
                // a load and a store suffice.
                counter.store(
                    counter.load(Ordering::Relaxed).wrapping_add(1),
                    Ordering::Relaxed,
                );
                true
            }
            None => false,
        })
        .unwrap_or(false)
}

/// Requests counted over every processor (retired slots included: a count
/// never goes down when an add fails).
pub fn total_requests(driver: &SeedDriver) -> u64 {
    driver
        .parts()
        .requests
        .iter_all()
        .fold(0u64, |sum, (_, c)| {
            sum.wrapping_add(c.load(Ordering::Relaxed))
        })
}
