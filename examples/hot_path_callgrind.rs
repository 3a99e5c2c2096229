//! A fixed number of hot-path reads through one variant, for
//! `valgrind --tool=callgrind`, which counts instructions exactly (time on a
//! shared machine does not repeat). The reads are the same loops as
//! `benches/hot_path.rs` runs, on the same setup.
//!
//! ```text
//! hot_path_callgrind [VARIANT [ITERATIONS]]   # default: every variant, 1000000
//! hot_path_callgrind --quick                  # every variant, 1000 iterations
//! ```
//!
//! `benches/callgrind.sh` runs each variant under callgrind at two iteration
//! counts and prints instructions per read (the difference of the totals
//! divided by the difference of the counts, so setup cancels out).

use std::hint::black_box;

use perproc::host::HostPlatform;
use perproc::{Platform, ProcessorIndex};

#[path = "../benches/baselines/mod.rs"]
mod baselines;

use baselines::{Contenders, VARIANTS};

const PROCESSORS: u32 = 64;
const CURRENT: u32 = 37;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    let pin = platform.pin();
    for variant in variants {
        let sum = contenders
            .run(variant, black_box(&pin), iters)
            .ok_or_else(|| format!("unknown variant {variant}; one of {VARIANTS:?}"))?;
        // Every slot's `hits` is 1, so each read that found its slot adds 1; the
        // index loop sums the index.
        let expected = if variant == "index_only" {
            iters * u64::from(CURRENT)
        } else {
            iters
        };
        if sum != expected {
            return Err(format!("{variant}: sum {sum}, expected {expected}").into());
        }
        println!("{variant}: {iters} reads");
    }
    Ok(())
}
