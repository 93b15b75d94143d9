//! Shared test equipment of the `mw` library tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

#[allow(dead_code)] // each test binary uses part of it
pub mod scripted;
