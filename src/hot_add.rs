//! The hot-add protocol: processor-change events and the set of per-processor
//! components a driver dispatches them to.
//!
//! Windows adds a processor in two phases. `AddStart` comes before the processor
//! runs driver code (but code may run on it as soon as the callback returns), so
//! each component *prepares*: allocates and publishes what that processor needs.
//! Then either `AddComplete` (each component *commits*, which cannot fail) or
//! `AddFailure` (each component *aborts*, giving back what the prepare took).
//!
//! One vocabulary throughout: the kernel's **AddStart**, **AddComplete** and
//! **AddFailure** are [`Component::prepare`], [`Component::commit`] and
//! [`Component::abort`], in the trait, in every container and in the shim.
//!
//! A driver's several per-CPU structures go through that protocol as one set:
//! a tuple or an array of components is a component (so is a reference to
//! one), and [`components!`](crate::components) makes a driver's own struct one
//! by naming its fields. A set prepares its parts in order; when one fails, it
//! aborts the parts *this call* prepared (newest first) and reports that one
//! error, the status the shim hands to the kernel.

use crate::{Error, ProcessorIndex, ProcessorNumber};

/// The phase of a processor add (Windows' `KE_PROCESSOR_CHANGE_NOTIFY_STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeState {
    /// `KeProcessorAddStartNotify`: [`Component::prepare`].
    AddStart,
    /// `KeProcessorAddCompleteNotify`: [`Component::commit`].
    AddComplete,
    /// `KeProcessorAddFailureNotify`: [`Component::abort`]; `status` says why the add failed.
    AddFailure {
        /// The kernel's reason (an `NTSTATUS` on Windows).
        status: i32,
    },
}

/// One processor-change notification (Windows' `KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessorChange {
    /// Which phase.
    pub state: ChangeState,
    /// The processor's system-wide index (`NtNumber`).
    pub index: ProcessorIndex,
    /// The processor's (group, number) (`ProcNumber`).
    pub number: ProcessorNumber,
}

/// What a successful [`Component::prepare`] did.
#[must_use = "a set rolls back only what its own call prepared"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// This call built or revived the processor's state (so a rollback of this
    /// call should abort it).
    New,
    /// The processor was already prepared or online; this call changed nothing
    /// (so a rollback of this call must leave it alone).
    Already,
}

impl Prepared {
    /// `New` if either is.
    pub const fn or(self, other: Prepared) -> Prepared {
        match (self, other) {
            (Prepared::Already, Prepared::Already) => Prepared::Already,
            _ => Prepared::New,
        }
    }
}

/// Something with per-processor state that takes part in hot-add.
///
/// The contract every implementation keeps (the containers of this crate do):
/// - `prepare` (AddStart) publishes everything code on the processor needs, or
///   fails leaving nothing published and nothing leaked; it is idempotent and
///   says whether it did anything ([`Prepared`]);
/// - `commit` (AddComplete) is O(1) and cannot fail for a prepared processor;
/// - `abort` (AddFailure, or the rollback of a prepare that failed further on)
///   is idempotent and accepts a processor that was never prepared or whose
///   prepare failed;
/// - events for different processors may arrive at once, on any threads;
///   events for one processor at once get [`Error::Busy`], never undefined
///   behaviour.
///
/// Sets need no code: tuples (up to 12), arrays and references are components.
///
/// ```
/// use perproc::{host::HostPlatform, Component, PerCpu, ProcessorIndex, SlotState};
///
/// let platform = HostPlatform::new(4)?;
/// let queues = PerCpu::new(&platform, |_| Ok([0u8; 64]))?;
/// // A component whose constructor refuses processor 3.
/// let stats = PerCpu::new(&platform, |cpu: ProcessorIndex| {
///     if cpu.get() == 3 { Err(perproc::Error::OutOfMemory) } else { Ok(0u64) }
/// })?;
/// let set = (&queues, &stats);
///
/// let cpu2 = ProcessorIndex::new(2).unwrap();
/// let _ = set.prepare(cpu2)?;
/// set.commit(cpu2)?;
/// assert_eq!(queues.state(cpu2), SlotState::Online);
///
/// // AddStart for 3 fails in `stats`: `queues` is rolled back, one error comes out.
/// let cpu3 = ProcessorIndex::new(3).unwrap();
/// assert_eq!(set.prepare(cpu3), Err(perproc::Error::OutOfMemory));
/// assert!(queues.get(cpu3).is_none());
/// set.abort(cpu3)?; // the kernel's AddFailure that may follow is harmless
/// # Ok::<(), perproc::Error>(())
/// ```
pub trait Component: Sync {
    /// AddStart for `index`: allocate and publish.
    ///
    /// # Errors
    /// Why the processor cannot run this component's code; nothing is published
    /// then.
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error>;

    /// AddComplete for `index`: O(1), cannot fail for a prepared processor.
    ///
    /// # Errors
    /// A protocol error (for example [`Error::NotPrepared`]); nothing changes.
    fn commit(&self, index: ProcessorIndex) -> Result<(), Error>;

    /// AddFailure for `index`, or the rollback of a prepare that failed later.
    ///
    /// # Errors
    /// A protocol error (for example [`Error::AlreadyOnline`]); nothing changes.
    fn abort(&self, index: ProcessorIndex) -> Result<(), Error>;

    /// Dispatches one notification: AddStart to `prepare`, AddComplete to
    /// `commit`, AddFailure to `abort`.
    ///
    /// # Errors
    /// What the event's method returned.
    fn handle(&self, change: &ProcessorChange) -> Result<(), Error> {
        match change.state {
            ChangeState::AddStart => self.prepare(change.index).map(|_| ()),
            ChangeState::AddComplete => self.commit(change.index),
            ChangeState::AddFailure { .. } => self.abort(change.index),
        }
    }

    /// Prepares `index`, then runs `rest` (the prepare of the parts that come
    /// after this one in an enclosing set); if `rest` fails, aborts what this
    /// call prepared and returns `rest`'s error. `New` if this call or `rest`
    /// prepared anything.
    ///
    /// This is how sets nest: a set overrides it to chain its own parts before
    /// `rest`, so a failure anywhere after it undoes exactly the parts this call
    /// prepared, newest first, and never a part an earlier call prepared. The
    /// default (one part) suits every other component; a wrapper that forwards
    /// `prepare` to a set should forward this too (as
    /// [`components!`](crate::components) does).
    ///
    /// ```
    /// use perproc::{host::HostPlatform, Component, InitFn, PerCpu, ProcessorIndex, SlotState};
    /// let platform = HostPlatform::new(4)?;
    /// let ok: InitFn<u8> = |_| Ok(0);
    /// let refuse: InitFn<u8> = |_| Err(perproc::Error::OutOfMemory);
    /// let (a, b, c) = (PerCpu::new(&platform, ok)?, PerCpu::new(&platform, ok)?, PerCpu::new(&platform, refuse)?);
    /// let cpu = ProcessorIndex::new(1).unwrap();
    /// let _ = a.prepare(cpu)?;                   // an earlier call prepared `a`
    /// let set = ((&a, &b), &c);                  // a set nested in a set
    /// assert!(set.prepare(cpu).is_err());        // fails in `c`
    /// assert_eq!(a.state(cpu), SlotState::Prepared); // not this call's: kept
    /// assert_eq!(b.state(cpu), SlotState::Retired);  // this call's: rolled back
    /// # Ok::<(), perproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// This part's prepare error (then `rest` does not run), or `rest`'s.
    fn prepare_then(
        &self,
        index: ProcessorIndex,
        rest: &mut dyn FnMut() -> Result<Prepared, Error>,
    ) -> Result<Prepared, Error> {
        let prepared = self.prepare(index)?;
        match rest() {
            Ok(later) => Ok(prepared.or(later)),
            Err(error) => {
                if prepared == Prepared::New {
                    // A part this call prepared aborts without error; anything
                    // else it could say (busy with a concurrent event) leaves
                    // it as it was.
                    let _ = self.abort(index);
                }
                Err(error)
            }
        }
    }
}

impl<C: Component + ?Sized> Component for &C {
    #[inline]
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        (**self).prepare(index)
    }

    #[inline]
    fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        (**self).commit(index)
    }

    #[inline]
    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        (**self).abort(index)
    }

    #[inline]
    fn prepare_then(
        &self,
        index: ProcessorIndex,
        rest: &mut dyn FnMut() -> Result<Prepared, Error>,
    ) -> Result<Prepared, Error> {
        (**self).prepare_then(index, rest)
    }
}

/// Prepares `parts` in order, then `rest`; on a failure aborts, newest first,
/// the parts this call prepared (nested sets included, through
/// [`Component::prepare_then`]), and returns that failure. Recurses once per
/// part: a driver's handful.
fn prepare_chain(
    parts: &[&dyn Component],
    index: ProcessorIndex,
    rest: &mut dyn FnMut() -> Result<Prepared, Error>,
) -> Result<Prepared, Error> {
    match parts.split_first() {
        None => rest(),
        Some((first, later)) => {
            first.prepare_then(index, &mut || prepare_chain(later, index, &mut *rest))
        }
    }
}

/// Prepares `parts` in order; on a failure aborts, newest first, the parts this
/// call prepared, and returns that failure.
fn prepare_all(parts: &[&dyn Component], index: ProcessorIndex) -> Result<Prepared, Error> {
    prepare_chain(parts, index, &mut || Ok(Prepared::Already))
}

/// Commits every part (all of them, even after an error); the first error.
fn commit_all<const N: usize>(
    parts: [&dyn Component; N],
    index: ProcessorIndex,
) -> Result<(), Error> {
    first_error(parts.iter().map(|part| part.commit(index)))
}

/// Aborts every part, newest first (all of them, even after an error); the
/// first error.
fn abort_all<const N: usize>(
    parts: [&dyn Component; N],
    index: ProcessorIndex,
) -> Result<(), Error> {
    first_error(parts.iter().rev().map(|part| part.abort(index)))
}

/// A component as a trait object (an unsizing coercion, not an `as` cast).
fn dynamic<C: Component>(part: &C) -> &dyn Component {
    part
}

fn first_error(results: impl Iterator<Item = Result<(), Error>>) -> Result<(), Error> {
    let mut first = Ok(());
    for result in results {
        if first.is_ok() {
            first = result;
        }
    }
    first
}

/// An array of components is a set: prepared in index order, rolled back and
/// aborted in reverse.
impl<C: Component, const N: usize> Component for [C; N] {
    fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
        prepare_all(&self.each_ref().map(dynamic), index)
    }

    fn prepare_then(
        &self,
        index: ProcessorIndex,
        rest: &mut dyn FnMut() -> Result<Prepared, Error>,
    ) -> Result<Prepared, Error> {
        prepare_chain(&self.each_ref().map(dynamic), index, rest)
    }

    fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        commit_all(self.each_ref().map(dynamic), index)
    }

    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        abort_all(self.each_ref().map(dynamic), index)
    }
}

macro_rules! tuple_component {
    ($($part:ident $at:tt),+) => {
        /// A tuple of components is a set: prepared left to right, rolled back
        /// and aborted right to left.
        impl<$($part: Component),+> Component for ($($part,)+) {
            fn prepare(&self, index: ProcessorIndex) -> Result<Prepared, Error> {
                prepare_all(&[$(dynamic(&self.$at)),+], index)
            }

            fn prepare_then(
                &self,
                index: ProcessorIndex,
                rest: &mut dyn FnMut() -> Result<Prepared, Error>,
            ) -> Result<Prepared, Error> {
                prepare_chain(&[$(dynamic(&self.$at)),+], index, rest)
            }

            fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
                commit_all([$(dynamic(&self.$at)),+], index)
            }

            fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
                abort_all([$(dynamic(&self.$at)),+], index)
            }
        }
    };
}

tuple_component!(A 0);
tuple_component!(A 0, B 1);
tuple_component!(A 0, B 1, C 2);
tuple_component!(A 0, B 1, C 2, D 3);
tuple_component!(A 0, B 1, C 2, D 3, E 4);
tuple_component!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_component!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
tuple_component!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
tuple_component!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
tuple_component!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
tuple_component!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
tuple_component!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

/// Makes a driver's struct a [`Component`] by naming the fields that are:
/// they are prepared in the order given (and rolled back in reverse), exactly
/// as a tuple of them would be. Fields not named (the platform, plain
/// configuration) take no part.
///
/// ```
/// use core::sync::atomic::AtomicU64;
/// use perproc::host::HostPlatform;
/// use perproc::{Component, InitFn, PerCpu, ProcessorIndex};
///
/// struct Driver {
///     platform: HostPlatform,
///     hits: PerCpu<AtomicU64, HostPlatform>,
///     bytes: PerCpu<AtomicU64, HostPlatform>,
/// }
/// perproc::components!(Driver => hits, bytes);
///
/// let platform = HostPlatform::new(4)?;
/// let zero: InitFn<AtomicU64> = |_| Ok(AtomicU64::new(0));
/// let driver = Driver { platform, hits: PerCpu::new(&platform, zero)?, bytes: PerCpu::new(&platform, zero)? };
/// let _ = driver.prepare(ProcessorIndex::ZERO)?;
/// driver.commit(ProcessorIndex::ZERO)?;
/// assert_eq!(driver.bytes.online_count(), 1);
/// # Ok::<(), perproc::Error>(())
/// ```
#[macro_export]
macro_rules! components {
    ($driver:ty => $($field:ident),+ $(,)?) => {
        impl $crate::Component for $driver {
            fn prepare(
                &self,
                index: $crate::ProcessorIndex,
            ) -> ::core::result::Result<$crate::Prepared, $crate::Error> {
                $crate::Component::prepare(&($(&self.$field,)+), index)
            }

            fn commit(
                &self,
                index: $crate::ProcessorIndex,
            ) -> ::core::result::Result<(), $crate::Error> {
                $crate::Component::commit(&($(&self.$field,)+), index)
            }

            fn abort(
                &self,
                index: $crate::ProcessorIndex,
            ) -> ::core::result::Result<(), $crate::Error> {
                $crate::Component::abort(&($(&self.$field,)+), index)
            }

            fn prepare_then(
                &self,
                index: $crate::ProcessorIndex,
                rest: &mut dyn ::core::ops::FnMut() -> ::core::result::Result<
                    $crate::Prepared,
                    $crate::Error,
                >,
            ) -> ::core::result::Result<$crate::Prepared, $crate::Error> {
                $crate::Component::prepare_then(&($(&self.$field,)+), index, rest)
            }
        }
    };
}
