//! Parser for HTCondor's text job event ("user") log: one record = a header line
//! `CCC (cluster.proc.subproc) DATE TIME message`, body lines with any leading whitespace, and a
//! terminating line that is exactly `...`. Turns one complete record into a typed [`LogEvent`].
//! Splitting a growing file into records is the follower's job (`follower.rs`).
//! This module must never know about mw's tasks, bundles or the master.

use crate::error::{CondorError, Result};
use crate::job::JobHandle;
use std::path::{Path, PathBuf};

/// When an event happened, as written in the header. Legacy `MM/DD` headers carry no year;
/// local time unless `utc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EventTime {
    /// The year, when the header has one (ISO form).
    pub year: Option<i32>,
    /// Month, 1–12.
    pub month: u8,
    /// Day of the month, 1–31.
    pub day: u8,
    /// Hour, 0–23.
    pub hour: u8,
    /// Minute, 0–59.
    pub minute: u8,
    /// Second, 0–60.
    pub second: u8,
    /// Milliseconds, when written.
    pub millis: Option<u16>,
    /// Whether the time is UTC (a trailing `Z`).
    pub utc: bool,
}

/// How a job ended (event 005).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Termination {
    /// `(1) Normal termination (return value N)`.
    Normal {
        /// The program's exit code.
        return_value: i64,
    },
    /// `(0) Abnormal termination (signal N)`, with the core file if one was written.
    Abnormal {
        /// The signal number.
        signal: i64,
        /// The core file, if one was written.
        core_file: Option<String>,
    },
}

/// Stage of a file transfer (event 040).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum TransferStage {
    /// Input transfer queued.
    InputQueued,
    /// Input transfer started.
    InputStarted,
    /// Input transfer finished.
    InputFinished,
    /// Output transfer queued.
    OutputQueued,
    /// Output transfer started.
    OutputStarted,
    /// Output transfer finished.
    OutputFinished,
    /// Wording this crate does not know.
    Other(String),
}

/// The typed content of an event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum EventKind {
    /// 000 `Job submitted from host: <sinful>`; notes are the indented lines (submit_event_notes, DAG node).
    Submitted {
        /// The submit host's sinful string.
        host: String,
        /// The indented note lines.
        notes: Vec<String>,
    },
    /// 001 `Job executing on host: <sinful>`.
    Executing {
        /// The execute host's sinful string.
        host: String,
    },
    /// 002: the executable could not be run.
    ExecutableError {
        /// HTCondor's message.
        message: String,
    },
    /// 003.
    Checkpointed,
    /// 004: back to idle.
    Evicted {
        /// Whether the job checkpointed first.
        checkpointed: bool,
        /// Whether it went back to the queue.
        requeued: bool,
        /// Why, when written.
        reason: Option<String>,
    },
    /// 005.
    Terminated(Termination),
    /// 006.
    ImageSize {
        /// Image size in KiB.
        size_kb: Option<u64>,
        /// Memory usage in MB.
        memory_usage_mb: Option<u64>,
        /// Resident set size in KiB.
        resident_set_size_kb: Option<u64>,
    },
    /// 007: the job returns to idle.
    ShadowException {
        /// HTCondor's message, when written.
        message: Option<String>,
    },
    /// 009 `Job was aborted…` (condor_rm).
    Aborted {
        /// The removal reason, when written.
        reason: Option<String>,
    },
    /// 010.
    Suspended,
    /// 011.
    Unsuspended,
    /// 012; old records carry neither reason nor code.
    Held {
        /// The hold reason, when written.
        reason: Option<String>,
        /// `HoldReasonCode`.
        code: Option<i64>,
        /// `HoldReasonSubCode`.
        subcode: Option<i64>,
    },
    /// 013.
    Released {
        /// The release reason, when written.
        reason: Option<String>,
    },
    /// 021.
    RemoteError {
        /// The remote error message.
        message: String,
    },
    /// 022.
    Disconnected {
        /// Why, when written.
        reason: Option<String>,
    },
    /// 023.
    Reconnected,
    /// 024: followed by a new 001, or idle.
    ReconnectFailed {
        /// Why, when written.
        reason: Option<String>,
    },
    /// 028: unindented `Attr = value` ClassAd lines, values kept as ClassAd text.
    JobAdInformation {
        /// `(name, ClassAd value text)` pairs in written order.
        attributes: Vec<(String, String)>,
    },
    /// 040.
    FileTransfer {
        /// Which stage.
        stage: TransferStage,
    },
    /// Any other event code HTCondor defines (008, 014–020, 025–027, 029–039, 041–047, 100–111):
    /// header message and trimmed body lines.
    Other {
        /// The header's message.
        message: String,
        /// The trimmed body lines.
        body: Vec<String>,
    },
}

/// The reason of a 004 event: a `Reason: …` line (older writers), or, as HTCondor 23 writes
/// it, the first body line that is neither the `(N) …` status line, a usage or byte-count
/// line (`…  -  …`) nor the `Partitionable Resources` table that ends the body.
fn evicted_reason(body: &[&str]) -> Option<String> {
    if let Some(r) = body.iter().find_map(|l| l.trim().strip_prefix("Reason:")) {
        return Some(r.trim().to_string()).filter(|r| !r.is_empty());
    }
    body.iter()
        .map(|l| l.trim())
        .take_while(|l| !l.starts_with("Partitionable Resources"))
        .find(|l| !l.is_empty() && !l.starts_with('(') && !l.contains("  -  "))
        .map(str::to_string)
}

/// One event of a job event log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogEvent {
    /// The numeric event code (e.g. 5 for "Job terminated").
    pub code: u32,
    /// Ids as written; `-1` for `(-01.-01.-01)`.
    pub cluster: i64,
    /// Proc id as written.
    pub proc: i64,
    /// Subproc id as written.
    pub subproc: i64,
    /// When it happened.
    pub time: EventTime,
    /// What happened.
    pub kind: EventKind,
    /// The log file and the 1-based line of the header.
    pub log: PathBuf,
    /// The 1-based line of the header in `log`.
    pub line: usize,
}

impl LogEvent {
    /// `cluster.proc`, when both are non-negative.
    pub fn handle(&self) -> Option<JobHandle> {
        let cluster = u64::try_from(self.cluster).ok()?;
        let proc = u64::try_from(self.proc).ok()?;
        Some(JobHandle { cluster, proc })
    }
}

/// Whether HTCondor defines this event code (`JobEventType`). Records with other codes are skipped.
pub fn is_known_code(code: u32) -> bool {
    code <= 47 || (100..=111).contains(&code)
}

/// Parses one complete record (its lines without the `...` terminator). `first_line` is the
/// 1-based line number of `lines[0]` in `log`. Returns `Ok(None)` for an event code HTCondor does
/// not define (skipped), an error for a record that is not an event.
pub fn parse_record(lines: &[&str], log: &Path, first_line: usize) -> Result<Option<LogEvent>> {
    let bad = |line: usize, message: String| CondorError::BadRecord {
        path: log.to_path_buf(),
        line,
        message,
    };
    let header = lines
        .first()
        .ok_or_else(|| bad(first_line, "empty record".into()))?;
    let h =
        parse_header(header).map_err(|m| bad(first_line, format!("{m} in header {header:?}")))?;
    if !is_known_code(h.code) {
        return Ok(None);
    }
    let body: Vec<&str> = lines[1..].iter().map(|l| l.trim()).collect();
    let first_body = || body.iter().find(|l| !l.is_empty()).map(|l| l.to_string());
    let kind = match h.code {
        0 => EventKind::Submitted {
            host: after(&h.message, "Job submitted from host:"),
            notes: body
                .iter()
                .filter(|l| !l.is_empty())
                .map(|l| l.to_string())
                .collect(),
        },
        1 => EventKind::Executing {
            host: after(&h.message, "Job executing on host:"),
        },
        2 => EventKind::ExecutableError {
            message: h.message.clone(),
        },
        3 => EventKind::Checkpointed,
        4 => EventKind::Evicted {
            checkpointed: body
                .iter()
                .any(|l| l.starts_with("(1) Job was checkpointed")),
            requeued: body
                .iter()
                .any(|l| l.starts_with("(0) Job terminated and was requeued")),
            reason: evicted_reason(&body),
        },
        5 => EventKind::Terminated(parse_termination(&body).ok_or_else(|| {
            bad(
                first_line,
                "a \"Job terminated\" event without a \"(1) Normal termination (return value N)\" \
                 or \"(0) Abnormal termination (signal N)\" line"
                    .into(),
            )
        })?),
        6 => EventKind::ImageSize {
            size_kb: after(&h.message, "Image size of job updated:").parse().ok(),
            memory_usage_mb: usage_value(&body, "MemoryUsage of job"),
            resident_set_size_kb: usage_value(&body, "ResidentSetSize of job"),
        },
        7 => EventKind::ShadowException {
            message: first_body(),
        },
        9 => EventKind::Aborted {
            reason: first_body(),
        },
        10 => EventKind::Suspended,
        11 => EventKind::Unsuspended,
        12 => {
            let mut reason = None;
            let mut code = None;
            let mut subcode = None;
            for l in body.iter().filter(|l| !l.is_empty()) {
                if let Some(rest) = l.strip_prefix("Code ") {
                    let mut words = rest.split_whitespace();
                    code = words.next().and_then(|w| w.parse().ok());
                    if words.next() == Some("Subcode") {
                        subcode = words.next().and_then(|w| w.parse().ok());
                    }
                } else if reason.is_none() && *l != "Reason unspecified" {
                    reason = Some(l.to_string());
                }
            }
            EventKind::Held {
                reason,
                code,
                subcode,
            }
        }
        13 => EventKind::Released {
            reason: first_body(),
        },
        21 => EventKind::RemoteError {
            message: std::iter::once(h.message.as_str())
                .chain(body.iter().copied().filter(|l| !l.is_empty()))
                .collect::<Vec<_>>()
                .join("\n"),
        },
        22 => EventKind::Disconnected {
            reason: first_body(),
        },
        23 => EventKind::Reconnected,
        24 => EventKind::ReconnectFailed {
            reason: first_body(),
        },
        28 => EventKind::JobAdInformation {
            attributes: body
                .iter()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        },
        40 => EventKind::FileTransfer {
            stage: match h.message.trim() {
                "Entered queue to transfer input files" => TransferStage::InputQueued,
                "Started transferring input files" => TransferStage::InputStarted,
                "Finished transferring input files" => TransferStage::InputFinished,
                "Entered queue to transfer output files" => TransferStage::OutputQueued,
                "Started transferring output files" => TransferStage::OutputStarted,
                "Finished transferring output files" => TransferStage::OutputFinished,
                other => TransferStage::Other(other.to_string()),
            },
        },
        _ => EventKind::Other {
            message: h.message.clone(),
            body: body
                .iter()
                .filter(|l| !l.is_empty())
                .map(|l| l.to_string())
                .collect(),
        },
    };
    Ok(Some(LogEvent {
        code: h.code,
        cluster: h.cluster,
        proc: h.proc,
        subproc: h.subproc,
        time: h.time,
        kind,
        log: log.to_path_buf(),
        line: first_line,
    }))
}

fn after(message: &str, prefix: &str) -> String {
    message
        .strip_prefix(prefix)
        .unwrap_or(message)
        .trim()
        .to_string()
}

/// `N  -  <label> ...` lines of 006.
fn usage_value(body: &[&str], label: &str) -> Option<u64> {
    body.iter().find_map(|l| {
        let (n, rest) = l.split_once('-')?;
        if rest.trim().starts_with(label) {
            n.trim().parse().ok()
        } else {
            None
        }
    })
}

fn parse_termination(body: &[&str]) -> Option<Termination> {
    for (i, l) in body.iter().enumerate() {
        if let Some(rest) = l.strip_prefix("(1) Normal termination (return value ") {
            let n = rest.strip_suffix(')')?.trim().parse().ok()?;
            return Some(Termination::Normal { return_value: n });
        }
        if let Some(rest) = l.strip_prefix("(0) Abnormal termination (signal ") {
            let signal = rest.strip_suffix(')')?.trim().parse().ok()?;
            let core_file = body
                .get(i + 1)
                .and_then(|c| c.strip_prefix("(1) Corefile in:"))
                .map(|c| c.trim().to_string());
            return Some(Termination::Abnormal { signal, core_file });
        }
    }
    None
}

struct Header {
    code: u32,
    cluster: i64,
    proc: i64,
    subproc: i64,
    time: EventTime,
    message: String,
}

fn parse_header(line: &str) -> std::result::Result<Header, String> {
    let line = line.trim_end_matches('\r');
    let (code_s, rest) = line
        .split_once(' ')
        .ok_or("no space after the event code")?;
    if code_s.len() < 3 || !code_s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("event code {code_s:?} is not 3 or more digits"));
    }
    let code: u32 = code_s
        .parse()
        .map_err(|_| format!("event code {code_s:?} is too large"))?;
    let rest = rest.strip_prefix('(').ok_or("no '(' before the job id")?;
    let (ids, rest) = rest.split_once(") ").ok_or("no ') ' after the job id")?;
    let mut parts = ids.split('.');
    let mut id = |what: &str| -> std::result::Result<i64, String> {
        let s = parts.next().ok_or(format!("job id has no {what}"))?;
        s.parse::<i64>()
            .map_err(|_| format!("job id {what} {s:?} is not a number"))
    };
    let cluster = id("cluster")?;
    let proc = id("proc")?;
    let subproc = id("subproc")?;
    if parts.next().is_some() {
        return Err(format!("job id {ids:?} has more than three parts"));
    }
    let (date_s, rest) = rest.split_once(' ').ok_or("no time after the date")?;
    let (time_s, message) = match rest.split_once(' ') {
        Some((t, m)) => (t, m),
        None => (rest, ""),
    };
    let time = parse_time(date_s, time_s)?;
    Ok(Header {
        code,
        cluster,
        proc,
        subproc,
        time,
        message: message.trim().to_string(),
    })
}

fn num<T: std::str::FromStr>(s: &str, width: usize, what: &str) -> std::result::Result<T, String> {
    if s.len() != width || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {s:?} is not {width} digits"));
    }
    s.parse().map_err(|_| format!("{what} {s:?} out of range"))
}

/// Splits `s` at `sep` into exactly three parts (a missing part is empty, and fails its
/// width check); more than three is an error that says `s` is `not_what`.
fn three_parts<'a>(
    s: &'a str,
    sep: char,
    what: &str,
    not_what: &str,
) -> std::result::Result<[&'a str; 3], String> {
    let mut p = s.split(sep);
    let parts = [
        p.next().unwrap_or(""),
        p.next().unwrap_or(""),
        p.next().unwrap_or(""),
    ];
    match p.next() {
        Some(_) => Err(format!("{what} {s:?} is {not_what}")),
        None => Ok(parts),
    }
}

fn parse_time(date_s: &str, time_s: &str) -> std::result::Result<EventTime, String> {
    let (year, month, day) = if let Some((m, d)) = date_s.split_once('/') {
        (None, num::<u8>(m, 2, "month")?, num::<u8>(d, 2, "day")?)
    } else {
        let [y, m, d] = three_parts(date_s, '-', "date", "neither MM/DD nor YYYY-MM-DD")?;
        (
            Some(num::<i32>(y, 4, "year")?),
            num::<u8>(m, 2, "month")?,
            num::<u8>(d, 2, "day")?,
        )
    };
    let (time_s, utc) = match time_s.strip_suffix('Z') {
        Some(t) => (t, true),
        None => (time_s, false),
    };
    let (hms, millis) = match time_s.split_once('.') {
        Some((hms, ms)) => (hms, Some(num::<u16>(ms, 3, "milliseconds")?)),
        None => (time_s, None),
    };
    let [h, m, sec] = three_parts(hms, ':', "time", "not HH:MM:SS")?;
    let hour = num::<u8>(h, 2, "hour")?;
    let minute = num::<u8>(m, 2, "minute")?;
    let second = num::<u8>(sec, 2, "second")?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(format!("date/time {date_s} {time_s} out of range"));
    }
    Ok(EventTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
        millis,
        utc,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_styles() {
        let p = Path::new("x.log");
        for (h, year, utc, ms) in [
            (
                "005 (1.002.000) 03/10 16:40:26 Job terminated.",
                None,
                false,
                None,
            ),
            (
                "005 (1.002.000) 2023-01-24 09:42:38 Job terminated.",
                Some(2023),
                false,
                None,
            ),
            (
                "005 (1.002.000) 2023-01-24 09:42:38.123Z Job terminated.",
                Some(2023),
                true,
                Some(123),
            ),
        ] {
            let ev = parse_record(&[h, "\t(1) Normal termination (return value 3)"], p, 1)
                .unwrap()
                .unwrap();
            assert_eq!((ev.cluster, ev.proc), (1, 2));
            assert_eq!((ev.time.year, ev.time.utc, ev.time.millis), (year, utc, ms));
            assert_eq!(
                ev.kind,
                EventKind::Terminated(Termination::Normal { return_value: 3 })
            );
        }
    }

    #[test]
    fn garbage_header_is_an_error_naming_the_line() {
        let err = parse_record(&["hello world"], Path::new("x.log"), 7).unwrap_err();
        assert!(err.to_string().contains("x.log:7"), "{err}");
    }

    #[test]
    fn modern_held_event() {
        let ev = parse_record(
            &[
                "012 (5.000.000) 2026-11-24 10:00:00 Job was held.",
                "\tTransfer output files failure",
                "\tCode 12 Subcode 2",
            ],
            Path::new("x.log"),
            1,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            ev.kind,
            EventKind::Held {
                reason: Some("Transfer output files failure".into()),
                code: Some(12),
                subcode: Some(2)
            }
        );
    }
}
