//! The allocator seam: every byte the library uses comes through [`RawAlloc`].
//!
//! The core never touches the global allocator and never calls
//! `handle_alloc_error`: a refused allocation is an [`AllocError`] that becomes
//! [`Error::OutOfMemory`](crate::Error::OutOfMemory) for the caller.

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use crate::ProcessorIndex;

/// The allocator refused the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocError;

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("allocation refused")
    }
}

impl From<AllocError> for crate::Error {
    fn from(_: AllocError) -> Self {
        crate::Error::OutOfMemory
    }
}

/// A fallible raw allocator that knows which processor the memory is for, so a
/// platform can place it on that processor's NUMA node.
///
/// Windows drivers implement it over `ExAllocatePool2(POOL_FLAG_NON_PAGED, ..)`
/// (see the `perproc-wdk` crate), tests over [`HostAlloc`](crate::host::HostAlloc)
/// with the wrappers of [`testing`](crate::testing).
///
/// # Safety
///
/// An implementation promises, for every `Ok(ptr)` that `allocate` returns:
/// 1. `ptr` is valid for reads and writes of `layout.size()` bytes;
/// 2. `ptr` is aligned to `layout.align()` (whatever the alignment: an
///    implementation whose underlying allocator aligns less must over-allocate);
/// 3. the block overlaps no other live block of any allocator;
/// 4. the block stays valid until it is passed to `deallocate`, which accepts it
///    with the same layout from any thread.
///
/// It may refuse any request, zero-sized ones included, with `Err(AllocError)`.
pub unsafe trait RawAlloc {
    /// A block for `layout`, placed for `processor` when the platform can
    /// (`None`: memory shared by all processors).
    fn allocate(
        &self,
        layout: Layout,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError>;

    /// Returns a block.
    ///
    /// # Safety
    ///
    /// `ptr` came from `allocate` on this allocator (or a clone that shares its
    /// memory) with this same `layout`, and is not used after this call.
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout);
}

// SAFETY: forwards both calls unchanged, so every promise of `A` holds.
unsafe impl<A: RawAlloc + ?Sized> RawAlloc for &A {
    #[inline]
    fn allocate(
        &self,
        layout: Layout,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        (**self).allocate(layout, processor)
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's obligations are exactly those of `A::deallocate`.
        unsafe { (**self).deallocate(ptr, layout) }
    }
}
