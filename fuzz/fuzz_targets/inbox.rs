//! Per-CPU inbox (steering queue) operations against a plain model: per
//! processor a state, a `VecDeque` and its positions (pushed, popped,
//! delivered). Pushes from any processor to any target (out of range, absent,
//! retired included), pops and held consumers on the owner, AddStart with
//! injected allocation failures, AddComplete, AddFailure with its drain, a
//! component rollback, leftovers and drain_all; tickets checked against the
//! model's delivered positions after every operation.
#![no_main]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{
    Component, Error, InboxConsumer, PerCpuInbox, Platform, Prepared, ProcessorIndex, SlotState,
    Ticket,
};

/// Processors the inbox has room for; index `CPUS` is out of range on purpose.
const CPUS: u32 = 4;

/// Items alive anywhere (inbox, model, in flight): a loss or a duplicate shows
/// after every operation.
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
    /// Pushes from processor `from` (pinned there) to `target`.
    PushTo {
        from: u8,
        target: u8,
    },
    /// `InboxConsumer` of processor `cpu` for one item (`PerCpuInbox::pop`).
    Pop {
        cpu: u8,
    },
    /// A whole batch on `cpu`, up to `take` items, then the batch ends.
    Batch {
        cpu: u8,
        take: u8,
    },
    /// Claims `cpu`'s consumer and keeps it across the next operations.
    Hold {
        cpu: u8,
    },
    /// Pops from the held consumer.
    HeldPop,
    /// Ends the held consumer's batch.
    Release,
    /// AddStart; `fail` injects a failure of that allocation of the Start.
    Start {
        cpu: u8,
        fail: Option<u8>,
    },
    Complete {
        cpu: u8,
    },
    /// AddFailure through `PerCpuInbox::abort`, taking `take` items of its drain.
    Failure {
        cpu: u8,
        take: u8,
    },
    /// AddFailure through the `Component` (a set's rollback): items stay.
    Rollback {
        cpu: u8,
    },
    Leftovers {
        take: u8,
    },
    DrainAll {
        take: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Absent,
    Prepared,
    Online,
    Retired,
}

#[derive(Clone, Debug)]
struct Cpu {
    state: State,
    items: VecDeque<u64>,
    /// Positions: items ever pushed, popped, and popped as of the last batch end.
    tail: usize,
    head: usize,
    delivered: usize,
}

struct Model {
    cpus: Vec<Cpu>,
    /// Processors in the order their inbox was first built.
    built: Vec<u32>,
    /// The processor whose consumer is held.
    held: Option<u32>,
}

impl Model {
    fn cpu(&mut self, cpu: u32) -> &mut Cpu {
        &mut self.cpus[cpu as usize]
    }

    fn published(&self, cpu: u32) -> bool {
        self.cpus
            .get(cpu as usize)
            .is_some_and(|c| matches!(c.state, State::Prepared | State::Online))
    }

    /// Takes up to `n` items from `cpu` in one batch (claim, pops, end).
    fn batch(&mut self, cpu: u32, n: usize) -> Vec<u64> {
        let c = self.cpu(cpu);
        let n = n.min(c.items.len());
        let got: Vec<u64> = c.items.drain(..n).collect();
        c.head += got.len();
        c.delivered = c.head;
        got
    }

    /// What a walk over inboxes (most recently built first) takes, skipping the
    /// held one and, for leftovers, the published ones.
    fn walk(&mut self, take: usize, retired_only: bool) -> Vec<(u32, u64)> {
        let mut want = Vec::new();
        for cpu in self.built.clone().into_iter().rev() {
            if self.held == Some(cpu) || (retired_only && self.cpu(cpu).state != State::Retired) {
                continue;
            }
            let left = take - want.len();
            want.extend(self.batch(cpu, left).into_iter().map(|id| (cpu, id)));
        }
        want
    }
}

fn index(cpu: u8) -> u32 {
    u32::from(cpu) % (CPUS + 1)
}

fn processor(cpu: u32) -> ProcessorIndex {
    ProcessorIndex::new(cpu).unwrap()
}

fn on_cpu(platform: &HostPlatform, cpu: u8) -> u32 {
    let cpu = u32::from(cpu) % CPUS;
    platform.bind_current_thread(processor(cpu)).unwrap();
    cpu
}

fn ids(items: impl IntoIterator<Item = Item>) -> Vec<u64> {
    items.into_iter().map(|item| item.0).collect()
}

fuzz_target!(|input: (u8, Vec<Op>)| {
    let (capacity, ops) = input;
    // Asked for 1 to 4: 2, 2, 4, 4 entries (one entry could not tell a queued
    // item from a free place by its sequence number).
    let capacity = usize::from(capacity % 4) + 1;
    let entries = capacity.max(2).next_power_of_two();
    let platform = HostPlatform::new(CPUS).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let alloc = FailingAlloc::new(&counting);
    let inbox = PerCpuInbox::<Item, _, _>::new_in(&platform, &alloc, capacity).unwrap();
    assert_eq!(inbox.capacity(), entries);
    let mut model = Model {
        cpus: vec![
            Cpu {
                state: State::Absent,
                items: VecDeque::new(),
                tail: 0,
                head: 0,
                delivered: 0,
            };
            CPUS as usize
        ],
        built: Vec::new(),
        held: None,
    };
    let mut held: Option<InboxConsumer<'_, Item>> = None;
    // Every ticket handed out, with the processor and position it stands for.
    let mut tickets: Vec<(Ticket, u32, usize)> = Vec::new();
    let mut next_id = 0u64;

    for op in ops.into_iter().take(256) {
        match op {
            Op::PushTo { from, target } => {
                on_cpu(&platform, from);
                let target = index(target);
                let id = next_id;
                next_id += 1;
                let result = platform
                    .pinned(|pin| inbox.push_to(pin, processor(target), Item::new(id)))
                    .unwrap();
                if target >= CPUS {
                    let refused = result.unwrap_err();
                    assert_eq!(
                        refused.error,
                        Error::IndexOutOfRange {
                            index: processor(target),
                            capacity: CPUS as usize
                        }
                    );
                    assert_eq!(refused.item.0, id);
                } else if !model.published(target) {
                    let refused = result.unwrap_err();
                    assert_eq!(refused.error, Error::NotPrepared);
                    assert_eq!(refused.item.0, id);
                } else if model.cpu(target).items.len() == entries {
                    let refused = result.unwrap_err();
                    assert_eq!(refused.error, Error::Exhausted);
                    assert_eq!(refused.item.0, id);
                } else {
                    let ticket = result.unwrap();
                    assert_eq!(ticket.processor(), processor(target));
                    let c = model.cpu(target);
                    c.items.push_back(id);
                    c.tail += 1;
                    tickets.push((ticket, target, c.tail));
                }
            }
            Op::Pop { cpu } => {
                let cpu = on_cpu(&platform, cpu);
                let got = platform
                    .pinned(|pin| inbox.pop(pin).map(|item| item.0))
                    .unwrap();
                let want = if model.published(cpu) && model.held != Some(cpu) {
                    model.batch(cpu, 1).first().copied()
                } else {
                    None
                };
                assert_eq!(got, want);
            }
            Op::Batch { cpu, take } => {
                let cpu = on_cpu(&platform, cpu);
                let got = platform
                    .pinned(|pin| {
                        inbox
                            .consumer(pin)
                            .map(|consumer| ids(consumer.take(take.into())))
                    })
                    .unwrap();
                if model.published(cpu) && model.held != Some(cpu) {
                    assert_eq!(got, Some(model.batch(cpu, take.into())));
                } else {
                    assert_eq!(got, None, "no inbox, or held by another consumer");
                }
            }
            Op::Hold { cpu } => {
                if held.is_some() {
                    continue;
                }
                let cpu = on_cpu(&platform, cpu);
                held = platform.pinned(|pin| inbox.consumer(pin)).unwrap();
                assert_eq!(held.is_some(), model.published(cpu));
                if held.is_some() {
                    model.held = Some(cpu);
                }
            }
            Op::HeldPop => {
                let (Some(consumer), Some(cpu)) = (held.as_mut(), model.held) else {
                    continue;
                };
                let got = consumer.pop().map(|item| item.0);
                let c = model.cpu(cpu);
                let want = c.items.pop_front();
                c.head += usize::from(want.is_some());
                assert_eq!(got, want);
            }
            Op::Release => {
                held = None;
                if let Some(cpu) = model.held.take() {
                    let c = model.cpu(cpu);
                    c.delivered = c.head;
                }
            }
            Op::Start { cpu, fail } => {
                let cpu = index(cpu);
                // A Start from Absent allocates the slot (0), then the entries
                // (1); any other Start allocates nothing.
                let fail = fail.map(|k| usize::from(k % 3));
                if let Some(k) = fail {
                    alloc.plan(FailPlan::Once(k));
                }
                let injected_before = alloc.injected();
                let result = inbox.prepare(processor(cpu));
                let injected = alloc.injected() > injected_before;
                alloc.plan(FailPlan::Never);
                if cpu >= CPUS {
                    assert!(matches!(result, Err(Error::IndexOutOfRange { .. })));
                    assert!(!injected);
                    continue;
                }
                let state = model.cpu(cpu).state;
                assert_eq!(
                    injected,
                    state == State::Absent && fail.is_some_and(|k| k < 2)
                );
                match state {
                    State::Absent if injected => assert_eq!(result, Err(Error::OutOfMemory)),
                    State::Absent => {
                        assert_eq!(result, Ok(Prepared::New));
                        model.cpu(cpu).state = State::Prepared;
                        model.built.push(cpu);
                    }
                    State::Retired => {
                        // Revived as the abort left it, items included.
                        assert_eq!(result, Ok(Prepared::New));
                        model.cpu(cpu).state = State::Prepared;
                    }
                    State::Prepared | State::Online => assert_eq!(result, Ok(Prepared::Already)),
                }
            }
            Op::Complete { cpu } => {
                let cpu = index(cpu);
                let result = inbox.commit(processor(cpu));
                if cpu >= CPUS {
                    assert!(matches!(result, Err(Error::IndexOutOfRange { .. })));
                    continue;
                }
                match model.cpu(cpu).state {
                    State::Prepared | State::Online => {
                        result.unwrap();
                        model.cpu(cpu).state = State::Online;
                    }
                    State::Absent | State::Retired => {
                        assert_eq!(result, Err(Error::NotPrepared))
                    }
                }
            }
            Op::Failure { cpu, take } => {
                let cpu = index(cpu);
                let result = inbox.abort(processor(cpu));
                if cpu >= CPUS {
                    assert!(matches!(result, Err(Error::IndexOutOfRange { .. })));
                    continue;
                }
                match model.cpu(cpu).state {
                    State::Online => assert_eq!(result.unwrap_err(), Error::AlreadyOnline),
                    State::Absent => assert_eq!(ids(result.unwrap()), Vec::<u64>::new()),
                    State::Prepared | State::Retired => {
                        model.cpu(cpu).state = State::Retired;
                        let got = ids(result.unwrap().take(take.into()));
                        // The drain is a consumer: nothing if one is held.
                        if model.held == Some(cpu) {
                            assert_eq!(got, Vec::<u64>::new());
                        } else {
                            assert_eq!(got, model.batch(cpu, take.into()));
                        }
                    }
                }
            }
            Op::Rollback { cpu } => {
                let cpu = index(cpu);
                let result = Component::abort(&inbox, processor(cpu));
                if cpu >= CPUS {
                    assert!(result.is_err());
                    continue;
                }
                match model.cpu(cpu).state {
                    State::Online => assert_eq!(result, Err(Error::AlreadyOnline)),
                    State::Prepared => {
                        result.unwrap();
                        model.cpu(cpu).state = State::Retired;
                    }
                    State::Absent | State::Retired => result.unwrap(),
                }
            }
            Op::Leftovers { take } => {
                let got: Vec<(u32, u64)> = inbox
                    .leftovers()
                    .take(take.into())
                    .map(|(i, item)| (i.get(), item.0))
                    .collect();
                assert_eq!(got, model.walk(take.into(), true));
            }
            Op::DrainAll { take } => {
                let got: Vec<(u32, u64)> = inbox
                    .drain_all()
                    .take(take.into())
                    .map(|(i, item)| (i.get(), item.0))
                    .collect();
                assert_eq!(got, model.walk(take.into(), false));
            }
        }
        // After every operation: states, lengths and tickets agree.
        for cpu in 0..CPUS {
            let c = &model.cpus[cpu as usize];
            let want = match c.state {
                State::Absent => SlotState::Absent,
                State::Prepared => SlotState::Prepared,
                State::Online => SlotState::Online,
                State::Retired => SlotState::Retired,
            };
            assert_eq!(inbox.state(processor(cpu)), want);
            // Counted from the delivered position: a held batch's pops count
            // until it ends.
            assert_eq!(
                inbox.len(processor(cpu)),
                (c.tail - c.delivered).min(entries)
            );
        }
        for &(ticket, cpu, end) in &tickets {
            assert_eq!(
                inbox.is_delivered(ticket),
                model.cpus[cpu as usize].delivered >= end,
                "ticket {end} on {cpu}"
            );
        }
        let queued: usize = model.cpus.iter().map(|c| c.items.len()).sum();
        assert_eq!(
            LIVE.load(Ordering::SeqCst),
            queued,
            "an item was lost or duplicated"
        );
    }

    drop(held);
    drop(inbox);
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        0,
        "the inbox's drop dropped every item once"
    );
    assert_eq!(counting.live_blocks(), 0, "nothing leaked");
});
