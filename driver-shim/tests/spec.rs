//! Every sequence of `shared/spec/processor-change.md`, run through the shim
//! (Registration, the callback, KernelPlatform, PoolAlloc) on the simulated
//! kernel, under each reading of the undocumented parts.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use perproc::{Error, PerCpu, Platform, ProcessorIndex, SlotState};
use perproc_wdk::seed::{self, SeedDriver, SEED_TAG};
use perproc_wdk::sim::{
    AddResult, Delivery, FailureRecipients, Fault, HotAdd, Kernel, Phase, Policy, RegistrationId,
};
use perproc_wdk::sys::{
    KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, KE_PROCESSOR_CHANGE_NOTIFY_STATE as S, NTSTATUS,
    PROCESSOR_NUMBER, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_SUCCESS,
    STATUS_UNSUCCESSFUL,
};
use perproc_wdk::{
    decode, decode_checked, pool_tag, DriverSlot, KernelPlatform, Registration, Rejected, Replay,
};

const TABLES: u32 = pool_tag(*b"Tabl");
const CONTEXT: u32 = pool_tag(*b"Ctxt");
/// A driver-chosen failure status (STATUS_DEVICE_NOT_READY), passed through unchanged.
const CUSTOM: NTSTATUS = NTSTATUS::from_ne_bytes(0xC000_00A3_u32.to_ne_bytes());

type Init<T> = Box<dyn Fn(ProcessorIndex) -> Result<T, Error> + Send + Sync>;

/// Which processors a test's constructor refuses, and with what error.
#[derive(Clone, Default)]
struct Refuse(Arc<Mutex<Vec<(u32, Error)>>>);

impl Refuse {
    fn set(&self, index: u32, error: Error) {
        self.0.lock().unwrap().push((index, error));
    }
    fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
    fn check(&self, index: ProcessorIndex) -> Result<(), Error> {
        match self
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _)| *i == index.get())
        {
            Some((_, error)) => Err(*error),
            None => Ok(()),
        }
    }
}

/// A driver's two per-CPU parts; the second one's constructor can be told to
/// fail, so the first one is rolled back by the component set.
struct Parts {
    queue: PerCpu<AtomicU64, KernelPlatform, perproc_wdk::PoolAlloc, Init<AtomicU64>>,
    stats: PerCpu<[u64; 8], KernelPlatform, perproc_wdk::PoolAlloc, Init<[u64; 8]>>,
}

perproc::components!(Parts => queue, stats);

impl Parts {
    fn new(platform: &KernelPlatform, refuse: &Refuse) -> Self {
        let refuse = refuse.clone();
        let queue: Init<AtomicU64> = Box::new(|cpu| Ok(AtomicU64::new(u64::from(cpu.get()))));
        let stats: Init<[u64; 8]> = Box::new(move |cpu| refuse.check(cpu).map(|()| [7; 8]));
        Self {
            queue: PerCpu::new(platform, queue).unwrap(),
            stats: PerCpu::new(platform, stats).unwrap(),
        }
    }

    /// Indexes published in both parts (and asserts the parts agree).
    fn published(&self) -> BTreeSet<u32> {
        let a: BTreeSet<u32> = self.queue.iter().map(|(i, _)| i.get()).collect();
        let b: BTreeSet<u32> = self.stats.iter().map(|(i, _)| i.get()).collect();
        assert_eq!(a, b, "the parts disagree on what is published");
        a
    }

    fn online(&self) -> usize {
        assert_eq!(self.queue.online_count(), self.stats.online_count());
        self.queue.online_count()
    }
}

fn index(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap()
}

fn register(kernel: &Kernel, refuse: &Refuse) -> Registration<Parts> {
    let parts = Parts::new(&KernelPlatform::new(TABLES).unwrap(), refuse);
    let registration = Registration::register(parts, perproc_wdk::PoolAlloc::new(CONTEXT)).unwrap();
    assert_eq!(kernel.violations(), vec![]);
    registration
}

fn of(deliveries: &[Delivery], registration: RegistrationId) -> Vec<(i32, u32)> {
    deliveries
        .iter()
        .filter(|d| d.registration == registration)
        .map(|d| (d.state, d.index))
        .collect()
}

/// The shim wrote `*OperationStatus` exactly on these (state, index) deliveries.
fn writes(deliveries: &[Delivery]) -> Vec<(RegistrationId, i32, u32, NTSTATUS)> {
    deliveries
        .iter()
        .filter(|d| d.operation_status_after != d.operation_status_before)
        .map(|d| (d.registration, d.state, d.index, d.operation_status_after))
        .collect()
}

fn assert_clean(kernel: &Kernel) {
    assert_eq!(kernel.violations(), vec![]);
    for (tag, stats) in kernel.pool().tags() {
        assert_eq!(
            (stats.live_bytes, stats.live_blocks),
            (0, 0),
            "tag {tag:#x} leaks"
        );
    }
}

const START: i32 = S::KeProcessorAddStartNotify;
const COMPLETE: i32 = S::KeProcessorAddCompleteNotify;
const FAILURE: i32 = S::KeProcessorAddFailureNotify;

#[test]
fn replay_success_prepares_then_commits_every_active_processor_in_order() {
    let kernel = Kernel::new(&[64, 64], 70).unwrap();
    let _on = kernel.enter().unwrap();
    let registration = register(&kernel, &Refuse::default());
    let id = kernel.registrations()[0];

    let deliveries = kernel.deliveries();
    let starts: Vec<(i32, u32)> = (0..70).map(|i| (START, i)).collect();
    let completes: Vec<(i32, u32)> = (0..70).map(|i| (COMPLETE, i)).collect();
    assert_eq!(of(&deliveries, id), [starts, completes].concat());
    assert!(deliveries.iter().all(|d| d.phase == Phase::Replay));
    assert_eq!(writes(&deliveries), vec![]);
    assert_eq!(registration.parts().online(), 70);
    assert_eq!(registration.parts().published(), (0..70).collect());
    assert_eq!(registration.last_failure(), None);
    // Each processor's (group, number) came through and matched its index.
    assert!(deliveries
        .iter()
        .all(|d| kernel.number_of(d.index) == Some((d.number.Group, d.number.Number))));

    drop(registration);
    assert!(kernel.registrations().is_empty());
    assert_clean(&kernel);
}

#[test]
fn replay_failing_at_k_fails_the_earlier_ones_and_returns_the_status() {
    const BOOT: u32 = 6;
    for (error, expected) in [
        (Error::OutOfMemory, STATUS_INSUFFICIENT_RESOURCES),
        (Error::Status(CUSTOM), CUSTOM),
    ] {
        for k in 0..BOOT {
            let kernel = Kernel::new(&[8], BOOT).unwrap();
            let _on = kernel.enter().unwrap();
            let refuse = Refuse::default();
            refuse.set(k, error);
            let parts = Parts::new(&KernelPlatform::new(TABLES).unwrap(), &refuse);
            let failed =
                Registration::register(parts, perproc_wdk::PoolAlloc::new(CONTEXT)).unwrap_err();
            assert_eq!(failed.status, expected, "k = {k}");

            let deliveries = kernel.deliveries();
            let id = deliveries[0].registration;
            let starts = (0..=k).map(|i| (START, i));
            let failures = (0..k).map(|i| (FAILURE, i));
            assert_eq!(
                of(&deliveries, id),
                starts.chain(failures).collect::<Vec<_>>()
            );
            // Failure carries the failing status; the shim wrote only on Start k.
            assert!(deliveries
                .iter()
                .filter(|d| d.state == FAILURE)
                .all(|d| d.status == expected));
            assert_eq!(writes(&deliveries), vec![(id, START, k, expected)]);
            assert!(kernel.registrations().is_empty());

            let parts = failed.parts;
            assert_eq!(parts.published(), BTreeSet::new(), "k = {k}");
            for i in 0..k {
                assert_eq!(parts.queue.state(index(i)), SlotState::Retired);
            }
            // At k: the first part was rolled back (its slot kept, hidden), the
            // second never built one.
            assert_eq!(parts.queue.state(index(k)), SlotState::Retired);
            assert_eq!(parts.stats.state(index(k)), SlotState::Absent);
            drop(parts);
            assert_clean(&kernel);
        }
    }
}

#[test]
fn refused_registration_without_a_status_returns_unsuccessful() {
    let kernel = Kernel::new(&[8], 2).unwrap();
    let _on = kernel.enter().unwrap();
    let parts = Parts::new(&KernelPlatform::new(TABLES).unwrap(), &Refuse::default());
    // Registering above PASSIVE_LEVEL: the (simulated) kernel returns NULL
    // without calling back.
    // SAFETY: an IRQL raise on the simulated kernel, lowered below.
    let old = unsafe { perproc_wdk::sys::KfRaiseIrql(1) };
    let failed = Registration::register(parts, perproc_wdk::PoolAlloc::new(CONTEXT)).unwrap_err();
    // SAFETY: back to the IRQL it was raised from.
    unsafe { perproc_wdk::sys::KeLowerIrql(old) };
    assert_eq!(failed.status, STATUS_UNSUCCESSFUL);
    assert_eq!(kernel.deliveries(), vec![]);
    assert_eq!(kernel.violations().len(), 1); // the misuse itself
    drop(failed);
    assert_eq!(kernel.pool().total_live_bytes(), 0);
}

#[test]
fn registration_without_replay_sees_only_hot_adds() {
    let kernel = Kernel::new(&[8], 3).unwrap();
    let _on = kernel.enter().unwrap();
    let parts = Parts::new(&KernelPlatform::new(TABLES).unwrap(), &Refuse::default());
    let registration =
        Registration::register_with(parts, perproc_wdk::PoolAlloc::new(CONTEXT), Replay::NewOnly)
            .unwrap();
    assert_eq!(kernel.deliveries(), vec![]);
    assert!(kernel.hot_add_next().unwrap().added());
    assert_eq!(registration.parts().published(), [3].into());
    drop(registration);
    assert_clean(&kernel);
}

#[test]
fn hot_add_success_prepares_commits_and_the_new_processor_sees_its_slot() {
    let kernel = Kernel::new(&[4, 4], 2).unwrap();
    let _on = kernel.enter().unwrap();
    let registration = register(&kernel, &Refuse::default());
    kernel.take_deliveries();

    let outcome = kernel.hot_add_at_lowest_index(1, 3).unwrap();
    assert_eq!(outcome.result, AddResult::Added);
    assert_eq!(outcome.index, index(2));
    let deliveries = kernel.deliveries();
    assert_eq!(
        deliveries
            .iter()
            .map(|d| (d.state, d.index, d.number.Group, d.number.Number))
            .collect::<Vec<_>>(),
        vec![(START, 2, 1, 3), (COMPLETE, 2, 1, 3)]
    );
    assert_eq!(writes(&deliveries), vec![]);
    assert_eq!(registration.parts().online(), 3);

    // Code on the new processor finds its own slot through the platform.
    std::thread::scope(|s| {
        kernel
            .spawn_on(s, 2, || {
                let platform = KernelPlatform::new(TABLES).unwrap();
                platform
                    .pinned(|pin| {
                        assert_eq!(pin.processor().get(), 2);
                        let mine = registration.parts().queue.current(pin).unwrap();
                        assert_eq!(mine.load(Ordering::Relaxed), 2);
                    })
                    .unwrap();
            })
            .join()
            .unwrap()
            .unwrap();
    });
    drop(registration);
    assert_clean(&kernel);
}

/// Registers three drivers (the middle one vetoes processor `n`) and checks one
/// policy.
fn veto_under(policy: Policy) {
    let kernel = Kernel::new(&[8], 2).unwrap();
    kernel.set_policy(policy);
    let _on = kernel.enter().unwrap();
    let (ra, rb, rc) = (Refuse::default(), Refuse::default(), Refuse::default());
    let a = register(&kernel, &ra);
    let b = register(&kernel, &rb);
    let c = register(&kernel, &rc);
    let [ida, idb, idc] = kernel.registrations()[..] else {
        panic!()
    };
    rb.set(2, Error::OutOfMemory);
    if policy.shared_status {
        // A later failure must not overwrite the first one.
        rc.set(2, Error::Status(CUSTOM));
    }
    kernel.take_deliveries();

    let outcome = kernel.hot_add_next().unwrap();
    assert_eq!(
        outcome.result,
        AddResult::Vetoed {
            status: STATUS_INSUFFICIENT_RESOURCES,
            by: idb
        },
        "{policy:?}"
    );
    let deliveries = kernel.deliveries();
    let got = |id| of(&deliveries, id);
    let c_saw_start = policy.start_after_veto;
    assert_eq!(got(ida), vec![(START, 2), (FAILURE, 2)], "{policy:?}");
    let b_fails = policy.failure != FailureRecipients::SawStartButVetoer;
    assert_eq!(
        got(idb),
        if b_fails {
            vec![(START, 2), (FAILURE, 2)]
        } else {
            vec![(START, 2)]
        },
        "{policy:?}"
    );
    let c_expected = match (c_saw_start, policy.failure) {
        (true, _) => vec![(START, 2), (FAILURE, 2)],
        (false, FailureRecipients::AllRegistered) => vec![(FAILURE, 2)],
        (false, _) => vec![],
    };
    assert_eq!(got(idc), c_expected, "{policy:?}");
    // Only vetoing Starts wrote a status, and none overwrote another's.
    for d in &deliveries {
        if d.operation_status_after != d.operation_status_before {
            assert_eq!(d.state, START);
            assert_eq!(d.operation_status_before, STATUS_SUCCESS);
        }
    }

    // Nothing is published for processor 2 anywhere; nothing went online.
    for r in [&a, &b, &c] {
        assert_eq!(r.parts().published(), [0, 1].into(), "{policy:?}");
        assert_eq!(r.parts().online(), 2);
    }
    assert_eq!(b.last_failure(), Some(STATUS_INSUFFICIENT_RESOURCES));
    assert_eq!(kernel.index_of(0, 2), None);
    assert_eq!(kernel.active_processors(), 2);

    // The same processor added again, with nothing refusing: it comes up, and
    // the parts that kept a retired slot revive it.
    rb.clear();
    rc.clear();
    assert!(kernel.hot_add_next().unwrap().added());
    for r in [&a, &b, &c] {
        assert_eq!(r.parts().published(), [0, 1, 2].into());
        assert_eq!(r.parts().online(), 3);
    }
    drop((a, b, c));
    assert_clean(&kernel);
}

#[test]
fn hot_add_vetoed_under_every_failure_policy() {
    for failure in [
        FailureRecipients::AllRegistered,
        FailureRecipients::SawStart,
        FailureRecipients::SawStartButVetoer,
    ] {
        for start_after_veto in [false, true] {
            for shared_status in [false, true] {
                veto_under(Policy {
                    concurrent: false,
                    failure,
                    start_after_veto,
                    shared_status,
                });
            }
        }
    }
}

#[test]
fn hot_add_failed_by_the_kernel_after_every_start_aborts_everywhere() {
    let kernel = Kernel::new(&[8], 2).unwrap();
    let _on = kernel.enter().unwrap();
    let registration = register(&kernel, &Refuse::default());
    let outcome = kernel
        .hot_add_with(HotAdd::new(0, 5).failing(STATUS_UNSUCCESSFUL))
        .unwrap();
    assert_eq!(
        outcome.result,
        AddResult::Failed {
            status: STATUS_UNSUCCESSFUL
        }
    );
    assert_eq!(registration.parts().published(), [0, 1].into());
    assert_eq!(
        registration.parts().queue.state(index(2)),
        SlotState::Retired
    );
    assert_eq!(writes(&kernel.deliveries()), vec![]);
    drop(registration);
    assert_clean(&kernel);
}

#[test]
fn hot_add_at_an_index_other_than_n() {
    let kernel = Kernel::new(&[64, 64], 2).unwrap();
    let _on = kernel.enter().unwrap();
    let registration = register(&kernel, &Refuse::default());
    let outcome = kernel
        .hot_add_with(HotAdd::new(1, 63).at_index(127))
        .unwrap();
    assert!(outcome.added());
    assert_eq!(registration.parts().published(), [0, 1, 127].into());
    drop(registration);
    assert_clean(&kernel);
}

#[test]
fn concurrent_hot_adds_of_different_processors_with_readers() {
    let kernel = Kernel::new(&[64, 64], 1).unwrap();
    kernel.set_policy(Policy {
        concurrent: true,
        ..Policy::default()
    });
    let _on = kernel.enter().unwrap();
    let refuse = Refuse::default();
    // Some adds are vetoed, concurrently with others succeeding.
    for vetoed in [9, 33, 77, 100] {
        refuse.set(vetoed, Error::OutOfMemory);
    }
    let registration = register(&kernel, &refuse);
    let parts = registration.parts();
    let adders = 4u32;
    std::thread::scope(|s| {
        for t in 0..adders {
            let kernel = &kernel;
            s.spawn(move || {
                // Thread t adds indexes t+1, t+1+adders, ... (explicit, so they
                // do not depend on which thread gets the lowest free index).
                let mut i = t + 1;
                while i < 128 {
                    let outcome = kernel.hot_add_index(i).unwrap();
                    assert_eq!(outcome.added(), ![9, 33, 77, 100].contains(&i), "index {i}");
                    i += adders;
                }
            });
        }
        // Readers on processor 0: iteration and the local slot, while tables grow.
        let reader = kernel.spawn_on(s, 0, || {
            let platform = KernelPlatform::new(TABLES).unwrap();
            for _ in 0..200 {
                let mine = platform
                    .pinned(|pin| parts.queue.current(pin).unwrap().load(Ordering::Relaxed))
                    .unwrap();
                assert_eq!(mine, 0);
                for (i, q) in parts.queue.iter() {
                    assert_eq!(q.load(Ordering::Relaxed), u64::from(i.get()));
                }
            }
        });
        reader.join().unwrap().unwrap();
    });
    assert_eq!(registration.parts().online(), 128 - 4);
    let expected: BTreeSet<u32> = (0..128).filter(|i| ![9, 33, 77, 100].contains(i)).collect();
    assert_eq!(registration.parts().published(), expected);
    drop(registration);
    assert_clean(&kernel);
}

#[test]
fn more_than_64_processors_across_groups() {
    let kernel = Kernel::new(&[64, 64, 64, 64], 100).unwrap();
    let _on = kernel.enter().unwrap();
    let registration = register(&kernel, &Refuse::default());
    while kernel.next_free().is_some() {
        assert!(kernel.hot_add_next().unwrap().added());
    }
    assert_eq!(kernel.active_processors(), 256);
    assert_eq!(registration.parts().online(), 256);
    for d in kernel.deliveries() {
        assert_eq!(
            kernel.index_of(d.number.Group, d.number.Number),
            Some(index(d.index))
        );
    }
    std::thread::scope(|s| {
        for cpu in [63, 64, 130, 255] {
            let parts = registration.parts();
            let on = kernel.spawn_on(s, cpu, move || {
                let platform = KernelPlatform::new(TABLES).unwrap();
                let mine = platform
                    .pinned(|pin| parts.queue.current(pin).unwrap().load(Ordering::Relaxed))
                    .unwrap();
                assert_eq!(mine, u64::from(cpu));
            });
            on.join().unwrap().unwrap();
        }
    });
    drop(registration);
    assert_clean(&kernel);
}

fn raw(state: i32, nt_number: u32, group: u16, number: u8) -> KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT {
    KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT {
        State: state,
        NtNumber: nt_number,
        Status: STATUS_SUCCESS,
        ProcNumber: PROCESSOR_NUMBER {
            Group: group,
            Number: number,
            Reserved: 0,
        },
    }
}

#[test]
fn unknown_states_are_ignored() {
    let kernel = Kernel::new(&[8], 2).unwrap();
    let _on = kernel.enter().unwrap();
    let registration = register(&kernel, &Refuse::default());
    for state in [3, 4, -1, i32::MAX, i32::MIN] {
        for (nt, number) in [(1, 1), (5, 5)] {
            let statuses = kernel.deliver_raw(raw(state, nt, 0, number)).unwrap();
            assert_eq!(statuses.len(), 1);
            assert_eq!(statuses[0].1, STATUS_SUCCESS, "state {state}");
        }
    }
    assert_eq!(registration.parts().published(), [0, 1].into());
    assert_eq!(registration.parts().online(), 2);
    drop(registration);
    assert_clean(&kernel);
}

/// `NtNumber` is the processor's index by definition; whether the kernel can
/// map a processor being added from its `ProcNumber` at AddStart is not
/// documented. So a disagreement is counted, never refused: a Start is
/// prepared by `NtNumber`, and only numbers out of range are refused.
#[test]
fn an_nt_number_that_disagrees_with_proc_number_is_counted_not_rejected() {
    let kernel = Kernel::new(&[8, 8], 4).unwrap();
    let _on = kernel.enter().unwrap();
    let registration = register(&kernel, &Refuse::default());
    let before = perproc_wdk::mismatched_notifications();
    let disagreeing = [
        raw(START, 5, 0, 6), // ProcNumber not present: maps to INVALID
        raw(START, 6, 1, 6), // another group's number, not present
    ];
    for context in disagreeing {
        let statuses = kernel.deliver_raw(context).unwrap();
        assert_eq!(statuses[0].1, STATUS_SUCCESS, "{context:?}");
    }
    let out_of_range = [
        raw(START, u32::MAX, 0, 1), // INVALID_PROCESSOR_INDEX
        raw(START, 3, 0, 64),       // a number past 64
    ];
    for context in out_of_range {
        let statuses = kernel.deliver_raw(context).unwrap();
        assert_eq!(statuses[0].1, STATUS_INVALID_PARAMETER, "{context:?}");
    }
    // Complete and Failure are dispatched by NtNumber too.
    assert_eq!(
        kernel.deliver_raw(raw(COMPLETE, 5, 0, 6)).unwrap()[0].1,
        STATUS_SUCCESS
    );
    assert_eq!(
        kernel.deliver_raw(raw(FAILURE, 6, 1, 6)).unwrap()[0].1,
        STATUS_SUCCESS
    );
    // Other tests may deliver concurrently: at least these four were counted.
    assert!(perproc_wdk::mismatched_notifications() >= before + 4);
    assert_eq!(registration.parts().published(), [0, 1, 2, 3, 5].into());
    assert_eq!(registration.parts().online(), 5);
    assert_eq!(
        registration.parts().queue.state(index(6)),
        SlotState::Retired
    );
    drop(registration);
    assert_clean(&kernel);
}

/// What a driver that checks a notification itself (`decode`,
/// `decode_checked`) logs names what was wrong: the unknown state, or both
/// numbers of a disagreement.
#[test]
fn rejections_name_what_was_wrong() {
    let kernel = Kernel::new(&[8, 8], 4).unwrap();
    let _on = kernel.enter().unwrap();
    let unknown = decode(&raw(7, 1, 0, 1)).unwrap_err();
    assert_eq!(unknown, Rejected::UnknownState(7));
    assert_eq!(unknown.to_string(), "unknown notification state 7");
    let out_of_range = decode(&raw(START, 3, 0, 64)).unwrap_err();
    assert_eq!(out_of_range, Rejected::OutOfRange);
    assert!(
        out_of_range.to_string().contains("out of range"),
        "{out_of_range}"
    );
    // Processor 0/2 is active, with index 2.
    let mismatch = decode_checked(&raw(START, 5, 0, 2)).unwrap_err();
    assert_eq!(
        mismatch,
        Rejected::Mismatch {
            nt_number: 5,
            mapped: 2
        }
    );
    assert_eq!(
        mismatch.to_string(),
        "NtNumber 5 disagrees with ProcNumber (index 2)"
    );
    assert_eq!(kernel.violations(), vec![]);
}

/// `Registration::register(..).unwrap()` (or `expect`) in a driver or a test
/// panics with the error's `Debug`: it shows the status `DriverEntry` would
/// return, in hex as NTSTATUS values are looked up; a registration's shows its
/// handle and the last vetoed Start's status.
#[test]
fn a_registration_and_its_error_debug_as_their_handle_and_status() {
    let kernel = Kernel::new(&[8], 2).unwrap();
    let _on = kernel.enter().unwrap();
    let refuse = Refuse::default();
    let registration = register(&kernel, &refuse);
    let shown = format!("{registration:?}");
    assert!(shown.starts_with("Registration {"), "{shown}");
    assert!(shown.contains("handle: 0x"), "{shown}");
    assert!(shown.contains("last_failure: None"), "{shown}");
    refuse.set(2, Error::OutOfMemory);
    assert!(!kernel.hot_add_next().unwrap().added());
    assert_eq!(
        registration.last_failure(),
        Some(STATUS_INSUFFICIENT_RESOURCES)
    );
    let shown = format!("{registration:?}");
    assert!(
        shown.contains(&format!(
            "last_failure: Some({STATUS_INSUFFICIENT_RESOURCES})"
        )),
        "{shown}"
    );
    drop(registration);

    // The replay fails at processor 1 with the driver's status.
    refuse.set(1, Error::Status(CUSTOM));
    let parts = Parts::new(&KernelPlatform::new(TABLES).unwrap(), &refuse);
    let failed = Registration::register(parts, perproc_wdk::PoolAlloc::new(CONTEXT)).unwrap_err();
    assert_eq!(failed.status, CUSTOM);
    let shown = format!("{failed:?}");
    assert!(shown.starts_with("RegisterError {"), "{shown}");
    assert!(shown.contains("status: 0xc00000a3"), "{shown}");
    drop(failed);
    assert_clean(&kernel);
}

#[test]
fn unload_leaves_zero_bytes_per_tag() {
    let kernel = Kernel::new(&[64, 64], 8).unwrap();
    let _on = kernel.enter().unwrap();
    let refuse = Refuse::default();
    let registration = register(&kernel, &refuse);
    for _ in 0..20 {
        assert!(kernel.hot_add_next().unwrap().added());
    }
    refuse.set(28, Error::OutOfMemory);
    assert!(!kernel.hot_add_next().unwrap().added()); // a retired slot stays until unload
    assert!(kernel.pool().live_bytes(TABLES) > 0);
    assert!(kernel.pool().live_bytes(CONTEXT) > 0);
    drop(registration);
    assert_eq!(kernel.pool().stats(TABLES).live_bytes, 0);
    assert_eq!(kernel.pool().stats(CONTEXT).live_bytes, 0);
    assert_clean(&kernel);
}

#[test]
fn allocation_failure_at_every_allocation_of_registration() {
    let mut k = 0;
    loop {
        let kernel = Kernel::new(&[8, 8], 5).unwrap();
        let _on = kernel.enter().unwrap();
        static DRIVER: DriverSlot<SeedDriver> = DriverSlot::new();
        kernel.pool().fail(Fault::Nth(k));
        let status = seed::driver_entry(&DRIVER);
        if kernel.pool().injected() == 0 {
            // k is past the last allocation: every one has been failed once.
            assert_eq!(status, STATUS_SUCCESS);
            assert!(k > 5, "the sweep covered only {k} allocations");
            seed::driver_unload(&DRIVER);
            assert_clean(&kernel);
            break;
        }
        assert_eq!(status, STATUS_INSUFFICIENT_RESOURCES, "allocation {k}");
        assert!(!DRIVER.is_installed());
        // Nothing registered, nothing left behind.
        assert!(kernel.registrations().is_empty(), "allocation {k}");
        assert_eq!(kernel.pool().live_bytes(SEED_TAG), 0, "allocation {k}");
        assert_clean(&kernel);
        k += 1;
    }
}

#[test]
fn allocation_failure_at_every_allocation_of_a_hot_add() {
    let mut k = 0;
    loop {
        let kernel = Kernel::new(&[8, 8], 3).unwrap();
        let _on = kernel.enter().unwrap();
        let registration = register(&kernel, &Refuse::default());
        kernel.pool().fail(Fault::Nth(k));
        let outcome = kernel.hot_add_at_lowest_index(1, 0).unwrap();
        if kernel.pool().injected() == 0 {
            assert!(outcome.added());
            assert!(k >= 2, "a hot-add allocates a slot per part");
            drop(registration);
            assert_clean(&kernel);
            break;
        }
        assert_eq!(
            outcome.result,
            AddResult::Vetoed {
                status: STATUS_INSUFFICIENT_RESOURCES,
                by: kernel.registrations()[0]
            },
            "allocation {k}"
        );
        assert_eq!(
            registration.parts().published(),
            [0, 1, 2].into(),
            "allocation {k}"
        );
        // The next add of that processor works.
        kernel.pool().fail(Fault::Never);
        assert!(kernel.hot_add_at_lowest_index(1, 0).unwrap().added());
        assert_eq!(registration.parts().published(), [0, 1, 2, 3].into());
        drop(registration);
        assert_clean(&kernel);
        k += 1;
    }
}

#[test]
fn the_seed_driver_on_the_simulator() {
    static DRIVER: DriverSlot<SeedDriver> = DriverSlot::new();
    let kernel = Kernel::new(&[32, 32], 4).unwrap();
    let _on = kernel.enter().unwrap();
    assert_eq!(seed::driver_entry(&DRIVER), STATUS_SUCCESS);
    assert_eq!(
        seed::driver_entry(&DRIVER),
        perproc_wdk::sys::STATUS_INVALID_DEVICE_STATE
    ); // loaded twice
       // I/O threads on every processor while processors are hot-added up to 64
       // across two groups; one add is vetoed by an injected allocation failure.
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        let mut io = Vec::new();
        for cpu in 0..4 {
            let done = &done;
            io.push(kernel.spawn_on(s, cpu, move || {
                let mut n = 0u64;
                while done.load(Ordering::Acquire) == 0 || n < 100 {
                    assert!(seed::on_request(&DRIVER));
                    n += 1;
                }
                n
            }));
        }
        let mut vetoed = 0;
        while kernel.next_free().is_some() {
            if kernel.active_processors() == 40 && vetoed == 0 {
                kernel.pool().fail_tag(Fault::Nth(0), SEED_TAG);
                let outcome = kernel.hot_add_next().unwrap();
                assert!(matches!(
                    outcome.result,
                    AddResult::Vetoed {
                        status: STATUS_INSUFFICIENT_RESOURCES,
                        ..
                    }
                ));
                kernel.pool().fail(Fault::Never);
                vetoed += 1;
                continue;
            }
            assert!(kernel.hot_add_next().unwrap().added());
        }
        done.store(1, Ordering::Release);
        for thread in io {
            assert!(thread.join().unwrap().unwrap() >= 100);
        }
    });
    assert_eq!(kernel.active_processors(), 64);
    assert_eq!(
        DRIVER.with(|driver| driver.parts().requests.online_count()),
        Some(64)
    );
    assert!(DRIVER.with(seed::total_requests).unwrap() >= 400);
    seed::driver_unload(&DRIVER);
    assert_clean(&kernel);
}

/// Random notification sequences (valid, out of order, mismatched, unknown)
/// delivered through the callback, checked after each one against a model of
/// what every processor's slot must be and what the callback must write.
#[test]
fn random_notification_sequences_match_the_model() {
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum M {
        Absent,
        Prepared,
        Online,
        Retired,
    }
    fn model(s: SlotState) -> M {
        match s {
            SlotState::Absent => M::Absent,
            SlotState::Prepared => M::Prepared,
            SlotState::Online => M::Online,
            SlotState::Retired => M::Retired,
            SlotState::Busy => panic!("busy with no event in flight"),
        }
    }
    const REFUSED: u32 = 7; // the second part's constructor refuses this one
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..40 {
        let kernel = Kernel::new(&[8, 8], 8).unwrap();
        let _on = kernel.enter().unwrap();
        let refuse = Refuse::default();
        refuse.set(REFUSED, Error::OutOfMemory);
        let parts = Parts::new(&KernelPlatform::new(TABLES).unwrap(), &refuse);
        let registration = Registration::register_with(
            parts,
            perproc_wdk::PoolAlloc::new(CONTEXT),
            Replay::NewOnly,
        )
        .unwrap();
        let parts = registration.parts();
        let mut queue = [M::Absent; 9];
        let mut stats = [M::Absent; 9];
        for step in 0..200 {
            let state = [START, COMPLETE, FAILURE, 3][next(4) as usize];
            let i = next(9) as u32; // 8 is never present
            let mismatch = next(5) == 0;
            let (group, number) = if mismatch {
                (1, (i % 8) as u8)
            } else {
                (0, i as u8)
            };
            let mismatches = perproc_wdk::mismatched_notifications();
            let written = kernel.deliver_raw(raw(state, i, group, number)).unwrap()[0].1;
            // NtNumber is the index: a ProcNumber the kernel maps elsewhere (or,
            // for 8, not at all) is counted, never refused.
            if state != 3 && (mismatch || i == 8) {
                assert!(perproc_wdk::mismatched_notifications() > mismatches);
            }
            let at = i as usize;
            let expected_status = match state {
                3 => STATUS_SUCCESS,
                START if i == REFUSED => {
                    // The first part prepares, the second refuses, the first is
                    // rolled back: its slot is kept, hidden.
                    queue[at] = M::Retired;
                    STATUS_INSUFFICIENT_RESOURCES
                }
                START => {
                    for m in [&mut queue[at], &mut stats[at]] {
                        if matches!(*m, M::Absent | M::Retired) {
                            *m = M::Prepared;
                        }
                    }
                    STATUS_SUCCESS
                }
                COMPLETE => {
                    for m in [&mut queue[at], &mut stats[at]] {
                        if *m == M::Prepared {
                            *m = M::Online;
                        }
                    }
                    STATUS_SUCCESS
                }
                _ => {
                    for m in [&mut queue[at], &mut stats[at]] {
                        if *m == M::Prepared {
                            *m = M::Retired;
                        }
                    }
                    STATUS_SUCCESS
                }
            };
            let context =
                format!("round {round} step {step}: state {state} index {i} mismatch {mismatch}");
            assert_eq!(written, expected_status, "{context}");
            for j in 0..9 {
                assert_eq!(
                    model(parts.queue.state(index(j))),
                    queue[j as usize],
                    "queue {j}, {context}"
                );
                assert_eq!(
                    model(parts.stats.state(index(j))),
                    stats[j as usize],
                    "stats {j}, {context}"
                );
            }
        }
        drop(registration);
        assert_clean(&kernel);
    }
}
