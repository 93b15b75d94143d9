//! The BOINC interface: runs tasks as workunits of a BOINC server project on this host, into
//! which `mw-boinc-setup` installed mw (reference/boinc-server.md §0, §3, §4, §8).
//!
//! - **Staging.** The program bundle is staged once (content-addressed physical name
//!   `mw_prog_<sha256 prefix>.tar.gz`), each task bundle as `<wu_name>_task.tar.gz`, both under
//!   the download hierarchy `download/<h>/` with BOINC's md5 fanout ([`dir_hier_path`],
//!   `uldl_dir_fanout` read from config.xml) and a `<file>.md5` cache file
//!   (`"<md5> <nbytes as %e>"`, as `create_work` writes it). Files are immutable by name: an
//!   existing file with other content is an error, never overwritten.
//! - **Workunits.** Named `mw_<job>_<task>_<attempt>` ([`wu_name`]; only `[A-Za-z0-9_.-]`,
//!   validated before use) and recorded through the master's [`HandleSink`]. A submit thread
//!   creates them in batches with ONE `bin/create_work --appname APP --wu_template T
//!   --result_template R --stdin` per batch, run from the project root (no shell; every
//!   argument and stdin token is still validated shell-safe), one stdin line per job:
//!   `--wu_name W PROGRAM_FILE TASK_FILE`. create_work accepts no per-line quorum options, so
//!   a job's quorum/replication/deadline go into its own input template
//!   `templates/<app>_in_q<Q>_r<R>_d<D>` passed as the batch's `--wu_template`. That template
//!   also marks the shared program bundle `<no_delete/>`: BOINC's file_deleter removes a
//!   finished workunit's input files, which would break the other workunits that share it.
//! - **Outcomes.** `mw-assimilator` spools the canonical result as
//!   `<spool>/result_<job>_<task>.tar.gz` and a failed workunit as `error_<wu_name>.toml`.
//!   A watcher thread (inotify through `notify`, plus a polling fallback for file systems
//!   that deliver no events) turns them into completions and removes each spool file right
//!   after its outcome has been handed to the master. (A crash in the instant between the two
//!   loses that result; the task is then re-run by `mw resume`.)
//! - **Re-attach.** A resumed master just waits again for the task's spool files: results
//!   assimilated while no master ran are already in the spool.
//! - **Cancel.** Runs `bin/cancel_jobs --name <wu_name>` from the project root. On a real
//!   server that tool sets the workunit's CANCELLED error bit (16) and marks its unsent
//!   results over (`tools/cancel_jobs.cpp`); the transitioner and assimilator then report the
//!   workunit with `--error 16`. The test double's `cancel_jobs` marks the stored workunit
//!   cancelled and its loop assimilates it with mask 16 the same way. The task's completion is
//!   reported at once as cancelled; the later `error_<wu>.toml` is removed when it appears.
//!   A task cancelled while its `create_work` batch is under way is cancelled with
//!   `cancel_jobs` right after that call returns (before it, BOINC knows no such workunit);
//!   shutdown waits for a batch under way so that this is never skipped.
//!
//! This module never knows about the journal (only the handle sink), the CLI, or BOINC's
//! database; everything it does to the project goes through BOINC's own tools and files.

use crate::interface::{Completion, HandleSink, Interface};
use crate::task::{Execution, InterfaceError, PreparedTask, TaskId, WorkerId};
use md5::{Digest, Md5};
use mw_boinc_setup::{MwBoincConfig, TemplateParams};
use notify::Watcher as _;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Errors setting up the BOINC interface.
#[derive(Debug, thiserror::Error)]
#[error("BOINC interface: {0}")]
pub struct BoincError(pub String);

/// BOINC workunit error-mask bits (`db/boinc_db_types.h`), as the assimilator names them.
pub use mw_assimilator::WU_ERROR_BITS;

/// Default number of workunits per `create_work --stdin` call.
pub const DEFAULT_BATCH_SIZE: usize = 1000;
/// How often the spool is re-read when no inotify event arrives.
pub const POLL_INTERVAL: Duration = Duration::from_millis(1000);

/// Names of the bits set in an error mask (unknown bits as `UNKNOWN_0x..`).
pub fn error_mask_names(mask: u64) -> Vec<String> {
    let mut out = Vec::new();
    for bit in 0..64 {
        let v = 1u64 << bit;
        if mask & v != 0 {
            match WU_ERROR_BITS.iter().find(|(b, _)| *b == v) {
                Some((_, n)) => out.push((*n).to_string()),
                None => out.push(format!("UNKNOWN_{v:#x}")),
            }
        }
    }
    out
}

/// True when `s` is a name BOINC and `/bin/sh` both take as one plain word:
/// 1-128 characters of `[A-Za-z0-9_.-]`, not starting with `-` or `.`.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('-')
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// True when `s` is a relative path of safe names separated by `/`.
fn is_safe_rel_path(s: &str) -> bool {
    !s.is_empty() && s.split('/').all(|c| is_safe_name(c) && c != "..")
}

/// The workunit name of one attempt of a task: `mw_<job>_<task>_<attempt>`.
pub fn wu_name(job: &str, task: TaskId, attempt: u32) -> Result<String, InterfaceError> {
    let name = format!("mw_{job}_{}_{attempt}", task.0);
    if is_safe_name(&name) {
        Ok(name)
    } else {
        Err(InterfaceError::new(format!(
            "workunit name {name:?} is not 1-128 characters of [A-Za-z0-9_.-] (job name {job:?})"
        )))
    }
}

/// BOINC's `dir_hier_path` sub-directory for `name`: the 7 hex digits of md5(name) starting
/// at index 1, as a number, modulo `fanout`, printed as lower-case hex without padding.
/// `None` for fanout 0 (flat directory).
pub fn dir_hier_path(name: &str, fanout: u32) -> Option<String> {
    if fanout == 0 {
        return None;
    }
    let md5 = hex::encode(Md5::digest(name.as_bytes()));
    let n = u64::from_str_radix(&md5[1..8], 16).unwrap_or(0);
    Some(format!("{:x}", n % u64::from(fanout)))
}

/// A number as C's `printf("%e")` prints it (e.g. `1.234000e+03`).
pub fn c_exp(x: f64) -> String {
    let s = format!("{x:.6e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let e: i32 = e.parse().unwrap_or(0);
            let sign = if e < 0 { '-' } else { '+' };
            format!("{m}e{sign}{:02}", e.abs())
        }
        None => s,
    }
}

/// Stages `bytes` as `<download_dir>/<h>/<name>` plus its `.md5` cache file. Idempotent;
/// refuses to replace a file of that name with other content. Returns the path.
pub fn stage_file(
    download_dir: &Path,
    fanout: u32,
    name: &str,
    bytes: &[u8],
) -> Result<PathBuf, InterfaceError> {
    if !is_safe_name(name) {
        return Err(InterfaceError::new(format!(
            "staged file name {name:?} is not shell-safe"
        )));
    }
    let dir = match dir_hier_path(name, fanout) {
        Some(h) => download_dir.join(h),
        None => download_dir.to_path_buf(),
    };
    let path = dir.join(name);
    let md5 = hex::encode(Md5::digest(bytes));
    let md5_path = dir.join(format!("{name}.md5"));
    let md5_text = format!("{md5} {}\n", c_exp(bytes.len() as f64));
    let io = |what: &str, p: &Path, e: std::io::Error| {
        InterfaceError::new(format!("staging {name}: {what} {}: {e}", p.display()))
    };
    match std::fs::read(&path) {
        Ok(existing) if existing == bytes => {
            if std::fs::read_to_string(&md5_path).ok().as_deref() != Some(md5_text.as_str()) {
                write_atomic(&dir, &md5_path, md5_text.as_bytes())
                    .map_err(|e| io("writing", &md5_path, e))?;
            }
            return Ok(path);
        }
        Ok(_) => {
            return Err(InterfaceError::new(format!(
                "{} exists with other content; BOINC files are immutable by name",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", &path, e)),
    }
    std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
    write_atomic(&dir, &path, bytes).map_err(|e| io("writing", &path, e))?;
    // The .md5 must be newer than the data file for create_work to trust it.
    write_atomic(&dir, &md5_path, md5_text.as_bytes()).map_err(|e| io("writing", &md5_path, e))?;
    Ok(path)
}

fn write_atomic(dir: &Path, dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::Builder::new()
        .prefix(".mw-stage-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// Text of the first `<tag>…</tag>` in an XML text, trimmed.
fn xml_value(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let a = text.find(&open)? + open.len();
    let b = text[a..].find(&close)? + a;
    Some(text[a..b].trim().to_string())
}

/// The interface's settings (from a job file's `[boinc]` section, or built in Rust).
#[derive(Debug, Clone)]
pub struct BoincSettings {
    /// The BOINC project root (holding `mw_boinc.toml`).
    pub project_dir: PathBuf,
    /// App name; must match the installed one when given.
    pub app_name: Option<String>,
    /// min_quorum (default: the installed template's).
    pub quorum: Option<u32>,
    /// target_nresults (default: the quorum).
    pub replication: Option<u32>,
    /// delay_bound in seconds (default: the installed template's, 7 days).
    pub deadline_secs: Option<u64>,
    /// Workunits per `create_work` call.
    pub batch_size: usize,
}

impl BoincSettings {
    /// Settings for a project directory, everything else default.
    pub fn new(project_dir: impl Into<PathBuf>) -> Self {
        BoincSettings {
            project_dir: project_dir.into(),
            app_name: None,
            quorum: None,
            replication: None,
            deadline_secs: None,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

struct Pending {
    task: Arc<PreparedTask>,
    done: Completion,
}

struct Waiting {
    wu: String,
    done: Option<Completion>,
    output_dir: Option<PathBuf>,
}

#[derive(Default)]
struct State {
    job: Option<String>,
    queue: VecDeque<Pending>,
    waiting: HashMap<TaskId, Waiting>,
    by_wu: HashMap<String, TaskId>,
    cancelled_wus: HashSet<String>,
    /// Workunits of the `create_work` call under way.
    creating: HashSet<String>,
    /// Workunits cancelled while their `create_work` call was under way: cancelled with
    /// `bin/cancel_jobs` as soon as that call has created them.
    cancel_after_create: Vec<String>,
    /// `create_work` calls (with their deferred cancels) under way; shutdown waits for them.
    batches_in_flight: usize,
    staged_programs: HashSet<String>,
    shut_down: bool,
    created: u64,
    completed: u64,
    failed: u64,
    batches: u64,
}

struct Shared {
    project: PathBuf,
    app: String,
    download_dir: PathBuf,
    fanout: u32,
    spool: PathBuf,
    wu_template: String,
    result_template: String,
    batch_size: usize,
    state: Mutex<State>,
    cond: Condvar,
    sink: Mutex<Option<Arc<dyn HandleSink>>>,
    wake_watcher: Mutex<Option<mpsc::Sender<()>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tasks as BOINC workunits (see the module documentation).
pub struct Boinc {
    shared: Arc<Shared>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for Boinc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Boinc({})", self.shared.project.display())
    }
}

impl Boinc {
    /// Connects to the project: reads `mw_boinc.toml` and `config.xml`, writes the job's own
    /// input template when it asks for other redundancy than the installed one, and starts
    /// the submit and watcher threads.
    pub fn new(settings: BoincSettings) -> Result<Boinc, BoincError> {
        let project = settings.project_dir.canonicalize().map_err(|e| {
            BoincError(format!(
                "project directory {}: {e}",
                settings.project_dir.display()
            ))
        })?;
        let cfg = MwBoincConfig::load(&project).map_err(|e| {
            BoincError(format!(
                "{e} (is mw installed in this project? run mw-boinc-setup --project-dir {})",
                project.display()
            ))
        })?;
        if let Some(app) = &settings.app_name {
            if *app != cfg.app_name {
                return Err(BoincError(format!(
                    "app_name {app:?} is not the app installed in {} ({:?})",
                    project.display(),
                    cfg.app_name
                )));
            }
        }
        if !is_safe_name(&cfg.app_name) {
            return Err(BoincError(format!(
                "installed app name {:?} is not shell-safe",
                cfg.app_name
            )));
        }
        for t in [&cfg.input_template, &cfg.output_template] {
            if !is_safe_rel_path(t) || t.len() > 63 {
                return Err(BoincError(format!(
                    "template path {t:?} in mw_boinc.toml must be a shell-safe relative path of \
                     at most 63 characters"
                )));
            }
        }
        let config_path = project.join("config.xml");
        let config_xml = std::fs::read_to_string(&config_path)
            .map_err(|e| BoincError(format!("{}: {e}", config_path.display())))?;
        let fanout = match xml_value(&config_xml, "uldl_dir_fanout") {
            Some(v) => v.parse::<u32>().map_err(|_| {
                BoincError(format!(
                    "{}: <uldl_dir_fanout> {v:?} is not a number",
                    config_path.display()
                ))
            })?,
            // BOINC's config parser leaves it 0 (flat directories) when absent.
            None => 0,
        };
        let download_dir = xml_value(&config_xml, "download_dir")
            .map(PathBuf::from)
            .unwrap_or_else(|| project.join("download"));
        if !download_dir.is_dir() {
            return Err(BoincError(format!(
                "download directory {} (config.xml <download_dir>) does not exist",
                download_dir.display()
            )));
        }
        if !cfg.spool_dir.is_dir() {
            return Err(BoincError(format!(
                "spool directory {} does not exist (re-run mw-boinc-setup)",
                cfg.spool_dir.display()
            )));
        }
        let create_work = project.join("bin/create_work");
        if !create_work.is_file() {
            return Err(BoincError(format!(
                "{} is missing: not a BOINC project",
                create_work.display()
            )));
        }
        let wu_template = job_template(&project, &cfg, &settings, &config_xml)?;
        let shared = Arc::new(Shared {
            project,
            app: cfg.app_name.clone(),
            download_dir,
            fanout,
            spool: cfg.spool_dir.clone(),
            wu_template,
            result_template: cfg.output_template.clone(),
            batch_size: settings.batch_size.max(1),
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            sink: Mutex::new(None),
            wake_watcher: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel::<()>();
        *shared
            .wake_watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        let watcher = {
            let tx = tx.clone();
            notify::recommended_watcher(move |_res: notify::Result<notify::Event>| {
                let _ = tx.send(());
            })
            .ok()
            .and_then(|mut w| {
                w.watch(&shared.spool, notify::RecursiveMode::NonRecursive)
                    .ok()
                    .map(|_| w)
            })
        };
        let s1 = shared.clone();
        std::thread::Builder::new()
            .name("mw-boinc-submit".into())
            .spawn(move || submit_loop(&s1))
            .map_err(|e| BoincError(format!("cannot start the submit thread: {e}")))?;
        let s2 = shared.clone();
        std::thread::Builder::new()
            .name("mw-boinc-watch".into())
            .spawn(move || watch_loop(&s2, &rx))
            .map_err(|e| BoincError(format!("cannot start the watcher thread: {e}")))?;
        Ok(Boinc {
            shared,
            _watcher: watcher,
        })
    }

    /// The input template (relative to the project root) this interface's workunits use.
    pub fn wu_template(&self) -> &str {
        &self.shared.wu_template
    }
}

/// Chooses (and when needed writes) the input template for this job's redundancy.
fn job_template(
    project: &Path,
    cfg: &MwBoincConfig,
    s: &BoincSettings,
    config_xml: &str,
) -> Result<String, BoincError> {
    let quorum = s.quorum.unwrap_or(cfg.quorum);
    if !(1..=20).contains(&quorum) {
        return Err(BoincError(format!("quorum {quorum} must be 1..=20")));
    }
    let replication = s.replication.unwrap_or(quorum);
    if replication < quorum || replication > quorum + 20 {
        return Err(BoincError(format!(
            "replication {replication} must be at least the quorum {quorum} (and at most quorum+20)"
        )));
    }
    if quorum > 1 {
        let one_per_host = ["one_result_per_host_per_wu", "one_result_per_user_per_wu"]
            .iter()
            .any(|t| xml_value(config_xml, t).is_some_and(|v| v != "0"));
        if !one_per_host {
            return Err(BoincError(format!(
                "quorum {quorum} needs <one_result_per_host_per_wu>1</one_result_per_host_per_wu> \
                 in {}/config.xml (otherwise one host may return every replica): run \
                 mw-boinc-setup --quorum {quorum}",
                project.display()
            )));
        }
    }
    let mut p = TemplateParams::for_quorum(quorum);
    if let Some(d) = s.deadline_secs {
        if d == 0 {
            return Err(BoincError("deadline_secs must be positive".into()));
        }
        p.delay_bound = d;
    }
    // The program bundle is shared by every workunit: `<no_delete/>` keeps BOINC's
    // file_deleter from removing it when the first workunit is done.
    let mut text = mw_boinc_setup::input_template(&p).replacen(
        "<file_info>\n    </file_info>",
        "<file_info>\n        <no_delete/>\n    </file_info>",
        1,
    );
    if !text.contains("<no_delete/>") {
        return Err(BoincError(
            "internal: cannot mark the program bundle <no_delete/> in the input template".into(),
        ));
    }
    if replication != quorum {
        let ms = p.max_success_results().max(replication);
        let mt = ms + p.max_error_results;
        text = text
            .replace(
                &format!("<target_nresults>{quorum}</target_nresults>"),
                &format!("<target_nresults>{replication}</target_nresults>"),
            )
            .replace(
                &format!(
                    "<max_success_results>{}</max_success_results>",
                    p.max_success_results()
                ),
                &format!("<max_success_results>{ms}</max_success_results>"),
            )
            .replace(
                &format!(
                    "<max_total_results>{}</max_total_results>",
                    p.max_total_results()
                ),
                &format!("<max_total_results>{mt}</max_total_results>"),
            );
    }
    let rel = format!(
        "templates/{}_in_q{quorum}_r{replication}_d{}",
        cfg.app_name, p.delay_bound
    );
    if rel.len() > 63 || !is_safe_rel_path(&rel) {
        return Err(BoincError(format!(
            "template path {rel:?} is longer than BOINC's 63 characters"
        )));
    }
    let path = project.join(&rel);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        let dir = project.join("templates");
        write_atomic(&dir, &path, text.as_bytes())
            .map_err(|e| BoincError(format!("writing {}: {e}", path.display())))?;
    }
    Ok(rel)
}

fn submit_loop(shared: &Arc<Shared>) {
    loop {
        let batch: Vec<Pending> = {
            let mut st = shared.lock();
            while st.queue.is_empty() && !st.shut_down {
                st = shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.shut_down {
                return;
            }
            // Give the scheduler a moment to hand over more tasks for the same batch.
            if st.queue.len() < shared.batch_size {
                st = shared
                    .cond
                    .wait_timeout(st, Duration::from_millis(50))
                    .map(|r| r.0)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            let n = st.queue.len().min(shared.batch_size);
            st.queue.drain(..n).collect()
        };
        submit_batch(shared, batch);
    }
}

/// Stages and creates one batch of workunits.
fn submit_batch(shared: &Arc<Shared>, batch: Vec<Pending>) {
    let mut lines = String::new();
    let mut submitted: Vec<(TaskId, String)> = Vec::new();
    for p in batch {
        match stage_task(shared, &p.task) {
            Ok((wu, line)) => {
                lines.push_str(&line);
                let mut st = shared.lock();
                st.by_wu.insert(wu.clone(), p.task.id);
                st.waiting.insert(
                    p.task.id,
                    Waiting {
                        wu: wu.clone(),
                        done: Some(p.done),
                        output_dir: p.task.output_dir.clone(),
                    },
                );
                submitted.push((p.task.id, wu));
            }
            Err(e) => {
                shared.lock().failed += 1;
                p.done.finish(Err(e));
            }
        }
    }
    if submitted.is_empty() {
        return;
    }
    {
        let mut st = shared.lock();
        st.batches_in_flight += 1;
        for (_, wu) in &submitted {
            st.creating.insert(wu.clone());
        }
    }
    let created = run_create_work(shared, &lines);
    let cancel_now: Vec<String> = {
        let mut st = shared.lock();
        for (_, wu) in &submitted {
            st.creating.remove(wu);
        }
        std::mem::take(&mut st.cancel_after_create)
    };
    if created.is_ok() {
        for wu in &cancel_now {
            // The task was already reported cancelled; this only stops BOINC running it.
            let _ = run_cancel_jobs(shared, wu);
        }
    }
    match created {
        Ok(()) => {
            let sink = shared
                .sink
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(sink) = sink {
                for (task, wu) in &submitted {
                    sink.record_handle(*task, wu);
                }
            }
            let mut st = shared.lock();
            st.created += submitted.len() as u64;
            st.batches += 1;
        }
        Err(e) => {
            let mut dones = Vec::new();
            {
                let mut st = shared.lock();
                for (task, wu) in &submitted {
                    st.by_wu.remove(wu);
                    if let Some(w) = st.waiting.remove(task) {
                        dones.extend(w.done);
                    }
                    st.failed += 1;
                }
            }
            for d in dones {
                d.finish(Err(e.clone()));
            }
        }
    }
    // Results may have been spooled before the waiting entries existed: look again.
    wake_watcher(shared);
    shared.lock().batches_in_flight -= 1;
    shared.cond.notify_all();
}

fn wake_watcher(shared: &Shared) {
    if let Some(tx) = shared
        .wake_watcher
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        let _ = tx.send(());
    }
}

/// Stages the program (once) and the task bundle; returns the workunit name and its
/// create_work stdin line.
fn stage_task(shared: &Shared, task: &PreparedTask) -> Result<(String, String), InterfaceError> {
    let wu = wu_name(&task.job, task.id, task.attempt)?;
    let program = task
        .spec
        .program
        .bundle(&task.staging_dir)
        .map_err(|e| InterfaceError::new(format!("packing the program bundle: {e}")))?;
    let prog_name = format!(
        "mw_prog_{}.tar.gz",
        &program.sha256[..32.min(program.sha256.len())]
    );
    let already = shared.lock().staged_programs.contains(&prog_name);
    if !already {
        let bytes = std::fs::read(&program.path)
            .map_err(|e| InterfaceError::new(format!("reading {}: {e}", program.path.display())))?;
        stage_file(&shared.download_dir, shared.fanout, &prog_name, &bytes)?;
        shared.lock().staged_programs.insert(prog_name.clone());
    }
    let task_name = format!("{wu}_task.tar.gz");
    let bytes = task
        .task_bundle_bytes(&program)
        .map_err(|e| InterfaceError::new(format!("packing the task bundle: {e}")))?;
    stage_file(&shared.download_dir, shared.fanout, &task_name, &bytes)?;
    for word in [&wu, &prog_name, &task_name] {
        if !is_safe_name(word) {
            return Err(InterfaceError::new(format!(
                "{word:?} is not shell-safe; refusing to pass it to create_work"
            )));
        }
    }
    Ok((
        wu.clone(),
        format!("--wu_name {wu} {prog_name} {task_name}\n"),
    ))
}

fn run_create_work(shared: &Shared, lines: &str) -> Result<(), InterfaceError> {
    let args = [
        "--appname",
        shared.app.as_str(),
        "--wu_template",
        shared.wu_template.as_str(),
        "--result_template",
        shared.result_template.as_str(),
        "--stdin",
    ];
    let mut child = Command::new(shared.project.join("bin/create_work"))
        .args(args)
        .current_dir(&shared.project)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| InterfaceError::new(format!("running bin/create_work: {e}")))?;
    let stdin = child.stdin.take();
    let input = lines.to_string();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(input.as_bytes());
        }
    });
    let out = child
        .wait_with_output()
        .map_err(|e| InterfaceError::new(format!("waiting for bin/create_work: {e}")))?;
    let _ = writer.join();
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        Err(InterfaceError::new(format!(
            "`bin/create_work {}` in {} failed ({}): {}{}",
            args.join(" "),
            shared.project.display(),
            out.status,
            stderr.trim(),
            stdout.trim()
        )))
    }
}

/// Runs `bin/cancel_jobs --name WU` from the project root; says what happened.
fn run_cancel_jobs(shared: &Shared, wu: &str) -> String {
    if !is_safe_name(wu) {
        return "its name is not shell-safe, so it was not passed to bin/cancel_jobs".into();
    }
    match Command::new(shared.project.join("bin/cancel_jobs"))
        .args(["--name", wu])
        .current_dir(&shared.project)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => "bin/cancel_jobs marked it cancelled".to_string(),
        Ok(o) => format!(
            "bin/cancel_jobs failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("bin/cancel_jobs could not run: {e}"),
    }
}

fn watch_loop(shared: &Arc<Shared>, rx: &mpsc::Receiver<()>) {
    loop {
        if shared.lock().shut_down {
            return;
        }
        scan_spool(shared);
        match rx.recv_timeout(POLL_INTERVAL) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {
                // Coalesce a burst of events into one scan.
                while rx.try_recv().is_ok() {}
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[derive(serde::Deserialize)]
struct ErrorRecord {
    #[serde(default)]
    error_mask: u64,
    #[serde(default)]
    reason: Option<String>,
}

enum Found {
    Result(TaskId, PathBuf),
    Error(String, PathBuf),
}

/// Reads the spool once and reports every outcome that belongs to a task of this master.
fn scan_spool(shared: &Arc<Shared>) {
    let Ok(entries) = std::fs::read_dir(&shared.spool) else {
        return;
    };
    let mut found = Vec::new();
    {
        let st = shared.lock();
        let Some(job) = st.job.clone() else {
            return;
        };
        let prefix = format!("result_{job}_");
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".tar.gz"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                if st.waiting.contains_key(&TaskId(n)) {
                    found.push(Found::Result(TaskId(n), e.path()));
                }
            } else if let Some(wu) = name
                .strip_prefix("error_")
                .and_then(|r| r.strip_suffix(".toml"))
            {
                if st.by_wu.contains_key(wu) || st.cancelled_wus.contains(wu) {
                    found.push(Found::Error(wu.to_string(), e.path()));
                }
            }
        }
    }
    for f in found {
        match f {
            Found::Result(task, path) => take_result(shared, task, &path),
            Found::Error(wu, path) => take_error(shared, &wu, &path),
        }
    }
}

fn take_result(shared: &Shared, task: TaskId, path: &Path) {
    let Ok(bytes) = std::fs::read(path) else {
        return; // Gone or unreadable for now: the next scan decides.
    };
    let waiting = {
        let mut st = shared.lock();
        let w = st.waiting.remove(&task);
        if let Some(w) = &w {
            st.by_wu.remove(&w.wu);
        }
        w
    };
    let Some(mut w) = waiting else {
        return;
    };
    let label = path.display().to_string();
    let outcome = Execution::from_result_bundle(&bytes, &label, task, w.output_dir.as_deref())
        .map_err(|e| {
            InterfaceError::new(format!(
                "BOINC workunit {}: bad result bundle from the volunteer: {e}",
                w.wu
            ))
        });
    {
        let mut st = shared.lock();
        match &outcome {
            Ok(_) => st.completed += 1,
            Err(_) => st.failed += 1,
        }
    }
    if let Some(done) = w.done.take() {
        done.finish(outcome);
    }
    let _ = std::fs::remove_file(path);
}

fn take_error(shared: &Shared, wu: &str, path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let (waiting, task) = {
        let mut st = shared.lock();
        if st.cancelled_wus.remove(wu) {
            drop(st);
            let _ = std::fs::remove_file(path);
            return;
        }
        let Some(task) = st.by_wu.remove(wu) else {
            return;
        };
        (st.waiting.remove(&task), task)
    };
    let message = match toml::from_str::<ErrorRecord>(&text) {
        Ok(rec) => {
            let mut m = if rec.error_mask != 0 {
                format!(
                    "BOINC workunit {wu} failed: error mask {} ({})",
                    rec.error_mask,
                    error_mask_names(rec.error_mask).join(" | ")
                )
            } else {
                format!("BOINC workunit {wu} failed")
            };
            if let Some(r) = rec.reason {
                m.push_str(&format!(": {r}"));
            }
            m
        }
        Err(e) => format!(
            "BOINC workunit {wu} failed; its error record {} is unreadable: {}",
            path.display(),
            e.message()
        ),
    };
    shared.lock().failed += 1;
    if let Some(done) = waiting.and_then(|mut w| w.done.take()) {
        done.finish(Err(InterfaceError::new(format!("{task}: {message}"))));
    }
    let _ = std::fs::remove_file(path);
}

impl Interface for Boinc {
    fn name(&self) -> &'static str {
        "boinc"
    }

    fn keeps_running_without_master(&self) -> bool {
        true
    }

    fn reserve_worker(&self, _task: &PreparedTask) -> Result<WorkerId, InterfaceError> {
        // BOINC queues work on the server: never wait here.
        if self.shared.lock().shut_down {
            return Err(InterfaceError::new("the BOINC interface was shut down"));
        }
        Ok(WorkerId(0))
    }

    fn execute_task(&self, task: Arc<PreparedTask>, _worker: WorkerId, done: Completion) {
        let mut st = self.shared.lock();
        match &st.job {
            None => st.job = Some(task.job.clone()),
            Some(j) if *j != task.job => {
                let msg = format!(
                    "one BOINC interface serves one job ({j}), not also {}",
                    task.job
                );
                drop(st);
                done.finish(Err(InterfaceError::new(msg)));
                return;
            }
            Some(_) => {}
        }
        st.queue.push_back(Pending { task, done });
        drop(st);
        self.shared.cond.notify_all();
    }

    fn status(&self) -> BTreeMap<String, String> {
        let st = self.shared.lock();
        let mut m = BTreeMap::new();
        m.insert("project".into(), self.shared.project.display().to_string());
        m.insert("app".into(), self.shared.app.clone());
        m.insert("wu_template".into(), self.shared.wu_template.clone());
        m.insert("to_submit".into(), st.queue.len().to_string());
        m.insert("workunits_created".into(), st.created.to_string());
        m.insert("create_work_calls".into(), st.batches.to_string());
        m.insert("in_boinc".into(), st.waiting.len().to_string());
        m.insert("completed".into(), st.completed.to_string());
        m.insert("failed".into(), st.failed.to_string());
        m
    }

    fn cancel(&self, task: TaskId) {
        let (done, wu) = {
            let mut st = self.shared.lock();
            if let Some(pos) = st.queue.iter().position(|p| p.task.id == task) {
                let p = st.queue.remove(pos);
                drop(st);
                if let Some(p) = p {
                    p.done
                        .finish(Err(InterfaceError::new("cancelled before submission")));
                }
                return;
            }
            let Some(mut w) = st.waiting.remove(&task) else {
                return;
            };
            st.by_wu.remove(&w.wu);
            st.cancelled_wus.insert(w.wu.clone());
            if st.creating.contains(&w.wu) {
                // create_work has not created it yet: cancelling now would find nothing.
                st.cancel_after_create.push(w.wu.clone());
                let wu = w.wu.clone();
                drop(st);
                if let Some(done) = w.done.take() {
                    done.finish(Err(InterfaceError::new(format!(
                        "cancelled: workunit {wu}: bin/cancel_jobs marks it cancelled as soon \
                         as create_work has created it"
                    ))));
                }
                return;
            }
            (w.done.take(), w.wu)
        };
        let how = run_cancel_jobs(&self.shared, &wu);
        if let Some(done) = done {
            done.finish(Err(InterfaceError::new(format!(
                "cancelled: workunit {wu}: {how}"
            ))));
        }
    }

    fn set_handle_sink(&self, sink: Arc<dyn HandleSink>) {
        *self.shared.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    fn reattach(
        &self,
        task: Arc<PreparedTask>,
        handle: &str,
        done: Completion,
    ) -> Option<Completion> {
        if !is_safe_name(handle) {
            return Some(done);
        }
        {
            let mut st = self.shared.lock();
            match &st.job {
                None => st.job = Some(task.job.clone()),
                Some(j) if *j != task.job => return Some(done),
                Some(_) => {}
            }
            st.by_wu.insert(handle.to_string(), task.id);
            st.waiting.insert(
                task.id,
                Waiting {
                    wu: handle.to_string(),
                    done: Some(done),
                    output_dir: task.output_dir.clone(),
                },
            );
        }
        wake_watcher(&self.shared);
        None
    }

    fn shutdown(&self) {
        {
            let mut st = self.shared.lock();
            st.shut_down = true;
            self.shared.cond.notify_all();
            // A create_work call under way finishes (and its deferred cancels run) first:
            // a master exiting mid-batch must not leave a cancelled task's workunit live.
            while st.batches_in_flight > 0 {
                st = self.shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
        if let Some(tx) = self
            .shared
            .wake_watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fanout_matches_the_reference_example() {
        // reference §0.2: `in_t1` → download/262/ with fanout 1024.
        assert_eq!(dir_hier_path("in_t1", 1024).as_deref(), Some("262"));
        assert_eq!(dir_hier_path("x", 0), None);
    }

    #[test]
    fn c_style_exponent() {
        assert_eq!(c_exp(1234.0), "1.234000e+03");
        assert_eq!(c_exp(0.0), "0.000000e+00");
    }

    #[test]
    fn names_are_shell_safe() {
        assert_eq!(
            wu_name("monte_pi-1", TaskId(3), 1).unwrap(),
            "mw_monte_pi-1_3_1"
        );
        assert!(wu_name("a b", TaskId(0), 1).is_err());
        assert!(wu_name("x;rm", TaskId(0), 1).is_err());
        assert!(!is_safe_name("-x"));
        assert!(!is_safe_rel_path("templates/../x"));
        assert_eq!(
            error_mask_names(10),
            vec!["TOO_MANY_ERROR_RESULTS", "TOO_MANY_TOTAL_RESULTS"]
        );
    }
}
