//! Property tests of job files: arbitrary text and mutated valid job files load or give a
//! clean error naming the file (never a panic), and whatever loads can be asked for its
//! inputs, limits and first task; sweeps of any dimensions are counted exactly with checked
//! arithmetic and refused over the limits, never overflowing.
//!
//! Deterministic: a fixed seed and case count unless `PROPTEST_RNG_SEED`/`PROPTEST_CASES` are
//! set (to explore further by hand), no failure files written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_cli::job::{line_col, range_len, Job, MAX_SWEEP_TASKS};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use std::path::Path;

fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        base.rng_seed
    } else {
        RngSeed::Fixed(0x6d77_6a6f_6273)
    };
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        failure_persistence: None,
        max_shrink_iters: 4096,
        rng_seed,
        ..base
    }
}

const PATH: &str = "/nonexistent/prop/job.toml";

/// A job file using most of what a job file can say.
const RICH: &str = r#"name = "prop-job"
interface = "multicore"
workers = 2
max_output = "8MB"
timeout = 30.5
retries = 2
retry_backoff = 0.5
retry_on = ["exit", 3, "signal"]
args = ["--n", "{{ input.a }}", "{{ index }}"]
outputs = ["out-{{ index }}.txt"]

[env]
SEED = "{{ input.b }}"

[program]
path = "/bin/cat"

[inputs.sweep]
a = { start = -5, end = 100, step = 7 }
b = ["x", 2, true, 0.5]

[condor]
request_memory = "2GB"
request_cpus = 2
tasks_per_job = 4

[boinc]
quorum = 2
comparison = "json"
rel_tolerance = 1e-6
"#;

/// Everything a loaded job can be asked before it runs: none of it may panic.
fn exercise(job: &Job) {
    let _ = job.workers();
    let _ = job.max_output_bytes();
    let _ = job.timeout();
    let _ = job.stdout_mode();
    let _ = job.retry_policy();
    let _ = job.comparison();
    let _ = job.interface();
    let _ = job.file.boinc.to_settings(&job.base_dir);
    for v in [
        &job.file.condor.request_memory,
        &job.file.condor.request_disk,
    ]
    .into_iter()
    .flatten()
    {
        let _ = mw_cli::platforms::size_mb(v);
    }
    if let Ok(inputs) = job.input_source() {
        let n = inputs.len();
        assert!((1..=MAX_SWEEP_TASKS).contains(&n), "{n} inputs");
        let first: Vec<_> = inputs.iter().take(3).collect();
        if let Some(last) = n.checked_sub(1) {
            let _ = inputs.get(last);
        }
        assert_eq!(inputs.get(n), None);
        if let (Ok(builder), Some(Ok(input))) = (job.task_builder(), first.into_iter().next()) {
            let _ = builder.build(0, input);
        }
    }
}

fn forged_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("18446744073709551616".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("9223372036854775807".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("1e308".to_string()),
        Just("\"99999999999999999999GB\"".to_string()),
        Just("\"-1MB\"".to_string()),
        Just("\"\"".to_string()),
        Just("\"{{ input.zz | length }}\"".to_string()),
        Just("\"{% for i in input %}{% endfor %}\"".to_string()),
        Just("[]".to_string()),
        Just("{ start = 0, end = 9223372036854775807 }".to_string()),
        Just("{ start = 0, end = 5, step = 0 }".to_string()),
        Just("{}".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "\"[a-zA-Z0-9{}% ./é-]{0,20}\"",
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    /// Replace the value of line `i` (after its `=`).
    Value(prop::sample::Index, String),
    DeleteLine(prop::sample::Index),
    DuplicateLine(prop::sample::Index),
    /// Byte-level damage (the text is read back as UTF-8, lossily).
    Byte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), forged_value()).prop_map(|(i, v)| Edit::Value(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Edit::DeleteLine),
        1 => any::<prop::sample::Index>().prop_map(Edit::DuplicateLine),
        2 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Byte(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, e: &Edit) -> String {
    if text.is_empty() {
        return String::new();
    }
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match e {
        Edit::Value(i, v) => {
            let i = i.index(lines.len());
            if let Some((k, _)) = lines[i].split_once('=') {
                lines[i] = format!("{k}= {v}");
            }
        }
        Edit::DeleteLine(i) => {
            let i = i.index(lines.len());
            lines.remove(i);
        }
        Edit::DuplicateLine(i) => {
            let i = i.index(lines.len());
            lines.insert(i, lines[i].clone());
        }
        Edit::Byte(i, b) => {
            let mut bytes = text.as_bytes().to_vec();
            let i = i.index(bytes.len());
            bytes[i] = *b;
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        Edit::Truncate(i) => {
            let bytes = text.as_bytes();
            return String::from_utf8_lossy(&bytes[..i.index(bytes.len() + 1)]).into_owned();
        }
    }
    if lines.is_empty() {
        return String::new();
    }
    lines.join("\n") + "\n"
}

/// One sweep dimension: a list of `n` values or a range.
#[derive(Debug, Clone)]
enum Dim {
    List(usize),
    Range(i64, i64, Option<i64>),
}

fn interesting_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        -20i64..20,
        Just(i64::MIN),
        Just(i64::MAX),
        Just(10_000_000),
        Just(50_000_001),
        any::<i64>(),
    ]
}

fn dim() -> impl Strategy<Value = Dim> {
    prop_oneof![
        (0usize..5).prop_map(Dim::List),
        (
            interesting_i64(),
            interesting_i64(),
            prop::option::of(prop_oneof![1i64..5, interesting_i64()])
        )
            .prop_map(|(a, b, s)| Dim::Range(a, b, s)),
        // Ranges of a known size, to reach the product limit.
        (1i64..20_000_000).prop_map(|n| Dim::Range(0, n, None)),
    ]
}

/// The expected count of a dimension (`None`: refused), by exact arithmetic.
fn dim_len(d: &Dim) -> Option<u128> {
    match d {
        Dim::List(n) => Some(*n as u128),
        Dim::Range(start, end, step) => {
            let step = step.unwrap_or(1);
            if step <= 0 {
                return None;
            }
            let span = i128::from(*end) - i128::from(*start);
            let count = if span <= 0 {
                0
            } else {
                (span + i128::from(step) - 1) / i128::from(step)
            };
            (count <= 10_000_000).then_some(count as u128)
        }
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Any text as a job file: a job or an error naming the file, never a panic.
    #[test]
    fn arbitrary_text_loads_or_is_refused(text in prop_oneof![
        ".{0,200}",
        "([a-z_\\[\\]]{0,12} ?= ?[0-9\"{}\\[\\],.a-z -]{0,20}\n){0,10}",
    ]) {
        match Job::parse(Path::new(PATH), text) {
            Ok(job) => exercise(&job),
            Err(e) => prop_assert!(e.to_string().starts_with(PATH), "{e}"),
        }
    }

    /// A rich valid job file edited (forged values, lines removed or doubled, bytes
    /// damaged, cut short): a job or an error naming the file, never a panic.
    #[test]
    fn mutated_job_files_load_or_are_refused(edits in prop::collection::vec(edit(), 1..5)) {
        let mut text = RICH.to_string();
        for e in &edits {
            text = apply(&text, e);
        }
        match Job::parse(Path::new(PATH), text) {
            Ok(job) => exercise(&job),
            Err(e) => prop_assert!(e.to_string().starts_with(PATH), "{e}"),
        }
    }

    /// A sweep of any dimensions is counted exactly (checked multiplication, no overflow)
    /// and refused when a range is too long, has no values or a bad step, or the product
    /// exceeds the limit; its last input is made without expanding the others.
    #[test]
    fn sweeps_are_counted_exactly(dims in prop::collection::vec(dim(), 1..5)) {
        let mut text = "[program]\npath = \"/bin/cat\"\n[inputs.sweep]\n".to_string();
        for (i, d) in dims.iter().enumerate() {
            match d {
                Dim::List(n) => {
                    let vals: Vec<String> = (0..*n).map(|v| v.to_string()).collect();
                    text.push_str(&format!("d{i} = [{}]\n", vals.join(", ")));
                }
                Dim::Range(a, b, Some(s)) => text.push_str(&format!("d{i} = {{ start = {a}, end = {b}, step = {s} }}\n")),
                Dim::Range(a, b, None) => text.push_str(&format!("d{i} = {{ start = {a}, end = {b} }}\n")),
            }
        }
        let lens: Option<Vec<u128>> = dims.iter().map(dim_len).collect();
        let expected = lens.and_then(|l| {
            let product = l.iter().try_fold(1u128, |a, n| a.checked_mul(*n))?;
            (l.iter().all(|n| *n > 0) && product <= u128::from(MAX_SWEEP_TASKS)).then_some(product)
        });
        let got = Job::parse(Path::new(PATH), text.clone())
            .and_then(|job| job.input_source())
            .map(|inputs| (inputs.len(), inputs.get(inputs.len() - 1)));
        match (expected, got) {
            (Some(n), Ok((len, last))) => {
                prop_assert_eq!(u128::from(len), n);
                let last = last.unwrap();
                for (i, d) in dims.iter().enumerate() {
                    let want = match d {
                        Dim::List(k) => serde_json::json!(k - 1),
                        Dim::Range(a, _, s) => {
                            let count = dim_len(d).unwrap() as i128;
                            let v = i128::from(*a) + (count - 1) * i128::from(s.unwrap_or(1));
                            serde_json::json!(i64::try_from(v).unwrap())
                        }
                    };
                    prop_assert_eq!(&last[format!("d{i}")], &want);
                }
            }
            (None, Err(e)) => prop_assert!(e.to_string().starts_with(PATH), "{e}"),
            (want, got) => prop_assert!(false, "{text}: expected {want:?}, got {:?}", got.map(|g| g.0).map_err(|e| e.to_string())),
        }
    }

    /// `range_len` is the exact count, refused only for a bad step or over 10^7 values.
    #[test]
    fn range_len_is_exact(start in interesting_i64(), end in interesting_i64(), step in prop_oneof![1i64..10, interesting_i64()]) {
        let want = dim_len(&Dim::Range(start, end, Some(step)));
        prop_assert_eq!(range_len(start, end, step).ok().map(u128::from), want);
    }

    /// A byte offset anywhere (even inside a character) gives a line and column.
    #[test]
    fn line_col_takes_any_offset(text in "[aé\n😀]{0,30}", offset in 0usize..200) {
        let (line, col) = line_col(&text, offset);
        prop_assert!(line >= 1 && col >= 1);
        prop_assert!(line <= text.matches('\n').count() + 1);
    }
}

/// The job file the mutations start from is valid, and its inputs are what it says.
#[test]
fn the_rich_job_file_loads() {
    let job = Job::parse(Path::new(PATH), RICH.to_string()).unwrap();
    let inputs = job.input_source().unwrap();
    assert_eq!(inputs.len(), 15 * 4);
    job.task_builder().unwrap();
    exercise(&job);
}

/// Found by `line_col_takes_any_offset`: an offset inside a multi-byte character panicked
/// ("byte index 13 is not a char boundary"); it now counts as the character's start.
#[test]
fn line_col_inside_a_character() {
    assert_eq!(line_col("😀😀é\na", 5), (1, 5));
    assert_eq!(line_col("😀😀é\na", 4), (1, 5));
    assert_eq!(line_col("é\n😀", 5), (2, 1));
}
