//! `PerCpu` on its own: states, idempotence, addresses, layout, placement, drop.

mod common;

use common::{cpu, Built};
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use perproc::host::{HostAlloc, HostPlatform};
use perproc::testing::CountingAlloc;
use perproc::{
    AllocError, Error, InitFn, PerCpu, Platform, Prepared, ProcessorIndex, RawAlloc, SlotPadding,
    SlotState, CACHE_LINE,
};

/// A host machine of `capacity` processors (what `with_capacity_in` took).
fn machine(capacity: u32) -> HostPlatform {
    HostPlatform::new(capacity).unwrap()
}

fn table(capacity: u32) -> PerCpu<Built, HostPlatform> {
    let init: InitFn<Built> = |i| Ok(Built::new(i));
    PerCpu::with_padding_in(&machine(capacity), HostAlloc, SlotPadding::CacheLine, init).unwrap()
}

#[test]
fn nothing_is_published_before_prepare() {
    let t = table(8);
    for i in 0..8 {
        assert!(t.get(cpu(i)).is_none());
        assert_eq!(t.state(cpu(i)), SlotState::Absent);
    }
    assert_eq!(t.iter().count(), 0);
    assert_eq!(t.published_count(), 0);
}

#[test]
fn prepare_publishes_commit_marks_online() {
    let t = table(8);
    assert_eq!(t.prepare(cpu(3)), Ok(Prepared::New));
    t.get(cpu(3)).unwrap().check(cpu(3));
    assert_eq!(t.state(cpu(3)), SlotState::Prepared);
    assert_eq!((t.published_count(), t.online_count()), (1, 0));
    t.commit(cpu(3)).unwrap();
    assert_eq!(t.state(cpu(3)), SlotState::Online);
    assert_eq!((t.published_count(), t.online_count()), (1, 1));
    t.get(cpu(3)).unwrap().check(cpu(3));
}

#[test]
fn duplicate_events_are_idempotent() {
    let calls = AtomicUsize::new(0);
    let t = PerCpu::with_padding_in(&machine(4), HostAlloc, SlotPadding::CacheLine, |i| {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(Built::new(i))
    })
    .unwrap();
    assert_eq!(t.prepare(cpu(1)), Ok(Prepared::New));
    let first: *const Built = t.get(cpu(1)).unwrap();
    assert_eq!(t.prepare(cpu(1)), Ok(Prepared::Already));
    t.commit(cpu(1)).unwrap();
    t.commit(cpu(1)).unwrap();
    // a Start after Complete changes nothing
    assert_eq!(t.prepare(cpu(1)), Ok(Prepared::Already));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(core::ptr::eq(first, t.get(cpu(1)).unwrap()));
    assert_eq!(t.state(cpu(1)), SlotState::Online);
    assert_eq!((t.published_count(), t.online_count()), (1, 1));
}

#[test]
fn out_of_order_events_are_errors_not_changes() {
    let t = table(4);
    assert_eq!(t.commit(cpu(2)), Err(Error::NotPrepared)); // Complete before Start
    assert_eq!(t.abort(cpu(2)), Ok(None)); // Failure for a processor never prepared
    assert_eq!(t.state(cpu(2)), SlotState::Absent);
    let _ = t.prepare(cpu(2)).unwrap();
    t.commit(cpu(2)).unwrap();
    assert_eq!(t.abort(cpu(2)), Err(Error::AlreadyOnline)); // Failure after Complete
    assert_eq!(t.state(cpu(2)), SlotState::Online);
    t.get(cpu(2)).unwrap().check(cpu(2));
}

#[test]
fn indexes_past_capacity_are_values_never_panics() {
    let t = table(4);
    let past = cpu(4);
    let far = ProcessorIndex::new(u32::MAX - 1).unwrap();
    for i in [past, far] {
        assert_eq!(
            t.prepare(i),
            Err(Error::IndexOutOfRange {
                index: i,
                capacity: 4
            })
        );
        assert!(matches!(t.commit(i), Err(Error::IndexOutOfRange { .. })));
        assert!(matches!(t.abort(i), Err(Error::IndexOutOfRange { .. })));
        assert!(t.get(i).is_none());
        assert!(t.retired(i).is_none());
        assert_eq!(t.state(i), SlotState::Absent);
    }
    let empty = table(0);
    assert!(matches!(
        empty.prepare(cpu(0)),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert_eq!(empty.iter().count(), 0);
}

#[test]
fn abort_hides_keeps_and_revives_the_same_slot() {
    let calls = AtomicUsize::new(0);
    let t = PerCpu::with_padding_in(&machine(4), HostAlloc, SlotPadding::CacheLine, |i| {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(Built::new(i))
    })
    .unwrap();
    let _ = t.prepare(cpu(2)).unwrap();
    let held: &Built = t.get(cpu(2)).unwrap(); // a reader keeps this across the abort
    let returned = t.abort(cpu(2)).unwrap().unwrap();
    assert!(core::ptr::eq(held, returned));
    held.check(cpu(2)); // still valid: aborted slots are never freed
    assert!(t.get(cpu(2)).is_none());
    assert_eq!(t.state(cpu(2)), SlotState::Retired);
    assert!(core::ptr::eq(t.retired(cpu(2)).unwrap(), held));
    assert_eq!(t.iter().count(), 0);
    assert_eq!(t.iter_all().count(), 1);
    assert_eq!(t.published_count(), 0);
    assert_eq!(t.abort(cpu(2)), Ok(None)); // idempotent
    assert_eq!(t.commit(cpu(2)), Err(Error::NotPrepared));

    // the next add gets the kept slot back, and says it did something
    assert_eq!(t.prepare(cpu(2)), Ok(Prepared::New));
    assert!(core::ptr::eq(t.get(cpu(2)).unwrap(), held));
    assert!(t.retired(cpu(2)).is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    t.commit(cpu(2)).unwrap();
    assert_eq!(t.state(cpu(2)), SlotState::Online);
}

#[test]
fn growth_never_moves_a_slot() {
    let n: u32 = if cfg!(miri) { 40 } else { 2048 };
    let t = table(n);
    let mut seen: Vec<*const Built> = Vec::new();
    for i in 0..n {
        let _ = t.prepare(cpu(i)).unwrap();
        t.commit(cpu(i)).unwrap();
        seen.push(t.get(cpu(i)).unwrap());
    }
    for (i, &p) in seen.iter().enumerate() {
        let i = cpu(u32::try_from(i).unwrap());
        assert!(core::ptr::eq(t.get(i).unwrap(), p));
        // SAFETY: references from a PerCpu live as long as the container.
        unsafe { &*p }.check(i);
    }
    assert_eq!(t.online_count(), n as usize);
}

#[test]
fn sparse_indexes_across_groups_iterate_once_each() {
    let platform = HostPlatform::with_groups(4096, 64).unwrap();
    let t = PerCpu::new(&platform, |i| Ok(Built::new(i))).unwrap();
    assert_eq!(t.capacity(), 4096);
    let picked = [0, 1, 63, 64, 65, 127, 128, 1000, 2047, 2048, 4095];
    for &i in picked.iter().rev() {
        let _ = t.prepare(cpu(i)).unwrap();
    }
    t.abort(cpu(65)).unwrap();
    let mut seen: Vec<u32> = t
        .iter()
        .map(|(i, v)| {
            v.check(i);
            i.get()
        })
        .collect();
    seen.sort_unstable();
    let expect: Vec<u32> = picked.iter().copied().filter(|&i| i != 65).collect();
    assert_eq!(seen, expect);
    let groups: std::collections::BTreeSet<u16> = seen
        .iter()
        .map(|&i| platform.groups().number_of(cpu(i)).unwrap().group())
        .collect();
    assert_eq!(groups.len(), 7); // groups 0, 1, 2, 15, 31, 32, 63
    assert_eq!(t.iter_all().count(), picked.len());
}

#[test]
fn current_reads_the_pinned_processors_slot() {
    let platform = HostPlatform::new(8).unwrap();
    let t = PerCpu::new(&platform, |i| Ok(Built::new(i))).unwrap();
    let _ = t.prepare(cpu(5)).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            platform.bind_current_thread(cpu(5)).unwrap();
            platform
                .pinned(|pin| t.current(pin).unwrap().check(cpu(5)))
                .unwrap();
        });
        s.spawn(|| {
            platform.bind_current_thread(cpu(6)).unwrap();
            // no slot yet: None, never UB
            assert!(platform.pinned(|pin| t.current(pin).is_none()).unwrap());
        });
    });
    assert_eq!(*t.platform(), platform);
}

#[test]
fn slots_are_cache_line_isolated_unless_compact() {
    let t = table(4);
    assert_eq!(t.slot_size() % CACHE_LINE, 0);
    assert!(t.slot_size() >= core::mem::size_of::<Built>());
    for i in 0..4 {
        let _ = t.prepare(cpu(i)).unwrap();
        let addr = t.get(cpu(i)).unwrap() as *const Built as usize;
        assert_eq!(addr % CACHE_LINE, 0, "slot {i} not on a cache line");
    }
    let compact =
        PerCpu::with_padding_in(&machine(4), HostAlloc, SlotPadding::Compact, |_| Ok(7u32))
            .unwrap();
    assert!(compact.slot_size() < CACHE_LINE);
    let _ = compact.prepare(cpu(0)).unwrap();
    assert_eq!(compact.get(cpu(0)), Some(&7));
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    assert_eq!(CACHE_LINE, 128);
}

/// Records which processor each allocation was for.
struct Placement(Mutex<Vec<(usize, Option<ProcessorIndex>)>>);

// SAFETY: forwards to HostAlloc unchanged.
unsafe impl RawAlloc for Placement {
    fn allocate(
        &self,
        layout: Layout,
        processor: Option<ProcessorIndex>,
    ) -> Result<NonNull<u8>, AllocError> {
        self.0.lock().unwrap().push((layout.size(), processor));
        HostAlloc.allocate(layout, processor)
    }
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the block came from HostAlloc with this layout.
        unsafe { HostAlloc.deallocate(ptr, layout) }
    }
}

#[test]
fn each_slot_is_allocated_for_its_processor() {
    let placement = Placement(Mutex::new(Vec::new()));
    let t = PerCpu::new_in(&machine(64), &placement, |i| Ok(Built::new(i))).unwrap();
    for i in [9, 3, 40] {
        let _ = t.prepare(cpu(i)).unwrap();
    }
    let log = placement.0.lock().unwrap().clone();
    // The table (shared by all, with the container's few words of bookkeeping)
    // first, then one slot per processor, placed for it.
    let word = core::mem::size_of::<usize>();
    assert_eq!(log[0].1, None);
    assert!((64 * word..64 * word + 8 * word).contains(&log[0].0));
    let slots: Vec<_> = log[1..]
        .iter()
        .map(|&(size, p)| (size, p.unwrap().get()))
        .collect();
    assert_eq!(
        slots,
        [(t.slot_size(), 9), (t.slot_size(), 3), (t.slot_size(), 40)]
    );
}

#[test]
fn absent_processors_cost_one_pointer_and_no_value() {
    // The container's fixed bookkeeping shares the table's block; each
    // processor the table can hold adds exactly one pointer to it.
    let small = CountingAlloc::new(HostAlloc);
    let built: InitFn<Built> = |i| Ok(Built::new(i));
    let s: PerCpu<Built, _, _> = PerCpu::new_in(&machine(1024), &small, built).unwrap();
    let counting = CountingAlloc::new(HostAlloc);
    let t = PerCpu::new_in(&machine(2048), &counting, |i| Ok(Built::new(i))).unwrap();
    assert_eq!((small.live_blocks(), counting.live_blocks()), (1, 1));
    assert_eq!(
        counting.live_bytes() - small.live_bytes(),
        1024 * core::mem::size_of::<*const u8>()
    );
    let empty = counting.live_bytes();
    let _ = t.prepare(cpu(7)).unwrap();
    assert_eq!(counting.live_blocks(), 2);
    assert_eq!(counting.live_bytes(), empty + t.slot_size());
    drop(t);
    drop(s);
    assert_eq!((counting.live_blocks(), counting.live_bytes()), (0, 0));
    assert_eq!((small.live_blocks(), small.live_bytes()), (0, 0));
}

static DROPS: AtomicUsize = AtomicUsize::new(0);

struct Tracked(#[allow(dead_code)] u32);
impl Drop for Tracked {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn drop_drops_every_value_once_retired_ones_too() {
    let counting = CountingAlloc::new(HostAlloc);
    let t = PerCpu::new_in(&machine(16), &counting, |i: ProcessorIndex| {
        Ok(Tracked(i.get()))
    })
    .unwrap();
    for i in 0..10 {
        let _ = t.prepare(cpu(i)).unwrap();
    }
    for i in 0..5 {
        t.commit(cpu(i)).unwrap();
    }
    for i in 5..8 {
        t.abort(cpu(i)).unwrap();
    }
    let _ = t.prepare(cpu(6)).unwrap(); // revived, not rebuilt
    assert_eq!(DROPS.load(Ordering::SeqCst), 0);
    drop(t);
    assert_eq!(DROPS.load(Ordering::SeqCst), 10);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn constructor_errors_fail_the_prepare_and_leave_nothing() {
    let counting = CountingAlloc::new(HostAlloc);
    let t = PerCpu::new_in(&machine(4), &counting, |i: ProcessorIndex| {
        if i.get() == 1 {
            Err(Error::Status(-1073741670)) // STATUS_INSUFFICIENT_RESOURCES, say
        } else {
            Ok(Built::new(i))
        }
    })
    .unwrap();
    let before = counting.live_bytes();
    assert_eq!(t.prepare(cpu(1)), Err(Error::Status(-1073741670)));
    assert_eq!(counting.live_bytes(), before);
    assert_eq!(t.state(cpu(1)), SlotState::Absent);
    assert_eq!(t.iter_all().count(), 0);
    let _ = t.prepare(cpu(2)).unwrap();
    assert_eq!(t.iter().count(), 1);
}

#[test]
fn a_panicking_constructor_leaves_the_index_usable() {
    let counting = CountingAlloc::new(HostAlloc);
    let boom = AtomicUsize::new(1);
    let t = PerCpu::new_in(&machine(4), &counting, |i: ProcessorIndex| {
        if boom.swap(0, Ordering::SeqCst) == 1 {
            panic!("constructor failed");
        }
        Ok(Built::new(i))
    })
    .unwrap();
    let before = counting.live_bytes();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.prepare(cpu(0))));
    assert!(caught.is_err());
    assert_eq!(counting.live_bytes(), before);
    assert_eq!(t.state(cpu(0)), SlotState::Absent);
    let _ = t.prepare(cpu(0)).unwrap();
    t.get(cpu(0)).unwrap().check(cpu(0));
}

#[test]
fn containers_are_send_and_sync() {
    fn is<T: Send + Sync>() {}
    is::<PerCpu<u64, HostPlatform>>();
    is::<PerCpu<Built, HostPlatform, &CountingAlloc<HostAlloc>>>();
}

// ---------------------------------------------------------------------------
// Issue 13's survivors: events for a processor whose slot is being built, the
// retired accessor, `is_published`, and the HIDDEN bit across abort/revive.

#[test]
fn events_for_a_slot_being_built_are_busy_never_ub() {
    // The constructor calls back into the container for its own index: the
    // slot is being built, deterministically, while these run.
    let counting = CountingAlloc::new(HostAlloc);
    let t = PerCpu::new_in(&machine(4), &counting, |i| Ok(Built::new(i))).unwrap();
    let inside = AtomicUsize::new(0);
    let prepared = t.prepare_with(cpu(2), |i| {
        inside.fetch_add(1, Ordering::SeqCst);
        assert_eq!(t.state(i), SlotState::Busy);
        assert_eq!(t.prepare(i), Err(Error::Busy));
        assert_eq!(t.prepare_with(i, |_| Ok(Built::new(i))), Err(Error::Busy));
        assert_eq!(t.commit(i), Err(Error::Busy));
        assert_eq!(t.abort(i), Err(Error::Busy));
        assert!(t.get(i).is_none());
        assert!(t.retired(i).is_none());
        assert_eq!(t.iter_all().count(), 0);
        assert_eq!(t.published_count(), 0);
        // Other processors are not held up.
        assert_eq!(t.prepare(cpu(3)), Ok(Prepared::New));
        Ok(Built::new(i))
    });
    assert_eq!(inside.load(Ordering::SeqCst), 1);
    assert_eq!(prepared, Ok(Prepared::New));
    // The refused events changed nothing: the build completed as one prepare.
    assert_eq!(t.state(cpu(2)), SlotState::Prepared);
    t.get(cpu(2)).unwrap().check(cpu(2));
    t.commit(cpu(2)).unwrap();
    assert_eq!((t.published_count(), t.online_count()), (2, 1));

    // A build that fails after the nested events leaves the index as it was.
    let failed = t.prepare_with(cpu(1), |i| {
        assert_eq!(t.prepare(i), Err(Error::Busy));
        assert_eq!(t.abort(i), Err(Error::Busy));
        Err(Error::Status(7))
    });
    assert_eq!(failed, Err(Error::Status(7)));
    assert_eq!(t.state(cpu(1)), SlotState::Absent);
    assert_eq!(t.abort(cpu(1)), Ok(None));
    assert_eq!(t.commit(cpu(1)), Err(Error::NotPrepared));
    drop(t);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn events_for_a_slot_being_built_in_place_are_busy() {
    let t = PerCpu::new_zeroed(&machine(2), |_, _: &mut [u64; 4]| Ok(())).unwrap();
    let prepared = t.prepare_zeroed_with(cpu(1), |i, value| {
        assert_eq!(t.state(i), SlotState::Busy);
        assert_eq!(t.prepare(i), Err(Error::Busy));
        assert_eq!(t.commit(i), Err(Error::Busy));
        assert_eq!(t.abort(i), Err(Error::Busy));
        assert!(t.retired(i).is_none());
        value[0] = 11;
        Ok(())
    });
    assert_eq!(prepared, Ok(Prepared::New));
    assert_eq!(t.get(cpu(1)), Some(&[11, 0, 0, 0]));
}

#[test]
fn retired_is_some_only_for_a_retired_slot() {
    let t = table(4);
    // Absent, and past the capacity.
    assert!(t.retired(cpu(1)).is_none());
    assert!(t.retired(cpu(4)).is_none());
    assert!(t
        .retired(ProcessorIndex::new(u32::MAX - 1).unwrap())
        .is_none());
    // Published: prepared, then online.
    let _ = t.prepare(cpu(1)).unwrap();
    assert!(t.retired(cpu(1)).is_none());
    let _ = t.prepare(cpu(2)).unwrap();
    t.commit(cpu(2)).unwrap();
    assert!(t.retired(cpu(2)).is_none());
    // Retired: the very slot that was published.
    let held: *const Built = t.get(cpu(1)).unwrap();
    let _ = t.abort(cpu(1)).unwrap();
    let retired = t.retired(cpu(1)).unwrap();
    assert!(core::ptr::eq(retired, held));
    retired.check(cpu(1));
    // Other indexes are unaffected.
    assert!(t.retired(cpu(0)).is_none());
    assert!(t.retired(cpu(2)).is_none());
    assert!(t.retired(cpu(3)).is_none());
    // Revived: published again, so not retired.
    let _ = t.prepare(cpu(1)).unwrap();
    assert!(t.retired(cpu(1)).is_none());
    assert!(core::ptr::eq(t.get(cpu(1)).unwrap(), held));
    // Aborted again: retired again, the same slot, hidden from get.
    assert!(core::ptr::eq(t.abort(cpu(1)).unwrap().unwrap(), held));
    assert!(core::ptr::eq(t.retired(cpu(1)).unwrap(), held));
    assert!(t.get(cpu(1)).is_none());
    // A processor whose prepare failed is absent, not retired.
    assert_eq!(
        t.prepare_with(cpu(3), |_| Err(Error::OutOfMemory)),
        Err(Error::OutOfMemory)
    );
    assert!(t.retired(cpu(3)).is_none());
}

#[test]
fn is_published_for_every_state() {
    let all = [
        (SlotState::Absent, false),
        (SlotState::Prepared, true),
        (SlotState::Online, true),
        (SlotState::Retired, false),
        (SlotState::Busy, false),
    ];
    for (state, published) in all {
        assert_eq!(state.is_published(), published, "{state:?}");
    }
    // And it agrees with what readers see, through a whole add.
    let t = table(2);
    let agrees = |t: &PerCpu<Built, HostPlatform>| {
        assert_eq!(t.state(cpu(0)).is_published(), t.get(cpu(0)).is_some());
    };
    agrees(&t);
    assert!(!t.state(cpu(0)).is_published());
    let _ = t.prepare(cpu(0)).unwrap();
    agrees(&t);
    assert!(t.state(cpu(0)).is_published());
    let _ = t.abort(cpu(0)).unwrap();
    agrees(&t);
    assert!(!t.state(cpu(0)).is_published());
    let _ = t.prepare(cpu(0)).unwrap();
    t.commit(cpu(0)).unwrap();
    agrees(&t);
    assert!(t.state(cpu(0)).is_published());
}

#[test]
fn the_hidden_bit_survives_abort_revive_abort() {
    let calls = AtomicUsize::new(0);
    let t = PerCpu::new(&machine(4), |i| {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(Built::new(i))
    })
    .unwrap();
    assert_eq!(t.prepare(cpu(3)), Ok(Prepared::New));
    let slot: *const Built = t.get(cpu(3)).unwrap();
    for round in 0..3 {
        // Abort: hidden from readers, iteration and commit; kept.
        let aborted = t.abort(cpu(3)).unwrap().unwrap();
        assert!(core::ptr::eq(aborted, slot), "round {round}");
        assert!(t.get(cpu(3)).is_none());
        assert_eq!(t.state(cpu(3)), SlotState::Retired);
        assert!(core::ptr::eq(t.retired(cpu(3)).unwrap(), slot));
        assert_eq!(t.iter().count(), 0);
        assert_eq!(t.iter_all().count(), 1);
        assert_eq!(t.published_count(), 0);
        assert_eq!(t.abort(cpu(3)), Ok(None)); // idempotent while hidden
        assert_eq!(t.commit(cpu(3)), Err(Error::NotPrepared));
        // Revive: the same slot, visible again, no constructor call.
        assert_eq!(t.prepare(cpu(3)), Ok(Prepared::New));
        assert!(core::ptr::eq(t.get(cpu(3)).unwrap(), slot));
        assert_eq!(t.state(cpu(3)), SlotState::Prepared);
        assert!(t.retired(cpu(3)).is_none());
        assert_eq!(t.iter().count(), 1);
        assert_eq!(t.published_count(), 1);
        assert_eq!(t.prepare(cpu(3)), Ok(Prepared::Already));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Finally online: the HIDDEN bit is clear, so abort refuses.
    t.commit(cpu(3)).unwrap();
    assert_eq!(t.abort(cpu(3)), Err(Error::AlreadyOnline));
    t.get(cpu(3)).unwrap().check(cpu(3));
}
