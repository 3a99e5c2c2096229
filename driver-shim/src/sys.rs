//! The one seam between the shim and the kernel: every kernel name the shim
//! uses comes from here, and the shim's logic above it is the same on both
//! providers.
//!
//! - **A driver** (Windows, without the `sim` feature): `wdk-sys`, whose
//!   bindings bindgen generates from the installed WDK at build time
//!   (functions in `wdk_sys::ntddk`, types and constants at the crate root,
//!   enums as modules of constants).
//! - **The simulator** (the `sim` feature, and always off Windows):
//!   `crate::sim::sys`, the simulated kernel, with the same names and
//!   signatures.
//!
//! Names confirmed in the `wdk-sys` 0.5 / `windows-drivers-rs` sources:
//! `ntddk::ExAllocatePool2`, `ntddk::ExFreePool`, `ntddk::KeGetCurrentIrql`,
//! `POOL_FLAG_NON_PAGED` (hand-written `POOL_FLAGS` constants), the `STATUS_*`
//! constants (`NTSTATUS`), `SIZE_T`, `ULONG`, `PVOID`, the `ntddk` module and the
//! module-constants enum style. The other names are what bindgen generates from
//! the declarations in Microsoft's documentation under those settings: the
//! stand-in `wdk-sys` (`driver-shim/wdk-standin`) is that output, and
//! `scripts/windows-driver` type-checks and links this module against it for
//! x64 and ARM64.
//!
//! # IRQL routines per architecture
//!
//! On x64, `KeGetCurrentIrql`, `KfRaiseIrql` and `KeLowerIrql` are functions
//! exported by ntoskrnl (Windows 10 and later; `KeRaiseIrql` is a macro over
//! `KfRaiseIrql`). On ARM64, `KeLowerIrql` is a macro over `KfLowerIrql`
//! (microsoft/usersim issue 214: ARM64 builds need `KfLowerIrql` as a real
//! function), so bindgen emits no `KeLowerIrql` there: this module calls
//! `KfLowerIrql` under the name `KeLowerIrql` on ARM64. That `KeGetCurrentIrql`
//! and `KfRaiseIrql` are plain exports on ARM64 too is not confirmed (see
//! `driver-shim/README.md`).
//!
//! The layout of the notification context is asserted at compile time here for
//! whichever provider is in use, and checked against Microsoft's metadata
//! (`windows-sys`) by the `abi` test (the simulator) and by the stand-in's own
//! ABI check (`driver-shim/wdk-standin/wdk-sys/tests/abi.rs`).

#[cfg(any(feature = "sim", not(windows)))]
pub use crate::sim::sys::*;

#[cfg(all(windows, not(feature = "sim")))]
pub use self::wdk::*;

#[cfg(all(windows, not(feature = "sim")))]
mod wdk {
    #[cfg(not(target_arch = "aarch64"))]
    pub use wdk_sys::ntddk::KeLowerIrql;
    #[cfg(target_arch = "aarch64")]
    pub use wdk_sys::ntddk::KfLowerIrql as KeLowerIrql;
    pub use wdk_sys::ntddk::{
        ExAllocatePool2, ExAllocatePool3, ExFreePool, KeDeregisterProcessorChangeCallback,
        KeGetCurrentIrql, KeGetCurrentProcessorNumberEx, KeGetProcessorIndexFromNumber,
        KeGetProcessorNumberFromIndex, KeQueryActiveProcessorCountEx, KeQueryHighestNodeNumber,
        KeQueryMaximumProcessorCountEx, KeQueryNodeActiveAffinity,
        KeRegisterProcessorChangeCallback, KfRaiseIrql,
    };
    pub use wdk_sys::{
        ALL_PROCESSOR_GROUPS, APC_LEVEL, DISPATCH_LEVEL, GROUP_AFFINITY,
        KE_PROCESSOR_CHANGE_ADD_EXISTING, KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
        KE_PROCESSOR_CHANGE_NOTIFY_STATE, KIRQL, NTSTATUS, PASSIVE_LEVEL,
        PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, PNTSTATUS, POOL_EXTENDED_PARAMETER,
        POOL_EXTENDED_PARAMETER_TYPE, POOL_FLAGS, POOL_FLAG_NON_PAGED, PPROCESSOR_NUMBER,
        PROCESSOR_NUMBER, PVOID, SIZE_T, STATUS_DEVICE_BUSY, STATUS_INSUFFICIENT_RESOURCES,
        STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER, STATUS_SUCCESS, STATUS_UNSUCCESSFUL,
        ULONG, USHORT,
    };
}

/// `DISPATCH_LEVEL` as a `KIRQL` (bindgen types macro constants `u32`).
pub(crate) const DISPATCH: KIRQL = 2;
/// `ALL_PROCESSOR_GROUPS` as the `USHORT` the count queries take.
pub(crate) const ALL_GROUPS: USHORT = 0xffff;
/// `KE_PROCESSOR_CHANGE_ADD_EXISTING` as the `ULONG` registration takes.
pub(crate) const ADD_EXISTING: ULONG = 1;

// The provider's constants have the values the normalised ones assume.
const _: () = assert!(DISPATCH_LEVEL == 2 && PASSIVE_LEVEL == 0 && APC_LEVEL == 1);
const _: () = assert!(ALL_PROCESSOR_GROUPS == 0xffff);
const _: () = assert!(KE_PROCESSOR_CHANGE_ADD_EXISTING == 1);
const _: () = assert!(POOL_FLAG_NON_PAGED == 0x40);
const _: () = {
    use KE_PROCESSOR_CHANGE_NOTIFY_STATE as S;
    assert!(S::KeProcessorAddStartNotify == 0);
    assert!(S::KeProcessorAddCompleteNotify == 1);
    assert!(S::KeProcessorAddFailureNotify == 2);
};

// The notification context and the processor number, as wdm.h lays them out.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT>() == 16);
    assert!(align_of::<KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT>() == 4);
    assert!(offset_of!(KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, State) == 0);
    assert!(offset_of!(KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, NtNumber) == 4);
    assert!(offset_of!(KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, Status) == 8);
    assert!(offset_of!(KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, ProcNumber) == 12);
    assert!(size_of::<PROCESSOR_NUMBER>() == 4);
    assert!(align_of::<PROCESSOR_NUMBER>() == 2);
    assert!(offset_of!(PROCESSOR_NUMBER, Group) == 0);
    assert!(offset_of!(PROCESSOR_NUMBER, Number) == 2);
    assert!(offset_of!(PROCESSOR_NUMBER, Reserved) == 3);
    assert!(size_of::<NTSTATUS>() == 4 && size_of::<KIRQL>() == 1);
};
