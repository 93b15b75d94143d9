//! Errors of packing and unpacking; every one names the archive and, where there is one,
//! the entry at fault.

/// An error reading, writing or checking a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// An I/O error on the archive or on the destination directory.
    #[error("{archive}: {context}: {source}")]
    Io {
        /// The archive (path or label).
        archive: String,
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The archive is not a readable gzip'd tar at all.
    #[error("{archive}: not a valid bundle (gzip'd tar): {reason}")]
    NotABundle {
        /// The archive.
        archive: String,
        /// Why.
        reason: String,
    },
    /// The manifest is missing, not first, too large, or does not parse.
    #[error("{archive}: {MANIFEST}: {reason}", MANIFEST = crate::MANIFEST_NAME)]
    Manifest {
        /// The archive.
        archive: String,
        /// Why.
        reason: String,
    },
    /// An entry is refused because it could harm the host (path, type, link).
    #[error("{archive}: entry `{entry}` refused: {reason}")]
    Hostile {
        /// The archive.
        archive: String,
        /// The entry's name as written in the archive.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A limit (size, entry count) was passed.
    #[error("{archive}: entry `{entry}`: {reason}")]
    Limit {
        /// The archive.
        archive: String,
        /// The entry being read when the limit passed.
        entry: String,
        /// Which limit.
        reason: String,
    },
    /// A member's content does not match its manifest checksum or size.
    #[error("{archive}: entry `{entry}`: {reason}")]
    Checksum {
        /// The archive.
        archive: String,
        /// The entry.
        entry: String,
        /// Expected vs actual.
        reason: String,
    },
    /// The manifest lists a member the archive does not hold, or the reverse.
    #[error("{archive}: entry `{entry}`: {reason}")]
    Membership {
        /// The archive.
        archive: String,
        /// The entry.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A problem building a bundle (bad member path, unreadable source file).
    #[error("building {archive}: {reason}")]
    Build {
        /// The archive being built.
        archive: String,
        /// Why.
        reason: String,
    },
}
