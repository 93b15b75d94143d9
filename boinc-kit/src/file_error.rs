//! The I/O error of the BOINC-side programs (`mw-boinc-setup`, `mw-assimilator`): which file
//! or directory, what was being done to it, and the underlying error, worded one way.
//!
//! This module must never know which program reports the error or what it does next.

use std::path::{Path, PathBuf};

/// An I/O error on a file or directory.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {context}: {source}")]
pub struct FileError {
    /// The file or directory.
    pub path: PathBuf,
    /// What was being done.
    pub context: String,
    /// The underlying error.
    pub source: std::io::Error,
}

/// For `map_err`: an I/O error on `path` while `context`, as an error `E` that a
/// [`FileError`] converts into.
pub fn io_err<E: From<FileError>>(path: &Path, context: &str) -> impl FnOnce(std::io::Error) -> E {
    let path = path.to_path_buf();
    let context = context.to_string();
    move |source| {
        E::from(FileError {
            path,
            context,
            source,
        })
    }
}
