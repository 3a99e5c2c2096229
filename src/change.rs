//! The hot-add protocol: processor-change events and the set of per-processor
//! components a driver dispatches them to.
//!
//! Windows adds a processor in two phases. `AddStart` comes before the processor
//! runs driver code (but code may run on it as soon as the callback returns), so
//! each component *prepares*: allocates and publishes what that processor needs.
//! Then either `AddComplete` (each component *commits*, which cannot fail) or
//! `AddFailure` (each component *aborts*, giving back what the prepare took).
//!
//! [`Components`] runs a driver's several per-CPU structures through that
//! protocol as one: a Start that fails in one component rolls back the ones
//! before it and reports one error, the status the shim hands to the kernel.

use crate::{Error, ProcessorIndex, ProcessorNumber};

/// Something with per-processor state that takes part in hot-add.
///
/// The contract every implementation keeps (the containers of this crate do):
/// - `prepare` publishes everything code on the processor needs, or fails
///   leaving nothing published and nothing leaked;
/// - `commit` is O(1) and cannot fail for a prepared processor;
/// - `abort` is idempotent and accepts a processor that was never prepared or
///   whose prepare failed;
/// - events for different processors may arrive at once, on any threads.
pub trait Component: Sync {
    /// AddStart for `index`.
    fn prepare(&self, index: ProcessorIndex) -> Result<(), Error>;
    /// AddComplete for `index`.
    fn commit(&self, index: ProcessorIndex) -> Result<(), Error>;
    /// AddFailure for `index`, or the rollback of a Start that failed later on.
    fn abort(&self, index: ProcessorIndex) -> Result<(), Error>;
}

/// The phase of a processor add (Windows' `KE_PROCESSOR_CHANGE_NOTIFY_STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeState {
    /// `KeProcessorAddStartNotify`: prepare.
    AddStart,
    /// `KeProcessorAddCompleteNotify`: commit.
    AddComplete,
    /// `KeProcessorAddFailureNotify`: abort; `status` says why the add failed.
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

/// A driver's per-CPU components, dispatched as one. Fixed size, no allocation.
///
/// ```
/// use perproc::{host::HostAlloc, Components, PerCpu, ProcessorIndex, SlotPadding, SlotState};
///
/// let queues = PerCpu::with_capacity_in(4, HostAlloc, SlotPadding::CacheLine, |_| Ok([0u8; 64]))?;
/// // A component whose constructor refuses processor 3.
/// let stats = PerCpu::with_capacity_in(4, HostAlloc, SlotPadding::CacheLine, |cpu| {
///     if cpu.get() == 3 { Err(perproc::Error::OutOfMemory) } else { Ok(0u64) }
/// })?;
/// let set = Components::new([&queues, &stats]);
///
/// let cpu2 = ProcessorIndex::new(2).unwrap();
/// set.start(cpu2)?;
/// set.complete(cpu2)?;
/// assert_eq!(queues.state(cpu2), SlotState::Online);
///
/// // Start for 3 fails in `stats`: `queues` is rolled back, one error comes out.
/// let cpu3 = ProcessorIndex::new(3).unwrap();
/// assert_eq!(set.start(cpu3), Err(perproc::Error::OutOfMemory));
/// assert!(queues.get(cpu3).is_none());
/// set.fail(cpu3)?; // the kernel's AddFailure that follows is harmless
/// # Ok::<(), perproc::Error>(())
/// ```
pub struct Components<'a, const N: usize> {
    parts: [&'a dyn Component; N],
}

impl<'a, const N: usize> Components<'a, N> {
    /// The set, prepared in this order (and rolled back in reverse).
    pub const fn new(parts: [&'a dyn Component; N]) -> Self {
        Self { parts }
    }

    /// AddStart: prepares every component in order. If one fails, aborts the
    /// ones before it (newest first) and returns that component's error; nothing
    /// stays published for `index` then.
    pub fn start(&self, index: ProcessorIndex) -> Result<(), Error> {
        for (done, part) in self.parts.iter().enumerate() {
            if let Err(error) = part.prepare(index) {
                for earlier in self.parts.iter().take(done).rev() {
                    // A prepared part aborts without error; anything else it could
                    // say (busy with a concurrent event) leaves it as it was.
                    let _ = earlier.abort(index);
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// AddComplete: commits every component. All are committed even if one
    /// reports an error (a protocol error such as Complete without Start); the
    /// first error is returned.
    pub fn complete(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.each(|part| part.commit(index))
    }

    /// AddFailure: aborts every component, whatever each prepared. The first
    /// error (for example [`Error::AlreadyOnline`]) is returned after all ran.
    pub fn fail(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.each(|part| part.abort(index))
    }

    /// Dispatches one notification.
    pub fn handle(&self, change: &ProcessorChange) -> Result<(), Error> {
        match change.state {
            ChangeState::AddStart => self.start(change.index),
            ChangeState::AddComplete => self.complete(change.index),
            ChangeState::AddFailure { .. } => self.fail(change.index),
        }
    }

    /// The components, in preparation order.
    pub fn parts(&self) -> &[&'a dyn Component; N] {
        &self.parts
    }

    fn each(&self, mut op: impl FnMut(&dyn Component) -> Result<(), Error>) -> Result<(), Error> {
        let mut first = Ok(());
        for part in self.parts {
            let result = op(part);
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

/// A set is itself a component, so sets nest.
impl<const N: usize> Component for Components<'_, N> {
    fn prepare(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.start(index)
    }

    fn commit(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.complete(index)
    }

    fn abort(&self, index: ProcessorIndex) -> Result<(), Error> {
        self.fail(index)
    }
}
