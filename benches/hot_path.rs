//! The hot path: reading the current processor's slot, with the pin held across
//! the loop (as code at `DISPATCH_LEVEL` holds it), through perproc's
//! `PerCpu::current` and through what a driver writer would hand-write instead.
//!
//! Every variant runs the same loop (`baselines::read_loop`): the index from the
//! pin guard (opaque to the compiler on every iteration), the slot, one relaxed
//! load of a counter. Criterion times `iters` reads at once (`iter_custom`), so
//! the per-iteration figure is the cost of one read. See BENCHMARKS.md.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use perproc::host::{HostGuard, HostPlatform};
use perproc::{Platform, ProcessorIndex};

#[path = "baselines/mod.rs"]
mod baselines;

use baselines::{
    index_loop, ours, read_loop, CopyOnGrow, CurrentSlot, Directory, Fixed, Locked, PerThread,
};

/// Processors the simulated machine has, all present.
const PROCESSORS: usize = 64;
/// The processor the benchmark thread runs on (not 0, so no index is trivially
/// zero).
const CURRENT: u32 = 37;

fn time_reads<C: CurrentSlot + ?Sized>(container: &C, pin: &HostGuard<'_>, iters: u64) -> Duration {
    let start = Instant::now();
    black_box(read_loop(black_box(container), pin, iters));
    start.elapsed()
}

fn hot_path(c: &mut Criterion) {
    let platform = HostPlatform::new(u32::try_from(PROCESSORS).unwrap()).unwrap();
    platform
        .bind_current_thread(ProcessorIndex::new(CURRENT).unwrap())
        .unwrap();

    let ours = ours(PROCESSORS);
    let directory = Directory::new(PROCESSORS);
    let copy_on_grow = CopyOnGrow::new();
    for i in 0..PROCESSORS {
        let index = ProcessorIndex::from_usize(i).unwrap();
        ours.prepare(index).unwrap();
        ours.commit(index).unwrap();
        directory.add(i);
        copy_on_grow.add();
    }
    let fixed = Fixed::new(PROCESSORS);
    let locked = Locked::new(PROCESSORS);
    let per_thread = PerThread::new();
    per_thread.touch();

    // Held for the whole group, as a DPC holds DISPATCH_LEVEL.
    let pin = platform.pin();
    let mut group = c.benchmark_group("hot_path");
    group.bench_function("fixed_array", |b| {
        b.iter_custom(|iters| time_reads(&fixed, &pin, iters))
    });
    group.bench_function("perproc", |b| {
        b.iter_custom(|iters| time_reads(&ours, &pin, iters))
    });
    group.bench_function("directory", |b| {
        b.iter_custom(|iters| time_reads(&directory, &pin, iters))
    });
    group.bench_function("copy_on_grow", |b| {
        b.iter_custom(|iters| time_reads(&copy_on_grow, &pin, iters))
    });
    group.bench_function("thread_local", |b| {
        b.iter_custom(|iters| time_reads(&per_thread, &pin, iters))
    });
    group.bench_function("spin_rwlock_vec", |b| {
        b.iter_custom(|iters| time_reads(&locked, &pin, iters))
    });
    group.bench_function("index_only", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            black_box(index_loop(black_box(&pin), iters));
            start.elapsed()
        })
    });
    group.finish();
    drop(pin);
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
