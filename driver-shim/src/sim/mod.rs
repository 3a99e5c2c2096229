//! A simulated Windows kernel, for running the shim (and drivers built on it)
//! off Windows: processors in groups with room for hot-add, the processor-change
//! callbacks as `../shared/spec/processor-change.md` describes them (including
//! the undocumented corners, selectable by [`Policy`]), IRQL per simulated
//! processor, and a pool with per-tag accounting and fault injection.
//!
//! Its C surface is [`sys`] (the same names and signatures as `wdk-sys`); this
//! module is the test-facing side: build a [`Kernel`], run threads "on" its
//! processors with [`Kernel::enter_on`], hot-add processors, inject pool
//! failures, read what was delivered and what was misused.
//!
//! ```
//! use perproc_wdk::sim::{AddResult, Kernel};
//! use perproc_wdk::sys;
//!
//! let kernel = Kernel::new(&[64, 64], 4)?;          // two groups of 64, 4 booted
//! let _on = kernel.enter()?;                         // this thread runs on processor 0
//! assert_eq!(unsafe { sys::KeQueryMaximumProcessorCountEx(0xffff) }, 128);
//! let add = kernel.hot_add_index(64)?;              // index 64: group 1, number 0
//! assert_eq!((add.index.get(), add.result), (64, AddResult::Added));
//! let next = kernel.hot_add_next()?;                 // the first free: (0, 4) at index 4
//! assert_eq!((next.index.get(), kernel.number_of(4)), (4, Some((0, 4))));
//! assert_eq!(unsafe { sys::KeQueryActiveProcessorCountEx(0xffff) }, 6);
//! assert!(kernel.violations().is_empty());
//! # Ok::<(), perproc_wdk::sim::SimError>(())
//! ```

pub mod sys;

mod kernel;
mod pool;
mod tls;

use core::fmt;
use core::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::vec::Vec;

use kernel::{lock, State, PASSIVE};
use perproc::ProcessorIndex;
use sys::{KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, NTSTATUS, POOL_FLAGS, PROCESSOR_NUMBER};

static ORPHANS: AtomicUsize = AtomicUsize::new(0);

/// A processor index as the simulator's methods accept it: perproc's
/// [`ProcessorIndex`], or a plain `u32` (what `NtNumber` is), so both
/// `kernel.enter_on(2)` and `kernel.enter_on(pin.processor())` read naturally.
pub trait SimIndex: Copy {
    /// The raw index (`NtNumber`).
    fn raw(self) -> u32;
}

impl SimIndex for u32 {
    fn raw(self) -> u32 {
        self
    }
}

impl SimIndex for ProcessorIndex {
    fn raw(self) -> u32 {
        self.get()
    }
}

/// Which simulated machine (a [`Kernel`] and its clones); unique in the
/// process, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelId(u64);

/// The kernel the calling thread runs on (its innermost entry), if any.
pub(crate) fn entered_kernel() -> Option<KernelId> {
    tls::with(|cpu| KernelId(cpu.state.id))
}

fn orphan() {
    ORPHANS.fetch_add(1, Ordering::Relaxed);
}

/// Kernel calls made by threads that entered no kernel (they failed: NULL,
/// `INVALID_PROCESSOR_INDEX`, 0, or nothing). Process-wide.
pub fn orphan_calls() -> usize {
    ORPHANS.load(Ordering::Relaxed)
}

/// Why the simulator refused a request of the test harness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimError {
    /// No group, a group of 0 or more than 64 processors, no processor booted,
    /// or a booted processor outside its group.
    BadTopology,
    /// The (group, number) is not part of the topology.
    NoSuchProcessor,
    /// That processor is already present.
    AlreadyPresent,
    /// That index is taken.
    IndexInUse,
    /// That index is at or past the maximum count.
    IndexOutOfRange,
    /// Every processor of the topology is present.
    Full,
    /// The processor is not present (so no thread can run on it).
    NotPresent,
    /// The calling thread is above `PASSIVE_LEVEL`.
    IrqlTooHigh,
    /// The calling thread is running a processor-change callback.
    InsideCallback,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for SimError {}

/// A misuse the real kernel would bugcheck on (or deadlock on); the simulator
/// records it and carries on so the test can report it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// `KfRaiseIrql` to below the current IRQL.
    RaiseToLower {
        /// The current IRQL.
        from: u8,
        /// The requested one.
        to: u8,
    },
    /// `KeLowerIrql` to above the current IRQL.
    LowerToHigher {
        /// The current IRQL.
        from: u8,
        /// The requested one.
        to: u8,
    },
    /// A routine called above the IRQL it allows.
    IrqlTooHigh {
        /// The routine.
        call: &'static str,
        /// The caller's IRQL.
        irql: u8,
    },
    /// Register or deregister from inside a processor-change callback.
    InsideCallback {
        /// The routine.
        call: &'static str,
    },
    /// A callback returned at another IRQL than it was called at.
    CallbackChangedIrql {
        /// Whose callback.
        registration: RegistrationId,
        /// The IRQL it was called at.
        expected: u8,
        /// The IRQL it returned at.
        returned: u8,
    },
    /// A callback wrote to the notification context it was given.
    ContextWritten {
        /// Whose callback.
        registration: RegistrationId,
    },
    /// A thread left its processor (dropped its [`OnProcessor`]) above
    /// `PASSIVE_LEVEL`.
    LeftRaised {
        /// The processor.
        index: u32,
        /// The IRQL it was left at.
        irql: u8,
    },
    /// `ExAllocatePool2` with no pool type, two, or a flag the simulator does not
    /// implement.
    BadPoolFlags {
        /// The flags.
        flags: POOL_FLAGS,
    },
    /// `ExFreePool` of NULL, of a pointer the pool never returned, or twice.
    UnknownPoolBlock {
        /// The address.
        addr: usize,
    },
    /// `ExFreePoolWithTag` with another tag than the allocation's.
    PoolTagMismatch {
        /// The tag it was allocated with.
        allocated: u32,
        /// The tag it was freed with.
        freed: u32,
    },
    /// `KeDeregisterProcessorChangeCallback` with a handle that is not registered.
    UnknownHandle,
    /// A required pointer argument was NULL.
    NullPointer {
        /// The routine.
        call: &'static str,
    },
    /// [`OnProcessor`] guards dropped out of order.
    UnbalancedEnter,
}

/// A registration, as the simulator numbers them (the handle's value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegistrationId(pub usize);

/// Who receives AddFailure after a Start was vetoed during a hot-add (the
/// documentation does not say; the registration replay's rule is
/// [`SawStartButVetoer`](FailureRecipients::SawStartButVetoer)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureRecipients {
    /// Every registered callback, including ones that never saw the Start.
    AllRegistered,
    /// Every callback that saw the Start, the vetoing one included.
    SawStart,
    /// Every callback that saw the Start except the vetoing one.
    SawStartButVetoer,
}

/// The undocumented choices of the simulated kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Hot-adds of different processors deliver concurrently (each hot-add
    /// call runs on its caller's thread). Registration stays exclusive.
    pub concurrent: bool,
    /// Who gets AddFailure after a veto.
    pub failure: FailureRecipients,
    /// After a veto, the remaining callbacks still get AddStart (as
    /// `ExNotifyCallback` would call them all).
    pub start_after_veto: bool,
    /// All callbacks of one hot-add share one `OperationStatus` (so a later
    /// callback sees an earlier one's failure), as callback objects do.
    pub shared_status: bool,
}

impl Default for Policy {
    /// Serialised deliveries, the replay's failure rule, no Start after a veto,
    /// one status per callback.
    fn default() -> Self {
        Self {
            concurrent: false,
            failure: FailureRecipients::SawStartButVetoer,
            start_after_veto: false,
            shared_status: false,
        }
    }
}

/// What a hot-add should add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotAdd {
    /// The group.
    pub group: u16,
    /// The number in the group.
    pub number: u8,
    /// The index to give it (`None`: the lowest free one).
    pub index: Option<u32>,
    /// Fail the add after every Start succeeded, with this status (the
    /// hardware did not come up).
    pub kernel_failure: Option<NTSTATUS>,
}

impl HotAdd {
    /// Processor `number` of `group`, at the lowest free index.
    pub const fn new(group: u16, number: u8) -> Self {
        Self {
            group,
            number,
            index: None,
            kernel_failure: None,
        }
    }

    /// At index `index` instead.
    pub fn at_index(mut self, index: impl SimIndex) -> Self {
        self.index = Some(index.raw());
        self
    }

    /// Failing after the Starts with `status`.
    pub const fn failing(mut self, status: NTSTATUS) -> Self {
        self.kernel_failure = Some(status);
        self
    }
}

/// How a hot-add ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddResult {
    /// Every Start succeeded; Complete was delivered; the processor is active.
    Added,
    /// A callback failed its Start; AddFailure was delivered per the policy.
    Vetoed {
        /// The status the callback wrote.
        status: NTSTATUS,
        /// The first callback that failed.
        by: RegistrationId,
    },
    /// The kernel failed the add ([`HotAdd::failing`]); AddFailure went to every
    /// callback that saw the Start.
    Failed {
        /// The kernel's status.
        status: NTSTATUS,
    },
}

/// A hot-add's processor and result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddOutcome {
    /// The index it got (free again unless added).
    pub index: ProcessorIndex,
    /// Its group and number.
    pub number: PROCESSOR_NUMBER,
    /// What happened.
    pub result: AddResult,
}

impl AddOutcome {
    /// Whether the processor is now active.
    pub fn added(&self) -> bool {
        self.result == AddResult::Added
    }
}

/// Which path delivered a notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Registration's replay of the active processors (ADD_EXISTING).
    Replay,
    /// A hot-add.
    HotAdd,
    /// [`Kernel::deliver_raw`].
    Raw,
}

/// One callback invocation, as recorded by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Whose callback.
    pub registration: RegistrationId,
    /// Which path.
    pub phase: Phase,
    /// The `State` delivered.
    pub state: i32,
    /// The `NtNumber` delivered.
    pub index: u32,
    /// The `ProcNumber` delivered.
    pub number: PROCESSOR_NUMBER,
    /// The `Status` delivered.
    pub status: NTSTATUS,
    /// `*OperationStatus` before the call.
    pub operation_status_before: NTSTATUS,
    /// `*OperationStatus` after the call.
    pub operation_status_after: NTSTATUS,
}

/// An allocation plan for the pool, counting attempts from [`Pool::fail`]
/// (the first is 0). A refusal stands for memory exhausted on every NUMA
/// node: a refused `ExAllocatePool3` for a node makes the same thread's next
/// request of the same tag and size (the any-node retry `PoolAlloc` makes)
/// fail too, without counting it as an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Refuse nothing.
    Never,
    /// Refuse attempt `k` only.
    Nth(usize),
    /// Refuse attempt `k` and every later one.
    From(usize),
}

/// One pool tag's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TagStats {
    /// Blocks allocated and not freed.
    pub live_blocks: usize,
    /// Bytes allocated and not freed (as requested, not as rounded).
    pub live_bytes: usize,
    /// The most bytes live at once.
    pub peak_bytes: usize,
    /// Successful allocations.
    pub allocations: usize,
    /// Frees.
    pub frees: usize,
}

/// A pool tag from its four characters, as drivers write them (`b"Perp"`): the
/// first character is the low byte, so debuggers print it in reading order.
pub const fn tag(chars: [u8; 4]) -> u32 {
    u32::from_le_bytes(chars)
}

/// A kernel's pool, from [`Kernel::pool`].
pub struct Pool<'a> {
    kernel: &'a Kernel,
}

impl Pool<'_> {
    /// Sets the fault plan for every tag and restarts the attempt count.
    pub fn fail(&self, fault: Fault) {
        self.kernel.state.pool.plan(fault, None);
    }

    /// Sets the fault plan for allocations with `tag` only (others are
    /// neither refused nor counted).
    pub fn fail_tag(&self, fault: Fault, tag: u32) {
        self.kernel.state.pool.plan(fault, Some(tag));
    }

    /// Allocation attempts counted since the plan was set.
    pub fn attempts(&self) -> usize {
        self.kernel.state.pool.counts().0
    }

    /// Refusals injected since the kernel started.
    pub fn injected(&self) -> usize {
        self.kernel.state.pool.counts().1
    }

    /// `tag`'s counters.
    pub fn stats(&self, tag: u32) -> TagStats {
        self.kernel.state.pool.stats(tag)
    }

    /// Bytes live under `tag`.
    pub fn live_bytes(&self, tag: u32) -> usize {
        self.stats(tag).live_bytes
    }

    /// Every tag ever used, with its counters, by tag.
    pub fn tags(&self) -> Vec<(u32, TagStats)> {
        self.kernel.state.pool.all_stats()
    }

    /// Limits NUMA node `node` to `bytes` live (`None`: no limit, the
    /// default): an allocation that needs that node and finds no room there
    /// fails (`ExAllocatePool3` with that node) or goes to another node
    /// (`ExAllocatePool2`).
    pub fn set_node_capacity(&self, node: u16, bytes: Option<usize>) {
        self.kernel.state.pool.set_node_capacity(node, bytes);
    }

    /// Bytes live on NUMA node `node`, under every tag.
    pub fn node_live_bytes(&self, node: u16) -> usize {
        self.kernel.state.pool.node_bytes(node, None)
    }

    /// Bytes live on NUMA node `node` under `tag`.
    pub fn node_tag_bytes(&self, node: u16, tag: u32) -> usize {
        self.kernel.state.pool.node_bytes(node, Some(tag))
    }

    /// The NUMA node of the live pool block holding `addr` (any address in
    /// it, so an over-aligned block's user pointer works), or `None`.
    pub fn node_of_block(&self, addr: *const u8) -> Option<u16> {
        pool::node_of(addr.addr())
    }

    /// Bytes live under every tag.
    pub fn total_live_bytes(&self) -> usize {
        self.tags()
            .iter()
            .fold(0usize, |sum, (_, s)| sum.saturating_add(s.live_bytes))
    }
}

/// A simulated machine. Cheap to clone (a handle); every clone is the same
/// machine.
#[derive(Clone)]
pub struct Kernel {
    state: Arc<State>,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("groups", &self.state.groups)
            .field("active", &self.active_processors())
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// A machine with groups of the given sizes (1 to 64 each; the maximum
    /// count is their sum) and `boot` active processors, filling group 0 first
    /// (index = boot order).
    pub fn new(groups: &[u8], boot: u32) -> Result<Self, SimError> {
        let mut numbers = Vec::new();
        'fill: for (g, &size) in groups.iter().enumerate() {
            let g = u16::try_from(g).map_err(|_| SimError::BadTopology)?;
            for n in 0..size {
                if u32::try_from(numbers.len()).map_or(true, |len| len >= boot) {
                    break 'fill;
                }
                numbers.push((g, n));
            }
        }
        if u32::try_from(numbers.len()).ok() != Some(boot) {
            return Err(SimError::BadTopology);
        }
        Self::with_processors(groups, &numbers)
    }

    /// As [`Kernel::new`], on a NUMA machine: each group is cut into nodes of
    /// `node_size` consecutive processor numbers (the last one of a group may
    /// be smaller), numbered in group order from 0. [`Kernel::new`] and
    /// [`Kernel::with_processors`] give one node per group.
    pub fn with_numa(groups: &[u8], boot: u32, node_size: u8) -> Result<Self, SimError> {
        let booted = Self::new(groups, boot)?;
        let numbers: Vec<(u16, u8)> = (0..boot).filter_map(|i| booted.number_of(i)).collect();
        Ok(Self {
            state: Arc::new(kernel::State::with_nodes(
                groups,
                &numbers,
                Some(node_size),
            )?),
        })
    }

    /// The number of NUMA nodes.
    pub fn node_count(&self) -> u16 {
        u16::try_from(self.state.nodes.len()).unwrap_or(u16::MAX)
    }

    /// The NUMA node of processor (`group`, `number`), present or not.
    pub fn node_of_number(&self, group: u16, number: u8) -> Option<u16> {
        self.state.node_of_number(sys::PROCESSOR_NUMBER {
            Group: group,
            Number: number,
            Reserved: 0,
        })
    }

    /// The NUMA node of the present processor `index`.
    pub fn node_of(&self, index: u32) -> Option<u16> {
        let (group, number) = self.number_of(index)?;
        self.node_of_number(group, number)
    }

    /// A machine whose booted processors are exactly `boot` (group, number),
    /// given indexes 0, 1, ... in that order.
    pub fn with_processors(groups: &[u8], boot: &[(u16, u8)]) -> Result<Self, SimError> {
        Ok(Self {
            state: Arc::new(State::new(groups, boot)?),
        })
    }

    /// This machine's identity (shared by its clones).
    pub fn id(&self) -> KernelId {
        KernelId(self.state.id)
    }

    /// The maximum processor count (room for hot-add included).
    pub fn max_processors(&self) -> u32 {
        self.state.max
    }

    /// Processors active now.
    pub fn active_processors(&self) -> u32 {
        self.state.count(sys::ALL_PROCESSOR_GROUPS, true)
    }

    /// The index of processor (`group`, `number`), if present.
    pub fn index_of(&self, group: u16, number: u8) -> Option<ProcessorIndex> {
        self.state
            .index_of(PROCESSOR_NUMBER {
                Group: group,
                Number: number,
                Reserved: 0,
            })
            .and_then(ProcessorIndex::new)
    }

    /// The (group, number) of processor `index`, if present.
    pub fn number_of(&self, index: impl SimIndex) -> Option<(u16, u8)> {
        self.state
            .number_of(index.raw())
            .map(|n| (n.Group, n.Number))
    }

    /// The first (group, number) of the topology not present yet.
    pub fn next_free(&self) -> Option<(u16, u8)> {
        self.state.next_free()
    }

    /// Runs the calling thread on processor 0 (see [`enter_on`](Self::enter_on)).
    pub fn enter(&self) -> Result<OnProcessor<'_>, SimError> {
        self.enter_on(ProcessorIndex::ZERO)
    }

    /// Runs the calling thread "on" processor `index` until the guard drops:
    /// the kernel's routines see this kernel, `KeGetCurrentProcessorNumberEx`
    /// returns `index`, and the thread's IRQL starts at `PASSIVE_LEVEL`.
    /// Entries nest (the innermost wins).
    ///
    /// # Errors
    /// [`SimError::NotPresent`] unless the processor is present (booted, or
    /// added at least up to its AddStart).
    pub fn enter_on(&self, index: impl SimIndex) -> Result<OnProcessor<'_>, SimError> {
        let index = ProcessorIndex::new(index.raw()).ok_or(SimError::NotPresent)?;
        if !self.state.is_present(index.get()) {
            return Err(SimError::NotPresent);
        }
        let pushed = tls::push(tls::Cpu {
            state: Arc::clone(&self.state),
            index: index.get(),
            irql: PASSIVE,
            callbacks: Vec::new(),
        });
        if !pushed {
            return Err(SimError::NotPresent);
        }
        Ok(OnProcessor {
            kernel: self,
            index,
            _thread: PhantomData,
        })
    }

    /// Spawns a scoped thread that runs `f` on processor `index`.
    #[cfg(not(loom))]
    pub fn spawn_on<'scope, 'env, T, F>(
        &'scope self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        index: impl SimIndex + Send + 'scope,
        f: F,
    ) -> std::thread::ScopedJoinHandle<'scope, Result<T, SimError>>
    where
        T: Send + 'scope,
        F: FnOnce() -> T + Send + 'scope,
    {
        scope.spawn(move || {
            let _on = self.enter_on(index)?;
            Ok(f())
        })
    }

    /// The policy for the undocumented choices.
    pub fn policy(&self) -> Policy {
        *lock(&self.state.policy)
    }

    /// Changes the policy (takes effect at the next hot-add).
    pub fn set_policy(&self, policy: Policy) {
        *lock(&self.state.policy) = policy;
    }

    /// Hot-adds exactly processor `index`, as the topology numbers it: the
    /// `index`-th (group, number) counting group 0 first (so index 70 of
    /// groups of 64 is group 1, number 6), at index `index`.
    ///
    /// # Errors
    /// As for [`hot_add_with`](Self::hot_add_with); [`SimError::IndexOutOfRange`]
    /// past the maximum count.
    pub fn hot_add_index(&self, index: impl SimIndex) -> Result<AddOutcome, SimError> {
        let raw = index.raw();
        let mut first = 0u32;
        for (group, &size) in self.state.groups.iter().enumerate() {
            let end = first.saturating_add(u32::from(size));
            if raw < end {
                let group = u16::try_from(group).map_err(|_| SimError::NoSuchProcessor)?;
                let number =
                    u8::try_from(raw.wrapping_sub(first)).map_err(|_| SimError::NoSuchProcessor)?;
                return self.hot_add_with(HotAdd::new(group, number).at_index(raw));
            }
            first = end;
        }
        Err(SimError::IndexOutOfRange)
    }

    /// Hot-adds processor `number` of `group`, giving it the lowest free index
    /// (which need not be its position in the topology: see
    /// [`hot_add_index`](Self::hot_add_index) for that).
    pub fn hot_add_at_lowest_index(&self, group: u16, number: u8) -> Result<AddOutcome, SimError> {
        self.hot_add_with(HotAdd::new(group, number))
    }

    /// Hot-adds the first (group, number) of the topology not present yet, at
    /// the lowest free index (on a machine booted by [`Kernel::new`] and grown
    /// only this way, the two agree).
    pub fn hot_add_next(&self) -> Result<AddOutcome, SimError> {
        let (group, number) = self.next_free().ok_or(SimError::Full)?;
        self.hot_add_at_lowest_index(group, number)
    }

    /// Hot-adds a processor: makes it present (its index resolves), delivers
    /// AddStart to every registered callback in registration order, then
    /// AddComplete (to those that saw the Start) and makes it active, or
    /// AddFailure per the [`Policy`] and removes it again.
    ///
    /// The callbacks run on the calling thread at `PASSIVE_LEVEL`; a thread that
    /// did not enter this kernel runs them on processor 0. With
    /// [`Policy::concurrent`], hot-adds called from several threads deliver at
    /// the same time.
    ///
    /// # Errors
    /// The processor is not in the topology or already present, the index is
    /// taken or out of range, or the caller is above `PASSIVE_LEVEL` or inside
    /// a callback. Nothing was delivered then.
    pub fn hot_add_with(&self, add: HotAdd) -> Result<AddOutcome, SimError> {
        let _auto = self.ensure_entered()?;
        self.state.hot_add(add)
    }

    /// Delivers `context` as it is (any state, any numbers) to every registered
    /// callback, each with its own `OperationStatus`; returns what each left
    /// there. For the cases a real kernel should never produce.
    pub fn deliver_raw(
        &self,
        context: KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    ) -> Result<Vec<(RegistrationId, NTSTATUS)>, SimError> {
        let _auto = self.ensure_entered()?;
        Ok(self.state.deliver_raw(context))
    }

    /// The registrations, in registration order.
    pub fn registrations(&self) -> Vec<RegistrationId> {
        self.state.registrations()
    }

    /// Every callback invocation so far, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.state.journal.deliveries).clone()
    }

    /// Every callback invocation so far, clearing the record.
    pub fn take_deliveries(&self) -> Vec<Delivery> {
        core::mem::take(&mut *lock(&self.state.journal.deliveries))
    }

    /// Every misuse recorded so far.
    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.state.journal.violations).clone()
    }

    /// The pool: accounting and fault injection.
    pub fn pool(&self) -> Pool<'_> {
        Pool { kernel: self }
    }

    /// Enters processor 0 for the duration unless the thread already runs on
    /// this kernel, where it must be at PASSIVE_LEVEL and outside callbacks.
    fn ensure_entered(&self) -> Result<Option<OnProcessor<'_>>, SimError> {
        let mine = tls::with(|cpu| {
            Arc::ptr_eq(&cpu.state, &self.state).then_some((cpu.irql, !cpu.callbacks.is_empty()))
        })
        .flatten();
        match mine {
            Some((_, true)) => Err(SimError::InsideCallback),
            Some((irql, false)) if irql != PASSIVE => Err(SimError::IrqlTooHigh),
            Some(_) => Ok(None),
            None => self.enter().map(Some),
        }
    }
}

/// A thread's stay on a simulated processor, from [`Kernel::enter_on`].
/// Neither `Send` nor `Sync`.
pub struct OnProcessor<'a> {
    kernel: &'a Kernel,
    index: ProcessorIndex,
    _thread: PhantomData<*const ()>,
}

impl OnProcessor<'_> {
    /// The processor.
    pub fn index(&self) -> ProcessorIndex {
        self.index
    }
}

impl fmt::Debug for OnProcessor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnProcessor")
            .field("index", &self.index)
            .finish()
    }
}

impl Drop for OnProcessor<'_> {
    fn drop(&mut self) {
        let state = &self.kernel.state;
        let Some(cpu) = tls::pop() else {
            return;
        };
        if !Arc::ptr_eq(&cpu.state, state) || cpu.index != self.index.get() {
            state.violate(Violation::UnbalancedEnter);
        }
        if cpu.irql != PASSIVE {
            cpu.state.violate(Violation::LeftRaised {
                index: cpu.index,
                irql: cpu.irql,
            });
            if cpu.irql >= kernel::DISPATCH {
                cpu.state.release_processor(cpu.index);
            }
        }
    }
}
