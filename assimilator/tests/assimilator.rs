//! Runs the real `mw-assimilator` the way `script_assimilator` does: installed in a
//! project's `bin/`, called as `../bin/mw-assimilator WU_ID FILE` or
//! `../bin/mw-assimilator --error MASK WU_NAME WU_ID BATCH` through `/bin/sh` from
//! `tmp_<host>`, finding the spool through `<project>/mw_boinc.toml`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

mod common;

use common::{bundle, info, Proj};
use mw_assimilator::ErrorRecord;
use std::collections::BTreeMap;
use std::path::Path;

fn result_bundle(job: &str, task: u64, stdout: &str) -> Vec<u8> {
    bundle(info(job, task, None), stdout)
}

impl Proj {
    fn call(&self, args: &str) -> (i32, String) {
        let cmd = format!("../bin/mw-assimilator {args}");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(self.root.join("tmp_host"))
            .env_remove("MW_BOINC_SPOOL")
            .env_remove("BOINC_PROJECT_DIR")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{cmd} -> {:?}: {err}", out.status.code());
        (out.status.code().unwrap(), err)
    }

    /// Spool contents: name → bytes (temporary files would show up here too).
    fn spool_files(&self) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(&self.spool)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn spools_the_canonical_result_atomically_and_idempotently() {
    let pr = common::project("");
    let bytes = result_bundle("job-7.a", 42, "{\"ok\":true}");
    let f = pr.upload("mw_j7_t42_0_r1947152018_0", &bytes);
    let (code, msg) = pr.call(&format!("1006 {}", p(&f)));
    assert_eq!(code, 0, "{msg}");
    let files = pr.spool_files();
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["result_mw_j7_t42.tar.gz"],
        "no temp files left"
    );
    assert_eq!(files["result_mw_j7_t42.tar.gz"], bytes);
    // The upload file is kept (copied, not moved): a repeated call still works.
    assert!(f.exists());
    let mtime = std::fs::metadata(pr.spool.join("result_mw_j7_t42.tar.gz"))
        .unwrap()
        .modified()
        .unwrap();
    let (code, msg) = pr.call(&format!("1006 {}", p(&f)));
    assert_eq!(code, 0, "{msg}");
    assert!(msg.contains("unchanged"), "{msg}");
    assert_eq!(pr.spool_files(), files);
    let mtime2 = std::fs::metadata(pr.spool.join("result_mw_j7_t42.tar.gz"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(mtime, mtime2, "the spooled file was rewritten");
    // Another result of the same workunit with other content never replaces the first.
    let other = pr.upload(
        "mw_j7_t42_1_r5_0",
        &result_bundle("job-7.a", 42, "{\"ok\":false}"),
    );
    let (code, _) = pr.call(&format!("1007 {}", p(&other)));
    assert_eq!(code, 0);
    let files2 = pr.spool_files();
    assert_eq!(files2["result_mw_j7_t42.tar.gz"], bytes);
    assert!(files2.contains_key("conflict_mw_j7_t42_wu1007.tar.gz"));
}

#[test]
fn error_form_writes_a_decoded_record_idempotently() {
    let pr = common::project("");
    let (code, msg) = pr.call("--error 10 mw_wf1 1009 2");
    assert_eq!(code, 0, "{msg}");
    let path = pr.spool.join("error_mw_wf1.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rec: ErrorRecord = toml::from_str(&text).unwrap();
    assert_eq!(rec.wu_name, "mw_wf1");
    assert_eq!(rec.wu_id, 1009);
    assert_eq!(rec.batch, 2);
    assert_eq!(rec.error_mask, 10);
    assert_eq!(
        rec.errors,
        ["TOO_MANY_ERROR_RESULTS", "TOO_MANY_TOTAL_RESULTS"]
    );
    assert_eq!(rec.reason, None);
    let before = pr.spool_files();
    let (code, msg) = pr.call("--error 10 mw_wf1 1009 2");
    assert_eq!(code, 0);
    assert!(msg.contains("unchanged"), "{msg}");
    assert_eq!(before, pr.spool_files());
    // Cancelled after errors: 24; unknown bits are named, not dropped.
    pr.call("--error 88 mw_wf2 1010 0");
    let rec: ErrorRecord =
        toml::from_str(&std::fs::read_to_string(pr.spool.join("error_mw_wf2.toml")).unwrap())
            .unwrap();
    assert_eq!(
        rec.errors,
        ["TOO_MANY_TOTAL_RESULTS", "CANCELLED", "UNKNOWN_0x40"]
    );
}

#[test]
fn unusable_results_are_recorded_not_retried() {
    let pr = common::project("");
    // A job name that is not [A-Za-z0-9_.-] must not become a file name.
    let bad_job = pr.upload("mw_bad_0_r1_0", &result_bundle("../../x", 1, "1"));
    let (code, msg) = pr.call(&format!("1011 {}", p(&bad_job)));
    assert_eq!(code, 0, "{msg}");
    let rec: ErrorRecord =
        toml::from_str(&std::fs::read_to_string(pr.spool.join("error_mw_bad.toml")).unwrap())
            .unwrap();
    assert_eq!(rec.wu_id, 1011);
    assert!(rec.reason.unwrap().contains("job name"));
    // Garbage instead of a bundle.
    let junk = pr.upload("mw_junk_0_r2_0", b"not a bundle");
    let (code, _) = pr.call(&format!("1012 {}", p(&junk)));
    assert_eq!(code, 0);
    assert!(pr.spool.join("error_mw_junk.toml").is_file());
    assert!(!pr.spool_files().keys().any(|k| k.starts_with("result_")));
}

#[test]
fn a_missing_upload_is_recorded_and_acknowledged() {
    // A late result of a cancelled workunit: the file deleter removed the upload before the
    // assimilator ran (reference §0.3). A nonzero exit would stop BOINC's assimilator for
    // good; the call must record the workunit and why, and exit 0.
    let pr = common::project("");
    let (code, msg) = pr.call(&format!(
        "1013 {}/upload/2e1/mw_gone_0_r1_0",
        pr.root.display()
    ));
    assert_eq!(code, 0, "{msg}");
    let rec: ErrorRecord =
        toml::from_str(&std::fs::read_to_string(pr.spool.join("error_mw_gone.toml")).unwrap())
            .unwrap();
    assert_eq!(rec.wu_id, 1013);
    assert!(rec.reason.unwrap().contains("no longer exists"));
    // The next workunit is assimilated as usual.
    let bytes = result_bundle("j", 2, "2");
    let f = pr.upload("mw_next_0_r5_0", &bytes);
    assert_eq!(pr.call(&format!("1014 {}", p(&f))).0, 0);
    assert_eq!(pr.spool_files()["result_mw_next.tar.gz"], bytes);
}

#[test]
fn retryable_problems_exit_nonzero() {
    let pr = common::project("");
    // No arguments (multi-token config on an affected BOINC, §0.1).
    assert_ne!(pr.call("").0, 0);
    assert_ne!(pr.call("--error 10 mw_wf1").0, 0);
    // No config file: cannot know where to spool.
    std::fs::remove_file(pr.root.join("mw_boinc.toml")).unwrap();
    let f = pr.upload("mw_j_0_r1_0", &result_bundle("j", 1, "1"));
    let (code, msg) = pr.call(&format!("1014 {}", p(&f)));
    assert_ne!(code, 0);
    assert!(msg.contains("mw_boinc.toml"), "{msg}");
    assert!(pr.spool_files().is_empty());
}

#[test]
fn env_var_names_the_spool() {
    let pr = common::project("");
    let other = pr.root.join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    let out = std::process::Command::new(pr.root.join("bin/mw-assimilator"))
        .args(["--error", "16", "mw_c", "5", "1"])
        .env("MW_BOINC_SPOOL", &other)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(other.join("error_mw_c.toml").is_file());
    assert!(pr.spool_files().is_empty());
}

#[test]
fn wu_name_is_derived_from_output_names() {
    assert_eq!(
        mw_assimilator::wu_name_from_output("mw_w1_0_r1947152018_0"),
        Some("mw_w1")
    );
    assert_eq!(mw_assimilator::wu_name_from_output("mw_0_rX_0"), None);
    assert_eq!(mw_assimilator::wu_name_from_output("plain"), None);
}

#[test]
fn help_and_version_answer_on_stdout_and_the_boinc_forms_are_unchanged() {
    let p = common::project("");
    let exe = p.root.join("bin/mw-assimilator");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&exe)
            .args(args)
            .current_dir(p.root.join("tmp_host"))
            .env_remove("MW_BOINC_SPOOL")
            .env_remove("BOINC_PROJECT_DIR")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let version = format!("mw-assimilator {}\n", env!("CARGO_PKG_VERSION"));
    for flag in ["--version", "-V"] {
        assert_eq!(run(&[flag]), (Some(0), version.clone(), String::new()));
    }
    for flag in ["--help", "-h"] {
        let (code, out, err) = run(&[flag]);
        assert_eq!(code, Some(0), "{err}");
        assert!(err.is_empty(), "{err}");
        assert!(
            out.contains("mw-assimilator WU_ID FILE...")
                && out.contains("--error MASK WU_NAME WU_ID BATCH"),
            "{out}"
        );
    }
    assert!(p.spool_files().is_empty(), "help spooled something");
    // Still a usage error (exit 2) for anything that is neither form, and `--error` works.
    let (code, out, err) = run(&["--bogus"]);
    assert_eq!((code, out.as_str()), (Some(2), ""), "{err}");
    let (code, _, err) = run(&["--error", "4", "mw_w1", "1009", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(p.spool_files().keys().any(|k| k.starts_with("error_mw_w1")));
}

/// Cancel markers are kept while BOINC may still assimilate their workunit (late results,
/// §0.3), then removed by a call that consumes a cancelled workunit, at most once an hour:
/// a spool shared by every job of a project does not fill with them.
#[test]
fn old_cancel_markers_are_pruned_at_most_once_an_hour() {
    use std::time::{Duration, SystemTime};
    let pr = common::project("");
    let aged = |name: &str, age: Duration| {
        let path = pr.spool.join(name);
        let f = std::fs::File::create(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    };
    let day = Duration::from_secs(24 * 3600);
    aged("cancelled_mw_old", 31 * day);
    aged("cancelled_mw_recent", 29 * day);
    aged("cancelled_mw_now", Duration::ZERO);
    // Not a marker, however old.
    aged("error_mw_kept.toml", 365 * day);
    let (code, msg) = pr.call("--error 16 mw_now 5 1");
    assert_eq!(code, 0, "{msg}");
    assert!(msg.contains("cancelled by mw"), "{msg}");
    let names = |pr: &Proj| -> Vec<String> { pr.spool_files().into_keys().collect() };
    assert_eq!(
        names(&pr),
        [
            ".mw-markers-pruned",
            "cancelled_mw_now",
            "cancelled_mw_recent",
            "error_mw_kept.toml"
        ]
    );
    // Within the hour, no second look, and the stamp keeps its time (were it renewed by
    // every call, steady cancels would keep it young and nothing would ever be pruned).
    let stamp = pr.spool.join(".mw-markers-pruned");
    aged(".mw-markers-pruned", Duration::from_secs(1800));
    let stamped = std::fs::metadata(&stamp).unwrap().modified().unwrap();
    aged("cancelled_mw_old2", 40 * day);
    assert_eq!(pr.call("--error 16 mw_now 5 1").0, 0);
    assert!(names(&pr).contains(&"cancelled_mw_old2".to_string()));
    assert_eq!(
        std::fs::metadata(&stamp).unwrap().modified().unwrap(),
        stamped
    );
    // An hour later, a call that does not consume anything does not look either.
    aged(".mw-markers-pruned", Duration::from_secs(2 * 3600));
    assert_eq!(pr.call("--error 10 mw_other 6 1").0, 0);
    assert!(names(&pr).contains(&"cancelled_mw_old2".to_string()));
    assert_eq!(pr.call("--error 16 mw_now 5 1").0, 0);
    assert!(!names(&pr).contains(&"cancelled_mw_old2".to_string()));
    assert!(names(&pr).contains(&"cancelled_mw_now".to_string()));
}

/// BOINC assimilates a cancelled workunit again when a late result is reported (§0.3); its
/// upload is gone by then. That unusable result must not replace the cancel's record, which
/// is the task's outcome for the master (in CI the master once read the late one).
#[test]
fn an_unusable_late_result_keeps_the_workunits_earlier_error_record() {
    let pr = common::project("");
    let (code, msg) = pr.call("--error 16 mw_late 5 1");
    assert_eq!(code, 0, "{msg}");
    let path = pr.spool.join("error_mw_late.toml");
    let first = std::fs::read(&path).unwrap();
    let gone = pr.root.join("upload/mw_late_0_r1_0");
    let (code, msg) = pr.call(&format!("5 {}", p(&gone)));
    assert_eq!(code, 0, "{msg}");
    assert!(msg.contains("earlier error record"), "{msg}");
    assert!(msg.contains("no longer exists"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), first);
    // Once the master took the cancel's record, the late result's is written.
    std::fs::remove_file(&path).unwrap();
    let (code, msg) = pr.call(&format!("5 {}", p(&gone)));
    assert_eq!(code, 0, "{msg}");
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("no longer exists"));
    // BOINC's own verdict still replaces a record (its latest wins).
    pr.call("--error 24 mw_late 5 1");
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("CANCELLED"));
}
