//! Per-CPU counters: local adds, sums over all, across hot-add and abort.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::cpu;
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Components, CounterId, PerCpuCounter, PerCpuCounters, Platform, SlotState};

const SUBMITTED: CounterId<3> = CounterId::at::<0>();
const COMPLETED: CounterId<3> = CounterId::at::<1>();
const BYTES: CounterId<3> = CounterId::at::<2>();

fn on<R: Send>(platform: &HostPlatform, i: u32, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            platform.bind_current_thread(cpu(i)).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn adds_land_on_the_pinned_processor_and_sum_over_all() {
    let platform = HostPlatform::new(8).unwrap();
    let stats = PerCpuCounters::<3, _>::new(&platform).unwrap();
    for i in [0, 3, 7] {
        stats.prepare(cpu(i)).unwrap();
        on(&platform, i, || {
            let pin = platform.pin();
            for _ in 0..=i {
                stats.add(&pin, SUBMITTED, 1);
            }
            stats.add(&pin, BYTES, 512 * u64::from(i));
        });
    }
    assert_eq!(stats.processor(cpu(3)), Some([4, 0, 1536]));
    assert_eq!(stats.processor(cpu(1)), None);
    assert_eq!(stats.sum(SUBMITTED), 1 + 4 + 8);
    assert_eq!(stats.sum(COMPLETED), 0);
    assert_eq!(stats.sums(), [13, 0, 512 * 10]);
    let mut each: Vec<_> = stats.per_processor().map(|(i, c)| (i.get(), c)).collect();
    each.sort();
    assert_eq!(each, [(0, [1, 0, 0]), (3, [4, 0, 1536]), (7, [8, 0, 3584])]);
    assert_eq!(stats.unplaced(), [0; 3]);
}

#[test]
fn a_processor_without_a_block_still_counts() {
    let platform = HostPlatform::new(4).unwrap();
    let stats = PerCpuCounters::<3, _>::new(&platform).unwrap();
    on(&platform, 2, || stats.add(&platform.pin(), COMPLETED, 5));
    assert_eq!(stats.unplaced(), [0, 5, 0]);
    assert_eq!(stats.sum(COMPLETED), 5);
    assert_eq!(stats.processor(cpu(2)), None);
}

#[test]
fn an_aborted_add_never_makes_a_sum_go_down() {
    let platform = HostPlatform::new(4).unwrap();
    let stats: PerCpuCounter<_> = PerCpuCounters::new(&platform).unwrap();
    const ALL: CounterId<1> = CounterId::at::<0>();
    let driver = Components::new([&stats]);
    driver.start(cpu(1)).unwrap();
    on(&platform, 1, || stats.add(&platform.pin(), ALL, 10));
    let before = stats.sum(ALL);
    driver.fail(cpu(1)).unwrap();
    assert_eq!(stats.state(cpu(1)), SlotState::Retired);
    assert_eq!(stats.sum(ALL), before, "retired blocks stay in the sum");
    assert_eq!(stats.processor(cpu(1)), Some([10]));
    // While aborted, the processor's adds go to the shared block.
    on(&platform, 1, || stats.add(&platform.pin(), ALL, 1));
    assert_eq!(stats.unplaced(), [1]);
    assert_eq!(stats.sum(ALL), 11);
    // The next add revives the block as it was.
    driver.start(cpu(1)).unwrap();
    driver.complete(cpu(1)).unwrap();
    on(&platform, 1, || stats.add(&platform.pin(), ALL, 100));
    assert_eq!(stats.processor(cpu(1)), Some([110]));
    assert_eq!(stats.sum(ALL), 111);
    assert_eq!(stats.abort(cpu(1)), Err(perproc::Error::AlreadyOnline));
}

#[test]
fn counts_wrap_instead_of_panicking() {
    let platform = HostPlatform::new(1).unwrap();
    let stats = PerCpuCounters::<3, _>::new(&platform).unwrap();
    stats.prepare(cpu(0)).unwrap();
    let pin = platform.pin();
    stats.add(&pin, BYTES, u64::MAX);
    stats.add(&pin, BYTES, 2);
    assert_eq!(stats.sum(BYTES), 1);
}

#[test]
fn counter_ids_are_checked() {
    assert_eq!(CounterId::<3>::new(2), Some(BYTES));
    assert_eq!(CounterId::<3>::new(3), None);
    assert_eq!(CounterId::<0>::new(0), None);
    assert_eq!(
        CounterId::<3>::all()
            .map(CounterId::get)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
}

#[test]
fn every_failed_allocation_is_an_error_and_nothing_leaks() {
    for k in 0.. {
        let counting = CountingAlloc::new(HostAlloc);
        let alloc = FailingAlloc::new(&counting);
        alloc.plan(FailPlan::Once(k));
        let run = || -> Result<(), perproc::Error> {
            let stats = PerCpuCounters::<3, _>::with_capacity_in(4, &alloc)?;
            for i in 0..3 {
                stats.prepare(cpu(i))?;
            }
            Ok(())
        };
        let failed = run().is_err();
        assert_eq!(counting.live_blocks(), 0);
        if !failed {
            assert_eq!(k, 4, "a table and three blocks");
            break;
        }
    }
}

/// Adders on every processor while processors arrive and one add is vetoed;
/// a reader's successive sums never go down, and the final sum is exact.
#[test]
fn sums_never_go_down_while_processors_arrive_and_adds_are_vetoed() {
    const PROCESSORS: u32 = if cfg!(miri) { 4 } else { 16 };
    const ADDS: u64 = if cfg!(miri) { 50 } else { 20_000 };
    let platform = HostPlatform::new(PROCESSORS).unwrap();
    let stats = PerCpuCounters::<3, _>::new(&platform).unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for i in 0..PROCESSORS {
            let (platform, stats) = (&platform, &stats);
            s.spawn(move || {
                platform.bind_current_thread(cpu(i)).unwrap();
                for _ in 0..ADDS {
                    let pin = platform.pin();
                    stats.add(&pin, SUBMITTED, 1);
                    stats.add(&pin, BYTES, 3);
                }
            });
        }
        let reader = {
            let (stats, done) = (&stats, &done);
            s.spawn(move || {
                let mut last = [0; 3];
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) || reads < 10 {
                    let now = stats.sums();
                    for (n, l) in now.iter().zip(last) {
                        assert!(*n >= l, "a sum went down: {now:?} after {last:?}");
                    }
                    assert!(now[2] <= 3 * ADDS * u64::from(PROCESSORS));
                    last = now;
                    reads += 1;
                }
            })
        };
        // The hot-add thread: every processor arrives; one add is vetoed after
        // its Start (AddFailure), then retried.
        for i in 0..PROCESSORS {
            stats.prepare(cpu(i)).unwrap();
            if i == PROCESSORS / 2 {
                std::thread::yield_now();
                stats.abort(cpu(i)).unwrap();
                std::thread::yield_now();
                stats.prepare(cpu(i)).unwrap();
            }
            stats.commit(cpu(i)).unwrap();
        }
        // Wait for the adders, then let the reader finish.
        while stats.sum(SUBMITTED) < ADDS * u64::from(PROCESSORS) {
            std::thread::yield_now();
        }
        done.store(true, Ordering::SeqCst);
        reader.join().unwrap();
    });
    let total = ADDS * u64::from(PROCESSORS);
    assert_eq!(stats.sums(), [total, 0, 3 * total]);
}
