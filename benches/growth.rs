//! Hot-add growth: the cost of the k-th add (prepare + commit) as processors
//! accumulate, and of registration replaying every present processor.
//!
//! The k-th add is measured on containers already grown to k - 1 processors.
//! One criterion iteration builds `ADDS` such containers (untimed), times the
//! k-th add of each as one span (so the clock's own cost is spread over `ADDS`
//! adds, the same way for every k however criterion plans its samples), then
//! drops them (untimed). Only the adds are inside the span. The reported time
//! is per `ADDS` adds (criterion's throughput line gives adds per second).
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
/// Adds (one per fresh container) per criterion iteration.
const ADDS: u64 = 16;
/// The k at which the k-th add is measured (1-based: k = 1 is the first add).
const KS: [usize; 6] = [1, 64, 256, 512, 1024, 2048];
/// Processors a registration replays.
const REPLAYS: [usize; 3] = [64, 512, 2048];

fn index(i: usize) -> ProcessorIndex {
    ProcessorIndex::from_usize(i).unwrap()
}

fn ours_with(present: usize) -> Ours {
    let table = ours(MAX);
    for i in 0..present {
        table.prepare(index(i)).unwrap();
        table.commit(index(i)).unwrap();
    }
    table
}

fn directory_with(present: usize) -> Directory {
    let directory = Directory::new(MAX);
    for i in 0..present {
        directory.add(i);
    }
    directory
}

/// `iters` times: `ADDS` containers made by `build`, then `add` on each, timed.
fn time_adds<C>(iters: u64, build: impl Fn() -> C, add: impl Fn(&C)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let containers: Vec<C> = (0..ADDS).map(|_| build()).collect();
        let start = Instant::now();
        for container in &containers {
            add(black_box(container));
        }
        total += start.elapsed();
        drop(containers);
    }
    total
}

fn kth_add(c: &mut Criterion) {
    let mut group = c.benchmark_group("kth_add");
    // Building a container of 2047 processors costs far more than the add it
    // sets up: few, flat samples keep the run short.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .throughput(Throughput::Elements(ADDS))
        .warm_up_time(Duration::from_millis(2))
        .measurement_time(Duration::from_millis(4));
    for k in KS {
        let new = k - 1;
        group.bench_with_input(BenchmarkId::new("perproc", k), &k, |b, _| {
            b.iter_custom(|iters| {
                time_adds(
                    iters,
                    || ours_with(new),
                    |table| {
                        table.prepare(index(new)).unwrap();
                        table.commit(index(new)).unwrap();
                    },
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("copy_on_grow", k), &k, |b, _| {
            b.iter_custom(|iters| {
                time_adds(
                    iters,
                    || CopyOnGrow::with_present(new),
                    |array| {
                        array.add();
                    },
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("directory", k), &k, |b, _| {
            b.iter_custom(|iters| time_adds(iters, || directory_with(new), |dir| dir.add(new)))
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
                    let first = ours_with(0);
                    let second = ours_with(0);
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
