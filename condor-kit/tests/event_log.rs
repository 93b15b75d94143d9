//! Job event log parsing, following and watching, over the real HTCondor logs in
//! tests/fixtures/condor/ (copied from /work/shared/fixtures/condor, provenance in its README).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed expectation is a test failure

use mw_condor_kit::{
    spawn_log_watcher, spawn_polling_log_watcher, EventKind, LogEvent, LogFollower, Termination,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/condor")
        .join(name)
}

fn read_all(path: &Path) -> Vec<LogEvent> {
    let mut f = LogFollower::new(path);
    let polled = f.poll().unwrap();
    assert!(polled.bad_records.is_empty(), "{:?}", polled.bad_records);
    assert_eq!(polled.unknown_skipped, 0);
    assert_eq!(f.offset(), std::fs::metadata(path).unwrap().len());
    polled.events
}

/// (code, cluster, proc, outcome) where outcome is "rv N", "sig N" or "".
fn summary(events: &[LogEvent]) -> Vec<(u32, i64, i64, String)> {
    events
        .iter()
        .map(|e| {
            let o = match &e.kind {
                EventKind::Terminated(Termination::Normal { return_value }) => {
                    format!("rv {return_value}")
                }
                EventKind::Terminated(Termination::Abnormal { signal, .. }) => {
                    format!("sig {signal}")
                }
                _ => String::new(),
            };
            (e.code, e.cluster, e.proc, o)
        })
        .collect()
}

fn s(code: u32, c: i64, p: i64, o: &str) -> (u32, i64, i64, String) {
    (code, c, p, o.to_string())
}

#[test]
fn gt1957_signal_abort_normal() {
    let ev = read_all(&fixture("gt1957_signal11_abort_normal.log"));
    assert_eq!(
        summary(&ev),
        vec![
            s(0, 180158, 0, ""),
            s(1, 180158, 0, ""),
            s(5, 180158, 0, "sig 11"),
            s(0, 180159, 0, ""),
            s(1, 180159, 0, ""),
            s(9, 180158, 0, ""),
            s(5, 180159, 0, "rv 0"),
        ]
    );
    assert_eq!(ev[0].time.year, None);
    assert_eq!((ev[0].time.month, ev[0].time.day), (3, 10));
    match &ev[0].kind {
        EventKind::Submitted { host, notes } => {
            assert_eq!(host, "<128.105.167.40:43454>");
            assert_eq!(notes, &vec!["DAG Node: A".to_string()]);
        }
        k => panic!("{k:?}"),
    }
    assert_eq!(
        ev[2].kind,
        EventKind::Terminated(Termination::Abnormal {
            signal: 11,
            core_file: None
        })
    );
}

#[test]
fn eight_space_indent() {
    let ev = read_all(&fixture("abnormal_signal11_then_abort.log"));
    assert_eq!(
        summary(&ev),
        vec![
            s(0, 1, 0, ""),
            s(1, 1, 0, ""),
            s(5, 1, 0, "sig 11"),
            s(9, 1, 0, "")
        ]
    );
    assert!(matches!(&ev[3].kind, EventKind::Aborted { reason: None }));
}

#[test]
fn dag_with_post_script() {
    let ev = read_all(&fixture("dag_normal_term_postscript.log"));
    assert_eq!(
        summary(&ev),
        vec![
            s(0, 3457, 0, ""),
            s(1, 3457, 0, ""),
            s(0, 3458, 0, ""),
            s(5, 3457, 0, "rv 0"),
            s(1, 3458, 0, ""),
            s(5, 3458, 0, "rv 0"),
            s(16, 3458, 0, ""),
        ]
    );
    assert!(matches!(ev[6].kind, EventKind::Other { .. }));
}

#[test]
fn job_ad_information() {
    let ev = read_all(&fixture("submit_plus_jobad_028.log"));
    assert_eq!(
        summary(&ev),
        vec![
            s(0, 236467, 0, ""),
            s(28, 236467, 0, ""),
            s(0, 236468, 0, ""),
            s(28, 236468, 0, "")
        ]
    );
    match &ev[1].kind {
        EventKind::JobAdInformation { attributes } => {
            assert!(attributes.contains(&("LogNotes".into(), "\"DAG Node: Job1\"".into())));
            assert!(attributes.contains(&("Cluster".into(), "236467".into())));
        }
        k => panic!("{k:?}"),
    }
}

#[test]
fn iso_dates_and_trailers() {
    let ev = read_all(&fixture("iso_date_normal_term_984.log"));
    assert_eq!(
        summary(&ev),
        vec![
            s(0, 984, 0, ""),
            s(1, 984, 0, ""),
            s(6, 984, 0, ""),
            s(5, 984, 0, "rv 0")
        ]
    );
    assert_eq!(ev[0].time.year, Some(2023));
    assert_eq!(
        (ev[0].time.hour, ev[0].time.minute, ev[0].time.second),
        (9, 42, 38)
    );
    assert_eq!(
        ev[2].kind,
        EventKind::ImageSize {
            size_kb: Some(150),
            memory_usage_mb: Some(2),
            resident_set_size_kb: Some(2000)
        }
    );
}

#[test]
fn synthetic_all_types_counts() {
    let ev = read_all(&fixture("synthetic_all_event_types.log"));
    assert_eq!(ev.len(), 851);
    let mut counts = BTreeMap::new();
    for e in &ev {
        *counts.entry(e.code).or_insert(0) += 1;
    }
    let expected: BTreeMap<u32, i32> = [
        (0, 42),
        (1, 35),
        (2, 48),
        (3, 53),
        (4, 35),
        (5, 43),
        (6, 32),
        (7, 28),
        (8, 35),
        (9, 40),
        (10, 31),
        (11, 49),
        (12, 48),
        (13, 43),
        (14, 42),
        (15, 40),
        (16, 41),
        (17, 46),
        (18, 41),
        (19, 38),
        (20, 35),
        (22, 3),
        (23, 1),
        (24, 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, expected);
    assert!(ev
        .iter()
        .any(|e| e.cluster == -1 && e.proc == -1 && e.handle().is_none()));
    // Old-style held events: no reason, no code.
    assert!(ev.iter().any(|e| matches!(
        e.kind,
        EventKind::Held {
            reason: None,
            code: None,
            subcode: None
        }
    )));
    assert!(ev.iter().all(|e| !matches!(e.kind, EventKind::Other { .. })
        || ![0, 1, 4, 5, 7, 9, 12, 13, 22, 23, 24].contains(&e.code)));
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

const SUBMIT: &str = "000 (7.000.000) 2026-11-24 10:00:00 Job submitted from host: <1.2.3.4:5>\n    mw task 0\n...\n";
const TERM_HEAD: &str = "005 (7.000.000) 2026-11-24 10:00:05 Job terminated.\n\t(1) Normal termination (return value 3)\n";
const TERM_TAIL: &str = "\t0  -  Run Bytes Sent By Job\n...\n";

#[test]
fn incremental_reads_keep_partial_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("batch.log");
    let mut f = LogFollower::new(&log);
    assert!(
        f.poll().unwrap().events.is_empty(),
        "missing file reads as empty"
    );
    append(&log, SUBMIT);
    append(&log, TERM_HEAD);
    let p = f.poll().unwrap();
    assert_eq!(summary(&p.events), vec![s(0, 7, 0, "")]);
    assert_eq!(
        f.offset() as usize,
        SUBMIT.len(),
        "the partial 005 stays unread"
    );
    assert!(f.poll().unwrap().events.is_empty());
    // The terminator line itself arrives in two writes.
    append(&log, "\t0  -  Run Bytes Sent By Job\n..");
    assert!(f.poll().unwrap().events.is_empty());
    append(&log, ".\n");
    let p = f.poll().unwrap();
    assert_eq!(summary(&p.events), vec![s(5, 7, 0, "rv 3")]);
    assert_eq!(p.events[0].line, 4, "line numbers continue across polls");
    assert!(
        f.poll().unwrap().events.is_empty(),
        "no event is returned twice"
    );
}

#[test]
fn truncated_mid_record_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("t.log");
    let full = std::fs::read_to_string(fixture("gt1957_signal11_abort_normal.log")).unwrap();
    // Cut in the middle of the third record (the 005).
    let cut = full.find("(0) No core file").unwrap();
    std::fs::write(&log, &full[..cut]).unwrap();
    let mut f = LogFollower::new(&log);
    let p = f.poll().unwrap();
    assert_eq!(p.events.len(), 2);
    assert!(p.bad_records.is_empty());
    append(&log, &full[cut..]);
    let p = f.poll().unwrap();
    assert_eq!(p.events.len(), 5);
    assert_eq!(
        p.events[0].kind,
        EventKind::Terminated(Termination::Abnormal {
            signal: 11,
            core_file: None
        })
    );
}

#[test]
fn unknown_codes_and_garbage_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("u.log");
    let text = format!(
        "{SUBMIT}077 (7.000.000) 2026-11-24 10:00:01 Some future event\n\textra\n...\n\
         this is not an event\nat all\n...\n\
         005 (7.000.000) 2026-11-24 10:00:04 Job terminated.\n\tno termination line here\n...\n\
         {TERM_HEAD}{TERM_TAIL}"
    );
    std::fs::write(&log, text).unwrap();
    let mut f = LogFollower::new(&log);
    let p = f.poll().unwrap();
    assert_eq!(summary(&p.events), vec![s(0, 7, 0, ""), s(5, 7, 0, "rv 3")]);
    assert_eq!(p.unknown_skipped, 1);
    assert_eq!(p.bad_records.len(), 2);
    let msgs: Vec<String> = p.bad_records.iter().map(|e| e.to_string()).collect();
    assert!(msgs[0].contains("u.log:7"), "{msgs:?}");
    assert!(
        msgs[1].contains("u.log:10") && msgs[1].contains("termination"),
        "{msgs:?}"
    );
}

#[test]
fn crlf_terminators_and_non_utf8_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    let mut bytes = SUBMIT.replace('\n', "\r\n").into_bytes();
    bytes.extend_from_slice(b"\xff\xfe garbage\n...\n");
    std::fs::write(&log, bytes).unwrap();
    let p = LogFollower::new(&log).poll().unwrap();
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.bad_records.len(), 1);
}

fn watch_roundtrip(polling_only: bool) {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.log");
    let b = dir.path().join("b.log");
    let interval = Duration::from_millis(if polling_only { 50 } else { 2000 });
    let (rx, w) = if polling_only {
        spawn_polling_log_watcher(vec![a.clone()], interval).unwrap()
    } else {
        spawn_log_watcher(vec![a.clone()], interval).unwrap()
    };
    assert_eq!(w.notify_active(), !polling_only);
    // The channel is the only synchronisation; the long timeout only turns a hang into a failure.
    let next = || {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("event")
            .expect("ok event")
    };
    append(&a, SUBMIT);
    let e = next();
    assert_eq!((e.code, e.log.clone()), (0, a.clone()));
    w.add_log(&b).unwrap();
    append(&b, &SUBMIT.replace("(7.", "(8."));
    let e = next();
    assert_eq!((e.code, e.cluster, e.log.clone()), (0, 8, b.clone()));
    append(&a, TERM_HEAD);
    append(&a, TERM_TAIL);
    let e = next();
    assert_eq!(
        e.kind,
        EventKind::Terminated(Termination::Normal { return_value: 3 })
    );
    w.stop();
    assert!(rx.recv().is_err(), "channel closes after stop()");
}

#[test]
fn watcher_with_notify() {
    watch_roundtrip(false);
}

#[test]
fn watcher_polling_fallback() {
    watch_roundtrip(true);
}

/// A log the real HTCondor 23.9 daemons wrote for a job whose mw-worker was killed with
/// SIGKILL: 040, 001 with a SlotName body, 006, 021, an evicted 004 whose reason line has no
/// `Reason:` prefix, a modern 012 (reason + code line), then 009 from condor_rm.
#[test]
fn real_pool_worker_sigkill_held_then_removed() {
    let ev = read_all(&fixture("real23_worker_sigkill_held_removed.log"));
    let codes: Vec<u32> = ev.iter().map(|e| e.code).collect();
    assert_eq!(codes, vec![0, 40, 40, 1, 6, 40, 40, 21, 4, 12, 9]);
    let reason = ev.iter().find_map(|e| match &e.kind {
        EventKind::Evicted { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    let reason = reason.unwrap().unwrap();
    assert!(
        reason.starts_with("Transfer output files failure"),
        "{reason}"
    );
    let held = ev.iter().find_map(|e| match &e.kind {
        EventKind::Held {
            reason,
            code,
            subcode,
        } => Some((reason.clone(), *code, *subcode)),
        _ => None,
    });
    let (reason, code, subcode) = held.unwrap();
    assert!(reason.unwrap().contains("task-0-a1.result"));
    assert_eq!((code, subcode), (Some(12), Some(2)));
    assert!(ev.iter().any(|e| matches!(&e.kind,
        EventKind::RemoteError { message } if message.contains("slot1_1@vm"))));
    assert!(ev.iter().any(|e| matches!(&e.kind,
        EventKind::Aborted { reason: Some(r) } if r.contains("via condor_rm"))));
}

/// Real 004 (condor_vacate_job) then the job runs again and terminates normally.
#[test]
fn real_pool_vacated_job_runs_again() {
    let ev = read_all(&fixture("real23_vacated_then_normal.log"));
    let s = summary(&ev);
    assert_eq!(s.iter().filter(|e| e.0 == 4).count(), 1);
    assert_eq!(s.iter().filter(|e| e.0 == 1).count(), 2);
    assert_eq!(s.last().unwrap().3, "rv 0");
}

/// A record that never ends (no `...` for more than `MAX_RECORD_BYTES`) is reported once and
/// skipped up to its terminator; the records around it are read with their right line
/// numbers, and nothing is read again at the next poll.
#[test]
fn an_overlong_record_is_reported_once_and_skipped() {
    use mw_condor_kit::follower::MAX_RECORD_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.log");
    let good = |c: u32| {
        format!("000 ({c}.000.000) 03/10 16:40:06 Job submitted from host: <127.0.0.1:1>\n...\n")
    };
    let junk_lines = (2 * MAX_RECORD_BYTES / 64 + 10) as usize;
    let mut text = good(1);
    text.push_str("001 (2.000.000) 03/10 16:40:06 Job executing on host: <127.0.0.1:1>\n");
    for _ in 0..junk_lines {
        text.push_str(&format!("{}\n", "x".repeat(63)));
    }
    std::fs::write(&path, &text).unwrap();
    let mut f = LogFollower::new(&path);
    let p = f.poll().unwrap();
    assert_eq!(summary(&p.events), vec![s(0, 1, 0, "")]);
    assert_eq!(p.bad_records.len(), 1, "{:?}", p.bad_records);
    let msg = p.bad_records[0].to_string();
    assert!(msg.contains("without its"), "{msg}");
    assert!(msg.contains(":3") || msg.contains("line 3"), "{msg}");
    // Still unterminated: nothing new, and the long record is not reported again.
    let p = f.poll().unwrap();
    assert!(p.events.is_empty() && p.bad_records.is_empty(), "{p:?}");
    // Its terminator and the next record arrive: only the next record is read.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    write!(file, "...\n{}", good(3)).unwrap();
    drop(file);
    let p = f.poll().unwrap();
    assert_eq!(summary(&p.events), vec![s(0, 3, 0, "")], "{p:?}");
    assert!(p.bad_records.is_empty(), "{:?}", p.bad_records);
    assert_eq!(p.events[0].line, 3 + 1 + junk_lines + 1, "{p:?}");
    assert_eq!(f.offset(), std::fs::metadata(&path).unwrap().len());
}

/// A log HTCondor writes in JSON (`DEFAULT_USERLOG_FORMAT_OPTIONS = JSON`) or XML has no
/// `...` terminators: it was read as one unterminated record, so nothing came out (no event,
/// no error) until it passed 1 MiB. It is an error naming the setting, at every poll.
#[test]
fn json_and_xml_logs_are_an_error_that_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text, format) in [
        (
            "j.log",
            "\n{\n    \"MyType\": \"SubmitEvent\",\n    \"EventTypeNumber\": 0,\n    \"Cluster\": 7,\n    \"Proc\": 0\n}\n",
            "JSON",
        ),
        (
            "x.log",
            "<c>\n    <a n=\"MyType\"><s>SubmitEvent</s></a>\n    <a n=\"Cluster\"><i>7</i></a>\n</c>\n",
            "XML",
        ),
    ] {
        let log = dir.path().join(name);
        std::fs::write(&log, text).unwrap();
        let mut f = LogFollower::new(&log);
        for _ in 0..2 {
            let e = f.poll().unwrap_err();
            assert!(
                matches!(&e, mw_condor_kit::CondorError::LogFormat { format: f, .. } if *f == format),
                "{e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains("DEFAULT_USERLOG_FORMAT_OPTIONS"), "{msg}");
            assert!(msg.contains(name), "{msg}");
        }
    }
    // Blank lines before a text record are no reason for alarm.
    let log = dir.path().join("t.log");
    std::fs::write(&log, format!("\n\n{SUBMIT}")).unwrap();
    assert_eq!(LogFollower::new(&log).poll().unwrap().events.len(), 1);
}

/// A log that was read and is then deleted answered an empty poll for ever; it is reported
/// gone, and a log written again at that path is read from its start.
#[test]
fn a_deleted_log_is_reported_and_a_new_one_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.log");
    let mut f = LogFollower::new(&log);
    assert!(
        f.poll().unwrap().events.is_empty(),
        "not there yet: no error"
    );
    append(&log, SUBMIT);
    assert_eq!(f.poll().unwrap().events.len(), 1);
    std::fs::remove_file(&log).unwrap();
    let e = f.poll().unwrap_err();
    assert!(
        matches!(&e, mw_condor_kit::CondorError::LogGone { path } if *path == log),
        "{e:?}"
    );
    append(&log, &format!("{TERM_HEAD}{TERM_TAIL}"));
    let p = f.poll().unwrap();
    assert_eq!(summary(&p.events), vec![s(5, 7, 0, "rv 3")]);
    assert_eq!(p.events[0].line, 1);
}

/// `sync` reads every log at once and returns after what it found was sent: a shadow
/// exception's reader uses it to know the log has nothing more for a job.
#[test]
fn sync_delivers_what_the_logs_hold_now() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("s.log");
    // An interval no test waits for: only `sync` reads the new record.
    let (rx, watcher) =
        spawn_polling_log_watcher(vec![log.clone()], Duration::from_secs(3600)).unwrap();
    watcher.sync();
    assert!(rx.try_recv().is_err(), "nothing there yet");
    append(&log, SUBMIT);
    watcher.sync();
    let ev = rx.try_recv().unwrap().unwrap();
    assert_eq!((ev.code, ev.cluster, ev.proc), (0, 7, 0));
    watcher.stop();
}

/// Another file renamed over a followed log, at least as long as what was read of it: it was
/// read on from the old file's offset, in the middle of a record, and the termination there
/// was lost. It is read from its start and the rewind is reported.
#[test]
fn a_log_replaced_by_a_longer_file_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("r.log");
    let run = "001 (7.000.000) 2026-11-24 10:00:01 Job executing on host: <1.2.3.5:6>\n...\n";
    append(&log, &format!("{SUBMIT}{run}"));
    let mut f = LogFollower::new(&log);
    let p = f.poll().unwrap();
    assert_eq!(p.events.len(), 2);
    assert!(!p.rewound);
    let new = dir.path().join("r.log.new");
    let text = format!("{SUBMIT}{TERM_HEAD}{TERM_TAIL}");
    assert!(text.len() > SUBMIT.len() + run.len() && SUBMIT.len() < f.offset() as usize);
    std::fs::write(&new, text).unwrap();
    std::fs::rename(&new, &log).unwrap();
    let p = f.poll().unwrap();
    assert!(p.rewound);
    assert!(p.bad_records.is_empty(), "{:?}", p.bad_records);
    assert_eq!(summary(&p.events), vec![s(0, 7, 0, ""), s(5, 7, 0, "rv 3")]);
    let p = f.poll().unwrap();
    assert!(!p.rewound && p.events.is_empty(), "{p:?}");
}
