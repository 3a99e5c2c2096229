//! A fixed number of local queue enqueue+dequeue pairs and counter adds (and
//! their baselines), each loop in its own function, for instruction counts that
//! do not depend on the machine's load:
//!
//! ```text
//! cargo build --release --example queue_callgrind
//! valgrind --tool=callgrind --callgrind-out-file=target/queue.callgrind \
//!     target/release/examples/queue_callgrind
//! callgrind_annotate --inclusive=yes target/queue.callgrind | grep queue_callgrind::
//! ```
//!
//! Each function's inclusive instruction count divided by `ITERATIONS` is the
//! cost of one operation (loop included). `--quick` runs fewer iterations (for
//! the test command). Exits non-zero if any result is wrong.

use std::collections::VecDeque;
use std::hint::black_box;
use std::process::ExitCode;

use perproc::host::HostPlatform;
use perproc::{PerCpuCounters, PerCpuQueue, PinGuard, Platform, ProcessorIndex};

const ITERATIONS: u64 = 100_000;

perproc::counters! {
    struct Ops { adds }
}

type Pin<'a> = PinGuard<'a, HostPlatform>;

#[inline(never)]
fn perproc_queue_pairs(queue: &PerCpuQueue<u64, HostPlatform>, pin: &Pin<'_>, n: u64) -> u64 {
    let mut sum = 0;
    for i in 0..n {
        if queue.push(pin, black_box(i)).is_err() {
            return u64::MAX;
        }
        sum += queue.pop(ProcessorIndex::ZERO).unwrap_or(u64::MAX);
    }
    sum
}

#[inline(never)]
fn perproc_held_consumer_pairs(
    queue: &PerCpuQueue<u64, HostPlatform>,
    pin: &Pin<'_>,
    n: u64,
) -> u64 {
    let Some(mut consumer) = queue.consumer(ProcessorIndex::ZERO) else {
        return u64::MAX;
    };
    let mut sum = 0;
    for i in 0..n {
        if queue.push(pin, black_box(i)).is_err() {
            return u64::MAX;
        }
        sum += consumer.pop().unwrap_or(u64::MAX);
    }
    sum
}

#[inline(never)]
fn spin_vecdeque_pairs(queue: &spin::Mutex<VecDeque<u64>>, n: u64) -> u64 {
    let mut sum = 0;
    for i in 0..n {
        queue.lock().push_back(black_box(i));
        sum += queue.lock().pop_front().unwrap_or(u64::MAX);
    }
    sum
}

#[inline(never)]
fn perproc_counter_adds(stats: &PerCpuCounters<Ops, HostPlatform>, pin: &Pin<'_>, n: u64) {
    for _ in 0..n {
        stats.add(pin, Ops::adds, black_box(1));
    }
}

#[inline(never)]
fn plain_counter_adds(count: &mut u64, n: u64) {
    for _ in 0..n {
        *black_box(&mut *count) += black_box(1);
    }
}

fn main() -> ExitCode {
    let n = if std::env::args().any(|a| a == "--quick") {
        1_000
    } else {
        ITERATIONS
    };
    let platform = HostPlatform::new(1).expect("platform");
    let queue = PerCpuQueue::new(&platform, 1024).expect("queue");
    let stats = PerCpuCounters::<Ops, _>::new(&platform).expect("counters");
    let _ = queue.prepare(ProcessorIndex::ZERO).expect("prepare");
    let _ = stats.prepare(ProcessorIndex::ZERO).expect("prepare");
    let global = spin::Mutex::new(VecDeque::with_capacity(1024));
    let mut plain = 0;

    let expected = n * (n - 1) / 2;
    let (pairs, held_pairs) = platform
        .pinned(|pin| {
            let pairs = perproc_queue_pairs(&queue, pin, n);
            let held_pairs = perproc_held_consumer_pairs(&queue, pin, n);
            perproc_counter_adds(&stats, pin, n);
            (pairs, held_pairs)
        })
        .expect("pin");
    let baseline_pairs = spin_vecdeque_pairs(&global, n);
    plain_counter_adds(&mut plain, n);

    println!("{n} iterations of each loop");
    let ok = pairs == expected
        && held_pairs == expected
        && baseline_pairs == expected
        && stats.sum(Ops::adds) == n
        && plain == n
        && queue.total_len() == 0;
    if ok {
        println!("all results correct");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "wrong results: pairs {pairs} / {held_pairs} / {baseline_pairs} (want {expected}), adds {} / {plain} (want {n})",
            stats.sum(Ops::adds)
        );
        ExitCode::FAILURE
    }
}
