//! NUMA placement on the simulated kernel: `PoolAlloc` puts every block it is
//! given a processor for on that processor's node (`ExAllocatePool3` with a
//! NUMA node parameter), falls back to any node when that node is full (an
//! add never fails only for that), and every per-processor block of perproc's
//! containers (slot, ring, counter block, pool cache and magazine) of
//! processor i comes from i's node; shared structures may come from any.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use perproc::{
    AllocError, Error, Limits, PerCpu, PerCpuCounters, PerCpuPool, PerCpuQueue, ProcessorIndex,
    RawAlloc,
};
use perproc_wdk::sim::{Kernel, SimError};
use perproc_wdk::{pool_tag, KernelPlatform, PoolAlloc, Registration};

const TAG: u32 = pool_tag(*b"Numa");
const CONTEXT: u32 = pool_tag(*b"Nctx");

fn index(i: u32) -> ProcessorIndex {
    ProcessorIndex::new(i).unwrap()
}

/// Two groups of 8, cut into nodes of 2 processors: 8 nodes, 4 booted.
fn machine() -> Kernel {
    let kernel = Kernel::with_numa(&[8, 8], 4, 2).unwrap();
    assert_eq!(kernel.node_count(), 8);
    assert_eq!(kernel.node_of_number(0, 1), Some(0));
    assert_eq!(kernel.node_of_number(0, 2), Some(1));
    assert_eq!(kernel.node_of_number(1, 7), Some(7));
    kernel
}

#[test]
fn the_default_topology_is_a_node_per_group() {
    let kernel = Kernel::new(&[4, 4], 5).unwrap();
    assert_eq!(kernel.node_count(), 2);
    assert_eq!(kernel.node_of(3), Some(0));
    assert_eq!(kernel.node_of(4), Some(1));
    assert_eq!(kernel.node_of(5), None); // not present
    assert!(Kernel::with_numa(&[4], 1, 0).is_err());
}

/// Node numbers are `u16`s (`KeQueryHighestNodeNumber`, `PreferredNode`'s
/// low bits): a machine has at most 65535 nodes, numbered up to 65534, and a
/// topology with more is refused.
#[test]
fn a_machine_has_at_most_u16_max_nodes() {
    let groups = vec![1u8; usize::from(u16::MAX)];
    let kernel = Kernel::new(&groups, 1).unwrap();
    assert_eq!(kernel.node_count(), u16::MAX);
    assert_eq!(kernel.node_of_number(u16::MAX - 1, 0), Some(u16::MAX - 1));
    {
        let _on = kernel.enter().unwrap();
        // SAFETY: no arguments.
        let highest = unsafe { perproc_wdk::sim::sys::KeQueryHighestNodeNumber() };
        assert_eq!(highest, u16::MAX - 1);
    }
    drop(kernel);
    // One node more, by cutting a group in two ...
    let mut split = groups.clone();
    split[0] = 2;
    assert_eq!(
        Kernel::with_numa(&split, 1, 1).unwrap_err(),
        SimError::BadTopology
    );
    // ... or by one group more.
    let mut more = groups;
    more.push(1);
    assert_eq!(Kernel::new(&more, 1).unwrap_err(), SimError::BadTopology);
}

#[test]
fn pool_alloc_puts_a_processors_blocks_on_its_node() {
    let kernel = machine();
    let _on = kernel.enter().unwrap();
    for _ in 0..8 {
        assert!(kernel.hot_add_next().unwrap().added());
    }
    let alloc = PoolAlloc::new(TAG);
    let mut blocks = Vec::new();
    for i in 0..12 {
        let node = kernel.node_of(i).unwrap();
        for (size, align) in [(8, 8), (100, 16), (64, 64), (5000, 4096)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let block = alloc.allocate(layout, Some(index(i))).unwrap();
            assert_eq!(block.as_ptr().addr() % align, 0);
            assert_eq!(
                kernel.pool().node_of_block(block.as_ptr()),
                Some(node),
                "processor {i}, {layout:?}"
            );
            blocks.push((block, layout));
        }
        assert!(kernel.pool().node_tag_bytes(node, TAG) > 0);
    }
    // Without a processor: the calling processor's node (0 runs on node 0).
    let shared = Layout::from_size_align(256, 8).unwrap();
    let block = alloc.allocate(shared, None).unwrap();
    assert_eq!(kernel.pool().node_of_block(block.as_ptr()), Some(0));
    blocks.push((block, shared));
    for (block, layout) in blocks {
        // SAFETY: from `alloc` with this layout, freed once.
        unsafe { alloc.deallocate(block, layout) };
    }
    for node in 0..kernel.node_count() {
        assert_eq!(kernel.pool().node_live_bytes(node), 0);
    }
    assert!(kernel.violations().is_empty());
}

#[test]
fn a_full_node_falls_back_to_another_and_the_add_succeeds() {
    let kernel = machine();
    let _on = kernel.enter().unwrap();
    let alloc = PoolAlloc::new(TAG);
    let full = kernel.node_of(3).unwrap();
    kernel.pool().set_node_capacity(full, Some(0));
    let layout = Layout::from_size_align(64, 16).unwrap();
    let block = alloc.allocate(layout, Some(index(3))).unwrap();
    let node = kernel.pool().node_of_block(block.as_ptr()).unwrap();
    assert_ne!(node, full);
    // SAFETY: from `alloc` with this layout, freed once.
    unsafe { alloc.deallocate(block, layout) };

    // A hot-add onto a node with no memory left still succeeds, from others.
    let parts = Parts::new(Recorder::new(&kernel));
    let registration = Registration::register(parts, PoolAlloc::new(CONTEXT)).unwrap();
    let (group, number) = kernel.next_free().unwrap();
    let target = kernel.node_of_number(group, number).unwrap();
    kernel.pool().set_node_capacity(target, Some(0));
    assert!(kernel.hot_add_next().unwrap().added());
    assert_eq!(kernel.pool().node_live_bytes(target), 0);
    let log = registration.parts().recorder.log();
    assert!(log.iter().any(|&(p, _)| p == Some(4)));
    drop(registration);
    assert_eq!(kernel.pool().total_live_bytes(), 0);
    assert!(kernel.violations().is_empty());
}

#[test]
fn every_per_processor_block_of_the_containers_comes_from_its_node() {
    let kernel = machine();
    let _on = kernel.enter().unwrap();
    let recorder = Recorder::new(&kernel);
    let parts = Parts::new(recorder.clone());
    let registration = Registration::register(parts, PoolAlloc::new(CONTEXT)).unwrap();
    for _ in 0..8 {
        assert!(kernel.hot_add_next().unwrap().added());
    }
    let log = recorder.log();
    for i in 0..12u32 {
        let node = kernel.node_of(i);
        let mine: Vec<_> = log.iter().filter(|&&(p, _)| p == Some(i)).collect();
        // A slot, a ring, a counter block and the pool's per-processor state.
        assert!(mine.len() >= 4, "processor {i}: {mine:?}");
        for &&(_, placed) in &mine {
            assert_eq!(placed, node, "processor {i}");
        }
    }
    drop(registration);
    assert_eq!(kernel.pool().total_live_bytes(), 0);
    assert!(kernel.violations().is_empty());
}

/// (processor asked for, node placed on) of every block.
type Log = Vec<(Option<u32>, Option<u16>)>;

/// A `RawAlloc` over `PoolAlloc` that records, for every block, the processor
/// it was asked for and the node the kernel placed it on.
#[derive(Clone)]
struct Recorder {
    inner: PoolAlloc,
    kernel: Kernel,
    log: Arc<Mutex<Log>>,
}

impl Recorder {
    fn new(kernel: &Kernel) -> Self {
        Self {
            inner: PoolAlloc::new(TAG),
            kernel: kernel.clone(),
            log: Arc::default(),
        }
    }

    fn log(&self) -> Log {
        self.log.lock().unwrap().clone()
    }
}

// SAFETY: every block is PoolAlloc's, returned and freed unchanged.
unsafe impl RawAlloc for Recorder {
    fn allocate(
        &self,
        layout: Layout,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        let block = self.inner.allocate(layout, processor)?;
        let node = self.kernel.pool().node_of_block(block.as_ptr());
        self.log
            .lock()
            .unwrap()
            .push((processor.map(ProcessorIndex::get), node));
        Ok(block)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.deallocate(ptr, layout) }
    }
}

type Init = fn(ProcessorIndex) -> Result<AtomicU64, Error>;

/// The storage example's parts, all on the recording allocator.
struct Parts {
    recorder: Recorder,
    slots: PerCpu<AtomicU64, KernelPlatform, Recorder, Init>,
    queue: PerCpuQueue<u64, KernelPlatform, Recorder>,
    counters: PerCpuCounters<[u64; 2], KernelPlatform, Recorder>,
    pool: PerCpuPool<[u64; 8], KernelPlatform, Recorder>,
}
perproc::components!(Parts => slots, queue, counters, pool);

impl Parts {
    fn new(recorder: Recorder) -> Self {
        let platform = KernelPlatform::new(TAG).unwrap();
        let init: Init = |_| Ok(AtomicU64::new(0));
        Self {
            slots: PerCpu::new_in(&platform, recorder.clone(), init).unwrap(),
            queue: PerCpuQueue::new_in(&platform, recorder.clone(), 16).unwrap(),
            counters: PerCpuCounters::new_in(&platform, recorder.clone()).unwrap(),
            pool: PerCpuPool::new_in(
                &platform,
                recorder.clone(),
                Limits {
                    total: 4096,
                    per_cpu: 16,
                },
            )
            .unwrap(),
            recorder,
        }
    }
}

#[test]
fn the_simulated_numa_routines_follow_their_documentation() {
    use perproc_wdk::sim::sys::{
        ExAllocatePool3, ExFreePool, KeQueryHighestNodeNumber, KeQueryNodeActiveAffinity,
        GROUP_AFFINITY, MM_ANY_NODE_OK, POOL_EXTENDED_PARAMETER, POOL_EXTENDED_PARAMETER_TYPE,
        POOL_FLAG_NON_PAGED,
    };
    let kernel = machine();
    let _on = kernel.enter().unwrap();
    // SAFETY: no arguments.
    assert_eq!(unsafe { KeQueryHighestNodeNumber() }, 7);
    let mut affinity = GROUP_AFFINITY::default();
    let mut count = 0u16;
    // SAFETY: both out-pointers are valid locals.
    unsafe { KeQueryNodeActiveAffinity(1, &mut affinity, &mut count) };
    assert_eq!((affinity.Group, affinity.Mask, count), (0, 0b1100, 2));
    // SAFETY: NULL out-pointers are allowed; node 6 (group 1) has no processor yet.
    unsafe { KeQueryNodeActiveAffinity(6, &mut affinity, std::ptr::null_mut()) };
    assert_eq!((affinity.Group, affinity.Mask), (1, 0));

    let numa = |node: u32| {
        let mut p = POOL_EXTENDED_PARAMETER::default();
        p.__bindgen_anon_1
            .set_Type(POOL_EXTENDED_PARAMETER_TYPE::PoolExtendedParameterNumaNode as u64);
        p.__bindgen_anon_2.PreferredNode = node;
        p
    };
    let alloc = |p: &POOL_EXTENDED_PARAMETER| {
        // SAFETY: one readable parameter.
        unsafe { ExAllocatePool3(POOL_FLAG_NON_PAGED, 64, TAG, p, 1) }.cast::<u8>()
    };
    kernel.pool().set_node_capacity(5, Some(0));
    assert!(alloc(&numa(5)).is_null(), "a full node, strictly");
    assert!(alloc(&numa(99)).is_null(), "no such node");
    assert!(alloc(&numa(8)).is_null(), "one past the last node");
    let any = alloc(&numa(5 | MM_ANY_NODE_OK));
    assert_ne!(kernel.pool().node_of_block(any), Some(5));
    let on_two = alloc(&numa(2));
    assert_eq!(kernel.pool().node_of_block(on_two), Some(2));
    // Any address inside the block, and none past its end.
    assert_eq!(
        kernel.pool().node_of_block(on_two.wrapping_add(63)),
        Some(2)
    );
    assert_eq!(kernel.pool().node_of_block(on_two.wrapping_add(64)), None);
    assert_eq!(kernel.pool().node_tag_bytes(2, TAG), 64);
    assert_eq!(kernel.pool().node_live_bytes(2), 64);
    let mut unknown = POOL_EXTENDED_PARAMETER::default();
    unknown.__bindgen_anon_1.set_Type(9);
    assert!(alloc(&unknown).is_null(), "an unknown parameter type");
    for block in [any, on_two] {
        // SAFETY: live blocks from ExAllocatePool3, freed once.
        unsafe { ExFreePool(block.cast()) };
    }
    assert_eq!(kernel.pool().node_live_bytes(2), 0);
    assert!(kernel.violations().is_empty());
}
