//! Processor identity: the system-wide index and the (group, number) pair.
//!
//! Windows numbers processors two ways: a dense system-wide index (`NtNumber`,
//! `KeGetProcessorIndexFromNumber`) and a `PROCESSOR_NUMBER` of (group, number in
//! group), with at most 64 processors in a group. Every conversion here is checked.

use core::fmt;
use core::num::NonZeroU8;

/// The most processors a group holds.
pub const MAX_GROUP_SIZE: u8 = 64;

// Indexes are `u32` and are used as `usize`; that is lossless only on targets whose
// `usize` holds every `u32`.
const _: () = assert!(usize::BITS >= u32::BITS);

/// A processor's system-wide index (Windows: `NtNumber`).
///
/// Any `u32` except `0xffff_ffff` (`INVALID_PROCESSOR_INDEX`).
///
/// ```
/// use perproc::ProcessorIndex;
/// let cpu = ProcessorIndex::new(3).unwrap();
/// assert_eq!(cpu.get(), 3);
/// assert_eq!(cpu.as_usize(), 3);
/// assert!(ProcessorIndex::new(ProcessorIndex::INVALID_RAW).is_none());
/// assert!(ProcessorIndex::try_from(usize::MAX).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct ProcessorIndex(u32);

impl ProcessorIndex {
    /// Windows' `INVALID_PROCESSOR_INDEX`.
    pub const INVALID_RAW: u32 = u32::MAX;

    /// Processor 0, the boot processor.
    pub const ZERO: Self = Self(0);

    /// The index `raw`, or `None` for [`Self::INVALID_RAW`].
    #[inline]
    pub const fn new(raw: u32) -> Option<Self> {
        if raw == Self::INVALID_RAW {
            None
        } else {
            Some(Self(raw))
        }
    }

    /// The index as `u32`.
    #[inline]
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The index as `usize`, for indexing.
    #[inline]
    pub fn as_usize(self) -> usize {
        // Lossless: asserted above that usize holds every u32.
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// The index `i`, if it fits and is not the invalid index.
    #[inline]
    pub fn from_usize(i: usize) -> Option<Self> {
        u32::try_from(i).ok().and_then(Self::new)
    }
}

impl fmt::Display for ProcessorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The error of a conversion into a processor index or number that does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange;

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("processor index or number out of range")
    }
}

impl TryFrom<u32> for ProcessorIndex {
    type Error = OutOfRange;
    fn try_from(raw: u32) -> Result<Self, OutOfRange> {
        Self::new(raw).ok_or(OutOfRange)
    }
}

impl TryFrom<usize> for ProcessorIndex {
    type Error = OutOfRange;
    fn try_from(i: usize) -> Result<Self, OutOfRange> {
        Self::from_usize(i).ok_or(OutOfRange)
    }
}

impl From<ProcessorIndex> for u32 {
    fn from(index: ProcessorIndex) -> u32 {
        index.0
    }
}

/// A processor's (group, number in group), Windows' `PROCESSOR_NUMBER`.
///
/// ```
/// use perproc::ProcessorNumber;
/// let n = ProcessorNumber::new(1, 63).unwrap();
/// assert_eq!((n.group(), n.number()), (1, 63));
/// assert!(ProcessorNumber::new(0, 64).is_none()); // groups hold at most 64
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessorNumber {
    group: u16,
    number: u8,
}

impl ProcessorNumber {
    /// Processor `number` of `group`, or `None` when `number` is 64 or more.
    #[inline]
    pub const fn new(group: u16, number: u8) -> Option<Self> {
        if number < MAX_GROUP_SIZE {
            Some(Self { group, number })
        } else {
            None
        }
    }

    /// The group.
    #[inline]
    pub const fn group(self) -> u16 {
        self.group
    }

    /// The number within the group, below 64.
    #[inline]
    pub const fn number(self) -> u8 {
        self.number
    }
}

impl fmt::Display for ProcessorNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.group, self.number)
    }
}

/// A topology whose groups all hold the same number of processors, numbered
/// densely: index = group * size + number. The host platform and the simulated
/// kernel use it; a real kernel's mapping comes from `KeGetProcessorIndexFromNumber`.
///
/// ```
/// use perproc::{ProcessorIndex, ProcessorNumber, UniformGroups};
/// let groups = UniformGroups::new(64).unwrap();
/// let n = groups.number_of(ProcessorIndex::new(130).unwrap()).unwrap();
/// assert_eq!(n, ProcessorNumber::new(2, 2).unwrap());
/// assert_eq!(groups.index_of(n), ProcessorIndex::new(130));
/// // A number past the group size is not a processor of this topology.
/// let small = UniformGroups::new(4).unwrap();
/// assert_eq!(small.index_of(ProcessorNumber::new(0, 4).unwrap()), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniformGroups {
    size: NonZeroU8,
}

impl UniformGroups {
    /// Groups of `size` processors; `None` unless `1 <= size <= 64`.
    pub const fn new(size: u8) -> Option<Self> {
        match NonZeroU8::new(size) {
            Some(size) if size.get() <= MAX_GROUP_SIZE => Some(Self { size }),
            _ => None,
        }
    }

    /// Processors per group.
    pub const fn size(self) -> u8 {
        self.size.get()
    }

    /// The (group, number) of `index`, or `None` if its group does not fit `u16`.
    pub fn number_of(self, index: ProcessorIndex) -> Option<ProcessorNumber> {
        let size = u32::from(self.size.get());
        let group = u16::try_from(index.get().checked_div(size)?).ok()?;
        let number = u8::try_from(index.get().checked_rem(size)?).ok()?;
        ProcessorNumber::new(group, number)
    }

    /// The index of `number`, or `None` if the number is not in this topology.
    pub fn index_of(self, number: ProcessorNumber) -> Option<ProcessorIndex> {
        if number.number() >= self.size.get() {
            return None;
        }
        let raw = u32::from(number.group())
            .checked_mul(u32::from(self.size.get()))?
            .checked_add(u32::from(number.number()))?;
        ProcessorIndex::new(raw)
    }
}
