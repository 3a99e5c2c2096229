//! Loom models of the per-CPU pool: what runs at once on different processors.
//!
//! Magazines of one round (`per_cpu: 2`) so that nearly every operation goes
//! to the depot, a handful of objects, and at most three threads. Each thread
//! pins a processor of its own, as the PinGuard contract demands; what loom
//! checks is that no two threads touch the same magazine or cache without
//! ordering (the caches' and magazines' cells), that the depot lock and the
//! table's publication order everything else, and that every object is handed
//! out once and comes back.
#![cfg(loom)]

use std::marker::PhantomData;
use std::ptr::NonNull;

use loom::sync::Arc;
use loom::thread;
use perproc::host::{HostAlloc, HostPlatform};
use perproc::{Limits, PerCpuPool, PinGuard, ProcessorIndex};

type Pool = PerCpuPool<u64, HostPlatform, HostAlloc>;

fn cpu(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap()
}

/// A model thread's claim on a processor. Each model gives each processor to
/// one thread at a time (threads hand a processor on only through spawn and
/// join, which order them).
struct Pinned {
    index: ProcessorIndex,
    _thread: PhantomData<*const ()>,
}

fn pin(i: u32) -> Pinned {
    Pinned {
        index: cpu(i),
        _thread: PhantomData,
    }
}

// SAFETY: 1. fixed index; 2. the models use each index on one thread at a
// time; 3. the raw-pointer marker makes it neither Send nor Sync; 4. no
// interrupts; 5. handing a processor from one thread to another goes through
// spawn or join, which order the two.
unsafe impl PinGuard for Pinned {
    fn processor(&self) -> ProcessorIndex {
        self.index
    }
}

/// An object in flight between threads.
struct Object(NonNull<u64>);

// SAFETY: a `u64` owned by whoever holds the `Object`.
unsafe impl Send for Object {}

fn new_pool(total: usize) -> Arc<Pool> {
    let platform = HostPlatform::new(4).unwrap();
    Arc::new(Pool::with_allocator(platform, HostAlloc, Limits { total, per_cpu: 2 }).unwrap())
}

fn alloc(pool: &Pool, on: &Pinned, value: u64) -> Object {
    Object(pool.alloc_raw(on, value).unwrap())
}

fn free(pool: &Pool, on: &Pinned, object: Object, value: u64) {
    // SAFETY: handed out by this pool, not freed yet; checked, then freed once.
    unsafe {
        assert_eq!(*object.0.as_ref(), value, "object clobbered");
        pool.free_raw(on, object.0);
    }
}

/// Everything is back and accounted for; tears the pool down.
fn assert_all_back(pool: Arc<Pool>) {
    let stats = pool.stats();
    assert_eq!(stats.outstanding, 0, "{stats:?}");
    assert_eq!(
        stats.objects,
        stats.in_depot + stats.cached + stats.stranded,
        "{stats:?}"
    );
    let pool = Arc::try_unwrap(pool).ok().unwrap();
    assert_eq!(pool.teardown(), 0);
}

#[test]
fn local_alloc_races_a_remote_free() {
    loom::model(|| {
        let pool = new_pool(4);
        for i in 0..2 {
            pool.prepare(cpu(i)).unwrap();
            pool.commit(cpu(i)).unwrap();
        }
        // Allocated on processor 0, completed on processor 1.
        let x = alloc(&pool, &pin(0), 10);
        let remote = {
            let pool = pool.clone();
            thread::spawn(move || {
                let on = pin(1);
                free(&pool, &on, x, 10);
                // Processor 1 reuses what it was given, then needs the depot.
                let y = alloc(&pool, &on, 11);
                let z = alloc(&pool, &on, 12);
                assert_ne!(y.0, z.0);
                free(&pool, &on, y, 11);
                free(&pool, &on, z, 12);
            })
        };
        let on = pin(0);
        let a = alloc(&pool, &on, 1);
        let b = alloc(&pool, &on, 2);
        assert_ne!(a.0, b.0);
        free(&pool, &on, a, 1);
        free(&pool, &on, b, 2);
        drop(on);
        remote.join().unwrap();
        assert_all_back(pool);
    });
}

#[test]
fn depot_exchange_races_a_hot_add() {
    loom::model(|| {
        let pool = new_pool(4);
        pool.prepare(cpu(0)).unwrap();
        pool.commit(cpu(0)).unwrap();
        let add = {
            let pool = pool.clone();
            thread::spawn(move || {
                // AddStart for processor 1, then code runs on it at once.
                pool.prepare(cpu(1)).unwrap();
                let on = pin(1);
                let x = alloc(&pool, &on, 7);
                free(&pool, &on, x, 7);
                pool.commit(cpu(1)).unwrap();
            })
        };
        // Processor 0 overflows its one-round magazines: depot exchanges. A
        // driver logs statistics meanwhile (they walk every cache, the new one
        // too, while it is published).
        let on = pin(0);
        let a = alloc(&pool, &on, 1);
        let b = alloc(&pool, &on, 2);
        let stats = pool.stats();
        assert!(stats.objects <= 4, "{stats:?}");
        free(&pool, &on, a, 1);
        free(&pool, &on, b, 2);
        drop(on);
        add.join().unwrap();
        assert_all_back(pool);
    });
}

#[test]
fn abort_races_frees_on_the_failing_processor() {
    loom::model(|| {
        let pool = new_pool(4);
        pool.prepare(cpu(0)).unwrap();
        pool.commit(cpu(0)).unwrap();
        pool.prepare(cpu(1)).unwrap(); // AddStart; the add will fail
        let on = pin(0);
        let x = alloc(&pool, &on, 1);
        let y = alloc(&pool, &on, 2);
        drop(on);
        // Code on processor 1 completes work while AddFailure runs elsewhere.
        let frees = {
            let pool = pool.clone();
            thread::spawn(move || {
                // One pinned batch: the cache is looked up once, before or
                // after the abort hides it, and used throughout.
                let on = pin(1);
                let local = pool.local(&on);
                // SAFETY: handed out by this pool, checked, freed once.
                unsafe {
                    assert_eq!(*x.0.as_ref(), 1);
                    local.free_raw(x.0);
                    assert_eq!(*y.0.as_ref(), 2);
                    local.free_raw(y.0);
                }
                let z = local.alloc_raw(3).unwrap();
                // SAFETY: as above.
                unsafe {
                    assert_eq!(*z.as_ref(), 3);
                    local.free_raw(z);
                }
            })
        };
        let abort = {
            let pool = pool.clone();
            thread::spawn(move || {
                pool.abort(cpu(1)).unwrap();
                // Reading the retired cache's figures races its owner: atomics.
                let _ = pool.processor_stats(cpu(1)).unwrap();
            })
        };
        frees.join().unwrap();
        abort.join().unwrap();
        let stats = pool.stats();
        assert!(pool.processor_stats(cpu(1)).unwrap().retired);
        assert_eq!(stats.outstanding, 0, "{stats:?}");
        // Code pinned there later hands back whatever was stranded.
        let on = pin(1);
        let w = alloc(&pool, &on, 4);
        free(&pool, &on, w, 4);
        drop(on);
        assert_eq!(pool.stats().stranded, 0);
        assert_all_back(pool);
    });
}

#[test]
fn a_new_add_races_the_owner_handing_back_a_stranded_cache() {
    loom::model(|| {
        let pool = new_pool(4);
        pool.prepare(cpu(1)).unwrap();
        // Processor 1 ran code and cached objects, then its add failed.
        let on = pin(1);
        let x = alloc(&pool, &on, 1);
        free(&pool, &on, x, 1);
        drop(on);
        pool.abort(cpu(1)).unwrap();
        assert!(pool.stats().stranded > 0);
        // The next add of processor 1 revives the cache while code pinned there
        // hands it back (or uses it, if the revival came first).
        let owner = {
            let pool = pool.clone();
            thread::spawn(move || {
                let on = pin(1);
                let y = alloc(&pool, &on, 2);
                free(&pool, &on, y, 2);
            })
        };
        let add = {
            let pool = pool.clone();
            thread::spawn(move || {
                pool.prepare(cpu(1)).unwrap();
                pool.commit(cpu(1)).unwrap();
            })
        };
        owner.join().unwrap();
        add.join().unwrap();
        assert!(!pool.processor_stats(cpu(1)).unwrap().retired);
        assert_all_back(pool);
    });
}
