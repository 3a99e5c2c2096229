//! `NTSTATUS` for the shim: what a failed AddStart tells the kernel.

use perproc::Error;

use crate::sys::{
    NTSTATUS, STATUS_DEVICE_BUSY, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_STATE,
    STATUS_INVALID_PARAMETER, STATUS_UNSUCCESSFUL,
};

/// Whether `status` is a success or informational status (`NT_SUCCESS`).
///
/// ```
/// use perproc_wdk::{nt_success, sys};
/// assert!(nt_success(sys::STATUS_SUCCESS));
/// assert!(!nt_success(sys::STATUS_INSUFFICIENT_RESOURCES));
/// ```
pub const fn nt_success(status: NTSTATUS) -> bool {
    status >= 0
}

/// The status a failed AddStart writes to `*OperationStatus` for `error`.
///
/// | error | status |
/// |---|---|
/// | `OutOfMemory`, `CapacityOverflow`, `Exhausted` | `STATUS_INSUFFICIENT_RESOURCES` (the allocation or the bound that refused) |
/// | `Status(s)` with `s` a failure | `s`, unchanged |
/// | `Status(s)` with `s` not a failure | `STATUS_UNSUCCESSFUL` (a Start that failed must say so) |
/// | `IndexOutOfRange` | `STATUS_INVALID_PARAMETER` (the kernel named a processor past the maximum count) |
/// | `Busy` | `STATUS_DEVICE_BUSY` (another event for that processor is in flight) |
/// | `NotPrepared`, `AlreadyOnline` | `STATUS_INVALID_DEVICE_STATE` (events out of order) |
/// | anything else | `STATUS_UNSUCCESSFUL` |
///
/// Every result is a failure status (negative).
///
/// ```
/// use perproc::Error;
/// use perproc_wdk::{status_of, sys};
/// assert_eq!(status_of(Error::OutOfMemory), sys::STATUS_INSUFFICIENT_RESOURCES);
/// assert_eq!(status_of(Error::Status(sys::STATUS_DEVICE_BUSY)), sys::STATUS_DEVICE_BUSY);
/// assert_eq!(status_of(Error::Status(0)), sys::STATUS_UNSUCCESSFUL);
/// ```
pub fn status_of(error: Error) -> NTSTATUS {
    match error {
        Error::OutOfMemory | Error::CapacityOverflow | Error::Exhausted => {
            STATUS_INSUFFICIENT_RESOURCES
        }
        Error::Status(status) if !nt_success(status) => status,
        Error::IndexOutOfRange { .. } => STATUS_INVALID_PARAMETER,
        Error::Busy => STATUS_DEVICE_BUSY,
        Error::NotPrepared | Error::AlreadyOnline => STATUS_INVALID_DEVICE_STATE,
        _ => STATUS_UNSUCCESSFUL,
    }
}
