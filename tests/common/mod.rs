//! Helpers shared by the core's integration tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use perproc::host::HostPlatform;
use perproc::{Component, Error, ProcessorIndex};

pub fn cpu(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap()
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
