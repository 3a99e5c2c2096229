//! The hot-add protocol through component sets (arrays and tuples): every
//! sequence of the spec, each undocumented reading, and fault injection at
//! every allocation.

mod common;

use common::{cpu, replay_existing, Built};
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{
    ChangeState, Component, Error, InitFn, PerCpu, Prepared, ProcessorChange, ProcessorIndex,
    ProcessorNumber, SlotState,
};

type Alloc = FailingAlloc<CountingAlloc<HostAlloc>>;

type Table<'a> = PerCpu<Built, HostPlatform, &'a Alloc>;

fn table(alloc: &Alloc, capacity: u32) -> Result<Table<'_>, Error> {
    let init: InitFn<Built> = |i| Ok(Built::new(i));
    PerCpu::new_in(&HostPlatform::new(capacity)?, alloc, init)
}

/// A driver's three per-CPU structures, as one set.
struct Driver<'a> {
    parts: [Table<'a>; 3],
}

impl<'a> Driver<'a> {
    fn new(alloc: &'a Alloc, capacity: u32) -> Result<Self, Error> {
        Ok(Self {
            parts: [
                table(alloc, capacity)?,
                table(alloc, capacity)?,
                table(alloc, capacity)?,
            ],
        })
    }

    /// An array of components is the set.
    fn set(&self) -> &[Table<'a>; 3] {
        &self.parts
    }

    fn states(&self, i: u32) -> [SlotState; 3] {
        self.parts.each_ref().map(|t| t.state(cpu(i)))
    }

    fn visible(&self, i: u32) -> usize {
        self.parts
            .iter()
            .filter(|t| t.get(cpu(i)).is_some())
            .count()
    }
}

fn new_alloc() -> Alloc {
    FailingAlloc::new(CountingAlloc::new(HostAlloc))
}

#[test]
fn replay_of_existing_processors_then_hot_add() {
    let alloc = &new_alloc();
    let counting = alloc.inner();
    let driver = Driver::new(alloc, 16).unwrap();
    let set = driver.set();
    replay_existing(set, 4).unwrap();
    for i in 0..4 {
        assert_eq!(driver.states(i), [SlotState::Online; 3]);
    }
    // A hot-add: Start, then code may run there before Complete.
    set.handle(&ProcessorChange {
        state: ChangeState::AddStart,
        index: cpu(4),
        number: ProcessorNumber::new(0, 4).unwrap(),
    })
    .unwrap();
    assert_eq!(driver.visible(4), 3);
    assert_eq!(driver.states(4), [SlotState::Prepared; 3]);
    set.handle(&ProcessorChange {
        state: ChangeState::AddComplete,
        index: cpu(4),
        number: ProcessorNumber::new(0, 4).unwrap(),
    })
    .unwrap();
    assert_eq!(driver.states(4), [SlotState::Online; 3]);
    for t in &driver.parts {
        assert_eq!(t.online_count(), 5);
    }
    drop(driver);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn our_start_fails_rolls_back_and_reports_one_status() {
    let alloc = &new_alloc();
    let driver = Driver::new(alloc, 8).unwrap();
    let set = driver.set();
    alloc.plan(FailPlan::Once(1)); // the second component's slot
    assert_eq!(set.prepare(cpu(3)), Err(Error::OutOfMemory));
    assert_eq!(driver.visible(3), 0);
    assert_eq!(
        driver.states(3),
        [SlotState::Retired, SlotState::Absent, SlotState::Absent]
    );
    // Reading 1: the kernel sends us AddFailure as well. Harmless.
    set.abort(cpu(3)).unwrap();
    // Reading 2: it does not. Either way, a later add of that processor works,
    // reusing the kept slot of the first component.
    alloc.plan(FailPlan::Never);
    assert_eq!(set.prepare(cpu(3)), Ok(Prepared::New));
    set.commit(cpu(3)).unwrap();
    assert_eq!(driver.states(3), [SlotState::Online; 3]);
}

#[test]
fn another_drivers_veto_under_each_reading() {
    let alloc = &new_alloc();
    let driver = Driver::new(alloc, 8).unwrap();
    let set = driver.set();

    // Our Start succeeds; another callback vetoes; Failure reaches us.
    assert_eq!(set.prepare(cpu(1)), Ok(Prepared::New));
    set.handle(&ProcessorChange {
        state: ChangeState::AddFailure {
            status: -1073741670,
        },
        index: cpu(1),
        number: ProcessorNumber::new(0, 1).unwrap(),
    })
    .unwrap();
    assert_eq!(driver.states(1), [SlotState::Retired; 3]);
    assert_eq!(driver.visible(1), 0);

    // Our Start succeeds; Failure never reaches us (a reading where only some
    // callbacks are told): the processor stays prepared, which is safe, and a
    // later Start/Complete of it completes the add.
    assert_eq!(set.prepare(cpu(2)), Ok(Prepared::New));
    assert_eq!(driver.states(2), [SlotState::Prepared; 3]);
    assert_eq!(set.prepare(cpu(2)), Ok(Prepared::Already));
    set.commit(cpu(2)).unwrap();
    assert_eq!(driver.states(2), [SlotState::Online; 3]);

    // Failure for a processor that never got Start (we registered after it).
    set.abort(cpu(5)).unwrap();
    assert_eq!(driver.states(5), [SlotState::Absent; 3]);

    // Failure delivered twice.
    let _ = set.prepare(cpu(6)).unwrap();
    set.abort(cpu(6)).unwrap();
    set.abort(cpu(6)).unwrap();
    assert_eq!(driver.states(6), [SlotState::Retired; 3]);
}

#[test]
fn out_of_order_and_bogus_events_change_nothing() {
    let alloc = &new_alloc();
    let driver = Driver::new(alloc, 8).unwrap();
    let set = driver.set();
    assert_eq!(set.commit(cpu(1)), Err(Error::NotPrepared));
    assert_eq!(driver.states(1), [SlotState::Absent; 3]);
    let _ = set.prepare(cpu(1)).unwrap();
    set.commit(cpu(1)).unwrap();
    assert_eq!(set.abort(cpu(1)), Err(Error::AlreadyOnline));
    assert_eq!(driver.states(1), [SlotState::Online; 3]);
    // duplicate Start after Complete: no-op
    assert_eq!(set.prepare(cpu(1)), Ok(Prepared::Already));
    assert_eq!(driver.states(1), [SlotState::Online; 3]);
    let past = ProcessorIndex::new(8).unwrap();
    assert!(matches!(
        set.prepare(past),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        set.commit(past),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        set.abort(past),
        Err(Error::IndexOutOfRange { .. })
    ));
}

#[test]
fn sets_nest() {
    let alloc = &new_alloc();
    let a = Driver::new(alloc, 4).unwrap();
    let b = Driver::new(alloc, 4).unwrap();
    let outer = (a.set(), b.set());
    alloc.plan(FailPlan::Once(4)); // b's second component
    assert_eq!(outer.prepare(cpu(0)), Err(Error::OutOfMemory));
    assert_eq!(a.visible(0) + b.visible(0), 0);
    alloc.plan(FailPlan::Never);
    assert_eq!(outer.prepare(cpu(0)), Ok(Prepared::New));
    outer.commit(cpu(0)).unwrap();
    assert_eq!(a.states(0), [SlotState::Online; 3]);
    assert_eq!(b.states(0), [SlotState::Online; 3]);
}

/// Fails allocation k of `run`, for every k, and checks the result each time.
fn sweep(mut run: impl FnMut(&CountingAlloc<HostAlloc>, &Alloc, usize) -> bool) {
    for k in 0.. {
        let alloc = &new_alloc();
        let counting = alloc.inner();
        alloc.plan(FailPlan::Once(k));
        let injected = run(counting, alloc, k);
        assert_eq!(
            counting.live_blocks(),
            0,
            "leak after failing allocation {k}"
        );
        assert_eq!(
            counting.live_bytes(),
            0,
            "leak after failing allocation {k}"
        );
        if !injected {
            assert!(k > 0);
            return;
        }
    }
}

#[test]
fn fault_sweep_creating_containers() {
    sweep(|_, alloc, k| {
        let result = Driver::new(alloc, 2048);
        assert_eq!(result.is_err(), k < 3, "k = {k}");
        if let Err(e) = result {
            assert_eq!(e, Error::OutOfMemory);
        }
        alloc.injected() > 0
    });
}

#[test]
fn fault_sweep_one_processors_prepare_across_components() {
    sweep(|counting, alloc, k| {
        alloc.plan(FailPlan::Never);
        let driver = Driver::new(alloc, 64).unwrap();
        let set = driver.set();
        let base = counting.live_bytes();
        alloc.plan(FailPlan::Once(k));
        let result = set.prepare(cpu(9));
        let injected = alloc.injected() > 0;
        if injected {
            assert_eq!(result, Err(Error::OutOfMemory));
            assert_eq!(
                driver.visible(9),
                0,
                "half-published after failing allocation {k}"
            );
            // Components before the failing one are retired (kept), the rest absent.
            let expect: Vec<SlotState> = (0..3)
                .map(|c| {
                    if c < k {
                        SlotState::Retired
                    } else {
                        SlotState::Absent
                    }
                })
                .collect();
            assert_eq!(driver.states(9).to_vec(), expect);
            assert_eq!(
                counting.live_bytes(),
                base + k * driver.parts[0].slot_size()
            );
            set.abort(cpu(9)).unwrap();
            // The next add builds only what is missing.
            assert_eq!(set.prepare(cpu(9)), Ok(Prepared::New));
            assert_eq!(
                counting.live_bytes(),
                base + 3 * driver.parts[0].slot_size()
            );
        } else {
            assert_eq!(result, Ok(Prepared::New));
        }
        set.commit(cpu(9)).unwrap();
        assert_eq!(driver.states(9), [SlotState::Online; 3]);
        injected
    });
}

#[test]
fn fault_sweep_add_existing_replay() {
    const N: u32 = 8;
    sweep(|_, alloc, k| {
        alloc.plan(FailPlan::Never);
        let driver = Driver::new(alloc, 64).unwrap();
        let set = driver.set();
        alloc.plan(FailPlan::Once(k));
        let result = replay_existing(set, N);
        let injected = alloc.injected() > 0;
        if injected {
            // Allocation k is component k % 3 of processor k / 3.
            let failing = u32::try_from(k / 3).unwrap();
            assert_eq!(result, Err((failing, Error::OutOfMemory)));
            for i in 0..N {
                assert_eq!(
                    driver.visible(i),
                    0,
                    "processor {i} published after a failed replay"
                );
                let expect = if i < failing {
                    [SlotState::Retired; 3]
                } else if i == failing {
                    let mut s = [SlotState::Absent; 3];
                    for (c, state) in s.iter_mut().enumerate() {
                        if c < k % 3 {
                            *state = SlotState::Retired;
                        }
                    }
                    s
                } else {
                    [SlotState::Absent; 3]
                };
                assert_eq!(driver.states(i), expect, "processor {i}, k = {k}");
            }
        } else {
            result.unwrap();
            for i in 0..N {
                assert_eq!(driver.states(i), [SlotState::Online; 3]);
            }
        }
        injected
    });
}

#[test]
fn concurrent_prepares_of_different_processors() {
    let alloc = &new_alloc();
    let counting = alloc.inner();
    let n: u32 = if cfg!(miri) { 8 } else { 512 };
    {
        let driver = Driver::new(alloc, 512).unwrap();
        let set = driver.set();
        std::thread::scope(|s| {
            for w in 0..4 {
                s.spawn(move || {
                    for i in (w..n).step_by(4) {
                        assert_eq!(set.prepare(cpu(i)), Ok(Prepared::New));
                        set.commit(cpu(i)).unwrap();
                    }
                });
            }
            s.spawn(|| {
                // A reader racing them: whatever it sees is fully built.
                for _ in 0..if cfg!(miri) { 4 } else { 200 } {
                    for t in &driver.parts {
                        for (i, v) in t.iter() {
                            v.check(i);
                        }
                    }
                }
            });
        });
        for t in &driver.parts {
            assert_eq!(t.online_count(), usize::try_from(n).unwrap());
            let mut seen: Vec<u32> = t.iter().map(|(i, _)| i.get()).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
        }
    }
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn the_same_processor_from_two_threads_is_never_ub() {
    // Not something Windows does, but the library must survive it: exactly one
    // slot per processor, every outcome a value.
    let alloc = &new_alloc();
    let counting = alloc.inner();
    {
        let t = table(alloc, 64).unwrap();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for i in 0..if cfg!(miri) { 4 } else { 64 } {
                        for _ in 0..3 {
                            let _ = t.prepare(cpu(i));
                            let _ = t.abort(cpu(i));
                            let _ = t.commit(cpu(i));
                        }
                    }
                });
            }
        });
        for (i, v) in t.iter_all() {
            v.check(i);
        }
        let built = t.iter_all().count();
        assert_eq!(counting.live_blocks(), 1 + built);
    }
    assert_eq!(counting.live_blocks(), 0);
}
