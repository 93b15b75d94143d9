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

use crate::master::{TaskRecord, TaskState};
use crate::task::{TaskId, TaskSpec};
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

fn unix(t: Option<SystemTime>) -> Option<f64> {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
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
    },
    Flush(Sender<()>),
}

struct FinalRow {
    state: TaskState,
    attempts: u32,
    started: Option<f64>,
    finished: Option<f64>,
    wall: f64,
    cpu: f64,
    host: String,
    output: Option<String>,
    exit: Option<String>,
    error: Option<String>,
    files: String,
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

    /// Records newly submitted tasks (synchronously, one transaction).
    pub(crate) fn record_submitted(
        &self,
        first: u64,
        specs: &[TaskSpec],
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
            let at = now_unix();
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

    pub(crate) fn record_requeued(&self, task: TaskId) {
        self.send(Write::Requeued { task: task.0 });
    }

    /// Records a final state; `on_durable` runs once it is committed.
    pub(crate) fn record_final(
        &self,
        task: TaskId,
        rec: &TaskRecord,
        on_durable: Option<Box<dyn FnOnce() + Send>>,
    ) {
        let (output, exit, error, host, files) = match &rec.outcome {
            Some(Ok(out)) => (
                Some(out.value.to_string()),
                Some("exit status 0".to_string()),
                None,
                out.host.clone(),
                serde_json::to_string(
                    &out.output_files
                        .iter()
                        .map(|(_, p)| p.display().to_string())
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_else(|_| "[]".into()),
            ),
            Some(Err(e)) => {
                let (exit, host) = match e {
                    crate::MwError::TaskFailed { exit, host, .. } => {
                        (exit.to_string(), host.clone())
                    }
                    crate::MwError::Cancelled(_) => ("cancelled".to_string(), String::new()),
                    crate::MwError::Interface { ran: Some(r), .. } => {
                        (r.exit.clone(), r.host.clone())
                    }
                    _ => ("not run".to_string(), String::new()),
                };
                (None, Some(exit), Some(e.to_string()), host, "[]".into())
            }
            None => (None, None, None, String::new(), "[]".into()),
        };
        self.send(Write::Final {
            task: task.0,
            row: Box::new(FinalRow {
                state: rec.state,
                attempts: rec.attempts,
                started: unix(rec.times.started),
                finished: unix(rec.times.finished),
                wall: rec.times.wall.as_secs_f64(),
                cpu: rec.times.cpu.as_secs_f64(),
                host,
                output,
                exit,
                error,
                files,
            }),
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
                    Write::Requeued { task } => {
                        tx.prepare_cached(
                            "UPDATE tasks SET state = 'queued', handle = NULL
                             WHERE idx = ?1 AND state NOT IN ('done','failed','cancelled')",
                        )?
                        .execute(params![task as i64])?;
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
            eprintln!("mw: journal {}: write failed: {e}", path.display());
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
