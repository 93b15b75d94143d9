//! A detached master's log, `<job dir>/master.log`: the one home of its name and its cap.
//!
//! A master of a long BOINC or HTCondor job runs for days, so its log is capped like an
//! HTCondor daemon's (`MAX_<SUBSYS>_LOG`) or the BOINC client's `stdoutdae.txt`: once it is
//! past [`MAX_BYTES`] (or `MW_MASTER_LOG_MAX_BYTES`), it becomes `master.log.old`, replacing
//! an older one, and a fresh `master.log` takes the master's stdout and stderr. The size is
//! looked at about once a second and when the master ends.
//!
//! This module knows nothing of the master or the journal.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The detached master's log in its job directory.
pub(crate) const FILE: &str = "master.log";
/// Where the log goes once it is past its cap (one generation is kept).
pub(crate) const OLD_FILE: &str = "master.log.old";
/// The default cap: 16 MiB.
pub(crate) const MAX_BYTES: u64 = 16 << 20;
/// Sets another cap, in bytes (4096 to 2^40).
pub(crate) const MAX_BYTES_ENV: &str = "MW_MASTER_LOG_MAX_BYTES";

/// The cap from [`MAX_BYTES_ENV`] when it holds a number in range, else [`MAX_BYTES`].
fn cap() -> u64 {
    let Some(text) = std::env::var_os(MAX_BYTES_ENV) else {
        return MAX_BYTES;
    };
    match text.to_str().and_then(|t| t.trim().parse::<u64>().ok()) {
        Some(n) if (4096..=1 << 40).contains(&n) => n,
        _ => {
            log::warn!(
                "{MAX_BYTES_ENV}={text:?} is not a number of bytes from 4096 to 2^40: \
                 master.log is capped at {MAX_BYTES} bytes"
            );
            MAX_BYTES
        }
    }
}

/// Keeps `master.log` under its cap, for a process whose stderr is that file.
#[derive(Debug)]
pub(crate) struct Rotation {
    path: PathBuf,
    max: u64,
}

impl Rotation {
    /// Some when this process's stderr is `dir/master.log` (a detached master, or anyone
    /// who sent a master's stderr there).
    pub(crate) fn detect(dir: &Path) -> Option<Rotation> {
        let path = dir.join(FILE);
        let file = std::fs::metadata(&path).ok()?;
        let err = stderr_metadata()?;
        (err.dev() == file.dev() && err.ino() == file.ino()).then(|| Rotation { path, max: cap() })
    }

    /// Moves the log to [`OLD_FILE`] and gives stdout and stderr a fresh one when it is past
    /// its cap. A failure is reported in the log and ends the rotation (the log then grows).
    pub(crate) fn check(&mut self) -> Option<()> {
        let size = stderr_metadata()?.len();
        if size <= self.max {
            return Some(());
        }
        let rotated = (|| -> std::io::Result<()> {
            std::fs::rename(&self.path, self.path.with_file_name(OLD_FILE))?;
            let fresh = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            for fd in [1, 2] {
                // SAFETY: dup2 makes fd 1 or 2 another descriptor of a file we just opened
                // (the old one is closed atomically); no Rust object owns fds 1 and 2.
                if unsafe { libc::dup2(fresh.as_raw_fd(), fd) } == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })();
        match rotated {
            Ok(()) => {
                log::info!(
                    "master.log passed {} bytes: the earlier lines are in {OLD_FILE}",
                    self.max
                );
                Some(())
            }
            Err(e) => {
                log::warn!(
                    "cannot move {} past its cap of {} bytes ({e}): it grows on",
                    self.path.display(),
                    self.max
                );
                None
            }
        }
    }
}

/// What fstat(2) says of this process's stderr.
fn stderr_metadata() -> Option<std::fs::Metadata> {
    use std::os::fd::AsFd;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    std::fs::File::from(fd).metadata().ok()
}
