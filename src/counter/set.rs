//! Naming counters: [`CounterSet`] (what a block of counters sums into),
//! [`Counter`] (one counter of a set, checked when it is made) and the
//! [`counters!`](crate::counters) macro that declares a set by its names.
//!
//! Why a macro: see [`counters!`](crate::counters).

use core::marker::PhantomData;

use crate::sync::{AtomicU64, Ordering};

mod sealed {
    pub trait Sealed {}
    impl<const N: usize> Sealed for [u64; N] {}
}

/// The plain counts of a set, `[u64; N]`: how many counters it has. Sealed:
/// only arrays of `u64` are counts.
pub trait Counts: sealed::Sealed + Copy + Send + Sync + 'static {
    /// How many counters.
    const LEN: usize;
    /// One processor's block: `[AtomicU64; N]`.
    #[doc(hidden)]
    type Atomics: Send + Sync;
    #[doc(hidden)]
    fn zero() -> Self::Atomics;
    #[doc(hidden)]
    fn slots(atomics: &Self::Atomics) -> &[AtomicU64];
    #[doc(hidden)]
    fn read(atomics: &Self::Atomics, order: Ordering) -> Self;
    #[doc(hidden)]
    fn counts_mut(&mut self) -> &mut [u64];
}

impl<const N: usize> Counts for [u64; N] {
    const LEN: usize = N;
    type Atomics = [AtomicU64; N];

    fn zero() -> [AtomicU64; N] {
        core::array::from_fn(|_| AtomicU64::new(0))
    }

    #[inline(always)]
    fn slots(atomics: &[AtomicU64; N]) -> &[AtomicU64] {
        atomics
    }

    fn read(atomics: &[AtomicU64; N], order: Ordering) -> Self {
        let mut counts = [0; N];
        for (count, atomic) in counts.iter_mut().zip(atomics) {
            *count = atomic.load(order);
        }
        counts
    }

    fn counts_mut(&mut self) -> &mut [u64] {
        self
    }
}

/// A set of counters a [`PerCpuCounters`](crate::PerCpuCounters) keeps per
/// processor, and the snapshot its sums are read into.
///
/// Declare one with [`counters!`](crate::counters) (named fields); `[u64; N]`
/// is a set too (anonymous counters, by position).
pub trait CounterSet: Sized {
    /// `[u64; N]`: the counts in order.
    type Counts: Counts;
    /// The counters' names, in order (for reports).
    const NAMES: &'static [&'static str];
    /// The snapshot made of `counts`, in order.
    fn from_counts(counts: Self::Counts) -> Self;
}

impl<const N: usize> CounterSet for [u64; N] {
    type Counts = [u64; N];
    const NAMES: &'static [&'static str] = &[];

    fn from_counts(counts: [u64; N]) -> Self {
        counts
    }
}

/// One counter of the set `S`: checked when it is made (its position is
/// below the set's length), so adding to it never fails and, for a constant,
/// compiles to a fixed offset.
///
/// [`counters!`](crate::counters) makes one constant per field
/// (`IoStats::submitted`). For an anonymous set:
///
/// ```
/// use perproc::Counter;
/// const BYTES: Counter<[u64; 2]> = Counter::at::<1>();
/// // const BAD: Counter<[u64; 2]> = Counter::at::<2>(); // does not compile
/// assert_eq!(BYTES.get(), 1);
/// assert!(Counter::<[u64; 2]>::new(2).is_none());
/// ```
pub struct Counter<S> {
    index: usize,
    _set: PhantomData<fn() -> S>,
}

impl<S: CounterSet> Counter<S> {
    /// Counter `I`, checked at compile time.
    pub const fn at<const I: usize>() -> Self {
        const {
            assert!(
                I < <S::Counts as Counts>::LEN,
                "counter index past the end of the set"
            )
        };
        Self {
            index: I,
            _set: PhantomData,
        }
    }

    /// Counter `index`, if it is in the set.
    pub const fn new(index: usize) -> Option<Self> {
        if index < <S::Counts as Counts>::LEN {
            Some(Self {
                index,
                _set: PhantomData,
            })
        } else {
            None
        }
    }

    /// The counter whose field sits at byte `offset` of a `#[repr(C)]` struct
    /// of `u64`s: what [`counters!`](crate::counters) calls. An offset past
    /// the set makes a counter that adds to nothing and sums to 0.
    #[doc(hidden)]
    pub const fn __at_field_offset(offset: usize) -> Self {
        Self {
            index: match offset.checked_div(core::mem::size_of::<u64>()) {
                Some(index) => index,
                None => usize::MAX,
            },
            _set: PhantomData,
        }
    }

    /// Every counter of the set, in order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..<S::Counts as Counts>::LEN).map(|index| Self {
            index,
            _set: PhantomData,
        })
    }

    /// The counter's position in the set.
    pub const fn get(self) -> usize {
        self.index
    }

    /// The counter's name, if its set has names.
    pub fn name(self) -> Option<&'static str> {
        S::NAMES.get(self.index).copied()
    }
}

impl<S> Clone for Counter<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Counter<S> {}

impl<S> PartialEq for Counter<S> {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
    }
}

impl<S> Eq for Counter<S> {}

impl<S> core::hash::Hash for Counter<S> {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.index.hash(state);
    }
}

impl<S> core::fmt::Debug for Counter<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Counter").field(&self.index).finish()
    }
}

/// Declares a set of named counters for [`PerCpuCounters`](crate::PerCpuCounters):
/// a snapshot struct with one `pub` `u64` field per name, and for each name a
/// [`Counter`] constant of the same name on the struct.
///
/// ```
/// use perproc::host::HostPlatform;
/// use perproc::{PerCpuCounters, Platform, ProcessorIndex};
///
/// perproc::counters! {
///     /// What the I/O path counts.
///     pub struct IoStats {
///         submitted,
///         completed,
///         /// Requests refused because a queue or the pool was full.
///         backpressure,
///     }
/// }
///
/// let platform = HostPlatform::new(4)?;
/// let stats = PerCpuCounters::<IoStats, _>::new(&platform)?;
/// let _ = stats.prepare(ProcessorIndex::ZERO)?;
/// platform.pinned(|pin| {
///     stats.add(pin, IoStats::submitted, 1);
///     stats.add(pin, IoStats::backpressure, 1);
/// })?;
/// let now: IoStats = stats.sums();
/// assert_eq!((now.submitted, now.completed, now.backpressure), (1, 0, 1));
/// assert_eq!(stats.sum(IoStats::submitted), 1);
/// assert_eq!(IoStats::backpressure.name(), Some("backpressure"));
/// # Ok::<(), perproc::Error>(())
/// ```
///
/// # Why a macro, and not `CounterId<N>` constants
///
/// A block of `N` anonymous counters made every driver write one constant per
/// counter, each repeating `N` (`const SUBMITTED: CounterId<3> = ...`), and
/// read sums back by position (`let [submitted, completed, _] = sums()`):
/// adding a counter edited every one of those lines, and two positions could
/// be swapped silently. A typed struct alone would need the driver to number
/// its fields by hand. The macro writes both from one list of names: the
/// snapshot struct (named `u64` fields, what [`sums`](crate::PerCpuCounters::sums)
/// returns) and one [`Counter`] constant per field, numbered by the field's
/// position, so adding a counter is one word in one line, and the count is
/// never written down. It is a declarative macro (no proc-macro crate to
/// build for a driver) and generates no `unsafe`.
///
/// The struct derives `Clone`, `Copy`, `Debug`, `Default`, `PartialEq`, `Eq`
/// and `Hash`, and is `#[repr(C)]` (a field's position is its counter's).
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        #[repr(C)]
        $vis struct $name {
            $(
                $(#[$field_meta])*
                #[doc = concat!("\n\nAdded to through [`", stringify!($name), "::", stringify!($field), "`](#associatedconstant.", stringify!($field), ").")]
                pub $field: u64,
            )+
        }

        #[allow(non_upper_case_globals)]
        impl $name {
            $(
                #[doc = concat!("The `", stringify!($field), "` counter.")]
                pub const $field: $crate::Counter<$name> =
                    $crate::Counter::__at_field_offset(::core::mem::offset_of!($name, $field));
            )+
        }

        impl $crate::CounterSet for $name {
            type Counts = [u64; [$(stringify!($field)),+].len()];
            const NAMES: &'static [&'static str] = &[$(stringify!($field)),+];

            fn from_counts(counts: Self::Counts) -> Self {
                let [$($field),+] = counts;
                Self { $($field),+ }
            }
        }
    };
}
