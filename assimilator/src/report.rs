//! What the uploaded results of a failed workunit say, for its error record.
//!
//! BOINC's client uploads a task's output files even when the task failed (reference §0.2,
//! §0.3), and mw's worker writes its result bundle whatever the exit status: so the bundles
//! under `upload/` tell how each attempt ended (exit status, stderr tail) until BOINC's file
//! deleter removes them, which happens only after the assimilator returned. For a workunit
//! that ended without quorum, the successful results are compared by the validator's own rule
//! to name the first field on which they disagree. Everything here is best effort: a missing
//! or unreadable upload only makes the record shorter.

use mw_boinc_kit::errors::{ResultReport, MAX_REPORTED_RESULTS, MAX_STDERR_TAIL};
use mw_boinc_kit::{wu_name_from_output, ErrorRecord, ProjectLayout, WuName};
use mw_bundle::text::tail;
use std::path::{Path, PathBuf};

/// Largest upload read for a report, in bytes.
pub const MAX_REPORTED_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Most directory entries looked at when searching the upload hierarchy.
const MAX_SCANNED_ENTRIES: usize = 4_000_000;

/// The uploaded files of `wu` (`<wu>_<k>_r<random>_<n>` anywhere in the upload hierarchy),
/// sorted by name, at most [`MAX_REPORTED_RESULTS`] * 2.
pub fn find_uploads(layout: &ProjectLayout, wu: &WuName) -> Vec<PathBuf> {
    let mut dirs = vec![layout.upload_dir.clone()];
    if layout.fanout > 0 {
        if let Ok(rd) = std::fs::read_dir(&layout.upload_dir) {
            dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    let prefix = format!("{}_", wu.as_str());
    let mut found = Vec::new();
    let mut scanned = 0usize;
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            scanned += 1;
            if scanned > MAX_SCANNED_ENTRIES || found.len() >= MAX_REPORTED_RESULTS * 2 {
                break;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && wu_name_from_output(&name) == Some(wu.as_str()) {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found
}

/// Adds the uploads' exit statuses and stderr tails, and for a workunit without quorum the
/// first disagreement between its successful results, to `record`.
pub fn add_upload_reports(
    record: &mut ErrorRecord,
    project: &Path,
    wu: &WuName,
    limits: &mw_validator::ServerLimits,
) {
    let Ok(layout) = ProjectLayout::read(project) else {
        return;
    };
    let mut good = Vec::new();
    let mut packs = Vec::new();
    // Contents are kept only to name a disagreement, and then within one pack's budget for
    // all the uploads together: a pack or result that would go over it is reported but not
    // compared.
    let compare = record.error_mask & mw_boinc_kit::errors::WU_ERROR_TOO_MANY_SUCCESS_RESULTS != 0;
    let keep = if compare {
        mw_validator::Keep::ForComparison
    } else {
        mw_validator::Keep::Nothing
    };
    let mut kept = 0u64;
    let mut within_budget = |bytes: u64| {
        let fits = compare && kept.saturating_add(bytes) <= mw_validator::MAX_PACK_KEPT_BYTES;
        if fits {
            kept += bytes;
        }
        fits
    };
    for path in find_uploads(&layout, wu) {
        let file = path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(pack) = read_pack_upload(&path, limits, keep) {
            let failed: Vec<String> = pack
                .results
                .iter()
                .filter(|(_, r)| !r.info.exit.success())
                .map(|(t, r)| format!("task {t}: {}", r.info.exit))
                .collect();
            let r = ResultReport {
                file,
                exit: format!(
                    "pack result: {} results, {} failed{}{}",
                    pack.results.len(),
                    failed.len(),
                    if failed.is_empty() { "" } else { ": " },
                    tail(&failed.join("; "), MAX_STDERR_TAIL)
                ),
                stderr_tail: String::new(),
            };
            let bytes = pack.results.values().map(kept_bytes).sum();
            if within_budget(bytes) {
                packs.push(pack);
            }
            if record.results.len() < MAX_REPORTED_RESULTS {
                record.results.push(r);
            }
            continue;
        }
        let report = match read_upload(&path, limits, keep) {
            Ok(checked) => {
                let info = &checked.info;
                let r = ResultReport {
                    file,
                    exit: info.exit.to_string(),
                    stderr_tail: tail(&info.stderr_tail, MAX_STDERR_TAIL).to_string(),
                };
                if info.exit.success() && within_budget(kept_bytes(&checked)) {
                    good.push(checked);
                }
                r
            }
            Err(why) => ResultReport {
                file,
                exit: why,
                stderr_tail: String::new(),
            },
        };
        if record.results.len() < MAX_REPORTED_RESULTS {
            record.results.push(report);
        }
    }
    if compare {
        'packs: for (i, a) in packs.iter().enumerate() {
            for b in &packs[i + 1..] {
                if let Err(d) = mw_validator::packs_agree(a, b) {
                    record.disagreement = Some(d);
                    break 'packs;
                }
            }
        }
        'pairs: for (i, a) in good.iter().enumerate() {
            for b in &good[i + 1..] {
                if let Err(d) = mw_validator::results_agree(a, b) {
                    record.disagreement = Some(d);
                    break 'pairs;
                }
            }
        }
    }
}

/// A pack result upload, checked as the validator checks it (under the server's limits);
/// `None` for anything else.
fn read_pack_upload(
    path: &Path,
    limits: &mw_validator::ServerLimits,
    keep: mw_validator::Keep,
) -> Option<mw_validator::CheckedPack> {
    let kind = mw_bundle::read_manifest(path, &limits.bundle_limits())
        .ok()?
        .kind;
    if kind != mw_bundle::BundleKind::PackResult {
        return None;
    }
    let cap = MAX_REPORTED_FILE_BYTES.min(limits.max_upload_bytes());
    if std::fs::metadata(path).ok()?.len() > cap {
        return None;
    }
    // Read up to the cap whatever the file has become since it was looked at.
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(cap).read_to_end(&mut bytes))
        .ok()?;
    mw_validator::check_pack_bytes_keeping(&bytes, &path.display().to_string(), limits, keep).ok()
}

/// A result bundle read leniently: well-formed and verified, whatever its exit status, under
/// the server's result limits.
fn read_upload(
    path: &Path,
    limits: &mw_validator::ServerLimits,
    keep: mw_validator::Keep,
) -> Result<mw_validator::CheckedResult, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("unreadable upload: {e}"))?;
    let cap = MAX_REPORTED_FILE_BYTES.min(limits.max_upload_bytes());
    if meta.len() > cap {
        return Err(format!("upload of {} bytes, not read", meta.len()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(cap).read_to_end(&mut bytes))
        .map_err(|e| format!("unreadable upload: {e}"))?;
    let label = path.display().to_string();
    mw_validator::read_result_bytes(&bytes, &label, limits, keep).map_err(|e| match e {
        mw_validator::ValidateError::Invalid(m) | mw_validator::ValidateError::Transient(m) => {
            format!("not a result bundle: {m}")
        }
    })
}

/// The bytes a checked result keeps in memory.
fn kept_bytes(r: &mw_validator::CheckedResult) -> u64 {
    r.kept.values().map(|v| v.len() as u64).sum()
}
