//! Runs perproc's WDM driver images (the `.sys` files `scripts/windows-driver`
//! links) on Linux against the simulated kernel, `perproc_wdk::sim`:
//!
//! - [`pe`]: a PE32+ reader (headers, sections, relocations, imports, exports);
//! - [`loader`]: maps an image (`mmap`), relocates it, binds each import by
//!   name, protects each section by its flags, and calls into it, counting;
//! - [`bindings`]: one forwarder per imported kernel routine, in the image's
//!   ABI, to the simulator function of the same name, and the trampoline for
//!   the processor-change callback the image registers;
//! - [`disasm`]: the register check (no x18 in an ARM64 image, no gs/cr8 in
//!   an x64 one).
//!
//! x86_64 runs the x64 images natively; aarch64 (built for
//! `aarch64-unknown-linux-musl`, run under `qemu-aarch64`) runs the ARM64
//! ones. On any other host the crate is empty. See
//! `scripts/windows-images-run` and driver-shim/README.md.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

pub mod bindings;
pub mod disasm;
pub mod loader;
pub mod pe;

pub use loader::{CallCount, DriverObject, Image, Storage};
pub use pe::LoadError;

/// The directory `scripts/windows-driver` links the images into, as
/// `<arch>/perproc-<driver>.sys` (`$PERPROC_WINDOWS_IMAGES` overrides it).
pub fn images_dir() -> std::path::PathBuf {
    match std::env::var_os("PERPROC_WINDOWS_IMAGES") {
        Some(dir) => dir.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/windows"),
    }
}

/// This host's image architecture directory (`x64` or `arm64`).
pub const ARCH: &str = if cfg!(target_arch = "x86_64") {
    "x64"
} else {
    "arm64"
};

/// The path of driver `name`'s image (`seed`, `storage`) for architecture
/// `arch` (`x64`, `arm64`).
pub fn image_path(arch: &str, name: &str) -> std::path::PathBuf {
    images_dir()
        .join(arch)
        .join(format!("perproc-{name}-driver.sys"))
}

/// The size of the calling thread's stack, as the C library reports it
/// (what a `std::thread::Builder::stack_size` request became: the C
/// library may round it up, e.g. to its minimum plus the static TLS).
pub fn current_stack_size() -> Option<usize> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initialises `attr` for the calling thread
    // when it returns 0; it is destroyed below only in that case.
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) } != 0 {
        return None;
    }
    let mut addr = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: `attr` was initialised above; the out-pointers are valid.
    let rc = unsafe { libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) };
    // SAFETY: `attr` was initialised above and is destroyed once.
    unsafe { libc::pthread_attr_destroy(attr.as_mut_ptr()) };
    (rc == 0).then_some(size)
}
