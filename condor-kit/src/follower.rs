//! Incremental reader of one job event log: remembers a byte offset, and on each `poll()` returns
//! the events whose `...` terminator has arrived since the last call. A half-written record stays
//! in the file for the next poll; one longer than [`MAX_RECORD_BYTES`] is reported and skipped,
//! and the file is read in bounded pieces, so memory does not grow with what the log holds.
//! A log whose first non-blank byte is `{` or `<` (HTCondor's JSON or XML format) is an error
//! ([`CondorError::LogFormat`]), as is a log that existed and is gone
//! ([`CondorError::LogGone`]); a log that appears again is read from its start, and so is a
//! log that shrank or that another file replaced (another (device, inode)), which
//! [`Polled::rewound`] reports: events delivered before may come again.
//! This module must never know about mw's tasks or the master.

use crate::error::{io_err, CondorError, Result};
use crate::events::{parse_record, LogEvent};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What one `poll()` found.
#[derive(Debug, Default)]
pub struct Polled {
    /// New complete events, in file order.
    pub events: Vec<LogEvent>,
    /// Records that were not events (each names file and line); they are skipped.
    pub bad_records: Vec<CondorError>,
    /// Records with an event code HTCondor does not define; skipped silently.
    pub unknown_skipped: usize,
    /// The log was replaced by another file or shrank, and was read again from its start:
    /// `events` may repeat events delivered before.
    pub rewound: bool,
}

/// Follows one job event log by byte offset.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    /// Lines before `offset` (for 1-based line numbers in events and errors).
    lines_before: usize,
    /// Inside a record longer than [`MAX_RECORD_BYTES`]: its lines are dropped up to its
    /// `...` terminator.
    skipping: bool,
    /// The file existed at an earlier poll (so its absence now means it is gone).
    existed: bool,
    /// The log is in a format this reader does not read (`JSON`, `XML`).
    format: Option<&'static str>,
    /// (device, inode) of the file read so far: another file renamed over the log is read
    /// from its start, not from this one's offset.
    identity: Option<(u64, u64)>,
}

/// The longest record kept (HTCondor's are a few hundred bytes to a few KiB): a longer one
/// is reported as bad and skipped, so a log that never terminates a record cannot make the
/// follower hold (and read again at every poll) an unbounded part of the file.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

impl LogFollower {
    /// Starts at the beginning of `path`, which need not exist yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LogFollower {
            path: path.into(),
            offset: 0,
            lines_before: 0,
            skipping: false,
            existed: false,
            format: None,
            identity: None,
        }
    }

    /// The log file being followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes consumed so far (always the end of a complete record).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads what was appended since the last call. A file that never existed yields nothing
    /// (HTCondor creates the log at the first event); one that existed and is gone is
    /// [`CondorError::LogGone`] (and is read from its start if it appears again). A file that
    /// shrank, or another file renamed over the log, is read again from the start
    /// ([`Polled::rewound`]). A JSON or XML log is [`CondorError::LogFormat`]
    /// at every poll.
    pub fn poll(&mut self) -> Result<Polled> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.existed {
                    return Ok(Polled::default());
                }
                self.rewind();
                self.identity = None;
                return Err(CondorError::LogGone {
                    path: self.path.clone(),
                });
            }
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        self.existed = true;
        let meta = file.metadata().map_err(io_err(&self.path))?;
        let len = meta.len();
        let identity = (meta.dev(), meta.ino());
        let mut out = Polled::default();
        if self.identity.is_some_and(|known| known != identity) || len < self.offset {
            self.rewind();
            out.rewound = true;
        }
        self.identity = Some(identity);
        if let Some(format) = self.format {
            return Err(CondorError::LogFormat {
                path: self.path.clone(),
                format,
            });
        }
        // At most a record's limit of unconsumed bytes is read at a time (plus what the
        // records before it take).
        let mut buf = Vec::new();
        while self.offset < len {
            file.seek(SeekFrom::Start(self.offset))
                .map_err(io_err(&self.path))?;
            buf.clear();
            let want = (len - self.offset).min(2 * MAX_RECORD_BYTES);
            (&mut file)
                .take(want)
                .read_to_end(&mut buf)
                .map_err(io_err(&self.path))?;
            if buf.is_empty() {
                break;
            }
            if self.offset == 0 {
                // HTCondor's JSON records start with `{`, its XML log with `<`: neither has
                // the `...` terminators of the text format, so it would be read as one
                // unterminated record.
                let format = match buf.iter().find(|b| !b.is_ascii_whitespace()) {
                    Some(b'{') => Some("JSON"),
                    Some(b'<') => Some("XML"),
                    _ => None,
                };
                if let Some(format) = format {
                    self.format = Some(format);
                    return Err(CondorError::LogFormat {
                        path: self.path.clone(),
                        format,
                    });
                }
            }
            let consumed = self.consume(&buf, &mut out);
            let rest = buf.len() - consumed;
            if rest as u64 > MAX_RECORD_BYTES {
                // A record without its terminator for longer than any real one: report it
                // once and drop its lines (up to the last whole line read) from here on.
                if !self.skipping {
                    out.bad_records.push(CondorError::BadRecord {
                        path: self.path.clone(),
                        line: self.lines_before + 1,
                        message: format!(
                            "a record longer than {MAX_RECORD_BYTES} bytes without its \"...\" \
                             terminator; skipped"
                        ),
                    });
                    self.skipping = true;
                }
                let tail = &buf[consumed..];
                match tail.iter().rposition(|&b| b == b'\n') {
                    Some(last_nl) => {
                        self.offset += (last_nl + 1) as u64;
                        self.lines_before +=
                            tail[..=last_nl].iter().filter(|&&b| b == b'\n').count();
                    }
                    // One line over the limit: dropped whole.
                    None => self.offset += tail.len() as u64,
                }
                continue;
            }
            if (buf.len() as u64) < want || consumed == 0 {
                // The end of the file, or a partial record that waits for more.
                break;
            }
        }
        Ok(out)
    }

    /// Forgets what was read: the next poll starts at the beginning of the file.
    fn rewind(&mut self) {
        self.offset = 0;
        self.lines_before = 0;
        self.skipping = false;
        self.format = None;
    }

    /// Reads the complete records in `buf` (the file from `offset` on) into `out` and moves
    /// `offset` past them; returns the bytes consumed.
    fn consume(&mut self, buf: &[u8], out: &mut Polled) -> usize {
        let mut record_start = 0usize; // byte index in buf of the current record
        let mut record_first_line = self.lines_before + 1;
        let mut pos = 0usize;
        let mut line_no = self.lines_before; // lines fully read so far
        while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
            let line = &buf[pos..pos + nl];
            pos += nl + 1;
            line_no += 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line != b"..." {
                continue;
            }
            if self.skipping {
                // The end of a record too long to keep.
                self.skipping = false;
                record_start = pos;
                record_first_line = line_no + 1;
                continue;
            }
            let text = String::from_utf8_lossy(&buf[record_start..pos]);
            let mut lines: Vec<&str> = text.lines().collect();
            // The "..." terminator goes; blank lines between records are not part of the
            // next record (counted, then drained at once: a `remove(0)` each was quadratic).
            lines.pop();
            let blank = lines.iter().take_while(|l| l.trim().is_empty()).count();
            lines.drain(..blank);
            let first = record_first_line + blank;
            if lines.is_empty() {
                out.bad_records.push(CondorError::BadRecord {
                    path: self.path.clone(),
                    line: line_no,
                    message: "a \"...\" terminator with no record before it".into(),
                });
            } else {
                match parse_record(&lines, &self.path, first) {
                    Ok(Some(ev)) => out.events.push(ev),
                    Ok(None) => out.unknown_skipped += 1,
                    Err(e) => out.bad_records.push(e),
                }
            }
            record_start = pos;
            record_first_line = line_no + 1;
        }
        // Everything up to record_start is consumed; the rest is a partial record.
        self.offset += record_start as u64;
        self.lines_before = record_first_line - 1;
        record_start
    }
}
