//! Carries a [`Plan`] out, in order: directories, backups of files about to be edited,
//! atomic file writes (through `mw_bundle::write_atomic`), BOINC's own tools run from the
//! project root.

use crate::plan::{Action, Content, Plan};
use crate::{io_err, SetupError};
use std::io::Write;
use std::path::Path;

fn write_file(path: &Path, content: &Content, mode: u32) -> Result<(), SetupError> {
    use std::os::unix::fs::PermissionsExt;
    let owned;
    let bytes: &[u8] = match content {
        Content::Bytes(b) => b,
        Content::CopyOf(src) => {
            owned = std::fs::read(src).map_err(io_err(src, "reading"))?;
            &owned
        }
    };
    // Keep an existing file's mode bits beyond the ones we decide (e.g. group write).
    let mode = match std::fs::metadata(path) {
        Ok(m) if mode & 0o100 == 0 => m.permissions().mode() & 0o7777 & !0o111,
        _ => mode,
    };
    mw_bundle::write_atomic(path, bytes, Some(mode)).map_err(io_err(path, "writing"))
}

/// Applies the plan in order, printing each action to `out` as it is done.
pub fn apply(plan: &Plan, project_dir: &Path, out: &mut dyn Write) -> Result<(), SetupError> {
    for action in &plan.actions {
        let _ = writeln!(out, "{action}");
        match action {
            Action::CreateDir(p) => std::fs::create_dir_all(p).map_err(io_err(p, "creating"))?,
            Action::WriteFile {
                path,
                content,
                mode,
                ..
            } => write_file(path, content, *mode)?,
            Action::Backup { from, to } => {
                use std::os::unix::fs::PermissionsExt;
                let bytes = std::fs::read(from).map_err(io_err(from, "reading"))?;
                let mode = std::fs::metadata(from)
                    .map_err(io_err(from, "reading"))?
                    .permissions()
                    .mode()
                    & 0o777;
                mw_bundle::write_atomic(to, &bytes, Some(mode))
                    .map_err(io_err(to, "writing the backup"))?;
            }
            Action::Run { program, args, .. } => {
                let command = format!("{program} {}", args.join(" "));
                let output = std::process::Command::new(project_dir.join(program))
                    .args(args)
                    .current_dir(project_dir)
                    .output()
                    .map_err(io_err(&project_dir.join(program), "running"))?;
                let stdout = String::from_utf8_lossy(&output.stdout);
                let stderr = String::from_utf8_lossy(&output.stderr);
                for line in stdout.lines().chain(stderr.lines()) {
                    if !line.trim().is_empty() {
                        let _ = writeln!(out, "    {line}");
                    }
                }
                // update_versions exits 0 on an unknown argument: check its words too.
                let bad_words = ["unknown arg", "no such platform", "immutable"];
                let said_bad = bad_words
                    .iter()
                    .find(|w| stdout.contains(*w) || stderr.contains(*w));
                if !output.status.success() || said_bad.is_some() {
                    return Err(SetupError::Command {
                        command: command.trim().to_string(),
                        reason: format!(
                            "{}{}",
                            output.status,
                            said_bad
                                .map(|w| format!(", output says {w:?}"))
                                .unwrap_or_default()
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}
