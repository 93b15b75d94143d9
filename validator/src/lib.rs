//! `mw-validator`: the two programs BOINC's `script_validator` runs for an mw app.
//!
//! BOINC calls them through `/bin/sh` from `<project>/tmp_<host>` by program name only
//! (reference/boinc-server.md §0.1), with its default tokens:
//! - **init** (`mw-validator-init FILE`): one result's uploaded file, the mw result bundle.
//!   Valid when it is a well-formed result bundle (limits, checksums, kind) whose task
//!   exited with status 0.
//! - **compare** (`mw-validator-compare FILE1 FILE2`): two results' files. They agree when
//!   both pass init, belong to the same job and task, and their payloads (stdout and output
//!   files) agree by the rule the result bundles carry ([`mw_bundle::Comparison`]): bitwise,
//!   or JSON with numeric tolerance.
//!
//! A **pack result** (many tasks in one workunit) is valid when it is well-formed and every
//! result in it is a well-formed result of the task it is filed under (a failed task is a
//! valid outcome inside a pack: it must not cost its neighbours theirs); two pack results
//! agree when they hold the same tasks and, task by task, both succeeded and agree as above,
//! or both failed the same way.
//!
//! Exit codes follow `script_validator`: 0 valid / match, 3 transient (retry later: I/O
//! problems, a wrong call), 1 invalid / no match. The mode comes from the program's name
//! (`argv[0]` ends in `-init` or `-compare`), since BOINC passes no mode word.
//!
//! This module must never know about the master, the journal, or BOINC's database: it judges
//! files only.

use mw_boinc_kit::names::{VALIDATOR_COMPARE_NAME, VALIDATOR_INIT_NAME};
use mw_bundle::{
    open_in_memory, pack_result_member, BundleKind, Comparison, InMemoryBundle, Limits,
    PackResultInfo, ResultInfo, RESULT_OUTPUTS_PREFIX, RESULT_STDOUT_NAME,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Exit code for a valid result or a match.
pub const EXIT_VALID: i32 = 0;
/// Exit code for an invalid result or a mismatch.
pub const EXIT_INVALID: i32 = 1;
/// Exit code `VAL_RESULT_TRANSIENT_ERROR`: BOINC retries later.
pub const EXIT_TRANSIENT: i32 = 3;

/// Largest result file the validator reads, in bytes.
pub const MAX_RESULT_FILE_BYTES: u64 = 1024 * 1024 * 1024;

/// Why a result (or a pair) was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The result is bad (malformed, hostile, failed task) or the pair disagrees.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Nothing is known about the result yet: I/O problem or wrong call; retry later.
    #[error("transient: {0}")]
    Transient(String),
}

impl ValidateError {
    /// The exit code `script_validator` understands.
    pub fn exit_code(&self) -> i32 {
        match self {
            ValidateError::Invalid(_) => EXIT_INVALID,
            ValidateError::Transient(_) => EXIT_TRANSIENT,
        }
    }
}

/// Limits used when opening a volunteer's result bundle.
pub fn result_limits() -> Limits {
    Limits {
        max_total_bytes: MAX_RESULT_FILE_BYTES * 4,
        max_entries: 10_000,
        max_manifest_bytes: 1024 * 1024,
    }
}

/// A result bundle that passed the init checks.
#[derive(Debug)]
pub struct CheckedResult {
    /// The bundle, read and verified.
    pub bundle: InMemoryBundle,
    /// Its result metadata.
    pub info: ResultInfo,
}

/// Reads a file of at most [`MAX_RESULT_FILE_BYTES`]; I/O errors are transient, an
/// oversize file is invalid.
fn read_capped(path: &Path) -> Result<Vec<u8>, ValidateError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ValidateError::Transient(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(ValidateError::Invalid(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    if meta.len() > MAX_RESULT_FILE_BYTES {
        return Err(ValidateError::Invalid(format!(
            "{}: {} bytes, over the limit of {MAX_RESULT_FILE_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| ValidateError::Transient(format!("{}: {e}", path.display())))
}

/// Checks bytes as a result bundle: well-formed, checksums right, kind result, task exited 0,
/// sane comparison rule.
pub fn check_result_bytes(bytes: &[u8], label: &str) -> Result<CheckedResult, ValidateError> {
    let bundle = open_in_memory(bytes, label, Some(BundleKind::Result), &result_limits())
        .map_err(|e| ValidateError::Invalid(e.to_string()))?;
    check_result_bundle(bundle, label)
}

fn check_result_bundle(
    bundle: InMemoryBundle,
    label: &str,
) -> Result<CheckedResult, ValidateError> {
    let info = bundle
        .manifest
        .result
        .clone()
        .ok_or_else(|| ValidateError::Invalid(format!("{label}: no [result] table")))?;
    if !info.exit.success() {
        return Err(ValidateError::Invalid(format!(
            "{label}: task {} of job {} did not succeed: {}",
            info.task, info.job, info.exit
        )));
    }
    check_comparison(label, &info.comparison)?;
    Ok(CheckedResult { bundle, info })
}

/// A comparison rule with usable tolerances.
fn check_comparison(label: &str, c: &Comparison) -> Result<(), ValidateError> {
    if let Comparison::Json { rel, abs } = *c {
        if !(rel.is_finite() && rel >= 0.0 && abs.is_finite() && abs >= 0.0) {
            return Err(ValidateError::Invalid(format!(
                "{label}: comparison tolerances must be finite and >= 0 (rel {rel}, abs {abs})"
            )));
        }
    }
    Ok(())
}

/// The init check on one result file.
pub fn check_result_file(path: &Path) -> Result<CheckedResult, ValidateError> {
    let bytes = read_capped(path)?;
    check_result_bytes(&bytes, &path.display().to_string())
}

/// A pack result that passed the init checks: each task's result, by task.
#[derive(Debug)]
pub struct CheckedPack {
    /// The pack result's metadata.
    pub info: PackResultInfo,
    /// Each task's result (whatever its exit status), by task.
    pub results: BTreeMap<u64, CheckedResult>,
}

/// What one uploaded file is, once checked.
#[derive(Debug)]
pub enum Checked {
    /// One task's result (it succeeded).
    Single(Box<CheckedResult>),
    /// A pack's results.
    Pack(CheckedPack),
}

/// Checks bytes as a pack result bundle: well-formed, and every member a well-formed result
/// of the task it is filed under, of the pack's job, with a sane comparison rule.
pub fn check_pack_bytes(bytes: &[u8], label: &str) -> Result<CheckedPack, ValidateError> {
    let bundle = open_in_memory(bytes, label, Some(BundleKind::PackResult), &result_limits())
        .map_err(|e| ValidateError::Invalid(e.to_string()))?;
    check_pack_bundle(bundle, label)
}

fn check_pack_bundle(bundle: InMemoryBundle, label: &str) -> Result<CheckedPack, ValidateError> {
    let info = bundle
        .manifest
        .pack_result
        .clone()
        .ok_or_else(|| ValidateError::Invalid(format!("{label}: no [pack_result] table")))?;
    let mut results = BTreeMap::new();
    for task in &info.tasks {
        let member = pack_result_member(*task);
        let inner = bundle.members.get(&member).ok_or_else(|| {
            ValidateError::Invalid(format!("{label}: task {task} is listed without `{member}`"))
        })?;
        let inner_label = format!("{label}#{member}");
        let b = open_in_memory(
            inner,
            &inner_label,
            Some(BundleKind::Result),
            &result_limits(),
        )
        .map_err(|e| ValidateError::Invalid(e.to_string()))?;
        let r =
            b.manifest.result.clone().ok_or_else(|| {
                ValidateError::Invalid(format!("{inner_label}: no [result] table"))
            })?;
        if r.task != *task || r.job != info.job {
            return Err(ValidateError::Invalid(format!(
                "{inner_label}: it is task {} of job {}, filed as task {task} of job {}",
                r.task, r.job, info.job
            )));
        }
        check_comparison(&inner_label, &r.comparison)?;
        results.insert(*task, CheckedResult { bundle: b, info: r });
    }
    if bundle.members.len() != results.len() {
        return Err(ValidateError::Invalid(format!(
            "{label}: {} members for {} listed tasks",
            bundle.members.len(),
            results.len()
        )));
    }
    Ok(CheckedPack { info, results })
}

/// The init check on one uploaded file: a task's result bundle or a pack's.
pub fn check_file(path: &Path) -> Result<Checked, ValidateError> {
    let bytes = read_capped(path)?;
    let label = path.display().to_string();
    let bundle = open_in_memory(&bytes, &label, None, &result_limits())
        .map_err(|e| ValidateError::Invalid(e.to_string()))?;
    match bundle.manifest.kind {
        BundleKind::PackResult => check_pack_bundle(bundle, &label).map(Checked::Pack),
        BundleKind::Result => {
            check_result_bundle(bundle, &label).map(|r| Checked::Single(Box::new(r)))
        }
        other => Err(ValidateError::Invalid(format!(
            "{label}: expected a result bundle (or a pack result), found a {other} bundle"
        ))),
    }
}

/// Whether two pack results agree (see the module documentation).
pub fn packs_agree(a: &CheckedPack, b: &CheckedPack) -> Result<(), String> {
    if a.info.job != b.info.job {
        return Err(format!("different jobs: {} vs {}", a.info.job, b.info.job));
    }
    let ta: Vec<&u64> = a.results.keys().collect();
    let tb: Vec<&u64> = b.results.keys().collect();
    if ta != tb {
        return Err(format!("different tasks: {ta:?} vs {tb:?}"));
    }
    for (task, ra) in &a.results {
        let Some(rb) = b.results.get(task) else {
            continue;
        };
        match (ra.info.exit.success(), rb.info.exit.success()) {
            (true, true) => results_agree(ra, rb).map_err(|e| format!("task {task}: {e}"))?,
            (false, false) if ra.info.exit == rb.info.exit => {}
            _ => return Err(format!("task {task}: {} vs {}", ra.info.exit, rb.info.exit)),
        }
    }
    Ok(())
}

/// Whether two checked results agree. `Err` carries the first difference found.
pub fn results_agree(a: &CheckedResult, b: &CheckedResult) -> Result<(), String> {
    if a.info.job != b.info.job || a.info.task != b.info.task {
        return Err(format!(
            "different tasks: job {} task {} vs job {} task {}",
            a.info.job, a.info.task, b.info.job, b.info.task
        ));
    }
    if a.info.comparison != b.info.comparison {
        return Err(format!(
            "different comparison rules: {:?} vs {:?}",
            a.info.comparison, b.info.comparison
        ));
    }
    let payload_a = payload(&a.bundle);
    let payload_b = payload(&b.bundle);
    let names_a: Vec<&str> = payload_a.iter().map(|(n, _)| *n).collect();
    let names_b: Vec<&str> = payload_b.iter().map(|(n, _)| *n).collect();
    if names_a != names_b {
        return Err(format!(
            "different payload members: {names_a:?} vs {names_b:?}"
        ));
    }
    for ((name, da), (_, db)) in payload_a.iter().zip(payload_b.iter()) {
        match a.info.comparison {
            Comparison::Bitwise => {
                if da != db {
                    return Err(format!("`{name}` differs (bitwise)"));
                }
            }
            Comparison::Json { rel, abs } => {
                if da == db {
                    continue;
                }
                let ja = serde_json::from_slice::<Value>(da);
                let jb = serde_json::from_slice::<Value>(db);
                match (ja, jb) {
                    (Ok(ja), Ok(jb)) => json_agrees(&ja, &jb, rel, abs, "$")
                        .map_err(|e| format!("`{name}`: {e}"))?,
                    _ if *name == RESULT_STDOUT_NAME => {
                        return Err(format!("`{name}` differs and is not JSON on both sides"))
                    }
                    _ => return Err(format!("`{name}` differs (bitwise; not JSON)")),
                }
            }
        }
    }
    Ok(())
}

/// The payload of a result bundle: stdout (empty when absent) and every output file, sorted.
fn payload(bundle: &InMemoryBundle) -> Vec<(&str, &[u8])> {
    let mut out: Vec<(&str, &[u8])> = vec![(
        RESULT_STDOUT_NAME,
        bundle
            .members
            .get(RESULT_STDOUT_NAME)
            .map(|v| v.as_slice())
            .unwrap_or(&[]),
    )];
    for (name, data) in &bundle.members {
        if name.starts_with(RESULT_OUTPUTS_PREFIX) {
            out.push((name.as_str(), data.as_slice()));
        }
    }
    out
}

/// Structural JSON equality where numbers may differ by at most `abs`, or by `rel` relative
/// to the larger magnitude. `at` is the JSON path, for the message.
pub fn json_agrees(a: &Value, b: &Value, rel: f64, abs: f64, at: &str) -> Result<(), String> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return Ok(());
            }
            let (Some(fx), Some(fy)) = (x.as_f64(), y.as_f64()) else {
                return Err(format!("{at}: numbers {x} and {y} differ"));
            };
            let diff = (fx - fy).abs();
            let scale = fx.abs().max(fy.abs());
            if diff <= abs || diff <= rel * scale {
                Ok(())
            } else {
                let abs_part = if abs > 0.0 {
                    format!(", abs tol {abs:e}")
                } else {
                    String::new()
                };
                Err(format!(
                    "{at}: {fx:e} vs {fy:e} (rel tol {rel:e}{abs_part})"
                ))
            }
        }
        (Value::Array(xs), Value::Array(ys)) => {
            if xs.len() != ys.len() {
                return Err(format!(
                    "{at}: arrays of length {} and {}",
                    xs.len(),
                    ys.len()
                ));
            }
            for (i, (x, y)) in xs.iter().zip(ys).enumerate() {
                json_agrees(x, y, rel, abs, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Object(xs), Value::Object(ys)) => {
            if xs.len() != ys.len() || xs.keys().any(|k| !ys.contains_key(k)) {
                let kx: Vec<&String> = xs.keys().collect();
                let ky: Vec<&String> = ys.keys().collect();
                return Err(format!("{at}: objects with keys {kx:?} and {ky:?}"));
            }
            for (k, x) in xs {
                if let Some(y) = ys.get(k) {
                    json_agrees(x, y, rel, abs, &format!("{at}.{k}"))?;
                }
            }
            Ok(())
        }
        _ => {
            if a == b {
                Ok(())
            } else {
                Err(format!("{at}: {} vs {}", short(a), short(b)))
            }
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        let mut end = 60;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

/// The init program: `args` are the result's files (exactly one for mw's output template).
pub fn init(args: &[String]) -> Result<String, ValidateError> {
    let [file] = args else {
        return Err(ValidateError::Transient(format!(
            "init expects exactly one result file, got {} arguments (configure script_validator \
             with `--init_script mw-validator-init`, program name only)",
            args.len()
        )));
    };
    Ok(match check_file(Path::new(file))? {
        Checked::Single(r) => format!(
            "valid: job {} task {} from host {}",
            r.info.job, r.info.task, r.info.host
        ),
        Checked::Pack(p) => format!(
            "valid: pack of job {} with {} results ({} failed, {} not run) from host {}",
            p.info.job,
            p.results.len(),
            p.results
                .values()
                .filter(|r| !r.info.exit.success())
                .count(),
            p.info.not_run.len(),
            p.info.host
        ),
    })
}

/// The compare program: `args` are the two results' files.
pub fn compare(args: &[String]) -> Result<String, ValidateError> {
    let [f1, f2] = args else {
        return Err(ValidateError::Transient(format!(
            "compare expects exactly two result files, got {} arguments (configure \
             script_validator with `--compare_script mw-validator-compare`, program name only)",
            args.len()
        )));
    };
    match (check_file(Path::new(f1))?, check_file(Path::new(f2))?) {
        (Checked::Single(a), Checked::Single(b)) => {
            results_agree(&a, &b).map_err(ValidateError::Invalid)?;
            Ok(format!(
                "match: job {} task {} ({:?})",
                a.info.job, a.info.task, a.info.comparison
            ))
        }
        (Checked::Pack(a), Checked::Pack(b)) => {
            packs_agree(&a, &b).map_err(ValidateError::Invalid)?;
            Ok(format!(
                "match: pack of job {} with {} results",
                a.info.job,
                a.results.len()
            ))
        }
        _ => Err(ValidateError::Invalid(
            "one file is a pack result, the other a single task's".into(),
        )),
    }
}

/// Which program to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check one result.
    Init,
    /// Compare two results.
    Compare,
}

/// Picks the mode from the program name (`…-init`, `…-compare`), else from a first argument
/// `init` / `compare` (for manual use). Returns the mode and the remaining arguments.
pub fn select_mode(argv0: &str, args: &[String]) -> Option<(Mode, Vec<String>)> {
    let base = Path::new(argv0)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if base == VALIDATOR_INIT_NAME || base.ends_with("-init") || base.ends_with("_init") {
        return Some((Mode::Init, args.to_vec()));
    }
    if base == VALIDATOR_COMPARE_NAME || base.ends_with("-compare") || base.ends_with("_compare") {
        return Some((Mode::Compare, args.to_vec()));
    }
    match args.first().map(String::as_str) {
        Some("init") => Some((Mode::Init, args[1..].to_vec())),
        Some("compare") => Some((Mode::Compare, args[1..].to_vec())),
        _ => None,
    }
}

/// Runs the validator as a program would; returns the exit code and the one-line reason.
pub fn run(argv0: &str, args: &[String]) -> (i32, String) {
    let Some((mode, rest)) = select_mode(argv0, args) else {
        return (
            EXIT_TRANSIENT,
            format!(
                "transient: cannot tell init from compare: install as {VALIDATOR_INIT_NAME} / \
                 {VALIDATOR_COMPARE_NAME}, or call `{argv0} init FILE` / `{argv0} compare FILE1 FILE2`"
            ),
        );
    };
    let outcome = match mode {
        Mode::Init => init(&rest),
        Mode::Compare => compare(&rest),
    };
    match outcome {
        Ok(msg) => (EXIT_VALID, msg),
        Err(e) => (e.exit_code(), e.to_string()),
    }
}
