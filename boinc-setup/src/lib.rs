//! `mw-boinc-setup`: installs mw as an app into an existing BOINC server project.
//!
//! Plan/apply design: [`plan`] inspects the project and computes the list of [`Action`]s
//! still needed (nothing when mw is already installed as asked); [`apply`] carries them out;
//! `--dry-run` only prints them. What gets installed (reference/boinc-server.md §0–§3, §8):
//! - `<app>` in `project.xml` (a surgical text insertion), then `bin/xadd`;
//! - `apps/<app>/<M.mm>/x86_64-pc-linux-gnu/` with the static `mw-worker` as
//!   `<app>_worker_<M.mm>_x86_64-pc-linux-gnu` (mode 0755) and a `version.xml` with
//!   `<main_program/>` and `<api_version>` (mmap channel), then `bin/update_versions --noconfirm`;
//!   with `--worker-for PLATFORM=PATH`, one such app version per platform ([`platforms`]);
//! - `templates/<app>_in` (program bundle + task bundle) and `templates/<app>_out` (result);
//! - `bin/mw-validator-init`, `bin/mw-validator-compare`, `bin/mw-assimilator`, and
//!   `script_validator` / `script_assimilator` daemons configured by program name only;
//! - `<one_result_per_host_per_wu>` when the quorum is above 1;
//! - the spool directory `mw_spool/` and the config file `mw_boinc.toml` ([`MwBoincConfig`]).
//!
//! This crate must never know about the master's journal or how tasks are run; it only lays
//! files out in a BOINC project and runs BOINC's own tools.

pub mod platforms;
pub mod xmltext;

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use xmltext::{find_all, find_element, indent_before, line_start_if_alone, mask_comments};

/// The only platform mw ships (the static worker).
pub const PLATFORM: &str = "x86_64-pc-linux-gnu";
/// `<api_version>` in version.xml: ≥ 6 makes the client use the `boinc_mmap_file` channel.
pub const API_VERSION: &str = "7.20.0";
/// Config file written at the project root, read by the assimilator and the master.
pub const CONFIG_FILE_NAME: &str = "mw_boinc.toml";
/// Spool directory (under the project root) the assimilator writes into.
pub const SPOOL_DIR_NAME: &str = "mw_spool";
/// Logical (open) name of the program bundle in the slot; equals
/// `mw_worker_runtime::boinc::LOGICAL_PROGRAM` (the worker resolves these names).
pub const PROGRAM_LOGICAL_NAME: &str = "mw_program";
/// Logical name of the task bundle in the slot.
pub const TASK_LOGICAL_NAME: &str = "mw_task";
/// Logical name of the result bundle the worker writes in the slot.
pub const RESULT_LOGICAL_NAME: &str = "mw_result";
/// Program name of the validator's init script in `bin/`.
pub const VALIDATOR_INIT_NAME: &str = "mw-validator-init";
/// Program name of the validator's compare script in `bin/`.
pub const VALIDATOR_COMPARE_NAME: &str = "mw-validator-compare";
/// Program name of the assimilator script in `bin/`.
pub const ASSIMILATOR_NAME: &str = "mw-assimilator";

/// Errors of planning or applying an installation.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The directory is not a BOINC project.
    #[error("{dir} is not a BOINC project directory: {reason}")]
    NotAProject {
        /// The directory given.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A bad option value.
    #[error("{0}")]
    BadOption(String),
    /// A file in the project cannot be edited as needed.
    #[error("{path}: {reason}")]
    Conflict {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An I/O error.
    #[error("{path}: {context}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A BOINC tool failed.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and output.
        reason: String,
    },
}

pub(crate) fn io_err(path: &Path, context: &str) -> impl FnOnce(std::io::Error) -> SetupError {
    let path = path.to_path_buf();
    let context = context.to_string();
    move |source| SetupError::Io {
        path,
        context,
        source,
    }
}

/// The config file `mw_boinc.toml` at the project root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MwBoincConfig {
    /// BOINC app name (`--appname` for create_work).
    pub app_name: String,
    /// App version directory name, `M.mm`.
    pub app_version: String,
    /// `version_num` = M*100 + mm.
    pub version_num: u32,
    /// Platform of the app version.
    pub platform: String,
    /// Absolute project root.
    pub project_dir: PathBuf,
    /// Absolute spool directory the assimilator writes into.
    pub spool_dir: PathBuf,
    /// Input template, relative to the project root (for `--wu_template`).
    pub input_template: String,
    /// Output template, relative to the project root (for `--result_template`).
    pub output_template: String,
    /// Open name of the program bundle (first input file).
    pub program_logical_name: String,
    /// Open name of the task bundle (second input file).
    pub task_logical_name: String,
    /// Open name of the result bundle (the one output file).
    pub result_logical_name: String,
    /// min_quorum / target_nresults in the input template.
    pub quorum: u32,
}

impl MwBoincConfig {
    /// Reads `<project>/mw_boinc.toml`.
    pub fn load(project_dir: &Path) -> Result<Self, SetupError> {
        let path = project_dir.join(CONFIG_FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path, "reading"))?;
        toml::from_str(&text).map_err(|e| SetupError::Conflict {
            path,
            reason: e.message().to_string(),
        })
    }

    /// The file's text.
    pub fn to_text(&self) -> Result<String, SetupError> {
        let body = toml::to_string(self)
            .map_err(|e| SetupError::BadOption(format!("cannot serialise config: {e}")))?;
        Ok(format!(
            "# Written by mw-boinc-setup; read by mw-assimilator and the mw master.\n{body}"
        ))
    }
}

/// Replication and resource values written into the input template.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateParams {
    /// min_quorum and target_nresults.
    pub quorum: u32,
    /// max_error_results.
    pub max_error_results: u32,
    /// rsc_fpops_est.
    pub rsc_fpops_est: f64,
    /// rsc_fpops_bound.
    pub rsc_fpops_bound: f64,
    /// rsc_memory_bound (bytes).
    pub rsc_memory_bound: f64,
    /// rsc_disk_bound (bytes).
    pub rsc_disk_bound: f64,
    /// delay_bound (seconds).
    pub delay_bound: u64,
    /// max_nbytes of the result file.
    pub max_nbytes: u64,
}

impl TemplateParams {
    /// Defaults for a quorum: 3 error results allowed, BOINC's resource defaults, 7 days.
    pub fn for_quorum(quorum: u32) -> Self {
        TemplateParams {
            quorum,
            max_error_results: 3,
            rsc_fpops_est: 3.6e12,
            rsc_fpops_bound: 8.64e13,
            rsc_memory_bound: 1e9,
            rsc_disk_bound: 2e9,
            delay_bound: 7 * 24 * 3600,
            max_nbytes: 256 * 1024 * 1024,
        }
    }

    /// max_success_results: the quorum, plus 2 spare for inconclusive sets when redundant.
    pub fn max_success_results(&self) -> u32 {
        if self.quorum > 1 {
            self.quorum + 2
        } else {
            1
        }
    }

    /// max_total_results: successes plus the allowed errors.
    pub fn max_total_results(&self) -> u32 {
        self.max_success_results() + self.max_error_results
    }
}

/// The input template: two files (program bundle, task bundle), all values explicit. The
/// program bundle is shared by every workunit of a job: `<no_delete/>` keeps BOINC's file
/// deleter from removing it when the first workunit is done, `<sticky/>` keeps it on hosts.
pub fn input_template(p: &TemplateParams) -> String {
    format!(
        "<input_template>
    <file_info>
        <sticky/>
        <no_delete/>
    </file_info>
    <file_info>
    </file_info>
    <workunit>
        <file_ref>
            <open_name>{PROGRAM_LOGICAL_NAME}</open_name>
        </file_ref>
        <file_ref>
            <open_name>{TASK_LOGICAL_NAME}</open_name>
        </file_ref>
        <min_quorum>{q}</min_quorum>
        <target_nresults>{q}</target_nresults>
        <max_error_results>{me}</max_error_results>
        <max_total_results>{mt}</max_total_results>
        <max_success_results>{ms}</max_success_results>
        <rsc_fpops_est>{fe:e}</rsc_fpops_est>
        <rsc_fpops_bound>{fb:e}</rsc_fpops_bound>
        <rsc_memory_bound>{mem:e}</rsc_memory_bound>
        <rsc_disk_bound>{disk:e}</rsc_disk_bound>
        <delay_bound>{db}</delay_bound>
    </workunit>
</input_template>
",
        q = p.quorum,
        me = p.max_error_results,
        mt = p.max_total_results(),
        ms = p.max_success_results(),
        fe = p.rsc_fpops_est,
        fb = p.rsc_fpops_bound,
        mem = p.rsc_memory_bound,
        disk = p.rsc_disk_bound,
        db = p.delay_bound,
    )
}

/// The output template: one result file, uploaded, with an explicit max_nbytes.
pub fn output_template(p: &TemplateParams) -> String {
    format!(
        "<output_template>
    <file_info>
        <name><OUTFILE_0/></name>
        <generated_locally/>
        <upload_when_present/>
        <max_nbytes>{max}</max_nbytes>
        <url><UPLOAD_URL/></url>
    </file_info>
    <result>
        <file_ref>
            <file_name><OUTFILE_0/></file_name>
            <open_name>{RESULT_LOGICAL_NAME}</open_name>
        </file_ref>
    </result>
</output_template>
",
        max = p.max_nbytes
    )
}

/// version.xml for the worker.
pub fn version_xml(physical_name: &str) -> String {
    format!(
        "<version>
    <file>
        <physical_name>{physical_name}</physical_name>
        <main_program/>
    </file>
    <api_version>{API_VERSION}</api_version>
</version>
"
    )
}

/// The `<cmd>` of the validator daemon (program names only, §0.1).
pub fn validator_cmd(app: &str) -> String {
    format!(
        "script_validator -d 3 --app {app} --init_script {VALIDATOR_INIT_NAME} \
         --compare_script {VALIDATOR_COMPARE_NAME}"
    )
}

/// The `<cmd>` of the assimilator daemon.
pub fn assimilator_cmd(app: &str) -> String {
    format!("script_assimilator -d 3 --app {app} --script {ASSIMILATOR_NAME}")
}

/// True when every byte is in `[A-Za-z0-9_.,:=/+-]` (nothing `/bin/sh` interprets).
pub fn is_shell_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'_' | b'.' | b',' | b':' | b'=' | b'/' | b'+' | b'-')
        })
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Project root.
    pub project_dir: PathBuf,
    /// App name.
    pub app_name: String,
    /// App version `M.mm`.
    pub app_version: String,
    /// The static mw-worker to install (for `x86_64-pc-linux-gnu`, when
    /// `platform_workers` is empty).
    pub worker: PathBuf,
    /// One worker per BOINC platform (`--worker-for`); each gets its own app version.
    pub platform_workers: Vec<platforms::PlatformWorker>,
    /// The mw-validator binary (installed under two names).
    pub validator: PathBuf,
    /// The mw-assimilator binary.
    pub assimilator: PathBuf,
    /// Quorum (1 = no redundancy).
    pub quorum: u32,
}

/// Where a file's new content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Literal bytes.
    Bytes(Vec<u8>),
    /// A copy of another file.
    CopyOf(PathBuf),
}

/// One change to the project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a directory (and its parents).
    CreateDir(PathBuf),
    /// Create or replace a file (atomically, through a temporary file).
    WriteFile {
        /// Destination.
        path: PathBuf,
        /// New content.
        content: Content,
        /// Unix mode.
        mode: u32,
        /// What this is, for the plan listing.
        why: String,
    },
    /// Run a BOINC tool from the project root.
    Run {
        /// Program, relative to the project root (e.g. `bin/xadd`).
        program: String,
        /// Arguments.
        args: Vec<String>,
        /// Why.
        why: String,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::CreateDir(p) => write!(f, "create directory {}", p.display()),
            Action::WriteFile {
                path,
                content,
                mode,
                why,
            } => {
                let verb = if path.exists() { "update" } else { "create" };
                match content {
                    Content::Bytes(b) => write!(
                        f,
                        "{verb} {} ({why}; {} bytes, mode {mode:o})",
                        path.display(),
                        b.len()
                    ),
                    Content::CopyOf(src) => write!(
                        f,
                        "{verb} {} ({why}; copy of {}, mode {mode:o})",
                        path.display(),
                        src.display()
                    ),
                }
            }
            Action::Run { program, args, why } => {
                write!(f, "run `{program}")?;
                for a in args {
                    write!(f, " {a}")?;
                }
                write!(f, "` from the project root ({why})")
            }
        }
    }
}

/// The computed installation: actions still to do, and warnings.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Changes, in the order they must be applied.
    pub actions: Vec<Action>,
    /// Things the user should know (not errors).
    pub warnings: Vec<String>,
}

fn check_options(o: &Options) -> Result<u32, SetupError> {
    let app = &o.app_name;
    let ok_app = app.len() <= 32
        && app.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && app
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok_app {
        return Err(SetupError::BadOption(format!(
            "app name {app:?} must be 1-32 characters [a-z0-9_] starting with a letter"
        )));
    }
    let v = &o.app_version;
    let version_num = match v.split_once('.') {
        Some((m, mm))
            if !m.is_empty()
                && m.len() <= 4
                && mm.len() == 2
                && m.bytes().all(|b| b.is_ascii_digit())
                && mm.bytes().all(|b| b.is_ascii_digit()) =>
        {
            m.parse::<u32>().unwrap_or(0) * 100 + mm.parse::<u32>().unwrap_or(0)
        }
        _ => {
            return Err(SetupError::BadOption(format!(
                "app version {v:?} must look like M.mm (e.g. 1.00)"
            )))
        }
    };
    if version_num == 0 {
        return Err(SetupError::BadOption(
            "app version must be above 0.00".into(),
        ));
    }
    if !(1..=20).contains(&o.quorum) {
        return Err(SetupError::BadOption(format!(
            "quorum {} must be between 1 and 20",
            o.quorum
        )));
    }
    Ok(version_num)
}

fn check_project(dir: &Path) -> Result<PathBuf, SetupError> {
    let not = |reason: String| SetupError::NotAProject {
        dir: dir.to_path_buf(),
        reason,
    };
    if !dir.is_dir() {
        return Err(not("no such directory".into()));
    }
    for f in ["config.xml", "project.xml"] {
        if !dir.join(f).is_file() {
            return Err(not(format!(
                "no {f} (make the project with BOINC's tools/make_project first)"
            )));
        }
    }
    if !dir.join("bin").is_dir() {
        return Err(not("no bin/ directory".into()));
    }
    dir.canonicalize().map_err(io_err(dir, "resolving"))
}

/// Whether the ELF file at `path` is statically linked (no PT_INTERP). `None` if not ELF64.
pub fn elf_is_static(bytes: &[u8]) -> Option<bool> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| -> Option<u64> {
        Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?) as u64)
    };
    let phoff = u64::from_le_bytes(bytes.get(0x20..0x28)?.try_into().ok()?);
    let phentsize = u16_at(0x36)?;
    let phnum = u16_at(0x38)?;
    for i in 0..phnum {
        let off = usize::try_from(phoff.checked_add(i.checked_mul(phentsize)?)?).ok()?;
        let p_type = u32::from_le_bytes(bytes.get(off..off + 4)?.try_into().ok()?);
        if p_type == 3 {
            return Some(false);
        }
    }
    Some(true)
}

fn short_host_name() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| {
            std::process::Command::new("hostname")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        })?;
    let name = raw.trim().split('.').next()?.to_string();
    (!name.is_empty()).then_some(name)
}

fn read_text(path: &Path) -> Result<String, SetupError> {
    std::fs::read_to_string(path).map_err(io_err(path, "reading"))
}

/// Whether `path` already holds `content` with the executable bit as `mode` wants.
pub(crate) fn file_matches(path: &Path, content: &Content, mode: u32) -> Result<bool, SetupError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(path, "reading")(e)),
    };
    if (meta.permissions().mode() & 0o100 != 0) != (mode & 0o100 != 0) {
        return Ok(false);
    }
    let existing = std::fs::read(path).map_err(io_err(path, "reading"))?;
    Ok(match content {
        Content::Bytes(b) => &existing == b,
        Content::CopyOf(src) => existing == std::fs::read(src).map_err(io_err(src, "reading"))?,
    })
}

/// Adds `<app>` to project.xml's text if missing; `None` when already there.
pub fn edit_project_xml(text: &str, app: &str) -> Result<Option<String>, String> {
    let masked = mask_comments(text);
    let boinc = find_element(&masked, "boinc", 0, masked.len()).ok_or("no <boinc> element")?;
    for e in find_all(&masked, "app", boinc.content_start, boinc.content_end) {
        if xmltext::child_text(text, &masked, e, "name") == Some(app) {
            return Ok(None);
        }
    }
    let at = line_start_if_alone(text, boinc.content_end);
    let base = indent_before(text, boinc.content_end).unwrap_or("");
    let i1 = format!("{base}    ");
    let i2 = format!("{i1}    ");
    let lead = if at == boinc.content_end { "\n" } else { "" };
    let block = format!(
        "{lead}{i1}<app>\n{i2}<name>{app}</name>\n{i2}<user_friendly_name>mw tasks</user_friendly_name>\n{i1}</app>\n"
    );
    let mut out = String::with_capacity(text.len() + block.len());
    out.push_str(&text[..at]);
    out.push_str(&block);
    out.push_str(&text[at..]);
    Ok(Some(out))
}

/// What [`edit_config_xml`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigEdit {
    /// The new text, when anything changed.
    pub new_text: Option<String>,
    /// One line per change.
    pub changes: Vec<String>,
    /// `<host>` in `<config>`, if any.
    pub host: Option<String>,
    /// Warnings (e.g. another validator configured for the app).
    pub warnings: Vec<String>,
}

struct DaemonSpec {
    program: &'static str,
    cmd: String,
    output: String,
    pid_file: String,
}

fn daemon_specs(app: &str) -> [DaemonSpec; 2] {
    [
        DaemonSpec {
            program: "script_validator",
            cmd: validator_cmd(app),
            output: format!("script_validator_{app}.log"),
            pid_file: format!("script_validator_{app}.pid"),
        },
        DaemonSpec {
            program: "script_assimilator",
            cmd: assimilator_cmd(app),
            output: format!("script_assimilator_{app}.log"),
            pid_file: format!("script_assimilator_{app}.pid"),
        },
    ]
}

fn cmd_app(cmd: &str) -> Option<&str> {
    let toks: Vec<&str> = cmd.split_whitespace().collect();
    toks.windows(2)
        .find(|w| w[0] == "--app" || w[0] == "-app")
        .map(|w| w[1])
}

/// Edits config.xml's text: mw's two daemons, and `<one_result_per_host_per_wu>` when
/// `quorum > 1`. Everything else is kept byte for byte.
pub fn edit_config_xml(text: &str, app: &str, quorum: u32) -> Result<ConfigEdit, String> {
    let mut edit = ConfigEdit::default();
    let mut text = text.to_string();
    // 1. <config>: host, one_result_per_host_per_wu.
    {
        let masked = mask_comments(&text);
        let boinc = find_element(&masked, "boinc", 0, masked.len()).ok_or("no <boinc> element")?;
        let config = find_element(&masked, "config", boinc.content_start, boinc.content_end)
            .ok_or("no <config> element inside <boinc>")?;
        edit.host = xmltext::child_text(&text, &masked, config, "host").map(str::to_string);
        if quorum > 1 {
            let name = "one_result_per_host_per_wu";
            match find_element(&masked, name, config.content_start, config.content_end) {
                Some(e) if e.content_start == e.end => {}
                Some(e) => {
                    let v = text[e.content_start..e.content_end].trim().to_string();
                    if v.parse::<f64>().map(|x| x <= 0.0).unwrap_or(true) {
                        text.replace_range(e.content_start..e.content_end, "1");
                        edit.changes.push(format!("set <{name}> to 1 (was {v:?})"));
                    }
                }
                None => {
                    let at = line_start_if_alone(&text, config.content_end);
                    let base = indent_before(&text, config.content_end).unwrap_or("");
                    let lead = if at == config.content_end { "\n" } else { "" };
                    let line = format!("{lead}{base}  <{name}>1</{name}>\n");
                    text.insert_str(at, &line);
                    edit.changes
                        .push(format!("add <{name}>1</{name}> to <config>"));
                }
            }
        }
    }
    // 2. <daemons>.
    for spec in daemon_specs(app) {
        let masked = mask_comments(&text);
        let boinc = find_element(&masked, "boinc", 0, masked.len()).ok_or("no <boinc> element")?;
        let daemons = match find_element(&masked, "daemons", boinc.content_start, boinc.content_end)
        {
            Some(d) if d.content_start != d.end => d,
            Some(d) => {
                // <daemons/>: expand it.
                text.replace_range(d.start..d.end, "<daemons>\n  </daemons>");
                edit.changes.push("expand <daemons/>".into());
                continue_with_fresh(&text)?
            }
            None => {
                let at = line_start_if_alone(&text, boinc.content_end);
                let base = indent_before(&text, boinc.content_end).unwrap_or("");
                let lead = if at == boinc.content_end { "\n" } else { "" };
                text.insert_str(
                    at,
                    &format!("{lead}{base}  <daemons>\n{base}  </daemons>\n"),
                );
                edit.changes.push("add a <daemons> section".into());
                continue_with_fresh(&text)?
            }
        };
        let masked = mask_comments(&text);
        let base = indent_before(&text, daemons.content_end)
            .unwrap_or("")
            .to_string();
        let (i1, i2) = (format!("{base}  "), format!("{base}    "));
        let block = format!(
            "{i1}<daemon>\n{i2}<cmd>{}</cmd>\n{i2}<output>{}</output>\n{i2}<pid_file>{}</pid_file>\n{i1}</daemon>\n",
            spec.cmd, spec.output, spec.pid_file
        );
        let mut ours = None;
        for d in find_all(
            &masked,
            "daemon",
            daemons.content_start,
            daemons.content_end,
        ) {
            let Some(cmd) = xmltext::child_text(&text, &masked, d, "cmd") else {
                continue;
            };
            let prog = cmd.split_whitespace().next().unwrap_or("");
            let prog = prog.rsplit('/').next().unwrap_or(prog);
            if cmd_app(cmd) != Some(app) {
                continue;
            }
            if prog == spec.program {
                ours = Some(d);
            } else if prog.contains("validator") && spec.program == "script_validator" {
                edit.warnings.push(format!(
                    "config.xml already runs `{cmd}` for app {app}: two validators for one app \
                     compete; disable one"
                ));
            } else if prog.contains("assimilator") && spec.program == "script_assimilator" {
                edit.warnings.push(format!(
                    "config.xml already runs `{cmd}` for app {app}: two assimilators for one app \
                     compete; disable one"
                ));
            }
        }
        match ours {
            Some(d) => {
                let same = xmltext::child_text(&text, &masked, d, "cmd") == Some(spec.cmd.as_str())
                    && xmltext::child_text(&text, &masked, d, "output")
                        == Some(spec.output.as_str())
                    && xmltext::child_text(&text, &masked, d, "pid_file")
                        == Some(spec.pid_file.as_str())
                    && find_element(&masked, "disabled", d.content_start, d.content_end).is_none();
                if !same {
                    let at = line_start_if_alone(&text, d.start);
                    let mut end = d.end;
                    if text[end..].starts_with('\n') {
                        end += 1;
                    }
                    text.replace_range(at..end, &block);
                    edit.changes
                        .push(format!("replace the {} daemon for {app}", spec.program));
                }
            }
            None => {
                let at = line_start_if_alone(&text, daemons.content_end);
                let lead = if at == daemons.content_end { "\n" } else { "" };
                text.insert_str(at, &format!("{lead}{block}"));
                edit.changes
                    .push(format!("add daemon `{}` (log {})", spec.cmd, spec.output));
            }
        }
    }
    if !edit.changes.is_empty() {
        edit.new_text = Some(text);
    }
    Ok(edit)
}

fn continue_with_fresh(text: &str) -> Result<xmltext::Element, String> {
    let masked = mask_comments(text);
    let boinc = find_element(&masked, "boinc", 0, masked.len()).ok_or("no <boinc> element")?;
    find_element(&masked, "daemons", boinc.content_start, boinc.content_end)
        .ok_or_else(|| "could not create <daemons>".to_string())
}

/// Queues a file write unless the file already matches; says whether it queued one.
pub(crate) fn push_write(
    plan: &mut Plan,
    path: PathBuf,
    content: Content,
    mode: u32,
    why: &str,
) -> Result<bool, SetupError> {
    let matches = file_matches(&path, &content, mode)?;
    if !matches {
        plan.actions.push(Action::WriteFile {
            path,
            content,
            mode,
            why: why.to_string(),
        });
    }
    Ok(!matches)
}

/// Computes what is still to be done.
pub fn plan(o: &Options) -> Result<Plan, SetupError> {
    let version_num = check_options(o)?;
    let root = check_project(&o.project_dir)?;
    let app = o.app_name.as_str();
    let ver = o.app_version.as_str();
    let mut plan = Plan::default();
    let workers = if o.platform_workers.is_empty() {
        vec![platforms::PlatformWorker {
            platform: PLATFORM.to_string(),
            worker: o.worker.clone(),
        }]
    } else {
        o.platform_workers.clone()
    };
    let worker_files = workers.iter().map(|w| ("worker", &w.worker));
    for (what, p) in
        worker_files.chain([("validator", &o.validator), ("assimilator", &o.assimilator)])
    {
        if !p.is_file() {
            return Err(SetupError::BadOption(format!(
                "the {what} binary {} does not exist",
                p.display()
            )));
        }
    }

    let params = TemplateParams::for_quorum(o.quorum);
    let config = MwBoincConfig {
        app_name: app.to_string(),
        app_version: ver.to_string(),
        version_num,
        platform: PLATFORM.to_string(),
        project_dir: root.clone(),
        spool_dir: root.join(SPOOL_DIR_NAME),
        input_template: format!("templates/{app}_in"),
        output_template: format!("templates/{app}_out"),
        program_logical_name: PROGRAM_LOGICAL_NAME.into(),
        task_logical_name: TASK_LOGICAL_NAME.into(),
        result_logical_name: RESULT_LOGICAL_NAME.into(),
        quorum: o.quorum,
    };
    let config_text = config.to_text()?;
    let config_path = root.join(CONFIG_FILE_NAME);
    let config_current =
        std::fs::read_to_string(&config_path).ok().as_deref() == Some(&config_text);
    // project.xml + xadd.
    let project_xml = root.join("project.xml");
    let px = read_text(&project_xml)?;
    let px_new = edit_project_xml(&px, app).map_err(|reason| SetupError::Conflict {
        path: project_xml.clone(),
        reason,
    })?;
    let px_changed = px_new.is_some();
    if let Some(new) = px_new {
        push_write(
            &mut plan,
            project_xml,
            Content::Bytes(new.into_bytes()),
            0o644,
            "add <app> for mw",
        )?;
    }
    if px_changed || !config_current {
        plan.actions.push(Action::Run {
            program: "bin/xadd".into(),
            args: vec![],
            why: "register the app in the database".into(),
        });
    }

    // App versions, one per platform (platforms.rs).
    let mut versions_changed = false;
    for w in &workers {
        versions_changed |= platforms::plan_app_version(&mut plan, &root, app, ver, w)?;
    }
    if versions_changed || !config_current {
        plan.actions.push(Action::Run {
            program: "bin/update_versions".into(),
            args: vec!["--noconfirm".into()],
            why: "register the app version".into(),
        });
    }

    // Templates.
    let tdir = root.join("templates");
    if !tdir.is_dir() {
        plan.actions.push(Action::CreateDir(tdir.clone()));
    }
    push_write(
        &mut plan,
        root.join(&config.input_template),
        Content::Bytes(input_template(&params).into_bytes()),
        0o644,
        "input template",
    )?;
    push_write(
        &mut plan,
        root.join(&config.output_template),
        Content::Bytes(output_template(&params).into_bytes()),
        0o644,
        "output template",
    )?;

    // Programs in bin/.
    let bin = root.join("bin");
    push_write(
        &mut plan,
        bin.join(VALIDATOR_INIT_NAME),
        Content::CopyOf(o.validator.clone()),
        0o755,
        "validator, init mode",
    )?;
    push_write(
        &mut plan,
        bin.join(VALIDATOR_COMPARE_NAME),
        Content::CopyOf(o.validator.clone()),
        0o755,
        "validator, compare mode",
    )?;
    push_write(
        &mut plan,
        bin.join(ASSIMILATOR_NAME),
        Content::CopyOf(o.assimilator.clone()),
        0o755,
        "assimilator",
    )?;

    // config.xml.
    let config_xml = root.join("config.xml");
    let cx = read_text(&config_xml)?;
    let ce = edit_config_xml(&cx, app, o.quorum).map_err(|reason| SetupError::Conflict {
        path: config_xml.clone(),
        reason,
    })?;
    plan.warnings.extend(ce.warnings.iter().cloned());
    match (&ce.host, short_host_name()) {
        (Some(h), Some(me)) if *h != me => plan.warnings.push(format!(
            "config.xml <host> is {h:?} but this machine is {me:?}: bin/start starts no daemon \
             unless <host> equals `hostname -s`"
        )),
        (None, _) => plan
            .warnings
            .push("config.xml has no <host>: bin/start may start no daemon".into()),
        _ => {}
    }
    if let Some(new) = ce.new_text {
        push_write(
            &mut plan,
            config_xml,
            Content::Bytes(new.into_bytes()),
            0o644,
            &ce.changes.join("; "),
        )?;
    }

    // Spool and config file (last: its presence marks a complete installation).
    let spool = root.join(SPOOL_DIR_NAME);
    if !spool.is_dir() {
        plan.actions.push(Action::CreateDir(spool));
    }
    if !config_current {
        plan.actions.push(Action::WriteFile {
            path: config_path,
            content: Content::Bytes(config_text.into_bytes()),
            mode: 0o644,
            why: "mw's BOINC config (app, spool, templates)".into(),
        });
    }
    Ok(plan)
}

fn write_atomic(path: &Path, content: &Content, mode: u32) -> Result<(), SetupError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".mw-setup-")
        .tempfile_in(dir)
        .map_err(io_err(dir, "creating a temporary file"))?;
    match content {
        Content::Bytes(b) => tmp.write_all(b).map_err(io_err(path, "writing"))?,
        Content::CopyOf(src) => {
            let mut f = std::fs::File::open(src).map_err(io_err(src, "reading"))?;
            std::io::copy(&mut f, tmp.as_file_mut()).map_err(io_err(path, "writing"))?;
        }
    }
    // Keep an existing file's mode bits beyond the ones we decide (e.g. group write).
    let mode = match std::fs::metadata(path) {
        Ok(m) if mode & 0o100 == 0 => m.permissions().mode() & 0o7777 & !0o111,
        _ => mode,
    };
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err(path, "setting permissions"))?;
    tmp.as_file().sync_all().map_err(io_err(path, "syncing"))?;
    tmp.persist(path)
        .map_err(|e| io_err(path, "renaming into place")(e.error))?;
    Ok(())
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
            } => write_atomic(path, content, *mode)?,
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
