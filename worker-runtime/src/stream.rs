//! Streaming programs: one long-lived process answers many tasks, one JSON line each.
//!
//! **The stream contract** (README "Streaming programs" is the user's copy): the program
//! reads one input per line on stdin (compact JSON, so no raw newline inside) and writes
//! exactly one line per input on stdout, in input order. A line that is a JSON object with
//! the single key `"error"` fails that task (its value, a string or any JSON, is the
//! message); any other JSON value is the task's result. The program should exit when stdin
//! closes. stderr: a successful task gets what was read from stderr since the previous
//! answer (best effort: stdout and stderr are two pipes with no common order); a failed
//! task gets the last [`StreamProgram::stderr_tail_bytes`] of the process's stderr, which
//! ends with what the program said before failing.
//!
//! What goes wrong fails only the current task (the oldest unanswered input):
//! - the program dies (or closes stdout): the current task fails with its exit status and
//!   stderr tail; exit status 0 without an answer is a failure too (too few lines);
//! - a line that is not JSON, or longer than [`StreamProgram::max_line_bytes`] (read in
//!   bounded pieces, never whole), fails the current task;
//! - the current task's timeout passes (its clock starts when it becomes current; until a
//!   freshly started process has answered once, its start-up gets [`startup_allowance`] on
//!   top, so a program slower to start than one task's timeout is not restarted for ever), or
//!   it is cancelled: the process group is terminated (the one termination routine of
//!   [`crate::exec`]).
//!
//! After any of these the stream position is unknown, so the program is stopped and a fresh
//! one started on first need; inputs that were written ahead but not answered are sent again
//! to the new process (a task may be *executed* twice, it is *reported* once).
//! A program kept between [`StreamRunner::serve`] calls that exited, closed stdout or
//! printed on it while it had nothing to answer is replaced the same way, blaming no task.
//!
//! [`StreamRunner::serve`] pulls inputs from a source and reports each outcome as it comes,
//! writing up to [`StreamProgram::window`] inputs ahead so the program never waits on the
//! caller; [`StreamRunner::run_all`] runs a list (e.g. a packed grid job) and returns one
//! outcome per input. Multicore slots, MPI ranks and packed jobs share this runner.
//!
//! This module knows nothing of bundles, platforms or the master.

use crate::exec::ProcessControl;
use mw_bundle::ExitInfo;
use std::collections::BTreeMap;
#[cfg(unix)]
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// The key of an error answer: `{"error": ...}`.
pub const ERROR_KEY: &str = "error";

/// The least time a freshly started streaming program gets for its start-up, on top of the
/// timeout of the first task it answers (see [`startup_allowance`]).
pub const MIN_STARTUP_ALLOWANCE: Duration = Duration::from_secs(60);

/// What a freshly started process gets on top of the first task's `timeout` before its first
/// answer: the longer of [`MIN_STARTUP_ALLOWANCE`] and the timeout itself. A program that
/// loads for longer than one task takes (a model, a large import) would otherwise time out
/// on its first task, be restarted for the next, and fail every task one by one.
pub fn startup_allowance(timeout: Duration) -> Duration {
    timeout.max(MIN_STARTUP_ALLOWANCE)
}

/// A streaming program and how to run it.
#[derive(Debug, Clone)]
pub struct StreamProgram {
    /// Executable (absolute, or relative to `workdir`).
    pub program: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (must exist); shared by all tasks of the process.
    pub workdir: PathBuf,
    /// Time between SIGTERM and SIGKILL when the process is stopped.
    pub grace: Duration,
    /// How many trailing bytes of a task's stderr to keep.
    pub stderr_tail_bytes: usize,
    /// Longest answer line accepted, in bytes (without the newline).
    pub max_line_bytes: usize,
    /// Inputs written ahead of the current one (at least 1).
    pub window: usize,
    /// Kill the program if the thread that started it dies (see [`crate::ExecRequest`]).
    pub die_with_parent: bool,
}

impl StreamProgram {
    /// A program with the defaults: 4 KiB stderr tail, 256 MiB line limit, 64 inputs ahead.
    pub fn new(program: PathBuf, workdir: PathBuf) -> Self {
        StreamProgram {
            program,
            args: Vec::new(),
            env: BTreeMap::new(),
            workdir,
            grace: crate::exec::DEFAULT_GRACE,
            stderr_tail_bytes: 4096,
            max_line_bytes: 256 * 1024 * 1024,
            window: 64,
            die_with_parent: false,
        }
    }
}

/// One input for a streaming program.
#[derive(Debug, Clone)]
pub struct StreamInput {
    /// The input as one line of JSON (no newline).
    pub line: Vec<u8>,
    /// Wall-clock limit, counted from when the input becomes the current one.
    pub timeout: Option<Duration>,
    /// Cancels this task (the process is stopped while it is the current one).
    pub control: ProcessControl,
    /// This task's longest answer line, in bytes, when below the program's
    /// [`StreamProgram::max_line_bytes`] (a task's `max_output`).
    pub max_answer_bytes: Option<u64>,
}

impl StreamInput {
    /// An input from a JSON value (serialised compactly: no raw newline).
    pub fn new(value: &serde_json::Value) -> Self {
        StreamInput {
            line: serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()),
            timeout: None,
            control: ProcessControl::new(),
            max_answer_bytes: None,
        }
    }

    /// The longest answer line accepted for this input under `program_limit`.
    fn answer_limit(&self, program_limit: usize) -> usize {
        self.max_answer_bytes.map_or(program_limit, |m| {
            usize::try_from(m).unwrap_or(usize::MAX).min(program_limit)
        })
    }
}

/// What came of one input.
#[derive(Debug, Clone)]
pub struct StreamOutcome {
    /// `Exited { code: 0 }` when the program answered with a result; otherwise why the task
    /// failed ([`ExitInfo::ErrorReported`], [`ExitInfo::StreamBroken`], the status of a
    /// program that died, `TimedOut`, `Cancelled`, `SpawnFailed`).
    pub exit: ExitInfo,
    /// The answer line (the result JSON) on success; empty otherwise.
    pub result: Vec<u8>,
    /// The tail of what the program wrote to stderr while this was the current task.
    pub stderr_tail: String,
    /// Time from becoming the current task to its answer.
    pub wall: Duration,
    /// When it became the current task.
    pub started: SystemTime,
}

/// Classifies an answer line: `Ok(result)` or the failure it reports. The line is checked
/// by [`mw_bundle::check_json_limited`] against `limit` (its bytes, and the values it may
/// hold), so no tree is built for a result: memory stays within a small multiple of the line
/// whatever it holds (only a non-string `{"error": ...}` value is parsed, within the limit).
pub fn classify_line(line: &[u8], limit: u64) -> Result<&[u8], ExitInfo> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let broken = |why: String| ExitInfo::StreamBroken {
        reason: format!("the program's answer line is not JSON: {why}"),
    };
    if line.trim_ascii().is_empty() {
        return Err(broken("an empty line".into()));
    }
    match mw_bundle::check_json_limited(line, limit) {
        Ok(()) => {}
        Err(mw_bundle::JsonLimitError::Syntax(e)) => return Err(broken(e)),
        Err(e) => {
            return Err(ExitInfo::StreamBroken {
                reason: format!("the program's answer line: {e}"),
            })
        }
    }
    if !line.trim_ascii_start().starts_with(b"{") {
        return Ok(line);
    }
    // Lenient about invalid UTF-8, as the check and the master's reading are.
    match serde_json::from_str::<ErrorProbe>(&String::from_utf8_lossy(line)) {
        Ok(ErrorProbe::Error(error)) => Err(ExitInfo::ErrorReported { error }),
        Ok(ErrorProbe::NonString) => {
            // `{"error": <not a string>}`: its value, compact (the line passed the limits).
            let error = match mw_bundle::parse_json_limited(line, limit) {
                Ok(serde_json::Value::Object(map)) => map
                    .get(ERROR_KEY)
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            Err(ExitInfo::ErrorReported { error })
        }
        // The check passed, so the probe cannot fail: a result either way.
        Ok(ErrorProbe::Result) | Err(_) => Ok(line),
    }
}

/// Whether an answer is an error object (`{"error": ...}`, that key alone), read without
/// keeping anything but a string error's text.
enum ErrorProbe {
    Error(String),
    NonString,
    Result,
}

impl<'de> serde::Deserialize<'de> for ErrorProbe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProbeVisitor)
    }
}

struct ProbeVisitor;

/// An error object's value: its text when a string.
struct ErrorValue(Option<String>);

impl<'de> serde::Deserialize<'de> for ErrorValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ErrorValueVisitor)
    }
}

struct ErrorValueVisitor;

impl<'de> serde::de::Visitor<'de> for ErrorValueVisitor {
    type Value = ErrorValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E>(self, v: &str) -> Result<ErrorValue, E> {
        Ok(ErrorValue(Some(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<ErrorValue, E> {
        Ok(ErrorValue(Some(v)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<ErrorValue, E> {
        Ok(ErrorValue(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<ErrorValue, E> {
        Ok(ErrorValue(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<ErrorValue, E> {
        Ok(ErrorValue(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<ErrorValue, E> {
        Ok(ErrorValue(None))
    }
    fn visit_unit<E>(self) -> Result<ErrorValue, E> {
        Ok(ErrorValue(None))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<ErrorValue, A::Error> {
        while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(ErrorValue(None))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<ErrorValue, A::Error> {
        while a
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(ErrorValue(None))
    }
}

impl<'de> serde::de::Visitor<'de> for ProbeVisitor {
    type Value = ErrorProbe;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<ErrorProbe, A::Error> {
        // Keys are counted as the result will hold them: a repeated key is one key (the
        // last value wins, as when the master parses it), so `{"error":1,"error":2}` is an
        // error object too.
        let mut others = false;
        let mut error: Option<ErrorValue> = None;
        while let Some(key) = a.next_key::<std::borrow::Cow<'de, str>>()? {
            if !others && key == ERROR_KEY {
                error = Some(a.next_value::<ErrorValue>()?);
            } else {
                others = true;
                a.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(match error {
            Some(ErrorValue(Some(text))) if !others => ErrorProbe::Error(text),
            Some(ErrorValue(None)) if !others => ErrorProbe::NonString,
            _ => ErrorProbe::Result,
        })
    }
    fn visit_bool<E>(self, _: bool) -> Result<ErrorProbe, E> {
        Ok(ErrorProbe::Result)
    }
    fn visit_i64<E>(self, _: i64) -> Result<ErrorProbe, E> {
        Ok(ErrorProbe::Result)
    }
    fn visit_u64<E>(self, _: u64) -> Result<ErrorProbe, E> {
        Ok(ErrorProbe::Result)
    }
    fn visit_f64<E>(self, _: f64) -> Result<ErrorProbe, E> {
        Ok(ErrorProbe::Result)
    }
    fn visit_str<E>(self, _: &str) -> Result<ErrorProbe, E> {
        Ok(ErrorProbe::Result)
    }
    fn visit_unit<E>(self) -> Result<ErrorProbe, E> {
        Ok(ErrorProbe::Result)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<ErrorProbe, A::Error> {
        while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(ErrorProbe::Result)
    }
}

/// Runs inputs through one long-lived program, restarting it after a failure.
#[derive(Debug)]
pub struct StreamRunner {
    program: StreamProgram,
    #[cfg(unix)]
    proc: Option<unix::Proc>,
    /// Processes started so far.
    starts: u64,
}

impl StreamRunner {
    /// A runner; the program starts on the first input.
    pub fn new(program: StreamProgram) -> Self {
        StreamRunner {
            program,
            #[cfg(unix)]
            proc: None,
            starts: 0,
        }
    }

    /// The program this runner runs.
    pub fn program(&self) -> &StreamProgram {
        &self.program
    }

    /// How many processes were started so far (1 + restarts, once running).
    pub fn starts(&self) -> u64 {
        self.starts
    }

    /// Runs every input and returns one outcome per input, in order.
    pub fn run_all(&mut self, inputs: Vec<StreamInput>) -> Vec<StreamOutcome> {
        let n = inputs.len();
        let mut source = inputs.into_iter().enumerate();
        let mut out: Vec<Option<StreamOutcome>> = vec![None; n];
        self.serve(
            || source.next().map(|(i, input)| (input, i)),
            |i, o| {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(o);
                }
            },
        );
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| StreamOutcome {
                    exit: ExitInfo::StreamBroken {
                        reason: "internal: no outcome".into(),
                    },
                    result: Vec::new(),
                    stderr_tail: String::new(),
                    wall: Duration::ZERO,
                    started: SystemTime::now(),
                })
            })
            .collect()
    }

    /// Pulls inputs from `next` (each with a caller's token) while it has any and reports
    /// each outcome through `report`, in input order, exactly once. `next` must not block:
    /// `None` means "nothing more for now"; `serve` returns once every input it took is
    /// reported. The program stays running between calls; one that exited, closed stdout
    /// or printed on it meanwhile is stopped (and logged) before the next call writes to
    /// it, and a fresh one takes that call's inputs (no task is blamed).
    pub fn serve<T>(
        &mut self,
        next: impl FnMut() -> Option<(StreamInput, T)>,
        report: impl FnMut(T, StreamOutcome),
    ) {
        self.serve_with(next, report, || {});
    }

    /// [`StreamRunner::serve`], calling `before_wait` each time it is about to wait for the
    /// program (after reporting every answer it had read): a caller that gathers outcomes
    /// passes them on there, in batches, without holding any back while the program works.
    pub fn serve_with<T>(
        &mut self,
        next: impl FnMut() -> Option<(StreamInput, T)>,
        report: impl FnMut(T, StreamOutcome),
        before_wait: impl FnMut(),
    ) {
        #[cfg(unix)]
        unix::serve(self, next, report, before_wait);
        #[cfg(windows)]
        windows_fallback::serve(self, next, report, before_wait);
    }

    /// Stops the program: closes its stdin, gives it the grace period to exit, then
    /// terminates its process group. Called on drop.
    pub fn stop(&mut self) {
        #[cfg(unix)]
        if let Some(p) = self.proc.take() {
            p.close(self.program.grace);
        }
    }
}

impl Drop for StreamRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn failed(exit: ExitInfo, stderr_tail: String, t0: Instant, started: SystemTime) -> StreamOutcome {
    StreamOutcome {
        exit,
        result: Vec::new(),
        stderr_tail,
        wall: t0.elapsed(),
        started,
    }
}

/// The failure of an answer line over `limit` bytes.
fn too_long(limit: usize) -> ExitInfo {
    ExitInfo::StreamBroken {
        reason: format!("the program's answer line is longer than the limit of {limit} bytes"),
    }
}

#[cfg(unix)]
mod unix {
    use super::*;
    use crate::exec::{
        decode_status, kill_escapees, pidfd_open, pidfd_supported, signal_group, start_task,
        tail_string, wait_pid, Deadline, TaskStart, TaskToken, Termination,
    };
    use std::io::{PipeReader, PipeWriter};
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, OwnedFd};

    /// Most bytes kept in the write buffer (inputs written ahead).
    const WRITE_AHEAD_BYTES: usize = 64 * 1024;
    /// How long pipes are drained after the leader exited.
    const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
    /// How long a program whose stdout ended may take to show its exit before it counts as
    /// having closed stdout while running.
    const CLOSED_STDOUT_GRACE: Duration = Duration::from_millis(200);

    #[derive(Debug)]
    pub(super) struct Proc {
        pid: i32,
        /// Its [`TASK_TOKEN_ENV`] value: descendants that left its process group carry it.
        token: TaskToken,
        /// Readable once the leader has exited ([`exit_fd`]).
        pidfd: Option<OwnedFd>,
        stdin: Option<PipeWriter>,
        stdout: Option<PipeReader>,
        stderr: Option<PipeReader>,
        /// Bytes of stdout not yet a complete line.
        out_buf: Vec<u8>,
        /// Where to look for the next newline in `out_buf`.
        scan_from: usize,
        /// The current task's stderr (bounded): read since the previous answer.
        err_tail: Vec<u8>,
        /// The process's stderr (bounded, never cleared): what a failed task reports, since
        /// stdout and stderr are two pipes with no common order.
        proc_tail: Vec<u8>,
        /// Read buffer (allocated once: zeroing 64 KiB per read would cost more than the read).
        rbuf: Vec<u8>,
        /// Inputs waiting to be written, and how much of them is written.
        wbuf: Vec<u8>,
        wpos: usize,
        /// Inputs (from the front of the queue) given to this process.
        written: usize,
        /// Answers received from this process.
        answered: u64,
        /// Being stopped by us (after a timeout, cancel, or a broken line).
        term: Option<Termination>,
        stopping: bool,
        /// Stop reading answers (the process is being stopped).
        discard: bool,
        /// The leader exited (pidfd readable) or stdout closed.
        ending: bool,
    }

    fn set_nonblocking(fd: i32) {
        // SAFETY: fcntl on a descriptor we own; only the O_NONBLOCK flag changes.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
    }

    fn spawn(p: &StreamProgram) -> std::io::Result<Proc> {
        let token = TaskToken::new();
        let (in_r, in_w) = std::io::pipe()?;
        let (out_r, out_w) = std::io::pipe()?;
        let (err_r, err_w) = std::io::pipe()?;
        let start = TaskStart {
            program: &p.program,
            args: &p.args,
            env: &p.env,
            workdir: &p.workdir,
            token: token.as_str(),
            die_with_parent: p.die_with_parent,
        };
        let pid = start_task(&start, [in_r.into(), out_w.into(), err_w.into()])?;
        let (stdin, stdout, stderr) = (Some(in_w), Some(out_r), Some(err_r));
        for fd in [
            stdin.as_ref().map(|f| f.as_raw_fd()),
            stdout.as_ref().map(|f| f.as_raw_fd()),
            stderr.as_ref().map(|f| f.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            set_nonblocking(fd);
        }
        Ok(Proc {
            pid,
            token,
            pidfd: exit_fd(pid),
            stdin,
            stdout,
            stderr,
            out_buf: Vec::new(),
            scan_from: 0,
            err_tail: Vec::new(),
            proc_tail: Vec::new(),
            rbuf: vec![0u8; 64 * 1024],
            wbuf: Vec::new(),
            wpos: 0,
            written: 0,
            answered: 0,
            term: None,
            stopping: false,
            discard: false,
            ending: false,
        })
    }

    /// A descriptor that becomes readable when the leader exits, so the poll loop sees the
    /// exit even while a grandchild holds stdout open: the leader's pidfd, or where there is
    /// none (kernels before 5.3, or [`crate::exec::NO_PIDFD_ENV`] set) the read end of a pipe
    /// whose write end a waiter thread drops once `waitid(WNOWAIT)` sees the leader exit
    /// (its status stays for `wait_pid`). `None` only if neither can be had.
    fn exit_fd(pid: i32) -> Option<OwnedFd> {
        if pidfd_supported() {
            if let Some(fd) = pidfd_open(pid) {
                return Some(fd);
            }
        }
        let (r, w) = std::io::pipe().ok()?;
        std::thread::Builder::new()
            .name(format!("mw-stream-wait-{pid}"))
            .spawn(move || {
                loop {
                    // SAFETY: siginfo_t is plain old data; zeroed is a valid value.
                    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                    // SAFETY: info points to a live local; P_PID with our child's pid;
                    // WNOWAIT leaves the child to be reaped by wait_pid.
                    let r = unsafe {
                        libc::waitid(
                            libc::P_PID,
                            pid as libc::id_t,
                            &mut info,
                            libc::WEXITED | libc::WNOWAIT,
                        )
                    };
                    if r == 0
                        || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                    {
                        break;
                    }
                }
                drop(w);
            })
            .ok()?;
        Some(r.into())
    }

    impl Proc {
        /// Starts stopping the process (the one termination routine).
        fn stop(&mut self, grace: Duration) {
            if !self.stopping {
                self.stopping = true;
                self.discard = true;
                self.term = Some(Termination::start(self.pid, grace));
            }
        }

        fn read_stderr(&mut self, keep: usize) {
            let Some(err) = self.stderr.as_mut() else {
                return;
            };
            let buf = &mut self.rbuf;
            loop {
                match err.read(buf) {
                    Ok(0) => {
                        self.stderr = None;
                        return;
                    }
                    Ok(n) => {
                        for tail in [&mut self.err_tail, &mut self.proc_tail] {
                            tail.extend_from_slice(&buf[..n]);
                            let keep = keep.max(1);
                            if tail.len() > 2 * keep {
                                let cut = tail.len() - keep;
                                tail.drain(..cut);
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    Err(_) => {
                        self.stderr = None;
                        return;
                    }
                }
            }
        }

        /// Reads what stdout has; returns false at end of file.
        fn read_stdout(&mut self) -> bool {
            let Some(out) = self.stdout.as_mut() else {
                return false;
            };
            let buf = &mut self.rbuf;
            loop {
                match out.read(buf) {
                    Ok(0) => {
                        self.stdout = None;
                        return false;
                    }
                    Ok(n) => {
                        if !self.discard {
                            self.out_buf.extend_from_slice(&buf[..n]);
                        }
                        if n < buf.len() {
                            return true;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                    Err(_) => {
                        self.stdout = None;
                        return false;
                    }
                }
            }
        }

        fn write_some(&mut self) {
            let Some(stdin) = self.stdin.as_mut() else {
                self.wbuf.clear();
                self.wpos = 0;
                return;
            };
            while self.wpos < self.wbuf.len() {
                match stdin.write(&self.wbuf[self.wpos..]) {
                    Ok(0) => break,
                    Ok(n) => self.wpos += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // The program closed stdin (or died): its end shows on stdout/pidfd.
                        self.stdin = None;
                        break;
                    }
                }
            }
            if self.wpos == self.wbuf.len() {
                self.wbuf.clear();
                self.wpos = 0;
            }
        }

        /// Waits (bounded) for the leader to exit and reaps it; kills the rest of its group.
        fn reap(&mut self, grace: Duration) -> Option<crate::exec::Exited> {
            // The leader is gone or going: make sure of it, without waiting for ever.
            if !self.leader_exited(Duration::ZERO) {
                let term = self
                    .term
                    .take()
                    .unwrap_or_else(|| Termination::start(self.pid, grace));
                let left = term.kill_at().saturating_duration_since(Instant::now());
                if !self.leader_exited(left) {
                    term.kill();
                }
            }
            let exited = wait_pid(self.pid);
            signal_group(self.pid, libc::SIGKILL);
            if self.stopping {
                // Stopped by us (timeout, cancel, a broken line): what left its process
                // group (setsid, daemons) goes too, as for a process-per-task run.
                kill_escapees(&self.token);
            }
            exited
        }

        /// Waits up to `limit` for the leader to exit (true when it did).
        fn leader_exited(&self, limit: Duration) -> bool {
            match &self.pidfd {
                Some(fd) => {
                    let mut pfd = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ms = limit.as_millis().min(i32::MAX as u128) as i32;
                    // SAFETY: one initialised pollfd that lives across the call.
                    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
                    r > 0
                }
                None => {
                    // Without an exit descriptor: poll the exit status, bounded.
                    let end = Instant::now() + limit;
                    loop {
                        // SAFETY: WNOWAIT leaves the child to be reaped by wait_pid.
                        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                        // SAFETY: info points to a live local; P_PID with our child's pid.
                        let r = unsafe {
                            libc::waitid(
                                libc::P_PID,
                                self.pid as libc::id_t,
                                &mut info,
                                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                            )
                        };
                        // SAFETY: si_pid is valid to read after a successful waitid.
                        if r == 0 && unsafe { info.si_pid() } == self.pid {
                            return true;
                        }
                        if r != 0 || Instant::now() >= end {
                            return r != 0;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }

        /// Closes stdin, lets the program exit by itself within `grace`, then stops it.
        pub(super) fn close(mut self, grace: Duration) {
            self.stdin = None;
            if !self.leader_exited(grace) {
                let term = Termination::start(self.pid, grace);
                let left = term.kill_at().saturating_duration_since(Instant::now());
                if !self.leader_exited(left) {
                    term.kill();
                }
            }
            let _ = wait_pid(self.pid);
            signal_group(self.pid, libc::SIGKILL);
        }
    }

    impl Proc {
        /// What makes a process kept between [`StreamRunner::serve`] calls unfit for the
        /// next one: it exited, closed stdout or printed on it while it had nothing to
        /// answer (a line printed then would be taken as the next task's answer).
        fn idle_trouble(&mut self) -> Option<&'static str> {
            if !self.out_buf.is_empty() {
                return Some("printed on stdout");
            }
            let Some(out) = &self.stdout else {
                return Some("closed stdout");
            };
            let mut pfd = libc::pollfd {
                fd: out.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one initialised pollfd that lives across the call.
            let r = unsafe { libc::poll(&mut pfd, 1, 0) };
            if r > 0 {
                return Some(if pfd.revents & libc::POLLIN != 0 {
                    "printed on stdout"
                } else {
                    "closed stdout"
                });
            }
            if self.ending || self.leader_exited(Duration::ZERO) {
                return Some("exited");
            }
            None
        }

        /// Ends a process kept between calls that is unfit (`why`) or still being stopped
        /// (`None`); no task is to blame. Kills its group and reaps it.
        fn discard_idle(mut self, program: &std::path::Path, why: Option<&str>) {
            if let Some(why) = why {
                log::warn!(
                    "the streaming program {} (pid {}) {why} while it had no input to \
                     answer: stopped; a fresh process takes the next tasks",
                    program.display(),
                    self.pid
                );
            }
            self.stdin = None;
            // The leader first (it may have left its group), then the group; it is our
            // unreaped child, so its pid cannot have been reused.
            // SAFETY: kill with our own child's pid and a valid signal.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            signal_group(self.pid, libc::SIGKILL);
            let _ = wait_pid(self.pid);
            if self.stopping {
                kill_escapees(&self.token);
            }
        }
    }

    /// The task at the front of the queue, once it is current.
    struct Current {
        t0: Instant,
        started: SystemTime,
        /// Its timeout, moved on by the time its control spends suspended.
        deadline: Option<Deadline>,
        timeout: Option<Duration>,
        /// Why it fails when the process ends (set when we stop the process because of it).
        verdict: Option<ExitInfo>,
    }

    impl Current {
        /// The task whose clock starts now, with `timeout` (if any) as its limit, not
        /// counting the time `control` spends suspended.
        fn start(timeout: Option<Duration>, control: &ProcessControl) -> Current {
            let t0 = Instant::now();
            Current {
                t0,
                started: SystemTime::now(),
                deadline: Deadline::new(control, t0, timeout),
                timeout,
                verdict: None,
            }
        }

        /// When the task times out on process `p`, and the limit that is then: its timeout,
        /// plus the start-up allowance while `p` has answered nothing yet.
        fn due(&self, p: &Proc) -> Option<(Instant, Duration)> {
            let (deadline, timeout) = (self.deadline.as_ref()?.at()?, self.timeout?);
            if p.answered > 0 {
                return Some((deadline, timeout));
            }
            let extra = startup_allowance(timeout);
            Some((deadline.checked_add(extra)?, timeout.checked_add(extra)?))
        }

        /// When the task that was current (`c`) started; now if none was.
        fn clock(c: Option<Current>) -> (Instant, SystemTime) {
            c.map_or((Instant::now(), SystemTime::now()), |c| (c.t0, c.started))
        }

        /// Ties the task's `control` to process `p`; a task cancelled already stops `p` at
        /// once (true then).
        fn attach_to(&mut self, control: &ProcessControl, p: &mut Proc, grace: Duration) -> bool {
            attach(control, Some(p.pid), grace);
            if !control.is_cancelled() {
                return false;
            }
            self.verdict = Some(ExitInfo::Cancelled);
            p.stop(grace);
            true
        }
    }

    struct Entry<T> {
        input: StreamInput,
        token: T,
    }

    /// Attaches `control` to the running process (so cancel stops it) or detaches it. A
    /// control suspended while no process was attached stops the process now.
    fn attach(control: &ProcessControl, pid: Option<i32>, grace: Duration) {
        let mut st = control.lock();
        st.pgid = pid;
        if let Some(pid) = pid {
            st.run += 1;
            st.grace = grace;
            if st.suspended {
                signal_group(pid, libc::SIGSTOP);
            }
        }
    }

    pub(super) fn serve<T>(
        runner: &mut StreamRunner,
        mut next: impl FnMut() -> Option<(StreamInput, T)>,
        mut report: impl FnMut(T, StreamOutcome),
        mut before_wait: impl FnMut(),
    ) {
        let window = runner.program.window.max(1);
        let grace = runner.program.grace;
        let keep = runner.program.stderr_tail_bytes;
        let max_line = runner.program.max_line_bytes;
        let mut queue: VecDeque<Entry<T>> = VecDeque::new();
        let mut cur: Option<Current> = None;
        // A process kept from the previous call starts this one clean, or not at all.
        if let Some(p) = runner.proc.as_mut() {
            let stopping = p.stopping;
            let trouble = p.idle_trouble();
            if stopping || trouble.is_some() {
                if let Some(p) = runner.proc.take() {
                    p.discard_idle(&runner.program.program, trouble.filter(|_| !stopping));
                }
            }
        }
        loop {
            while queue.len() < window {
                match next() {
                    Some((input, token)) => queue.push_back(Entry { input, token }),
                    None => break,
                }
            }
            let Some(front) = queue.front() else {
                return;
            };
            // The front task becomes current.
            if cur.is_none() {
                let written = runner.proc.as_ref().is_some_and(|p| p.written > 0);
                if front.input.control.is_cancelled() && !written {
                    if let Some(e) = queue.pop_front() {
                        report(
                            e.token,
                            failed(
                                ExitInfo::Cancelled,
                                String::new(),
                                Instant::now(),
                                SystemTime::now(),
                            ),
                        );
                    }
                    continue;
                }
                let mut c = Current::start(front.input.timeout, &front.input.control);
                if let Some(p) = runner.proc.as_mut() {
                    c.attach_to(&front.input.control, p, grace);
                }
                cur = Some(c);
            }
            // A process to talk to: none is started into a suspension.
            if runner.proc.is_none() {
                front.input.control.wait_while_suspended();
                match spawn(&runner.program) {
                    Ok(mut p) => {
                        runner.starts += 1;
                        let on_start = front.input.control.lock().on_start.clone();
                        if let Some(f) = on_start {
                            f(p.pid);
                        }
                        // A task cancelled meanwhile (also while held) stops it at once.
                        match cur.as_mut() {
                            Some(c) => {
                                c.attach_to(&front.input.control, &mut p, grace);
                            }
                            None => attach(&front.input.control, Some(p.pid), grace),
                        }
                        runner.proc = Some(p);
                    }
                    Err(e) => {
                        let c = cur.take();
                        if let Some(entry) = queue.pop_front() {
                            let (t0, started) = Current::clock(c);
                            report(
                                entry.token,
                                failed(
                                    ExitInfo::SpawnFailed {
                                        reason: format!(
                                            "{}: {e}",
                                            runner.program.program.display()
                                        ),
                                    },
                                    String::new(),
                                    t0,
                                    started,
                                ),
                            );
                        }
                        continue;
                    }
                }
            }
            let Some(p) = runner.proc.as_mut() else {
                continue;
            };
            // Write ahead.
            if !p.stopping && !p.ending && p.stdin.is_some() {
                while p.written < queue.len() && p.wbuf.len() - p.wpos < WRITE_AHEAD_BYTES {
                    if let Some(e) = queue.get(p.written) {
                        p.wbuf.extend_from_slice(&e.input.line);
                        p.wbuf.push(b'\n');
                    }
                    p.written += 1;
                }
                p.write_some();
            }
            // Wait for something to happen.
            if !p.ending {
                let now = Instant::now();
                let mut wake: Option<Instant> = None;
                if let Some(c) = &cur {
                    if c.verdict.is_none() && !p.stopping {
                        wake = c.due(p).map(|(at, _)| at);
                    }
                }
                if let Some(t) = &p.term {
                    let k = t.kill_at();
                    wake = Some(wake.map_or(k, |w| w.min(k)));
                }
                let timeout_ms: i32 = match wake {
                    None => -1,
                    Some(w) => w
                        .saturating_duration_since(now)
                        .as_millis()
                        .clamp(0, i32::MAX as u128) as i32,
                };
                let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
                let mut which: Vec<u8> = Vec::with_capacity(4);
                let mut add = |fd: i32, events: i16, w: u8| {
                    fds.push(libc::pollfd {
                        fd,
                        events,
                        revents: 0,
                    });
                    which.push(w);
                };
                if let Some(i) = &p.stdin {
                    if p.wpos < p.wbuf.len() {
                        add(i.as_raw_fd(), libc::POLLOUT, 0);
                    }
                }
                if let Some(o) = &p.stdout {
                    add(o.as_raw_fd(), libc::POLLIN, 1);
                }
                if let Some(e) = &p.stderr {
                    add(e.as_raw_fd(), libc::POLLIN, 2);
                }
                if let Some(f) = &p.pidfd {
                    add(f.as_raw_fd(), libc::POLLIN, 3);
                }
                if timeout_ms != 0 {
                    before_wait();
                }
                let r = if fds.is_empty() {
                    0
                } else {
                    // SAFETY: fds holds fds.len() initialised pollfds that outlive the call.
                    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }
                };
                if fds.is_empty() {
                    p.ending = true;
                }
                if r < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    p.ending = true;
                }
                for (fd, w) in fds.iter().zip(which.iter()) {
                    if fd.revents == 0 {
                        continue;
                    }
                    match w {
                        0 => p.write_some(),
                        1 => {
                            if !p.read_stdout() {
                                p.ending = true;
                            }
                        }
                        2 => p.read_stderr(keep),
                        _ => p.ending = true,
                    }
                }
                // Timers.
                let now = Instant::now();
                if let Some(t) = p.term.take() {
                    if now >= t.kill_at() {
                        t.kill();
                    } else {
                        p.term = Some(t);
                    }
                }
                if let Some(c) = cur.as_mut() {
                    let due = c.due(p).filter(|(at, _)| now >= *at);
                    if let (None, false, Some((_, limit))) = (&c.verdict, p.stopping, due) {
                        c.verdict = Some(ExitInfo::TimedOut {
                            limit_secs: limit.as_secs_f64(),
                        });
                        p.stop(grace);
                    }
                }
            }
            // Answers.
            if !p.discard {
                let mut start = 0;
                // stderr is read once per batch of answers (not once per answer: a read
                // that mostly finds nothing is a system call per task); what it holds goes
                // with the first answer of the batch.
                let mut stderr_read = false;
                while let Some(pos) = p.out_buf[p.scan_from..].iter().position(|&b| b == b'\n') {
                    let end = p.scan_from + pos;
                    p.scan_from = end + 1;
                    let line_start = start;
                    start = end + 1;
                    let Some(entry) = queue.pop_front() else {
                        // An answer for no input: the stream position is lost.
                        p.stop(grace);
                        break;
                    };
                    p.written = p.written.saturating_sub(1);
                    p.answered += 1;
                    attach(&entry.input.control, None, grace);
                    if !stderr_read {
                        p.read_stderr(keep);
                        stderr_read = true;
                    }
                    let tail = if p.err_tail.is_empty() {
                        String::new()
                    } else {
                        let t = tail_string(&p.err_tail, keep);
                        p.err_tail.clear();
                        t
                    };
                    let (t0, started) = Current::clock(cur.take());
                    let line = &p.out_buf[line_start..end];
                    let limit = entry.input.answer_limit(max_line);
                    // A whole line can arrive in one read: its length is checked here too.
                    let verdict = if line.len() > limit {
                        Err(too_long(limit))
                    } else {
                        classify_line(line, limit as u64)
                    };
                    let outcome = match verdict {
                        Ok(result) => StreamOutcome {
                            exit: ExitInfo::Exited { code: 0 },
                            result: result.to_vec(),
                            stderr_tail: tail,
                            wall: t0.elapsed(),
                            started,
                        },
                        Err(exit) => {
                            if matches!(exit, ExitInfo::StreamBroken { .. }) {
                                // The stream position is unknown: start afresh.
                                p.stop(grace);
                            }
                            failed(exit, tail_string(&p.proc_tail, keep), t0, started)
                        }
                    };
                    report(entry.token, outcome);
                    if p.discard {
                        break;
                    }
                    // The next task becomes current at once (its clock starts now).
                    if let Some(front) = queue.front() {
                        let mut c = Current::start(front.input.timeout, &front.input.control);
                        let stopped = c.attach_to(&front.input.control, p, grace);
                        cur = Some(c);
                        if stopped {
                            break;
                        }
                    }
                }
                if p.discard {
                    p.out_buf.clear();
                    p.scan_from = 0;
                } else {
                    p.out_buf.drain(..start);
                    // What is left holds no newline: the next search starts after it (a long
                    // line read in pieces is scanned once, not once per piece).
                    p.scan_from = p.out_buf.len();
                    let limit = queue
                        .front()
                        .map_or(max_line, |e| e.input.answer_limit(max_line));
                    if p.out_buf.len() > limit {
                        // Too long: fail the current task without reading the rest.
                        if let Some(entry) = queue.pop_front() {
                            attach(&entry.input.control, None, grace);
                            p.read_stderr(keep);
                            let tail = tail_string(&p.proc_tail, keep);
                            let (t0, started) = Current::clock(cur.take());
                            report(entry.token, failed(too_long(limit), tail, t0, started));
                        }
                        p.stop(grace);
                        p.out_buf.clear();
                        p.scan_from = 0;
                    }
                }
            }
            // The process ended (or is being stopped and has exited): settle the current task.
            if p.ending {
                // Answers still in the pipe count, unless we are discarding: read them, and
                // handle complete lines (next iteration, without polling) before settling.
                if !p.discard && p.stdout.is_some() {
                    drain_stdout(p);
                    if p.out_buf[p.scan_from..].contains(&b'\n') {
                        continue;
                    }
                }
                let Some(mut p) = runner.proc.take() else {
                    continue;
                };
                // Still running after its stdout ended (a program exiting closes it a moment
                // before its exit shows): it closed stdout, and reap stops it.
                let closed_stdout = !p.stopping && !p.leader_exited(CLOSED_STDOUT_GRACE);
                let exited = p.reap(grace);
                p.read_stderr(keep);
                let tail = tail_string(&p.proc_tail, keep);
                let c = cur.take();
                if let Some(front) = queue.front() {
                    attach(&front.input.control, None, grace);
                }
                let Some(c) = c else {
                    // Ended between tasks: the next one goes to a fresh process.
                    continue;
                };
                let exit = match c.verdict {
                    // We stopped it because of the current task (timeout, cancel).
                    Some(exit) => Some(exit),
                    // We stopped it after a broken line (already reported): no blame.
                    None if p.stopping => None,
                    // It ended by itself with the current task given to it (or before
                    // answering anything): the current task fails.
                    None if p.written > 0 || p.answered == 0 => Some(
                        if queue
                            .front()
                            .is_some_and(|e| e.input.control.is_cancelled())
                        {
                            ExitInfo::Cancelled
                        } else {
                            match exited.as_ref().map(|e| decode_status(e.status)) {
                                _ if closed_stdout => ExitInfo::StreamBroken {
                                    reason: "the program closed its stdout without answering \
                                             this input (it was still running, and was stopped)"
                                        .into(),
                                },
                                Some(ExitInfo::Exited { code: 0 }) => ExitInfo::StreamBroken {
                                    reason: "the program exited (status 0) without answering \
                                             this input"
                                        .into(),
                                },
                                Some(exit) => exit,
                                None => ExitInfo::StreamBroken {
                                    reason: "lost track of the program".into(),
                                },
                            }
                        },
                    ),
                    // It ended while idle: no blame.
                    None => None,
                };
                if let Some(exit) = exit {
                    if let Some(entry) = queue.pop_front() {
                        report(entry.token, failed(exit, tail, c.t0, c.started));
                    }
                }
            }
        }
    }

    /// Reads stdout until end of file or for at most [`DRAIN_AFTER_EXIT`].
    fn drain_stdout(p: &mut Proc) {
        signal_group(p.pid, libc::SIGKILL);
        let until = Instant::now() + DRAIN_AFTER_EXIT;
        while let Some(out) = &p.stdout {
            let mut pfd = libc::pollfd {
                fd: out.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let left = until.saturating_duration_since(Instant::now()).as_millis() as i32;
            // SAFETY: one initialised pollfd that lives across the call.
            let r = unsafe { libc::poll(&mut pfd, 1, left) };
            if r <= 0 || !p.read_stdout() || p.out_buf.len() > (1 << 20) {
                break;
            }
        }
        p.stdout = None;
    }
}

#[cfg(windows)]
mod windows_fallback {
    //! Windows has no fork-free long-lived pipes loop here yet: each input runs as its own
    //! process (which a streaming program handles: one line in, one line out, then EOF).
    use super::*;
    use crate::exec::{execute, ExecRequest};

    pub(super) fn serve<T>(
        runner: &mut StreamRunner,
        mut next: impl FnMut() -> Option<(StreamInput, T)>,
        mut report: impl FnMut(T, StreamOutcome),
        mut before_wait: impl FnMut(),
    ) {
        let p = runner.program.clone();
        while let Some((input, token)) = next() {
            let t0 = Instant::now();
            let started = SystemTime::now();
            let io = match tempfile::tempdir() {
                Ok(d) => d,
                Err(e) => {
                    report(
                        token,
                        failed(
                            ExitInfo::SpawnFailed {
                                reason: format!("scratch directory: {e}"),
                            },
                            String::new(),
                            t0,
                            started,
                        ),
                    );
                    continue;
                }
            };
            let mut req = ExecRequest::new(p.program.clone(), p.workdir.clone(), io.path().into());
            req.args = p.args.clone();
            req.env = p.env.clone();
            req.stdin = input.line.clone();
            req.stdin.push(b'\n');
            req.timeout = input.timeout;
            req.grace = p.grace;
            req.stderr_tail_bytes = p.stderr_tail_bytes;
            let limit = input.answer_limit(p.max_line_bytes);
            req.max_stdout_bytes = limit as u64 + 2;
            runner.starts += 1;
            let outcome = match execute(&req, &input.control) {
                Err(e) => failed(
                    ExitInfo::SpawnFailed {
                        reason: e.to_string(),
                    },
                    String::new(),
                    t0,
                    started,
                ),
                Ok(o) => {
                    let first = o.stdout.split(|&b| b == b'\n').next().unwrap_or(&[]);
                    let has_line = o.stdout.contains(&b'\n');
                    if !has_line && o.stdout_truncated {
                        failed(too_long(limit), o.stderr_tail, t0, started)
                    } else if !has_line && !o.exit.success() {
                        failed(o.exit, o.stderr_tail, t0, started)
                    } else if !has_line {
                        failed(
                            ExitInfo::StreamBroken {
                                reason: "the program exited (status 0) without answering \
                                         this input"
                                    .into(),
                            },
                            o.stderr_tail,
                            t0,
                            started,
                        )
                    } else {
                        let verdict = if first.len() > limit {
                            Err(too_long(limit))
                        } else {
                            classify_line(first, limit as u64)
                        };
                        match verdict {
                            Ok(r) => StreamOutcome {
                                exit: ExitInfo::Exited { code: 0 },
                                result: r.to_vec(),
                                stderr_tail: o.stderr_tail,
                                wall: t0.elapsed(),
                                started,
                            },
                            Err(exit) => failed(exit, o.stderr_tail, t0, started),
                        }
                    }
                }
            };
            report(token, outcome);
            before_wait();
        }
    }
}
