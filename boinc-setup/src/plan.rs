//! What an installation still needs: [`plan`] inspects the project and lists the
//! [`Action`]s to carry out (nothing when mw is already installed as asked). It must never
//! change the project (that is [`crate::apply()`]).

use crate::edit::{edit_config_xml, edit_project_xml};
use crate::{io_err, Options, SetupError, PLATFORM};
use mw_boinc_kit::names::{
    ASSIMILATOR_NAME, CONFIG_FILE_NAME, PROGRAM_LOGICAL_NAME, RESULT_LOGICAL_NAME, SPOOL_DIR_NAME,
    TASK_LOGICAL_NAME, VALIDATOR_COMPARE_NAME, VALIDATOR_INIT_NAME,
};
use mw_boinc_kit::template::{
    input_template, installed_input_template, installed_output_template, output_template,
    TemplateParams,
};
use mw_boinc_kit::MwBoincConfig;
use std::path::{Path, PathBuf};

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
    /// Copy a project file aside before it is edited (same mode bits: config.xml holds the
    /// database password).
    Backup {
        /// The file about to be edited.
        from: PathBuf,
        /// The copy: `<name>.mw-backup-<UTC time>` ([`backup_path`]).
        to: PathBuf,
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
            Action::Backup { from, to } => write!(
                f,
                "back up {} to {} (before editing it)",
                from.display(),
                to.display()
            ),
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
    TemplateParams::for_quorum(o.quorum)
        .check()
        .map_err(|e| SetupError::BadOption(e.to_string()))?;
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

/// Whether the ELF file in `bytes` is statically linked (no PT_INTERP). `None` if not ELF64
/// (read by `mw_worker_runtime::static_worker`, the one home of that check).
pub fn elf_is_static(bytes: &[u8]) -> Option<bool> {
    use mw_worker_runtime::static_worker::{linkage, Linkage};
    match linkage(bytes) {
        Linkage::Static => Some(true),
        Linkage::Dynamic { .. } => Some(false),
        Linkage::Other => None,
    }
}

/// Where a backup of `file` goes before it is edited: `<file>.mw-backup-<UTC time>`
/// (e.g. `config.xml.mw-backup-20260124T101500Z`), with `-2`, `-3`, ... appended when a
/// backup of that second exists; every earlier backup is kept.
pub fn backup_path(file: &Path) -> PathBuf {
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = file.with_file_name(format!("{name}.mw-backup-{stamp}"));
    let mut candidate = base.clone();
    let mut n = 2u32;
    while std::fs::symlink_metadata(&candidate).is_ok() && n < 10_000 {
        candidate = file.with_file_name(format!("{name}.mw-backup-{stamp}-{n}"));
        n += 1;
    }
    candidate
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
    // Every worker that becomes an app version (each is checked against its platform's
    // executable format when its version is planned), and the two server programs.
    let workers: Vec<_> = o.app_versions().into_iter().map(|w| w.worker).collect();
    let binaries = workers
        .iter()
        .map(|w| ("worker", w))
        .chain([("validator", &o.validator), ("assimilator", &o.assimilator)]);
    for (what, p) in binaries {
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
        input_template: installed_input_template(app),
        output_template: installed_output_template(app),
        program_logical_name: PROGRAM_LOGICAL_NAME.into(),
        task_logical_name: TASK_LOGICAL_NAME.into(),
        result_logical_name: RESULT_LOGICAL_NAME.into(),
        quorum: o.quorum,
        max_output_bytes: o.max_output_bytes,
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

    // App version: one directory per platform (today only the static Linux worker).
    let mut version_changed = false;
    for pw in o.app_versions() {
        version_changed |= crate::platforms::plan_app_version(&mut plan, &root, app, ver, &pw)?;
    }
    if version_changed || !config_current {
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
    for (path, text, what) in [
        (
            &config.input_template,
            input_template(&params),
            "input template",
        ),
        (
            &config.output_template,
            output_template(&params),
            "output template",
        ),
    ] {
        push_write(
            &mut plan,
            root.join(path),
            Content::Bytes(text.into_bytes()),
            0o644,
            what,
        )?;
    }

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
        let at = plan.actions.len();
        let to = backup_path(&config_xml);
        if push_write(
            &mut plan,
            config_xml.clone(),
            Content::Bytes(new.into_bytes()),
            0o644,
            &ce.changes.join("; "),
        )? {
            plan.actions.insert(
                at,
                Action::Backup {
                    from: config_xml,
                    to,
                },
            );
        }
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
