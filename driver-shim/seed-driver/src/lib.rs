//! The seed document's driver ("Registering for Synchronous Driver
//! Notification") as a WDM driver: `DriverEntry` registers the driver's
//! per-CPU parts for processor hot-add with `KE_PROCESSOR_CHANGE_ADD_EXISTING`
//! and returns the callback's status if registration fails; `DriverUnload`
//! deregisters, then frees the parts.
//!
//! The flow itself is `perproc_wdk::seed`, which the perproc tests run on the
//! simulated kernel; this crate only exports it under the names Windows calls.
//! It compiles only on Windows with the WDK (`cargo make`).
#![no_std]

#[cfg(not(test))]
extern crate wdk_panic;

use perproc_wdk::seed::{self, SeedDriver};
use perproc_wdk::{nt_success, DriverSlot};
use wdk_sys::{DRIVER_OBJECT, NTSTATUS, PCUNICODE_STRING, STATUS_INVALID_PARAMETER};

/// The driver's state from `DriverEntry` to `DriverUnload`.
static DRIVER: DriverSlot<SeedDriver> = DriverSlot::new();

/// `DriverEntry`.
///
/// # Safety
/// Called once by the I/O manager at PASSIVE_LEVEL with its driver object.
// SAFETY: "DriverEntry" is the symbol the kernel loader calls; nothing else in
// the image exports it.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    let status = seed::driver_entry(&DRIVER);
    if nt_success(status) {
        // SAFETY: the I/O manager passes its driver object, which DriverEntry
        // may fill in; NULL is refused by `as_mut`.
        match unsafe { driver.as_mut() } {
            Some(driver) => driver.DriverUnload = Some(driver_unload),
            None => {
                seed::driver_unload(&DRIVER);
                return STATUS_INVALID_PARAMETER;
            }
        }
    }
    status
}

/// `DriverUnload`: deregisters (waiting for callbacks in flight), then frees
/// the per-CPU parts.
///
/// # Safety
/// Called once by the I/O manager at PASSIVE_LEVEL, after `DriverEntry`
/// succeeded.
unsafe extern "C" fn driver_unload(_driver: *mut DRIVER_OBJECT) {
    seed::driver_unload(&DRIVER);
}
