//! The one error type of the library: every failure is a value.

use core::fmt;

use crate::{PinError, ProcessorIndex};

/// Why an operation did not happen. Nothing was changed and nothing leaked when
/// one of these comes back.
///
/// ```
/// use perproc::Error;
/// assert_eq!(Error::OutOfMemory.to_string(), "out of memory");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The allocator refused memory.
    OutOfMemory,
    /// The processor index is at or past the container's capacity.
    IndexOutOfRange {
        /// The index that was asked for.
        index: ProcessorIndex,
        /// The container's capacity (indexes `0..capacity` are accepted).
        capacity: usize,
    },
    /// Another event for this processor is being handled right now.
    Busy,
    /// The processor has no prepared slot (for example Complete without Start).
    NotPrepared,
    /// The processor is online: a completed add is never rolled back.
    AlreadyOnline,
    /// A size or count does not fit the address space.
    CapacityOverflow,
    /// A bounded resource is exhausted (a pool's total, a full queue).
    Exhausted,
    /// A platform status (on Windows an `NTSTATUS`) chosen by a constructor; the
    /// driver shim reports it unchanged.
    Status(i32),
    /// The caller could not be pinned to its processor (for example above
    /// `DISPATCH_LEVEL`).
    Pin(PinError),
}

impl From<PinError> for Error {
    fn from(error: PinError) -> Self {
        Error::Pin(error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OutOfMemory => f.write_str("out of memory"),
            Error::IndexOutOfRange { index, capacity } => {
                write!(f, "processor {index} is past the capacity of {capacity}")
            }
            Error::Busy => f.write_str("another event for this processor is in progress"),
            Error::NotPrepared => f.write_str("the processor has no prepared slot"),
            Error::AlreadyOnline => f.write_str("the processor is already online"),
            Error::CapacityOverflow => f.write_str("size overflows the address space"),
            Error::Exhausted => f.write_str("the resource is exhausted"),
            Error::Status(status) => write!(f, "status {status:#010x}"),
            Error::Pin(error) => write!(f, "{error}"),
        }
    }
}

impl core::error::Error for Error {}
