//! What the simulated kernel knows about the calling thread: which kernel and
//! processor it runs on, its IRQL, and whose callback it is running.
//!
//! Under `cfg(loom)` the storage is loom's thread-local (loom runs all its
//! threads on one OS thread, so `std`'s would be shared between them).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::vec::Vec;

use super::kernel::{State, DISPATCH};

/// One entered context; a thread may nest several (innermost last).
pub(crate) struct Cpu {
    pub(crate) state: Arc<State>,
    pub(crate) index: u32,
    pub(crate) irql: u8,
    /// Registrations whose callback this thread is running, innermost last.
    pub(crate) callbacks: Vec<usize>,
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn next_token() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

#[cfg(not(loom))]
std::thread_local! {
    static STACK: RefCell<Vec<Cpu>> = const { RefCell::new(Vec::new()) };
    static TOKEN: u64 = next_token();
}

#[cfg(loom)]
loom::thread_local! {
    static STACK: RefCell<Vec<Cpu>> = RefCell::new(Vec::new());
    static TOKEN: u64 = next_token();
}

/// Runs `f` on the innermost context; `None` when the thread entered no
/// kernel (or its storage is gone because the thread is exiting).
pub(crate) fn with<R>(f: impl FnOnce(&mut Cpu) -> R) -> Option<R> {
    STACK
        .try_with(|stack| {
            let mut stack = stack.try_borrow_mut().ok()?;
            stack.last_mut().map(f)
        })
        .ok()
        .flatten()
}

/// The innermost context's kernel, processor and IRQL, if any.
pub(crate) fn current() -> Option<(Arc<State>, u32, u8, bool)> {
    with(|cpu| {
        (
            Arc::clone(&cpu.state),
            cpu.index,
            cpu.irql,
            !cpu.callbacks.is_empty(),
        )
    })
}

pub(crate) fn push(cpu: Cpu) -> bool {
    STACK
        .try_with(|stack| match stack.try_borrow_mut() {
            Ok(mut stack) => {
                stack.push(cpu);
                true
            }
            Err(_) => false,
        })
        .unwrap_or(false)
}

pub(crate) fn pop() -> Option<Cpu> {
    STACK
        .try_with(|stack| stack.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .ok()
        .flatten()
}

/// Whether a context of this thread on processor `index` of `state` is at
/// DISPATCH_LEVEL or above (so the thread holds that processor).
pub(crate) fn holds(state: &State, index: u32) -> bool {
    STACK
        .try_with(|stack| {
            stack.try_borrow().is_ok_and(|stack| {
                stack.iter().any(|cpu| {
                    std::ptr::eq(Arc::as_ptr(&cpu.state), state)
                        && cpu.index == index
                        && cpu.irql >= DISPATCH
                })
            })
        })
        .unwrap_or(false)
}

/// A number unique to the calling thread, never 0.
pub(crate) fn token() -> u64 {
    TOKEN.try_with(|token| *token).unwrap_or(u64::MAX)
}
