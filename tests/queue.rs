//! Per-CPU queues: every documented behaviour, on the host platform.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::cpu;
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{
    Component, Components, CounterId, Error, PerCpuCounters, PerCpuQueue, Platform, SlotState,
};

/// Runs `f` on a thread bound to processor `i`.
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

/// An item that counts its live instances, so a test sees a loss (a leak) or a
/// duplicate (a double drop, or more live than made).
#[derive(Debug)]
struct Tracked {
    id: u64,
    live: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(id: u64, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self {
            id,
            live: live.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn pushes_on_the_pinned_processor_and_pops_in_order() {
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new(&platform, 8).unwrap();
    q.prepare(cpu(2)).unwrap();
    on(&platform, 2, || {
        let pin = platform.pin();
        for i in 0..5 {
            q.push(&pin, i).unwrap();
        }
    });
    assert_eq!(q.len(cpu(2)), 5);
    assert_eq!(q.len(cpu(1)), 0);
    assert_eq!(q.pop(cpu(2)), Some(0));
    assert_eq!(q.pop(cpu(2)), Some(1));
    assert_eq!(q.drain(cpu(2)).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(q.pop(cpu(2)), None);
    assert_eq!(q.pop(cpu(1)), None, "a processor with no queue has nothing");
    assert_eq!(q.pop(cpu(99)), None, "past the capacity: nothing, no panic");
}

#[test]
fn a_full_queue_hands_the_item_back_at_exactly_its_capacity() {
    let platform = HostPlatform::new(2).unwrap();
    // 5 is not a power of two: the bound is still exactly 5.
    let q = PerCpuQueue::new(&platform, 5).unwrap();
    q.prepare(cpu(0)).unwrap();
    let pin = platform.pin();
    for i in 0..5 {
        q.push(&pin, i).unwrap();
    }
    for attempt in 0..3 {
        let refused = q.push(&pin, 100 + attempt).unwrap_err();
        assert_eq!(refused.error, Error::Exhausted);
        assert_eq!(refused.into_inner(), 100 + attempt, "the item comes back");
    }
    assert_eq!(q.pop(pin_index(&pin)), Some(0));
    q.push(&pin, 5).unwrap();
    assert_eq!(q.push(&pin, 6).unwrap_err().error, Error::Exhausted);
    assert_eq!(
        q.drain(pin_index(&pin)).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

fn pin_index(pin: &impl perproc::PinGuard) -> perproc::ProcessorIndex {
    pin.processor()
}

#[test]
fn fifo_holds_across_wraparound() {
    let platform = HostPlatform::new(1).unwrap();
    let q = PerCpuQueue::new(&platform, 3).unwrap();
    q.prepare(cpu(0)).unwrap();
    let pin = platform.pin();
    let (mut pushed, mut popped) = (0u32, 0u32);
    for round in 0..500u32 {
        for _ in 0..(round % 4) {
            match q.push(&pin, pushed) {
                Ok(()) => pushed += 1,
                Err(e) => assert_eq!(e.error, Error::Exhausted),
            }
        }
        for _ in 0..(round % 3) {
            if let Some(v) = q.pop(cpu(0)) {
                assert_eq!(v, popped);
                popped += 1;
            }
        }
        assert_eq!(q.len(cpu(0)) as u32, pushed - popped);
    }
}

#[test]
fn a_processor_without_a_queue_gets_not_prepared_and_its_item_back() {
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new(&platform, 4).unwrap();
    on(&platform, 3, || {
        let pin = platform.pin();
        let refused = q.push(&pin, "io").unwrap_err();
        assert_eq!(refused.error, Error::NotPrepared);
        assert_eq!(refused.item, "io");
    });
    q.prepare(cpu(3)).unwrap();
    drop(q.abort(cpu(3)).unwrap());
    on(&platform, 3, || {
        let pin = platform.pin();
        let refused = q.push(&pin, "late").unwrap_err();
        assert_eq!(refused.error, Error::NotPrepared, "aborted: no queue");
        assert_eq!(refused.item, "late");
    });
    assert_eq!(q.total_len(), 0);
}

#[test]
fn the_queue_exists_from_start_before_complete() {
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new(&platform, 4).unwrap();
    let driver = Components::new([&q]);
    driver.start(cpu(1)).unwrap();
    assert_eq!(q.state(cpu(1)), SlotState::Prepared);
    on(&platform, 1, || q.push(&platform.pin(), 7).unwrap());
    driver.complete(cpu(1)).unwrap();
    assert_eq!(q.state(cpu(1)), SlotState::Online);
    assert_eq!(
        q.pop(cpu(1)),
        Some(7),
        "work queued before Complete survives it"
    );
}

#[test]
fn drain_takes_one_processor_and_drain_all_takes_every_one() {
    let platform = HostPlatform::new(8).unwrap();
    let q = PerCpuQueue::new(&platform, 16).unwrap();
    for i in [1, 4, 6] {
        q.prepare(cpu(i)).unwrap();
        on(&platform, i, || {
            let pin = platform.pin();
            for n in 0..3 {
                q.push(&pin, i * 10 + n).unwrap();
            }
        });
    }
    assert_eq!(q.total_len(), 9);
    assert_eq!(q.drain(cpu(4)).collect::<Vec<_>>(), [40, 41, 42]);
    assert_eq!(q.len(cpu(4)), 0);
    let mut all: Vec<_> = q.drain_all().map(|(i, v)| (i.get(), v)).collect();
    all.sort();
    assert_eq!(all, [(1, 10), (1, 11), (1, 12), (6, 60), (6, 61), (6, 62)]);
    assert_eq!(q.drain_all().count(), 0);
    assert_eq!(q.total_len(), 0);
}

#[test]
fn a_drain_takes_only_what_was_queued_when_it_started() {
    let platform = HostPlatform::new(1).unwrap();
    let q = PerCpuQueue::new(&platform, 8).unwrap();
    q.prepare(cpu(0)).unwrap();
    let pin = platform.pin();
    q.push(&pin, 1).unwrap();
    q.push(&pin, 2).unwrap();
    let mut drain = q.drain(cpu(0));
    assert_eq!(drain.size_hint(), (2, Some(2)));
    assert_eq!(drain.next(), Some(1));
    // The owner keeps producing while a consumer drains: no lock on its side.
    q.push(&pin, 3).unwrap();
    assert_eq!(drain.next(), Some(2));
    assert_eq!(drain.next(), None);
    drop(drain);
    assert_eq!(q.pop(cpu(0)), Some(3));
}

#[test]
fn a_second_consumer_finds_a_claimed_queue_empty_and_the_first_takes_everything() {
    let platform = HostPlatform::new(2).unwrap();
    let q = PerCpuQueue::new(&platform, 8).unwrap();
    q.prepare(cpu(0)).unwrap();
    let pin = platform.pin();
    for i in 0..4 {
        q.push(&pin, i).unwrap();
    }
    let mut first = q.drain(cpu(0));
    assert_eq!(first.next(), Some(0));
    assert_eq!(
        q.pop(cpu(0)),
        None,
        "claimed: another consumer does not wait"
    );
    assert_eq!(q.drain_all().count(), 0, "drain_all skips a claimed queue");
    // Dropping a drain early leaves the rest queued.
    drop(first);
    assert_eq!(q.drain(cpu(0)).collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn abort_drains_the_queue_back_and_keeps_stragglers_for_drain_all() {
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new(&platform, 8).unwrap();
    q.prepare(cpu(2)).unwrap();
    on(&platform, 2, || {
        let pin = platform.pin();
        for i in 0..4 {
            q.push(&pin, i).unwrap();
        }
    });
    let mut back = q.abort(cpu(2)).unwrap();
    assert_eq!(q.state(cpu(2)), SlotState::Retired);
    assert_eq!(back.next(), Some(0));
    assert_eq!(back.next(), Some(1));
    // The caller stops early (or a push raced the abort): the rest stays queued
    // in the retired queue, and the consumers still find it.
    drop(back);
    assert_eq!(q.len(cpu(2)), 2);
    assert_eq!(q.pop(cpu(2)), Some(2));
    assert_eq!(
        q.drain_all().collect::<Vec<_>>(),
        [(cpu(2), 3)],
        "drain_all visits retired queues"
    );
    // Idempotent; a processor never prepared gives an empty drain.
    assert_eq!(q.abort(cpu(2)).unwrap().count(), 0);
    assert_eq!(q.abort(cpu(3)).unwrap().count(), 0);
    assert!(q.abort(cpu(9)).is_err(), "past the capacity");
}

#[test]
fn a_new_add_revives_an_aborted_queue_with_its_items_without_allocating() {
    let counting = CountingAlloc::new(HostAlloc);
    let q = PerCpuQueue::with_capacity_in(4, 4, &counting).unwrap();
    let platform = HostPlatform::new(4).unwrap();
    q.prepare(cpu(1)).unwrap();
    on(&platform, 1, || q.push(&platform.pin(), 'a').unwrap());
    let component: &dyn Component = &q;
    component.abort(cpu(1)).unwrap(); // through a component set: items stay
    assert_eq!(q.len(cpu(1)), 1);
    let allocations = counting.allocations();
    q.prepare(cpu(1)).unwrap();
    assert_eq!(counting.allocations(), allocations, "revived as it was");
    on(&platform, 1, || q.push(&platform.pin(), 'b').unwrap());
    q.commit(cpu(1)).unwrap();
    assert_eq!(q.drain(cpu(1)).collect::<String>(), "ab");
    assert_eq!(q.abort(cpu(1)).unwrap_err(), Error::AlreadyOnline);
}

#[test]
fn storage_is_placed_for_its_processor_and_the_fast_path_allocates_nothing() {
    let counting = CountingAlloc::new(HostAlloc);
    let q = PerCpuQueue::with_capacity_in(4, 100, &counting).unwrap();
    let platform = HostPlatform::new(4).unwrap();
    let (placed, blocks) = (counting.placed_allocations(), counting.live_blocks());
    q.prepare(cpu(3)).unwrap();
    assert_eq!(
        counting.placed_allocations(),
        placed + 2,
        "ring and cells, placed"
    );
    assert_eq!(counting.live_blocks(), blocks + 2);
    assert!(
        counting.live_bytes() >= 128 * std::mem::size_of::<u64>(),
        "capacity 100 rounds up to 128 cells"
    );
    q.prepare(cpu(3)).unwrap();
    assert_eq!(counting.live_blocks(), blocks + 2, "prepare is idempotent");
    let allocations = counting.allocations();
    on(&platform, 3, || {
        let pin = platform.pin();
        for round in 0..50u64 {
            for i in 0..100 {
                q.push(&pin, round * 100 + i).unwrap();
            }
            assert_eq!(q.drain(cpu(3)).count(), 100);
        }
    });
    assert_eq!(
        counting.allocations(),
        allocations,
        "no allocation when pushing or popping"
    );
    drop(q);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn items_are_moved_and_every_one_is_dropped_exactly_once() {
    let live = Arc::new(AtomicUsize::new(0));
    let counting = CountingAlloc::new(HostAlloc);
    let platform = HostPlatform::new(4).unwrap();
    {
        let q = PerCpuQueue::with_capacity_in(4, 4, &counting).unwrap();
        for i in 0..3 {
            q.prepare(cpu(i)).unwrap();
        }
        on(&platform, 0, || {
            let pin = platform.pin();
            for id in 0..4 {
                q.push(&pin, Tracked::new(id, &live)).unwrap();
            }
            let refused = q.push(&pin, Tracked::new(99, &live)).unwrap_err();
            assert_eq!(refused.item.id, 99);
        });
        on(&platform, 1, || {
            let pin = platform.pin();
            q.push(&pin, Tracked::new(10, &live)).unwrap();
            q.push(&pin, Tracked::new(11, &live)).unwrap();
        });
        assert_eq!(
            live.load(Ordering::SeqCst),
            6,
            "the refused one was dropped by its owner"
        );
        let taken = q.pop(cpu(0)).unwrap();
        assert_eq!(taken.id, 0);
        drop(taken);
        // A drain leaked while holding its claim: its queue looks empty to
        // consumers, but the container still drops the items (no leak, no UB).
        let mut leaked = q.drain(cpu(1));
        assert_eq!(leaked.next().unwrap().id, 10);
        std::mem::forget(leaked);
        assert!(q.pop(cpu(1)).is_none());
        drop(q.abort(cpu(2)).unwrap());
        assert_eq!(live.load(Ordering::SeqCst), 4);
    }
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "the queue's drop dropped the rest once"
    );
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn zero_sized_items_are_counted_without_memory_for_them() {
    let platform = HostPlatform::new(2).unwrap();
    let q = PerCpuQueue::new(&platform, 3).unwrap();
    q.prepare(cpu(0)).unwrap();
    let pin = platform.pin();
    for _ in 0..3 {
        q.push(&pin, ()).unwrap();
    }
    assert_eq!(q.push(&pin, ()).unwrap_err().error, Error::Exhausted);
    assert_eq!(q.drain(cpu(0)).count(), 3);
}

#[test]
fn bad_capacities_and_indexes_are_errors() {
    let platform = HostPlatform::new(2).unwrap();
    assert_eq!(
        PerCpuQueue::<u8, _>::new(&platform, 0).unwrap_err(),
        Error::CapacityOverflow
    );
    assert_eq!(
        PerCpuQueue::<u64, _>::new(&platform, usize::MAX).unwrap_err(),
        Error::CapacityOverflow
    );
    assert_eq!(
        PerCpuQueue::<u64, _>::new(&platform, usize::MAX / 4).unwrap_err(),
        Error::CapacityOverflow
    );
    let q = PerCpuQueue::<u64, _>::new(&platform, 4).unwrap();
    assert!(matches!(
        q.prepare(cpu(2)),
        Err(Error::IndexOutOfRange { capacity: 2, .. })
    ));
    assert_eq!(q.commit(cpu(1)), Err(Error::NotPrepared));
    assert_eq!(q.len(cpu(1000)), 0);
}

#[test]
fn every_failed_allocation_leaves_nothing_published_and_nothing_leaked() {
    let platform = HostPlatform::new(4).unwrap();
    for k in 0.. {
        let counting = CountingAlloc::new(HostAlloc);
        let alloc = FailingAlloc::new(&counting);
        let q = PerCpuQueue::<u32, _>::with_capacity_in(4, 8, &alloc).unwrap();
        const ALL: CounterId<1> = CounterId::at::<0>();
        let stats = PerCpuCounters::<1, _>::with_capacity_in(4, &alloc).unwrap();
        let driver = Components::new([&q, &stats]);
        alloc.plan(FailPlan::Once(k));
        let mut failed = false;
        let mut pushed = 0;
        for i in 0..3 {
            match driver.start(cpu(i)) {
                Ok(()) => {
                    assert_eq!(q.state(cpu(i)), SlotState::Prepared);
                    on(&platform, i, || {
                        let pin = platform.pin();
                        q.push(&pin, i).unwrap();
                        stats.add(&pin, ALL, 1);
                    });
                    pushed += 1;
                }
                Err(e) => {
                    failed = true;
                    assert_eq!(e, Error::OutOfMemory);
                    assert!(q.state(cpu(i)) != SlotState::Prepared, "rolled back");
                    on(&platform, i, || {
                        let refused = q.push(&platform.pin(), i).unwrap_err();
                        assert_eq!(refused.error, Error::NotPrepared);
                    });
                    driver.fail(cpu(i)).unwrap();
                    // The next add of that processor works and keeps nothing stale.
                    alloc.plan(FailPlan::Never);
                    driver.start(cpu(i)).unwrap();
                    assert_eq!(q.len(cpu(i)), 0);
                }
            }
        }
        let mut drained: Vec<_> = q.drain_all().map(|(_, v)| v).collect();
        drained.sort();
        assert_eq!(drained.len(), pushed);
        assert_eq!(stats.sums(), [pushed as u64]);
        drop(q);
        drop(stats);
        assert_eq!(counting.live_blocks(), 0, "k = {k}");
        if !failed {
            assert_eq!(alloc.injected(), 0);
            assert!(
                k > 6,
                "at least 2 queue + 1 counter allocations per processor"
            );
            break;
        }
    }
}

#[test]
fn a_rolled_back_start_keeps_what_was_queued_in_the_window() {
    // Start publishes the queue, a later component fails, the queue is rolled
    // back: anything a fast processor queued in between is not lost.
    let platform = HostPlatform::new(4).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let alloc = FailingAlloc::new(&counting);
    let q = PerCpuQueue::with_capacity_in(4, 8, &alloc).unwrap();
    q.prepare(cpu(1)).unwrap();
    on(&platform, 1, || q.push(&platform.pin(), 42).unwrap());
    // What Components::start does when a later part fails:
    Component::abort(&q, cpu(1)).unwrap();
    assert_eq!(q.drain_all().collect::<Vec<_>>(), [(cpu(1), 42)]);
}

#[test]
fn a_held_consumer_pops_items_queued_after_it_was_taken_and_excludes_others() {
    let platform = HostPlatform::new(2).unwrap();
    let q = PerCpuQueue::new(&platform, 2).unwrap();
    q.prepare(cpu(0)).unwrap();
    assert!(q.consumer(cpu(1)).is_none(), "no queue, no consumer");
    let pin = platform.pin();
    let mut mine = q.consumer(cpu(0)).unwrap();
    assert_eq!(mine.pop(), None);
    for round in 0..10 {
        q.push(&pin, round).unwrap();
        q.push(&pin, round + 100).unwrap();
        assert_eq!(q.push(&pin, 0).unwrap_err().error, Error::Exhausted);
        assert!(q.consumer(cpu(0)).is_none(), "one consumer at a time");
        assert_eq!(q.pop(cpu(0)), None);
        assert_eq!(mine.pop(), Some(round));
        assert_eq!(mine.pop(), Some(round + 100));
        assert_eq!(mine.pop(), None);
    }
    q.push(&pin, 7).unwrap();
    drop(mine);
    assert_eq!(q.pop(cpu(0)), Some(7), "released: the rest stays queued");
}
