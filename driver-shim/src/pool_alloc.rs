//! [`PoolAlloc`]: nonpaged pool with a tag, as perproc's [`RawAlloc`].

use core::alloc::Layout;
use core::mem::size_of;
use core::ptr::NonNull;

use perproc::{AllocError, ProcessorIndex, RawAlloc};

use crate::status::nt_success;
use crate::sys::{
    ExAllocatePool2, ExAllocatePool3, ExFreePool, KeGetProcessorNumberFromIndex,
    KeQueryHighestNodeNumber, KeQueryNodeActiveAffinity, GROUP_AFFINITY, POOL_EXTENDED_PARAMETER,
    POOL_EXTENDED_PARAMETER_TYPE, POOL_FLAG_NON_PAGED, PROCESSOR_NUMBER, SIZE_T, ULONG, USHORT,
};

/// A pool tag from its four characters as drivers write them (`'Perp'` in C is
/// `pool_tag(*b"Perp")`): the first character is the low byte, so pool
/// tools print it in reading order.
///
/// ```
/// assert_eq!(perproc_wdk::pool_tag(*b"Perp"), 0x7072_6550);
/// ```
pub const fn pool_tag(chars: [u8; 4]) -> u32 {
    u32::from_le_bytes(chars)
}

/// The alignment `ExAllocatePool2` guarantees below a page on 64-bit Windows
/// (`MEMORY_ALLOCATION_ALIGNMENT`).
pub const POOL_ALIGNMENT: usize = 16;

/// Nonpaged pool (`ExAllocatePool2`/`ExAllocatePool3`, `POOL_FLAG_NON_PAGED`) with a tag, as
/// perproc's [`RawAlloc`]. Any alignment is honoured: up to
/// [`POOL_ALIGNMENT`] by the pool itself (checked), above it by allocating
/// `size + align + 8` bytes, returning the first aligned address with room
/// for the original pointer just below it, and freeing through that pointer.
///
/// Placement (NUMA): a block for processor *i* (perproc passes the hint for
/// every per-processor block) comes from *i*'s node. The node is found from
/// the processor: `KeGetProcessorNumberFromIndex(i)` gives its (group,
/// number), and the node is the one whose `KeQueryNodeActiveAffinity` (nodes
/// 0 to `KeQueryHighestNodeNumber()`) has that group and that bit; the block
/// is allocated with `ExAllocatePool3(POOL_FLAG_NON_PAGED, size, tag, ..)`
/// and one `POOL_EXTENDED_PARAMETER` of type `PoolExtendedParameterNumaNode`
/// naming that node. When that fails (the node has no memory), or the node
/// cannot be found, or there is no hint (shared structures), the block comes
/// from `ExAllocatePool2`, i.e. any node: an add never fails only because
/// its node is full.
///
/// Not covered: since Windows Server 2022 a node can span groups, and
/// `KeQueryNodeActiveAffinity` reports only its primary group; a processor in
/// another group of its node is then not found, and its blocks come from any
/// node (`KeQueryNodeActiveAffinity2` would find it, at the price of an import
/// older Windows lacks).
///
/// Allocate and free at `IRQL <= DISPATCH_LEVEL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolAlloc {
    tag: u32,
}

impl PoolAlloc {
    /// Nonpaged pool tagged `tag`.
    pub const fn new(tag: u32) -> Self {
        Self { tag }
    }

    /// The tag.
    pub const fn tag(self) -> u32 {
        self.tag
    }

    fn pool_block(
        &self,
        size: usize,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        let bytes = SIZE_T::try_from(size).map_err(|_| AllocError)?;
        if let Some(node) = processor.and_then(node_of) {
            let mut parameter = POOL_EXTENDED_PARAMETER::default();
            parameter.__bindgen_anon_1.set_Type(u64::from(
                POOL_EXTENDED_PARAMETER_TYPE::PoolExtendedParameterNumaNode.unsigned_abs(),
            ));
            parameter.__bindgen_anon_2.PreferredNode = ULONG::from(node);
            // SAFETY: callable at IRQL <= DISPATCH_LEVEL (this type's contract)
            // for nonpaged pool; `parameter` is one initialised parameter that
            // outlives the call; returns NULL or a block of `bytes` bytes.
            let block =
                unsafe { ExAllocatePool3(POOL_FLAG_NON_PAGED, bytes, self.tag, &parameter, 1) };
            if let Some(block) = NonNull::new(block.cast::<u8>()) {
                return Ok(block);
            }
        }
        // SAFETY: as above, without parameters: any node.
        let block = unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, bytes, self.tag) };
        NonNull::new(block.cast::<u8>()).ok_or(AllocError)
    }
}

/// The NUMA node of `processor`, if the kernel can tell.
fn node_of(processor: ProcessorIndex) -> Option<USHORT> {
    let mut number = PROCESSOR_NUMBER::default();
    // SAFETY: `number` is a local PROCESSOR_NUMBER, valid for the write; the
    // routine may be called at any IRQL.
    let status = unsafe { KeGetProcessorNumberFromIndex(processor.get(), &mut number) };
    if !nt_success(status) {
        return None;
    }
    // SAFETY: no arguments; callable at any IRQL.
    let highest = unsafe { KeQueryHighestNodeNumber() };
    (0..=highest).find(|&node| {
        let mut affinity = GROUP_AFFINITY::default();
        // SAFETY: `affinity` is a local GROUP_AFFINITY, valid for the write;
        // the count is not wanted (NULL is allowed); any IRQL.
        unsafe { KeQueryNodeActiveAffinity(node, &mut affinity, core::ptr::null_mut()) };
        affinity.Group == number.Group
            && affinity
                .Mask
                .checked_shr(u32::from(number.Number))
                .is_some_and(|bits| bits & 1 == 1)
    })
}

const WORD: usize = size_of::<*mut u8>();

// SAFETY: 1. every block is at least `layout.size()` bytes from the returned
// pointer: direct blocks are exactly that size; over-aligned ones start at an
// offset of at most `WORD + align - 1` into a block of `size + align + WORD`.
// 2. direct blocks are checked for alignment (and refused if the pool gave
// less); over-aligned pointers are rounded up to `align`. 3. pool blocks are
// disjoint. 4. a block stays valid until ExFreePool, which `deallocate` calls
// on the pool's own pointer, from any thread at IRQL <= DISPATCH_LEVEL.
unsafe impl RawAlloc for PoolAlloc {
    fn allocate(
        &self,
        layout: Layout,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        if layout.size() == 0 {
            return Err(AllocError);
        }
        if layout.align() <= POOL_ALIGNMENT {
            let block = self.pool_block(layout.size(), processor)?;
            if block.as_ptr().addr() & layout.align().wrapping_sub(1) == 0 {
                return Ok(block);
            }
            // SAFETY: a block the pool just returned, freed once.
            unsafe { ExFreePool(block.as_ptr().cast()) };
            return Err(AllocError);
        }
        let total = layout
            .size()
            .checked_add(layout.align())
            .and_then(|n| n.checked_add(WORD))
            .ok_or(AllocError)?;
        let base = self.pool_block(total, processor)?;
        // The first address at least WORD bytes in that is aligned.
        let lowest = base.as_ptr().addr().checked_add(WORD).ok_or(AllocError)?;
        let misalign = lowest & layout.align().wrapping_sub(1); // align is a power of two
        let pad = if misalign == 0 {
            0
        } else {
            layout.align().wrapping_sub(misalign)
        };
        let offset = WORD.wrapping_add(pad); // < WORD + align: fits in `total`
                                             // SAFETY: `offset + size <= total`, so the pointer and the `size` bytes
                                             // after it are inside the block.
        let user = unsafe { base.as_ptr().add(offset) };
        // SAFETY: `user - WORD` is at least `base` (offset >= WORD), inside the
        // block, and aligned for a pointer (user is aligned to align > 16 and
        // WORD divides it).
        unsafe { user.sub(WORD).cast::<*mut u8>().write(base.as_ptr()) };
        NonNull::new(user).ok_or(AllocError)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let block = if layout.align() <= POOL_ALIGNMENT {
            ptr.as_ptr()
        } else {
            // SAFETY: `allocate` stored the pool's pointer just below every
            // over-aligned block (the caller passes the same layout).
            unsafe { ptr.as_ptr().sub(WORD).cast::<*mut u8>().read() }
        };
        // SAFETY: `block` is what ExAllocatePool2 returned, freed once (the
        // caller does not use `ptr` again).
        unsafe { ExFreePool(block.cast()) };
    }
}
