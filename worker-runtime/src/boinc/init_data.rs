//! A small, tolerant reader of the slot's `init_data.xml`.
//!
//! The file holds the volunteer's account `<authenticator>`: this module extracts only the
//! few harmless fields mw-worker logs or uses, by tag name, and never keeps, returns or
//! prints the file's text. Unknown, missing or malformed fields are simply absent.
//!
//! It knows nothing of bundles, tasks or the control channel.

use std::path::Path;

/// Name of the file in the slot directory.
pub const INIT_DATA_FILE: &str = "init_data.xml";

/// The fields of `init_data.xml` mw-worker uses (none of them sensitive).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InitData {
    /// `<wu_name>`.
    pub wu_name: Option<String>,
    /// `<result_name>`.
    pub result_name: Option<String>,
    /// `<slot>`.
    pub slot: Option<u32>,
    /// `<app_name>`.
    pub app_name: Option<String>,
    /// `<comm_obj_name>`: on Windows, the name of the client's shared-memory segment
    /// (without BOINC's `shm_` prefix), e.g. `boinc_0`.
    pub comm_obj_name: Option<String>,
}

/// Reads `init_data.xml` from `slot`. A missing or unreadable file gives empty fields.
pub fn read(slot: &Path) -> InitData {
    match std::fs::read(slot.join(INIT_DATA_FILE)) {
        Ok(bytes) => parse(&String::from_utf8_lossy(&bytes)),
        Err(_) => InitData::default(),
    }
}

/// Extracts the known fields from the text of an `init_data.xml`.
pub fn parse(text: &str) -> InitData {
    InitData {
        wu_name: field(text, "wu_name").and_then(printable),
        result_name: field(text, "result_name").and_then(printable),
        slot: field(text, "slot").and_then(|s| s.trim().parse().ok()),
        app_name: field(text, "app_name").and_then(printable),
        comm_obj_name: field(text, "comm_obj_name").and_then(printable),
    }
}

/// The text of the first `<tag>…</tag>` at any depth, if present.
fn field<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(&text[start..start + len])
}

/// Keeps a name only when it is short and made of safe characters, so it can be logged.
fn printable(s: &str) -> Option<String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    ok.then(|| s.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_known_fields_only() {
        let text =
            "<app_init_data>\n<app_name>mw</app_name>\n<authenticator>s3cret</authenticator>\n\
                    <wu_name>job1</wu_name>\n<result_name>job1_r0</result_name>\n<slot>3</slot>\n\
                    <comm_obj_name>boinc_7</comm_obj_name>\n<host_info><domain_name>vm</domain_name></host_info></app_init_data>";
        let d = parse(text);
        assert_eq!(d.wu_name.as_deref(), Some("job1"));
        assert_eq!(d.result_name.as_deref(), Some("job1_r0"));
        assert_eq!(d.slot, Some(3));
        assert_eq!(d.app_name.as_deref(), Some("mw"));
        assert_eq!(d.comm_obj_name.as_deref(), Some("boinc_7"));
        assert!(!format!("{d:?}").contains("s3cret"));
    }

    #[test]
    fn malformed_fields_are_absent() {
        let d = parse("<wu_name>a b;rm</wu_name><slot>x</slot><result_name>r");
        assert_eq!(d, InitData::default());
        assert_eq!(read(Path::new("/nonexistent-slot")), InitData::default());
    }
}
