//! A fixed number of hot-path reads through one variant, for
//! `valgrind --tool=callgrind`, which counts instructions exactly (time on a
//! shared machine does not repeat). The reads are the same loops as
//! `benches/hot_path.rs` runs, on the same setup.
//!
//! ```text
//! hot_path_callgrind [VARIANT [ITERATIONS]]   # default: every variant, 1000000
//! hot_path_callgrind --quick                  # every variant, 1000 iterations
//! hot_path_callgrind --interleaved [ROUNDS]   # wall time, variants taken in turn
//! ```
//!
//! `benches/callgrind.sh` runs each variant under callgrind at two iteration
//! counts and prints instructions per read (the difference of the totals
//! divided by the difference of the counts, so setup cancels out).
//!
//! `--interleaved` is a cross-check of criterion's ratios on a machine shared
//! with other work: criterion measures one variant after another, for seconds
//! each, so a change of load between two of them moves their ratio. Here every
//! round times each variant once (10 million reads) in turn, and the minimum
//! and median over the rounds are printed with their ratio to the fixed array.

use std::hint::black_box;
use std::time::Instant;

use perproc::host::HostPlatform;
use perproc::{Platform, ProcessorIndex};

#[path = "../benches/baselines/mod.rs"]
mod baselines;

use baselines::{Contenders, VARIANTS};

const PROCESSORS: u32 = 64;
const CURRENT: u32 = 37;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--interleaved") {
        let rounds = args.get(1).map_or(Ok(30), |r| r.parse())?;
        return interleaved(rounds);
    }
    let (variants, iters): (Vec<&str>, u64) = match args.as_slice() {
        [] => (VARIANTS.to_vec(), 1_000_000),
        [quick] if quick == "--quick" => (VARIANTS.to_vec(), 1_000),
        [variant] => (vec![variant.as_str()], 1_000_000),
        [variant, iters] => (vec![variant.as_str()], iters.parse()?),
        _ => return Err("usage: hot_path_callgrind [VARIANT [ITERATIONS]]".into()),
    };

    let platform = HostPlatform::new(PROCESSORS)?;
    platform.bind_current_thread(ProcessorIndex::new(CURRENT).ok_or("index")?)?;
    let contenders = Contenders::new(usize::try_from(PROCESSORS)?);
    // Pinned across every loop, as a DPC holds DISPATCH_LEVEL.
    platform.pinned(|pin| {
        for variant in variants {
            let sum = contenders
                .run(variant, black_box(pin), iters)
                .ok_or_else(|| format!("unknown variant {variant}; one of {VARIANTS:?}"))?;
            // Every slot's `hits` is 1, so each read that found its slot adds 1;
            // the index loop sums the index.
            let expected = if variant == "index_only" {
                iters * u64::from(CURRENT)
            } else {
                iters
            };
            if sum != expected {
                return Err(format!("{variant}: sum {sum}, expected {expected}"));
            }
            println!("{variant}: {iters} reads");
        }
        Ok(())
    })??;
    Ok(())
}

/// Times every variant once per round, in turn; prints min and median per read.
fn interleaved(rounds: usize) -> Result<(), Box<dyn std::error::Error>> {
    const READS: u64 = 10_000_000;
    let platform = HostPlatform::new(PROCESSORS)?;
    platform.bind_current_thread(ProcessorIndex::new(CURRENT).ok_or("index")?)?;
    let contenders = Contenders::new(usize::try_from(PROCESSORS)?);
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); VARIANTS.len()];
    platform.pinned(|pin| {
        for _ in 0..rounds.max(1) {
            for (variant, samples) in VARIANTS.iter().zip(times.iter_mut()) {
                let start = Instant::now();
                black_box(contenders.run(variant, black_box(pin), READS));
                samples.push(start.elapsed().as_secs_f64() * 1e9 / READS as f64);
            }
        }
    })?;
    let stats: Vec<(f64, f64)> = times
        .iter_mut()
        .map(|samples| {
            samples.sort_by(f64::total_cmp);
            (samples[0], samples[samples.len() / 2])
        })
        .collect();
    let fixed = VARIANTS
        .iter()
        .position(|v| *v == "fixed_array")
        .ok_or("no fixed_array")?;
    let (fixed_min, fixed_median) = stats[fixed];
    println!("{rounds} rounds of {READS} reads per variant, taken in turn (ns per read):");
    println!();
    println!("| variant | min | min / fixed | median | median / fixed |");
    println!("|---|---:|---:|---:|---:|");
    for (variant, (min, median)) in VARIANTS.iter().zip(&stats) {
        println!(
            "| {variant} | {min:.3} | {:.2}x | {median:.3} | {:.2}x |",
            min / fixed_min,
            median / fixed_median
        );
    }
    Ok(())
}
