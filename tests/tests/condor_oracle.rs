//! condor-kit checked against HTCondor's own code (the PyPI `htcondor` wheel, module `htcondor2`,
//! through tests/python/condor_check.py): every fixture log reads the same event by event, and a
//! generated submit description parses back to the values mw relies on.
//! Needs the venv from the CI setup (or MW_PYTHON); without it these tests fail, never skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_condor_kit::{write_submit_files, SubmitItem, SubmitSpec};
use mw_tests::condor_double::{assert_log_matches_htcondor, condor_check};
use mw_tests::workspace_root;

#[test]
fn every_fixture_log_reads_like_htcondor() {
    let dir = workspace_root().join("condor-kit/tests/fixtures/condor");
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    assert_eq!(logs.len(), 9, "fixture logs in {}", dir.display());
    let mut total = 0;
    for log in &logs {
        total += assert_log_matches_htcondor(log);
    }
    // The six from HTCondor's repository, then the three a real pool wrote for mw.
    assert_eq!(total, 7 + 4 + 7 + 4 + 4 + 851 + 32 + 13 + 11);
}

#[test]
fn generated_submit_file_parses_back_in_htcondor() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let spec = SubmitSpec {
        batch_name: "oracle-batch".into(),
        executable: d.join("bin/mw-worker"),
        program_bundle: d.join("program-0123abcd.mwp"),
        initialdir: d.join("results"),
        log: d.join("oracle-batch.log"),
        request_cpus: 2,
        request_memory_mb: 512,
        request_disk_mb: 1024,
        requirements: Some("(OpSys == \"LINUX\") && (Arch == \"X86_64\")".into()),
        max_retries: 3,
        items: (0..3)
            .map(|i| SubmitItem {
                task_index: 10 + i,
                task_bundle: d.join(format!("tasks/task-{i}.mwt")),
                result_bundle: format!("result-{i}.mwr"),
                output: d.join(format!("out/{i}.out")),
                error: d.join(format!("out/{i}.err")),
            })
            .collect(),
    };
    let (sub, items) = write_submit_files(&spec, d, None).unwrap();
    let v: serde_json::Value = serde_json::from_str(&condor_check("submit", &sub)).unwrap();
    let val = |k: &str| {
        v["values"][k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} missing in {v}"))
            .to_string()
    };
    let p = |s: &str| d.join(s).display().to_string();
    assert_eq!(val("universe"), "vanilla");
    assert_eq!(val("executable"), p("bin/mw-worker"));
    assert_eq!(val("transfer_executable"), "true");
    assert_eq!(
        val("arguments"),
        "\"run --program program-0123abcd.mwp --task $(task_bundle) --result $(result_bundle)\""
    );
    assert_eq!(val("initialdir"), p("results"));
    assert_eq!(val("log"), p("oracle-batch.log"));
    assert_eq!(val("should_transfer_files"), "YES");
    assert_eq!(val("when_to_transfer_output"), "ON_EXIT");
    assert_eq!(
        val("transfer_input_files"),
        format!("{},$(task_path)", p("program-0123abcd.mwp"))
    );
    assert_eq!(val("transfer_output_files"), "$(result_bundle)");
    assert_eq!(val("output"), "$(task_out)");
    assert_eq!(val("error"), "$(task_err)");
    assert_eq!(val("request_cpus"), "2");
    assert_eq!(val("request_memory"), "512MB");
    assert_eq!(val("request_disk"), "1024MB");
    assert_eq!(
        val("requirements"),
        "(OpSys == \"LINUX\") && (Arch == \"X86_64\")"
    );
    assert_eq!(val("max_retries"), "3");
    assert_eq!(val("batch_name"), "oracle-batch");
    assert_eq!(val("submit_event_notes"), "mw task $(task_index)");
    assert_eq!(
        v["qargs"].as_str().unwrap(),
        format!(
            "task_index, task_path, task_bundle, result_bundle, task_out, task_err from {}",
            items.display()
        )
    );
    let got = v["items"].as_array().unwrap();
    assert_eq!(got.len(), 3);
    for (i, item) in got.iter().enumerate() {
        assert_eq!(item["task_index"], (10 + i).to_string());
        assert_eq!(item["task_path"], p(&format!("tasks/task-{i}.mwt")));
        assert_eq!(item["task_bundle"], format!("task-{i}.mwt"));
        assert_eq!(item["result_bundle"], format!("result-{i}.mwr"));
        assert_eq!(item["task_out"], p(&format!("out/{i}.out")));
        assert_eq!(item["task_err"], p(&format!("out/{i}.err")));
    }
}
