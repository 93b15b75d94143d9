//! Bounded text: a string cut to a number of bytes at a character boundary, for the text
//! that bundles and mw's reports carry (reasons, stderr tails, tools' error output).
//!
//! This module knows nothing of what the text says or where it goes.

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

#[cfg(test)]
mod tests {
    use super::*;

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
