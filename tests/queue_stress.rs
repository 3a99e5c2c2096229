//! Producers on every simulated processor, drainers on others, while processors
//! are hot-added, one add is aborted after its Start (its queue drained back)
//! and two are vetoed by injected allocation failures. Every item pushed must be
//! consumed exactly once, in its processor's order, and nothing may leak.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::cpu;
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Component, Error, PerCpuCounters, PerCpuQueue, Platform, SlotState};

const PRODUCERS: u32 = if cfg!(miri) { 4 } else { 6 };
const DRAINERS: u32 = 2;
const ITEMS: u64 = if cfg!(miri) { 30 } else { 50_000 };
const CAPACITY: usize = if cfg!(miri) { 4 } else { 64 };
/// The add aborted after its Start, while its producer is pushing.
const ABORTED: u32 = 1;
/// Adds vetoed at Start: the queue's own allocation fails, or the counters'
/// (after the queue was published, so the queue is rolled back).
const VETO_QUEUE: u32 = 2;
const VETO_LATER: u32 = PRODUCERS - 1;

perproc::counters! {
    struct Pushes { items }
}

fn id(producer: u32, seq: u64) -> u64 {
    (u64::from(producer) << 32) | seq
}

/// Checks that each producer's items appear in increasing order.
fn check_order(taken: &[(u32, u64)]) {
    let mut last = vec![None; PRODUCERS as usize];
    for &(index, item) in taken {
        let producer = (item >> 32) as u32;
        assert_eq!(
            index, producer,
            "item {item:#x} came from processor {index}"
        );
        let prev = &mut last[producer as usize];
        assert!(
            prev.is_none_or(|p| p < item),
            "out of order: {item:#x} after {prev:?}"
        );
        *prev = Some(item);
    }
}

#[test]
fn every_item_is_consumed_exactly_once_across_hot_adds_and_aborts() {
    let platform = HostPlatform::new(PRODUCERS + DRAINERS).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let alloc = FailingAlloc::new(&counting);
    let queues = PerCpuQueue::new_in(&platform, &alloc, CAPACITY).unwrap();
    let stats = PerCpuCounters::<Pushes, _, _>::new_in(&platform, &alloc).unwrap();
    let driver = (&queues, &stats);
    let producing = AtomicU64::new(u64::from(PRODUCERS));
    let aborted_pushes = AtomicU64::new(0);
    let stop = AtomicBool::new(false);

    let (pushed, taken, returned) = std::thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (platform, queues, stats, producing) = (&platform, &queues, &stats, &producing);
                let aborted_pushes = &aborted_pushes;
                s.spawn(move || {
                    platform.bind_current_thread(cpu(p)).unwrap();
                    let mut pushed = Vec::new();
                    let mut seq = 0;
                    while seq < ITEMS {
                        let queued = platform
                            .pinned(|pin| match queues.push(pin, id(p, seq)) {
                                Ok(()) => {
                                    stats.add(pin, Pushes::items, 1);
                                    true
                                }
                                Err(refused) => {
                                    assert!(matches!(
                                        refused.error,
                                        Error::Exhausted | Error::NotPrepared
                                    ));
                                    assert_eq!(refused.item, id(p, seq), "the item comes back");
                                    false
                                }
                            })
                            .unwrap();
                        if queued {
                            pushed.push(id(p, seq));
                            seq += 1;
                            if p == ABORTED {
                                aborted_pushes.fetch_add(1, Ordering::SeqCst);
                            }
                        } else {
                            std::thread::yield_now();
                        }
                    }
                    producing.fetch_sub(1, Ordering::SeqCst);
                    pushed
                })
            })
            .collect();
        let drainers: Vec<_> = (0..DRAINERS)
            .map(|d| {
                let (platform, queues, stop) = (&platform, &queues, &stop);
                s.spawn(move || {
                    platform.bind_current_thread(cpu(PRODUCERS + d)).unwrap();
                    let mut taken = Vec::new();
                    let mut round = 0u32;
                    while !stop.load(Ordering::SeqCst) {
                        if round % 3 == d {
                            // One processor's queue, one item at a time.
                            let p = round % PRODUCERS;
                            while let Some(item) = queues.pop(cpu(p)) {
                                taken.push((p, item));
                            }
                        } else {
                            taken.extend(queues.drain_all().map(|(i, item)| (i.get(), item)));
                        }
                        round = round.wrapping_add(1);
                        std::thread::yield_now();
                    }
                    taken
                })
            })
            .collect();

        // The kernel: processors arrive one after the other while I/O flows.
        let mut returned = Vec::new();
        for p in 0..PRODUCERS {
            match p {
                ABORTED => {
                    let _ = driver.prepare(cpu(p)).unwrap();
                    // Let its producer queue work on it, then veto the add.
                    while aborted_pushes.load(Ordering::SeqCst) < 3 {
                        std::thread::yield_now();
                    }
                    let back: Vec<_> = queues.abort(cpu(p)).unwrap().collect();
                    stats.abort(cpu(p)).unwrap();
                    returned.extend(back.into_iter().map(|item| (p, item)));
                    assert_eq!(queues.state(cpu(p)), SlotState::Retired);
                    std::thread::yield_now();
                    // A later add of the same processor revives its queue.
                    let _ = driver.prepare(cpu(p)).unwrap();
                }
                VETO_QUEUE | VETO_LATER => {
                    // The queue's slot (allocation 0; its cells are 1) or the
                    // counters' block (allocation 2, after the queue was
                    // published, so the set rolls the queue back).
                    let k = if p == VETO_QUEUE { 0 } else { 2 };
                    alloc.plan(FailPlan::Once(k));
                    assert_eq!(driver.prepare(cpu(p)), Err(Error::OutOfMemory));
                    alloc.plan(FailPlan::Never);
                    driver.abort(cpu(p)).unwrap();
                    assert_ne!(queues.state(cpu(p)), SlotState::Prepared);
                    std::thread::yield_now();
                    let _ = driver.prepare(cpu(p)).unwrap();
                }
                _ => {
                    let _ = driver.prepare(cpu(p)).unwrap();
                }
            }
            driver.commit(cpu(p)).unwrap();
            std::thread::yield_now();
        }

        let pushed: Vec<u64> = producers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(producing.load(Ordering::SeqCst), 0);
        stop.store(true, Ordering::SeqCst);
        let mut taken: Vec<Vec<(u32, u64)>> =
            drainers.into_iter().map(|h| h.join().unwrap()).collect();
        // What is left after every drainer stopped.
        taken.push(
            queues
                .drain_all()
                .map(|(i, item)| (i.get(), item))
                .collect(),
        );
        (pushed, taken, returned)
    });

    for t in &taken {
        check_order(t);
    }
    check_order(&returned);
    let mut consumed: Vec<u64> = taken
        .iter()
        .flatten()
        .chain(&returned)
        .map(|&(_, item)| item)
        .collect();
    let total = consumed.len();
    consumed.sort_unstable();
    consumed.dedup();
    assert_eq!(consumed.len(), total, "an item was consumed twice");
    let mut pushed = pushed;
    pushed.sort_unstable();
    assert_eq!(pushed.len() as u64, ITEMS * u64::from(PRODUCERS));
    assert_eq!(consumed, pushed, "every pushed item consumed, nothing else");
    assert_eq!(stats.sums().items, ITEMS * u64::from(PRODUCERS));
    assert_eq!(queues.total_len(), 0);
    assert_eq!(queues.teardown().count(), 0, "nothing left behind");
    drop(stats);
    assert_eq!(counting.live_blocks(), 0, "nothing leaked");
}
