//! Issue 10 on the simulated kernel: `KernelPlatform`'s pins cannot be misused
//! by safe code. Nested pins keep `DISPATCH_LEVEL` until the outermost ends;
//! pinning above `DISPATCH_LEVEL` is refused and touches nothing; a `PoolBox`
//! dropped at interrupt level comes back intact; a pin of one kernel gets no
//! slot in the containers of another.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use perproc::{
    Component, Error, Limits, PerCpu, PerCpuCounters, PerCpuPool, PerCpuQueue, PinError, Platform,
    ProcessorIndex,
};
use perproc_wdk::sim::Kernel;
use perproc_wdk::{pool_tag, sys, KernelPlatform};

const TAG: u32 = pool_tag(*b"Pin ");

perproc::counters! {
    struct Stats { requests, bytes }
}

fn irql() -> u8 {
    // SAFETY: reads the simulated IRQL of the calling thread.
    unsafe { sys::KeGetCurrentIrql() }
}

/// Issue 10's first sequence, `let a = pin(); let b = pin(); drop(a);`, can
/// no longer be written (see the `compile_fail` example on `KernelPlatform`);
/// what nesting does instead: the IRQL stays at DISPATCH_LEVEL until the
/// outermost pin ends, then goes back to PASSIVE_LEVEL.
#[test]
fn nested_pins_keep_dispatch_level_until_the_outermost_ends() {
    let kernel = Kernel::new(&[4], 2).unwrap();
    let _on = kernel.enter_on(1).unwrap();
    let platform = KernelPlatform::new(TAG).unwrap();
    assert_eq!(irql(), 0);
    let seen = platform
        .pinned(|outer| {
            let mut seen = vec![irql()];
            let inner = platform
                .pinned(|inner| {
                    seen.push(irql());
                    let innermost = platform.pinned(|p| (p.processor(), irql())).unwrap();
                    seen.push(innermost.1);
                    assert_eq!(innermost.0, inner.processor());
                    inner.processor()
                })
                .unwrap();
            // The inner pins have ended: the outer one still holds DISPATCH_LEVEL.
            seen.push(irql());
            assert_eq!(inner, outer.processor());
            assert_eq!(outer.processor().get(), 1);
            seen
        })
        .unwrap();
    assert_eq!(seen, [2, 2, 2, 2]);
    assert_eq!(irql(), 0);
    assert!(kernel.violations().is_empty());
}

/// The exclusivity behind that IRQL: while a thread's outer pin lives (its
/// inner pins already ended), another thread on the same processor cannot pin.
#[test]
fn an_ended_inner_pin_does_not_let_another_thread_onto_the_processor() {
    let kernel = Kernel::new(&[4], 4).unwrap();
    let inner_done = AtomicBool::new(false);
    let other_pinned = AtomicBool::new(false);
    std::thread::scope(|s| {
        let holder = kernel.spawn_on(s, 3, || {
            let platform = KernelPlatform::new(TAG).unwrap();
            platform
                .pinned(|_outer| {
                    platform.pinned(|_inner| ()).unwrap();
                    inner_done.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(150));
                    // Still ours: the other thread is waiting in its raise.
                    !other_pinned.load(Ordering::SeqCst)
                })
                .unwrap()
        });
        let other = kernel.spawn_on(s, 3, || {
            while !inner_done.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            let platform = KernelPlatform::new(TAG).unwrap();
            platform
                .pinned(|_| other_pinned.store(true, Ordering::SeqCst))
                .unwrap();
        });
        assert!(holder.join().unwrap().unwrap(), "the processor was shared");
        other.join().unwrap().unwrap();
    });
    assert!(other_pinned.load(Ordering::SeqCst));
    assert!(kernel.violations().is_empty());
}

/// Issue 10's second sequence: pinning above DISPATCH_LEVEL (an ISR) is
/// refused, the closure does not run, and no container state changes.
#[test]
fn pinning_above_dispatch_level_is_refused_and_touches_nothing() {
    let kernel = Kernel::new(&[4], 2).unwrap();
    let _on = kernel.enter().unwrap();
    let platform = KernelPlatform::new(TAG).unwrap();
    let pool = PerCpuPool::<u64, _>::new(
        &platform,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    )
    .unwrap();
    let queue = PerCpuQueue::<u64, _>::new(&platform, 16).unwrap();
    let counters = PerCpuCounters::<Stats, _>::new(&platform).unwrap();
    let set = (&pool, &queue, &counters);
    let _ = set.prepare(ProcessorIndex::ZERO).unwrap();
    set.commit(ProcessorIndex::ZERO).unwrap();
    // Some state to compare: one object out, one item queued, one count.
    let held = platform.pinned(|pin| pool.alloc(pin, 1)).unwrap().unwrap();
    platform
        .pinned(|pin| {
            queue.push(pin, 7).unwrap();
            counters.add(pin, Stats::requests, 1);
        })
        .unwrap();
    let before = (pool.stats(), counters.sums());

    // SAFETY: simulated IRQL calls, balanced below: the thread stands for an
    // ISR at HIGH_LEVEL.
    let old = unsafe { sys::KfRaiseIrql(15) };
    assert_eq!(old, 0);
    let ran = AtomicUsize::new(0);
    let refused = [
        platform.pinned(|pin| {
            ran.fetch_add(1, Ordering::SeqCst);
            drop(pool.alloc(pin, 2));
        }),
        platform.pinned(|pin| {
            ran.fetch_add(1, Ordering::SeqCst);
            let _ = queue.push(pin, 8);
        }),
        platform.pinned(|pin| {
            ran.fetch_add(1, Ordering::SeqCst);
            counters.add(pin, Stats::bytes, 100);
        }),
    ];
    // A pin refused there is refused wherever it would be needed: `?` into
    // perproc::Error.
    let through: Result<(), Error> = (|| {
        let object = platform.pinned(|pin| pool.alloc(pin, 3))??;
        drop(object);
        Ok(())
    })();
    assert_eq!(irql(), 15, "a refused pin changed the IRQL");
    // SAFETY: back to the IRQL raised from.
    unsafe { sys::KeLowerIrql(old) };

    assert_eq!(refused, [Err(PinError::InterruptLevel); 3]);
    assert_eq!(through, Err(Error::Pin(PinError::InterruptLevel)));
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!((pool.stats(), counters.sums()), before);
    let drained: Vec<u64> = queue.drain_all().map(|(_, item)| item).collect();
    assert_eq!(drained, [7]);
    platform.pinned(|pin| pool.free(pin, held)).unwrap();
    assert_eq!(pool.stats().outstanding, 0);
    assert!(kernel.violations().is_empty());
}

static DROPPED: AtomicUsize = AtomicUsize::new(0);

struct Request(u64);

impl Drop for Request {
    fn drop(&mut self) {
        DROPPED.fetch_add(usize::try_from(self.0).unwrap(), Ordering::SeqCst);
    }
}

/// Dropping a `PoolBox` does not pin, so it is safe at any IRQL: at HIGH_LEVEL
/// the value is dropped, the object goes onto the pool's home list
/// (`returning`), and the pool takes it back before it would grow.
#[test]
fn a_pool_box_dropped_at_interrupt_level_comes_back_and_is_reused() {
    let kernel = Kernel::new(&[4], 2).unwrap();
    let _on = kernel.enter().unwrap();
    let platform = KernelPlatform::new(TAG).unwrap();
    // One object in all, no per-processor caching: the next allocation can
    // only succeed by reusing the dropped one.
    let pool = PerCpuPool::<Request, _>::new(
        &platform,
        Limits {
            total: 1,
            per_cpu: 0,
        },
    )
    .unwrap();
    let _ = pool.prepare(ProcessorIndex::ZERO).unwrap();
    pool.commit(ProcessorIndex::ZERO).unwrap();
    let boxed = platform
        .pinned(|pin| pool.alloc(pin, Request(5)))
        .unwrap()
        .unwrap();
    let address = std::ptr::from_ref::<Request>(&boxed).addr();

    // SAFETY: simulated IRQL calls, balanced below.
    let old = unsafe { sys::KfRaiseIrql(15) };
    drop(boxed);
    // SAFETY: back to the IRQL raised from.
    unsafe { sys::KeLowerIrql(old) };

    assert_eq!(DROPPED.load(Ordering::SeqCst), 5);
    let stats = pool.stats();
    assert_eq!(
        (stats.returning, stats.outstanding, stats.objects),
        (1, 0, 1)
    );
    let again = platform
        .pinned(|pin| pool.alloc(pin, Request(0)))
        .unwrap()
        .unwrap();
    assert_eq!(std::ptr::from_ref::<Request>(&again).addr(), address);
    let stats = pool.stats();
    assert_eq!(
        (stats.returning, stats.outstanding, stats.objects),
        (0, 1, 1)
    );
    platform.pinned(|pin| pool.free(pin, again)).unwrap();
    assert_eq!(pool.teardown(), 0);
    assert!(kernel.violations().is_empty());
}

/// A platform carries its kernel: a pin made through kernel A's platform gets
/// no slot in kernel B's containers (the pool serves it from its depot), and
/// B's platform refuses to pin a thread that runs on A.
#[test]
fn a_pin_of_one_kernel_gets_no_slot_in_containers_of_another() {
    let a = Kernel::new(&[4], 2).unwrap();
    let b = Kernel::new(&[4], 2).unwrap();
    let _on_a = a.enter().unwrap();
    let platform_a = KernelPlatform::new(TAG).unwrap();
    let (platform_b, values, pool) = {
        let _on_b = b.enter().unwrap();
        let platform_b = KernelPlatform::new(TAG).unwrap();
        let values = PerCpu::new(&platform_b, |_| Ok(11u32)).unwrap();
        let pool = PerCpuPool::<u32, _>::new(
            &platform_b,
            Limits {
                total: 16,
                per_cpu: 4,
            },
        )
        .unwrap();
        let set = (&values, &pool);
        let _ = set.prepare(ProcessorIndex::ZERO).unwrap();
        set.commit(ProcessorIndex::ZERO).unwrap();
        // On B, B's pin finds processor 0's slot.
        assert_eq!(
            platform_b.pinned(|pin| values.current(pin).copied()),
            Ok(Some(11))
        );
        (platform_b, values, pool)
    };
    assert!(!platform_a.shares_processors(&platform_b));
    assert!(platform_a.shares_processors(&KernelPlatform::new(pool_tag(*b"Othr")).unwrap()));

    // This thread now runs on A: B's platform cannot pin it.
    assert_eq!(platform_b.pinned(|_| ()), Err(PinError::Unavailable));
    // A's pin, same index, handed to B's containers: no slot.
    let boxed = platform_a
        .pinned(|pin| {
            assert_eq!(pin.processor(), ProcessorIndex::ZERO);
            assert!(values.current(pin).is_none());
            pool.alloc(pin, 3)
        })
        .unwrap()
        .unwrap();
    let stats = pool.stats();
    assert_eq!((stats.direct_allocs, stats.outstanding), (1, 1));
    let cpu0 = pool.processor_stats(ProcessorIndex::ZERO).unwrap();
    assert_eq!(cpu0.allocs(), 0, "A's pin used B's processor cache");
    platform_a.pinned(|pin| pool.free(pin, boxed)).unwrap();
    assert_eq!(pool.stats().direct_frees, 1);
    assert!(a.violations().is_empty());
    assert!(b.violations().is_empty());
}

#[test]
fn a_platform_outside_an_entered_kernel_is_an_error() {
    assert_eq!(
        KernelPlatform::new(TAG).unwrap_err(),
        Error::Pin(PinError::Unavailable)
    );
    let kernel = Kernel::new(&[4], 1).unwrap();
    let platform = {
        let _on = kernel.enter().unwrap();
        KernelPlatform::new(TAG).unwrap()
    };
    // Left the kernel: the platform's pins are refused, not served as processor 0.
    assert_eq!(platform.pinned(|_| ()), Err(PinError::Unavailable));
    // Another thread entered in the same kernel pins through the same platform.
    std::thread::scope(|s| {
        let on = kernel.spawn_on(s, 0, || platform.pinned(|pin| pin.processor().get()));
        assert_eq!(on.join().unwrap().unwrap(), Ok(0));
    });
}
