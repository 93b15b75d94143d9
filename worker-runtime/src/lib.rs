//! worker runtime (in progress).
