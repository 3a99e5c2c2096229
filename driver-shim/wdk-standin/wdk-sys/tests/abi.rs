//! The stand-in against Microsoft's API metadata (`windows-sys`): every
//! struct the shim and its drivers use has the same size, alignment and field
//! offsets, and every constant the same value. The checks are `const`, so
//! `cargo check --tests --target <x86_64|aarch64>-pc-windows-msvc` (what
//! `scripts/windows-driver` runs) fails to compile on any drift; the test
//! function only reports that they were evaluated.
#![allow(clippy::all)]

use core::mem::{align_of, offset_of, size_of};

use windows_sys::Wdk::Foundation as wf;
use windows_sys::Wdk::Storage::FileSystem as wfs;
use windows_sys::Wdk::System::SystemServices as wss;
use windows_sys::Win32::Foundation as w32;
use windows_sys::Win32::System::Kernel as wk;
use windows_sys::Win32::System::SystemInformation as wsi;
use windows_sys::Win32::System::Threading as wt;

/// Same size and alignment, and the same offset for every named field.
macro_rules! same_layout {
    ($ours:ty, $theirs:ty $(, $field:ident)*) => {
        const _: () = {
            assert!(size_of::<$ours>() == size_of::<$theirs>());
            assert!(align_of::<$ours>() == align_of::<$theirs>());
            $(assert!(offset_of!($ours, $field) == offset_of!($theirs, $field));)*
        };
    };
}

same_layout!(
    wdk_sys::PROCESSOR_NUMBER,
    wk::PROCESSOR_NUMBER,
    Group,
    Number,
    Reserved
);
same_layout!(
    wdk_sys::GROUP_AFFINITY,
    wsi::GROUP_AFFINITY,
    Mask,
    Group,
    Reserved
);
same_layout!(
    wdk_sys::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    wss::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    State,
    NtNumber,
    Status,
    ProcNumber
);
same_layout!(
    wdk_sys::UNICODE_STRING,
    w32::UNICODE_STRING,
    Length,
    MaximumLength,
    Buffer
);
same_layout!(
    wdk_sys::DRIVER_OBJECT,
    wf::DRIVER_OBJECT,
    Type,
    Size,
    DeviceObject,
    Flags,
    DriverStart,
    DriverSize,
    DriverSection,
    DriverExtension,
    DriverName,
    HardwareDatabase,
    FastIoDispatch,
    DriverInit,
    DriverStartIo,
    DriverUnload,
    MajorFunction
);
same_layout!(
    wdk_sys::POOL_EXTENDED_PARAMETER,
    wss::POOL_EXTENDED_PARAMETER
);
const _: () = {
    // The two halves: the bitfield word, then the union.
    assert!(offset_of!(wdk_sys::POOL_EXTENDED_PARAMETER, __bindgen_anon_1) == 0);
    assert!(offset_of!(wss::POOL_EXTENDED_PARAMETER, Anonymous1) == 0);
    assert!(
        offset_of!(wdk_sys::POOL_EXTENDED_PARAMETER, __bindgen_anon_2)
            == offset_of!(wss::POOL_EXTENDED_PARAMETER, Anonymous2)
    );
    assert!(
        size_of::<wdk_sys::_POOL_EXTENDED_PARAMETER__bindgen_ty_2>()
            == size_of::<wss::POOL_EXTENDED_PARAMETER_1>()
    );
};

// Scalar types.
const _: () = {
    assert!(size_of::<wdk_sys::NTSTATUS>() == size_of::<w32::NTSTATUS>());
    assert!(size_of::<wdk_sys::KIRQL>() == 1);
    assert!(size_of::<wdk_sys::ULONG>() == 4);
    assert!(size_of::<wdk_sys::SIZE_T>() == size_of::<usize>());
    assert!(size_of::<wdk_sys::KAFFINITY>() == size_of::<usize>());
    assert!(size_of::<wdk_sys::POOL_FLAGS>() == 8);
    assert!(size_of::<wdk_sys::POOL_NODE_REQUIREMENT>() == 4);
};

// Values.
const _: () = {
    use wdk_sys::KE_PROCESSOR_CHANGE_NOTIFY_STATE as S;
    use wdk_sys::POOL_EXTENDED_PARAMETER_TYPE as P;
    assert!(S::KeProcessorAddStartNotify == wss::KeProcessorAddStartNotify);
    assert!(S::KeProcessorAddCompleteNotify == wss::KeProcessorAddCompleteNotify);
    assert!(S::KeProcessorAddFailureNotify == wss::KeProcessorAddFailureNotify);
    assert!(wdk_sys::KE_PROCESSOR_CHANGE_ADD_EXISTING == wss::KE_PROCESSOR_CHANGE_ADD_EXISTING);
    assert!(wdk_sys::ALL_PROCESSOR_GROUPS == wt::ALL_PROCESSOR_GROUPS as u32);
    assert!(wdk_sys::INVALID_PROCESSOR_INDEX == wfs::INVALID_PROCESSOR_INDEX);
    assert!(wdk_sys::PASSIVE_LEVEL == wss::PASSIVE_LEVEL);
    assert!(wdk_sys::APC_LEVEL == wss::APC_LEVEL);
    assert!(wdk_sys::DISPATCH_LEVEL == wss::DISPATCH_LEVEL);
    // HIGH_LEVEL is not compared: the metadata carries x86's 31, while x64
    // and ARM64 wdm.h define 15 (the value the stand-in and wdk-sys have).
    assert!(wdk_sys::IRP_MJ_MAXIMUM_FUNCTION == wss::IRP_MJ_MAXIMUM_FUNCTION);
    assert!(wdk_sys::MM_ANY_NODE_OK == wss::MM_ANY_NODE_OK);
    assert!(P::PoolExtendedParameterNumaNode == wss::PoolExtendedParameterNumaNode);
    assert!(P::PoolExtendedParameterPriority == wss::PoolExtendedParameterPriority);
    assert!(wdk_sys::POOL_EXTENDED_PARAMETER_TYPE_BITS == wss::POOL_EXTENDED_PARAMETER_TYPE_BITS);
    assert!(
        wdk_sys::POOL_EXTENDED_PARAMETER_REQUIRED_FIELD_BITS
            == wss::POOL_EXTENDED_PARAMETER_REQUIRED_FIELD_BITS
    );
    // The POOL_FLAG_* values are not in the metadata (64-bit MSVC-suffixed
    // macros); the stand-in copies them from wdk-sys's hand-written list.
    assert!(wdk_sys::STATUS_SUCCESS == w32::STATUS_SUCCESS);
    assert!(wdk_sys::STATUS_UNSUCCESSFUL == w32::STATUS_UNSUCCESSFUL);
    assert!(wdk_sys::STATUS_INVALID_PARAMETER == w32::STATUS_INVALID_PARAMETER);
    assert!(wdk_sys::STATUS_NO_MEMORY == w32::STATUS_NO_MEMORY);
    assert!(wdk_sys::STATUS_INSUFFICIENT_RESOURCES == w32::STATUS_INSUFFICIENT_RESOURCES);
    assert!(wdk_sys::STATUS_INVALID_DEVICE_STATE == w32::STATUS_INVALID_DEVICE_STATE);
    assert!(wdk_sys::STATUS_DEVICE_BUSY == w32::STATUS_DEVICE_BUSY);
    assert!(wdk_sys::STATUS_NOT_SUPPORTED == w32::STATUS_NOT_SUPPORTED);
};

/// The NUMA node field: bindgen's bitfield setters put the type in the low 8
/// bits, as windows-sys's single `_bitfield` word expects.
#[test]
fn numa_parameter_encodes_like_the_metadata() {
    let mut ours = wdk_sys::POOL_EXTENDED_PARAMETER::default();
    ours.__bindgen_anon_1
        .set_Type(wdk_sys::POOL_EXTENDED_PARAMETER_TYPE::PoolExtendedParameterNumaNode as u64);
    ours.__bindgen_anon_2.PreferredNode = 3;
    // SAFETY: both are plain-old-data of the same size (checked above).
    let bytes: [u8; 16] = unsafe { core::mem::transmute(ours) };
    assert_eq!(bytes[0], 3);
    assert_eq!(&bytes[8..12], &3u32.to_le_bytes());
}
