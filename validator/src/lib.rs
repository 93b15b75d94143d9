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
//! Memory is bounded by the master's result limits ([`ServerLimits`]: a stdout of at most
//! `max_output_bytes` from `mw_boinc.toml`, default 16 MiB, and output files within
//! [`mw_bundle::MAX_RESULT_FILES_BYTES`]): members are verified as they stream past and only
//! what a JSON comparison needs is kept; equal checksums agree without reading content; JSON
//! is parsed only within the limit and never into a tree far larger than its text. A pack
//! result has one budget for all its tasks, [`MAX_PACK_KEPT_BYTES`]: its members (the inner
//! result bundles) and what every inner result keeps for a JSON comparison are counted
//! against it as they are read, and a pack over it is invalid; each member is dropped once
//! its inner result is read.
//!
//! This module must never know about the master, the journal, or BOINC's database: it judges
//! files only.

use mw_boinc_kit::names::{VALIDATOR_COMPARE_NAME, VALIDATOR_INIT_NAME};
use mw_bundle::{
    open_in_memory_keeping, pack_result_member, parse_json_limited, BundleKind, Comparison,
    JsonLimitError, Limits, Manifest, PackResultInfo, ResultInfo, RESULT_OUTPUTS_PREFIX,
    RESULT_STDOUT_NAME,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Exit code for a valid result or a match.
pub const EXIT_VALID: i32 = 0;
/// Exit code for an invalid result or a mismatch.
pub const EXIT_INVALID: i32 = 1;
/// Exit code `VAL_RESULT_TRANSIENT_ERROR`: BOINC retries later.
pub const EXIT_TRANSIENT: i32 = 3;

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

/// A bundle that cannot be read is an invalid result.
impl From<mw_bundle::BundleError> for ValidateError {
    fn from(e: mw_bundle::BundleError) -> Self {
        ValidateError::Invalid(e.to_string())
    }
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

/// The most bytes one pack result may hold in memory while it is checked, shared by the outer
/// bundle and all its inner results: the decompressed members of the pack (the inner result
/// bundles) plus what every inner result keeps for a JSON comparison. Without it, each of up
/// to [`mw_bundle::results::MAX_RESULT_ENTRIES`] inner results could keep a full stdout and output
/// files (a 236 KB upload of 120 blank 16 MiB stdouts took 2.9 GB). A pack over it is
/// invalid (an error record for the assimilator).
pub const MAX_PACK_KEPT_BYTES: u64 = 256 << 20;

/// What mw's programs on a BOINC server accept from a volunteer (the validator here, and the
/// assimilator): the master's own result limits ([`mw_bundle::results`]) for a stdout of at
/// most `max_output_bytes`, so their memory on the server is bounded by it, however an upload
/// is made (a gzip bomb, a huge JSON array in a small upload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest stdout accepted, in bytes (`max_output_bytes` in `mw_boinc.toml`; default
    /// [`mw_bundle::DEFAULT_MAX_OUTPUT_BYTES`], the master's default `max_output`).
    pub max_output_bytes: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_output_bytes: mw_bundle::DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

impl ServerLimits {
    /// The limits set in the `mw_boinc.toml` found among `candidates`
    /// ([`mw_boinc_kit::config_candidates`]); the defaults when there is none or it sets
    /// none. A config file that cannot be read is an error (the operator must fix it).
    pub fn from_candidates(candidates: &[PathBuf]) -> Result<ServerLimits, String> {
        let Some(file) = mw_boinc_kit::find_config_file(candidates) else {
            return Ok(ServerLimits::default());
        };
        match mw_boinc_kit::max_output_bytes_of(&file) {
            Ok(Some(max_output_bytes)) => Ok(ServerLimits { max_output_bytes }),
            Ok(None) => Ok(ServerLimits::default()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// [`from_candidates`](Self::from_candidates) for this process (`BOINC_PROJECT_DIR`,
    /// the working directory, its parent, the program's project).
    pub fn from_environment() -> Result<ServerLimits, String> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let exe = std::env::current_exe().ok();
        Self::from_candidates(&mw_boinc_kit::config_candidates(
            std::env::var_os("BOINC_PROJECT_DIR").map(PathBuf::from),
            &cwd,
            exe.as_deref(),
        ))
    }

    /// Limits for opening a result bundle.
    pub fn bundle_limits(&self) -> Limits {
        mw_bundle::result_limits(self.max_output_bytes)
    }

    /// Largest upload (result-bundle file) read.
    pub fn max_upload_bytes(&self) -> u64 {
        mw_bundle::max_result_upload_bytes(self.max_output_bytes)
    }

    fn over(&self, what: &str, size: u64) -> String {
        format!(
            "{what} is {size} bytes, over the limit of {} bytes (max_output_bytes in \
             mw_boinc.toml)",
            self.max_output_bytes
        )
    }
}

/// One payload member of a result (stdout or an output file) as its verified manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadMember {
    /// Bundle path (`stdout.json`, `outputs/…`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 (verified against the content while reading).
    pub sha256: String,
}

/// A result bundle that was read and verified.
#[derive(Debug)]
pub struct CheckedResult {
    /// Its result metadata.
    pub info: ResultInfo,
    /// Its payload: stdout (empty when absent) and every output file, sorted by path.
    pub payload: Vec<PayloadMember>,
    /// The contents kept for a JSON comparison (stdout and output files within the limit;
    /// nothing for a bitwise rule, which compares checksums).
    pub kept: BTreeMap<String, Vec<u8>>,
    /// The limits it was read under.
    pub limits: ServerLimits,
}

/// SHA-256 of nothing (the payload of an absent stdout).
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn payload_of(manifest: &Manifest) -> Vec<PayloadMember> {
    let mut out: Vec<PayloadMember> = manifest
        .members
        .iter()
        .filter(|m| m.path == RESULT_STDOUT_NAME || m.path.starts_with(RESULT_OUTPUTS_PREFIX))
        .map(|m| PayloadMember {
            path: m.path.clone(),
            size: m.size,
            sha256: m.sha256.to_ascii_lowercase(),
        })
        .collect();
    if !out.iter().any(|m| m.path == RESULT_STDOUT_NAME) {
        out.push(PayloadMember {
            path: RESULT_STDOUT_NAME.into(),
            size: 0,
            sha256: EMPTY_SHA256.into(),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Reads a file of at most [`ServerLimits::max_upload_bytes`]; I/O errors are transient, an
/// oversize file is invalid. A missing file in a directory that is there is invalid, as
/// BOINC's own validators take it (a missing output file is invalid unless optional; a
/// directory that cannot be opened, `ERR_OPENDIR`, is transient): retried, it would be
/// retried every 6 hours for ever.
fn read_capped(path: &Path, limits: &ServerLimits) -> Result<Vec<u8>, ValidateError> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| {
        let dir_there = path.parent().is_some_and(|d| d.is_dir());
        if e.kind() == std::io::ErrorKind::NotFound && dir_there {
            ValidateError::Invalid(format!("{}: the upload is missing", path.display()))
        } else {
            ValidateError::Transient(format!("{}: {e}", path.display()))
        }
    })?;
    if !meta.is_file() {
        return Err(ValidateError::Invalid(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let cap = limits.max_upload_bytes();
    if meta.len() > cap {
        return Err(ValidateError::Invalid(format!(
            "{}: {}",
            path.display(),
            limits.over("the upload", meta.len())
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(cap).read_to_end(&mut bytes))
        .map_err(|e| ValidateError::Transient(format!("{}: {e}", path.display())))?;
    Ok(bytes)
}

/// What [`read_result_bytes`] keeps of a result's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// What a JSON comparison needs: stdout, and output files up to the limit in total.
    ForComparison,
    /// Nothing: memory is the bytes alone.
    Nothing,
}

/// Reads bytes as a result bundle: well-formed, every checksum right, kind result, stdout
/// within the limit; whatever the task's exit status. Memory: the bytes plus what `keep`
/// says.
pub fn read_result_bytes(
    bytes: &[u8],
    label: &str,
    limits: &ServerLimits,
    keep: Keep,
) -> Result<CheckedResult, ValidateError> {
    read_result_bytes_within(bytes, label, limits, keep, &mut PackBudget::unlimited())
}

/// What a pack result may still keep in memory ([`MAX_PACK_KEPT_BYTES`]).
struct PackBudget {
    left: u64,
    over: bool,
}

impl PackBudget {
    fn new() -> Self {
        PackBudget {
            left: MAX_PACK_KEPT_BYTES,
            over: false,
        }
    }

    fn unlimited() -> Self {
        PackBudget {
            left: u64::MAX,
            over: false,
        }
    }

    /// Takes `size` bytes from the budget; false (and over from now on) when they do not fit.
    fn take(&mut self, size: u64) -> bool {
        if self.over || size > self.left {
            self.over = true;
            return false;
        }
        self.left -= size;
        true
    }

    /// Invalid when the budget was exceeded.
    fn check(&self, label: &str) -> Result<(), ValidateError> {
        if self.over {
            return Err(ValidateError::Invalid(format!(
                "{label}: the pack's results hold more than {MAX_PACK_KEPT_BYTES} bytes in all \
                 (the budget of one pack result)"
            )));
        }
        Ok(())
    }
}

/// [`read_result_bytes`], taking what it keeps from `budget`.
fn read_result_bytes_within(
    bytes: &[u8],
    label: &str,
    limits: &ServerLimits,
    keep: Keep,
    budget: &mut PackBudget,
) -> Result<CheckedResult, ValidateError> {
    let keep_payload = keep == Keep::ForComparison;
    let max = limits.max_output_bytes;
    let mut kept_files = 0u64;
    let bundle = open_in_memory_keeping(
        bytes,
        label,
        Some(BundleKind::Result),
        &limits.bundle_limits(),
        |manifest, member| {
            let json = keep_payload
                && matches!(
                    manifest.result.as_ref().map(|r| &r.comparison),
                    Some(Comparison::Json { .. })
                );
            if !json || member.size > max {
                return false;
            }
            if member.path == RESULT_STDOUT_NAME {
                return budget.take(member.size);
            }
            if member.path.starts_with(RESULT_OUTPUTS_PREFIX)
                && kept_files.saturating_add(member.size) <= max
            {
                kept_files += member.size;
                return budget.take(member.size);
            }
            false
        },
    )?;
    budget.check(label)?;
    let info = table(&bundle.manifest.result, label, "result")?;
    let payload = payload_of(&bundle.manifest);
    if let Some(stdout) = payload.iter().find(|m| m.path == RESULT_STDOUT_NAME) {
        if stdout.size > max {
            return Err(ValidateError::Invalid(format!(
                "{label}: {}",
                limits.over("the result (stdout)", stdout.size)
            )));
        }
    }
    Ok(CheckedResult {
        info,
        payload,
        kept: bundle.members,
        limits: *limits,
    })
}

/// The manifest's `[name]` table (`section`), which bundle `label` must have.
fn table<T: Clone>(section: &Option<T>, label: &str, name: &str) -> Result<T, ValidateError> {
    section
        .clone()
        .ok_or_else(|| ValidateError::Invalid(format!("{label}: no [{name}] table")))
}

/// Checks bytes as a result bundle: [`read_result_bytes`], and the task exited with status 0
/// and its comparison rule is sane.
pub fn check_result_bytes(
    bytes: &[u8],
    label: &str,
    limits: &ServerLimits,
) -> Result<CheckedResult, ValidateError> {
    let checked = read_result_bytes(bytes, label, limits, Keep::ForComparison)?;
    let info = &checked.info;
    if !info.exit.success() {
        return Err(ValidateError::Invalid(format!(
            "{label}: task {} of job {} did not succeed: {}",
            info.task, info.job, info.exit
        )));
    }
    check_comparison(label, &info.comparison)?;
    Ok(checked)
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

/// Reads an upload (at most [`ServerLimits::max_upload_bytes`]) with [`read_result_bytes`].
pub fn read_result_file(
    path: &Path,
    limits: &ServerLimits,
) -> Result<CheckedResult, ValidateError> {
    let bytes = read_capped(path, limits)?;
    read_result_bytes(
        &bytes,
        &path.display().to_string(),
        limits,
        Keep::ForComparison,
    )
}

/// The init check on one result file.
pub fn check_result_file(
    path: &Path,
    limits: &ServerLimits,
) -> Result<CheckedResult, ValidateError> {
    let bytes = read_capped(path, limits)?;
    check_result_bytes(&bytes, &path.display().to_string(), limits)
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
/// of the task it is filed under, of the pack's job, with a sane comparison rule. Memory: the
/// bytes, the pack's members (within the upload limit) and what each inner result keeps for
/// a JSON comparison.
pub fn check_pack_bytes(
    bytes: &[u8],
    label: &str,
    limits: &ServerLimits,
) -> Result<CheckedPack, ValidateError> {
    check_pack_bytes_keeping(bytes, label, limits, Keep::ForComparison)
}

/// [`check_pack_bytes`] keeping of each inner result what `keep` says. Memory: the bytes,
/// then within [`MAX_PACK_KEPT_BYTES`] (a pack over it is invalid) the pack's members, each
/// dropped once its inner result is read, and what the inner results keep.
pub fn check_pack_bytes_keeping(
    bytes: &[u8],
    label: &str,
    limits: &ServerLimits,
    keep: Keep,
) -> Result<CheckedPack, ValidateError> {
    let mut budget = PackBudget::new();
    let mut bundle = open_in_memory_keeping(
        bytes,
        label,
        Some(BundleKind::PackResult),
        &limits.bundle_limits(),
        |_, member| budget.take(member.size),
    )?;
    budget.check(label)?;
    let info = table(&bundle.manifest.pack_result, label, "pack_result")?;
    let members = bundle.members.len();
    let mut results = BTreeMap::new();
    for task in &info.tasks {
        if results.contains_key(task) {
            continue; // listed twice: its member was read (and dropped) already
        }
        let member = pack_result_member(*task);
        let inner = bundle.members.remove(&member).ok_or_else(|| {
            ValidateError::Invalid(format!("{label}: task {task} is listed without `{member}`"))
        })?;
        let inner_label = format!("{label}#{member}");
        let r = read_result_bytes_within(&inner, &inner_label, limits, keep, &mut budget)?;
        drop(inner);
        if r.info.task != *task || r.info.job != info.job {
            return Err(ValidateError::Invalid(format!(
                "{inner_label}: it is task {} of job {}, filed as task {task} of job {}",
                r.info.task, r.info.job, info.job
            )));
        }
        check_comparison(&inner_label, &r.info.comparison)?;
        results.insert(*task, r);
    }
    if members != results.len() {
        return Err(ValidateError::Invalid(format!(
            "{label}: {} members for {} listed tasks",
            members,
            results.len()
        )));
    }
    Ok(CheckedPack { info, results })
}

/// The init check on one uploaded file: a task's result bundle or a pack's (its manifest
/// says which).
pub fn check_file(path: &Path, limits: &ServerLimits) -> Result<Checked, ValidateError> {
    let bytes = read_capped(path, limits)?;
    let label = path.display().to_string();
    let kind =
        mw_bundle::read_manifest_bytes(&bytes, &label, &limits.bundle_limits()).map(|m| m.kind);
    if matches!(kind, Ok(BundleKind::PackResult)) {
        return check_pack_bytes(&bytes, &label, limits).map(Checked::Pack);
    }
    check_result_bytes(&bytes, &label, limits).map(|r| Checked::Single(Box::new(r)))
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

/// Whether two checked results agree. `Err` carries the first difference found. Equal
/// checksums agree; a JSON rule parses what differs within the output limit (refusing
/// texts with far more values than bytes), so no comparison builds a tree larger than a
/// small multiple of the limit.
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
    let names_a: Vec<&str> = a.payload.iter().map(|m| m.path.as_str()).collect();
    let names_b: Vec<&str> = b.payload.iter().map(|m| m.path.as_str()).collect();
    if names_a != names_b {
        return Err(format!(
            "different payload members: {names_a:?} vs {names_b:?}"
        ));
    }
    let limit = a.limits.max_output_bytes.min(b.limits.max_output_bytes);
    for (ma, mb) in a.payload.iter().zip(b.payload.iter()) {
        if ma.sha256 == mb.sha256 && ma.size == mb.size {
            continue;
        }
        let name = ma.path.as_str();
        let Comparison::Json { rel, abs } = a.info.comparison else {
            return Err(format!("`{name}` differs (bitwise)"));
        };
        let (Some(da), Some(db)) = (kept(a, name), kept(b, name)) else {
            return Err(format!(
                "`{name}` differs (bitwise; too large for a JSON comparison within the limit \
                 of {limit} bytes)"
            ));
        };
        match (parse_json_limited(da, limit), parse_json_limited(db, limit)) {
            (Ok(ja), Ok(jb)) => {
                json_agrees(&ja, &jb, rel, abs, "$").map_err(|e| format!("`{name}`: {e}"))?
            }
            (Err(e @ JsonLimitError::TooManyValues { .. }), _)
            | (_, Err(e @ JsonLimitError::TooManyValues { .. }))
            | (Err(e @ JsonLimitError::TooLarge { .. }), _)
            | (_, Err(e @ JsonLimitError::TooLarge { .. })) => {
                return Err(format!("`{name}` differs (not compared as JSON: {e})"))
            }
            _ if name == RESULT_STDOUT_NAME => {
                return Err(format!("`{name}` differs and is not JSON on both sides"))
            }
            _ => return Err(format!("`{name}` differs (bitwise; not JSON)")),
        }
    }
    Ok(())
}

/// The content of payload member `name` kept for a JSON comparison (an empty one is never
/// stored: an absent stdout).
fn kept<'a>(r: &'a CheckedResult, name: &str) -> Option<&'a [u8]> {
    if r.payload.iter().any(|m| m.path == name && m.size == 0) {
        return Some(&[]);
    }
    r.kept.get(name).map(Vec::as_slice)
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
    let limits = ServerLimits::from_environment().map_err(ValidateError::Transient)?;
    Ok(match check_file(Path::new(file), &limits)? {
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
    let limits = ServerLimits::from_environment().map_err(ValidateError::Transient)?;
    match (
        check_file(Path::new(f1), &limits)?,
        check_file(Path::new(f2), &limits)?,
    ) {
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

/// The text for `--help` / `-h` or `--version` / `-V` when that is the first argument (after
/// an optional `init`/`compare` word), to print on stdout with exit 0; `None` for every
/// other call. BOINC's calls never look like this: they pass upload paths only.
pub fn help_or_version(args: &[String]) -> Option<String> {
    let first = match args.first().map(String::as_str) {
        Some("init" | "compare") => args.get(1),
        _ => args.first(),
    }?;
    let version = env!("CARGO_PKG_VERSION");
    match first.as_str() {
        "--version" | "-V" => Some(format!("mw-validator {version}\n")),
        "--help" | "-h" => Some(format!(
            "mw-validator {version}: the programs BOINC's script_validator runs for an mw app.\n\
             \n\
             Usage (by program name only; mw-boinc-setup installs them in the project's bin/):\n\
             \x20 {VALIDATOR_INIT_NAME} FILE           one result's upload (an mw result bundle)\n\
             \x20 {VALIDATOR_COMPARE_NAME} FILE1 FILE2 two results' uploads\n\
             \x20 mw-validator init FILE | compare FILE1 FILE2  (the same, under any name)\n\
             \n\
             Exit status (script_validator's): 0 valid / match, 1 invalid / no match,\n\
             3 transient (retry later). One line on stderr says why.\n\
             \n\
             Options:\n\
             \x20 -h, --help     print this help\n\
             \x20 -V, --version  print the version\n"
        )),
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
