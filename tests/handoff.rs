//! Plain (non-atomic) memory handed from one thread to another by the host
//! platform's pin alone, or by a pool's home list alone: nothing else in these
//! tests orders the two threads (their flags are `Relaxed` on purpose, and
//! neither thread joins the other before the hand-over). Natively they check
//! what the hand-over delivers; under miri, whose race detector reports two
//! accesses of the same memory from different threads that no happens-before
//! edge orders (whatever the timing), they also check that the acquire and the
//! release of `src/host.rs`'s pin lock and of `src/pool/home.rs`'s list are
//! there. `scripts/mutants orderings` runs them under miri with each of those
//! orderings weakened (loom cannot see these atomics: std's, or memory written
//! through raw pointers), and with cross-thread address reuse off
//! (`-Zmiri-address-reuse-cross-thread-rate=0`): miri orders a free before a
//! reuse of its address on another thread, which would otherwise order these
//! threads in a few schedules.

mod common;

use common::cpu;

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::yield_now;

use perproc::host::HostPlatform;
use perproc::{Error, InitFn, Limits, PerCpu, PerCpuPool, Platform, Prepared};

/// A processor's counter, read and written with plain accesses by whichever
/// thread holds that processor's pin.
struct PinCell(UnsafeCell<u64>);

// SAFETY: the counter is only touched by a thread holding a pin of its
// processor (the platform makes pins of one processor exclusive and orders
// successive holders: Platform promises 2 and 4, which the test checks), or
// after every such thread is joined.
unsafe impl Sync for PinCell {}

#[test]
fn a_processors_data_passes_between_threads_bound_to_it_by_the_pin_alone() {
    let platform = HostPlatform::new(2).unwrap();
    let init: InitFn<PinCell> = |_| Ok(PinCell(UnsafeCell::new(0)));
    let table = PerCpu::new(&platform, init).unwrap();
    assert_eq!(table.prepare(cpu(1)), Ok(Prepared::New));
    table.commit(cpu(1)).unwrap();
    let rounds: u64 = if cfg!(miri) { 2 } else { 2_000 };
    // Relaxed on purpose: the second thread starts pinning once the first has
    // pinned once (so the counter passes between them at least once, whatever
    // the schedule), but only the pin may order their accesses.
    let first_pinned = AtomicBool::new(false);
    std::thread::scope(|s| {
        for first in [true, false] {
            let (platform, table, first_pinned) = (&platform, &table, &first_pinned);
            s.spawn(move || {
                platform.bind_current_thread(cpu(1)).unwrap();
                while !first && !first_pinned.load(Ordering::Relaxed) {
                    yield_now();
                }
                for _ in 0..rounds {
                    platform
                        .pinned(|pin| {
                            let cell = table.current(pin).unwrap();
                            // A read-modify-write with a yield in the middle:
                            // lost updates unless the pin excludes the other.
                            // SAFETY: pinned to processor 1 (see PinCell).
                            let v = unsafe { *cell.0.get() };
                            yield_now();
                            // SAFETY: as above, still pinned.
                            unsafe { *cell.0.get() = v + 1 };
                        })
                        .unwrap();
                    first_pinned.store(true, Ordering::Relaxed);
                }
            });
        }
    });
    let cell = table.get(cpu(1)).unwrap();
    // SAFETY: both threads are joined.
    assert_eq!(unsafe { *cell.0.get() }, 2 * rounds);
}

#[test]
fn a_box_dropped_on_another_thread_reaches_the_allocator_by_the_home_list_alone() {
    let platform = HostPlatform::new(1).unwrap();
    // One object, no processor prepared: every allocation goes to the depot,
    // and once the object exists the only way to allocate again is to take
    // it back from the home list.
    let pool = PerCpuPool::<[u64; 4], _>::new(
        &platform,
        Limits {
            total: 1,
            per_cpu: 0,
        },
    )
    .unwrap();
    let boxed = platform
        .pinned(|pin| pool.alloc(pin, [7; 4]))
        .unwrap()
        .unwrap();
    let address = &*boxed as *const [u64; 4] as usize;
    std::thread::scope(|s| {
        // Dropped unpinned, on a thread this one never joins before taking it
        // back: the slot's link (and its value's memory) reach this thread
        // through the home list's release CAS and acquire swap only.
        s.spawn(move || drop(boxed));
        let again = loop {
            match platform.pinned(|pin| pool.alloc(pin, [8; 4])).unwrap() {
                Ok(again) => break again,
                // Not home yet (or not even dropped): the pool is full.
                Err(Error::Exhausted) => yield_now(),
                Err(error) => panic!("{error:?}"),
            }
        };
        assert_eq!(&*again as *const [u64; 4] as usize, address);
        assert_eq!(*again, [8; 4]);
        let stats = pool.stats();
        assert_eq!(
            (stats.objects, stats.outstanding, stats.returning),
            (1, 1, 0),
            "{stats:?}"
        );
        platform.pinned(|pin| pool.free(pin, again)).unwrap();
    });
    assert_eq!(pool.teardown(), 0);
}
