//! Surgical text edits of BOINC's XML files (`config.xml`, `project.xml`).
//!
//! The files are never re-serialised: elements are located in a copy of the text whose
//! comments are blanked out (same byte offsets), and new text is spliced into the original,
//! so everything outside an edit stays byte for byte. This module knows only about text and
//! element names; it must never know what mw installs.

/// The text with every `<!-- … -->` replaced by spaces (newlines kept), same length.
pub fn mask_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after.find("-->").map(|e| e + 3).unwrap_or(after.len());
        for c in after[..end].chars() {
            if c == '\n' {
                out.push('\n');
            } else {
                // One space per byte keeps every later offset unchanged.
                out.extend(std::iter::repeat_n(' ', c.len_utf8()));
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// One element found in the text: byte offsets into the (masked and original) text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    /// Offset of `<`.
    pub start: usize,
    /// Offset just after the start tag (content start); equals `end` for `<x/>`.
    pub content_start: usize,
    /// Offset of the end tag's `<` (content end); equals `end` for `<x/>`.
    pub content_end: usize,
    /// Offset just after the end tag.
    pub end: usize,
}

/// Finds the next element `name` in `masked[from..to]`: `<name>…</name>`, `<name/>` or
/// `<name />` (no attributes expected in BOINC's files, but tolerated).
pub fn find_element(masked: &str, name: &str, from: usize, to: usize) -> Option<Element> {
    let hay = &masked[..to];
    let open = format!("<{name}");
    let mut pos = from;
    while let Some(rel) = hay.get(pos..)?.find(&open) {
        let start = pos + rel;
        let after = start + open.len();
        let next = hay[after..].chars().next()?;
        if next == '>' || next == '/' || next.is_whitespace() {
            let gt = after + hay[after..].find('>')?;
            if hay[..gt].ends_with('/') {
                return Some(Element {
                    start,
                    content_start: gt + 1,
                    content_end: gt + 1,
                    end: gt + 1,
                });
            }
            let close = format!("</{name}>");
            let ce = gt + 1 + hay[gt + 1..].find(&close)?;
            return Some(Element {
                start,
                content_start: gt + 1,
                content_end: ce,
                end: ce + close.len(),
            });
        }
        pos = after;
    }
    None
}

/// All elements `name` in `masked[from..to]`, in order (not nested in each other).
pub fn find_all(masked: &str, name: &str, from: usize, to: usize) -> Vec<Element> {
    let mut out = Vec::new();
    let mut pos = from;
    while let Some(e) = find_element(masked, name, pos, to) {
        out.push(e);
        pos = e.end;
    }
    out
}

/// The trimmed text content of the first child `name` of `parent`.
pub fn child_text<'a>(text: &'a str, masked: &str, parent: Element, name: &str) -> Option<&'a str> {
    let e = find_element(masked, name, parent.content_start, parent.content_end)?;
    Some(text[e.content_start..e.content_end].trim())
}

/// The whitespace that precedes offset `at` on its line (its indentation), if only
/// whitespace precedes it.
pub fn indent_before(text: &str, at: usize) -> Option<&str> {
    let line_start = text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let ws = &text[line_start..at];
    ws.chars().all(|c| c == ' ' || c == '\t').then_some(ws)
}

/// Offset of the start of the line holding `at` when only whitespace precedes `at` on it;
/// otherwise `at` itself. Inserting there puts new lines before the tag's line.
pub fn line_start_if_alone(text: &str, at: usize) -> usize {
    match indent_before(text, at) {
        Some(ws) => at - ws.len(),
        None => at,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `text` with its comments masked, checked to keep every byte offset.
    fn masked(text: &str) -> String {
        let m = mask_comments(text);
        assert_eq!(m.len(), text.len());
        m
    }

    #[test]
    fn finds_elements_and_skips_comments() {
        let text = "<a><!-- <b>x</b> --><b> y </b><b/><bb>z</bb></a>";
        let m = masked(text);
        let a = find_element(&m, "a", 0, m.len()).unwrap();
        let bs = find_all(&m, "b", a.content_start, a.content_end);
        assert_eq!(bs.len(), 2);
        assert_eq!(&text[bs[0].content_start..bs[0].content_end], " y ");
        assert_eq!(bs[1].content_start, bs[1].end);
        assert_eq!(child_text(text, &m, a, "bb"), Some("z"));
    }

    #[test]
    fn mask_keeps_offsets_with_multibyte_comment() {
        let text = "<a><!-- é ü --><b>1</b></a>";
        let m = masked(text);
        let b = find_element(&m, "b", 0, m.len()).unwrap();
        assert_eq!(&text[b.content_start..b.content_end], "1");
    }
}
