//! Per-CPU queues: every documented behaviour, on the host platform.

mod common;

use common::{cpu, on, Tracked};

use std::alloc::Layout;
use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{
    AllocError, Component, Error, Limits, PerCpuCounters, PerCpuPool, PerCpuQueue, PinGuard,
    Platform, PoolBox, Prepared, ProcessorIndex, RawAlloc, SlotState,
};

/// Runs `f` pinned on a thread bound to processor `i`.
fn pinned_on<R: Send>(
    platform: &HostPlatform,
    i: u32,
    f: impl FnOnce(&PinGuard<'_, HostPlatform>) -> R + Send,
) -> R {
    on(platform, i, || platform.pinned(f).unwrap())
}

#[test]
fn pushes_on_the_pinned_processor_and_pops_in_order() {
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new(&platform, 8).unwrap();
    assert_eq!(q.prepare(cpu(2)), Ok(Prepared::New));
    assert_eq!(q.prepare(cpu(2)), Ok(Prepared::Already));
    pinned_on(&platform, 2, |pin| {
        for i in 0..5 {
            q.push(pin, i).unwrap();
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
    let _ = q.prepare(cpu(0)).unwrap();
    pinned_on(&platform, 0, |pin| {
        for i in 0..5 {
            q.push(pin, i).unwrap();
        }
        for attempt in 0..3 {
            let refused = q.push(pin, 100 + attempt).unwrap_err();
            assert_eq!(refused.error, Error::Exhausted);
            assert_eq!(refused.into_inner(), 100 + attempt, "the item comes back");
        }
        assert_eq!(q.pop(pin.processor()), Some(0));
        q.push(pin, 5).unwrap();
        assert_eq!(q.push(pin, 6).unwrap_err().error, Error::Exhausted);
        assert_eq!(
            q.drain(pin.processor()).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
    });
}

#[test]
fn fifo_holds_across_wraparound() {
    let platform = HostPlatform::new(1).unwrap();
    let q = PerCpuQueue::new(&platform, 3).unwrap();
    let _ = q.prepare(cpu(0)).unwrap();
    pinned_on(&platform, 0, |pin| {
        let (mut pushed, mut popped) = (0u32, 0u32);
        for round in 0..500u32 {
            for _ in 0..(round % 4) {
                match q.push(pin, pushed) {
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
    });
}

#[test]
fn a_processor_without_a_queue_gets_not_prepared_and_its_item_back() {
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new(&platform, 4).unwrap();
    pinned_on(&platform, 3, |pin| {
        let refused = q.push(pin, "io").unwrap_err();
        assert_eq!(refused.error, Error::NotPrepared);
        assert_eq!(refused.item, "io");
    });
    let _ = q.prepare(cpu(3)).unwrap();
    assert_eq!(q.abort(cpu(3)).unwrap().count(), 0);
    pinned_on(&platform, 3, |pin| {
        let refused = q.push(pin, "late").unwrap_err();
        assert_eq!(refused.error, Error::NotPrepared, "aborted: no queue");
        assert_eq!(refused.item, "late");
    });
    assert_eq!(q.total_len(), 0);
}

#[test]
fn a_pin_of_another_machine_gets_not_prepared() {
    // Host platforms share one machine; the queue checks through
    // `shares_processors`, which a platform of another machine would fail.
    let platform = HostPlatform::new(4).unwrap();
    let other = HostPlatform::new(2).unwrap();
    let q = PerCpuQueue::new(&platform, 4).unwrap();
    let _ = q.prepare(cpu(1)).unwrap();
    on(&platform, 1, || {
        other.pinned(|pin| q.push(pin, 1).unwrap()).unwrap();
    });
    assert_eq!(q.pop(cpu(1)), Some(1), "same machine: the same processor");
}

#[test]
fn the_queue_exists_from_start_before_complete() {
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new(&platform, 4).unwrap();
    let driver = (&q,);
    assert_eq!(driver.prepare(cpu(1)), Ok(Prepared::New));
    assert_eq!(q.state(cpu(1)), SlotState::Prepared);
    pinned_on(&platform, 1, |pin| q.push(pin, 7).unwrap());
    driver.commit(cpu(1)).unwrap();
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
        let _ = q.prepare(cpu(i)).unwrap();
        pinned_on(&platform, i, |pin| {
            for n in 0..3 {
                q.push(pin, i * 10 + n).unwrap();
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
    let _ = q.prepare(cpu(0)).unwrap();
    pinned_on(&platform, 0, |pin| {
        q.push(pin, 1).unwrap();
        q.push(pin, 2).unwrap();
        let mut drain = q.drain(cpu(0));
        assert_eq!(drain.size_hint(), (2, Some(2)));
        assert_eq!(drain.next(), Some(1));
        // The owner keeps producing while a consumer drains: no lock on its side.
        q.push(pin, 3).unwrap();
        assert_eq!(drain.next(), Some(2));
        assert_eq!(drain.next(), None);
        drop(drain);
        assert_eq!(q.pop(cpu(0)), Some(3));
    });
}

#[test]
fn a_second_consumer_finds_a_claimed_queue_empty_and_the_first_takes_everything() {
    let platform = HostPlatform::new(2).unwrap();
    let q = PerCpuQueue::new(&platform, 8).unwrap();
    let _ = q.prepare(cpu(0)).unwrap();
    pinned_on(&platform, 0, |pin| {
        for i in 0..4 {
            q.push(pin, i).unwrap();
        }
    });
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
    let _ = q.prepare(cpu(2)).unwrap();
    pinned_on(&platform, 2, |pin| {
        for i in 0..4 {
            q.push(pin, i).unwrap();
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
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new_in(&platform, &counting, 4).unwrap();
    let _ = q.prepare(cpu(1)).unwrap();
    pinned_on(&platform, 1, |pin| q.push(pin, 'a').unwrap());
    let component: &dyn Component = &q;
    component.abort(cpu(1)).unwrap(); // through a component set: items stay
    assert_eq!(q.len(cpu(1)), 1);
    let allocations = counting.allocations();
    assert_eq!(q.prepare(cpu(1)), Ok(Prepared::New));
    assert_eq!(counting.allocations(), allocations, "revived as it was");
    pinned_on(&platform, 1, |pin| q.push(pin, 'b').unwrap());
    q.commit(cpu(1)).unwrap();
    assert_eq!(q.drain(cpu(1)).collect::<String>(), "ab");
    assert_eq!(q.abort(cpu(1)).unwrap_err(), Error::AlreadyOnline);
}

#[test]
fn storage_is_placed_for_its_processor_and_the_fast_path_allocates_nothing() {
    let counting = CountingAlloc::new(HostAlloc);
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new_in(&platform, &counting, 100).unwrap();
    let (placed, blocks) = (counting.placed_allocations(), counting.live_blocks());
    let _ = q.prepare(cpu(3)).unwrap();
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
    let _ = q.prepare(cpu(3)).unwrap();
    assert_eq!(counting.live_blocks(), blocks + 2, "prepare is idempotent");
    let allocations = counting.allocations();
    pinned_on(&platform, 3, |pin| {
        for round in 0..50u64 {
            for i in 0..100 {
                q.push(pin, round * 100 + i).unwrap();
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
        let q = PerCpuQueue::new_in(&platform, &counting, 4).unwrap();
        for i in 0..3 {
            let _ = q.prepare(cpu(i)).unwrap();
        }
        pinned_on(&platform, 0, |pin| {
            for id in 0..4 {
                q.push(pin, Tracked::new(id, &live)).unwrap();
            }
            let refused = q.push(pin, Tracked::new(99, &live)).unwrap_err();
            assert_eq!(refused.item.id, 99);
        });
        pinned_on(&platform, 1, |pin| {
            q.push(pin, Tracked::new(10, &live)).unwrap();
            q.push(pin, Tracked::new(11, &live)).unwrap();
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
        assert_eq!(q.abort(cpu(2)).unwrap().count(), 0);
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
fn teardown_hands_back_every_item_retired_and_leaked_claims_included() {
    let live = Arc::new(AtomicUsize::new(0));
    let counting = CountingAlloc::new(HostAlloc);
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new_in(&platform, &counting, 4).unwrap();
    for i in [0, 2, 3] {
        let _ = q.prepare(cpu(i)).unwrap();
        pinned_on(&platform, i, |pin| {
            for n in 0..3 {
                q.push(pin, Tracked::new(u64::from(i) * 10 + n, &live))
                    .unwrap();
            }
        });
    }
    q.commit(cpu(0)).unwrap();
    // Processor 2's add is rolled back through its component: items stay.
    Component::abort(&q, cpu(2)).unwrap();
    // Processor 3's queue is under a leaked drain that took one item.
    let mut leaked = q.drain(cpu(3));
    assert_eq!(leaked.next().unwrap().id, 30);
    std::mem::forget(leaked);
    assert_eq!(live.load(Ordering::SeqCst), 8);

    let left = q.teardown();
    assert_eq!(left.len(), 8);
    let ids: Vec<(u32, u64)> = left.map(|(i, item)| (i.get(), item.id)).collect();
    assert_eq!(
        ids,
        [
            (0, 0),
            (0, 1),
            (0, 2),
            (2, 20),
            (2, 21),
            (2, 22),
            (3, 31),
            (3, 32)
        ],
        "every processor in index order, each oldest first"
    );
    assert_eq!(live.load(Ordering::SeqCst), 0, "each handed back once");
    assert_eq!(counting.live_blocks(), 0, "the queues were freed");
}

#[test]
fn leftovers_not_taken_are_dropped_once_with_them() {
    let live = Arc::new(AtomicUsize::new(0));
    let counting = CountingAlloc::new(HostAlloc);
    let platform = HostPlatform::new(2).unwrap();
    let q = PerCpuQueue::new_in(&platform, &counting, 4).unwrap();
    let _ = q.prepare(cpu(1)).unwrap();
    pinned_on(&platform, 1, |pin| {
        for id in 0..4 {
            q.push(pin, Tracked::new(id, &live)).unwrap();
        }
    });
    let mut left = q.teardown();
    assert_eq!(left.next().map(|(i, t)| (i, t.id)), Some((cpu(1), 0)));
    assert_eq!(left.size_hint(), (3, Some(3)));
    assert_eq!(live.load(Ordering::SeqCst), 3);
    drop(left);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    assert_eq!(counting.live_blocks(), 0);
    // An empty queue tears down to nothing.
    let empty = PerCpuQueue::<u8, _>::new(&platform, 2).unwrap();
    let _ = empty.prepare(cpu(0)).unwrap();
    assert!(empty.teardown().is_empty());
}

#[test]
fn dropped_pool_boxes_go_back_to_their_pool_without_a_leak() {
    let platform = HostPlatform::new(2).unwrap();
    let pool = PerCpuPool::new(
        &platform,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    )
    .unwrap();
    let q = PerCpuQueue::<PoolBox<u64>, _>::new(&platform, 8).unwrap();
    for i in 0..2 {
        let _ = pool.prepare(cpu(i)).unwrap();
        let _ = q.prepare(cpu(i)).unwrap();
    }
    pinned_on(&platform, 1, |pin| {
        for n in 0..5 {
            let request = pool.alloc(pin, n).unwrap();
            q.push(pin, request).unwrap();
        }
    });
    assert_eq!(pool.stats().outstanding, 5);
    // Teardown hands the boxes back: the driver frees them.
    let mut left = q.teardown();
    let (index, first) = left.next().unwrap();
    assert_eq!((index, *first), (cpu(1), 0));
    pinned_on(&platform, 0, |pin| pool.free(pin, first));
    assert_eq!(pool.stats().outstanding, 4);
    // The rest are dropped with the leftovers: each goes home to its pool.
    drop(left);
    let stats = pool.stats();
    assert_eq!((stats.outstanding, stats.returning), (0, 4));
    assert_eq!(pool.teardown(), 0, "nothing is still handed out");
}

#[test]
fn zero_sized_items_are_counted_without_memory_for_them() {
    let platform = HostPlatform::new(2).unwrap();
    let q = PerCpuQueue::new(&platform, 3).unwrap();
    let _ = q.prepare(cpu(0)).unwrap();
    pinned_on(&platform, 0, |pin| {
        for _ in 0..3 {
            q.push(pin, ()).unwrap();
        }
        assert_eq!(q.push(pin, ()).unwrap_err().error, Error::Exhausted);
    });
    assert_eq!(q.drain(cpu(0)).count(), 3);
    pinned_on(&platform, 0, |pin| q.push(pin, ()).unwrap());
    assert_eq!(q.teardown().count(), 1);
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

perproc::counters! {
    struct Pushed { items }
}

#[test]
fn every_failed_allocation_leaves_nothing_published_and_nothing_leaked() {
    let platform = HostPlatform::new(4).unwrap();
    for k in 0.. {
        let counting = CountingAlloc::new(HostAlloc);
        let alloc = FailingAlloc::new(&counting);
        let q = PerCpuQueue::<u32, _, _>::new_in(&platform, &alloc, 8).unwrap();
        let stats = PerCpuCounters::<Pushed, _, _>::new_in(&platform, &alloc).unwrap();
        let driver = (&q, &stats);
        alloc.plan(FailPlan::Once(k));
        let mut failed = false;
        let mut pushed = 0;
        for i in 0..3 {
            match driver.prepare(cpu(i)) {
                Ok(prepared) => {
                    assert_eq!(prepared, Prepared::New);
                    assert_eq!(q.state(cpu(i)), SlotState::Prepared);
                    pinned_on(&platform, i, |pin| {
                        q.push(pin, i).unwrap();
                        stats.add(pin, Pushed::items, 1);
                    });
                    pushed += 1;
                }
                Err(e) => {
                    failed = true;
                    assert_eq!(e, Error::OutOfMemory);
                    assert!(q.state(cpu(i)) != SlotState::Prepared, "rolled back");
                    pinned_on(&platform, i, |pin| {
                        let refused = q.push(pin, i).unwrap_err();
                        assert_eq!(refused.error, Error::NotPrepared);
                    });
                    driver.abort(cpu(i)).unwrap();
                    // The next add of that processor works and keeps nothing stale.
                    alloc.plan(FailPlan::Never);
                    let _ = driver.prepare(cpu(i)).unwrap();
                    assert_eq!(q.len(cpu(i)), 0);
                }
            }
        }
        let mut drained: Vec<_> = q.drain_all().map(|(_, v)| v).collect();
        drained.sort();
        assert_eq!(drained.len(), pushed);
        assert_eq!(stats.sums().items, pushed as u64);
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
    let q = PerCpuQueue::new(&platform, 8).unwrap();
    let _ = q.prepare(cpu(1)).unwrap();
    pinned_on(&platform, 1, |pin| q.push(pin, 42).unwrap());
    // What a component set does when a later part fails:
    Component::abort(&q, cpu(1)).unwrap();
    assert_eq!(q.drain_all().collect::<Vec<_>>(), [(cpu(1), 42)]);
}

#[test]
fn a_held_consumer_pops_items_queued_after_it_was_taken_and_excludes_others() {
    let platform = HostPlatform::new(2).unwrap();
    let q = PerCpuQueue::new(&platform, 2).unwrap();
    let _ = q.prepare(cpu(0)).unwrap();
    assert!(q.consumer(cpu(1)).is_none(), "no queue, no consumer");
    pinned_on(&platform, 0, |pin| {
        let mut mine = q.consumer(cpu(0)).unwrap();
        assert_eq!(mine.pop(), None);
        for round in 0..10 {
            q.push(pin, round).unwrap();
            q.push(pin, round + 100).unwrap();
            assert_eq!(q.push(pin, 0).unwrap_err().error, Error::Exhausted);
            assert!(q.consumer(cpu(0)).is_none(), "one consumer at a time");
            assert_eq!(q.pop(cpu(0)), None);
            assert_eq!(mine.pop(), Some(round));
            assert_eq!(mine.pop(), Some(round + 100));
            assert_eq!(mine.pop(), None);
        }
        q.push(pin, 7).unwrap();
        drop(mine);
        assert_eq!(q.pop(cpu(0)), Some(7), "released: the rest stays queued");
    });
}

// The race of issue 10: an abort of processor `i` arriving while a prepare of
// `i` is between building the ring and giving it its cells. The queue now
// allocates the cells inside the slot's build, so the only places an abort
// can come in are its allocations; this allocator runs an abort of the same
// index at each of them, deterministically.

type Hook = Box<dyn FnMut() + Send>;

thread_local! {
    /// What the hooked allocator runs before each allocation on this thread.
    static BEFORE_ALLOCATE: RefCell<Option<Hook>> = const { RefCell::new(None) };
}

/// The host allocator, running this thread's hook before each allocation.
struct HookedAlloc;

// SAFETY: forwards to `HostAlloc` unchanged; the hook runs before and touches
// no block.
unsafe impl RawAlloc for HookedAlloc {
    fn allocate(
        &self,
        layout: Layout,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        let hook = BEFORE_ALLOCATE.with(|hook| hook.borrow_mut().take());
        if let Some(mut hook) = hook {
            hook();
            BEFORE_ALLOCATE.with(|slot| *slot.borrow_mut() = Some(hook));
        }
        HostAlloc.allocate(layout, processor)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's obligations are those of `HostAlloc`, which
        // allocated the block.
        unsafe { HostAlloc.deallocate(ptr, layout) }
    }
}

#[test]
fn an_abort_during_a_prepare_of_the_same_index_cannot_retire_a_half_built_queue() {
    let platform = HostPlatform::new(2).unwrap();
    let q = Arc::new(PerCpuQueue::<u32, _, _>::new_in(&platform, HookedAlloc, 4).unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let (q, seen) = (q.clone(), seen.clone());
        let hook: Hook = Box::new(move || {
            let aborted = q.abort(cpu(1)).map(|drain| drain.count());
            seen.lock().unwrap().push((aborted, q.state(cpu(1))));
        });
        BEFORE_ALLOCATE.with(|slot| *slot.borrow_mut() = Some(hook));
    }
    let prepared = q.prepare(cpu(1));
    BEFORE_ALLOCATE.with(|slot| slot.borrow_mut().take()); // drops its `q`
    assert_eq!(prepared, Ok(Prepared::New));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (Err(Error::Busy), SlotState::Busy), // before the slot's block
            (Err(Error::Busy), SlotState::Busy), // before the cells
        ],
        "an abort in the middle of the build is refused and changes nothing"
    );
    // The prepare's result stands: published, with cells, usable.
    assert_eq!(q.state(cpu(1)), SlotState::Prepared);
    pinned_on(&platform, 1, |pin| q.push(pin, 5).unwrap());
    // An abort after the prepare returned retires the whole queue, cells and
    // items, and the next prepare revives it as it was.
    assert_eq!(q.abort(cpu(1)).unwrap().collect::<Vec<_>>(), [5]);
    pinned_on(&platform, 1, |pin| {
        assert_eq!(q.push(pin, 6).unwrap_err().error, Error::NotPrepared);
    });
    assert_eq!(q.prepare(cpu(1)), Ok(Prepared::New));
    pinned_on(&platform, 1, |pin| q.push(pin, 7).unwrap());
    assert_eq!(q.pop(cpu(1)), Some(7));
}

#[test]
fn a_prepare_whose_cells_fail_leaves_the_index_absent_and_retryable() {
    let counting = CountingAlloc::new(HostAlloc);
    let alloc = FailingAlloc::new(&counting);
    let platform = HostPlatform::new(2).unwrap();
    let q = PerCpuQueue::<u32, _, _>::new_in(&platform, &alloc, 4).unwrap();
    let blocks = counting.live_blocks();
    // Allocation 0 is the slot, 1 the cells (built inside the slot).
    alloc.plan(FailPlan::Once(1));
    assert_eq!(q.prepare(cpu(0)), Err(Error::OutOfMemory));
    assert_eq!(q.state(cpu(0)), SlotState::Absent);
    assert_eq!(counting.live_blocks(), blocks, "the slot was freed");
    alloc.plan(FailPlan::Never);
    assert_eq!(q.prepare(cpu(0)), Ok(Prepared::New));
    pinned_on(&platform, 0, |pin| q.push(pin, 1).unwrap());
    assert_eq!(q.pop(cpu(0)), Some(1));
}

#[test]
fn accessors_and_debug_output_say_what_the_queue_holds() {
    let platform = HostPlatform::new(4).unwrap();
    let q = PerCpuQueue::new(&platform, 6).unwrap();
    assert_eq!(q.capacity(), 6, "exactly what was asked for");
    assert_eq!(q.published_count(), 0);
    let _ = q.prepare(cpu(1)).unwrap();
    let _ = q.prepare(cpu(3)).unwrap();
    assert_eq!(q.published_count(), 2);
    assert_eq!(
        format!("{q:?}"),
        "PerCpuQueue { capacity: 6, processors: 4, published: 2, .. }"
    );
    pinned_on(&platform, 1, |pin| {
        for i in 0..3 {
            q.push(pin, i).unwrap();
        }
    });
    {
        let consumer = q.consumer(cpu(1)).unwrap();
        assert_eq!(format!("{consumer:?}"), "Consumer { .. }");
    }
    let mut drain = q.drain(cpu(1));
    assert_eq!(drain.next(), Some(0));
    assert_eq!(format!("{drain:?}"), "Drain { left: 2 }");
    drop(drain);
    assert_eq!(format!("{:?}", q.drain_all()), "DrainAll { .. }");

    pinned_on(&platform, 3, |pin| q.push(pin, 7).unwrap());
    let q = {
        let left = q.teardown();
        assert!(!left.is_empty());
        assert_eq!(format!("{left:?}"), "QueueLeftovers { left: 3, .. }");
        assert_eq!(
            left.collect::<Vec<_>>(),
            [(cpu(1), 1), (cpu(1), 2), (cpu(3), 7)],
            "a dropped drain leaves what it did not take"
        );
        PerCpuQueue::<u32, _>::new(&platform, 2).unwrap()
    };
    assert!(q.teardown().is_empty());
}
