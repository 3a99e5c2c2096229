//! The `PROCESSOR_CALLBACK_FUNCTION` the shim registers: decode, validate,
//! dispatch to the driver's components, report a failed Start.

use core::fmt;
use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use perproc::{ChangeState, Component, ProcessorChange, ProcessorIndex, ProcessorNumber};

use crate::status::{nt_success, status_of};
use crate::sys::{
    KeGetProcessorIndexFromNumber, KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    KE_PROCESSOR_CHANGE_NOTIFY_STATE as STATE, NTSTATUS, PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    PNTSTATUS, PVOID, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};

/// Why a notification was not dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// A `State` this shim does not know (a newer kernel's): ignored, nothing
    /// written.
    UnknownState(i64),
    /// `NtNumber` is `INVALID_PROCESSOR_INDEX`, or `ProcNumber.Number` is 64 or
    /// more.
    OutOfRange,
    /// `KeGetProcessorIndexFromNumber(&ProcNumber)` is not `NtNumber`.
    Mismatch {
        /// What the notification said.
        nt_number: u32,
        /// What the kernel maps `ProcNumber` to.
        mapped: u32,
    },
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::UnknownState(state) => write!(f, "unknown notification state {state}"),
            Rejected::OutOfRange => f.write_str("processor index or number out of range"),
            Rejected::Mismatch { nt_number, mapped } => write!(
                f,
                "NtNumber {nt_number} disagrees with ProcNumber (index {mapped})"
            ),
        }
    }
}

/// Decodes a notification without asking the kernel anything: the state and
/// the ranges of both numbers.
///
/// ```
/// use perproc::ChangeState;
/// use perproc_wdk::{decode, sys, Rejected};
/// let mut raw = sys::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT::default();
/// raw.State = 2; // AddFailure
/// raw.NtNumber = 70;
/// raw.Status = sys::STATUS_INSUFFICIENT_RESOURCES;
/// raw.ProcNumber.Group = 1;
/// raw.ProcNumber.Number = 6;
/// let change = decode(&raw).unwrap();
/// assert_eq!(change.index.get(), 70);
/// assert_eq!(change.state, ChangeState::AddFailure { status: sys::STATUS_INSUFFICIENT_RESOURCES });
///
/// raw.State = 7;
/// assert_eq!(decode(&raw), Err(Rejected::UnknownState(7)));
/// ```
pub fn decode(raw: &KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT) -> Result<ProcessorChange, Rejected> {
    let state = if raw.State == STATE::KeProcessorAddStartNotify {
        ChangeState::AddStart
    } else if raw.State == STATE::KeProcessorAddCompleteNotify {
        ChangeState::AddComplete
    } else if raw.State == STATE::KeProcessorAddFailureNotify {
        ChangeState::AddFailure { status: raw.Status }
    } else {
        return Err(Rejected::UnknownState(i64::from(raw.State)));
    };
    let index = ProcessorIndex::new(raw.NtNumber).ok_or(Rejected::OutOfRange)?;
    let number = ProcessorNumber::new(raw.ProcNumber.Group, raw.ProcNumber.Number)
        .ok_or(Rejected::OutOfRange)?;
    Ok(ProcessorChange {
        state,
        index,
        number,
    })
}

/// [`decode`], then the cross-check public drivers make:
/// `KeGetProcessorIndexFromNumber(&ProcNumber) == NtNumber`. [`dispatch`]
/// does not refuse a notification that fails it (see
/// [`mismatched_notifications`]).
pub fn decode_checked(
    raw: &KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
) -> Result<ProcessorChange, Rejected> {
    let change = decode(raw)?;
    let mut number = raw.ProcNumber;
    // SAFETY: `number` is a local PROCESSOR_NUMBER, valid for the read the
    // routine makes; it may be called at any IRQL.
    let mapped = unsafe { KeGetProcessorIndexFromNumber(&mut number) };
    if mapped != raw.NtNumber {
        return Err(Rejected::Mismatch {
            nt_number: raw.NtNumber,
            mapped,
        });
    }
    Ok(change)
}

/// Notifications whose `ProcNumber` the kernel did not map to their `NtNumber`
/// (see [`dispatch`]), since the driver was loaded.
static MISMATCHES: AtomicU64 = AtomicU64::new(0);

/// How many notifications [`dispatch`] has seen, in this driver (every
/// registration), whose `KeGetProcessorIndexFromNumber(&ProcNumber)` was not
/// their `NtNumber`. A diagnostic only: such notifications are dispatched by
/// `NtNumber` like any other. A driver can report it (a debugger print, a
/// WMI counter); a non-zero value on a machine that hot-adds processors is
/// the answer to the open question below.
///
/// Why this does not veto: Microsoft's documentation of
/// `KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT` defines `NtNumber` as the processor's
/// index, and says nothing about whether `KeGetProcessorIndexFromNumber` can
/// already map a processor that is being added when its AddStart arrives. If
/// it cannot, a veto on disagreement would refuse every hot-add. So the index
/// is taken from `NtNumber` by definition, and the cross-check public drivers
/// make is only counted here.
pub fn mismatched_notifications() -> u64 {
    MISMATCHES.load(Ordering::Relaxed)
}

/// Runs one notification through `parts`; returns the failure to report, which
/// only a Start can have.
///
/// The processor is `NtNumber`. The cross-check of [`decode_checked`]
/// (`ProcNumber` mapping to `NtNumber`) is made, and a disagreement is only
/// counted ([`mismatched_notifications`]), never refused: see there why.
///
/// - AddStart: `prepare`; its error becomes [`status_of`]. A Start whose
///   numbers are out of range (`NtNumber` is `INVALID_PROCESSOR_INDEX`, or
///   `ProcNumber.Number` is 64 or more) is refused with
///   `STATUS_INVALID_PARAMETER`, and nothing is prepared.
/// - AddComplete: `commit`; AddFailure: `abort`. Their errors cannot be
///   reported to the kernel (and `abort` accepts what was never prepared); a
///   Complete or Failure out of range is ignored, since its Start was refused
///   the same way.
/// - An unknown state is ignored.
pub fn dispatch<C: Component + ?Sized>(
    parts: &C,
    raw: &KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
) -> Option<NTSTATUS> {
    let checked = match decode_checked(raw) {
        Err(Rejected::Mismatch { .. }) => {
            MISMATCHES.fetch_add(1, Ordering::Relaxed);
            decode(raw)
        }
        other => other,
    };
    match checked {
        Ok(change) => match change.state {
            ChangeState::AddStart => parts.prepare(change.index).err().map(status_of),
            ChangeState::AddComplete => {
                let _ = parts.commit(change.index);
                None
            }
            ChangeState::AddFailure { .. } => {
                let _ = parts.abort(change.index);
                None
            }
        },
        Err(Rejected::UnknownState(_)) => None,
        // `decode` never returns Mismatch; listed so the match stays total.
        Err(Rejected::OutOfRange | Rejected::Mismatch { .. }) => {
            (raw.State == STATE::KeProcessorAddStartNotify).then_some(STATUS_INVALID_PARAMETER)
        }
    }
}

/// What the shim registers as the callback context: the seed's
/// `CallbackStatus` and the driver's components. `#[repr(C)]` so the status is
/// first, as in the seed (`&CallbackStatus`).
#[repr(C)]
pub(crate) struct CallbackContext<C> {
    /// The last failure this callback reported (`STATUS_SUCCESS` until one).
    pub(crate) status: AtomicI32,
    pub(crate) parts: C,
}

impl<C> CallbackContext<C> {
    pub(crate) fn new(parts: C) -> Self {
        Self {
            status: AtomicI32::new(STATUS_SUCCESS),
            parts,
        }
    }
}

/// The callback. Never panics and never unwinds (every step is panic-free,
/// and it is `extern "C"`); reads its arguments only after checking them for
/// NULL; writes `*OperationStatus` only when a Start fails, and never over a
/// failure already there (callbacks of one add may share it).
///
/// # Safety
///
/// The kernel's contract: `context` is NULL or the pointer registered with this
/// instantiation (a live `CallbackContext<C>`), `change` is NULL or a readable
/// notification, `operation_status` is NULL or readable and writable.
pub(crate) unsafe extern "C" fn on_processor_change<C: Component>(
    context: PVOID,
    change: PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    operation_status: PNTSTATUS,
) {
    // SAFETY: the registration passed a pointer to a live CallbackContext<C>
    // and keeps it alive until deregistration returns, after which the kernel
    // makes no more calls; NULL is refused by `as_ref`.
    let Some(context) = (unsafe { context.cast::<CallbackContext<C>>().as_ref() }) else {
        return;
    };
    // SAFETY: the kernel passes NULL or a readable notification; it is copied
    // out and never written.
    let Some(raw) = (unsafe { change.as_ref() }).copied() else {
        return;
    };
    let Some(status) = dispatch(&context.parts, &raw) else {
        return;
    };
    context.status.store(status, Ordering::Relaxed);
    // SAFETY: the kernel passes NULL or a status it reads after the call; the
    // callbacks of one notification run one after another, so nothing else
    // accesses it during ours.
    if let Some(operation) = unsafe { operation_status.as_mut() } {
        if nt_success(*operation) {
            *operation = status;
        }
    }
}
