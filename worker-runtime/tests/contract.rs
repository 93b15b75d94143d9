//! The task contract over `mw_worker_runtime::execute` with real processes (small /bin/sh
//! scripts written into temp dirs): input JSON on stdin, result from stdout, exit statuses,
//! signals, timeouts and cancellation killing the whole process group, stderr tail, declared
//! output files (symbolic links refused).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_bundle::ExitInfo;
use mw_worker_runtime::exec::collect_outputs;
use mw_worker_runtime::{execute, ExecRequest, ProcessControl};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A request running `body` as a /bin/sh script, with fresh work and io dirs.
    fn request(&self, body: &str) -> ExecRequest {
        let script = self.path("prog.sh");
        std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let work = self.path("work");
        let io = self.path("io");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&io).unwrap();
        let mut req = ExecRequest::new(script, work, io);
        req.env.insert(
            "SANDBOX".into(),
            self.dir.path().to_str().unwrap().to_string(),
        );
        req
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        let st = std::process::Command::new("mkfifo")
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success());
        p
    }
}

/// Waits (up to 30 s, through a pidfd: no sleeping) until process `pid` has exited.
/// Returns true when it is gone (exited, reaped or a zombie).
fn exited(pid: i32) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is a valid pollfd for one entry.
    let r = unsafe { libc::poll(&mut pfd, 1, 30_000) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    r == 1
}

fn pids_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Both ways a task starts (`posix_spawn` without a parent-death signal, `fork` with one)
/// give it the same process: its own process group, an empty signal mask and no ignored
/// signals (the worker blocks its stop signals and ignores SIGPIPE), its working directory,
/// the inherited environment with the task's variables replacing those of the same name,
/// its arguments (an empty one kept), and the program path as `$0`.
#[test]
fn a_task_starts_the_same_with_or_without_a_parent_death_signal() {
    // The worker's own state the task must not inherit (this test's thread only: signal
    // masks are per thread; SIGPIPE is already ignored by the Rust runtime).
    // SAFETY: a zeroed sigset_t is valid storage; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            0
        );
    }
    // Signals 1-31 this process ignores (SIGPIPE aside: Rust ignores it, tasks get it back);
    // the C library's internal signals above 31 are its own business.
    let ignored_here = sig_field(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
        "SigIgn",
    ) & 0x7fff_ffff
        & !(1 << (libc::SIGPIPE - 1));
    for die_with_parent in [false, true] {
        let sb = Sandbox::new();
        let mut req = sb.request(
            r#"cat > /dev/null
set -- "$0" "$@"
read -r stat < /proc/$$/stat
rest=${stat##*) }
set -- "$@" $rest
printf '%s\n' "$PWD" "$PATH" "$HOME" "$1" "$2" "$3" "$4" "$7" "$$""#,
        );
        req.args = vec!["a b".into(), String::new(), "c".into()];
        req.env.insert("HOME".into(), "/task/home".into());
        req.die_with_parent = die_with_parent;
        let out = execute(&req, &ProcessControl::new()).unwrap();
        assert_eq!(
            out.exit,
            ExitInfo::Exited { code: 0 },
            "{}",
            out.stderr_tail
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let what = format!("die_with_parent = {die_with_parent}: {text}");
        assert_eq!(lines.len(), 9, "{what}");
        assert_eq!(
            PathBuf::from(lines[0]).canonicalize().unwrap(),
            req.workdir.canonicalize().unwrap(),
            "{what}"
        );
        assert_eq!(
            lines[1],
            std::env::var("PATH").unwrap(),
            "inherited: {what}"
        );
        assert_eq!(lines[2], "/task/home", "replaced by the task's: {what}");
        assert_eq!(Path::new(lines[3]), req.program.as_path(), "{what}");
        assert_eq!(&lines[4..7], ["a b", "", "c"], "{what}");
        // Field 5 of /proc/PID/stat (the 3rd after the command) is the process group.
        assert_eq!(lines[7], lines[8], "its own process group: {what}");
        // The signal state as the program found it at exec (a shell resets its mask; cat
        // does not): cat of its own status.
        let mut cat = req.clone();
        cat.program = PathBuf::from("/bin/cat");
        cat.args = vec!["/proc/self/status".into()];
        let out = execute(&cat, &ProcessControl::new()).unwrap();
        assert!(out.exit.success(), "{}", out.stderr_tail);
        let status = String::from_utf8(out.stdout).unwrap();
        let what = format!("die_with_parent = {die_with_parent}: {status}");
        assert_eq!(sig_field(&status, "SigBlk"), 0, "no signal blocked: {what}");
        assert_eq!(
            sig_field(&status, "SigIgn") & 0x7fff_ffff,
            ignored_here,
            "no signal ignored but those ignored here: {what}"
        );
    }
}

/// The signal set `name` (`SigBlk`, `SigIgn`: hexadecimal) of a /proc/PID/status text.
fn sig_field(status: &str, name: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn input_on_stdin_result_on_stdout_in_workdir_with_args_and_env() {
    let sb = Sandbox::new();
    let mut req = sb.request(
        r#"input=$(cat)
printf '{"echo":%s,"arg":"%s","env":"%s","cwd":"%s"}' "$input" "$1" "$MYVAR" "$(pwd)""#,
    );
    req.stdin = br#"{"x":[1,2,3]}"#.to_vec();
    req.args = vec!["first".into()];
    req.env.insert("MYVAR".into(), "hello".into());
    let out = execute(&req, &ProcessControl::new()).unwrap();
    assert_eq!(out.exit, ExitInfo::Exited { code: 0 });
    assert!(out.exit.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["echo"], serde_json::json!({"x": [1, 2, 3]}));
    assert_eq!(v["arg"], "first");
    assert_eq!(v["env"], "hello");
    let cwd = PathBuf::from(v["cwd"].as_str().unwrap());
    assert_eq!(
        cwd.canonicalize().unwrap(),
        req.workdir.canonicalize().unwrap()
    );
    assert!(!out.stdout_truncated);
}

#[test]
fn nonzero_exit_keeps_status_and_stderr_tail() {
    let sb = Sandbox::new();
    let mut req = sb.request(
        r#"i=0; while [ $i -lt 200 ]; do echo "noise line $i" >&2; i=$((i+1)); done
echo "the real reason" >&2
exit 3"#,
    );
    req.stderr_tail_bytes = 64;
    let out = execute(&req, &ProcessControl::new()).unwrap();
    assert_eq!(out.exit, ExitInfo::Exited { code: 3 });
    assert!(!out.exit.success());
    assert!(out.stderr_tail.len() <= 64, "{:?}", out.stderr_tail);
    assert!(out.stderr_tail.ends_with("the real reason\n"));
    assert!(!out.stderr_tail.contains("noise line 0\n"));
}

#[test]
fn killed_by_a_signal_is_reported_as_that_signal() {
    let sb = Sandbox::new();
    let out = execute(&sb.request("kill -SEGV $$"), &ProcessControl::new()).unwrap();
    assert_eq!(
        out.exit,
        ExitInfo::Signaled {
            signal: libc::SIGSEGV
        }
    );
    assert!(out.exit.to_string().contains("signal 11"), "{}", out.exit);
    let out = execute(&sb.request("kill -KILL $$"), &ProcessControl::new()).unwrap();
    assert_eq!(
        out.exit,
        ExitInfo::Signaled {
            signal: libc::SIGKILL
        }
    );
}

#[test]
fn timeout_kills_the_whole_process_group_even_term_ignoring_grandchildren() {
    let sb = Sandbox::new();
    // The grandchild ignores SIGTERM, so only the group SIGKILL can end it.
    let mut req = sb.request(
        r#"sh -c 'trap "" TERM; echo $$ > "$SANDBOX/gc.pid"; exec sleep 1000' &
sleep 1000 &
echo $! > "$SANDBOX/bg.pid"
while [ ! -s "$SANDBOX/gc.pid" ]; do :; done
echo $$ > "$SANDBOX/leader.pid"
sleep 1000"#,
    );
    req.timeout = Some(Duration::from_secs(3));
    req.grace = Duration::from_millis(200);
    let out = execute(&req, &ProcessControl::new()).unwrap();
    assert!(
        matches!(out.exit, ExitInfo::TimedOut { limit_secs } if limit_secs == 3.0),
        "{:?}",
        out.exit
    );
    assert!(!out.exit.success());
    for f in ["gc.pid", "bg.pid", "leader.pid"] {
        for pid in pids_in(&sb.path(f)) {
            assert!(exited(pid), "{f}: process {pid} outlived the timeout");
        }
    }
}

#[test]
fn timeout_kills_processes_that_left_the_group_with_setsid() {
    let sb = Sandbox::new();
    // A daemon: a new session (out of the task's process group), announced, then waiting.
    let mut req = sb.request(
        r#"setsid sh -c 'echo $$ > "$SANDBOX/daemon.pid"; exec sleep 1000' < /dev/null > /dev/null 2>&1 &
while [ ! -s "$SANDBOX/daemon.pid" ]; do :; done
sleep 1000"#,
    );
    req.timeout = Some(Duration::from_secs(2));
    req.grace = Duration::from_millis(100);
    let out = execute(&req, &ProcessControl::new()).unwrap();
    assert!(
        matches!(out.exit, ExitInfo::TimedOut { .. }),
        "{:?}",
        out.exit
    );
    let pid = pids_in(&sb.path("daemon.pid"))[0];
    assert!(exited(pid), "the setsid daemon {pid} outlived the timeout");
}

#[test]
fn cancel_from_another_thread_kills_the_group() {
    let sb = Sandbox::new();
    let started = sb.fifo("started");
    let req = sb.request(
        r#"sleep 1000 &
echo "$$ $!" > "$SANDBOX/started"
wait"#,
    );
    let control = ProcessControl::new();
    let c2 = control.clone();
    let started2 = started.clone();
    let canceller = std::thread::spawn(move || {
        // Blocks until the script has written its pids: it is running.
        let pids = std::fs::read_to_string(&started2).unwrap();
        assert!(c2.pgid().is_some());
        c2.cancel();
        pids
    });
    let out = execute(&req, &control).unwrap();
    let pids = canceller.join().unwrap();
    assert_eq!(out.exit, ExitInfo::Cancelled);
    assert!(control.is_cancelled());
    assert_eq!(control.pgid(), None);
    for pid in pids.split_whitespace() {
        assert!(
            exited(pid.parse().unwrap()),
            "process {pid} survived cancel"
        );
    }
}

#[test]
fn cancel_before_start_runs_nothing() {
    let sb = Sandbox::new();
    let req = sb.request(r#"touch "$SANDBOX/ran""#);
    let control = ProcessControl::new();
    control.cancel();
    let out = execute(&req, &control).unwrap();
    assert_eq!(out.exit, ExitInfo::Cancelled);
    assert!(!sb.path("ran").exists());
}

#[test]
fn leftover_background_processes_are_killed_after_a_normal_exit() {
    let sb = Sandbox::new();
    let req = sb.request(
        r#"sleep 1000 &
echo $! > "$SANDBOX/bg.pid"
echo '{"ok":true}'"#,
    );
    let out = execute(&req, &ProcessControl::new()).unwrap();
    assert!(out.exit.success());
    assert_eq!(out.stdout, b"{\"ok\":true}\n");
    let pid = pids_in(&sb.path("bg.pid"))[0];
    assert!(exited(pid), "background process {pid} outlived its task");
}

/// A daemon that left the task's process group (`setsid`) does not outlive a task that exited
/// normally either: it carries the task's token, and once the task is over the sweep for
/// ended tasks' leftovers kills it (within about a second). It once ran on until the worker
/// or the master ended.
#[test]
fn a_setsid_daemon_does_not_outlive_a_task_that_exited_normally() {
    let sb = Sandbox::new();
    let req = sb.request(
        r#"setsid sh -c 'echo $$ > "$SANDBOX/daemon.pid"; exec sleep 1000' < /dev/null > /dev/null 2>&1 &
while [ ! -s "$SANDBOX/daemon.pid" ]; do :; done
echo '{"ok":true}'"#,
    );
    let out = execute(&req, &ProcessControl::new()).unwrap();
    assert!(out.exit.success(), "{:?}", out.exit);
    let pid = pids_in(&sb.path("daemon.pid"))[0];
    assert!(exited(pid), "the setsid daemon {pid} outlived its task");
}

/// A script without a `#!` line runs with /bin/sh (as execvp(3) runs it), whichever way the
/// worker starts it: `posix_spawn` without a parent-death signal, `fork` + `exec` with one.
#[test]
fn a_script_without_a_shebang_runs_with_sh_either_way() {
    for die_with_parent in [false, true] {
        let sb = Sandbox::new();
        let mut req = sb.request("exit 0");
        std::fs::write(&req.program, "cat > /dev/null\nprintf '%s' \"$1\"\n").unwrap();
        req.args = vec!["{\"ran\":1}".into()];
        req.die_with_parent = die_with_parent;
        let out = execute(&req, &ProcessControl::new()).unwrap();
        assert_eq!(
            out.exit,
            ExitInfo::Exited { code: 0 },
            "die_with_parent = {die_with_parent}: {}",
            out.stderr_tail
        );
        assert_eq!(
            out.stdout, b"{\"ran\":1}",
            "die_with_parent = {die_with_parent}"
        );
    }
}

/// A script whose `#!` interpreter is missing: the kernel says the script is not found;
/// the failure names the interpreter.
#[test]
fn a_missing_interpreter_is_named() {
    let sb = Sandbox::new();
    let req = sb.request("exit 0");
    std::fs::write(&req.program, "#!/no/such/interp -x\necho hi\n").unwrap();
    let out = execute(&req, &ProcessControl::new()).unwrap();
    match &out.exit {
        ExitInfo::SpawnFailed { reason } => {
            assert!(reason.contains("`/no/such/interp`"), "{reason}")
        }
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
}

#[test]
fn a_missing_program_is_a_spawn_failure_naming_it() {
    let sb = Sandbox::new();
    let mut req = sb.request("exit 0");
    req.program = sb.path("no-such-program");
    let out = execute(&req, &ProcessControl::new()).unwrap();
    match &out.exit {
        ExitInfo::SpawnFailed { reason } => assert!(reason.contains("no-such-program")),
        other => panic!("expected SpawnFailed, got {other:?}"),
    }
}

#[test]
fn stdout_over_the_limit_is_cut_and_flagged() {
    let sb = Sandbox::new();
    let mut req = sb.request("head -c 5000 /dev/zero");
    req.max_stdout_bytes = 1000;
    let out = execute(&req, &ProcessControl::new()).unwrap();
    // A run still going when its stdout is seen past the limit is stopped instead (pipes:
    // when the read passes it; files, `MW_NO_PIDFD` as CI also runs this file: when the file
    // is looked at): `head` may or may not have exited by then.
    let stopped = |e: &ExitInfo| matches!(e, ExitInfo::StreamBroken { reason } if reason.contains("stdout passed its limit of 1000 bytes"));
    assert!(out.exit.success() || stopped(&out.exit), "{:?}", out.exit);
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.stdout_truncated);
}

#[test]
fn a_program_printing_for_ever_is_stopped_at_its_stdout_limit() {
    let sb = Sandbox::new();
    let mut req = sb.request("yes");
    req.max_stdout_bytes = 1000;
    // Only so that a regression fails instead of hanging: the limit stops it long before.
    req.timeout = Some(std::time::Duration::from_secs(300));
    let out = execute(&req, &ProcessControl::new()).unwrap();
    match &out.exit {
        ExitInfo::StreamBroken { reason } => {
            assert!(
                reason.contains("stdout passed its limit of 1000 bytes"),
                "{reason}"
            )
        }
        other => panic!("expected the stdout limit to stop it, got {other:?}"),
    }
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.stdout_truncated);
}

#[test]
fn empty_stdout_is_empty() {
    let sb = Sandbox::new();
    let out = execute(&sb.request("exit 0"), &ProcessControl::new()).unwrap();
    assert!(out.exit.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn declared_outputs_are_collected_and_links_refused() {
    let sb = Sandbox::new();
    let secret = sb.path("secret.txt");
    std::fs::write(&secret, "host file").unwrap();
    let req = sb.request(
        r#"echo result > out.txt
mkdir -p sub && echo inner > sub/inner.txt
ln -s "$SANDBOX/secret.txt" leak.txt
ln -s "$SANDBOX" linkdir
mkdir real && ln -s "$SANDBOX/secret.txt" real/leak2.txt"#,
    );
    let out = execute(&req, &ProcessControl::new()).unwrap();
    assert!(out.exit.success(), "{:?} {}", out.exit, out.stderr_tail);
    let declared: Vec<String> = [
        "out.txt",
        "sub/inner.txt",
        "leak.txt",
        "linkdir/secret.txt",
        "real/leak2.txt",
        "never-written.txt",
        "../secret.txt",
        "/etc/passwd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (found, missing) = collect_outputs(&req.workdir, &declared);
    let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["out.txt", "sub/inner.txt"]);
    assert_eq!(std::fs::read_to_string(&found[0].path).unwrap(), "result\n");
    assert_eq!(
        missing,
        [
            "leak.txt",
            "linkdir/secret.txt",
            "real/leak2.txt",
            "never-written.txt",
            "../secret.txt",
            "/etc/passwd"
        ]
    );
}

/// Waits (polling, up to 60 s) until `cond` holds; true when it did.
fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let bound = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < bound {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A task suspended (BOINC's `<suspend/>`) for longer than its whole timeout is not killed
/// as timed out when it is resumed: the time suspended does not count. The suspension
/// lasts until the control has been suspended 3 s, past the 2 s limit, so without that rule
/// the run would time out while stopped.
#[test]
fn time_spent_suspended_does_not_count_toward_the_timeout() {
    let sb = Sandbox::new();
    let started = sb.fifo("started");
    let mut req = sb.request(
        r#"echo up > "$SANDBOX/started"
sleep 1
echo '{"ok":true}'"#,
    );
    req.timeout = Some(Duration::from_secs(2));
    let control = ProcessControl::new();
    let c2 = control.clone();
    let suspender = std::thread::spawn(move || {
        // Blocks until the script has started.
        std::fs::read_to_string(&started).unwrap();
        c2.suspend();
        let waited = wait_until(|| c2.stopped_time() >= Duration::from_secs(3));
        c2.resume();
        waited
    });
    let out = execute(&req, &control).unwrap();
    assert!(suspender.join().unwrap());
    assert_eq!(
        out.exit,
        ExitInfo::Exited { code: 0 },
        "{}",
        out.stderr_tail
    );
    assert_eq!(out.stdout, b"{\"ok\":true}\n");
}

/// A suspend that comes while no program runs (unpacking, between the tasks of a pack) is
/// not dropped: the program does not start until the resume, and its timeout does not count
/// the wait.
#[test]
fn a_suspend_while_nothing_runs_holds_the_next_start_until_resumed() {
    let sb = Sandbox::new();
    let mut req = sb.request(r#"touch "$SANDBOX/ran"; echo '{}'"#);
    req.timeout = Some(Duration::from_secs(2));
    let control = ProcessControl::new();
    control.suspend();
    let c2 = control.clone();
    let runner = std::thread::spawn(move || execute(&req, &c2).unwrap());
    assert!(wait_until(
        || control.stopped_time() >= Duration::from_secs(3)
    ));
    // Long after an unheld start would have run the script.
    assert!(!sb.path("ran").exists());
    assert_eq!(control.pgid(), None);
    control.resume();
    let out = runner.join().unwrap();
    assert_eq!(
        out.exit,
        ExitInfo::Exited { code: 0 },
        "{}",
        out.stderr_tail
    );
    assert!(sb.path("ran").exists());
}
