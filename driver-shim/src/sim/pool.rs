//! The simulated pool: `ExAllocatePool2`/`ExFreePool` with per-tag accounting
//! and fault injection.
//!
//! Blocks are registered in one process-wide table (address -> owner), so a
//! block can be freed from any thread, entered or not, and an unknown or
//! double-freed pointer is caught instead of corrupting the allocator.

use core::alloc::Layout;
use core::cell::Cell;
use core::ffi::c_void;
use core::ptr;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use super::kernel::{lock, Journal, APC, DISPATCH};
use super::sys::{
    POOL_FLAGS, POOL_FLAG_CACHE_ALIGNED, POOL_FLAG_NON_PAGED, POOL_FLAG_PAGED,
    POOL_FLAG_UNINITIALIZED, PVOID, SIZE_T,
};
use super::{orphan, tls, Fault, TagStats, Violation};

const SMALL_ALIGN: usize = 16;
const PAGE: usize = 4096;
const CACHE_ALIGN: usize = 64;
/// What an uninitialised block is filled with, so code that relies on zeroed
/// memory without asking for it shows up.
const JUNK: u8 = 0xA5;

struct Block {
    pool: Arc<PoolState>,
    layout: Layout,
    size: usize,
    tag: u32,
    /// The NUMA node the block came from.
    node: u16,
}

/// Where a block may come from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Placement {
    /// `ExAllocatePool2`: the calling processor's node, else any node with room.
    Local,
    /// `ExAllocatePool3` with a NUMA node parameter: that node only (NULL when
    /// it has no room), or, with `MM_ANY_NODE_OK`, that node first.
    Node { node: u16, any_ok: bool },
}

/// Bytes per node, and the limits tests set.
#[derive(Default)]
struct NodeBook {
    capacity: HashMap<u16, usize>,
    live: HashMap<u16, usize>,
    by_tag: HashMap<(u16, u32), usize>,
}

impl NodeBook {
    fn room(&self, node: u16, size: usize) -> bool {
        let live = self.live.get(&node).copied().unwrap_or(0);
        self.capacity
            .get(&node)
            .is_none_or(|&cap| live.saturating_add(size) <= cap)
    }

    fn add(&mut self, node: u16, tag: u32, size: usize, allocated: bool) {
        let live = self.live.entry(node).or_default();
        let by_tag = self.by_tag.entry((node, tag)).or_default();
        if allocated {
            *live = live.saturating_add(size);
            *by_tag = by_tag.saturating_add(size);
        } else {
            *live = live.saturating_sub(size);
            *by_tag = by_tag.saturating_sub(size);
        }
    }
}

static BLOCKS: Mutex<BTreeMap<usize, Block>> = Mutex::new(BTreeMap::new());

#[cfg(not(loom))]
std::thread_local! {
    /// The (tag, size) of this thread's last node-directed request, if the
    /// fault plan refused it (see `allocate_placed`).
    static REFUSED_RETRY: Cell<Option<(u32, SIZE_T)>> = const { Cell::new(None) };
}

// Loom runs every model thread on one OS thread: its own thread-locals.
#[cfg(loom)]
loom::thread_local! {
    static REFUSED_RETRY: Cell<Option<(u32, SIZE_T)>> = Cell::new(None);
}

struct Plan {
    fault: Fault,
    tag: Option<u32>,
    attempts: usize,
    injected: usize,
}

/// One kernel's pool.
pub(crate) struct PoolState {
    tags: Mutex<HashMap<u32, TagStats>>,
    nodes: Mutex<NodeBook>,
    plan: Mutex<Plan>,
    journal: Arc<Journal>,
}

impl PoolState {
    pub(crate) fn new(journal: Arc<Journal>) -> Self {
        Self {
            tags: Mutex::new(HashMap::new()),
            nodes: Mutex::new(NodeBook::default()),
            plan: Mutex::new(Plan {
                fault: Fault::Never,
                tag: None,
                attempts: 0,
                injected: 0,
            }),
            journal,
        }
    }

    pub(crate) fn plan(&self, fault: Fault, tag: Option<u32>) {
        let mut plan = lock(&self.plan);
        plan.fault = fault;
        plan.tag = tag;
        plan.attempts = 0;
    }

    /// (attempts since the plan, refusals injected in total).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let plan = lock(&self.plan);
        (plan.attempts, plan.injected)
    }

    /// Limits `node` to `bytes` live (None: no limit).
    pub(crate) fn set_node_capacity(&self, node: u16, bytes: Option<usize>) {
        let mut book = lock(&self.nodes);
        match bytes {
            Some(bytes) => book.capacity.insert(node, bytes),
            None => book.capacity.remove(&node),
        };
    }

    /// Bytes live on `node`, under `tag` or (None) under every tag.
    pub(crate) fn node_bytes(&self, node: u16, tag: Option<u32>) -> usize {
        let book = lock(&self.nodes);
        match tag {
            Some(tag) => book.by_tag.get(&(node, tag)).copied().unwrap_or(0),
            None => book.live.get(&node).copied().unwrap_or(0),
        }
    }

    pub(crate) fn stats(&self, tag: u32) -> TagStats {
        lock(&self.tags).get(&tag).copied().unwrap_or_default()
    }

    pub(crate) fn all_stats(&self) -> Vec<(u32, TagStats)> {
        let mut all: Vec<(u32, TagStats)> =
            lock(&self.tags).iter().map(|(&t, &s)| (t, s)).collect();
        all.sort_by_key(|&(tag, _)| tag);
        all
    }

    /// Counts an attempt against the plan; true when it must be refused.
    fn refuse(&self, tag: u32) -> bool {
        let mut plan = lock(&self.plan);
        if plan.tag.is_some_and(|only| only != tag) {
            return false;
        }
        let n = plan.attempts;
        plan.attempts = n.saturating_add(1);
        let refuse = match plan.fault {
            Fault::Never => false,
            Fault::Nth(k) => n == k,
            Fault::From(k) => n >= k,
        };
        if refuse {
            plan.injected = plan.injected.saturating_add(1);
        }
        refuse
    }

    fn account(&self, tag: u32, size: usize, allocated: bool) {
        let mut tags = lock(&self.tags);
        let stats = tags.entry(tag).or_default();
        if allocated {
            stats.allocations = stats.allocations.saturating_add(1);
            stats.live_blocks = stats.live_blocks.saturating_add(1);
            stats.live_bytes = stats.live_bytes.saturating_add(size);
            stats.peak_bytes = stats.peak_bytes.max(stats.live_bytes);
        } else {
            stats.frees = stats.frees.saturating_add(1);
            stats.live_blocks = stats.live_blocks.saturating_sub(1);
            stats.live_bytes = stats.live_bytes.saturating_sub(size);
        }
    }
}

pub(crate) fn allocate(flags: POOL_FLAGS, size: SIZE_T, tag: u32) -> PVOID {
    allocate_placed(flags, size, tag, Placement::Local, "ExAllocatePool2")
}

/// The node of the block holding `addr` (any address inside it), if live.
pub(crate) fn node_of(addr: usize) -> Option<u16> {
    let blocks = lock(&BLOCKS);
    let (&start, block) = blocks.range(..=addr).next_back()?;
    (addr < start.saturating_add(block.size.max(1))).then_some(block.node)
}

pub(crate) fn allocate_placed(
    flags: POOL_FLAGS,
    size: SIZE_T,
    tag: u32,
    placement: Placement,
    call: &'static str,
) -> PVOID {
    let Some((state, index, irql, _)) = tls::current() else {
        orphan();
        return ptr::null_mut();
    };
    let known =
        POOL_FLAG_NON_PAGED | POOL_FLAG_PAGED | POOL_FLAG_UNINITIALIZED | POOL_FLAG_CACHE_ALIGNED;
    let kind = flags & (POOL_FLAG_NON_PAGED | POOL_FLAG_PAGED);
    if flags & !known != 0 || kind.count_ones() != 1 {
        state.violate(Violation::BadPoolFlags { flags });
        return ptr::null_mut();
    }
    let limit = if kind == POOL_FLAG_PAGED {
        APC
    } else {
        DISPATCH
    };
    if irql > limit {
        state.violate(Violation::IrqlTooHigh { call, irql });
        return ptr::null_mut();
    }
    let pool = &state.pool;
    // An injected refusal stands for memory exhausted on every node: when a
    // node-directed request is refused, the caller's immediate any-node retry
    // of the same request (PoolAlloc's fallback) is refused too, uncounted,
    // so one planned fault still fails one allocation.
    let refused = match placement {
        Placement::Node { .. } => {
            let refused = pool.refuse(tag);
            let _ = REFUSED_RETRY.try_with(|r| r.set(refused.then_some((tag, size))));
            refused
        }
        Placement::Local => {
            REFUSED_RETRY.try_with(Cell::take).ok().flatten() == Some((tag, size))
                || pool.refuse(tag)
        }
    };
    if refused {
        return ptr::null_mut();
    }
    let Ok(size) = usize::try_from(size) else {
        return ptr::null_mut();
    };
    let mut align = if size >= PAGE { PAGE } else { SMALL_ALIGN };
    if flags & POOL_FLAG_CACHE_ALIGNED != 0 {
        align = align.max(CACHE_ALIGN);
    }
    let Ok(layout) = Layout::from_size_align(size.max(1), align) else {
        return ptr::null_mut();
    };
    // SAFETY: the layout is not zero-sized (at least one byte).
    let block = unsafe {
        if flags & POOL_FLAG_UNINITIALIZED != 0 {
            let block = std::alloc::alloc(layout);
            if !block.is_null() {
                block.write_bytes(JUNK, layout.size());
            }
            block
        } else {
            std::alloc::alloc_zeroed(layout)
        }
    };
    if block.is_null() {
        return ptr::null_mut();
    }
    // The node: the first candidate with room, in the placement's order.
    let nodes = u16::try_from(state.nodes.len()).unwrap_or(u16::MAX);
    let local = state
        .number_of(index)
        .and_then(|n| state.node_of_number(n))
        .unwrap_or(0);
    let (first, others) = match placement {
        Placement::Local => (local, true),
        Placement::Node { node, any_ok } => (node, any_ok),
    };
    let order = core::iter::once(first)
        .chain((0..nodes).filter(move |&n| others && n != first))
        .filter(|&n| n < nodes);
    let node = {
        let mut book = lock(&pool.nodes);
        let found = order.into_iter().find(|&n| book.room(n, size));
        if let Some(node) = found {
            book.add(node, tag, size, true);
        }
        found
    };
    let Some(node) = node else {
        // SAFETY: `block` came from the system allocator with `layout` just
        // above and was never published.
        unsafe { std::alloc::dealloc(block, layout) };
        return ptr::null_mut();
    };
    lock(&BLOCKS).insert(
        block.addr(),
        Block {
            pool: Arc::clone(pool),
            layout,
            size,
            tag,
            node,
        },
    );
    pool.account(tag, size, true);
    block.cast::<c_void>()
}

pub(crate) fn free(block: PVOID, tag: Option<u32>) {
    let current = tls::current();
    let violate = |violation: Violation| match &current {
        Some((state, ..)) => state.violate(violation),
        None => orphan(),
    };
    if let Some((_, _, irql, _)) = &current {
        if *irql > DISPATCH {
            violate(Violation::IrqlTooHigh {
                call: "ExFreePool",
                irql: *irql,
            });
            return;
        }
    }
    let Some(found) = lock(&BLOCKS).remove(&block.addr()) else {
        violate(Violation::UnknownPoolBlock { addr: block.addr() });
        return;
    };
    if let Some(tag) = tag.filter(|&t| t != found.tag) {
        found.pool.journal.violate(Violation::PoolTagMismatch {
            allocated: found.tag,
            freed: tag,
        });
    }
    found.pool.account(found.tag, found.size, false);
    lock(&found.pool.nodes).add(found.node, found.tag, found.size, false);
    // SAFETY: the table held this address, so it is a live block that
    // `allocate` got from the system allocator with `found.layout`; removing it
    // from the table makes this the only free.
    unsafe { std::alloc::dealloc(block.cast::<u8>(), found.layout) };
}
