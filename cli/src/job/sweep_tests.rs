//! Lazy inputs: a sweep is counted without being expanded, and input `i` made from its
//! index is the `i`-th input of the iteration (what a resumed master relies on).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use super::*;

fn job(inputs: &str) -> Job {
    let text = format!("[program]\npath = \"/bin/cat\"\n{inputs}");
    Job::parse(Path::new("/tmp/job.toml"), text).unwrap()
}

#[test]
fn input_i_of_a_sweep_is_its_ith_input() {
    let j = job("[inputs.sweep]\na = [\"x\", 2, true]\nb = { start = -5, end = 9, step = 3 }\nc = [0.5, 1.5]\n");
    let inputs = j.input_source().unwrap();
    assert_eq!(inputs.len(), 3 * 5 * 2);
    let all: Vec<_> = inputs.iter().map(Result::unwrap).collect();
    assert_eq!(all.len(), 30);
    assert_eq!(all[0], serde_json::json!({"a": "x", "b": -5, "c": 0.5}));
    assert_eq!(all[29], serde_json::json!({"a": true, "b": 7, "c": 1.5}));
    for (i, v) in all.iter().enumerate() {
        assert_eq!(inputs.get(i as u64).as_ref(), Some(v), "input {i}");
    }
    assert_eq!(inputs.get(30), None);
}

#[test]
fn a_huge_sweep_is_counted_not_expanded() {
    // 10^7 x 10^7 = 10^14 tasks: refused at once, without allocating any of them.
    let j = job(
        "[inputs.sweep]\na = { start = 0, end = 10000000 }\nb = { start = 0, end = 10000000 }\n",
    );
    let e = j.input_source().unwrap_err().to_string();
    assert!(e.contains("100000000000000 tasks"), "{e}");
    // Just under the limit: counted, and only the asked-for input is made.
    let j = job("[inputs.sweep]\na = { start = 0, end = 5000 }\nb = { start = 0, end = 10000 }\n");
    let inputs = j.input_source().unwrap();
    assert_eq!(inputs.len(), 50_000_000);
    assert_eq!(
        inputs.get(49_999_999),
        Some(serde_json::json!({"a": 4999, "b": 9999}))
    );
    // A full-i64 range counts right (no overflow).
    let j = job(&format!(
        "[inputs.sweep]\na = {{ start = {}, end = {}, step = {} }}\n",
        i64::MIN,
        i64::MAX,
        i64::MAX
    ));
    let inputs = j.input_source().unwrap();
    assert_eq!(inputs.len(), 3);
    assert_eq!(
        inputs.iter().map(Result::unwrap).collect::<Vec<_>>(),
        vec![
            serde_json::json!({"a": i64::MIN}),
            serde_json::json!({"a": -1}),
            serde_json::json!({"a": i64::MAX - 1})
        ]
    );
}

#[test]
fn a_file_of_inputs_is_checked_then_read_lazily() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.jsonl"), "{\"a\":1}\n\n[2]\n").unwrap();
    let text = "[program]\npath = \"/bin/cat\"\n[inputs]\nfile = \"in.jsonl\"\n".to_string();
    let j = Job::parse(&dir.path().join("job.toml"), text).unwrap();
    let inputs = j.input_source().unwrap();
    assert_eq!(inputs.len(), 2);
    assert_eq!(inputs.get(0), None, "a file is read back from the journal");
    let all: Vec<_> = inputs.iter().map(Result::unwrap).collect();
    assert_eq!(
        all,
        vec![serde_json::json!({"a": 1}), serde_json::json!([2])]
    );
    std::fs::write(dir.path().join("in.jsonl"), "{\"a\":1}\nnot json\n").unwrap();
    let e = j.input_source().unwrap_err().to_string();
    assert!(e.contains("in.jsonl:2:"), "{e}");
}

/// The template `range` over the whole of i64 in steps of i64::MAX: three values, made
/// without overflow (`i * step` passed i64, a panic in a debug build).
#[test]
fn a_template_range_with_a_huge_step_does_not_overflow() {
    let args = [
        ("start".to_string(), serde_json::json!(i64::MIN)),
        ("end".to_string(), serde_json::json!(i64::MAX)),
        ("step_by".to_string(), serde_json::json!(i64::MAX)),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        bounded_range(&args).unwrap(),
        serde_json::json!([i64::MIN, -1, i64::MAX - 1])
    );
}
