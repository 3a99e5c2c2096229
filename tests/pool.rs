//! The per-CPU pool: behaviour, a model-based test, a threaded stress test with
//! migration, remote frees and hot-add, and the fault-injection sweep.

mod common;

use common::{cpu, on, Arena};

use std::alloc::Layout;
use std::collections::{HashMap, HashSet};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{
    AllocError, Component, Error, Limits, PerCpuPool, Platform, PoolBox, Prepared, ProcessorIndex,
    RawAlloc, SlotState,
};

/// A 64-byte object that knows what it should hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(align(64))]
struct Obj([u64; 8]);

impl Obj {
    fn new(token: u64) -> Self {
        Obj([token; 8])
    }
    fn token(&self) -> u64 {
        assert!(
            self.0.iter().all(|w| *w == self.0[0]),
            "object torn: {:?}",
            self.0
        );
        self.0[0]
    }
}

/// xorshift64*: a deterministic generator for the randomised tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn pool_on<A: RawAlloc>(
    platform: &HostPlatform,
    alloc: A,
    limits: Limits,
) -> PerCpuPool<Obj, HostPlatform, A> {
    PerCpuPool::new_in(platform, alloc, limits).unwrap()
}

/// The whole pool adds up: every object is handed out, in the depot, cached,
/// or on its way back (dropped boxes).
fn assert_accounted<T, P: Platform, A: RawAlloc>(pool: &PerCpuPool<T, P, A>, outstanding: usize) {
    let stats = pool.stats();
    assert_eq!(stats.outstanding, outstanding, "{stats:?}");
    assert_eq!(
        stats.objects,
        outstanding + stats.in_depot + stats.cached + stats.stranded + stats.returning,
        "{stats:?}"
    );
    assert!(stats.objects <= stats.limit, "{stats:?}");
    for processor in pool.processors() {
        assert!(processor.cached <= pool.limits().per_cpu, "{processor:?}");
    }
}

#[test]
fn local_alloc_and_free_hit_the_magazines() {
    let platform = HostPlatform::new(4).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 256,
            per_cpu: 16,
        },
    );
    assert_eq!(pool.prepare(cpu(0)), Ok(Prepared::New));
    pool.commit(cpu(0)).unwrap();
    assert_eq!(pool.magazine_size(), 8);
    platform
        .pinned(|pin| {
            for round in 0..4u64 {
                let objects: Vec<_> = (0..8)
                    .map(|i| pool.alloc(pin, Obj::new(round * 8 + i)).unwrap())
                    .collect();
                for (i, object) in objects.iter().enumerate() {
                    assert_eq!(object.token(), round * 8 + i as u64);
                }
                for object in objects {
                    pool.free(pin, object);
                }
            }
        })
        .unwrap();
    let stats = pool.processor_stats(cpu(0)).unwrap();
    assert_eq!(stats.allocs(), 32);
    assert_eq!(stats.frees(), 32);
    // The first allocation fills a magazine from a new slab; after that, a
    // magazine's worth of objects comes and goes without the depot.
    assert_eq!(stats.alloc_misses, 1, "{stats:?}");
    assert_eq!(stats.free_misses, 0, "{stats:?}");
    assert_eq!(stats.cached, 8);
    assert_accounted(&pool, 0);
    assert_eq!(pool.stats().direct_allocs, 0);
}

#[test]
fn exchanges_trade_whole_magazines_with_the_depot() {
    let platform = HostPlatform::new(2).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 1024,
            per_cpu: 8,
        },
    );
    let _ = pool.prepare(cpu(0)).unwrap();
    platform
        .pinned(|pin| {
            // 40 objects out, 40 back: frees overflow two magazines of 4 into the depot.
            let objects: Vec<_> = (0..40)
                .map(|i| pool.alloc_raw(pin, Obj::new(i)).unwrap())
                .collect();
            assert_accounted(&pool, 40);
            for object in objects {
                // SAFETY: allocated above, freed once.
                unsafe { pool.free_raw(pin, object) };
            }
            let after_frees = pool.processor_stats(cpu(0)).unwrap();
            assert!(after_frees.exchanges > 0, "{after_frees:?}");
            assert_eq!(after_frees.cached, 8);
            assert_eq!(pool.stats().in_depot + 8, pool.stats().objects);
            // Allocating them again reloads full magazines from the depot.
            let objects_before = pool.stats().objects;
            let objects: Vec<_> = (0..40)
                .map(|i| pool.alloc(pin, Obj::new(i)).unwrap())
                .collect();
            let again = pool.processor_stats(cpu(0)).unwrap();
            assert!(again.exchanges > after_frees.exchanges, "{again:?}");
            assert_eq!(
                pool.stats().objects,
                objects_before,
                "no growth: the depot had them"
            );
            for object in objects {
                pool.free(pin, object);
            }
        })
        .unwrap();
    assert_accounted(&pool, 0);
}

#[test]
fn exhaustion_is_an_error_value_and_recovers() {
    let platform = HostPlatform::new(2).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 10,
            per_cpu: 4,
        },
    );
    let _ = pool.prepare(cpu(0)).unwrap();
    platform
        .pinned(|pin| {
            let mut held: Vec<_> = (0..10)
                .map(|i| pool.alloc(pin, Obj::new(i)).unwrap())
                .collect();
            assert_eq!(pool.alloc(pin, Obj::new(99)).unwrap_err(), Error::Exhausted);
            assert_eq!(pool.stats().objects, 10);
            pool.free(pin, held.pop().unwrap());
            let again = pool.alloc(pin, Obj::new(7)).unwrap();
            assert_eq!(again.token(), 7);
            pool.free(pin, again);
            for object in held {
                pool.free(pin, object);
            }
        })
        .unwrap();
    assert_accounted(&pool, 0);
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 0,
            per_cpu: 4,
        },
    );
    assert_eq!(
        platform
            .pinned(|pin| pool.alloc(pin, Obj::new(1)).map(drop))
            .unwrap(),
        Err(Error::Exhausted)
    );
}

#[test]
fn a_processor_without_a_cache_goes_through_the_depot() {
    let platform = HostPlatform::new(4).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    );
    let _ = pool.prepare(cpu(0)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            platform.bind_current_thread(cpu(3)).unwrap(); // never prepared
            platform
                .pinned(|pin| {
                    let a = pool.alloc(pin, Obj::new(1)).unwrap();
                    let b = pool.alloc(pin, Obj::new(2)).unwrap();
                    assert_eq!((a.token(), b.token()), (1, 2));
                    pool.free(pin, a);
                    pool.free(pin, b);
                })
                .unwrap();
        });
    });
    let stats = pool.stats();
    assert_eq!(
        (stats.direct_allocs, stats.direct_frees),
        (2, 2),
        "{stats:?}"
    );
    assert!(pool.processor_stats(cpu(3)).is_none());
    // Past the table too: a pin (of the same machine, through a platform
    // handle that counts more processors) for an index the pool has no room for.
    let larger = HostPlatform::new(2000).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            larger.bind_current_thread(cpu(1000)).unwrap();
            larger
                .pinned(|pin| {
                    assert_eq!(pin.processor(), cpu(1000));
                    let object = pool.alloc_raw(pin, Obj::new(5)).unwrap();
                    // SAFETY: allocated above, freed once.
                    unsafe { pool.free_raw(pin, object) };
                })
                .unwrap();
        });
    });
    let stats = pool.stats();
    assert_eq!(
        (stats.direct_allocs, stats.direct_frees),
        (3, 3),
        "{stats:?}"
    );
    assert_accounted(&pool, 0);
}

#[test]
fn remote_frees_land_in_the_freeing_processors_cache() {
    let platform = HostPlatform::new(2).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 256,
            per_cpu: 32,
        },
    );
    let set = [&pool];
    for i in 0..2 {
        assert_eq!(set.prepare(cpu(i)), Ok(Prepared::New));
        set.commit(cpu(i)).unwrap();
    }
    let objects: Vec<_> = platform
        .pinned(|pin| {
            (0..10)
                .map(|i| pool.alloc(pin, Obj::new(i)).unwrap())
                .collect()
        })
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            platform.bind_current_thread(cpu(1)).unwrap();
            platform
                .pinned(|pin| {
                    for (i, object) in objects.into_iter().enumerate() {
                        assert_eq!(object.token(), i as u64);
                        pool.free(pin, object); // completion on processor 1
                    }
                })
                .unwrap();
        });
    });
    let one = pool.processor_stats(cpu(1)).unwrap();
    assert_eq!(
        (one.frees(), one.allocs(), one.cached),
        (10, 0, 10),
        "{one:?}"
    );
    assert_eq!(one.net_allocs(), -10);
    assert_eq!(pool.processor_stats(cpu(0)).unwrap().net_allocs(), 10);
    assert_accounted(&pool, 0);
}

#[test]
fn hot_add_prepare_is_fallible_commit_trivial_abort_idempotent() {
    let platform = HostPlatform::new(4).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let failing = FailingAlloc::new(&counting);
    let pool = pool_on(
        &platform,
        &failing,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    );
    let table_blocks = counting.live_blocks();
    // Every allocation of a prepare fails in turn: nothing published, nothing leaked.
    for k in 0..3 {
        failing.plan(FailPlan::Once(k));
        assert_eq!(pool.prepare(cpu(1)), Err(Error::OutOfMemory));
        assert_eq!(pool.state(cpu(1)), SlotState::Absent);
        assert_eq!(counting.live_blocks(), table_blocks);
    }
    failing.plan(FailPlan::Never);
    let placed = counting.placed_allocations();
    assert_eq!(pool.prepare(cpu(1)), Ok(Prepared::New));
    assert_eq!(
        counting.live_blocks(),
        table_blocks + 3,
        "a slot and two magazines"
    );
    assert_eq!(
        counting.placed_allocations(),
        placed + 3,
        "all placed for processor 1"
    );
    assert_eq!(pool.prepare(cpu(1)), Ok(Prepared::Already)); // idempotent
    assert_eq!(counting.live_blocks(), table_blocks + 3);
    pool.abort(cpu(1)).unwrap();
    pool.abort(cpu(1)).unwrap();
    pool.abort(cpu(2)).unwrap(); // never prepared
    assert_eq!(pool.state(cpu(1)), SlotState::Retired);
    assert_eq!(pool.prepare(cpu(1)), Ok(Prepared::New)); // revived as is, no allocation
    assert_eq!(counting.live_blocks(), table_blocks + 3);
    pool.commit(cpu(1)).unwrap();
    assert_eq!(pool.abort(cpu(1)), Err(Error::AlreadyOnline));
    assert_eq!(pool.commit(cpu(3)), Err(Error::NotPrepared));
    assert!(matches!(
        pool.prepare(cpu(9)),
        Err(Error::IndexOutOfRange { .. })
    ));
    drop(pool);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn an_aborted_processor_that_ran_code_hands_back_what_it_cached() {
    let platform = HostPlatform::new(4).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    );
    let _ = pool.prepare(cpu(0)).unwrap();
    let _ = pool.prepare(cpu(2)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // Code runs on processor 2 between AddStart and AddFailure.
            platform.bind_current_thread(cpu(2)).unwrap();
            platform
                .pinned(|pin| {
                    let objects: Vec<_> = (0..6)
                        .map(|i| pool.alloc(pin, Obj::new(i)).unwrap())
                        .collect();
                    for object in objects {
                        pool.free(pin, object);
                    }
                })
                .unwrap();
        });
    });
    let cached = pool.processor_stats(cpu(2)).unwrap().cached;
    assert!(cached > 0);
    pool.abort(cpu(2)).unwrap();
    let stats = pool.stats();
    assert_eq!(stats.stranded, cached, "{stats:?}");
    let two = pool.processor_stats(cpu(2)).unwrap();
    assert!(two.retired);
    assert_accounted(&pool, 0);
    // The next use by code pinned there gives them back, then goes direct.
    std::thread::scope(|s| {
        s.spawn(|| {
            platform.bind_current_thread(cpu(2)).unwrap();
            platform
                .pinned(|pin| pool.free(pin, pool.alloc(pin, Obj::new(1)).unwrap()))
                .unwrap();
        });
    });
    let stats = pool.stats();
    assert_eq!(stats.stranded, 0, "{stats:?}");
    assert_eq!((stats.direct_allocs, stats.direct_frees), (1, 1));
    assert_accounted(&pool, 0);
    // Added again: the same cache, no allocation.
    let magazines = pool.stats().magazines;
    assert_eq!(pool.prepare(cpu(2)), Ok(Prepared::New));
    assert_eq!(pool.stats().magazines, magazines);
    assert!(!pool.processor_stats(cpu(2)).unwrap().retired);
}

#[test]
fn a_stranded_cache_is_reused_by_the_next_add_and_reclaimed_at_drop() {
    let platform = HostPlatform::new(4).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let pool = pool_on(
        &platform,
        &counting,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    );
    let _ = pool.prepare(cpu(1)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            platform.bind_current_thread(cpu(1)).unwrap();
            platform
                .pinned(|pin| pool.free(pin, pool.alloc(pin, Obj::new(1)).unwrap()))
                .unwrap();
        });
    });
    pool.abort(cpu(1)).unwrap();
    assert!(pool.stats().stranded > 0);
    let _ = pool.prepare(cpu(1)).unwrap();
    let stats = pool.stats();
    assert_eq!(stats.stranded, 0);
    assert!(stats.cached > 0, "the objects are the processor's again");
    pool.abort(cpu(1)).unwrap();
    assert!(pool.stats().stranded > 0);
    assert_eq!(pool.teardown(), 0);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn teardown_reports_outstanding_objects_and_keeps_their_memory() {
    let platform = HostPlatform::new(2).unwrap();
    let arena = Arena::default();
    {
        let pool = pool_on(
            &platform,
            &arena,
            Limits {
                total: 64,
                per_cpu: 8,
            },
        );
        let _ = pool.prepare(cpu(0)).unwrap();
        let kept = platform
            .pinned(|pin| {
                let kept = pool.alloc_raw(pin, Obj::new(42)).unwrap();
                let forgotten = pool.alloc(pin, Obj::new(43)).unwrap();
                std::mem::forget(forgotten);
                pool.free(pin, pool.alloc(pin, Obj::new(44)).unwrap());
                kept
            })
            .unwrap();
        assert_eq!(pool.stats().outstanding, 2);
        let slabs = pool.stats().slabs;
        assert_eq!(pool.teardown(), 2);
        // The slab is kept: the raw pointer still reads its object.
        // SAFETY: the pool kept the slab because this object was outstanding.
        assert_eq!(unsafe { kept.as_ref() }.token(), 42);
        // The slabs and the home stay; everything else went.
        assert_eq!(arena.live_blocks(), slabs + 1);
    }
    {
        // Nothing outstanding: everything goes.
        let pool = pool_on(
            &platform,
            &arena,
            Limits {
                total: 64,
                per_cpu: 8,
            },
        );
        let object = platform
            .pinned(|pin| pool.alloc(pin, Obj::new(1)).unwrap())
            .unwrap();
        drop(object); // unpinned: onto the home list, which teardown takes in
        let before = arena.live_blocks();
        assert_eq!(pool.teardown(), 0);
        // table, home and slab
        assert_eq!(arena.live_blocks(), before - 3);
    }
}

#[test]
fn values_are_dropped_on_free_and_never_by_the_pool() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct Counted(#[allow(dead_code)] u32);
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
    let platform = HostPlatform::new(2).unwrap();
    let pool = PerCpuPool::<Counted, _>::new(
        &platform,
        Limits {
            total: 8,
            per_cpu: 4,
        },
    )
    .unwrap();
    let _ = pool.prepare(cpu(0)).unwrap();
    let pinned = platform.pinned(|pin| {
        let a = pool.alloc(pin, Counted(1)).unwrap();
        let b = pool.alloc_raw(pin, Counted(2)).unwrap();
        pool.free(pin, a);
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
        // SAFETY: allocated above, freed once.
        unsafe { pool.free_raw(pin, b) };
        assert_eq!(DROPS.load(Ordering::SeqCst), 2);
        // Refused: the value is dropped; alloc_with does not even build it.
        let small = PerCpuPool::<Counted, _>::new(
            &platform,
            Limits {
                total: 0,
                per_cpu: 0,
            },
        )
        .unwrap();
        assert!(small.alloc(pin, Counted(3)).is_err());
        assert_eq!(DROPS.load(Ordering::SeqCst), 3);
        assert!(small.alloc_with(pin, || unreachable!("not built")).is_err());
    });
    pinned.unwrap();
    drop(pool);
    assert_eq!(DROPS.load(Ordering::SeqCst), 3);
}

#[test]
fn alloc_with_gives_the_slot_back_if_the_constructor_unwinds() {
    let platform = HostPlatform::new(2).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 1,
            per_cpu: 0,
        },
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        platform.pinned(|pin| {
            let _ = pool.alloc_with(pin, || panic!("constructor failed"));
        })
    }));
    assert!(result.is_err());
    // The only object is free again (and the unwound pin was exited: we can pin).
    platform
        .pinned(|pin| {
            let object = pool.alloc_with(pin, || {
                // The constructor may use the pool (no lock is held).
                assert_eq!(pool.alloc(pin, Obj::new(0)).unwrap_err(), Error::Exhausted);
                Obj::new(3)
            });
            let object = object.unwrap();
            assert_eq!(object.token(), 3);
            pool.free(pin, object);
        })
        .unwrap();
    assert_accounted(&pool, 0);
}

#[test]
fn limits_shape_the_pool() {
    let platform = HostPlatform::new(2).unwrap();
    // Fewer than 2 per processor: no caching, every operation is direct.
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 8,
            per_cpu: 1,
        },
    );
    let _ = pool.prepare(cpu(0)).unwrap();
    assert_eq!(pool.magazine_size(), 0);
    platform
        .pinned(|pin| pool.free(pin, pool.alloc(pin, Obj::new(1)).unwrap()))
        .unwrap();
    let stats = pool.stats();
    assert_eq!(
        (stats.direct_allocs, stats.direct_frees, stats.cached),
        (1, 1, 0)
    );
    // Magazines too large for the address space are refused up front.
    let huge = PerCpuPool::<Obj, _>::new(
        &platform,
        Limits {
            total: 8,
            per_cpu: usize::MAX,
        },
    );
    assert_eq!(huge.unwrap_err(), Error::CapacityOverflow);
    // A slab fills at least a magazine.
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 1 << 20,
            per_cpu: 1024,
        },
    );
    assert!(pool.slab_size() >= pool.magazine_size());
}

#[test]
fn odd_types_zero_sized_and_over_aligned() {
    #[derive(Debug, PartialEq)]
    #[repr(align(256))]
    struct Wide(u8);
    let platform = HostPlatform::new(2).unwrap();
    let units = PerCpuPool::<(), _>::new(
        &platform,
        Limits {
            total: 4,
            per_cpu: 2,
        },
    )
    .unwrap();
    let wide = PerCpuPool::<Wide, _>::new(
        &platform,
        Limits {
            total: 4,
            per_cpu: 2,
        },
    )
    .unwrap();
    let _ = units.prepare(cpu(0)).unwrap();
    platform
        .pinned(|pin| {
            let a: Vec<_> = (0..4).map(|_| units.alloc(pin, ()).unwrap()).collect();
            let addrs: HashSet<_> = a.iter().map(|b| &**b as *const () as usize).collect();
            assert_eq!(addrs.len(), 4, "distinct slots even for ()");
            let w: Vec<_> = (0..4).map(|i| wide.alloc(pin, Wide(i)).unwrap()).collect();
            for (i, object) in w.iter().enumerate() {
                assert_eq!(&**object as *const Wide as usize % 256, 0);
                assert_eq!(object.0, i as u8);
            }
        })
        .unwrap();
}

#[test]
fn a_local_view_serves_a_pinned_batch() {
    let platform = HostPlatform::new(4).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    );
    let other = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    );
    let _ = pool.prepare(cpu(0)).unwrap();
    let pinned = platform.pinned(|pin| {
        let local = pool.local(pin);
        assert_eq!(local.pin().processor(), cpu(0));
        let batch: Vec<_> = (0..20).map(|i| local.alloc(Obj::new(i)).unwrap()).collect();
        let raw = local.alloc_raw(Obj::new(99)).unwrap();
        for (i, object) in batch.into_iter().enumerate() {
            assert_eq!(object.token(), i as u64);
            local.free(object);
        }
        // SAFETY: allocated above, freed once.
        unsafe { local.free_raw(raw) };
        // A box of another pool goes back to that pool.
        let foreign = other.alloc(pin, Obj::new(5)).unwrap();
        local.free(foreign);
        assert_eq!(other.stats().returning, 1);
        assert_accounted(&other, 0);
        assert_accounted(&pool, 0);
        let stats = pool.processor_stats(cpu(0)).unwrap();
        assert_eq!((stats.allocs(), stats.frees()), (21, 21));
    });
    pinned.unwrap();

    // A batch on a processor without a cache goes through the depot; one whose
    // add is aborted mid-batch keeps its cache and strands what it leaves.
    std::thread::scope(|s| {
        s.spawn(|| {
            platform.bind_current_thread(cpu(2)).unwrap();
            platform
                .pinned(|pin| {
                    let local = pool.local(pin);
                    local.free(local.alloc(Obj::new(1)).unwrap());
                    assert_eq!(pool.stats().direct_allocs, 1);
                    assert_eq!(pool.prepare(cpu(2)), Ok(Prepared::New));
                    let local = pool.local(pin);
                    let object = local.alloc(Obj::new(2)).unwrap();
                    pool.abort(cpu(2)).unwrap();
                    local.free(object);
                    assert!(pool.stats().stranded > 0);
                    // The next operation pinned there that needs the depot hands them back.
                    pool.free(pin, pool.alloc(pin, Obj::new(3)).unwrap());
                    assert_eq!(pool.stats().stranded, 0);
                })
                .unwrap();
        });
    });
    assert_accounted(&pool, 0);
}

// ---------------------------------------------------------------------------
// Model-based: random operations on simulated processors against a plain model.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Absent,
    Prepared,
    Online,
    Retired,
}

/// What a run exercised, so the test proves it reached every path.
#[derive(Default)]
struct Seen {
    exhausted: usize,
    stranded: usize,
    direct: u64,
    exchanges: u64,
}

fn model_run(seed: u64, steps: usize, seen: &mut Seen) {
    const CPUS: u32 = 4;
    let limits = Limits {
        total: 24,
        per_cpu: 4,
    };
    let platform = HostPlatform::new(CPUS).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let pool = pool_on(&platform, &counting, limits);
    let mut rng = Rng(seed | 1);
    let mut phases = [Phase::Absent; CPUS as usize];
    // The model: what is handed out, by address, with the token it holds.
    let mut out: Vec<(NonNull<Obj>, u64)> = Vec::new();
    let mut addresses: HashSet<usize> = HashSet::new();
    let mut next_token = 0u64;
    for _ in 0..steps {
        let c = rng.below(CPUS as usize) as u32;
        let phase = &mut phases[c as usize];
        match rng.below(10) {
            0 => {
                let prepared = pool.prepare(cpu(c)).unwrap();
                let expected = match *phase {
                    Phase::Absent | Phase::Retired => Prepared::New,
                    Phase::Prepared | Phase::Online => Prepared::Already,
                };
                assert_eq!(prepared, expected, "prepare in {phase:?}");
                if *phase != Phase::Online {
                    *phase = Phase::Prepared;
                }
            }
            1 => match (pool.commit(cpu(c)), *phase) {
                (Ok(()), Phase::Prepared | Phase::Online) => *phase = Phase::Online,
                (Err(Error::NotPrepared), Phase::Absent | Phase::Retired) => {}
                (got, phase) => panic!("commit in {phase:?}: {got:?}"),
            },
            2 => match (pool.abort(cpu(c)), *phase) {
                (Ok(()), Phase::Prepared | Phase::Retired) => *phase = Phase::Retired,
                (Ok(()), Phase::Absent) => {}
                (Err(Error::AlreadyOnline), Phase::Online) => {}
                (got, phase) => panic!("abort in {phase:?}: {got:?}"),
            },
            3..=6 => {
                platform.bind_current_thread(cpu(c)).unwrap();
                let mine = pool.processor_stats(cpu(c)).map_or(0, |s| s.cached);
                let before = pool.stats();
                let local = rng.below(2) == 0;
                let allocated = platform
                    .pinned(|pin| {
                        if local {
                            pool.alloc_raw(pin, Obj::new(next_token))
                        } else {
                            pool.local(pin).alloc_raw(Obj::new(next_token))
                        }
                    })
                    .unwrap();
                match allocated {
                    Ok(object) => {
                        assert!(
                            addresses.insert(object.as_ptr() as usize),
                            "handed out twice"
                        );
                        out.push((object, next_token));
                        next_token += 1;
                    }
                    Err(Error::Exhausted) => {
                        seen.exhausted += 1;
                        // Only when nothing this processor can reach is free.
                        assert_eq!(before.objects, limits.total, "{before:?}");
                        assert_eq!(before.in_depot + mine, 0, "{before:?}");
                    }
                    Err(other) => panic!("alloc: {other}"),
                }
            }
            _ => {
                if out.is_empty() {
                    continue;
                }
                let (object, token) = out.swap_remove(rng.below(out.len()));
                // SAFETY: handed out by the pool and not freed since.
                assert_eq!(unsafe { object.as_ref() }.token(), token);
                assert!(addresses.remove(&(object.as_ptr() as usize)));
                platform.bind_current_thread(cpu(c)).unwrap();
                let local = rng.below(2) == 0;
                platform
                    .pinned(|pin| {
                        // SAFETY: as above; freed once.
                        unsafe {
                            if local {
                                pool.free_raw(pin, object);
                            } else {
                                pool.local(pin).free_raw(object);
                            }
                        }
                    })
                    .unwrap();
            }
        }
        assert_accounted(&pool, out.len());
        if pool.stats().stranded > 0 {
            seen.stranded += 1;
        }
        for (i, phase) in phases.iter().enumerate() {
            let state = pool.state(cpu(i as u32));
            let expected = match phase {
                Phase::Absent => SlotState::Absent,
                Phase::Prepared => SlotState::Prepared,
                Phase::Online => SlotState::Online,
                Phase::Retired => SlotState::Retired,
            };
            assert_eq!(state, expected);
        }
    }
    platform
        .pinned(|pin| {
            for (object, token) in out.drain(..) {
                // SAFETY: handed out and not freed.
                assert_eq!(unsafe { object.as_ref() }.token(), token);
                // SAFETY: freed once.
                unsafe { pool.free_raw(pin, object) };
            }
        })
        .unwrap();
    assert_accounted(&pool, 0);
    let stats = pool.stats();
    seen.direct += stats.direct_allocs;
    seen.exchanges += pool.processors().map(|p| p.exchanges).sum::<u64>();
    assert_eq!(pool.teardown(), 0);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn model_random_operations_across_processors() {
    let (seeds, steps) = if cfg!(miri) { (2, 300) } else { (200, 2000) };
    let mut seen = Seen::default();
    for seed in 0..seeds {
        model_run(0x9e37_79b9_7f4a_7c15 ^ seed, steps, &mut seen);
    }
    assert!(seen.exhausted > 0, "never exhausted");
    assert!(seen.stranded > 0, "never stranded");
    assert!(seen.direct > 0, "never direct");
    assert!(seen.exchanges > 0, "never exchanged");
}

// ---------------------------------------------------------------------------
// Threaded stress: migration, remote frees, hot-add and abort while running.

#[test]
fn stress_migration_remote_frees_and_hot_add() {
    let (threads, rounds) = if cfg!(miri) { (2, 30) } else { (4, 4000) };
    const CPUS: u32 = 6;
    let platform = HostPlatform::new(CPUS).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let limits = Limits {
        total: 512,
        per_cpu: 8,
    };
    let pool = pool_on(&platform, &counting, limits);
    // Processors 0..4 are online; 4 and 5 are added and aborted while we run.
    for i in 0..4 {
        let _ = pool.prepare(cpu(i)).unwrap();
        pool.commit(cpu(i)).unwrap();
    }
    let live: Mutex<HashSet<usize>> = Mutex::new(HashSet::new());
    let handed_out = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::channel()).unzip();
    std::thread::scope(|outer| {
        // Processors 4 and 5 are added and their adds fail, over and over.
        outer.spawn(|| {
            let mut rng = Rng(7);
            while !done.load(Ordering::Relaxed) {
                let c = cpu(4 + rng.below(2) as u32);
                let _ = pool.prepare(c);
                std::thread::yield_now();
                let _ = pool.abort(c);
            }
        });
        std::thread::scope(|s| {
            for (t, receiver) in receivers.into_iter().enumerate() {
                let next = senders[(t + 1) % threads].clone();
                let (pool, platform, live, handed_out) = (&pool, &platform, &live, &handed_out);
                s.spawn(move || {
                    let mut rng = Rng(t as u64 + 1);
                    let mut mine: Vec<PoolBox<Obj>> = Vec::new();
                    let forget = |object: &PoolBox<Obj>| {
                        object.token();
                        assert!(live
                            .lock()
                            .unwrap()
                            .remove(&(&**object as *const Obj as usize)));
                    };
                    for round in 0..rounds {
                        // Migrate: each batch runs on a processor picked at random.
                        platform
                            .bind_current_thread(cpu(rng.below(CPUS as usize) as u32))
                            .unwrap();
                        let batch = |pin: &perproc::PinGuard<'_, HostPlatform>| {
                            for _ in 0..rng.below(6) {
                                let token = ((t as u64) << 32) | round as u64;
                                if let Ok(object) = pool.alloc(pin, Obj::new(token)) {
                                    let fresh = live
                                        .lock()
                                        .unwrap()
                                        .insert(&*object as *const Obj as usize);
                                    assert!(fresh, "handed out twice");
                                    handed_out.fetch_add(1, Ordering::Relaxed);
                                    mine.push(object);
                                }
                            }
                            // Remote frees: objects another thread allocated elsewhere.
                            while let Ok(object) = receiver.try_recv() {
                                forget(&object);
                                pool.free(pin, object);
                            }
                            while mine.len() > 3 {
                                let object = mine.swap_remove(rng.below(mine.len()));
                                if rng.below(2) == 0 {
                                    next.send(object).unwrap();
                                } else {
                                    forget(&object);
                                    pool.free(pin, object);
                                }
                            }
                        };
                        platform.pinned(batch).unwrap();
                    }
                    for object in mine {
                        forget(&object);
                        drop(object);
                    }
                    drop(next);
                    // Whatever is still in flight to us, until every sender is gone.
                    for object in receiver.iter() {
                        forget(&object);
                        drop(object);
                    }
                });
            }
            drop(senders);
        });
        done.store(true, Ordering::Relaxed);
    });
    assert!(live.lock().unwrap().is_empty());
    assert!(handed_out.load(Ordering::Relaxed) > 0);
    assert_accounted(&pool, 0);
    assert_eq!(pool.teardown(), 0);
    assert_eq!(counting.live_blocks(), 0);
}

// ---------------------------------------------------------------------------
// Fault injection: every allocation of creation, slab growth, hot-add and
// magazine exchange fails in turn; nothing leaks and the pool stays consistent.

fn scenario(
    platform: &HostPlatform,
    alloc: &FailingAlloc<&CountingAlloc<HostAlloc>>,
) -> Result<(), Error> {
    #[repr(align(512))]
    struct Big(#[allow(dead_code)] u64); // 8 per slab: several growths
    let pool = PerCpuPool::<Big, _, _>::new_in(
        platform,
        alloc,
        Limits {
            total: 40,
            per_cpu: 4,
        },
    )?;
    let set = (&pool,);
    let _ = set.prepare(cpu(0))?;
    set.commit(cpu(0))?;
    let _ = set.prepare(cpu(1))?;
    let result = (|| -> Result<(), Error> {
        let mut held = Vec::new();
        platform.bind_current_thread(cpu(0)).unwrap();
        platform.pinned(|pin| -> Result<(), Error> {
            for i in 0..20 {
                held.push(pool.alloc(pin, Big(i))?);
            }
            Ok(())
        })??;
        // Frees on processor 1 overflow its magazines: new empty magazines come
        // from the allocator (or the objects go back loose if it refuses).
        platform.bind_current_thread(cpu(1)).unwrap();
        platform.pinned(|pin| {
            for object in held.drain(..) {
                pool.free(pin, object);
            }
        })?;
        // Processor 1's add fails after it cached objects; it hands them back.
        set.abort(cpu(1))?;
        held.push(platform.pinned(|pin| pool.alloc(pin, Big(1)))??);
        // A processor without a cache.
        platform.bind_current_thread(cpu(3)).unwrap();
        held.push(platform.pinned(|pin| pool.alloc(pin, Big(2)))??);
        // Hot-add of processor 2, which then works from its own cache.
        let _ = set.prepare(cpu(2))?;
        set.commit(cpu(2))?;
        platform.bind_current_thread(cpu(2)).unwrap();
        platform.pinned(|pin| -> Result<(), Error> {
            for i in 0..6 {
                held.push(pool.alloc(pin, Big(i))?);
            }
            Ok(())
        })??;
        // What is still held is dropped, unpinned: it goes home.
        Ok(())
    })();
    platform.bind_current_thread(cpu(0)).unwrap();
    assert_accounted(&pool, 0);
    assert_eq!(pool.teardown(), 0);
    result
}

#[test]
fn fault_injection_every_allocation_once_and_from_then_on() {
    let platform = HostPlatform::new(4).unwrap();
    for plan in [FailPlan::Once as fn(usize) -> FailPlan, FailPlan::From] {
        for k in 0.. {
            let counting = CountingAlloc::new(HostAlloc);
            let failing = FailingAlloc::new(&counting);
            failing.plan(plan(k));
            let result = scenario(&platform, &failing);
            assert_eq!(counting.live_blocks(), 0, "leak with {:?}", plan(k));
            match result {
                Err(Error::OutOfMemory) => assert!(failing.injected() > 0),
                // A refused magazine on a free is absorbed: the scenario may
                // still succeed with an injection.
                Ok(()) if failing.injected() > 0 => {}
                Ok(()) => break, // k is past the last allocation
                Err(other) => panic!("{other} with {:?}", plan(k)),
            }
        }
    }
}

#[test]
fn slabs_are_placed_for_the_processor_that_grew_the_pool() {
    struct Recording(Mutex<HashMap<Option<ProcessorIndex>, usize>>);
    // SAFETY: forwards to HostAlloc unchanged.
    unsafe impl RawAlloc for Recording {
        fn allocate(
            &self,
            layout: Layout,
            processor: Option<ProcessorIndex>,
        ) -> Result<NonNull<u8>, AllocError> {
            *self.0.lock().unwrap().entry(processor).or_default() += 1;
            HostAlloc.allocate(layout, processor)
        }
        unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
            // SAFETY: forwarded.
            unsafe { HostAlloc.deallocate(ptr, layout) }
        }
    }
    let platform = HostPlatform::new(4).unwrap();
    let recording = Recording(Mutex::new(HashMap::new()));
    let pool = pool_on(
        &platform,
        &recording,
        Limits {
            total: 64,
            per_cpu: 4,
        },
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            platform.bind_current_thread(cpu(3)).unwrap();
            platform
                .pinned(|pin| pool.free(pin, pool.alloc(pin, Obj::new(0)).unwrap()))
                .unwrap();
        });
    });
    let placed = recording.0.lock().unwrap().clone();
    assert_eq!(placed.get(&Some(cpu(3))), Some(&1), "{placed:?}");
    assert_eq!(
        placed.get(&None),
        Some(&2),
        "only the table and the home are unplaced"
    );
}

// Tests for the mutants `scripts/mutants logic` found surviving in the pool
// (issue 13).

/// `processors()` tells an aborted processor (its cache hidden, what it holds
/// stranded) from a live one, as `processor_stats` does.
#[test]
fn processors_reports_aborted_processors_as_retired_and_live_ones_not() {
    let platform = HostPlatform::new(4).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    );
    for i in 0..3 {
        assert_eq!(pool.prepare(cpu(i)), Ok(Prepared::New));
    }
    // 0 online, 1 prepared (published, not online yet), 2 aborted (retired).
    pool.commit(cpu(0)).unwrap();
    pool.abort(cpu(2)).unwrap();
    assert_eq!(pool.state(cpu(2)), SlotState::Retired);
    let mut seen: Vec<_> = pool
        .processors()
        .map(|p| (p.processor, p.retired))
        .collect();
    seen.sort_by_key(|(processor, _)| processor.get());
    assert_eq!(
        seen,
        [(cpu(0), false), (cpu(1), false), (cpu(2), true)],
        "processor 3 has no cache and is not listed"
    );
    for processor in pool.processors() {
        assert_eq!(
            Some(processor),
            pool.processor_stats(processor.processor),
            "processors() and processor_stats agree"
        );
    }
    // Added again: live, no longer retired.
    assert_eq!(pool.prepare(cpu(2)), Ok(Prepared::New));
    assert!(pool.processors().all(|p| !p.retired));
}

/// Hits and misses after a known sequence on one processor: magazines of 2,
/// five allocations then five frees.
#[test]
fn processor_hits_and_misses_count_local_and_depot_operations() {
    let platform = HostPlatform::new(2).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 64,
            per_cpu: 4,
        },
    );
    assert_eq!(pool.prepare(cpu(0)), Ok(Prepared::New));
    pool.commit(cpu(0)).unwrap();
    assert_eq!(pool.magazine_size(), 2);
    on(&platform, 0, || {
        platform
            .pinned(|pin| {
                let objects: Vec<_> = (0..5)
                    .map(|i| pool.alloc(pin, Obj::new(i)).unwrap())
                    .collect();
                for object in objects {
                    pool.free(pin, object);
                }
            })
            .unwrap()
    });
    let stats = pool.processor_stats(cpu(0)).unwrap();
    // Allocations: the 1st, 3rd and 5th find both magazines empty and go to the
    // depot, which loads two objects; the 2nd and 4th take the second one.
    assert_eq!((stats.alloc_hits, stats.alloc_misses), (2, 3), "{stats:?}");
    // Frees: the first four fit in the two magazines; the fifth finds both full
    // and trades one with the depot.
    assert_eq!((stats.free_hits, stats.free_misses), (4, 1), "{stats:?}");
    assert_eq!(stats.exchanges, 1, "{stats:?}");
    // Hits are served locally, misses needed the depot: each operation is one.
    assert_eq!(stats.hits(), 2 + 4, "{stats:?}");
    assert_eq!(stats.misses(), 3 + 1, "{stats:?}");
    assert_eq!(
        stats.hits() + stats.misses(),
        stats.allocs() + stats.frees()
    );
    assert_accounted(&pool, 0);
}

/// The pool grows by slabs of a page (4 KiB) of object slots, or a magazine's
/// worth if that is more: nonpaged memory taken in small steps, but enough at a
/// time to fill a magazine. A slot is the object, at least a pointer (the free
/// list's link), padded to its alignment.
#[test]
fn a_slab_is_a_page_of_slots_or_a_magazine() {
    fn slab_size<T>(per_cpu: usize) -> usize {
        let platform = HostPlatform::new(2).unwrap();
        let limits = Limits {
            total: 1 << 20,
            per_cpu,
        };
        PerCpuPool::<T, _>::new(&platform, limits)
            .unwrap()
            .slab_size()
    }
    assert_eq!(slab_size::<Obj>(8), 4096 / 64);
    assert_eq!(slab_size::<u64>(8), 4096 / 8);
    assert_eq!(slab_size::<u8>(8), 4096 / 8, "a slot holds a pointer");
    assert_eq!(slab_size::<[u8; 1000]>(0), 4, "a page holds 4");
    assert_eq!(slab_size::<[u8; 3000]>(0), 1);
    // A magazine's worth when that is more than a page.
    assert_eq!(slab_size::<Obj>(1024), 512);
    assert_eq!(slab_size::<[u8; 1000]>(16), 8);
    // The first allocation grows the pool by one slab.
    let platform = HostPlatform::new(2).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 1 << 20,
            per_cpu: 8,
        },
    );
    let object = platform
        .pinned(|pin| pool.alloc(pin, Obj::new(1)))
        .unwrap()
        .unwrap();
    let stats = pool.stats();
    assert_eq!((stats.slabs, stats.objects), (1, 64), "{stats:?}");
    drop(object);
}

/// Registered as a `Component` (in a set, or through `&dyn Component`), the pool
/// reports the protocol errors of commit and abort: a set must see them.
#[test]
fn the_pool_as_a_component_reports_commit_and_abort_errors() {
    let platform = HostPlatform::new(2).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    );
    common::component_protocol_errors(&pool);
    assert_eq!(pool.state(cpu(0)), SlotState::Online);
    assert_eq!(pool.state(cpu(1)), SlotState::Retired);
    // In a set, beside another pool: the error comes out of the set.
    let other = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    );
    assert_eq!(other.prepare(cpu(1)), Ok(Prepared::New));
    let set = (&other, &pool);
    assert_eq!(set.commit(cpu(1)), Err(Error::NotPrepared));
    assert_eq!(other.state(cpu(1)), SlotState::Online, "commits every part");
    assert_eq!(set.abort(cpu(0)), Err(Error::AlreadyOnline));
}

/// `{:?}` of a pool shows its limits, its magazine size and its figures now.
#[test]
fn a_pool_debug_shows_its_limits_and_figures() {
    let platform = HostPlatform::new(2).unwrap();
    let pool = pool_on(
        &platform,
        HostAlloc,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    );
    let object = platform
        .pinned(|pin| pool.alloc(pin, Obj::new(1)))
        .unwrap()
        .unwrap();
    let shown = format!("{pool:?}");
    assert!(shown.starts_with("PerCpuPool {"), "{shown}");
    assert!(
        shown.contains("limits: Limits { total: 64, per_cpu: 8 }"),
        "{shown}"
    );
    assert!(shown.contains("magazine_size: 4"), "{shown}");
    assert!(
        shown.contains(&format!("stats: {:?}", pool.stats())),
        "{shown}"
    );
    assert!(shown.contains("outstanding: 1"), "{shown}");
    drop(object);
}
