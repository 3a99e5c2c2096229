//! Pool: one allocation and one free of a 64-byte object (a pair), against the
//! baselines a driver would otherwise write, on one thread and with a second
//! thread doing the same thing at the same time.
//!
//! Run: `cargo bench --bench pool`. Ratios within one run are what counts.
//!
//! - `tl_vec`: a thread-local `Vec` free list of preallocated objects (the
//!   floor: no sharing, no atomics);
//! - `spin_mutex`: one global `spin::Mutex<Vec<_>>` free list (a driver's
//!   single lookaside list under a spin lock);
//! - `box`: `Box::new` and drop (the system allocator);
//! - `heapless`: `heapless::pool::boxed` (a tagged Treiber stack, lock-free);
//! - `perproc_raw`: `PerCpuPool::alloc_raw` / `free_raw` (each looks up the
//!   processor's cache);
//! - `perproc_box`: `PerCpuPool::alloc` / `PerCpuPool::free(pin, boxed)` (the
//!   owned box given back on the fast path);
//! - `perproc_local`: `PerCpuPool::local(pin)` once per batch, then
//!   `LocalPool::alloc` / `free` (the cache is looked up once per batch);
//! - `perproc_home`: `PerCpuPool::alloc` pinned, then the batch's boxes dropped
//!   after the pin (a driver that lets boxes go instead of freeing them): each
//!   drop pushes onto the pool's home list with one compare-and-swap, and the
//!   pool takes the list back under its lock when the cache and depot run dry.
//!   (Plus one `Vec` to hold a batch, allocated once per batch.)
//!
//! The pool is used the way a DPC uses it: pinned once per batch of
//! [`BATCH`] pairs (on the host a pin is one compare-and-swap on the simulated
//! processor's claim; on Windows, raising to `DISPATCH_LEVEL`), so the pin's cost
//! is spread over the batch. Every variant runs in the same batches. With two
//! threads, the second one runs the same variant on its own processor (its own
//! thread-local list; the same global list or Treiber stack) while the first one
//! is timed.

use std::cell::RefCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use heapless::pool::boxed::BoxBlock;
use perproc::host::HostPlatform;
use perproc::{Limits, PerCpuPool, Platform, Prepared, ProcessorIndex};

/// The object: 64 bytes.
type Obj = [u64; 8];

/// Pairs per pin (a DPC's batch of completions).
const BATCH: u64 = 256;

/// Free objects each baseline starts with.
const PREFILL: usize = 1024;

/// One alloc+free pair per call, `n` calls.
trait Variant: Sync {
    /// Runs `n` pairs on the calling thread.
    fn pairs(&self, n: u64);
}

// --- thread-local Vec free list --------------------------------------------

/// `PREFILL` preallocated objects, as a driver would carve them at start.
fn prefilled() -> Vec<&'static mut Obj> {
    (0..PREFILL).map(|_| Box::leak(Box::new([0; 8]))).collect()
}

thread_local! {
    static TL_FREE: RefCell<Vec<&'static mut Obj>> = RefCell::new(prefilled());
}

struct TlVec;

impl Variant for TlVec {
    fn pairs(&self, n: u64) {
        TL_FREE.with(|free| {
            for i in 0..n {
                let object = free.borrow_mut().pop().expect("prefilled");
                *object = [i; 8];
                black_box(&mut *object);
                free.borrow_mut().push(object);
            }
        });
    }
}

// --- global spin-locked free list ------------------------------------------

struct SpinList(spin::Mutex<Vec<&'static mut Obj>>);

impl Variant for SpinList {
    fn pairs(&self, n: u64) {
        for i in 0..n {
            let object = self.0.lock().pop().expect("prefilled");
            *object = [i; 8];
            black_box(&mut *object);
            self.0.lock().push(object);
        }
    }
}

// --- Box --------------------------------------------------------------------

struct Boxed;

impl Variant for Boxed {
    fn pairs(&self, n: u64) {
        for i in 0..n {
            let object = black_box(Box::new([i; 8]));
            drop(object);
        }
    }
}

// --- heapless Treiber pool ---------------------------------------------------

mod treiber {
    #![allow(missing_docs)] // the macro's struct
    heapless::box_pool!(HeaplessPool: super::Obj);
}
use treiber::HeaplessPool;

struct Heapless;

impl Heapless {
    fn new() -> Self {
        for _ in 0..PREFILL {
            HeaplessPool.manage(Box::leak(Box::new(BoxBlock::new())));
        }
        Heapless
    }
}

impl Variant for Heapless {
    fn pairs(&self, n: u64) {
        for i in 0..n {
            let mut object = HeaplessPool.alloc([i; 8]).expect("prefilled");
            black_box(&mut *object);
            drop(object);
        }
    }
}

// --- perproc -----------------------------------------------------------------

/// Which of the pool's APIs a variant uses.
#[derive(Clone, Copy)]
enum Api {
    Raw,
    Box,
    Local,
    Home,
    /// A pin per pair (what a dispatch routine called per request does): the
    /// pinning itself, on the host its claim on the processor, is measured too.
    PinEach,
}

struct Perproc {
    platform: HostPlatform,
    pool: PerCpuPool<Obj, HostPlatform>,
    api: Api,
}

impl Perproc {
    fn new(platform: &HostPlatform, api: Api) -> Self {
        let pool = PerCpuPool::new(
            platform,
            Limits {
                total: 4 * PREFILL,
                per_cpu: 256,
            },
        )
        .unwrap();
        for i in 0..2 {
            let index = ProcessorIndex::new(i).unwrap();
            assert_eq!(pool.prepare(index).unwrap(), Prepared::New);
            pool.commit(index).unwrap();
        }
        Perproc {
            platform: *platform,
            pool,
            api,
        }
    }
}

impl Variant for Perproc {
    fn pairs(&self, n: u64) {
        let pool = &self.pool;
        if let Api::Home = self.api {
            let mut batch = Vec::with_capacity(usize::try_from(n).unwrap());
            self.platform
                .pinned(|pin| {
                    for i in 0..n {
                        let mut object = pool.alloc(pin, [i; 8]).expect("within the total");
                        black_box(&mut *object);
                        batch.push(object);
                    }
                })
                .unwrap();
            // Unpinned: each drop sends its object home.
            drop(black_box(batch));
            return;
        }
        if let Api::PinEach = self.api {
            for i in 0..n {
                self.platform
                    .pinned(|pin| {
                        let mut object = pool.alloc(pin, [i; 8]).expect("within the total");
                        black_box(&mut *object);
                        pool.free(pin, object);
                    })
                    .unwrap();
            }
            return;
        }
        self.platform
            .pinned(|pin| match self.api {
                Api::Raw => {
                    for i in 0..n {
                        let object = pool.alloc_raw(pin, [i; 8]).expect("within the total");
                        black_box(object);
                        // SAFETY: allocated just above, freed once.
                        unsafe { pool.free_raw(pin, object) };
                    }
                }
                Api::Box | Api::Home | Api::PinEach => {
                    for i in 0..n {
                        let mut object = pool.alloc(pin, [i; 8]).expect("within the total");
                        black_box(&mut *object);
                        pool.free(pin, object);
                    }
                }
                Api::Local => {
                    let local = pool.local(pin);
                    for i in 0..n {
                        let mut object = local.alloc([i; 8]).expect("within the total");
                        black_box(&mut *object);
                        local.free(object);
                    }
                }
            })
            .unwrap();
    }
}

// --- harness -----------------------------------------------------------------

/// Runs `iters` pairs in batches on processor 0; with `second`, another thread
/// runs the same variant on processor 1 throughout. Times processor 0's pairs.
fn timed(platform: &HostPlatform, variant: &dyn Variant, iters: u64, second: bool) -> Duration {
    let run = |n: u64| {
        let mut left = n;
        while left > 0 {
            let batch = left.min(BATCH);
            variant.pairs(batch);
            left -= batch;
        }
    };
    platform.bind_current_thread(ProcessorIndex::ZERO).unwrap();
    if !second {
        let start = Instant::now();
        run(iters);
        return start.elapsed();
    }
    let stop = AtomicBool::new(false);
    let running = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            platform
                .bind_current_thread(ProcessorIndex::new(1).unwrap())
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                run(BATCH);
                running.store(true, Ordering::Relaxed);
            }
        });
        while !running.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        let start = Instant::now();
        run(iters);
        let elapsed = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        elapsed
    })
}

fn pool(c: &mut Criterion) {
    let platform = HostPlatform::new(2).unwrap();
    let spin_list = SpinList(spin::Mutex::new(prefilled()));
    let heapless = Heapless::new();
    let raw = Perproc::new(&platform, Api::Raw);
    let handles = Perproc::new(&platform, Api::Box);
    let local = Perproc::new(&platform, Api::Local);
    let home = Perproc::new(&platform, Api::Home);
    let pin_each = Perproc::new(&platform, Api::PinEach);
    let variants: [(&str, &dyn Variant); 9] = [
        ("tl_vec", &TlVec),
        ("spin_mutex", &spin_list),
        ("box", &Boxed),
        ("heapless", &heapless),
        ("perproc_raw", &raw),
        ("perproc_box", &handles),
        ("perproc_local", &local),
        ("perproc_home", &home),
        ("perproc_pin_each", &pin_each),
    ];
    for (threads, second) in [("1 thread", false), ("2 threads", true)] {
        let mut group = c.benchmark_group(format!("pool/{threads}"));
        group
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .sample_size(40);
        for (name, variant) in variants {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| timed(&platform, variant, iters, second))
            });
        }
        group.finish();
    }
    for (name, pool) in [
        ("perproc_raw", &raw),
        ("perproc_box", &handles),
        ("perproc_local", &local),
        ("perproc_home", &home),
    ] {
        let hits: u64 = pool.pool.processors().map(|p| p.hits()).sum();
        let misses: u64 = pool.pool.processors().map(|p| p.misses()).sum();
        eprintln!("{name}: {hits} hits, {misses} misses (pinned batches of {BATCH})");
    }
}

criterion_group!(benches, pool);
criterion_main!(benches);
