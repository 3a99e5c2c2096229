//! The per-CPU pool, differential against a plain model: random allocations
//! and frees on simulated processors (some without a cache, some past the
//! table), hot-add events in any order, and injected allocation failures.
//!
//! Checked after every step: no object is handed out twice; every object
//! holds what was written into it; exhaustion only when nothing this
//! processor can reach is free; an out-of-memory error only when a failure
//! was injected; every object is accounted for (handed out, in the depot, or
//! cached); no processor caches more than its bound; each processor's state
//! follows the protocol. At the end everything comes back and nothing leaks.
#![no_main]

use std::collections::HashSet;
use std::ptr::NonNull;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Error, Limits, PerCpuPool, Platform, ProcessorIndex, SlotState};

/// Processors the pool has room for; two more exist past its table.
const TABLE: u32 = 4;
const ALL: u32 = TABLE + 2;

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        cpu: u8,
        local: bool,
    },
    Free {
        cpu: u8,
        which: u8,
        local: bool,
    },
    Prepare {
        cpu: u8,
    },
    Commit {
        cpu: u8,
    },
    Abort {
        cpu: u8,
    },
    /// The next allocation the pool asks for fails.
    FailNext,
}

#[derive(Arbitrary, Debug)]
struct Input {
    total: u8,
    per_cpu: u8,
    ops: Vec<Op>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Absent,
    Prepared,
    Online,
    Retired,
}

fn cpu(raw: u8) -> ProcessorIndex {
    ProcessorIndex::new(u32::from(raw) % ALL).unwrap()
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        total: usize::from(input.total % 48),
        per_cpu: usize::from(input.per_cpu % 12),
    };
    let table = HostPlatform::new(TABLE).unwrap();
    // Threads bind to any of ALL processors; the pool only has room for TABLE.
    let machine = HostPlatform::new(ALL).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let failing = FailingAlloc::new(&counting);
    let pool = PerCpuPool::<[u64; 3], _, _>::with_allocator(&table, &failing, limits).unwrap();
    let mut phases = [Phase::Absent; TABLE as usize];
    let mut out: Vec<(NonNull<[u64; 3]>, u64)> = Vec::new();
    let mut addresses = HashSet::new();
    let mut token = 0u64;

    for op in input.ops.iter().take(512) {
        let injected = failing.injected();
        match *op {
            Op::FailNext => failing.plan(FailPlan::Once(0)),
            Op::Prepare { cpu: c } => {
                let index = cpu(c);
                let result = pool.prepare(index);
                match phases.get_mut(index.as_usize()) {
                    None => assert!(matches!(result, Err(Error::IndexOutOfRange { .. }))),
                    Some(phase) => match (result, *phase) {
                        (Ok(()), Phase::Online) => {}
                        (Ok(()), _) => *phase = Phase::Prepared,
                        (Err(Error::OutOfMemory), Phase::Absent) => {
                            assert!(failing.injected() > injected)
                        }
                        (got, phase) => panic!("prepare in {phase:?}: {got:?}"),
                    },
                }
            }
            Op::Commit { cpu: c } => {
                let index = cpu(c);
                let result = pool.commit(index);
                match phases.get_mut(index.as_usize()) {
                    None => assert!(matches!(result, Err(Error::IndexOutOfRange { .. }))),
                    Some(phase) => match (result, *phase) {
                        (Ok(()), Phase::Prepared | Phase::Online) => *phase = Phase::Online,
                        (Err(Error::NotPrepared), Phase::Absent | Phase::Retired) => {}
                        (got, phase) => panic!("commit in {phase:?}: {got:?}"),
                    },
                }
            }
            Op::Abort { cpu: c } => {
                let index = cpu(c);
                let result = pool.abort(index);
                match phases.get_mut(index.as_usize()) {
                    None => assert!(matches!(result, Err(Error::IndexOutOfRange { .. }))),
                    Some(phase) => match (result, *phase) {
                        (Ok(()), Phase::Prepared | Phase::Retired) => *phase = Phase::Retired,
                        (Ok(()), Phase::Absent) => {}
                        (Err(Error::AlreadyOnline), Phase::Online) => {}
                        (got, phase) => panic!("abort in {phase:?}: {got:?}"),
                    },
                }
            }
            Op::Alloc { cpu: c, local } => {
                let index = cpu(c);
                machine.bind_current_thread(index).unwrap();
                let mine = pool.processor_stats(index).map_or(0, |s| s.cached);
                let before = pool.stats();
                let pin = machine.pin();
                let allocated = if local {
                    pool.local(&pin).alloc_raw([token; 3])
                } else {
                    pool.alloc_raw(&pin, [token; 3])
                };
                match allocated {
                    Ok(object) => {
                        assert!(
                            addresses.insert(object.as_ptr() as usize),
                            "handed out twice"
                        );
                        out.push((object, token));
                        token += 1;
                    }
                    Err(Error::Exhausted) => {
                        assert_eq!(before.objects, limits.total, "{before:?}");
                        assert_eq!(before.in_depot + mine, 0, "{before:?}");
                    }
                    Err(Error::OutOfMemory) => assert!(failing.injected() > injected),
                    Err(other) => panic!("alloc: {other}"),
                }
            }
            Op::Free {
                cpu: c,
                which,
                local,
            } => {
                if out.is_empty() {
                    continue;
                }
                let (object, value) = out.swap_remove(usize::from(which) % out.len());
                // SAFETY: handed out by the pool and not freed since.
                assert_eq!(unsafe { *object.as_ref() }, [value; 3], "object clobbered");
                assert!(addresses.remove(&(object.as_ptr() as usize)));
                machine.bind_current_thread(cpu(c)).unwrap();
                let pin = machine.pin();
                // SAFETY: as above; freed once.
                unsafe {
                    if local {
                        pool.local(&pin).free_raw(object);
                    } else {
                        pool.free_raw(&pin, object);
                    }
                }
            }
        }
        check(&pool, out.len(), &phases);
    }

    let pin = machine.pin();
    for (object, value) in out.drain(..) {
        // SAFETY: handed out and not freed; freed once.
        unsafe {
            assert_eq!(*object.as_ref(), [value; 3]);
            pool.free_raw(&pin, object);
        }
    }
    drop(pin);
    check(&pool, 0, &phases);
    assert_eq!(pool.teardown(), 0);
    assert_eq!(counting.live_blocks(), 0, "leak");
});

fn check<P: Platform, A: perproc::RawAlloc>(
    pool: &PerCpuPool<[u64; 3], P, A>,
    outstanding: usize,
    phases: &[Phase],
) {
    let stats = pool.stats();
    assert_eq!(stats.outstanding, outstanding, "{stats:?}");
    assert_eq!(
        stats.objects,
        outstanding + stats.in_depot + stats.cached + stats.stranded,
        "{stats:?}"
    );
    assert!(stats.objects <= stats.limit, "{stats:?}");
    for processor in pool.processors() {
        assert!(processor.cached <= pool.limits().per_cpu, "{processor:?}");
    }
    for (i, phase) in phases.iter().enumerate() {
        let expected = match phase {
            Phase::Absent => SlotState::Absent,
            Phase::Prepared => SlotState::Prepared,
            Phase::Online => SlotState::Online,
            Phase::Retired => SlotState::Retired,
        };
        assert_eq!(pool.state(ProcessorIndex::from_usize(i).unwrap()), expected);
    }
}
