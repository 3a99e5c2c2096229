//! A **stand-in** for `wdk-sys` 0.5.2: bindgen's own output (bindgen 0.73.2,
//! wdk-build 0.6.0's settings) for `standin.h`, a header of only the
//! declarations perproc-wdk and its driver crates use, transcribed from
//! Microsoft's documentation. Laid out as wdk-sys lays out its generated
//! files: types and constants at the crate root, functions in [`ntddk`],
//! the hand-written constants wdk-sys adds (the `POOL_FLAG_*` values, the
//! `STATUS_*` values), `NT_SUCCESS`, `PAGED_CODE!`, and the dummy symbols
//! wdk-sys defines for the linker.
//!
//! It exists so `scripts/windows-driver` can type-check, link and inspect
//! the Windows path on a machine without the WDK. It is applied for that one
//! command with `--config 'patch.crates-io.wdk-sys.path=...'` and is never
//! used by a real Windows build. `tests/abi.rs` checks it against
//! `windows-sys` (Microsoft's API metadata) for both targets.
#![no_std]
#![allow(clippy::all, clippy::pedantic)]

pub use crate::constants::*;
pub use crate::types::*;

/// The generated types (`types.rs` in wdk-sys's `OUT_DIR`).
#[allow(
    missing_docs,
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]
mod types {
    #[cfg(target_arch = "x86_64")]
    include!("generated/x86_64/types.rs");
    #[cfg(target_arch = "aarch64")]
    include!("generated/aarch64/types.rs");
}

/// The generated constants (`constants.rs`) and the ones wdk-sys writes by
/// hand because bindgen cannot parse their C spelling.
#[allow(missing_docs, non_upper_case_globals)]
mod constants {
    #[allow(unused_imports)]
    use crate::types::*;
    #[cfg(target_arch = "x86_64")]
    include!("generated/x86_64/constants.rs");
    #[cfg(target_arch = "aarch64")]
    include!("generated/aarch64/constants.rs");

    use crate::types::{NTSTATUS, POOL_FLAGS};

    // wdk-sys 0.5.2 src/constants.rs, `kernel_mode`: MSVC-suffixed macros.
    pub const POOL_FLAG_REQUIRED_START: POOL_FLAGS = 0x0000_0000_0000_0001;
    pub const POOL_FLAG_USE_QUOTA: POOL_FLAGS = 0x0000_0000_0000_0001;
    pub const POOL_FLAG_UNINITIALIZED: POOL_FLAGS = 0x0000_0000_0000_0002;
    pub const POOL_FLAG_SESSION: POOL_FLAGS = 0x0000_0000_0000_0004;
    pub const POOL_FLAG_CACHE_ALIGNED: POOL_FLAGS = 0x0000_0000_0000_0008;
    pub const POOL_FLAG_RESERVED1: POOL_FLAGS = 0x0000_0000_0000_0010;
    pub const POOL_FLAG_RAISE_ON_FAILURE: POOL_FLAGS = 0x0000_0000_0000_0020;
    pub const POOL_FLAG_NON_PAGED: POOL_FLAGS = 0x0000_0000_0000_0040;
    pub const POOL_FLAG_NON_PAGED_EXECUTE: POOL_FLAGS = 0x0000_0000_0000_0080;
    pub const POOL_FLAG_PAGED: POOL_FLAGS = 0x0000_0000_0000_0100;
    pub const POOL_FLAG_RESERVED2: POOL_FLAGS = 0x0000_0000_0000_0200;
    pub const POOL_FLAG_RESERVED3: POOL_FLAGS = 0x0000_0000_0000_0400;
    pub const POOL_FLAG_REQUIRED_END: POOL_FLAGS = 0x0000_0000_8000_0000;
    pub const POOL_FLAG_OPTIONAL_START: POOL_FLAGS = 0x0000_0001_0000_0000;
    pub const POOL_FLAG_SPECIAL_POOL: POOL_FLAGS = 0x0000_0001_0000_0000;
    pub const POOL_FLAG_OPTIONAL_END: POOL_FLAGS = 0x8000_0000_0000_0000;

    // wdk-sys 0.5.2 src/constants.rs: the STATUS_* values it copies from
    // windows-sys (only the ones perproc uses; same spelling and type).
    pub const STATUS_SUCCESS: NTSTATUS = 0_i32;
    pub const STATUS_UNSUCCESSFUL: NTSTATUS = -1_073_741_823_i32;
    pub const STATUS_INVALID_PARAMETER: NTSTATUS = -1_073_741_811_i32;
    pub const STATUS_NO_MEMORY: NTSTATUS = -1_073_741_801_i32;
    pub const STATUS_INSUFFICIENT_RESOURCES: NTSTATUS = -1_073_741_670_i32;
    pub const STATUS_INVALID_DEVICE_STATE: NTSTATUS = -1_073_741_436_i32;
    pub const STATUS_DEVICE_BUSY: NTSTATUS = -2_147_483_631_i32;
    pub const STATUS_NOT_SUPPORTED: NTSTATUS = -1_073_741_637_i32;
}

/// The generated functions (`ntddk.rs`), with the `#[link]` directives
/// wdk-build 0.6 renders for a WDM build (`arm64rt` on ARM64 only).
#[allow(missing_docs, non_snake_case, clippy::missing_safety_doc)]
pub mod ntddk {
    #[allow(unused_imports)]
    use crate::types::*;
    #[cfg(target_arch = "x86_64")]
    include!("generated/x86_64/ntddk.rs");
    #[cfg(target_arch = "aarch64")]
    include!("generated/aarch64/ntddk.rs");

    #[cfg(not(any(test, feature = "suppress-wdk-linking")))]
    #[link(
        name = "BufferOverflowFastFailK",
        kind = "static",
        modifiers = "-bundle"
    )]
    unsafe extern "C" {}
    #[cfg(not(any(test, feature = "suppress-wdk-linking")))]
    #[link(name = "ntoskrnl", kind = "static", modifiers = "-bundle")]
    unsafe extern "C" {}
    #[cfg(not(any(test, feature = "suppress-wdk-linking")))]
    #[link(name = "hal", kind = "static", modifiers = "-bundle")]
    unsafe extern "C" {}
    #[cfg(not(any(test, feature = "suppress-wdk-linking")))]
    #[link(name = "wmilib", kind = "static", modifiers = "-bundle")]
    unsafe extern "C" {}
    #[cfg(all(
        target_arch = "aarch64",
        not(any(test, feature = "suppress-wdk-linking"))
    ))]
    #[link(name = "arm64rt", kind = "static", modifiers = "-bundle")]
    unsafe extern "C" {}
}

/// `NT_SUCCESS` (ntdef.h), as wdk-sys spells it.
#[must_use]
#[allow(non_snake_case)]
pub const fn NT_SUCCESS(nt_status: NTSTATUS) -> bool {
    nt_status >= 0
}

/// `PAGED_CODE()`, as wdk-sys defines it.
#[macro_export]
#[allow(non_snake_case)]
macro_rules! PAGED_CODE {
    () => {
        debug_assert!(unsafe { $crate::ntddk::KeGetCurrentIrql() <= $crate::APC_LEVEL as u8 });
    };
}

// The dummy symbols wdk-sys 0.5.2 defines (src/lib.rs): LLVM references
// `_fltused` whenever it sees floating point, and panic=abort images still
// name the C++ frame handlers.
#[allow(missing_docs)]
// SAFETY: no other crate in a driver image defines `_fltused`.
#[unsafe(no_mangle)]
pub static _fltused: () = ();

#[cfg(panic = "abort")]
#[allow(missing_docs)]
// SAFETY: no other crate in a driver image defines this symbol.
#[unsafe(no_mangle)]
pub const extern "system" fn __CxxFrameHandler3() -> i32 {
    0
}

#[cfg(panic = "abort")]
#[allow(missing_docs)]
// SAFETY: no other crate in a driver image defines this symbol.
#[unsafe(no_mangle)]
pub const extern "system" fn __CxxFrameHandler4() -> i32 {
    1
}

#[cfg(panic = "abort")]
#[allow(missing_docs)]
// SAFETY: no other crate in a driver image defines this symbol.
#[unsafe(no_mangle)]
pub const extern "system" fn __GSHandlerCheck_EH4() -> i32 {
    2
}
