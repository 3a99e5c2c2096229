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
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use perproc::host::HostPlatform;
use perproc::{Platform, ProcessorIndex};

#[path = "baselines/mod.rs"]
mod baselines;

use baselines::{Contenders, VARIANTS};

/// Processors the simulated machine has, all present.
const PROCESSORS: u32 = 64;
/// The processor the benchmark thread runs on (not 0, so no index is trivially
/// zero).
const CURRENT: u32 = 37;

fn hot_path(c: &mut Criterion) {
    let platform = HostPlatform::new(PROCESSORS).unwrap();
    platform
        .bind_current_thread(ProcessorIndex::new(CURRENT).unwrap())
        .unwrap();
    let contenders = Contenders::new(usize::try_from(PROCESSORS).unwrap());

    // Held for the whole group, as a DPC holds DISPATCH_LEVEL.
    platform
        .pinned(|pin| {
            let mut group = c.benchmark_group("hot_path");
            for variant in VARIANTS {
                group.bench_function(variant, |b| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        black_box(contenders.run(variant, black_box(pin), iters));
                        start.elapsed()
                    })
                });
            }
            group.finish();
        })
        .unwrap();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
