//! End-to-end tests of the job-management commands over the real `mw` binary and its SQLite
//! journal: `mw submit`, `status` (table and `--json`), `results` (jsonl, csv, `--failed`),
//! `cancel` (job and `--task`), `wait`, `resume` (idempotent) and `report`; and the journal's
//! refusal of corrupt, truncated and foreign files (clear error, nothing deleted).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use std::path::{Path, PathBuf};

use mw_tests::{script, MwOut as Out};

/// Runs `mw ARGS` in `dir` with MW_JOBS_DIR=dir/jobs.
fn mw(dir: &Path, args: &[&str]) -> Out {
    mw_tests::run_mw(dir, args)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{s}"))
}

fn jsonl(s: &str) -> Vec<serde_json::Value> {
    s.lines().map(json).collect()
}

/// A job whose tasks echo their input, except input 1 which fails.
fn finished_job(d: &Path) {
    script(
        d,
        "t.sh",
        r#"i=$(cat); if [ "$i" = 1 ]; then echo "one fails" >&2; exit 4; fi; echo "{\"v\":$i}""#,
    );
    std::fs::write(
        d.join("job.toml"),
        "name = \"fin\"\nworkers = 2\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [0, 1, 2, 3]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "job.toml", "-q", "-o", "run.jsonl"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
}

/// A job whose tasks block until `gate` exists.
fn gated_job(d: &Path, name: &str, tasks: usize) {
    script(
        d,
        "gate.sh",
        r#"i=$(cat); while [ ! -e "$GATE" ]; do sleep 0.02; done; echo "$i""#,
    );
    std::fs::write(
        d.join(format!("{name}.toml")),
        format!(
            "name = \"{name}\"\nworkers = 2\nenv = {{ GATE = \"{}\" }}\n[program]\npath = \"gate.sh\"\n[inputs.sweep]\ni = {{ start = 0, end = {tasks} }}\n",
            d.join("gate").display()
        ),
    )
    .unwrap();
}

fn submit(d: &Path, file: &str, extra: &[&str]) -> (String, PathBuf) {
    let mut args = vec!["submit", file];
    args.extend_from_slice(extra);
    let o = mw(d, &args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut parts = o.stdout.trim().split('\t');
    let id = parts.next().unwrap().to_string();
    let dir = PathBuf::from(parts.next().unwrap());
    assert!(dir.join("journal.sqlite").is_file());
    (id, dir)
}

fn status_json(d: &Path, id: &str) -> serde_json::Value {
    let o = mw(d, &["status", id, "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    json(&o.stdout)
}

/// Polls `mw status JOB --json` until `pred` holds (bounded).
fn poll(d: &Path, id: &str, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..20_000 {
        if pred(&status_json(d, id)) {
            return;
        }
    }
    panic!("{id}: never reached: {what}");
}

#[test]
fn status_results_report_and_resume_of_a_finished_job() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    finished_job(d);

    // Table of all jobs.
    let o = mw(d, &["status"]);
    assert_eq!(o.code, 0);
    let row = o.stdout.lines().find(|l| l.starts_with("fin-1")).unwrap();
    assert!(row.contains("multicore"), "{row}");
    assert!(row.contains("finished with failures"), "{row}");
    // All jobs as one JSON document.
    let o = mw(d, &["status", "--json"]);
    let all = json(&o.stdout);
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(all["jobs"][0]["id"], "fin-1");
    assert_eq!(all["jobs"][0]["counts"]["done"], 3);
    assert_eq!(all["jobs"][0]["counts"]["failed"], 1);
    // One job.
    let one = status_json(d, "fin-1");
    assert_eq!(one["job"]["tasks"], 4);
    assert_eq!(one["failed"][0]["task"], 1);
    assert!(one["failed"][0]["error"]
        .as_str()
        .unwrap()
        .contains("one fails"));
    let o = mw(d, &["status", "fin-1"]);
    assert!(
        o.stdout.contains("failed or cancelled tasks:"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("task 1"), "{}", o.stdout);

    // Results: the journal's lines equal what `mw run` wrote.
    let o = mw(d, &["results", "fin-1"]);
    assert_eq!(o.code, 0);
    let from_journal = jsonl(&o.stdout);
    let from_run = jsonl(&std::fs::read_to_string(d.join("run.jsonl")).unwrap());
    assert_eq!(from_journal.len(), 4);
    for (a, b) in from_journal.iter().zip(&from_run) {
        for k in ["task", "state", "input", "output", "exit"] {
            assert_eq!(a[k], b[k], "field {k}");
        }
    }
    // The failed task reads the same live and from the journal, field for field (one
    // conversion: exit text, host, attempts, error and times).
    assert_eq!(from_run[1]["state"], "failed");
    assert_eq!(from_journal[1], from_run[1]);
    assert_eq!(from_journal[2]["output"], serde_json::json!({"v": 2}));
    let o = mw(d, &["results", "fin-1", "--failed"]);
    let failed = jsonl(&o.stdout);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["task"], 1);
    // CSV: parsed with the csv crate; inputs and outputs flattened into columns, times in
    // RFC 3339.
    let o = mw(d, &["results", "fin-1", "--format", "csv"]);
    let mut r = csv::Reader::from_reader(o.stdout.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
    };
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 4, "{}", o.stdout);
    assert_eq!(&rows[2][col("task")], "2");
    assert_eq!(&rows[2][col("state")], "done");
    assert_eq!(&rows[2][col("input")], "2");
    assert_eq!(&rows[2][col("output.v")], "2");
    assert_eq!(&rows[1][col("state")], "failed");
    assert_eq!(&rows[1][col("output.v")], "");
    assert!(rows[1][col("error")].contains("one fails"), "{:?}", rows[1]);
    let started = &rows[2][col("started")];
    assert!(started.ends_with('Z') && started.contains('T'), "{started}");
    let o = mw(d, &["results", "fin-1", "--format", "csv", "--failed"]);
    let mut r = csv::Reader::from_reader(o.stdout.as_bytes());
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 1, "{}", o.stdout);
    assert_eq!(&rows[0][0], "1");
    // One task's result.
    let o = mw(d, &["results", "fin-1", "--task", "2"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(jsonl(&o.stdout), vec![from_journal[2].clone()]);
    let o = mw(d, &["results", "fin-1", "--task", "9"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("no task 9"), "{}", o.stderr);

    // wait on a finished job with a failure: exit 1.
    assert_eq!(mw(d, &["wait", "fin-1"]).code, 1);

    // Resume of a finished job, twice: nothing changes; exit 1 because a task failed.
    let journal = d.join("jobs/fin-1/journal.sqlite");
    for _ in 0..2 {
        let o = mw(d, &["resume", "fin-1"]);
        assert_eq!(o.code, 1, "{}", o.stderr);
        assert!(o.stderr.contains("nothing to resume"), "{}", o.stderr);
        assert_eq!(jsonl(&mw(d, &["results", "fin-1"]).stdout), from_journal);
    }
    assert!(journal.is_file());

    // Report: HTML with an <svg> holding one timeline rect per finished task.
    let o = mw(d, &["report", "fin-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let html = std::fs::read_to_string(d.join("jobs/fin-1/report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg"));
    let timeline_rects = html.matches("<title>task ").count();
    assert_eq!(timeline_rects, 4, "{html}");
    for i in 0..4 {
        assert!(html.contains(&format!("<title>task {i} ")), "task {i}");
    }
    let o = mw(d, &["report", "fin-1", "-o", "r.svg"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let svg = std::fs::read_to_string(d.join("r.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<title>task ").count(), 4);
}

#[test]
fn submit_wait_success() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "ok", 5);
    std::fs::write(d.join("gate"), "").unwrap();
    let (id, dir) = submit(d, "ok.toml", &[]);
    assert_eq!(id, "ok-1");
    assert_eq!(dir, d.join("jobs/ok-1"));
    let o = mw(d, &["wait", &id]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = jsonl(&mw(d, &["results", &id]).stdout);
    assert_eq!(r.len(), 5);
    assert!(r.iter().all(|l| l["state"] == "done"));
    assert_eq!(status_json(d, &id)["job"]["state"], "finished");
    // The detached master logs to master.log (info level, timestamped lines).
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap();
    assert!(log.contains("resuming job ok-1"), "master.log: {log}");
    assert!(
        log.contains("every task has an outcome"),
        "master.log: {log}"
    );
}

/// The commands `mw status JOB` suggests for its failed tasks work: a job under another
/// jobs directory is named by its path (its bare id was named, which `mw retry` could not
/// find), and while its master runs, `mw retry` (which refuses a running job) is suggested
/// for once the job has ended.
#[test]
fn the_commands_status_suggests_work_as_printed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "gated", 3);
    let (id, dir) = submit(d, "gated.toml", &["--jobs-dir", "elsewhere"]);
    let at = dir.display().to_string();
    let o = mw(d, &["cancel", &at, "--task", "0"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    poll(d, &at, "task 0 cancelled", |v| {
        v["job"]["counts"]["cancelled"] == 1 && v["job"]["state"] == "running"
    });
    let o = mw(d, &["status", &at]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let hint = o.stdout.lines().last().unwrap();
    assert!(
        hint.contains(&format!("once the job has ended (mw wait): mw retry {at})")),
        "{hint}"
    );
    assert!(!hint.contains(&format!(" {id} ")), "{hint}");
    std::fs::write(d.join("gate"), "").unwrap();
    let o = mw(d, &["wait", &at]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let o = mw(d, &["status", &at]);
    let hint = o.stdout.lines().last().unwrap().to_string();
    let suggested = |cmd: &str| -> Vec<String> {
        let start = hint
            .find(cmd)
            .unwrap_or_else(|| panic!("no `{cmd}` in {hint}"));
        hint[start..]
            .split([';', ')'])
            .next()
            .unwrap()
            .split(' ')
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    for cmd in ["mw results", "mw retry"] {
        let args = suggested(cmd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = mw(d, &args);
        assert_eq!(o.code, 0, "`{cmd}` as suggested in `{hint}`: {}", o.stderr);
    }
}

/// The commands `mw run`'s summary suggests work as printed for a job under another jobs
/// directory: they named its bare id, which `mw results` then did not find ('no job').
#[test]
fn the_commands_the_run_summary_suggests_work_as_printed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "fail.sh", "cat > /dev/null\nexit 4");
    std::fs::write(
        d.join("f.toml"),
        "name = \"f\"\n[program]\npath = \"fail.sh\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "f.toml", "-q", "--jobs-dir", "elsewhere"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let r = run_suggested(d, &o.stderr, "mw results ");
    assert_eq!(jsonl(&r.stdout).len(), 1, "{}", r.stdout);
    // `mw wait`'s own hint too (it repeated the id as typed, without --jobs-dir).
    let w = mw(d, &["wait", "f-1", "--jobs-dir", "elsewhere"]);
    assert_eq!(w.code, 1, "{}", w.stderr);
    run_suggested(d, &w.stderr, "mw results ");
}

/// Runs, as printed, the first command in backquotes starting with `start` in `text`, and
/// expects it to succeed.
fn run_suggested(d: &Path, text: &str, start: &str) -> Out {
    let at = text
        .find(&format!("`{start}"))
        .unwrap_or_else(|| panic!("no `{start}…` in: {text}"));
    let cmd = text[at + 1..].split('`').next().unwrap();
    let args: Vec<&str> = cmd.split(' ').skip(1).collect();
    let r = mw(d, &args);
    assert_eq!(r.code, 0, "`{cmd}` as suggested: {}", r.stderr);
    r
}

#[test]
fn cancel_one_task_then_the_job_of_a_running_submitted_job() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "gated", 6);
    let (id, _) = submit(d, "gated.toml", &[]);
    // Two tasks are running (blocked on the gate), the rest queued.
    poll(d, &id, "2 running", |v| v["job"]["counts"]["running"] == 2);
    assert_eq!(status_json(d, &id)["job"]["state"], "running");

    let o = mw(d, &["cancel", &id, "--task", "0"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = mw(d, &["cancel", &id, "--task", "99"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("no task 99"), "{}", o.stderr);
    poll(d, &id, "task 0 cancelled", |v| {
        v["failed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["task"] == 0 && f["state"] == "cancelled")
    });
    let v = status_json(d, &id);
    assert_eq!(v["job"]["counts"]["cancelled"], 1);
    assert_eq!(v["job"]["counts"]["done"], 0);

    let o = mw(d, &["cancel", &id]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = mw(d, &["wait", &id]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let v = status_json(d, &id);
    assert_eq!(v["job"]["counts"]["cancelled"], 6, "{v}");
    // Cancelled is not failed.
    assert_eq!(v["job"]["state"], "cancelled");
    assert_eq!(v["job"]["counts"]["failed"], 0, "{v}");
    // Cancelling a task that already has an outcome says so, not "stops it".
    let o = mw(d, &["cancel", &id, "--task", "1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("already finished"), "{}", o.stderr);
    assert!(!o.stderr.contains("within a second"), "{}", o.stderr);
    let o = mw(d, &["status", &id]);
    assert!(o.stdout.contains("cancelled"), "{}", o.stdout);
    let failed = jsonl(&mw(d, &["results", &id, "--failed"]).stdout);
    assert_eq!(failed.len(), 6);
    assert!(failed.iter().all(|l| l["state"] == "cancelled"));
}

#[test]
fn submitting_the_same_unfinished_job_again_asks_for_new() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "twice", 3);
    let (id, _) = submit(d, "twice.toml", &[]);
    let o = mw(d, &["submit", "twice.toml"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--new"), "{}", o.stderr);
    assert!(o.stderr.contains(&id), "{}", o.stderr);
    assert!(!d.join("jobs/twice-2").exists());
    let (id2, _) = submit(d, "twice.toml", &["--new"]);
    assert_eq!(id2, "twice-2");
    std::fs::write(d.join("gate"), "").unwrap();
    assert_eq!(mw(d, &["wait", &id]).code, 0);
    assert_eq!(mw(d, &["wait", &id2]).code, 0);
    // Finished now: a plain submit is accepted again.
    let (id3, _) = submit(d, "twice.toml", &[]);
    assert_eq!(mw(d, &["wait", &id3]).code, 0);
}

/// Runs status/results/resume/wait/report on `job` and asserts each fails naming `file`.
fn refused_everywhere(d: &Path, job: &str, file: &Path, why: &str) {
    for args in [
        vec!["status", job],
        vec!["status", job, "--json"],
        vec!["results", job],
        vec!["resume", job],
        vec!["wait", job],
        vec!["report", job],
        vec!["cancel", job],
    ] {
        let o = mw(d, &args);
        assert_eq!(o.code, 2, "mw {args:?}: {}", o.stderr);
        assert!(
            o.stderr.contains(&file.display().to_string()),
            "mw {args:?} does not name {}: {}",
            file.display(),
            o.stderr
        );
        assert!(o.stderr.contains(why), "mw {args:?}: {}", o.stderr);
    }
}

/// A finished job's journal with every page in the database file: a master that exits
/// while another of its threads still holds the journal leaves the last commits in the
/// -wal file (which SQLite replays on the next open), so the pages a test spoils or cuts
/// off would not be in the file yet, and the journal would still read whole.
fn fresh_finished(d: &Path) -> PathBuf {
    finished_job(d);
    let journal = d.join("jobs/fin-1/journal.sqlite");
    let conn = rusqlite::Connection::open(&journal).unwrap();
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0, "the checkpoint was blocked");
    drop(conn);
    journal
}

#[test]
fn corrupted_journal_is_refused_and_kept() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let journal = fresh_finished(d);
    let mut bytes = std::fs::read(&journal).unwrap();
    assert!(bytes.len() >= 3 * 4096, "journal of {} bytes", bytes.len());
    // Overwrite the middle pages (b-tree pages of the tables) with garbage.
    let mid = bytes.len() / 2;
    for b in &mut bytes[4096..mid.max(8192)] {
        *b = 0xA5;
    }
    std::fs::write(&journal, &bytes).unwrap();
    refused_everywhere(d, "fin-1", &journal, "corrupt");
    // Listing every job reports the bad one instead of failing.
    let o = mw(d, &["status", "--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let all = json(&o.stdout);
    assert!(all["errors"][0]
        .as_str()
        .unwrap()
        .contains(&journal.display().to_string()));
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        bytes,
        "the journal changed"
    );
}

#[test]
fn truncated_journal_is_refused_and_kept() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let journal = fresh_finished(d);
    let bytes = std::fs::read(&journal).unwrap();
    let cut = &bytes[..bytes.len() / 2];
    std::fs::write(&journal, cut).unwrap();
    refused_everywhere(d, "fin-1", &journal, "corrupt");
    assert_eq!(std::fs::read(&journal).unwrap(), cut);
    // Cut inside the header: not even a database.
    std::fs::write(&journal, &bytes[..50]).unwrap();
    refused_everywhere(d, "fin-1", &journal, "journal");
    assert_eq!(std::fs::read(&journal).unwrap(), &bytes[..50]);
}

#[test]
fn non_journal_files_and_dirs_are_refused_and_kept() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // A text file named journal.sqlite.
    let fake = d.join("fake");
    std::fs::create_dir(&fake).unwrap();
    let text = "this is not a database\n".repeat(100);
    std::fs::write(fake.join("journal.sqlite"), &text).unwrap();
    refused_everywhere(
        d,
        fake.to_str().unwrap(),
        &fake.join("journal.sqlite"),
        "not an mw journal",
    );
    assert_eq!(
        std::fs::read_to_string(fake.join("journal.sqlite")).unwrap(),
        text
    );
    // A random directory with files in it.
    let random = d.join("random");
    std::fs::create_dir(&random).unwrap();
    std::fs::write(random.join("keep.txt"), "keep me").unwrap();
    for args in [
        vec!["status", random.to_str().unwrap()],
        vec!["results", random.to_str().unwrap()],
        vec!["resume", random.to_str().unwrap()],
        vec!["cancel", random.to_str().unwrap()],
    ] {
        let o = mw(d, &args);
        assert_eq!(o.code, 2, "mw {args:?}: {}", o.stderr);
        assert!(
            o.stderr.contains(&random.display().to_string()),
            "{}",
            o.stderr
        );
        assert!(o.stderr.contains("no journal"), "{}", o.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(random.join("keep.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(std::fs::read_dir(&random).unwrap().count(), 1);
    // An unknown job id.
    let o = mw(d, &["status", "nosuch-1"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("no job `nosuch-1`"), "{}", o.stderr);
}

#[test]
fn a_journal_from_a_newer_mw_is_refused_and_kept() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let journal = fresh_finished(d);
    {
        let conn = rusqlite::Connection::open(&journal).unwrap();
        conn.execute(
            "UPDATE meta SET value = '999' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        // Fold the WAL back so the file alone carries the change.
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let before = std::fs::read(&journal).unwrap();
    refused_everywhere(d, "fin-1", &journal, "journal schema 999 is newer");
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        before,
        "the journal changed"
    );
}

/// A journal whose rows were edited into impossible values (valid SQLite, forged content):
/// a negative task index is refused as corruption, never wrapped into a huge task number; an
/// attempt count beyond u32 is clamped, not truncated into a small one.
#[test]
fn forged_task_rows_are_refused_or_clamped_not_wrapped() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let journal = fresh_finished(d);
    let conn = rusqlite::Connection::open(&journal).unwrap();
    conn.execute("UPDATE tasks SET attempts = 4294967297 WHERE idx = 2", [])
        .unwrap();
    drop(conn);
    let o = mw(d, &["results", "fin-1"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines = jsonl(&o.stdout);
    let two = lines.iter().find(|l| l["task"] == 2).unwrap();
    assert_eq!(two["attempts"], u32::MAX, "{two}");
    let o = mw(d, &["results", "fin-1", "--task", "2"]);
    assert_eq!(jsonl(&o.stdout)[0]["attempts"], u32::MAX, "{}", o.stdout);

    let conn = rusqlite::Connection::open(&journal).unwrap();
    conn.execute("UPDATE tasks SET idx = -5 WHERE idx = 3", [])
        .unwrap();
    drop(conn);
    let o = mw(d, &["results", "fin-1"]);
    assert_eq!(o.code, 2, "{}", o.stdout);
    assert!(o.stderr.contains("corrupt"), "{}", o.stderr);
    assert!(o.stderr.contains("-5"), "{}", o.stderr);
    assert!(!o.stdout.contains("18446744073709551611"), "{}", o.stdout);

    // A failed task forged to a negative index: `mw retry` refuses the journal before it
    // writes anything (it once queued the task again and lowered the mark first).
    let conn = rusqlite::Connection::open(&journal).unwrap();
    conn.execute("UPDATE tasks SET idx = -7 WHERE idx = 1", [])
        .unwrap();
    conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    drop(conn);
    let before = std::fs::read(&journal).unwrap();
    let o = mw(d, &["retry", "fin-1", "-q"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("corrupt") && o.stderr.contains("-7"),
        "{}",
        o.stderr
    );
    assert_eq!(
        std::fs::read(&journal).unwrap(),
        before,
        "the journal changed"
    );
}

/// An unfinished job whose journal was forged to absurd numbers: an attempt count beyond
/// u32 on a queued task (the scheduler once overflowed counting the next attempt, and the
/// master hung with a dead scheduler thread) and 2^62 worker slots (once a capacity-overflow
/// panic). `mw resume` runs the task (clamped counts, 1,024 slots at most) and ends.
#[test]
fn forged_counts_of_an_unfinished_job_do_not_stop_resume() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let journal = fresh_finished(d);
    let conn = rusqlite::Connection::open(&journal).unwrap();
    conn.execute(
        "UPDATE tasks SET state = 'queued', attempts = 1099511627776, exit = NULL, error = NULL
         WHERE idx = 1",
        [],
    )
    .unwrap();
    conn.execute("UPDATE job SET workers = 4611686018427387904", [])
        .unwrap();
    drop(conn);
    // The forger also lowered the high-water mark of finished tasks (else the journal is
    // refused as having lost results).
    std::fs::remove_file(d.join("jobs/fin-1/journal.sqlite.mark")).unwrap();
    let out = std::process::Command::new("timeout")
        .args(["-k", "5", "120"])
        .arg(mw_tests::bin("mw"))
        .args(["resume", "fin-1", "-q"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Task 1 fails again (its program fails on input 1): the job ends with failures.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let o = mw(d, &["results", "fin-1", "--task", "1"]);
    let one = &jsonl(&o.stdout)[0];
    assert_eq!(one["state"], "failed", "{one}");
    assert_eq!(one["attempts"], u32::MAX, "{one}");
}

/// Printing to a full disk or a closed pipe is an error with a message (exit 2) or, for a
/// command that only prints, a quiet end (exit 0): never a panic (`println!` once panicked
/// with exit 101).
#[test]
fn report_and_man_printing_to_a_full_disk_or_a_closed_pipe() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    finished_job(d);
    for args in [vec!["report", "fin-1", "-o", "r.html"], vec!["man", "man"]] {
        let full = std::process::Command::new(mw_tests::bin("mw"))
            .args(&args)
            .current_dir(d)
            .env("MW_JOBS_DIR", d.join("jobs"))
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&full.stderr);
        assert_eq!(full.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("No space left on device"),
            "{args:?}: {stderr}"
        );
        // A reader gone before anything is written (the pipe's read end closed first).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let closed = std::process::Command::new(mw_tests::bin("mw"))
            .args(&args)
            .current_dir(d)
            .env("MW_JOBS_DIR", d.join("jobs"))
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&closed.stderr);
        assert_eq!(closed.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// A stored result that does not parse is corruption for every command that reads the row:
/// `mw results --task N` and `mw logs` once printed `"output": null` and exited 0 while
/// `mw results` refused the journal.
#[test]
fn a_corrupt_row_is_corrupt_for_one_task_too() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let journal = fresh_finished(d);
    let conn = rusqlite::Connection::open(&journal).unwrap();
    conn.execute("UPDATE tasks SET output = '{\"v\":' WHERE idx = 2", [])
        .unwrap();
    drop(conn);
    for args in [
        vec!["results", "fin-1"],
        vec!["results", "fin-1", "--task", "2"],
        vec!["logs", "fin-1", "2"],
    ] {
        let o = mw(d, &args);
        assert_eq!(o.code, 2, "{args:?}: {}", o.stdout);
        assert!(o.stderr.contains("corrupt"), "{args:?}: {}", o.stderr);
    }
    // Another task's row is still read.
    let o = mw(d, &["results", "fin-1", "--task", "3"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// Results that cannot be written (a full disk) end `mw run` with an error naming where they
/// went, why, and where they are kept (they once ended with a bare "writing results failed").
#[test]
fn results_to_a_full_disk_say_where_and_why() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "t.sh", "cat");
    std::fs::write(
        d.join("job.toml"),
        "name = \"full\"\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [0, 1]\n",
    )
    .unwrap();
    let o = mw(d, &["run", "job.toml", "-q", "-o", "/dev/full"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    for needle in ["/dev/full", "No space left on device", "mw results full-1"] {
        assert!(o.stderr.contains(needle), "{needle}: {}", o.stderr);
    }
    let o = mw(d, &["results", "full-1"]);
    assert_eq!(jsonl(&o.stdout).len(), 2, "{}", o.stderr);
}

/// A closed stderr (its reader gone) does not stop `mw run`: its messages are dropped and
/// the job runs to the end (`eprintln!` once panicked with exit 101 at the first message).
#[test]
fn a_closed_stderr_does_not_stop_mw_run() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "t.sh", "cat");
    std::fs::write(
        d.join("job.toml"),
        "name = \"quiet\"\n[program]\npath = \"t.sh\"\n[inputs]\nlist = [0, 1, 2]\n",
    )
    .unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(mw_tests::bin("mw"))
        .args(["run", "job.toml"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .stdin(std::process::Stdio::null())
        .stderr(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(jsonl(&String::from_utf8_lossy(&out.stdout)).len(), 3);
}

/// A stop signal ends `mw wait` (exit 130) and leaves the job running: the first SIGTERM was
/// once only noted, and `mw wait` went on waiting until a second one.
#[test]
fn sigterm_ends_mw_wait_not_the_job() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "waited", 2);
    let (id, _) = submit(d, "waited.toml", &[]);
    poll(d, &id, "two tasks running", |v| {
        v["job"]["counts"]["running"] == 2
    });
    let mut child = std::process::Command::new(mw_tests::bin("mw"))
        .args(["wait", &id, "-q"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once `mw wait` has all its handlers (the kernel's SigCgt mask shows the last signal it
    // registers: SIGHUP, or SIGTERM when SIGHUP is ignored, as under nohup; a signal between
    // two registrations of one signal is not yet a stop).
    let mask = |pid: &str, field: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                let hex = s
                    .lines()
                    .find_map(|l| l.strip_prefix(field))?
                    .trim()
                    .to_string();
                u64::from_str_radix(&hex, 16).ok()
            })
            .unwrap_or(0)
    };
    let bit = |sig: i32| 1u64 << (sig - 1);
    let last = if mask("self", "SigIgn:") & bit(libc::SIGHUP) != 0 {
        libc::SIGTERM
    } else {
        libc::SIGHUP
    };
    let t0 = std::time::Instant::now();
    while mask(&child.id().to_string(), "SigCgt:") & bit(last) == 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "mw wait never installed its handlers"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // SAFETY: kill(2) sends SIGTERM to the `mw wait` we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut code = None;
    for _ in 0..600 {
        if let Some(s) = child.try_wait().unwrap() {
            eprintln!("mw wait ended: {s:?}");
            code = s.code();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(code, Some(130), "mw wait did not end on one SIGTERM");
    // The job goes on: its master still runs the two tasks.
    assert_eq!(status_json(d, &id)["job"]["counts"]["running"], 2);
    std::fs::write(d.join("gate"), "").unwrap();
    let o = mw(d, &["wait", &id, "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// Two `mw submit`s of one job file at the same moment: one job, and the other is told so
/// (both once got a job). And a job number is never given twice: after a running job's
/// directory was moved away, the next job gets a new number (it once took the moved job's,
/// and the moved job's master went on writing into the new job's directory).
#[test]
fn submits_at_once_make_one_job_and_a_moved_jobs_number_is_not_reused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "race", 2);
    let both: Vec<_> = (0..2)
        .map(|_| mw_tests::spawn_mw(d, &["submit", "race.toml"], &[]))
        .collect();
    let outs: Vec<_> = both
        .into_iter()
        .map(|c| mw_tests::finish_within(c, std::time::Duration::from_secs(120)))
        .collect();
    let codes: Vec<_> = outs.iter().map(|o| o.status.code()).collect();
    assert!(
        codes.contains(&Some(0)) && codes.contains(&Some(2)),
        "{codes:?}: {:?}",
        outs.iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .collect::<Vec<_>>()
    );
    assert!(d.join("jobs/race-1").is_dir());
    assert!(!d.join("jobs/race-2").exists());
    // Once its master runs both tasks (a master still starting up when its directory moves
    // makes parts of it again, such as `staging`, by their paths), the running job's
    // directory moves away; the next job is number 2, not 1 again.
    poll(d, "race-1", "both tasks running", |s| {
        s["job"]["counts"]["running"] == 2
    });
    std::fs::create_dir_all(d.join("moved")).unwrap();
    std::fs::rename(d.join("jobs/race-1"), d.join("moved/race-1")).unwrap();
    let (id, _) = submit(d, "race.toml", &["--new"]);
    assert_eq!(id, "race-2");
    assert!(!d.join("jobs/race-1").exists());
    std::fs::write(d.join("gate"), "").unwrap();
    assert_eq!(mw(d, &["wait", &id]).code, 0);
}

/// Ctrl-C while `mw submit` records a large sweep: it stops there, starts no master, exits
/// 130 and says how to go on; the job waits, `recording`, for `mw resume` (it was once
/// ignored: the job was started anyway).
#[test]
fn ctrl_c_while_submit_records_starts_no_master() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(
        d.join("big.toml"),
        "name = \"big\"\n[program]\ncommand = [\"/bin/cat\"]\n[inputs.sweep]\ni = { start = 0, end = 2000000 }\n",
    )
    .unwrap();
    let child = mw_tests::spawn_mw(d, &["submit", "big.toml"], &[]);
    let journal = d.join("jobs/big-1/journal.sqlite");
    let t0 = std::time::Instant::now();
    while !journal.is_file() {
        assert!(t0.elapsed().as_secs() < 120, "the journal never appeared");
        std::thread::yield_now();
    }
    // SAFETY: kill(2) on the mw process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = mw_tests::finish_within(child, std::time::Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("mw resume big-1"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !d.join("jobs/big-1/master.log").exists(),
        "a master was started"
    );
    let v = status_json(d, "big-1");
    assert_eq!(v["job"]["master_pid"], serde_json::Value::Null, "{v}");
}

/// A detached master's `master.log` gets one short line per failed task, not the task's
/// stderr (4 KiB each: 8 MB for 2,000 failures), which the journal and the task's log keep.
#[test]
fn master_log_gets_a_line_per_failure_not_its_stderr() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(
        d,
        "noisy.sh",
        "head -c 5000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'the last words' >&2; exit 3",
    );
    std::fs::write(
        d.join("noisy.toml"),
        "name = \"noisy\"\nworkers = 2\n[program]\npath = \"noisy.sh\"\n[inputs.sweep]\ni = { start = 0, end = 50 }\n",
    )
    .unwrap();
    let (id, dir) = submit(d, "noisy.toml", &[]);
    assert_eq!(mw(d, &["wait", &id]).code, 1);
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap();
    assert!(
        log.contains("task 7: failed: task 7 failed: exit status 3"),
        "{log}"
    );
    assert!(
        !log.contains("xxxxxxxx"),
        "master.log has the tasks' stderr"
    );
    assert!(log.len() < 50 * 400, "master.log: {} bytes", log.len());
    // The stderr tail is kept where it belongs.
    let r = jsonl(&mw(d, &["results", &id]).stdout);
    assert!(r[7]["error"].as_str().unwrap().contains("the last words"));
}

/// A detached master's `master.log` is capped (here at 4096 bytes, by
/// `MW_MASTER_LOG_MAX_BYTES`): past its cap it becomes `master.log.old` and a fresh
/// `master.log` goes on. It once grew for as long as the master ran (a line per failed task).
#[test]
fn a_detached_masters_log_past_its_cap_becomes_master_log_old() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    script(d, "fail.sh", "exit 3");
    std::fs::write(
        d.join("fail.toml"),
        "name = \"fail\"\nworkers = 2\n[program]\npath = \"fail.sh\"\n[inputs.sweep]\ni = { start = 0, end = 100 }\n",
    )
    .unwrap();
    let o = mw_tests::spawn_mw(
        d,
        &["submit", "fail.toml"],
        &[("MW_MASTER_LOG_MAX_BYTES", "4096")],
    )
    .wait_with_output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let id = out.split('\t').next().unwrap().to_string();
    let dir = d.join("jobs").join(&id);
    assert_eq!(mw(d, &["wait", &id]).code, 1);
    poll(d, &id, "the master ended", |v| {
        v["job"]["master_pid"].is_null()
    });
    let old = std::fs::read_to_string(dir.join("master.log.old")).unwrap();
    assert!(old.contains("resuming job fail-1"), "{old}");
    assert!(old.len() > 4096, "master.log.old: {} bytes", old.len());
    let log = std::fs::read_to_string(dir.join("master.log")).unwrap();
    assert!(
        log.contains("the earlier lines are in master.log.old"),
        "master.log: {log}"
    );
}

/// A FIFO in the place of the journal's mark file (`journal.sqlite.mark`) is not waited on:
/// every command opens the journal and reads the mark, and `mw status` once hung there for
/// good (an open of a FIFO without a writer blocks).
#[test]
fn a_fifo_in_place_of_the_journal_mark_hangs_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    finished_job(d);
    let mark = d.join("jobs/fin-1/journal.sqlite.mark");
    std::fs::remove_file(&mark).unwrap();
    let c = std::ffi::CString::new(mark.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let out = mw_tests::finish_within(
        mw_tests::spawn_mw(d, &["status", "fin-1"], &[]),
        std::time::Duration::from_secs(60),
    );
    assert!(
        out.status.code() == Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A jobs directory that cannot be listed is an error, not "no jobs" with exit 0.
#[test]
fn status_of_a_jobs_directory_it_cannot_list_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(d.join("not-a-dir"), "").unwrap();
    let o = mw(d, &["status", "--jobs-dir", "not-a-dir"]);
    assert_eq!(o.code, 2, "{}", o.stdout);
    assert!(o.stderr.contains("cannot list the jobs"), "{}", o.stderr);
    let o = mw(d, &["status", "--jobs-dir", "none-here"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("no jobs"), "{}", o.stdout);
}

/// A finished job in a directory its reader cannot write (a clean close leaves no `-wal` or
/// `-shm`): `mw status`, `results`, `logs` and `report` read it (SQLite cannot make the
/// `-shm` a read-only open of a WAL database needs, so the journal is opened immutable). The
/// tests run as root, whom permissions do not stop, so the commands run as `nobody`
/// (`setpriv`); where that cannot be done the test says so and checks nothing more.
#[test]
fn a_finished_job_in_a_directory_it_cannot_write_is_read() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    finished_job(d);
    let job = d.join("jobs/fin-1");
    // A clean close folds every commit into the file and closes the journal's connection
    // (even while some handle of it is still held as the process exits): one file is left.
    for leftover in ["journal.sqlite-wal", "journal.sqlite-shm"] {
        assert!(
            !job.join(leftover).exists(),
            "{leftover} left by a clean close"
        );
    }
    // Readable by all, writable by root only; the report goes to a directory anyone writes.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(args)
            .current_dir(&out)
            .env("MW_JOBS_DIR", d.join("jobs"))
            .stdin(std::process::Stdio::null())
            .output()
    };
    let can_write = as_nobody(&["sh", "-c", &format!("test -w '{}'", job.display())]);
    match &can_write {
        Ok(o) if o.status.code() == Some(1) => {}
        other => {
            eprintln!(
                "SKIPPED: cannot run a command as a user who cannot write the job directory \
                 (setpriv as uid 65534: {other:?})"
            );
            return;
        }
    }
    let mw = mw_tests::bin("mw");
    let mw = mw.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec![mw];
        all.extend_from_slice(args);
        let o = as_nobody(&all).unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            !stderr.contains("corrupt") && !stderr.contains("readonly"),
            "{args:?}: {stderr}"
        );
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr,
        )
    };
    let (code, stdout, stderr) = run(&["status", "fin-1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("finished with failures"), "{stdout}");
    let (code, stdout, stderr) = run(&["status"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("fin-1")),
        "{stdout}{stderr}"
    );
    let (code, stdout, stderr) = run(&["results", "fin-1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(jsonl(&stdout).len(), 4, "{stdout}");
    let (code, stdout, stderr) = run(&["logs", "fin-1", "1", "--stream", "stderr"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "one fails\n");
    let (code, _, stderr) = run(&["report", "fin-1", "-o", "r.html"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(std::fs::read_to_string(out.join("r.html"))
        .unwrap()
        .contains("one fails"));
    // Nothing to resume, as for its owner (it said "cannot open the master lock").
    let (code, _, stderr) = run(&["resume", "fin-1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is finished (4 tasks); nothing to resume"),
        "{stderr}"
    );
    for leftover in ["journal.sqlite-wal", "journal.sqlite-shm"] {
        assert!(!job.join(leftover).exists(), "{leftover} made by a reader");
    }

    // An empty -wal beside it (a master that folded its log in, then exited with a
    // connection open) holds nothing: the journal reads as before.
    std::fs::write(job.join("journal.sqlite-wal"), b"").unwrap();
    let (code, stdout, stderr) = run(&["status", "fin-1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("finished with failures"), "{stdout}");
    // With a -wal file beside the journal that holds something (committed results, perhaps,
    // which an immutable open would not read) the reader is told why it cannot read, not
    // "corrupt".
    std::fs::write(job.join("journal.sqlite-wal"), b"a frame").unwrap();
    let o = as_nobody(&[mw, "status", "fin-1"]).unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not writable") && stderr.contains("-wal") && !stderr.contains("corrupt"),
        "{stderr}"
    );
}

/// `mw retry` killed right after its requeue committed (`MW_CRASH_AT=retry-requeued`): the
/// journal's high-water mark of final rows already went down with it, so the job is not
/// taken for one that lost results. Before, the mark was lowered after the commit, and a
/// retry killed between the two left a mark above the journal: `mw status`, `mw results`
/// and `mw resume` all refused the job ("the journal lost committed results"). Now
/// `mw resume` runs the requeued task, and every task is reported exactly once.
#[test]
fn retry_killed_after_its_requeue_leaves_a_job_every_command_reads() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    finished_job(d);
    let out = std::process::Command::new(mw_tests::bin("mw"))
        .args(["retry", "fin-1", "-q"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .env("MW_CRASH_AT", "retry-requeued")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the crash point must kill mw retry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Task 1 is queued again, the three others still done.
    let s = status_json(d, "fin-1");
    let counts = &s["job"]["counts"];
    assert_eq!(counts["done"], 3, "{s}");
    assert_eq!(counts["failed"], 0, "{s}");
    let o = mw(d, &["results", "fin-1"]);
    assert_eq!(jsonl(&o.stdout).len(), 3, "{}{}", o.stdout, o.stderr);
    // The resume runs it (it fails again: the program fails input 1 every time).
    let o = mw(d, &["resume", "fin-1", "-q"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let o = mw(d, &["results", "fin-1"]);
    let lines = jsonl(&o.stdout);
    let tasks: Vec<u64> = lines.iter().map(|l| l["task"].as_u64().unwrap()).collect();
    assert_eq!(tasks, [0, 1, 2, 3], "{}", o.stdout);
    assert_eq!(lines[1]["state"], "failed", "{}", lines[1]);
    assert_eq!(lines[1]["attempts"], 2, "{}", lines[1]);
    let counts = &status_json(d, "fin-1")["job"]["counts"];
    assert_eq!(counts["done"], 3, "{counts}");
    assert_eq!(counts["failed"], 1, "{counts}");
}

/// `mw cancel --task 0` of a running task, and the master killed right after it
/// acknowledged the request (`MW_CRASH_AT=cancel-acknowledged`): what `mw cancel` said
/// holds after `mw resume`, task 0 is cancelled, not run again.
#[test]
fn master_killed_after_acknowledging_a_cancel_keeps_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gated_job(d, "acked", 2);
    let o = std::process::Command::new(mw_tests::bin("mw"))
        .args(["submit", "acked.toml"])
        .current_dir(d)
        .env("MW_JOBS_DIR", d.join("jobs"))
        .env("MW_CRASH_AT", "cancel-acknowledged")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = "acked-1";
    poll(d, id, "2 running", |v| v["job"]["counts"]["running"] == 2);
    let o = mw(d, &["cancel", id, "--task", "0"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("cancelled task 0"), "{}", o.stderr);
    // The master is gone (killed at the crash point).
    poll(d, id, "the master gone", |v| {
        v["job"]["master"].is_null() || v["job"]["state"] != "running"
    });
    std::fs::write(d.join("gate"), "").unwrap();
    let o = mw(d, &["resume", id, "-q"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let v = status_json(d, id);
    assert_eq!(v["job"]["counts"]["cancelled"], 1, "{v}");
    assert_eq!(v["job"]["counts"]["done"], 1, "{v}");
    let lines = jsonl(&mw(d, &["results", id]).stdout);
    assert_eq!(lines[0]["state"], "cancelled", "{}", lines[0]);
}
