//! The per-CPU pool, differential against a plain model: random allocations
//! (raw, owned boxes, through a `LocalPool`) and frees (on the pool, on a
//! `LocalPool`, or by dropping a box unpinned, which sends it home) on
//! simulated processors (some without a cache, some past the table), hot-add
//! events in any order, and injected allocation failures.
//!
//! Checked after every step: no object is handed out twice; every object
//! holds what was written into it; exhaustion only when nothing this
//! processor can reach is free (its cache, the depot, the home list); an
//! out-of-memory error only when a failure was injected; every object is
//! accounted for (handed out, in the depot, cached, or on its way home); the
//! home list grows by one per dropped box and is only ever emptied (by the
//! pool, before it grows); no processor caches more than its bound; each
//! processor's state and each prepare's outcome follow the protocol. At the
//! end everything comes back and nothing leaks.
#![no_main]

use std::collections::HashSet;
use std::ptr::NonNull;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Error, Limits, PerCpuPool, Platform, PoolBox, Prepared, ProcessorIndex, SlotState};

/// Processors the pool has room for; two more exist past its table.
const TABLE: u32 = 4;
const ALL: u32 = TABLE + 2;

#[derive(Arbitrary, Debug)]
enum Op {
    Alloc {
        cpu: u8,
        how: AllocHow,
    },
    Free {
        cpu: u8,
        which: u8,
        how: FreeHow,
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

#[derive(Arbitrary, Debug, Clone, Copy)]
enum AllocHow {
    /// `alloc_raw`: a pointer, freed with `free_raw`.
    Raw,
    /// `alloc`: an owned box.
    Boxed,
    /// `alloc_with` on the pool.
    With,
    /// `local(pin).alloc`.
    Local,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FreeHow {
    /// `free` (or `free_raw`) on the pool.
    Pool,
    /// `local(pin).free` (or `free_raw`).
    Local,
    /// A box dropped unpinned (a raw object is freed on the pool instead).
    Drop,
}

/// An object handed out by the pool.
enum Held {
    Raw(NonNull<[u64; 3]>),
    Boxed(PoolBox<[u64; 3]>),
}

impl Held {
    fn address(&self) -> usize {
        match self {
            Held::Raw(object) => object.as_ptr() as usize,
            Held::Boxed(object) => &**object as *const [u64; 3] as usize,
        }
    }

    fn value(&self) -> [u64; 3] {
        match self {
            // SAFETY: handed out by the pool and not freed since.
            Held::Raw(object) => unsafe { *object.as_ref() },
            Held::Boxed(object) => **object,
        }
    }
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
    let pool = PerCpuPool::<[u64; 3], _, _>::new_in(&table, &failing, limits).unwrap();
    let mut phases = [Phase::Absent; TABLE as usize];
    let mut out: Vec<(Held, u64)> = Vec::new();
    // Boxes dropped away from the pool and not taken back yet, as far as the
    // model knows (the pool takes them all back at once, before it grows).
    let mut returning = 0usize;
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
                        (Ok(Prepared::Already), Phase::Prepared | Phase::Online) => {}
                        (Ok(Prepared::New), Phase::Absent | Phase::Retired) => {
                            *phase = Phase::Prepared
                        }
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
            Op::Alloc { cpu: c, how } => {
                let index = cpu(c);
                machine.bind_current_thread(index).unwrap();
                let mine = pool.processor_stats(index).map_or(0, |s| s.cached);
                let before = pool.stats();
                let value = [token; 3];
                let allocated = machine
                    .pinned(|pin| match how {
                        AllocHow::Raw => pool.alloc_raw(pin, value).map(Held::Raw),
                        AllocHow::Boxed => pool.alloc(pin, value).map(Held::Boxed),
                        AllocHow::With => pool.alloc_with(pin, || value).map(Held::Boxed),
                        AllocHow::Local => pool.local(pin).alloc(value).map(Held::Boxed),
                    })
                    .unwrap();
                match allocated {
                    Ok(object) => {
                        assert!(addresses.insert(object.address()), "handed out twice");
                        assert_eq!(object.value(), value);
                        out.push((object, token));
                        token += 1;
                    }
                    Err(Error::Exhausted) => {
                        assert_eq!(before.objects, limits.total, "{before:?}");
                        assert_eq!(before.in_depot + mine + before.returning, 0, "{before:?}");
                    }
                    Err(Error::OutOfMemory) => {
                        assert!(failing.injected() > injected);
                        // It grows only when nothing came home.
                        assert_eq!(before.returning, 0, "{before:?}");
                    }
                    Err(other) => panic!("alloc: {other}"),
                }
                // The home list is taken back whole or not at all.
                let after = pool.stats().returning;
                assert!(after == returning || after == 0, "{after} of {returning}");
                returning = after;
            }
            Op::Free { cpu: c, which, how } => {
                if out.is_empty() {
                    continue;
                }
                let (object, value) = out.swap_remove(usize::from(which) % out.len());
                assert_eq!(object.value(), [value; 3], "object clobbered");
                assert!(addresses.remove(&object.address()));
                machine.bind_current_thread(cpu(c)).unwrap();
                match (object, how) {
                    (Held::Boxed(object), FreeHow::Drop) => {
                        drop(object);
                        returning += 1;
                    }
                    (Held::Boxed(object), FreeHow::Local) => {
                        machine.pinned(|pin| pool.local(pin).free(object)).unwrap()
                    }
                    (Held::Boxed(object), FreeHow::Pool) => {
                        machine.pinned(|pin| pool.free(pin, object)).unwrap()
                    }
                    (Held::Raw(object), how) => machine
                        .pinned(|pin| {
                            // SAFETY: handed out by the pool, not freed since;
                            // freed once.
                            unsafe {
                                if matches!(how, FreeHow::Local) {
                                    pool.local(pin).free_raw(object);
                                } else {
                                    pool.free_raw(pin, object);
                                }
                            }
                        })
                        .unwrap(),
                }
            }
        }
        assert_eq!(pool.stats().returning, returning, "{op:?}");
        check(&pool, out.len(), &phases);
    }

    // The rest: raw objects freed, boxes alternately freed and dropped.
    for (n, (object, value)) in out.drain(..).enumerate() {
        assert_eq!(object.value(), [value; 3]);
        match object {
            Held::Boxed(object) if n % 2 == 0 => drop(object),
            Held::Boxed(object) => machine.pinned(|pin| pool.free(pin, object)).unwrap(),
            // SAFETY: handed out and not freed; freed once.
            Held::Raw(object) => machine
                .pinned(|pin| unsafe { pool.free_raw(pin, object) })
                .unwrap(),
        }
    }
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
        outstanding + stats.in_depot + stats.cached + stats.stranded + stats.returning,
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
