//! BOINC's workunit error-mask bits, and the error record the assimilator leaves in the spool
//! for a workunit that produced no usable result (`error_<wu>.toml`).

use serde::{Deserialize, Serialize};

/// `WU_ERROR_COULDNT_SEND_RESULT`.
pub const WU_ERROR_COULDNT_SEND_RESULT: u64 = 1;
/// `WU_ERROR_TOO_MANY_ERROR_RESULTS`.
pub const WU_ERROR_TOO_MANY_ERROR_RESULTS: u64 = 2;
/// `WU_ERROR_TOO_MANY_SUCCESS_RESULTS`: no quorum of agreeing results.
pub const WU_ERROR_TOO_MANY_SUCCESS_RESULTS: u64 = 4;
/// `WU_ERROR_TOO_MANY_TOTAL_RESULTS`.
pub const WU_ERROR_TOO_MANY_TOTAL_RESULTS: u64 = 8;
/// `WU_ERROR_CANCELLED` (set by `bin/cancel_jobs`).
pub const WU_ERROR_CANCELLED: u64 = 16;
/// `WU_ERROR_NO_CANONICAL_RESULT`.
pub const WU_ERROR_NO_CANONICAL_RESULT: u64 = 32;

/// BOINC workunit error-mask bits (`db/boinc_db_types.h`, `WU_ERROR_*`): the one table.
pub const WU_ERROR_BITS: [(u64, &str); 6] = [
    (WU_ERROR_COULDNT_SEND_RESULT, "COULDNT_SEND_RESULT"),
    (WU_ERROR_TOO_MANY_ERROR_RESULTS, "TOO_MANY_ERROR_RESULTS"),
    (
        WU_ERROR_TOO_MANY_SUCCESS_RESULTS,
        "TOO_MANY_SUCCESS_RESULTS",
    ),
    (WU_ERROR_TOO_MANY_TOTAL_RESULTS, "TOO_MANY_TOTAL_RESULTS"),
    (WU_ERROR_CANCELLED, "CANCELLED"),
    (WU_ERROR_NO_CANONICAL_RESULT, "NO_CANONICAL_RESULT"),
];

/// Largest error record the master reads, in bytes.
pub const MAX_ERROR_RECORD_BYTES: u64 = 256 * 1024;
/// Longest stderr tail kept per result in an error record, in bytes.
pub const MAX_STDERR_TAIL: usize = 2048;
/// Most results described in one error record.
pub const MAX_REPORTED_RESULTS: usize = 8;

/// Names of the `WU_ERROR_*` bits set in `mask`; unknown bits as `UNKNOWN_0x…`.
pub fn error_mask_names(mask: u64) -> Vec<String> {
    (0..64)
        .map(|i| 1u64 << i)
        .filter(|bit| mask & bit != 0)
        .map(|bit| match WU_ERROR_BITS.iter().find(|(b, _)| *b == bit) {
            Some((_, n)) => (*n).to_string(),
            None => format!("UNKNOWN_{bit:#x}"),
        })
        .collect()
}

/// What one uploaded result of a failed workunit said (read from its result bundle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultReport {
    /// The uploaded file's name (`<wu>_<k>_r<random>_<n>`).
    pub file: String,
    /// How the task ended there (e.g. `exit status 3`), or why the file was unusable.
    pub exit: String,
    /// The tail of the task's stderr (at most [`MAX_STDERR_TAIL`] bytes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
}

/// What the assimilator leaves in the spool as `error_<wu_name>.toml` for a workunit that
/// ended without a usable result: BOINC's own error (`--error` call), or a canonical result
/// it could not use (then `reason` says why and `error_mask` is 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// The workunit's name.
    pub wu_name: String,
    /// The workunit's database id.
    pub wu_id: u64,
    /// `workunit.batch` (0 when unknown).
    #[serde(default)]
    pub batch: i64,
    /// `workunit.error_mask` (0 for a rejected canonical result).
    #[serde(default)]
    pub error_mask: u64,
    /// Names of the bits set in `error_mask`.
    #[serde(default)]
    pub errors: Vec<String>,
    /// Why a canonical result could not be used (absent for BOINC's own errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How the results the volunteers uploaded ended (client errors included: the client
    /// uploads outputs whatever the exit status).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<ResultReport>,
    /// For a workunit without quorum: which field the successful results disagree on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<String>,
}

impl ErrorRecord {
    /// A record of BOINC's own error for a workunit.
    pub fn boinc_error(wu_name: &str, wu_id: u64, batch: i64, mask: u64) -> Self {
        ErrorRecord {
            wu_name: wu_name.to_string(),
            wu_id,
            batch,
            error_mask: mask,
            errors: error_mask_names(mask),
            reason: None,
            results: Vec::new(),
            disagreement: None,
        }
    }

    /// A record of a result that could not be used, and why.
    pub fn unusable(wu_name: &str, wu_id: u64, reason: String) -> Self {
        ErrorRecord {
            reason: Some(reason),
            ..ErrorRecord::boinc_error(wu_name, wu_id, 0, 0)
        }
    }

    /// The record as the spool file's text.
    pub fn to_text(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Parses a spool file's text.
    pub fn from_text(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// True when BOINC cancelled the workunit.
    pub fn is_cancelled(&self) -> bool {
        self.error_mask & WU_ERROR_CANCELLED != 0
    }

    /// One message for the researcher: the mask and what it means, then the disagreement or
    /// the results' exit statuses and stderr tails.
    pub fn describe(&self) -> String {
        let mut m = format!("BOINC workunit {} failed", self.wu_name);
        if self.error_mask != 0 {
            m.push_str(&format!(
                ": error mask {} ({})",
                self.error_mask,
                error_mask_names(self.error_mask).join(" | ")
            ));
        }
        if let Some(r) = &self.reason {
            m.push_str(&format!(": {r}"));
        }
        if let Some(d) = &self.disagreement {
            m.push_str(&format!("; results disagreed: {d}"));
        }
        for r in self.results.iter().take(MAX_REPORTED_RESULTS) {
            m.push_str(&format!("\n  result {}: {}", r.file, r.exit));
            let tail = r.stderr_tail.trim_end();
            if !tail.is_empty() {
                m.push_str("; stderr tail:\n");
                for line in tail.lines() {
                    m.push_str(&format!("    {line}\n"));
                }
                m.truncate(m.trim_end().len());
            }
        }
        if self.error_mask != 0 && self.results.is_empty() && self.disagreement.is_none() {
            if self.error_mask & WU_ERROR_CANCELLED != 0 {
                m.push_str("; it was cancelled");
            } else if self.error_mask & WU_ERROR_TOO_MANY_ERROR_RESULTS != 0 {
                m.push_str(
                    "; no uploaded result said why (the clients may have failed to start it)",
                );
            }
        }
        m
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mask_names() {
        assert_eq!(
            error_mask_names(10),
            vec!["TOO_MANY_ERROR_RESULTS", "TOO_MANY_TOTAL_RESULTS"]
        );
        assert_eq!(error_mask_names(64), vec!["UNKNOWN_0x40"]);
    }

    #[test]
    fn record_round_trips_and_describes() {
        let mut r = ErrorRecord::boinc_error("mw_j_ab_0_1", 7, 0, 2);
        r.results.push(ResultReport {
            file: "mw_j_ab_0_1_0_r1_0".into(),
            exit: "exit status 3".into(),
            stderr_tail: "boom: always\n".into(),
        });
        let back = ErrorRecord::from_text(&r.to_text().unwrap()).unwrap();
        assert_eq!(back, r);
        let d = r.describe();
        assert!(d.contains("TOO_MANY_ERROR_RESULTS"), "{d}");
        assert!(d.contains("exit status 3"), "{d}");
        assert!(d.contains("boom: always"), "{d}");
    }
}
