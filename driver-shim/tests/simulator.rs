//! The simulated kernel itself: IRQL and processor exclusivity, callback
//! delivery (serialised, concurrent, deregistration waiting), misuse detection,
//! the pool; and PoolAlloc over it.

use std::alloc::Layout;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use perproc::{Component, Error, PerCpu, Platform, Prepared, ProcessorIndex, RawAlloc};
use perproc_wdk::sim::{self, Fault, HotAdd, Kernel, Policy, SimError, Violation};
use perproc_wdk::sys::{self, PROCESSOR_NUMBER};
use perproc_wdk::{pool_tag, KernelPlatform, PoolAlloc, Registration};

const TAG: u32 = pool_tag(*b"Test");

#[test]
fn irql_misuse_is_recorded_not_undefined() {
    let kernel = Kernel::new(&[4], 2).unwrap();
    {
        let _on = kernel.enter().unwrap();
        // SAFETY: simulated kernel calls without pointers; the misuse is what is
        // tested (recorded, not undefined).
        unsafe {
            assert_eq!(sys::KeGetCurrentIrql(), 0);
            let old = sys::KfRaiseIrql(2);
            assert_eq!((old, sys::KeGetCurrentIrql()), (0, 2));
            assert_eq!(sys::KfRaiseIrql(2), 2); // raising to the same level: allowed
            sys::KeLowerIrql(2); // lowering to the same level: allowed
            assert_eq!(sys::KfRaiseIrql(1), 2); // raising to lower: refused
            sys::KeLowerIrql(0);
            sys::KeLowerIrql(1); // lowering to higher: refused
            sys::KfRaiseIrql(2); // and left raised
        }
    }
    assert_eq!(
        kernel.violations(),
        vec![
            Violation::RaiseToLower { from: 2, to: 1 },
            Violation::LowerToHigher { from: 0, to: 1 },
            Violation::LeftRaised { index: 0, irql: 2 },
        ]
    );
    // Leaving raised released the processor: another thread can raise on it.
    std::thread::scope(|s| {
        // SAFETY: IRQL calls of the simulated kernel, balanced.
        kernel
            .spawn_on(s, 0, || unsafe {
                sys::KfRaiseIrql(2);
                sys::KeLowerIrql(0);
            })
            .join()
            .unwrap()
            .unwrap();
    });
}

/// A raw callback that raises the IRQL to the level its context points to and
/// returns without lowering it (a misuse the simulator records and repairs).
unsafe extern "C" fn raise_and_return(
    context: sys::PVOID,
    _: sys::PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    _: sys::PNTSTATUS,
) {
    // SAFETY: registered with a pointer to a static AtomicU8 as context.
    let level = unsafe { &*context.cast::<AtomicU8>() }.load(Ordering::SeqCst);
    // SAFETY: an IRQL call of the simulated kernel.
    unsafe { sys::KfRaiseIrql(level) };
}

/// Registers `raise_and_return` (no replay) raising to `level`.
fn register_raiser(level: &'static AtomicU8) -> sys::PVOID {
    let context = std::ptr::from_ref(level).cast_mut().cast();
    // SAFETY: the callback is sound with this context (a static) on any thread.
    let handle =
        unsafe { sys::KeRegisterProcessorChangeCallback(Some(raise_and_return), context, 0) };
    assert!(!handle.is_null());
    handle
}

/// Whether another thread, entered on processor `index`, raises to
/// DISPATCH_LEVEL there (takes the processor) within `limit`. The thread is
/// left behind when it does not (it takes the processor once it is free).
fn taken_by_another_thread(kernel: &Kernel, index: u32, limit: Duration) -> bool {
    on_own_thread(kernel, limit, move |kernel| {
        let _on = kernel.enter_on(index).unwrap();
        // SAFETY: IRQL calls of the simulated kernel, balanced.
        unsafe {
            sys::KfRaiseIrql(2);
            sys::KeLowerIrql(0);
        }
    })
    .is_some()
}

/// Runs `f` on a new thread with (a handle to) `kernel`; its result, or `None`
/// if it did not finish within `limit` (so a simulator that makes a thread
/// wait forever fails the test instead of hanging it).
fn on_own_thread<R: Send + 'static>(
    kernel: &Kernel,
    limit: Duration,
    f: impl FnOnce(Kernel) -> R + Send + 'static,
) -> Option<R> {
    let kernel = kernel.clone();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f(kernel));
    });
    finished.recv_timeout(limit).ok()
}

/// A callback that returns above the IRQL it was called at is recorded, and
/// the simulator repairs it: the thread is back at its IRQL, and the processor
/// the callback took at DISPATCH_LEVEL is given back (another thread takes it).
#[test]
fn a_callback_returning_at_dispatch_level_gives_its_processor_back() {
    static LEVEL: AtomicU8 = AtomicU8::new(2);
    let kernel = Kernel::new(&[4], 1).unwrap();
    let _on = kernel.enter().unwrap();
    let handle = register_raiser(&LEVEL);
    let context = sys::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT::default();
    assert_eq!(kernel.deliver_raw(context).unwrap().len(), 1);
    assert_eq!(
        kernel.violations(),
        vec![Violation::CallbackChangedIrql {
            registration: kernel.registrations()[0],
            expected: 0,
            returned: 2,
        }]
    );
    // SAFETY: reads the simulated IRQL.
    assert_eq!(unsafe { sys::KeGetCurrentIrql() }, 0);
    assert!(
        taken_by_another_thread(&kernel, 0, Duration::from_secs(10)),
        "processor 0 was kept"
    );
    // SAFETY: the handle came from the registration above.
    unsafe { sys::KeDeregisterProcessorChangeCallback(handle) };
    assert_eq!(kernel.violations().len(), 1);
}

/// Only DISPATCH_LEVEL and above hold the processor: a thread at APC_LEVEL
/// does not keep others off it, and one lowering from above DISPATCH_LEVEL to
/// DISPATCH_LEVEL keeps it until it goes below.
#[test]
fn only_dispatch_level_and_above_hold_the_processor() {
    let kernel = Kernel::new(&[4], 1).unwrap();
    let _on = kernel.enter().unwrap();
    // SAFETY: IRQL calls of the simulated kernel, lowered back below.
    let old = unsafe { sys::KfRaiseIrql(1) };
    assert!(
        taken_by_another_thread(&kernel, 0, Duration::from_secs(10)),
        "APC_LEVEL held the processor"
    );
    // SAFETY: as above.
    unsafe {
        sys::KfRaiseIrql(15);
        sys::KeLowerIrql(2);
    }
    assert!(
        !taken_by_another_thread(&kernel, 0, Duration::from_millis(500)),
        "lowering to DISPATCH_LEVEL gave the processor away"
    );
    // SAFETY: as above.
    unsafe { sys::KeLowerIrql(old) };
    assert!(taken_by_another_thread(&kernel, 0, Duration::from_secs(10)));
    assert!(kernel.violations().is_empty());
}

/// Entries nest on one processor too. A thread holding processor 0 at
/// DISPATCH_LEVEL in an outer entry raises again in an inner entry of
/// processor 0 without waiting for itself; and a callback run from the inner
/// entry that returns at another IRQL below DISPATCH_LEVEL does not give away
/// the processor the outer entry holds.
#[test]
fn nested_entries_on_one_processor_do_not_wait_for_or_give_away_their_hold() {
    static LEVEL: AtomicU8 = AtomicU8::new(1);
    let kernel = Kernel::new(&[4], 1).unwrap();
    let nested = on_own_thread(&kernel, Duration::from_secs(10), |kernel| {
        let _outer = kernel.enter_on(0).unwrap();
        // SAFETY: IRQL calls of the simulated kernel, lowered below.
        let old = unsafe { sys::KfRaiseIrql(2) };
        let inner = kernel.enter_on(0).unwrap();
        let handle = register_raiser(&LEVEL);
        let registration = kernel.registrations()[0];
        let context = sys::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT::default();
        assert_eq!(kernel.deliver_raw(context).unwrap().len(), 1);
        let kept = !taken_by_another_thread(&kernel, 0, Duration::from_millis(500));
        // SAFETY: as above; back to the inner entry's PASSIVE_LEVEL.
        let raised = unsafe {
            let inner_old = sys::KfRaiseIrql(2);
            sys::KeLowerIrql(inner_old);
            inner_old
        };
        // SAFETY: the handle came from the registration above.
        unsafe { sys::KeDeregisterProcessorChangeCallback(handle) };
        drop(inner);
        // SAFETY: back to the IRQL the outer entry was raised from.
        unsafe { sys::KeLowerIrql(old) };
        (kept, raised, registration)
    });
    let (kept, raised, registration) =
        nested.expect("raising again on a held processor waited for itself");
    assert!(kept, "the callback's IRQL change gave the processor away");
    assert_eq!(raised, 0);
    assert_eq!(
        kernel.violations(),
        vec![Violation::CallbackChangedIrql {
            registration,
            expected: 0,
            returned: 1,
        }]
    );
}

struct Shared(UnsafeCell<u64>);
// SAFETY: accessed only by threads pinned to the same simulated processor,
// which the simulator makes exclusive (that is what the test checks).
unsafe impl Sync for Shared {}

#[test]
fn dispatch_level_makes_a_simulated_processor_exclusive() {
    let kernel = Kernel::new(&[4], 4).unwrap();
    let shared = Shared(UnsafeCell::new(0));
    const ROUNDS: u64 = 5_000;
    std::thread::scope(|s| {
        for _ in 0..3 {
            let shared = &shared;
            kernel.spawn_on(s, 2, move || {
                let platform = KernelPlatform::new(TAG).unwrap();
                for i in 0..ROUNDS {
                    platform
                        .pinned(|_pin| {
                            // A read-modify-write with a yield in the middle:
                            // lost updates unless the pin really excludes the
                            // others.
                            // SAFETY: pinned to processor 2, which excludes the
                            // other threads that use `shared` (the claim under
                            // test).
                            let v = unsafe { *shared.0.get() };
                            if i % 64 == 0 {
                                std::thread::yield_now();
                            }
                            // SAFETY: as above: still pinned.
                            unsafe { *shared.0.get() = v + 1 };
                        })
                        .unwrap();
                }
            });
        }
        // A thread on another processor is not held up by processor 2.
        kernel
            .spawn_on(s, 3, || {
                let platform = KernelPlatform::new(TAG).unwrap();
                assert_eq!(platform.pinned(|pin| pin.processor().get()), Ok(3));
            })
            .join()
            .unwrap()
            .unwrap();
    });
    // SAFETY: every thread that used `shared` has been joined.
    assert_eq!(unsafe { *shared.0.get() }, 3 * ROUNDS);
    assert!(kernel.violations().is_empty());
}

/// A component whose prepare waits until `want` prepares are in flight (or a
/// timeout), recording the most seen at once.
struct Overlap {
    in_flight: AtomicUsize,
    most: AtomicUsize,
    want: usize,
    wait: Duration,
}

impl Component for Overlap {
    fn prepare(&self, _: ProcessorIndex) -> Result<Prepared, Error> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let deadline = Instant::now() + self.wait;
        while self.most.load(Ordering::SeqCst) < self.want && Instant::now() < deadline {
            std::thread::yield_now();
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(Prepared::New)
    }
    fn commit(&self, _: ProcessorIndex) -> Result<(), Error> {
        Ok(())
    }
    fn abort(&self, _: ProcessorIndex) -> Result<(), Error> {
        Ok(())
    }
}

fn overlap(concurrent: bool, want: usize, wait: Duration) -> usize {
    let kernel = Kernel::new(&[8], 1).unwrap();
    kernel.set_policy(Policy {
        concurrent,
        ..Policy::default()
    });
    let _on = kernel.enter().unwrap();
    let parts = Overlap {
        in_flight: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
        want,
        wait,
    };
    let (most, _) = Registration::scoped(
        parts,
        PoolAlloc::new(TAG),
        perproc_wdk::Replay::NewOnly,
        |r| {
            std::thread::scope(|s| {
                for n in 1..3 {
                    let kernel = &kernel;
                    s.spawn(move || assert!(kernel.hot_add_index(n).unwrap().added()));
                }
            });
            r.parts().most.load(Ordering::SeqCst)
        },
    )
    .unwrap();
    assert!(kernel.violations().is_empty());
    most
}

#[test]
fn concurrent_policy_delivers_different_processors_at_once() {
    assert_eq!(overlap(true, 2, Duration::from_secs(10)), 2);
}

#[test]
fn serialised_policy_never_overlaps_deliveries() {
    // Each prepare waits 300 ms for a second one to overlap it; serialised,
    // none ever does.
    assert_eq!(overlap(false, 2, Duration::from_millis(300)), 1);
}

/// Blocks its first prepare until released.
struct Gate {
    entered: AtomicBool,
    release: AtomicBool,
}

impl Component for Gate {
    fn prepare(&self, _: ProcessorIndex) -> Result<Prepared, Error> {
        self.entered.store(true, Ordering::SeqCst);
        while !self.release.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        Ok(Prepared::New)
    }
    fn commit(&self, _: ProcessorIndex) -> Result<(), Error> {
        Ok(())
    }
    fn abort(&self, _: ProcessorIndex) -> Result<(), Error> {
        Ok(())
    }
}

#[test]
fn deregistration_waits_for_a_callback_in_flight() {
    static GATE: Gate = Gate {
        entered: AtomicBool::new(false),
        release: AtomicBool::new(false),
    };
    let kernel = Kernel::new(&[8], 1).unwrap();
    let registration = {
        let _on = kernel.enter().unwrap();
        Registration::register_with(
            &GATE, // a reference to a component is one
            PoolAlloc::new(TAG),
            perproc_wdk::Replay::NewOnly,
        )
        .unwrap()
    };
    let deregistered = AtomicBool::new(false);
    std::thread::scope(|s| {
        let adder = s.spawn(|| kernel.hot_add_index(1).unwrap());
        while !GATE.entered.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let dropper = kernel.spawn_on(s, 0, || {
            drop(registration);
            deregistered.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !deregistered.load(Ordering::SeqCst),
            "deregistration did not wait"
        );
        GATE.release.store(true, Ordering::SeqCst);
        dropper.join().unwrap().unwrap();
        // Deregistered before the Complete: it is not delivered.
        assert!(adder.join().unwrap().added());
    });
    assert_eq!(kernel.deliveries().len(), 1);
    assert!(kernel.violations().is_empty());
    assert_eq!(kernel.pool().total_live_bytes(), 0);
}

#[test]
fn register_and_deregister_from_inside_a_callback_are_caught() {
    unsafe extern "C" fn reenter(
        _: sys::PVOID,
        _: sys::PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
        _: sys::PNTSTATUS,
    ) {
        // SAFETY: registering from inside a callback is refused (NULL) by
        // the simulator; nothing is called.
        let handle = unsafe {
            sys::KeRegisterProcessorChangeCallback(Some(reenter), std::ptr::null_mut(), 0)
        };
        assert!(handle.is_null());
    }
    let kernel = Kernel::new(&[8], 2).unwrap();
    let _on = kernel.enter().unwrap();
    // SAFETY: `reenter` is sound to call from any thread with any context
    // (it ignores its arguments).
    let handle =
        unsafe { sys::KeRegisterProcessorChangeCallback(Some(reenter), std::ptr::null_mut(), 1) };
    assert!(!handle.is_null());
    let inside = Violation::InsideCallback {
        call: "KeRegisterProcessorChangeCallback",
    };
    // 2 Starts, 2 Completes.
    assert_eq!(kernel.violations(), vec![inside.clone(); 4]);
    // SAFETY: the handle came from the registration above.
    unsafe { sys::KeDeregisterProcessorChangeCallback(handle) };
    // SAFETY: deregistering an unknown handle is recorded as a violation.
    unsafe { sys::KeDeregisterProcessorChangeCallback(handle) }; // twice
    assert_eq!(kernel.violations().last(), Some(&Violation::UnknownHandle));
}

#[test]
fn processor_queries_follow_the_topology() {
    let kernel = Kernel::with_processors(&[4, 8], &[(0, 0), (1, 0), (0, 1)]).unwrap();
    assert_eq!(
        (kernel.max_processors(), kernel.active_processors()),
        (12, 3)
    );
    let _on = kernel.enter_on(1).unwrap();
    // SAFETY: each pointer is to a local PROCESSOR_NUMBER, valid for the read or write.
    unsafe {
        assert_eq!(sys::KeQueryMaximumProcessorCountEx(0xffff), 12);
        assert_eq!(sys::KeQueryMaximumProcessorCountEx(1), 8);
        assert_eq!(sys::KeQueryMaximumProcessorCountEx(2), 0);
        assert_eq!(sys::KeQueryActiveProcessorCountEx(0xffff), 3);
        assert_eq!(sys::KeQueryActiveProcessorCountEx(0), 2);
        let mut n = PROCESSOR_NUMBER::default();
        assert_eq!(sys::KeGetCurrentProcessorNumberEx(&mut n), 1);
        assert_eq!((n.Group, n.Number), (1, 0));
        assert_eq!(sys::KeGetProcessorIndexFromNumber(&mut n), 1);
        let mut m = PROCESSOR_NUMBER::default();
        assert_eq!(
            sys::KeGetProcessorNumberFromIndex(2, &mut m),
            sys::STATUS_SUCCESS
        );
        assert_eq!((m.Group, m.Number), (0, 1));
        assert_eq!(
            sys::KeGetProcessorNumberFromIndex(3, &mut m),
            sys::STATUS_INVALID_PARAMETER
        );
        let mut absent = PROCESSOR_NUMBER {
            Group: 1,
            Number: 7,
            Reserved: 0,
        };
        assert_eq!(
            sys::KeGetProcessorIndexFromNumber(&mut absent),
            sys::INVALID_PROCESSOR_INDEX
        );
    }
    // A processor in the middle of its add is present (its index resolves)
    // but not active until AddComplete.
    // Named for what they do: (1, 7) at the lowest free index (3, not its
    // position 11 in the topology) ...
    let add = kernel.hot_add_at_lowest_index(1, 7).unwrap();
    assert_eq!(add.index, ProcessorIndex::new(3).unwrap());
    assert_eq!(kernel.index_of(1, 7), Some(add.index));
    assert_eq!(kernel.number_of(add.index), Some((1, 7)));
    assert_eq!(kernel.enter_on(9).unwrap_err(), SimError::NotPresent);
    assert_eq!(
        kernel.hot_add_at_lowest_index(1, 7).unwrap_err(),
        SimError::AlreadyPresent
    );
    assert_eq!(
        kernel.hot_add_at_lowest_index(2, 0).unwrap_err(),
        SimError::NoSuchProcessor
    );
    assert_eq!(
        kernel.hot_add_at_lowest_index(0, 4).unwrap_err(),
        SimError::NoSuchProcessor
    );
    // ... and exactly index i, the topology's i-th (group, number).
    assert_eq!(
        kernel.hot_add_index(11).unwrap_err(),
        SimError::AlreadyPresent
    ); // (1, 7)
    assert_eq!(
        kernel.hot_add_index(12).unwrap_err(),
        SimError::IndexOutOfRange
    );
    let add = kernel
        .hot_add_index(ProcessorIndex::new(6).unwrap())
        .unwrap();
    assert!(add.added());
    assert_eq!(add.index.get(), 6);
    assert_eq!(kernel.number_of(6), Some((1, 2)));
    assert_eq!(
        kernel
            .hot_add_with(HotAdd::new(0, 2).at_index(0))
            .unwrap_err(),
        SimError::IndexInUse
    );
    assert_eq!(
        kernel
            .hot_add_with(HotAdd::new(0, 2).at_index(12))
            .unwrap_err(),
        SimError::IndexOutOfRange
    );
    assert_eq!(Kernel::new(&[65], 1).unwrap_err(), SimError::BadTopology);
    assert_eq!(Kernel::new(&[4], 5).unwrap_err(), SimError::BadTopology);
    assert!(kernel.violations().is_empty());
}

/// The policy a test sets is the one the kernel reports (and a new kernel
/// starts with the default).
#[test]
fn the_policy_read_is_the_policy_set() {
    let kernel = Kernel::new(&[4], 1).unwrap();
    assert_eq!(kernel.policy(), Policy::default());
    let policy = Policy {
        concurrent: true,
        failure: sim::FailureRecipients::AllRegistered,
        start_after_veto: true,
        shared_status: true,
    };
    kernel.set_policy(policy);
    assert_eq!(kernel.policy(), policy);
}

/// Entries nest (the innermost wins); leaving them out of order, on the same
/// kernel or across two, is recorded.
#[test]
fn entries_left_out_of_order_are_recorded() {
    let current = || {
        let mut n = PROCESSOR_NUMBER::default();
        // SAFETY: a valid out-pointer to a local.
        unsafe { sys::KeGetCurrentProcessorNumberEx(&mut n) }
    };
    let kernel = Kernel::new(&[4], 2).unwrap();
    let outer = kernel.enter_on(0).unwrap();
    let inner = kernel.enter_on(1).unwrap();
    assert_eq!(current(), 1);
    drop(outer); // leaves processor 1's entry as if it were processor 0's
    assert_eq!(kernel.violations(), vec![Violation::UnbalancedEnter]);
    drop(inner);
    assert_eq!(kernel.violations().len(), 2);

    let other = Kernel::new(&[4], 1).unwrap();
    let mine = kernel.enter().unwrap();
    let theirs = other.enter().unwrap();
    drop(mine); // processor 0 of the other kernel: the same index
    assert_eq!(kernel.violations().len(), 3);
    drop(theirs);
    assert_eq!(other.violations(), vec![Violation::UnbalancedEnter]);
    // Balanced entries record nothing.
    drop(kernel.enter_on(1).unwrap());
    assert_eq!(kernel.violations().len(), 3);
}

/// A hot-add or raw delivery asked for above PASSIVE_LEVEL is refused before
/// anything is delivered.
#[test]
fn hot_adds_above_passive_level_are_refused() {
    let kernel = Kernel::new(&[4], 1).unwrap();
    let _on = kernel.enter().unwrap();
    let raw = sys::KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT::default();
    for irql in [1, 2] {
        // SAFETY: an IRQL raise on the simulated kernel, lowered below.
        let old = unsafe { sys::KfRaiseIrql(irql) };
        assert_eq!(kernel.hot_add_next().unwrap_err(), SimError::IrqlTooHigh);
        assert_eq!(kernel.deliver_raw(raw).unwrap_err(), SimError::IrqlTooHigh);
        // SAFETY: back to the IRQL it was raised from.
        unsafe { sys::KeLowerIrql(old) };
    }
    assert_eq!(kernel.active_processors(), 1);
    assert_eq!(kernel.deliveries(), vec![]);
    assert!(kernel.hot_add_next().unwrap().added());
    assert!(kernel.violations().is_empty());
}

#[test]
fn calls_from_a_thread_outside_any_kernel_fail_and_are_counted() {
    let before = sim::orphan_calls();
    // SAFETY: no pointer arguments; the calls fail because no kernel is entered.
    unsafe {
        assert_eq!(sys::KeQueryMaximumProcessorCountEx(0xffff), 0);
        assert!(sys::ExAllocatePool2(sys::POOL_FLAG_NON_PAGED, 8, TAG).is_null());
    }
    assert!(sim::orphan_calls() >= before + 2);
}

#[test]
fn the_pool_accounts_per_tag_aligns_and_catches_misuse() {
    let kernel = Kernel::new(&[4], 1).unwrap();
    let _on = kernel.enter().unwrap();
    let other = pool_tag(*b"Othr");
    // SAFETY: blocks are used within their size; the double free and the
    // wrong tag are deliberate misuse that the simulator records.
    unsafe {
        let small = sys::ExAllocatePool2(sys::POOL_FLAG_NON_PAGED, 24, TAG);
        let page = sys::ExAllocatePool2(
            sys::POOL_FLAG_NON_PAGED | sys::POOL_FLAG_UNINITIALIZED,
            5000,
            other,
        );
        let line = sys::ExAllocatePool2(
            sys::POOL_FLAG_NON_PAGED | sys::POOL_FLAG_CACHE_ALIGNED,
            8,
            TAG,
        );
        assert_eq!(small.addr() % 16, 0);
        assert_eq!(page.addr() % 4096, 0);
        assert_eq!(line.addr() % 64, 0);
        assert_eq!(std::slice::from_raw_parts(small.cast::<u8>(), 24), &[0; 24]);
        assert_eq!(*page.cast::<u8>(), 0xA5); // not zeroed when asked not to
        assert_eq!(kernel.pool().stats(TAG).live_bytes, 32);
        assert_eq!(kernel.pool().total_live_bytes(), 24 + 5000 + 8);
        assert_eq!(kernel.pool().stats(other).live_blocks, 1);
        sys::ExFreePool(small);
        sys::ExFreePool(small); // double free
        sys::ExFreePoolWithTag(page, TAG); // wrong tag (freed all the same)
        sys::ExFreePool(line);
        assert!(sys::ExAllocatePool2(0, 8, TAG).is_null()); // no pool type
        assert!(
            sys::ExAllocatePool2(sys::POOL_FLAG_NON_PAGED | sys::POOL_FLAG_PAGED, 8, TAG).is_null()
        );
        let old = sys::KfRaiseIrql(2);
        assert!(sys::ExAllocatePool2(sys::POOL_FLAG_PAGED, 8, TAG).is_null()); // paged at DISPATCH
        let ok = sys::ExAllocatePool2(sys::POOL_FLAG_NON_PAGED, 8, TAG);
        assert!(!ok.is_null());
        sys::ExFreePool(ok);
        sys::KeLowerIrql(old);
    }
    assert_eq!(kernel.pool().total_live_bytes(), 0);
    let violations = kernel.violations();
    assert!(matches!(violations[0], Violation::UnknownPoolBlock { .. }));
    assert_eq!(
        violations[1],
        Violation::PoolTagMismatch {
            allocated: other,
            freed: TAG
        }
    );
    assert!(matches!(
        violations[2],
        Violation::BadPoolFlags { flags: 0 }
    ));
    assert!(matches!(violations[3], Violation::BadPoolFlags { .. }));
    assert_eq!(
        violations[4],
        Violation::IrqlTooHigh {
            call: "ExAllocatePool2",
            irql: 2
        }
    );
    assert_eq!(violations.len(), 5);
}

/// Small blocks are 16-byte aligned, as on x64, and no more unless
/// `POOL_FLAG_CACHE_ALIGNED` asks: a simulator that over-aligned would hide a
/// `PoolAlloc` that does not align its blocks itself.
#[test]
fn small_blocks_are_not_over_aligned() {
    let kernel = Kernel::new(&[4], 1).unwrap();
    let _on = kernel.enter().unwrap();
    // SAFETY: each block is freed once, unused.
    let addresses: Vec<usize> = (0..16)
        .map(|_| unsafe { sys::ExAllocatePool2(sys::POOL_FLAG_NON_PAGED, 24, TAG) })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|block| {
            let addr = block.addr();
            // SAFETY: a live block from ExAllocatePool2, freed once.
            unsafe { sys::ExFreePool(block) };
            addr
        })
        .collect();
    assert!(addresses.iter().all(|a| a % 16 == 0));
    assert!(
        addresses.iter().any(|a| a % 64 != 0),
        "every small block was cache aligned: {addresses:x?}"
    );
    assert!(kernel.violations().is_empty());
}

#[test]
fn pool_faults_follow_the_plan() {
    let kernel = Kernel::new(&[4], 1).unwrap();
    let _on = kernel.enter().unwrap();
    let other = pool_tag(*b"Othr");
    // SAFETY: a block from ExAllocatePool2 is freed once.
    let attempt = |tag| unsafe {
        let p = sys::ExAllocatePool2(sys::POOL_FLAG_NON_PAGED, 8, tag);
        if !p.is_null() {
            sys::ExFreePool(p);
        }
        !p.is_null()
    };
    kernel.pool().fail(Fault::Nth(1));
    assert_eq!(kernel.pool().attempts(), 0); // a plan restarts the count
    assert_eq!(
        (0..4).map(|_| attempt(TAG)).collect::<Vec<_>>(),
        [true, false, true, true]
    );
    assert_eq!((kernel.pool().attempts(), kernel.pool().injected()), (4, 1));
    kernel.pool().fail(Fault::From(2));
    assert_eq!(
        (0..4).map(|_| attempt(other)).collect::<Vec<_>>(),
        [true, true, false, false]
    );
    kernel.pool().fail_tag(Fault::From(0), other);
    assert!(attempt(TAG)); // another tag: neither refused nor counted
    assert!(!attempt(other));
    assert_eq!(kernel.pool().attempts(), 1);
    assert_eq!(kernel.pool().injected(), 4);
    kernel.pool().fail(Fault::Never);
    assert!(attempt(other));
}

#[test]
fn pool_alloc_honours_every_alignment() {
    let kernel = Kernel::new(&[4], 1).unwrap();
    let _on = kernel.enter().unwrap();
    let alloc = PoolAlloc::new(TAG);
    let mut blocks = Vec::new();
    for align_log in 0..14 {
        for size in [1usize, 7, 16, 100, 4096, 10_000] {
            let layout = Layout::from_size_align(size, 1 << align_log).unwrap();
            let block = alloc.allocate(layout, Some(ProcessorIndex::ZERO)).unwrap();
            assert_eq!(block.as_ptr().addr() % layout.align(), 0, "{layout:?}");
            // SAFETY: the block holds `size` writable bytes.
            unsafe { block.as_ptr().write_bytes(0x5A, size) };
            blocks.push((block, layout));
        }
    }
    assert!(alloc
        .allocate(Layout::from_size_align(0, 8).unwrap(), None)
        .is_err());
    for (block, layout) in blocks {
        // SAFETY: from `alloc` with this layout, freed once.
        unsafe { alloc.deallocate(block, layout) };
    }
    assert_eq!(kernel.pool().stats(TAG).live_blocks, 0);
    assert!(kernel.violations().is_empty());
}

/// A driver finds its blocks in a pool dump by their tag: `PoolAlloc::tag` is
/// the tag its blocks are charged to, and a `KernelPlatform`'s allocator has
/// the platform's tag.
#[test]
fn pool_alloc_reports_the_tag_its_blocks_carry() {
    let kernel = Kernel::new(&[4], 1).unwrap();
    let _on = kernel.enter().unwrap();
    let other = PoolAlloc::new(pool_tag(*b"Othr"));
    assert_eq!(other.tag(), pool_tag(*b"Othr"));
    let layout = Layout::from_size_align(40, 8).unwrap();
    let block = other.allocate(layout, None).unwrap();
    assert_eq!(kernel.pool().stats(other.tag()).live_blocks, 1);
    assert_eq!(kernel.pool().stats(TAG).live_blocks, 0);
    // SAFETY: from `other` with this layout, freed once.
    unsafe { other.deallocate(block, layout) };
    let platform = KernelPlatform::new(TAG).unwrap();
    assert_eq!(platform.allocator().tag(), TAG);
    assert_eq!(PoolAlloc::new(TAG).tag(), TAG);
    assert_eq!(kernel.pool().total_live_bytes(), 0);
    assert!(kernel.violations().is_empty());
}

/// `sim::tag` is `pool_tag`: a test can name the simulator's counters with
/// either.
#[test]
fn the_simulators_tag_is_pool_tag() {
    for chars in [*b"Perp", *b"Test", *b"ab\0\xff"] {
        assert_eq!(sim::tag(chars), pool_tag(chars));
    }
    assert_eq!(sim::tag(*b"Perp"), 0x7072_6550);
}

#[test]
fn a_container_on_the_kernel_platform_is_cache_aligned_and_freed() {
    let kernel = Kernel::new(&[64, 64], 3).unwrap();
    let _on = kernel.enter().unwrap();
    let platform = KernelPlatform::new(TAG).unwrap();
    let values = PerCpu::new(&platform, |cpu: ProcessorIndex| {
        Ok(AtomicU32::new(cpu.get()))
    })
    .unwrap();
    assert_eq!(values.capacity(), 128);
    for i in [0, 1, 2, 127] {
        let _ = values.prepare(ProcessorIndex::new(i).unwrap()).unwrap();
        let value = values.get(ProcessorIndex::new(i).unwrap()).unwrap();
        assert_eq!(std::ptr::from_ref(value).addr() % perproc::CACHE_LINE, 0);
    }
    drop(values);
    assert_eq!(kernel.pool().live_bytes(TAG), 0);
}

/// An inner entry of a thread on the processor its outer entry holds at
/// DISPATCH_LEVEL goes back to PASSIVE_LEVEL: the outer entry keeps the
/// processor (no other thread gets on it) until it lowers too.
#[test]
fn an_inner_entry_lowering_keeps_the_processor_its_outer_entry_holds() {
    let kernel = Kernel::new(&[4], 1).unwrap();
    let nested = on_own_thread(&kernel, Duration::from_secs(20), |kernel| {
        let outer = kernel.enter_on(0).unwrap();
        // SAFETY: IRQL calls of the simulated kernel, each lowered below.
        let old = unsafe { sys::KfRaiseIrql(2) };
        let inner = kernel.enter_on(0).unwrap();
        // SAFETY: as above, the inner entry raises and lowers back.
        unsafe { sys::KeLowerIrql(sys::KfRaiseIrql(2)) };
        drop(inner);
        let kept = !taken_by_another_thread(&kernel, 0, Duration::from_millis(300));
        // SAFETY: back to the IRQL the outer entry was raised from.
        unsafe { sys::KeLowerIrql(old) };
        let freed = taken_by_another_thread(&kernel, 0, Duration::from_secs(10));
        drop(outer);
        (kept, freed)
    });
    let (kept, freed) = nested.unwrap();
    assert!(
        kept,
        "the inner entry gave away the processor the outer one holds"
    );
    assert!(freed, "the outer entry's lowering gives the processor back");
    assert_eq!(kernel.violations(), vec![]);
}
