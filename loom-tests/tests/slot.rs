//! Loom models of `DriverSlot` (the shim's rundown-protected home for driver
//! state): `with` racing `take`, `install` racing `with`, `get`, `is_installed`
//! and `take`, and two `take`s racing, on the simulated kernel's pool.
//!
//! The value lives in a loom cell, so loom checks that every access of it is
//! ordered after the previous one: a user's read inside `with` before the
//! taker's write after `take`, the installer's write before a reader's read.
//! Each `Acquire`/`Release` of `driver-shim/src/slot.rs` that these accesses
//! need is killed by a model here when weakened to `Relaxed`; the others carry
//! an `// ordering: equivalent:` comment there.
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3
//! CARGO_TARGET_DIR=target/loom cargo test -p perproc-loom-tests --release
//! --test slot`.
#![cfg(loom)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use loom::cell::UnsafeCell;
use loom::thread;
use perproc_wdk::sim::Kernel;
use perproc_wdk::{pool_tag, DriverSlot, PoolAlloc};

const TAG: u32 = pool_tag(*b"LSlt");

/// The driver state in the slot: a word in a cell loom tracks.
struct Value(UnsafeCell<u64>);

// SAFETY: every access goes through loom's cell, which fails the model
// ("Causality violation") when two threads' accesses are not ordered by
// happens-before; checking that is the point of sharing it.
unsafe impl Sync for Value {}

impl Value {
    /// A value, written (created) on the calling thread.
    fn new(word: u64) -> Self {
        Self(UnsafeCell::new(word))
    }

    fn read(&self) -> u64 {
        // SAFETY: loom checks that the read is ordered after every write.
        self.0.with(|at| unsafe { *at })
    }

    fn write(&self, word: u64) {
        // SAFETY: loom checks that the write is ordered after every access.
        self.0.with_mut(|at| unsafe { *at = word });
    }
}

/// `DriverEntry` on processor 1: writes the value (7), then installs it.
fn spawn_installer(kernel: &Kernel, slot: &Arc<DriverSlot<Value>>) -> thread::JoinHandle<()> {
    let kernel = kernel.clone();
    let slot = Arc::clone(slot);
    thread::spawn(move || {
        let _on = kernel.enter_on(1).unwrap();
        let value = Value::new(0);
        value.write(7);
        assert!(slot.install(value, PoolAlloc::new(TAG)).is_ok());
    })
}

/// `Unload` on processor `cpu`: takes the value, reads it, then writes it as
/// its new owner; what it read, if it got the value.
fn spawn_taker(
    kernel: &Kernel,
    slot: &Arc<DriverSlot<Value>>,
    cpu: u32,
) -> thread::JoinHandle<Option<u64>> {
    let kernel = kernel.clone();
    let slot = Arc::clone(slot);
    thread::spawn(move || {
        let _on = kernel.enter_on(cpu).unwrap();
        slot.take().map(|value| {
            let seen = value.read();
            value.write(8);
            seen
        })
    })
}

/// The slot's block went back to the pool and the kernel saw no misuse.
fn assert_freed_and_clean(kernel: &Kernel) {
    assert_eq!(kernel.pool().live_bytes(TAG), 0);
    assert!(kernel.violations().is_empty());
}

/// Set when some execution of the first model had a `with` refused while the
/// value was still live (the slot closing): the model reaches that state.
static REFUSED_WHILE_CLOSING: AtomicBool = AtomicBool::new(false);

/// A dispatch routine (`with`, and a nested `with` inside it) racing `Unload`
/// (`take`, then the new owner writes the value): the user's reads happen
/// before `take` moves the value out, a `with` while the slot is closing gets
/// `None`, and once refused no `with` sees the value again.
#[test]
fn with_racing_take_is_done_before_the_value_moves_out() {
    REFUSED_WHILE_CLOSING.store(false, Ordering::SeqCst);
    loom::model(|| {
        let kernel = Kernel::new(&[2], 2).unwrap();
        let _on = kernel.enter().unwrap();
        let slot = Arc::new(DriverSlot::new());
        assert!(slot.install(Value::new(7), PoolAlloc::new(TAG)).is_ok());

        let user = {
            let slot = Arc::clone(&slot);
            thread::spawn(move || {
                let outer = slot.with(|value| {
                    let inner = slot.with(Value::read);
                    (value.read(), inner)
                });
                (outer, slot.with(Value::read))
            })
        };
        let unload = {
            let kernel = kernel.clone();
            let slot = Arc::clone(&slot);
            thread::spawn(move || {
                let _on = kernel.enter_on(1).unwrap();
                let value = slot.take().unwrap();
                value.write(8);
                value.read()
            })
        };
        let (outer, after) = user.join().unwrap();
        assert_eq!(unload.join().unwrap(), 8);
        match outer {
            // The outer user keeps the value alive: a nested `with` either
            // runs on it or is refused because `take` is waiting.
            Some((7, Some(7))) => {}
            Some((7, None)) => {
                REFUSED_WHILE_CLOSING.store(true, Ordering::Relaxed);
                assert_eq!(after, None);
            }
            // Refused (closing or already taken): nothing comes back.
            None => assert_eq!(after, None),
            other => panic!("with saw {other:?}"),
        }
        assert!(matches!(after, Some(7) | None));
        assert!(!slot.is_installed());
        assert_eq!(slot.with(Value::read), None);
        assert_freed_and_clean(&kernel);
    });
    assert!(REFUSED_WHILE_CLOSING.load(Ordering::SeqCst));
}

/// A dispatch routine racing `Unload`, which takes the value and then tears
/// down the rest of the driver (here: writes `teardown`, state outside the
/// slot): a `with` that runs at all runs before the teardown. A `with` that
/// came after `take` and still found the (freed) block would read `teardown`
/// unordered with its write, which loom reports; the closure never touches the
/// value, so a model of a broken slot fails there without reading freed memory.
#[test]
fn with_after_take_finds_the_slot_empty() {
    loom::model(|| {
        let kernel = Kernel::new(&[2], 2).unwrap();
        let _on = kernel.enter().unwrap();
        let slot = Arc::new(DriverSlot::new());
        let teardown = Arc::new(Value::new(0));
        assert!(slot.install(Value::new(7), PoolAlloc::new(TAG)).is_ok());

        let user = {
            let slot = Arc::clone(&slot);
            let teardown = Arc::clone(&teardown);
            thread::spawn(move || slot.with(|_| teardown.read()))
        };
        let unload = {
            let kernel = kernel.clone();
            let slot = Arc::clone(&slot);
            let teardown = Arc::clone(&teardown);
            thread::spawn(move || {
                let _on = kernel.enter_on(1).unwrap();
                assert_eq!(slot.take().map(|value| value.read()), Some(7));
                teardown.write(1);
            })
        };
        unload.join().unwrap();
        assert!(matches!(user.join().unwrap(), Some(0) | None));
        assert_eq!(slot.with(|_| teardown.read()), None);
        assert_freed_and_clean(&kernel);
    });
}

/// `DriverEntry` installing (the value written before) while a dispatch
/// routine already calls `with`: it sees nothing or the whole value.
#[test]
fn install_publishes_the_value_to_with() {
    loom::model(|| {
        let kernel = Kernel::new(&[2], 2).unwrap();
        let _on = kernel.enter().unwrap();
        let slot = Arc::new(DriverSlot::new());

        let entry = spawn_installer(&kernel, &slot);
        let user = {
            let slot = Arc::clone(&slot);
            thread::spawn(move || slot.with(Value::read))
        };
        entry.join().unwrap();
        assert!(matches!(user.join().unwrap(), Some(7) | None));
        assert_eq!(slot.with(Value::read), Some(7));
        assert_eq!(slot.take().map(|value| value.read()), Some(7));
        assert_freed_and_clean(&kernel);
    });
}

/// As above through the unprotected `get` (no `take` runs meanwhile, as its
/// contract requires).
#[test]
fn install_publishes_the_value_to_get() {
    loom::model(|| {
        let kernel = Kernel::new(&[2], 2).unwrap();
        let _on = kernel.enter().unwrap();
        let slot = Arc::new(DriverSlot::new());

        let entry = spawn_installer(&kernel, &slot);
        let user = {
            let slot = Arc::clone(&slot);
            // SAFETY: `take` runs only after this thread is joined.
            thread::spawn(move || unsafe { slot.get() }.map(Value::read))
        };
        entry.join().unwrap();
        assert!(matches!(user.join().unwrap(), Some(7) | None));
        assert_eq!(slot.take().map(|value| value.read()), Some(7));
        assert_freed_and_clean(&kernel);
    });
}

/// `is_installed` returning `true` acquires the install: state the driver
/// set up before installing (here outside the slot) is visible.
#[test]
fn is_installed_sees_what_was_done_before_install() {
    loom::model(|| {
        let kernel = Kernel::new(&[2], 2).unwrap();
        let _on = kernel.enter().unwrap();
        let slot = Arc::new(DriverSlot::new());
        let ready = Arc::new(Value::new(0));
        assert!(!slot.is_installed());

        let entry = {
            let kernel = kernel.clone();
            let slot = Arc::clone(&slot);
            let ready = Arc::clone(&ready);
            thread::spawn(move || {
                let _on = kernel.enter_on(1).unwrap();
                ready.write(1);
                assert!(slot.install(Value::new(7), PoolAlloc::new(TAG)).is_ok());
            })
        };
        let observer = {
            let slot = Arc::clone(&slot);
            let ready = Arc::clone(&ready);
            thread::spawn(move || {
                if slot.is_installed() {
                    assert_eq!(ready.read(), 1);
                }
            })
        };
        entry.join().unwrap();
        observer.join().unwrap();
        assert!(slot.is_installed());
        assert!(slot.take().is_some());
        assert!(!slot.is_installed());
        assert_eq!(kernel.pool().live_bytes(TAG), 0);
    });
}

/// `DriverEntry` installing while `Unload` takes: `take` gets nothing or the
/// whole value (written before the install), and the taker owns it.
#[test]
fn install_racing_take() {
    loom::model(|| {
        let kernel = Kernel::new(&[2], 2).unwrap();
        let _on = kernel.enter().unwrap();
        let slot = Arc::new(DriverSlot::new());

        let entry = spawn_installer(&kernel, &slot);
        let unload = spawn_taker(&kernel, &slot, 0);
        entry.join().unwrap();
        match unload.join().unwrap() {
            Some(seen) => {
                assert_eq!(seen, 7);
                assert!(!slot.is_installed());
            }
            None => assert_eq!(slot.take().map(|value| value.read()), Some(7)),
        }
        assert_freed_and_clean(&kernel);
    });
}

/// Two `take`s racing: exactly one gets the value, the other `None` (it
/// waits while the first is closing), and the block is freed once.
#[test]
fn two_takes_one_value() {
    loom::model(|| {
        let kernel = Kernel::new(&[2], 2).unwrap();
        let _on = kernel.enter().unwrap();
        let slot = Arc::new(DriverSlot::new());
        assert!(slot.install(Value::new(7), PoolAlloc::new(TAG)).is_ok());

        let takers: Vec<_> = (0..2u32)
            .map(|cpu| spawn_taker(&kernel, &slot, cpu))
            .collect();
        let mut taken: Vec<_> = takers.into_iter().map(|t| t.join().unwrap()).collect();
        taken.sort_unstable();
        assert_eq!(taken, [None, Some(7)]);
        assert!(!slot.is_installed());
        assert_eq!(slot.with(Value::read), None);
        assert_freed_and_clean(&kernel);
    });
}
