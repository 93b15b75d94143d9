//! `mw-boinc-setup`: installs mw as an app into an existing BOINC server project.
//!
//! Plan/apply design: [`plan()`] inspects the project and computes the list of [`Action`]s
//! still needed (nothing when mw is already installed as asked); [`apply()`] carries them out;
//! `--dry-run` only prints them. What gets installed (reference/boinc-server.md §0–§3, §8):
//! - `<app>` in `project.xml` (a surgical text insertion, [`edit`]), then `bin/xadd`;
//! - `apps/<app>/<M.mm>/<platform>/` with the static `mw-worker` as
//!   `<app>_worker_<M.mm>_<platform>` (mode 0755) and a `version.xml` with
//!   `<main_program/>` and `<api_version>` (mmap channel), then `bin/update_versions --noconfirm`;
//! - `templates/<app>_in` (program bundle + task bundle) and `templates/<app>_out` (result),
//!   rendered by `mw_boinc_kit::template`;
//! - `bin/mw-validator-init`, `bin/mw-validator-compare`, `bin/mw-assimilator`, and
//!   `script_validator` / `script_assimilator` daemons configured by program name only;
//! - `<one_result_per_host_per_wu>` when the quorum is above 1; before config.xml is edited,
//!   a copy with its mode is kept as `config.xml.mw-backup-<UTC time>` ([`backup_path`]);
//! - the spool directory `mw_spool/` and the config file `mw_boinc.toml` ([`MwBoincConfig`]).
//!
//! Every name and file format it writes comes from `mw_boinc_kit`. Modules: [`mod@plan`] (what is
//! still needed), [`edit`] (surgical edits of project.xml and config.xml), [`render`] (the
//! files it generates besides the templates), [`mod@apply`] (carrying a plan out), [`xmltext`].
//!
//! This crate must never know about the master's journal or how tasks are run; it only lays
//! files out in a BOINC project and runs BOINC's own tools.

pub mod apply;
pub mod edit;
pub mod plan;
pub mod platforms;
pub mod render;
pub mod xmltext;

pub use apply::apply;
pub use edit::{edit_config_xml, edit_project_xml, ConfigEdit};
pub use mw_boinc_kit::names::{
    API_VERSION, ASSIMILATOR_NAME, CONFIG_FILE_NAME, PROGRAM_LOGICAL_NAME, RESULT_LOGICAL_NAME,
    SPOOL_DIR_NAME, TASK_LOGICAL_NAME, VALIDATOR_COMPARE_NAME, VALIDATOR_INIT_NAME,
};
pub use mw_boinc_kit::template::{input_template, output_template, TemplateParams};
pub use mw_boinc_kit::MwBoincConfig;
pub use plan::{backup_path, elf_is_static, plan, Action, Content, Plan};
pub use render::{assimilator_cmd, validator_cmd, version_xml};

use std::path::{Path, PathBuf};

/// The platform of the worker mw installs by default (the static Linux worker).
pub const PLATFORM: &str = mw_boinc_kit::names::LINUX_X86_64;

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
    #[error(transparent)]
    Io(#[from] mw_boinc_kit::FileError),
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
    mw_boinc_kit::io_err(path, context)
}

impl From<mw_boinc_kit::ConfigError> for SetupError {
    fn from(e: mw_boinc_kit::ConfigError) -> Self {
        match e {
            mw_boinc_kit::ConfigError::Io { path, source } => {
                SetupError::Io(mw_boinc_kit::FileError {
                    path,
                    context: "reading".into(),
                    source,
                })
            }
            mw_boinc_kit::ConfigError::Invalid { path, reason } => {
                SetupError::Conflict { path, reason }
            }
        }
    }
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
    /// The largest result the validator and assimilator accept (`max_output_bytes` in
    /// `mw_boinc.toml`); none: the master's default output limit.
    pub max_output_bytes: Option<u64>,
}

impl Options {
    /// The app versions to install, one per platform: the `--worker-for` workers, or the
    /// static Linux worker alone.
    pub fn app_versions(&self) -> Vec<platforms::PlatformWorker> {
        if self.platform_workers.is_empty() {
            vec![platforms::PlatformWorker {
                platform: PLATFORM.to_string(),
                worker: self.worker.clone(),
            }]
        } else {
            self.platform_workers.clone()
        }
    }
}
