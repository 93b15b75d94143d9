//! The mw bundle format.
//!
//! Everything that crosses a machine boundary in mw is a *bundle*: a gzip'd tar whose first
//! entry is a TOML manifest ([`Manifest`]) listing every other member with its SHA-256.
//! There are three kinds: program, task and result bundles.
//!
//! This crate packs bundles deterministically (so a program bundle's archive hash is a
//! stable content address) and unpacks them treating the archive as hostile: absolute
//! paths, `..`, links leaving the directory, device files, oversize archives and checksum
//! mismatches are all rejected with an error naming the offending entry.
//!
//! **Architecture invariant:** this crate knows nothing of platforms (Condor, BOINC, MPI),
//! of the master, or of how programs are executed.

#![warn(missing_docs)]

mod error;
pub mod fsutil;
mod manifest;
mod pack;
mod unpack;

pub use error::BundleError;
pub use fsutil::{signal_name, sync_dir, sync_filesystem, write_atomic, write_atomic_deferred};
pub use manifest::*;
pub use pack::{sha256_file, sha256_hex, BundleBuilder};
pub use unpack::{open_in_memory, read_manifest, unpack, InMemoryBundle, Limits};

/// Validates a bundle-relative path: relative, forward slashes, no empty, `.` or `..`
/// components, no NUL or backslash, not the manifest's own name, at most 1024 bytes.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.len() > 1024 {
        return Err("path longer than 1024 bytes".into());
    }
    if path.starts_with('/') {
        return Err("absolute path".into());
    }
    if path.contains('\0') || path.contains('\\') {
        return Err("path contains NUL or backslash".into());
    }
    for comp in path.split('/') {
        match comp {
            "" => return Err("empty path component".into()),
            "." => return Err("`.` path component".into()),
            ".." => return Err("`..` path component".into()),
            _ => {}
        }
    }
    if path == MANIFEST_NAME {
        return Err(format!("member may not be named {MANIFEST_NAME}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
