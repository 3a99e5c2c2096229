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
//!
//! `kth_add_cold` does the same but evicts the caches (streams through a buffer
//! larger than the last-level cache) between growing the batch and timing the
//! adds, so every k times adds whose memory is equally cold. That is also how a
//! real hot-add finds a driver's tables (it is a rare event), and it takes the
//! batch's own footprint, which grows with k, out of the comparison.
//! See BENCHMARKS.md.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, SamplingMode, Throughput};
use perproc::{Component, Prepared, ProcessorIndex};

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
    assert_eq!(table.prepare(index(i)).unwrap(), Prepared::New);
    table.commit(index(i)).unwrap();
}

/// `iters` times: `ADDS` containers from `empty`, grown side by side by
/// `grow(container, i)` for i in 0..k-1, then `grow(container, k-1)` on each,
/// timed.
fn time_kth_adds<C>(
    iters: u64,
    k: usize,
    cache: Cache,
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
        if cache == Cache::Cold {
            evict_caches();
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

/// Whether the timed adds find their memory as the growth left it, or evicted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    Warm,
    Cold,
}

/// Bytes streamed through to evict the caches: twice this machine's 32 MiB L3.
const EVICT_BYTES: usize = 64 << 20;

/// Writes one byte in every cache line of a buffer larger than the last-level
/// cache, so nothing the growth touched is still cached.
fn evict_caches() {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::OnceLock;
    static BUFFER: OnceLock<Box<[AtomicU8]>> = OnceLock::new();
    let buffer = BUFFER.get_or_init(|| (0..EVICT_BYTES).map(|_| AtomicU8::new(0)).collect());
    for (n, line) in buffer.iter().step_by(64).enumerate() {
        line.store(n as u8, Ordering::Relaxed); // a plain store; one per line
    }
}

fn kth_add(c: &mut Criterion) {
    kth_add_group(c, "kth_add", Cache::Warm);
    kth_add_group(c, "kth_add_cold", Cache::Cold);
}

fn kth_add_group(c: &mut Criterion, name: &str, cache: Cache) {
    let mut group = c.benchmark_group(name);
    // Growing a batch to 2047 processors costs far more than the adds it sets
    // up: few, flat samples keep the run short.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(2))
        .measurement_time(Duration::from_millis(4));
    for k in KS {
        group.bench_with_input(BenchmarkId::new("perproc", k), &k, |b, &k| {
            b.iter_custom(|iters| time_kth_adds(iters, k, cache, || ours(MAX), add_ours))
        });
        group.bench_with_input(BenchmarkId::new("copy_on_grow", k), &k, |b, &k| {
            b.iter_custom(|iters| {
                time_kth_adds(iters, k, cache, CopyOnGrow::new, |array, _| {
                    array.add();
                })
            })
        });
        group.bench_with_input(BenchmarkId::new("directory", k), &k, |b, &k| {
            b.iter_custom(|iters| {
                time_kth_adds(iters, k, cache, || Directory::new(MAX), |dir, i| dir.add(i))
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
                    let parts = (&first, &second);
                    for i in 0..n {
                        assert_eq!(parts.prepare(index(i)).unwrap(), Prepared::New);
                    }
                    for i in 0..n {
                        parts.commit(index(i)).unwrap();
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
/// Keeps the host heap resident, as a kernel's nonpaged pool is. Left to itself,
/// glibc returns the top of the heap to the system when a batch is dropped
/// (`M_TRIM_THRESHOLD`, 128 KiB), so the next batch's growth faults fresh pages
/// in, and the timed adds, which allocate at the top of the heap, take page
/// faults that grow with the batch's footprint (that is, with k): a property
/// of the host allocator, not of the add. Measured without this, the k-th add
/// of perproc and of the directory both took a 3x to 8x step at k = 1024.
fn keep_heap_resident() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes glibc's tuning parameters; it is called
    // before any benchmark thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

fn main() {
    keep_heap_resident();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
