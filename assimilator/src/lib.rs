//! `mw-assimilator`: the program BOINC's `script_assimilator` runs for an mw app.
//!
//! BOINC calls it through `/bin/sh` from `<project>/tmp_<host>` by program name only
//! (reference/boinc-server.md §0.1), in two forms:
//! - `mw-assimilator WU_ID FILE…` (default tokens `wu_id files`): the canonical result's
//!   uploaded file, an mw result bundle. It is copied atomically into the spool directory as
//!   `result_<wu_name>.tar.gz`, the workunit name taken from the upload's file name
//!   (`<wu_name>_<k>_r<random>_<n>`, given by BOINC's upload handler).
//! - `mw-assimilator --error MASK WU_NAME WU_ID BATCH`: the workunit failed; an
//!   `error_<wu_name>.toml` record ([`ErrorRecord`]) is written atomically. It carries how
//!   the results the volunteers uploaded ended (the client uploads outputs even when the task
//!   failed; see [`report`]): exit statuses, stderr tails, and for a workunit without quorum
//!   the first field on which the successful results disagree.
//!
//! **It never wedges BOINC's assimilator.** A nonzero exit makes `script_assimilator` stop,
//! and it fails again on the same workunit after every restart (§0.3). So any result it
//! cannot use — upload missing (a late result of a cancelled workunit whose upload the file
//! deleter already removed), unreadable, malformed, over the result limits, naming an unsafe
//! job, or naming another job, task or attempt than its workunit (forged or misfiled) —
//! becomes an error record naming the workunit and why, and the call exits 0.
//!
//! Memory is bounded by the master's result limits (`max_output_bytes` in `mw_boinc.toml`,
//! [`ServerLimits`]): the upload is read up to its limit and verified as it streams past. The master ignores
//! records of tasks it no longer waits for. Both forms are idempotent. BOINC's `--error`
//! verdict replaces a different record of the workunit; an unusable result does not (BOINC
//! assimilates a cancelled workunit again for a late result, whose upload is gone: the
//! cancel stays the task's outcome). For a workunit mw
//! cancelled (marker `cancelled_<wu>` in the spool) nothing is spooled: the call is consumed,
//! and it removes the markers older than [`CANCEL_MARKER_MAX_AGE`] (at most once an hour).
//!
//! Nonzero exits are kept for conditions a retry can fix once the operator acts, and nothing
//! else: the spool directory or `mw_boinc.toml` cannot be found or read (exit 1), writing the
//! spool fails (disk full, permissions; exit 1), or the call is not one of the two forms
//! (script_assimilator misconfigured; exit 2).
//!
//! The spool is found through `MW_BOINC_SPOOL`, else the `mw_boinc.toml` that
//! `mw-boinc-setup` writes at the project root (looked up in `BOINC_PROJECT_DIR`, `.`, `..`
//! and the parent of the program's own `bin/` directory).
//!
//! This module must never know about the master, the journal or BOINC's database.

pub mod report;

pub use mw_boinc_kit::names::{wu_name_from_output, CONFIG_FILE_NAME, SPOOL_ENV};
use mw_boinc_kit::{config_candidates, find_config_file, is_safe_name, SpoolLocation, WuName};
pub use mw_boinc_kit::{error_mask_names, ErrorRecord, WU_ERROR_BITS};
pub use mw_validator::ServerLimits;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Errors after which BOINC should call again later (the program exits nonzero).
#[derive(Debug, thiserror::Error)]
pub enum AssimilateError {
    /// The arguments are not one of the two forms BOINC uses.
    #[error("usage: {0}")]
    Usage(String),
    /// The spool directory could not be found or its configuration is unreadable.
    #[error("configuration: {0}")]
    Config(String),
    /// Writing the spool failed.
    #[error(transparent)]
    Io(#[from] mw_boinc_kit::FileError),
}

fn io_err(path: &Path, context: &str) -> impl FnOnce(std::io::Error) -> AssimilateError {
    mw_boinc_kit::io_err(path, context)
}

/// One call as BOINC makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `WU_ID FILE…`: a canonical result.
    Result {
        /// The workunit's database id.
        wu_id: u64,
        /// The canonical result's files (mw uses one).
        files: Vec<PathBuf>,
    },
    /// `--error MASK WU_NAME WU_ID BATCH`: a failed workunit.
    Error {
        /// `workunit.error_mask`.
        mask: u64,
        /// The workunit's name.
        wu_name: String,
        /// The workunit's database id.
        wu_id: u64,
        /// `workunit.batch`.
        batch: i64,
    },
}

fn num<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, AssimilateError> {
    s.trim()
        .parse()
        .map_err(|_| AssimilateError::Usage(format!("{what} `{s}` is not a number")))
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Call, AssimilateError> {
    match args {
        [flag, rest @ ..] if flag == "--error" => match rest {
            [mask, wu_name, wu_id, batch] => Ok(Call::Error {
                mask: num("error mask", mask)?,
                wu_name: wu_name.clone(),
                wu_id: num("workunit id", wu_id)?,
                batch: num("batch", batch)?,
            }),
            _ => Err(AssimilateError::Usage(format!(
                "--error takes MASK WU_NAME WU_ID BATCH, got {} arguments",
                rest.len()
            ))),
        },
        [wu_id, files @ ..] if !files.is_empty() => Ok(Call::Result {
            wu_id: num("workunit id", wu_id)?,
            files: files.iter().map(PathBuf::from).collect(),
        }),
        _ => Err(AssimilateError::Usage(format!(
            "expected `WU_ID FILE` or `--error MASK WU_NAME WU_ID BATCH`, got {} arguments \
             (configure script_assimilator with `--script mw-assimilator`, program name only)",
            args.len()
        ))),
    }
}

/// The text for `--help` / `-h` or `--version` / `-V` as the first argument, to print on
/// stdout with exit 0; `None` for every other call (BOINC's start with a workunit id or
/// `--error`).
pub fn help_or_version(args: &[String]) -> Option<String> {
    let version = env!("CARGO_PKG_VERSION");
    match args.first()?.as_str() {
        "--version" | "-V" => Some(format!("mw-assimilator {version}\n")),
        "--help" | "-h" => Some(format!(
            "mw-assimilator {version}: the program BOINC's script_assimilator runs for an mw app.\n\
             \n\
             Usage (by program name only; mw-boinc-setup installs it in the project's bin/):\n\
             \x20 mw-assimilator WU_ID FILE...                     the canonical result's upload\n\
             \x20 mw-assimilator --error MASK WU_NAME WU_ID BATCH  a workunit that failed\n\
             \n\
             It spools into ${SPOOL_ENV}, else the spool named by {CONFIG_FILE_NAME} at the\n\
             project root. Exit status: 0 done (an unusable result is recorded, not retried),\n\
             1 retry later (the spool cannot be found, read or written), 2 not one of the two\n\
             forms. One line on stderr says what it did.\n\
             \n\
             Options:\n\
             \x20 -h, --help     print this help\n\
             \x20 -V, --version  print the version\n"
        )),
        _ => None,
    }
}

/// What a call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new file was written.
    Written(PathBuf),
    /// The same content was already there; nothing changed.
    Unchanged(PathBuf),
    /// A result bundle for this workunit with other content was already spooled; this one was
    /// kept beside it under another name.
    Conflict(PathBuf),
    /// mw cancelled the workunit (a `cancelled_<wu>` marker in the spool): nothing spooled.
    Consumed(String),
    /// The result could not be used; an error record says why.
    Rejected {
        /// The error record.
        record: PathBuf,
        /// Why.
        reason: String,
    },
    /// The result could not be used, and the workunit already has another error record in
    /// the spool (BOINC's verdict, e.g. its cancel): that one is kept, as the outcome the
    /// master reads.
    EarlierKept {
        /// The error record kept.
        record: PathBuf,
        /// Why this result could not be used.
        reason: String,
    },
}

/// Where the assimilator writes, the project it serves, and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spool {
    /// The spool directory.
    pub dir: PathBuf,
    /// The project root, when known (for the upload directory in error reports).
    pub project: Option<PathBuf>,
    /// The result limits (`max_output_bytes` in `mw_boinc.toml`, else the defaults).
    pub limits: ServerLimits,
}

/// Finds the spool directory: `env_spool`, else the first `mw_boinc.toml` in
/// `project_env`, `cwd`, `cwd/..`, `exe/../..` ([`config_candidates`]); and the result
/// limits that file sets.
pub fn find_spool(
    env_spool: Option<PathBuf>,
    project_env: Option<PathBuf>,
    cwd: &Path,
    exe: Option<&Path>,
) -> Result<Spool, AssimilateError> {
    let candidates = config_candidates(project_env, cwd, exe);
    let found = find_config_file(&candidates);
    let limits = ServerLimits::from_candidates(&candidates).map_err(AssimilateError::Config)?;
    let spool = if let Some(s) = env_spool.filter(|s| !s.as_os_str().is_empty()) {
        let project = found
            .and_then(|f| SpoolLocation::load(&f).ok())
            .and_then(|l| l.project_dir);
        Spool {
            dir: s,
            project,
            limits,
        }
    } else {
        let found = found.ok_or_else(|| {
            AssimilateError::Config(format!(
                "no {CONFIG_FILE_NAME} in {} and {SPOOL_ENV} is not set (run mw-boinc-setup)",
                candidates
                    .iter()
                    .map(|c| c.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let loc =
            SpoolLocation::load(&found).map_err(|e| AssimilateError::Config(e.to_string()))?;
        Spool {
            dir: loc.spool_dir,
            project: loc.project_dir,
            limits,
        }
    };
    if !spool.dir.is_dir() {
        return Err(AssimilateError::Config(format!(
            "spool directory {} does not exist",
            spool.dir.display()
        )));
    }
    Ok(spool)
}

/// Writes `bytes` as `dir/name` atomically without replacing an existing file. Returns
/// `Unchanged` when a file with the same content is there, `Err(existing)` when one with
/// other content is.
fn write_new(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<Result<Outcome, PathBuf>, AssimilateError> {
    let dest = dir.join(name);
    loop {
        match std::fs::read(&dest) {
            Ok(existing) if existing == bytes => return Ok(Ok(Outcome::Unchanged(dest))),
            Ok(_) => return Ok(Err(dest)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dest, "reading")(e)),
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(io_err(dir, "creating a temporary file"))?;
        tmp.write_all(bytes)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(io_err(tmp.path(), "writing"))?;
        match tmp.persist_noclobber(&dest) {
            Ok(_) => {
                mw_bundle::sync_dir(dir).map_err(io_err(dir, "syncing directory"))?;
                return Ok(Ok(Outcome::Written(dest)));
            }
            // Someone wrote it meanwhile: compare again.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&dest, "renaming into place")(e.error)),
        }
    }
}

/// Writes `bytes` as `dir/name` atomically; `Unchanged` if equal. Other content is replaced,
/// or with `earlier_wins` kept ([`Outcome::EarlierKept`], its reason left for the caller).
fn write_replace(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    earlier_wins: bool,
) -> Result<Outcome, AssimilateError> {
    let dest = dir.join(name);
    match std::fs::read(&dest) {
        Ok(existing) if existing == bytes => return Ok(Outcome::Unchanged(dest)),
        Ok(_) if earlier_wins => {
            return Ok(Outcome::EarlierKept {
                record: dest,
                reason: String::new(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&dest, "reading")(e)),
    }
    mw_bundle::write_atomic(&dest, bytes, Some(0o644)).map_err(io_err(&dest, "writing"))?;
    Ok(Outcome::Written(dest))
}

/// True when mw cancelled `wu` (its marker is in the spool).
fn cancelled(spool: &Path, wu: &WuName) -> bool {
    spool.join(wu.cancel_marker_name()).exists()
}

/// How long a cancel marker is kept. BOINC may assimilate a cancelled workunit again when
/// volunteers that kept running it report late (reference/boinc-server.md §0.3): up to its
/// `delay_bound` (7 days unless the job sets it) after the result was sent, a little more
/// for a client that reports late. Past this age a marker only lengthens every master's
/// scan of the spool, which is shared by all the project's jobs.
pub const CANCEL_MARKER_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// At most one look for old markers in this time (the stamp file's age).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Removes the cancel markers in `spool` older than [`CANCEL_MARKER_MAX_AGE`] at `now`,
/// unless markers were pruned less than [`PRUNE_INTERVAL`] before (the stamp file
/// [`mw_boinc_kit::names::MARKERS_PRUNED_STAMP`] says when). Best effort: what cannot be
/// read or removed stays. Returns how many markers went.
pub fn prune_cancel_markers(spool: &Path, now: SystemTime) -> usize {
    let stamp = spool.join(mw_boinc_kit::names::MARKERS_PRUNED_STAMP);
    let recent = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .is_ok_and(|at| now.duration_since(at).is_ok_and(|age| age < PRUNE_INTERVAL));
    if recent {
        return 0;
    }
    // Stamped only when a look is made: a stamp renewed by every call would stay young for
    // ever under a steady stream of cancelled workunits, and nothing would be pruned.
    let stamped = std::fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&stamp)
        .and_then(|f| f.set_modified(now));
    if stamped.is_err() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(spool) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if WuName::of_cancel_marker(name).is_none() {
            continue;
        }
        let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|at| {
            now.duration_since(at)
                .is_ok_and(|age| age > CANCEL_MARKER_MAX_AGE)
        });
        if old && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Writes `error_<wu_name>.toml` (or `error_wu<ID>.toml` when the name is not safe),
/// replacing a different record of the workunit (BOINC's latest verdict wins).
pub fn write_error_record(spool: &Path, record: &ErrorRecord) -> Result<Outcome, AssimilateError> {
    write_record(spool, record, false)
}

/// [`write_error_record`]; with `earlier_wins`, a different record of the workunit already
/// in the spool is kept ([`Outcome::EarlierKept`], reason left empty for the caller).
fn write_record(
    spool: &Path,
    record: &ErrorRecord,
    earlier_wins: bool,
) -> Result<Outcome, AssimilateError> {
    let name = match WuName::parse(&record.wu_name) {
        Ok(wu) if cancelled(spool, &wu) => return Ok(Outcome::Consumed(wu.to_string())),
        Ok(wu) => wu.error_spool_name(),
        Err(_) => mw_boinc_kit::names::error_spool_name_by_id(record.wu_id),
    };
    let text = record
        .to_text()
        .map_err(|e| AssimilateError::Config(format!("cannot serialise error record: {e}")))?;
    write_replace(spool, &name, text.as_bytes(), earlier_wins)
}

/// The `--error` form: records BOINC's error, with what the uploaded results say.
pub fn assimilate_error(
    spool: &Spool,
    mask: u64,
    wu_name: &str,
    wu_id: u64,
    batch: i64,
) -> Result<Outcome, AssimilateError> {
    let mut record = ErrorRecord::boinc_error(wu_name, wu_id, batch, mask);
    if let (Some(project), Ok(wu)) = (&spool.project, WuName::parse(wu_name)) {
        report::add_upload_reports(&mut record, project, &wu, &spool.limits);
    }
    write_error_record(&spool.dir, &record)
}

/// The normal form: spools the canonical result bundle at `file` under the name of the
/// workunit BOINC gave it (from the upload's file name, which BOINC's upload handler chose).
/// Never fails on the result itself (see the module documentation): an unusable one becomes
/// an error record, and so does one whose manifest names another job, task or attempt than
/// its workunit (forged or misfiled). Memory: the upload (at most
/// [`ServerLimits::max_upload_bytes`]), verified as it streams past.
pub fn assimilate_result(
    spool: &Path,
    wu_id: u64,
    file: &Path,
    limits: &ServerLimits,
) -> Result<Outcome, AssimilateError> {
    let file_name = file
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let wu_name = wu_name_from_output(&file_name)
        .unwrap_or(&file_name)
        .to_string();
    // An unusable result does not replace the workunit's earlier error record: BOINC
    // assimilates a cancelled workunit again for a late result (reference §0.3), and the
    // cancel, not the late result's missing upload, is the task's outcome.
    let reject = |reason: String| -> Result<Outcome, AssimilateError> {
        let record = ErrorRecord::unusable(&wu_name, wu_id, reason.clone());
        match write_record(spool, &record, true)? {
            Outcome::Written(record) | Outcome::Unchanged(record) => {
                Ok(Outcome::Rejected { record, reason })
            }
            Outcome::EarlierKept { record, .. } => Ok(Outcome::EarlierKept { record, reason }),
            other => Ok(other),
        }
    };
    let Ok(wu) = WuName::parse(&wu_name) else {
        return reject(format!(
            "upload {} does not carry a shell-safe workunit name",
            file.display()
        ));
    };
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return reject(format!(
                "the canonical result's upload {} no longer exists (a late result of a \
                 cancelled workunit, whose upload BOINC's file deleter already removed?)",
                file.display()
            ))
        }
        Err(e) => return reject(format!("cannot read {}: {e}", file.display())),
    };
    // Only a regular file: a FIFO would block the daemon's script for ever (and BOINC's
    // assimilator with it), a device would be read as if it were a result.
    if !meta.is_file() {
        return reject(format!("{}: not a regular file", file.display()));
    }
    if meta.len() > limits.max_upload_bytes() {
        return reject(format!(
            "{}: {} bytes, over the limit of {} bytes for a result of at most {} bytes \
             (max_output_bytes in {CONFIG_FILE_NAME})",
            file.display(),
            meta.len(),
            limits.max_upload_bytes(),
            limits.max_output_bytes
        ));
    }
    let bytes = match read_at_most(file, limits.max_upload_bytes()) {
        Ok(b) => b,
        Err(e) => return reject(format!("cannot read {}: {e}", file.display())),
    };
    // A task's result bundle, or a pack's (many tasks in one workunit): spooled alike. The
    // master checks each of a pack's results against the tasks it filed under that pack.
    let label = file.display().to_string();
    let is_pack = matches!(
        mw_bundle::read_manifest_bytes(&bytes, &label, &limits.bundle_limits()).map(|m| m.kind),
        Ok(mw_bundle::BundleKind::PackResult)
    );
    let (job, single) = if is_pack {
        match mw_validator::check_pack_bytes_keeping(
            &bytes,
            &label,
            limits,
            mw_validator::Keep::Nothing,
        ) {
            Ok(pack) => (pack.info.job, None),
            Err(e) => return reject(format!("not a valid pack result bundle: {e}")),
        }
    } else {
        match mw_validator::read_result_bytes(&bytes, &label, limits, mw_validator::Keep::Nothing) {
            Ok(checked) => (checked.info.job.clone(), Some(checked.info)),
            Err(e) => return reject(format!("not a valid result bundle: {e}")),
        }
    };
    if !is_safe_name(&job) {
        return reject(format!("job name {job:?} is not [A-Za-z0-9_.-]{{1,128}}"));
    }
    if let (Some(p), Some(info)) = (wu.parts(), single) {
        if info.job != p.job || info.task != p.task || info.attempt.is_some_and(|a| a != p.attempt)
        {
            return reject(format!(
                "forged or misfiled result: workunit {wu} is attempt {} of task {} of job `{}`, \
                 but the upload's manifest names {}task {} of job `{}`",
                p.attempt,
                p.task,
                p.job,
                info.attempt
                    .map(|a| format!("attempt {a} of "))
                    .unwrap_or_default(),
                info.task,
                info.job
            ));
        }
    }
    if cancelled(spool, &wu) {
        return Ok(Outcome::Consumed(wu.to_string()));
    }
    match write_new(spool, &wu.result_spool_name(), &bytes)? {
        Ok(outcome) => Ok(outcome),
        Err(_existing) => match write_new(spool, &wu.conflict_spool_name(wu_id), &bytes)? {
            Ok(Outcome::Written(p) | Outcome::Unchanged(p)) => Ok(Outcome::Conflict(p)),
            Ok(o) => Ok(o),
            // A third different result for the same workunit: keep the first two, go on.
            Err(existing) => Ok(Outcome::Conflict(existing)),
        },
    }
}

/// Reads at most `cap` bytes of `path` (it may grow while being read).
fn read_at_most(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(cap)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Runs one call as the program does; returns the exit code and a one-line message.
pub fn run(args: &[String]) -> (i32, String) {
    let outcome = parse_args(args).and_then(|call| {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let exe = std::env::current_exe().ok();
        let spool = find_spool(
            std::env::var_os(SPOOL_ENV).map(PathBuf::from),
            std::env::var_os("BOINC_PROJECT_DIR").map(PathBuf::from),
            &cwd,
            exe.as_deref(),
        )?;
        let outcome = match call {
            Call::Result { wu_id, files } => {
                assimilate_result(&spool.dir, wu_id, &files[0], &spool.limits)
            }
            Call::Error {
                mask,
                wu_name,
                wu_id,
                batch,
            } => assimilate_error(&spool, mask, &wu_name, wu_id, batch),
        };
        // Markers accumulate only where workunits are cancelled: those calls look for the
        // ones no longer needed.
        if let Ok(Outcome::Consumed(_)) = &outcome {
            prune_cancel_markers(&spool.dir, SystemTime::now());
        }
        outcome
    });
    match outcome {
        Ok(Outcome::Written(p)) => (0, format!("wrote {}", p.display())),
        Ok(Outcome::Unchanged(p)) => (0, format!("{} already there, unchanged", p.display())),
        Ok(Outcome::Conflict(p)) => (
            0,
            format!(
                "warning: another result for this workunit was already spooled; kept this one \
                 as {}",
                p.display()
            ),
        ),
        Ok(Outcome::Consumed(wu)) => (
            0,
            format!("workunit {wu} was cancelled by mw; nothing spooled"),
        ),
        Ok(Outcome::EarlierKept { record, reason }) => (
            0,
            format!(
                "unusable result ({reason}); the workunit's earlier error record {} is kept",
                record.display()
            ),
        ),
        Ok(Outcome::Rejected { record, reason }) => (
            0,
            format!(
                "unusable result ({reason}); recorded in {}",
                record.display()
            ),
        ),
        Err(e @ AssimilateError::Usage(_)) => (2, format!("error: {e}")),
        Err(e) => (1, format!("error (will be retried): {e}")),
    }
}
