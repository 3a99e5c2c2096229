//! Instructions per alloc+free pair, repeatably: run under callgrind and read
//! the inclusive counts of the `*_pairs` functions, each `PAIRS` pairs of a
//! 64-byte object: the pool (pinned once per batch of 256, like a DPC; owned
//! boxes given back with `free`, per operation through `PerCpuPool` or through
//! a `LocalPool` made once per batch; and boxes dropped instead, which go back
//! through the pool's home list), a thread-local `Vec` free list, a global
//! `spin::Mutex` free list, heapless's Treiber pool, and `Box`.
//!
//! ```text
//! cargo build --release --example pool_callgrind
//! valgrind --tool=callgrind --callgrind-out-file=target/pool.callgrind \
//!     target/release/examples/pool_callgrind
//! callgrind_annotate --inclusive=yes target/pool.callgrind | grep _pairs
//! ```
//!
//! Divide each function's inclusive Ir by `PAIRS` (printed). `--quick` runs a
//! few pairs only (the test command runs examples that way).

use std::cell::RefCell;
use std::hint::black_box;

use perproc::host::HostPlatform;
use perproc::{Limits, PerCpuPool, Platform, ProcessorIndex};

type Obj = [u64; 8];
const BATCH: u64 = 256;

type Pool = PerCpuPool<Obj, HostPlatform>;

#[inline(never)]
fn perproc_pairs(platform: &HostPlatform, pool: &Pool, pairs: u64) {
    let mut left = pairs;
    while left > 0 {
        let batch = left.min(BATCH);
        platform
            .pinned(|pin| {
                for i in 0..batch {
                    let object = pool.alloc(pin, [i; 8]).expect("within the total");
                    pool.free(pin, black_box(object));
                }
            })
            .expect("pinned");
        left -= batch;
    }
}

#[inline(never)]
fn perproc_local_pairs(platform: &HostPlatform, pool: &Pool, pairs: u64) {
    let mut left = pairs;
    while left > 0 {
        let batch = left.min(BATCH);
        platform
            .pinned(|pin| {
                let local = pool.local(pin);
                for i in 0..batch {
                    let object = local.alloc([i; 8]).expect("within the total");
                    local.free(black_box(object));
                }
            })
            .expect("pinned");
        left -= batch;
    }
}

/// Allocated pinned, then dropped after the pin instead of freed: each drop
/// pushes the object onto the pool's home list (one compare-and-swap), and the
/// pool takes the list back under its lock when its cache and depot run dry.
#[inline(never)]
fn perproc_home_pairs(platform: &HostPlatform, pool: &Pool, pairs: u64) {
    let mut held = Vec::with_capacity(BATCH as usize);
    let mut left = pairs;
    while left > 0 {
        let batch = left.min(BATCH);
        platform
            .pinned(|pin| {
                for i in 0..batch {
                    let object = pool.alloc(pin, [i; 8]).expect("within the total");
                    held.push(black_box(object));
                }
            })
            .expect("pinned");
        // Unpinned: each drop sends its object home.
        held.clear();
        left -= batch;
    }
}

#[inline(never)]
fn tl_vec_pairs(free: &RefCell<Vec<&'static mut Obj>>, pairs: u64) {
    for i in 0..pairs {
        let object = free.borrow_mut().pop().expect("prefilled");
        *object = [i; 8];
        black_box(&mut *object);
        free.borrow_mut().push(object);
    }
}

#[inline(never)]
fn spin_mutex_pairs(free: &spin::Mutex<Vec<&'static mut Obj>>, pairs: u64) {
    for i in 0..pairs {
        let object = free.lock().pop().expect("prefilled");
        *object = [i; 8];
        black_box(&mut *object);
        free.lock().push(object);
    }
}

mod treiber {
    #![allow(missing_docs)] // the macro's struct
    heapless::box_pool!(HeaplessPool: super::Obj);
}
use treiber::HeaplessPool;

#[inline(never)]
fn heapless_pairs(pairs: u64) {
    for i in 0..pairs {
        let mut object = HeaplessPool.alloc([i; 8]).expect("prefilled");
        black_box(&mut *object);
        drop(object);
    }
}

#[inline(never)]
fn box_pairs(pairs: u64) {
    for i in 0..pairs {
        drop(black_box(Box::new([i; 8])));
    }
}

fn main() -> Result<(), perproc::Error> {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let pairs: u64 = if quick { 1_000 } else { 1_000_000 };
    let platform = HostPlatform::new(2)?;
    let pool = PerCpuPool::new(
        &platform,
        Limits {
            total: 4096,
            per_cpu: 256,
        },
    )?;
    let _ = pool.prepare(ProcessorIndex::ZERO)?;
    pool.commit(ProcessorIndex::ZERO)?;
    let prefilled =
        || -> Vec<&'static mut Obj> { (0..1024).map(|_| Box::leak(Box::new([0u64; 8]))).collect() };
    let free = RefCell::new(prefilled());
    let locked = spin::Mutex::new(prefilled());
    for _ in 0..1024 {
        HeaplessPool.manage(Box::leak(Box::new(heapless::pool::boxed::BoxBlock::new())));
    }

    perproc_pairs(&platform, &pool, pairs);
    perproc_local_pairs(&platform, &pool, pairs);
    perproc_home_pairs(&platform, &pool, pairs);
    tl_vec_pairs(&free, pairs);
    spin_mutex_pairs(&locked, pairs);
    heapless_pairs(pairs);
    box_pairs(pairs);

    let stats = pool.stats();
    assert_eq!(stats.outstanding, 0, "{stats:?}");
    println!("PAIRS = {pairs}; pool: {stats:?}");
    Ok(())
}
