//! Resolving BOINC logical file names inside a slot directory.
//!
//! The client puts one entry per logical name (`open_name`) into the slot: by default a
//! one-line XML link file `<soft_link>../../projects/P/physical</soft_link>`, a real symbolic
//! link when the project has `<use_symlinks/>`, or a plain copy with `<copy_file/>`. This
//! module turns a logical name into the path to open, as `boinc_resolve_filename` does.
//!
//! It knows nothing of bundles, tasks or the control channel.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The logical names of the program bundle, the task bundle and the result bundle in the slot
/// (the templates' `open_name`s): defined by `mw_boinc_kit`, the one home of BOINC names.
pub use mw_boinc_kit::names::{
    PROGRAM_LOGICAL_NAME as LOGICAL_PROGRAM, RESULT_LOGICAL_NAME as LOGICAL_RESULT,
    TASK_LOGICAL_NAME as LOGICAL_TASK,
};

const OPEN_TAG: &str = "<soft_link>";
const CLOSE_TAG: &str = "</soft_link>";

/// Resolves `logical` in `slot`: a symbolic link or plain file is used as is; a link file
/// yields its target, taken relative to the slot unless absolute; a name that does not exist
/// (an output the app creates, `<copy_file/>` outputs) resolves to itself in the slot.
/// Only the first line (at most 4 KiB) of the file is read, so a large binary input is never
/// read whole.
pub fn resolve(slot: &Path, logical: &str) -> std::io::Result<PathBuf> {
    let path = slot.join(logical);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path),
        Err(e) => return Err(e),
    };
    if meta.file_type().is_symlink() || !meta.is_file() {
        return Ok(path);
    }
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(&path)?
        .take(4096)
        .read_to_end(&mut head)?;
    match link_target(&head) {
        Some(target) => {
            let t = Path::new(&target);
            Ok(if t.is_absolute() {
                t.to_path_buf()
            } else {
                slot.join(t)
            })
        }
        None => Ok(path),
    }
}

/// The target named by a `<soft_link>` file's first line, if it is one.
pub fn link_target(head: &[u8]) -> Option<String> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let start = line.find(OPEN_TAG)? + OPEN_TAG.len();
    let len = line[start..].find(CLOSE_TAG)?;
    let target = line[start..start + len].trim();
    if target.is_empty() || target.contains('\0') {
        return None;
    }
    Some(target.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn link_file_resolves_relative_to_slot() {
        let d = tempfile::tempdir().unwrap();
        let slot = d.path().join("slots/0");
        std::fs::create_dir_all(&slot).unwrap();
        std::fs::write(
            slot.join("mw_task"),
            "<soft_link>../../projects/p/job1_mw_task</soft_link>\n",
        )
        .unwrap();
        assert_eq!(
            resolve(&slot, "mw_task").unwrap(),
            slot.join("../../projects/p/job1_mw_task")
        );
    }

    #[test]
    #[cfg(unix)]
    fn plain_file_symlink_and_missing_resolve_to_themselves() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("copy"),
            b"\x1f\x8b\x08binary\n<soft_link>x</soft_link>",
        )
        .unwrap();
        std::os::unix::fs::symlink("copy", d.path().join("sym")).unwrap();
        assert_eq!(resolve(d.path(), "copy").unwrap(), d.path().join("copy"));
        assert_eq!(resolve(d.path(), "sym").unwrap(), d.path().join("sym"));
        assert_eq!(resolve(d.path(), "out").unwrap(), d.path().join("out"));
    }

    #[test]
    fn malformed_link_files_are_not_links() {
        assert_eq!(link_target(b"<soft_link></soft_link>"), None);
        assert_eq!(link_target(b"<soft_link>abc"), None);
        assert_eq!(link_target(b"hello\n<soft_link>x</soft_link>"), None);
        assert_eq!(
            link_target(b"<soft_link>/abs/x</soft_link>").as_deref(),
            Some("/abs/x")
        );
    }
}
