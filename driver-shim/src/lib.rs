//! `perproc-wdk`: binds [perproc]'s per-processor containers to
//! Windows' processor hot-add callback (`KeRegisterProcessorChangeCallback`).
//!
//! A driver's first contact with perproc is the seed document's ten lines in
//! `DriverEntry` and `Unload`; this crate makes them impossible to get wrong:
//!
//! - [`Registration`] registers the driver's per-CPU components with
//!   `KE_PROCESSOR_CHANGE_ADD_EXISTING`; on failure it returns the status the
//!   callback stored (or `STATUS_UNSUCCESSFUL`), exactly as the seed does; it
//!   owns the components, and dropping it (in `Unload`) deregisters before
//!   they are torn down.
//! - The callback it registers validates every pointer, decodes the state,
//!   cross-checks `NtNumber` against `ProcNumber` (counting disagreements as a
//!   diagnostic, never refusing on them), dispatches to the components
//!   (AddStart to `prepare`, AddComplete to `commit`, AddFailure to `abort`),
//!   writes `*OperationStatus` only when an AddStart fails ([`status_of`] maps
//!   the error), ignores unknown states, and cannot panic.
//! - [`KernelPlatform`] is perproc's [`Platform`](perproc::Platform) over kernel
//!   calls: the current processor, pinning by raising to `DISPATCH_LEVEL`, the
//!   maximum processor count, and [`PoolAlloc`] (nonpaged pool with a tag, any
//!   alignment honoured).
//! - [`DriverSlot`] keeps the driver's state from `DriverEntry` to `Unload`,
//!   and lends it to dispatch routines under rundown protection
//!   ([`DriverSlot::with`]); [`seed`] is the seed's driver written with all of
//!   the above.
//!
//! All kernel names come through one seam, [`sys`]: `wdk-sys` in a driver
//! (built for Windows with the WDK), or `sim`, a simulated kernel with the
//! same names and signatures that the tests, the examples and the loom models
//! run the same shim code on. The simulator is chosen by the `sim` cargo
//! feature, and is the only provider off Windows (so it is always on there);
//! on a Windows host the tests and examples turn the feature on and drivers
//! leave it off.
//!
//! # Requirements on the driver
//!
//! - Register and drop registrations at `PASSIVE_LEVEL`, never from inside a
//!   processor-change callback.
//! - Components must not panic (perproc's containers do not; constructors you
//!   pass them must not either): a panic in the callback is a bugcheck.
//! - Code running above `DISPATCH_LEVEL` (ISRs) cannot use perproc state:
//!   pinning there fails with `PinError::InterruptLevel`; queue a DPC.
//!
//! # Example (runs here on the simulator; the same code runs on Windows)
//!
//! ```ignore-windows
//! use perproc_wdk::seed::{self, SeedDriver, SEED_TAG};
//! use perproc_wdk::{sim::Kernel, sys, DriverSlot};
//!
//! static DRIVER: DriverSlot<SeedDriver> = DriverSlot::new();
//!
//! let kernel = Kernel::new(&[64], 4)?;
//! let _on = kernel.enter()?;
//! assert_eq!(seed::driver_entry(&DRIVER), sys::STATUS_SUCCESS); // DriverEntry
//! assert!(kernel.hot_add_next()?.added());                      // a hot-add
//! seed::driver_unload(&DRIVER);                                 // Unload
//! assert_eq!(kernel.pool().live_bytes(SEED_TAG), 0);
//! assert!(kernel.violations().is_empty());
//! # Ok::<(), perproc_wdk::sim::SimError>(())
//! ```
#![no_std]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented,
    clippy::as_conversions,
    clippy::arithmetic_side_effects,
    missing_docs
)]

#[cfg(any(feature = "sim", not(windows)))]
extern crate std;

pub mod sys;

mod callback;
mod platform;
mod pool_alloc;
mod registration;
pub mod seed;
mod slot;
mod status;

#[cfg(any(feature = "sim", not(windows)))]
pub mod sim;

pub use callback::{decode, decode_checked, dispatch, mismatched_notifications, Rejected};
pub use platform::KernelPlatform;
pub use pool_alloc::{pool_tag, PoolAlloc, POOL_ALIGNMENT};
pub use registration::{RegisterError, Registration, Replay};
pub use slot::DriverSlot;
pub use status::{nt_success, status_of};
