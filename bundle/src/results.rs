//! What a result may hold, and reading it without amplification: the one home of the result
//! limits every intake applies (the master, `mw-validator` and `mw-assimilator` on a BOINC
//! server): the default output limit ([`DEFAULT_MAX_OUTPUT_BYTES`]), the room for declared
//! output files ([`MAX_RESULT_FILES_BYTES`]), the bundle [`Limits`] and upload size they
//! give ([`result_limits`], [`max_result_upload_bytes`]), and JSON parsing refused before a
//! tree far larger than its text is built ([`parse_json_limited`]).
//!
//! This module knows nothing of platforms or of how results travel.

use crate::Limits;

/// Default limit of a task's result (its stdout), like HTCondor's and BOINC's output limits:
/// results are parsed and held in memory.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 << 20;

/// The highest result limit (`max_output`) a job may set (a result is held in memory), and
/// so the most a stored result or input read back from a journal may be.
pub const MAX_OUTPUT_LIMIT: u64 = 1 << 30;

/// How many bytes of declared output files one result bundle may carry besides its stdout
/// (it is opened in memory).
pub const MAX_RESULT_FILES_BYTES: u64 = 256 << 20;

/// Most archive entries a result bundle may have.
pub const MAX_RESULT_ENTRIES: usize = 10_000;

/// Largest result-bundle manifest.
pub const MAX_RESULT_MANIFEST_BYTES: u64 = 1 << 20;

/// The limits a result bundle is opened with, for a task whose stdout may take
/// `max_output_bytes`: its members may total that plus [`MAX_RESULT_FILES_BYTES`], so a small
/// upload cannot inflate into gigabytes.
pub fn result_limits(max_output_bytes: u64) -> Limits {
    Limits {
        max_total_bytes: max_output_bytes.saturating_add(MAX_RESULT_FILES_BYTES),
        max_entries: MAX_RESULT_ENTRIES,
        max_manifest_bytes: MAX_RESULT_MANIFEST_BYTES,
    }
}

/// The largest result-bundle file (compressed) read for such a task: what its members may
/// unpack to, plus room for the archive's own headers.
pub fn max_result_upload_bytes(max_output_bytes: u64) -> u64 {
    result_limits(max_output_bytes)
        .max_total_bytes
        .saturating_add(16 << 20)
}

/// Why [`parse_json_limited`] refused a text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonLimitError {
    /// More bytes than the limit.
    #[error(
        "the result is at least {size} bytes, over the task's limit of {limit} bytes \
         (max_output); raise max_output if this is expected"
    )]
    TooLarge {
        /// The text's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// So many values that the parsed tree would take far more memory than the text.
    #[error(
        "the result holds about {values} JSON values, over the {max_values} allowed by the \
         task's limit of {limit} bytes (max_output); raise max_output if this is expected"
    )]
    TooManyValues {
        /// The values counted.
        values: u64,
        /// The most allowed.
        max_values: u64,
        /// The limit they derive from.
        limit: u64,
    },
    /// Not JSON.
    #[error("{0}")]
    Syntax(String),
}

/// Parses `text` as one JSON value (empty or blank text is `null`), refusing before any tree
/// is built a text over `limit` bytes or with more values than about one per 16 bytes of the
/// limit (a dense `[0,0,…]` would otherwise take some 30 times its size).
pub fn parse_json_limited(text: &[u8], limit: u64) -> Result<serde_json::Value, JsonLimitError> {
    check_json_size(text, limit)?;
    let text = String::from_utf8_lossy(text);
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(text.trim()).map_err(|e| JsonLimitError::Syntax(e.to_string()))
}

/// What [`parse_json_limited`] checks of `text`, without building the tree: `Ok` exactly
/// when it would parse (the same errors otherwise). For a caller that keeps the text and
/// parses it later, so a result waiting to be collected costs its text, not its tree.
pub fn check_json_limited(text: &[u8], limit: u64) -> Result<(), JsonLimitError> {
    check_json_size(text, limit)?;
    let text = String::from_utf8_lossy(text);
    if text.trim().is_empty() {
        return Ok(());
    }
    serde_json::from_str::<Valid>(text.trim())
        .map(|_| ())
        .map_err(|e| JsonLimitError::Syntax(e.to_string()))
}

/// Any JSON value, read through the same parser paths as a `serde_json::Value` (numbers
/// range-checked, strings unescaped) but kept nowhere.
struct Valid;

impl<'de> serde::Deserialize<'de> for Valid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Valid)
    }
}

impl<'de> serde::de::Visitor<'de> for Valid {
    type Value = Valid;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_str<E>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_unit<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_none<E>(self) -> Result<Valid, E> {
        Ok(Valid)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Valid, D::Error> {
        <Valid as serde::Deserialize>::deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Valid, A::Error> {
        while a.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Valid, A::Error> {
        while a.next_entry::<Valid, Valid>()?.is_some() {}
        Ok(Valid)
    }
}

/// The size and value-count limits of [`parse_json_limited`].
fn check_json_size(text: &[u8], limit: u64) -> Result<(), JsonLimitError> {
    if text.len() as u64 > limit {
        return Err(JsonLimitError::TooLarge {
            size: text.len() as u64,
            limit,
        });
    }
    let values = count_json_values(text);
    let max_values = (limit / 16).max(4096);
    if values > max_values {
        return Err(JsonLimitError::TooManyValues {
            values,
            max_values,
            limit,
        });
    }
    Ok(())
}

/// An upper estimate of the JSON values in `text` (separators and containers outside
/// strings), found in one pass without allocating.
fn count_json_values(text: &[u8]) -> u64 {
    let mut n = 1u64;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b',' | b'[' | b'{' | b':' => n += 1,
            _ => {}
        }
    }
    n
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn check_json_limited_accepts_and_refuses_exactly_what_parse_json_limited_does() {
        let cases: &[&[u8]] = &[
            b"",
            b"  \n",
            b"{\"i\":0}",
            b" [1, 2.5, -3, \"x\\n\", null, true, {\"a\": {\"b\": []}}] \r\n",
            b"1e400",
            b"-1e400",
            b"{\"a\":1,\"a\":2}",
            b"{\"a\":1",
            b"[1,]",
            b"\"\\ud800\"",
            b"\"\\x\"",
            b"nul",
            b"1 2",
            b"\xff\xfe",
            b"\"\xff\"",
            b"18446744073709551616",
        ];
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let dense = format!("[0{}]", ",0".repeat(5000));
        let mut all: Vec<Vec<u8>> = cases.iter().map(|c| c.to_vec()).collect();
        all.push(deep.into_bytes());
        all.push(dense.into_bytes());
        for text in &all {
            for limit in [8u64, 100, 1 << 20] {
                let parsed = parse_json_limited(text, limit)
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let checked = check_json_limited(text, limit).map_err(|e| e.to_string());
                assert_eq!(
                    parsed,
                    checked,
                    "{:?} with limit {limit}",
                    String::from_utf8_lossy(text)
                );
            }
        }
    }

    #[test]
    fn dense_json_is_refused_before_parsing_and_ordinary_json_passes() {
        let dense = format!("[0{}]", ",0".repeat(2_000_000));
        let e = parse_json_limited(dense.as_bytes(), 8 << 20).unwrap_err();
        assert!(matches!(e, JsonLimitError::TooManyValues { .. }), "{e}");
        assert!(e.to_string().contains("max_output"), "{e}");
        assert_eq!(
            parse_json_limited(br#"{"x":[1,"a,b:[{"]}"#, 1 << 20).unwrap(),
            serde_json::json!({"x": [1, "a,b:[{"]})
        );
        assert_eq!(
            parse_json_limited(b" \n", 10).unwrap(),
            serde_json::Value::Null
        );
        let e = parse_json_limited(&[b' '; 100], 10).unwrap_err();
        assert!(e.to_string().contains("limit of 10 bytes"), "{e}");
        assert!(matches!(
            parse_json_limited(b"{", 10),
            Err(JsonLimitError::Syntax(_))
        ));
    }
}
