//! Submit description generation: the rendered text, the item file, user templates, unsafe paths.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_condor_kit::{render_submit, write_submit_files, CondorError, SubmitItem, SubmitSpec};
use std::path::{Path, PathBuf};

fn spec(dir: &Path) -> SubmitSpec {
    SubmitSpec {
        batch_name: "demo-1".into(),
        executable: dir.join("mw-worker"),
        program_bundle: dir.join("program-abc123.mwp"),
        initialdir: dir.to_path_buf(),
        log: dir.join("demo-1.log"),
        request_cpus: 1,
        request_memory_mb: 256,
        request_disk_mb: 100,
        requirements: Some("(OpSys == \"LINUX\")".into()),
        max_retries: 2,
        items: (0..3)
            .map(|i| SubmitItem {
                task_index: i,
                task_bundle: dir.join(format!("tasks/task-{i}.mwt")),
                result_bundle: format!("result-{i}.mwr"),
                output: dir.join(format!("out/{i}.out")),
                error: dir.join(format!("out/{i}.err")),
            })
            .collect(),
    }
}

#[test]
fn default_template_renders_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let (sub, items) = write_submit_files(&spec, dir.path(), None).unwrap();
    let text = std::fs::read_to_string(&sub).unwrap();
    let d = dir.path().display();
    for line in [
        "universe                = vanilla".to_string(),
        format!("executable              = {d}/mw-worker"),
        "transfer_executable     = true".into(),
        "arguments               = \"run --program program-abc123.mwp --task $(task_bundle) --result $(result_bundle)\"".into(),
        "should_transfer_files   = YES".into(),
        "when_to_transfer_output = ON_EXIT".into(),
        format!("transfer_input_files    = {d}/program-abc123.mwp,$(task_path)"),
        "transfer_output_files   = $(result_bundle)".into(),
        format!("log                     = {d}/demo-1.log"),
        "requirements            = (OpSys == \"LINUX\")".into(),
        "max_retries             = 2".into(),
        "batch_name              = demo-1".into(),
        format!(
            "queue task_index, task_path, task_bundle, result_bundle, task_out, task_err from {}",
            items.display()
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    let item_text = std::fs::read_to_string(&items).unwrap();
    assert_eq!(item_text.lines().count(), 3);
    assert_eq!(
        item_text.lines().nth(1).unwrap(),
        format!("1 {d}/tasks/task-1.mwt task-1.mwt result-1.mwr {d}/out/1.out {d}/out/1.err")
    );
}

#[test]
fn no_requirements_line_without_requirements() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path());
    spec.requirements = None;
    let text = render_submit(&spec, &dir.path().join("i"), None).unwrap();
    assert!(!text.contains("requirements  "), "{text}");
    assert!(text.contains("max_retries"));
}

#[test]
fn user_template() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("mine.tera");
    std::fs::write(
        &t,
        "executable = {{ executable }}\n+Site = \"x\"\nqueue {{ items | length }}\n",
    )
    .unwrap();
    let text = render_submit(&spec(dir.path()), &dir.path().join("i"), Some(&t)).unwrap();
    assert!(text.ends_with("queue 3\n"), "{text}");
    std::fs::write(&t, "{{ nope(").unwrap();
    let e = render_submit(&spec(dir.path()), &dir.path().join("i"), Some(&t)).unwrap_err();
    assert!(
        matches!(e, CondorError::Template { .. }) && e.to_string().contains("mine.tera"),
        "{e}"
    );
    let e = render_submit(
        &spec(dir.path()),
        &dir.path().join("i"),
        Some(&dir.path().join("missing.tera")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing.tera"), "{e}");
}

#[test]
fn unsafe_values_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    type Edit = Box<dyn Fn(&mut SubmitSpec)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "items[1].task_bundle",
            Box::new(|s| s.items[1].task_bundle = PathBuf::from("/tmp/a b.mwt")),
        ),
        (
            "items[0].output",
            Box::new(|s| s.items[0].output = PathBuf::from("/tmp/o,ut")),
        ),
        (
            "items[2].result_bundle",
            Box::new(|s| s.items[2].result_bundle = "d/r.mwr".into()),
        ),
        (
            "items[2].result_bundle",
            Box::new(|s| s.items[2].result_bundle = "result-0.mwr".into()),
        ),
        (
            "program_bundle",
            Box::new(|s| s.program_bundle = PathBuf::from("/tmp/$(x)")),
        ),
        (
            "executable",
            Box::new(|s| s.executable = PathBuf::from("/tmp/w\"q")),
        ),
        ("batch_name", Box::new(|s| s.batch_name = "a b".into())),
        (
            "requirements",
            Box::new(|s| s.requirements = Some("true\nqueue 5".into())),
        ),
        ("items", Box::new(|s| s.items.clear())),
    ];
    for (field, f) in cases {
        let mut s = spec(dir.path());
        f(&mut s);
        let e = write_submit_files(&s, dir.path(), None).unwrap_err();
        assert!(
            matches!(&e, CondorError::UnsafeValue { field: got, .. } if got == field),
            "{field}: {e}"
        );
    }
}
