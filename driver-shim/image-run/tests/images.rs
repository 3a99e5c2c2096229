//! The real driver images (`target/windows/<arch>/perproc-{seed,storage}-driver.sys`,
//! linked by `scripts/windows-driver`), each test on freshly loaded images,
//! run against the simulated kernel: the scenarios of
//! driver-shim/tests/spec.rs (the host-compiled shim), through the compiled
//! Windows code. A missing image fails the test.
//!
//! Every test body runs on a thread with a small stack ([`STACK`]), as do the
//! I/O threads, and prints its calls into the image (`--nocapture`).
// A test fails by panicking: unwrap is its assertion.
#![allow(clippy::unwrap_used)]
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use perproc_image_run::bindings::{binding, orphan_violations, BOUND};
use perproc_image_run::{
    current_stack_size, disasm, image_path, CallCount, DriverObject, Image, LoadError, Storage,
    ARCH,
};
use perproc_wdk::pool_tag;
use perproc_wdk::seed::SEED_TAG;
use perproc_wdk::sim::sys::{
    KE_PROCESSOR_CHANGE_NOTIFY_STATE as S, NTSTATUS, STATUS_INSUFFICIENT_RESOURCES,
    STATUS_INVALID_DEVICE_STATE, STATUS_SUCCESS, STATUS_UNSUCCESSFUL,
};
use perproc_wdk::sim::{AddResult, Delivery, Fault, HotAdd, Kernel, Phase, RegistrationId};

const START: i32 = S::KeProcessorAddStartNotify;
const COMPLETE: i32 = S::KeProcessorAddCompleteNotify;
const FAILURE: i32 = S::KeProcessorAddFailureNotify;

/// The storage driver's tags (driver-shim/storage-driver/src/lib.rs).
const STORAGE_TAGS: [u32; 4] = [
    pool_tag(*b"Stdr"),
    pool_tag(*b"Stpl"),
    pool_tag(*b"Stq "),
    pool_tag(*b"Stct"),
];

/// The stack every thread that calls into an image runs on: the test bodies
/// (DriverEntry, the hot-adds' callbacks, DriverUnload) and the I/O threads.
/// A Windows kernel stack is 24 KiB on x64 (KERNEL_STACK_SIZE) and larger
/// on ARM64; these threads also carry the harness's and the simulator's
/// frames (debug builds), so this is an upper bound for the image's use,
/// which each test measures and prints (`deepest stack`). Overflowing it
/// kills the test process loudly (guard page).
const STACK: usize = 24 * 1024;

/// Runs `f` on a thread with a [`STACK`]-byte stack.
fn small<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(STACK)
            .spawn_scoped(s, || {
                check_stack();
                f()
            })
            .unwrap()
            .join()
            .unwrap()
    })
}

/// Asserts the calling thread's stack is at most [`STACK`] plus what the C
/// library adds (its minimum is 16 KiB + TLS on glibc).
fn check_stack() {
    let size = current_stack_size().unwrap();
    assert!(size <= STACK + 16 * 1024, "thread stack {size} bytes");
    MAX_STACK_SEEN.fetch_max(size, Ordering::Relaxed);
}

static MAX_STACK_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Loads driver `name` (`seed`, `storage`) for this host's architecture.
fn load(name: &str) -> Image {
    let path = image_path(ARCH, name);
    assert!(
        path.exists(),
        "missing image {} (run scripts/windows-driver first)",
        path.display()
    );
    // SAFETY: the images are this repository's drivers, linked by
    // scripts/windows-driver from driver-shim/{seed,storage}-driver.
    match unsafe { Image::load(&path) } {
        Ok(image) => image,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

fn report(test: &str, arch_calls: CallCount) {
    println!(
        "[{ARCH}] {test}: {arch_calls}; thread stacks <= {} bytes",
        MAX_STACK_SEEN.load(Ordering::Relaxed)
    );
}

fn of(deliveries: &[Delivery], id: RegistrationId) -> Vec<(i32, u32)> {
    deliveries
        .iter()
        .filter(|d| d.registration == id)
        .map(|d| (d.state, d.index))
        .collect()
}

fn writes(deliveries: &[Delivery]) -> Vec<(RegistrationId, i32, u32, NTSTATUS)> {
    deliveries
        .iter()
        .filter(|d| d.operation_status_after != d.operation_status_before)
        .map(|d| (d.registration, d.state, d.index, d.operation_status_after))
        .collect()
}

/// No violation anywhere, and every tag's pool accounting exact: nothing
/// live, as many frees as allocations.
fn assert_clean(kernel: &Kernel, image: &Image) {
    assert_eq!(kernel.violations(), vec![]);
    assert_eq!(image.violations(), Vec::<String>::new());
    assert_eq!(orphan_violations(), Vec::<String>::new());
    for (tag, stats) in kernel.pool().tags() {
        let name = String::from_utf8_lossy(&tag.to_le_bytes()).into_owned();
        assert_eq!(
            (stats.live_bytes, stats.live_blocks),
            (0, 0),
            "tag {name} leaks"
        );
        assert_eq!(stats.allocations, stats.frees, "tag {name}");
    }
}

#[test]
fn seed_driver_entry_replays_every_processor_and_unload_frees_every_block() {
    small(|| {
        let kernel = Kernel::new(&[64, 64], 70).unwrap();
        let _on = kernel.enter().unwrap();
        let image = load("seed");
        let mut driver = DriverObject::default();

        assert_eq!(image.driver_entry(&mut driver), STATUS_SUCCESS);
        let [id] = kernel.registrations()[..] else {
            panic!("{:?}", kernel.registrations())
        };
        let deliveries = kernel.deliveries();
        let starts = (0..70).map(|i| (START, i));
        let completes = (0..70).map(|i| (COMPLETE, i));
        assert_eq!(
            of(&deliveries, id),
            starts.chain(completes).collect::<Vec<_>>()
        );
        assert!(deliveries.iter().all(|d| d.phase == Phase::Replay));
        assert_eq!(writes(&deliveries), vec![]);
        assert!(deliveries
            .iter()
            .all(|d| kernel.number_of(d.index) == Some((d.number.Group, d.number.Number))));
        // DriverUnload was set, to the image's code.
        let unload = driver.driver_unload();
        assert!(image.is_code(unload), "DriverUnload = {unload:#x}");
        // Everything the driver holds is under its tag.
        assert!(kernel.pool().live_bytes(SEED_TAG) > 0);
        for (tag, stats) in kernel.pool().tags() {
            assert!(tag == SEED_TAG || stats.live_bytes == 0, "{tag:#x}");
        }

        // Loaded twice: the seed flow registers (replaying all 70 again), then
        // finds its slot taken and deregisters: refused, DriverUnload
        // untouched, the first registration alone left.
        let mut second = DriverObject::default();
        assert_eq!(image.driver_entry(&mut second), STATUS_INVALID_DEVICE_STATE);
        assert_eq!(second.driver_unload(), 0);
        assert_eq!(kernel.registrations(), vec![id]);

        assert!(image.driver_unload(&mut driver));
        assert!(kernel.registrations().is_empty());
        assert_eq!(kernel.pool().stats(SEED_TAG).live_blocks, 0);
        assert!(kernel.pool().stats(SEED_TAG).allocations > 70);
        assert_clean(&kernel, &image);
        let calls = image.calls();
        assert_eq!((calls.entry, calls.unload, calls.callbacks), (2, 1, 280));
        report("seed: DriverEntry replay, loaded twice, Unload", calls);
    });
}

/// Fails each allocation of DriverEntry in turn (a fresh image and kernel
/// each time): DriverEntry returns STATUS_INSUFFICIENT_RESOURCES, leaves
/// DriverUnload unset, nothing registered, nothing leaked; past the last
/// allocation it succeeds.
fn allocation_failure_sweep(name: &str, tags: &[u32]) {
    small(|| {
        let mut total = CallCount::default();
        let mut k = 0;
        loop {
            let kernel = Kernel::new(&[8, 8], 5).unwrap();
            let _on = kernel.enter().unwrap();
            let image = load(name);
            let mut driver = DriverObject::default();
            kernel.pool().fail(Fault::Nth(k));
            let status = image.driver_entry(&mut driver);
            if kernel.pool().injected() == 0 {
                assert_eq!(status, STATUS_SUCCESS);
                assert!(k > 5, "the sweep covered only {k} allocations");
                assert!(image.driver_unload(&mut driver));
                assert_clean(&kernel, &image);
                let c = image.calls();
                total.entry += c.entry;
                total.unload += c.unload;
                total.callbacks += c.callbacks;
                total.deepest_stack = total.deepest_stack.max(c.deepest_stack);
                break;
            }
            assert_eq!(status, STATUS_INSUFFICIENT_RESOURCES, "allocation {k}");
            assert_eq!(
                driver.driver_unload(),
                0,
                "allocation {k}: DriverUnload set"
            );
            assert!(kernel.registrations().is_empty(), "allocation {k}");
            for &tag in tags {
                assert_eq!(kernel.pool().live_bytes(tag), 0, "allocation {k}");
            }
            assert_clean(&kernel, &image);
            let c = image.calls();
            total.entry += c.entry;
            total.callbacks += c.callbacks;
            total.deepest_stack = total.deepest_stack.max(c.deepest_stack);
            k += 1;
        }
        report(
            &format!(
                "{name}: allocation-failure sweep ({} images, {k} allocations failed)",
                k + 1
            ),
            total,
        );
    });
}

#[test]
fn seed_driver_entry_fails_cleanly_at_every_allocation() {
    allocation_failure_sweep("seed", &[SEED_TAG]);
}

#[test]
fn storage_driver_entry_fails_cleanly_at_every_allocation() {
    allocation_failure_sweep("storage", &STORAGE_TAGS);
}

/// A hot-add that succeeds, one the kernel fails after the Starts, one the
/// driver vetoes (its allocation refused), and the vetoed processor added
/// again.
fn hot_adds(name: &str) {
    small(|| {
        let kernel = Kernel::new(&[4, 4], 2).unwrap();
        let _on = kernel.enter().unwrap();
        let image = load(name);
        let mut driver = DriverObject::default();
        assert_eq!(image.driver_entry(&mut driver), STATUS_SUCCESS);
        let [id] = kernel.registrations()[..] else {
            panic!()
        };
        kernel.take_deliveries();

        // Success: (1, 3) at the lowest free index, 2.
        let outcome = kernel.hot_add_at_lowest_index(1, 3).unwrap();
        assert_eq!((outcome.result, outcome.index.get()), (AddResult::Added, 2));
        let deliveries = kernel.take_deliveries();
        assert_eq!(
            deliveries
                .iter()
                .map(|d| (d.state, d.index, d.number.Group, d.number.Number))
                .collect::<Vec<_>>(),
            vec![(START, 2, 1, 3), (COMPLETE, 2, 1, 3)]
        );
        assert_eq!(writes(&deliveries), vec![]);

        // The kernel fails the add after every Start: AddFailure, no write.
        let outcome = kernel
            .hot_add_with(HotAdd::new(0, 2).failing(STATUS_UNSUCCESSFUL))
            .unwrap();
        assert_eq!(
            outcome.result,
            AddResult::Failed {
                status: STATUS_UNSUCCESSFUL
            }
        );
        let deliveries = kernel.take_deliveries();
        assert_eq!(of(&deliveries, id), vec![(START, 3), (FAILURE, 3)]);
        assert_eq!(deliveries[1].status, STATUS_UNSUCCESSFUL);
        assert_eq!(writes(&deliveries), vec![]);

        // Our veto: the driver's first allocation for the processor fails.
        // At a fresh index (5): index 3 keeps the retired slots of the
        // failed add, which a new Start revives without allocating.
        kernel.pool().fail(Fault::Nth(0));
        let outcome = kernel.hot_add_with(HotAdd::new(0, 3).at_index(5)).unwrap();
        assert_eq!(
            outcome.result,
            AddResult::Vetoed {
                status: STATUS_INSUFFICIENT_RESOURCES,
                by: id
            }
        );
        assert_eq!(kernel.pool().injected(), 1);
        let deliveries = kernel.take_deliveries();
        assert_eq!(of(&deliveries, id), vec![(START, 5)]);
        assert_eq!(
            writes(&deliveries),
            vec![(id, START, 5, STATUS_INSUFFICIENT_RESOURCES)]
        );
        assert_eq!(kernel.index_of(0, 3), None);
        assert_eq!(kernel.active_processors(), 3);

        // Re-add: the same processor at the same index comes up.
        kernel.pool().fail(Fault::Never);
        let outcome = kernel.hot_add_with(HotAdd::new(0, 3).at_index(5)).unwrap();
        assert_eq!((outcome.result, outcome.index.get()), (AddResult::Added, 5));
        assert_eq!(
            of(&kernel.take_deliveries(), id),
            vec![(START, 5), (COMPLETE, 5)]
        );
        assert_eq!(kernel.active_processors(), 4);

        if name == "storage" {
            // The re-added processor and the first added one run the I/O path.
            let storage = Storage::new(&image).unwrap();
            std::thread::scope(|s| {
                for cpu in [2u32, 5] {
                    let (kernel, storage) = (&kernel, &storage);
                    std::thread::Builder::new()
                        .stack_size(STACK)
                        .spawn_scoped(s, move || {
                            check_stack();
                            let _on = kernel.enter_on(cpu).unwrap();
                            assert_eq!(storage.submit(u64::from(cpu), 512), STATUS_SUCCESS);
                            assert_eq!(storage.complete(cpu), 1);
                        })
                        .unwrap();
                }
            });
            assert_eq!((storage.statistic(0), storage.statistic(1)), (2, 2));
        }

        assert!(image.driver_unload(&mut driver));
        assert!(kernel.registrations().is_empty());
        assert_clean(&kernel, &image);
        let calls = image.calls();
        // Replay 2 x (Start, Complete); 2 + 2 + 1 + 2 for the four adds.
        assert_eq!((calls.entry, calls.unload, calls.callbacks), (1, 1, 11));
        report(
            &format!("{name}: hot-add success, kernel failure, veto, re-add"),
            calls,
        );
    });
}

#[test]
fn seed_hot_add_success_kernel_failure_veto_and_re_add() {
    hot_adds("seed");
}

#[test]
fn storage_hot_add_success_kernel_failure_veto_and_re_add() {
    hot_adds("storage");
}

/// What one I/O thread did.
#[derive(Default, Debug)]
struct Io {
    submitted: u64,
    refused: u64,
    completed: u64,
}

/// Submits on processor `cpu` until `done` (and at least `min` times),
/// completing its own queue every 8 submits and the next processor's every
/// 50 (a remote completion).
fn io_loop(storage: &Storage<'_>, cpu: u32, peer: u32, done: &AtomicBool, min: u64) -> Io {
    let mut io = Io::default();
    let mut n = 0u64;
    while !done.load(Ordering::Acquire) || n < min {
        let sector = (u64::from(cpu) << 32) | n;
        let bytes = 512 << (n % 4);
        match storage.submit(sector, bytes) {
            STATUS_SUCCESS => io.submitted += 1,
            STATUS_INSUFFICIENT_RESOURCES => io.refused += 1,
            other => panic!("submit on {cpu}: {other:#x}"),
        }
        n += 1;
        for (every, queue) in [(8, cpu), (50, peer)] {
            if n.is_multiple_of(every) {
                let completed = storage.complete(queue);
                assert_ne!(completed, u32::MAX, "a corrupt request on queue {queue}");
                io.completed += u64::from(completed);
            }
        }
    }
    io
}

#[test]
fn storage_io_path_on_several_processors_while_processors_are_hot_added() {
    small(|| {
        let kernel = Kernel::new(&[32, 32], 4).unwrap();
        let _on = kernel.enter().unwrap();
        let image = load("storage");
        let mut driver = DriverObject::default();
        assert_eq!(image.driver_entry(&mut driver), STATUS_SUCCESS);
        let storage = Storage::new(&image).unwrap();
        // Backpressure: processor 0's queue holds 64; the 65th is refused
        // (counted, its request back in the pool), then all 64 complete.
        for n in 0..64 {
            assert_eq!(storage.submit(n, 512), STATUS_SUCCESS, "submit {n}");
        }
        assert_eq!(storage.submit(64, 512), STATUS_INSUFFICIENT_RESOURCES);
        assert_eq!((storage.statistic(0), storage.statistic(2)), (64, 1));
        assert_eq!(storage.complete(0), 64);
        assert_eq!(storage.statistic(1), 64);
        let done = AtomicBool::new(false);

        let results: Vec<Io> = std::thread::scope(|s| {
            let spawn = |cpu: u32, peer: u32| {
                let (kernel, storage, done) = (&kernel, &storage, &done);
                std::thread::Builder::new()
                    .stack_size(STACK)
                    .spawn_scoped(s, move || {
                        check_stack();
                        let _on = kernel.enter_on(cpu).unwrap();
                        io_loop(storage, cpu, peer, done, 200)
                    })
                    .unwrap()
            };
            let mut threads: Vec<_> = (0..4).map(|cpu| spawn(cpu, (cpu + 1) % 4)).collect();
            let mut vetoed = false;
            while kernel.next_free().is_some() {
                let active = kernel.active_processors();
                if active == 40 && !vetoed {
                    // One add vetoed by the driver: its allocation refused.
                    kernel.pool().fail(Fault::Nth(0));
                    let outcome = kernel.hot_add_next().unwrap();
                    assert!(
                        matches!(
                            outcome.result,
                            AddResult::Vetoed {
                                status: STATUS_INSUFFICIENT_RESOURCES,
                                ..
                            }
                        ),
                        "{outcome:?}"
                    );
                    kernel.pool().fail(Fault::Never);
                    vetoed = true;
                    continue;
                }
                assert!(kernel.hot_add_next().unwrap().added());
                if active == 20 || active == 50 {
                    // I/O on a processor added while the adds go on.
                    threads.push(spawn(active, 0));
                }
            }
            assert!(vetoed);
            done.store(true, Ordering::Release);
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(results.len(), 6);
        assert_eq!(kernel.active_processors(), 64);

        // Complete what is still queued, from processor 0 (remote completions).
        let mut leftover = 0u64;
        for p in 0..64 {
            let completed = storage.complete(p);
            assert_ne!(completed, u32::MAX, "queue {p}");
            leftover += u64::from(completed);
        }
        assert_eq!(storage.complete(u32::MAX), u32::MAX); // not a processor index
        let max = kernel.max_processors();
        assert_eq!(storage.complete(max), u32::MAX); // past the machine
        let submitted: u64 = results.iter().map(|r| r.submitted).sum();
        let refused: u64 = results.iter().map(|r| r.refused).sum();
        let completed: u64 = results.iter().map(|r| r.completed).sum::<u64>() + leftover;
        assert!(results.iter().all(|r| r.submitted >= 100), "{results:?}");
        assert_eq!(completed, submitted);
        assert_eq!(storage.statistic(0), 64 + submitted);
        assert_eq!(storage.statistic(1), 64 + completed);
        assert_eq!(storage.statistic(2), 1 + refused);
        assert_eq!(storage.statistic(3), 0);

        assert!(image.driver_unload(&mut driver));
        // Unloaded: the exports refuse instead of crashing.
        assert_eq!(storage.submit(1, 512), STATUS_INVALID_DEVICE_STATE);
        assert_eq!(storage.statistic(0), 0);
        for tag in STORAGE_TAGS {
            assert!(kernel.pool().stats(tag).allocations > 0, "{tag:#x}");
        }
        assert!(kernel.registrations().is_empty());
        assert_clean(&kernel, &image);
        let calls = image.calls();
        // Replay 4 x 2, 60 adds x 2, the veto 1.
        assert_eq!(
            (calls.entry, calls.unload, calls.callbacks),
            (1, 1, 8 + 120 + 1)
        );
        println!("[{ARCH}] storage I/O: submitted {submitted}, refused {refused}");
        report(
            "storage: I/O on 6 processors while 60 hot-adds (one vetoed)",
            calls,
        );
    });
}

#[test]
fn an_import_without_a_binding_fails_the_load_with_its_name() {
    let path = image_path(ARCH, "seed");
    assert!(path.exists(), "missing image {}", path.display());
    let without = |name: &str| (name != "ExFreePool").then(|| binding(name)).flatten();
    // SAFETY: this repository's seed driver; the resolver returns only the
    // bindings' own forwarders.
    let loaded = unsafe { Image::load_with(&path, without) };
    let Err(error) = loaded else {
        panic!("loaded without a binding for ExFreePool")
    };
    assert_eq!(
        error,
        LoadError::Unbound {
            dll: "ntoskrnl.exe".into(),
            name: "ExFreePool".into()
        }
    );
    assert!(error.to_string().contains("ntoskrnl.exe!ExFreePool"));
}

#[test]
fn the_images_imports_are_the_checked_lists_and_all_bound() {
    for name in ["seed", "storage"] {
        let image = load(name);
        let imports: BTreeSet<String> = image.imports().into_iter().map(|(_, n)| n).collect();
        let expected = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../image-check/expected/{name}-{ARCH}.imports")),
        )
        .unwrap();
        let expected: BTreeSet<String> = expected.lines().map(str::to_owned).collect();
        assert_eq!(imports, expected, "{name}");
        assert!(imports.iter().all(|i| BOUND.contains(&i.as_str())));
        // Our export directory reader agrees with the PE entry point.
        assert_eq!(image.export("DriverEntry"), Some(image.entry()), "{name}");
        println!(
            "[{ARCH}] {name}: {} imports bound, {} relocations, exports {:?}",
            imports.len(),
            image.relocations(),
            image.export_names()
        );
    }
}

/// No ARM64 image reads or writes x18; no x64 image touches gs or cr8.
#[test]
fn no_image_uses_a_register_the_kernel_owns() {
    for (arch, forbidden) in [
        ("arm64", disasm::ARM64_FORBIDDEN),
        ("x64", disasm::X64_FORBIDDEN),
    ] {
        for name in ["seed", "storage"] {
            let path = image_path(arch, name);
            let text = disasm::disassemble(&path).unwrap_or_else(|e| panic!("{e}"));
            let count = disasm::instruction_count(&text);
            assert!(count > 500, "{}: only {count} instructions", path.display());
            let bad = disasm::offending_lines(&text, forbidden);
            assert!(
                bad.is_empty(),
                "{} uses {forbidden:?}:\n{}",
                path.display(),
                bad.join("\n")
            );
            println!("{arch} {name}: {count} instructions, none uses {forbidden:?}");
        }
    }
}
