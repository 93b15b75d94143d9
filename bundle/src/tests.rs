//! Unit tests of packing and unpacking (hostile archives live in tests/hostile.rs of this crate).
