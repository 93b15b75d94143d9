//! End-to-end tests of `mw run` over the real binary: job-file errors (each names the file,
//! line:column and field, exits 2, never panics), inputs (inline, JSON lines, sweeps),
//! templated args/env/outputs, output files, `--output`, result order, progress lines,
//! `--help` and the exit code of a failing task.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mw_tests::{script, MwOut as Out};

/// Runs `mw ARGS` in `dir` with MW_JOBS_DIR=dir/jobs.
fn mw(dir: &Path, args: &[&str]) -> Out {
    mw_tests::run_mw(dir, args)
}

fn lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes `job.toml` with `text` next to an `echo.sh` task and runs it; expects exit 2 and
/// an error naming `job.toml:LINE:COL` and every one of `needles`.
fn bad_job(text: &str, line_col: &str, needles: &[&str]) {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "echo.sh", "cat");
    std::fs::write(d.path().join("job.toml"), text).unwrap();
    let o = mw(d.path(), &["run", "job.toml"]);
    assert_eq!(o.code, 2, "job:\n{text}\nstderr: {}", o.stderr);
    let want = format!("job.toml:{line_col}");
    assert!(
        o.stderr.contains(&want),
        "expected `{want}` in: {}",
        o.stderr
    );
    for n in needles {
        assert!(o.stderr.contains(n), "expected `{n}` in: {}", o.stderr);
    }
    assert!(
        o.stdout.is_empty(),
        "no results for a bad job: {}",
        o.stdout
    );
    // Nothing was started: no job directory.
    let jobs = d.path().join("jobs");
    assert!(
        !jobs.exists() || std::fs::read_dir(&jobs).unwrap().next().is_none(),
        "a bad job file created a job directory"
    );
}

#[test]
fn bad_toml_syntax() {
    bad_job("[program\npath = \"echo.sh\"\n", "1:9", &["table header"]);
}

#[test]
fn unknown_field() {
    bad_job(
        "[program]\npath = \"echo.sh\"\nbogus = 1\n[inputs]\nlist = [1]\n",
        "3:1",
        &["unknown field `bogus`"],
    );
}

/// A misspelt key in a sweep range (`stpe`) is an error, not a range of step 1 (it once ran
/// 10 tasks instead of 2).
#[test]
fn misspelt_sweep_range_key() {
    bad_job(
        "[program]\npath = \"echo.sh\"\n[inputs.sweep]\na = { start = 0, end = 10, stpe = 5 }\n",
        "4:5",
        &["inputs.sweep.a", "integer range"],
    );
}

#[test]
fn wrong_type() {
    bad_job(
        "workers = \"many\"\n[program]\npath = \"echo.sh\"\n[inputs]\nlist = [1]\n",
        "1:11",
        &["field `workers`", "invalid type"],
    );
    bad_job(
        "[program]\npath = 5\n[inputs]\nlist = [1]\n",
        "2:8",
        &["field `program.path`", "invalid type"],
    );
}

#[test]
fn missing_program_section() {
    bad_job(
        "[inputs]\nlist = [1]\n",
        "1:1",
        &["missing field `program`"],
    );
}

#[test]
fn stream_mode_restrictions() {
    bad_job(
        "[program]\npath = \"echo.sh\"\nmode = \"streaming\"\n[inputs]\nlist = [1]\n",
        "3:8",
        &["program.mode", "\"process\" or \"stream\""],
    );
    bad_job(
        "outputs = [\"o.txt\"]\n[program]\npath = \"echo.sh\"\nmode = \"stream\"\n[inputs]\nlist = [1]\n",
        "1:12",
        &["outputs", "cannot declare output files"],
    );
    bad_job(
        "[program]\npath = \"echo.sh\"\nmode = \"stream\"\nstdout = \"text\"\n[inputs]\nlist = [1]\n",
        "4:10",
        &["program.stdout", "one JSON line"],
    );
    bad_job(
        "[program]\npath = \"echo.sh\"\n[reduce]\npath = \"echo.sh\"\nmode = \"stream\"\n[inputs]\nlist = [1]\n",
        "5:8",
        &["reduce.mode", "no mode"],
    );
}

#[test]
fn missing_program_file() {
    bad_job(
        "[program]\npath = \"nope.sh\"\n[inputs]\nlist = [1]\n",
        "2:8",
        &["field `program.path`", "nope.sh", "does not exist"],
    );
}

#[test]
fn non_executable_program() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("plain.sh"), "#!/bin/sh\ncat\n").unwrap();
    std::fs::set_permissions(
        d.path().join("plain.sh"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(
        d.path().join("job.toml"),
        "[program]\npath = \"plain.sh\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let o = mw(d.path(), &["run", "job.toml"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("job.toml:2:8"), "{}", o.stderr);
    assert!(o.stderr.contains("field `program.path`"), "{}", o.stderr);
    assert!(o.stderr.contains("not executable"), "{}", o.stderr);
}

#[test]
fn empty_sweep_and_empty_list() {
    bad_job(
        "[program]\npath = \"echo.sh\"\n[inputs.sweep]\nx = []\n",
        "4:5",
        &["field `inputs.sweep.x`", "empty"],
    );
    bad_job(
        "[program]\npath = \"echo.sh\"\n[inputs]\nlist = []\n",
        "3:1",
        &["field `inputs.list`", "empty"],
    );
}

#[test]
fn bad_template() {
    bad_job(
        "args = [\"{{ input.\"]\n[program]\npath = \"echo.sh\"\n[inputs]\nlist = [1]\n",
        "1:9",
        &["field `args[0]`", "bad template"],
    );
    bad_job(
        "env = { A = \"{% if %}\" }\n[program]\npath = \"echo.sh\"\n[inputs]\nlist = [1]\n",
        "1:13",
        &["field `env.A`", "bad template"],
    );
    // A template that parses but cannot render for an input.
    bad_job(
        "args = [\"{{ input.nope }}\"]\n[program]\npath = \"echo.sh\"\n[inputs]\nlist = [{a = 1}]\n",
        "1:9",
        &["field `args[0]`", "task 0", "input.nope"],
    );
}

#[test]
fn unknown_interface() {
    bad_job(
        "interface = \"slurm\"\n[program]\npath = \"echo.sh\"\n[inputs]\nlist = [1]\n",
        "1:13",
        &["field `interface`", "slurm"],
    );
}

#[test]
fn bad_name() {
    bad_job(
        "name = \"bad name/..\"\n[program]\npath = \"echo.sh\"\n[inputs]\nlist = [1]\n",
        "1:1",
        &["field `name`", "bad name/.."],
    );
    // --name is checked too: it becomes a directory name.
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "echo.sh", "cat");
    std::fs::write(
        d.path().join("job.toml"),
        "[program]\npath = \"echo.sh\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let o = mw(d.path(), &["run", "job.toml", "--name", "../escape"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("../escape"), "{}", o.stderr);
    assert!(!d.path().join("escape-1").exists());
}

#[test]
fn bad_jsonl_line_names_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "echo.sh", "cat");
    std::fs::write(d.path().join("in.jsonl"), "{\"a\": 1}\n\n{\"a\": \n").unwrap();
    std::fs::write(
        d.path().join("job.toml"),
        "[program]\npath = \"echo.sh\"\n[inputs]\nfile = \"in.jsonl\"\n",
    )
    .unwrap();
    let o = mw(d.path(), &["run", "job.toml"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("in.jsonl:3:"), "{}", o.stderr);
    assert!(o.stderr.contains("job.toml"), "{}", o.stderr);
}

/// A dense line in an inputs file (`[0,0,…]`, about 30 times its size as a tree: a 30 MB
/// line once took 1.15 GB) is refused by its count of values, naming file and line.
#[test]
fn dense_jsonl_line_is_refused_before_it_is_parsed() {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "echo.sh", "cat");
    let dense = format!("[{}0]", "0,".repeat(5_000_000));
    std::fs::write(d.path().join("in.jsonl"), format!("1\n{dense}\n")).unwrap();
    std::fs::write(
        d.path().join("job.toml"),
        "[program]\npath = \"echo.sh\"\n[inputs]\nfile = \"in.jsonl\"\n",
    )
    .unwrap();
    let o = mw(d.path(), &["run", "job.toml"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("in.jsonl:2:"), "{}", o.stderr);
    assert!(o.stderr.contains("JSON values on one line"), "{}", o.stderr);
}

/// Journaled or not (`--no-journal` keeps a file's inputs in memory, and makes a list's or
/// a sweep's again from the index), every task gets its own input.
#[test]
fn inline_list_and_jsonl_inputs_reach_the_program_in_order() {
    for extra in [&[][..], &["--no-journal"][..]] {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "echo.sh", "cat");
        std::fs::write(
            d.path().join("list.toml"),
            "workers = 2\n[program]\npath = \"echo.sh\"\n[inputs]\nlist = [{a = 1}, \"two\", 3]\n",
        )
        .unwrap();
        let o = mw(d.path(), &[&["run", "list.toml", "-q"], extra].concat());
        assert_eq!(o.code, 0, "{extra:?}: {}", o.stderr);
        let r = lines(&o.stdout);
        let outs: Vec<_> = r.iter().map(|l| l["output"].clone()).collect();
        assert_eq!(
            outs,
            vec![serde_json::json!({"a": 1}), "two".into(), 3.into()],
            "{extra:?}"
        );

        std::fs::write(d.path().join("in.jsonl"), "[1,2]\n\n{\"k\":\"v\"}\nnull\n").unwrap();
        std::fs::write(
            d.path().join("file.toml"),
            "[program]\npath = \"echo.sh\"\n[inputs]\nfile = \"in.jsonl\"\n",
        )
        .unwrap();
        let o = mw(d.path(), &[&["run", "file.toml", "-q"], extra].concat());
        assert_eq!(o.code, 0, "{extra:?}: {}", o.stderr);
        let r = lines(&o.stdout);
        assert_eq!(r.len(), 3, "{extra:?}");
        assert_eq!(r[0]["input"], serde_json::json!([1, 2]));
        assert_eq!(r[1]["output"], serde_json::json!({"k": "v"}));
        assert_eq!(r[2]["input"], serde_json::Value::Null);
    }
}

#[test]
fn sweep_product_templates_and_output_files() {
    let d = tempfile::tempdir().unwrap();
    script(
        d.path(),
        "task.sh",
        r#"echo "arg=$1 env=$FOO" > "out-$2.txt"
printf '{"arg":"%s","env":"%s","in":%s}\n' "$1" "$FOO" "$(cat)""#,
    );
    std::fs::write(
        d.path().join("job.toml"),
        r#"name = "sweep"
workers = 2
args = ["{{ input.a }}-{{ index }}", "{{ index }}"]
env = { FOO = "f{{ input.b }}" }
outputs = ["out-{{ index }}.txt"]
[program]
path = "task.sh"
[inputs.sweep]
a = [1, 2]
b = ["x", "y", "z"]
"#,
    )
    .unwrap();
    let o = mw(d.path(), &["run", "job.toml", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = lines(&o.stdout);
    assert_eq!(r.len(), 6);
    let mut k = 0;
    for a in [1, 2] {
        for b in ["x", "y", "z"] {
            let line = &r[k];
            assert_eq!(line["task"], k);
            assert_eq!(line["state"], "done");
            assert_eq!(line["input"], serde_json::json!({"a": a, "b": b}));
            assert_eq!(line["output"]["arg"], format!("{a}-{k}"));
            assert_eq!(line["output"]["env"], format!("f{b}"));
            assert_eq!(line["output"]["in"], line["input"]);
            let file = d
                .path()
                .join(format!("jobs/sweep-1/results/task-{k}/out-{k}.txt"));
            assert_eq!(
                std::fs::read_to_string(&file).unwrap(),
                format!("arg={a}-{k} env=f{b}\n")
            );
            let listed = line["output_files"][0].as_str().unwrap();
            assert_eq!(
                std::fs::canonicalize(listed).unwrap(),
                std::fs::canonicalize(&file).unwrap()
            );
            k += 1;
        }
    }
}

/// Output files need a job directory: `--no-journal` (nothing on disk) refuses such a job
/// before anything runs, instead of reporting files in a scratch directory it then removes.
#[test]
fn no_journal_refuses_a_job_with_output_files() {
    let d = tempfile::tempdir().unwrap();
    let ran = d.path().join("ran");
    script(
        d.path(),
        "task.sh",
        &format!("touch {}\necho hi > out.txt\ncat", ran.display()),
    );
    std::fs::write(
        d.path().join("job.toml"),
        "outputs = [\"out.txt\"]\n[program]\npath = \"task.sh\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let o = mw(d.path(), &["run", "job.toml", "-q", "--no-journal"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("job.toml")
            && o.stderr.contains("outputs")
            && o.stderr.contains("--no-journal"),
        "{}",
        o.stderr
    );
    assert!(o.stdout.is_empty(), "{}", o.stdout);
    assert!(!ran.exists(), "nothing runs");
    // Journaled, the file is kept where its result line says.
    let o = mw(d.path(), &["run", "job.toml", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let file = lines(&o.stdout)[0]["output_files"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(std::fs::read_to_string(file).unwrap(), "hi\n");
    assert!(ran.exists());
}

#[test]
fn range_sweep_with_step() {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "echo.sh", "cat");
    std::fs::write(
        d.path().join("job.toml"),
        "[program]\npath = \"echo.sh\"\n[inputs.sweep]\ni = { start = 2, end = 11, step = 3 }\nn = [7]\n",
    )
    .unwrap();
    for extra in [&[][..], &["--no-journal"][..]] {
        let o = mw(d.path(), &[&["run", "job.toml", "-q"], extra].concat());
        assert_eq!(o.code, 0, "{extra:?}: {}", o.stderr);
        let r = lines(&o.stdout);
        let outs: Vec<_> = r.iter().map(|l| l["output"].clone()).collect();
        let ins: Vec<_> = r.iter().map(|l| l["input"].clone()).collect();
        let want = vec![
            serde_json::json!({"i": 2, "n": 7}),
            serde_json::json!({"i": 5, "n": 7}),
            serde_json::json!({"i": 8, "n": 7}),
        ];
        assert_eq!(outs, want, "{extra:?}");
        assert_eq!(ins, want, "{extra:?}");
    }
}

#[test]
fn results_in_task_order_to_output_file() {
    let d = tempfile::tempdir().unwrap();
    // Early tasks take longest, so they finish last.
    script(
        d.path(),
        "slow.sh",
        r#"i=$(cat); sleep "0.$((9 - i))"; echo "$i""#,
    );
    std::fs::write(
        d.path().join("job.toml"),
        "workers = 2\n[program]\npath = \"slow.sh\"\n[inputs]\nlist = [0, 1, 2, 3, 4, 5]\n",
    )
    .unwrap();
    let o = mw(
        d.path(),
        &["run", "job.toml", "-q", "--output", "res.jsonl"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.is_empty(), "results went to stdout: {}", o.stdout);
    let r = lines(&std::fs::read_to_string(d.path().join("res.jsonl")).unwrap());
    let order: Vec<u64> = r.iter().map(|l| l["task"].as_u64().unwrap()).collect();
    assert_eq!(order, vec![0, 1, 2, 3, 4, 5]);
    let outs: Vec<u64> = r.iter().map(|l| l["output"].as_u64().unwrap()).collect();
    assert_eq!(outs, vec![0, 1, 2, 3, 4, 5]);
}

/// `--output` never replaces a file the job reads (its inputs file, program, program files,
/// reduce program): it once wrote the results over the researcher's inputs, or over the
/// program, whose tasks then failed with "Text file busy".
#[test]
fn output_refuses_a_file_the_job_reads() {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "echo.sh", "cat");
    script(d.path(), "sum.sh", "cat >/dev/null; echo 0");
    std::fs::write(d.path().join("lib.txt"), "lib").unwrap();
    std::fs::write(d.path().join("in.jsonl"), "1\n2\n").unwrap();
    std::fs::write(
        d.path().join("job.toml"),
        "[program]\npath = \"echo.sh\"\nfiles = [\"lib.txt\"]\n[inputs]\nfile = \"in.jsonl\"\n\
         [reduce]\npath = \"sum.sh\"\n",
    )
    .unwrap();
    for (name, what) in [
        ("in.jsonl", "inputs file"),
        ("echo.sh", "program"),
        ("./lib.txt", "program"),
        ("sum.sh", "reduce program"),
        ("job.toml", "job file"),
    ] {
        let before = std::fs::read(d.path().join(name)).unwrap();
        let o = mw(d.path(), &["run", "job.toml", "-q", "--output", name]);
        assert_eq!(o.code, 2, "--output {name}: {}", o.stderr);
        assert!(o.stderr.contains(what), "--output {name}: {}", o.stderr);
        assert_eq!(
            std::fs::read(d.path().join(name)).unwrap(),
            before,
            "{name}"
        );
    }
    assert!(!d.path().join("jobs").exists(), "a refused run made a job");
    let o = mw(
        d.path(),
        &["run", "job.toml", "-q", "--output", "res.jsonl"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        lines(&std::fs::read_to_string(d.path().join("res.jsonl")).unwrap()).len(),
        2
    );
}

#[test]
fn failing_task_exits_1_with_error_in_result_line() {
    let d = tempfile::tempdir().unwrap();
    script(
        d.path(),
        "fail.sh",
        r#"i=$(cat); if [ "$i" = 1 ]; then echo "boom on one" >&2; exit 3; fi; echo "$i""#,
    );
    std::fs::write(
        d.path().join("job.toml"),
        "[program]\npath = \"fail.sh\"\n[inputs]\nlist = [0, 1, 2]\n",
    )
    .unwrap();
    let o = mw(d.path(), &["run", "job.toml", "-q"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let r = lines(&o.stdout);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["state"], "done");
    assert_eq!(r[2]["state"], "done");
    assert_eq!(r[1]["state"], "failed");
    assert!(r[1]["exit"].as_str().unwrap().contains('3'), "{}", r[1]);
    let err = r[1]["error"].as_str().unwrap();
    assert!(err.contains("boom on one"), "{err}");
    // The end of the run says what happened, why, and where to look next.
    assert!(
        o.stderr
            .contains("mw: 3 tasks: 2 done, 1 failed, 0 cancelled in "),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("task 1: exit status 3") && o.stderr.contains("boom on one"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("--failed`"), "{}", o.stderr);
    assert!(o.stderr.contains("mw retry "), "{}", o.stderr);
}

#[test]
fn progress_is_plain_lines_when_not_a_tty() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("job.toml"),
        format!(
            "[program]\npath = \"{}\"\n[inputs.sweep]\ni = {{ start = 0, end = 5 }}\n",
            mw_tests::bin_dir().join("null-task").display()
        ),
    )
    .unwrap();
    let o = mw(d.path(), &["run", "job.toml"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Piped progress lines carry an RFC 3339 timestamp: `[2026-01-02T03:04:05.678Z] mw: …`.
    let last = o
        .stderr
        .lines()
        .find(|l| l.contains("] mw: 5/5 finished"))
        .unwrap_or_else(|| panic!("no final progress line:\n{}", o.stderr));
    let stamp = &last[1..last.find(']').unwrap()];
    assert!(
        stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{last}"
    );
    // No ETA before any task has finished.
    for l in o.stderr.lines().filter(|l| l.contains(" 0/5 finished")) {
        assert!(l.ends_with("ETA ?"), "{l}");
    }
    // The summary line stays.
    assert!(
        o.stderr
            .contains("mw: 5 tasks: 5 done, 0 failed, 0 cancelled in "),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains('\r') && !o.stderr.contains('\x1b'));
    assert_eq!(lines(&o.stdout).len(), 5);
}

#[test]
fn run_help_explains_the_job_file() {
    let d = tempfile::tempdir().unwrap();
    let o = mw(d.path(), &["run", "--help"]);
    assert_eq!(o.code, 0);
    for needle in [
        "[program]",
        "[inputs]",
        "sweep",
        "args",
        "outputs",
        "[reduce]",
        "--output",
    ] {
        assert!(
            o.stdout.contains(needle),
            "`{needle}` missing:\n{}",
            o.stdout
        );
    }
}

/// A job directory named with the largest job number in the jobs directory does not make
/// the next job's number overflow (it once panicked): the job gets the lowest free number.
#[test]
fn a_job_directory_with_the_largest_number_is_passed_over() {
    let d = tempfile::tempdir().unwrap();
    script(d.path(), "echo.sh", "cat");
    std::fs::create_dir_all(d.path().join("jobs/big-18446744073709551615")).unwrap();
    std::fs::write(
        d.path().join("job.toml"),
        "name = \"big\"\n[program]\npath = \"echo.sh\"\n[inputs]\nlist = [1]\n",
    )
    .unwrap();
    let o = mw(d.path(), &["run", "job.toml", "-q"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(d.path().join("jobs/big-1/journal.sqlite").is_file());
}
