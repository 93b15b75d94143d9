//! Property tests of BOINC names and of what mw reads back from a BOINC project: workunit
//! names (built, parsed, forged), the shell-safe name check, spool entry names, output file
//! names, the download fanout, error records from the spool, `mw_boinc.toml` and
//! `config.xml`. Every reader must return a value or a clean error on any input.
//!
//! Deterministic: a fixed seed and case count unless `PROPTEST_RNG_SEED`/`PROPTEST_CASES` are
//! set (to explore further by hand), no failure files written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_boinc_kit::names::{is_safe_abs_path, program_file_name};
use mw_boinc_kit::{
    dir_hier_path, error_mask_names, is_safe_name, is_safe_rel_path, max_output_bytes_of,
    wu_name_from_output, ErrorRecord, MwBoincConfig, ProjectLayout, ResultReport, SpoolEntry,
    SpoolLocation, WuName,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use std::path::{Path, PathBuf};

fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        base.rng_seed
    } else {
        RngSeed::Fixed(0x6d77_626f_696e)
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

/// What `/bin/sh` treats specially in a word (and whitespace, which splits words).
const SHELL_SPECIAL: &str = " \t\n\r|&;<>()$`\\\"'*?[]#~=%!{},^";

/// Names, mostly near the safe alphabet, sometimes with anything in them.
fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_.-]{0,140}",
        "[A-Za-z0-9_.\\- ;|&$`'\"*?/]{0,40}",
        "/?([a-z.-]{0,4}/){0,4}[a-z.]{0,3}",
        ".{0,40}",
    ]
}

/// A job name as mw's job files allow it (letters, digits, `_` and `-`).
fn job_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9_-]{0,40}"
}

fn run_id() -> impl Strategy<Value = String> {
    "[0-9a-f]{8}"
}

proptest! {
    #![proptest_config(config(512))]

    /// Anything the one name check accepts is one plain shell word: no metacharacter, no
    /// whitespace, not an option, not hidden, at most 128 bytes.
    #[test]
    fn a_safe_name_is_one_plain_word(s in name_like()) {
        if is_safe_name(&s) {
            prop_assert!(!s.is_empty() && s.len() <= 128);
            prop_assert!(!s.starts_with('-') && !s.starts_with('.'));
            prop_assert!(s.chars().all(|c| c.is_ascii() && !c.is_ascii_control()));
            prop_assert!(!s.chars().any(|c| SHELL_SPECIAL.contains(c) || c == '/'), "{s:?}");
        }
        if is_safe_rel_path(&s) {
            prop_assert!(!s.starts_with('/'));
            for comp in s.split('/') {
                prop_assert!(!comp.is_empty() && comp != "." && comp != "..", "{s:?}");
            }
            prop_assert!(!s.chars().any(|c| SHELL_SPECIAL.contains(c)), "{s:?}");
        }
        if is_safe_abs_path(&s) {
            prop_assert!(s.starts_with('/'));
            for comp in s.split('/').filter(|c| !c.is_empty()) {
                prop_assert!(is_safe_name(comp), "{s:?}");
            }
            prop_assert!(!s.chars().any(|c| SHELL_SPECIAL.contains(c)), "{s:?}");
        }
    }

    /// A workunit name read back is accepted exactly when it is a safe name of at most 100
    /// bytes (room for BOINC's result and output suffixes).
    #[test]
    fn wu_name_parse_is_the_safe_check(s in name_like()) {
        let ok = WuName::parse(&s).is_ok();
        prop_assert_eq!(ok, is_safe_name(&s) && s.len() <= 100);
        if let Ok(wu) = WuName::parse(&s) {
            prop_assert_eq!(wu.as_str(), s.as_str());
            // Whatever is derived from it stays safe.
            for derived in [wu.task_file_name(), wu.result_spool_name(), wu.error_spool_name(), wu.cancel_marker_name()] {
                prop_assert!(is_safe_name(&derived), "{derived:?}");
            }
            // Only a file name in the spool (longer than 128 bytes for a 100-byte name).
            let conflict = wu.conflict_spool_name(u64::MAX);
            prop_assert!(conflict.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)), "{conflict:?}");
            let _ = wu.parts();
            let _ = wu.is_pack();
        }
    }

    /// A task's workunit name gives back its job, run, task and attempt; a pack's name is a
    /// pack and carries no task.
    #[test]
    fn wu_name_round_trips(job in job_name(), run in run_id(), task in any::<u64>(), attempt in any::<u32>(), seq in any::<u64>()) {
        let wu = WuName::for_task(&job, &run, task, attempt).unwrap();
        prop_assert_eq!(WuName::parse(wu.as_str()).unwrap(), wu.clone());
        let parts = wu.parts().unwrap();
        prop_assert_eq!(parts.job, job.as_str());
        prop_assert_eq!(parts.run, run.as_str());
        prop_assert_eq!(parts.task, task);
        prop_assert_eq!(parts.attempt, attempt);
        prop_assert!(!wu.is_pack());
        let pack = WuName::for_pack(&job, &run, seq).unwrap();
        prop_assert!(pack.is_pack());
        prop_assert_eq!(pack.parts(), None);
    }

    /// A name with any shell metacharacter (or a non-ASCII character) put into it anywhere
    /// is refused, whatever mw component built or read it.
    #[test]
    fn forged_wu_names_are_refused(
        job in job_name(), run in run_id(), task in any::<u64>(),
        bad in prop_oneof![
            prop::sample::select(SHELL_SPECIAL.chars().chain("/é\u{0}\u{7f}".chars()).collect::<Vec<_>>()),
        ],
        at in any::<prop::sample::Index>(),
    ) {
        let good = WuName::for_task(&job, &run, task, 1).unwrap().as_str().to_string();
        let mut forged = good.clone();
        forged.insert(at.index(good.len() + 1), bad);
        prop_assert!(WuName::parse(&forged).is_err(), "{forged:?}");
        let result = format!("result_{forged}.tar.gz");
        let error = format!("error_{forged}.toml");
        let bad_job = format!("{job}{bad}");
        prop_assert!(SpoolEntry::parse(&result).is_none());
        prop_assert!(SpoolEntry::parse(&error).is_none());
        prop_assert!(WuName::for_task(&bad_job, &run, task, 1).is_err());
    }

    /// Spool entry names round-trip, and any file name classifies without a panic into a
    /// safe workunit name or nothing.
    #[test]
    fn spool_names_round_trip(job in job_name(), run in run_id(), task in any::<u64>(), other in ".{0,60}") {
        let wu = WuName::for_task(&job, &run, task, 1).unwrap();
        prop_assert_eq!(SpoolEntry::parse(&wu.result_spool_name()), Some(SpoolEntry::Result(wu.clone())));
        prop_assert_eq!(SpoolEntry::parse(&wu.error_spool_name()), Some(SpoolEntry::Error(wu.clone())));
        prop_assert_eq!(SpoolEntry::parse(&wu.cancel_marker_name()), None);
        prop_assert_eq!(SpoolEntry::parse(&wu.conflict_spool_name(3)), None);
        match SpoolEntry::parse(&other) {
            Some(SpoolEntry::Result(w)) | Some(SpoolEntry::Error(w)) => prop_assert!(is_safe_name(w.as_str())),
            None => {}
        }
    }

    /// The workunit inside an output file name `<wu>_<k>_r<random>_<n>` is found again;
    /// anything else gives a part of the input or nothing, never a panic.
    #[test]
    fn output_names_give_back_their_workunit(job in job_name(), run in run_id(), task in any::<u64>(), k in any::<u32>(), r in any::<u64>(), n in any::<u32>(), other in name_like()) {
        let wu = WuName::for_task(&job, &run, task, 1).unwrap();
        let file = format!("{wu}_{k}_r{r}_{n}");
        prop_assert_eq!(wu_name_from_output(&file), Some(wu.as_str()));
        if let Some(w) = wu_name_from_output(&other) {
            prop_assert!(other.starts_with(w) && !w.is_empty());
        }
    }

    /// The download fanout directory is lower-case hex below the fanout.
    #[test]
    fn fanout_is_below_the_fanout(name in ".{0,80}", fanout in any::<u32>()) {
        match dir_hier_path(&name, fanout) {
            None => prop_assert_eq!(fanout, 0),
            Some(h) => {
                prop_assert!(h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                prop_assert!(u64::from_str_radix(&h, 16).unwrap() < u64::from(fanout));
            }
        }
    }

    /// A program's file name is made from any text without a panic, and from a SHA-256
    /// (64 hex digits) it is a safe name holding the first 32. (Any text: it sliced at byte
    /// 32 and panicked inside a multi-byte character; see the regression test below.)
    #[test]
    fn program_file_names(hex in "[0-9a-f]{64}", any_text in ".{0,70}") {
        let name = program_file_name(&hex);
        prop_assert!(is_safe_name(&name));
        prop_assert!(name.contains(&hex[..32]) && !name.contains(&hex[..33]));
        let _ = program_file_name(&any_text);
    }

    /// The error-mask names: one per set bit, known bits by name.
    #[test]
    fn mask_names_one_per_bit(mask in any::<u64>()) {
        let names = error_mask_names(mask);
        prop_assert_eq!(names.len() as u32, mask.count_ones());
    }
}

// ------------------------------------------------------------------ spool and config files

fn report() -> impl Strategy<Value = ResultReport> {
    (".{0,40}", ".{0,40}", "(.|\n){0,200}").prop_map(|(file, exit, stderr_tail)| ResultReport {
        file,
        exit,
        stderr_tail,
    })
}

fn record() -> impl Strategy<Value = ErrorRecord> {
    (
        (
            ".{0,40}",
            0..=i64::MAX as u64,
            any::<i64>(),
            0..=i64::MAX as u64,
        ),
        prop::option::of(".{0,80}"),
        prop::collection::vec(report(), 0..12),
        prop::option::of(".{0,80}"),
    )
        .prop_map(
            |((wu_name, wu_id, batch, error_mask), reason, results, disagreement)| ErrorRecord {
                errors: error_mask_names(error_mask),
                wu_name,
                wu_id,
                batch,
                error_mask,
                reason,
                results,
                disagreement,
            },
        )
}

/// A TOML-ish text: mostly lines of `key = value` with forged values, sometimes anything.
fn toml_like(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        "\"[^\"\\\\]{0,20}\"",
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("\"\\uD800\"".to_string()),
        ".{0,10}",
    ];
    let line = prop_oneof![
        4 => (prop::sample::select(keys), value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => Just("[table]".to_string()),
        1 => ".{0,30}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|l| l.join("\n"))
}

const CONFIG_KEYS: &[&str] = &[
    "app_name",
    "app_version",
    "version_num",
    "platform",
    "project_dir",
    "spool_dir",
    "input_template",
    "output_template",
    "program_logical_name",
    "task_logical_name",
    "result_logical_name",
    "quorum",
    "max_output_bytes",
];

proptest! {
    #![proptest_config(config(256))]

    /// The error record the assimilator writes is what the master reads back, whatever its
    /// strings hold; its description names at most `MAX_REPORTED_RESULTS` results.
    #[test]
    fn error_records_round_trip(r in record()) {
        let text = r.to_text().unwrap();
        let back = ErrorRecord::from_text(&text).unwrap();
        prop_assert_eq!(&back, &r);
        let d = r.describe();
        let shown = d.lines().filter(|l| l.starts_with("  result ")).count();
        // (Names and exits hold no newline here, stderr lines are indented further.)
        prop_assert_eq!(shown, mw_boinc_kit::errors::MAX_REPORTED_RESULTS.min(r.results.len()));
    }

    /// A spool file of any text: a record or a clean error; a record describes itself.
    #[test]
    fn error_record_from_any_text(text in prop_oneof![
        toml_like(&["wu_name", "wu_id", "batch", "error_mask", "errors", "reason", "disagreement", "results"]),
        ".{0,200}",
    ]) {
        if let Ok(r) = ErrorRecord::from_text(&text) {
            let _ = r.describe();
            let _ = r.is_cancelled();
        }
    }

    /// `mw_boinc.toml` as mw-boinc-setup writes it loads back the same (a relative spool
    /// directory taken from the file's directory); any other text loads or is refused.
    #[test]
    fn boinc_config_round_trips(
        app in "[a-z][a-z0-9_]{0,15}",
        version_num in any::<u32>(),
        quorum in any::<u32>(),
        max_output_bytes in prop::option::of(0..=i64::MAX as u64),
        spool in "[a-z]{1,8}(/[a-z]{1,8}){0,2}",
        abs in any::<bool>(),
        text in toml_like(CONFIG_KEYS),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = if abs { PathBuf::from(format!("/{spool}")) } else { PathBuf::from(&spool) };
        let cfg = MwBoincConfig {
            app_name: app.clone(),
            app_version: "1.00".into(),
            version_num,
            platform: "x86_64-pc-linux-gnu".into(),
            project_dir: "/home/boincadm/projects/p".into(),
            spool_dir: spool_dir.clone(),
            input_template: format!("templates/{app}_in"),
            output_template: format!("templates/{app}_out"),
            program_logical_name: "mw_program".into(),
            task_logical_name: "mw_task".into(),
            result_logical_name: "mw_result".into(),
            quorum,
            max_output_bytes,
        };
        std::fs::write(MwBoincConfig::path(dir.path()), cfg.to_text().unwrap()).unwrap();
        let back = MwBoincConfig::load(dir.path()).unwrap();
        let expected = MwBoincConfig { spool_dir: if abs { spool_dir } else { dir.path().join(&spool) }, ..cfg };
        prop_assert_eq!(back, expected);

        let other = dir.path().join("other.toml");
        std::fs::write(&other, &text).unwrap();
        let _ = MwBoincConfig::load_file(&other);
        let _ = SpoolLocation::load(&other);
        if let Ok(Some(n)) = max_output_bytes_of(&other) {
            prop_assert!(n >= 1);
        }
    }

    /// `config.xml` of any text: a layout or a clean error; the fanout is the number given.
    #[test]
    fn config_xml_takes_any_text(
        fanout in prop_oneof![any::<u32>().prop_map(|n| n.to_string()), Just("-1".into()), Just("4294967296".into()), ".{0,6}"],
        noise in ".{0,80}",
        cut in any::<prop::sample::Index>(),
    ) {
        let text = format!("<config>\n<uldl_dir_fanout>{fanout}</uldl_dir_fanout>\n<host>h</host>\n{noise}\n</config>\n");
        let project = Path::new("/p");
        match ProjectLayout::parse(&text, project) {
            Ok(l) => prop_assert_eq!(Some(l.fanout), fanout.trim().parse::<u32>().ok()),
            Err(_) => prop_assert!(fanout.trim().parse::<u32>().is_err()),
        }
        // Cut anywhere (at a character boundary): never a panic.
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let _ = ProjectLayout::parse(&text[..at], project);
        let _ = ProjectLayout::parse(&noise, project);
    }
}

/// Found by `program_file_names`: a text whose byte 32 falls inside a character panicked
/// ("end byte index 32 is not a char boundary").
#[test]
fn program_file_name_of_non_hex_text_does_not_panic() {
    let text = format!("{}é{}", "a".repeat(31), "b".repeat(40));
    assert_eq!(
        program_file_name(&text),
        format!("mw_prog_{}é.tar.gz", "a".repeat(31))
    );
}
