//! Tests written to kill the mutants `scripts/mutants` found surviving (issue 13):
//! events for a processor whose slot is being built (a constructor that calls
//! back into its own container: the deterministic way to be inside `BUILDING`),
//! `Debug` output, in-place containers and the inbox as components. (`retired`
//! in every state and `SlotState::is_published` are tested in `percpu.rs`.)

mod common;

use std::cell::Cell;

use common::cpu;
use perproc::host::HostPlatform;
use perproc::{
    Component, Error, InitFn, PerCpu, PerCpuInbox, Platform, Prepared, ProcessorIndex, SlotState,
};

type Table = PerCpu<u64, HostPlatform>;

fn table(capacity: u32) -> Table {
    let init: InitFn<u64> = |i| Ok(u64::from(i.get()) * 10 + 1);
    PerCpu::new(&HostPlatform::new(capacity).unwrap(), init).unwrap()
}

/// Every event for processor 0 while its own slot is being built: `Busy` (the
/// docs promise `Busy`, never UB, for same-index races), invisible to readers.
fn events_while_building(t: &Table) {
    let i = cpu(0);
    assert_eq!(t.state(i), SlotState::Busy);
    assert_eq!(t.prepare(i), Err(Error::Busy));
    assert_eq!(t.commit(i), Err(Error::Busy));
    assert_eq!(t.abort(i).err(), Some(Error::Busy));
    assert!(t.get(i).is_none());
    assert!(t.retired(i).is_none());
    assert_eq!(t.iter_all().count(), 0);
    // Other processors are not affected.
    assert_eq!(t.state(cpu(1)), SlotState::Absent);
}

#[test]
fn events_for_a_processor_whose_slot_is_being_built_are_busy() {
    let t = table(2);
    let ran = Cell::new(false);
    let r = t.prepare_with(cpu(0), |i| {
        events_while_building(&t);
        ran.set(true);
        Ok(u64::from(i.get()) + 100)
    });
    assert!(ran.get());
    assert_eq!(r, Ok(Prepared::New));
    assert_eq!(t.get(cpu(0)), Some(&100));
    assert_eq!(t.state(cpu(0)), SlotState::Prepared);
    assert_eq!(t.published_count(), 1);
}

#[test]
fn a_failing_constructor_that_saw_building_leaves_the_processor_absent() {
    let t = table(2);
    let r = t.prepare_with(cpu(0), |_| {
        events_while_building(&t);
        Err(Error::OutOfMemory)
    });
    assert_eq!(r, Err(Error::OutOfMemory));
    assert_eq!(t.state(cpu(0)), SlotState::Absent);
    assert_eq!(t.abort(cpu(0)), Ok(None));
    assert_eq!(t.commit(cpu(0)), Err(Error::NotPrepared));
    // The index is free again: a later prepare builds it.
    assert_eq!(t.prepare(cpu(0)), Ok(Prepared::New));
    assert_eq!(t.get(cpu(0)), Some(&1));
}

#[test]
fn a_zeroed_constructor_sees_its_own_slot_busy_too() {
    let t = table(2);
    let r = t.prepare_zeroed_with(cpu(0), |_, value: &mut u64| {
        events_while_building(&t);
        *value = 7;
        Ok(())
    });
    assert_eq!(r, Ok(Prepared::New));
    assert_eq!(t.get(cpu(0)), Some(&7));
}

#[test]
fn debug_shows_capacity_and_counts() {
    let t = table(3);
    assert_eq!(t.prepare(cpu(0)), Ok(Prepared::New));
    assert_eq!(t.prepare(cpu(1)), Ok(Prepared::New));
    t.commit(cpu(1)).unwrap();
    let shown = format!("{t:?}");
    assert!(shown.starts_with("PerCpu {"), "{shown}");
    assert!(shown.contains("capacity: 3"), "{shown}");
    assert!(shown.contains("published: 2"), "{shown}");
    assert!(shown.contains("online: 1"), "{shown}");
}

/// A container built in place (`new_zeroed`) as a `Component`: its commit and
/// abort are the container's own, errors included.
#[test]
fn a_zeroed_container_as_a_component_reports_commit_and_abort_errors() {
    fn fill(i: ProcessorIndex, value: &mut u64) -> Result<(), Error> {
        *value = u64::from(i.get()) + 5;
        Ok(())
    }
    let platform = HostPlatform::new(2).unwrap();
    let t = PerCpu::new_zeroed(&platform, fill).unwrap();
    common::component_protocol_errors(&t);
    // The values were built in place by the prepares.
    assert_eq!(t.get(cpu(0)), Some(&5));
    assert_eq!(t.state(cpu(0)), SlotState::Online);
    assert_eq!(t.state(cpu(1)), SlotState::Retired);
    assert_eq!(t.retired(cpu(1)), Some(&6));
}

/// A ticket stays delivered however far delivery moves past it (`is_delivered`
/// compares positions on the circle: anything up to half of it ahead).
#[test]
fn a_ticket_stays_delivered_after_later_items_are_delivered() {
    let platform = HostPlatform::new(2).unwrap();
    let inbox = PerCpuInbox::new(&platform, 8).unwrap();
    assert_eq!(inbox.prepare(cpu(1)), Ok(Prepared::New));
    let tickets: Vec<_> = platform
        .pinned(|pin| {
            (0..5u32)
                .map(|i| inbox.push_to(pin, cpu(1), i).unwrap())
                .collect()
        })
        .unwrap();
    common::on(&platform, 1, || {
        platform
            .pinned(|pin| {
                let got: Vec<u32> = inbox.consumer(pin).unwrap().collect();
                assert_eq!(got, [0, 1, 2, 3, 4]);
            })
            .unwrap()
    });
    for ticket in tickets {
        assert!(inbox.is_delivered(ticket));
    }
}

/// The inbox's commit (inherent and as a `Component`) reports its errors,
/// `is_empty` sees an item, and the `Debug` impls name their type.
#[test]
fn inbox_commit_errors_is_empty_and_debug() {
    let platform = HostPlatform::new(2).unwrap();
    let inbox = PerCpuInbox::<u32, _>::new(&platform, 4).unwrap();
    assert_eq!(inbox.commit(cpu(0)), Err(Error::NotPrepared));
    assert_eq!(Component::commit(&inbox, cpu(0)), Err(Error::NotPrepared));
    assert_eq!(inbox.prepare(cpu(0)), Ok(Prepared::New));
    assert_eq!(Component::commit(&inbox, cpu(0)), Ok(()));
    assert_eq!(inbox.commit(cpu(0)), Ok(()));
    assert!(inbox.is_empty(cpu(0)));
    platform
        .pinned(|pin| inbox.push_to(pin, cpu(0), 7).map(|_| ()).unwrap())
        .unwrap();
    assert!(!inbox.is_empty(cpu(0)));
    let shown = format!("{inbox:?}");
    assert!(shown.starts_with("PerCpuInbox {"), "{shown}");
    assert!(
        shown.contains("capacity: 4") && shown.contains("published: 1"),
        "{shown}"
    );
    assert!(format!("{:?}", inbox.drain_all()).starts_with("InboxDrainAll"));
    common::on(&platform, 0, || {
        platform
            .pinned(|pin| {
                let consumer = inbox.consumer(pin).unwrap();
                assert!(format!("{consumer:?}").starts_with("InboxConsumer"));
            })
            .unwrap()
    });
    // An abort of a processor never prepared drains an empty inbox.
    assert!(format!("{:?}", inbox.abort(cpu(1)).unwrap()).starts_with("InboxDrain"));
}
