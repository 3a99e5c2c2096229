//! `DriverSlot`: install, rundown-protected `with`, `take` waiting for the
//! active users, and reuse after `take`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use perproc_wdk::sim::Kernel;
use perproc_wdk::{pool_tag, sys, DriverSlot, PoolAlloc};

const TAG: u32 = pool_tag(*b"Slot");

/// Counts its drops, so a test sees when `take` really dropped it.
struct State {
    value: u64,
    drops: &'static AtomicUsize,
}

impl Drop for State {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn with_sees_the_installed_value_and_nothing_before_or_after() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    let slot: DriverSlot<State> = DriverSlot::new();
    let kernel = Kernel::new(&[4], 1).unwrap();
    let _on = kernel.enter().unwrap();
    assert_eq!(slot.with(|s| s.value), None);
    assert!(slot
        .install(
            State {
                value: 3,
                drops: &DROPS
            },
            PoolAlloc::new(TAG)
        )
        .is_ok());
    assert_eq!(slot.with(|s| s.value), Some(3));
    assert_eq!(
        slot.with(|s| slot.with(|t| s.value + t.value)),
        Some(Some(6))
    ); // nests
    let (again, status) = slot
        .install(
            State {
                value: 4,
                drops: &DROPS,
            },
            PoolAlloc::new(TAG),
        )
        .unwrap_err();
    assert_eq!((again.value, status), (4, sys::STATUS_INVALID_DEVICE_STATE));
    drop(again);
    let taken = slot.take().unwrap();
    assert_eq!(taken.value, 3);
    drop(taken);
    assert_eq!(slot.with(|s| s.value), None);
    assert!(slot.take().is_none());
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
    // The slot reopens after a take: a driver loaded again installs again.
    assert!(slot
        .install(
            State {
                value: 5,
                drops: &DROPS
            },
            PoolAlloc::new(TAG)
        )
        .is_ok());
    assert_eq!(slot.with(|s| s.value), Some(5));
    drop(slot);
    assert_eq!(DROPS.load(Ordering::SeqCst), 3);
    assert_eq!(kernel.pool().live_bytes(TAG), 0);
    assert!(kernel.violations().is_empty());
}

/// `is_installed` is the driver's "is it initialised?" flag, and a slot's
/// `Debug` says the same: false before `install`, true after, false again
/// after `take`.
#[test]
fn is_installed_and_debug_follow_install_and_take() {
    let slot: DriverSlot<u64> = DriverSlot::new();
    let kernel = Kernel::new(&[4], 1).unwrap();
    let _on = kernel.enter().unwrap();
    assert!(!slot.is_installed());
    assert_eq!(format!("{slot:?}"), "DriverSlot { installed: false }");
    slot.install(9, PoolAlloc::new(TAG)).unwrap();
    assert!(slot.is_installed());
    assert_eq!(format!("{slot:?}"), "DriverSlot { installed: true }");
    assert_eq!(slot.take(), Some(9));
    assert!(!slot.is_installed());
    assert_eq!(format!("{slot:?}"), "DriverSlot { installed: false }");
    assert_eq!(kernel.pool().live_bytes(TAG), 0);
    assert!(kernel.violations().is_empty());
}

/// `take` waits for a user inside `with` (rundown), and while it waits new
/// users are refused.
#[test]
fn take_waits_for_active_users_and_refuses_new_ones() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    static SLOT: DriverSlot<State> = DriverSlot::new();
    let kernel = Kernel::new(&[4], 4).unwrap();
    {
        let _on = kernel.enter().unwrap();
        assert!(SLOT
            .install(
                State {
                    value: 9,
                    drops: &DROPS
                },
                PoolAlloc::new(TAG)
            )
            .is_ok());
    }
    let inside = AtomicBool::new(false);
    let release = AtomicBool::new(false);
    let taken = AtomicBool::new(false);
    std::thread::scope(|s| {
        // A dispatch routine on processor 1, in the middle of a request.
        let user = kernel.spawn_on(s, 1, || {
            SLOT.with(|state| {
                inside.store(true, Ordering::SeqCst);
                while !release.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                // Still alive: take has not dropped it under us.
                assert_eq!(DROPS.load(Ordering::SeqCst), 0);
                state.value
            })
        });
        while !inside.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // Unload on processor 0.
        let unload = kernel.spawn_on(s, 0, || {
            let value = SLOT.take().map(|state| state.value);
            taken.store(true, Ordering::SeqCst);
            value
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !taken.load(Ordering::SeqCst),
            "take did not wait for the user"
        );
        // A new request while Unload waits: refused.
        let late = kernel.spawn_on(s, 2, || SLOT.with(|state| state.value));
        assert_eq!(late.join().unwrap().unwrap(), None);
        release.store(true, Ordering::SeqCst);
        assert_eq!(user.join().unwrap().unwrap(), Some(9));
        assert_eq!(unload.join().unwrap().unwrap(), Some(9));
    });
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    assert!(!SLOT.is_installed());
    assert_eq!(kernel.pool().live_bytes(TAG), 0);
    assert!(kernel.violations().is_empty());
}

/// Many users and one take racing: every `with` either ran on the live value
/// or got `None`; the value is dropped once, after the last user.
#[test]
fn users_racing_take_never_see_a_dropped_value() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    static SLOT: DriverSlot<State> = DriverSlot::new();
    let kernel = Kernel::new(&[4], 4).unwrap();
    {
        let _on = kernel.enter().unwrap();
        assert!(SLOT
            .install(
                State {
                    value: 1,
                    drops: &DROPS
                },
                PoolAlloc::new(TAG)
            )
            .is_ok());
    }
    let served = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for cpu in 1..4u32 {
            let served = &served;
            kernel.spawn_on(s, cpu, move || {
                let use_it = || {
                    SLOT.with(|state| {
                        assert_eq!(DROPS.load(Ordering::SeqCst), 0, "used after drop");
                        state.value
                    })
                };
                while let Some(v) = use_it() {
                    served.fetch_add(usize::try_from(v).unwrap(), Ordering::SeqCst);
                }
            });
        }
        while served.load(Ordering::SeqCst) < 1000 {
            std::thread::yield_now();
        }
        kernel.spawn_on(s, 0, || assert!(SLOT.take().is_some()));
    });
    assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    assert_eq!(kernel.pool().live_bytes(TAG), 0);
}
