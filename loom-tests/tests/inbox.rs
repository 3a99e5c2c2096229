//! Loom models of the per-CPU inbox (steering queue): producers on other
//! processors against the owner's consumer, a push racing an abort of its
//! target, and a push racing the hot-add of its target.
//!
//! Each model is `#[should_panic]` in the mutant build
//! (`--cfg perproc_mutant="relaxed_publish"`: the stores that publish a slot
//! and an entry's item weakened to `Relaxed`), so a model that could not catch
//! a weakened publication fails the test command's mutant pass.
//!
//! Consumers spin (with `thread::yield_now`) until they have what they wait
//! for, so loom explores the executions where they see it (see percpu.rs).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use perproc::{Error, PerCpuInbox, Platform, Prepared, ProcessorIndex};
use perproc_loom_tests::LoomPlatform;

type Inbox = PerCpuInbox<u64, LoomPlatform>;

fn cpu(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap()
}

fn inbox(platform: &LoomPlatform, capacity: usize) -> Arc<Inbox> {
    Arc::new(PerCpuInbox::new(platform, capacity).unwrap())
}

/// Pushes `item` to `target` from processor `from`, retrying while the target
/// has no inbox yet; returns how many attempts were refused.
fn push_until_taken(platform: &LoomPlatform, from: u32, inbox: &Inbox, target: u32, item: u64) {
    platform.on(from, |_| ());
    loop {
        let pushed = platform
            .pinned(|pin| inbox.push_to(pin, cpu(target), item))
            .unwrap();
        match pushed {
            Ok(ticket) => {
                assert_eq!(ticket.processor(), cpu(target));
                return;
            }
            Err(refused) => {
                assert_eq!(refused.error, Error::NotPrepared);
                thread::yield_now();
            }
        }
    }
}

/// Consumes on processor `owner` until `count` items arrived; returns them.
fn consume(platform: &LoomPlatform, owner: u32, inbox: &Inbox, count: usize) -> Vec<u64> {
    platform.on(owner, |_| ());
    let mut got = Vec::new();
    while got.len() < count {
        let batch: Vec<u64> = platform
            .pinned(|pin| inbox.consumer(pin).map(|c| c.collect()).unwrap_or_default())
            .unwrap();
        if batch.is_empty() {
            thread::yield_now();
        }
        got.extend(batch);
    }
    got
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn producers_on_two_processors_race_the_owners_consumer() {
    loom::model(|| {
        let platform = LoomPlatform::new(3).unwrap();
        let inbox = inbox(&platform, 2);
        assert_eq!(inbox.prepare(cpu(2)).unwrap(), Prepared::New);
        let producers: Vec<_> = [(0, 10), (1, 20)]
            .into_iter()
            .map(|(from, item)| {
                let (platform, inbox) = (platform.clone(), inbox.clone());
                thread::spawn(move || push_until_taken(&platform, from, &inbox, 2, item))
            })
            .collect();
        let mut got = consume(&platform, 2, &inbox, 2);
        for producer in producers {
            producer.join().unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, [10, 20]);
    });
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn a_push_racing_the_abort_of_its_target_is_never_lost() {
    loom::model(|| {
        let platform = LoomPlatform::new(2).unwrap();
        let inbox = inbox(&platform, 2);
        assert_eq!(inbox.prepare(cpu(1)).unwrap(), Prepared::New);
        let producer = {
            let (platform, inbox) = (platform.clone(), inbox.clone());
            thread::spawn(move || {
                platform.on(0, |_| ());
                platform
                    .pinned(|pin| inbox.push_to(pin, cpu(1), 7).is_ok())
                    .unwrap()
            })
        };
        // AddFailure for processor 1, on this thread, while the push runs; the
        // abort's drain takes what it finds, leftovers what landed after.
        let mut got: Vec<u64> = inbox.abort(cpu(1)).unwrap().collect();
        let pushed = producer.join().unwrap();
        got.extend(inbox.leftovers().map(|(index, item)| {
            assert_eq!(index, cpu(1));
            item
        }));
        if pushed {
            assert_eq!(got, [7]);
        } else {
            assert!(got.is_empty());
        }
    });
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn a_push_racing_the_hot_add_of_its_target_lands_in_the_new_inbox() {
    loom::model(|| {
        let platform = LoomPlatform::new(2).unwrap();
        let inbox = inbox(&platform, 2);
        let adder = {
            let inbox = inbox.clone();
            thread::spawn(move || {
                // AddStart for processor 1 from the callback's thread.
                assert_eq!(inbox.prepare(cpu(1)).unwrap(), Prepared::New);
            })
        };
        let producer = {
            let (platform, inbox) = (platform.clone(), inbox.clone());
            thread::spawn(move || push_until_taken(&platform, 0, &inbox, 1, 5))
        };
        adder.join().unwrap();
        // The new processor's DPC: bound to processor 1 once it exists.
        let got = consume(&platform, 1, &inbox, 1);
        producer.join().unwrap();
        assert_eq!(got, [5]);
    });
}

/// A flow's state, written by whichever processor processes the flow's
/// packets; loom reports two accesses that are not ordered by happens-before.
struct Flow(loom::cell::UnsafeCell<u64>);

// SAFETY: the cell is only reached through `with_mut`, whose accesses loom
// tracks: a model in which two threads touch it unordered fails (that is what
// the hand-over model checks), so sharing it never hides a race.
unsafe impl Sync for Flow {}

impl Flow {
    /// Processes packet `seq` of the flow: it must be the next one.
    fn process(&self, seq: u64) {
        // SAFETY: loom checks that this access is ordered after every earlier
        // one (the model fails otherwise); the pointer is the cell's own.
        self.0.with_mut(|last| unsafe {
            assert_eq!(*last + 1, seq, "packet {seq} processed out of order");
            *last = seq;
        });
    }
}

/// Consumes the one packet queued on processor `owner` (pushed before this
/// DPC started), processing it inside the batch.
fn process_one(platform: &LoomPlatform, owner: u32, inbox: &Inbox, flow: &Flow) {
    let done = platform.on(owner, |pin| {
        let mut consumer = inbox.consumer(pin)?;
        let seq = consumer.pop()?;
        flow.process(seq);
        Some(())
        // The consumer drops here: the batch ends, delivery published.
    });
    assert!(done.is_some(), "the packet pushed before the DPC started");
}

/// The steering hand-over: a flow moves from processor 1 to processor 2 once
/// `is_delivered` says processor 1 finished with its last packet; processor
/// 2's processing of the next packet is then ordered after processor 1's.
/// (Processor 2's DPC starts after the push, so only the delivered watermark
/// orders the two: the publication of the item itself is the other models'.)
#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn a_flow_moved_after_its_last_ticket_is_delivered_stays_in_order() {
    loom::model(|| {
        let platform = LoomPlatform::new(3).unwrap();
        let inbox = inbox(&platform, 2);
        for i in [1, 2] {
            assert_eq!(inbox.prepare(cpu(i)).unwrap(), Prepared::New);
        }
        let flow = Arc::new(Flow(loom::cell::UnsafeCell::new(0)));
        let dpc = |owner: u32| {
            let (platform, inbox, flow) = (platform.clone(), inbox.clone(), flow.clone());
            thread::spawn(move || process_one(&platform, owner, &inbox, &flow))
        };
        // The receive DPC on processor 0 steers packet 1 to processor 1 ...
        platform.on(0, |_| ());
        let ticket = platform
            .pinned(|pin| inbox.push_to(pin, cpu(1), 1))
            .unwrap()
            .unwrap();
        let first = dpc(1);
        // ... and packet 2 to processor 2 once processor 1 delivered packet 1.
        while !inbox.is_delivered(ticket) {
            thread::yield_now();
        }
        platform
            .pinned(|pin| inbox.push_to(pin, cpu(2), 2))
            .unwrap()
            .unwrap();
        let second = dpc(2);
        first.join().unwrap();
        second.join().unwrap();
    });
}

/// `drain_all` on another thread claims the owner's ring right after (or
/// before) the owner's consumer: the claim hands over the consumer's position,
/// so every item is taken exactly once. No spinning: each side claims once.
#[test]
fn drain_all_on_another_thread_races_the_owners_consumer() {
    loom::model(|| {
        let platform = LoomPlatform::new(2).unwrap();
        let inbox = inbox(&platform, 2);
        assert_eq!(inbox.prepare(cpu(0)).unwrap(), Prepared::New);
        push_until_taken(&platform, 1, &inbox, 0, 10);
        push_until_taken(&platform, 1, &inbox, 0, 20);
        let owner = {
            let (platform, inbox) = (platform.clone(), inbox.clone());
            thread::spawn(move || {
                platform.on(0, |_| ());
                platform
                    .pinned(|pin| inbox.consumer(pin).map(|c| c.take(1).collect::<Vec<_>>()))
                    .unwrap()
                    .unwrap_or_default()
            })
        };
        let mut got: Vec<u64> = inbox.drain_all().map(|(_, item)| item).collect();
        got.extend(owner.join().unwrap());
        got.extend(inbox.drain_all().map(|(_, item)| item));
        got.sort_unstable();
        assert_eq!(got, [10, 20]);
    });
}
