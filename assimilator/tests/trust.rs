//! What the real `mw-assimilator` trusts of an upload: the spool file is named after the
//! workunit BOINC gave the upload (its file name), a bundle whose manifest names another
//! job, task or attempt is refused as forged, and the result limits (`max_output_bytes` in
//! `mw_boinc.toml`, default the master's 16 MiB) bound its memory, measured as the peak
//! resident memory of the finished process (`ru_maxrss` from `wait4`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

mod common;

use common::{bundle, info, project, Proj};
use mw_assimilator::ErrorRecord;
use mw_bundle::{
    pack_result_member, BundleBuilder, Comparison, PackResultInfo, RESULT_STDOUT_NAME,
};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

impl Proj {
    /// `../bin/mw-assimilator WU_ID FILE` from tmp_host, as script_assimilator calls it;
    /// returns the exit code, stderr and the peak resident memory in KiB.
    #[allow(clippy::zombie_processes)] // reaped by wait4 (for its rusage), not by std
    fn call(&self, wu_id: u64, file: &Path) -> (i32, String, u64) {
        // A child's peak starts at its parent's (exec keeps the larger): reset ours first.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let mut child = Command::new(self.root.join("bin/mw-assimilator"))
            .arg(wu_id.to_string())
            .arg(file)
            .current_dir(self.root.join("tmp_host"))
            .env_remove("MW_BOINC_SPOOL")
            .env_remove("BOINC_PROJECT_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child (std never reaps it: `child` is not waited on), with
        // pointers to locals that outlive the call.
        let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        assert_eq!(pid, child.id() as i32);
        assert!(libc::WIFEXITED(status), "did not exit: {status}");
        eprintln!("assimilator -> {}: {err}", libc::WEXITSTATUS(status));
        (
            libc::WEXITSTATUS(status),
            err,
            u64::try_from(usage.ru_maxrss).unwrap(),
        )
    }

    fn spooled(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn record(&self, wu: &str) -> ErrorRecord {
        let text = std::fs::read_to_string(self.spool.join(format!("error_{wu}.toml"))).unwrap();
        toml::from_str(&text).unwrap()
    }
}

#[test]
fn a_result_is_spooled_for_the_workunit_boinc_names_and_a_forged_one_is_refused() {
    let pr = project("");
    let wu5 = "mw_job-a_0a1b2c3d_5_1";
    // Task 5's workunit uploads a bundle claiming to be task 7 of the same job.
    let forged = pr.upload(
        &format!("{wu5}_0_r1947152018_0"),
        &bundle(info("job-a", 7, Some(1)), "7"),
    );
    let (code, msg, _) = pr.call(1005, &forged);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(pr.spooled(), [format!("error_{wu5}.toml")]);
    let reason = pr.record(wu5).reason.unwrap();
    assert!(reason.contains("forged or misfiled"), "{reason}");
    assert!(reason.contains("task 7 of job `job-a`"), "{reason}");
    std::fs::remove_file(pr.spool.join(format!("error_{wu5}.toml"))).unwrap();
    // Another job's task 5, and this task's other attempt: refused the same way.
    let wu5b = "mw_job-a_0a1b2c3d_5_2";
    for (i, bytes) in [
        bundle(info("someone-elses-job-7", 5, Some(2)), "5"),
        bundle(info("job-a", 5, Some(1)), "5"),
    ]
    .iter()
    .enumerate()
    {
        let up = pr.upload(&format!("{wu5b}_{i}_r77_0"), bytes);
        let (code, msg, _) = pr.call(1006, &up);
        assert_eq!(code, 0, "{msg}");
        let reason = pr.record(wu5b).reason.unwrap();
        assert!(reason.contains("forged or misfiled"), "{reason}");
        std::fs::remove_file(pr.spool.join(format!("error_{wu5b}.toml"))).unwrap();
    }
    assert!(pr.spooled().is_empty(), "{:?}", pr.spooled());
    // The honest result (with or without the attempt, which older workers do not copy) is
    // spooled under its workunit's name.
    let honest = bundle(info("job-a", 5, Some(1)), "5");
    let up = pr.upload(&format!("{wu5}_1_r5_0"), &honest);
    let (code, msg, _) = pr.call(1005, &up);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(pr.spooled(), [format!("result_{wu5}.tar.gz")]);
    assert_eq!(
        std::fs::read(pr.spool.join(format!("result_{wu5}.tar.gz"))).unwrap(),
        honest
    );
    let wu9 = "mw_job-a_0a1b2c3d_9_1";
    let up = pr.upload(
        &format!("{wu9}_0_r5_0"),
        &bundle(info("job-a", 9, None), "9"),
    );
    assert_eq!(pr.call(1009, &up).0, 0);
    assert!(pr.spool.join(format!("result_{wu9}.tar.gz")).is_file());
}

#[test]
fn a_huge_json_array_in_a_small_upload_is_refused_in_bounded_memory() {
    let pr = project("");
    let scratch = pr.root.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(scratch.join("big")).unwrap());
        f.write_all(b"[0").unwrap();
        let chunk = b",0".repeat(1 << 15);
        for _ in 0..(200 << 20) / chunk.len() {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"]").unwrap();
    }
    let mut b = BundleBuilder::result(info("job-a", 3, Some(1)), "bomb");
    b.add_file(RESULT_STDOUT_NAME, &scratch.join("big"))
        .unwrap();
    let wu = "mw_job-a_0a1b2c3d_3_1";
    let up = pr.root.join("upload/2e1").join(format!("{wu}_0_r9_0"));
    b.write_to(&up).unwrap();
    std::fs::remove_file(scratch.join("big")).unwrap();
    assert!(std::fs::metadata(&up).unwrap().len() < 4 << 20);
    let (code, msg, peak_kib) = pr.call(1003, &up);
    assert_eq!(code, 0, "{msg}");
    assert!(peak_kib < 48 * 1024, "peak memory {peak_kib} KiB");
    assert_eq!(pr.spooled(), [format!("error_{wu}.toml")]);
    let reason = pr.record(wu).reason.unwrap();
    assert!(
        reason.contains("over the limit of 16777216 bytes"),
        "{reason}"
    );
}

#[test]
fn a_small_pack_of_large_json_results_is_spooled_in_bounded_memory() {
    // 100 inner results, each 16 MiB of blank stdout under a JSON rule (1.6 GB when every
    // inner result keeps its stdout): the assimilator keeps none of it.
    let pr = project("");
    let wu = "mw_job-a_0a1b2c3d_0_1";
    let mut pack = BundleBuilder::pack_result(
        PackResultInfo {
            job: "job-a".into(),
            host: "h".into(),
            tasks: (0..100).collect(),
            not_run: vec![],
        },
        "pack",
    );
    for t in 0..100 {
        let mut i = info("job-a", t, Some(1));
        i.comparison = Comparison::Json { rel: 0.0, abs: 0.0 };
        let mut b = BundleBuilder::result(i, "inner");
        b.add_bytes(RESULT_STDOUT_NAME, vec![b' '; 16 << 20], false)
            .unwrap();
        pack.add_bytes(&pack_result_member(t), b.to_bytes().unwrap(), false)
            .unwrap();
    }
    let up = pr.root.join("upload/2e1").join(format!("{wu}_0_r9_0"));
    pack.write_to(&up).unwrap();
    assert!(std::fs::metadata(&up).unwrap().len() < 16 << 20);
    let (code, msg, peak_kib) = pr.call(1000, &up);
    assert_eq!(code, 0, "{msg}");
    assert!(peak_kib < 64 * 1024, "peak memory {peak_kib} KiB");
    assert_eq!(pr.spooled(), [format!("result_{wu}.tar.gz")]);
}

#[test]
fn the_limit_is_set_in_mw_boinc_toml() {
    let pr = project("max_output_bytes = 1000\n");
    let wu = "mw_job-a_0a1b2c3d_4_1";
    let up = pr.upload(
        &format!("{wu}_0_r9_0"),
        &bundle(info("job-a", 4, Some(1)), &"x".repeat(2000)),
    );
    let (code, msg, _) = pr.call(1004, &up);
    assert_eq!(code, 0, "{msg}");
    let reason = pr.record(wu).reason.unwrap();
    assert!(
        reason.contains("2000 bytes, over the limit of 1000 bytes"),
        "{reason}"
    );
    // An unreadable limit stops the assimilator until the operator fixes it (exit 1, BOINC
    // calls again), rather than judging results by a limit nobody set.
    std::fs::write(
        pr.root.join("mw_boinc.toml"),
        "app_name = \"mw\"\nspool_dir = \"mw_spool\"\nmax_output_bytes = 0\n",
    )
    .unwrap();
    let (code, msg, _) = pr.call(1004, &up);
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("max_output_bytes"), "{msg}");
}

/// An upload that is not a regular file (a FIFO) is refused with an error record, at once:
/// reading it once blocked the script, and BOINC's assimilator daemon with it.
#[test]
fn an_upload_that_is_not_a_regular_file_is_refused() {
    let pr = project("");
    let wu = "mw_job-a_0a1b2c3d_4_1";
    let up = pr.upload(&format!("{wu}_0_r4_0"), b"");
    std::fs::remove_file(&up).unwrap();
    let made = Command::new("mkfifo").arg(&up).status().unwrap();
    assert!(made.success());
    let (code, msg, _) = pr.call(1004, &up);
    assert_eq!(code, 0, "{msg}");
    let reason = pr.record(wu).reason.unwrap();
    assert!(reason.contains("not a regular file"), "{reason}");
}
