//! Shared test equipment of the `mw` library tests.

#[allow(dead_code)] // each test binary uses part of it
pub mod scripted;
