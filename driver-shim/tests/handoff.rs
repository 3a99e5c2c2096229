//! Plain (non-atomic) memory handed from one thread to another by the
//! simulated kernel's own synchronisation alone: a simulated processor held at
//! DISPATCH_LEVEL (its dispatch word), and the processor-change lock that
//! orders a registration's replay before a later hot-add's deliveries. Nothing
//! else orders the two threads (their flags are `Relaxed` on purpose, and
//! neither joins the other before the hand-over). Natively the tests check what
//! is handed over; under miri, whose race detector reports two accesses of the
//! same memory from different threads that no happens-before edge orders
//! (whatever the timing), they also check the acquires and releases of
//! `driver-shim/src/sim/kernel.rs`. `scripts/mutants orderings` runs them under
//! miri with each of those orderings weakened (loom does not see `std`'s
//! atomics), and with cross-thread address reuse off
//! (`-Zmiri-address-reuse-cross-thread-rate=0`): miri orders a free before a
//! reuse of its address on another thread, which would otherwise order these
//! threads in a few schedules.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::yield_now;

use perproc::Platform;
use perproc_wdk::sim::{Kernel, Policy};
use perproc_wdk::sys;
use perproc_wdk::{pool_tag, KernelPlatform};

const TAG: u32 = pool_tag(*b"Hand");

/// Memory read and written with plain accesses by one thread at a time.
struct Shared(UnsafeCell<u64>);

// SAFETY: each test says which exclusion its threads rely on (the claim under
// test); the value is read at the end only after every thread is joined.
unsafe impl Sync for Shared {}

#[test]
fn a_simulated_processors_data_passes_between_threads_by_dispatch_level_alone() {
    let kernel = Kernel::new(&[2], 2).unwrap();
    let shared = Shared(UnsafeCell::new(0));
    let rounds: u64 = if cfg!(miri) { 2 } else { 2_000 };
    // Relaxed on purpose: the second thread starts once the first has been at
    // DISPATCH_LEVEL once (so the value passes between them at least once,
    // whatever the schedule), but only the processor's dispatch word may order
    // their accesses.
    let first_raised = AtomicBool::new(false);
    std::thread::scope(|s| {
        let threads: Vec<_> = [true, false]
            .into_iter()
            .map(|first| {
                let (shared, first_raised) = (&shared, &first_raised);
                kernel.spawn_on(s, 1, move || {
                    let platform = KernelPlatform::new(TAG).unwrap();
                    while !first && !first_raised.load(Ordering::Relaxed) {
                        yield_now();
                    }
                    for _ in 0..rounds {
                        platform
                            .pinned(|pin| {
                                assert_eq!(pin.processor().get(), 1);
                                // A read-modify-write with a yield in the
                                // middle: lost updates unless DISPATCH_LEVEL
                                // excludes the other thread.
                                // SAFETY: at DISPATCH_LEVEL on processor 1,
                                // which excludes the other thread (the claim
                                // under test).
                                let v = unsafe { *shared.0.get() };
                                yield_now();
                                // SAFETY: as above, still raised.
                                unsafe { *shared.0.get() = v + 1 };
                            })
                            .unwrap();
                        first_raised.store(true, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
    });
    // SAFETY: both threads are joined.
    assert_eq!(unsafe { *shared.0.get() }, 2 * rounds);
    assert!(kernel.violations().is_empty());
}

/// Counts every delivery in its context, a `Shared`, with plain accesses.
///
/// # Safety
/// `context` points to a live `Shared` that only this callback touches while
/// callbacks may run (the processor-change lock serialises them here).
unsafe extern "C" fn count(
    context: sys::PVOID,
    _: sys::PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    _: sys::PNTSTATUS,
) {
    // SAFETY: the caller's promise.
    let shared = unsafe { &*context.cast::<Shared>() };
    // SAFETY: as above: no other delivery runs now.
    unsafe { *shared.0.get() += 1 };
}

#[test]
fn a_registrations_replay_passes_its_writes_to_a_later_hot_add_by_the_change_lock_alone() {
    // Serialised, a hot-add takes the processor-change lock exclusively (as
    // registration does); concurrent, shared.
    for concurrent in [false, true] {
        let kernel = Kernel::new(&[4], 2).unwrap();
        kernel.set_policy(Policy {
            concurrent,
            ..Policy::default()
        });
        let shared = Shared(UnsafeCell::new(0));
        let context = || ptr::from_ref(&shared).cast_mut().cast::<c_void>();
        let handle = |raw: usize| ptr::without_provenance_mut::<c_void>(raw);
        let on = kernel.enter().unwrap();
        // Registered on this thread before the others start: ordered before
        // both by the spawns. Delivered first by the hot-add below, which
        // therefore writes `shared` before it reaches the second registration
        // (and its in-flight count, which orders deliveries to one
        // registration): only the change lock orders that write after the
        // second registration's replay.
        // SAFETY: `count` is sound with this context from any thread until
        // deregistration, below, after every thread is joined.
        let first = unsafe { sys::KeRegisterProcessorChangeCallback(Some(count), context(), 0) };
        assert!(!first.is_null());
        // Relaxed on purpose: the hot-add starts after the registration
        // returns, but only the change lock may order their deliveries.
        let registered = AtomicBool::new(false);
        let second = std::thread::scope(|s| {
            let registering = kernel.spawn_on(s, 0, || {
                // Replays processors 0 and 1 (AddStart, AddComplete) to this
                // registration alone, holding the change lock exclusively.
                // SAFETY: as for `first`.
                let second = unsafe {
                    sys::KeRegisterProcessorChangeCallback(
                        Some(count),
                        context(),
                        sys::KE_PROCESSOR_CHANGE_ADD_EXISTING,
                    )
                };
                registered.store(true, Ordering::Relaxed);
                second.addr()
            });
            s.spawn(|| {
                while !registered.load(Ordering::Relaxed) {
                    yield_now();
                }
                assert!(kernel.hot_add_index(2).unwrap().added());
            });
            registering.join().unwrap().unwrap()
        });
        assert_ne!(second, 0);
        // SAFETY: every thread is joined.
        let counted = unsafe { *shared.0.get() };
        // 2 Starts and 2 Completes replayed; a Start and a Complete of
        // processor 2 to each registration.
        assert_eq!(counted, 8, "concurrent: {concurrent}");
        assert_eq!(kernel.deliveries().len(), 8);
        // SAFETY: both handles came from the registrations above, each
        // deregistered once.
        unsafe {
            sys::KeDeregisterProcessorChangeCallback(first);
            sys::KeDeregisterProcessorChangeCallback(handle(second));
        }
        drop(on);
        assert!(kernel.violations().is_empty(), "{:?}", kernel.violations());
    }
}
