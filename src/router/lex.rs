//! The two lexical rules every SQL scanner in usher needs: where a quoted literal or identifier
//! ends, and where a dollar-quoted literal ends. Shared by the cache-key normalizer and the
//! session-state scanner so both agree on what is a literal.

/// End of the `'...'` or `"..."` token starting at `start` (doubled quotes stay inside; with
/// `backslash_escapes`, as in `E'...'`, so do backslash escapes), and whether it was closed.
pub fn skip_quoted(s: &[u8], start: usize, backslash_escapes: bool) -> (usize, bool) {
    let quote = s[start];
    let mut i = start + 1;
    while i < s.len() {
        if backslash_escapes && s[i] == b'\\' {
            i += 2;
            continue;
        }
        if s[i] == quote {
            if s.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return (i + 1, true);
        }
        i += 1;
    }
    (s.len(), false)
}

/// If a dollar-quoted literal (`$tag$ ... $tag$`, `$$ ... $$`) starts at `i`, its end and
/// whether it was closed; `None` for a parameter such as `$1` or a lone `$`.
pub fn dollar_quote(s: &[u8], i: usize) -> Option<(usize, bool)> {
    let tag_end = s[i + 1..]
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .map(|p| i + 1 + p)?;
    if s[tag_end] != b'$' || s.get(i + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let tag = &s[i..=tag_end];
    let body = tag_end + 1;
    Some(match s[body..].windows(tag.len()).position(|w| w == tag) {
        Some(p) => (body + p + tag.len(), true),
        None => (s.len(), false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes() {
        assert_eq!(skip_quoted(b"'a''b' x", 0, false), (6, true));
        assert_eq!(skip_quoted(b"'a\\'b' x", 0, true), (6, true));
        assert_eq!(skip_quoted(b"'abc", 0, false), (4, false));
        assert_eq!(dollar_quote(b"$$a$$ x", 0), Some((5, true)));
        assert_eq!(dollar_quote(b"$f$a$$b$f$", 0), Some((10, true)));
        assert_eq!(dollar_quote(b"$1", 0), None);
        assert_eq!(dollar_quote(b"$x$open", 0), Some((7, false)));
    }
}
