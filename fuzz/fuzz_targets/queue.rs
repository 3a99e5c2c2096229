//! Per-CPU queue operations (push, pop, drain, drain_all on several
//! processors; hot-add Start/Complete/Failure; injected allocation failures)
//! against a plain model: per processor a state and a `VecDeque`; the run ends
//! with a teardown that must hand back exactly what the model still holds.
#![no_main]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Component, Error, PerCpuQueue, Platform, Prepared, ProcessorIndex, SlotState};

/// Processors the queue has room for; index `CPUS` is out of range on purpose.
const CPUS: u32 = 4;
const CAPACITY: usize = 3;

/// Items alive anywhere (queue, model, in flight): a loss or a duplicate shows
/// at the end.
static LIVE: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, PartialEq, Eq)]
struct Item(u64);

impl Item {
    fn new(id: u64) -> Self {
        LIVE.fetch_add(1, Ordering::SeqCst);
        Item(id)
    }
}

impl Drop for Item {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Push {
        cpu: u8,
    },
    Pop {
        cpu: u8,
    },
    /// Takes up to `take` items of one processor, leaves the rest queued.
    Drain {
        cpu: u8,
        take: u8,
    },
    DrainAll {
        take: u8,
    },
    /// Holds one processor's consumer side, popping `take` times, pushing
    /// `push` items on that processor in between.
    Consume {
        cpu: u8,
        take: u8,
        push: u8,
    },
    /// AddStart; `fail` injects a failure of that allocation of the Start.
    Start {
        cpu: u8,
        fail: Option<u8>,
    },
    Complete {
        cpu: u8,
    },
    /// AddFailure through `PerCpuQueue::abort`, taking `take` items back.
    Failure {
        cpu: u8,
        take: u8,
    },
    /// AddFailure through the `Component` (a set's rollback): items stay.
    Rollback {
        cpu: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Absent,
    Prepared,
    Online,
    Retired,
}

struct Model {
    state: Vec<State>,
    items: Vec<VecDeque<u64>>,
    /// Processors in the order their queue was first built.
    built: Vec<u32>,
}

impl Model {
    fn published(&self, cpu: u32) -> bool {
        matches!(
            self.state.get(cpu as usize),
            Some(State::Prepared | State::Online)
        )
    }

    fn has_queue(&self, cpu: u32) -> bool {
        self.state
            .get(cpu as usize)
            .is_some_and(|s| *s != State::Absent)
    }

    fn take(&mut self, cpu: u32, n: usize) -> Vec<u64> {
        if !self.has_queue(cpu) {
            return Vec::new();
        }
        let q = &mut self.items[cpu as usize];
        let n = n.min(q.len());
        q.drain(..n).collect()
    }
}

fn index(cpu: u8) -> u32 {
    u32::from(cpu) % (CPUS + 1)
}

fn ids(items: impl IntoIterator<Item = Item>) -> Vec<u64> {
    items.into_iter().map(|item| item.0).collect()
}

fuzz_target!(|ops: Vec<Op>| {
    // Room for `CPUS` processors; `CPUS` itself is bound to, to pin past the
    // table (binding checks against this platform's maximum only).
    let platform = HostPlatform::new(CPUS).unwrap();
    let binder = HostPlatform::new(CPUS + 1).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let alloc = FailingAlloc::new(&counting);
    let queue = PerCpuQueue::<Item, _, _>::new_in(&platform, &alloc, CAPACITY).unwrap();
    let mut model = Model {
        state: vec![State::Absent; CPUS as usize],
        items: vec![VecDeque::new(); CPUS as usize],
        built: Vec::new(),
    };
    let mut next_id = 0u64;

    for op in ops.into_iter().take(256) {
        match op {
            Op::Push { cpu } => {
                let cpu = index(cpu);
                binder
                    .bind_current_thread(ProcessorIndex::new(cpu).unwrap())
                    .unwrap();
                let id = next_id;
                next_id += 1;
                let result = platform
                    .pinned(|pin| queue.push(pin, Item::new(id)))
                    .unwrap();
                if !model.published(cpu) {
                    let refused = result.unwrap_err();
                    assert_eq!(refused.error, Error::NotPrepared);
                    assert_eq!(refused.item.0, id);
                } else if model.items[cpu as usize].len() == CAPACITY {
                    let refused = result.unwrap_err();
                    assert_eq!(refused.error, Error::Exhausted);
                    assert_eq!(refused.item.0, id);
                } else {
                    result.unwrap();
                    model.items[cpu as usize].push_back(id);
                }
            }
            Op::Pop { cpu } => {
                let cpu = index(cpu);
                let got = queue
                    .pop(ProcessorIndex::new(cpu).unwrap())
                    .map(|item| item.0);
                assert_eq!(got, model.take(cpu, 1).first().copied());
            }
            Op::Drain { cpu, take } => {
                let cpu = index(cpu);
                let got = ids(queue
                    .drain(ProcessorIndex::new(cpu).unwrap())
                    .take(take.into()));
                assert_eq!(got, model.take(cpu, take.into()));
            }
            Op::Consume { cpu, take, push } => {
                let cpu = index(cpu);
                let i = ProcessorIndex::new(cpu).unwrap();
                binder.bind_current_thread(i).unwrap();
                let Some(mut consumer) = queue.consumer(i) else {
                    assert!(!model.has_queue(cpu));
                    continue;
                };
                assert!(model.has_queue(cpu));
                assert!(queue.consumer(i).is_none(), "one consumer at a time");
                assert!(queue.pop(i).is_none(), "held");
                platform
                    .pinned(|pin| {
                        for n in 0..take {
                            if n < push {
                                let id = next_id;
                                next_id += 1;
                                let result = queue.push(pin, Item::new(id));
                                let room = model.items[cpu as usize].len() < CAPACITY;
                                if model.published(cpu) && room {
                                    result.unwrap();
                                    model.items[cpu as usize].push_back(id);
                                } else {
                                    assert!(result.is_err());
                                }
                            }
                            assert_eq!(
                                consumer.pop().map(|item| item.0),
                                model.take(cpu, 1).first().copied()
                            );
                        }
                    })
                    .unwrap();
            }
            Op::DrainAll { take } => {
                let got: Vec<(u32, u64)> = queue
                    .drain_all()
                    .take(take.into())
                    .map(|(i, item)| (i.get(), item.0))
                    .collect();
                // Queues most recently built first, each oldest item first.
                let mut want = Vec::new();
                for &cpu in model.built.clone().iter().rev() {
                    let left = usize::from(take) - want.len();
                    want.extend(model.take(cpu, left).into_iter().map(|id| (cpu, id)));
                }
                assert_eq!(got, want);
            }
            Op::Start { cpu, fail } => {
                let cpu = index(cpu);
                let i = ProcessorIndex::new(cpu).unwrap();
                // A Start from Absent allocates the slot (0), then, inside its
                // build, the cells (1); any other Start allocates nothing.
                let fail = fail.map(|k| usize::from(k % 3));
                if let Some(k) = fail {
                    alloc.plan(FailPlan::Once(k));
                }
                let injected_before = alloc.injected();
                let result = queue.prepare(i);
                let injected = alloc.injected() > injected_before;
                alloc.plan(FailPlan::Never);
                if cpu >= CPUS {
                    assert!(matches!(result, Err(Error::IndexOutOfRange { .. })));
                    assert!(!injected);
                    continue;
                }
                let absent = model.state[cpu as usize] == State::Absent;
                assert_eq!(injected, absent && fail.is_some_and(|k| k < 2));
                match model.state[cpu as usize] {
                    State::Absent if injected => {
                        assert_eq!(result, Err(Error::OutOfMemory));
                    }
                    State::Absent => {
                        assert_eq!(result, Ok(Prepared::New));
                        model.state[cpu as usize] = State::Prepared;
                        model.built.push(cpu);
                    }
                    State::Retired => {
                        assert_eq!(result, Ok(Prepared::New));
                        model.state[cpu as usize] = State::Prepared;
                    }
                    State::Prepared | State::Online => assert_eq!(result, Ok(Prepared::Already)),
                }
            }
            Op::Complete { cpu } => {
                let cpu = index(cpu);
                let result = queue.commit(ProcessorIndex::new(cpu).unwrap());
                if cpu >= CPUS {
                    assert!(matches!(result, Err(Error::IndexOutOfRange { .. })));
                    continue;
                }
                match model.state[cpu as usize] {
                    State::Prepared | State::Online => {
                        result.unwrap();
                        model.state[cpu as usize] = State::Online;
                    }
                    State::Absent | State::Retired => assert_eq!(result, Err(Error::NotPrepared)),
                }
            }
            Op::Failure { cpu, take } => {
                let cpu = index(cpu);
                let result = queue.abort(ProcessorIndex::new(cpu).unwrap());
                if cpu >= CPUS {
                    assert!(result.is_err());
                    continue;
                }
                match model.state[cpu as usize] {
                    State::Online => assert_eq!(result.unwrap_err(), Error::AlreadyOnline),
                    state => {
                        let got = ids(result.unwrap().take(take.into()));
                        if state == State::Prepared {
                            model.state[cpu as usize] = State::Retired;
                        }
                        assert_eq!(got, model.take(cpu, take.into()));
                    }
                }
            }
            Op::Rollback { cpu } => {
                let cpu = index(cpu);
                let result = Component::abort(&queue, ProcessorIndex::new(cpu).unwrap());
                if cpu >= CPUS {
                    assert!(result.is_err());
                    continue;
                }
                match model.state[cpu as usize] {
                    State::Online => assert_eq!(result, Err(Error::AlreadyOnline)),
                    State::Prepared => {
                        result.unwrap();
                        model.state[cpu as usize] = State::Retired;
                    }
                    State::Absent | State::Retired => result.unwrap(),
                }
            }
        }
        // After every operation: states and lengths agree.
        for cpu in 0..CPUS {
            let i = ProcessorIndex::new(cpu).unwrap();
            let want = match model.state[cpu as usize] {
                State::Absent => SlotState::Absent,
                State::Prepared => SlotState::Prepared,
                State::Online => SlotState::Online,
                State::Retired => SlotState::Retired,
            };
            assert_eq!(queue.state(i), want);
            assert_eq!(queue.len(i), model.items[cpu as usize].len());
        }
        let queued: usize = model.items.iter().map(VecDeque::len).sum();
        assert_eq!(queue.total_len(), queued);
        assert_eq!(
            LIVE.load(Ordering::SeqCst),
            queued,
            "an item was lost or duplicated"
        );
    }

    // Teardown hands back exactly what the model holds: processors in index
    // order, each queue oldest first; then nothing is alive.
    let mut want = Vec::new();
    for cpu in 0..CPUS {
        want.extend(model.take(cpu, CAPACITY).into_iter().map(|id| (cpu, id)));
    }
    let left = queue.teardown();
    assert_eq!(left.len(), want.len());
    let got: Vec<(u32, u64)> = left.map(|(i, item)| (i.get(), item.0)).collect();
    assert_eq!(got, want);
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        0,
        "teardown handed back every item once"
    );
    assert_eq!(counting.live_blocks(), 0, "nothing leaked");
});
