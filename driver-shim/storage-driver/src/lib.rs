//! The kernel half of `examples/storage_driver.rs` as a WDM driver.
//!
//! `DriverEntry` builds the driver's per-CPU parts: a request pool
//! ([`PerCpuPool`], per-processor caches over a shared depot), a submission
//! queue per processor ([`PerCpuQueue`]) and statistics ([`PerCpuCounters`]),
//! and registers them for processor hot-add with
//! `KE_PROCESSOR_CHANGE_ADD_EXISTING` (every booted processor is prepared
//! before registration returns; a hot-added one is prepared on its AddStart,
//! on its own NUMA node). `DriverUnload` deregisters, completes what is still
//! queued, and frees everything.
//!
//! The I/O path is exported (a real driver would call it from its dispatch
//! routines and DPCs), so the image holds, and imports, everything the
//! library calls in the kernel:
//!
//! - [`storage_submit`]: pin (raise to `DISPATCH_LEVEL`), take a request from
//!   this processor's pool cache, push it on this processor's queue, count it;
//! - [`storage_complete`]: pin, drain a processor's queue (the completion
//!   DPC; remote frees when it is another processor's), check and free each
//!   request, count them;
//! - [`storage_statistic`]: a counter summed over every processor.
//!
//! Nothing here can panic: the release image imports no `KeBugCheckEx`
//! (`scripts/windows-driver` checks it).
#![no_std]

#[cfg(not(test))]
extern crate wdk_panic;

use perproc::{
    Error, Limits, PerCpuCounters, PerCpuPool, PerCpuQueue, PinGuard, Platform, PoolBox,
    ProcessorIndex,
};
use perproc_wdk::{pool_tag, status_of, DriverSlot, KernelPlatform, PoolAlloc};
use perproc_wdk::{RegisterError, Registration};
use wdk_sys::{
    DRIVER_OBJECT, NTSTATUS, PCUNICODE_STRING, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
};

/// Pool tags, one per part, so a leak names its part (`!poolused`).
const TAG_DRIVER: u32 = pool_tag(*b"Stdr");
const TAG_POOL: u32 = pool_tag(*b"Stpl");
const TAG_QUEUE: u32 = pool_tag(*b"Stq ");
const TAG_STATS: u32 = pool_tag(*b"Stct");

/// Requests a processor's queue holds before a submit is refused.
const QUEUE_DEPTH: usize = 64;
/// Requests the pool may hold in all (it grows by slabs up to this).
const POOL_TOTAL: usize = 64 * 1024;
/// Objects a processor's pool cache holds.
const POOL_PER_CPU: usize = 64;

perproc::counters! {
    /// The driver's statistics.
    struct IoStats {
        /// Requests queued.
        submitted,
        /// Requests completed.
        completed,
        /// Requests refused for backpressure (pool or queue full).
        backpressure,
    }
}

/// An I/O request.
struct Request {
    sector: u64,
    bytes: u32,
    /// A function of the rest: a completion that reads a torn or reused
    /// request sees it.
    check: u64,
}

fn check_of(sector: u64, bytes: u32) -> u64 {
    (sector.rotate_left(17) ^ u64::from(bytes)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The driver's per-CPU parts.
struct Storage {
    platform: KernelPlatform,
    requests: PerCpuPool<Request, KernelPlatform>,
    submissions: PerCpuQueue<PoolBox<Request>, KernelPlatform>,
    stats: PerCpuCounters<IoStats, KernelPlatform>,
}
perproc::components!(Storage => requests, submissions, stats);

impl Storage {
    fn new() -> Result<Self, Error> {
        let platform = KernelPlatform::new(TAG_POOL)?;
        let limits = Limits {
            total: POOL_TOTAL,
            per_cpu: POOL_PER_CPU,
        };
        Ok(Self {
            platform,
            requests: PerCpuPool::new(&platform, limits)?,
            submissions: PerCpuQueue::new_in(&platform, PoolAlloc::new(TAG_QUEUE), QUEUE_DEPTH)?,
            stats: PerCpuCounters::new_in(&platform, PoolAlloc::new(TAG_STATS))?,
        })
    }

    /// Checks, counts and frees one drained request on the processor `pin`
    /// holds; whether it was intact.
    fn complete(&self, pin: &PinGuard<'_, KernelPlatform>, request: PoolBox<Request>) -> bool {
        let intact = request.check == check_of(request.sector, request.bytes);
        self.stats.add(pin, IoStats::completed, 1);
        self.requests.free(pin, request);
        intact
    }

    /// Completes everything still queued (at unload, after deregistration).
    fn complete_all(&self) {
        // Unload runs at PASSIVE_LEVEL, so pinning is not refused; if it were,
        // dropping the queue would drop the boxes, which go back to the pool.
        let _ = self.platform.pinned(|pin| {
            for (_, request) in self.submissions.drain_all() {
                self.complete(pin, request);
            }
        });
    }

    /// See [`storage_submit`].
    fn submit(&self, sector: u64, bytes: u32) -> NTSTATUS {
        let submitted = self.platform.pinned(|pin| {
            let request = Request {
                sector,
                bytes,
                check: check_of(sector, bytes),
            };
            let Ok(request) = self.requests.alloc(pin, request) else {
                self.stats.add(pin, IoStats::backpressure, 1);
                return STATUS_INSUFFICIENT_RESOURCES;
            };
            match self.submissions.push(pin, request) {
                Ok(()) => {
                    self.stats.add(pin, IoStats::submitted, 1);
                    STATUS_SUCCESS
                }
                Err(full) => {
                    self.requests.free(pin, full.into_inner());
                    self.stats.add(pin, IoStats::backpressure, 1);
                    STATUS_INSUFFICIENT_RESOURCES
                }
            }
        });
        submitted.unwrap_or(STATUS_INVALID_DEVICE_STATE)
    }

    /// See [`storage_complete`].
    fn complete_queue(&self, index: ProcessorIndex) -> u32 {
        if index.get() >= self.platform.max_processors() {
            return u32::MAX;
        }
        let completed = self.platform.pinned(|pin| {
            let mut done = 0u32;
            let mut intact = true;
            for request in self.submissions.drain(index) {
                intact &= self.complete(pin, request);
                done = done.saturating_add(1);
            }
            if intact {
                done
            } else {
                u32::MAX
            }
        });
        completed.unwrap_or(u32::MAX)
    }
}

/// The driver's state from `DriverEntry` to `DriverUnload`.
static DRIVER: DriverSlot<Registration<Storage>> = DriverSlot::new();

/// `DriverEntry`: builds the parts, registers them (replaying the booted
/// processors), keeps the registration until `DriverUnload`.
///
/// # Safety
/// Called once by the I/O manager at PASSIVE_LEVEL with its driver object.
// SAFETY: "DriverEntry" is the symbol the kernel loader calls; nothing else in
// the image exports it.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: PCUNICODE_STRING,
) -> NTSTATUS {
    let storage = match Storage::new() {
        Ok(storage) => storage,
        Err(error) => return status_of(error),
    };
    let registration = match Registration::register(storage, PoolAlloc::new(TAG_DRIVER)) {
        Ok(registration) => registration,
        Err(RegisterError { status, .. }) => return status,
    };
    if let Err((registration, status)) = DRIVER.install(registration, PoolAlloc::new(TAG_DRIVER)) {
        drop(registration);
        return status;
    }
    // SAFETY: the I/O manager passes its driver object, which DriverEntry may
    // fill in; NULL is refused by `as_mut`.
    match unsafe { driver.as_mut() } {
        Some(driver) => {
            driver.DriverUnload = Some(driver_unload);
            STATUS_SUCCESS
        }
        None => {
            unload();
            STATUS_INVALID_PARAMETER
        }
    }
}

/// Deregisters (waiting for callbacks in flight), completes what is queued,
/// frees the parts.
fn unload() {
    if let Some(registration) = DRIVER.take() {
        let storage = registration.deregister();
        storage.complete_all();
    }
}

/// `DriverUnload`.
///
/// # Safety
/// Called once by the I/O manager at PASSIVE_LEVEL, after `DriverEntry`
/// succeeded.
unsafe extern "C" fn driver_unload(_driver: *mut DRIVER_OBJECT) {
    unload();
}

/// Submits a request on the calling processor: pinned, a request from this
/// processor's pool cache goes on this processor's queue. Returns
/// `STATUS_SUCCESS`, `STATUS_INSUFFICIENT_RESOURCES` (pool or queue full:
/// backpressure, counted) or `STATUS_INVALID_DEVICE_STATE` (not loaded, or
/// called above `DISPATCH_LEVEL`). Callable at IRQL <= DISPATCH_LEVEL.
// SAFETY: no other symbol in the image has this name.
#[unsafe(export_name = "PerprocStorageSubmit")]
pub extern "C" fn storage_submit(sector: u64, bytes: u32) -> NTSTATUS {
    DRIVER
        .with(|driver| driver.parts().submit(sector, bytes))
        .unwrap_or(STATUS_INVALID_DEVICE_STATE)
}

/// The completion DPC for processor `processor`'s queue, run on the calling
/// processor: drains it, checks, counts and frees every request (a remote
/// free when `processor` is another one). Returns how many were completed,
/// or `u32::MAX` if any was corrupt, `processor` is out of range, or the
/// driver is not loaded. Callable at IRQL <= DISPATCH_LEVEL.
// SAFETY: no other symbol in the image has this name.
#[unsafe(export_name = "PerprocStorageComplete")]
pub extern "C" fn storage_complete(processor: u32) -> u32 {
    let Some(index) = ProcessorIndex::new(processor) else {
        return u32::MAX;
    };
    DRIVER
        .with(|driver| driver.parts().complete_queue(index))
        .unwrap_or(u32::MAX)
}

/// Counter `which` (0 submitted, 1 completed, 2 refused) summed over every
/// processor; 0 if not loaded or `which` is unknown.
// SAFETY: no other symbol in the image has this name.
#[unsafe(export_name = "PerprocStorageStatistic")]
pub extern "C" fn storage_statistic(which: u32) -> u64 {
    DRIVER
        .with(|driver| {
            let sums = driver.parts().stats.sums();
            match which {
                0 => sums.submitted,
                1 => sums.completed,
                2 => sums.backpressure,
                _ => 0,
            }
        })
        .unwrap_or(0)
}
