//! Allocators for tests: one that fails on cue, one that counts what is live.
//!
//! Both wrap another [`RawAlloc`] and nest, so a fault-injection sweep reads:
//!
//! ```
//! use perproc::host::{HostAlloc, HostPlatform};
//! use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
//! use perproc::{PerCpu, ProcessorIndex};
//!
//! // Fail each allocation of "create a container and prepare two processors" in
//! // turn; after each run nothing may be live.
//! for k in 0.. {
//!     let counting = CountingAlloc::new(HostAlloc);
//!     let alloc = FailingAlloc::new(&counting);
//!     alloc.plan(FailPlan::Once(k));
//!     let run = || -> Result<(), perproc::Error> {
//!         let table = PerCpu::new_in(&HostPlatform::new(8)?, &alloc, |_| Ok(0u32))?;
//!         for i in 0..2 {
//!             let _ = table.prepare(ProcessorIndex::new(i).unwrap())?;
//!         }
//!         Ok(())
//!     };
//!     let failed = run().is_err();
//!     assert_eq!(counting.live_blocks(), 0);
//!     if !failed {
//!         assert_eq!(alloc.injected(), 0);
//!         break; // k is past the last allocation: every one has been failed once
//!     }
//! }
//! ```

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::{AllocError, ProcessorIndex, RawAlloc};

/// When a [`FailingAlloc`] refuses, counting attempts from the last
/// [`plan`](FailingAlloc::plan) call (the first attempt is 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPlan {
    /// Never.
    Never,
    /// Attempt `k` only.
    Once(usize),
    /// Attempt `k` and every one after it.
    From(usize),
}

const NEVER: usize = 0;
const ONCE: usize = 1;
const FROM: usize = 2;

/// An allocator that refuses the attempts its [`FailPlan`] names and forwards
/// the others.
#[derive(Debug)]
pub struct FailingAlloc<A> {
    inner: A,
    kind: AtomicUsize,
    at: AtomicUsize,
    attempts: AtomicUsize,
    injected: AtomicUsize,
}

impl<A: RawAlloc> FailingAlloc<A> {
    /// Wraps `inner`; fails nothing until planned.
    pub const fn new(inner: A) -> Self {
        Self {
            inner,
            kind: AtomicUsize::new(NEVER),
            at: AtomicUsize::new(0),
            attempts: AtomicUsize::new(0),
            injected: AtomicUsize::new(0),
        }
    }

    /// Sets the plan and restarts the attempt count. Set it while no allocation
    /// is running.
    pub fn plan(&self, plan: FailPlan) {
        let (kind, at) = match plan {
            FailPlan::Never => (NEVER, 0),
            FailPlan::Once(k) => (ONCE, k),
            FailPlan::From(k) => (FROM, k),
        };
        self.at.store(at, Ordering::SeqCst);
        self.kind.store(kind, Ordering::SeqCst);
        self.attempts.store(0, Ordering::SeqCst);
    }

    /// Attempts since the last plan, refused ones included.
    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Attempts refused since creation.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    /// The wrapped allocator.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: every block handed out comes from `inner` unchanged and goes back to
// it unchanged, so `inner`'s promises are this allocator's.
unsafe impl<A: RawAlloc> RawAlloc for FailingAlloc<A> {
    fn allocate(
        &self,
        layout: Layout,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        let at = self.at.load(Ordering::SeqCst);
        let fail = match self.kind.load(Ordering::SeqCst) {
            ONCE => n == at,
            FROM => n >= at,
            _ => false,
        };
        if fail {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(AllocError);
        }
        self.inner.allocate(layout, processor)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: `ptr` came from `inner` with `layout` (we forward every block).
        unsafe { self.inner.deallocate(ptr, layout) }
    }
}

/// An allocator that counts live blocks and bytes, so a test can prove that
/// nothing leaked.
#[derive(Debug)]
pub struct CountingAlloc<A> {
    inner: A,
    live_blocks: AtomicUsize,
    live_bytes: AtomicUsize,
    peak_bytes: AtomicUsize,
    allocations: AtomicUsize,
    placed: AtomicUsize,
}

impl<A: RawAlloc> CountingAlloc<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        Self {
            inner,
            live_blocks: AtomicUsize::new(0),
            live_bytes: AtomicUsize::new(0),
            peak_bytes: AtomicUsize::new(0),
            allocations: AtomicUsize::new(0),
            placed: AtomicUsize::new(0),
        }
    }

    /// Blocks allocated and not yet freed.
    pub fn live_blocks(&self) -> usize {
        self.live_blocks.load(Ordering::SeqCst)
    }

    /// Bytes allocated and not yet freed.
    pub fn live_bytes(&self) -> usize {
        self.live_bytes.load(Ordering::SeqCst)
    }

    /// The most bytes live at once.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes.load(Ordering::SeqCst)
    }

    /// Successful allocations so far.
    pub fn allocations(&self) -> usize {
        self.allocations.load(Ordering::SeqCst)
    }

    /// Successful allocations that named the processor they are for.
    pub fn placed_allocations(&self) -> usize {
        self.placed.load(Ordering::SeqCst)
    }

    /// The wrapped allocator.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: blocks come from `inner` and go back to it unchanged; the counters
// are bookkeeping only.
unsafe impl<A: RawAlloc> RawAlloc for CountingAlloc<A> {
    fn allocate(
        &self,
        layout: Layout,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        let block = self.inner.allocate(layout, processor)?;
        self.allocations.fetch_add(1, Ordering::SeqCst);
        if processor.is_some() {
            self.placed.fetch_add(1, Ordering::SeqCst);
        }
        self.live_blocks.fetch_add(1, Ordering::SeqCst);
        let live = self
            .live_bytes
            .fetch_add(layout.size(), Ordering::SeqCst)
            .saturating_add(layout.size());
        self.peak_bytes.fetch_max(live, Ordering::SeqCst);
        Ok(block)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        self.live_blocks.fetch_sub(1, Ordering::SeqCst);
        self.live_bytes.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` came from `inner` with `layout` (we forward every block).
        unsafe { self.inner.deallocate(ptr, layout) }
    }
}
