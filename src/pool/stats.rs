//! What a driver logs about its pool. Every figure is read from atomics with
//! relaxed loads: readable at any time, from any thread, without a lock. While
//! the pool is in use the figures are a moment's approximation (each is read at
//! a slightly different time); when it is idle they are exact.

use crate::ProcessorIndex;

/// One processor's cache, from [`PerCpuPool::processor_stats`] or
/// [`PerCpuPool::processors`].
///
/// A *hit* is an allocation or free served by the processor's own magazines
/// (no lock, no interlocked instruction); a *miss* needed the depot (one lock
/// round trip, which moves a magazine's worth of objects).
///
/// [`PerCpuPool::processor_stats`]: super::PerCpuPool::processor_stats
/// [`PerCpuPool::processors`]: super::PerCpuPool::processors
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessorStats {
    /// The processor.
    pub processor: ProcessorIndex,
    /// Allocations served by its magazines.
    pub alloc_hits: u64,
    /// Allocations that went to the depot.
    pub alloc_misses: u64,
    /// Frees taken by its magazines.
    pub free_hits: u64,
    /// Frees that went to the depot.
    pub free_misses: u64,
    /// Magazines exchanged with the depot.
    pub exchanges: u64,
    /// Free objects in its magazines now.
    pub cached: usize,
    /// Its add was aborted: the cache is hidden, and `cached` objects are
    /// stranded there until code pinned to the processor hands them back, the
    /// processor is added again, or the pool is dropped.
    pub retired: bool,
}

impl ProcessorStats {
    /// Allocations made on this processor.
    pub fn allocs(&self) -> u64 {
        self.alloc_hits.wrapping_add(self.alloc_misses)
    }

    /// Frees made on this processor (of objects allocated anywhere).
    pub fn frees(&self) -> u64 {
        self.free_hits.wrapping_add(self.free_misses)
    }

    /// Allocations minus frees on this processor: what its code holds if
    /// completions do not migrate. Negative where other processors' objects are
    /// freed (completions migrate); the pool-wide figure is
    /// [`PoolStats::outstanding`].
    pub fn net_allocs(&self) -> i64 {
        // Two's complement: the difference of wrapping counters is exact.
        i64::from_ne_bytes(self.allocs().wrapping_sub(self.frees()).to_ne_bytes())
    }

    /// Operations served locally.
    pub fn hits(&self) -> u64 {
        self.alloc_hits.wrapping_add(self.free_hits)
    }

    /// Operations that needed the depot.
    pub fn misses(&self) -> u64 {
        self.alloc_misses.wrapping_add(self.free_misses)
    }
}

/// The whole pool, from [`PerCpuPool::stats`](super::PerCpuPool::stats).
///
/// When idle, `objects == outstanding + in_depot + cached + stranded + returning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStats {
    /// The most objects the pool may hold ([`Limits::total`](super::Limits::total)).
    pub limit: usize,
    /// Objects carved from slabs so far (never more than `limit`).
    pub objects: usize,
    /// Objects handed out and not yet freed.
    pub outstanding: usize,
    /// Free objects in the depot.
    pub in_depot: usize,
    /// Free objects in the magazines of published processors.
    pub cached: usize,
    /// Free objects in the magazines of processors whose add was aborted.
    pub stranded: usize,
    /// Objects dropped away from the pool (boxes dropped instead of freed),
    /// on their way back: the pool takes them in before it would grow.
    pub returning: usize,
    /// Processors with a published cache.
    pub processors: usize,
    /// Slabs allocated.
    pub slabs: usize,
    /// Magazines allocated.
    pub magazines: usize,
    /// Allocations served by the depot alone, for processors without a cache.
    pub direct_allocs: u64,
    /// Frees taken by the depot alone.
    pub direct_frees: u64,
}
