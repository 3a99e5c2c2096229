//! placeholder
#![no_std]
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

#[cfg(not(windows))]
extern crate std;

#[cfg(not(windows))]
pub mod sim;
#[cfg(not(windows))]
pub use sim::sys;
