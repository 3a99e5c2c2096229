//! The test allocators (`perproc::testing`) that drivers use for fault
//! injection and leak checks: each plan fails exactly the attempts it names,
//! and the counters count what they say.

use core::alloc::Layout;

use perproc::host::HostAlloc;
use perproc::testing::{CountingAlloc, FailPlan, FailingAlloc};
use perproc::{ProcessorIndex, RawAlloc};

/// Runs `n` allocations and frees through `alloc`; which ones failed.
fn attempts(alloc: &impl RawAlloc, n: usize) -> Vec<bool> {
    let layout = Layout::new::<u64>();
    (0..n)
        .map(|_| match alloc.allocate(layout, None) {
            Ok(block) => {
                // SAFETY: just allocated from `alloc` with `layout`.
                unsafe { alloc.deallocate(block, layout) };
                false
            }
            Err(_) => true,
        })
        .collect()
}

#[test]
fn each_plan_fails_exactly_the_attempts_it_names() {
    let counting = CountingAlloc::new(HostAlloc);
    let alloc = FailingAlloc::new(&counting);
    assert_eq!(attempts(&alloc, 3), [false, false, false]);
    assert_eq!((alloc.attempts(), alloc.injected()), (3, 0));

    alloc.plan(FailPlan::Once(2));
    assert_eq!(alloc.attempts(), 0, "a plan restarts the count");
    assert_eq!(attempts(&alloc, 5), [false, false, true, false, false]);
    assert_eq!((alloc.attempts(), alloc.injected()), (5, 1));

    alloc.plan(FailPlan::From(1));
    assert_eq!(attempts(&alloc, 4), [false, true, true, true]);
    assert_eq!((alloc.attempts(), alloc.injected()), (4, 4));

    alloc.plan(FailPlan::Once(0));
    assert_eq!(attempts(&alloc, 2), [true, false]);

    alloc.plan(FailPlan::Never);
    assert_eq!(attempts(&alloc, 3), [false, false, false]);
    assert_eq!(alloc.injected(), 5, "injected counts since creation");
    // Refused attempts never reach the wrapped allocator.
    assert_eq!(counting.allocations(), 3 + 4 + 1 + 1 + 3);
    assert_eq!(counting.live_blocks(), 0);
}

#[test]
fn the_counting_allocator_counts_live_peak_and_placed_allocations() {
    let counting = CountingAlloc::new(HostAlloc);
    let small = Layout::from_size_align(24, 8).unwrap();
    let large = Layout::from_size_align(1000, 64).unwrap();
    let cpu = ProcessorIndex::new(3);
    let a = counting.allocate(small, None).unwrap();
    let b = counting.allocate(large, cpu).unwrap();
    assert_eq!((counting.live_blocks(), counting.live_bytes()), (2, 1024));
    assert_eq!(counting.peak_bytes(), 1024);
    // SAFETY: allocated above with this layout.
    unsafe { counting.deallocate(b, large) };
    let c = counting.allocate(small, cpu).unwrap();
    assert_eq!((counting.live_blocks(), counting.live_bytes()), (2, 48));
    assert_eq!(counting.peak_bytes(), 1024, "the peak stays");
    assert_eq!(counting.allocations(), 3);
    assert_eq!(counting.placed_allocations(), 2);
    // SAFETY: allocated above with these layouts.
    unsafe {
        counting.deallocate(a, small);
        counting.deallocate(c, small);
    }
    assert_eq!((counting.live_blocks(), counting.live_bytes()), (0, 0));
}
