//! The BOINC interface: runs tasks as workunits of a BOINC server project on this host, into
//! which `mw-boinc-setup` installed mw (reference/boinc-server.md §0, §3, §4, §8). Every name
//! and file format it shares with BOINC and mw's BOINC programs comes from `mw_boinc_kit`.
//!
//! - **Settings** ([`settings`]): redundancy, limits, work estimate and deadlines; the job's
//!   input template `templates/<app>_in_<hash>` is rendered from them by the kit (only the
//!   shared program bundle is `<no_delete/>`; task bundles are deleted with their workunit).
//! - **Staging** ([`stage`]): the program bundle once (content-addressed name), each task
//!   bundle as `<wu>_task.tar.gz`, in the download hierarchy.
//! - **Workunits** (`batch.rs`): named `mw_<job>_<run>_<task>_<attempt>` (`<run>` random per
//!   master run, so names are unique per project), recorded durably before `create_work`
//!   runs, created in batches with `create_work --stdin`, idempotent by name.
//! - **Outcomes** (`spool.rs`): the assimilator's spool entries become completions; an error
//!   record carries the workunit's error mask, the volunteers' exit statuses and stderr tails,
//!   or the field its results disagreed on.
//! - **Re-attach**: a resumed master waits again for a created workunit's spool entries, and
//!   re-submits a workunit recorded as pending (maybe never created) under the same name.
//! - **Packs** (`tasks_per_workunit` > 1): a workunit (`mw_<job>_<run>_p<seq>`) runs a pack
//!   bundle of many tasks ([`crate::pack`]); every member records the workunit's name as its
//!   handle. The pack result is read for the members this interface knows to be in that
//!   workunit (what BOINC vouches for); a member without a result is packed again later (at
//!   most [`MAX_PACK_REQUEUES`] times). Cancelling one member reports it cancelled at once and
//!   drops it from its workunit, whose other members run on; the workunit is cancelled only
//!   when no member is left. A resumed master keeps the outcome of a re-attached pack for
//!   members re-attached after it came back.
//! - **Cancel** (`cancel.rs`): `bin/cancel_jobs --name <wu>` from the project root (with or
//!   without a live master), and a spool marker so late outcomes are consumed. A task
//!   cancelled while its `create_work` batch is under way is cancelled right after that call
//!   returns; shutdown waits for a batch under way so that this is never skipped.
//!
//! Before anything is created, [`Boinc::new`] checks that mw is installed in the project and
//! that this process can write the project's download hierarchy (the master must run as the
//! project's owner).
//!
//! This module never knows about the journal (only the handle sink), the CLI, the job-file
//! format or BOINC's database; everything it does to the project goes through BOINC's own
//! tools and files.

mod batch;
mod cancel;
pub mod settings;
mod spool;
pub mod stage;

pub use cancel::{cancel_workunits, workunit_of_handle, workunits_to_cancel, SpooledOutcomes};
pub use mw_boinc_kit::{dir_hier_path, error_mask_names, is_safe_name, WU_ERROR_BITS};
pub use settings::{BoincSettings, DEFAULT_BATCH_SIZE};
pub use stage::{c_exp, stage_file};

use crate::interface::{Completion, HandleSink, Interface};
use crate::pack::PackSizer;
use crate::task::{InterfaceError, PreparedTask, TaskId, WorkerId};
use mw_boinc_kit::names::{
    is_safe_rel_path, ASSIMILATOR_NAME, MAX_TEMPLATE_PATH, VALIDATOR_COMPARE_NAME,
    VALIDATOR_INIT_NAME,
};
use mw_boinc_kit::template::{input_template, job_input_template_path};
use mw_boinc_kit::{MwBoincConfig, ProjectLayout, WuName};
use notify::Watcher as _;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Errors setting up the BOINC interface.
#[derive(Debug, thiserror::Error)]
#[error("BOINC interface: {0}")]
pub struct BoincError(pub String);

/// How often the spool is re-read when no inotify event arrives.
pub const POLL_INTERVAL: Duration = Duration::from_millis(1000);

/// How many times a packed task whose pack came back without its result is packed again
/// before it fails.
pub const MAX_PACK_REQUEUES: u32 = 3;

struct Pending {
    task: Arc<PreparedTask>,
    done: Completion,
    /// The name to (re-)create it under (a resumed pending workunit), else a fresh one.
    wu: Option<WuName>,
    since: Instant,
    /// Times it was packed again because its pack came back without its result.
    requeues: u32,
}

struct Waiting {
    wu: WuName,
    done: Option<Completion>,
    /// The task as dispatched: what its result must match (job, task, declared outputs,
    /// output limit) and where its outputs go.
    task: Arc<PreparedTask>,
    since: Instant,
    /// In a pack workunit (its result is a pack result).
    packed: bool,
    requeues: u32,
}

impl crate::pack::PackMember for Waiting {
    fn task(&self) -> &Arc<PreparedTask> {
        &self.task
    }
}

/// How a re-attached pack workunit ended, kept for members re-attached after that.
#[derive(Clone)]
enum Concluded {
    /// Its pack result, kept at this path.
    Result(PathBuf),
    /// Its error message.
    Error(String),
}

#[derive(Default)]
struct State {
    job: Option<String>,
    queue: VecDeque<Pending>,
    waiting: HashMap<TaskId, Waiting>,
    /// Each workunit's waiting tasks (one, or a pack's members).
    by_wu: HashMap<WuName, Vec<TaskId>>,
    cancelled_wus: HashSet<WuName>,
    /// Workunits of the `create_work` call under way.
    creating: HashSet<WuName>,
    /// Workunits cancelled while their `create_work` call was under way: cancelled with
    /// `bin/cancel_jobs` as soon as that call has returned.
    cancel_after_create: Vec<WuName>,
    /// Batches the submit thread holds (from the moment it takes their tasks from `queue`
    /// until their `create_work` call and deferred cancels are done); shutdown waits for them.
    batches_in_flight: usize,
    /// Tasks the submit thread has taken from `queue` and not yet added to `waiting` (nor
    /// failed): each task is in exactly one of `queue`, `in_hand` and `waiting`.
    in_hand: HashSet<TaskId>,
    /// Tasks of `in_hand` cancelled meanwhile: the batch ends them when it reaches them.
    cancel_in_hand: HashSet<TaskId>,
    /// The kind of error reading the spool last had (said once, not every scan).
    spool_error: Option<String>,
    /// Workunits whose spool file is there but cannot be read here (said once each).
    unreadable: HashSet<WuName>,
    staged_programs: HashSet<String>,
    shut_down: bool,
    /// Why the interface can run no more tasks (its submit or spool thread died): new tasks
    /// fail at once with this message instead of waiting for ever.
    broken: Option<String>,
    created: u64,
    existed: u64,
    completed: u64,
    failed: u64,
    batches: u64,
    /// Pack sizes (and the run times measured so far).
    sizer: PackSizer,
    /// Packs named by this master run.
    packs: u64,
    /// Pack workunits re-attached by a resumed master, and how the ones that came back ended.
    reattached: HashSet<WuName>,
    concluded: HashMap<WuName, Concluded>,
}

struct Shared {
    /// Tasks are packed (`tasks_per_workunit` > 1).
    packing: bool,
    project: PathBuf,
    app: String,
    layout: ProjectLayout,
    spool: PathBuf,
    wu_template: String,
    result_template: String,
    batch_size: usize,
    run_id: String,
    job_deadline: Option<Duration>,
    /// The largest result the project's server accepts ([`server_max_output`]).
    max_output_bytes: u64,
    state: Mutex<State>,
    cond: Condvar,
    sink: Mutex<Option<Arc<dyn HandleSink>>>,
    wake_watcher: Mutex<Option<mpsc::Sender<()>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::guard::lock(&self.state)
    }
}

fn wake_watcher(shared: &Shared) {
    if let Some(tx) = crate::guard::lock(&shared.wake_watcher).as_ref() {
        let _ = tx.send(());
    }
}

/// A thread this interface cannot do without has died: every task it holds fails with `why`
/// (a created workunit is cancelled in BOINC), and so does every later task.
fn fail_all(shared: &Shared, why: String) {
    let taken = shared.lock().break_down(&why);
    shared.cond.notify_all();
    log::error!(
        "{why}: failing {} task(s) in flight",
        taken.queued.len() + taken.cancel_now.len() + taken.after_create.len()
    );
    for p in taken.queued {
        // A resumed pending name may exist in BOINC: it would run for nobody.
        if let Some(wu) = &p.wu {
            cancel_once(shared, wu);
        }
        p.done
            .finish(Err(InterfaceError::new(format!("{}: {why}", p.task.id))));
    }
    // One cancel per workunit (a pack's members share theirs).
    let mut how: HashMap<WuName, String> = HashMap::new();
    for mut w in taken.cancel_now {
        let how = how.entry(w.wu.clone()).or_insert_with(|| {
            cancel::mark_cancelled(&shared.spool, &w.wu);
            cancel::run_cancel_jobs(&shared.project, &w.wu)
        });
        if let Some(d) = w.done.take() {
            d.finish(Err(InterfaceError::new(format!(
                "{}: {why}; workunit {}: {how}",
                w.task.id, w.wu
            ))));
        }
    }
    for mut w in taken.after_create {
        cancel::mark_cancelled(&shared.spool, &w.wu);
        if let Some(d) = w.done.take() {
            d.finish(Err(InterfaceError::new(format!(
                "{}: {why}; workunit {}: bin/cancel_jobs marks it cancelled as soon as \
                 create_work has created it",
                w.task.id, w.wu
            ))));
        }
    }
}

/// Cancels workunit `wu` in BOINC unless this master did already (`cancelled_wus`): for a
/// name a resumed master took over (`pending:`, maybe created by the master before it),
/// whose tasks end without this master ever creating or following it. Says what happened.
fn cancel_once(shared: &Shared, wu: &WuName) -> Option<String> {
    if !shared.lock().cancelled_wus.insert(wu.clone()) {
        return None;
    }
    cancel::mark_cancelled(&shared.spool, wu);
    Some(cancel::run_cancel_jobs(&shared.project, wu))
}

/// What [`State::break_down`] took from the state: every task the interface held.
struct Taken {
    queued: Vec<Pending>,
    /// Waiting for workunits that exist (or may): cancelled now.
    cancel_now: Vec<Waiting>,
    /// Waiting for workunits of the `create_work` call under way: that call cancels them
    /// once it has returned (cancelling now would find nothing).
    after_create: Vec<Waiting>,
}

impl State {
    /// Marks the interface broken (`why`) and takes every task it holds. From then on no
    /// task enters `queue` or `waiting` (each place that would add one checks `broken` under
    /// the same lock), so a task handed over at the same moment fails too rather than wait
    /// for a thread that is gone. A `create_work` call under way stays counted: it ends
    /// (and runs its deferred cancels) as usual.
    fn break_down(&mut self, why: &str) -> Taken {
        self.broken = Some(why.to_string());
        self.by_wu.clear();
        let queued: Vec<Pending> = self.queue.drain(..).collect();
        let mut taken = Taken {
            queued,
            cancel_now: Vec::new(),
            after_create: Vec::new(),
        };
        let waiting: Vec<Waiting> = self.waiting.drain().map(|(_, w)| w).collect();
        for w in waiting {
            if self.cancelled_wus.insert(w.wu.clone()) && self.creating.contains(&w.wu) {
                self.cancel_after_create.push(w.wu.clone());
            }
            if self.creating.contains(&w.wu) {
                taken.after_create.push(w);
            } else {
                taken.cancel_now.push(w);
            }
        }
        self.failed +=
            (taken.queued.len() + taken.cancel_now.len() + taken.after_create.len()) as u64;
        taken
    }
}

/// Tasks as BOINC workunits (see the module documentation).
pub struct Boinc {
    shared: Arc<Shared>,
    _watcher: Option<notify::RecommendedWatcher>,
    /// Disconnected once the spool thread has ended (it holds the sender): `shutdown` waits
    /// for that, so a result it has just delivered is also removed from the spool before the
    /// process may exit (else the finished job's result stayed in `mw_spool` for ever).
    watch_exit: Mutex<Option<mpsc::Receiver<()>>>,
}

/// The longest `shutdown` waits for the spool thread to end.
const WATCH_EXIT_WAIT: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Boinc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Boinc({})", self.shared.project.display())
    }
}

/// Checks that this process can create files in `dir` (and in one existing sub-directory of
/// the download hierarchy, which `make_project` created as the project's owner).
fn check_writable(dir: &Path, project: &Path) -> Result<(), BoincError> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        if let Some(sub) = rd.flatten().map(|e| e.path()).find(|p| p.is_dir()) {
            dirs.push(sub);
        }
    }
    for d in dirs {
        if let Err(e) = tempfile::Builder::new()
            .prefix(".mw-probe-")
            .tempfile_in(&d)
        {
            use std::os::unix::fs::MetadataExt;
            let owner = std::fs::metadata(project)
                .map(|m| format!("uid {}", m.uid()))
                .unwrap_or_else(|_| "its owner".into());
            return Err(BoincError(format!(
                "cannot create files in {} ({e}): run the mw master as the BOINC project's \
                 owner ({owner}, the user who ran make_project), who can write the download \
                 hierarchy",
                d.display()
            )));
        }
    }
    Ok(())
}

/// What [`open_project`] found.
struct Opened {
    project: PathBuf,
    cfg: MwBoincConfig,
    layout: ProjectLayout,
    params: mw_boinc_kit::TemplateParams,
}

/// Every check made before anything is created in the project.
fn open_project(settings: &BoincSettings) -> Result<Opened, BoincError> {
    let project = settings.project_dir.canonicalize().map_err(|e| {
        BoincError(format!(
            "project directory {}: {e}",
            settings.project_dir.display()
        ))
    })?;
    let install_hint = format!(
        "is mw installed in this project? run mw-boinc-setup --project-dir {}",
        project.display()
    );
    let cfg =
        MwBoincConfig::load(&project).map_err(|e| BoincError(format!("{e} ({install_hint})")))?;
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
        if !is_safe_rel_path(t) || t.len() > MAX_TEMPLATE_PATH {
            return Err(BoincError(format!(
                "template path {t:?} in mw_boinc.toml must be a shell-safe relative path of \
                 at most {MAX_TEMPLATE_PATH} characters"
            )));
        }
    }
    for needed in [
        "bin/create_work".to_string(),
        "bin/cancel_jobs".to_string(),
        format!("bin/{ASSIMILATOR_NAME}"),
        format!("bin/{VALIDATOR_INIT_NAME}"),
        format!("bin/{VALIDATOR_COMPARE_NAME}"),
        cfg.output_template.clone(),
    ] {
        if !project.join(&needed).is_file() {
            return Err(BoincError(format!(
                "{} is missing ({install_hint})",
                project.join(&needed).display()
            )));
        }
    }
    let layout = ProjectLayout::read(&project).map_err(|e| BoincError(e.to_string()))?;
    if !layout.download_dir.is_dir() {
        return Err(BoincError(format!(
            "download directory {} (config.xml <download_dir>) does not exist",
            layout.download_dir.display()
        )));
    }
    check_writable(&layout.download_dir, &project)?;
    if !cfg.spool_dir.is_dir() {
        return Err(BoincError(format!(
            "spool directory {} does not exist ({install_hint})",
            cfg.spool_dir.display()
        )));
    }
    let params = settings.template_params(&cfg)?;
    if params.quorum > 1 && !layout.one_result_per_host {
        return Err(BoincError(format!(
            "quorum {q} needs <one_result_per_host_per_wu>1</one_result_per_host_per_wu> \
             in {}/config.xml (otherwise one host may return every replica): run \
             mw-boinc-setup --quorum {q}",
            project.display(),
            q = params.quorum
        )));
    }
    Ok(Opened {
        project,
        cfg,
        layout,
        params,
    })
}

/// The largest result (stdout) the project's `mw-validator` and `mw-assimilator` accept:
/// `max_output_bytes` in `mw_boinc.toml`, else the default output limit.
fn server_max_output(cfg: &MwBoincConfig) -> u64 {
    cfg.max_output_bytes
        .unwrap_or(mw_bundle::DEFAULT_MAX_OUTPUT_BYTES)
}

/// Why a task whose result may take `max_output_bytes` must not be sent to volunteers of the
/// project at `project` (whose server accepts `limit` bytes): its result could be refused
/// after a volunteer computed it.
fn over_server_limit(max_output_bytes: u64, limit: u64, project: &Path) -> Option<String> {
    (max_output_bytes > limit).then(|| {
        format!(
            "max_output is {max_output_bytes} bytes, over the {limit} bytes this BOINC \
             project's mw-validator and mw-assimilator accept (max_output_bytes in {}): lower \
             max_output, or have the project's admin run mw-boinc-setup --max-output-bytes \
             {max_output_bytes}",
            MwBoincConfig::path(project).display()
        )
    })
}

impl Boinc {
    /// Checks, without changing anything, what [`Boinc::new`] checks before it creates
    /// anything: the project, mw's installation in it, this process's right to write the
    /// download hierarchy, and the settings; and that the project's server accepts results
    /// of `max_output_bytes` (the job's `max_output`). For a CLI to refuse a job up front.
    pub fn check(settings: &BoincSettings, max_output_bytes: u64) -> Result<(), BoincError> {
        let opened = open_project(settings)?;
        match over_server_limit(
            max_output_bytes,
            server_max_output(&opened.cfg),
            &opened.project,
        ) {
            Some(why) => Err(BoincError(why)),
            None => Ok(()),
        }
    }

    /// Connects to the project: checks mw's installation and the download hierarchy's
    /// permissions, writes the job's input template, and starts the submit and watcher
    /// threads.
    pub fn new(settings: BoincSettings) -> Result<Boinc, BoincError> {
        let Opened {
            project,
            cfg,
            layout,
            params,
        } = open_project(&settings)?;

        let text = input_template(&params);
        let wu_template = job_input_template_path(&cfg.app_name, &text).ok_or_else(|| {
            BoincError(format!(
                "no input template path of at most {MAX_TEMPLATE_PATH} characters for app {:?}",
                cfg.app_name
            ))
        })?;
        let path = project.join(&wu_template);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            mw_bundle::write_atomic(&path, text.as_bytes(), Some(0o644))
                .map_err(|e| BoincError(format!("writing {}: {e}", path.display())))?;
        }
        let sizer = PackSizer::new(settings.tasks_per_workunit, settings.target_job_time);
        let shared = Arc::new(Shared {
            packing: sizer.packing(),
            project,
            app: cfg.app_name.clone(),
            layout,
            spool: cfg.spool_dir.clone(),
            wu_template,
            result_template: cfg.output_template.clone(),
            batch_size: settings.batch_size.max(1),
            run_id: mw_boinc_kit::names::fresh_run_id(),
            job_deadline: settings.job_deadline,
            max_output_bytes: server_max_output(&cfg),
            state: Mutex::new(State {
                sizer,
                ..State::default()
            }),
            cond: Condvar::new(),
            sink: Mutex::new(None),
            wake_watcher: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel::<()>();
        *crate::guard::lock(&shared.wake_watcher) = Some(tx.clone());
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
            .spawn(move || {
                if let Err(panic) = crate::guard::contain(|| batch::submit_loop(&s1)) {
                    fail_all(&s1, format!("the BOINC submit thread failed: {panic}"));
                }
            })
            .map_err(|e| BoincError(format!("cannot start the submit thread: {e}")))?;
        let s2 = shared.clone();
        let (exit_tx, exit_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("mw-boinc-watch".into())
            .spawn(move || {
                let _exit = exit_tx;
                if let Err(panic) = crate::guard::contain(|| spool::watch_loop(&s2, &rx)) {
                    fail_all(&s2, format!("the BOINC spool thread failed: {panic}"));
                }
            })
            .map_err(|e| BoincError(format!("cannot start the watcher thread: {e}")))?;
        Ok(Boinc {
            shared,
            _watcher: watcher,
            watch_exit: Mutex::new(Some(exit_rx)),
        })
    }

    /// The input template (relative to the project root) this interface's workunits use.
    pub fn wu_template(&self) -> &str {
        &self.shared.wu_template
    }

    /// Takes `task` for this interface's job; hands `done` back when it belongs to another.
    fn claim_job(&self, st: &mut State, task: &PreparedTask) -> Result<(), String> {
        match &st.job {
            None => {
                st.job = Some(task.job.clone());
                Ok(())
            }
            Some(j) if *j != task.job => Err(format!(
                "one BOINC interface serves one job ({j}), not also {}",
                task.job
            )),
            Some(_) => Ok(()),
        }
    }
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
        crate::interface::queued_worker("BOINC", self.shared.lock().shut_down)
    }

    fn execute_task(&self, task: Arc<PreparedTask>, _worker: WorkerId, done: Completion) {
        let mut st = self.shared.lock();
        if let Some(why) = st.broken.clone() {
            drop(st);
            done.finish(Err(InterfaceError::new(why)));
            return;
        }
        if let Err(msg) = self.claim_job(&mut st, &task) {
            drop(st);
            done.finish(Err(InterfaceError::new(msg)));
            return;
        }
        if let Some(why) = over_server_limit(
            task.spec.max_output_bytes,
            self.shared.max_output_bytes,
            &self.shared.project,
        ) {
            drop(st);
            done.finish(Err(InterfaceError::new(why)));
            return;
        }
        st.queue.push_back(Pending {
            task,
            done,
            wu: None,
            since: Instant::now(),
            requeues: 0,
        });
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
        m.insert("workunits_reattached".into(), st.existed.to_string());
        m.insert("create_work_calls".into(), st.batches.to_string());
        m.insert("in_boinc".into(), st.waiting.len().to_string());
        if let Some(oldest) = st.waiting.values().map(|w| w.since.elapsed()).max() {
            m.insert("oldest_in_boinc_secs".into(), oldest.as_secs().to_string());
        }
        m.insert("completed".into(), st.completed.to_string());
        m.insert("failed".into(), st.failed.to_string());
        m
    }

    fn cancel(&self, task: TaskId) {
        let (done, wu) = {
            let mut st = self.shared.lock();
            if let Some(pos) = st.queue.iter().position(|p| p.task.id == task) {
                let p = st.queue.remove(pos);
                // A pack's other members still need its workunit.
                let shared_wu = p.as_ref().and_then(|p| p.wu.as_ref()).is_some_and(|wu| {
                    st.queue.iter().any(|q| q.wu.as_ref() == Some(wu))
                        || st.by_wu.get(wu).is_some_and(|m| !m.is_empty())
                });
                drop(st);
                if let Some(p) = p {
                    if let Some(wu) = p.wu.as_ref().filter(|_| !shared_wu) {
                        // A resumed pending workunit may exist in BOINC already.
                        cancel::mark_cancelled(&self.shared.spool, wu);
                        let _ = cancel::run_cancel_jobs(&self.shared.project, wu);
                    }
                    p.done
                        .finish(Err(InterfaceError::new("cancelled before submission")));
                }
                return;
            }
            if st.in_hand.contains(&task) {
                // The submit thread holds it: it ends it (cancelled) when it gets to it.
                st.cancel_in_hand.insert(task);
                return;
            }
            let Some(mut w) = st.waiting.remove(&task) else {
                return;
            };
            let mut left = 0;
            if let Some(members) = st.by_wu.get_mut(&w.wu) {
                members.retain(|m| *m != task);
                left = members.len();
            }
            if left > 0 {
                // A member of a pack whose other members run on: its result is ignored.
                drop(st);
                if let Some(done) = w.done.take() {
                    done.finish(Err(InterfaceError::new(format!(
                        "cancelled: it was packed in workunit {} with other tasks, which run \
                         on; its result will be ignored",
                        w.wu
                    ))));
                }
                return;
            }
            st.by_wu.remove(&w.wu);
            if w.packed {
                st.sizer.job_ended();
            }
            st.cancelled_wus.insert(w.wu.clone());
            if st.creating.contains(&w.wu) {
                // create_work has not created it yet: cancelling now would find nothing.
                st.cancel_after_create.push(w.wu.clone());
                let wu = w.wu.clone();
                drop(st);
                cancel::mark_cancelled(&self.shared.spool, &wu);
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
        self.shared.cond.notify_all();
        cancel::mark_cancelled(&self.shared.spool, &wu);
        let how = cancel::run_cancel_jobs(&self.shared.project, &wu);
        if let Some(done) = done {
            done.finish(Err(InterfaceError::new(format!(
                "cancelled: workunit {wu}: {how}"
            ))));
        }
    }

    fn set_handle_sink(&self, sink: Arc<dyn HandleSink>) {
        *crate::guard::lock(&self.shared.sink) = Some(sink);
    }

    fn reattach(
        &self,
        task: Arc<PreparedTask>,
        handle: &str,
        done: Completion,
    ) -> Option<Completion> {
        let Some(wu) = workunit_of_handle(handle) else {
            return Some(done);
        };
        let pending = handle.starts_with(batch::PENDING_PREFIX);
        {
            let mut st = self.shared.lock();
            if st.broken.is_some() {
                // The master queues it again, and `execute_task` fails it with why; its
                // workunit, which nothing follows now, is cancelled.
                drop(st);
                cancel_once(&self.shared, &wu);
                return Some(done);
            }
            if self.claim_job(&mut st, &task).is_err() {
                return Some(done);
            }
            if pending {
                // Maybe never created: create it under the same name (a duplicate means it
                // exists, and it is re-attached). A pack's outcome is kept for members that
                // join it later, as for a re-attached one.
                if wu.is_pack() {
                    st.reattached.insert(wu.clone());
                }
                st.queue.push_back(Pending {
                    task,
                    done,
                    wu: Some(wu),
                    since: Instant::now(),
                    requeues: 0,
                });
                drop(st);
                self.shared.cond.notify_all();
                return None;
            }
            let packed = wu.is_pack();
            let waiting = Waiting {
                wu: wu.clone(),
                done: Some(done),
                task: task.clone(),
                since: Instant::now(),
                packed,
                requeues: 0,
            };
            if packed {
                st.reattached.insert(wu.clone());
                if let Some(c) = st.concluded.get(&wu).cloned() {
                    // Its pack came back while its other members were re-attached.
                    drop(st);
                    spool::finish_late_member(&self.shared, waiting, c);
                    return None;
                }
            }
            st.by_wu.entry(wu).or_default().push(task.id);
            st.waiting.insert(task.id, waiting);
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
                st = crate::guard::wait(&self.shared.cond, st);
            }
        }
        if let Some(tx) = crate::guard::lock(&self.shared.wake_watcher).take() {
            let _ = tx.send(());
        }
        // The spool thread stops between two spool entries (what it has not read stays for
        // `mw resume`); wait until it has, so its last entry's file is gone too.
        if let Some(rx) = crate::guard::lock(&self.watch_exit).take() {
            if !crate::guard::wait_for_drop(&rx, WATCH_EXIT_WAIT) {
                log::warn!(
                    "the BOINC spool thread did not end within {WATCH_EXIT_WAIT:?} of the \
                     shutdown; not waiting for it"
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::task::{Program, TaskSpec};

    fn task(id: u64) -> Arc<PreparedTask> {
        let program = Arc::new(Program::new("/bin/sh").unwrap());
        Arc::new(PreparedTask {
            id: TaskId(id),
            attempt: 1,
            job: "unit".into(),
            spec: TaskSpec::new(program, serde_json::json!(id)),
            output_dir: None,
            staging_dir: std::env::temp_dir(),
        })
    }

    fn waiting(id: u64, wu: &WuName) -> Waiting {
        Waiting {
            wu: wu.clone(),
            done: Some(Completion::new(TaskId(id), |_| {})),
            task: task(id),
            since: Instant::now(),
            packed: false,
            requeues: 0,
        }
    }

    /// Seen in CI: the spool thread died while the submit thread was creating a batch; the
    /// batch's tasks were cancelled before their workunits existed (or added after the
    /// break) and the master waited for ever. Breaking down takes every task, defers the
    /// cancel of workunits being created to that call, and keeps the call counted.
    #[test]
    fn breaking_down_takes_every_task_and_defers_cancels_of_workunits_being_created() {
        let created = WuName::parse("mw_unit_r1_0_1").unwrap();
        let creating = WuName::parse("mw_unit_r1_1_1").unwrap();
        let mut st = State::default();
        st.queue.push_back(Pending {
            task: task(2),
            done: Completion::new(TaskId(2), |_| {}),
            wu: None,
            since: Instant::now(),
            requeues: 0,
        });
        st.waiting.insert(TaskId(0), waiting(0, &created));
        st.waiting.insert(TaskId(1), waiting(1, &creating));
        st.by_wu.insert(created.clone(), vec![TaskId(0)]);
        st.by_wu.insert(creating.clone(), vec![TaskId(1)]);
        st.creating.insert(creating.clone());
        st.batches_in_flight = 1;
        let taken = st.break_down("the BOINC spool thread failed");
        assert_eq!(st.broken.as_deref(), Some("the BOINC spool thread failed"));
        assert_eq!(taken.queued.len(), 1);
        let ids = |v: &[Waiting]| v.iter().map(|w| w.task.id).collect::<Vec<_>>();
        assert_eq!(ids(&taken.cancel_now), [TaskId(0)]);
        assert_eq!(ids(&taken.after_create), [TaskId(1)]);
        assert_eq!(st.cancel_after_create, std::slice::from_ref(&creating));
        assert!(st.cancelled_wus.contains(&created) && st.cancelled_wus.contains(&creating));
        assert!(st.queue.is_empty() && st.waiting.is_empty() && st.by_wu.is_empty());
        // The call under way still ends (and runs its deferred cancels) as usual.
        assert_eq!(st.batches_in_flight, 1);
        assert!(st.creating.contains(&creating));
        assert_eq!(st.failed, 3);
        for p in taken.queued {
            p.done.abandon();
        }
    }
}
