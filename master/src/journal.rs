//! The job journal: one SQLite database (WAL mode) per job directory, holding the job spec,
//! every task's state, backend handle, timings and result, and an append-only event log.
//!
//! Writes go through one writer thread that commits in batches (group commit): the master
//! sends task-state changes down a channel and never waits for the disk, except that a
//! finished task becomes collectable only after its row is committed (fsync'd by SQLite
//! with `synchronous = FULL`), so a result reported done survives any crash.
//!
//! **Invariants:** the journal never deletes anything it did not write; an older mw refuses a
//! newer schema; a task's final row is written once (later writes for a final task are
//! ignored by the `WHERE state NOT IN (final)` guard).
//!
//! This module knows nothing of platforms; it stores handles as opaque strings.

use crate::task::{TaskId, TaskSpec, TaskState};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
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
        on_durable: Option<Box<dyn FnOnce() + Send>>,
    },
    Requeued {
        task: u64,
        detail: String,
    },
    Flush(Sender<()>),
}

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

/// An open journal with its writer thread.
pub struct Journal {
    path: PathBuf,
    tx: Mutex<Option<Sender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    conn: Mutex<Connection>,
    failure: Arc<Mutex<Option<String>>>,
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
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| jerr(path, "cannot open", e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| jerr(path, "setting busy timeout", e))?;
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| {
            JournalError(format!(
                "{}: not an mw journal, or it is corrupt ({e}); nothing was changed",
                path.display()
            ))
        })?;
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
    // A full integrity check is cheap for job-sized databases and catches truncation.
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
    Ok(conn)
}

impl Journal {
    /// Creates a new journal in `dir` for `meta`.
    pub fn create(dir: &Path, meta: &JobMeta) -> Result<Arc<Journal>, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        if path.exists() {
            return Err(JournalError(format!(
                "{}: a journal already exists here; resume it with `mw resume` or pick a new name",
                path.display()
            )));
        }
        let conn = Connection::open(&path).map_err(|e| jerr(&path, "cannot create", e))?;
        configure(&conn, &path)?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| jerr(&path, "creating tables", e))?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )
        .map_err(|e| jerr(&path, "writing schema version", e))?;
        conn.execute(
            "INSERT INTO job (id, name, interface, workers, job_text, job_path, created, master_pid, master_host)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                meta.id,
                meta.name,
                meta.interface,
                meta.workers.map(|w| w as i64),
                meta.job_text,
                meta.job_path,
                meta.created,
                std::process::id() as i64,
                mw_worker_runtime::exec::host_name()
            ],
        )
        .map_err(|e| jerr(&path, "writing the job", e))?;
        Self::start(path, conn)
    }

    /// Opens an existing journal for a resumed master: returns it with the job and tasks.
    pub fn open(dir: &Path) -> Result<(Arc<Journal>, JobMeta, Vec<StoredTask>), JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let conn = open_checked(&path, true)?;
        configure(&conn, &path)?;
        let meta = read_meta(&conn, &path)?;
        let tasks = read_tasks(&conn, &path, None)?;
        conn.execute(
            "UPDATE job SET master_pid = ?1, master_host = ?2, status = 'running'",
            params![
                std::process::id() as i64,
                mw_worker_runtime::exec::host_name()
            ],
        )
        .map_err(|e| jerr(&path, "recording the master", e))?;
        let unfinished = tasks.iter().filter(|t| !t.state.is_final()).count();
        if unfinished > 0 {
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
            .map_err(|e| jerr(&path, "recording the master", e))?;
        }
        Ok((Self::start(path, conn)?, meta, tasks))
    }

    fn start(path: PathBuf, conn: Connection) -> Result<Arc<Journal>, JournalError> {
        let writer_conn = Connection::open(&path).map_err(|e| jerr(&path, "cannot open", e))?;
        configure(&writer_conn, &path)?;
        let (tx, rx) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let f2 = failure.clone();
        let p2 = path.clone();
        let writer = std::thread::Builder::new()
            .name("mw-journal".into())
            .spawn(move || writer_loop(writer_conn, rx, &p2, f2))
            .map_err(|e| jerr(&path, "starting the writer thread", e))?;
        Ok(Arc::new(Journal {
            path,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            conn: Mutex::new(conn),
            failure,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, w: Write) {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = guard.as_ref() {
            let _ = tx.send(w);
        }
    }

    /// The first write error, if the writer failed.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction()
            .map_err(|e| jerr(&self.path, "recording tasks", e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO tasks (idx, input, state, submitted) VALUES (?1, ?2, 'queued', ?3)",
                )
                .map_err(|e| jerr(&self.path, "recording tasks", e))?;
            for (i, spec) in specs.iter().enumerate() {
                let input = serde_json::to_string(&spec.input).unwrap_or_else(|_| "null".into());
                stmt.execute(params![(first + i as u64) as i64, input, at])
                    .map_err(|e| jerr(&self.path, "recording tasks", e))?;
            }
            tx.execute(
                "INSERT INTO events (at, task, kind, detail) VALUES (?1, NULL, 'submitted', ?2)",
                params![now_unix(), format!("{} tasks from {first}", specs.len())],
            )
            .map_err(|e| jerr(&self.path, "recording tasks", e))?;
        }
        tx.commit()
            .map_err(|e| jerr(&self.path, "recording tasks", e))
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

    /// Records a final state; `on_durable` runs once it is committed.
    pub(crate) fn record_final(
        &self,
        task: TaskId,
        row: FinalRow,
        on_durable: Option<Box<dyn FnOnce() + Send>>,
    ) {
        self.send(Write::Final {
            task: task.0,
            row: Box::new(row),
            on_durable,
        });
    }

    /// Waits until everything sent so far is committed.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Write::Flush(tx));
        let _ = rx.recv();
    }

    /// Marks the job finished (or not) for `mw status`.
    pub fn set_job_status(&self, status: &str) -> Result<(), JournalError> {
        self.flush();
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute("UPDATE job SET status = ?1", params![status])
            .map_err(|e| jerr(&self.path, "updating job status", e))?;
        Ok(())
    }

    /// Takes pending cancel requests (written by `mw cancel` while this master runs).
    /// `None` in the list means "the whole job".
    pub fn take_cancel_requests(&self) -> Result<Vec<Option<u64>>, JournalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare_cached("SELECT rowid, task FROM cancel_requests WHERE done = 0")
            .map_err(|e| jerr(&self.path, "reading cancel requests", e))?;
        let rows: Vec<(i64, Option<i64>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|it| it.collect())
            .map_err(|e| jerr(&self.path, "reading cancel requests", e))?;
        for (rowid, _) in &rows {
            conn.execute(
                "UPDATE cancel_requests SET done = 1 WHERE rowid = ?1",
                params![rowid],
            )
            .map_err(|e| jerr(&self.path, "reading cancel requests", e))?;
        }
        Ok(rows.into_iter().map(|(_, t)| t.map(|t| t as u64)).collect())
    }

    /// Stops the writer after committing everything.
    pub fn close(&self) {
        self.flush();
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: Receiver<Write>,
    path: &Path,
    failure: Arc<Mutex<Option<String>>>,
) {
    while let Ok(first) = rx.recv() {
        // Group commit: gather what arrives within a short window (or until a flush is
        // asked for), so one fsync and one write of each touched page serve many tasks.
        // The writer sleeps through the window instead of waking for every message, so
        // senders rarely pay for a wake-up; a flush request is served at once.
        if !matches!(first, Write::Flush(_)) {
            std::thread::sleep(GROUP_COMMIT_WINDOW);
        }
        let mut batch = vec![first];
        while batch.len() < 100_000 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        let mut durable = Vec::new();
        // Tasks that also end in this batch: their final row says everything, so their
        // started/handle updates are skipped (for short tasks, most of them).
        let ending: std::collections::HashSet<u64> = batch
            .iter()
            .filter_map(|w| match w {
                Write::Final { task, .. } => Some(*task),
                _ => None,
            })
            .collect();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for w in batch {
                match w {
                    Write::Started { task, .. } | Write::Handle { task, .. }
                        if ending.contains(&task) => {}
                    Write::Started { task, attempt, at } => {
                        tx.prepare_cached(
                            "UPDATE tasks SET state = 'running', attempts = ?2, started = ?3
                             WHERE idx = ?1 AND state NOT IN ('done','failed','cancelled')",
                        )?
                        .execute(params![task as i64, attempt, at])?;
                    }
                    Write::Handle { task, handle } => {
                        tx.prepare_cached("UPDATE tasks SET handle = ?2 WHERE idx = ?1")?
                            .execute(params![task as i64, handle])?;
                        // Local process groups change with every attempt and matter only
                        // to `mw resume`: not worth an event each.
                        if handle.starts_with("local:") {
                            continue;
                        }
                        tx.prepare_cached(
                            "INSERT INTO events (at, task, kind, detail) VALUES (?1, ?2, 'handle', ?3)",
                        )?
                        .execute(params![now_unix(), task as i64, handle])?;
                    }
                    Write::Requeued { task, detail } => {
                        tx.prepare_cached(
                            "UPDATE tasks SET state = 'queued', handle = NULL
                             WHERE idx = ?1 AND state NOT IN ('done','failed','cancelled')",
                        )?
                        .execute(params![task as i64])?;
                        tx.prepare_cached(
                            "INSERT INTO events (at, task, kind, detail) VALUES (?1, ?2, 'retry', ?3)",
                        )?
                        .execute(params![now_unix(), task as i64, detail])?;
                    }
                    Write::Final {
                        task,
                        row,
                        on_durable,
                    } => {
                        tx.prepare_cached(
                            "UPDATE tasks SET state = ?2, attempts = ?3, started = ?4, finished = ?5,
                             wall = ?6, cpu = ?7, host = ?8, output = ?9, exit = ?10, error = ?11,
                             output_files = ?12
                             WHERE idx = ?1 AND state NOT IN ('done','failed','cancelled')",
                        )?
                        .execute(params![
                            task as i64,
                            row.state.as_str(),
                            row.attempts,
                            row.started,
                            row.finished,
                            row.wall,
                            row.cpu,
                            row.host,
                            row.output,
                            row.exit,
                            row.error,
                            row.files
                        ])?;
                        tx.prepare_cached(
                            "INSERT INTO events (at, task, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![
                            now_unix(),
                            task as i64,
                            row.state.as_str(),
                            row.exit
                        ])?;
                        if let Some(f) = on_durable {
                            durable.push(f);
                        }
                    }
                    Write::Flush(done) => flushes.push(done),
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(format!("{}: write failed: {e}", path.display()));
            }
            log::error!("journal {}: write failed: {e}", path.display());
        }
        for f in durable {
            f();
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
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

/// Reads tasks (all, or those in one state).
pub fn read_tasks(
    conn: &Connection,
    path: &Path,
    state: Option<TaskState>,
) -> Result<Vec<StoredTask>, JournalError> {
    let sql = "SELECT idx, input, state, attempts, handle, submitted, started, finished, wall, cpu, host,
               output, exit, error, output_files FROM tasks WHERE (?1 IS NULL OR state = ?1) ORDER BY idx";
    let mut stmt = conn
        .prepare(sql)
        .map_err(|e| jerr(path, "reading tasks", e))?;
    let rows = stmt
        .query_map(params![state.map(|s| s.as_str())], |r| {
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
    let mut out = Vec::new();
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
        out.push(StoredTask {
            index: idx as u64,
            input: serde_json::from_str(&input)
                .map_err(|e| jerr(path, "reading tasks", format!("task {idx}: input: {e}")))?,
            state,
            attempts: attempts.max(0) as u32,
            handle,
            submitted: times.0,
            started: times.1,
            finished: times.2,
            wall_secs: wall,
            cpu_secs: cpu,
            host,
            output: output.and_then(|o| serde_json::from_str(&o).ok()),
            exit,
            error,
            output_files: serde_json::from_str(&files).unwrap_or_default(),
        });
    }
    Ok(out)
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
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM tasks WHERE state IN ('queued','running')",
            [],
            |r| r.get(0),
        )
        .map_err(|e| jerr(path, "counting unfinished tasks", e))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Whether the job has a task with index `task`.
pub fn task_exists(conn: &Connection, path: &Path, task: u64) -> Result<bool, JournalError> {
    let Ok(idx) = i64::try_from(task) else {
        return Ok(false);
    };
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM tasks WHERE idx = ?1",
            params![idx],
            |r| r.get(0),
        )
        .map_err(|e| jerr(path, "reading tasks", e))?;
    Ok(n > 0)
}

/// Asks the live master to cancel `task` (or every unfinished task): it polls these requests.
pub fn request_cancel(
    conn: &Connection,
    path: &Path,
    task: Option<u64>,
    at: f64,
) -> Result<(), JournalError> {
    let task = task.and_then(|t| i64::try_from(t).ok());
    conn.execute(
        "INSERT INTO cancel_requests (task, at) VALUES (?1, ?2)",
        params![task, at],
    )
    .map_err(|e| jerr(path, "recording the cancel request", e))?;
    Ok(())
}

/// With no master running: marks `task` (or every unfinished task) cancelled directly, with
/// an event saying why, in one transaction. Returns how many tasks it cancelled.
pub fn cancel_without_master(
    conn: &mut Connection,
    path: &Path,
    task: Option<u64>,
    at: f64,
) -> Result<usize, JournalError> {
    let task = task.and_then(|t| i64::try_from(t).ok());
    let tx = conn
        .transaction()
        .map_err(|e| jerr(path, "cancelling tasks", e))?;
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
    tx.commit().map_err(|e| jerr(path, "cancelling tasks", e))?;
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
    // Small jobs and single look-ups: reuse the one row decoder of `read_tasks`.
    let sql =
        "SELECT idx, input, state, attempts, handle, submitted, started, finished, wall, cpu, host,
               output, exit, error, output_files FROM tasks WHERE idx = ?1";
    let mut stmt = conn
        .prepare(sql)
        .map_err(|e| jerr(path, "reading a task", e))?;
    let mut rows = stmt
        .query(params![idx])
        .map_err(|e| jerr(path, "reading a task", e))?;
    let Some(r) = rows.next().map_err(|e| jerr(path, "reading a task", e))? else {
        return Ok(None);
    };
    let get = |e: rusqlite::Error| jerr(path, "reading a task", e);
    let state: String = r.get(2).map_err(get)?;
    let state = TaskState::parse(&state).ok_or_else(|| {
        jerr(
            path,
            "reading a task",
            format!("task {idx}: unknown state `{state}`"),
        )
    })?;
    let input: String = r.get(1).map_err(get)?;
    let output: Option<String> = r.get(11).map_err(get)?;
    let files: String = r.get(14).map_err(get)?;
    Ok(Some(StoredTask {
        index: task,
        input: serde_json::from_str(&input)
            .map_err(|e| jerr(path, "reading a task", format!("task {idx}: input: {e}")))?,
        state,
        attempts: r.get::<_, i64>(3).map_err(get)?.clamp(0, u32::MAX as i64) as u32,
        handle: r.get(4).map_err(get)?,
        submitted: r.get(5).map_err(get)?,
        started: r.get(6).map_err(get)?,
        finished: r.get(7).map_err(get)?,
        wall_secs: r.get(8).map_err(get)?,
        cpu_secs: r.get(9).map_err(get)?,
        host: r.get(10).map_err(get)?,
        output: output.and_then(|o| serde_json::from_str(&o).ok()),
        exit: r.get(12).map_err(get)?,
        error: r.get(13).map_err(get)?,
        output_files: serde_json::from_str(&files).unwrap_or_default(),
    }))
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
    let tx = conn.transaction().map_err(err)?;
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
        tx.commit().map_err(err)?;
    }
    Ok((chosen.into_iter().map(|i| i as u64).collect(), refused))
}
