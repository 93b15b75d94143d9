//! Bounded text: a string cut to a number of bytes at a character boundary, for the text
//! that bundles and mw's reports carry (reasons, stderr tails, tools' error output).
//!
//! This module knows nothing of what the text says or where it goes.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The last `max` bytes of `s`, cut at a character boundary (so perhaps fewer).
pub fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut at = s.len() - max;
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// Cuts `s` to at most `max` bytes at a character boundary, marking the cut with ` […]`
/// (which comes on top of `max`); a string that fits is left as it is.
pub fn clip(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str(" […]");
}

/// `s` with every control character but newline and tab, and every character that
/// overrides the direction of text, written as an escape (`\u{1b}`): text from outside (a
/// task's stderr, a pool's or a volunteer's reason) shown this way cannot move a terminal's
/// cursor, retitle its window, clear it or reorder what it shows. Text without such a
/// character is returned as it is.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// [`escape_controls`] for text shown as one line (a table cell, a field after its label):
/// newline and tab are escaped too (`\u{a}`, `\u{9}`), so a name from outside cannot break
/// a table's rows or pass for another field.
pub fn escape_controls_one_line(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

fn escape(s: &str, keep_lines: bool) -> Cow<'_, str> {
    let unsafe_to_show = |c: char| {
        (c.is_control() && !(keep_lines && (c == '\n' || c == '\t')))
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{61c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(unsafe_to_show) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if unsafe_to_show(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_controls_defangs_terminal_sequences_and_keeps_lines() {
        assert!(matches!(
            escape_controls("plain\ttext\nline é"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("a\u{1b}]0;title\u{7}\u{1b}[2Jb\rc\u{202e}d\u{9b}e\n"),
            "a\\u{1b}]0;title\\u{7}\\u{1b}[2Jb\\u{d}c\\u{202e}d\\u{9b}e\n"
        );
    }

    #[test]
    fn escape_controls_one_line_escapes_newlines_and_tabs_too() {
        assert!(matches!(
            escape_controls_one_line("plain text é"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls_one_line("n\u{1b}[2J\u{7}n\name\tx\u{202e}"),
            "n\\u{1b}[2J\\u{7}n\\u{a}ame\\u{9}x\\u{202e}"
        );
    }

    #[test]
    fn tail_cuts_at_a_character_boundary() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("héllo", 5), "éllo");
        assert_eq!(tail("abc", 10), "abc");
    }

    #[test]
    fn clip_cuts_at_a_character_boundary_and_marks_the_cut() {
        let mut s = "abcé".to_string();
        clip(&mut s, 4);
        assert_eq!(s, "abc […]");
        let mut short = "abc".to_string();
        clip(&mut short, 3);
        assert_eq!(short, "abc");
    }
}
