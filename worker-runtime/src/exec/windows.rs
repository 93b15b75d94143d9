//! The task contract on Windows: the program runs in a Job Object.
//!
//! The program is created suspended, put into a fresh job whose limit is
//! `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`, and only then let run, so every process it starts
//! is in the job from its first instruction. Timeout and cancellation end the whole job
//! (`TerminateJobObject`); when the leader exits, the rest of the job is ended too; and
//! if mw-worker itself dies, the kernel closes the job handle and kills the task tree (the
//! analogue of the process group plus `PR_SET_PDEATHSIG` on Linux). Windows gives a
//! console program without a console of its own no polite stop signal, so there is no
//! grace period here. CPU time is the job's accounting (all processes, ended ones too).
//! stdout and stderr go to files beside the working directory, as on old Linux kernels,
//! their sizes watched while the task runs: one past its limit ends the job.
//!
//! This module knows nothing of bundles, platforms or the master.

use super::{
    create_output_files, finish_from_files, io_err, outcome_without_run, spawn_failed, watch_wait,
    Deadline, ExecError, ExecOutcome, ExecRequest, Exited, OutputWatch, ProcessControl, Stop,
};
use mw_bundle::ExitInfo;
use std::fs::File;
use std::os::windows::io::AsRawHandle;
use std::os::windows::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE, WAIT_TIMEOUT};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Thread32First, Thread32Next, TH32CS_SNAPTHREAD, THREADENTRY32,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectBasicAccountingInformation,
    JobObjectBasicProcessIdList, JobObjectExtendedLimitInformation, QueryInformationJobObject,
    SetInformationJobObject, TerminateJobObject, JOBOBJECT_BASIC_ACCOUNTING_INFORMATION,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Threading::{
    OpenThread, ResumeThread, SuspendThread, WaitForSingleObject, CREATE_NO_WINDOW,
    CREATE_SUSPENDED, INFINITE, THREAD_SUSPEND_RESUME,
};

/// Exit code given to processes ended by `TerminateJobObject` (as `TerminateProcess(1)`).
const KILLED_EXIT_CODE: u32 = 1;

/// A Job Object with kill-on-close; closing the last handle ends every process in it.
pub(super) struct Job {
    handle: HANDLE,
}

// SAFETY: a job handle is a kernel object reference usable from any thread; the Win32 job
// functions are thread-safe.
unsafe impl Send for Job {}
// SAFETY: as above.
unsafe impl Sync for Job {}

impl Job {
    fn new() -> std::io::Result<Self> {
        // SAFETY: no security attributes and no name: a fresh anonymous job.
        let handle = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if handle.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        let job = Job { handle };
        // SAFETY: the struct is plain old data; all-zero is its documented empty value.
        let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        // SAFETY: `info` is a live JOBOBJECT_EXTENDED_LIMIT_INFORMATION of the size given.
        let ok = unsafe {
            SetInformationJobObject(
                job.handle,
                JobObjectExtendedLimitInformation,
                (&info as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(job)
    }

    fn assign(&self, process: HANDLE) -> std::io::Result<()> {
        // SAFETY: both handles are live (the child is owned by the caller).
        if unsafe { AssignProcessToJobObject(self.handle, process) } == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ends every process in the job.
    pub(super) fn terminate(&self) {
        // SAFETY: the handle is live until Drop; a job with no processes is a no-op.
        unsafe {
            TerminateJobObject(self.handle, KILLED_EXIT_CODE);
        }
    }

    /// User and kernel CPU time of every process that ran in the job.
    pub(super) fn cpu_times(&self) -> (Duration, Duration) {
        // SAFETY: plain old data; zero is a valid value.
        let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live buffer of the size given.
        let ok = unsafe {
            QueryInformationJobObject(
                self.handle,
                JobObjectBasicAccountingInformation,
                (&mut info as *mut JOBOBJECT_BASIC_ACCOUNTING_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return (Duration::ZERO, Duration::ZERO);
        }
        (
            hundred_ns(info.TotalUserTime),
            hundred_ns(info.TotalKernelTime),
        )
    }

    /// Ids of the processes currently in the job (at most 1024).
    fn process_ids(&self) -> Vec<u32> {
        // JOBOBJECT_BASIC_PROCESS_ID_LIST: two u32 counts, then ULONG_PTR ids.
        const MAX: usize = 1024;
        let mut buf = vec![0usize; 1 + MAX];
        // SAFETY: `buf` is a live, suitably aligned buffer of the byte length given.
        let ok = unsafe {
            QueryInformationJobObject(
                self.handle,
                JobObjectBasicProcessIdList,
                buf.as_mut_ptr().cast(),
                (buf.len() * std::mem::size_of::<usize>()) as u32,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Vec::new();
        }
        let listed = (buf[0] >> 32) as usize; // NumberOfProcessIdsInList (second u32)
        buf.iter()
            .skip(1)
            .take(listed.min(MAX))
            .map(|&id| id as u32)
            .collect()
    }

    /// Suspends (or resumes) every thread of every process in the job.
    pub(super) fn set_suspended(&self, suspend: bool) {
        let ids = self.process_ids();
        for_each_thread(|owner, tid| {
            if ids.contains(&owner) {
                suspend_thread(tid, suspend);
            }
        });
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: the handle is ours and closed once; kill-on-close ends what is left.
        unsafe {
            CloseHandle(self.handle);
        }
    }
}

fn hundred_ns(t: i64) -> Duration {
    Duration::from_nanos(u64::try_from(t).unwrap_or(0).saturating_mul(100))
}

/// Calls `f(owner_pid, thread_id)` for every thread in the system.
fn for_each_thread(mut f: impl FnMut(u32, u32)) {
    // SAFETY: a snapshot of all threads; the handle is closed below.
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if snap == INVALID_HANDLE_VALUE || snap.is_null() {
        return;
    }
    // SAFETY: plain old data; dwSize must be set before the first call.
    let mut te: THREADENTRY32 = unsafe { std::mem::zeroed() };
    te.dwSize = std::mem::size_of::<THREADENTRY32>() as u32;
    // SAFETY: `snap` is a live snapshot and `te` a live THREADENTRY32 with dwSize set.
    let mut more = unsafe { Thread32First(snap, &mut te) } != 0;
    while more {
        f(te.th32OwnerProcessID, te.th32ThreadID);
        // SAFETY: as above.
        more = unsafe { Thread32Next(snap, &mut te) } != 0;
    }
    // SAFETY: the snapshot handle is ours.
    unsafe {
        CloseHandle(snap);
    }
}

fn suspend_thread(tid: u32, suspend: bool) {
    // SAFETY: opens a thread by id for suspend/resume only; closed below.
    let h = unsafe { OpenThread(THREAD_SUSPEND_RESUME, 0, tid) };
    if h.is_null() {
        return;
    }
    // SAFETY: `h` is a live thread handle with THREAD_SUSPEND_RESUME access.
    unsafe {
        if suspend {
            SuspendThread(h);
        } else {
            ResumeThread(h);
        }
        CloseHandle(h);
    }
}

/// Runs the program in a job and waits for it, enforcing the timeout and honouring
/// `control`.
pub(super) fn execute(
    req: &ExecRequest,
    control: &ProcessControl,
) -> Result<ExecOutcome, ExecError> {
    let stdin_path = match &req.stdin_file {
        Some(path) => path.clone(),
        None => {
            let path = req.io_dir.join("stdin");
            std::fs::write(&path, &req.stdin)
                .map_err(io_err(format!("writing {}", path.display())))?;
            path
        }
    };
    let stdin = File::open(&stdin_path).map_err(io_err("opening stdin file"))?;
    let (stdout, stderr) = create_output_files(req)?;
    let watch = OutputWatch::new(req, &stdout, &stderr)?;
    let job = Arc::new(Job::new().map_err(io_err("creating a job object"))?);

    let mut cmd = Command::new(&req.program);
    cmd.args(&req.args)
        .envs(&req.env)
        .current_dir(&req.workdir)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .creation_flags(CREATE_SUSPENDED | CREATE_NO_WINDOW);

    // Register before spawning so a cancel racing with the spawn is seen. A suspension holds
    // the start back; the task's clock starts once it may run.
    let (mut child, t0, started) = {
        let mut st = control.hold_while_suspended(control.lock());
        let started = SystemTime::now();
        let t0 = Instant::now();
        if st.cancelled {
            return Ok(outcome_without_run(ExitInfo::Cancelled, started));
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => return Ok(spawn_failed(&req.program, &e, started)),
        };
        let process = child.as_raw_handle() as HANDLE;
        if let Err(e) = job.assign(process) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            let why = format!("cannot put it in a job: {e}");
            return Ok(spawn_failed(&req.program, &why, started));
        }
        // In the job now, so its children will be too: let its first thread run.
        let pid = child.id();
        for_each_thread(|owner, tid| {
            if owner == pid {
                suspend_thread(tid, false);
            }
        });
        st.pgid = i32::try_from(pid).ok();
        st.job = Some(job.clone());
        st.run += 1;
        st.grace = req.grace;
        (child, t0, started)
    };
    let deadline = Deadline::new(control, t0, req.timeout);
    let pid = child.id();
    let on_start = control.lock().on_start.clone();
    if let (Some(f), Ok(pid)) = (on_start, i32::try_from(pid)) {
        f(pid);
    }

    let process = child.as_raw_handle() as HANDLE;
    // The wait ends every watch interval to look at the timeout and at the sizes of the
    // output files; either passing its limit ends the job.
    let mut stop: Option<Stop> = None;
    loop {
        // The deadline moves on while the task is suspended: it is looked at again each time
        // the wait ends, and the task times out only once it has really passed.
        let wait_ms = match stop {
            Some(_) => INFINITE,
            None => {
                let wait = watch_wait(deadline.as_ref(), Instant::now());
                u32::try_from(wait.as_millis()).unwrap_or(INFINITE - 1)
            }
        };
        // SAFETY: `process` is the live handle owned by `child`.
        let r = unsafe { WaitForSingleObject(process, wait_ms) };
        if r == WAIT_TIMEOUT && stop.is_none() {
            if deadline.as_ref().is_some_and(|d| d.passed(Instant::now())) {
                stop = Some(Stop::TimedOut);
                job.terminate();
            } else if let Some(over) = watch.overflow().filter(|_| !control.is_cancelled()) {
                stop = Some(Stop::Output(over));
                job.terminate();
            }
            continue;
        }
        break;
    }
    // The leader has exited: end whatever is left of its tree.
    job.terminate();
    let status = child.wait().ok().and_then(|s| s.code());
    let (user, sys) = job.cpu_times();
    {
        let mut st = control.lock();
        st.job = None;
    }
    let exited = status.map(|status| Exited { status, user, sys });
    finish_from_files(req, control, (t0, started), stop, exited)
}

/// Turns a process exit code into an [`ExitInfo`]: Windows has no signals, so every end
/// is an exit code (a crash is its NTSTATUS, e.g. 0xC0000005 for an access violation).
pub fn decode_status(status: i32) -> ExitInfo {
    ExitInfo::Exited { code: status }
}

/// This machine's name (`COMPUTERNAME`).
pub fn host_name() -> String {
    std::env::var("COMPUTERNAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
