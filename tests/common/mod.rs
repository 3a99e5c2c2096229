//! Helpers shared by the core's integration tests.
#![allow(dead_code)]

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use perproc::host::{HostAlloc, HostPlatform};
use perproc::{AllocError, Component, Error, ProcessorIndex, RawAlloc};

pub fn cpu(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap()
}

/// What every component of a 2-processor platform answers through the
/// `Component` trait (so through any set): commit of a processor never prepared
/// is `NotPrepared` and its abort has nothing to do; past the capacity both are
/// `IndexOutOfRange`; processor 0 is prepared and committed, after which abort
/// is `AlreadyOnline`; processor 1 is prepared and aborted, after which commit
/// is `NotPrepared`. Leaves 0 online and 1 retired.
pub fn component_protocol_errors(c: &dyn Component) {
    assert_eq!(c.commit(cpu(0)), Err(Error::NotPrepared));
    assert_eq!(c.abort(cpu(0)), Ok(()));
    assert!(matches!(
        c.commit(cpu(2)),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        c.abort(cpu(2)),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert_eq!(c.prepare(cpu(0)), Ok(perproc::Prepared::New));
    assert_eq!(c.commit(cpu(0)), Ok(()));
    assert_eq!(c.abort(cpu(0)), Err(Error::AlreadyOnline));
    assert_eq!(c.prepare(cpu(1)), Ok(perproc::Prepared::New));
    assert_eq!(c.abort(cpu(1)), Ok(()));
    assert_eq!(c.commit(cpu(1)), Err(Error::NotPrepared));
}

/// Runs `f` on a thread bound to processor `i`.
pub fn on<R: Send>(platform: &HostPlatform, i: u32, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            platform.bind_current_thread(cpu(i)).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// An item that counts its live instances, so a test sees a loss (a leak) or a
/// duplicate (a double drop, or more live than made).
#[derive(Debug)]
pub struct Tracked {
    pub id: u64,
    live: Arc<AtomicUsize>,
}

impl Tracked {
    pub fn new(id: u64, live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self {
            id,
            live: live.clone(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What registration with `KE_PROCESSOR_CHANGE_ADD_EXISTING` does, per the spec:
/// AddStart for processors 0..n in order; if all succeed, AddComplete for each;
/// if Start fails at k, no further Start and AddFailure for 0..k (not k).
pub fn replay_existing(driver: &dyn Component, n: u32) -> Result<(), (u32, Error)> {
    for k in 0..n {
        if let Err(error) = driver.prepare(cpu(k)) {
            for j in 0..k {
                driver.abort(cpu(j)).unwrap();
            }
            return Err((k, error));
        }
    }
    for k in 0..n {
        driver.commit(cpu(k)).unwrap();
    }
    Ok(())
}

/// A value that is a function of its index, so a reader can tell a fully built
/// one from anything else.
#[derive(Debug, PartialEq, Eq)]
pub struct Built {
    pub index: u32,
    pub words: [u64; 6],
}

impl Built {
    pub fn new(index: ProcessorIndex) -> Self {
        let i = u64::from(index.get());
        let mut words = [0; 6];
        for (n, w) in words.iter_mut().enumerate() {
            *w = i
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(n as u32 * 7)
                ^ n as u64;
        }
        Self {
            index: index.get(),
            words,
        }
    }

    /// Panics unless this is exactly `Built::new(index)`.
    pub fn check(&self, index: ProcessorIndex) {
        assert_eq!(self, &Built::new(index), "slot {index} not fully built");
    }
}

/// Keeps every live block and frees what is left when dropped, so a test can
/// leak on purpose (a teardown with outstanding objects) without leaking.
#[derive(Default)]
pub struct Arena {
    live: Mutex<Vec<Block>>,
}

impl Arena {
    /// Blocks allocated and not freed.
    pub fn live_blocks(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

struct Block(NonNull<u8>, Layout);

// SAFETY: a block is plain memory owned by the arena; any thread may free it.
unsafe impl Send for Block {}

// SAFETY: blocks come from HostAlloc unchanged and go back to it unchanged.
unsafe impl RawAlloc for Arena {
    fn allocate(
        &self,
        layout: Layout,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        let block = HostAlloc.allocate(layout, processor)?;
        self.live.lock().unwrap().push(Block(block, layout));
        Ok(block)
    }
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let mut live = self.live.lock().unwrap();
        let at = live.iter().position(|block| block.0 == ptr).unwrap();
        live.swap_remove(at);
        // SAFETY: forwarded from our caller.
        unsafe { HostAlloc.deallocate(ptr, layout) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        for Block(ptr, layout) in self.live.get_mut().unwrap().drain(..) {
            // SAFETY: a block of ours that no one uses any more (the pool that
            // kept it is gone, and so are its objects).
            unsafe { HostAlloc.deallocate(ptr, layout) };
        }
    }
}
