#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Per-CPU queues and counters against what a driver writer would otherwise
//! write, on 1 and 2 threads (each thread bound to its own simulated processor
//! and pinned for the whole run, as a DPC is at DISPATCH_LEVEL):
//!
//! - `queue_pair`: one enqueue and one dequeue on the local processor's queue,
//!   against a global `spin::Mutex<VecDeque>` (both threads share it). The
//!   dequeue is `pop` (claims the consumer side each time: one CAS) or, in
//!   `perproc_held_consumer`, a `Consumer` claimed once before the loop.
//! - `queue_batch32`: 32 enqueues then one drain of 32, per item.
//! - `counter_add`: one add to the local processor's counter, against a plain
//!   non-atomic increment of a counter the thread owns.
//!
//! Each measurement is a tight loop timed inside the threads (spawning them is
//! not counted); with 2 threads the slower one's time is reported.
//! `cargo bench --bench queue`; the ratios that matter are within one run.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use perproc::host::HostPlatform;
use perproc::{PerCpuCounters, PerCpuQueue, Platform, ProcessorIndex};

const CAPACITY: usize = 1024;

perproc::counters! {
    struct Ops { adds }
}

fn cpu(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap()
}

/// Runs `work(thread, iters)` on `threads` threads bound to processors
/// `0..threads`; each returns the time of its own loop; the slowest counts.
fn on_threads(
    platform: &HostPlatform,
    threads: u32,
    iters: u64,
    work: &(dyn Fn(ProcessorIndex, u64) -> Duration + Sync),
) -> Duration {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    platform.bind_current_thread(cpu(t)).unwrap();
                    work(cpu(t), iters)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

fn queues(c: &mut Criterion) {
    let platform = HostPlatform::new(2).unwrap();
    let queue: PerCpuQueue<u64, HostPlatform> = PerCpuQueue::new(&platform, CAPACITY).unwrap();
    for i in 0..2 {
        let _ = queue.prepare(cpu(i)).unwrap();
        queue.commit(cpu(i)).unwrap();
    }
    let global = spin::Mutex::new(VecDeque::<u64>::with_capacity(CAPACITY));

    let mut group = c.benchmark_group("queue_pair");
    for threads in [1u32, 2] {
        let barrier = Barrier::new(threads as usize);
        group.bench_function(BenchmarkId::new("perproc", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(&platform, threads, iters, &|me, iters| {
                    platform
                        .pinned(|pin| {
                            barrier.wait();
                            let start = Instant::now();
                            for i in 0..iters {
                                queue.push(pin, black_box(i)).unwrap();
                                black_box(queue.pop(me));
                            }
                            start.elapsed()
                        })
                        .unwrap()
                })
            })
        });
        // A DPC working off its own queue: the consumer side claimed once.
        group.bench_function(BenchmarkId::new("perproc_held_consumer", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(&platform, threads, iters, &|me, iters| {
                    platform
                        .pinned(|pin| {
                            let mut consumer = queue.consumer(me).unwrap();
                            barrier.wait();
                            let start = Instant::now();
                            for i in 0..iters {
                                queue.push(pin, black_box(i)).unwrap();
                                black_box(consumer.pop());
                            }
                            start.elapsed()
                        })
                        .unwrap()
                })
            })
        });
        group.bench_function(BenchmarkId::new("spin_mutex_vecdeque", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(&platform, threads, iters, &|_, iters| {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        global.lock().push_back(black_box(i));
                        black_box(global.lock().pop_front());
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    // Per item: 32 pushes, then one drain (one claim) of 32.
    let mut group = c.benchmark_group("queue_batch32");
    for threads in [1u32, 2] {
        let barrier = Barrier::new(threads as usize);
        group.bench_function(BenchmarkId::new("perproc", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(&platform, threads, iters, &|me, iters| {
                    platform
                        .pinned(|pin| {
                            barrier.wait();
                            let start = Instant::now();
                            let mut left = iters;
                            while left > 0 {
                                let n = left.min(32);
                                for i in 0..n {
                                    queue.push(pin, black_box(i)).unwrap();
                                }
                                for item in queue.drain(me) {
                                    black_box(item);
                                }
                                left -= n;
                            }
                            start.elapsed()
                        })
                        .unwrap()
                })
            })
        });
        group.bench_function(BenchmarkId::new("spin_mutex_vecdeque", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(&platform, threads, iters, &|_, iters| {
                    barrier.wait();
                    let start = Instant::now();
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(32);
                        for i in 0..n {
                            global.lock().push_back(black_box(i));
                        }
                        let mut locked = global.lock();
                        for _ in 0..n {
                            black_box(locked.pop_front());
                        }
                        drop(locked);
                        left -= n;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn counters(c: &mut Criterion) {
    let platform = HostPlatform::new(2).unwrap();
    let stats = PerCpuCounters::<Ops, _>::new(&platform).unwrap();
    for i in 0..2 {
        let _ = stats.prepare(cpu(i)).unwrap();
        stats.commit(cpu(i)).unwrap();
    }
    let mut group = c.benchmark_group("counter_add");
    for threads in [1u32, 2] {
        let barrier = Barrier::new(threads as usize);
        group.bench_function(BenchmarkId::new("perproc", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(&platform, threads, iters, &|_, iters| {
                    platform
                        .pinned(|pin| {
                            barrier.wait();
                            let start = Instant::now();
                            for _ in 0..iters {
                                stats.add(pin, Ops::adds, black_box(1));
                            }
                            start.elapsed()
                        })
                        .unwrap()
                })
            })
        });
        group.bench_function(BenchmarkId::new("perproc_local", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(&platform, threads, iters, &|_, iters| {
                    // A DPC's batch: the block looked up once under the pin.
                    platform
                        .pinned(|pin| {
                            let local = stats.local(pin);
                            barrier.wait();
                            let start = Instant::now();
                            for _ in 0..iters {
                                local.add(Ops::adds, black_box(1));
                            }
                            start.elapsed()
                        })
                        .unwrap()
                })
            })
        });
        group.bench_function(BenchmarkId::new("plain_per_thread_heap", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(&platform, threads, iters, &|_, iters| {
                    // The thread's own counter off the stack, where a driver
                    // keeps per-thread or per-device state: a control for the
                    // stack baseline (the two measure the same here).
                    let mut count = Box::new(0u64);
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        *black_box(&mut *count) += black_box(1);
                    }
                    let elapsed = start.elapsed();
                    black_box(&count);
                    elapsed
                })
            })
        });
        group.bench_function(BenchmarkId::new("plain_per_thread", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(&platform, threads, iters, &|_, iters| {
                    // The thread's own counter, on its own stack (no sharing).
                    let mut count = 0u64;
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        *black_box(&mut count) += black_box(1);
                    }
                    let elapsed = start.elapsed();
                    black_box(count);
                    elapsed
                })
            })
        });
    }
    group.finish();
    assert!(stats.sum(Ops::adds) > 0);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = queues, counters
}
criterion_main!(benches);
