//! Hot-add growth: the cost of the k-th add (prepare + commit) as processors
//! accumulate, and of registration replaying every present processor.
//!
//! The k-th add is measured on containers grown to k - 1 processors by k - 1
//! real adds. One criterion iteration grows `ADDS` containers side by side
//! (untimed: add 0 to each, then add 1 to each, ...), times the k-th add of
//! each as one span (so the clock's own cost, about 50 ns here, is spread over
//! `ADDS` adds the same way for every k however criterion plans its samples),
//! then drops them (untimed). Only the adds are inside the span. The reported
//! time is per `ADDS` adds. (No throughput is set on this group: with one,
//! criterion would plot against it instead of against k.)
//!
//! Why side by side: every container is then in the state its (k-1)-th add
//! left, with what that add touched still in the caches, for every k. Grown
//! one after the other, the first containers of a batch would be cold for
//! large k (the later ones' slots push them out of the caches) and warm for
//! small k, and the figure would measure the setup, not the add.
//! See BENCHMARKS.md.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use perproc::{Components, ProcessorIndex};

#[path = "baselines/mod.rs"]
mod baselines;

use baselines::{ours, CopyOnGrow, Directory, Ours};

/// The machine's maximum processor count: every table is sized for it.
const MAX: usize = 2048;
/// Adds (one per container of a batch) per criterion iteration; the
/// environment variable `GROWTH_BATCH` overrides it (BENCHMARKS.md uses 4 to
/// show what the batch's own memory footprint does to the figures).
const ADDS: usize = 16;

fn batch_size() -> usize {
    std::env::var("GROWTH_BATCH")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(ADDS)
}
/// The k at which the k-th add is measured (1-based: k = 1 is the first add).
const KS: [usize; 6] = [1, 64, 256, 512, 1024, 2048];
/// Processors a registration replays.
const REPLAYS: [usize; 3] = [64, 512, 2048];

fn index(i: usize) -> ProcessorIndex {
    ProcessorIndex::from_usize(i).unwrap()
}

/// Adds processor `i` to perproc's container (prepare, then commit).
fn add_ours(table: &Ours, i: usize) {
    table.prepare(index(i)).unwrap();
    table.commit(index(i)).unwrap();
}

/// `iters` times: `ADDS` containers from `empty`, grown side by side by
/// `grow(container, i)` for i in 0..k-1, then `grow(container, k-1)` on each,
/// timed.
fn time_kth_adds<C>(
    iters: u64,
    k: usize,
    empty: impl Fn() -> C,
    grow: impl Fn(&C, usize),
) -> Duration {
    let mut total = Duration::ZERO;
    let adds = batch_size();
    for _ in 0..iters {
        let batch: Vec<C> = (0..adds).map(|_| empty()).collect();
        for i in 0..k - 1 {
            for container in &batch {
                grow(container, i);
            }
        }
        let start = Instant::now();
        for container in &batch {
            grow(black_box(container), k - 1);
        }
        total += start.elapsed();
        drop(batch);
    }
    total
}

fn kth_add(c: &mut Criterion) {
    let mut group = c.benchmark_group("kth_add");
    // Growing a batch to 2047 processors costs far more than the adds it sets
    // up: few, flat samples keep the run short.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(2))
        .measurement_time(Duration::from_millis(4));
    for k in KS {
        group.bench_with_input(BenchmarkId::new("perproc", k), &k, |b, &k| {
            b.iter_custom(|iters| time_kth_adds(iters, k, || ours(MAX), add_ours))
        });
        group.bench_with_input(BenchmarkId::new("copy_on_grow", k), &k, |b, &k| {
            b.iter_custom(|iters| {
                time_kth_adds(iters, k, CopyOnGrow::new, |array, _| {
                    array.add();
                })
            })
        });
        group.bench_with_input(BenchmarkId::new("directory", k), &k, |b, &k| {
            b.iter_custom(|iters| {
                time_kth_adds(iters, k, || Directory::new(MAX), |dir, i| dir.add(i))
            })
        });
    }
    group.finish();
}

/// Registration with ADD_EXISTING: Start for every present processor in index
/// order, then Complete for every one, through two components (as a driver with
/// per-CPU statistics and per-CPU queues would register).
fn registration(c: &mut Criterion) {
    let mut group = c.benchmark_group("registration");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in REPLAYS {
        group.throughput(Throughput::Elements(u64::try_from(n).unwrap()));
        group.bench_with_input(BenchmarkId::new("perproc", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first = ours(MAX);
                    let second = ours(MAX);
                    let start = Instant::now();
                    let parts = Components::new([&first, &second]);
                    for i in 0..n {
                        parts.start(index(i)).unwrap();
                    }
                    for i in 0..n {
                        parts.complete(index(i)).unwrap();
                    }
                    total += start.elapsed();
                }
                total
            })
        });
        group.bench_with_input(BenchmarkId::new("copy_on_grow", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let first = CopyOnGrow::new();
                    let second = CopyOnGrow::new();
                    let start = Instant::now();
                    for _ in 0..n {
                        black_box(&first).add();
                        black_box(&second).add();
                    }
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, kth_add, registration);
criterion_main!(benches);
