//! Loom models of the per-CPU queues and counters: a local producer racing
//! consumers, a hot-add of another processor and an abort; counter adds racing
//! sums across an aborted add.
//!
//! Every model is `#[should_panic]` in the mutant build
//! (`--cfg perproc_mutant="relaxed_publish"`): there the producer's release
//! store of `tail` (and the publication of slots) is weakened to `Relaxed`, and
//! loom must then find a consumer reading a cell the producer's write does not
//! happen before (or a sum reading a block not yet published).
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use perproc::{Counter, Error, PerCpuCounters, PerCpuQueue, Prepared, ProcessorIndex};
use perproc_loom_tests::LoomPlatform;

fn cpu(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap()
}

type Queue = PerCpuQueue<u32, LoomPlatform>;

fn queue(processors: u32, capacity: usize) -> Arc<Queue> {
    let platform = LoomPlatform::new(processors).unwrap();
    Arc::new(PerCpuQueue::new(&platform, capacity).unwrap())
}

/// Prepares processor `i`, which must be new to the queue.
fn prepare(q: &Queue, i: u32) {
    assert_eq!(q.prepare(cpu(i)).unwrap(), Prepared::New);
}

/// Pushes `items` on processor `p`, returning the ones that were queued.
/// Binds the calling model thread to processor `p` and pushes there, pinned.
fn produce(q: &Queue, p: u32, items: &[u32]) -> Vec<u32> {
    q.platform().on(p, |pin| {
        let mut queued = Vec::new();
        for &item in items {
            match q.push(pin, item) {
                Ok(()) => queued.push(item),
                Err(refused) => {
                    assert!(matches!(
                        refused.error,
                        Error::Exhausted | Error::NotPrepared
                    ));
                    assert_eq!(refused.item, item);
                }
            }
        }
        queued
    })
}

/// Every item queued is taken exactly once; each consumer saw each queue's
/// items in order (items of processor `p` are `10 * p ..`).
fn check(mut queued: Vec<u32>, takers: &[Vec<u32>]) {
    for taken in takers {
        for p in 0..2 {
            let mine: Vec<u32> = taken.iter().copied().filter(|v| v / 10 == p).collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "out of order: {taken:?}"
            );
        }
    }
    let mut taken: Vec<u32> = takers.iter().flatten().copied().collect();
    taken.sort_unstable();
    queued.sort_unstable();
    assert_eq!(taken, queued);
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn produce_races_drain() {
    loom::model(|| {
        let q = queue(1, 2);
        prepare(&q, 0);
        let producer = {
            let q = q.clone();
            thread::spawn(move || produce(&q, 0, &[1, 2, 3]))
        };
        // A remote consumer draining while the owner produces (and maybe finds
        // its queue full: the third item may come back).
        let mut remote = Vec::new();
        for _ in 0..2 {
            remote.extend(q.pop(cpu(0)));
        }
        let queued = producer.join().unwrap();
        assert!(queued.len() >= 2);
        let rest: Vec<u32> = q.drain(cpu(0)).collect();
        check(queued, &[remote, rest]);
    });
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn two_consumers_race_a_producer() {
    loom::model(|| {
        let q = queue(1, 2);
        prepare(&q, 0);
        let producer = {
            let q = q.clone();
            thread::spawn(move || produce(&q, 0, &[1, 2]))
        };
        let other = {
            let q = q.clone();
            thread::spawn(move || q.drain_all().map(|(_, v)| v).collect::<Vec<_>>())
        };
        let mine: Vec<u32> = q.pop(cpu(0)).into_iter().collect();
        let queued = producer.join().unwrap();
        let theirs = other.join().unwrap();
        let rest: Vec<u32> = q.drain(cpu(0)).collect();
        assert_eq!(queued, [1, 2]);
        check(queued, &[mine, theirs, rest]);
    });
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn produce_races_a_hot_add_of_another_processor() {
    loom::model(|| {
        let q = queue(2, 2);
        prepare(&q, 0);
        let producer = {
            let q = q.clone();
            thread::spawn(move || produce(&q, 0, &[1, 2]))
        };
        // AddStart for processor 1, then code already running on it queues work
        // (before AddComplete).
        let hot_add = {
            let q = q.clone();
            thread::spawn(move || {
                prepare(&q, 1);
                let queued = produce(&q, 1, &[10]);
                assert_eq!(queued, [10], "the queue exists from Start");
                q.commit(cpu(1)).unwrap();
                queued
            })
        };
        let seen: Vec<(u32, u32)> = q.drain_all().map(|(i, v)| (i.get(), v)).collect();
        let mut queued = producer.join().unwrap();
        queued.extend(hot_add.join().unwrap());
        let rest: Vec<(u32, u32)> = q.drain_all().map(|(i, v)| (i.get(), v)).collect();
        for &(i, v) in seen.iter().chain(&rest) {
            assert_eq!(i, v / 10, "item {v} came off processor {i}'s queue");
        }
        let values = |taken: &[(u32, u32)]| taken.iter().map(|&(_, v)| v).collect::<Vec<_>>();
        check(queued, &[values(&seen), values(&rest)]);
    });
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn abort_races_the_producer_and_nothing_is_lost() {
    loom::model(|| {
        let q = queue(2, 2);
        prepare(&q, 1);
        let producer = {
            let q = q.clone();
            thread::spawn(move || produce(&q, 1, &[1, 2]))
        };
        // AddFailure while code on the processor is still pushing: the abort
        // drains back what it finds; a push that lands after is still queued.
        let returned: Vec<u32> = q.abort(cpu(1)).unwrap().collect();
        let queued = producer.join().unwrap();
        let stragglers: Vec<u32> = q.drain_all().map(|(_, v)| v).collect();
        check(queued, &[returned, stragglers]);
    });
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn a_held_consumer_races_the_producer() {
    loom::model(|| {
        let q = queue(1, 2);
        prepare(&q, 0);
        let producer = {
            let q = q.clone();
            thread::spawn(move || produce(&q, 0, &[1, 2, 3]))
        };
        let mut held = Vec::new();
        {
            let mut consumer = q.consumer(cpu(0)).unwrap();
            for _ in 0..3 {
                held.extend(consumer.pop());
            }
        }
        let queued = producer.join().unwrap();
        let rest: Vec<u32> = q.drain(cpu(0)).collect();
        check(queued, &[held, rest]);
    });
}

/// Issue 10's race: an abort of a processor arriving while its prepare is
/// building the queue. The ring is built with its cells inside the slot's
/// construction, so the abort either finds the processor busy (and changes
/// nothing) or retires a complete queue; a push after the prepare lands in a
/// queue with cells or is refused, and nothing is lost either way.
#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn abort_races_the_prepare_of_the_same_processor() {
    loom::model(|| {
        let q = queue(1, 2);
        let aborter = {
            let q = q.clone();
            thread::spawn(move || {
                q.abort(cpu(0))
                    .map(|drain| drain.collect::<Vec<_>>())
                    .map_err(|error| {
                        assert_eq!(error, Error::Busy, "only a prepare in flight");
                    })
            })
        };
        let prepared = q.prepare(cpu(0));
        assert!(matches!(prepared, Ok(Prepared::New) | Err(Error::Busy)));
        let queued = produce(&q, 0, &[1]);
        let returned = aborter.join().unwrap().unwrap_or_default();
        let rest: Vec<u32> = q.drain_all().map(|(_, v)| v).collect();
        check(queued, &[returned, rest]);
    });
}

const N: Counter<[u64; 1]> = Counter::at::<0>();

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn counter_adds_race_sums_and_an_aborted_add() {
    loom::model(|| {
        let platform = LoomPlatform::new(2).unwrap();
        let stats = Arc::new(PerCpuCounters::<[u64; 1], _>::new(&platform).unwrap());
        assert_eq!(stats.prepare(cpu(0)).unwrap(), Prepared::New);
        let local = {
            let stats = stats.clone();
            thread::spawn(move || {
                stats.platform().on(0, |pin| {
                    stats.add(pin, N, 1);
                    stats.add(pin, N, 2);
                })
            })
        };
        // Processor 1 arrives, counts, and its add is vetoed; then it counts
        // again without a block.
        let hot_add = {
            let stats = stats.clone();
            thread::spawn(move || {
                assert_eq!(stats.prepare(cpu(1)).unwrap(), Prepared::New);
                stats.platform().on(1, |pin| stats.add(pin, N, 10));
                stats.abort(cpu(1)).unwrap();
                stats.platform().on(1, |pin| stats.add(pin, N, 100));
            })
        };
        let first = stats.sum(N);
        let second = stats.sum(N);
        assert!(second >= first, "a sum went down: {first} then {second}");
        // `sums` (every counter in one pass) keeps the same promises.
        let [third] = stats.sums();
        assert!(third >= second, "a sum went down: {second} then {third}");
        // Never torn: each processor's count is one it had (processor 0's are
        // not ordered with processor 1's). And a sum that sees what processor 1
        // counted after its abort sees what it counted before.
        for sum in [first, second, third] {
            let possible = [0, 1, 3].iter().any(|p0| {
                sum.checked_sub(*p0)
                    .is_some_and(|p1| [0, 10, 110].contains(&p1))
            });
            assert!(possible, "torn or impossible sum {sum}");
        }
        local.join().unwrap();
        hot_add.join().unwrap();
        assert!(stats.sum(N) >= second);
        assert_eq!(stats.sum(N), 113);
        assert_eq!(stats.processor(cpu(1)), Some([10]));
        assert_eq!(stats.unplaced(), [100]);
    });
}
