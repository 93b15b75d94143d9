//! `mw-assimilator`: the program BOINC's `script_assimilator` runs for an mw app.
//!
//! BOINC calls it through `/bin/sh` from `<project>/tmp_<host>` by program name only
//! (reference/boinc-server.md §0.1), in two forms:
//! - `mw-assimilator WU_ID FILE…` (default tokens `wu_id files`): the canonical result's
//!   uploaded file, an mw result bundle. It is copied atomically into the spool directory as
//!   `result_<job>_<task>.tar.gz`, job and task read from the bundle's own manifest.
//! - `mw-assimilator --error MASK WU_NAME WU_ID BATCH`: the workunit failed; an
//!   `error_<wu_name>.toml` record ([`ErrorRecord`]) is written atomically.
//!
//! Both are idempotent (same content again → nothing changes, exit 0). A result bundle that
//! cannot be spooled (malformed, unsafe job name) becomes an error record with a `reason`:
//! retrying would not help, and a nonzero exit stops BOINC's assimilator daemon. Nonzero exits
//! are kept for problems that retrying later can fix (I/O, missing spool, wrong call).
//!
//! The spool is found through `MW_BOINC_SPOOL`, else the `mw_boinc.toml` that
//! `mw-boinc-setup` writes at the project root (looked up in `BOINC_PROJECT_DIR`, `.`, `..`
//! and the parent of the program's own `bin/` directory).
//!
//! This module must never know about the master, the journal or BOINC's database.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the configuration file `mw-boinc-setup` writes at the project root.
pub const CONFIG_FILE_NAME: &str = "mw_boinc.toml";
/// Environment variable naming the spool directory directly (overrides the config file).
pub const SPOOL_ENV: &str = "MW_BOINC_SPOOL";
/// Largest result file accepted, in bytes.
pub const MAX_RESULT_FILE_BYTES: u64 = 1024 * 1024 * 1024;

/// BOINC workunit error-mask bits (`db/boinc_db_types.h`, `WU_ERROR_*`).
pub const WU_ERROR_BITS: [(u64, &str); 6] = [
    (1, "COULDNT_SEND_RESULT"),
    (2, "TOO_MANY_ERROR_RESULTS"),
    (4, "TOO_MANY_SUCCESS_RESULTS"),
    (8, "TOO_MANY_TOTAL_RESULTS"),
    (16, "CANCELLED"),
    (32, "NO_CANONICAL_RESULT"),
];

/// Errors after which BOINC should call again later (the program exits nonzero).
#[derive(Debug, thiserror::Error)]
pub enum AssimilateError {
    /// The arguments are not one of the two forms BOINC uses.
    #[error("usage: {0}")]
    Usage(String),
    /// The spool directory could not be found or its configuration is unreadable.
    #[error("configuration: {0}")]
    Config(String),
    /// Reading the result or writing the spool failed.
    #[error("{path}: {context}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path, context: &str) -> impl FnOnce(std::io::Error) -> AssimilateError {
    let path = path.to_path_buf();
    let context = context.to_string();
    move |source| AssimilateError::Io {
        path,
        context,
        source,
    }
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

/// True for a non-empty string of `[A-Za-z0-9_.-]`, at most 128 bytes, not `.`/`..`.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// Names of the `WU_ERROR_*` bits set in `mask`; unknown bits as `UNKNOWN_0x…`.
pub fn error_mask_names(mask: u64) -> Vec<String> {
    let mut names = Vec::new();
    let mut known = 0u64;
    for (bit, name) in WU_ERROR_BITS {
        known |= bit;
        if mask & bit != 0 {
            names.push(name.to_string());
        }
    }
    for i in 0..64 {
        let bit = 1u64 << i;
        if mask & bit != 0 && known & bit == 0 {
            names.push(format!("UNKNOWN_{bit:#x}"));
        }
    }
    names
}

/// The workunit name inside an output file name `<wu_name>_<k>_r<random>_<n>`.
pub fn wu_name_from_output(file_name: &str) -> Option<&str> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (rest, n) = file_name.rsplit_once('_')?;
    let (rest, r) = rest.rsplit_once('_')?;
    let (wu, k) = rest.rsplit_once('_')?;
    let random = r.strip_prefix('r')?;
    (digits(n) && digits(random) && digits(k) && !wu.is_empty()).then_some(wu)
}

/// What `mw-assimilator --error` (or a rejected result) leaves in the spool as
/// `error_<wu_name>.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// The workunit's name (as BOINC gave it, or derived from the output file name).
    pub wu_name: String,
    /// The workunit's database id.
    pub wu_id: u64,
    /// `workunit.batch` (0 when unknown).
    pub batch: i64,
    /// `workunit.error_mask` (0 for a rejected result bundle).
    pub error_mask: u64,
    /// Names of the bits set in `error_mask`.
    pub errors: Vec<String>,
    /// Why a canonical result could not be spooled (absent for BOINC's own errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new file was written.
    Written(PathBuf),
    /// The same content was already there; nothing changed.
    Unchanged(PathBuf),
    /// A result bundle for this task with other content was already spooled; this one was
    /// kept beside it under another name.
    Conflict(PathBuf),
    /// The result could not be spooled; an error record says why.
    Rejected {
        /// The error record.
        record: PathBuf,
        /// Why.
        reason: String,
    },
}

#[derive(Deserialize)]
struct SpoolConfig {
    spool_dir: PathBuf,
}

/// Reads `spool_dir` from a `mw_boinc.toml`; a relative path is relative to the file's dir.
pub fn spool_from_config(config: &Path) -> Result<PathBuf, AssimilateError> {
    let text = std::fs::read_to_string(config).map_err(io_err(config, "reading"))?;
    let cfg: SpoolConfig = toml::from_str(&text)
        .map_err(|e| AssimilateError::Config(format!("{}: {}", config.display(), e.message())))?;
    let base = config.parent().unwrap_or(Path::new("."));
    Ok(base.join(cfg.spool_dir))
}

/// Finds the spool directory: `env_spool`, else the first `mw_boinc.toml` in
/// `project_env`, `cwd`, `cwd/..`, `exe/../..`.
pub fn find_spool(
    env_spool: Option<PathBuf>,
    project_env: Option<PathBuf>,
    cwd: &Path,
    exe: Option<&Path>,
) -> Result<PathBuf, AssimilateError> {
    let spool = if let Some(s) = env_spool.filter(|s| !s.as_os_str().is_empty()) {
        s
    } else {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = project_env.filter(|p| !p.as_os_str().is_empty()) {
            candidates.push(p);
        }
        candidates.push(cwd.to_path_buf());
        candidates.push(cwd.join(".."));
        if let Some(project) = exe.and_then(Path::parent).and_then(Path::parent) {
            candidates.push(project.to_path_buf());
        }
        let found = candidates
            .iter()
            .map(|d| d.join(CONFIG_FILE_NAME))
            .find(|f| f.is_file())
            .ok_or_else(|| {
                AssimilateError::Config(format!(
                    "no {CONFIG_FILE_NAME} in {} and {SPOOL_ENV} is not set (run mw-boinc-setup)",
                    candidates
                        .iter()
                        .map(|c| c.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        spool_from_config(&found)?
    };
    if !spool.is_dir() {
        return Err(AssimilateError::Config(format!(
            "spool directory {} does not exist",
            spool.display()
        )));
    }
    Ok(spool)
}

fn sync_dir(dir: &Path) -> Result<(), AssimilateError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "syncing directory"))
}

fn temp_with(dir: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile, AssimilateError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err(dir, "creating a temporary file"))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(io_err(tmp.path(), "writing"))?;
    Ok(tmp)
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
        let tmp = temp_with(dir, bytes)?;
        match tmp.persist_noclobber(&dest) {
            Ok(_) => {
                sync_dir(dir)?;
                return Ok(Ok(Outcome::Written(dest)));
            }
            // Someone wrote it meanwhile: compare again.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&dest, "renaming into place")(e.error)),
        }
    }
}

/// Writes `bytes` as `dir/name` atomically, replacing other content; `Unchanged` if equal.
fn write_replace(dir: &Path, name: &str, bytes: &[u8]) -> Result<Outcome, AssimilateError> {
    let dest = dir.join(name);
    match std::fs::read(&dest) {
        Ok(existing) if existing == bytes => return Ok(Outcome::Unchanged(dest)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&dest, "reading")(e)),
    }
    let tmp = temp_with(dir, bytes)?;
    tmp.persist(&dest)
        .map_err(|e| io_err(&dest, "renaming into place")(e.error))?;
    sync_dir(dir)?;
    Ok(Outcome::Written(dest))
}

/// Writes `error_<wu_name>.toml` (or `error_wu<ID>.toml` when the name is not safe).
pub fn write_error_record(spool: &Path, record: &ErrorRecord) -> Result<Outcome, AssimilateError> {
    let name = if is_safe_name(&record.wu_name) {
        format!("error_{}.toml", record.wu_name)
    } else {
        format!("error_wu{}.toml", record.wu_id)
    };
    let text = toml::to_string(record)
        .map_err(|e| AssimilateError::Config(format!("cannot serialise error record: {e}")))?;
    write_replace(spool, &name, text.as_bytes())
}

/// The `--error` form.
pub fn assimilate_error(
    spool: &Path,
    mask: u64,
    wu_name: &str,
    wu_id: u64,
    batch: i64,
) -> Result<Outcome, AssimilateError> {
    let record = ErrorRecord {
        wu_name: wu_name.to_string(),
        wu_id,
        batch,
        error_mask: mask,
        errors: error_mask_names(mask),
        reason: None,
    };
    write_error_record(spool, &record)
}

/// The normal form: spools the canonical result bundle at `file`.
pub fn assimilate_result(
    spool: &Path,
    wu_id: u64,
    file: &Path,
) -> Result<Outcome, AssimilateError> {
    let meta = std::fs::metadata(file).map_err(io_err(file, "reading"))?;
    let file_name = file
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let wu_name = wu_name_from_output(&file_name)
        .unwrap_or(&file_name)
        .to_string();
    let reject = |reason: String| -> Result<Outcome, AssimilateError> {
        let record = ErrorRecord {
            wu_name: wu_name.clone(),
            wu_id,
            batch: 0,
            error_mask: 0,
            errors: Vec::new(),
            reason: Some(reason.clone()),
        };
        let outcome = write_error_record(spool, &record)?;
        let (Outcome::Written(record) | Outcome::Unchanged(record)) = outcome else {
            return Ok(outcome);
        };
        Ok(Outcome::Rejected { record, reason })
    };
    if meta.len() > MAX_RESULT_FILE_BYTES {
        return reject(format!(
            "{}: {} bytes, over the limit of {MAX_RESULT_FILE_BYTES}",
            file.display(),
            meta.len()
        ));
    }
    let bytes = std::fs::read(file).map_err(io_err(file, "reading"))?;
    let limits = mw_bundle::Limits {
        max_total_bytes: MAX_RESULT_FILE_BYTES * 4,
        max_entries: 10_000,
        max_manifest_bytes: 1024 * 1024,
    };
    let bundle = match mw_bundle::open_in_memory(
        &bytes,
        &file.display().to_string(),
        Some(mw_bundle::BundleKind::Result),
        &limits,
    ) {
        Ok(b) => b,
        Err(e) => return reject(format!("not a valid result bundle: {e}")),
    };
    let Some(info) = bundle.manifest.result else {
        return reject("result bundle without a [result] table".into());
    };
    if !is_safe_name(&info.job) {
        return reject(format!(
            "job name {:?} is not [A-Za-z0-9_.-]{{1,128}}",
            info.job
        ));
    }
    let name = format!("result_{}_{}.tar.gz", info.job, info.task);
    match write_new(spool, &name, &bytes)? {
        Ok(outcome) => Ok(outcome),
        Err(_existing) => {
            let other = format!("conflict_{}_{}_wu{wu_id}.tar.gz", info.job, info.task);
            match write_new(spool, &other, &bytes)? {
                Ok(Outcome::Written(p) | Outcome::Unchanged(p)) => Ok(Outcome::Conflict(p)),
                Ok(o) => Ok(o),
                Err(existing) => Err(AssimilateError::Config(format!(
                    "{} exists with other content",
                    existing.display()
                ))),
            }
        }
    }
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
        match call {
            Call::Result { wu_id, files } => assimilate_result(&spool, wu_id, &files[0]),
            Call::Error {
                mask,
                wu_name,
                wu_id,
                batch,
            } => assimilate_error(&spool, mask, &wu_name, wu_id, batch),
        }
    });
    match outcome {
        Ok(Outcome::Written(p)) => (0, format!("wrote {}", p.display())),
        Ok(Outcome::Unchanged(p)) => (0, format!("{} already there, unchanged", p.display())),
        Ok(Outcome::Conflict(p)) => (
            0,
            format!(
                "warning: another result for this task was already spooled; kept this one as {}",
                p.display()
            ),
        ),
        Ok(Outcome::Rejected { record, reason }) => (
            0,
            format!(
                "rejected result ({reason}); recorded in {}",
                record.display()
            ),
        ),
        Err(e @ AssimilateError::Usage(_)) => (2, format!("error: {e}")),
        Err(e) => (1, format!("error (will be retried): {e}")),
    }
}
