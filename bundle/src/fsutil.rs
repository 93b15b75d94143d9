//! Small shared helpers every mw crate needs and that must behave the same everywhere:
//! the one atomic file write (temp file, fsync, rename, fsync of the directory) and the one
//! table of signal names.
//!
//! This module knows nothing of bundles' contents, platforms or the master.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same directory,
/// written and fsync'd, given `mode` (Unix permission bits, if any), renamed over `path`, and
/// the directory fsync'd so the rename itself survives a crash. Readers never see a partial
/// file; after `Ok`, the content is on disk.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    write_renamed(path, bytes, mode, true)
}

/// Like [`write_atomic`] (readers never see a partial file), but without the fsyncs: the
/// content and the rename become durable only with a later [`sync_filesystem`] of the same
/// file system. For many files that become durable together (BOINC staging: thousands of
/// input files per batch, one sync before `create_work` refers to them).
pub fn write_atomic_deferred(path: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    write_renamed(path, bytes, mode, false)
}

fn write_renamed(path: &Path, bytes: &[u8], mode: Option<u32>, sync: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".mw-tmp-")
        .tempfile_in(&dir)?;
    tmp.write_all(bytes)?;
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    if sync {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if sync {
        sync_dir(&dir)?;
    }
    Ok(())
}

/// Makes everything written to the file system holding `path` durable (`syncfs(2)` on Linux;
/// elsewhere an fsync of `path` itself). Pairs with [`write_atomic_deferred`].
pub fn sync_filesystem(path: &Path) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: syncfs(2) takes a file descriptor, which `f` keeps open for the call.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        f.sync_all()
    }
}

/// Fsyncs a directory, so entries created or renamed in it are durable. A no-op where
/// directories cannot be opened for syncing (not Unix).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The conventional name of a POSIX signal number (Linux numbering), e.g. `9` → `SIGKILL`;
/// `None` for a number without a well-known name. The one table of signal names in mw.
pub fn signal_name(signal: i64) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", None).unwrap();
        write_atomic(&p, b"two", Some(0o640)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o640);
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn deferred_write_then_one_filesystem_sync() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g");
        write_atomic_deferred(&p, b"one", Some(0o644)).unwrap();
        write_atomic_deferred(&p, b"two", None).unwrap();
        sync_filesystem(dir.path()).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(sync_filesystem(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(11), Some("SIGSEGV"));
        assert_eq!(signal_name(64), None);
        assert_eq!(signal_name(-1), None);
    }
}
