//! The simulated kernel's state and the behaviour behind [`super::sys`].

use core::ffi::c_void;
use core::ptr;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::vec::Vec;

use perproc::ProcessorIndex;

use super::pool::PoolState;
use super::sys::{
    ALL_PROCESSOR_GROUPS, INVALID_PROCESSOR_INDEX, KE_PROCESSOR_CHANGE_ADD_EXISTING,
    KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, KE_PROCESSOR_CHANGE_NOTIFY_STATE as STATE, NTSTATUS,
    PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, PNTSTATUS, PPROCESSOR_CALLBACK_FUNCTION, PROCESSOR_NUMBER,
    PVOID, STATUS_SUCCESS,
};
use super::{
    orphan, tls, AddOutcome, AddResult, Delivery, FailureRecipients, HotAdd, Phase, Policy,
    RegistrationId, SimError, Violation,
};

pub(crate) const PASSIVE: u8 = 0;
pub(crate) const APC: u8 = 1;
pub(crate) const DISPATCH: u8 = 2;

/// Locks a mutex, ignoring poisoning: a test that panicked elsewhere must not
/// turn every later kernel call into a panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Spins politely (loom's yield under `cfg(loom)`, so models make progress).
pub(crate) fn relax() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

type Callback = unsafe extern "C" fn(PVOID, PKE_PROCESSOR_CHANGE_NOTIFY_CONTEXT, PNTSTATUS);

/// One registered callback.
pub(crate) struct Reg {
    id: usize,
    callback: Callback,
    context: PVOID,
    /// Deliveries running now; deregistration waits for 0.
    in_flight: AtomicUsize,
    /// Set by deregistration before it waits.
    removed: AtomicBool,
}

// SAFETY: the context pointer is only handed back to the callback, which the
// registrant promised (KeRegisterProcessorChangeCallback's safety contract) is
// sound to call with it from any thread until deregistration returns.
unsafe impl Send for Reg {}
// SAFETY: as above; the other fields are atomics or immutable.
unsafe impl Sync for Reg {}

#[derive(Clone, Copy)]
struct Present {
    number: PROCESSOR_NUMBER,
    /// False between AddStart and AddComplete (or AddFailure).
    active: bool,
}

struct Procs {
    by_index: Vec<Option<Present>>,
    by_number: HashMap<(u16, u8), u32>,
}

/// A reader-writer spin lock standing in for the kernel's processor-change lock
/// (`KiDynamicProcessorLock`): registration takes it exclusively; a hot-add
/// exclusively or shared (concurrent deliveries). A spin lock with yields so
/// that loom models, which run every thread on one OS thread, make progress.
///
/// Taken with acquire and given back with release, so what one holder's
/// callbacks wrote (a registration's replay) happens-before the next holder's
/// callbacks (a hot-add's deliveries): deliveries to one registration are also
/// ordered by its `in_flight` count, but nothing else orders a replay to one
/// registration before a later hot-add's first delivery to another (the procs
/// and regs mutexes are released before the callbacks run; the journal's is
/// taken after each). `driver-shim/tests/handoff.rs` checks this under miri
/// (`scripts/mutants orderings`).
struct ChangeLock(AtomicUsize);

const WRITER: usize = 1;
const READER: usize = 2;

impl ChangeLock {
    fn write(&self) -> ChangeGuard<'_> {
        while self
            .0
            .compare_exchange_weak(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            relax();
        }
        ChangeGuard {
            lock: self,
            amount: WRITER,
        }
    }

    fn read(&self) -> ChangeGuard<'_> {
        loop {
            let now = self.0.load(Ordering::Relaxed);
            if now & WRITER == 0 {
                if let Some(next) = now.checked_add(READER) {
                    if self
                        .0
                        .compare_exchange_weak(now, next, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        return ChangeGuard {
                            lock: self,
                            amount: READER,
                        };
                    }
                }
            }
            relax();
        }
    }
}

struct ChangeGuard<'a> {
    lock: &'a ChangeLock,
    amount: usize,
}

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        self.lock.0.fetch_sub(self.amount, Ordering::Release);
    }
}

/// Records shared by the kernel and its pool.
#[derive(Default)]
pub(crate) struct Journal {
    pub(crate) violations: Mutex<Vec<Violation>>,
    pub(crate) deliveries: Mutex<Vec<Delivery>>,
}

impl Journal {
    pub(crate) fn violate(&self, violation: Violation) {
        lock(&self.violations).push(violation);
    }
}

static NEXT_KERNEL: AtomicU64 = AtomicU64::new(1);

/// A NUMA node: `count` consecutive processor numbers of one group, from
/// `first`. Nodes are numbered by their place in [`State::nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeSpan {
    pub(crate) group: u16,
    pub(crate) first: u8,
    pub(crate) count: u8,
}

/// One simulated machine.
pub(crate) struct State {
    /// This machine's identity, unique in the process (platforms compare it).
    pub(crate) id: u64,
    pub(crate) groups: Vec<u8>,
    pub(crate) max: u32,
    /// The NUMA topology: every (group, number) slot of `groups` is in exactly
    /// one node.
    pub(crate) nodes: Vec<NodeSpan>,
    procs: Mutex<Procs>,
    /// Per processor index: the token of the thread holding it at DISPATCH_LEVEL
    /// or above, or 0.
    dispatch: Vec<AtomicU64>,
    regs: Mutex<Vec<Arc<Reg>>>,
    change: ChangeLock,
    pub(crate) policy: Mutex<Policy>,
    pub(crate) journal: Arc<Journal>,
    pub(crate) pool: Arc<PoolState>,
}

impl State {
    pub(crate) fn new(groups: &[u8], boot: &[(u16, u8)]) -> Result<Self, SimError> {
        Self::with_nodes(groups, boot, None)
    }

    /// As [`State::new`], with each group cut into NUMA nodes of `node_size`
    /// processor numbers (the last node of a group may be smaller); `None`:
    /// one node per group.
    pub(crate) fn with_nodes(
        groups: &[u8],
        boot: &[(u16, u8)],
        node_size: Option<u8>,
    ) -> Result<Self, SimError> {
        if node_size == Some(0) {
            return Err(SimError::BadTopology);
        }
        let mut nodes = Vec::new();
        for (g, &size) in groups.iter().enumerate() {
            let group = u16::try_from(g).map_err(|_| SimError::BadTopology)?;
            let step = node_size.unwrap_or(size).max(1);
            let mut first = 0u8;
            while first < size {
                let count = step.min(size.saturating_sub(first));
                nodes.push(NodeSpan {
                    group,
                    first,
                    count,
                });
                first = first.saturating_add(count);
            }
        }
        if nodes.len() > usize::from(u16::MAX) {
            return Err(SimError::BadTopology);
        }
        if groups.is_empty()
            || groups.len() > usize::from(u16::MAX)
            || groups.iter().any(|&size| size == 0 || size > 64)
        {
            return Err(SimError::BadTopology);
        }
        let max = groups
            .iter()
            .try_fold(0u32, |sum, &size| sum.checked_add(u32::from(size)))
            .ok_or(SimError::BadTopology)?;
        let capacity = usize::try_from(max).map_err(|_| SimError::BadTopology)?;
        let mut procs = Procs {
            by_index: std::vec![None; capacity],
            by_number: HashMap::new(),
        };
        for (index, &(group, number)) in boot.iter().enumerate() {
            let index = u32::try_from(index).map_err(|_| SimError::BadTopology)?;
            procs.insert(groups, index, group, number, true)?;
        }
        if procs.by_number.is_empty() {
            return Err(SimError::BadTopology); // processor 0 must exist
        }
        let journal = Arc::new(Journal::default());
        Ok(Self {
            id: NEXT_KERNEL.fetch_add(1, Ordering::Relaxed),
            groups: groups.to_vec(),
            max,
            nodes,
            procs: Mutex::new(procs),
            dispatch: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            regs: Mutex::new(Vec::new()),
            change: ChangeLock(AtomicUsize::new(0)),
            policy: Mutex::new(Policy::default()),
            pool: Arc::new(PoolState::new(Arc::clone(&journal))),
            journal,
        })
    }

    pub(crate) fn violate(&self, violation: Violation) {
        self.journal.violate(violation);
    }

    pub(crate) fn is_present(&self, index: u32) -> bool {
        self.present(index).is_some()
    }

    fn present(&self, index: u32) -> Option<Present> {
        let procs = lock(&self.procs);
        let slot = usize::try_from(index).ok()?;
        procs.by_index.get(slot).copied().flatten()
    }

    pub(crate) fn number_of(&self, index: u32) -> Option<PROCESSOR_NUMBER> {
        self.present(index).map(|p| p.number)
    }

    pub(crate) fn index_of(&self, number: PROCESSOR_NUMBER) -> Option<u32> {
        lock(&self.procs)
            .by_number
            .get(&(number.Group, number.Number))
            .copied()
    }

    /// The node holding (group, number), present or not.
    pub(crate) fn node_of_number(&self, number: PROCESSOR_NUMBER) -> Option<u16> {
        let at = self.nodes.iter().position(|n| {
            n.group == number.Group
                && number.Number >= n.first
                && u16::from(number.Number) < u16::from(n.first).saturating_add(u16::from(n.count))
        })?;
        u16::try_from(at).ok()
    }

    /// `KeQueryNodeActiveAffinity`'s answer: the node's group and a mask of
    /// its present processors (a processor is present from its AddStart on,
    /// as it is for `KeGetProcessorIndexFromNumber` here), and their count.
    pub(crate) fn node_affinity(&self, node: u16) -> Option<(u16, u64, u16)> {
        let span = self.nodes.get(usize::from(node))?;
        let procs = lock(&self.procs);
        let mut mask = 0u64;
        let mut count = 0u16;
        for (&(group, number), _) in procs.by_number.iter() {
            let inside = group == span.group
                && number >= span.first
                && u16::from(number) < u16::from(span.first).saturating_add(u16::from(span.count));
            if inside {
                mask |= 1u64.checked_shl(u32::from(number)).unwrap_or(0);
                count = count.saturating_add(1);
            }
        }
        Some((span.group, mask, count))
    }

    pub(crate) fn count(&self, group: u32, active_only: bool) -> u32 {
        let procs = lock(&self.procs);
        let in_group =
            |p: &Present| group == ALL_PROCESSOR_GROUPS || u32::from(p.number.Group) == group;
        if !active_only {
            if group == ALL_PROCESSOR_GROUPS {
                return self.max;
            }
            return usize::try_from(group)
                .ok()
                .and_then(|g| self.groups.get(g))
                .map_or(0, |&size| u32::from(size));
        }
        let n = procs
            .by_index
            .iter()
            .flatten()
            .filter(|p| p.active && in_group(p))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Active processors in index order.
    fn active(&self) -> Vec<(u32, PROCESSOR_NUMBER)> {
        let procs = lock(&self.procs);
        procs
            .by_index
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                Some(p) if p.active => Some((u32::try_from(i).ok()?, p.number)),
                _ => None,
            })
            .collect()
    }

    /// The first (group, number) of the topology that is not present.
    pub(crate) fn next_free(&self) -> Option<(u16, u8)> {
        let procs = lock(&self.procs);
        self.groups.iter().enumerate().find_map(|(g, &size)| {
            let g = u16::try_from(g).ok()?;
            (0..size).find_map(|n| (!procs.by_number.contains_key(&(g, n))).then_some((g, n)))
        })
    }

    pub(crate) fn registrations(&self) -> Vec<RegistrationId> {
        lock(&self.regs)
            .iter()
            .map(|r| RegistrationId(r.id))
            .collect()
    }

    fn dispatch_word(&self, index: u32) -> Option<&AtomicU64> {
        self.dispatch.get(usize::try_from(index).ok()?)
    }

    /// Takes processor `index` for the calling thread (raise to DISPATCH_LEVEL).
    ///
    /// Acquire, paired with `release_processor`'s release: what the previous
    /// holder did at DISPATCH_LEVEL (a driver's per-processor data, written
    /// without atomics) happens-before what this one does, as a real
    /// processor sees what it ran before (`driver-shim/tests/handoff.rs`
    /// checks it under miri).
    pub(crate) fn acquire_processor(&self, index: u32) {
        let Some(word) = self.dispatch_word(index) else {
            return;
        };
        let me = tls::token();
        loop {
            match word.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return,
                Err(owner) if owner == me => return,
                Err(_) => relax(),
            }
        }
    }

    /// Gives processor `index` back (lower below DISPATCH_LEVEL), unless
    /// another context this thread entered on it is still at DISPATCH_LEVEL or
    /// above: nested entries of one thread share the processor's word, and an
    /// inner entry going back to PASSIVE_LEVEL must not let another thread onto
    /// a processor its outer entry still holds.
    pub(crate) fn release_processor(&self, index: u32) {
        if tls::holds(self, index) {
            return;
        }
        if let Some(word) = self.dispatch_word(index) {
            let _ = word.compare_exchange(tls::token(), 0, Ordering::Release, Ordering::Relaxed);
        }
    }

    /// Calls one callback, unless its registration is gone. The calling thread
    /// runs it at `irql`, marked as inside that registration's callback.
    fn deliver(
        &self,
        reg: &Reg,
        phase: Phase,
        context: KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
        operation_status: &mut NTSTATUS,
        irql: u8,
    ) -> bool {
        // Dekker with `deregister`: either it sees us in flight and waits, or we
        // see it removed and do not call.
        reg.in_flight.fetch_add(1, Ordering::SeqCst);
        if reg.removed.load(Ordering::SeqCst) {
            reg.in_flight.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let before_irql = tls::with(|cpu| {
            let before = cpu.irql;
            cpu.irql = irql;
            cpu.callbacks.push(reg.id);
            (before, cpu.index)
        });
        let status_before = *operation_status;
        let mut change = context;
        // SAFETY: the registrant promised the callback is sound to call with its
        // context from any thread until deregistration, which waits for us; both
        // pointers are to locals that live across the call.
        unsafe { (reg.callback)(reg.context, &mut change, operation_status) };
        if let Some((before, index)) = before_irql {
            let after = tls::with(|cpu| {
                let after = cpu.irql;
                cpu.irql = before;
                cpu.callbacks.pop();
                after
            });
            if let Some(after) = after.filter(|&after| after != irql) {
                self.violate(Violation::CallbackChangedIrql {
                    registration: RegistrationId(reg.id),
                    expected: irql,
                    returned: after,
                });
                if after >= DISPATCH && irql < DISPATCH {
                    self.release_processor(index);
                }
            }
        }
        if change != context {
            self.violate(Violation::ContextWritten {
                registration: RegistrationId(reg.id),
            });
        }
        lock(&self.journal.deliveries).push(Delivery {
            registration: RegistrationId(reg.id),
            phase,
            state: context.State,
            index: context.NtNumber,
            number: context.ProcNumber,
            status: context.Status,
            operation_status_before: status_before,
            operation_status_after: *operation_status,
        });
        reg.in_flight.fetch_sub(1, Ordering::SeqCst);
        true
    }

    fn unlink(&self, id: usize) -> Option<Arc<Reg>> {
        let mut regs = lock(&self.regs);
        let at = regs.iter().position(|r| r.id == id)?;
        let reg = regs.remove(at);
        reg.removed.store(true, Ordering::SeqCst);
        Some(reg)
    }

    pub(crate) fn hot_add(&self, add: HotAdd) -> Result<AddOutcome, SimError> {
        let policy = *lock(&self.policy);
        let _change = if policy.concurrent {
            self.change.read()
        } else {
            self.change.write()
        };
        let (index, number) = lock(&self.procs).reserve(&self.groups, add)?;
        let regs: Vec<Arc<Reg>> = lock(&self.regs).clone();

        let start = notify(
            STATE::KeProcessorAddStartNotify,
            index,
            number,
            STATUS_SUCCESS,
        );
        let mut saw_start: Vec<&Arc<Reg>> = Vec::new();
        let mut veto: Option<(usize, NTSTATUS)> = None;
        let mut shared = STATUS_SUCCESS;
        for reg in &regs {
            if veto.is_some() && !policy.start_after_veto {
                break;
            }
            let mut own = STATUS_SUCCESS;
            let status = if policy.shared_status {
                &mut shared
            } else {
                &mut own
            };
            if !self.deliver(reg, Phase::HotAdd, start, status, PASSIVE) {
                continue;
            }
            saw_start.push(reg);
            if veto.is_none() && *status < 0 {
                veto = Some((reg.id, *status));
            }
        }

        let failure = veto.map(|(_, status)| status).or(add.kernel_failure);
        let Some(status) = failure else {
            lock(&self.procs).activate(index);
            let complete = notify(
                STATE::KeProcessorAddCompleteNotify,
                index,
                number,
                STATUS_SUCCESS,
            );
            for reg in &saw_start {
                let mut status = STATUS_SUCCESS;
                self.deliver(reg, Phase::HotAdd, complete, &mut status, PASSIVE);
            }
            return Ok(AddOutcome {
                index: processor(index),
                number,
                result: AddResult::Added,
            });
        };

        let vetoer = veto.map(|(id, _)| id);
        let recipients: Vec<&Arc<Reg>> = match (policy.failure, vetoer) {
            (FailureRecipients::AllRegistered, _) => regs.iter().collect(),
            (FailureRecipients::SawStartButVetoer, Some(vetoer)) => saw_start
                .iter()
                .copied()
                .filter(|r| r.id != vetoer)
                .collect(),
            _ => saw_start,
        };
        let failed = notify(STATE::KeProcessorAddFailureNotify, index, number, status);
        for reg in recipients {
            let mut operation = status;
            self.deliver(reg, Phase::HotAdd, failed, &mut operation, PASSIVE);
        }
        lock(&self.procs).remove(index);
        Ok(AddOutcome {
            index: processor(index),
            number,
            result: match vetoer {
                Some(by) => AddResult::Vetoed {
                    status,
                    by: RegistrationId(by),
                },
                None => AddResult::Failed { status },
            },
        })
    }

    pub(crate) fn deliver_raw(
        &self,
        context: KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT,
    ) -> Vec<(RegistrationId, NTSTATUS)> {
        let _change = self.change.read();
        let regs: Vec<Arc<Reg>> = lock(&self.regs).clone();
        let mut out = Vec::new();
        for reg in &regs {
            let mut status = STATUS_SUCCESS;
            if self.deliver(reg, Phase::Raw, context, &mut status, PASSIVE) {
                out.push((RegistrationId(reg.id), status));
            }
        }
        out
    }
}

impl Procs {
    fn insert(
        &mut self,
        groups: &[u8],
        index: u32,
        group: u16,
        number: u8,
        active: bool,
    ) -> Result<(), SimError> {
        let size = groups
            .get(usize::from(group))
            .copied()
            .ok_or(SimError::NoSuchProcessor)?;
        if number >= size {
            return Err(SimError::NoSuchProcessor);
        }
        if self.by_number.contains_key(&(group, number)) {
            return Err(SimError::AlreadyPresent);
        }
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.by_index.get_mut(i))
            .ok_or(SimError::IndexOutOfRange)?;
        if slot.is_some() {
            return Err(SimError::IndexInUse);
        }
        *slot = Some(Present {
            number: PROCESSOR_NUMBER {
                Group: group,
                Number: number,
                Reserved: 0,
            },
            active,
        });
        self.by_number.insert((group, number), index);
        Ok(())
    }

    /// Makes the processor of `add` present (not yet active) at its index.
    fn reserve(&mut self, groups: &[u8], add: HotAdd) -> Result<(u32, PROCESSOR_NUMBER), SimError> {
        let index = match add.index {
            Some(index) => index,
            None => {
                let free = self
                    .by_index
                    .iter()
                    .position(Option::is_none)
                    .ok_or(SimError::Full)?;
                u32::try_from(free).map_err(|_| SimError::Full)?
            }
        };
        self.insert(groups, index, add.group, add.number, false)?;
        Ok((
            index,
            PROCESSOR_NUMBER {
                Group: add.group,
                Number: add.number,
                Reserved: 0,
            },
        ))
    }

    fn slot(&mut self, index: u32) -> Option<&mut Option<Present>> {
        self.by_index.get_mut(usize::try_from(index).ok()?)
    }

    fn activate(&mut self, index: u32) {
        if let Some(Some(p)) = self.slot(index) {
            p.active = true;
        }
    }

    fn remove(&mut self, index: u32) {
        if let Some(slot) = self.slot(index) {
            if let Some(p) = slot.take() {
                self.by_number.remove(&(p.number.Group, p.number.Number));
            }
        }
    }
}

/// A reserved index as the library's type (reserved indexes are below the
/// maximum count, so never `INVALID_PROCESSOR_INDEX`).
fn processor(index: u32) -> ProcessorIndex {
    ProcessorIndex::new(index).unwrap_or(ProcessorIndex::ZERO)
}

fn notify(
    state: STATE::Type,
    index: u32,
    number: PROCESSOR_NUMBER,
    status: NTSTATUS,
) -> KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT {
    KE_PROCESSOR_CHANGE_NOTIFY_CONTEXT {
        State: state,
        NtNumber: index,
        Status: status,
        ProcNumber: number,
    }
}

/// Registration handles of every kernel (ids are process-wide), so that a
/// registration can be deregistered from any thread, entered or not, as on
/// Windows.
static HANDLES: Mutex<BTreeMap<usize, Weak<State>>> = Mutex::new(BTreeMap::new());
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(1);

fn handle_of(id: usize) -> PVOID {
    ptr::without_provenance_mut::<c_void>(id)
}

/// The calling thread's kernel, if it may call a PASSIVE_LEVEL-only,
/// not-from-a-callback routine; records why not otherwise.
fn passive_caller(call: &'static str) -> Option<Arc<State>> {
    let Some((state, _, irql, in_callback)) = tls::current() else {
        orphan();
        return None;
    };
    if in_callback {
        state.violate(Violation::InsideCallback { call });
        return None;
    }
    if irql != PASSIVE {
        state.violate(Violation::IrqlTooHigh { call, irql });
        return None;
    }
    Some(state)
}

pub(crate) fn register(
    callback: PPROCESSOR_CALLBACK_FUNCTION,
    context: PVOID,
    flags: u32,
) -> PVOID {
    let Some(state) = passive_caller("KeRegisterProcessorChangeCallback") else {
        return ptr::null_mut();
    };
    let Some(callback) = callback else {
        state.violate(Violation::NullPointer {
            call: "KeRegisterProcessorChangeCallback",
        });
        return ptr::null_mut();
    };
    let _change = state.change.write();
    let id = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
    let reg = Arc::new(Reg {
        id,
        callback,
        context,
        in_flight: AtomicUsize::new(0),
        removed: AtomicBool::new(false),
    });
    lock(&state.regs).push(Arc::clone(&reg));
    lock(&HANDLES).insert(id, Arc::downgrade(&state));
    if flags & KE_PROCESSOR_CHANGE_ADD_EXISTING == 0 {
        return handle_of(id);
    }

    // The replay runs under the processor-change lock, a fast mutex: APC_LEVEL.
    let active = state.active();
    let mut failed: Option<(usize, NTSTATUS)> = None;
    for (k, &(index, number)) in active.iter().enumerate() {
        let mut status = STATUS_SUCCESS;
        let start = notify(
            STATE::KeProcessorAddStartNotify,
            index,
            number,
            STATUS_SUCCESS,
        );
        state.deliver(&reg, Phase::Replay, start, &mut status, APC);
        if status < 0 {
            failed = Some((k, status));
            break;
        }
    }
    match failed {
        None => {
            for &(index, number) in &active {
                let mut status = STATUS_SUCCESS;
                let complete = notify(
                    STATE::KeProcessorAddCompleteNotify,
                    index,
                    number,
                    STATUS_SUCCESS,
                );
                state.deliver(&reg, Phase::Replay, complete, &mut status, APC);
            }
            handle_of(id)
        }
        Some((k, status)) => {
            for &(index, number) in active.iter().take(k) {
                let mut operation = status;
                let failure = notify(STATE::KeProcessorAddFailureNotify, index, number, status);
                state.deliver(&reg, Phase::Replay, failure, &mut operation, APC);
            }
            state.unlink(id);
            lock(&HANDLES).remove(&id);
            ptr::null_mut()
        }
    }
}

pub(crate) fn deregister(handle: PVOID) {
    let id = handle.addr();
    let owner = lock(&HANDLES).remove(&id).and_then(|state| state.upgrade());
    // The caller's context, if it entered a kernel (for the IRQL and
    // inside-a-callback checks; a thread that did not enter is taken to be
    // at PASSIVE_LEVEL).
    let caller = tls::with(|cpu| (Arc::clone(&cpu.state), cpu.irql, cpu.callbacks.clone()));
    let Some(state) = owner else {
        match &caller {
            Some((state, ..)) => state.violate(Violation::UnknownHandle),
            None => orphan(),
        }
        return;
    };
    let (irql, inside) = caller
        .filter(|(caller, ..)| Arc::ptr_eq(caller, &state))
        .map(|(_, irql, inside)| (irql, inside))
        .unwrap_or((PASSIVE, Vec::new()));
    if !inside.is_empty() {
        state.violate(Violation::InsideCallback {
            call: "KeDeregisterProcessorChangeCallback",
        });
    }
    if irql != PASSIVE {
        state.violate(Violation::IrqlTooHigh {
            call: "KeDeregisterProcessorChangeCallback",
            irql,
        });
    }
    let Some(reg) = state.unlink(id) else {
        state.violate(Violation::UnknownHandle);
        return;
    };
    // Wait for deliveries in flight, unless this thread is one of them (that
    // would never end; the violation is recorded above).
    if inside.contains(&id) {
        return;
    }
    while reg.in_flight.load(Ordering::SeqCst) != 0 {
        relax();
    }
}

pub(crate) fn current_processor() -> (u32, PROCESSOR_NUMBER) {
    let Some((state, index, _, _)) = tls::current() else {
        orphan();
        return (INVALID_PROCESSOR_INDEX, PROCESSOR_NUMBER::default());
    };
    (index, state.number_of(index).unwrap_or_default())
}

pub(crate) fn processor_count(group: u16, active_only: bool) -> u32 {
    match tls::current() {
        Some((state, ..)) => state.count(u32::from(group), active_only),
        None => {
            orphan();
            0
        }
    }
}

pub(crate) fn index_of(number: PROCESSOR_NUMBER) -> u32 {
    match tls::current() {
        Some((state, ..)) => state.index_of(number).unwrap_or(INVALID_PROCESSOR_INDEX),
        None => {
            orphan();
            INVALID_PROCESSOR_INDEX
        }
    }
}

pub(crate) fn number_of(index: u32) -> Option<PROCESSOR_NUMBER> {
    match tls::current() {
        Some((state, ..)) => state.number_of(index),
        None => {
            orphan();
            None
        }
    }
}

pub(crate) fn current_irql() -> u8 {
    tls::with(|cpu| cpu.irql).unwrap_or_else(|| {
        orphan();
        PASSIVE
    })
}

pub(crate) fn raise_irql(new: u8) -> u8 {
    let Some((state, index, old, _)) = tls::current() else {
        orphan();
        return PASSIVE;
    };
    if new < old {
        state.violate(Violation::RaiseToLower { from: old, to: new });
        return old;
    }
    // A thread already at DISPATCH_LEVEL holds its processor (and taking it
    // again would be a no-op: `acquire_processor` is reentrant).
    if new >= DISPATCH && old < DISPATCH {
        state.acquire_processor(index);
    }
    tls::with(|cpu| cpu.irql = new);
    old
}

pub(crate) fn lower_irql(new: u8) {
    let Some((state, index, old, _)) = tls::current() else {
        orphan();
        return;
    };
    if new > old {
        state.violate(Violation::LowerToHigher { from: old, to: new });
        return;
    }
    tls::with(|cpu| cpu.irql = new);
    if old >= DISPATCH && new < DISPATCH {
        state.release_processor(index);
    }
}

/// `KeQueryHighestNodeNumber` for the calling thread's kernel (0 if none).
pub(crate) fn highest_node() -> u16 {
    match tls::current() {
        Some((state, ..)) => u16::try_from(state.nodes.len().saturating_sub(1)).unwrap_or(0),
        None => {
            orphan();
            0
        }
    }
}

/// `KeQueryNodeActiveAffinity` for the calling thread's kernel: (group, mask,
/// count), or an empty affinity for a node that does not exist.
pub(crate) fn node_affinity(node: u16) -> (u16, u64, u16) {
    match tls::current() {
        Some((state, ..)) => state.node_affinity(node).unwrap_or((0, 0, 0)),
        None => {
            orphan();
            (0, 0, 0)
        }
    }
}
