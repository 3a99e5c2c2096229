//! The simulated kernel's C surface: the names, types and signatures `wdk-sys`
//! generates from the WDK headers (see `crate::sys` for which are confirmed),
//! implemented over [`Kernel`](super::Kernel).
//!
//! Every function is `unsafe extern "C"` like a binding, and behaves as the
//! documentation says, with one difference: where the real kernel bugchecks
//! (IRQL misuse, a bad pool pointer, register from inside a callback), the
//! simulator records a [`Violation`](super::Violation) on the calling thread's
//! kernel and returns, so a test can assert that none happened.
//!
//! A thread reaches a kernel only after [`Kernel::enter_on`](super::Kernel::enter_on):
//! a call from any other thread fails (NULL, `INVALID_PROCESSOR_INDEX`, 0, or a
//! no-op) and is counted by [`orphan_calls`](super::orphan_calls). Two
//! routines work from any thread, as frees and teardown do on Windows:
//! [`ExFreePool`] and [`KeDeregisterProcessorChangeCallback`] find their kernel
//! from the block or the handle.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]

use core::ffi::c_void;

use super::kernel;

/// `NTSTATUS`: negative values are failures.
pub type NTSTATUS = i32;
/// `PNTSTATUS`.
pub type PNTSTATUS = *mut NTSTATUS;
/// `ULONG`.
pub type ULONG = u32;
/// `USHORT`.
pub type USHORT = u16;
/// `UCHAR`.
pub type UCHAR = u8;
/// `KIRQL`.
pub type KIRQL = UCHAR;
/// `PVOID`.
pub type PVOID = *mut c_void;
/// `SIZE_T` (`ULONG_PTR`, 64 bits on the targets `wdk-sys` supports).
pub type SIZE_T = u64;
/// `POOL_FLAGS`.
pub type POOL_FLAGS = u64;
/// `PUSHORT`.
pub type PUSHORT = *mut USHORT;
/// `KAFFINITY` (`ULONG_PTR`, 64 bits).
pub type KAFFINITY = u64;

/// `GROUP_AFFINITY`: a group and a mask of processors in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GROUP_AFFINITY {
    /// One bit per processor number in the group.
    pub Mask: KAFFINITY,
    /// The group.
    pub Group: USHORT,
    /// Zero.
    pub Reserved: [USHORT; 3],
}
/// `PGROUP_AFFINITY`.
pub type PGROUP_AFFINITY = *mut GROUP_AFFINITY;

/// `POOL_EXTENDED_PARAMETER_TYPE`, module-constants style.
pub mod POOL_EXTENDED_PARAMETER_TYPE {
    /// The enum's C type.
    pub type Type = i32;
    /// Not a parameter.
    pub const PoolExtendedParameterInvalidType: Type = 0;
    /// An `EX_POOL_PRIORITY`.
    pub const PoolExtendedParameterPriority: Type = 1;
    /// Secure pool parameters.
    pub const PoolExtendedParameterSecurePool: Type = 2;
    /// A preferred NUMA node (`PreferredNode`).
    pub const PoolExtendedParameterNumaNode: Type = 3;
    /// One past the last type.
    pub const PoolExtendedParameterMax: Type = 4;
}

/// In a `PreferredNode`: any node will do when the preferred one has no room.
pub const MM_ANY_NODE_OK: u32 = 0x8000_0000;

/// The bitfield word of `POOL_EXTENDED_PARAMETER` (`Type`: 8 bits,
/// `Optional`: 1 bit, then reserved), with bindgen's accessor names.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct _POOL_EXTENDED_PARAMETER__bindgen_ty_1 {
    /// The word.
    pub _bitfield_1: u64,
}

impl _POOL_EXTENDED_PARAMETER__bindgen_ty_1 {
    /// The parameter's type (a `POOL_EXTENDED_PARAMETER_TYPE`).
    pub fn Type(&self) -> u64 {
        self._bitfield_1 & 0xff
    }
    /// Sets the type (low 8 bits of `value`).
    pub fn set_Type(&mut self, value: u64) {
        self._bitfield_1 = (self._bitfield_1 & !0xff) | (value & 0xff);
    }
    /// Whether the parameter may be ignored.
    pub fn Optional(&self) -> u64 {
        (self._bitfield_1 >> 8) & 1
    }
    /// Sets `Optional` (low bit of `value`).
    pub fn set_Optional(&mut self, value: u64) {
        self._bitfield_1 = (self._bitfield_1 & !0x100) | ((value & 1) << 8);
    }
}

/// The value of a `POOL_EXTENDED_PARAMETER`, by type.
#[repr(C)]
#[derive(Clone, Copy)]
pub union _POOL_EXTENDED_PARAMETER__bindgen_ty_2 {
    /// Zero.
    pub Reserved2: u64,
    /// Zero.
    pub Reserved3: PVOID,
    /// For `PoolExtendedParameterPriority`.
    pub Priority: i32,
    /// For `PoolExtendedParameterNumaNode`: the node, with `MM_ANY_NODE_OK`.
    pub PreferredNode: ULONG,
}

impl Default for _POOL_EXTENDED_PARAMETER__bindgen_ty_2 {
    fn default() -> Self {
        Self { Reserved2: 0 }
    }
}

/// `POOL_EXTENDED_PARAMETER`, 16 bytes, with bindgen's field names for its
/// anonymous struct and union.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct POOL_EXTENDED_PARAMETER {
    /// Type and flags.
    pub __bindgen_anon_1: _POOL_EXTENDED_PARAMETER__bindgen_ty_1,
    /// The value.
    pub __bindgen_anon_2: _POOL_EXTENDED_PARAMETER__bindgen_ty_2,
}
/// `PCPOOL_EXTENDED_PARAMETER`.
pub type PCPOOL_EXTENDED_PARAMETER = *const POOL_EXTENDED_PARAMETER;

/// `PROCESSOR_NUMBER`: a processor's group and number in the group.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PROCESSOR_NUMBER {
    /// The group.
    pub Group: USHORT,
    /// The number in the group, below 64.
    pub Number: UCHAR,
    /// Zero.
    pub Reserved: UCHAR,
}
/// `PPROCESSOR_NUMBER`.
pub type PPROCESSOR_NUMBER = *mut PROCESSOR_NUMBER;

/// `KE_PROCESSOR_CHANGE_NOTIFY_STATE`, in bindgen's module-constants style (the
/// style wdk-build configures: `EnumVariation::ModuleConsts`).
pub mod KE_PROCESSOR_CHANGE_NOTIFY_STATE {
    /// The enum's C type (`int` on MSVC targets).
    pub type Type = i32;
    /// Before the processor runs driver code: prepare.
    pub const KeProcessorAddStartNotify: Type = 0;
    /// The processor is started: commit.
    pub const KeProcessorAddCompleteNotify: Type = 1;
    /// The add did not happen: abort.
    pub const KeProcessorAddFailureNotify: Type = 2;
}

/// `KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT`, 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT {
    /// A `KE_PROCESSOR_CHANGE_NOTIFY_STATE` value.
    pub State: KE_PROCESSOR_CHANGE_NOTIFY_STATE::Type,
    /// The processor's system-wide index.
    pub NtNumber: ULONG,
    /// Why the add failed (AddFailure only).
    pub Status: NTSTATUS,
    /// The processor's group and number.
    pub ProcNumber: PROCESSOR_NUMBER,
}
/// `PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT`.
pub type PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT = *mut KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT;

/// `PROCESSOR_CALLBACK_FUNCTION` as bindgen emits a function typedef on x64.
pub type PROCESSOR_CALLBACK_FUNCTION = Option<
    unsafe extern "C" fn(
        CallbackContext: PVOID,
        ChangeContext: PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
        OperationStatus: PNTSTATUS,
    ),
>;
/// `PPROCESSOR_CALLBACK_FUNCTION` (bindgen folds the pointer into the `Option`).
pub type PPROCESSOR_CALLBACK_FUNCTION = PROCESSOR_CALLBACK_FUNCTION;

/// Replay AddStart/AddComplete for the active processors at registration.
pub const KE_PROCESSOR_CHANGE_ADD_EXISTING: u32 = 1;
/// Every group, for the `*ProcessorCountEx` queries.
pub const ALL_PROCESSOR_GROUPS: u32 = 0xffff;
/// What the index queries return for "no such processor".
pub const INVALID_PROCESSOR_INDEX: u32 = 0xffff_ffff;
/// `PASSIVE_LEVEL`.
pub const PASSIVE_LEVEL: u32 = 0;
/// `APC_LEVEL`.
pub const APC_LEVEL: u32 = 1;
/// `DISPATCH_LEVEL`.
pub const DISPATCH_LEVEL: u32 = 2;
/// `HIGH_LEVEL` on x64.
pub const HIGH_LEVEL: u32 = 15;
/// `PAGE_SIZE`.
pub const PAGE_SIZE: u32 = 0x1000;

/// Charge quota (not simulated: refused as an unknown flag would be).
pub const POOL_FLAG_USE_QUOTA: POOL_FLAGS = 0x0000_0000_0000_0001;
/// Do not zero the block.
pub const POOL_FLAG_UNINITIALIZED: POOL_FLAGS = 0x0000_0000_0000_0002;
/// Align the block to a cache line.
pub const POOL_FLAG_CACHE_ALIGNED: POOL_FLAGS = 0x0000_0000_0000_0008;
/// Raise an exception instead of returning NULL (not simulated: refused).
pub const POOL_FLAG_RAISE_ON_FAILURE: POOL_FLAGS = 0x0000_0000_0000_0020;
/// Nonpaged, no-execute pool: usable at any IRQL up to `DISPATCH_LEVEL`.
pub const POOL_FLAG_NON_PAGED: POOL_FLAGS = 0x0000_0000_0000_0040;
/// Paged pool: usable at or below `APC_LEVEL` only.
pub const POOL_FLAG_PAGED: POOL_FLAGS = 0x0000_0000_0000_0100;

const fn ntstatus(code: u32) -> NTSTATUS {
    NTSTATUS::from_ne_bytes(code.to_ne_bytes())
}

/// `STATUS_SUCCESS`.
pub const STATUS_SUCCESS: NTSTATUS = 0;
/// `STATUS_UNSUCCESSFUL`.
pub const STATUS_UNSUCCESSFUL: NTSTATUS = ntstatus(0xC000_0001);
/// `STATUS_INVALID_PARAMETER`.
pub const STATUS_INVALID_PARAMETER: NTSTATUS = ntstatus(0xC000_000D);
/// `STATUS_NO_MEMORY`.
pub const STATUS_NO_MEMORY: NTSTATUS = ntstatus(0xC000_0017);
/// `STATUS_INSUFFICIENT_RESOURCES`.
pub const STATUS_INSUFFICIENT_RESOURCES: NTSTATUS = ntstatus(0xC000_009A);
/// `STATUS_INVALID_DEVICE_STATE`.
pub const STATUS_INVALID_DEVICE_STATE: NTSTATUS = ntstatus(0xC000_0184);
/// `STATUS_DEVICE_BUSY` (a warning-severity code: negative, so a failure).
pub const STATUS_DEVICE_BUSY: NTSTATUS = ntstatus(0x8000_0011);

/// Registers `CallbackFunction` for processor hot-add; with
/// [`KE_PROCESSOR_CHANGE_ADD_EXISTING`] first replays every active processor
/// (AddStart in index order, then AddComplete; or, when the Start for processor k
/// fails, AddFailure for 0..k-1 and NULL).
///
/// # Safety
/// `CallbackFunction`, called with `CallbackContext`, must be sound to call from
/// any thread until [`KeDeregisterProcessorChangeCallback`] returns.
pub unsafe extern "C" fn KeRegisterProcessorChangeCallback(
    CallbackFunction: PPROCESSOR_CALLBACK_FUNCTION,
    CallbackContext: PVOID,
    Flags: ULONG,
) -> PVOID {
    kernel::register(CallbackFunction, CallbackContext, Flags)
}

/// Deregisters; returns after any callback in flight for this registration.
///
/// # Safety
/// `CallbackHandle` came from [`KeRegisterProcessorChangeCallback`] and is
/// deregistered once.
pub unsafe extern "C" fn KeDeregisterProcessorChangeCallback(CallbackHandle: PVOID) {
    kernel::deregister(CallbackHandle)
}

/// The calling thread's processor index; fills `ProcNumber` unless it is NULL.
///
/// # Safety
/// `ProcNumber` is NULL or valid for a write.
pub unsafe extern "C" fn KeGetCurrentProcessorNumberEx(ProcNumber: PPROCESSOR_NUMBER) -> ULONG {
    let (index, number) = kernel::current_processor();
    // SAFETY: the caller passes NULL or a pointer valid for a write.
    if let Some(out) = unsafe { ProcNumber.as_mut() } {
        *out = number;
    }
    index
}

/// The most processors group `GroupNumber` (or every group) can ever hold.
///
/// # Safety
/// None beyond the binding's; `unsafe` like every FFI call.
pub unsafe extern "C" fn KeQueryMaximumProcessorCountEx(GroupNumber: USHORT) -> ULONG {
    kernel::processor_count(GroupNumber, false)
}

/// The processors active now in group `GroupNumber` (or every group).
///
/// # Safety
/// None beyond the binding's; `unsafe` like every FFI call.
pub unsafe extern "C" fn KeQueryActiveProcessorCountEx(GroupNumber: USHORT) -> ULONG {
    kernel::processor_count(GroupNumber, true)
}

/// The index of the processor `*ProcNumber`, or [`INVALID_PROCESSOR_INDEX`].
///
/// # Safety
/// `ProcNumber` is valid for a read.
pub unsafe extern "C" fn KeGetProcessorIndexFromNumber(ProcNumber: PPROCESSOR_NUMBER) -> ULONG {
    // SAFETY: the caller passes a pointer valid for a read.
    match unsafe { ProcNumber.as_ref() } {
        Some(number) => kernel::index_of(*number),
        None => INVALID_PROCESSOR_INDEX,
    }
}

/// Writes the (group, number) of processor `ProcIndex`.
///
/// # Safety
/// `ProcNumber` is valid for a write.
pub unsafe extern "C" fn KeGetProcessorNumberFromIndex(
    ProcIndex: ULONG,
    ProcNumber: PPROCESSOR_NUMBER,
) -> NTSTATUS {
    match kernel::number_of(ProcIndex) {
        Some(number) => {
            // SAFETY: the caller passes a pointer valid for a write.
            match unsafe { ProcNumber.as_mut() } {
                Some(out) => {
                    *out = number;
                    STATUS_SUCCESS
                }
                None => STATUS_INVALID_PARAMETER,
            }
        }
        None => STATUS_INVALID_PARAMETER,
    }
}

/// Raises the calling processor's IRQL to `NewIrql` and returns the old one.
/// Raising to `DISPATCH_LEVEL` or above takes the simulated processor: no other
/// thread on it gets past its own raise until this one lowers again.
///
/// # Safety
/// `NewIrql` is at least the current IRQL (else: a recorded violation).
pub unsafe extern "C" fn KfRaiseIrql(NewIrql: KIRQL) -> KIRQL {
    kernel::raise_irql(NewIrql)
}

/// Lowers the calling processor's IRQL to `NewIrql`.
///
/// # Safety
/// `NewIrql` is at most the current IRQL (else: a recorded violation).
pub unsafe extern "C" fn KeLowerIrql(NewIrql: KIRQL) {
    kernel::lower_irql(NewIrql)
}

/// The calling thread's IRQL.
///
/// # Safety
/// None beyond the binding's; `unsafe` like every FFI call.
pub unsafe extern "C" fn KeGetCurrentIrql() -> KIRQL {
    kernel::current_irql()
}

/// A pool block of `NumberOfBytes`, tagged `Tag`, or NULL (out of memory, an
/// injected failure, bad flags, or the wrong IRQL). Zeroed unless
/// [`POOL_FLAG_UNINITIALIZED`]; 16-byte aligned below a page, page aligned from
/// a page up.
///
/// # Safety
/// None beyond the binding's; `unsafe` like every FFI call.
pub unsafe extern "C" fn ExAllocatePool2(
    Flags: POOL_FLAGS,
    NumberOfBytes: SIZE_T,
    Tag: ULONG,
) -> PVOID {
    super::pool::allocate(Flags, NumberOfBytes, Tag)
}

/// [`ExAllocatePool2`] with extended parameters. A NUMA node parameter
/// (`PoolExtendedParameterNumaNode`) takes the block from that node only, and
/// returns NULL when the node has no room (the simulator's reading: "preferred"
/// is a requirement unless `MM_ANY_NODE_OK` is set); a priority parameter is
/// accepted and ignored; any other parameter fails the call. Without a NUMA
/// parameter it places as [`ExAllocatePool2`] does (the calling processor's
/// node first).
///
/// # Safety
/// `ExtendedParameters` points to `ExtendedParametersCount` readable
/// parameters (or is NULL with a count of 0).
pub unsafe extern "C" fn ExAllocatePool3(
    Flags: POOL_FLAGS,
    NumberOfBytes: SIZE_T,
    Tag: ULONG,
    ExtendedParameters: PCPOOL_EXTENDED_PARAMETER,
    ExtendedParametersCount: ULONG,
) -> PVOID {
    use POOL_EXTENDED_PARAMETER_TYPE as T;
    let Ok(count) = usize::try_from(ExtendedParametersCount) else {
        return core::ptr::null_mut();
    };
    let params: &[POOL_EXTENDED_PARAMETER] = if count == 0 {
        &[]
    } else if ExtendedParameters.is_null() {
        return core::ptr::null_mut();
    } else {
        // SAFETY: the caller passes `count` readable parameters.
        unsafe { core::slice::from_raw_parts(ExtendedParameters, count) }
    };
    let mut placement = super::pool::Placement::Local;
    for param in params {
        let kind = param.__bindgen_anon_1.Type();
        if kind == u64::from(T::PoolExtendedParameterNumaNode.unsigned_abs()) {
            // SAFETY: every field of the union is an integer or a pointer
            // of at least 4 bytes, so its first 4 bytes are initialised.
            let node = unsafe { param.__bindgen_anon_2.PreferredNode };
            placement = super::pool::Placement::Node {
                node: u16::try_from(node & !MM_ANY_NODE_OK).unwrap_or(u16::MAX),
                any_ok: node & MM_ANY_NODE_OK != 0,
            };
        } else if kind != u64::from(T::PoolExtendedParameterPriority.unsigned_abs()) {
            return core::ptr::null_mut();
        }
    }
    super::pool::allocate_placed(Flags, NumberOfBytes, Tag, placement, "ExAllocatePool3")
}

/// The highest NUMA node number (nodes are 0 to this).
///
/// # Safety
/// None beyond the binding's; `unsafe` like every FFI call.
pub unsafe extern "C" fn KeQueryHighestNodeNumber() -> USHORT {
    kernel::highest_node()
}

/// The group of node `NodeNumber` and the mask (and count) of its processors
/// the kernel knows (present, which here includes one whose AddStart is being
/// delivered); a zero affinity for a node that does not exist.
///
/// # Safety
/// `Affinity` and `Count` are NULL or valid for a write.
pub unsafe extern "C" fn KeQueryNodeActiveAffinity(
    NodeNumber: USHORT,
    Affinity: PGROUP_AFFINITY,
    Count: PUSHORT,
) {
    let (group, mask, count) = kernel::node_affinity(NodeNumber);
    // SAFETY: the caller passes NULL or a pointer valid for a write.
    if let Some(out) = unsafe { Affinity.as_mut() } {
        *out = GROUP_AFFINITY {
            Mask: mask,
            Group: group,
            Reserved: [0; 3],
        };
    }
    // SAFETY: as above.
    if let Some(out) = unsafe { Count.as_mut() } {
        *out = count;
    }
}

/// Frees a block from [`ExAllocatePool2`].
///
/// # Safety
/// `P` came from [`ExAllocatePool2`], is freed once and not used afterwards
/// (an unknown pointer is a recorded violation, not a free).
pub unsafe extern "C" fn ExFreePool(P: PVOID) {
    super::pool::free(P, None)
}

/// Frees a block from [`ExAllocatePool2`] that was allocated with `Tag`.
///
/// # Safety
/// As for [`ExFreePool`].
pub unsafe extern "C" fn ExFreePoolWithTag(P: PVOID, Tag: ULONG) {
    super::pool::free(P, Some(Tag))
}
