//! Loom models of what runs concurrently at callback time in `PerCpu`:
//! publication racing readers and iterators, prepares of different processors
//! racing each other, and an abort racing a reader that holds a reference.
//!
//! Each publication model is `#[should_panic]` in the mutant build
//! (`--cfg perproc_mutant="relaxed_publish"`: the publishing stores weakened to
//! `Relaxed`). The test command runs this file both ways, so a model that could
//! not catch a weakened publication fails the run.
//!
//! Readers here *spin until they observe* the publication (with
//! `thread::yield_now`) instead of reading once. Loom's DPOR remembers only the
//! last access to each atomic, so a reader's single load followed by the writer's
//! own load of the same word hides the race: loom then explores one schedule and
//! the Relaxed mutant passes (checked: 1 execution). Spinning makes loom explore
//! the reader seeing the new word.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use perproc::{InitFn, PerCpu, Prepared, ProcessorIndex, SlotState};
use perproc_loom_tests::LoomPlatform;

/// A value a reader can check: a function of its processor index, written as two
/// words so a torn or unpublished read shows.
type Value = [u64; 2];
type Table = PerCpu<Value, LoomPlatform>;

fn value(i: ProcessorIndex) -> Value {
    let i = u64::from(i.get());
    [i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, !i]
}

fn cpu(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap()
}

fn table(capacity: u32) -> Arc<Table> {
    let init: InitFn<Value> = |i| Ok(value(i));
    let platform = LoomPlatform::new(capacity).unwrap();
    Arc::new(PerCpu::new(&platform, init).unwrap())
}

/// Prepares processor `i`, which must be new to the table.
fn prepare(t: &Table, i: u32) {
    assert_eq!(t.prepare(cpu(i)).unwrap(), Prepared::New);
}

fn spawn(t: &Arc<Table>, f: impl FnOnce(&Table) + Send + 'static) -> thread::JoinHandle<()> {
    let t = t.clone();
    thread::spawn(move || f(&t))
}

/// Runs `step` until it gives a result, yielding between tries (the spinning
/// the module docs explain).
fn spin_until<R>(mut step: impl FnMut() -> Option<R>) -> R {
    loop {
        if let Some(done) = step() {
            return done;
        }
        thread::yield_now();
    }
}

/// Spins until processor `i` is published, checks its value, returns it.
fn await_published(t: &Table, i: u32) -> &Value {
    let v = spin_until(|| t.get(cpu(i)));
    assert_eq!(*v, value(cpu(i)));
    v
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn prepare_races_get() {
    loom::model(|| {
        let t = table(2);
        let writer = spawn(&t, |t| prepare(t, 1));
        await_published(&t, 1);
        writer.join().unwrap();
    });
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn prepare_races_iteration() {
    loom::model(|| {
        let t = table(2);
        let writer = spawn(&t, |t| prepare(t, 0));
        spin_until(|| {
            let mut seen = 0;
            for (i, v) in t.iter() {
                assert_eq!(*v, value(i));
                seen += 1;
            }
            assert!(seen <= 1);
            (seen == 1).then_some(())
        });
        writer.join().unwrap();
    });
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn two_prepares_race_with_a_reader() {
    loom::model(|| {
        let t = table(2);
        let writers: Vec<_> = (0..2)
            .map(|i| {
                spawn(&t, move |t| {
                    prepare(t, i);
                    t.commit(cpu(i)).unwrap();
                })
            })
            .collect();
        // Whatever iteration sees along the way is fully built; it ends up
        // seeing both, each once.
        spin_until(|| {
            let mut seen: Vec<u32> = t
                .iter()
                .map(|(i, v)| {
                    assert_eq!(*v, value(i));
                    i.get()
                })
                .collect();
            seen.sort_unstable();
            seen.dedup();
            (seen == [0, 1]).then_some(())
        });
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!((t.published_count(), t.online_count()), (2, 2));
    });
}

#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn abort_races_a_reader_holding_a_reference() {
    loom::model(|| {
        let t = table(1);
        let writer = spawn(&t, |t| {
            prepare(t, 0);
            t.abort(cpu(0)).unwrap();
        });
        // The reader needs to see the slot while it is published: wait for it
        // unless the abort came first.
        let mut held = None;
        while t.state(cpu(0)) != SlotState::Retired {
            if let Some(v) = t.get(cpu(0)) {
                assert_eq!(*v, value(cpu(0)));
                held = Some(v);
                break;
            }
            thread::yield_now();
        }
        writer.join().unwrap();
        // Hidden now, but a reference taken before the abort is still valid.
        assert!(t.get(cpu(0)).is_none());
        assert_eq!(t.state(cpu(0)), SlotState::Retired);
        if let Some(v) = held {
            assert_eq!(*v, value(cpu(0)));
        }
    });
}

/// Not a publication model: the revived value was built before the table was
/// shared, so it passes in the mutant build too; it checks the state machine of
/// a revival racing a reader and a duplicate Failure.
#[test]
fn revive_races_a_reader_and_a_duplicate_failure() {
    loom::model(|| {
        let t = table(1);
        prepare(&t, 0);
        t.abort(cpu(0)).unwrap();
        // A revival is a prepare that brings the slot back: New.
        let reviver = spawn(&t, |t| prepare(t, 0));
        let failure = spawn(&t, |t| {
            // Either it finds the slot retired (nothing to do), prepared (hides it
            // again) or mid-revival (busy): never anything else.
            let r = t.abort(cpu(0));
            assert!(matches!(r, Ok(_) | Err(perproc::Error::Busy)), "{r:?}");
        });
        if let Some(v) = t.get(cpu(0)) {
            assert_eq!(*v, value(cpu(0)));
        }
        reviver.join().unwrap();
        failure.join().unwrap();
        assert!(matches!(
            t.state(cpu(0)),
            SlotState::Prepared | SlotState::Retired
        ));
        assert_eq!(t.iter_all().count(), 1);
    });
}

/// A commit spinning on the processor a prepare on another thread is building
/// answers `NotPrepared` or `Busy` until it sees the slot, then commits it, and
/// a duplicate prepare after that finds it `Already`. Events for one processor
/// are serialised by Windows, but the docs promise `Busy`, never UB, when they
/// are not.
#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn a_commit_races_the_prepare_of_its_processor() {
    loom::model(|| {
        let t = table(1);
        let writer = spawn(&t, |t| prepare(t, 0));
        spin_until(|| match t.commit(cpu(0)) {
            Ok(()) => Some(()),
            Err(perproc::Error::NotPrepared | perproc::Error::Busy) => None,
            Err(e) => panic!("{e:?}"),
        });
        assert_eq!(t.state(cpu(0)), SlotState::Online);
        assert_eq!(t.prepare(cpu(0)).unwrap(), Prepared::Already);
        assert_eq!(*await_published(&t, 0), value(cpu(0)));
        writer.join().unwrap();
    });
}

/// Code on another thread that finds a processor's slot retired reads the value
/// the prepare built: the retired word is released by the abort after the
/// value was written. Not a publication model: the abort's release store is not
/// `PUBLISH`, so it passes in the mutant build too.
#[test]
fn abort_races_a_reader_of_the_retired_slot() {
    loom::model(|| {
        let t = table(1);
        let writer = spawn(&t, |t| {
            prepare(t, 0);
            t.abort(cpu(0)).unwrap();
        });
        let v = spin_until(|| t.retired(cpu(0)));
        assert_eq!(*v, value(cpu(0)));
        writer.join().unwrap();
    });
}

/// A revival on one thread of a slot another thread built and aborted, racing a
/// reader on a third: the reader that sees the revived word reads the value the
/// builder wrote, ordered through the reviver (which joined the builder) and
/// its publication.
#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn a_revival_on_another_thread_races_a_reader() {
    loom::model(|| {
        let t = table(1);
        let builder = spawn(&t, |t| {
            prepare(t, 0);
            t.abort(cpu(0)).unwrap();
        });
        // The reviver waits for the builder by joining it (no spinning: three
        // spinning threads exceed loom's branch limit).
        let reviver = spawn(&t, move |t| {
            builder.join().unwrap();
            assert_eq!(t.prepare(cpu(0)).unwrap(), Prepared::New);
        });
        // Loom explores the schedules where the first word this reader sees is
        // the revived one.
        await_published(&t, 0);
        reviver.join().unwrap();
    });
}

/// Two prepares of one processor on two threads (a duplicate AddStart): one
/// builds, the other waits out `Busy` and then finds the slot `Already`,
/// reading its state only after acquiring the word that published it.
#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn two_prepares_of_one_processor_race() {
    loom::model(|| {
        let t = table(1);
        let prepare_until_done = |t: &Table| {
            spin_until(|| match t.prepare(cpu(0)) {
                Ok(done) => Some(done),
                Err(perproc::Error::Busy) => None,
                Err(e) => panic!("{e:?}"),
            })
        };
        let other = spawn(&t, move |t| {
            let _ = prepare_until_done(t);
        });
        let mine = prepare_until_done(&t);
        other.join().unwrap();
        // Either this thread built the slot or it found it built.
        assert!(matches!(mine, Prepared::New | Prepared::Already));
        assert_eq!(t.iter_all().count(), 1);
    });
}

/// `state` spinning on a processor another thread prepares.
#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn state_races_the_prepare_of_its_processor() {
    loom::model(|| {
        let t = table(1);
        let writer = spawn(&t, |t| prepare(t, 0));
        spin_until(|| (t.state(cpu(0)) == SlotState::Prepared).then_some(()));
        writer.join().unwrap();
    });
}

/// An abort (AddFailure) spinning on a processor another thread prepares: when
/// it hides the slot it returns the value the other thread built.
#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn abort_races_the_prepare_of_its_processor() {
    loom::model(|| {
        let t = table(1);
        let writer = spawn(&t, |t| prepare(t, 0));
        let v = spin_until(|| match t.abort(cpu(0)) {
            Ok(Some(v)) => Some(v),
            Ok(None) | Err(perproc::Error::Busy) => None,
            Err(e) => panic!("{e:?}"),
        });
        assert_eq!(*v, value(cpu(0)));
        writer.join().unwrap();
        assert_eq!(t.state(cpu(0)), SlotState::Retired);
    });
}

/// `iter_all` (retired slots too) racing a prepare: what it yields is fully built.
#[test]
#[cfg_attr(
    perproc_mutant = "relaxed_publish",
    should_panic(expected = "Causality violation")
)]
fn prepare_races_iteration_of_all_slots() {
    loom::model(|| {
        let t = table(2);
        let writer = spawn(&t, |t| prepare(t, 1));
        spin_until(|| {
            let seen: Vec<_> = t.iter_all().collect();
            for (i, v) in &seen {
                assert_eq!(**v, value(*i));
            }
            (!seen.is_empty()).then_some(())
        });
        writer.join().unwrap();
    });
}
