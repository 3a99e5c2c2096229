//! Random processor-change events (Start, Complete, Failure, duplicates, bad
//! indexes) and injected allocation failures, driven into a set of `PerCpu`
//! components and checked after every event against a plain model of the spec.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Component, Error, InitFn, PerCpu, Prepared, ProcessorIndex, SlotPadding, SlotState};

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    Start(u8),
    Complete(u8),
    Failure(u8),
    /// The next allocation attempt fails.
    FailNextAllocation,
    /// One component alone gets an event (a set can be driven part by part).
    PrepareOne(u8, u8),
    AbortOne(u8, u8),
}

const COMPONENTS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Model {
    Absent,
    Prepared,
    Online,
    Retired,
}

type Value = [u32; 3];

fn value(i: ProcessorIndex) -> Value {
    [i.get(), i.get().wrapping_mul(2_654_435_761), !i.get()]
}

struct World {
    capacity: usize,
    model: Vec<[Model; COMPONENTS]>,
    fail_next: bool,
}

impl World {
    /// Model of one component's prepare: whether it built (or revived) the
    /// slot, or the error (consuming the pending allocation failure).
    fn prepare(&mut self, i: usize, c: usize) -> Result<Prepared, Error> {
        let state = &mut self.model[i][c];
        match *state {
            Model::Absent => {
                if std::mem::take(&mut self.fail_next) {
                    return Err(Error::OutOfMemory);
                }
                *state = Model::Prepared;
                Ok(Prepared::New)
            }
            Model::Retired => {
                *state = Model::Prepared;
                Ok(Prepared::New)
            }
            Model::Prepared | Model::Online => Ok(Prepared::Already),
        }
    }

    fn abort(&mut self, i: usize, c: usize) -> Result<(), Error> {
        let state = &mut self.model[i][c];
        match *state {
            Model::Prepared => *state = Model::Retired,
            Model::Online => return Err(Error::AlreadyOnline),
            Model::Absent | Model::Retired => {}
        }
        Ok(())
    }

    fn commit(&mut self, i: usize, c: usize) -> Result<(), Error> {
        let state = &mut self.model[i][c];
        match *state {
            Model::Prepared => *state = Model::Online,
            Model::Online => {}
            Model::Absent | Model::Retired => return Err(Error::NotPrepared),
        }
        Ok(())
    }

    /// The set's prepare: in order; when one fails, the parts this call
    /// prepared (New) are aborted, newest first, and the others left alone.
    fn prepare_set(&mut self, i: usize) -> Result<Prepared, Error> {
        let mut done = [Prepared::Already; COMPONENTS];
        for c in 0..COMPONENTS {
            match self.prepare(i, c) {
                Ok(prepared) => done[c] = prepared,
                Err(e) => {
                    for earlier in (0..c).rev() {
                        if done[earlier] == Prepared::New {
                            let _ = self.abort(i, earlier);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(done.iter().fold(Prepared::Already, |all, one| all.or(*one)))
    }

    /// Every part (in `order`), the first error.
    fn each(
        &mut self,
        i: usize,
        order: impl Iterator<Item = usize>,
        op: fn(&mut Self, usize, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut first = Ok(());
        for c in order {
            let r = op(self, i, c);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// The outcome of `op`: `Some` for a prepare.
    fn predict(&mut self, op: Op) -> Result<Option<Prepared>, Error> {
        let (raw, one) = match op {
            Op::Start(i) | Op::Complete(i) | Op::Failure(i) => (i, None),
            Op::PrepareOne(i, c) | Op::AbortOne(i, c) => (i, Some(usize::from(c) % COMPONENTS)),
            Op::FailNextAllocation => {
                self.fail_next = true;
                return Ok(None);
            }
        };
        let i = usize::from(raw);
        if i >= self.capacity {
            return Err(Error::IndexOutOfRange {
                index: ProcessorIndex::from_usize(i).unwrap(),
                capacity: self.capacity,
            });
        }
        match (op, one) {
            (Op::Start(_), _) => self.prepare_set(i).map(Some),
            (Op::Complete(_), _) => self.each(i, 0..COMPONENTS, Self::commit).map(|()| None),
            // A set aborts its parts newest first.
            (Op::Failure(_), _) => self
                .each(i, (0..COMPONENTS).rev(), Self::abort)
                .map(|()| None),
            (Op::PrepareOne(..), Some(c)) => self.prepare(i, c).map(Some),
            (Op::AbortOne(..), Some(c)) => self.abort(i, c).map(|()| None),
            _ => Ok(None),
        }
    }
}

fuzz_target!(|input: Input| {
    let capacity = usize::from(input.capacity % 17);
    let platform = HostPlatform::new(u32::from(input.capacity % 17)).unwrap();
    let alloc = FailingAlloc::new(CountingAlloc::new(HostAlloc));
    {
        let init: InitFn<Value> = |i| Ok(value(i));
        let make =
            || PerCpu::with_padding_in(&platform, &alloc, SlotPadding::CacheLine, init).unwrap();
        let parts = [make(), make(), make()];
        // A set of components: an array of references.
        let set = [&parts[0], &parts[1], &parts[2]];
        let table_bytes = alloc.inner().live_bytes();
        let mut world = World {
            capacity,
            model: vec![[Model::Absent; COMPONENTS]; capacity],
            fail_next: false,
        };

        for &op in input.ops.iter().take(256) {
            let expect = world.predict(op);
            let index = |raw: u8| ProcessorIndex::new(u32::from(raw)).unwrap();
            let got = match op {
                Op::Start(i) => set.prepare(index(i)).map(Some),
                Op::Complete(i) => set.commit(index(i)).map(|()| None),
                Op::Failure(i) => set.abort(index(i)).map(|()| None),
                Op::FailNextAllocation => {
                    alloc.plan(FailPlan::Once(0));
                    Ok(None)
                }
                Op::PrepareOne(i, c) => parts[usize::from(c) % COMPONENTS]
                    .prepare(index(i))
                    .map(Some),
                Op::AbortOne(i, c) => {
                    Component::abort(&parts[usize::from(c) % COMPONENTS], index(i)).map(|()| None)
                }
            };
            assert_eq!(got, expect, "{op:?}");

            // Every observable agrees with the model.
            let mut built = 0;
            for (c, part) in parts.iter().enumerate() {
                let mut published = Vec::new();
                for (i, states) in world.model.iter().enumerate() {
                    let cpu = ProcessorIndex::from_usize(i).unwrap();
                    let want = match states[c] {
                        Model::Absent => SlotState::Absent,
                        Model::Prepared => SlotState::Prepared,
                        Model::Online => SlotState::Online,
                        Model::Retired => SlotState::Retired,
                    };
                    assert_eq!(part.state(cpu), want, "component {c}, processor {i}");
                    let visible = matches!(states[c], Model::Prepared | Model::Online);
                    assert_eq!(part.get(cpu), visible.then(|| value(cpu)).as_ref());
                    assert_eq!(part.retired(cpu).is_some(), states[c] == Model::Retired);
                    if visible {
                        published.push(i);
                    }
                    if states[c] != Model::Absent {
                        built += 1;
                    }
                }
                let mut seen: Vec<usize> = part
                    .iter()
                    .map(|(i, v)| {
                        assert_eq!(*v, value(i));
                        i.as_usize()
                    })
                    .collect();
                seen.sort_unstable();
                assert_eq!(seen, published);
                assert_eq!(part.published_count(), published.len());
                let online = world.model.iter().filter(|s| s[c] == Model::Online).count();
                assert_eq!(part.online_count(), online);
            }
            // Memory: the tables, plus one slot per slot ever built; nothing else.
            assert_eq!(
                alloc.inner().live_bytes(),
                table_bytes + built * parts[0].slot_size()
            );
        }
    }
    assert_eq!(alloc.inner().live_blocks(), 0);
});
