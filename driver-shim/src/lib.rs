//! placeholder until the shim lands (issue 3).
#![no_std]
