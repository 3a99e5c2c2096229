//! Per-processor resources for Windows kernel drivers, grown by processor hot-add.
//!
//! A storage or network driver keeps state per processor (submission queues,
//! object caches, statistics) so that its hot path touches only the local
//! processor's memory. Windows can add processors while the driver runs and tells
//! it through `KeRegisterProcessorChangeCallback`: AddStart (allocate and publish
//! everything the new processor needs; code may run there right after), then
//! AddComplete or AddFailure. This crate is the part of that which is easy to get
//! wrong:
//!
//! - [`PerCpu<T>`]: a value per processor in a table that grows without moving,
//!   copying or locking, read in one acquire load;
//! - [`Component`]: the two-phase add (prepare, commit, abort), with rollback
//!   across a driver's several per-CPU structures (tuples, arrays and
//!   [`components!`] make sets);
//! - [`PerCpuPool<T>`]: an object pool with a magazine cache per processor over
//!   a shared depot (Bonwick), allocating and freeing on the pinned processor
//!   without a lock or an interlocked instruction, frees from any processor;
//! - [`PerCpuQueue<T>`]: a bounded queue per processor, filled by its own
//!   processor without an interlocked instruction, drained by any processor,
//!   nothing lost across a hot-add or an abort, and handed back at
//!   [`teardown`](PerCpuQueue::teardown); [`PerCpuCounters`]: statistics, named
//!   once with [`counters!`], added to locally without an interlocked
//!   instruction and summed over all;
//! - [`PerCpuInbox<T>`]: a bounded queue per processor that any processor
//!   steers work into (RSS receive, completion on the submitting processor)
//!   and its owner consumes without a lock or an interlocked instruction per
//!   item; [`Ticket`]s let a steering table move a flow to a hot-added
//!   processor without reordering it;
//! - the seams a platform fills in: [`Platform`] (current processor, scoped
//!   pinning with [`Platform::pinned`], whose [`PinGuard`] no safe code can
//!   misuse, maximum count), [`RawAlloc`] (fallible, alignment-honouring, NUMA-placed
//!   memory). The `perproc-wdk` crate fills them with kernel calls; [`host`]
//!   (feature `host`) with threads for tests and benchmarks.
//!
//! `#![no_std]`, without the `alloc` crate: all memory comes through [`RawAlloc`].
//! Nothing here panics on any input: errors are [`Error`] values.
//!
//! # Contracts
//!
//! 1. **Stable addresses.** A reference from a container stays valid until the
//!    container is dropped; growth never moves or copies a slot; an aborted add's
//!    slot is kept (and reused by that processor's next add), not freed.
//! 2. **Hot path.** The current processor's slot is the platform's index, then a
//!    bounds check, one acquire load and a bit test: no lock, no read-modify-write,
//!    no allocation, no panic. A processor without a slot gets `None`.
//! 3. **Two-phase add.** `prepare` allocates and publishes; `commit` is O(1);
//!    `abort` is idempotent and accepts an index never prepared.
//! 4. **Fallible everywhere**, nothing leaked, nothing half-published.
//! 5. **Concurrency.** Prepares of different processors run concurrently with each
//!    other, with commits, readers and iterators. Iteration visits each published
//!    slot once and costs O(slots built), for any number of groups.
//! 6. **Growth cost** does not depend on how many processors are present; an
//!    absent processor costs one pointer.
//! 7. **No false sharing**: each slot on its own [`CACHE_LINE`]s, unless
//!    [`SlotPadding::Compact`].
//! 8. **NUMA**: a slot's memory is asked for with its processor's index.
//!
//! # Example
//!
//! ```
//! use perproc::{host::HostPlatform, Component, PerCpu, Platform, ProcessorIndex};
//! use core::sync::atomic::{AtomicU64, Ordering};
//!
//! let platform = HostPlatform::new(64)?;
//! let bytes = PerCpu::new(&platform, |_| Ok(AtomicU64::new(0)))?;
//! let ops = PerCpu::new(&platform, |_| Ok(AtomicU64::new(0)))?;
//! let driver = (&bytes, &ops); // a set: prepared in order, rolled back together
//!
//! // What registration with KE_PROCESSOR_CHANGE_ADD_EXISTING replays: 4 processors.
//! for i in 0..4 {
//!     let _ = driver.prepare(ProcessorIndex::new(i).unwrap())?;
//! }
//! for i in 0..4 {
//!     driver.commit(ProcessorIndex::new(i).unwrap())?;
//! }
//!
//! // The hot path, on whatever processor this thread is bound to (0 here).
//! platform.pinned(|pin| {
//!     bytes.current(pin).unwrap().fetch_add(512, Ordering::Relaxed);
//!     ops.current(pin).unwrap().fetch_add(1, Ordering::Relaxed);
//! })?;
//!
//! assert_eq!(ops.online_count(), 4);
//! assert_eq!(bytes.iter().map(|(_, b)| b.load(Ordering::Relaxed)).sum::<u64>(), 512);
//! # Ok::<(), perproc::Error>(())
//! ```
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented,
    clippy::as_conversions,
    clippy::arithmetic_side_effects,
    missing_docs
)]

#[cfg(any(feature = "std", loom))]
extern crate std;

mod allocator;
#[cfg(target_has_atomic = "64")]
mod counter;
mod error;
mod hot_add;
mod inbox;
mod percpu;
mod platform;
mod pool;
mod processor;
mod queue;
mod sync;

#[cfg(feature = "host")]
#[cfg_attr(docsrs, doc(cfg(feature = "host")))]
pub mod host;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use allocator::{AllocError, RawAlloc};
pub use bytemuck::Zeroable;
#[cfg(target_has_atomic = "64")]
pub use counter::{Counter, CounterSet, Counts, LocalCounters, PerCpuCounter, PerCpuCounters};
pub use error::Error;
pub use hot_add::{ChangeState, Component, Prepared, ProcessorChange};
pub use inbox::{InboxConsumer, InboxDrain, InboxDrainAll, PerCpuInbox, Ticket};
pub use percpu::{InPlace, InPlaceFn, InitFn, Iter, PerCpu, SlotPadding, SlotState, CACHE_LINE};
pub use platform::{PinError, PinGuard, Platform};
pub use pool::{Limits, LocalPool, PerCpuPool, PoolBox, PoolStats, ProcessorStats};
pub use processor::{OutOfRange, ProcessorIndex, ProcessorNumber, UniformGroups, MAX_GROUP_SIZE};
pub use queue::{Consumer, Drain, DrainAll, PerCpuQueue, PushError, QueueLeftovers};

/// The README's example, compiled and run as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
