//! [`PushError`]: a push the queue refused, with the item.

use core::fmt;

use crate::Error;

/// A push the queue refused: the item comes back with the reason.
///
/// `error` is [`Error::Exhausted`] when the processor's queue is full
/// (backpressure: retry later, complete the request with a busy status, or queue
/// it elsewhere) and [`Error::NotPrepared`] when the pinned processor has no
/// queue (its add has not started, or was aborted).
#[must_use = "the item that was not queued is in the error"]
pub struct PushError<T> {
    /// The item that was not queued, unchanged.
    pub item: T,
    /// Why.
    pub error: Error,
}

impl<T> PushError<T> {
    /// The item that was not queued.
    pub fn into_inner(self) -> T {
        self.item
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "item not queued: {}", self.error)
    }
}

impl<T> core::error::Error for PushError<T> {}
