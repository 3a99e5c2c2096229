//! `PerCpu::new_zeroed` and `prepare_zeroed_with`: a value built in place, in
//! its slot, never on the stack of the thread that prepares it; a failing
//! in-place constructor leaks nothing and drops what it half built.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::cpu;
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Component, Error, InitFn, PerCpu, Platform, Prepared, SlotState, Zeroable};

/// 1 MiB (32 rows of 4096 words): sixteen times the stack of the thread that
/// builds it.
type Huge = [[u64; 4096]; 32];
const SMALL_STACK: usize = 64 * 1024;
const _: () = assert!(core::mem::size_of::<Huge>() == 16 * SMALL_STACK);

/// Runs `f` on a thread with a 64 KiB stack: a `Huge` moved through that
/// stack (by value, in a `Result`, into a slot) overflows it and aborts the
/// test process.
fn on_a_small_stack<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(SMALL_STACK)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

#[test]
fn a_value_larger_than_the_stack_is_built_and_published_in_place() {
    let platform = HostPlatform::new(4).unwrap();
    let tables = PerCpu::new_zeroed(&platform, |i, table: &mut Huge| {
        assert!(
            table.iter().all(|row| row[0] == 0 && row[4095] == 0),
            "not zeroed"
        );
        table[0][0] = u64::from(i.get());
        table[31][4095] = u64::from(i.get()) + 1000;
        Ok(())
    })
    .unwrap();
    let prepared = on_a_small_stack(|| {
        let first = tables.prepare(cpu(2));
        // Through the Component impl (a set) as the shim would call it.
        let second = (&tables,).prepare(cpu(3));
        (first, second)
    });
    assert_eq!(prepared, (Ok(Prepared::New), Ok(Prepared::New)));
    for i in [2u32, 3] {
        let table = tables.get(cpu(i)).unwrap();
        assert_eq!(
            (table[0][0], table[16][2048], table[31][4095]),
            (u64::from(i), 0, u64::from(i) + 1000)
        );
        assert_eq!(tables.state(cpu(i)), SlotState::Prepared);
    }
    assert!(tables.slot_size() >= core::mem::size_of::<Huge>());
    // Readers on the small stack too: a reference, never a copy.
    on_a_small_stack(|| {
        platform.bind_current_thread(cpu(3)).unwrap();
        let last = platform
            .pinned(|pin| tables.current(pin).map(|t| t[31][4095]))
            .unwrap();
        assert_eq!(last, Some(1003));
    });
    assert!(tables.get(cpu(1)).is_none());
}

#[test]
fn prepare_zeroed_with_builds_in_place_on_a_small_stack() {
    let counting = CountingAlloc::new(HostAlloc);
    let never: InitFn<Huge> = |_| Err(Error::NotPrepared);
    let tables = PerCpu::new_in(&HostPlatform::new(4).unwrap(), &counting, never).unwrap();
    let prepared = on_a_small_stack(|| {
        tables.prepare_zeroed_with(cpu(1), |i, table| {
            table[5][7] = u64::from(i.get()) * 3;
            Ok(())
        })
    });
    assert_eq!(prepared, Ok(Prepared::New));
    assert_eq!(tables.get(cpu(1)).unwrap()[5][7], 3);
    // Idempotent: an already prepared processor is not rebuilt.
    let again = tables.prepare_zeroed_with(cpu(1), |_, _| Err(Error::Exhausted));
    assert_eq!(again, Ok(Prepared::Already));
    assert_eq!(counting.live_blocks(), 2); // the table and one slot
    drop(tables);
    assert_eq!(counting.live_blocks(), 0);
}

static DROPPED: AtomicUsize = AtomicUsize::new(0);
static DROPPED_PROGRESS: AtomicUsize = AtomicUsize::new(0);

/// A value with a destructor, built in place in steps.
#[repr(C)]
struct Half {
    progress: usize,
    words: [u64; 512],
}

// SAFETY: all-zero bytes are a valid `Half`: a zero `usize` and zero `u64`s.
unsafe impl Zeroable for Half {}

impl Drop for Half {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
        DROPPED_PROGRESS.store(self.progress, Ordering::SeqCst);
    }
}

#[test]
fn a_failing_in_place_constructor_leaks_nothing_and_drops_what_it_built() {
    let counting = CountingAlloc::new(HostAlloc);
    let failing = FailingAlloc::new(&counting);
    let never: InitFn<Half> = |_| Err(Error::NotPrepared);
    let halves = PerCpu::new_in(&HostPlatform::new(4).unwrap(), &failing, never).unwrap();
    let empty = (counting.live_blocks(), counting.live_bytes());

    // The constructor fills half the value in, then fails.
    let failed = halves.prepare_zeroed_with(cpu(2), |_, half| {
        half.words[..256].fill(u64::MAX);
        half.progress = 256;
        Err(Error::Status(-1_073_741_670))
    });
    assert_eq!(failed, Err(Error::Status(-1_073_741_670)));
    assert_eq!(
        DROPPED.load(Ordering::SeqCst),
        1,
        "half-built value not dropped"
    );
    assert_eq!(DROPPED_PROGRESS.load(Ordering::SeqCst), 256);
    assert_eq!((counting.live_blocks(), counting.live_bytes()), empty);
    assert_eq!(halves.state(cpu(2)), SlotState::Absent);
    assert!(halves.get(cpu(2)).is_none());
    assert_eq!(halves.iter_all().count(), 0);

    // The slot's memory refused: the constructor never runs, nothing to drop.
    failing.plan(FailPlan::Once(0));
    let refused = halves.prepare_zeroed_with(cpu(2), |_, _| unreachable!("no memory"));
    assert_eq!(refused, Err(Error::OutOfMemory));
    assert_eq!(DROPPED.load(Ordering::SeqCst), 1);
    assert_eq!((counting.live_blocks(), counting.live_bytes()), empty);

    // The index is usable afterwards, and the value starts from zero again.
    failing.plan(FailPlan::Never);
    let built = halves.prepare_zeroed_with(cpu(2), |_, half| {
        assert_eq!(half.progress, 0);
        assert!(half.words.iter().all(|w| *w == 0));
        half.progress = 512;
        Ok(())
    });
    assert_eq!(built, Ok(Prepared::New));
    assert_eq!(halves.get(cpu(2)).unwrap().progress, 512);
    assert_eq!(DROPPED.load(Ordering::SeqCst), 1);
    drop(halves);
    assert_eq!(DROPPED.load(Ordering::SeqCst), 2);
    assert_eq!(DROPPED_PROGRESS.load(Ordering::SeqCst), 512);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn a_panicking_in_place_constructor_leaves_the_index_usable() {
    let counting = CountingAlloc::new(HostAlloc);
    let never: InitFn<[u32; 64]> = |_| Err(Error::NotPrepared);
    let t = PerCpu::new_in(&HostPlatform::new(2).unwrap(), &counting, never).unwrap();
    let before = counting.live_blocks();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        t.prepare_zeroed_with(cpu(1), |_, _| panic!("constructor failed"))
    }));
    assert!(caught.is_err());
    assert_eq!(counting.live_blocks(), before);
    assert_eq!(t.state(cpu(1)), SlotState::Absent);
    let built = t.prepare_zeroed_with(cpu(1), |_, v| {
        v[63] = 9;
        Ok(())
    });
    assert_eq!(built, Ok(Prepared::New));
    assert_eq!(t.get(cpu(1)).unwrap()[63], 9);
}
