//! Per-CPU inboxes (steering queues): every documented behaviour, on the host
//! platform.

mod common;

use common::{cpu, on, Tracked};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Component, Error, PerCpuInbox, Platform, Prepared, SlotState};

#[test]
fn any_processor_steers_to_a_chosen_one_which_consumes_in_order() {
    let platform = HostPlatform::new(4).unwrap();
    let inbox = PerCpuInbox::new(&platform, 16).unwrap();
    assert_eq!(inbox.prepare(cpu(3)), Ok(Prepared::New));
    for from in 0..3 {
        on(&platform, from, || {
            platform
                .pinned(|pin| {
                    for i in 0..3 {
                        inbox.push_to(pin, cpu(3), (from, i)).unwrap();
                    }
                })
                .unwrap()
        });
    }
    assert_eq!(inbox.len(cpu(3)), 9);
    let got: Vec<_> = on(&platform, 3, || {
        platform
            .pinned(|pin| inbox.consumer(pin).unwrap().collect())
            .unwrap()
    });
    let want: Vec<_> = (0..3).flat_map(|f| (0..3).map(move |i| (f, i))).collect();
    assert_eq!(got, want);
    assert!(inbox.is_empty(cpu(3)));
}

#[test]
fn a_processor_without_an_inbox_hands_the_item_back_with_the_reason() {
    let platform = HostPlatform::new(4).unwrap();
    let inbox = PerCpuInbox::new(&platform, 4).unwrap();
    platform
        .pinned(|pin| {
            let back = inbox.push_to(pin, cpu(1), "not added").unwrap_err();
            assert_eq!((back.item, back.error), ("not added", Error::NotPrepared));
            let back = inbox.push_to(pin, cpu(9), "too far").unwrap_err();
            assert!(matches!(back.error, Error::IndexOutOfRange { .. }));
            assert_eq!(back.item, "too far");
        })
        .unwrap();
    // The owner of a processor with no inbox has nothing to consume.
    on(&platform, 1, || {
        platform
            .pinned(|pin| assert!(inbox.consumer(pin).is_none()))
            .unwrap()
    });
}

#[test]
fn a_full_inbox_hands_the_item_back() {
    let platform = HostPlatform::new(2).unwrap();
    let inbox = PerCpuInbox::new(&platform, 3).unwrap(); // rounded up to 4
    assert_eq!(inbox.capacity(), 4);
    let _ = inbox.prepare(cpu(1)).unwrap();
    platform
        .pinned(|pin| {
            for i in 0..4 {
                inbox.push_to(pin, cpu(1), i).unwrap();
            }
            let back = inbox.push_to(pin, cpu(1), 4).unwrap_err();
            assert_eq!((back.item, back.error), (4, Error::Exhausted));
        })
        .unwrap();
    // Room again after a pop, and the order holds across the wrap.
    on(&platform, 1, || {
        platform
            .pinned(|pin| {
                assert_eq!(inbox.pop(pin), Some(0));
                inbox.push_to(pin, cpu(1), 4).unwrap();
                let rest: Vec<_> = inbox.consumer(pin).unwrap().collect();
                assert_eq!(rest, [1, 2, 3, 4]);
            })
            .unwrap()
    });
}

/// One entry cannot tell "holds the item of position p" from "free for
/// position p + 1" by its sequence number: a capacity of 1 gets 2 entries, and
/// a full inbox still refuses instead of overwriting.
#[test]
fn a_capacity_of_one_gets_two_entries_and_never_overwrites() {
    let platform = HostPlatform::new(2).unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let inbox = PerCpuInbox::new(&platform, 1).unwrap();
    assert_eq!(inbox.capacity(), 2);
    let _ = inbox.prepare(cpu(1)).unwrap();
    platform
        .pinned(|pin| {
            for id in 0..2 {
                inbox.push_to(pin, cpu(1), Tracked::new(id, &live)).unwrap();
            }
            let back = inbox
                .push_to(pin, cpu(1), Tracked::new(2, &live))
                .unwrap_err();
            assert_eq!((back.item.id, back.error), (2, Error::Exhausted));
        })
        .unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 2);
    let got: Vec<u64> = on(&platform, 1, || {
        platform
            .pinned(|pin| inbox.consumer(pin).unwrap().map(|t| t.id).collect())
            .unwrap()
    });
    assert_eq!(got, [0, 1]);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn one_consumer_at_a_time_and_delivery_is_published_when_the_batch_ends() {
    let platform = HostPlatform::new(2).unwrap();
    let inbox = PerCpuInbox::new(&platform, 8).unwrap();
    let _ = inbox.prepare(cpu(1)).unwrap();
    let tickets: Vec<_> = platform
        .pinned(|pin| {
            (0..3)
                .map(|i| inbox.push_to(pin, cpu(1), i).unwrap())
                .collect()
        })
        .unwrap();
    assert!(tickets.iter().all(|t| t.processor() == cpu(1)));
    assert!(!inbox.is_delivered(tickets[0]));
    on(&platform, 1, || {
        platform
            .pinned(|pin| {
                let mut consumer = inbox.consumer(pin).unwrap();
                // A second consumer of the same inbox (an abort's drain, another
                // DPC) gets nothing while the first holds it.
                assert!(inbox.consumer(pin).is_none());
                assert_eq!(consumer.pop(), Some(0));
                assert_eq!(consumer.pop(), Some(1));
                // Popped but the batch is not over: not delivered yet.
                assert!(!inbox.is_delivered(tickets[0]));
                drop(consumer);
                assert!(inbox.is_delivered(tickets[0]));
                assert!(inbox.is_delivered(tickets[1]));
                assert!(!inbox.is_delivered(tickets[2]));
                assert_eq!(inbox.pop(pin), Some(2));
                assert!(inbox.is_delivered(tickets[2]));
            })
            .unwrap()
    });
}

#[test]
fn abort_drains_and_later_pushes_are_refused_and_leftovers_are_never_lost() {
    let platform = HostPlatform::new(4).unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let inbox = PerCpuInbox::new(&platform, 8).unwrap();
    let _ = inbox.prepare(cpu(2)).unwrap();
    platform
        .pinned(|pin| {
            inbox.push_to(pin, cpu(2), Tracked::new(1, &live)).unwrap();
        })
        .unwrap();
    // The abort's drain hands back what was queued.
    let drained: Vec<u64> = inbox.abort(cpu(2)).unwrap().map(|t| t.id).collect();
    assert_eq!(drained, [1]);
    assert_eq!(inbox.state(cpu(2)), SlotState::Retired);
    platform
        .pinned(|pin| {
            let back = inbox
                .push_to(pin, cpu(2), Tracked::new(2, &live))
                .unwrap_err();
            assert_eq!(back.error, Error::NotPrepared);
        })
        .unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 0);

    // A push that raced the abort: queued while the abort's drain was held by
    // another consumer, so the drain saw nothing of it.
    let _ = inbox.prepare(cpu(2)).unwrap(); // revived as it was
    platform
        .pinned(|pin| {
            inbox.push_to(pin, cpu(2), Tracked::new(3, &live)).unwrap();
        })
        .unwrap();
    on(&platform, 2, || {
        platform
            .pinned(|pin| {
                let consumer = inbox.consumer(pin).unwrap();
                assert_eq!(inbox.abort(cpu(2)).unwrap().count(), 0);
                drop(consumer);
            })
            .unwrap()
    });
    assert_eq!(live.load(Ordering::SeqCst), 1);
    let left: Vec<_> = inbox.leftovers().map(|(i, t)| (i, t.id)).collect();
    assert_eq!(left, [(cpu(2), 3)]);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn leftovers_skip_published_inboxes_and_drain_all_takes_everything() {
    let platform = HostPlatform::new(4).unwrap();
    let inbox = PerCpuInbox::new(&platform, 8).unwrap();
    for i in 0..3 {
        let _ = inbox.prepare(cpu(i)).unwrap();
        inbox.commit(cpu(i)).unwrap();
    }
    platform
        .pinned(|pin| {
            for i in 0..3 {
                inbox.push_to(pin, cpu(i), i).unwrap();
            }
        })
        .unwrap();
    assert_eq!(inbox.leftovers().count(), 0);
    let mut all: Vec<_> = inbox.drain_all().map(|(i, item)| (i.get(), item)).collect();
    all.sort_unstable();
    assert_eq!(all, [(0, 0), (1, 1), (2, 2)]);
}

#[test]
fn a_re_added_processor_gets_its_inbox_back_with_its_items() {
    let platform = HostPlatform::new(2).unwrap();
    let inbox = PerCpuInbox::new(&platform, 4).unwrap();
    let set = (&inbox,);
    let _ = set.prepare(cpu(1)).unwrap();
    on(&platform, 1, || {
        platform
            .pinned(|pin| inbox.push_to(pin, cpu(1), 7).unwrap())
            .unwrap()
    });
    // AddFailure through the component: the items stay queued.
    set.abort(cpu(1)).unwrap();
    assert_eq!(inbox.len(cpu(1)), 1);
    assert_eq!(set.prepare(cpu(1)), Ok(Prepared::New));
    set.commit(cpu(1)).unwrap();
    on(&platform, 1, || {
        platform
            .pinned(|pin| assert_eq!(inbox.pop(pin), Some(7)))
            .unwrap()
    });
}

#[test]
fn dropping_the_container_drops_what_is_queued() {
    let platform = HostPlatform::new(4).unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let counting = CountingAlloc::new(HostAlloc);
    {
        let inbox = PerCpuInbox::new_in(&platform, &counting, 8).unwrap();
        for i in 0..4 {
            let _ = inbox.prepare(cpu(i)).unwrap();
        }
        let _ = inbox.abort(cpu(3)).unwrap();
        platform
            .pinned(|pin| {
                for i in 0..3 {
                    inbox
                        .push_to(pin, cpu(i), Tracked::new(u64::from(i), &live))
                        .unwrap();
                }
            })
            .unwrap();
        assert_eq!(live.load(Ordering::SeqCst), 3);
    }
    assert_eq!(live.load(Ordering::SeqCst), 0);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn every_allocation_of_a_prepare_can_fail_without_a_leak() {
    let platform = HostPlatform::new(4).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let failing = FailingAlloc::new(&counting);
    let inbox = PerCpuInbox::<u64, _, _>::new_in(&platform, &failing, 8).unwrap();
    let base = counting.live_blocks();
    let mut k = 0;
    loop {
        failing.plan(FailPlan::Once(k));
        match inbox.prepare(cpu(1)) {
            Err(error) => {
                assert_eq!(error, Error::OutOfMemory);
                assert_eq!(inbox.state(cpu(1)), SlotState::Absent);
                assert_eq!(
                    counting.live_blocks(),
                    base,
                    "leak after failing attempt {k}"
                );
            }
            Ok(prepared) => {
                assert_eq!(prepared, Prepared::New);
                break;
            }
        }
        k += 1;
    }
    assert!(k >= 2, "a prepare allocates a slot and its entries");
    assert_eq!(inbox.state(cpu(1)), SlotState::Prepared);
}

/// Producers on several processors steer numbered items to two consumers
/// while one target is hot-added late; every item arrives exactly once and in
/// each producer's order.
#[test]
fn producers_on_many_processors_against_owners_consuming_across_a_hot_add() {
    // Miri interprets every access: a smaller run still crosses the wrap and
    // the hot-add many times.
    const PER_PRODUCER: u64 = if cfg!(miri) { 60 } else { 20_000 };
    let platform = HostPlatform::new(6).unwrap();
    let inbox = PerCpuInbox::<(u32, u64), _>::new(&platform, 64).unwrap();
    let _ = inbox.prepare(cpu(4)).unwrap();
    let producers_done = AtomicUsize::new(0);
    let added = AtomicBool::new(false);
    let results = std::thread::scope(|s| {
        for producer in 0..3u32 {
            let (platform, inbox, done) = (&platform, &inbox, &producers_done);
            s.spawn(move || {
                platform.bind_current_thread(cpu(producer)).unwrap();
                for seq in 0..PER_PRODUCER {
                    let target = cpu(4 + u32::from(seq % 2 == 1));
                    let mut item = (producer, seq);
                    loop {
                        match platform
                            .pinned(|pin| inbox.push_to(pin, target, item))
                            .unwrap()
                        {
                            Ok(_) => break,
                            // Full, or processor 5 not added yet: try again.
                            Err(back) => {
                                item = back.item;
                                std::thread::yield_now();
                            }
                        }
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        let adder = {
            let (inbox, added) = (&inbox, &added);
            s.spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(5));
                let _ = inbox.prepare(cpu(5)).unwrap();
                inbox.commit(cpu(5)).unwrap();
                added.store(true, Ordering::SeqCst);
            })
        };
        let consumers: Vec<_> = [4u32, 5]
            .into_iter()
            .map(|owner| {
                let (platform, inbox, done) = (&platform, &inbox, &producers_done);
                s.spawn(move || {
                    platform.bind_current_thread(cpu(owner)).unwrap();
                    let mut got = Vec::new();
                    loop {
                        let finished = done.load(Ordering::SeqCst) == 3;
                        let batch: Vec<_> = platform
                            .pinned(|pin| {
                                inbox.consumer(pin).map(|c| c.collect()).unwrap_or_default()
                            })
                            .unwrap();
                        if batch.is_empty() {
                            if finished {
                                return got;
                            }
                            std::thread::yield_now();
                        }
                        got.extend(batch);
                    }
                })
            })
            .collect();
        adder.join().unwrap();
        consumers
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(added.load(Ordering::SeqCst));
    let mut seen = HashMap::new();
    for (owner, got) in [4u64, 5].into_iter().zip(&results) {
        let mut last: HashMap<u32, u64> = HashMap::new();
        for &(producer, seq) in got {
            assert_eq!(seq % 2, owner - 4, "item steered to the wrong processor");
            if let Some(prev) = last.insert(producer, seq) {
                assert!(seq > prev, "producer {producer}: {seq} after {prev}");
            }
            assert!(seen.insert((producer, seq), ()).is_none(), "duplicate");
        }
    }
    assert_eq!(seen.len(), 3 * usize::try_from(PER_PRODUCER).unwrap());
}
