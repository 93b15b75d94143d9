//! Property tests of what condor-kit reads from outside: the job event log (arbitrary bytes,
//! real logs mutated, cut or written in arbitrary chunks), the item file it reads back, the
//! inlined item list, `condor_submit -terse` output and `condor_q`/`condor_history` JSON.
//! Every parser must return a value or a clean error on any input, never panic.
//!
//! Deterministic: a fixed seed and case count unless `PROPTEST_RNG_SEED`/`PROPTEST_CASES` are
//! set (to explore further by hand), no failure files written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_condor_kit::{
    inline_items, parse_ads, parse_items, parse_record, parse_terse, render_items, render_submit,
    LogEvent, LogFollower, SubmitItem, SubmitSpec,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use std::io::Write;
use std::path::{Path, PathBuf};

fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        base.rng_seed
    } else {
        RngSeed::Fixed(0x6d77_636f_6e64)
    };
    ProptestConfig {
        // `PROPTEST_CASES` explores further by hand; CI runs the given count.
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

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/condor")
}

/// The real logs of tests/fixtures/condor (the large synthetic one too).
fn fixtures() -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    assert!(names.len() >= 5, "fixtures missing: {names:?}");
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// What one or more polls found: events, bad records and unknown codes, in order.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    events: Vec<LogEvent>,
    bad: Vec<String>,
    unknown: usize,
}

impl Seen {
    fn add(&mut self, f: &mut LogFollower) {
        let p = f.poll().unwrap();
        // Each test's log lives in its own temporary directory: compare the rest.
        self.events.extend(p.events.into_iter().map(|mut e| {
            assert_eq!(e.log, f.path());
            e.log = PathBuf::from("job.log");
            e
        }));
        self.bad.extend(p.bad_records.iter().map(|e| e.to_string()));
        self.unknown += p.unknown_skipped;
    }
    fn records(&self) -> usize {
        self.events.len() + self.bad.len() + self.unknown
    }
}

/// Follows `bytes` written at once.
fn follow_whole(bytes: &[u8]) -> (Seen, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.log");
    std::fs::write(&path, bytes).unwrap();
    let mut f = LogFollower::new(&path);
    let mut seen = Seen::default();
    seen.add(&mut f);
    (seen, f.offset())
}

/// Like [`follow_whole`] for any bytes: a log whose first non-blank byte is `{` or `<`
/// (HTCondor's JSON or XML format) must be refused as such, and gives `None`.
fn follow_any(bytes: &[u8]) -> Option<(Seen, u64)> {
    if matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'<')
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        std::fs::write(&path, bytes).unwrap();
        let e = LogFollower::new(&path).poll().unwrap_err();
        assert!(
            matches!(e, mw_condor_kit::CondorError::LogFormat { .. }),
            "{e:?}"
        );
        return None;
    }
    Some(follow_whole(bytes))
}

/// The terminator lines (`...`, with or without `\r`) of `bytes` and the byte after the last.
fn terminators(bytes: &[u8]) -> (usize, u64) {
    let mut n = 0;
    let mut end = 0u64;
    let mut pos = 0usize;
    while let Some(nl) = bytes[pos..].iter().position(|&b| b == b'\n') {
        let line = &bytes[pos..pos + nl];
        pos += nl + 1;
        if line.strip_suffix(b"\r").unwrap_or(line) == b"..." {
            n += 1;
            end = pos as u64;
        }
    }
    (n, end)
}

/// Lines that look like an event log's, valid or nearly so, with numbers of any size.
fn log_line() -> impl Strategy<Value = String> {
    let num = prop_oneof![
        (0u64..200).prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("99999999999999999999999".to_string()),
        Just("-01".to_string()),
        "[0-9]{0,6}",
    ];
    let header = (
        prop_oneof![
            (0u32..120).prop_map(|c| format!("{c:03}")),
            Just("4294967296".to_string()),
            "[0-9]{1,5}",
        ],
        num.clone(),
        num.clone(),
        num,
        prop_oneof![
            Just("2024-01-31 12:34:56".to_string()),
            Just("01/31 12:34:56".to_string()),
            Just("2024-13-40 25:61:99.1234Z".to_string()),
            "[0-9/:. -]{0,22}",
        ],
        ".{0,30}",
    )
        .prop_map(|(code, c, p, s, when, msg)| format!("{code} ({c}.{p}.{s}) {when} {msg}"));
    prop_oneof![
        3 => header,
        3 => Just("...".to_string()),
        1 => Just("...\r".to_string()),
        2 => Just("\t(1) Normal termination (return value 0)".to_string()),
        1 => Just("\t(0) Abnormal termination (signal 99999999999999999999)".to_string()),
        1 => Just("\t(1) Normal termination (return value -".to_string()),
        1 => "\tCode [0-9]{1,25} Subcode [0-9]{1,25}",
        1 => "\t[0-9]{1,25}  -  MemoryUsage of job \\(MB\\)",
        1 => Just(String::new()),
        3 => ".{0,40}",
    ]
}

fn log_text() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(log_line(), 0..40), any::<bool>()).prop_map(|(lines, trailing)| {
        let mut s = lines.join("\n");
        if trailing {
            s.push('\n');
        }
        s.into_bytes()
    })
}

/// A byte-level mutation of a text: flip, replace, insert or delete at a position.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 1..8),
                Just(b"\n...\n".to_vec()),
                Just(b"\r".to_vec()),
                Just("é".as_bytes().to_vec()),
            ]
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<prop::sample::Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        if let Mutation::Insert(_, v) = m {
            bytes.extend_from_slice(v);
        }
        return;
    }
    match m {
        Mutation::Flip(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        Mutation::Set(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Mutation::Insert(i, v) => {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, v.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let i = i.index(bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
    }
}

/// Every `...` line ends exactly one record (an event, a bad record or an unknown code),
/// and the follower consumes up to the last of them, never into a partial record.
fn assert_accounted(bytes: &[u8], seen: &Seen, offset: u64) {
    let (n, end) = terminators(bytes);
    assert_eq!(seen.records(), n, "records vs `...` lines");
    assert_eq!(offset, end, "offset vs the end of the last record");
    for e in &seen.events {
        assert!(e.line >= 1, "line numbers are 1-based: {e:?}");
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary bytes: no panic, every record accounted for.
    #[test]
    fn follower_takes_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Some((seen, offset)) = follow_any(&bytes) {
            assert_accounted(&bytes, &seen, offset);
        }
    }

    /// Log-like lines with forged numbers, dates and bodies: no panic, records accounted for.
    #[test]
    fn follower_takes_log_like_text(bytes in log_text()) {
        if let Some((seen, offset)) = follow_any(&bytes) {
            assert_accounted(&bytes, &seen, offset);
        }
    }

    /// One record's lines straight into the record parser: a value or a clean error.
    #[test]
    fn parse_record_takes_any_lines(lines in prop::collection::vec(log_line(), 0..8), first in any::<usize>()) {
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        if let Ok(Some(ev)) = parse_record(&refs, Path::new("x.log"), first) {
            prop_assert_eq!(ev.line, first);
            prop_assert!(ev.time.month >= 1 && ev.time.month <= 12);
            prop_assert!(ev.time.hour <= 23 && ev.time.minute <= 59 && ev.time.second <= 60);
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// A real log written in arbitrary chunks (a poll after each) gives exactly the events,
    /// bad records and line numbers of the whole log read at once.
    #[test]
    fn chunked_follow_equals_whole(
        which in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let logs = fixtures();
        let log = &logs[which.index(logs.len())];
        let (whole, whole_offset) = follow_whole(log);
        prop_assert!(!whole.events.is_empty());
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(log.len() + 1)).collect();
        points.push(log.len());
        points.sort_unstable();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        let mut file = std::fs::File::create(&path).unwrap();
        let mut f = LogFollower::new(&path);
        let mut seen = Seen::default();
        let mut written = 0;
        for p in points {
            file.write_all(&log[written..p]).unwrap();
            file.flush().unwrap();
            written = p;
            seen.add(&mut f);
            prop_assert!(f.offset() <= written as u64);
        }
        prop_assert_eq!(f.offset(), whole_offset);
        prop_assert_eq!(seen, whole);
    }

    /// A real log cut anywhere (a writer that stopped mid-record) gives a prefix of the
    /// whole log's events and consumes nothing of the cut record.
    #[test]
    fn cut_log_gives_a_prefix(which in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
        let logs = fixtures();
        let log = &logs[which.index(logs.len())];
        let (whole, _) = follow_whole(log);
        let cut = cut.index(log.len() + 1);
        let (part, offset) = follow_whole(&log[..cut]);
        prop_assert!(offset <= cut as u64);
        prop_assert!(part.events.len() <= whole.events.len());
        prop_assert_eq!(&part.events[..], &whole.events[..part.events.len()]);
        assert_accounted(&log[..cut], &part, offset);
    }

    /// A real log with bit flips, insertions and deletions: no panic, records accounted
    /// for, and a damaged record does not stop the ones after it (the count of records
    /// equals the count of `...` lines).
    #[test]
    fn mutated_log_never_panics(
        which in any::<prop::sample::Index>(),
        muts in prop::collection::vec(mutation(), 1..12),
    ) {
        let logs = fixtures();
        let mut log = logs[which.index(logs.len())].clone();
        for m in &muts {
            mutate(&mut log, m);
        }
        let (seen, offset) = follow_whole(&log);
        assert_accounted(&log, &seen, offset);
    }
}

// ------------------------------------------------------------------ item file

/// A path of `check_path`'s characters whose last component is a plain file name.
fn safe_path() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec("[A-Za-z0-9_+@:%~-][A-Za-z0-9_.+@:%~-]{0,10}", 1..4),
    )
        .prop_map(|(abs, comps)| {
            let p = comps.join("/");
            if abs {
                format!("/{p}")
            } else {
                p
            }
        })
}

fn safe_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_+@:%~-][A-Za-z0-9_.+@:%~-]{0,20}"
}

fn spec_with(items: Vec<SubmitItem>) -> SubmitSpec {
    SubmitSpec {
        batch_name: "mw_job_b1".into(),
        executable: "/opt/mw/mw-worker".into(),
        program_bundle: "/data/program.tar.gz".into(),
        initialdir: "/data/results".into(),
        log: "/data/job.log".into(),
        request_cpus: 1,
        request_memory_mb: 128,
        request_disk_mb: 64,
        requirements: None,
        max_retries: 0,
        items,
    }
}

fn items() -> impl Strategy<Value = Vec<SubmitItem>> {
    prop::collection::vec(
        (
            any::<u64>(),
            safe_path(),
            safe_name(),
            safe_path(),
            safe_path(),
        ),
        1..12,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (task_index, task, result, out, err))| SubmitItem {
                task_index,
                task_bundle: task.into(),
                // Unique per batch, as validate() demands.
                result_bundle: format!("{result}_{i}"),
                output: out.into(),
                error: err.into(),
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// What `render_items` writes, `parse_items` reads back line for line.
    #[test]
    fn item_file_round_trips(items in items()) {
        let spec = spec_with(items);
        let text = render_items(&spec).unwrap();
        let lines = parse_items(&text).unwrap();
        prop_assert_eq!(lines.len(), spec.items.len());
        for (line, item) in lines.iter().zip(&spec.items) {
            prop_assert_eq!(line.task_index, item.task_index);
            prop_assert_eq!(&line.task_path, &item.task_bundle);
            prop_assert_eq!(
                Some(line.task_bundle.as_str()),
                item.task_bundle.file_name().and_then(|n| n.to_str())
            );
            prop_assert_eq!(&line.result_bundle, &item.result_bundle);
            prop_assert_eq!(&line.output, &item.output);
            prop_assert_eq!(&line.error, &item.error);
        }
    }

    /// Any text as an item file: a clean error or lines whose every field passed the
    /// shell-safe check (no space, quote, `$`, `#`, comma or control character).
    #[test]
    fn parse_items_takes_any_text(text in prop_oneof![".{0,200}", "([0-9a-z/. ]{0,30}\n){0,6}"]) {
        if let Ok(lines) = parse_items(&text) {
            for l in lines {
                for field in [
                    l.task_path.to_str().unwrap(),
                    &l.task_bundle,
                    &l.result_bundle,
                    l.output.to_str().unwrap(),
                    l.error.to_str().unwrap(),
                ] {
                    prop_assert!(!field.is_empty());
                    prop_assert!(field.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+@:%~".contains(c)), "{field:?}");
                }
                prop_assert!(!l.task_bundle.contains('/') && !l.result_bundle.contains('/'));
            }
        }
    }

    /// The rendered submit description with its items inlined stands alone: exactly one
    /// `queue ... from (` list holding every item line, and no `from FILE` left.
    #[test]
    fn inlined_items_hold_every_item(items in items()) {
        let spec = spec_with(items);
        let items_text = render_items(&spec).unwrap();
        let submit = render_submit(&spec, Path::new("/data/mw_job_b1.items"), None).unwrap();
        let inlined = inline_items(&submit, &items_text).unwrap();
        prop_assert!(!inlined.contains("/data/mw_job_b1.items"));
        let open = inlined.lines().filter(|l| l.trim_start().to_ascii_lowercase().starts_with("queue") && l.trim_end().ends_with("from (")).count();
        prop_assert_eq!(open, 1);
        for l in items_text.lines() {
            prop_assert!(inlined.lines().any(|x| x == l), "missing item line {:?}", l);
        }
    }

    /// Any submit text and item text: inlined or a clean error, never a panic.
    #[test]
    fn inline_items_takes_any_text(
        submit in prop_oneof![".{0,120}", "(queue[ \t]?[a-zA-Z ,]{0,20}( from| FROM)? ?[a-z(/ ]{0,10}\r?\n|.{0,20}\n){0,5}"],
        items in prop_oneof![".{0,60}", "([ )#a-z0-9]{0,12}\n){0,4}"],
    ) {
        if let Ok(out) = inline_items(&submit, &items) {
            prop_assert!(out.contains(" from (\n"));
        }
    }
}

// ------------------------------------------------------------------ tool output

proptest! {
    #![proptest_config(config(256))]

    /// `condor_submit -terse` output of any shape: handles or a clean error, and handles
    /// are exactly the ranges the lines give.
    #[test]
    fn parse_terse_takes_any_text(text in prop_oneof![
        ".{0,80}",
        "([0-9]{1,4}\\.[0-9]{1,3} - [0-9]{1,4}\\.[0-9]{1,3}\n){0,4}",
        "([0-9-]{1,22}\\.[0-9-]{1,22} - [0-9-]{1,22}\\.[0-9-]{1,22}\n){0,2}",
        prop::collection::vec((0u64..4, any::<u64>(), any::<u64>()), 1..3).prop_map(|v| {
            v.iter().map(|(c, a, b)| format!("{c}.{} - {c}.{}\n", a.min(b), a.max(b))).collect::<String>()
        }),
    ]) {
        // Bounded: a forged range of 10^20 procs must not be expanded into memory.
        if let Ok(handles) = parse_terse(&text) {
            prop_assert!(!handles.is_empty());
            prop_assert!(handles.len() <= 1 << 20, "{} handles", handles.len());
        }
    }

    /// `condor_q`/`condor_history -json` output, arbitrary or JSON-shaped with forged
    /// numbers: ads or a clean error; ids are what the JSON says.
    #[test]
    fn parse_ads_takes_any_text(text in prop_oneof![
        ".{0,80}",
        (
            prop_oneof![Just("-1".to_string()), any::<i64>().prop_map(|n| n.to_string()), Just("1e300".to_string()), Just("18446744073709551615".to_string()), Just("\"3\"".to_string())],
            prop_oneof![Just("0".to_string()), any::<u32>().prop_map(|n| n.to_string()), Just("null".to_string())],
            prop_oneof![Just("5".to_string()), any::<i64>().prop_map(|n| n.to_string()), Just("2.5".to_string())],
        ).prop_map(|(c, p, s)| format!("[{{\"ClusterId\": {c}, \"ProcId\": {p}, \"JobStatus\": {s}}}]")),
    ]) {
        if let Ok(ads) = parse_ads(&text) {
            for ad in ads {
                prop_assert_eq!(
                    ad.attributes.get("ClusterId").and_then(|v| v.as_u64()),
                    Some(ad.handle.cluster)
                );
            }
        }
    }
}

/// A `condor_submit -terse` line naming more procs than any batch holds is refused, not
/// expanded. Found by `parse_terse_takes_any_text`: `0.0 - 0.18446744073709551615` panicked
/// ("capacity overflow") and ranges of 2^40 procs aborted the whole process (memory
/// allocation failed), which no slot thread can catch.
#[test]
fn parse_terse_refuses_a_forged_huge_range() {
    let e = parse_terse("0.0 - 0.18446744073709551615\n").unwrap_err();
    assert!(e.contains("procs"), "{e}");
    let e = parse_terse("7.0 - 7.999\n8.0 - 8.18446744073709551614\n").unwrap_err();
    assert!(e.contains("procs"), "{e}");
    assert_eq!(parse_terse("5.0 - 5.2\n").unwrap().len(), 3);
}
