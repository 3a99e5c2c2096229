//! The k-th hot-add, for `valgrind --tool=callgrind`: grows 16 containers side
//! by side to k - 1 processors (as `benches/growth.rs` does), then makes the
//! k-th add of each inside `kth_adds`, the only function `benches/callgrind.sh`
//! collects. Instructions per add are then exact, and with `--cache-sim=yes`
//! the simulated cache misses show where time that instructions do not
//! explain goes.
//!
//! ```text
//! growth_callgrind VARIANT K [ROUNDS]   # perproc | directory | copy_on_grow
//! growth_callgrind --quick              # each variant at k = 64, one round
//! ```

use std::hint::black_box;

use perproc::ProcessorIndex;

#[path = "../benches/baselines/mod.rs"]
mod baselines;

use baselines::{ours, CopyOnGrow, Directory, Ours};

const MAX: usize = 2048;
const ADDS: usize = 16;

fn add_ours(table: &Ours, i: usize) {
    let index = ProcessorIndex::from_usize(i).unwrap_or(ProcessorIndex::ZERO);
    if table
        .prepare(index)
        .and_then(|_| table.commit(index))
        .is_err()
    {
        std::process::exit(1);
    }
}

/// The measured adds: processor `i` on each container.
#[inline(never)]
fn kth_adds<C>(batch: &[C], i: usize, add: &impl Fn(&C, usize)) {
    for container in batch {
        add(black_box(container), i);
    }
}

fn run<C>(k: usize, rounds: usize, empty: impl Fn() -> C, add: impl Fn(&C, usize)) {
    for _ in 0..rounds {
        let batch: Vec<C> = (0..ADDS).map(|_| empty()).collect();
        for i in 0..k - 1 {
            for container in &batch {
                add(container, i);
            }
        }
        kth_adds(&batch, k - 1, &add);
    }
}

fn variant(name: &str, k: usize, rounds: usize) -> Result<(), String> {
    if k == 0 || k > MAX {
        return Err(format!("k must be 1..={MAX}"));
    }
    match name {
        "perproc" => run(k, rounds, || ours(MAX), add_ours),
        "directory" => run(k, rounds, || Directory::new(MAX), |d, i| d.add(i)),
        "copy_on_grow" => run(k, rounds, CopyOnGrow::new, |a, _| {
            a.add();
        }),
        _ => return Err(format!("unknown variant {name}")),
    }
    println!("{name}: {rounds} x {ADDS} adds at k = {k}");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [quick] if quick == "--quick" => {
            for name in ["perproc", "directory", "copy_on_grow"] {
                variant(name, 64, 1)?;
            }
        }
        [name, k] => variant(name, k.parse()?, 4)?,
        [name, k, rounds] => variant(name, k.parse()?, rounds.parse()?)?,
        _ => return Err("usage: growth_callgrind VARIANT K [ROUNDS]".into()),
    }
    Ok(())
}
