//! End-to-end tests of the researcher's daily tools over the real `mw` binary: text programs
//! (a Python script that prints text) and kept per-task logs (`mw logs`), `mw retry` of a
//! finished job's failed tasks (done rows byte-identical), the retry policy (`retry_on`,
//! backoff, attempts in results), `mw results JOB | head -n 1` ending quietly, `mw status`
//! filters and `mw wait --timeout`, a declared output never written, failing fast without
//! HTCondor, job-file help (did you mean, float ranges), completions and man pages, and
//! the report opened in Debian's headless Chromium.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use std::path::{Path, PathBuf};

use mw_tests::{script, MwOut as Out};

fn mw(dir: &Path, args: &[&str]) -> Out {
    mw_tests::run_mw(dir, args)
}

fn jsonl(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn python() -> PathBuf {
    mw_tests::bin_dir(); // the binaries exist
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("python3 is needed (installed by .ci/setup)");
}

/// A Python script that prints text (not JSON) and a line on stderr.
fn text_script(d: &Path) {
    std::fs::write(
        d.join("hello.py"),
        "import json, sys\nn = json.load(sys.stdin)\nprint(f'hello {n}')\nprint(f'squared {n * n}')\nprint(f'note on stderr {n}', file=sys.stderr)\n",
    )
    .unwrap();
}

#[test]
fn a_python_script_that_prints_text_runs_as_a_task_and_its_logs_are_kept() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    python();
    text_script(d);
    let job = |mode: &str| {
        format!(
            "name = \"hello\"\nworkers = 2\n[program]\ncommand = [\"python3\", \"hello.py\"]\nfiles = [\"hello.py\"]\n{mode}[inputs]\nlist = [2, 3]\n"
        )
    };
    // Without `stdout = "text"`: the task fails, and the error says how to fix it.
    std::fs::write(d.join("json.toml"), job("")).unwrap();
    let o = mw(d, &["run", "-q", "json.toml"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let r = jsonl(&o.stdout);
    let err = r[0]["error"].as_str().unwrap();
    assert!(err.contains("not JSON"), "{err}");
    assert!(err.contains("stdout = \"text\""), "{err}");
    // Its stdout was kept, so the user can see what it printed.
    let o = mw(d, &["logs", "hello-1", "0", "--stream", "stdout"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "hello 2\nsquared 4\n");

    // With it: the result is the text.
    std::fs::write(d.join("text.toml"), job("stdout = \"text\"\n")).unwrap();
    let o = mw(d, &["run", "-q", "text.toml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = jsonl(&o.stdout);
    assert_eq!(r[0]["output"], "hello 2\nsquared 4");
    assert_eq!(r[1]["output"], "hello 3\nsquared 9");
    // Both streams of each task are kept under the job directory.
    let o = mw(d, &["logs", "hello-2", "1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("hello 3\nsquared 9\n"), "{}", o.stdout);
    assert!(o.stdout.contains("note on stderr 3"), "{}", o.stdout);
    let o = mw(d, &["logs", "hello-2", "1", "--stream", "stderr"]);
    assert_eq!(o.stdout, "note on stderr 3\n");
    let o = mw(d, &["logs", "hello-2", "7"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("no task 7"), "{}", o.stderr);

    // `stdout = "file"`: the stdout is kept as a file and the result is its path.
    std::fs::write(d.join("file.toml"), job("stdout = \"file\"\n")).unwrap();
    let o = mw(d, &["run", "-q", "file.toml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = jsonl(&o.stdout);
    let path = PathBuf::from(r[1]["output"].as_str().unwrap());
    assert!(path.starts_with(d.join("jobs/hello-3/results")), "{path:?}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "hello 3\nsquared 9\n"
    );
}

/// The rows of the journal's `tasks` table as stored, column by column (byte-level).
fn raw_rows(journal: &Path) -> Vec<(i64, Vec<rusqlite::types::Value>)> {
    let conn =
        rusqlite::Connection::open_with_flags(journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare("SELECT * FROM tasks ORDER BY idx").unwrap();
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            let mut v = Vec::new();
            for i in 0..n {
                v.push(r.get::<_, rusqlite::types::Value>(i)?);
            }
            Ok((r.get::<_, i64>(0)?, v))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

#[test]
fn retry_reruns_only_the_failed_tasks_and_leaves_the_good_rows_untouched() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Odd inputs fail while `broken` exists.
    script(
        d,
        "flaky.sh",
        &format!(
            r#"i=$(cat); if [ -e "{}" ] && [ $((i % 2)) = 1 ]; then echo "broken for $i" >&2; exit 5; fi; echo "{{\"v\":$i}}""#,
            d.join("broken").display()
        ),
    );
    std::fs::write(d.join("broken"), "").unwrap();
    std::fs::write(
        d.join("job.toml"),
        "name = \"flaky\"\nworkers = 2\n[program]\npath = \"flaky.sh\"\n[inputs]\nlist = [0, 1, 2, 3, 4, 5]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "-q", "job.toml", "-o", "first.jsonl"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let journal = d.join("jobs/flaky-1/journal.sqlite");
    let before = raw_rows(&journal);
    assert_eq!(before.len(), 6);

    // A done task cannot be retried: nothing is queued.
    let o = mw(d, &["retry", "flaky-1", "--task", "0"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("task 0 is done"), "{}", o.stderr);
    assert_eq!(raw_rows(&journal), before);

    std::fs::remove_file(d.join("broken")).unwrap();
    let o = mw(d, &["retry", "flaky-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("retrying 3 task(s)"), "{}", o.stderr);
    let after = raw_rows(&journal);
    for ((i, b), (_, a)) in before.iter().zip(&after) {
        if i % 2 == 0 {
            assert_eq!(a, b, "done task {i}: its row changed");
        } else {
            assert_ne!(a, b, "failed task {i} was not run again");
        }
    }
    let r = jsonl(&mw(d, &["results", "flaky-1"]).stdout);
    assert!(r.iter().all(|l| l["state"] == "done"), "{r:?}");
    for l in &r {
        let i = l["task"].as_u64().unwrap();
        assert_eq!(l["output"]["v"], i);
        // Attempts count across `mw retry`: the failed tasks took two.
        assert_eq!(l["attempts"], if i % 2 == 1 { 2 } else { 1 }, "{l}");
    }
    // Nothing left to retry.
    let o = mw(d, &["retry", "flaky-1"]);
    assert_eq!(o.code, 0);
    assert!(
        o.stderr.contains("no failed or cancelled tasks"),
        "{}",
        o.stderr
    );
    assert_eq!(raw_rows(&journal), after);
    // The report shows the retries.
    let o = mw(d, &["report", "flaky-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let html = std::fs::read_to_string(d.join("jobs/flaky-1/report.html")).unwrap();
    assert!(html.contains("Retried tasks (3)"), "{html}");
    assert!(html.contains("retry-requested"), "no resume/retry marker");
}

/// A job whose program is broken stops after `max_failures` failed tasks instead of failing
/// them all (GNU parallel's `--halt soon,fail=N`): what did not run waits for `mw resume`,
/// which stops the same way while the program stays broken; once fixed, resume runs the
/// rest and `mw retry` the failed ones. A share (`--max-failures 10%`) works the same, and
/// limits that mean nothing are refused before anything is made.
#[test]
fn max_failures_stops_a_broken_job_early_and_resume_and_retry_finish_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Every task fails while `broken` exists.
    script(
        d,
        "broken.sh",
        &format!(
            r#"i=$(cat); if [ -e "{}" ]; then echo "cannot import numpy ($i)" >&2; exit 3; fi; echo "{{\"v\":$i}}""#,
            d.join("broken").display()
        ),
    );
    std::fs::write(d.join("broken"), "").unwrap();
    std::fs::write(
        d.join("job.toml"),
        "name = \"halt\"\nworkers = 2\nmax_failures = 3\n[program]\npath = \"broken.sh\"\n[inputs.sweep]\ni = { start = 0, end = 200 }\n",
    )
    .unwrap();
    // (failed, without an outcome): `mw results` prints the tasks that have one.
    let failed_and_left = |d: &Path| -> (usize, usize) {
        let r = jsonl(&mw(d, &["results", "halt-1"]).stdout);
        let failed = r.iter().filter(|l| l["state"] == "failed").count();
        (failed, 200 - r.len())
    };
    let o = mw(d, &["run", "-q", "job.toml"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("tasks failed (max_failures = 3): stopping"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("cannot import numpy"),
        "no failure shown: {}",
        o.stderr
    );
    // A stopped job's failures are retried after it is resumed: said once, in that order.
    assert!(
        !o.stderr.contains("run the failed ones again"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains(
            "`mw resume halt-1` runs the unfinished tasks, then `mw retry halt-1` the failed ones"
        ),
        "{}",
        o.stderr
    );
    // `mw status` says why the job stopped (what a detached master's user sees).
    let st = mw(d, &["status", "halt-1"]);
    assert!(
        st.stdout
            .contains("stopped    3 tasks failed (max_failures = 3)"),
        "{}",
        st.stdout
    );
    // At least 3 failed (tasks in flight when it stopped may fail too); most never ran.
    let (failed, left) = failed_and_left(d);
    assert!((3..=10).contains(&failed), "{failed} failed");
    assert!(left >= 150, "{left} tasks left");
    // Still broken: resume stops again, after 3 more.
    let o = mw(d, &["resume", "halt-1"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("(max_failures = 3)"), "{}", o.stderr);
    let (failed_again, left_again) = failed_and_left(d);
    assert!(
        failed_again >= failed + 3 && left_again > 0,
        "{failed_again} {left_again}"
    );
    // Fixed: resume runs the rest (the job ends with the failures it had), retry those.
    std::fs::remove_file(d.join("broken")).unwrap();
    let o = mw(d, &["resume", "halt-1"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(failed_and_left(d), (failed_again, 0));
    let o = mw(d, &["retry", "halt-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(failed_and_left(d), (0, 0));
    let st = mw(d, &["status", "halt-1"]);
    assert!(!st.stdout.contains("stopped"), "{}", st.stdout);

    // A share of the tasks, on the command line (over the job file's 3): 10% of 200 = 20.
    std::fs::write(d.join("broken"), "").unwrap();
    let o = mw(
        d,
        &[
            "run",
            "-q",
            "job.toml",
            "--name",
            "share",
            "--max-failures",
            "10%",
        ],
    );
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("(max_failures = 10%)"), "{}", o.stderr);
    let r = jsonl(&mw(d, &["results", "share-1"]).stdout);
    let failed = r.iter().filter(|l| l["state"] == "failed").count();
    assert!((20..=30).contains(&failed), "{failed} failed");

    // Limits that mean nothing: refused (exit 2) naming the field, before any job exists.
    for (i, bad) in ["0", "\"0%\"", "\"150%\"", "true", "\"many\""]
        .iter()
        .enumerate()
    {
        let name = format!("bad{i}");
        std::fs::write(
            d.join(format!("{name}.toml")),
            format!(
                "max_failures = {bad}\n[program]\npath = \"broken.sh\"\n[inputs]\nlist = [1]\n"
            ),
        )
        .unwrap();
        let o = mw(d, &["run", &format!("{name}.toml")]);
        assert_eq!(o.code, 2, "{bad}: {}", o.stderr);
        assert!(o.stderr.contains("max_failures"), "{bad}: {}", o.stderr);
        assert!(
            !d.join(format!("jobs/{name}-1")).exists(),
            "{bad}: a job was made"
        );
    }
    let o = mw(d, &["run", "job.toml", "--max-failures", "0"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
}

#[test]
fn retry_on_picks_the_failures_worth_retrying_and_backs_off() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // Input 3 exits 3 on its first attempt only (a transient failure); input 4 always exits 4.
    script(
        d,
        "t.sh",
        &format!(
            r#"i=$(cat); m="{}/seen-$i"; if [ "$i" = 3 ] && [ ! -e "$m" ]; then : > "$m"; exit 3; fi; if [ "$i" = 4 ]; then exit 4; fi; echo "$i""#,
            d.display()
        ),
    );
    std::fs::write(
        d.join("job.toml"),
        "name = \"pol\"\nretries = 3\nretry_backoff = 0.3\nretry_on = [3, \"timeout\"]\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [3, 4]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "job.toml"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let r = jsonl(&o.stdout);
    assert_eq!(r[0]["state"], "done");
    assert_eq!(r[0]["attempts"], 2, "exit 3 is retried");
    assert_eq!(r[1]["state"], "failed");
    assert_eq!(r[1]["attempts"], 1, "exit 4 is not in retry_on");
    assert!(o.stderr.contains("retried 1"), "{}", o.stderr);
    // The retry waited out its backoff: its attempt started >= 0.3 s after the first ended.
    let conn = rusqlite::Connection::open(d.join("jobs/pol-1/journal.sqlite")).unwrap();
    let detail: String = conn
        .query_row(
            "SELECT detail FROM events WHERE kind = 'retry' AND task = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(detail.contains("attempt 2 in 0.3 s"), "{detail}");
    // A bad retry_on value is named.
    std::fs::write(
        d.join("bad.toml"),
        "retry_on = [\"sometimes\"]\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "bad.toml"]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr.contains("retry_on") && o.stderr.contains("sometimes"),
        "{}",
        o.stderr
    );
    // An empty list (which would otherwise mean "retry everything") and exit code 0 (never
    // a failure) are refused, naming the field.
    for (list, says) in [("[]", "is empty"), ("[0]", "`0`")] {
        std::fs::write(
            d.join("bad.toml"),
            format!("retry_on = {list}\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [1]\n"),
        )
        .unwrap();
        let o = mw(d, &["run", "bad.toml"]);
        assert_eq!(o.code, 2, "{list}: {}", o.stderr);
        assert!(
            o.stderr.contains("retry_on") && o.stderr.contains(says),
            "{list}: {}",
            o.stderr
        );
    }
}

#[test]
fn retry_on_names_a_streaming_programs_failures() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // On its first sight of input 1 the program answers `{"error": ...}`, of input 2 a line
    // that is not JSON; afterwards it echoes. Each job gets its own program (own markers).
    let program = |name: &str| {
        script(
            d,
            &format!("{name}.sh"),
            &format!(
                r#"while read -r i; do m="{}/{name}-seen-$i"; if [ ! -e "$m" ]; then : > "$m"; if [ "$i" = 1 ]; then echo '{{"error":"transient"}}'; continue; fi; if [ "$i" = 2 ]; then echo 'not json'; continue; fi; fi; echo "$i"; done"#,
                d.display()
            ),
        );
    };
    let run = |name: &str, on: &str| {
        program(name);
        std::fs::write(
            d.join(format!("{name}.toml")),
            format!("retries = 2\nretry_on = [{on}]\n[program]\npath = \"{name}.sh\"\nmode = \"stream\"\n[inputs]\nlist = [1, 2]\n"),
        )
        .unwrap();
        let o = mw(d, &["run", "-q", &format!("{name}.toml")]);
        assert_eq!(o.code, 1, "{}", o.stderr);
        jsonl(&o.stdout)
    };
    // "exit" takes a program's error answer (its way of exiting non-zero), not a bad line.
    let r = run("ex", "\"exit\"");
    assert_eq!(
        (&r[0]["state"], &r[0]["attempts"]),
        (&"done".into(), &2.into())
    );
    assert_eq!(
        (&r[1]["state"], &r[1]["attempts"]),
        (&"failed".into(), &1.into())
    );
    // "output" takes the broken answer line, not the error answer.
    let r = run("out", "\"output\"");
    assert_eq!(
        (&r[0]["state"], &r[0]["attempts"]),
        (&"failed".into(), &1.into())
    );
    assert_eq!(
        (&r[1]["state"], &r[1]["attempts"]),
        (&"done".into(), &2.into())
    );
}

#[test]
fn text_and_file_results_over_max_output_fail_instead_of_being_cut() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // 3,000 bytes and an end marker, against a limit of 1,000.
    script(
        d,
        "big.sh",
        "cat > /dev/null; head -c 3000 /dev/zero | tr '\\0' a; echo END",
    );
    for mode in ["text", "file"] {
        std::fs::write(
            d.join(format!("{mode}.toml")),
            format!("max_output = 1000\n[program]\npath = \"big.sh\"\nstdout = \"{mode}\"\n[inputs]\nlist = [1]\n"),
        )
        .unwrap();
        let o = mw(d, &["run", "-q", &format!("{mode}.toml")]);
        assert_eq!(o.code, 1, "{mode}: {}", o.stderr);
        let r = jsonl(&o.stdout);
        assert_eq!(r[0]["state"], "failed", "{mode}: {}", o.stdout);
        let err = r[0]["error"].as_str().unwrap();
        assert!(
            err.contains("limit of 1000 bytes (max_output)"),
            "{mode}: {err}"
        );
    }
    // The same over-long stdout as JSON: the limit is named, and no advice to print text
    // (which would not help).
    std::fs::write(
        d.join("json.toml"),
        "max_output = 1000\n[program]\npath = \"big.sh\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "-q", "json.toml"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let err = jsonl(&o.stdout)[0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("limit of 1000 bytes (max_output)"), "{err}");
    assert!(!err.contains("stdout = \"text\""), "{err}");
}

#[test]
fn retry_refuses_before_changing_anything_while_another_holds_the_job() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "fail.sh", "cat > /dev/null; exit 4");
    std::fs::write(
        d.join("job.toml"),
        "name = \"held\"\n[program]\npath = \"fail.sh\"\n[inputs]\nlist = [1, 2]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "-q", "job.toml"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let dir = d.join("jobs/held-1");
    // Another process about to run the job (a `mw resume` deciding what is left) holds
    // its lock: what it decides on must not change under it.
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("master.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let o = mw(d, &["retry", "held-1"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("another master"), "{}", o.stderr);
    drop(lock);
    let o = mw(d, &["results", "held-1"]);
    let r = jsonl(&o.stdout);
    assert!(
        r.iter()
            .all(|t| t["state"] == "failed" && t["attempts"] == 1),
        "a refused retry queued nothing: {}",
        o.stdout
    );
    // Once the lock is free the retry runs them.
    let o = mw(d, &["retry", "-q", "held-1"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let o = mw(d, &["results", "held-1"]);
    assert!(
        jsonl(&o.stdout).iter().all(|t| t["attempts"] == 2),
        "{}",
        o.stdout
    );
    // Tasks named more than once, out of order: each once, in task order.
    let o = mw(
        d,
        &[
            "results", "held-1", "--task", "1", "--task", "0", "--task", "1",
        ],
    );
    let tasks: Vec<_> = jsonl(&o.stdout).iter().map(|t| t["task"].clone()).collect();
    assert_eq!(tasks, vec![serde_json::json!(0), serde_json::json!(1)]);
}

#[test]
fn run_refuses_what_it_could_not_keep_before_making_a_job() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "ok.sh", "cat");
    std::fs::write(
        d.join("ok.toml"),
        "name = \"ok\"\n[program]\npath = \"ok.sh\"\n[inputs]\nlist = [1, 2]\n",
    )
    .unwrap();
    let jobs = || {
        std::fs::read_dir(d.join("jobs"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name())
                    .filter(|n| !n.to_string_lossy().starts_with('.'))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    // A results file that cannot be made (a directory): no job is left behind, which
    // `mw status` and `mw wait` would have called finished with no task.
    std::fs::create_dir(d.join("adir")).unwrap();
    let o = mw(d, &["run", "-q", "ok.toml", "-o", "adir"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("adir"), "{}", o.stderr);
    // The job file itself is never the results file.
    let o = mw(d, &["run", "-q", "ok.toml", "-o", "ok.toml"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(std::fs::read_to_string(d.join("ok.toml"))
        .unwrap()
        .contains("[program]"));
    assert!(jobs().is_empty(), "{:?}", jobs());
    // Without a journal there is nowhere to keep stdout files.
    std::fs::write(
        d.join("file.toml"),
        "[program]\npath = \"ok.sh\"\nstdout = \"file\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "-q", "--no-journal", "file.toml"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--no-journal"), "{}", o.stderr);
    // A default name never starts with `-` (every command would take the id for an option).
    std::fs::copy(d.join("file.toml"), d.join(".hidden.toml")).unwrap();
    let o = mw(d, &["run", "-q", ".hidden.toml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(jobs(), vec![std::ffi::OsString::from("hidden-1")]);
    let o = mw(d, &["results", "hidden-1"]);
    assert_eq!(jsonl(&o.stdout).len(), 1, "{}", o.stderr);
}

#[test]
fn wait_on_a_submitted_job_whose_reduce_failed_says_so_and_resume_runs_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "t.sh", "cat");
    script(
        d,
        "red.sh",
        &format!(
            "cat > /dev/null; if [ -e {} ]; then echo '{{\"reduced\":true}}'; else exit 3; fi",
            d.join("ok").display()
        ),
    );
    std::fs::write(
        d.join("job.toml"),
        "name = \"red\"\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [1, 2]\n[reduce]\npath = \"red.sh\"\n",
    )
    .unwrap();
    let o = mw(d, &["submit", "job.toml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Every task done, the reduce failed: not a success.
    let o = mw(d, &["wait", "red-1"]);
    assert_eq!(o.code, 2, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains("reduce step did not finish"),
        "{}",
        o.stderr
    );
    // Mended, resumed: the reduce runs, and the wait succeeds with its output.
    std::fs::write(d.join("ok"), "").unwrap();
    let o = mw(d, &["resume", "red-1", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = mw(d, &["wait", "red-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("\"reduced\":true"), "{}", o.stdout);
}

/// `mw run --dry-run` prints every task as it would run (its templates rendered), after
/// the same checks, and runs and creates nothing; into `head` it ends quietly.
#[test]
fn a_dry_run_prints_every_task_and_creates_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "t.sh", "touch ran; cat");
    std::fs::write(
        d.join("job.toml"),
        "name = \"dry\"\nargs = [\"--seed\", \"{{ input.s }}\"]\nenv = { K = \"k{{ index }}\" }\ntimeout = 5\n[program]\npath = \"t.sh\"\n[inputs.sweep]\ns = { start = 0, end = 3000 }\n",
    )
    .unwrap();
    let o = mw(d, &["run", "job.toml", "--dry-run"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines = jsonl(&o.stdout);
    assert_eq!(lines.len(), 3000);
    assert_eq!(lines[7]["task"], 7);
    assert_eq!(lines[7]["input"]["s"], 7);
    let cmd = lines[7]["command"].as_array().unwrap();
    assert!(cmd[0].as_str().unwrap().ends_with("t.sh"), "{cmd:?}");
    assert_eq!(
        cmd[1..],
        [serde_json::json!("--seed"), serde_json::json!("7")]
    );
    assert_eq!(lines[7]["env"]["K"], "k7");
    assert_eq!(lines[7]["timeout_secs"], 5.0);
    assert!(
        o.stderr.contains("dry run of job dry: 3000 tasks"),
        "{}",
        o.stderr
    );
    assert!(!d.join("jobs").exists(), "a job was made");
    assert!(!d.join("ran").exists(), "a task ran");
    ends_quietly_into_head(d, "run job.toml --dry-run");
    // A bad job file is refused as by a real run; a dry run with -o is a usage error.
    std::fs::write(
        d.join("bad.toml"),
        "args = [\"{{ input.nope }}\"]\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [{a = 1}]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "bad.toml", "--dry-run"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    let o = mw(d, &["run", "job.toml", "--dry-run", "-o", "x.jsonl"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(!d.join("x.jsonl").exists());
}

#[test]
fn results_into_head_ends_quietly_with_exit_0() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // 40 results of 40 KB each: far more than a pipe holds, so mw is still writing when
    // `head` goes away.
    script(d, "big.sh", r#"cat > /dev/null; printf '"%040000d"' 7"#);
    std::fs::write(
        d.join("job.toml"),
        "name = \"big\"\n[program]\npath = \"big.sh\"\n[inputs.sweep]\ni = { start = 0, end = 40 }\n",
    )
    .unwrap();
    let o = mw(d, &["run", "-q", "job.toml", "-o", "/dev/null"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    for args in [
        "results big-1",
        "results big-1 --format csv",
        "status",
        "logs big-1 3",
    ] {
        ends_quietly_into_head(d, args);
    }
}

/// `mw ARGS | head -n 1` (ARGS split on spaces) in `d`: exit 0 and nothing on stderr.
fn ends_quietly_into_head(d: &Path, args: &str) {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; \"$MW\" {args} | head -n 1 > /dev/null"
        ))
        .env("MW", mw_tests::bin("mw"))
        .env("MW_JOBS_DIR", d.join("jobs"))
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "mw {args} | head: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "mw {args} | head wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn status_filters_wait_timeout_and_a_missing_output_file() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(
        d,
        "gate.sh",
        r#"i=$(cat); while [ ! -e "$GATE" ]; do sleep 0.02; done; echo "$i""#,
    );
    std::fs::write(
        d.join("gated.toml"),
        format!(
            "name = \"gated\"\nworkers = 1\nenv = {{ GATE = \"{}\" }}\n[program]\npath = \"gate.sh\"\n[inputs]\nlist = [1, 2]\n",
            d.join("gate").display()
        ),
    )
    .unwrap();
    // A task that exits 0 without writing its declared output fails, naming the file.
    script(d, "lazy.sh", "cat > /dev/null; echo 1");
    std::fs::write(
        d.join("lazy.toml"),
        "name = \"lazy\"\noutputs = [\"out-{{ index }}.txt\"]\n[program]\npath = \"lazy.sh\"\n[inputs]\nlist = [0]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "-q", "lazy.toml"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let r = jsonl(&o.stdout);
    assert_eq!(r[0]["state"], "failed");
    assert!(
        r[0]["error"].as_str().unwrap().contains("`out-0.txt`"),
        "{}",
        r[0]
    );

    let o = mw(d, &["submit", "gated.toml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // The job cannot finish before the gate opens: the wait times out, exit 3.
    let o = mw(d, &["wait", "gated-1", "--timeout", "0.3"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("timed out"), "{}", o.stderr);
    let ids = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["status", "--json"];
        a.extend_from_slice(args);
        let o = mw(d, &a);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&["--state", "failed"]), ["lazy-1"]);
    assert_eq!(ids(&["--name", "gat"]), ["gated-1"]);
    assert!(ids(&["--state", "finished"]).is_empty());
    assert!(ids(&["--state", "cancelled"]).is_empty());
    // A table, aligned, whose rows start with the job id.
    let o = mw(d, &["status", "--name", "lazy"]);
    assert!(
        o.stdout.lines().nth(1).unwrap().starts_with("lazy-1 "),
        "{}",
        o.stdout
    );
    std::fs::write(d.join("gate"), "").unwrap();
    let o = mw(d, &["wait", "gated-1", "--timeout", "120"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(ids(&["--state", "finished"]), ["gated-1"]);
}

#[test]
fn a_condor_job_without_htcondor_stops_before_creating_anything() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "t.sh", "cat");
    std::fs::write(
        d.join("job.toml"),
        "interface = \"condor\"\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let empty = d.join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    for cmd in ["run", "submit"] {
        let out = std::process::Command::new(mw_tests::bin("mw"))
            .args([cmd, "job.toml"])
            .current_dir(d)
            .env("MW_JOBS_DIR", d.join("jobs"))
            .env("PATH", &empty)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("condor_submit") && err.contains("--interface multicore"),
            "{err}"
        );
        assert!(!d.join("jobs").exists(), "mw {cmd} created a job directory");
    }
    // A dry run runs nothing: it shows the tasks without HTCondor.
    let out = std::process::Command::new(mw_tests::bin("mw"))
        .args(["run", "job.toml", "--dry-run"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .env("PATH", &empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("1 tasks on condor"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(
        !d.join("jobs").exists(),
        "a dry run created a job directory"
    );
}

#[test]
fn job_file_mistakes_get_answers() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "t.sh", "cat");
    std::fs::write(
        d.join("typo.toml"),
        "[program]\npath = \"t.sh\"\n[input]\nlist = [1]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "typo.toml"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("did you mean `inputs`?"), "{}", o.stderr);
    std::fs::write(
        d.join("float.toml"),
        "[program]\npath = \"t.sh\"\n[inputs.sweep]\nx = { start = 0.0, end = 1.0, step = 0.1 }\n",
    )
    .unwrap();
    let o = mw(d, &["run", "float.toml"]);
    assert_eq!(o.code, 2);
    assert!(!o.stderr.contains("untagged enum"), "{}", o.stderr);
    assert!(o.stderr.contains("list them"), "{}", o.stderr);
    assert!(o.stderr.contains("exclusive"), "{}", o.stderr);
    std::fs::write(
        d.join("mode.toml"),
        "[program]\npath = \"t.sh\"\nstdout = \"csv\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "mode.toml"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("program.stdout"), "{}", o.stderr);
    // Two files that would take one name in the task's directory, an output that stdout
    // = "file" would overwrite, a misspelt comparison rule: refused, each with its field.
    for dir in ["da", "db"] {
        std::fs::create_dir_all(d.join(dir)).unwrap();
        std::fs::write(d.join(dir).join("x.csv"), dir).unwrap();
    }
    for (name, body, needles) in [
        (
            "pfiles.toml",
            "[program]\npath = \"t.sh\"\nfiles = [\"da/x.csv\", \"db/x.csv\"]\n[inputs]\nlist = [1]\n",
            &["program.files", "da/x.csv", "db/x.csv"][..],
        ),
        (
            "ifiles.toml",
            "input_files = [\"da/x.csv\", \"db/x.csv\"]\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [1]\n",
            &["input_files", "da/x.csv", "db/x.csv", "ifiles.toml"][..],
        ),
        (
            "outstdout.toml",
            "outputs = [\"stdout\"]\n[program]\npath = \"t.sh\"\nstdout = \"file\"\n[inputs]\nlist = [1]\n",
            &["outputs[0]", "overwritten"][..],
        ),
        (
            "cmp.toml",
            "[program]\npath = \"t.sh\"\n[inputs]\nlist = [1]\n[boinc]\ncomparison = \"jsn\"\n",
            &["boinc.comparison", "jsn"][..],
        ),
    ] {
        std::fs::write(d.join(name), body).unwrap();
        let o = mw(d, &["run", name]);
        assert_eq!(o.code, 2, "{name}: {}", o.stdout);
        for n in needles {
            assert!(o.stderr.contains(n), "{name}: `{n}` in {}", o.stderr);
        }
    }
    // Tables written with dotted keys are the same tables.
    std::fs::write(
        d.join("dotted.toml"),
        "program.path = \"t.sh\"\ninputs.list = [7]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "-q", "dotted.toml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(jsonl(&o.stdout)[0]["output"], 7);
    // nan and inf would reach the task as null: refused, with the field and its line.
    for (name, inputs, field) in [
        (
            "nan.toml",
            "[inputs]\nlist = [1, {x = nan}]\n",
            "inputs.list",
        ),
        (
            "inf.toml",
            "[inputs.sweep]\na = [1]\nx = [0.5, -inf]\n",
            "inputs.sweep.x",
        ),
    ] {
        std::fs::write(
            d.join(name),
            format!("[program]\npath = \"t.sh\"\n{inputs}"),
        )
        .unwrap();
        let o = mw(d, &["run", name]);
        assert_eq!(o.code, 2, "{name}: {}", o.stdout);
        assert!(o.stderr.contains(field), "{name}: {}", o.stderr);
        assert!(
            o.stderr.contains(":3:") || o.stderr.contains(":5:"),
            "{}",
            o.stderr
        );
        assert!(o.stderr.contains("not JSON values"), "{}", o.stderr);
    }
    // The help documents the sweep step, the exclusive end and the default name rule.
    let o = mw(d, &["run", "--help"]);
    for needle in [
        "step",
        "exclusive",
        "job.toml",
        "text: the result",
        "retry_on",
    ] {
        assert!(
            o.stdout.contains(needle),
            "`{needle}` missing from mw run --help"
        );
    }
}

#[test]
fn completions_and_man_pages() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let o = mw(d, &["completions", "bash"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("complete") && o.stdout.contains("_mw"),
        "{}",
        o.stdout
    );
    for sub in ["retry", "logs", "results", "status"] {
        assert!(o.stdout.contains(sub), "bash completion lacks {sub}");
    }
    // bash itself accepts the script.
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg("-c")
        .arg(&o.stdout)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish"] {
        let o = mw(d, &["completions", shell]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("retry"), "{shell}");
    }
    let o = mw(d, &["man", "man"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let page = std::fs::read_to_string(d.join("man/mw.1")).unwrap();
    assert!(page.contains(".TH mw 1"), "{page}");
    let run = std::fs::read_to_string(d.join("man/mw-run.1")).unwrap();
    assert!(
        run.contains("exclusive"),
        "the run page carries the job-file help"
    );
    assert!(d.join("man/mw-retry.1").is_file());
}

/// Decodes a PNG and counts its distinct colours (stops counting at `cap`).
fn png_colours(path: &Path, cap: usize) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples()
        * if info.bit_depth == png::BitDepth::Sixteen {
            2
        } else {
            1
        };
    let mut seen = std::collections::HashSet::new();
    for p in buf[..info.buffer_size()].chunks(px) {
        seen.insert(p.to_vec());
        if seen.len() >= cap {
            break;
        }
    }
    (info.width, info.height, seen.len())
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("Debian's chromium is needed (installed by .ci/setup)");
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(
        d,
        "t.sh",
        r#"i=$(cat); if [ "$i" = 2 ]; then echo "two is bad" >&2; exit 2; fi; echo "$i""#,
    );
    std::fs::write(
        d.join("job.toml"),
        "name = \"rep\"\nworkers = 2\nretries = 1\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [0, 1, 2, 3, 4, 5, 6, 7]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "-q", "job.toml", "-o", "/dev/null"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let o = mw(d, &["report", "rep-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let report = d.join("jobs/rep-1/report.html");
    let html = std::fs::read_to_string(&report).unwrap();
    // Legend, axes, sections, and the failed task with its stderr.
    for needle in [
        ">done</text>",
        ">failed</text>",
        "Throughput",
        "Slot utilisation",
        "Histogram",
        " s</text>",
        "Failed tasks (1)",
        "two is bad",
        "Retried tasks (1)",
    ] {
        assert!(html.contains(needle), "report lacks {needle}");
    }
    let shot = d.join("shot.png");
    let profile = d.join("chromium-profile");
    // Bounded: `timeout` kills a browser that hangs.
    let out = std::process::Command::new("timeout")
        .arg("120")
        .arg(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", report.display()))
        .env("HOME", d)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        shot.is_file(),
        "chromium took no screenshot ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (w, h, colours) = png_colours(&shot, 64);
    assert_eq!((w, h), (1200, 1000));
    // A blank page is one colour; the report's bars, text and axes give many.
    assert!(
        colours > 8,
        "the screenshot has {colours} colour(s): not rendered"
    );
}

/// Names of real HTCondor, BOINC and MPI programs no binary of this workspace may take: a
/// user who puts `target/release` on PATH must never run a test double instead of the real one.
const REAL_TOOLS: &[&str] = &[
    "feeder",
    "transitioner",
    "file_deleter",
    "db_purge",
    "script_validator",
    "script_assimilator",
    "sample_trivial_validator",
    "sample_bitwise_validator",
    "create_work",
    "stage_file",
    "xadd",
    "update_versions",
    "sign_executable",
    "start",
    "stop",
    "make_project",
    "boinc",
    "boinc_client",
    "boinccmd",
    "mpirun",
    "mpiexec",
];

#[test]
fn no_binary_of_the_workspace_takes_a_real_tools_name() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(mw_tests::workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut bins = Vec::new();
    for pkg in v["packages"].as_array().unwrap() {
        for t in pkg["targets"].as_array().unwrap() {
            if t["kind"].as_array().unwrap().iter().any(|k| k == "bin") {
                bins.push(t["name"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(bins.iter().any(|b| b == "mw"), "no `mw` among {bins:?}");
    for b in &bins {
        assert!(
            !b.starts_with("condor_") && !REAL_TOOLS.contains(&b.as_str()),
            "the binary `{b}` takes the name of a real tool: a build directory on PATH would \
             shadow it (name test doubles mw-test-*)"
        );
    }
    // The doubles exist under their own names, and the tests' PATH directory links them
    // under the real names (outside the build directory).
    let t = tempfile::tempdir().unwrap();
    let dir = mw_tests::condor_double_path(t.path());
    for tool in mw_tests::CONDOR_DOUBLE_TOOLS {
        let double = format!("mw-test-{tool}");
        assert!(bins.contains(&double), "no binary {double} in {bins:?}");
        assert_eq!(
            std::fs::read_link(dir.join(tool)).unwrap(),
            mw_tests::bin_dir().join(&double)
        );
    }
}

/// `tool` of this build, hard-linked (copied across file systems) to `root/target/release/`,
/// so it looks for the static worker in `root/target/static/release/` and beside itself.
fn tool_in_fresh_tree(root: &Path, tool: &str) -> PathBuf {
    let dir = root.join("target/release");
    std::fs::create_dir_all(&dir).unwrap();
    let to = dir.join(tool);
    if std::fs::hard_link(mw_tests::bin(tool), &to).is_err() {
        std::fs::copy(mw_tests::bin(tool), &to).unwrap();
    }
    to
}

/// A file that reads as a statically linked x86_64 ELF executable (no PT_INTERP).
fn fake_static_worker(path: &Path) {
    let mut e = vec![0u8; 128];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[0x12] = 62;
    e[0x20] = 64;
    e[0x36] = 56;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, e).unwrap();
}

#[test]
fn condor_tools_default_to_the_static_worker() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "t.sh", "cat");
    std::fs::write(
        d.join("job.toml"),
        "interface = \"condor\"\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [1, 2]\n",
    )
    .unwrap();
    let mw_condor = tool_in_fresh_tree(d, "mw-condor");
    let submit_file = |worker: Option<&Path>| {
        let mut c = std::process::Command::new(&mw_condor);
        c.args(["submit-file", "job.toml"])
            .current_dir(d)
            .env("RUST_BACKTRACE", "1")
            .env_remove("MW_WORKER");
        if let Some(w) = worker {
            c.env("MW_WORKER", w);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            err,
        )
    };
    // No static worker built: a clear error naming the command that builds it.
    let (code, _, err) = submit_file(None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cargo static-worker") && err.contains("target/static/release/mw-worker"),
        "{err}"
    );
    // Once built, it is the default, with no warning.
    let static_worker = d.join("target/static/release/mw-worker");
    fake_static_worker(&static_worker);
    let (code, sub, err) = submit_file(None);
    assert_eq!(code, Some(0), "{err}");
    let exe_line = format!("executable              = {}\n", static_worker.display());
    assert!(sub.contains(&exe_line), "{sub}");
    assert!(!err.contains("warning"), "{err}");
    // A dynamically linked worker named by the user is used, with a warning.
    let dynamic = mw_tests::bin("mw-worker");
    let (code, sub, err) = submit_file(Some(&dynamic));
    assert_eq!(code, Some(0), "{err}");
    assert!(sub.contains(&format!("= {}\n", dynamic.display())), "{sub}");
    assert!(
        err.contains("warning") && err.contains("dynamically linked"),
        "{err}"
    );
    // A job too big to print is refused before its tasks are built (every spec was held:
    // a three-line sweep of 5x10^7 tasks asked for tens of GB).
    let job = std::fs::read_to_string(d.join("job.toml")).unwrap();
    std::fs::write(
        d.join("job.toml"),
        job.replace(
            "[inputs]\nlist = [1, 2]",
            "[inputs.sweep]\ni = { start = 0, end = 100001 }",
        ),
    )
    .unwrap();
    let (code, _, err) = submit_file(Some(&dynamic));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("100001 tasks") && err.contains("at most 100000"),
        "{err}"
    );
    std::fs::write(d.join("job.toml"), job).unwrap();

    // `mw run` of a Condor job defaults to the same worker, and stops before creating
    // anything when there is none.
    std::fs::remove_file(&static_worker).unwrap();
    let mw = tool_in_fresh_tree(d, "mw");
    let out = std::process::Command::new(&mw)
        .args(["run", "job.toml"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .env(
            "PATH",
            format!(
                "{}:/usr/bin:/bin",
                mw_tests::condor_double_path(d).display()
            ),
        )
        .env_remove("MW_WORKER")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cargo static-worker"), "{err}");
    assert!(!d.join("jobs").exists(), "mw run created a job directory");
}

/// A task's stderr (on BOINC, a volunteer's) may carry escape sequences that drive a
/// terminal: retitle it, clear it, colour or hide what follows. Every summary mw writes shows
/// them escaped; `mw logs` keeps the bytes in a pipe and escapes them on a terminal.
#[test]
fn escape_sequences_a_task_prints_never_reach_the_terminal_raw() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(
        d,
        "evil.sh",
        r"printf 'oops\033]0;PWNED\007\033[2J\033[31mred\342\200\256gnp.exe\r\n' >&2; exit 3",
    );
    std::fs::write(
        d.join("job.toml"),
        "name = \"evil\"\nworkers = 1\n[program]\npath = \"evil.sh\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let raw = |s: &str| {
        s.contains('\u{1b}') || s.contains('\u{7}') || s.contains('\u{202e}') || s.contains('\r')
    };
    let run = mw(d, &["run", "job.toml"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        !raw(&run.stderr),
        "raw control characters on stderr: {:?}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(r"oops\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[31mred\u{202e}gnp.exe"),
        "{}",
        run.stderr
    );
    // The result lines are JSON, which escapes control characters itself (a direction
    // override is no control character to JSON: the lines are data, not a display).
    assert!(
        !run.stdout.contains(['\u{1b}', '\u{7}', '\r']),
        "{}",
        run.stdout
    );
    let status = mw(d, &["status", "evil-1"]);
    assert!(
        !raw(&status.stdout),
        "raw control characters in mw status: {:?}",
        status.stdout
    );
    assert!(
        status.stdout.contains(r"\u{1b}]0;PWNED"),
        "{}",
        status.stdout
    );
    // Into a pipe: the bytes as the task wrote them.
    let logs = mw(d, &["logs", "evil-1", "0", "--stream", "stderr"]);
    assert!(
        logs.stdout.starts_with("oops\u{1b}]0;PWNED\u{7}"),
        "{:?}",
        logs.stdout
    );
    // On a terminal (`script` gives the command one): escaped.
    let tty = mw_on_a_terminal(d, "logs evil-1 0 --stream stderr");
    let shown = String::from_utf8_lossy(&tty);
    assert!(
        shown.contains(r"oops\u{1b}]0;PWNED\u{7}\u{1b}[2J"),
        "{shown:?}"
    );
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
}

/// A finished job `evil-1` of two tasks: task 0 returns a string holding ESC and BEL, task 1
/// fails after printing ESC, BEL, NUL and ^A on stderr. Its journal is then forged (as
/// anyone who can write the file could) to hold such characters, a newline among them, in
/// the job's name and interface and in the tasks' host.
fn evil_job(d: &Path) {
    script(
        d,
        "evil.sh",
        r#"i=$(cat); if [ "$i" = 1 ]; then printf 'a\033[31mred\007bell\000nul\001x\n' >&2; exit 3; fi; printf '{"v": "a\\u001b[31mb\\u0007"}'"#,
    );
    std::fs::write(
        d.join("evil.toml"),
        "name = \"evil\"\nworkers = 1\n[program]\npath = \"evil.sh\"\n[inputs]\nlist = [0, 1]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "-q", "evil.toml"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let conn = rusqlite::Connection::open(d.join("jobs/evil-1/journal.sqlite")).unwrap();
    conn.execute_batch(
        "UPDATE job SET name = char(27)||'[2J'||char(7)||'n'||char(10)||'ame', \
                        interface = 'multi'||char(27)||'[31m'||char(10)||'x'; \
         UPDATE tasks SET host = 'h'||char(7)||char(10)||'y';",
    )
    .unwrap();
}

/// The control characters in `bytes` but newline (and the carriage return a terminal adds
/// to it, when `tty`).
fn raw_controls(bytes: &[u8], tty: bool) -> Vec<u8> {
    bytes
        .iter()
        .copied()
        .filter(|&b| (b < 0x20 && b != b'\n' && !(tty && b == b'\r')) || b == 0x7f)
        .collect()
}

/// A task's stderr and a journal's text reach the report (HTML and SVG) with their control
/// characters escaped visibly: none raw (they reach a terminal that shows the file, and
/// make an SVG invalid XML), the stderr's lines kept in its `<pre>`.
#[test]
fn the_report_holds_no_raw_control_characters() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    evil_job(d);
    let o = mw(d, &["report", "evil-1", "-o", "r.html"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let html = std::fs::read(d.join("r.html")).unwrap();
    assert_eq!(
        raw_controls(&html, false),
        b"",
        "raw control characters in the HTML"
    );
    let html = String::from_utf8(html).unwrap();
    assert!(
        html.contains("<pre>a\\u{1b}[31mred\\u{7}bell\\u{0}nul\\u{1}x\n</pre>"),
        "{html}"
    );
    assert!(
        html.contains("interface multi\\u{1b}[31m\\u{a}x."),
        "{html}"
    );
    let o = mw(d, &["report", "evil-1", "-o", "r.svg"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let svg = std::fs::read(d.join("r.svg")).unwrap();
    assert_eq!(
        raw_controls(&svg, false),
        b"",
        "raw control characters in the SVG"
    );
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.contains(">h\\u{7}\\u{a}y #0</text>"), "{svg}");
    assert!(svg.contains("(multi\\u{1b}[31m\\u{a}x)"), "{svg}");
    // The extension in any case picks the format (`.SVG` got the HTML page).
    let o = mw(d, &["report", "evil-1", "-o", "R.SVG"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let upper = std::fs::read_to_string(d.join("R.SVG")).unwrap();
    assert!(
        upper.starts_with("<svg") || upper.starts_with("<?xml"),
        "{upper:.80}"
    );
}

/// `mw report -o` never writes over the job's own files: `-o jobs/ID/journal.sqlite` once
/// replaced the journal with the HTML, and every later command called the job corrupt.
#[test]
fn the_report_never_replaces_the_jobs_own_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    evil_job(d);
    let job = d.join("jobs/evil-1");
    std::os::unix::fs::symlink(job.join("journal.sqlite"), d.join("link.html")).unwrap();
    for out in [
        "jobs/evil-1/journal.sqlite",
        "jobs/evil-1/job.toml",
        "jobs/evil-1/logs/task-1.1.stderr",
        "link.html",
    ] {
        let before = std::fs::read(d.join(out)).unwrap();
        let o = mw(d, &["report", "evil-1", "-o", out]);
        assert_eq!(o.code, 2, "-o {out}: {}", o.stderr);
        assert!(o.stderr.contains("the job's own files"), "{}", o.stderr);
        assert_eq!(std::fs::read(d.join(out)).unwrap(), before, "-o {out}");
    }
    // The default place, written twice, and a new file in the job directory are fine.
    for args in [
        &["report", "evil-1"][..],
        &["report", "evil-1"],
        &["report", "evil-1", "-o", "jobs/evil-1/again.svg"],
    ] {
        let o = mw(d, args);
        assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
    }
    assert!(job.join("report.html").is_file() && job.join("again.svg").is_file());
    let o = mw(d, &["status", "evil-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// Runs `mw ARGS` on a terminal (`script`, from util-linux, gives it one); returns what the
/// terminal got.
fn mw_on_a_terminal(d: &Path, args: &str) -> Vec<u8> {
    let cmd = format!(
        "MW_JOBS_DIR={} {} {args}",
        d.join("jobs").display(),
        mw_tests::bin("mw").display()
    );
    let tty = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(d)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) runs mw on a terminal");
    assert!(
        tty.status.success(),
        "{}",
        String::from_utf8_lossy(&tty.stdout)
    );
    tty.stdout
}

/// `mw results --format csv` on a terminal escapes the control characters of the task's
/// data (its output, its error's stderr tail, its host), as `mw logs` does; into a pipe the
/// cells are the data, byte for byte. JSON lines escape them as JSON does, everywhere.
#[test]
fn results_as_csv_on_a_terminal_are_escaped_and_raw_in_a_pipe() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    evil_job(d);
    let shown = mw_on_a_terminal(d, "results evil-1 --format csv");
    assert_eq!(raw_controls(&shown, true), b"", "{shown:?}");
    let shown = String::from_utf8_lossy(&shown);
    for escaped in [
        r"a\u{1b}[31mb\u{7}",
        r"a\u{1b}[31mred\u{7}bell\u{0}nul\u{1}x",
        r"h\u{7}",
    ] {
        assert!(shown.contains(escaped), "no {escaped} in {shown:?}");
    }
    let piped = mw(d, &["results", "evil-1", "--format", "csv"]);
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert!(
        piped.stdout.contains("a\u{1b}[31mb\u{7}")
            && piped
                .stdout
                .contains("a\u{1b}[31mred\u{7}bell\u{0}nul\u{1}x"),
        "{:?}",
        piped.stdout
    );
    let jsonl = mw_on_a_terminal(d, "results evil-1");
    assert_eq!(raw_controls(&jsonl, true), b"", "{jsonl:?}");
}

/// `mw status`, the table and one job, shows what the journal holds (a job's name and
/// interface, a task's host) and the job's directory escaped and on one line: a forged
/// name once cleared the terminal and broke the table's rows.
#[test]
fn status_shows_the_journals_text_escaped_on_one_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    evil_job(d);
    let table = mw(d, &["status"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert_eq!(
        raw_controls(table.stdout.as_bytes(), false),
        b"",
        "{:?}",
        table.stdout
    );
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("evil-1"))
        .unwrap_or_else(|| panic!("{}", table.stdout));
    assert!(
        row.contains(r"\u{1b}[2J\u{7}n\u{a}ame") && row.contains(r"multi\u{1b}[31m\u{a}x"),
        "{row}"
    );
    assert!(row.contains("finished with failures"), "{row}");
    let one = mw(d, &["status", "evil-1"]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert_eq!(
        raw_controls(one.stdout.as_bytes(), false),
        b"",
        "{:?}",
        one.stdout
    );
    assert!(
        one.stdout.contains("interface  multi\\u{1b}[31m\\u{a}x\n"),
        "{}",
        one.stdout
    );
    assert!(one.stdout.contains("s  h\\u{7}\\u{a}y\n"), "{}", one.stdout);
    // The same on a terminal (the table is laid out to its width there).
    let shown = mw_on_a_terminal(d, "status");
    assert_eq!(raw_controls(&shown, true), b"", "{shown:?}");
    assert!(
        String::from_utf8_lossy(&shown).contains(r"\u{1b}[2J\u{7}n\u{a}ame"),
        "{shown:?}"
    );
}

/// A local task's stderr log keeps the documented 1 MiB (`mw run --help`), its tail, and
/// says that it was cut, as a cut stdout log does (it once kept 64 KiB without a word).
#[test]
fn a_local_tasks_stderr_log_keeps_the_cap_and_says_it_was_cut() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(
        d,
        "chatty.sh",
        r"head -c 1500000 /dev/zero | tr '\000' e >&2; printf END >&2; exit 2",
    );
    std::fs::write(
        d.join("chatty.toml"),
        "name = \"chatty\"\nworkers = 1\n[program]\npath = \"chatty.sh\"\n[inputs]\nlist = [0]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "-q", "chatty.toml"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let log = mw(d, &["logs", "chatty-1", "0", "--stream", "stderr"]);
    assert_eq!(log.code, 0, "{}", log.stderr);
    let marker = "[mw: cut at the log size cap]\n";
    assert!(
        log.stdout.starts_with(&format!("{marker}eee")),
        "{:?}",
        &log.stdout[..log.stdout.len().min(80)]
    );
    assert!(log.stdout.ends_with("eeeEND"));
    assert_eq!(log.stdout.len(), marker.len() + 1024 * 1024);
}
