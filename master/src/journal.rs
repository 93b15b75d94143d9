//! The job journal: one SQLite database (WAL mode) per job directory, holding the job spec,
//! every task's state, backend handle, timings and result, and an append-only event log.
//!
//! Writes go through one writer thread that commits in batches (group commit): the master
//! sends task-state changes down a channel and never waits for the disk, except that a
//! finished task becomes collectable only after its row is committed (fsync'd by SQLite
//! with `synchronous = FULL`), so a result reported done survives any crash, and a
//! submission returns once its tasks' rows are committed (the writer serves it at once).
//!
//! **Invariants:** the journal never deletes anything it did not write; an older mw refuses a
//! newer schema; a task's final row is written once (later writes for a final task are
//! ignored by the `WHERE state NOT IN (final)` guard).
//!
//! This module knows nothing of platforms; it stores handles as opaque strings.

use crate::task::{IdHasher, TaskId, TaskSpec, TaskState};
/// A connection to a journal, as [`open_checked`] returns it.
pub use rusqlite::Connection;
use rusqlite::{params, OpenFlags, OptionalExtension, ToSql};
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// Schema version this mw writes and understands.
pub const SCHEMA_VERSION: i64 = 1;
/// How long the writer gathers changes before one commit. A finished result becomes
/// collectable at most this much later; in exchange a commit (and its fsync) serves every
/// task that finished in the window.
const GROUP_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(25);

/// File name of the journal inside a job directory.
pub const JOURNAL_FILE: &str = "journal.sqlite";

/// Journal errors; each names the journal file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub String);

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What the journal knows of the job as a whole.
#[derive(Debug, Clone)]
pub struct JobMeta {
    /// Job id (the directory name, e.g. `monte_pi-3`).
    pub id: String,
    /// Job name.
    pub name: String,
    /// Interface name.
    pub interface: String,
    /// Worker slots asked for (multicore), if any.
    pub workers: Option<usize>,
    /// The job file's text.
    pub job_text: String,
    /// The job file's path when submitted (absolute).
    pub job_path: String,
    /// Unix seconds of creation.
    pub created: f64,
}

/// A task as stored.
#[derive(Debug, Clone)]
pub struct StoredTask {
    /// Index.
    pub index: u64,
    /// Input JSON.
    pub input: serde_json::Value,
    /// State.
    pub state: TaskState,
    /// Attempts.
    pub attempts: u32,
    /// Backend handle.
    pub handle: Option<String>,
    /// Unix seconds.
    pub submitted: Option<f64>,
    /// Unix seconds.
    pub started: Option<f64>,
    /// Unix seconds.
    pub finished: Option<f64>,
    /// Wall seconds.
    pub wall_secs: f64,
    /// CPU seconds.
    pub cpu_secs: f64,
    /// Host.
    pub host: String,
    /// Result JSON (done tasks).
    pub output: Option<serde_json::Value>,
    /// How it ended.
    pub exit: Option<String>,
    /// Error text (failed tasks).
    pub error: Option<String>,
    /// Output files kept.
    pub output_files: Vec<String>,
}

enum Write {
    Started {
        task: u64,
        attempt: u32,
        at: f64,
    },
    Handle {
        task: u64,
        handle: String,
    },
    Final {
        task: u64,
        row: Box<FinalRow>,
    },
    Requeued {
        task: u64,
        detail: String,
    },
    /// Queued tasks cancelled together (`cancel_all`): one message.
    Cancelled {
        tasks: Vec<u64>,
        at: f64,
    },
    Flush(Sender<()>),
    /// The master stopped before every task had an outcome, and why (an event).
    Stopped {
        reason: String,
        at: f64,
    },
    /// Tasks submitted (their rows, queued), committed before `done` is answered.
    Submitted(Box<Submitted>),
}

/// Tasks `first..` submitted at `at`, with their inputs as JSON text.
struct Submitted {
    first: u64,
    inputs: Vec<String>,
    at: f64,
    done: Sender<Result<(), String>>,
}

/// The exit text of a done task (`done_row` spells it in its SQL).
const DONE_EXIT: &str = "exit status 0";

/// A task's final row as the journal stores it: plain values, handed over by the master.
pub(crate) struct FinalRow {
    pub(crate) state: TaskState,
    pub(crate) attempts: u32,
    pub(crate) started: Option<f64>,
    pub(crate) finished: Option<f64>,
    pub(crate) wall: f64,
    pub(crate) cpu: f64,
    pub(crate) host: String,
    /// The result as JSON text.
    pub(crate) output: Option<String>,
    pub(crate) exit: Option<String>,
    pub(crate) error: Option<String>,
    /// Output file paths as a JSON array.
    pub(crate) files: String,
}

impl FinalRow {
    /// The parameters `?1` (the task's `idx`) to `?8` of both statements that write a final
    /// row (the general one and the one for a done task without files).
    fn shared_params<'a>(&'a self, idx: &'a i64) -> [&'a dyn ToSql; 8] {
        [
            idx,
            &self.attempts,
            &self.started,
            &self.finished,
            &self.wall,
            &self.cpu,
            &self.host,
            &self.output,
        ]
    }
}

/// A cancel request of `mw cancel`: (request id, task), a task of `None` meaning every
/// unfinished task of the job.
pub type CancelRequest = (i64, Option<u64>);

/// What [`Journal::open_for_master`] returns: the journal, the job, every task's status and
/// the pending cancel requests.
pub(crate) type OpenedForMaster = (Arc<Journal>, JobMeta, Vec<TaskStatus>, Vec<CancelRequest>);

/// What [`Journal::take_over`] read, with the lock and connection it holds.
struct TakenOver<T> {
    path: PathBuf,
    lock: std::fs::File,
    conn: Connection,
    meta: JobMeta,
    tasks: Vec<T>,
    cancels: Vec<CancelRequest>,
}

/// An open journal with its writer thread.
pub struct Journal {
    path: PathBuf,
    tx: Mutex<Option<Sender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The master's own reading (and small writing) connection; `None` once
    /// [`close`](Journal::close) closed it.
    conn: Mutex<Option<Connection>>,
    shared: Arc<Shared>,
    /// The job's master lock, held while this journal is open (released by the OS when
    /// the process dies, however it dies).
    _lock: std::fs::File,
}

/// The lock file in a job directory: one master per job, enforced by an exclusive `flock`
/// that the OS releases when the master's process ends.
pub const LOCK_FILE: &str = "master.lock";

/// Master locks this process took ahead of opening the job's journal
/// ([`hold_master_lock`]), each adopted by the next journal opened on that job directory.
static HELD_LOCKS: Mutex<Vec<(PathBuf, std::fs::File)>> = Mutex::new(Vec::new());

/// The key of a job directory among [`HELD_LOCKS`]: the same directory however it was named.
fn lock_key(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Takes the job directory's master lock now, for a command that must decide and change
/// things under it before it opens the journal as the job's master (`mw retry` requeues
/// tasks, `mw resume` reads what is left): no other master can start in between. The next
/// journal this process opens on `dir` adopts the lock; the lock goes with the process
/// otherwise. Taking a lock this process already holds this way succeeds.
pub fn hold_master_lock(dir: &Path) -> Result<(), JournalError> {
    if holds_master_lock(dir) {
        return Ok(());
    }
    let file = lock_job(dir)?;
    crate::guard::lock(&HELD_LOCKS).push((lock_key(dir), file));
    Ok(())
}

/// Whether this process holds `dir`'s master lock through [`hold_master_lock`].
pub fn holds_master_lock(dir: &Path) -> bool {
    let key = lock_key(dir);
    crate::guard::lock(&HELD_LOCKS)
        .iter()
        .any(|(k, _)| *k == key)
}

/// Takes the job directory's master lock (or adopts the one [`hold_master_lock`] took), or
/// says who holds it.
fn lock_job(dir: &Path) -> Result<std::fs::File, JournalError> {
    {
        let key = lock_key(dir);
        let mut held = crate::guard::lock(&HELD_LOCKS);
        if let Some(i) = held.iter().position(|(k, _)| *k == key) {
            return Ok(held.swap_remove(i).1);
        }
    }
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| jerr(&path, "cannot open the master lock", e))?;
    // A few quick attempts: `mw status` takes the lock shared for an instant to see
    // whether a master runs.
    for attempt in 0..5 {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if attempt < 4 => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => break,
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(jerr(&path, "cannot take the master lock", e))
            }
        }
    }
    Err(JournalError(format!(
        "{}: another master is running this job (it holds {LOCK_FILE}); `mw status` shows it",
        dir.display()
    )))
}

/// Whether a master holds the job directory's lock right now (it runs, on this machine or
/// another one sharing the filesystem).
pub fn master_running(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// Failure reporting shared by the journal handle and its writer thread.
#[derive(Default)]
struct Shared {
    failure: Mutex<Option<String>>,
    hook: Mutex<Option<FailureHook>>,
    durable: Mutex<Option<DurableHook>>,
    /// Set by [`Journal::hurry`]: the writer ends its group-commit window now.
    hurry: Mutex<bool>,
    hurried: std::sync::Condvar,
}

/// Called after each group commit with the tasks whose final rows it committed (see
/// [`Journal::on_durable`]).
type DurableHook = Box<dyn Fn(&[u64]) + Send + Sync>;

/// Called once when the journal cannot commit any more (see [`Journal::on_failure`]).
type FailureHook = Box<dyn Fn(&str) + Send + Sync>;

impl Shared {
    /// Sleeps through the group-commit window, or less if [`Journal::hurry`] is called.
    fn wait_window(&self) {
        let end = std::time::Instant::now() + GROUP_COMMIT_WINDOW;
        let mut hurry = crate::guard::lock(&self.hurry);
        while !*hurry {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            hurry = crate::guard::wait_timeout(&self.hurried, hurry, left);
        }
        *hurry = false;
    }

    fn failed(&self) -> bool {
        crate::guard::lock(&self.failure).is_some()
    }

    fn fail(&self, msg: String) {
        {
            let mut f = crate::guard::lock(&self.failure);
            if f.is_some() {
                return;
            }
            *f = Some(msg.clone());
        }
        if let Some(hook) = crate::guard::lock(&self.hook).as_ref() {
            hook(&msg);
        }
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Journal({})", self.path.display())
    }
}

fn jerr(path: &Path, what: &str, e: impl std::fmt::Display) -> JournalError {
    JournalError(format!("{}: {what}: {e}", path.display()))
}

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE job (
    id TEXT NOT NULL, name TEXT NOT NULL, interface TEXT NOT NULL, workers INTEGER,
    job_text TEXT NOT NULL, job_path TEXT NOT NULL, created REAL NOT NULL,
    master_pid INTEGER, master_host TEXT, status TEXT NOT NULL DEFAULT 'running'
);
CREATE TABLE tasks (
    idx INTEGER PRIMARY KEY, input TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    handle TEXT, submitted REAL, started REAL, finished REAL, wall REAL NOT NULL DEFAULT 0,
    cpu REAL NOT NULL DEFAULT 0, host TEXT NOT NULL DEFAULT '', output TEXT, exit TEXT, error TEXT,
    output_files TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, task INTEGER, kind TEXT NOT NULL, detail TEXT);
CREATE TABLE cancel_requests (task INTEGER, at REAL NOT NULL, done INTEGER NOT NULL DEFAULT 0);
";

fn configure(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| jerr(path, "setting WAL mode", e))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| jerr(path, "setting synchronous", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| jerr(path, "setting busy timeout", e))?;
    Ok(())
}

/// Opens a journal database read-only-ish (no writer thread), checking it is an mw journal
/// of a schema this mw understands. Never modifies or deletes the file.
pub fn open_checked(path: &Path, write: bool) -> Result<Connection, JournalError> {
    if !path.is_file() {
        return Err(JournalError(format!(
            "{}: no journal here (is this an mw job directory?)",
            path.display()
        )));
    }
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let mut conn =
        Connection::open_with_flags(path, flags).map_err(|e| jerr(path, "cannot open", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| jerr(path, "setting busy timeout", e))?;
    let not_a_journal = |e: rusqlite::Error| {
        JournalError(format!(
            "{}: not an mw journal, or it is corrupt ({e}); nothing was changed",
            path.display()
        ))
    };
    let version = match schema_version(&conn) {
        // Reading a WAL database needs its `-shm` file, made beside it: in a directory that
        // is not writable (a finished job kept read-only) SQLite cannot make it.
        Err(e) if !write && cannot_make_shm(&e) => {
            conn = open_immutable(path, &e)?;
            schema_version(&conn).map_err(not_a_journal)?
        }
        read => read.map_err(not_a_journal)?,
    };
    let Some(version) = version else {
        return Err(JournalError(format!(
            "{}: not an mw journal (no schema version); nothing was changed",
            path.display()
        )));
    };
    let v: i64 = version.parse().unwrap_or(i64::MAX);
    if v > SCHEMA_VERSION {
        return Err(JournalError(format!(
            "{}: journal schema {v} is newer than this mw understands ({SCHEMA_VERSION}); upgrade mw",
            path.display()
        )));
    }
    // A full integrity check catches truncation and damage before anything is read. It reads
    // the whole file (seconds for a journal of 10^6 tasks), so a process checks a journal
    // once: a command opens it several times (`mw status` three, `mw cancel` every 20 ms
    // while it waits).
    if checked_in_this_process(path, false) {
        check_mark(&conn, path)?;
        return Ok(conn);
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| {
            JournalError(format!(
                "{}: the journal is corrupt ({e}); nothing was changed",
                path.display()
            ))
        })?;
    if check != "ok" {
        return Err(JournalError(format!(
            "{}: the journal is corrupt ({check}); nothing was changed",
            path.display()
        )));
    }
    checked_in_this_process(path, true);
    check_mark(&conn, path)?;
    Ok(conn)
}

fn schema_version(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Whether a read-only connection failed as one does that cannot create the database's
/// `-shm` file (SQLite says "attempt to write a readonly database" or "unable to open
/// database file").
fn cannot_make_shm(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
    )
}

/// `path + suffix` (`-wal`, `-shm`, `-journal`: SQLite's files beside a database).
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens a journal that cannot be opened read-only because its `-shm` file cannot be made
/// (`why`), as SQLite's `immutable` file, which needs no `-shm`: a finished job in a
/// directory that is not writable, left by a clean close with no `-wal` file. An immutable
/// database is read without locks or a `-wal`, so with a `-wal` (or a rollback `-journal`)
/// beside it, which may hold committed results, it is refused instead, saying why.
pub(crate) fn open_immutable(
    path: &Path,
    why: &rusqlite::Error,
) -> Result<Connection, JournalError> {
    for suffix in ["-wal", "-journal"] {
        let pending = beside(path, suffix);
        // An empty one holds nothing (not even a header): what a master leaves when it
        // folded its log in (`Journal::close`) but exited with a connection open.
        if std::fs::symlink_metadata(&pending).is_ok_and(|m| m.len() > 0) {
            return Err(JournalError(format!(
                "{}: cannot read the journal: SQLite cannot create {} ({why}; is the job \
                 directory not writable?), which it needs to read the changes in {}; make \
                 the directory writable, or copy the job directory to one that is; nothing \
                 was changed",
                path.display(),
                beside(path, "-shm").display(),
                pending.display()
            )));
        }
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(immutable_uri(path), flags).map_err(|e| {
        jerr(
            path,
            "cannot open (immutable, for a directory that is not writable)",
            e,
        )
    })?;
    Ok(conn)
}

/// The `file:` URI of `path` with `immutable=1`, every byte but an unreserved one
/// percent-encoded (so `?`, `#` and `%` in a name stay part of it).
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    uri
}

/// Whether this process found the journal at `path` sound already; `passed` records that it
/// just did.
fn checked_in_this_process(path: &Path, passed: bool) -> bool {
    static CHECKED: Mutex<Option<std::collections::HashSet<PathBuf>>> = Mutex::new(None);
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut checked = crate::guard::lock(&CHECKED);
    let set = checked.get_or_insert_with(Default::default);
    if passed {
        set.insert(key)
    } else {
        set.contains(&key)
    }
}

impl Journal {
    /// Creates a new journal in `dir` for `meta` (job status `running`).
    pub fn create(dir: &Path, meta: &JobMeta) -> Result<Arc<Journal>, JournalError> {
        Self::create_in_status(dir, meta, "running")
    }

    /// Creates a new journal in `dir` for `meta` whose job starts in `status` (e.g. a job
    /// whose tasks are still to be recorded), in the same transaction as the job row: no
    /// crash leaves the job in another status first.
    pub fn create_in_status(
        dir: &Path,
        meta: &JobMeta,
        status: &str,
    ) -> Result<Arc<Journal>, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        if path.exists() {
            return Err(JournalError(format!(
                "{}: a journal already exists here; resume it with `mw resume` or pick a new name",
                path.display()
            )));
        }
        let lock = lock_job(dir)?;
        let mut conn = Connection::open(&path).map_err(|e| jerr(&path, "cannot create", e))?;
        configure(&conn, &path)?;
        // One transaction (one commit, one WAL sync): a crash leaves a journal with its
        // tables, schema version and job, or none of them.
        let tx = conn
            .transaction()
            .map_err(|e| jerr(&path, "creating tables", e))?;
        tx.execute_batch(SCHEMA)
            .map_err(|e| jerr(&path, "creating tables", e))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )
        .map_err(|e| jerr(&path, "writing schema version", e))?;
        tx.execute(
            "INSERT INTO job (id, name, interface, workers, job_text, job_path, created, master_pid, master_host, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                meta.id,
                meta.name,
                meta.interface,
                meta.workers.map(|w| w as i64),
                meta.job_text,
                meta.job_path,
                meta.created,
                std::process::id() as i64,
                mw_worker_runtime::exec::host_name(),
                status
            ],
        )
        .map_err(|e| jerr(&path, "writing the job", e))?;
        tx.commit()
            .map_err(|e| jerr(&path, "creating the journal", e))?;
        Self::start(path, conn, lock)
    }

    /// Opens an existing journal for a resumed master: returns it with the job and tasks.
    pub fn open(dir: &Path) -> Result<(Arc<Journal>, JobMeta, Vec<StoredTask>), JournalError> {
        let t = Self::take_over(dir, |c, p| read_tasks(c, p, None), |t| !t.state.is_final())?;
        Ok((Self::start(t.path, t.conn, t.lock)?, t.meta, t.tasks))
    }

    /// Opens an existing journal for a resumed master, like [`open`](Self::open), but reads
    /// only each task's compact status (no inputs, no results): what a master of millions of
    /// tasks needs to resume.
    pub fn open_status(
        dir: &Path,
    ) -> Result<(Arc<Journal>, JobMeta, Vec<TaskStatus>), JournalError> {
        let (journal, meta, tasks, _) = Self::open_for_master(dir)?;
        Ok((journal, meta, tasks))
    }

    /// [`open_status`](Self::open_status), also returning the cancel requests still pending
    /// (read in the same snapshot as the tasks), which the master applies before it
    /// dispatches anything: a `mw cancel` made while no master held the job is never missed.
    pub(crate) fn open_for_master(dir: &Path) -> Result<OpenedForMaster, JournalError> {
        let t = Self::take_over(dir, read_statuses, |t| !t.state.is_final())?;
        Ok((
            Self::start(t.path, t.conn, t.lock)?,
            t.meta,
            t.tasks,
            t.cancels,
        ))
    }

    /// The common start of [`open`](Self::open) and [`open_status`](Self::open_status): the
    /// job's lock, a checked connection, and in one write transaction (one snapshot: a
    /// concurrent `mw cancel` is seen whole or not at all) the job, its tasks as `read`
    /// reads them, the pending cancel requests, and this process recorded as its master.
    fn take_over<T>(
        dir: &Path,
        read: impl FnOnce(&Connection, &Path) -> Result<Vec<T>, JournalError>,
        unfinished: impl Fn(&T) -> bool,
    ) -> Result<TakenOver<T>, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let lock = lock_job(dir)?;
        let mut conn = open_checked(&path, true)?;
        configure(&conn, &path)?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| jerr(&path, "recording the master", e))?;
        let meta = read_meta(&tx, &path)?;
        tx.execute(
            // A job still being recorded stays so until its tasks are all recorded.
            "UPDATE job SET master_pid = ?1, master_host = ?2,
             status = CASE status WHEN 'recording' THEN status ELSE 'running' END",
            params![
                std::process::id() as i64,
                mw_worker_runtime::exec::host_name()
            ],
        )
        .map_err(|e| jerr(&path, "recording the master", e))?;
        let tasks = read(&tx, &path)?;
        let cancels = read_pending_cancels(&tx, &path)?;
        record_takeover(&tx, &path, tasks.iter().filter(|t| unfinished(t)).count())?;
        tx.commit()
            .map_err(|e| jerr(&path, "recording the master", e))?;
        Ok(TakenOver {
            path,
            lock,
            conn,
            meta,
            tasks,
            cancels,
        })
    }

    fn start(
        path: PathBuf,
        conn: Connection,
        lock: std::fs::File,
    ) -> Result<Arc<Journal>, JournalError> {
        let writer_conn = Connection::open(&path).map_err(|e| jerr(&path, "cannot open", e))?;
        configure(&writer_conn, &path)?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let s2 = shared.clone();
        let p2 = path.clone();
        let writer = std::thread::Builder::new()
            .name("mw-journal".into())
            .spawn(move || {
                // A panic in a commit is contained in `writer_loop` (a lasting failure); one
                // anywhere else in it is one too, so the master stops instead of waiting for
                // ever for results that are never reported durable.
                if let Err(panic) = crate::guard::contain(|| writer_loop(writer_conn, rx, &p2, &s2))
                {
                    s2.fail(writer_panicked(&p2, &panic));
                }
            })
            .map_err(|e| jerr(&path, "starting the writer thread", e))?;
        Ok(Arc::new(Journal {
            path,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            conn: Mutex::new(Some(conn)),
            shared,
            _lock: lock,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, w: Write) {
        let guard = crate::guard::lock(&self.tx);
        if let Some(tx) = guard.as_ref() {
            let _ = tx.send(w);
        }
    }

    /// The lasting write error, if the journal could not commit (after retries). From then
    /// on nothing more is committed, and nothing more is reported as durable.
    pub fn failure(&self) -> Option<String> {
        crate::guard::lock(&self.shared.failure).clone()
    }

    /// Registers `hook`, called once (from the writer thread) when the journal fails for
    /// good; at once if it already has.
    pub fn on_failure(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        *crate::guard::lock(&self.shared.hook) = Some(Box::new(hook));
        if let Some(msg) = self.failure() {
            if let Some(h) = crate::guard::lock(&self.shared.hook).as_ref() {
                h(&msg);
            }
        }
    }

    /// Registers `hook`, called (from the writer thread) after every group commit with the
    /// tasks whose final rows that commit stored, once per commit: only then may their
    /// results be reported. Never called for a commit that failed.
    pub(crate) fn on_durable(&self, hook: impl Fn(&[u64]) + Send + Sync + 'static) {
        *crate::guard::lock(&self.shared.durable) = Some(Box::new(hook));
    }

    /// Records tasks `first..` as submitted (queued), in one transaction, committed on return.
    pub fn record_submitted(&self, first: u64, specs: &[TaskSpec]) -> Result<(), JournalError> {
        self.record_submitted_at(first, specs, now_unix())
    }

    /// [`record_submitted`](Self::record_submitted) with the submission time (Unix seconds)
    /// the caller also keeps, so live and journaled times agree.
    pub fn record_submitted_at(
        &self,
        first: u64,
        specs: &[TaskSpec],
        at: f64,
    ) -> Result<(), JournalError> {
        self.record(first, specs.iter().map(|s| &s.input), specs.len(), at)
    }

    /// Records tasks `first..` with these inputs as submitted (queued), in one transaction,
    /// committed on return.
    pub fn record_inputs(
        &self,
        first: u64,
        inputs: &[serde_json::Value],
    ) -> Result<(), JournalError> {
        self.record_inputs_at(first, inputs, now_unix())
    }

    /// [`record_inputs`](Self::record_inputs) with the submission time (Unix seconds).
    pub fn record_inputs_at(
        &self,
        first: u64,
        inputs: &[serde_json::Value],
        at: f64,
    ) -> Result<(), JournalError> {
        self.record(first, inputs.iter(), inputs.len(), at)
    }

    /// [`record_encoded_at`](Self::record_encoded_at) at the current time.
    pub fn record_encoded(
        &self,
        first: u64,
        inputs: Vec<Box<RawValue>>,
    ) -> Result<(), JournalError> {
        self.record_encoded_at(first, inputs, now_unix())
    }

    /// Like [`record_inputs_at`](Self::record_inputs_at), with each input given as its
    /// JSON text (a `RawValue` is valid JSON by construction, so it is stored as it is): a
    /// caller producing many inputs keeps their compact text, not their parsed trees.
    pub fn record_encoded_at(
        &self,
        first: u64,
        inputs: Vec<Box<RawValue>>,
        at: f64,
    ) -> Result<(), JournalError> {
        let rows = inputs
            .into_iter()
            .map(|r| String::from(Box::<str>::from(r)))
            .collect();
        self.record_rows(first, rows, at)
    }

    fn record<'a>(
        &self,
        first: u64,
        inputs: impl Iterator<Item = &'a serde_json::Value>,
        count: usize,
        at: f64,
    ) -> Result<(), JournalError> {
        let mut rows = Vec::with_capacity(count);
        for input in inputs {
            rows.push(serde_json::to_string(input).unwrap_or_else(|_| "null".into()));
        }
        self.record_rows(first, rows, at)
    }

    /// Records tasks through the writer (its connection is the only one that writes while
    /// a master runs, so a submission never waits on SQLite's busy handler for a group
    /// commit), and waits for their commit.
    fn record_rows(&self, first: u64, rows: Vec<String>, at: f64) -> Result<(), JournalError> {
        let (tx, rx) = mpsc::channel();
        self.send(Write::Submitted(Box::new(Submitted {
            first,
            inputs: rows,
            at,
            done: tx,
        })));
        self.hurry();
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(jerr(&self.path, "recording tasks", e)),
            Err(_) => Err(jerr(
                &self.path,
                "recording tasks",
                "the journal's writer has stopped",
            )),
        }
    }

    /// The stored input of task `index` (read back when the task is dispatched, so a master
    /// keeps no inputs in memory).
    pub fn read_input(&self, index: u64) -> Result<serde_json::Value, JournalError> {
        let guard = crate::guard::lock(&self.conn);
        let conn = self.open_conn(&guard)?;
        let text: String = conn
            .prepare_cached("SELECT input FROM tasks WHERE idx = ?1")
            .and_then(|mut st| st.query_row(params![sql_idx(index)], |r| r.get(0)))
            .map_err(|e| jerr(&self.path, &format!("reading the input of task {index}"), e))?;
        stored_json(&text).map_err(|e| {
            jerr(
                &self.path,
                "the journal is corrupt",
                format!("task {index}: its stored input does not parse ({e})"),
            )
        })
    }

    pub(crate) fn record_started(&self, task: TaskId, attempt: u32) {
        self.send(Write::Started {
            task: task.0,
            attempt,
            at: now_unix(),
        });
    }

    pub(crate) fn record_handle(&self, task: TaskId, handle: &str) {
        self.send(Write::Handle {
            task: task.0,
            handle: handle.to_string(),
        });
    }

    /// Records that a failed attempt of `task` will be retried (`detail` says why and when).
    pub(crate) fn record_requeued(&self, task: TaskId, detail: &str) {
        self.send(Write::Requeued {
            task: task.0,
            detail: detail.to_string(),
        });
    }

    /// Records a final state; the durable hook ([`on_durable`](Self::on_durable)) gets the
    /// task once it is committed.
    pub(crate) fn record_final(&self, task: TaskId, row: FinalRow) {
        self.send(Write::Final {
            task: task.0,
            row: Box::new(row),
        });
    }

    /// Records queued tasks as cancelled, all at once; the durable hook gets them once
    /// committed.
    pub(crate) fn record_cancelled(&self, tasks: Vec<u64>) {
        self.send(Write::Cancelled {
            tasks,
            at: now_unix(),
        });
    }

    /// Records that the master stopped, and why (what `mw status` says of the job until a
    /// master takes it over again).
    pub(crate) fn record_stopped(&self, reason: &str) {
        self.send(Write::Stopped {
            reason: reason.to_string(),
            at: now_unix(),
        });
    }

    /// Waits until everything sent so far is committed.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Write::Flush(tx));
        self.hurry();
        let _ = rx.recv();
    }

    /// Ends the writer's current group-commit window now (the master calls this when
    /// nothing more is running: no later result would share the commit, so waiting out the
    /// window would only delay the last results).
    pub(crate) fn hurry(&self) {
        *crate::guard::lock(&self.shared.hurry) = true;
        self.shared.hurried.notify_one();
    }

    /// Marks the job finished (or not) for `mw status`.
    pub fn set_job_status(&self, status: &str) -> Result<(), JournalError> {
        self.flush();
        let guard = crate::guard::lock(&self.conn);
        self.open_conn(&guard)?
            .execute("UPDATE job SET status = ?1", params![status])
            .map_err(|e| jerr(&self.path, "updating job status", e))?;
        Ok(())
    }

    /// Pending cancel requests (written by `mw cancel` while this master runs), as
    /// (request id, task); a task of `None` means "the whole job". Apply them, then
    /// [`ack_cancel_requests`](Self::ack_cancel_requests): `mw cancel` waits for that.
    pub fn pending_cancel_requests(&self) -> Result<Vec<CancelRequest>, JournalError> {
        let guard = crate::guard::lock(&self.conn);
        read_pending_cancels(self.open_conn(&guard)?, &self.path)
    }

    /// Whether what a cancel request of `task` (`None`: the whole job) asks is committed:
    /// the task (every task) has its outcome. A request is acknowledged only then: one
    /// acknowledged while a running task it stops had not yet ended in the journal was lost
    /// with a master killed in between (the next master ran the task again, after
    /// `mw cancel` had said it was cancelled); unacknowledged, the next master applies it.
    pub fn cancel_settled(&self, task: Option<u64>) -> Result<bool, JournalError> {
        let guard = crate::guard::lock(&self.conn);
        let conn = self.open_conn(&guard)?;
        let unfinished = match task {
            None => count_unfinished(conn, &self.path)?,
            Some(t) => count(
                conn,
                "SELECT COUNT(*) FROM tasks WHERE idx = ?1 AND state IN ('queued','running')",
                params![sql_idx(t)],
            )
            .map_err(|e| jerr(&self.path, "reading a task", e))?,
        };
        Ok(unfinished == 0)
    }

    /// Marks cancel requests applied (after the master applied them).
    pub fn ack_cancel_requests(&self, ids: &[i64]) -> Result<(), JournalError> {
        let mut guard = crate::guard::lock(&self.conn);
        let tx = guard
            .as_mut()
            .ok_or_else(|| self.closed())?
            .transaction()
            .map_err(|e| jerr(&self.path, "acknowledging cancel requests", e))?;
        for id in ids {
            tx.execute(
                "UPDATE cancel_requests SET done = 1 WHERE rowid = ?1",
                params![id],
            )
            .map_err(|e| jerr(&self.path, "acknowledging cancel requests", e))?;
        }
        tx.commit()
            .map_err(|e| jerr(&self.path, "acknowledging cancel requests", e))
    }

    /// Stops the writer after committing everything, then folds the write-ahead log into
    /// the database file (best effort): SQLite does that only when the last connection of
    /// the last process closes, and a process that exits with one still open leaves every
    /// commit in `-wal`. A finished job is then one file, which a reader of a directory it
    /// cannot write opens as immutable.
    pub fn close(&self) {
        self.flush();
        crate::guard::lock(&self.tx).take();
        if let Some(h) = crate::guard::lock(&self.writer).take() {
            let _ = h.join();
        }
        // Closed now, not when the last `Arc` goes: a handle still held somewhere as the
        // process exits would leave the connection open, and with it a `-wal` and `-shm`.
        if let Some(conn) = crate::guard::lock(&self.conn).take() {
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                log::debug!("{}: folding the write-ahead log: {e}", self.path.display());
            }
            if let Err((_, e)) = conn.close() {
                log::debug!("{}: closing: {e}", self.path.display());
            }
        }
    }

    /// The open reading connection, or the error of a journal already closed.
    fn open_conn<'g>(&self, guard: &'g Option<Connection>) -> Result<&'g Connection, JournalError> {
        guard.as_ref().ok_or_else(|| self.closed())
    }

    fn closed(&self) -> JournalError {
        JournalError(format!("{}: the journal is closed", self.path.display()))
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        crate::guard::lock(&self.tx).take();
        if let Some(h) = crate::guard::lock(&self.writer).take() {
            let _ = h.join();
        }
    }
}

/// How a failed group commit is retried before the journal gives up: each attempt already
/// waits up to the busy timeout for another process's lock.
fn commit_retry() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(100))
        .with_max_delay(std::time::Duration::from_secs(2))
        .with_max_times(COMMIT_ATTEMPTS - 1)
}

/// Most writes in one group commit. The writer's vectors are made this large once (memory
/// is touched only as far as it is used), so they never grow by copying.
const MAX_BATCH: usize = 100_000;

/// Attempts of one group commit (the first plus retries).
const COMMIT_ATTEMPTS: usize = 4;

/// The file `path` names now (device, inode): the journal's file as the writer started,
/// to tell when it was removed or replaced under a running master.
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The lasting failure a panic in the writer thread is (`panic` its message): nothing more
/// is committed or reported durable, and the master stops saying so.
fn writer_panicked(path: &Path, panic: &str) -> String {
    let msg = format!(
        "{}: the journal's writer thread panicked ({panic}); nothing more is stored, so \
         nothing more is reported",
        path.display()
    );
    log::error!("{msg}");
    msg
}

fn writer_loop(mut conn: Connection, rx: Receiver<Write>, path: &Path, shared: &Shared) {
    let mut finals_committed = count_final(&conn).unwrap_or(0);
    let identity = file_identity(path);
    // Kept from one commit to the next: a fast job's batches hold tens of thousands of
    // writes, and growing fresh vectors for each cost page faults (zeroing) on every commit.
    let mut batch: Vec<Write> = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    let mut durable: Vec<u64> = Vec::new();
    let mut writes: Vec<Write> = Vec::with_capacity(MAX_BATCH);
    let mut submitted: Vec<Sender<Result<(), String>>> = Vec::new();
    while let Ok(first) = rx.recv() {
        // Group commit: gather what arrives within a short window (or until a flush is
        // asked for), so one fsync and one write of each touched page serve many tasks.
        // The writer sleeps through the window instead of waking for every message, so
        // senders rarely pay for a wake-up; a flush request, or a master with nothing
        // more running (`hurry`), ends the window at once.
        if !matches!(first, Write::Flush(_) | Write::Submitted(_)) {
            shared.wait_window();
        }
        batch.clear();
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // Flush answers are taken out first, and the tasks whose final rows are in this
        // commit noted: they are reported durable only after the commit succeeded; a flush
        // is answered either way.
        flushes.clear();
        durable.clear();
        writes.clear();
        submitted.clear();
        for w in batch.drain(..) {
            match w {
                Write::Flush(done) => flushes.push(done),
                Write::Final { task, row } => {
                    durable.push(task);
                    writes.push(Write::Final { task, row });
                }
                Write::Cancelled { tasks, at } => {
                    durable.extend_from_slice(&tasks);
                    writes.push(Write::Cancelled { tasks, at });
                }
                Write::Submitted(mut sub) => {
                    // Answered after the commit (below), with its outcome.
                    let (tx, _) = mpsc::channel();
                    submitted.push(std::mem::replace(&mut sub.done, tx));
                    writes.push(Write::Submitted(sub));
                }
                other => writes.push(other),
            }
        }
        // What submitters hear: their tasks are committed, or why not.
        let mut answer: Result<(), String> = Ok(());
        if shared.failed() {
            // After a lasting failure nothing more is committed or reported: the master is
            // stopping, and what it did not store it must not report.
            durable.clear();
            answer = Err(crate::guard::lock(&shared.failure)
                .clone()
                .unwrap_or_default());
        } else if !writes.is_empty() {
            // A panic while committing or reporting (the durable hook runs the master's
            // code) is a lasting failure like a commit that keeps failing. It is caught here,
            // with the flush and submission answers still held: they are answered only once
            // the failure is recorded, so no waiter takes a dead writer for a committed one.
            let committed = crate::guard::contain(|| {
                commit(
                    &mut conn,
                    &writes,
                    &durable,
                    path,
                    identity,
                    &mut finals_committed,
                    shared,
                )
            });
            answer = committed.unwrap_or_else(|panic| {
                let msg = writer_panicked(path, &panic);
                shared.fail(msg.clone());
                Err(msg)
            });
        }
        for done in submitted.drain(..) {
            let _ = done.send(answer.clone());
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        // The rows' strings go now, not with the next batch.
        writes.clear();
    }
}

/// Commits one group of writes (with retries) and, once it is stored, reports the tasks
/// whose final rows it holds (`durable`) through the durable hook. A lasting failure (the
/// commit keeps failing, the journal file was replaced) is recorded in `shared` (which
/// stops the master) and returned; nothing is reported durable then.
fn commit(
    conn: &mut Connection,
    writes: &[Write],
    durable: &[u64],
    path: &Path,
    identity: Option<(u64, u64)>,
    finals_committed: &mut u64,
    shared: &Shared,
) -> Result<(), String> {
    use backon::BlockingRetryable;
    let result = (|| write_batch(conn, writes))
        .retry(commit_retry())
        .sleep(std::thread::sleep)
        .notify(|e, after| {
            log::warn!(
                "journal {}: commit failed ({e}); retrying in {after:?}",
                path.display()
            )
        })
        .call();
    // A journal file removed (or replaced) while the master runs takes every commit since
    // with it, though SQLite commits to the unlinked file without an error: nothing more is
    // reported as stored, and the master stops saying why.
    let gone = result.is_ok() && identity.is_some() && file_identity(path) != identity;
    match result {
        Ok(_) if gone => {
            let msg = format!(
                "{}: the journal file was removed or replaced while the master ran; \
                 results since are not stored there, so nothing more is reported",
                path.display()
            );
            log::error!("{msg}");
            shared.fail(msg.clone());
            Err(msg)
        }
        Ok(n) => {
            *finals_committed += n;
            // The high-water mark of committed final rows, so a journal that later lost
            // commits (a deleted -wal file) is detected on open. Written after the commit:
            // it never runs ahead of the database.
            write_mark(path, *finals_committed);
            if !durable.is_empty() {
                for &task in durable {
                    // Stored, not yet reported: the window a writer that dies leaves open.
                    crate::crash::panic_point("journal-writer", Some(task));
                }
                if let Some(hook) = crate::guard::lock(&shared.durable).as_ref() {
                    hook(durable);
                }
            }
            Ok(())
        }
        Err(e) => {
            let msg = format!(
                "{}: cannot commit to the journal after {COMMIT_ATTEMPTS} attempts: {e}",
                path.display()
            );
            log::error!("{msg}");
            shared.fail(msg.clone());
            Err(msg)
        }
    }
}

/// Writes one group of updates in one transaction; returns how many final rows it stored.
fn write_batch(conn: &mut Connection, batch: &[Write]) -> rusqlite::Result<u64> {
    // Tasks that also end in this batch: their final row says everything, so their
    // started/handle updates are skipped (for short tasks, most of them).
    let ending: std::collections::HashSet<u64, std::hash::BuildHasherDefault<IdHasher>> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Final { task, .. } => Some(*task),
            _ => None,
        })
        .collect();
    let mut finals = 0u64;
    let tx = conn.transaction()?;
    {
        // Each statement is looked up once per group commit, not once per row. "Not final"
        // is spelt with `<>`: `NOT IN (...)` builds a temporary index at every execution
        // (a third of the cost of a row's update, measured).
        let mut started = Lazy::new(
            &tx,
            "UPDATE tasks SET state = 'running', attempts = ?2, started = ?3
             WHERE idx = ?1 AND state <> 'done' AND state <> 'failed' AND state <> 'cancelled'",
        );
        let mut handle_row = Lazy::new(&tx, "UPDATE tasks SET handle = ?2 WHERE idx = ?1");
        let mut event = Lazy::new(
            &tx,
            "INSERT INTO events (at, task, kind, detail) VALUES (?1, ?2, ?3, ?4)",
        );
        let mut requeued = Lazy::new(
            &tx,
            "UPDATE tasks SET state = 'queued', handle = NULL
             WHERE idx = ?1 AND state <> 'done' AND state <> 'failed' AND state <> 'cancelled'",
        );
        let mut final_row = Lazy::new(
            &tx,
            "UPDATE tasks SET attempts = ?2, started = ?3, finished = ?4, wall = ?5, cpu = ?6,
             host = ?7, output = ?8, state = ?9, exit = ?10, error = ?11, output_files = ?12
             WHERE idx = ?1 AND state <> 'done' AND state <> 'failed' AND state <> 'cancelled'",
        );
        let mut submit_row = Lazy::new(
            &tx,
            "INSERT OR IGNORE INTO tasks (idx, input, state, submitted) VALUES (?1, ?2, 'queued', ?3)",
        );
        let mut done_row = Lazy::new(
            &tx,
            "UPDATE tasks SET state = 'done', attempts = ?2, started = ?3, finished = ?4,
             wall = ?5, cpu = ?6, host = ?7, output = ?8, exit = 'exit status 0', error = NULL,
             output_files = '[]'
             WHERE idx = ?1 AND state <> 'done' AND state <> 'failed' AND state <> 'cancelled'",
        );
        let mut cancelled = Lazy::new(
            &tx,
            // The row `final_row` makes for a cancelled task that never ran.
            "UPDATE tasks SET state = 'cancelled', exit = 'cancelled',
             error = 'task ' || idx || ' was cancelled', finished = ?2, wall = 0, cpu = 0,
             host = '', output = NULL, output_files = '[]'
             WHERE idx = ?1 AND state <> 'done' AND state <> 'failed' AND state <> 'cancelled'",
        );
        for w in batch {
            match w {
                Write::Started { task, .. } | Write::Handle { task, .. }
                    if ending.contains(task) => {}
                Write::Started { task, attempt, at } => {
                    started
                        .get()?
                        .execute(params![sql_idx(*task), attempt, at])?;
                }
                Write::Handle { task, handle } => {
                    handle_row.get()?.execute(params![sql_idx(*task), handle])?;
                    // Local process groups change with every attempt and matter only
                    // to `mw resume`: not worth an event each.
                    if handle.starts_with("local:") {
                        continue;
                    }
                    event
                        .get()?
                        .execute(params![now_unix(), sql_idx(*task), "handle", handle])?;
                }
                Write::Requeued { task, detail } => {
                    requeued.get()?.execute(params![sql_idx(*task)])?;
                    event
                        .get()?
                        .execute(params![now_unix(), sql_idx(*task), "retry", detail])?;
                }
                // Most rows of a fast job: done, no output files (constants in the SQL).
                Write::Final { task, row }
                    if row.state == TaskState::Done
                        && row.exit.as_deref() == Some(DONE_EXIT)
                        && row.error.is_none()
                        && row.files == "[]" =>
                {
                    let idx = sql_idx(*task);
                    finals += done_row.get()?.execute(&row.shared_params(&idx)[..])? as u64;
                }
                Write::Final { task, row } => {
                    let (idx, state) = (sql_idx(*task), row.state.as_str());
                    let rest: [&dyn ToSql; 4] = [&state, &row.exit, &row.error, &row.files];
                    let changed = final_row.get()?.execute(rusqlite::params_from_iter(
                        row.shared_params(&idx).into_iter().chain(rest),
                    ))?;
                    finals += changed as u64;
                    // A task that ended otherwise than done gets an event too; a done task's
                    // row says everything (an event each would double the writes of a fast
                    // job).
                    if row.state != TaskState::Done {
                        event.get()?.execute(params![
                            now_unix(),
                            sql_idx(*task),
                            row.state.as_str(),
                            row.exit
                        ])?;
                    }
                }
                Write::Cancelled { tasks, at } => {
                    let stmt = cancelled.get()?;
                    for task in tasks {
                        finals += stmt.execute(params![sql_idx(*task), at])? as u64;
                    }
                    event.get()?.execute(params![
                        at,
                        Option::<i64>::None,
                        "cancelled",
                        format!("{} queued tasks", tasks.len())
                    ])?;
                }
                Write::Submitted(sub) => {
                    let stmt = submit_row.get()?;
                    for (i, input) in sub.inputs.iter().enumerate() {
                        stmt.execute(params![
                            sql_idx(sub.first.saturating_add(i as u64)),
                            input,
                            sub.at
                        ])?;
                    }
                    event.get()?.execute(params![
                        now_unix(),
                        Option::<i64>::None,
                        "submitted",
                        format!("{} tasks from {}", sub.inputs.len(), sub.first)
                    ])?;
                }
                Write::Stopped { reason, at } => {
                    event.get()?.execute(params![
                        at,
                        Option::<i64>::None,
                        EVENT_STOPPED,
                        reason
                    ])?;
                }
                Write::Flush(_) => {}
            }
        }
    }
    tx.commit()?;
    Ok(finals)
}

/// A statement of a group commit, prepared the first time it is needed.
struct Lazy<'c> {
    conn: &'c Connection,
    sql: &'static str,
    stmt: Option<rusqlite::CachedStatement<'c>>,
}

impl<'c> Lazy<'c> {
    fn new(conn: &'c Connection, sql: &'static str) -> Self {
        Lazy {
            conn,
            sql,
            stmt: None,
        }
    }

    fn get(&mut self) -> rusqlite::Result<&mut rusqlite::CachedStatement<'c>> {
        match &mut self.stmt {
            Some(s) => Ok(s),
            slot => Ok(slot.insert(self.conn.prepare_cached(self.sql)?)),
        }
    }
}

/// The handles of running tasks (index, handle), for stopping what a dead master left.
pub fn running_handles(conn: &Connection, path: &Path) -> Result<Vec<(u64, String)>, JournalError> {
    let mut stmt = conn
        .prepare(
            "SELECT idx, handle FROM tasks WHERE state = 'running' AND handle IS NOT NULL ORDER BY idx",
        )
        .map_err(|e| jerr(path, "reading running tasks", e))?;
    let rows: Vec<(i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|it| it.collect())
        .map_err(|e| jerr(path, "reading running tasks", e))?;
    rows.into_iter()
        .map(|(i, h)| Ok((task_index(path, i)?, h)))
        .collect()
}

/// Visits every task recorded under a handle: its index, whether it is final, and the
/// handle (only these columns are read, not inputs or results).
pub fn visit_handles<E: From<JournalError>>(
    conn: &Connection,
    path: &Path,
    mut f: impl FnMut(u64, bool, &str) -> Result<(), E>,
) -> Result<(), E> {
    let mut stmt = conn
        .prepare(
            "SELECT idx, state IN ('done','failed','cancelled'), handle FROM tasks
             WHERE handle IS NOT NULL ORDER BY idx",
        )
        .map_err(|e| jerr(path, "reading task handles", e))?;
    let mut rows = stmt
        .query([])
        .map_err(|e| jerr(path, "reading task handles", e))?;
    while let Some(r) = rows
        .next()
        .map_err(|e| jerr(path, "reading task handles", e))?
    {
        let read = |e| jerr(path, "reading task handles", e);
        let idx = task_index(path, r.get::<_, i64>(0).map_err(read)?)?;
        let finished: bool = r.get(1).map_err(read)?;
        let handle: String = r.get(2).map_err(read)?;
        f(idx, finished, &handle)?;
    }
    Ok(())
}

/// The cancel requests no master has applied yet, oldest first.
pub fn read_pending_cancels(
    conn: &Connection,
    path: &Path,
) -> Result<Vec<CancelRequest>, JournalError> {
    let mut stmt = conn
        .prepare_cached("SELECT rowid, task FROM cancel_requests WHERE done = 0 ORDER BY rowid")
        .map_err(|e| jerr(path, "reading cancel requests", e))?;
    let rows: Vec<(i64, Option<i64>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|it| it.collect())
        .map_err(|e| jerr(path, "reading cancel requests", e))?;
    // A request naming an impossible task (a negative index) names no task: it is left
    // alone, never read as "the whole job".
    Ok(rows
        .into_iter()
        .filter_map(|(id, t)| match t {
            None => Some((id, None)),
            Some(t) => u64::try_from(t).ok().map(|t| (id, Some(t))),
        })
        .collect())
}

/// Records in the events that this process took the job over with `unfinished` tasks.
fn record_takeover(conn: &Connection, path: &Path, unfinished: usize) -> Result<(), JournalError> {
    if unfinished == 0 {
        return Ok(());
    }
    conn.execute(
        "INSERT INTO events (at, task, kind, detail) VALUES (?1, NULL, 'resumed', ?2)",
        params![
            now_unix(),
            format!(
                "master pid {} took over with {unfinished} unfinished tasks",
                std::process::id()
            )
        ],
    )
    .map_err(|e| jerr(path, "recording the master", e))?;
    Ok(())
}

/// A task index as SQLite's integer (indices beyond `i64::MAX` cannot exist: tasks are
/// numbered from 0 in memory).
fn sql_idx(task: u64) -> i64 {
    i64::try_from(task).unwrap_or(i64::MAX)
}

fn count_final(conn: &Connection) -> rusqlite::Result<u64> {
    count(
        conn,
        "SELECT COUNT(*) FROM tasks WHERE state IN ('done','failed','cancelled')",
        [],
    )
}

/// What the `SELECT COUNT(*) …` query `sql` counts with `params` (a negative count,
/// impossible, as 0).
fn count(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<u64> {
    let n: i64 = conn.query_row(sql, params, |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The file beside the journal that holds the high-water mark of committed final rows.
fn mark_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(MARK_SUFFIX);
    PathBuf::from(name)
}

/// Suffix of the high-water-mark file (`journal.sqlite.mark`).
pub const MARK_SUFFIX: &str = ".mark";

fn write_mark(journal: &Path, finals: u64) {
    // Not fsync'd on purpose: after a power loss the mark may lag the database, which is
    // harmless; it can never be ahead of a committed database. Written in place at a fixed
    // width (no truncation: on file systems mounted with `discard` a truncation costs a
    // device trim, and this runs after every group commit).
    use std::os::unix::fs::FileExt;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(mark_path(journal))
        .and_then(|f| f.write_all_at(format!("{finals:020}").as_bytes(), 0));
    if let Err(e) = written {
        log::debug!("journal {}: cannot update the mark: {e}", journal.display());
    }
}

/// Checks that the journal still holds every final row it ever committed (a deleted or
/// replaced `-wal` file silently drops recent commits).
fn check_mark(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    // A mark is 20 digits; whatever is in its place is read no further (a FIFO is refused,
    // not waited on).
    let Some(text) = crate::task::read_prefix(&mark_path(path), 64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return Ok(());
    };
    let Ok(mark) = text.trim().parse::<u64>() else {
        return Ok(());
    };
    let have = count_final(conn).map_err(|e| jerr(path, "counting finished tasks", e))?;
    if have < mark {
        return Err(JournalError(format!(
            "{}: the journal lost committed results: {mark} tasks were recorded finished, {have} are now (was its -wal file deleted or the file replaced?); nothing was changed",
            path.display()
        )));
    }
    Ok(())
}

/// Reads the job row.
pub fn read_meta(conn: &Connection, path: &Path) -> Result<JobMeta, JournalError> {
    conn.query_row(
        "SELECT id, name, interface, workers, job_text, job_path, created FROM job",
        [],
        |r| {
            Ok(JobMeta {
                id: r.get(0)?,
                name: r.get(1)?,
                interface: r.get(2)?,
                workers: r.get::<_, Option<i64>>(3)?.map(|w| w.max(1) as usize),
                job_text: r.get(4)?,
                job_path: r.get(5)?,
                created: r.get(6)?,
            })
        },
    )
    .map_err(|e| jerr(path, "reading the job", e))
}

/// A task's status as stored, without its input or result (see [`Journal::open_status`]).
#[derive(Debug, Clone)]
pub struct TaskStatus {
    /// Index.
    pub index: u64,
    /// State.
    pub state: TaskState,
    /// Attempts.
    pub attempts: u32,
    /// Backend handle (unfinished tasks only).
    pub handle: Option<String>,
    /// Unix seconds.
    pub submitted: Option<f64>,
}

/// Parses a stored input or result. The journal may be forged: its text is held to what any
/// intake accepts ([`mw_bundle::MAX_OUTPUT_LIMIT`], its values counted before a tree is
/// built), so a forged row costs at most about what a real one can.
fn stored_json(text: &str) -> Result<serde_json::Value, String> {
    if text.trim().is_empty() {
        return Err("it is empty".into());
    }
    mw_bundle::parse_json_limited(text.as_bytes(), mw_bundle::MAX_OUTPUT_LIMIT)
        .map_err(|e| e.to_string())
}

/// The most a stored list of a task's output-file paths may be (a real one names the few
/// files the job declares).
const MAX_STORED_FILE_LIST: usize = 16 << 20;

/// Parses a stored list of output-file paths, refusing one over [`MAX_STORED_FILE_LIST`]
/// before it is parsed.
fn stored_file_list(text: &str) -> Result<Vec<String>, String> {
    if text.len() > MAX_STORED_FILE_LIST {
        return Err(format!(
            "{} bytes, over the {MAX_STORED_FILE_LIST} a list of output files may be",
            text.len()
        ));
    }
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// A task row's index, which a forged journal may make negative: refused as corruption.
fn task_index(path: &Path, idx: i64) -> Result<u64, JournalError> {
    u64::try_from(idx).map_err(|_| {
        jerr(
            path,
            "the journal is corrupt",
            format!("task index {idx} is negative"),
        )
    })
}

/// A task row's attempt count, clamped into `u32` (never truncated).
fn attempts_of(stored: i64) -> u32 {
    u32::try_from(stored.max(0)).unwrap_or(u32::MAX)
}

/// Reads every task's compact status, in index order.
pub fn read_statuses(conn: &Connection, path: &Path) -> Result<Vec<TaskStatus>, JournalError> {
    let mut stmt = conn
        .prepare(
            "SELECT idx, state, attempts,
                    CASE WHEN state IN ('queued','running') THEN handle END, submitted
             FROM tasks ORDER BY idx",
        )
        .map_err(|e| jerr(path, "reading tasks", e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<f64>>(4)?,
            ))
        })
        .map_err(|e| jerr(path, "reading tasks", e))?;
    let mut out = Vec::new();
    for row in rows {
        let (idx, state, attempts, handle, submitted) =
            row.map_err(|e| jerr(path, "reading tasks", e))?;
        let state = TaskState::parse(&state).ok_or_else(|| {
            jerr(
                path,
                "the journal is corrupt",
                format!("task {idx}: unknown state `{state}`"),
            )
        })?;
        let index = task_index(path, idx)?;
        out.push(TaskStatus {
            index,
            state,
            attempts: attempts_of(attempts),
            handle,
            submitted,
        });
    }
    Ok(out)
}

/// How many tasks are running with a backend handle (what a resumed master of a remote
/// backend re-attaches).
pub fn count_running_with_handle(conn: &Connection, path: &Path) -> Result<u64, JournalError> {
    count(
        conn,
        "SELECT COUNT(*) FROM tasks WHERE state = 'running' AND handle IS NOT NULL",
        [],
    )
    .map_err(|e| jerr(path, "counting running tasks", e))
}

/// Runs `f` over one snapshot of the journal (a read transaction, rolled back after): every
/// read `f` makes sees the same committed state, whatever a live master commits meanwhile
/// (a command that reads a job twice, like a CSV's two passes).
pub fn in_snapshot<T, E: From<JournalError>>(
    conn: &Connection,
    path: &Path,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    let tx = conn
        .unchecked_transaction()
        .map_err(|e| jerr(path, "starting a read transaction", e))?;
    f(&tx)
}

/// Reads tasks (all, or those in one state).
pub fn read_tasks(
    conn: &Connection,
    path: &Path,
    state: Option<TaskState>,
) -> Result<Vec<StoredTask>, JournalError> {
    let mut out = Vec::new();
    visit_tasks(conn, path, state, |t| {
        out.push(t);
        Ok::<(), JournalError>(())
    })?;
    Ok(out)
}

/// Hands every task (of `state`, or all), in index order, to `f` one at a time, without
/// holding them all: what a command over a job of millions of tasks reads with. Stops at
/// the first error, of the journal or of `f`.
pub fn visit_tasks<E: From<JournalError>>(
    conn: &Connection,
    path: &Path,
    state: Option<TaskState>,
    f: impl FnMut(StoredTask) -> Result<(), E>,
) -> Result<(), E> {
    visit_where(
        conn,
        path,
        "WHERE (?1 IS NULL OR state = ?1) ORDER BY idx",
        params![state.map(|s| s.as_str())],
        f,
    )
}

/// The one decoder of task rows: hands each row `clause` selects to `f`, checked (a row
/// that does not decode is corruption, whichever command reads it).
fn visit_where<E: From<JournalError>>(
    conn: &Connection,
    path: &Path,
    clause: &str,
    p: impl rusqlite::Params,
    mut f: impl FnMut(StoredTask) -> Result<(), E>,
) -> Result<(), E> {
    let sql = format!(
        "SELECT idx, input, state, attempts, handle, submitted, started, finished, wall, cpu, host,
         output, exit, error, output_files FROM tasks {clause}"
    );
    let mut stmt = conn
        .prepare(&sql)
        .map_err(|e| jerr(path, "reading tasks", e))?;
    let rows = stmt
        .query_map(p, |r| {
            let input: String = r.get(1)?;
            let state: String = r.get(2)?;
            let output: Option<String> = r.get(11)?;
            let files: String = r.get(14)?;
            Ok((
                r.get::<_, i64>(0)?,
                input,
                state,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<String>>(4)?,
                (r.get(5)?, r.get(6)?, r.get(7)?),
                (r.get::<_, f64>(8)?, r.get::<_, f64>(9)?),
                r.get::<_, String>(10)?,
                output,
                (
                    r.get::<_, Option<String>>(12)?,
                    r.get::<_, Option<String>>(13)?,
                ),
                files,
            ))
        })
        .map_err(|e| jerr(path, "reading tasks", e))?;
    for row in rows {
        let (
            idx,
            input,
            state,
            attempts,
            handle,
            times,
            (wall, cpu),
            host,
            output,
            (exit, error),
            files,
        ) = row.map_err(|e| jerr(path, "reading tasks", e))?;
        let state = TaskState::parse(&state).ok_or_else(|| {
            jerr(
                path,
                "reading tasks",
                format!("task {idx}: unknown state `{state}`"),
            )
        })?;
        let index = task_index(path, idx)?;
        f(StoredTask {
            index,
            input: stored_json(&input)
                .map_err(|e| jerr(path, "reading tasks", format!("task {idx}: input: {e}")))?,
            state,
            attempts: attempts_of(attempts),
            handle,
            submitted: times.0,
            started: times.1,
            finished: times.2,
            wall_secs: wall,
            cpu_secs: cpu,
            host,
            output: match output {
                None => None,
                Some(o) => Some(stored_json(&o).map_err(|e| {
                    jerr(
                        path,
                        "the journal is corrupt",
                        format!("task {idx}: its stored output does not parse ({e})"),
                    )
                })?),
            },
            exit,
            error,
            output_files: stored_file_list(&files).map_err(|e| {
                jerr(
                    path,
                    "the journal is corrupt",
                    format!("task {idx}: its stored output-file list does not parse ({e})"),
                )
            })?,
        })?;
    }
    Ok(())
}

/// A task's timing as a report draws it: no input, result or error text (what makes a
/// full row large), and its host borrowed from the row being read.
#[derive(Debug, Clone, Copy)]
pub struct TaskTiming<'a> {
    /// Index.
    pub index: u64,
    /// State.
    pub state: TaskState,
    /// Attempts.
    pub attempts: u32,
    /// Unix seconds.
    pub started: Option<f64>,
    /// Unix seconds.
    pub finished: Option<f64>,
    /// Wall seconds.
    pub wall_secs: f64,
    /// Host.
    pub host: &'a str,
}

/// Hands every task's [`TaskTiming`], in index order, to `f` one at a time. Stops at the
/// first error, of the journal or of `f`.
pub fn visit_task_timings<E: From<JournalError>>(
    conn: &Connection,
    path: &Path,
    mut f: impl FnMut(TaskTiming<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let mut stmt = conn
        .prepare(
            "SELECT idx, state, attempts, started, finished, wall, host FROM tasks ORDER BY idx",
        )
        .map_err(|e| jerr(path, "reading tasks", e))?;
    let mut rows = stmt.query([]).map_err(|e| jerr(path, "reading tasks", e))?;
    while let Some(r) = rows.next().map_err(|e| jerr(path, "reading tasks", e))? {
        let read = || -> rusqlite::Result<_> {
            Ok((
                r.get::<_, i64>(0)?,
                r.get_ref(1)?.as_str()?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<f64>>(3)?,
                r.get::<_, Option<f64>>(4)?,
                r.get::<_, f64>(5)?,
                r.get_ref(6)?.as_str()?,
            ))
        };
        let (idx, state, attempts, started, finished, wall, host) =
            read().map_err(|e| jerr(path, "reading tasks", e))?;
        let state = TaskState::parse(state).ok_or_else(|| {
            jerr(
                path,
                "the journal is corrupt",
                format!("task {idx}: unknown state `{state}`"),
            )
        })?;
        f(TaskTiming {
            index: task_index(path, idx)?,
            state,
            attempts: attempts_of(attempts),
            started,
            finished,
            wall_secs: wall,
            host,
        })?;
    }
    Ok(())
}

/// The first `limit` tasks in `state`, in index order, whole.
pub fn first_tasks_in(
    conn: &Connection,
    path: &Path,
    state: TaskState,
    limit: usize,
) -> Result<Vec<StoredTask>, JournalError> {
    let mut out = Vec::new();
    visit_where(
        conn,
        path,
        "WHERE state = ?1 ORDER BY idx LIMIT ?2",
        params![state.as_str(), i64::try_from(limit).unwrap_or(i64::MAX)],
        |t| {
            out.push(t);
            Ok::<(), JournalError>(())
        },
    )?;
    Ok(out)
}

/// How many tasks are in each state (every state listed, zero or not).
pub fn count_each_state(
    conn: &Connection,
    path: &Path,
) -> Result<Vec<(TaskState, u64)>, JournalError> {
    let mut stmt = conn
        .prepare_cached("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        .map_err(|e| jerr(path, "counting tasks", e))?;
    let rows: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|it| it.collect())
        .map_err(|e| jerr(path, "counting tasks", e))?;
    let mut out: Vec<(TaskState, u64)> = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Done,
        TaskState::Failed,
        TaskState::Cancelled,
    ]
    .into_iter()
    .map(|s| (s, 0))
    .collect();
    for (state, n) in rows {
        let state = TaskState::parse(&state).ok_or_else(|| {
            jerr(
                path,
                "the journal is corrupt",
                format!("unknown task state `{state}`"),
            )
        })?;
        if let Some(c) = out.iter_mut().find(|(s, _)| *s == state) {
            c.1 = c.1.saturating_add(u64::try_from(n).unwrap_or(0));
        }
    }
    Ok(out)
}

/// The `limit` done tasks that ran longest: (index, wall seconds, host), longest first.
pub fn slowest_done(
    conn: &Connection,
    path: &Path,
    limit: usize,
) -> Result<Vec<(u64, f64, String)>, JournalError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT idx, wall, host FROM tasks WHERE state = 'done' ORDER BY wall DESC LIMIT ?1",
        )
        .map_err(|e| jerr(path, "reading the slowest tasks", e))?;
    let rows: Vec<(i64, f64, String)> = stmt
        .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .and_then(|it| it.collect())
        .map_err(|e| jerr(path, "reading the slowest tasks", e))?;
    rows.into_iter()
        .map(|(i, w, h)| Ok((task_index(path, i)?, w, h)))
        .collect()
}

/// A failed or cancelled task as a summary lists it.
#[derive(Debug, Clone)]
pub struct Unsuccessful {
    /// Index.
    pub index: u64,
    /// `failed` or `cancelled`.
    pub state: TaskState,
    /// How it ended.
    pub exit: Option<String>,
    /// Its error.
    pub error: Option<String>,
}

/// The first `limit` failed or cancelled tasks, in index order.
pub fn first_unsuccessful(
    conn: &Connection,
    path: &Path,
    limit: usize,
) -> Result<Vec<Unsuccessful>, JournalError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT idx, state, exit, error FROM tasks
             WHERE state = 'failed' OR state = 'cancelled' ORDER BY idx LIMIT ?1",
        )
        .map_err(|e| jerr(path, "reading failed tasks", e))?;
    type Row = (i64, String, Option<String>, Option<String>);
    let rows: Vec<Row> = stmt
        .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .and_then(|it| it.collect())
        .map_err(|e| jerr(path, "reading failed tasks", e))?;
    rows.into_iter()
        .map(|(i, s, exit, error)| {
            Ok(Unsuccessful {
                index: task_index(path, i)?,
                state: TaskState::parse(&s).unwrap_or(TaskState::Failed),
                exit,
                error,
            })
        })
        .collect()
}

/// Who runs a job: the master's pid and host as last recorded, and the job's status word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRecord {
    /// Pid of the master that last claimed the job.
    pub pid: Option<i64>,
    /// Host name of that master.
    pub host: Option<String>,
    /// `submitted`, `running`, `finished`, …
    pub status: String,
}

/// Reads who runs the job (for liveness checks by other processes).
pub fn read_master(conn: &Connection, path: &Path) -> Result<MasterRecord, JournalError> {
    conn.query_row("SELECT master_pid, master_host, status FROM job", [], |r| {
        Ok(MasterRecord {
            pid: r.get(0)?,
            host: r.get(1)?,
            status: r.get(2)?,
        })
    })
    .map_err(|e| jerr(path, "reading the job row", e))
}

/// Records the detached master `pid` on `host` as running a job that is still `submitted`
/// (a job whose master already recorded itself, or finished, is left alone).
pub fn record_detached_master(
    conn: &Connection,
    path: &Path,
    pid: i64,
    host: &str,
) -> Result<(), JournalError> {
    conn.execute(
        "UPDATE job SET master_pid = ?1, master_host = ?2, status = 'running' WHERE status = 'submitted'",
        params![pid, host],
    )
    .map_err(|e| jerr(path, "recording the master", e))?;
    Ok(())
}

/// How many tasks are not final (queued or running).
pub fn count_unfinished(conn: &Connection, path: &Path) -> Result<u64, JournalError> {
    count(
        conn,
        "SELECT COUNT(*) FROM tasks WHERE state IN ('queued','running')",
        [],
    )
    .map_err(|e| jerr(path, "counting unfinished tasks", e))
}

/// Whether the job has a task with index `task`.
pub fn task_exists(conn: &Connection, path: &Path, task: u64) -> Result<bool, JournalError> {
    let Ok(idx) = i64::try_from(task) else {
        return Ok(false);
    };
    let n = count(
        conn,
        "SELECT COUNT(*) FROM tasks WHERE idx = ?1",
        params![idx],
    )
    .map_err(|e| jerr(path, "reading tasks", e))?;
    Ok(n > 0)
}

/// Asks the live master to cancel `task` (or every unfinished task): it polls these
/// requests. Returns the request's id, for [`cancel_acknowledged`].
pub fn request_cancel(
    conn: &Connection,
    path: &Path,
    task: Option<u64>,
    at: f64,
) -> Result<i64, JournalError> {
    let task = task.and_then(|t| i64::try_from(t).ok());
    conn.execute(
        "INSERT INTO cancel_requests (task, at) VALUES (?1, ?2)",
        params![task, at],
    )
    .map_err(|e| jerr(path, "recording the cancel request", e))?;
    Ok(conn.last_insert_rowid())
}

/// Whether the master has applied cancel request `id`.
pub fn cancel_acknowledged(conn: &Connection, path: &Path, id: i64) -> Result<bool, JournalError> {
    let done: i64 = conn
        .query_row(
            "SELECT done FROM cancel_requests WHERE rowid = ?1",
            params![id],
            |r| r.get(0),
        )
        .map_err(|e| jerr(path, "reading the cancel request", e))?;
    Ok(done != 0)
}

/// SQLite's `data_version`: changes whenever another connection commits, so a watcher
/// (`mw wait`) re-reads only when something changed.
pub fn data_version(conn: &Connection, path: &Path) -> Result<i64, JournalError> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
        .map_err(|e| jerr(path, "reading the data version", e))
}

/// Per-state task counts, (queued + running, done, failed, cancelled), without reading
/// the tasks.
pub fn state_counts(conn: &Connection, path: &Path) -> Result<StateCounts, JournalError> {
    let mut c = StateCounts::default();
    for (state, n) in count_each_state(conn, path)? {
        match state {
            TaskState::Queued | TaskState::Running => c.unfinished += n,
            TaskState::Done => c.done += n,
            TaskState::Failed => c.failed += n,
            TaskState::Cancelled => c.cancelled += n,
        }
    }
    Ok(c)
}

/// The first `limit` failed tasks, in index order, with their errors (for a summary).
pub fn first_failures(
    conn: &Connection,
    path: &Path,
    limit: usize,
) -> Result<Vec<(u64, String)>, JournalError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT idx, COALESCE(error, '') FROM tasks WHERE state = 'failed' ORDER BY idx LIMIT ?1",
        )
        .map_err(|e| jerr(path, "reading failed tasks", e))?;
    let rows: Vec<(i64, String)> = stmt
        .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .and_then(|it| it.collect())
        .map_err(|e| jerr(path, "reading failed tasks", e))?;
    Ok(rows
        .into_iter()
        .filter_map(|(i, e)| u64::try_from(i).ok().map(|i| (i, e)))
        .collect())
}

/// Task counts by state (see [`state_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Queued or running.
    pub unfinished: u64,
    /// Done.
    pub done: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

/// With no master running: marks `task` (or every unfinished task) cancelled directly, with
/// an event saying why, in one transaction. Returns how many tasks it cancelled.
pub fn cancel_without_master(
    conn: &mut Connection,
    path: &Path,
    task: Option<u64>,
    at: f64,
) -> Result<usize, JournalError> {
    let task = match task {
        None => None,
        Some(t) => match i64::try_from(t) {
            Ok(t) => Some(t),
            // No such task can exist.
            Err(_) => return Ok(0),
        },
    };
    // Immediate, so it waits for another writer instead of failing (see `requeue_for_retry`).
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| jerr(path, "cancelling tasks", e))?;
    let n = cancel_rows(&tx, path, task, at)?;
    tx.commit().map_err(|e| jerr(path, "cancelling tasks", e))?;
    Ok(n)
}

/// With no master running: carries out every pending cancel request (`mw cancel` records
/// one before it looks for a master) directly, marking its tasks cancelled and the request
/// done, all in one transaction. A master that starts meanwhile reads the journal before or
/// after it, whole (see [`Journal::open_status`]): it either applies the requests itself or
/// finds their tasks cancelled. Returns each request's task (`None`: every task) and how
/// many tasks it cancelled.
pub fn settle_cancels_without_master(
    conn: &mut Connection,
    path: &Path,
    at: f64,
) -> Result<Vec<(Option<u64>, usize)>, JournalError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| jerr(path, "cancelling tasks", e))?;
    let requests = read_pending_cancels(&tx, path)?;
    let mut out = Vec::with_capacity(requests.len());
    for (id, task) in requests {
        // Read back from i64 (`read_pending_cancels`): it fits.
        let n = cancel_rows(&tx, path, task.and_then(|t| i64::try_from(t).ok()), at)?;
        tx.execute(
            "UPDATE cancel_requests SET done = 1 WHERE rowid = ?1",
            params![id],
        )
        .map_err(|e| jerr(path, "recording the cancel", e))?;
        out.push((task, n));
    }
    tx.commit().map_err(|e| jerr(path, "cancelling tasks", e))?;
    Ok(out)
}

/// Marks `task` (every unfinished task when `None`) cancelled, with an event.
fn cancel_rows(
    tx: &Connection,
    path: &Path,
    task: Option<i64>,
    at: f64,
) -> Result<usize, JournalError> {
    let n = tx
        .execute(
            "UPDATE tasks SET state = 'cancelled', exit = 'cancelled', error = 'task ' || idx || ' was cancelled', finished = ?2
             WHERE state IN ('queued','running') AND (?1 IS NULL OR idx = ?1)",
            params![task, at],
        )
        .map_err(|e| jerr(path, "cancelling tasks", e))?;
    tx.execute(
        "INSERT INTO events (at, task, kind, detail) VALUES (?1, ?2, 'cancelled', 'mw cancel without a running master')",
        params![at, task],
    )
    .map_err(|e| jerr(path, "recording the cancel", e))?;
    Ok(n)
}

/// Reads one task, if the job has it.
pub fn read_task(
    conn: &Connection,
    path: &Path,
    task: u64,
) -> Result<Option<StoredTask>, JournalError> {
    let Ok(idx) = i64::try_from(task) else {
        return Ok(None);
    };
    let mut found = None;
    visit_where(conn, path, "WHERE idx = ?1", params![idx], |t| {
        found = Some(t);
        Ok::<(), JournalError>(())
    })?;
    Ok(found)
}

/// One event of the job's log (`events` table): retries, cancels, submissions.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unix seconds.
    pub at: f64,
    /// The task it is about, if any.
    pub task: Option<u64>,
    /// `submitted`, `retry`, `retry-requested`, `done`, `failed`, `cancelled`, `handle`, ….
    pub kind: String,
    /// Free text.
    pub detail: Option<String>,
}

/// Reads the events of the given kinds (all kinds when empty), oldest first, at most `limit`.
pub fn read_events(
    conn: &Connection,
    path: &Path,
    kinds: &[&str],
    limit: usize,
) -> Result<Vec<Event>, JournalError> {
    let mut stmt = conn
        .prepare("SELECT at, task, kind, detail FROM events ORDER BY seq")
        .map_err(|e| jerr(path, "reading events", e))?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Event {
                at: r.get(0)?,
                task: r
                    .get::<_, Option<i64>>(1)?
                    .and_then(|t| u64::try_from(t).ok()),
                kind: r.get(2)?,
                detail: r.get(3)?,
            })
        })
        .map_err(|e| jerr(path, "reading events", e))?;
    let mut out = Vec::new();
    for row in rows {
        let ev = row.map_err(|e| jerr(path, "reading events", e))?;
        if kinds.is_empty() || kinds.contains(&ev.kind.as_str()) {
            out.push(ev);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// The event of a master that stopped before every task had an outcome (its detail: why).
const EVENT_STOPPED: &str = "stopped";

/// Most characters of a stop's reason [`stop_reason`] reads (the file may be forged).
const MAX_STOP_REASON: i64 = 1000;

/// Why the job's last master stopped before every task had an outcome, unless a master
/// took the job over since (`mw resume`, `mw retry`) or none stopped that way (a master
/// that finished, or one killed: it recorded nothing). At most 1,000
/// characters.
pub fn stop_reason(conn: &Connection, path: &Path) -> Result<Option<String>, JournalError> {
    let last = conn
        .query_row(
            "SELECT kind, substr(detail, 1, ?2) FROM events
             WHERE task IS NULL AND kind IN (?1, 'resumed') ORDER BY seq DESC LIMIT 1",
            params![EVENT_STOPPED, MAX_STOP_REASON],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
        )
        .optional()
        .map_err(|e| jerr(path, "reading why the master stopped", e))?;
    Ok(match last {
        Some((kind, reason)) if kind == EVENT_STOPPED => reason,
        _ => None,
    })
}

/// Which tasks `mw retry` runs again.
#[derive(Debug, Clone)]
pub enum RetrySelection {
    /// Every failed and cancelled task.
    AllUnsuccessful,
    /// Only failed tasks.
    Failed,
    /// These tasks (each must be failed or cancelled).
    Tasks(Vec<u64>),
}

/// What [`requeue_for_retry`] did: the tasks queued again, and the tasks asked for that
/// could not be (with their state; `None`: no such task).
pub type Requeued = (Vec<u64>, Vec<(u64, Option<TaskState>)>);

/// Queues failed/cancelled tasks again for `mw retry`, in one transaction: their result
/// columns are cleared, their attempt counts kept, and a `retry-requested` event is written
/// for each. Done tasks are never touched. Returns the tasks queued, and the tasks of
/// `Tasks` that could not be (done, unfinished or missing) with their state.
pub fn requeue_for_retry(
    conn: &mut Connection,
    path: &Path,
    which: &RetrySelection,
    at: f64,
) -> Result<Requeued, JournalError> {
    let err = |e: rusqlite::Error| jerr(path, "queueing tasks again", e);
    // Immediate: it reads before it writes, and a deferred transaction that another writer
    // got ahead of fails at its first write (SQLITE_BUSY) instead of waiting.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let candidates: Vec<(i64, String)> = {
        let mut stmt = tx
            .prepare(
                "SELECT idx, state FROM tasks WHERE state IN ('failed','cancelled') ORDER BY idx",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)?
    };
    // A forged negative index is corruption, refused before anything is written.
    for (i, _) in &candidates {
        task_index(path, *i)?;
    }
    let mut chosen = Vec::new();
    let mut refused = Vec::new();
    match which {
        RetrySelection::AllUnsuccessful => chosen.extend(candidates.iter().map(|(i, _)| *i)),
        RetrySelection::Failed => chosen.extend(
            candidates
                .iter()
                .filter(|(_, s)| s == "failed")
                .map(|(i, _)| *i),
        ),
        RetrySelection::Tasks(list) => {
            for &t in list {
                let idx = i64::try_from(t).unwrap_or(i64::MAX);
                if candidates.iter().any(|(i, _)| *i == idx) {
                    if !chosen.contains(&idx) {
                        chosen.push(idx);
                    }
                } else {
                    let state: Option<String> = tx
                        .query_row(
                            "SELECT state FROM tasks WHERE idx = ?1",
                            params![idx],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(err)?;
                    refused.push((t, state.and_then(|s| TaskState::parse(&s))));
                }
            }
        }
    }
    if refused.is_empty() {
        for idx in &chosen {
            tx.execute(
                "UPDATE tasks SET state = 'queued', handle = NULL, started = NULL, finished = NULL,
                 wall = 0, cpu = 0, host = '', output = NULL, exit = NULL, error = NULL,
                 output_files = '[]'
                 WHERE idx = ?1 AND state IN ('failed','cancelled')",
                params![idx],
            )
            .map_err(err)?;
            tx.execute(
                "INSERT INTO events (at, task, kind, detail) VALUES (?1, ?2, 'retry-requested', 'mw retry')",
                params![at, idx],
            )
            .map_err(err)?;
        }
        // Fewer final rows now, on purpose: the high-water mark is lowered with them, before
        // the commit. A mark below the journal is harmless (the next commit of a master
        // raises it); one above it reads as a journal that lost results, so a `mw retry`
        // killed between its commit and a mark written after it left a job every command
        // refused.
        write_mark(path, count_final(&tx).map_err(err)?);
        tx.commit().map_err(err)?;
        // Killed here: the tasks are queued again and the mark already says so.
        crate::crash::point("retry-requeued");
    }
    Ok((
        chosen
            .into_iter()
            .filter_map(|i| u64::try_from(i).ok())
            .collect(),
        refused,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A job's metadata, for a journal made in a test.
    fn test_meta() -> JobMeta {
        JobMeta {
            id: "j-1".into(),
            name: "j".into(),
            interface: "multicore".into(),
            workers: Some(1),
            job_text: String::new(),
            job_path: String::new(),
            created: 0.0,
        }
    }

    /// The fallback for a journal in a directory that is not writable: a cleanly closed WAL
    /// journal (no `-wal`, no `-shm` left) reads as an immutable file, under a name that
    /// needs percent-encoding in a URI; with a `-wal` beside it, it is refused saying why,
    /// not called corrupt. (Whether `open_checked` takes this path when SQLite cannot make
    /// the `-shm` is shown end to end in tests/tests/journal_commands.rs, as another user.)
    #[test]
    fn a_closed_journal_opens_immutable_and_one_with_a_wal_is_refused_plainly() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("job a?b#c%20d é");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join(JOURNAL_FILE);
        {
            let conn = Connection::open(&path).unwrap();
            configure(&conn, &path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                params![SCHEMA_VERSION.to_string()],
            )
            .unwrap();
        }
        assert!(!beside(&path, "-wal").exists() && !beside(&path, "-shm").exists());
        let why = rusqlite::Error::InvalidQuery;
        let conn = open_immutable(&path, &why).unwrap();
        assert_eq!(
            schema_version(&conn).unwrap(),
            Some(SCHEMA_VERSION.to_string())
        );
        // Immutable: nothing is written, not even a -shm.
        assert!(!beside(&path, "-shm").exists());
        drop(conn);
        let uri = immutable_uri(&path);
        assert!(
            uri.ends_with("/job%20a%3Fb%23c%2520d%20%C3%A9/journal.sqlite?immutable=1"),
            "{uri}"
        );

        // An empty -wal holds nothing.
        std::fs::write(beside(&path, "-wal"), b"").unwrap();
        open_immutable(&path, &why).unwrap();
        std::fs::write(beside(&path, "-wal"), b"a frame").unwrap();
        let e = open_immutable(&path, &why).unwrap_err().to_string();
        assert!(
            e.contains("-wal") && e.contains("not writable") && !e.contains("corrupt"),
            "{e}"
        );
    }

    /// A closed journal keeps nothing in its write-ahead log, even while another
    /// connection of the process stays open (as when mw exits with one still held): its
    /// commits are in the database file, which reads whole on its own.
    #[test]
    fn closing_a_journal_folds_its_log_into_the_file() {
        let d = tempfile::tempdir().unwrap();
        let meta = test_meta();
        let journal = Journal::create(d.path(), &meta).unwrap();
        let path = d.path().join(JOURNAL_FILE);
        let other = Connection::open(&path).unwrap();
        journal.close();
        let wal = std::fs::metadata(beside(&path, "-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0, "commits left in the -wal file");
        let why = rusqlite::Error::InvalidQuery;
        let conn = open_immutable(&path, &why).unwrap();
        let id: String = conn
            .query_row("SELECT id FROM job", [], |r| r.get(0))
            .unwrap();
        assert_eq!(id, "j-1");
        drop((conn, other, journal));
    }

    /// Why the last master stopped: read bounded (a forged reason of 1 MB comes back cut),
    /// and forgotten once a master took the job over again.
    #[test]
    fn the_stop_reason_is_the_last_stops_until_a_master_takes_over() {
        let d = tempfile::tempdir().unwrap();
        let meta = test_meta();
        let journal = Journal::create(d.path(), &meta).unwrap();
        let path = d.path().join(JOURNAL_FILE);
        let conn = Connection::open(&path).unwrap();
        assert_eq!(stop_reason(&conn, &path).unwrap(), None);
        journal.record_stopped("interrupted");
        journal.flush();
        assert_eq!(
            stop_reason(&conn, &path).unwrap().as_deref(),
            Some("interrupted")
        );
        journal.record_stopped(&"x".repeat(1 << 20));
        journal.flush();
        let long = stop_reason(&conn, &path).unwrap().unwrap();
        assert_eq!(long.len(), MAX_STOP_REASON as usize);
        record_takeover(&conn, &path, 3).unwrap();
        assert_eq!(stop_reason(&conn, &path).unwrap(), None);
        drop(conn);
        journal.close();
    }

    /// A closed journal leaves one file even while a handle of it is still held (as when
    /// a thread keeps its `Arc` past the end of `main`): its connections are closed by
    /// `close`, not by the last handle's drop, and later reads say it is closed.
    #[test]
    fn a_closed_journal_still_held_leaves_no_wal_or_shm() {
        let d = tempfile::tempdir().unwrap();
        let meta = test_meta();
        let journal = Journal::create(d.path(), &meta).unwrap();
        journal
            .record_inputs(0, &[serde_json::json!({"i": 1})])
            .unwrap();
        let held = journal.clone();
        journal.close();
        let path = d.path().join(JOURNAL_FILE);
        for suffix in ["-wal", "-shm"] {
            assert!(!beside(&path, suffix).exists(), "{suffix} left by close");
        }
        let e = held.read_input(0).unwrap_err().to_string();
        assert!(e.contains("closed"), "{e}");
        drop((held, journal));
    }

    /// A forged row's input or result is held to what an intake accepts: a dense
    /// `[0,0,…]` of 140 MB (some 2 GB as a tree) is refused before it is parsed.
    #[test]
    fn stored_json_is_read_within_the_intake_limits() {
        assert_eq!(
            stored_json("{\"i\": 1}").unwrap(),
            serde_json::json!({"i": 1})
        );
        assert!(stored_json(" ").is_err());
        let dense = format!("[{}0]", "0,".repeat(70_000_000));
        let e = stored_json(&dense).unwrap_err();
        assert!(e.contains("values"), "{e}");
        assert_eq!(stored_file_list("[\"a\"]").unwrap(), vec!["a".to_string()]);
        let long = format!("[\"{}\"]", "a".repeat(MAX_STORED_FILE_LIST));
        assert!(stored_file_list(&long).unwrap_err().contains("over the"));
    }
}
