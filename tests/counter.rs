//! Per-CPU counters: local adds, sums over all, across hot-add and abort; the
//! named-counter macro and the anonymous (array) form.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::{cpu, on};
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Component, Counter, CounterSet, PerCpuCounter, PerCpuCounters, Platform, SlotState};

perproc::counters! {
    /// The statistics these tests count.
    pub struct Io {
        submitted,
        completed,
        /// Bytes moved.
        bytes,
    }
}

fn io(submitted: u64, completed: u64, bytes: u64) -> Io {
    Io {
        submitted,
        completed,
        bytes,
    }
}

#[test]
fn adds_land_on_the_pinned_processor_and_sum_over_all() {
    let platform = HostPlatform::new(8).unwrap();
    let stats = PerCpuCounters::<Io, _>::new(&platform).unwrap();
    for i in [0, 3, 7] {
        let _ = stats.prepare(cpu(i)).unwrap();
        on(&platform, i, || {
            platform
                .pinned(|pin| {
                    for _ in 0..=i {
                        stats.add(pin, Io::submitted, 1);
                    }
                    stats.add(pin, Io::bytes, 512 * u64::from(i));
                })
                .unwrap()
        });
    }
    assert_eq!(stats.processor(cpu(3)), Some(io(4, 0, 1536)));
    assert_eq!(stats.processor(cpu(1)), None);
    assert_eq!(stats.sum(Io::submitted), 1 + 4 + 8);
    assert_eq!(stats.sum(Io::completed), 0);
    assert_eq!(stats.sums(), io(13, 0, 512 * 10));
    let mut each: Vec<_> = stats
        .per_processor()
        .map(|(i, c)| (i.get(), c.submitted, c.bytes))
        .collect();
    each.sort();
    assert_eq!(each, [(0, 1, 0), (3, 4, 1536), (7, 8, 3584)]);
    assert_eq!(stats.unplaced(), Io::default());
}

#[test]
fn the_macro_numbers_fields_in_order_and_names_them() {
    assert_eq!(Io::submitted.get(), 0);
    assert_eq!(Io::completed.get(), 1);
    assert_eq!(Io::bytes.get(), 2);
    assert_eq!(Io::NAMES, ["submitted", "completed", "bytes"]);
    assert_eq!(Io::bytes.name(), Some("bytes"));
    assert_eq!(Io::from_counts([1, 2, 3]), io(1, 2, 3));
    assert_eq!(
        Counter::<Io>::all().collect::<Vec<_>>(),
        [Io::submitted, Io::completed, Io::bytes]
    );
    assert_eq!(Counter::<Io>::new(2), Some(Io::bytes));
    assert_eq!(Counter::<Io>::new(3), None);
}

#[test]
fn a_processor_without_a_block_still_counts() {
    let platform = HostPlatform::new(4).unwrap();
    let stats = PerCpuCounters::<Io, _>::new(&platform).unwrap();
    on(&platform, 2, || {
        platform
            .pinned(|pin| stats.add(pin, Io::completed, 5))
            .unwrap()
    });
    assert_eq!(stats.unplaced(), io(0, 5, 0));
    assert_eq!(stats.sum(Io::completed), 5);
    assert_eq!(stats.processor(cpu(2)), None);
}

#[test]
fn an_aborted_add_never_makes_a_sum_go_down() {
    let platform = HostPlatform::new(4).unwrap();
    let stats: PerCpuCounter<_> = PerCpuCounters::new(&platform).unwrap();
    const ALL: Counter<[u64; 1]> = Counter::at::<0>();
    let driver = (&stats,);
    let _ = driver.prepare(cpu(1)).unwrap();
    let add = |n| {
        on(&platform, 1, || {
            platform.pinned(|pin| stats.add(pin, ALL, n)).unwrap()
        })
    };
    add(10);
    let before = stats.sum(ALL);
    driver.abort(cpu(1)).unwrap();
    assert_eq!(stats.state(cpu(1)), SlotState::Retired);
    assert_eq!(stats.sum(ALL), before, "retired blocks stay in the sum");
    assert_eq!(stats.processor(cpu(1)), Some([10]));
    // While aborted, the processor's adds go to the shared block.
    add(1);
    assert_eq!(stats.unplaced(), [1]);
    assert_eq!(stats.sum(ALL), 11);
    // The next add revives the block as it was.
    let _ = driver.prepare(cpu(1)).unwrap();
    driver.commit(cpu(1)).unwrap();
    add(100);
    assert_eq!(stats.processor(cpu(1)), Some([110]));
    assert_eq!(stats.sum(ALL), 111);
    assert_eq!(stats.abort(cpu(1)), Err(perproc::Error::AlreadyOnline));
}

#[test]
fn counts_wrap_instead_of_panicking() {
    let platform = HostPlatform::new(1).unwrap();
    let stats = PerCpuCounters::<Io, _>::new(&platform).unwrap();
    let _ = stats.prepare(cpu(0)).unwrap();
    platform
        .pinned(|pin| {
            stats.add(pin, Io::bytes, u64::MAX);
            stats.add(pin, Io::bytes, 2);
        })
        .unwrap();
    assert_eq!(stats.sum(Io::bytes), 1);
}

#[test]
fn array_counter_ids_are_checked() {
    const BYTES: Counter<[u64; 3]> = Counter::at::<2>();
    assert_eq!(Counter::<[u64; 3]>::new(2), Some(BYTES));
    assert_eq!(Counter::<[u64; 3]>::new(3), None);
    assert_eq!(Counter::<[u64; 0]>::new(0), None);
    assert_eq!(
        Counter::<[u64; 3]>::all()
            .map(Counter::get)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(BYTES.name(), None, "anonymous counters have no names");
}

#[test]
fn a_local_block_takes_a_batch_under_one_pin() {
    let platform = HostPlatform::new(2).unwrap();
    let stats = PerCpuCounters::<Io, _>::new(&platform).unwrap();
    let _ = stats.prepare(cpu(0)).unwrap();
    platform
        .pinned(|pin| {
            let local = stats.local(pin);
            for n in 1..=4 {
                local.add(Io::submitted, 1);
                local.add(Io::bytes, n * 512);
            }
        })
        .unwrap();
    assert_eq!(stats.processor(cpu(0)), Some(io(4, 0, 5120)));
    assert_eq!(stats.unplaced(), Io::default());
}

#[test]
fn every_failed_allocation_is_an_error_and_nothing_leaks() {
    let platform = HostPlatform::new(4).unwrap();
    for k in 0.. {
        let counting = CountingAlloc::new(HostAlloc);
        let alloc = FailingAlloc::new(&counting);
        alloc.plan(FailPlan::Once(k));
        let run = || -> Result<(), perproc::Error> {
            let stats = PerCpuCounters::<Io, _, _>::new_in(&platform, &alloc)?;
            for i in 0..3 {
                let _ = stats.prepare(cpu(i))?;
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
    let stats = PerCpuCounters::<Io, _>::new(&platform).unwrap();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        for i in 0..PROCESSORS {
            let (platform, stats) = (&platform, &stats);
            s.spawn(move || {
                platform.bind_current_thread(cpu(i)).unwrap();
                for _ in 0..ADDS {
                    platform
                        .pinned(|pin| {
                            stats.add(pin, Io::submitted, 1);
                            stats.add(pin, Io::bytes, 3);
                        })
                        .unwrap();
                }
            });
        }
        let reader = {
            let (stats, done) = (&stats, &done);
            s.spawn(move || {
                let mut last = Io::default();
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) || reads < 10 {
                    let now = stats.sums();
                    assert!(
                        now.submitted >= last.submitted
                            && now.completed >= last.completed
                            && now.bytes >= last.bytes,
                        "a sum went down: {now:?} after {last:?}"
                    );
                    assert!(now.bytes <= 3 * ADDS * u64::from(PROCESSORS));
                    last = now;
                    reads += 1;
                }
            })
        };
        // The hot-add thread: every processor arrives; one add is vetoed after
        // its Start (AddFailure), then retried.
        for i in 0..PROCESSORS {
            let _ = stats.prepare(cpu(i)).unwrap();
            if i == PROCESSORS / 2 {
                std::thread::yield_now();
                stats.abort(cpu(i)).unwrap();
                std::thread::yield_now();
                let _ = stats.prepare(cpu(i)).unwrap();
            }
            stats.commit(cpu(i)).unwrap();
        }
        // Wait for the adders, then let the reader finish.
        while stats.sum(Io::submitted) < ADDS * u64::from(PROCESSORS) {
            std::thread::yield_now();
        }
        done.store(true, Ordering::SeqCst);
        reader.join().unwrap();
    });
    let total = ADDS * u64::from(PROCESSORS);
    assert_eq!(stats.sums(), io(total, 0, 3 * total));
}

#[test]
fn counter_ids_compare_hash_and_print_by_position() {
    use std::collections::HashSet;
    assert_eq!(Io::bytes, Io::bytes);
    assert_ne!(Io::submitted, Io::completed);
    let ids: HashSet<Counter<Io>> = [Io::submitted, Io::bytes, Io::bytes].into_iter().collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&Io::bytes) && !ids.contains(&Io::completed));
    // A counter hashes as its position (usable as a map key next to indexes).
    let hash = |value: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
        use std::hash::Hasher;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value(&mut hasher);
        hasher.finish()
    };
    use std::hash::Hash;
    for id in Counter::<Io>::all() {
        assert_eq!(hash(&|h| id.hash(h)), hash(&|h| id.get().hash(h)));
    }
    assert_ne!(
        hash(&|h| Io::bytes.hash(h)),
        hash(&|h| Io::submitted.hash(h))
    );
    assert_eq!(format!("{:?}", Io::completed), "Counter(1)");

    let platform = HostPlatform::new(2).unwrap();
    let stats = PerCpuCounters::<Io, _>::new(&platform).unwrap();
    let _ = stats.prepare(cpu(0)).unwrap();
    platform
        .pinned(|pin| {
            stats.add(pin, Io::completed, 2);
            let local = stats.local(pin);
            assert_eq!(format!("{local:?}"), "LocalCounters { placed: true, .. }");
        })
        .unwrap();
    assert_eq!(
        format!("{stats:?}"),
        "PerCpuCounters { sums: Io { submitted: 0, completed: 2, bytes: 0 }, .. }"
    );
}
