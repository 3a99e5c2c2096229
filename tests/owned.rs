//! Owned `PoolBox`: it moves between threads and processors, goes back to its
//! own pool whoever frees it, and may be dropped anywhere (unpinned, after the
//! pool's teardown) without undefined behaviour. Also run under miri.

mod common;

use common::{cpu, on, Arena};

use std::sync::atomic::{AtomicUsize, Ordering};

use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::CountingAlloc;
use perproc::{Limits, PerCpuPool, Platform, PoolBox, Prepared, RawAlloc};

/// A request a driver would queue: it knows what it holds.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    lba: u64,
    sectors: u32,
}

#[test]
fn pool_boxes_are_send_and_sync_like_their_value() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PoolBox<Request>>();
    send_sync::<PerCpuPool<Request, HostPlatform>>();
}

#[test]
fn a_box_moves_to_another_thread_and_is_freed_there_on_another_processor() {
    let platform = HostPlatform::new(4).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let pool = PerCpuPool::<Request, _, _>::new_in(
        &platform,
        &counting,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    )
    .unwrap();
    for i in 0..2 {
        assert_eq!(pool.prepare(cpu(i)), Ok(Prepared::New));
        pool.commit(cpu(i)).unwrap();
    }
    // Submitted on processor 0 ...
    let request = on(&platform, 0, || {
        platform
            .pinned(|pin| {
                pool.alloc(
                    pin,
                    Request {
                        lba: 2048,
                        sectors: 8,
                    },
                )
            })
            .unwrap()
            .unwrap()
    });
    let address = &*request as *const Request as usize;
    // ... completed on processor 1, by a thread that owns the box (moved in).
    let pool_ref = &pool;
    let freed_on = std::thread::scope(|s| {
        s.spawn(move || {
            platform.bind_current_thread(cpu(1)).unwrap();
            let mut request = request;
            request.sectors += 1;
            assert_eq!(
                *request,
                Request {
                    lba: 2048,
                    sectors: 9
                }
            );
            platform
                .pinned(|pin| {
                    pool_ref.free(pin, request);
                    pin.processor()
                })
                .unwrap()
        })
        .join()
        .unwrap()
    });
    assert_eq!(freed_on, cpu(1));
    let (zero, one) = (
        pool.processor_stats(cpu(0)).unwrap(),
        pool.processor_stats(cpu(1)).unwrap(),
    );
    assert_eq!((zero.allocs(), zero.frees()), (1, 0), "{zero:?}");
    assert_eq!(
        (one.allocs(), one.frees(), one.cached),
        (0, 1, 1),
        "{one:?}"
    );
    let stats = pool.stats();
    assert_eq!((stats.outstanding, stats.returning), (0, 0), "{stats:?}");
    // The freed object is processor 1's now: its next allocation gets it back.
    let again = on(&platform, 1, || {
        platform
            .pinned(|pin| {
                let object = pool.alloc(pin, Request { lba: 0, sectors: 0 }).unwrap();
                let at = &*object as *const Request as usize;
                pool.free(pin, object);
                at
            })
            .unwrap()
    });
    assert_eq!(again, address);
    assert_eq!(pool.teardown(), 0);
    assert_eq!(counting.live_blocks(), 0);
}

/// Allocates until every object carved so far is handed out.
fn drain_pool<P: Platform, A: RawAlloc>(
    platform: &P,
    pool: &PerCpuPool<u64, P, A>,
) -> Vec<PoolBox<u64>> {
    let mut held = Vec::new();
    platform
        .pinned(|pin| {
            held.push(pool.alloc(pin, 0).unwrap());
            loop {
                let stats = pool.stats();
                if stats.in_depot + stats.cached + stats.returning == 0 {
                    break;
                }
                let token = held.len() as u64;
                held.push(pool.alloc(pin, token).unwrap());
            }
        })
        .unwrap();
    held
}

/// A pool of `total` objects, 8 per processor, on two processors; processor 0
/// has a cache if `prepared`.
fn pool_of_u64(
    platform: &HostPlatform,
    total: usize,
    prepared: bool,
) -> PerCpuPool<u64, HostPlatform> {
    let pool = PerCpuPool::<u64, _>::new(platform, Limits { total, per_cpu: 8 }).unwrap();
    if prepared {
        assert_eq!(pool.prepare(cpu(0)), Ok(Prepared::New));
    }
    pool
}

/// Where a box's object lives.
fn address(boxed: &PoolBox<u64>) -> usize {
    &**boxed as *const u64 as usize
}

fn dropped_boxes_are_reused_before_the_pool_grows(prepared: bool) {
    let platform = HostPlatform::new(2).unwrap();
    let pool = pool_of_u64(&platform, 4096, prepared);
    let mut held = drain_pool(&platform, &pool);
    let before = pool.stats();
    assert_eq!(before.outstanding, held.len(), "{before:?}");
    // Dropped, unpinned, instead of freed: on its way home.
    let dropped = held.pop().unwrap();
    let dropped_at = address(&dropped);
    drop(dropped);
    let stats = pool.stats();
    assert_eq!(stats.returning, 1, "{stats:?}");
    assert_eq!(stats.outstanding, held.len(), "{stats:?}");
    assert_eq!(
        stats.objects,
        stats.outstanding + stats.in_depot + stats.cached + stats.returning
    );
    // The next allocation takes it back instead of growing the pool.
    let reused = platform.pinned(|pin| pool.alloc(pin, 99)).unwrap().unwrap();
    assert_eq!(address(&reused), dropped_at);
    let after = pool.stats();
    assert_eq!(
        (after.slabs, after.objects, after.returning),
        (before.slabs, before.objects, 0),
        "{after:?}"
    );
    held.push(reused);
    platform
        .pinned(|pin| {
            for object in held {
                pool.free(pin, object);
            }
        })
        .unwrap();
    assert_eq!(pool.teardown(), 0);
}

#[test]
fn a_box_dropped_unpinned_is_returning_then_reused_instead_of_growing() {
    dropped_boxes_are_reused_before_the_pool_grows(true);
}

#[test]
fn a_box_dropped_unpinned_is_reused_by_a_processor_without_a_cache() {
    dropped_boxes_are_reused_before_the_pool_grows(false);
}

#[test]
fn boxes_dropped_on_many_threads_all_come_home() {
    let (threads, each) = if cfg!(miri) { (3, 4) } else { (8, 64) };
    let platform = HostPlatform::new(4).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let pool = PerCpuPool::<u64, _, _>::new_in(
        &platform,
        &counting,
        Limits {
            total: threads * each,
            per_cpu: 4,
        },
    )
    .unwrap();
    let _ = pool.prepare(cpu(0)).unwrap();
    let boxes: Vec<PoolBox<u64>> = platform
        .pinned(|pin| {
            (0..threads * each)
                .map(|i| pool.alloc(pin, i as u64).unwrap())
                .collect()
        })
        .unwrap();
    assert_eq!(pool.stats().outstanding, threads * each);
    let mut boxes = boxes.into_iter();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let mine: Vec<_> = boxes.by_ref().take(each).collect();
            s.spawn(move || drop(mine)); // at once, from every thread, unpinned
        }
    });
    let stats = pool.stats();
    assert_eq!(
        (stats.returning, stats.outstanding),
        (threads * each, 0),
        "{stats:?}"
    );
    // Every one of them can be allocated again: the pool is at its limit, so
    // each allocation must come from what came home.
    let again = drain_pool(&platform, &pool);
    assert_eq!(again.len(), threads * each);
    assert_eq!(pool.stats().objects, threads * each);
    drop(again);
    assert_eq!(pool.teardown(), 0);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn a_box_given_to_another_pools_free_goes_home_to_its_own() {
    let platform = HostPlatform::new(2).unwrap();
    let limits = Limits {
        total: 64,
        per_cpu: 8,
    };
    let pool_a = PerCpuPool::<u64, _>::new(&platform, limits).unwrap();
    let pool_b = PerCpuPool::<u64, _>::new(&platform, limits).unwrap();
    for pool in [&pool_a, &pool_b] {
        assert_eq!(pool.prepare(cpu(0)), Ok(Prepared::New));
    }
    let b_before = pool_b.stats();
    platform
        .pinned(|pin| {
            let from_a = pool_a.alloc(pin, 5).unwrap();
            pool_b.free(pin, from_a);
            // Through a local view of B too.
            let from_a = pool_a.alloc(pin, 6).unwrap();
            pool_b.local(pin).free(from_a);
        })
        .unwrap();
    let a = pool_a.stats();
    assert_eq!((a.returning, a.outstanding), (2, 0), "{a:?}");
    // B saw nothing: no free, no object, nothing cached.
    assert_eq!(pool_b.stats(), b_before);
    let b0 = pool_b.processor_stats(cpu(0)).unwrap();
    assert_eq!((b0.frees(), b0.cached), (0, 0), "{b0:?}");
    let a0 = pool_a.processor_stats(cpu(0)).unwrap();
    assert_eq!(a0.frees(), 0, "{a0:?}");
    assert_eq!(pool_a.teardown(), 0);
    assert_eq!(pool_b.teardown(), 0);
}

static DROPS: AtomicUsize = AtomicUsize::new(0);

struct Counted(u64);

impl Drop for Counted {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_box_dropped_after_teardown_reported_it_is_dropped_without_ub() {
    let platform = HostPlatform::new(2).unwrap();
    let arena = Arena::default();
    let pool = PerCpuPool::<Counted, _, _>::new_in(
        &platform,
        &arena,
        Limits {
            total: 16,
            per_cpu: 4,
        },
    )
    .unwrap();
    let _ = pool.prepare(cpu(0)).unwrap();
    let (mut kept, freed) = platform
        .pinned(|pin| {
            (
                pool.alloc(pin, Counted(41)).unwrap(),
                pool.alloc(pin, Counted(7)).unwrap(),
            )
        })
        .unwrap();
    platform.pinned(|pin| pool.free(pin, freed)).unwrap();
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    // The pool goes while one box is alive: it says so and keeps its memory.
    assert_eq!(pool.teardown(), 1);
    // The box is still valid: read, written, then dropped (unpinned) onto the
    // home the pool left behind.
    kept.0 += 1;
    assert_eq!(kept.0, 42);
    let moved = std::thread::spawn(move || {
        let value = kept.0;
        drop(kept);
        value
    })
    .join()
    .unwrap();
    assert_eq!(moved, 42);
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
    // Only the slab and the home are left, freed by the arena.
    assert_eq!(arena.live_blocks(), 2);
}

#[test]
fn a_box_dropped_after_the_pool_was_dropped_is_fine_too() {
    let platform = HostPlatform::new(1).unwrap();
    let arena = Arena::default();
    let pool = PerCpuPool::<Vec<u8>, _, _>::new_in(
        &platform,
        &arena,
        Limits {
            total: 4,
            per_cpu: 2,
        },
    )
    .unwrap();
    let boxed = platform
        .pinned(|pin| pool.alloc(pin, vec![1, 2, 3]))
        .unwrap()
        .unwrap();
    drop(pool);
    assert_eq!(*boxed, [1, 2, 3]);
    drop(boxed); // the Vec's own heap memory is freed: miri checks no leak
}

#[test]
fn into_raw_then_free_raw_round_trips() {
    let platform = HostPlatform::new(1).unwrap();
    let pool = PerCpuPool::<u64, _>::new(
        &platform,
        Limits {
            total: 4,
            per_cpu: 2,
        },
    )
    .unwrap();
    platform
        .pinned(|pin| {
            let raw = pool.alloc(pin, 3).unwrap().into_raw();
            assert_eq!(pool.stats().outstanding, 1);
            // SAFETY: from this pool (into_raw), freed once, not used after.
            unsafe { pool.free_raw(pin, raw) };
        })
        .unwrap();
    assert_eq!(pool.stats().outstanding, 0);
    assert_eq!(pool.teardown(), 0);
}

/// At its total limit the pool cannot grow: boxes dropped away from it (on
/// another thread, unpinned) must be taken back, or the driver sees
/// `Exhausted` while objects are free.
fn dropped_boxes_are_reused_at_the_total_limit(prepared: bool) {
    let platform = HostPlatform::new(2).unwrap();
    let pool = pool_of_u64(&platform, 16, prepared);
    let mut held = drain_pool(&platform, &pool);
    assert_eq!(held.len(), 16);
    let full = platform.pinned(|pin| pool.alloc(pin, 0).err()).unwrap();
    assert_eq!(full, Some(perproc::Error::Exhausted));
    // Two completions dropped on another thread instead of freed.
    let dropped: Vec<_> = held.drain(..2).collect();
    let mut addresses: Vec<usize> = dropped.iter().map(address).collect();
    std::thread::spawn(move || drop(dropped)).join().unwrap();
    assert_eq!(pool.stats().returning, 2);
    let mut reused: Vec<_> = platform
        .pinned(|pin| (0..2).map(|i| pool.alloc(pin, i).unwrap()).collect())
        .unwrap();
    let mut again: Vec<usize> = reused.iter().map(address).collect();
    addresses.sort_unstable();
    again.sort_unstable();
    assert_eq!(again, addresses, "the dropped objects, taken back");
    let stats = pool.stats();
    assert_eq!(
        (stats.objects, stats.outstanding, stats.returning),
        (16, 16, 0),
        "{stats:?}"
    );
    let full = platform.pinned(|pin| pool.alloc(pin, 0).err()).unwrap();
    assert_eq!(full, Some(perproc::Error::Exhausted));
    held.append(&mut reused);
    platform
        .pinned(|pin| {
            for object in held {
                pool.free(pin, object);
            }
        })
        .unwrap();
    assert_eq!(pool.teardown(), 0);
}

#[test]
fn boxes_dropped_off_processor_are_reused_at_the_total_limit() {
    dropped_boxes_are_reused_at_the_total_limit(true);
}

#[test]
fn boxes_dropped_off_processor_are_reused_at_the_limit_without_a_cache() {
    dropped_boxes_are_reused_at_the_total_limit(false);
}

/// A box shows as its value, with the formatter's options (`{:#?}`) passed on.
#[test]
fn a_box_debug_is_its_value() {
    let platform = HostPlatform::new(1).unwrap();
    let pool = PerCpuPool::<Request, _>::new(
        &platform,
        Limits {
            total: 4,
            per_cpu: 2,
        },
    )
    .unwrap();
    let request = || Request {
        lba: 2048,
        sectors: 8,
    };
    let boxed = platform
        .pinned(|pin| pool.alloc(pin, request()))
        .unwrap()
        .unwrap();
    assert_eq!(format!("{boxed:?}"), "Request { lba: 2048, sectors: 8 }");
    assert_eq!(format!("{boxed:#?}"), format!("{:#?}", request()));
    platform.pinned(|pin| pool.free(pin, boxed)).unwrap();
    assert_eq!(pool.teardown(), 0);
}
