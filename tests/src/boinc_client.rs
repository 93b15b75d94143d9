//! Harness that runs Debian's REAL `boinc` client (no server, no network) on workunits whose
//! app is the real `mw-worker`, following the recipe in reference/boinc-client.md §8: a fresh
//! data directory with an account file, a prefs override, a hand-written `client_state.xml`
//! (files pre-marked present, outputs sticky), and the client started with Unix-domain GUI
//! RPC, `--unsigned_apps_ok` and `--skip_cpu_benchmarks`. Driven with `boinccmd`.
//!
//! This is not a test double: it drives the installed client. The BOINC *server* double
//! (another module) can reuse it to execute each workunit.
//!
//! Logical names match the templates: inputs `mw_program` and `mw_task`, output `mw_result`.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Master URL of the fake project (never contacted: network activity is suspended).
pub const PROJECT_URL: &str = "http://127.0.0.1:1/test/";
/// The project's directory name under `projects/` (the URL without scheme, sanitised).
pub const PROJECT_DIR: &str = "127.0.0.1_1_test";
/// The app name in the client state.
pub const APP_NAME: &str = "mw";
/// Physical name of the app's main program (`mw-worker`).
pub const WORKER_PHYSICAL: &str = "mw-worker_1.00_x86_64-pc-linux-gnu";
/// How long a whole workunit may take before the harness gives up (hang guard only).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// One workunit for the client: a program bundle and a task bundle.
#[derive(Debug, Clone)]
pub struct Job {
    /// Workunit name (shell-safe: `[A-Za-z0-9_.-]`); its result is `<name>_r0`.
    pub name: String,
    /// The program bundle file.
    pub program_bundle: PathBuf,
    /// The task bundle file.
    pub task_bundle: PathBuf,
}

impl Job {
    /// The result name the client shows.
    pub fn result_name(&self) -> String {
        format!("{}_r0", self.name)
    }
}

/// A prepared client data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory.
    pub dir: PathBuf,
    /// The account authenticator written into the account file (reaches `init_data.xml`).
    pub authenticator: String,
}

/// One task as `boinccmd --get_tasks` prints it (`key: value` lines).
#[derive(Debug, Clone, Default)]
pub struct TaskStatus {
    /// Every field, keyed by its label (`name`, `state`, `active_task_state`, `PID`, …).
    pub fields: BTreeMap<String, String>,
}

impl TaskStatus {
    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
    /// The result name.
    pub fn name(&self) -> &str {
        self.get("name").unwrap_or("")
    }
    /// `state:` (`downloaded`, `uploaded`, `compute error`, `aborted`, …).
    pub fn state(&self) -> &str {
        self.get("state").unwrap_or("")
    }
    /// `active_task_state:` while the task has a slot (`EXECUTING`, `SUSPENDED`, …).
    pub fn active_state(&self) -> Option<&str> {
        self.get("active_task_state")
    }
    /// True once the client is done with the task (final state, no process left).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state(),
            "uploaded" | "uploading" | "compute error" | "aborted"
        ) && !matches!(
            self.active_state(),
            Some("EXECUTING" | "SUSPENDED" | "QUIT_PENDING" | "ABORT_PENDING" | "COPY_PENDING")
        )
    }
    /// A numeric field.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.get(key)?.trim().parse().ok()
    }
}

/// Parses `boinccmd --get_tasks` output.
pub fn parse_tasks(text: &str) -> Vec<TaskStatus> {
    let mut tasks = Vec::new();
    let mut cur: Option<TaskStatus> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if t.ends_with(") -----------") {
            tasks.extend(cur.take());
            cur = Some(TaskStatus::default());
        } else if let (Some(c), Some((k, v))) = (cur.as_mut(), t.split_once(": ")) {
            c.fields.insert(k.trim().to_string(), v.trim().to_string());
        } else if let (Some(c), Some(k)) = (cur.as_mut(), t.strip_suffix(':')) {
            c.fields.insert(k.trim().to_string(), String::new());
        }
    }
    tasks.extend(cur);
    tasks
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 60
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        bail!("workunit name {name:?} is not shell-safe ([A-Za-z0-9_.-], at most 60)");
    }
    Ok(())
}

fn copy_exec(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

impl DataDir {
    /// Lays out a fresh client data directory in `dir` (created; must not exist or be
    /// empty) with `worker` as the app's main program and one workunit per job.
    pub fn create(dir: &Path, worker: &Path, jobs: &[Job], authenticator: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        if std::fs::read_dir(dir)?.next().is_some() {
            bail!("{} is not empty", dir.display());
        }
        let dir = dir.canonicalize()?;
        let pdir = dir.join("projects").join(PROJECT_DIR);
        std::fs::create_dir_all(&pdir)?;
        copy_exec(worker, &pdir.join(WORKER_PHYSICAL))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let deadline = now + 7 * 86400;
        std::fs::write(
            dir.join(format!("account_{PROJECT_DIR}.xml")),
            format!(
                "<account>\n    <master_url>{PROJECT_URL}</master_url>\n    \
                 <authenticator>{authenticator}</authenticator>\n    \
                 <project_name>test</project_name>\n</account>\n"
            ),
        )?;
        std::fs::write(
            dir.join("global_prefs_override.xml"),
            "<global_preferences>\n   <run_if_user_active>1</run_if_user_active>\n   \
             <suspend_cpu_usage>0</suspend_cpu_usage>\n   <max_ncpus_pct>100</max_ncpus_pct>\n   \
             <cpu_usage_limit>100</cpu_usage_limit>\n   <run_on_batteries>1</run_on_batteries>\n   \
             <leave_apps_in_memory>1</leave_apps_in_memory>\n</global_preferences>\n",
        )?;
        std::fs::write(
            dir.join("cc_config.xml"),
            "<cc_config>\n  <log_flags>\n    <task>1</task>\n    <task_debug>1</task_debug>\n    \
             <slot_debug>1</slot_debug>\n    <cpu_sched>1</cpu_sched>\n  </log_flags>\n</cc_config>\n",
        )?;
        let mut state = format!(
            "<client_state>\n<project>\n    <master_url>{PROJECT_URL}</master_url>\n    \
             <project_name>test</project_name>\n    <dont_request_more_work/>\n</project>\n\
             <app>\n    <name>{APP_NAME}</name>\n    <user_friendly_name>mw</user_friendly_name>\n</app>\n\
             <file_info>\n    <name>{WORKER_PHYSICAL}</name>\n    <status>1</status>\n    <executable/>\n</file_info>\n\
             <app_version>\n    <app_name>{APP_NAME}</app_name>\n    <version_num>100</version_num>\n    \
             <platform>x86_64-pc-linux-gnu</platform>\n    <avg_ncpus>1.000000</avg_ncpus>\n    \
             <flops>1000000000.0</flops>\n    <api_version>7.20.0</api_version>\n    <file_ref>\n        \
             <file_name>{WORKER_PHYSICAL}</file_name>\n        <main_program/>\n    </file_ref>\n</app_version>\n"
        );
        let mut programs = BTreeMap::new();
        for job in jobs {
            check_name(&job.name)?;
            let sha = mw_bundle::sha256_file(&job.program_bundle)
                .with_context(|| format!("reading {}", job.program_bundle.display()))?;
            let prog_name = format!("mw_program_{}", &sha[..16]);
            if programs.insert(prog_name.clone(), ()).is_none() {
                std::fs::copy(&job.program_bundle, pdir.join(&prog_name))?;
                state.push_str(&format!(
                    "<file_info>\n    <name>{prog_name}</name>\n    <status>1</status>\n</file_info>\n"
                ));
            }
            let wu = &job.name;
            std::fs::copy(&job.task_bundle, pdir.join(format!("{wu}_mw_task")))
                .with_context(|| format!("copying {}", job.task_bundle.display()))?;
            state.push_str(&format!(
                "<file_info>\n    <name>{wu}_mw_task</name>\n    <status>1</status>\n</file_info>\n\
                 <workunit>\n    <name>{wu}</name>\n    <app_name>{APP_NAME}</app_name>\n    \
                 <version_num>100</version_num>\n    <command_line></command_line>\n    \
                 <rsc_fpops_est>1000000000.0</rsc_fpops_est>\n    \
                 <rsc_fpops_bound>1000000000000000.0</rsc_fpops_bound>\n    \
                 <rsc_memory_bound>500000000.0</rsc_memory_bound>\n    \
                 <rsc_disk_bound>500000000.0</rsc_disk_bound>\n    \
                 <file_ref>\n        <file_name>{prog_name}</file_name>\n        <open_name>mw_program</open_name>\n    </file_ref>\n    \
                 <file_ref>\n        <file_name>{wu}_mw_task</file_name>\n        <open_name>mw_task</open_name>\n    </file_ref>\n\
                 </workunit>\n\
                 <file_info>\n    <name>{wu}_r0_mw_result</name>\n    <max_nbytes>100000000</max_nbytes>\n    <sticky/>\n</file_info>\n\
                 <result>\n    <name>{wu}_r0</name>\n    <wu_name>{wu}</wu_name>\n    \
                 <platform>x86_64-pc-linux-gnu</platform>\n    <version_num>100</version_num>\n    \
                 <state>2</state>\n    <received_time>{now}.000000</received_time>\n    \
                 <report_deadline>{deadline}.000000</report_deadline>\n    \
                 <file_ref>\n        <file_name>{wu}_r0_mw_result</file_name>\n        <open_name>mw_result</open_name>\n    </file_ref>\n\
                 </result>\n"
            ));
        }
        state.push_str("</client_state>\n");
        std::fs::write(dir.join("client_state.xml"), state)?;
        Ok(DataDir {
            dir,
            authenticator: authenticator.to_string(),
        })
    }

    /// The project directory (inputs, the worker, and results once written).
    pub fn project_dir(&self) -> PathBuf {
        self.dir.join("projects").join(PROJECT_DIR)
    }

    /// Removes what the project sent this host (the app's program copy, program and task
    /// bundles), as a real client deletes a finished workunit's input files; the result files
    /// stay. Call it once the client has quit: each host directory holds a copy of the
    /// worker (tens of MB in a debug build), and a test with hundreds of results would
    /// otherwise keep hundreds of copies until its temporary directory goes.
    pub fn remove_inputs(&self) -> Result<()> {
        for entry in std::fs::read_dir(self.project_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == WORKER_PHYSICAL
                || name.starts_with("mw_program_")
                || name.ends_with("_mw_task")
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Where the result bundle of workunit `wu` lands.
    pub fn result_file(&self, wu: &str) -> PathBuf {
        self.project_dir().join(format!("{wu}_r0_mw_result"))
    }

    /// The client's log so far.
    pub fn client_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("client.log")).unwrap_or_default()
    }

    /// The `<stderr_txt>` the client recorded in `client_state.xml` for `result` (what the
    /// server would receive), empty when none.
    pub fn stderr_txt(&self, result: &str) -> String {
        let state = std::fs::read_to_string(self.dir.join("client_state.xml")).unwrap_or_default();
        let Some(at) = state.find(&format!("<result>\n    <name>{result}</name>")) else {
            return String::new();
        };
        let rest = &state[at..];
        let end = rest.find("</result>").unwrap_or(rest.len());
        let rest = &rest[..end];
        match (rest.find("<stderr_txt>"), rest.find("</stderr_txt>")) {
            (Some(a), Some(b)) if b > a => rest[a + "<stderr_txt>".len()..b].to_string(),
            _ => String::new(),
        }
    }

    /// Starts the real client on this directory.
    pub fn start(&self) -> Result<Client> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("client.log"))?;
        let mut cmd = Command::new("boinc");
        cmd.arg("--dir")
            .arg(&self.dir)
            .args([
                "--gui_rpc_unix_domain",
                "--unsigned_apps_ok",
                "--skip_cpu_benchmarks",
                "--no_gpus",
                "--no_info_fetch",
                "--suppress_net_info",
            ])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // A serve loop killed by a failing test (SIGKILL: no Drop runs) takes its client
        // with it instead of leaving it running on a deleted project.
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context("starting `boinc` (is Debian's boinc-client installed?)")?;
        Ok(Client {
            child: Some(child),
            dir: self.dir.clone(),
        })
    }
}

/// A running real client. Dropping it kills the client and its apps.
#[derive(Debug)]
pub struct Client {
    child: Option<Child>,
    dir: PathBuf,
}

fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill only sends a signal to a PID we started (the client or its app).
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Client {
    /// Runs `boinccmd --unix_domain ARGS` from the data directory; its stdout.
    pub fn boinccmd(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("boinccmd")
            .arg("--unix_domain")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .context("running boinccmd")?;
        if !out.status.success() {
            bail!(
                "boinccmd {args:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The tasks the client knows (empty while its RPC socket is not up yet).
    pub fn tasks(&self) -> Vec<TaskStatus> {
        self.boinccmd(&["--get_tasks"])
            .map(|t| parse_tasks(&t))
            .unwrap_or_default()
    }

    /// `boinccmd --task URL RESULT OP` (`suspend`, `resume`, `abort`).
    pub fn task_op(&self, result: &str, op: &str) -> Result<()> {
        self.boinccmd(&["--task", PROJECT_URL, result, op])
            .map(|_| ())
    }

    /// Polls the client's tasks every 0.2 s until `pred` holds; fails (with the last task
    /// list) after `timeout`, or when the client died.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&[TaskStatus]) -> bool,
    ) -> Result<Vec<TaskStatus>> {
        let t0 = Instant::now();
        loop {
            let tasks = self.tasks();
            if pred(&tasks) {
                return Ok(tasks);
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("the boinc client exited ({st}) while waiting for {what}");
                }
            }
            if t0.elapsed() > timeout {
                bail!("timed out waiting for {what}; last tasks: {tasks:#?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// True while the client process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `boinccmd --quit`, then waits (bounded by `timeout`) for the client to exit.
    /// Returns true when it exited by itself; otherwise its apps and it are killed.
    pub fn quit(&mut self, timeout: Duration) -> Result<bool> {
        let _ = self.boinccmd(&["--quit"]);
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if child.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for p in children_of(child.id()) {
            kill(p, libc::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(false)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                for p in children_of(child.id()) {
                    kill(p, libc::SIGKILL);
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// What became of one workunit run by the real client.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The client data directory (kept for inspection).
    pub data_dir: DataDir,
    /// Where the result bundle is (it exists when the worker wrote it).
    pub result_file: PathBuf,
    /// The task as `boinccmd --get_tasks` showed it at the end.
    pub task: TaskStatus,
    /// The app's stderr as recorded in `client_state.xml` (`<stderr_txt>`).
    pub stderr_txt: String,
    /// The client's log.
    pub client_log: String,
}

/// Runs one workunit (`program_bundle` + `task_bundle`) with the real client and the real
/// `worker` in a fresh data directory `out_dir/client` and returns its final state. A task
/// that fails is an `Ok` outcome (`task.state()` says `compute error`); only harness
/// problems and the hang guard ([`DEFAULT_TIMEOUT`]) are errors.
pub fn run_workunit_with_real_client(
    worker: &Path,
    program_bundle: &Path,
    task_bundle: &Path,
    out_dir: &Path,
) -> Result<Outcome> {
    let job = Job {
        name: "wu1".into(),
        program_bundle: program_bundle.to_path_buf(),
        task_bundle: task_bundle.to_path_buf(),
    };
    let auth = format!(
        "mwauth{:x}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
    );
    let data = DataDir::create(
        &out_dir.join("client"),
        worker,
        std::slice::from_ref(&job),
        &auth,
    )?;
    let mut client = data.start()?;
    let result = job.result_name();
    let tasks = client.wait_for("the task to finish", DEFAULT_TIMEOUT, |t| {
        t.iter().any(|t| t.name() == result && t.is_finished())
    })?;
    let task = tasks
        .into_iter()
        .find(|t| t.name() == result)
        .context("task vanished")?;
    client.quit(Duration::from_secs(30))?;
    Ok(Outcome {
        result_file: data.result_file(&job.name),
        stderr_txt: data.stderr_txt(&result),
        client_log: data.client_log(),
        task,
        data_dir: data,
    })
}
