//! Prints what perproc's containers cost in memory, measured by the counting
//! allocator (`perproc::testing::CountingAlloc`), not computed by hand:
//!
//! - bytes per absent processor (the table's word),
//! - the container's fixed bytes,
//! - bytes per present processor, and how many of them are beyond `T`.
//!
//! `cargo run --release --example memory` (`--quick` is accepted and changes
//! nothing: it is fast). `tests/memory.rs` asserts the same figures.

#[path = "../tests/common/footprint.rs"]
mod shared;

use perproc::{Error, SlotPadding, CACHE_LINE};
use shared::{footprint, Bytes, Words};

fn row<T: Default>(name: &str, padding: SlotPadding) -> Result<(), Error> {
    const SMALL: usize = 1024;
    const LARGE: usize = 2048;
    const PRESENT: usize = 64;
    let (small, _, _) = footprint::<T>(SMALL, 0, padding)?;
    let (large, blocks, _) = footprint::<T>(LARGE, 0, padding)?;
    let (full, full_blocks, slot) = footprint::<T>(LARGE, PRESENT, padding)?;
    let per_absent = (large - small) / (LARGE - SMALL);
    let fixed = large - LARGE * per_absent;
    let per_present = (full - large) / PRESENT;
    let beyond = per_present - core::mem::size_of::<T>();
    println!(
        "| {name:<12} | {padding:<9} | {:>3} | {per_absent:>11} | {fixed:>11} | {per_present:>12} | {beyond:>8} | {blocks} + {} |",
        core::mem::size_of::<T>(),
        full_blocks - blocks,
        padding = format!("{padding:?}"),
    );
    debug_assert_eq!(per_present, slot);
    Ok(())
}

/// Two counters, as in the benchmarks.
#[derive(Default)]
#[allow(dead_code)]
struct Stats {
    hits: u64,
    bytes: u64,
}

fn main() -> Result<(), Error> {
    println!(
        "Memory of PerCpu<T>, measured with CountingAlloc (bytes; cache line = {CACHE_LINE}):"
    );
    println!();
    println!("| T            | padding   | T   | per absent  | fixed       | per present  | beyond T | blocks (empty + present) |");
    println!("|--------------|-----------|-----|-------------|-------------|--------------|----------|--------------------------|");
    row::<u64>("u64", SlotPadding::CacheLine)?;
    row::<u64>("u64", SlotPadding::Compact)?;
    row::<Stats>("Stats", SlotPadding::CacheLine)?;
    row::<Stats>("Stats", SlotPadding::Compact)?;
    row::<Bytes<112>>("Bytes<112>", SlotPadding::CacheLine)?;
    row::<Bytes<113>>("Bytes<113>", SlotPadding::CacheLine)?;
    row::<Words<64>>("Words<64>", SlotPadding::CacheLine)?;
    println!();
    println!(
        "For comparison, a fixed array of cache-padded slots costs {} bytes per possible processor, present or not.",
        core::mem::size_of::<crossbeam_utils::CachePadded<Stats>>()
    );
    Ok(())
}
