//! Cancelling workunits: `bin/cancel_jobs --name <wu>` from the project root, plus a marker
//! `cancelled_<wu>` in the spool so that whatever BOINC still assimilates for the workunit
//! (its `--error 16` call, late results of volunteers that kept running it) is consumed by
//! the assimilator instead of lingering in the spool. Works with or without a live master:
//! [`cancel_workunits`] is what `mw cancel` calls when no master runs.

use super::batch::PENDING_PREFIX;
use super::BoincError;
use mw_boinc_kit::{MwBoincConfig, WuName};
use std::path::Path;
use std::process::{Command, Stdio};

/// The workunit name in a recorded handle (`<wu>` or `pending:<wu>`).
pub fn workunit_of_handle(handle: &str) -> Option<WuName> {
    WuName::parse(handle.strip_prefix(PENDING_PREFIX).unwrap_or(handle)).ok()
}

/// Marks `wu` cancelled in the spool and removes what is already spooled for it.
pub(super) fn mark_cancelled(spool: &Path, wu: &WuName) {
    let _ = mw_bundle::write_atomic(&spool.join(wu.cancel_marker_name()), b"", Some(0o644));
    let _ = std::fs::remove_file(spool.join(wu.result_spool_name()));
    let _ = std::fs::remove_file(spool.join(wu.error_spool_name()));
}

/// Runs `bin/cancel_jobs --name WU` from the project root; says what happened.
pub(super) fn run_cancel_jobs(project: &Path, wu: &WuName) -> String {
    match Command::new(project.join("bin/cancel_jobs"))
        .args(["--name", wu.as_str()])
        .current_dir(project)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => "bin/cancel_jobs marked it cancelled".to_string(),
        Ok(o) => format!(
            "bin/cancel_jobs failed ({}): {}",
            o.status,
            super::batch::trim_tool_output(&String::from_utf8_lossy(&o.stderr))
        ),
        Err(e) => format!("bin/cancel_jobs could not run: {e}"),
    }
}

/// Cancels the workunits recorded under `handles` in the project at `project_dir` (no master
/// needed): marks each cancelled in the spool, consumes its spool entries, and runs
/// `bin/cancel_jobs --name` for it. Returns, per handle, what happened.
pub fn cancel_workunits(
    project_dir: &Path,
    handles: &[String],
) -> Result<Vec<(String, String)>, BoincError> {
    let cfg = MwBoincConfig::load(project_dir).map_err(|e| BoincError(e.to_string()))?;
    Ok(handles
        .iter()
        .map(|h| match workunit_of_handle(h) {
            Some(wu) => {
                mark_cancelled(&cfg.spool_dir, &wu);
                (h.clone(), run_cancel_jobs(project_dir, &wu))
            }
            None => (
                h.clone(),
                "not a workunit name; not passed to bin/cancel_jobs".into(),
            ),
        })
        .collect())
}
