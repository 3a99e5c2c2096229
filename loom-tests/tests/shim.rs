//! Loom model of the driver shim: an AddStart arriving through the registered
//! callback (on the simulated kernel) while another processor reads the slot
//! table, iterates it and uses its own slot.
//!
//! Run with `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p
//! perproc-loom-tests --release --test shim` (121 interleavings with
//! `LOOM_MAX_PREEMPTIONS=3`).
#![cfg(loom)]

use std::sync::Arc;

use loom::thread;
use perproc::{Error, PerCpu, Platform, ProcessorIndex};
use perproc_wdk::sim::Kernel;
use perproc_wdk::{pool_tag, KernelPlatform, PoolAlloc, Registration};

const TAG: u32 = pool_tag(*b"Loom");

/// Two words per processor, so a reader seeing a half-built slot would notice.
type Value = [u64; 2];
type Init = fn(ProcessorIndex) -> Result<Value, Error>;

fn expected(cpu: ProcessorIndex) -> Value {
    let v = u64::from(cpu.get()) * 10 + 7;
    [v, !v]
}

struct Parts {
    slots: PerCpu<Value, KernelPlatform, PoolAlloc, Init>,
}

perproc::components!(Parts => slots);

/// Under `--cfg perproc_mutant="relaxed_publish"` (the core's publishing
/// stores weakened to Relaxed) loom must find the reader seeing an unbuilt
/// slot, so the model is expected to fail there.
#[test]
#[cfg_attr(perproc_mutant = "relaxed_publish", should_panic)]
fn start_through_the_callback_races_a_reader_on_another_processor() {
    loom::model(|| {
        let kernel = Kernel::new(&[2], 1).unwrap();
        // DriverEntry on processor 0: the replay prepares and commits it.
        let registration = {
            let _on = kernel.enter().unwrap();
            let platform = KernelPlatform::new(TAG).unwrap();
            let init: Init = |cpu| Ok(expected(cpu));
            let parts = Parts {
                slots: PerCpu::new(&platform, init).unwrap(),
            };
            Arc::new(Registration::register(parts, platform.allocator()).unwrap())
        };

        // The kernel hot-adds processor 1: AddStart then AddComplete through
        // the shim's extern "C" callback.
        let adder = {
            let kernel = kernel.clone();
            thread::spawn(move || kernel.hot_add_index(1).unwrap().added())
        };
        // Processor 0 reads the table meanwhile.
        let reader = {
            let kernel = kernel.clone();
            let registration = Arc::clone(&registration);
            thread::spawn(move || {
                let _on = kernel.enter_on(0).unwrap();
                let slots = &registration.parts().slots;
                let cpu1 = ProcessorIndex::new(1).unwrap();
                if let Some(value) = slots.get(cpu1) {
                    assert_eq!(*value, expected(cpu1));
                }
                for (cpu, value) in slots.iter() {
                    assert_eq!(*value, expected(cpu));
                }
                let platform = KernelPlatform::new(TAG).unwrap();
                let mine = platform.pinned(|pin| *slots.current(pin).unwrap()).unwrap();
                assert_eq!(mine, expected(ProcessorIndex::ZERO));
            })
        };
        assert!(adder.join().unwrap());
        reader.join().unwrap();

        let registration = Arc::try_unwrap(registration).ok().unwrap();
        assert_eq!(registration.parts().slots.online_count(), 2);
        drop(registration); // Unload: deregister, then free the table and slots
        assert_eq!(kernel.pool().total_live_bytes(), 0);
        assert!(kernel.violations().is_empty());
    });
}
