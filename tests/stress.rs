//! Readers and iterators on every simulated processor while writers hot-add up
//! to 2048 processors (some adds vetoed by an injected allocation failure).
//! Every value a reader sees must be fully built: a function of its index.

mod common;

use common::{cpu, Built};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Component, InitFn, PerCpu, Platform, Prepared, SlotState};

const PROCESSORS: u32 = if cfg!(miri) { 24 } else { 2048 };
const READERS: u32 = if cfg!(miri) { 2 } else { 4 };
const ITERATORS: u32 = 2;
const WRITERS: u32 = 2;
/// Every VETO-th add is vetoed by failing one allocation.
const VETO: u32 = if cfg!(miri) { 7 } else { 97 };

#[test]
fn readers_see_only_fully_built_slots_while_processors_arrive() {
    let platform = HostPlatform::with_groups(PROCESSORS, 64).unwrap();
    let alloc = FailingAlloc::new(CountingAlloc::new(HostAlloc));
    let init: InitFn<Built> = |i| Ok(Built::new(i));
    let make = || PerCpu::new_in(&platform, &alloc, init);
    let (queues, stats) = (make().unwrap(), make().unwrap());
    let driver = (&queues, &stats);
    let done = AtomicBool::new(false);
    let vetoed: Vec<AtomicBool> = (0..PROCESSORS).map(|_| AtomicBool::new(false)).collect();
    let reads = AtomicUsize::new(0);

    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (driver, alloc, vetoed) = (&driver, &alloc, &vetoed);
            s.spawn(move || {
                for i in (w..PROCESSORS).step_by(WRITERS as usize) {
                    let veto = i % VETO == VETO - 1;
                    if veto {
                        // Fails the next allocation, whichever writer makes it;
                        // that writer's add is the one vetoed.
                        alloc.plan(FailPlan::Once(0));
                    }
                    match driver.prepare(cpu(i)) {
                        Ok(prepared) => {
                            assert_eq!(prepared, Prepared::New);
                            driver.commit(cpu(i)).unwrap();
                        }
                        Err(e) => {
                            assert_eq!(e, perproc::Error::OutOfMemory);
                            vetoed[i as usize].store(true, Ordering::SeqCst);
                            driver.abort(cpu(i)).unwrap();
                        }
                    }
                    std::thread::yield_now();
                }
            });
        }
        for r in 0..READERS {
            let (platform, queues, stats, done, reads) =
                (&platform, &queues, &stats, &done, &reads);
            s.spawn(move || {
                // Wander over every processor: bind, pin, read the local slot,
                // and read a few remote ones.
                let mut i = r;
                while !done.load(Ordering::SeqCst) {
                    platform.bind_current_thread(cpu(i)).unwrap();
                    platform
                        .pinned(|pin| {
                            for table in [queues, stats] {
                                if let Some(v) = table.current(pin) {
                                    v.check(cpu(i));
                                    reads.fetch_add(1, Ordering::Relaxed);
                                }
                                let remote = cpu((i * 7 + 3) % PROCESSORS);
                                if let Some(v) = table.get(remote) {
                                    v.check(remote);
                                }
                            }
                        })
                        .unwrap();
                    i = (i + READERS) % PROCESSORS;
                }
            });
        }
        for _ in 0..ITERATORS {
            let (queues, stats, done) = (&queues, &stats, &done);
            s.spawn(move || {
                let mut seen = vec![false; PROCESSORS as usize];
                while !done.load(Ordering::SeqCst) {
                    for table in [queues, stats] {
                        seen.iter_mut().for_each(|s| *s = false);
                        let mut n = 0;
                        for (i, v) in table.iter() {
                            v.check(i);
                            assert!(
                                !std::mem::replace(&mut seen[i.as_usize()], true),
                                "{i} twice"
                            );
                            n += 1;
                        }
                        // Only slots that exist are visited, each once.
                        assert!(n <= table.iter_all().count());
                    }
                }
            });
        }
        // Stop readers once the writers are done.
        s.spawn(|| {
            while queues.online_count() + vetoed.iter().filter(|v| v.load(Ordering::SeqCst)).count()
                < PROCESSORS as usize
            {
                std::thread::yield_now();
            }
            done.store(true, Ordering::SeqCst);
        });
    });

    let vetoes = vetoed.iter().filter(|v| v.load(Ordering::SeqCst)).count();
    assert!(
        vetoes > 0,
        "no add was vetoed: the test did not test rollback"
    );
    for i in 0..PROCESSORS {
        for table in [&queues, &stats] {
            if vetoed[i as usize].load(Ordering::SeqCst) {
                assert!(table.get(cpu(i)).is_none());
                assert!(matches!(
                    table.state(cpu(i)),
                    SlotState::Absent | SlotState::Retired
                ));
            } else {
                table.get(cpu(i)).unwrap().check(cpu(i));
                assert_eq!(table.state(cpu(i)), SlotState::Online);
            }
        }
    }
    assert_eq!(queues.online_count(), PROCESSORS as usize - vetoes);
    assert!(reads.load(Ordering::Relaxed) > 0);
    drop((queues, stats));
    assert_eq!(alloc.inner().live_blocks(), 0);
}
