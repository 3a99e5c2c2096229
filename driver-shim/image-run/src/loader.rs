//! Maps a driver image into this process: anonymous memory, headers and
//! sections copied to their RVAs, base relocations applied, every import
//! bound by name to a forwarder (an unbound one fails the load with its
//! name), then each section protected as its flags say (none writable and
//! executable). Calls into the image go through [`Image`]'s methods, which
//! count them.

use std::ffi::c_void;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use perproc_wdk::sim::sys::NTSTATUS;

use crate::bindings::{self, enter_image, Counters, ImageShared};
use crate::pe::{self, Headers, LoadError, SCN_EXECUTE, SCN_READ, SCN_WRITE};

/// The machine this loader runs images for.
#[cfg(target_arch = "x86_64")]
pub const HOST_MACHINE: u16 = pe::MACHINE_AMD64;
/// The machine this loader runs images for.
#[cfg(target_arch = "aarch64")]
pub const HOST_MACHINE: u16 = pe::MACHINE_ARM64;

/// Offset of `DriverUnload` in `DRIVER_OBJECT` on x64 and ARM64 alike (the
/// stand-in's generated layouts assert 104 for both).
pub const DRIVER_UNLOAD_OFFSET: usize = 0x68;
/// `sizeof(DRIVER_OBJECT)` on both 64-bit targets.
pub const DRIVER_OBJECT_SIZE: usize = 336;

/// A zeroed `DRIVER_OBJECT` as the I/O manager passes one to `DriverEntry`
/// (the images only write `DriverUnload`).
#[repr(C, align(8))]
pub struct DriverObject([u8; DRIVER_OBJECT_SIZE]);

impl Default for DriverObject {
    fn default() -> Self {
        Self([0; DRIVER_OBJECT_SIZE])
    }
}

impl DriverObject {
    /// The `DriverUnload` field (0 when unset).
    pub fn driver_unload(&self) -> usize {
        let mut word = [0u8; 8];
        if let Some(field) = self.0.get(DRIVER_UNLOAD_OFFSET..DRIVER_UNLOAD_OFFSET + 8) {
            word.copy_from_slice(field);
        }
        // usize is 64 bits on both targets.
        u64::from_ne_bytes(word) as usize
    }
}

/// `UNICODE_STRING` (16 bytes on 64-bit targets): the registry path.
#[repr(C)]
struct UnicodeString {
    length: u16,
    maximum_length: u16,
    buffer: *const u16,
}

#[cfg(target_arch = "x86_64")]
type DriverEntryFn = unsafe extern "win64" fn(*mut DriverObject, *const UnicodeString) -> NTSTATUS;
#[cfg(target_arch = "aarch64")]
type DriverEntryFn = unsafe extern "C" fn(*mut DriverObject, *const UnicodeString) -> NTSTATUS;
#[cfg(target_arch = "x86_64")]
type DriverUnloadFn = unsafe extern "win64" fn(*mut DriverObject);
#[cfg(target_arch = "aarch64")]
type DriverUnloadFn = unsafe extern "C" fn(*mut DriverObject);

/// Calls into one image, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCount {
    /// `DriverEntry`.
    pub entry: usize,
    /// `DriverUnload`.
    pub unload: usize,
    /// Exported functions.
    pub exports: usize,
    /// Processor-change callbacks.
    pub callbacks: usize,
    /// The deepest stack seen from a call into the image to a kernel call
    /// it made (bytes; includes simulator frames between nested calls).
    pub deepest_stack: usize,
}

impl CallCount {
    /// Every call into the image.
    pub fn total(&self) -> usize {
        self.entry + self.unload + self.exports + self.callbacks
    }
}

impl std::fmt::Display for CallCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} calls into the image (DriverEntry {}, DriverUnload {}, callbacks {}, exports {}); \
             deepest stack at a kernel call {} bytes",
            self.total(),
            self.entry,
            self.unload,
            self.callbacks,
            self.exports,
            self.deepest_stack
        )
    }
}

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    base: *mut c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Self, LoadError> {
        // SAFETY: an anonymous private mapping at an address the kernel
        // chooses touches no existing memory; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(LoadError::Os(format!(
                "mmap of {len} bytes: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self { base, len })
    }

    fn protect(&self, offset: usize, len: usize, prot: i32) -> Result<(), LoadError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(LoadError::Format(format!(
                "protection of {len} bytes at {offset:#x} past the image"
            )));
        }
        // SAFETY: the range lies inside this mapping (checked above), which
        // this struct owns; no Rust reference into it exists.
        let rc = unsafe { libc::mprotect(self.base.cast::<u8>().add(offset).cast(), len, prot) };
        if rc != 0 {
            return Err(LoadError::Os(format!(
                "mprotect {offset:#x}+{len:#x}: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is this struct's own and nothing uses it after
        // drop (an image with live registrations leaks its Mapping instead).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096)
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Makes the instruction stream see the code just written (ARM64 has no
/// coherence between the data and instruction caches for it).
#[cfg(target_arch = "aarch64")]
fn sync_instruction_cache(start: usize, end: usize) {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 is permitted at EL0 on Linux (trapped and
    // emulated where the hardware does not allow it); it has no side effects.
    unsafe { std::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    let dline = 4usize << ((ctr >> 16) & 0xf);
    let iline = 4usize << (ctr & 0xf);
    let mut addr = start & !(dline - 1);
    while addr < end {
        // SAFETY: cleaning a cache line by VA of readable memory this process
        // maps (the image's code) changes no memory contents.
        unsafe { std::arch::asm!("dc cvau, {}", in(reg) addr, options(nostack)) };
        addr += dline;
    }
    // SAFETY: a barrier; no operands.
    unsafe { std::arch::asm!("dsb ish", options(nostack)) };
    let mut addr = start & !(iline - 1);
    while addr < end {
        // SAFETY: invalidating instruction cache lines of readable memory this
        // process maps changes no memory contents.
        unsafe { std::arch::asm!("ic ivau, {}", in(reg) addr, options(nostack)) };
        addr += iline;
    }
    // SAFETY: barriers; no operands.
    unsafe { std::arch::asm!("dsb ish", "isb", options(nostack)) };
}

/// A loaded image. Dropping it unmaps it, unless it still has a registered
/// callback (then the mapping is leaked and a violation recorded).
pub struct Image {
    mapping: Option<Mapping>,
    headers: Headers,
    exports: Vec<(String, u32)>,
    imports: Vec<pe::Import>,
    relocations: usize,
    shared: Arc<ImageShared>,
}

// SAFETY: the mapping is only read through shared references after load
// (the image's own writes are its business, synchronised by its code); the
// raw pointer in `Mapping` is the only non-Send/Sync field.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

impl Image {
    /// Loads the image at `path`, binding its imports with
    /// [`bindings::binding`].
    ///
    /// # Safety
    /// The file is a trusted driver image (built from this repository): its
    /// code, once loaded, is sound to run in this process under the WDK
    /// contracts the simulated kernel implements. Every method that calls
    /// into the image relies on this.
    pub unsafe fn load(path: &Path) -> Result<Self, LoadError> {
        // SAFETY: the caller's contract.
        unsafe { Self::load_with(path, bindings::binding) }
    }

    /// As [`load`](Self::load), binding imports with `resolve` (the
    /// forwarder's address for a name, or `None`: the load fails with that
    /// name).
    ///
    /// # Safety
    /// As for [`load`](Self::load); and every address `resolve` returns is a
    /// function in the image's ABI with the signature of the import it is
    /// bound to.
    pub unsafe fn load_with(
        path: &Path,
        resolve: impl Fn(&str) -> Option<usize>,
    ) -> Result<Self, LoadError> {
        let file =
            std::fs::read(path).map_err(|e| LoadError::Io(format!("{}: {e}", path.display())))?;
        let headers = Headers::parse(&file)?;
        if headers.machine != HOST_MACHINE {
            return Err(LoadError::Machine(headers.machine));
        }
        let page = page_size();
        let alignment = usize::try_from(headers.section_alignment).unwrap_or(0);
        if alignment == 0 || alignment % page != 0 {
            return Err(LoadError::Format(format!(
                "section alignment {alignment:#x} is not a multiple of the page size {page:#x}"
            )));
        }
        for s in &headers.sections {
            if s.characteristics & SCN_WRITE != 0 && s.characteristics & SCN_EXECUTE != 0 {
                return Err(LoadError::Format(format!(
                    "section {} is writable and executable",
                    s.name
                )));
            }
        }
        let mut image = headers.lay_out(&file)?;

        // Bind every import before mapping anything.
        let imports = headers.imports(&image)?;
        for import in &imports {
            let unbound = || LoadError::Unbound {
                dll: import.dll.clone(),
                name: import.name.clone(),
            };
            if !import.dll.eq_ignore_ascii_case("ntoskrnl.exe") {
                return Err(unbound());
            }
            let address = resolve(&import.name).ok_or_else(unbound)?;
            pe::put_u64(&mut image, import.iat_rva as usize, address as u64)?;
        }
        let exports = headers.exports(&image)?;

        let size = round_up(image.len(), page);
        let mapping = Mapping::new(size)?;
        let base = mapping.base as usize;
        let relocations = headers.relocate(&mut image, base as u64)?;
        // SAFETY: the mapping is `size >= image.len()` bytes of fresh
        // read-write memory this function owns; `image` is a separate Vec.
        unsafe {
            std::ptr::copy_nonoverlapping(image.as_ptr(), mapping.base.cast::<u8>(), image.len())
        };

        mapping.protect(0, size, libc::PROT_NONE)?;
        mapping.protect(
            0,
            round_up(headers.size_of_headers as usize, page),
            libc::PROT_READ,
        )?;
        let mut code = Vec::new();
        for s in &headers.sections {
            let mut prot = libc::PROT_NONE;
            if s.characteristics & SCN_READ != 0 {
                prot |= libc::PROT_READ;
            }
            if s.characteristics & SCN_WRITE != 0 {
                prot |= libc::PROT_WRITE;
            }
            if s.characteristics & SCN_EXECUTE != 0 {
                prot |= libc::PROT_EXEC;
            }
            let start = s.rva as usize;
            let len = round_up(s.virtual_size as usize, page);
            mapping.protect(start, len, prot)?;
            if s.characteristics & SCN_EXECUTE != 0 {
                code.push((base + start, base + start + s.virtual_size as usize));
                #[cfg(target_arch = "aarch64")]
                sync_instruction_cache(base + start, base + start + s.virtual_size as usize);
            }
        }
        let shared = Arc::new(ImageShared {
            base,
            size,
            code,
            counters: Counters::default(),
            violations: Mutex::new(Vec::new()),
        });
        bindings::add_image(Arc::clone(&shared));
        Ok(Self {
            mapping: Some(mapping),
            headers,
            exports,
            imports,
            relocations,
            shared,
        })
    }

    /// Where the image is mapped.
    pub fn base(&self) -> usize {
        self.shared.base
    }

    /// The imports, as bound (`dll`, `name`).
    pub fn imports(&self) -> Vec<(String, String)> {
        self.imports
            .iter()
            .map(|i| (i.dll.clone(), i.name.clone()))
            .collect()
    }

    /// The base relocations applied.
    pub fn relocations(&self) -> usize {
        self.relocations
    }

    /// The address of the export `name`, if the image has it.
    pub fn export(&self, name: &str) -> Option<usize> {
        self.exports
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, rva)| self.shared.base + rva as usize)
    }

    /// The exported names.
    pub fn export_names(&self) -> Vec<String> {
        self.exports.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The entry point's address.
    pub fn entry(&self) -> usize {
        self.shared.base + self.headers.entry as usize
    }

    /// Whether `address` is in the image's code.
    pub fn is_code(&self, address: usize) -> bool {
        self.shared.is_code(address)
    }

    /// Calls into the image so far.
    pub fn calls(&self) -> CallCount {
        let c = &self.shared.counters;
        CallCount {
            entry: c.entry.load(Ordering::Relaxed),
            unload: c.unload.load(Ordering::Relaxed),
            exports: c.exports.load(Ordering::Relaxed),
            callbacks: c.callbacks.load(Ordering::Relaxed),
            deepest_stack: c.deepest_stack.load(Ordering::Relaxed),
        }
    }

    /// Misuses the bindings recorded while this image ran.
    pub fn violations(&self) -> Vec<String> {
        self.shared
            .violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Calls `DriverEntry(driver, <empty registry path>)`. The calling
    /// thread must run on a simulated processor at PASSIVE_LEVEL (else the
    /// image's kernel calls fail as on a thread outside the kernel).
    pub fn driver_entry(&self, driver: &mut DriverObject) -> NTSTATUS {
        let path = UnicodeString {
            length: 0,
            maximum_length: 0,
            buffer: std::ptr::null(),
        };
        // SAFETY: the entry point is in the image's code (mapped executable,
        // relocated, bound); `load`'s contract makes it the image's
        // DriverEntry of type DriverEntryFn in the image's ABI.
        let entry = unsafe { std::mem::transmute::<usize, DriverEntryFn>(self.entry()) };
        self.shared.counters.entry.fetch_add(1, Ordering::Relaxed);
        enter_image(&self.shared, || {
            // SAFETY: DriverEntry's contract: a DRIVER_OBJECT of the layout
            // the image was compiled against (336 bytes, zeroed, writable for
            // the call) and a readable UNICODE_STRING, both live across it.
            unsafe { entry(driver, &path) }
        })
    }

    /// Calls the `DriverUnload` that `DriverEntry` stored in `driver`.
    /// Returns `false` (calling nothing) if it is unset or not the image's
    /// code.
    pub fn driver_unload(&self, driver: &mut DriverObject) -> bool {
        let unload = driver.driver_unload();
        if !self.is_code(unload) {
            return false;
        }
        // SAFETY: non-null and in the image's code: the function its
        // DriverEntry stored as PDRIVER_UNLOAD, of this type in its ABI.
        let unload = unsafe { std::mem::transmute::<usize, DriverUnloadFn>(unload) };
        self.shared.counters.unload.fetch_add(1, Ordering::Relaxed);
        enter_image(&self.shared, || {
            // SAFETY: DriverUnload's contract: the driver object its
            // DriverEntry succeeded with, called once (the caller's; the
            // drivers tolerate a second call: their slot is empty then).
            unsafe { unload(driver) }
        });
        true
    }

    /// Calls `f` (which calls an export of this image) counted as one call
    /// into the image.
    pub(crate) fn call_export<R>(&self, f: impl FnOnce() -> R) -> R {
        self.shared.counters.exports.fetch_add(1, Ordering::Relaxed);
        enter_image(&self.shared, f)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        bindings::remove_image(&self.shared);
        if bindings::live_registrations(&self.shared) > 0 {
            // A test already failed (its image is dropped while registered);
            // the mapping stays so the simulator's later calls still find
            // code. Not a violation of the next test.
            eprintln!(
                "image at {:#x} dropped with a registered callback: left mapped",
                self.shared.base
            );
            std::mem::forget(self.mapping.take());
        }
    }
}

/// The storage driver's exported I/O path.
pub struct Storage<'a> {
    image: &'a Image,
    submit: SubmitFn,
    complete: CompleteFn,
    statistic: StatisticFn,
}

#[cfg(target_arch = "x86_64")]
type SubmitFn = unsafe extern "win64" fn(u64, u32) -> NTSTATUS;
#[cfg(target_arch = "aarch64")]
type SubmitFn = unsafe extern "C" fn(u64, u32) -> NTSTATUS;
#[cfg(target_arch = "x86_64")]
type CompleteFn = unsafe extern "win64" fn(u32) -> u32;
#[cfg(target_arch = "aarch64")]
type CompleteFn = unsafe extern "C" fn(u32) -> u32;
#[cfg(target_arch = "x86_64")]
type StatisticFn = unsafe extern "win64" fn(u32) -> u64;
#[cfg(target_arch = "aarch64")]
type StatisticFn = unsafe extern "C" fn(u32) -> u64;

impl<'a> Storage<'a> {
    /// The exports of the storage driver image `image`.
    pub fn new(image: &'a Image) -> Result<Self, LoadError> {
        let find = |name: &str| {
            image
                .export(name)
                .filter(|&a| image.is_code(a))
                .ok_or_else(|| LoadError::Format(format!("no exported function {name}")))
        };
        let (submit, complete, statistic) = (
            find("PerprocStorageSubmit")?,
            find("PerprocStorageComplete")?,
            find("PerprocStorageStatistic")?,
        );
        // SAFETY (all three): each address is the named export, in the
        // image's code; `Image::load`'s contract makes it the storage
        // driver's function of that name, whose signature (lib.rs of
        // driver-shim/storage-driver) is the type given, in the image's ABI.
        Ok(Self {
            image,
            // SAFETY: see above.
            submit: unsafe { std::mem::transmute::<usize, SubmitFn>(submit) },
            // SAFETY: see above.
            complete: unsafe { std::mem::transmute::<usize, CompleteFn>(complete) },
            // SAFETY: see above.
            statistic: unsafe { std::mem::transmute::<usize, StatisticFn>(statistic) },
        })
    }

    /// `PerprocStorageSubmit(sector, bytes)`.
    pub fn submit(&self, sector: u64, bytes: u32) -> NTSTATUS {
        // SAFETY: the export takes two integers and is callable at any
        // IRQL <= DISPATCH_LEVEL from any thread (loaded or not).
        self.image
            .call_export(|| unsafe { (self.submit)(sector, bytes) })
    }

    /// `PerprocStorageComplete(processor)`.
    pub fn complete(&self, processor: u32) -> u32 {
        // SAFETY: as for submit.
        self.image
            .call_export(|| unsafe { (self.complete)(processor) })
    }

    /// `PerprocStorageStatistic(which)`.
    pub fn statistic(&self, which: u32) -> u64 {
        // SAFETY: as for submit.
        self.image
            .call_export(|| unsafe { (self.statistic)(which) })
    }
}
