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

mod error;
pub mod fsutil;
mod manifest;
mod pack;
pub mod results;
pub mod text;
mod unpack;

pub use error::BundleError;
pub use fsutil::{signal_name, sync_dir, sync_filesystem, write_atomic, write_atomic_deferred};
pub use manifest::*;
pub use pack::{sha256_file, sha256_hex, BundleBuilder};
pub use results::{
    check_json_limited, max_result_upload_bytes, parse_json_limited, result_limits, JsonLimitError,
    DEFAULT_MAX_OUTPUT_BYTES, MAX_OUTPUT_LIMIT, MAX_RESULT_FILES_BYTES,
};
pub use unpack::{
    open_in_memory, open_in_memory_keeping, read_manifest, read_manifest_bytes, unpack,
    InMemoryBundle, Limits,
};

/// Validates a bundle-relative path: relative, forward slashes, no empty, `.` or `..`
/// components, no NUL or backslash, not the manifest's own name, at most 1024 bytes, and
/// a name every platform a worker runs on can hold as exactly that file (the Windows rules
/// of [`check_portable_component`] apply everywhere, so a bundle safe on Linux is safe on
/// Windows too).
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
        return Err("path contains NUL or backslash (a Windows path separator)".into());
    }
    for comp in path.split('/') {
        match comp {
            "" => return Err("empty path component".into()),
            "." => return Err("`.` path component".into()),
            ".." => return Err("`..` path component".into()),
            _ => check_portable_component(comp)?,
        }
    }
    if path == MANIFEST_NAME {
        return Err(format!("member may not be named {MANIFEST_NAME}"));
    }
    Ok(())
}

/// Windows' reserved device names: a file of this name (with any extension) is the device.
const RESERVED_NAMES: &[&str] = &["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];

/// The Windows rules for one path component, checked on every platform: no `:` (drive
/// letters like `C:x` and alternate data streams like `a:stream`), none of `<>"|?*` or
/// control characters, no trailing dot or space (Windows strips them, so `a.` would be
/// `a`), and no reserved device name (`CON`, `NUL`, `PRN`, `AUX`, `COM0`-`COM9`,
/// `LPT0`-`LPT9`, also with an extension or trailing spaces, in any case).
pub fn check_portable_component(comp: &str) -> Result<(), String> {
    if comp.contains(':') {
        return Err(format!(
            "component `{comp}` contains `:` (a Windows drive letter or alternate data stream)"
        ));
    }
    if let Some(c) = comp
        .chars()
        .find(|c| matches!(c, '<' | '>' | '"' | '|' | '?' | '*') || c.is_control())
    {
        return Err(format!(
            "component `{comp}` contains {c:?}, which Windows does not allow in names"
        ));
    }
    if comp.ends_with('.') || comp.ends_with(' ') {
        return Err(format!(
            "component `{comp}` ends in a dot or space (Windows would drop it)"
        ));
    }
    let stem = comp.split('.').next().unwrap_or(comp).trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    let numbered = ["COM", "LPT"].iter().any(|p| {
        upper.strip_prefix(p).is_some_and(|n| {
            matches!(
                n,
                "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³"
            )
        })
    });
    if RESERVED_NAMES.contains(&upper.as_str()) || numbered {
        return Err(format!(
            "component `{comp}` is the reserved Windows device name {upper}"
        ));
    }
    Ok(())
}

/// The key under which two member paths collide on a case-insensitive file system
/// (Windows, macOS): unpackers refuse a second member with the same key.
pub fn case_fold_key(path: &str) -> String {
    path.to_lowercase()
}

#[cfg(test)]
mod tests;
