//! `mpirun -n 3 mw run JOB --interface mpi` on the paper's examples (feature `mpi`): the
//! real `mw` binary under the real Open MPI `mpirun` prints pi and the prime count, and
//! its results equal those of the multicore path for the same job file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure
#![cfg(feature = "mpi")]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A copy of an example job file whose program paths point at this build's binaries.
fn job_copy(example: &str, dir: &Path) -> PathBuf {
    let src = mw_tests::workspace_root()
        .join("examples")
        .join(example)
        .join("job.toml");
    let text = std::fs::read_to_string(&src).unwrap();
    let bin = mw_tests::bin_dir();
    let text = text.replace("../../target/release", &bin.display().to_string());
    let path = dir.join(format!("{example}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// `timeout mpirun -n 3 [RANK_PREFIX...] mw run JOB --interface mpi -q` with its Open MPI
/// settings; keep the guard until it has ended.
fn mpi_command(
    job: &Path,
    jobs: &Path,
    output: &Path,
    rank_prefix: &[&str],
) -> (Command, tempfile::TempDir) {
    let mut cmd = Command::new("timeout");
    let session = mw_tests::ompi_env(&mut cmd);
    cmd.args(["-k", "10", "300", "mpirun", "-n", "3"])
        .args(rank_prefix)
        .arg(mw_tests::bin("mw"))
        .arg("run")
        .arg(job)
        .args(["--interface", "mpi", "-q", "--jobs-dir"])
        .arg(jobs)
        .arg("--output")
        .arg(output);
    (cmd, session)
}

/// Runs `cmd` (from [`mpi_command`]) and expects it to succeed.
fn succeeds(mut cmd: Command) -> Output {
    let out = cmd.output().expect("run mpirun");
    assert!(
        out.status.success(),
        "mpirun mw run failed or hung (124, 137: killed by timeout): {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run_mpi(job: &Path, jobs: &Path, output: &Path) -> Output {
    let (cmd, _session) = mpi_command(job, jobs, output, &[]);
    succeeds(cmd)
}

/// `mw run JOB -q` on local cores, with the developer's own `HWLOC_COMPONENTS` (if any)
/// removed so that what the tasks see of it is `mw`'s doing.
fn run_multicore(job: &Path, jobs: &Path, output: &Path) -> Output {
    let out = Command::new(mw_tests::bin("mw"))
        .env_remove("HWLOC_COMPONENTS")
        .arg("run")
        .arg(job)
        .args(["-q", "--jobs-dir"])
        .arg(jobs)
        .arg("--output")
        .arg(output)
        .stdin(Stdio::null())
        .output()
        .expect("run mw");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (task, output) pairs of a results file, in order.
fn outputs(path: &Path) -> Vec<(u64, Value)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["task"].as_u64().unwrap(), v["output"].clone())
        })
        .collect()
}

fn reduce_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| panic!("no output"));
    serde_json::from_str(last).unwrap()
}

#[test]
fn monte_pi_under_mpirun_prints_pi_and_matches_multicore() {
    let tmp = tempfile::tempdir().unwrap();
    let job = job_copy("monte_pi", tmp.path());
    let mpi = run_mpi(
        &job,
        &tmp.path().join("jobs"),
        &tmp.path().join("mpi.jsonl"),
    );
    let mc = run_multicore(&job, &tmp.path().join("jobs"), &tmp.path().join("mc.jsonl"));
    let pi = reduce_line(&mpi)["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "pi = {pi}");
    assert_eq!(reduce_line(&mpi), reduce_line(&mc));
    let (a, b) = (
        outputs(&tmp.path().join("mpi.jsonl")),
        outputs(&tmp.path().join("mc.jsonl")),
    );
    assert_eq!(a.len(), 16);
    assert_eq!(a, b, "per-task results differ between MPI and multicore");
}

#[test]
fn prime_tester_under_mpirun_matches_multicore() {
    let tmp = tempfile::tempdir().unwrap();
    let job = job_copy("primes", tmp.path());
    let mpi = run_mpi(
        &job,
        &tmp.path().join("jobs"),
        &tmp.path().join("mpi.jsonl"),
    );
    let mc = run_multicore(&job, &tmp.path().join("jobs"), &tmp.path().join("mc.jsonl"));
    let count = reduce_line(&mpi)["count"].as_u64().unwrap();
    assert!(count > 6000, "count = {count}");
    assert_eq!(reduce_line(&mpi), reduce_line(&mc));
    assert_eq!(
        outputs(&tmp.path().join("mpi.jsonl")),
        outputs(&tmp.path().join("mc.jsonl"))
    );
}

const STREAM_PROG: &str = r#"
import json, sys, time
for line in sys.stdin:
    x = json.loads(line)
    k = x.get("kind")
    if k == "crash":
        sys.stderr.write("crashing on purpose\n"); sys.stderr.flush(); sys.exit(5)
    if k == "hang":
        time.sleep(3600)
    if k == "malformed":
        print("{not json", flush=True); continue
    if k == "few":
        sys.exit(0)
    if k == "error":
        print(json.dumps({"error": "refused"}), flush=True); continue
    print(json.dumps({"double": 2 * x["n"]}), flush=True)
"#;

/// A stream-mode job of 400 tasks of which 5 misbehave (crash, hang past the timeout,
/// malformed line, too few lines, error answer).
fn stream_job(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("prog.py"), STREAM_PROG).unwrap();
    let mut inputs = Vec::new();
    for n in 0..400 {
        let kind = match n {
            50 => "crash",
            120 => "hang",
            200 => "malformed",
            260 => "few",
            300 => "error",
            _ => "",
        };
        inputs.push(format!("{{\"n\": {n}, \"kind\": \"{kind}\"}}"));
    }
    std::fs::write(dir.join("inputs.jsonl"), inputs.join("\n")).unwrap();
    let job = dir.join("stream.toml");
    std::fs::write(
        &job,
        "name = \"stream\"\nworkers = 2\ntimeout = 3.0\n[program]\ncommand = [\"python3\", \"prog.py\"]\nfiles = [\"prog.py\"]\nmode = \"stream\"\n[inputs]\nfile = \"inputs.jsonl\"\n",
    )
    .unwrap();
    job
}

/// Every task of [`stream_job`] is reported once, with its own outcome.
fn check_stream_results(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let n = v["task"].as_u64().unwrap();
        assert!(seen.insert(n, v).is_none(), "task {n} reported twice");
    }
    assert_eq!(seen.len(), 400);
    for (n, v) in &seen {
        let exit = v["exit"].as_str().unwrap();
        let expect_fail = |what: &str| {
            assert_eq!(v["state"], "failed", "task {n}: {v}");
            assert!(
                exit.contains(what),
                "task {n}: exit `{exit}` lacks `{what}`"
            );
        };
        match n {
            50 => {
                expect_fail("exit status 5");
                assert!(
                    v["error"].as_str().unwrap().contains("crashing on purpose"),
                    "{v}"
                );
            }
            120 => expect_fail("timed out"),
            200 => expect_fail("not JSON"),
            260 => expect_fail("without answering"),
            300 => expect_fail("reported an error: refused"),
            _ => {
                assert_eq!(v["state"], "done", "task {n}: {v}");
                assert_eq!(v["output"]["double"].as_u64(), Some(2 * n));
            }
        }
    }
}

#[test]
fn stream_mode_job_under_mpirun_and_multicore_reports_every_task_once() {
    let tmp = tempfile::tempdir().unwrap();
    let job = stream_job(tmp.path());
    for (name, mpi) in [("multicore", false), ("mpi", true)] {
        let output = tmp.path().join(format!("{name}.jsonl"));
        let mut cmd = if mpi {
            let mut c = Command::new("timeout");
            c.args(["-k", "10", "300", "mpirun", "-n", "3"])
                .arg(mw_tests::bin("mw"));
            c
        } else {
            let mut c = Command::new("timeout");
            c.arg("300").arg(mw_tests::bin("mw"));
            c
        };
        cmd.arg("run")
            .arg(&job)
            .args(["--interface", name, "-q", "--jobs-dir"])
            .arg(tmp.path().join("jobs"))
            .arg("--output")
            .arg(&output);
        let _session = mw_tests::ompi_env(&mut cmd);
        let out = cmd.output().expect("run mw");
        // Exit 1: some tasks failed (on purpose); anything else is a failure of the run.
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        check_stream_results(&output);
    }
}

/// `mpirun`'s own listener on an X11 display port (6000 + display), where a machine whose
/// ephemeral ports start at 1024 sometimes puts it: without `mw::mpi::prepare_process`, hwloc's
/// GL plugin in every rank's `MPI_Init` connects to it, sends an X11 greeting and waits
/// forever (checked: the job hangs until `timeout`). `mpirun` keeps the tests'
/// `HWLOC_COMPONENTS=-gl` (its own probe must not meet another listener there), but the
/// ranks start through `env -u HWLOC_COMPONENTS`, so only `mw` can keep them from hanging.
#[test]
fn mpirun_listening_on_an_x11_port_does_not_hang_mw() {
    let tmp = tempfile::tempdir().unwrap();
    let job = job_copy("monte_pi", tmp.path());
    // A free display port (mpirun's probe of it happens before it listens there).
    let port = (6000..6010)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("one of the ports 6000-6009 is free");
    let (mut cmd, _session) = mpi_command(
        &job,
        &tmp.path().join("jobs"),
        &tmp.path().join("mpi.jsonl"),
        &["env", "-u", "HWLOC_COMPONENTS"],
    );
    cmd.env("OMPI_MCA_oob_tcp_static_ipv4_ports", port.to_string());
    let out = succeeds(cmd);
    let pi = reduce_line(&out)["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "pi = {pi}");
}

/// What each task saw of `HWLOC_COMPONENTS`: under `mpirun` `mw` turns hwloc's GL plugin off
/// (the tasks of its ranks inherit that); elsewhere the MPI-enabled `mw` leaves the user's
/// environment as it is.
#[test]
fn hwloc_components_is_set_only_in_processes_mpirun_started() {
    let tmp = tempfile::tempdir().unwrap();
    let prog = mw_tests::script(
        tmp.path(),
        "show.sh",
        "cat > /dev/null; printf '\"%s\"' \"${HWLOC_COMPONENTS-unset}\"",
    );
    let job = tmp.path().join("show.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"show\"\nworkers = 2\n[program]\npath = \"{}\"\n[inputs]\nlist = [1, 2]\n",
            prog.display()
        ),
    )
    .unwrap();
    let mc = tmp.path().join("mc.jsonl");
    run_multicore(&job, &tmp.path().join("jobs"), &mc);
    let seen: Vec<Value> = outputs(&mc).into_iter().map(|(_, v)| v).collect();
    assert_eq!(seen, vec![Value::from("unset"); 2]);

    let ranks = tmp.path().join("mpi.jsonl");
    let (cmd, _session) = mpi_command(
        &job,
        &tmp.path().join("jobs"),
        &ranks,
        &["env", "-u", "HWLOC_COMPONENTS"],
    );
    succeeds(cmd);
    let seen: Vec<Value> = outputs(&ranks).into_iter().map(|(_, v)| v).collect();
    assert_eq!(seen, vec![Value::from("-gl"); 2]);
}

/// A stream-mode job one of whose inputs is nested 126 levels deep (the master accepts up
/// to 128): the input reaches the program on its rank, and every task of its batch comes
/// back. (The batch used to travel as JSON wrapping the inputs, three levels more, which
/// the rank could not parse: it dropped the whole batch and the job hung at 4/41.)
#[test]
fn a_deeply_nested_stream_input_runs_under_mpirun() {
    let tmp = tempfile::tempdir().unwrap();
    let prog = mw_tests::script(
        tmp.path(),
        "len.sh",
        "while IFS= read -r l; do printf '{\"len\":%d}\\n' \"${#l}\"; done",
    );
    let deep = format!("{}{}", "[".repeat(126), "]".repeat(126));
    let inputs: Vec<String> = (0..41)
        .map(|n| {
            if n == 20 {
                deep.clone()
            } else {
                format!("{{\"n\":{n}}}")
            }
        })
        .collect();
    std::fs::write(tmp.path().join("inputs.jsonl"), inputs.join("\n")).unwrap();
    let job = tmp.path().join("deep.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"deep\"\n[program]\npath = \"{}\"\nmode = \"stream\"\n[inputs]\nfile = \"inputs.jsonl\"\n",
            prog.display()
        ),
    )
    .unwrap();
    let output = tmp.path().join("mpi.jsonl");
    let (cmd, _session) = mpi_command(&job, &tmp.path().join("jobs"), &output, &[]);
    succeeds(cmd);
    let got = outputs(&output);
    assert_eq!(got.len(), 41);
    for (n, v) in got {
        let len = inputs[usize::try_from(n).unwrap()].len();
        assert_eq!(v["len"].as_u64(), Some(len as u64), "task {n}: {v}");
    }
}

/// A panic in a rank's runner thread while it feeds a streaming program (injected with
/// `MW_PANIC_AT` at task 5): the tasks that stream held without an outcome fail with the
/// panic's message, every task is reported once, and the job ends. (They used to stay
/// running for ever.)
#[test]
fn a_panic_in_a_ranks_stream_runner_fails_its_tasks_under_mpirun() {
    let tmp = tempfile::tempdir().unwrap();
    let prog = mw_tests::script(
        tmp.path(),
        "len.sh",
        "while IFS= read -r l; do printf '{\"len\":%d}\\n' \"${#l}\"; done",
    );
    let inputs: Vec<String> = (0..41).map(|n| format!("{{\"n\":{n}}}")).collect();
    std::fs::write(tmp.path().join("inputs.jsonl"), inputs.join("\n")).unwrap();
    let job = tmp.path().join("panic.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"panic\"\n[program]\npath = \"{}\"\nmode = \"stream\"\n[inputs]\nfile = \"inputs.jsonl\"\n",
            prog.display()
        ),
    )
    .unwrap();
    let output = tmp.path().join("mpi.jsonl");
    let (mut cmd, _session) = mpi_command(&job, &tmp.path().join("jobs"), &output, &[]);
    cmd.env("MW_PANIC_AT", "mpi-runner:5");
    let out = cmd.output().unwrap();
    // Exit 1: some tasks failed; 124/137 would be the timeout of a hang.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&output).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let n = v["task"].as_u64().unwrap();
        assert!(seen.insert(n, v).is_none(), "task {n} reported twice");
    }
    assert_eq!(seen.len(), 41);
    for (n, v) in &seen {
        if v["state"] == "done" {
            assert_ne!(*n, 5, "{v}");
        } else {
            let err = v["error"].as_str().unwrap_or_default();
            assert!(err.contains("injected panic"), "task {n}: {v}");
        }
    }
}

/// `timeout mpirun` with this suite's Open MPI settings and `args` after `mpirun`; keep the
/// guard until it has ended.
fn mpirun(args: &[&std::ffi::OsStr]) -> (Command, tempfile::TempDir) {
    let mut cmd = Command::new("timeout");
    let session = mw_tests::ompi_env(&mut cmd);
    cmd.args(["-k", "10", "300", "mpirun"]).args(args);
    (cmd, session)
}

/// Worker ranks are sent everything they run: they read nothing of the job, so its files
/// need not be on their nodes. Here ranks 1 and 2 are started (MPMD) with a job file that
/// does not exist; they once failed reading it, and `mpirun` aborted the job.
#[test]
fn worker_ranks_need_no_job_file_or_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let job = job_copy("monte_pi", tmp.path());
    let jobs = tmp.path().join("jobs");
    let output = tmp.path().join("mpi.jsonl");
    let mw = mw_tests::bin("mw");
    let missing = tmp.path().join("not-on-this-node/job.toml");
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let (cmd, _session) = mpirun(&[
        os("-n"),
        os("1"),
        mw.as_os_str(),
        os("run"),
        job.as_os_str(),
        os("--interface"),
        os("mpi"),
        os("-q"),
        os("--jobs-dir"),
        jobs.as_os_str(),
        os("--output"),
        output.as_os_str(),
        os(":"),
        os("-n"),
        os("2"),
        mw.as_os_str(),
        os("run"),
        missing.as_os_str(),
        os("--interface"),
        os("mpi"),
    ]);
    let out = succeeds(cmd);
    let pi = reduce_line(&out)["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "pi = {pi}");
    assert_eq!(outputs(&output).len(), 16);
}

/// An MPI job whose master was killed (here before it recorded its tasks) is resumed under
/// `mpirun` with `mw resume`: rank 0 completes the recording and runs every task once; the
/// worker ranks only serve (they never write the journal beside rank 0).
#[test]
fn a_killed_mpi_job_is_resumed_under_mpirun() {
    let tmp = tempfile::tempdir().unwrap();
    let job = job_copy("monte_pi", tmp.path());
    let jobs = tmp.path().join("jobs");
    let output = tmp.path().join("first.jsonl");
    let (mut cmd, _session) = mpi_command(&job, &jobs, &output, &[]);
    cmd.env("MW_CRASH_AT", "run-before-recording");
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "the crash point must end the first run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = std::fs::read_dir(&jobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let os = std::ffi::OsStr::new;
    let mw = mw_tests::bin("mw");
    let (cmd, _session) = mpirun(&[
        os("-n"),
        os("3"),
        mw.as_os_str(),
        os("resume"),
        os(&ids[0]),
        os("--jobs-dir"),
        jobs.as_os_str(),
        os("-q"),
    ]);
    let out = succeeds(cmd);
    let pi = reduce_line(&out)["pi"].as_f64().unwrap();
    assert!((pi - std::f64::consts::PI).abs() < 0.01, "pi = {pi}");
    // Every task once, in the job's results.
    let results = Command::new(mw_tests::bin("mw"))
        .args(["results", &ids[0], "--jobs-dir"])
        .arg(&jobs)
        .output()
        .unwrap();
    assert!(results.status.success(), "{results:?}");
    let mut tasks: Vec<u64> = String::from_utf8_lossy(&results.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["task"]
                .as_u64()
                .unwrap()
        })
        .collect();
    tasks.sort_unstable();
    assert_eq!(tasks, (0..16).collect::<Vec<_>>());
}

/// An output rank 0 cannot keep (its place taken by a directory; a full disk fails the same
/// write) is not the task's fault: `mw run` under mpirun stops with the reason, no task is
/// counted as failed, and `mw resume` under mpirun finishes the job once the place is free.
#[test]
fn an_output_rank_0_cannot_store_stops_the_job_and_resume_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (gate, log) = (d.join("gate"), d.join("runs.log"));
    let program = mw_tests::script(
        d,
        "out.sh",
        &format!(
            "read -r n\necho \"$n\" >> {log}\necho \"$n\" > out.txt\n\
             if [ \"$n\" = 1 ]; then while [ ! -f {gate} ]; do sleep 0.05; done; fi\n\
             echo \"$n\"",
            log = log.display(),
            gate = gate.display()
        ),
    );
    let job = d.join("out.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"out\"\noutputs = [\"out.txt\"]\n[program]\npath = \"{}\"\n\
             [inputs]\nlist = [0, 1, 2, 3]\n",
            program.display()
        ),
    )
    .unwrap();
    let jobs = d.join("jobs");
    let (mut cmd, _session) = mpi_command(&job, &jobs, &d.join("first.jsonl"), &[]);
    let child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .any(|l| l == "1")
    {
        assert!(t0.elapsed().as_secs() < 120, "task 1 never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let blocked = jobs.join("out-1/results/task-1/out.txt");
    std::fs::create_dir_all(blocked.join("in-the-way")).unwrap();
    std::fs::write(&gate, "").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot store output `out.txt`") && err.contains("mw resume"),
        "{err}"
    );
    let mw = |args: &[&str]| {
        Command::new(mw_tests::bin("mw"))
            .args(args)
            .arg("--jobs-dir")
            .arg(&jobs)
            .output()
            .unwrap()
    };
    let status: Value = serde_json::from_slice(&mw(&["status", "out-1", "--json"]).stdout).unwrap();
    assert_eq!(status["job"]["counts"]["failed"], 0, "{status:#}");

    std::fs::remove_dir_all(&blocked).unwrap();
    let os = std::ffi::OsStr::new;
    let bin = mw_tests::bin("mw");
    let (cmd, _session) = mpirun(&[
        os("-n"),
        os("3"),
        bin.as_os_str(),
        os("resume"),
        os("out-1"),
        os("--jobs-dir"),
        jobs.as_os_str(),
        os("-q"),
    ]);
    succeeds(cmd);
    let results = mw(&["results", "out-1"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&results.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["state"], "done", "{l}");
        let file = jobs.join(format!("out-1/results/task-{i}/out.txt"));
        assert_eq!(std::fs::read_to_string(file).unwrap().trim(), i.to_string());
    }
}

/// `mw retry` of an MPI job: outside mpirun it refuses before changing anything (the
/// failed results stay), and under `mpirun -n 3` the worker ranks serve while rank 0
/// queues the failed tasks again and runs them (every rank once acted as the master:
/// two were refused the lock, and the job was left queued with no master).
#[test]
fn mw_retry_of_an_mpi_job_refuses_outside_mpirun_and_reruns_under_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Task 1 fails until the marker `fixed` exists (named by its absolute path).
    let fixed = d.join("fixed");
    let script = format!(
        "#!/bin/sh\nread x\nif [ \"$x\" = 1 ] && [ ! -e '{}' ]; then exit 3; fi\necho \"$x\"\n",
        fixed.display()
    );
    std::fs::write(d.join("flaky.sh"), script).unwrap();
    std::fs::set_permissions(
        d.join("flaky.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        d.join("flaky.toml"),
        "interface = \"mpi\"\n[program]\npath = \"flaky.sh\"\n[inputs]\nlist = [0, 1, 2]\n",
    )
    .unwrap();
    let jobs = d.join("jobs");
    let (mut cmd, _session) =
        mpi_command(&d.join("flaky.toml"), &jobs, &d.join("first.jsonl"), &[]);
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "one task fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mw = mw_tests::bin("mw");
    let state_of_1 = || {
        let o = Command::new(&mw)
            .args(["results", "flaky-1", "--task", "1", "--jobs-dir"])
            .arg(&jobs)
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&o.stdout).map(|v| v["state"].clone())
    };
    assert_eq!(state_of_1().unwrap(), "failed");
    // Outside mpirun: refused, nothing queued again.
    let o = Command::new(&mw)
        .args(["retry", "flaky-1", "--jobs-dir"])
        .arg(&jobs)
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .env_remove("OMPI_COMM_WORLD_RANK")
        .env_remove("PMIX_RANK")
        .env_remove("PMI_RANK")
        .env_remove("PMI_SIZE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("mpirun") && stderr.contains("nothing was queued"),
        "{stderr}"
    );
    assert_eq!(state_of_1().unwrap(), "failed", "the failed result is kept");
    // Under mpirun: the failed task runs again and succeeds.
    std::fs::write(&fixed, "").unwrap();
    let os = std::ffi::OsStr::new;
    let (cmd, _session) = mpirun(&[
        os("-n"),
        os("3"),
        mw.as_os_str(),
        os("retry"),
        os("flaky-1"),
        os("--jobs-dir"),
        jobs.as_os_str(),
        os("-q"),
    ]);
    succeeds(cmd);
    assert_eq!(state_of_1().unwrap(), "done");
}

/// A worker rank killed while its task runs takes what the task started with it: the
/// rank's watchdog stops the task's processes, also a background child the parent-death
/// signal does not reach (it was left running for its whole 300 s, reparented to init).
#[test]
fn a_killed_worker_rank_leaves_no_task_process_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mark = d.join("mark");
    std::fs::write(
        d.join("slow.sh"),
        format!(
            "#!/bin/sh\ncat >/dev/null\nsleep 300 &\necho \"$PPID $!\" > '{0}.tmp' && mv '{0}.tmp' '{0}'\nwait\n",
            mark.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        d.join("slow.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        d.join("slow.toml"),
        "interface = \"mpi\"\n[program]\npath = \"slow.sh\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let (mut cmd, _session) = mpi_command(
        &d.join("slow.toml"),
        &d.join("jobs"),
        &d.join("out.jsonl"),
        &[],
    );
    let mut mpirun = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Bounded waits for what the processes do, not timing assertions.
    let until = |what: &str, done: &dyn Fn() -> bool| {
        for _ in 0..6000 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{what} did not happen within 60 s");
    };
    until("the task's start", &|| mark.exists());
    let pids: Vec<i32> = std::fs::read_to_string(&mark)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (rank, sleeper) = (pids[0], pids[1]);
    assert!(Path::new(&format!("/proc/{sleeper}")).exists());
    let killed = Command::new("kill")
        .args(["-KILL", &rank.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let gone = |pid: i32| {
        // A zombie is gone too: it no longer runs.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    until("the end of the killed rank's task processes", &|| {
        gone(sleeper)
    });
    let _ = mpirun.kill();
    let _ = mpirun.wait();
}

/// A worker rank that stops answering (SIGSTOP, sent by its own task) under `mw run`: rank 0
/// fails the tasks it held after `MW_MPI_SILENCE_SECS`, the other rank runs the rest, every
/// result is stored, and the summary is printed before the job is aborted (`MPI_Finalize`
/// would wait for the stopped rank). The abort once came first, and the summary never.
/// The job file's `workers = 4` (for local cores) is named as unused: the world decides.
/// As in `mpi_e2e`, a timeout of `mpirun` counts only after rank 0 aborted (Open MPI 4.1's
/// teardown with a stopped rank can hang).
#[test]
fn a_rank_that_stops_answering_under_mw_run_is_summarised_then_aborted() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("stopped-rank");
    let prog = mw_tests::rank_stopping_script(tmp.path(), &pid_file);
    let job = tmp.path().join("stop.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"stop\"\nworkers = 4\n[program]\npath = \"{}\"\n[inputs.sweep]\ni = {{ start = 0, end = 12 }}\n",
            prog.display()
        ),
    )
    .unwrap();
    let output = tmp.path().join("mpi.jsonl");
    let (mut cmd, _session) = mpi_command(&job, &tmp.path().join("jobs"), &output, &[]);
    cmd.env("MW_MPI_SILENCE_SECS", "3");
    let out = cmd.output().unwrap();
    mw_tests::kill_stopped_rank(&pid_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(pid_file.exists(), "task 3 never ran:\n{stderr}");
    assert!(!out.status.success(), "{stderr}");
    let aborted = stderr.contains("MPI_ABORT was invoked on rank 0");
    assert!(aborted || out.status.code() == Some(70), "{stderr}");
    let summary = stderr
        .find("mw: 12 tasks: ")
        .unwrap_or_else(|| panic!("no summary:\n{stderr}"));
    if let Some(banner) = stderr.find("MPI_ABORT was invoked") {
        assert!(
            summary < banner,
            "the summary came after the abort:\n{stderr}"
        );
    }
    assert!(stderr.contains("stopped answering"), "{stderr}");
    assert!(
        stderr.contains("workers = 4 is not used on MPI: the 2 worker ranks"),
        "{stderr}"
    );
    let results = outputs_raw(&output);
    assert_eq!(results.len(), 12, "every task stored once");
    let failed: Vec<&Value> = results.iter().filter(|v| v["state"] != "done").collect();
    assert!(!failed.is_empty() && failed.len() <= 2, "{results:?}");
    for v in &failed {
        let err = v["error"].as_str().unwrap_or_default();
        assert!(err.contains("sent nothing for"), "{v}");
    }
    assert!(
        stderr.contains(&format!("{} failed", failed.len())),
        "{stderr}"
    );
}

/// Every line of a results file, parsed, each task once.
fn outputs_raw(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert!(seen.insert(v["task"].as_u64().unwrap()), "{l} twice");
            v
        })
        .collect()
}

/// Ctrl-C to `mpirun` (which passes it on as SIGTERM after `odls_base_sigkill_timeout`, and
/// SIGKILLs the ranks as long again later): rank 0 says how to resume before it ends its
/// ranks, naming `mpirun -n 3 mw resume …` (a plain `mw resume` refuses an MPI job). It
/// once said nothing: the SIGKILL came while it waited for the worker ranks to stop their
/// tasks. The timeout is raised from Open MPI's 1 s to 4 s so a loaded machine still says
/// it in time.
#[test]
fn ctrl_c_to_mpirun_says_how_to_resume_under_mpirun() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("started");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let prog = mw_tests::script(
        tmp.path(),
        "slow.sh",
        &format!(
            "cat > /dev/null\necho go > '{}'\nsleep 60\necho '{{}}'",
            fifo.display()
        ),
    );
    let job = tmp.path().join("slow.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"slow\"\n[program]\npath = \"{}\"\n[inputs.sweep]\ni = {{ start = 0, end = 4 }}\n",
            prog.display()
        ),
    )
    .unwrap();
    let jobs = tmp.path().join("jobs");
    let (mut cmd, _session) = mpi_command(&job, &jobs, &tmp.path().join("out.jsonl"), &[]);
    cmd.env("OMPI_MCA_odls_base_sigkill_timeout", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let timeout_pid = child.id();
    // The run's end, waited for on a thread, which then opens the FIFO for writing too: a
    // run that ends before any task started unblocks the reader below instead of hanging.
    let waiter = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let out = child.wait_with_output().unwrap();
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
            out
        })
    };
    // A task has started once its line comes through the FIFO (opening it waits for one;
    // both ranks' first tasks may write).
    let mut go = String::new();
    std::fs::File::open(&fifo)
        .unwrap()
        .read_to_string(&mut go)
        .unwrap();
    if go.lines().next() != Some("go") {
        let out = waiter.join().unwrap();
        panic!(
            "no task started: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `timeout`'s child is mpirun.
    let children =
        std::fs::read_to_string(format!("/proc/{timeout_pid}/task/{timeout_pid}/children"))
            .unwrap();
    let mpirun: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill only sends a signal, to the mpirun this test started.
    unsafe {
        libc::kill(mpirun, libc::SIGINT);
    }
    let out = waiter.join().unwrap();
    let (status, stderr) = (out.status, String::from_utf8_lossy(&out.stderr));
    assert!(!status.success(), "{stderr}");
    assert_ne!(status.code(), Some(124), "mpirun hung:\n{stderr}");
    assert!(stderr.contains("mw: stopped: interrupted"), "{stderr}");
    assert!(
        stderr.contains("`mpirun -n 3 mw resume ") && stderr.contains("runs the unfinished tasks"),
        "{stderr}"
    );
}

/// A streaming job whose tasks take one of 3 program keys in turn (`args` from a template):
/// a rank serves the tasks it holds key by key, so it starts a few programs, not one per
/// task (300 starts for 300 tasks before: rank 0 sent each key change as its own message
/// and the rank restarted the program for each), and every answer comes from its own key's
/// program.
#[test]
fn interleaved_stream_keys_under_mpirun_start_few_programs() {
    let tmp = tempfile::tempdir().unwrap();
    let starts = tmp.path().join("starts");
    let prog = mw_tests::script(
        tmp.path(),
        "keyed.sh",
        &format!(
            "echo \"start $1\" >> '{}'\nwhile IFS= read -r l; do printf '{{\"k\":\"%s\",\"in\":%s}}\\n' \"$1\" \"$l\"; done",
            starts.display()
        ),
    );
    let job = tmp.path().join("keyed.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"keyed\"\nargs = [\"k{{{{ input.n % 3 }}}}\"]\n[program]\npath = \"{}\"\nmode = \"stream\"\n[inputs.sweep]\nn = {{ start = 0, end = 300 }}\n",
            prog.display()
        ),
    )
    .unwrap();
    let output = tmp.path().join("mpi.jsonl");
    let (cmd, _session) = mpi_command(&job, &tmp.path().join("jobs"), &output, &[]);
    succeeds(cmd);
    let results = outputs_raw(&output);
    assert_eq!(results.len(), 300);
    for v in &results {
        let n = v["input"]["n"].as_u64().unwrap();
        assert_eq!(v["output"]["in"], v["input"], "{v}");
        assert_eq!(v["output"]["k"], format!("k{}", n % 3), "{v}");
    }
    let started = std::fs::read_to_string(&starts).unwrap().lines().count();
    // 3 keys on 2 ranks: at least 3 starts; here 6 to 12 (a rank switches key when it has
    // served all it holds of one).
    assert!((3..=60).contains(&started), "{started} program starts");
}
