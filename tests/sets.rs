//! Component sets (tuples, arrays, references, `components!`, sets of sets):
//! a failing prepare rolls back exactly the parts *this call* prepared, newest
//! first, and leaves alone what an earlier (or concurrent) call prepared.

mod common;

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use common::{cpu, Built};
use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{Component, Error, InitFn, PerCpu, Prepared, ProcessorIndex, SlotState};

type Alloc = FailingAlloc<CountingAlloc<HostAlloc>>;
type Table<'a> = PerCpu<Built, HostPlatform, &'a Alloc>;

fn new_alloc() -> Alloc {
    FailingAlloc::new(CountingAlloc::new(HostAlloc))
}

fn table(alloc: &Alloc) -> Table<'_> {
    let init: InitFn<Built> = |i| Ok(Built::new(i));
    PerCpu::new_in(&HostPlatform::new(8).unwrap(), alloc, init).unwrap()
}

/// One event a [`Probe`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Prepare(&'static str, Prepared),
    Refuse(&'static str),
    Commit(&'static str),
    Abort(&'static str),
}

/// A component that logs its events (into a log shared by a set's parts) and
/// refuses the prepare of one index.
struct Probe<'l> {
    name: &'static str,
    refuse: Option<u32>,
    prepared: Mutex<BTreeSet<u32>>,
    log: &'l Mutex<Vec<Event>>,
}

impl<'l> Probe<'l> {
    fn new(name: &'static str, log: &'l Mutex<Vec<Event>>) -> Self {
        Self {
            name,
            refuse: None,
            prepared: Mutex::new(BTreeSet::new()),
            log,
        }
    }

    fn refusing(name: &'static str, index: u32, log: &'l Mutex<Vec<Event>>) -> Self {
        Self {
            refuse: Some(index),
            ..Self::new(name, log)
        }
    }

    fn is_prepared(&self, i: u32) -> bool {
        self.prepared.lock().unwrap().contains(&i)
    }
}

impl Component for Probe<'_> {
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        if self.refuse == Some(index.get()) {
            self.log.lock().unwrap().push(Event::Refuse(self.name));
            return Err(Error::Status(-1));
        }
        let prepared = if self.prepared.lock().unwrap().insert(index.get()) {
            Prepared::New
        } else {
            Prepared::Already
        };
        self.log
            .lock()
            .unwrap()
            .push(Event::Prepare(self.name, prepared));
        Ok(prepared)
    }

    fn commit(&self, _: ProcessorIndex) -> Result<(), Error> {
        self.log.lock().unwrap().push(Event::Commit(self.name));
        Ok(())
    }

    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.prepared.lock().unwrap().remove(&index.get());
        self.log.lock().unwrap().push(Event::Abort(self.name));
        Ok(())
    }
}

fn taken(log: &Mutex<Vec<Event>>) -> Vec<Event> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn a_tuple_keeps_what_an_earlier_call_prepared() {
    let alloc = &new_alloc();
    let (a, b, c) = (table(alloc), table(alloc), table(alloc));
    // An earlier call (a duplicate Start, a part registered on its own) prepared a.
    assert_eq!(a.prepare(cpu(3)), Ok(Prepared::New));
    let set = (&a, &b, &c);
    // This call: a is already there (no allocation), b is built (allocation 0),
    // c's slot is refused (allocation 1).
    alloc.plan(FailPlan::Once(1));
    assert_eq!(set.prepare(cpu(3)), Err(Error::OutOfMemory));
    assert_eq!(
        a.state(cpu(3)),
        SlotState::Prepared,
        "not this call's to undo"
    );
    a.get(cpu(3)).unwrap().check(cpu(3));
    assert_eq!(
        b.state(cpu(3)),
        SlotState::Retired,
        "this call's: rolled back"
    );
    assert_eq!(c.state(cpu(3)), SlotState::Absent);
    // The add then completes.
    alloc.plan(FailPlan::Never);
    assert_eq!(set.prepare(cpu(3)), Ok(Prepared::New));
    assert_eq!(set.prepare(cpu(3)), Ok(Prepared::Already));
    set.commit(cpu(3)).unwrap();
    for t in [&a, &b, &c] {
        assert_eq!(t.state(cpu(3)), SlotState::Online);
    }
}

#[test]
fn an_array_keeps_what_an_earlier_call_prepared() {
    let alloc = &new_alloc();
    let set = [table(alloc), table(alloc), table(alloc), table(alloc)];
    assert_eq!(set[0].prepare(cpu(5)), Ok(Prepared::New));
    assert_eq!(set[2].prepare(cpu(5)), Ok(Prepared::New));
    // This call builds 1 (allocation 0) and fails building 3 (allocation 1).
    alloc.plan(FailPlan::Once(1));
    assert_eq!(set.prepare(cpu(5)), Err(Error::OutOfMemory));
    let states = set.each_ref().map(|t| t.state(cpu(5)));
    assert_eq!(
        states,
        [
            SlotState::Prepared,
            SlotState::Retired,
            SlotState::Prepared,
            SlotState::Absent
        ]
    );
    // A set whose every part was already prepared says so.
    alloc.plan(FailPlan::Never);
    assert_eq!(set.prepare(cpu(5)), Ok(Prepared::New));
    assert_eq!(set.prepare(cpu(5)), Ok(Prepared::Already));
}

#[test]
fn rollback_aborts_this_calls_parts_newest_first() {
    let log = Mutex::new(Vec::new());
    let (a, b, c, d) = (
        Probe::new("a", &log),
        Probe::new("b", &log),
        Probe::new("c", &log),
        Probe::refusing("d", 1, &log),
    );
    assert_eq!(b.prepare(cpu(1)), Ok(Prepared::New));
    taken(&log);
    let set = (&a, &b, &c, &d);
    assert_eq!(set.prepare(cpu(1)), Err(Error::Status(-1)));
    use Event::*;
    assert_eq!(
        taken(&log),
        [
            Prepare("a", Prepared::New),
            Prepare("b", Prepared::Already),
            Prepare("c", Prepared::New),
            Refuse("d"),
            Abort("c"),
            Abort("a"),
        ]
    );
    assert!(b.is_prepared(1) && !a.is_prepared(1) && !c.is_prepared(1));
    // Commit and abort go to every part: commit in order, abort newest first.
    set.commit(cpu(2)).unwrap();
    assert_eq!(
        taken(&log),
        [Commit("a"), Commit("b"), Commit("c"), Commit("d")]
    );
    set.abort(cpu(2)).unwrap();
    assert_eq!(
        taken(&log),
        [Abort("d"), Abort("c"), Abort("b"), Abort("a")]
    );
}

#[test]
fn a_failure_in_the_first_part_aborts_nothing() {
    let log = Mutex::new(Vec::new());
    let set = [
        Probe::refusing("a", 0, &log),
        Probe::new("b", &log),
        Probe::new("c", &log),
    ];
    assert_eq!(set.prepare(cpu(0)), Err(Error::Status(-1)));
    assert_eq!(taken(&log), [Event::Refuse("a")]);
}

struct Driver<'a> {
    #[allow(dead_code)] // configuration, not a component
    name: &'static str,
    first: Table<'a>,
    second: Table<'a>,
    third: Table<'a>,
}
perproc::components!(Driver<'_> => first, second, third);

#[test]
fn components_macro_sets_roll_back_only_this_calls_parts() {
    let alloc = &new_alloc();
    let driver = Driver {
        name: "storport-miniport",
        first: table(alloc),
        second: table(alloc),
        third: table(alloc),
    };
    assert_eq!(driver.second.prepare(cpu(2)), Ok(Prepared::New));
    // first is built (allocation 0); second is already; third fails (allocation 1).
    alloc.plan(FailPlan::Once(1));
    assert_eq!(driver.prepare(cpu(2)), Err(Error::OutOfMemory));
    assert_eq!(driver.first.state(cpu(2)), SlotState::Retired);
    assert_eq!(driver.second.state(cpu(2)), SlotState::Prepared);
    assert_eq!(driver.third.state(cpu(2)), SlotState::Absent);
    alloc.plan(FailPlan::Never);
    assert_eq!(driver.prepare(cpu(2)), Ok(Prepared::New));
    driver.commit(cpu(2)).unwrap();
    assert_eq!(driver.abort(cpu(2)), Err(Error::AlreadyOnline));
    for t in [&driver.first, &driver.second, &driver.third] {
        assert_eq!(t.state(cpu(2)), SlotState::Online);
    }
    // Through the kernel's dispatch too, as a trait object.
    let dynamic: &dyn Component = &driver;
    assert_eq!(dynamic.prepare(cpu(2)), Ok(Prepared::Already));
}

#[test]
fn nested_sets_roll_back_only_this_calls_parts() {
    let log = Mutex::new(Vec::new());
    let (a, b, c) = (
        Probe::new("a", &log),
        Probe::new("b", &log),
        Probe::refusing("c", 4, &log),
    );
    // An earlier call prepared a; this call prepares b (inside the inner set)
    // and fails in c (outside it).
    assert_eq!(a.prepare(cpu(4)), Ok(Prepared::New));
    taken(&log);
    let outer = ((&a, &b), &c);
    assert_eq!(outer.prepare(cpu(4)), Err(Error::Status(-1)));
    assert!(a.is_prepared(4), "an earlier call's part was rolled back");
    assert!(!b.is_prepared(4), "this call's part was not rolled back");
    use Event::*;
    assert_eq!(
        taken(&log),
        [
            Prepare("a", Prepared::Already),
            Prepare("b", Prepared::New),
            Refuse("c"),
            Abort("b"),
        ]
    );

    // Failing inside the inner set: it undoes its own part; the outer one
    // undoes the part before it.
    let x = Probe::new("x", &log);
    let y = Probe::refusing("y", 4, &log);
    let outer = (&x, [&a, &y]);
    assert_eq!(outer.prepare(cpu(4)), Err(Error::Status(-1)));
    assert!(a.is_prepared(4) && !x.is_prepared(4));
    assert_eq!(
        taken(&log),
        [
            Prepare("x", Prepared::New),
            Prepare("a", Prepared::Already),
            Refuse("y"),
            Abort("x"),
        ]
    );
}

#[test]
fn nested_sets_of_containers_keep_an_earlier_calls_slot() {
    let alloc = &new_alloc();
    let (a, b, c) = (table(alloc), table(alloc), table(alloc));
    assert_eq!(a.prepare(cpu(6)), Ok(Prepared::New));
    let outer = ([&a, &b], (&c,));
    alloc.plan(FailPlan::Once(1)); // b is allocation 0, c allocation 1
    assert_eq!(outer.prepare(cpu(6)), Err(Error::OutOfMemory));
    assert_eq!(a.state(cpu(6)), SlotState::Prepared);
    assert_eq!(b.state(cpu(6)), SlotState::Retired);
    assert_eq!(c.state(cpu(6)), SlotState::Absent);
}

#[test]
fn a_concurrent_prepare_of_the_same_index_is_not_rolled_back() {
    // While `a` builds processor 1's slot (its constructor runs), a second
    // AddStart for processor 1 reaches the set (b, a): b is prepared by that
    // call, a answers Busy. The set undoes b, and must not touch a, whose
    // build belongs to the first call and completes.
    let alloc = &new_alloc();
    let (a, b) = (table(alloc), table(alloc));
    let set = (&b, &a);
    let prepared = a.prepare_with(cpu(1), |i| {
        assert_eq!(set.prepare(i), Err(Error::Busy));
        assert_eq!(b.state(i), SlotState::Retired);
        Ok(Built::new(i))
    });
    assert_eq!(prepared, Ok(Prepared::New));
    assert_eq!(a.state(cpu(1)), SlotState::Prepared);
    a.get(cpu(1)).unwrap().check(cpu(1));
    // The first call's own set then completes the add.
    assert_eq!(set.prepare(cpu(1)), Ok(Prepared::New)); // b revived
    set.commit(cpu(1)).unwrap();
    assert_eq!(
        (a.state(cpu(1)), b.state(cpu(1))),
        (SlotState::Online, SlotState::Online)
    );
}

/// A table whose build of a processor's slot sends, once, a second AddStart
/// for that processor to a set: a concurrent event for the same index, made
/// deterministic.
struct Reentrant<'t, 's> {
    table: Table<'t>,
    during_build: OnceLock<&'s (dyn Component + 's)>,
    seen: Mutex<Option<Result<Prepared, Error>>>,
}

impl Component for Reentrant<'_, '_> {
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        self.table.prepare_with(index, |i| {
            if let Some(set) = self.during_build.get() {
                *self.seen.lock().unwrap() = Some(set.prepare(i));
            }
            Ok(Built::new(i))
        })
    }

    fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.table.commit(index)
    }

    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.table.abort(index).map(|_| ())
    }
}

#[test]
fn a_second_start_during_the_first_does_not_undo_the_first() {
    // AddStart #1 for processor 2 prepares `a`, then builds `r`; while `r` is
    // being built, AddStart #2 for processor 2 goes through the same set: `a`
    // is already prepared (by #1), `r` is Busy. #2 fails, and must not abort
    // `a`, which #1 prepared and is about to report as prepared.
    let alloc = &new_alloc();
    let a = table(alloc);
    let r = Reentrant {
        table: table(alloc),
        during_build: OnceLock::new(),
        seen: Mutex::new(None),
    };
    let set = (&a, &r);
    assert!(r.during_build.set(&set).is_ok());
    assert_eq!(set.prepare(cpu(2)), Ok(Prepared::New));
    assert_eq!(*r.seen.lock().unwrap(), Some(Err(Error::Busy)));
    assert_eq!(
        a.state(cpu(2)),
        SlotState::Prepared,
        "#2 rolled back #1's part"
    );
    assert_eq!(r.table.state(cpu(2)), SlotState::Prepared);
    set.commit(cpu(2)).unwrap();
    assert_eq!(a.state(cpu(2)), SlotState::Online);
    assert_eq!(r.table.state(cpu(2)), SlotState::Online);
}

#[test]
fn single_tuples_and_references_are_components() {
    let log = Mutex::new(Vec::new());
    let a = Probe::new("a", &log);
    let set = (&a,);
    assert_eq!(set.prepare(cpu(0)), Ok(Prepared::New));
    assert_eq!((&&a).prepare(cpu(0)), Ok(Prepared::Already));
    let twelve = (&a, &a, &a, &a, &a, &a, &a, &a, &a, &a, &a, &a);
    assert_eq!(twelve.prepare(cpu(0)), Ok(Prepared::Already));
    assert_eq!(twelve.prepare(cpu(7)), Ok(Prepared::New));
    twelve.abort(cpu(7)).unwrap();
    assert!(!a.is_prepared(7));
    let empty: [Probe<'_>; 0] = [];
    assert_eq!(empty.prepare(cpu(0)), Ok(Prepared::Already));
    assert_eq!(Prepared::Already.or(Prepared::New), Prepared::New);
    assert_eq!(Prepared::Already.or(Prepared::Already), Prepared::Already);
}
