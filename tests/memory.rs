//! What a container costs in memory, measured with the counting allocator: an
//! absent processor costs exactly one pointer (and no `T`), a present one costs
//! one slot, and a cache-line-padded slot is a whole number of cache lines.
//! `examples/memory.rs` prints the same figures.

#[path = "common/footprint.rs"]
mod shared;

use perproc::{SlotPadding, CACHE_LINE};
use shared::{Bytes, Words};

const POINTER: usize = core::mem::size_of::<*const u8>();

/// The measurement, unwrapped.
fn footprint<T: Default>(
    capacity: usize,
    present: usize,
    padding: SlotPadding,
) -> (usize, usize, usize) {
    shared::footprint::<T>(capacity, present, padding).unwrap()
}

fn absent_costs_one_pointer<T: Default>(padding: SlotPadding) {
    for (small, large) in [(1, 2), (64, 2048), (0, 4096)] {
        let (a, a_blocks, _) = footprint::<T>(small, 0, padding);
        let (b, b_blocks, _) = footprint::<T>(large, 0, padding);
        // One block (table and bookkeeping), no value for anyone.
        assert_eq!((a_blocks, b_blocks), (1, 1));
        assert_eq!(b - a, (large - small) * POINTER, "{small} -> {large}");
    }
}

#[test]
fn an_absent_processor_costs_exactly_one_pointer() {
    absent_costs_one_pointer::<u8>(SlotPadding::CacheLine);
    absent_costs_one_pointer::<u64>(SlotPadding::Compact);
    absent_costs_one_pointer::<Words<64>>(SlotPadding::CacheLine);
}

fn present_costs_one_slot<T: Default>(padding: SlotPadding) -> usize {
    let (empty, _, slot) = footprint::<T>(64, 0, padding);
    for present in [1, 2, 64] {
        let (bytes, blocks, _) = footprint::<T>(64, present, padding);
        assert_eq!(blocks, 1 + present);
        assert_eq!(bytes - empty, present * slot);
    }
    assert!(slot >= core::mem::size_of::<T>());
    slot
}

#[test]
fn a_cache_line_slot_is_whole_cache_lines() {
    fn check<T: Default>() {
        let slot = present_costs_one_slot::<T>(SlotPadding::CacheLine);
        assert_eq!(slot % CACHE_LINE, 0, "{} bytes", core::mem::size_of::<T>());
        // No more lines than the value and the slot's three words need.
        let needed = core::mem::size_of::<T>() + 3 * POINTER;
        assert!(slot < needed + CACHE_LINE, "{slot} for {needed}");
    }
    check::<u8>();
    check::<u64>();
    check::<Bytes<100>>();
    check::<Bytes<128>>();
    check::<Words<64>>();
}

#[test]
fn a_compact_slot_adds_two_words_to_its_value() {
    // The link to the next slot, then the state byte and the index, packed in
    // one word, for a value aligned to a word.
    assert_eq!(
        present_costs_one_slot::<u64>(SlotPadding::Compact),
        8 + 2 * POINTER
    );
    assert_eq!(
        present_costs_one_slot::<Words<8>>(SlotPadding::Compact),
        64 + 2 * POINTER
    );
}
