//! [`PoolAlloc`]: nonpaged pool with a tag, as perproc's [`RawAlloc`].

use core::alloc::Layout;
use core::mem::size_of;
use core::ptr::NonNull;

use perproc::{AllocError, ProcessorIndex, RawAlloc};

use crate::sys::{ExAllocatePool2, ExFreePool, POOL_FLAG_NON_PAGED, SIZE_T};

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

/// Nonpaged pool (`ExAllocatePool2(POOL_FLAG_NON_PAGED, ..)`) with a tag, as
/// perproc's [`RawAlloc`]. Any alignment is honoured: up to
/// [`POOL_ALIGNMENT`] by the pool itself (checked), above it by allocating
/// `size + align + 8` bytes, returning the first aligned address with room
/// for the original pointer just below it, and freeing through that pointer.
///
/// Placement: the processor hint is not used; blocks come from the pool of
/// whatever node the pool chooses. A NUMA-aware variant would map the index
/// to its node (`KeGetProcessorNumberFromIndex`, then the node whose
/// `KeQueryNodeActiveAffinity` group affinity holds that processor) and
/// allocate with `ExAllocatePool3(POOL_FLAG_NON_PAGED, size, tag, ..)` and a
/// `POOL_EXTENDED_PARAMETER` of type `PoolExtendedParameterNumaNode`
/// naming that node as preferred.
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

    fn pool_block(&self, size: usize) -> Result<NonNull<u8>, AllocError> {
        let bytes = SIZE_T::try_from(size).map_err(|_| AllocError)?;
        // SAFETY: callable at IRQL <= DISPATCH_LEVEL (this type's contract) for
        // nonpaged pool; returns NULL or a block of `bytes` bytes.
        let block = unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, bytes, self.tag) };
        NonNull::new(block.cast::<u8>()).ok_or(AllocError)
    }
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
        _processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        if layout.size() == 0 {
            return Err(AllocError);
        }
        if layout.align() <= POOL_ALIGNMENT {
            let block = self.pool_block(layout.size())?;
            if block.as_ptr().addr() & layout.align().wrapping_sub(1) == 0 {
                return Ok(block);
            }
            // SAFETY: a block ExAllocatePool2 just returned, freed once.
            unsafe { ExFreePool(block.as_ptr().cast()) };
            return Err(AllocError);
        }
        let total = layout
            .size()
            .checked_add(layout.align())
            .and_then(|n| n.checked_add(WORD))
            .ok_or(AllocError)?;
        let base = self.pool_block(total)?;
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
