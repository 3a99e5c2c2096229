//! Slabs: the blocks objects are carved from. A slab is a small header and
//! `objects` object slots; it is allocated for the processor whose demand grew
//! the pool (NUMA placement) and freed only when the pool goes.

use core::alloc::Layout;
use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use super::magazine::Round;
use crate::{Error, ProcessorIndex, RawAlloc};

/// A slab's header; its object slots follow, at `SlabShape::offset(objects)`.
#[repr(C)]
pub(super) struct SlabHeader {
    /// The slab grown before this one (the depot's list, for freeing).
    pub(super) next: Option<NonNull<SlabHeader>>,
    /// How many object slots follow.
    pub(super) objects: usize,
}

/// One object slot: the object while it is handed out, the free list's link
/// while it is in the depot. So a slot is at least a pointer, aligned for one.
#[repr(C)]
union ObjectSlot<T> {
    _object: ManuallyDrop<T>,
    _link: Option<Round>,
}

/// How a pool's slabs are laid out.
#[derive(Clone, Copy, Debug)]
pub(super) struct SlabShape {
    slot: Layout,
    per_slab: usize,
}

impl SlabShape {
    /// Slabs of at most `per_slab` slots for `T`. Fails if such a slab would not
    /// fit the address space, so that growth later can only fail for memory.
    pub(super) fn new<T>(per_slab: usize) -> Result<Self, Error> {
        let shape = Self {
            slot: Layout::new::<ObjectSlot<T>>().pad_to_align(),
            per_slab: per_slab.max(1),
        };
        shape.layout(shape.per_slab)?;
        Ok(shape)
    }

    /// Slots in a full slab.
    pub(super) fn per_slab(&self) -> usize {
        self.per_slab
    }

    /// Bytes one object slot takes.
    pub(super) fn slot_size(&self) -> usize {
        self.slot.size()
    }

    /// A slab of `objects` slots: its layout and where the slots start.
    fn layout(&self, objects: usize) -> Result<(Layout, usize), Error> {
        let size = self
            .slot
            .size()
            .checked_mul(objects)
            .ok_or(Error::CapacityOverflow)?;
        let slots = Layout::from_size_align(size, self.slot.align())
            .map_err(|_| Error::CapacityOverflow)?;
        let (layout, offset) = Layout::new::<SlabHeader>()
            .extend(slots)
            .map_err(|_| Error::CapacityOverflow)?;
        Ok((layout.pad_to_align(), offset))
    }

    /// A new slab of `objects` slots (`1..=per_slab`), placed for `processor`.
    pub(super) fn allocate<A: RawAlloc>(
        &self,
        alloc: &A,
        objects: usize,
        processor: ProcessorIndex,
    ) -> Result<NonNull<SlabHeader>, Error> {
        let (layout, _) = self.layout(objects)?;
        let slab = alloc
            .allocate(layout, Some(processor))?
            .cast::<SlabHeader>();
        // SAFETY: the block is valid for `layout`, which starts with an aligned
        // `SlabHeader` (allocator promises 1 and 2), and is ours alone.
        unsafe {
            slab.as_ptr().write(SlabHeader {
                next: None,
                objects,
            })
        };
        Ok(slab)
    }

    /// Slot `i` of `slab`.
    ///
    /// # Safety
    ///
    /// `slab` is live, came from this shape, and `i` is below its `objects`.
    pub(super) unsafe fn slot(&self, slab: NonNull<SlabHeader>, i: usize) -> Result<Round, Error> {
        // SAFETY: the header is live (caller).
        let objects = unsafe { (*slab.as_ptr()).objects };
        let (_, offset) = self.layout(objects)?;
        let at = i
            .checked_mul(self.slot.size())
            .and_then(|bytes| bytes.checked_add(offset))
            .ok_or(Error::CapacityOverflow)?;
        // SAFETY: `offset + i * slot` is inside the block, which holds `objects`
        // slots after `offset` (its layout), and `i < objects` (caller).
        Ok(unsafe { slab.cast::<u8>().add(at) })
    }

    /// Returns a slab's block.
    ///
    /// # Safety
    ///
    /// `slab` came from [`allocate`](Self::allocate) of this shape with `alloc`,
    /// and none of its slots is used again.
    pub(super) unsafe fn free<A: RawAlloc>(&self, alloc: &A, slab: NonNull<SlabHeader>) {
        // SAFETY: the header is live (caller).
        let objects = unsafe { (*slab.as_ptr()).objects };
        if let Ok((layout, _)) = self.layout(objects) {
            // SAFETY: the block was allocated with this same layout (computed the
            // same way from the same count) and is not used again (caller).
            unsafe {
                ptr::drop_in_place(slab.as_ptr());
                alloc.deallocate(slab.cast(), layout);
            }
        }
    }
}
