//! The simulator's ABI against an independent oracle: `windows-sys`, generated
//! from Microsoft's API metadata (types and constants only; nothing is called).
//!
//! Pool flags are not in the metadata (they are `#define`s with MSVC integer
//! suffixes); they are checked at compile time against `wdk-sys` on Windows
//! (`sys.rs`) and by value here against the WDK header values.

use core::mem::{align_of, offset_of, size_of};

use perproc::Error;
use perproc_wdk::{decode, status_of, sys};
use windows_sys::Wdk::System::SystemServices as ws;
use windows_sys::Win32::Foundation as wf;
use windows_sys::Win32::System::Kernel as wk;

#[test]
fn the_notification_context_has_microsofts_layout() {
    type Ours = sys::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT;
    type Theirs = ws::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT;
    assert_eq!(size_of::<Ours>(), size_of::<Theirs>());
    assert_eq!(size_of::<Ours>(), 16);
    assert_eq!(align_of::<Ours>(), align_of::<Theirs>());
    assert_eq!(offset_of!(Ours, State), offset_of!(Theirs, State));
    assert_eq!(offset_of!(Ours, NtNumber), offset_of!(Theirs, NtNumber));
    assert_eq!(offset_of!(Ours, Status), offset_of!(Theirs, Status));
    assert_eq!(offset_of!(Ours, ProcNumber), offset_of!(Theirs, ProcNumber));
    assert_eq!(
        size_of::<sys::KE_PROCESSOR_CHANGE_NOTIFY_STATE::Type>(),
        size_of::<ws::KE_PROCESSOR_CHANGE_NOTIFY_STATE>()
    );
    assert_eq!(size_of::<sys::NTSTATUS>(), size_of::<wf::NTSTATUS>());
}

#[test]
fn processor_number_has_microsofts_layout() {
    type Ours = sys::PROCESSOR_NUMBER;
    type Theirs = wk::PROCESSOR_NUMBER;
    assert_eq!(size_of::<Ours>(), size_of::<Theirs>());
    assert_eq!(align_of::<Ours>(), align_of::<Theirs>());
    assert_eq!(offset_of!(Ours, Group), offset_of!(Theirs, Group));
    assert_eq!(offset_of!(Ours, Number), offset_of!(Theirs, Number));
    assert_eq!(offset_of!(Ours, Reserved), offset_of!(Theirs, Reserved));
}

#[test]
fn a_context_laid_out_by_microsofts_definition_decodes() {
    let theirs = ws::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT {
        State: ws::KeProcessorAddFailureNotify,
        NtNumber: 77,
        Status: wf::STATUS_INSUFFICIENT_RESOURCES,
        ProcNumber: wk::PROCESSOR_NUMBER {
            Group: 1,
            Number: 13,
            Reserved: 0,
        },
    };
    // The same bytes, read as the simulator's (= wdk-sys's) struct.
    // SAFETY: both are 16-byte plain-data structs with the same layout
    // (asserted above), and every bit pattern is valid for the target.
    let ours: sys::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT = unsafe {
        core::ptr::from_ref(&theirs)
            .cast::<sys::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT>()
            .read()
    };
    let change = decode(&ours).unwrap();
    assert_eq!(change.index.get(), 77);
    assert_eq!((change.number.group(), change.number.number()), (1, 13));
    assert_eq!(
        change.state,
        perproc::ChangeState::AddFailure {
            status: wf::STATUS_INSUFFICIENT_RESOURCES
        }
    );
}

#[test]
fn the_callback_signature_is_microsofts() {
    // windows-sys' PROCESSOR_CALLBACK_FUNCTION, filled with a function that
    // forwards to what the simulator's (= bindgen's) typedef describes: the
    // parameter types line up one for one.
    unsafe extern "system" fn theirs(
        context: *const core::ffi::c_void,
        change: *const ws::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
        status: *mut i32,
    ) {
        let ours: sys::PROCESSOR_CALLBACK_FUNCTION = None;
        if let Some(f) = ours {
            // SAFETY: never runs (`ours` is None); it exists to type-check.
            unsafe { f(context.cast_mut(), change.cast_mut().cast(), status) };
        }
    }
    let callback: ws::PROCESSOR_CALLBACK_FUNCTION = Some(theirs);
    assert!(callback.is_some());
    assert_eq!(
        size_of::<sys::PROCESSOR_CALLBACK_FUNCTION>(),
        size_of::<ws::PROCESSOR_CALLBACK_FUNCTION>()
    );
}

#[test]
fn states_and_flags_have_microsofts_values() {
    use sys::KE_PROCESSOR_CHANGE_NOTIFY_STATE as S;
    assert_eq!(S::KeProcessorAddStartNotify, ws::KeProcessorAddStartNotify);
    assert_eq!(
        S::KeProcessorAddCompleteNotify,
        ws::KeProcessorAddCompleteNotify
    );
    assert_eq!(
        S::KeProcessorAddFailureNotify,
        ws::KeProcessorAddFailureNotify
    );
    assert_eq!(
        sys::KE_PROCESSOR_CHANGE_ADD_EXISTING,
        ws::KE_PROCESSOR_CHANGE_ADD_EXISTING
    );
    assert_eq!(
        sys::ALL_PROCESSOR_GROUPS,
        u32::from(windows_sys::Win32::System::Threading::ALL_PROCESSOR_GROUPS)
    );
    assert_eq!(
        sys::INVALID_PROCESSOR_INDEX,
        windows_sys::Wdk::Storage::FileSystem::INVALID_PROCESSOR_INDEX
    );
    assert_eq!(sys::PASSIVE_LEVEL, ws::PASSIVE_LEVEL);
    assert_eq!(sys::APC_LEVEL, ws::APC_LEVEL);
    assert_eq!(sys::DISPATCH_LEVEL, ws::DISPATCH_LEVEL);
    assert_eq!(sys::PAGE_SIZE, ws::PAGE_SIZE);
    // wdm.h: POOL_FLAG_* (not in the metadata).
    assert_eq!(sys::POOL_FLAG_UNINITIALIZED, 0x02);
    assert_eq!(sys::POOL_FLAG_CACHE_ALIGNED, 0x08);
    assert_eq!(sys::POOL_FLAG_NON_PAGED, 0x40);
    assert_eq!(sys::POOL_FLAG_PAGED, 0x100);
}

#[test]
fn every_status_the_shim_writes_has_microsofts_value() {
    assert_eq!(sys::STATUS_SUCCESS, wf::STATUS_SUCCESS);
    assert_eq!(sys::STATUS_UNSUCCESSFUL, wf::STATUS_UNSUCCESSFUL);
    assert_eq!(
        sys::STATUS_INSUFFICIENT_RESOURCES,
        wf::STATUS_INSUFFICIENT_RESOURCES
    );
    assert_eq!(sys::STATUS_INVALID_PARAMETER, wf::STATUS_INVALID_PARAMETER);
    assert_eq!(
        sys::STATUS_INVALID_DEVICE_STATE,
        wf::STATUS_INVALID_DEVICE_STATE
    );
    assert_eq!(sys::STATUS_DEVICE_BUSY, wf::STATUS_DEVICE_BUSY);
    assert_eq!(sys::STATUS_NO_MEMORY, wf::STATUS_NO_MEMORY);
    // And every status status_of can produce is one of those, or passed through.
    let index = perproc::ProcessorIndex::ZERO;
    let all = [
        (Error::OutOfMemory, wf::STATUS_INSUFFICIENT_RESOURCES),
        (Error::CapacityOverflow, wf::STATUS_INSUFFICIENT_RESOURCES),
        (Error::Exhausted, wf::STATUS_INSUFFICIENT_RESOURCES),
        (
            Error::IndexOutOfRange { index, capacity: 0 },
            wf::STATUS_INVALID_PARAMETER,
        ),
        (Error::Busy, wf::STATUS_DEVICE_BUSY),
        (Error::NotPrepared, wf::STATUS_INVALID_DEVICE_STATE),
        (Error::AlreadyOnline, wf::STATUS_INVALID_DEVICE_STATE),
        (Error::Status(wf::STATUS_NO_MEMORY), wf::STATUS_NO_MEMORY),
        (Error::Status(wf::STATUS_SUCCESS), wf::STATUS_UNSUCCESSFUL),
        (Error::Status(1), wf::STATUS_UNSUCCESSFUL),
    ];
    for (error, status) in all {
        assert_eq!(status_of(error), status, "{error:?}");
        assert!(status < 0);
    }
}

#[test]
fn the_numa_declarations_have_microsofts_layout_and_values() {
    use windows_sys::Win32::System::SystemInformation as wsi;
    type Ours = sys::GROUP_AFFINITY;
    type Theirs = wsi::GROUP_AFFINITY;
    assert_eq!(size_of::<Ours>(), size_of::<Theirs>());
    assert_eq!(align_of::<Ours>(), align_of::<Theirs>());
    assert_eq!(offset_of!(Ours, Mask), offset_of!(Theirs, Mask));
    assert_eq!(offset_of!(Ours, Group), offset_of!(Theirs, Group));
    assert_eq!(offset_of!(Ours, Reserved), offset_of!(Theirs, Reserved));

    type P = sys::POOL_EXTENDED_PARAMETER;
    type Q = ws::POOL_EXTENDED_PARAMETER;
    assert_eq!(size_of::<P>(), size_of::<Q>());
    assert_eq!(align_of::<P>(), align_of::<Q>());
    assert_eq!(offset_of!(P, __bindgen_anon_2), offset_of!(Q, Anonymous2));
    assert_eq!(
        sys::POOL_EXTENDED_PARAMETER_TYPE::PoolExtendedParameterNumaNode,
        ws::PoolExtendedParameterNumaNode
    );
    assert_eq!(sys::MM_ANY_NODE_OK, ws::MM_ANY_NODE_OK);
    // The type sits in the low 8 bits of the first word, as the metadata's
    // single bitfield word has it.
    let mut ours = P::default();
    ours.__bindgen_anon_1.set_Type(3);
    ours.__bindgen_anon_1.set_Optional(1);
    assert_eq!(ours.__bindgen_anon_1._bitfield_1, 0x103);
    assert_eq!(ours.__bindgen_anon_1.Type(), 3);
    // Setting one field replaces it (from the low bits of the value) and keeps
    // the other.
    ours.__bindgen_anon_1.set_Type(0x205);
    assert_eq!(ours.__bindgen_anon_1._bitfield_1, 0x105);
    assert_eq!(ours.__bindgen_anon_1.Optional(), 1);
    ours.__bindgen_anon_1.set_Optional(2);
    assert_eq!(ours.__bindgen_anon_1._bitfield_1, 0x005);
    assert_eq!(ours.__bindgen_anon_1.Optional(), 0);
    assert_eq!(ours.__bindgen_anon_1.Type(), 5);
}
