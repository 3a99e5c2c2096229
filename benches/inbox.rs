#![allow(missing_docs)] // criterion_group! generates undocumented items
//! The steering inbox against what a network driver writer would otherwise
//! write, on 1 and 2 threads (each bound to its own simulated processor and
//! pinned for the whole run, as a DPC is at DISPATCH_LEVEL):
//!
//! - `inbox_pair`: per iteration, one push to the *next* processor's queue
//!   (`(me + 1) % threads`: with 2 threads each steers to the other, so every
//!   item crosses cores; with 1 thread to itself) and one pop of the thread's
//!   own queue: each thread makes `n` successful pushes and `n` successful
//!   pops, retrying a push to a full queue and a pop of an empty one (see
//!   `steer_loop`). `perproc_held` pops with an `InboxConsumer` claimed once
//!   (a DPC loop); `perproc_pop` claims per pop (`PerCpuInbox::pop`: one CAS
//!   more). Against a global `spin::Mutex<VecDeque>` (both threads share it; a
//!   push and a pop per iteration, no steering), a `spin::Mutex<VecDeque>` per
//!   processor (cache-padded, bounded at the same capacity), and a
//!   `crossbeam_queue::ArrayQueue` per processor (cache-padded).
//! - `local_pop`: pops only, 512 at a time from a filled queue (the fill is not
//!   timed): the inbox's held consumer against `PerCpuQueue`'s.
//!
//! Each measurement is a tight loop timed inside the threads (spawning is not
//! counted); with 2 threads the slower one's time is reported.
//! `cargo bench --bench inbox`; the ratios that matter are within one run.
//!
//! Instruction counts: the same binary with `--callgrind VARIANT N` runs one
//! single-thread loop of `N` iterations in a function named `cg_VARIANT` and
//! exits; count only that function with callgrind:
//!
//! ```text
//! bin=$(cargo bench --bench inbox --no-run --message-format=json 2>/dev/null \
//!   | sed -n 's/.*"executable":"\([^"]*inbox[^"]*\)".*/\1/p')
//! valgrind --tool=callgrind --toggle-collect='*cg_*' --callgrind-out-file=/dev/null \
//!   "$bin" --callgrind perproc_held 100000 2>&1 | grep Collected
//! ```
//!
//! (Collected / N = instructions per iteration, loop included.) Variants:
//! `perproc_held`, `perproc_pop`, `global_mutex`, `per_cpu_mutex`,
//! `array_queue`, `queue_held` (the `PerCpuQueue` push + held pop), and the pop
//! only loops `inbox_pop_only`, `queue_pop_only`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use perproc::host::HostPlatform;
use perproc::{InboxConsumer, PerCpuInbox, PerCpuQueue, PinGuard, Platform, ProcessorIndex};

const CAPACITY: usize = 1024;
/// Items per untimed fill of the pop-only loops.
const CHUNK: u64 = 512;

type Inbox = PerCpuInbox<u64, HostPlatform>;
type Queue = PerCpuQueue<u64, HostPlatform>;
type Pin<'a> = PinGuard<'a, HostPlatform>;

fn cpu(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap()
}

/// Everything the loops run on, for `threads` processors.
struct Setup {
    platform: HostPlatform,
    inbox: Inbox,
    queue: Queue,
    global: spin::Mutex<VecDeque<u64>>,
    per_cpu: Vec<CachePadded<spin::Mutex<VecDeque<u64>>>>,
    array: Vec<CachePadded<ArrayQueue<u64>>>,
}

impl Setup {
    fn new(processors: u32) -> Self {
        let platform = HostPlatform::new(processors).unwrap();
        let inbox = Inbox::new(&platform, CAPACITY).unwrap();
        let queue = Queue::new(&platform, CAPACITY).unwrap();
        for i in 0..processors {
            let _ = inbox.prepare(cpu(i)).unwrap();
            inbox.commit(cpu(i)).unwrap();
            let _ = queue.prepare(cpu(i)).unwrap();
            queue.commit(cpu(i)).unwrap();
        }
        let n = processors as usize;
        Self {
            platform,
            inbox,
            queue,
            global: spin::Mutex::new(VecDeque::with_capacity(CAPACITY)),
            per_cpu: (0..n)
                .map(|_| CachePadded::new(spin::Mutex::new(VecDeque::with_capacity(CAPACITY))))
                .collect(),
            array: (0..n)
                .map(|_| CachePadded::new(ArrayQueue::new(CAPACITY)))
                .collect(),
        }
    }
}

// The loops, one function each (callgrind counts them by name).

/// The steering loop every per-processor variant runs: `n` successful pushes
/// to the target and `n` successful pops of the thread's own queue (its
/// partner pushes `n` to it), trying one of each per turn. A push that finds
/// the target full, or a pop that finds nothing yet, costs its time and is
/// tried again, so no variant gains by failing fast. After 256 turns without
/// progress the thread yields (its partner may have lost its vCPU).
#[inline(always)]
fn steer_loop(
    n: u64,
    mut push: impl FnMut(u64) -> bool,
    mut pop: impl FnMut() -> Option<u64>,
) -> u64 {
    let (mut pushed, mut popped, mut sum, mut idle) = (0, 0, 0, 0u32);
    while pushed < n || popped < n {
        let mut progress = false;
        if pushed < n && push(black_box(pushed)) {
            pushed += 1;
            progress = true;
        }
        if let Some(v) = pop() {
            popped += 1;
            sum += v;
            progress = true;
        }
        // Waiting on the partner: if the host descheduled it, give the vCPU
        // back instead of spinning out a time slice.
        idle = if progress { 0 } else { idle + 1 };
        if idle >= 256 {
            idle = 0;
            std::thread::yield_now();
        }
    }
    sum
}

#[inline(never)]
fn cg_perproc_held(
    inbox: &Inbox,
    pin: &Pin<'_>,
    consumer: &mut InboxConsumer<'_, u64>,
    to: ProcessorIndex,
    n: u64,
) -> u64 {
    steer_loop(n, |i| inbox.push_to(pin, to, i).is_ok(), || consumer.pop())
}

#[inline(never)]
fn cg_perproc_pop(inbox: &Inbox, pin: &Pin<'_>, to: ProcessorIndex, n: u64) -> u64 {
    steer_loop(n, |i| inbox.push_to(pin, to, i).is_ok(), || inbox.pop(pin))
}

/// One queue for everyone (no steering): a push and a pop per turn.
#[inline(never)]
fn cg_global_mutex(queue: &spin::Mutex<VecDeque<u64>>, n: u64) -> u64 {
    let mut sum = 0;
    for i in 0..n {
        queue.lock().push_back(black_box(i));
        sum += queue.lock().pop_front().unwrap_or(0);
    }
    sum
}

#[inline(never)]
fn cg_per_cpu_mutex(
    queues: &[CachePadded<spin::Mutex<VecDeque<u64>>>],
    me: usize,
    to: usize,
    n: u64,
) -> u64 {
    let (Some(mine), Some(target)) = (queues.get(me), queues.get(to)) else {
        return 0;
    };
    steer_loop(
        n,
        |i| {
            let mut q = target.lock();
            // Bounded like the others.
            q.len() < CAPACITY && {
                q.push_back(i);
                true
            }
        },
        || mine.lock().pop_front(),
    )
}

#[inline(never)]
fn cg_array_queue(queues: &[CachePadded<ArrayQueue<u64>>], me: usize, to: usize, n: u64) -> u64 {
    let (Some(mine), Some(target)) = (queues.get(me), queues.get(to)) else {
        return 0;
    };
    steer_loop(n, |i| target.push(i).is_ok(), || mine.pop())
}

#[inline(never)]
fn cg_queue_held(
    queue: &Queue,
    pin: &Pin<'_>,
    consumer: &mut perproc::Consumer<'_, u64>,
    n: u64,
) -> u64 {
    let mut sum = 0;
    for i in 0..n {
        let _ = black_box(queue.push(pin, black_box(i)).is_ok());
        sum += consumer.pop().unwrap_or(0);
    }
    sum
}

#[inline(never)]
fn cg_inbox_pop_only(consumer: &mut InboxConsumer<'_, u64>, n: u64) -> u64 {
    let mut sum = 0;
    for _ in 0..n {
        sum += consumer.pop().unwrap_or(0);
    }
    sum
}

#[inline(never)]
fn cg_queue_pop_only(consumer: &mut perproc::Consumer<'_, u64>, n: u64) -> u64 {
    let mut sum = 0;
    for _ in 0..n {
        sum += consumer.pop().unwrap_or(0);
    }
    sum
}

/// `n` pops of the thread's own inbox in chunks of [`CHUNK`], each chunk filled
/// first; only the pops are timed.
fn inbox_pops(s: &Setup, pin: &Pin<'_>, n: u64) -> (u64, Duration) {
    let me = pin.processor();
    let Some(mut consumer) = s.inbox.consumer(pin) else {
        return (0, Duration::ZERO);
    };
    let (mut sum, mut spent, mut left) = (0, Duration::ZERO, n);
    while left > 0 {
        let k = left.min(CHUNK);
        for i in 0..k {
            let _ = s.inbox.push_to(pin, me, i);
        }
        let start = Instant::now();
        sum += cg_inbox_pop_only(&mut consumer, k);
        spent += start.elapsed();
        left -= k;
    }
    (sum, spent)
}

/// As [`inbox_pops`], on the `PerCpuQueue`.
fn queue_pops(s: &Setup, pin: &Pin<'_>, n: u64) -> (u64, Duration) {
    let Some(mut consumer) = s.queue.consumer(pin.processor()) else {
        return (0, Duration::ZERO);
    };
    let (mut sum, mut spent, mut left) = (0, Duration::ZERO, n);
    while left > 0 {
        let k = left.min(CHUNK);
        for i in 0..k {
            let _ = s.queue.push(pin, i);
        }
        let start = Instant::now();
        sum += cg_queue_pop_only(&mut consumer, k);
        spent += start.elapsed();
        left -= k;
    }
    (sum, spent)
}

/// Runs one variant's loop of `n` iterations on processor `me` of `threads`,
/// pinned; returns the loop's time. Items left over are drained after every
/// thread finished (untimed), so runs do not fill the queues.
fn run(s: &Setup, variant: &str, me: u32, threads: u32, n: u64, barrier: &Barrier) -> Duration {
    let to = (me + 1) % threads;
    let (me_i, to_i) = (me as usize, to as usize);
    let time = |f: &mut dyn FnMut() -> u64| {
        barrier.wait();
        let start = Instant::now();
        black_box(f());
        start.elapsed()
    };
    let spent = s
        .platform
        .pinned(|pin| match variant {
            "perproc_held" => {
                let mut consumer = s.inbox.consumer(pin).unwrap();
                time(&mut || cg_perproc_held(&s.inbox, pin, &mut consumer, cpu(to), n))
            }
            "perproc_pop" => time(&mut || cg_perproc_pop(&s.inbox, pin, cpu(to), n)),
            "global_mutex" => time(&mut || cg_global_mutex(&s.global, n)),
            "per_cpu_mutex" => time(&mut || cg_per_cpu_mutex(&s.per_cpu, me_i, to_i, n)),
            "array_queue" => time(&mut || cg_array_queue(&s.array, me_i, to_i, n)),
            "queue_held" => {
                let mut consumer = s.queue.consumer(cpu(me)).unwrap();
                time(&mut || cg_queue_held(&s.queue, pin, &mut consumer, n))
            }
            "inbox_pop_only" => {
                barrier.wait();
                black_box(inbox_pops(s, pin, n)).1
            }
            "queue_pop_only" => {
                barrier.wait();
                black_box(queue_pops(s, pin, n)).1
            }
            other => panic!("unknown variant {other}"),
        })
        .unwrap();
    barrier.wait();
    s.platform
        .pinned(|pin| {
            black_box(s.inbox.consumer(pin).map(Iterator::count));
            black_box(s.queue.drain(cpu(me)).count());
        })
        .unwrap();
    s.global.lock().clear();
    s.per_cpu[me_i].lock().clear();
    while s.array[me_i].pop().is_some() {}
    spent
}

/// `run` on `threads` threads bound to processors `0..threads`; the slowest
/// thread's time counts.
fn on_threads(s: &Setup, variant: &str, threads: u32, n: u64) -> Duration {
    let barrier = Barrier::new(threads as usize);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    s.platform.bind_current_thread(cpu(t)).unwrap();
                    run(s, variant, t, threads, n, barrier)
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

fn inbox(c: &mut Criterion) {
    let setup = Setup::new(2);
    let mut group = c.benchmark_group("inbox_pair");
    for threads in [1u32, 2] {
        for variant in [
            "perproc_held",
            "perproc_pop",
            "global_mutex",
            "per_cpu_mutex",
            "array_queue",
        ] {
            group.bench_function(BenchmarkId::new(variant, threads), |b| {
                b.iter_custom(|iters| on_threads(&setup, variant, threads, iters))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("local_pop");
    for variant in ["inbox_pop_only", "queue_pop_only"] {
        group.bench_function(variant, |b| {
            b.iter_custom(|iters| on_threads(&setup, variant, 1, iters))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = inbox
}

/// `--callgrind VARIANT N`: one single-thread loop, for instruction counts.
fn callgrind(args: &[String]) -> Option<ExitCode> {
    let at = args.iter().position(|a| a == "--callgrind")?;
    let variant = args.get(at + 1)?.as_str();
    let n: u64 = args
        .get(at + 2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let setup = Setup::new(1);
    on_threads(&setup, variant, 1, n);
    println!("{variant}: {n} iterations");
    Some(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = callgrind(&args) {
        return code;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    ExitCode::SUCCESS
}
