//! Pins of a platform that does not share processors with a container's
//! (`Platform::shares_processors` false): containers treat them as pins of a
//! processor they have no slot for. `current` gives `None`; the pool allocates
//! and frees through its depot and never touches a processor's cache.

mod common;

use common::{cpu, Built};
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::CountingAlloc;
use perproc::{
    InitFn, Limits, PerCpu, PerCpuCounters, PerCpuPool, PinError, Platform, Prepared,
    ProcessorIndex, SlotState,
};

/// One of several simulated machines in one process, told apart by `id`.
/// Pinning goes through the host's process-wide occupancy table, so two
/// machines' pins of one index still exclude each other; the machines only
/// *say* they do not share processors, which is what containers go by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Machine {
    id: u32,
    host: HostPlatform,
}

impl Machine {
    fn new(id: u32, processors: u32) -> Self {
        Self {
            id,
            host: HostPlatform::new(processors).unwrap(),
        }
    }
}

// SAFETY: every pin is the host platform's, so its promises carry over:
// 1. the thread runs on its bound index and cannot rebind while pinned
//    (HostPlatform refuses), so it does not migrate;
// 2. the outermost pin of a thread takes the index's process-wide occupancy
//    word, which excludes every other thread pinning that index through any
//    `Machine` or any `HostPlatform`, whatever `shares_processors` says;
// 3. there are no interrupts on the host;
// 4. the occupancy word is taken with acquire and released with release, so
//    successive pins of one index are ordered;
// 5. equality of `id` is an equivalence, and it is false only between
//    machines whose pins are (through the host) mutually exclusive anyway.
unsafe impl Platform for Machine {
    type Alloc = HostAlloc;
    type Token = ProcessorIndex;

    fn max_processors(&self) -> u32 {
        self.host.max_processors()
    }

    fn current_processor(&self) -> ProcessorIndex {
        self.host.current_processor()
    }

    fn allocator(&self) -> HostAlloc {
        HostAlloc
    }

    unsafe fn enter_pin(&self) -> Result<(ProcessorIndex, ProcessorIndex), PinError> {
        // SAFETY: our caller's obligations (exit on this thread, LIFO) are the
        // host's, and `exit_pin` below forwards the token to it.
        unsafe { self.host.enter_pin() }
    }

    unsafe fn exit_pin(&self, token: ProcessorIndex) {
        // SAFETY: the token is from `self.host.enter_pin` (ours forwards it),
        // on this thread, LIFO (our caller's obligations).
        unsafe { self.host.exit_pin(token) }
    }

    fn shares_processors(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

#[test]
fn the_test_machines_share_only_with_themselves() {
    let (a, a_too, b) = (Machine::new(1, 4), Machine::new(1, 4), Machine::new(2, 4));
    assert!(a.shares_processors(&a) && a.shares_processors(&a_too));
    assert!(!a.shares_processors(&b) && !b.shares_processors(&a));
    // Pins of both nest, and report the bound processor.
    std::thread::scope(|s| {
        s.spawn(|| {
            a.host.bind_current_thread(cpu(3)).unwrap();
            let inner = a.pinned(|outer| {
                let inner = b.pinned(|inner| (inner.processor(), inner.platform().id));
                (outer.processor(), outer.platform().id, inner)
            });
            assert_eq!(inner, Ok((cpu(3), 1, Ok((cpu(3), 2)))));
        });
    });
}

#[test]
fn current_is_none_for_a_pin_of_another_machine() {
    let (a, b) = (Machine::new(1, 4), Machine::new(2, 4));
    let init: InitFn<Built> = |i| Ok(Built::new(i));
    let table = PerCpu::new(&a, init).unwrap();
    assert_eq!(table.prepare(cpu(2)), Ok(Prepared::New));
    table.commit(cpu(2)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            a.host.bind_current_thread(cpu(2)).unwrap();
            // Its own machine's pin: the slot.
            let mine = a.pinned(|pin| table.current(pin).map(|v| v.index));
            assert_eq!(mine, Ok(Some(2)));
            // The same thread, the same index, another machine's pin: None,
            // although the slot is published and `get` sees it.
            let theirs = b.pinned(|pin| {
                assert_eq!(pin.processor(), cpu(2));
                table.current(pin).is_none()
            });
            assert_eq!(theirs, Ok(true));
            table.get(cpu(2)).unwrap().check(cpu(2));
            assert_eq!(table.state(cpu(2)), SlotState::Online);
        });
    });
    assert_eq!(*table.platform(), a);
}

#[test]
fn the_pool_serves_another_machines_pin_from_its_depot() {
    let (a, b) = (Machine::new(1, 4), Machine::new(2, 4));
    let counting = CountingAlloc::new(HostAlloc);
    let pool = PerCpuPool::<u64, _, _>::new_in(
        &a,
        &counting,
        Limits {
            total: 64,
            per_cpu: 8,
        },
    )
    .unwrap();
    for i in 0..4 {
        assert_eq!(pool.prepare(cpu(i)), Ok(Prepared::New));
        pool.commit(cpu(i)).unwrap();
    }
    let caches_untouched = |pool: &PerCpuPool<u64, Machine, &CountingAlloc<HostAlloc>>| {
        for stats in pool.processors() {
            assert_eq!(
                (stats.allocs(), stats.frees(), stats.cached, stats.exchanges),
                (0, 0, 0, 0),
                "{stats:?}"
            );
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            a.host.bind_current_thread(cpu(1)).unwrap();
            b.pinned(|pin| {
                let boxed = pool.alloc(pin, 7).unwrap();
                let raw = pool.alloc_raw(pin, 8).unwrap();
                let local = pool.local(pin);
                let batch: Vec<_> = (0..3).map(|v| local.alloc(v).unwrap()).collect();
                assert_eq!(*boxed, 7);
                pool.free(pin, boxed);
                // SAFETY: allocated above from this pool, freed once.
                unsafe { pool.free_raw(pin, raw) };
                for object in batch {
                    local.free(object);
                }
            })
            .unwrap();
        });
    });
    let stats = pool.stats();
    assert_eq!(
        (stats.direct_allocs, stats.direct_frees),
        (5, 5),
        "{stats:?}"
    );
    assert_eq!((stats.outstanding, stats.cached), (0, 0), "{stats:?}");
    caches_untouched(&pool);
    // The pool's own machine pinned to the same processor uses its cache.
    std::thread::scope(|s| {
        s.spawn(|| {
            a.host.bind_current_thread(cpu(1)).unwrap();
            a.pinned(|pin| pool.free(pin, pool.alloc(pin, 9).unwrap()))
                .unwrap();
        });
    });
    let one = pool.processor_stats(cpu(1)).unwrap();
    assert_eq!((one.allocs(), one.frees()), (1, 1), "{one:?}");
    assert_eq!(pool.stats().direct_allocs, 5);
    assert_eq!(pool.teardown(), 0);
    assert_eq!(counting.live_blocks(), 0);
}

perproc::counters! {
    struct Io { submitted, bytes }
}

#[test]
fn counters_count_another_machines_pin_as_unplaced() {
    let (a, b) = (Machine::new(1, 4), Machine::new(2, 4));
    let stats = PerCpuCounters::<Io, _>::new(&a).unwrap();
    assert_eq!(stats.prepare(cpu(1)), Ok(Prepared::New));
    std::thread::scope(|s| {
        s.spawn(|| {
            a.host.bind_current_thread(cpu(1)).unwrap();
            b.pinned(|pin| {
                stats.add(pin, Io::submitted, 1);
                stats.local(pin).add(Io::bytes, 512);
            })
            .unwrap();
            a.pinned(|pin| stats.add(pin, Io::bytes, 4096)).unwrap();
        });
    });
    // Processor 1's own block saw only its own machine's pin.
    let one = stats.processor(cpu(1)).unwrap();
    assert_eq!((one.submitted, one.bytes), (0, 4096), "{one:?}");
    let unplaced = stats.unplaced();
    assert_eq!(
        (unplaced.submitted, unplaced.bytes),
        (1, 512),
        "{unplaced:?}"
    );
    assert_eq!(
        stats.sums(),
        Io {
            submitted: 1,
            bytes: 4608
        }
    );
}

#[test]
fn the_host_platform_checks_its_size_and_refuses_rebinding_while_pinned() {
    use perproc::host::HOST_MAX_PROCESSORS;
    use perproc::Error;
    let largest = HostPlatform::with_groups(HOST_MAX_PROCESSORS, 64).unwrap();
    assert_eq!(largest.max_processors(), HOST_MAX_PROCESSORS);
    assert_eq!(
        HostPlatform::with_groups(HOST_MAX_PROCESSORS + 1, 64),
        Err(Error::CapacityOverflow)
    );
    assert_eq!(
        HostPlatform::with_groups(8, 0),
        Err(Error::CapacityOverflow)
    );
    assert_eq!(
        HostPlatform::with_groups(8, 65),
        Err(Error::CapacityOverflow)
    );
    assert_eq!(HostPlatform::with_groups(8, 3).unwrap().groups().size(), 3);

    let host = HostPlatform::new(4).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            host.bind_current_thread(cpu(1)).unwrap();
            assert!(matches!(
                host.bind_current_thread(cpu(4)),
                Err(Error::IndexOutOfRange { capacity: 4, .. })
            ));
            host.pinned(|pin| {
                assert_eq!(pin.processor(), cpu(1));
                assert_eq!(
                    format!("{pin:?}"),
                    "PinGuard { processor: ProcessorIndex(1), .. }"
                );
                // Moving the thread while it is pinned would break the pin.
                assert_eq!(host.bind_current_thread(cpu(2)), Err(Error::Busy));
            })
            .unwrap();
            host.bind_current_thread(cpu(2)).unwrap();
            host.pinned(|pin| assert_eq!(pin.processor(), cpu(2)))
                .unwrap();
        });
    });
}
