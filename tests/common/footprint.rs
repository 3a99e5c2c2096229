//! What a `PerCpu` costs in memory, measured by the counting allocator; shared
//! by `tests/memory.rs` (which asserts it) and `examples/memory.rs` (which
//! prints it).
#![allow(dead_code)]

use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::CountingAlloc;
use perproc::{Error, PerCpu, ProcessorIndex, SlotPadding};

/// Live bytes and blocks of a container of `capacity` with `present`
/// processors prepared, and its slot size. Also checks that dropping it leaves
/// nothing allocated.
pub fn footprint<T: Default>(
    capacity: usize,
    present: usize,
    padding: SlotPadding,
) -> Result<(usize, usize, usize), Error> {
    let counting = CountingAlloc::new(HostAlloc);
    let platform =
        HostPlatform::new(u32::try_from(capacity).map_err(|_| Error::CapacityOverflow)?)?;
    let table = PerCpu::with_padding_in(&platform, &counting, padding, |_| Ok(T::default()))?;
    for i in 0..present {
        let _ = table.prepare(ProcessorIndex::from_usize(i).ok_or(Error::CapacityOverflow)?)?;
    }
    let measured = (
        counting.live_bytes(),
        counting.live_blocks(),
        table.slot_size(),
    );
    drop(table);
    assert_eq!((counting.live_bytes(), counting.live_blocks()), (0, 0));
    Ok(measured)
}

/// `N` bytes, byte-aligned.
pub struct Bytes<const N: usize>([u8; N]);

impl<const N: usize> Default for Bytes<N> {
    fn default() -> Self {
        Self([0; N])
    }
}

/// `N` words, word-aligned.
pub struct Words<const N: usize>([u64; N]);

impl<const N: usize> Default for Words<N> {
    fn default() -> Self {
        Self([0; N])
    }
}
