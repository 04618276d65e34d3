//! Cache keys for the classification cache: the query text with its literal values replaced
//! by `?`, so `... WHERE aid = 1` and `... WHERE aid = 2` share one parse. Literal values never
//! change whether a statement reads or writes; the exceptions are kept verbatim (any text that
//! mentions `usher`, where a `SET usher.role = '...'` value or a hint matters). Comments and
//! quoted identifiers are kept as they are.

use std::borrow::Cow;
use std::ops::Range;

use super::lex::{dollar_quote, skip_quoted};

/// The cache key for `sql`.
pub fn cache_key(sql: &[u8]) -> Cow<'_, [u8]> {
    if mentions_usher(sql) {
        return Cow::Borrowed(sql);
    }
    let (out, changed) = scan(sql, None, true);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(sql)
    }
}

/// [`cache_key`] and [`literal_spans`] in one pass (routing on a sharded database needs both).
pub fn cache_key_and_spans<'a>(sql: &'a [u8], spans: &mut Vec<Range<usize>>) -> Cow<'a, [u8]> {
    let usher = mentions_usher(sql);
    let (out, changed) = scan(sql, Some(spans), !usher);
    if changed && !usher {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(sql)
    }
}

/// Byte ranges of the literal values in `sql`, in order: exactly the values [`cache_key`]
/// replaces, so the n-th range of two texts with one cache key holds the same literal. Quoted
/// strings include their quotes (an `E` prefix is not part of the range).
pub fn literal_spans(sql: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    scan(sql, Some(&mut spans), false);
    spans
}

/// The text of a literal found by [`literal_spans`]: unquoted and unescaped for strings (`E`
/// strings when `sql` has the prefix), as written for numbers. `None` for malformed input.
pub fn literal_value(sql: &[u8], span: &Range<usize>) -> Option<Vec<u8>> {
    let raw = sql.get(span.clone())?;
    match raw.first()? {
        b'\'' => {
            let inner = raw.strip_prefix(b"'")?.strip_suffix(b"'")?;
            let escapes = span.start > 0 && matches!(sql[span.start - 1], b'e' | b'E');
            Some(unescape(inner, escapes))
        }
        b'$' => {
            let tag_end = raw[1..].iter().position(|b| *b == b'$')? + 2;
            let body = raw.get(tag_end..raw.len().checked_sub(tag_end)?)?;
            Some(body.to_vec())
        }
        _ => Some(raw.to_vec()),
    }
}

fn unescape(inner: &[u8], escapes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let c = inner[i];
        if c == b'\'' && inner.get(i + 1) == Some(&b'\'') {
            out.push(b'\'');
            i += 2;
        } else if escapes && c == b'\\' && i + 1 < inner.len() {
            let e = inner[i + 1];
            i += 2;
            out.push(match e {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'b' => 8,
                b'f' => 12,
                b'0'..=b'7' => {
                    let mut v = (e - b'0') as u32;
                    while i < inner.len() && v < 32 && (b'0'..=b'7').contains(&inner[i]) {
                        v = v * 8 + (inner[i] - b'0') as u32;
                        i += 1;
                    }
                    v as u8
                }
                b'x' => {
                    let mut v = 0u32;
                    let mut n = 0;
                    while n < 2 && i < inner.len() && inner[i].is_ascii_hexdigit() {
                        v = v * 16 + (inner[i] as char).to_digit(16).unwrap_or(0);
                        i += 1;
                        n += 1;
                    }
                    v as u8
                }
                other => other,
            });
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Walks `sql` once: the text with literals replaced, whether anything was replaced, and the
/// literal ranges when asked for.
fn scan(sql: &[u8], mut spans: Option<&mut Vec<Range<usize>>>, build: bool) -> (Vec<u8>, bool) {
    let mut note = |r: Range<usize>| {
        if let Some(s) = spans.as_deref_mut() {
            s.push(r);
        }
    };
    let mut out = Out {
        buf: Vec::with_capacity(if build { sql.len() } else { 0 }),
        on: build,
    };
    let mut i = 0;
    let mut changed = false;
    while i < sql.len() {
        let c = sql[i];
        match c {
            b'\'' => {
                let escapes = i > 0 && matches!(sql[i - 1], b'e' | b'E');
                let (end, closed) = skip_quoted(sql, i, escapes);
                out.extend_from_slice(if closed { b"?" } else { b"?unterminated" });
                note(i..end);
                i = end;
                changed = true;
            }
            b'"' => {
                let (end, _) = skip_quoted(sql, i, false);
                out.extend_from_slice(&sql[i..end]);
                i = end;
            }
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                let end = sql[i..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(sql.len(), |p| i + p);
                out.extend_from_slice(&sql[i..end]);
                i = end;
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                let end = sql[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(sql.len(), |p| i + 2 + p + 2);
                out.extend_from_slice(&sql[i..end]);
                i = end;
            }
            b'$' => match dollar_quote(sql, i) {
                Some((end, closed)) => {
                    out.extend_from_slice(if closed { b"?" } else { b"?unterminated" });
                    note(i..end);
                    i = end;
                    changed = true;
                }
                None => {
                    out.push(c);
                    i += 1;
                    while i < sql.len() && sql[i].is_ascii_digit() {
                        out.push(sql[i]);
                        i += 1;
                    }
                }
            },
            b'0'..=b'9' => {
                let ident_before = i > 0
                    && (sql[i - 1].is_ascii_alphanumeric()
                        || sql[i - 1] == b'_'
                        || sql[i - 1] >= 0x80);
                if ident_before {
                    out.push(c);
                    i += 1;
                } else {
                    let start = i;
                    while i < sql.len()
                        && (sql[i].is_ascii_alphanumeric() || sql[i] == b'.' || sql[i] == b'_')
                    {
                        // 1.5e10, 0x1F, 1_000: a numeric literal in any form Postgres accepts.
                        if (sql[i] == b'e' || sql[i] == b'E')
                            && matches!(sql.get(i + 1), Some(b'+' | b'-'))
                        {
                            i += 1;
                        }
                        i += 1;
                    }
                    out.push(b'?');
                    note(start..i);
                    changed = true;
                }
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < sql.len() && IDENT[sql[i] as usize] {
                    i += 1;
                }
                out.extend_from_slice(&sql[start..i]);
            }
            _ => {
                // A run of spaces and punctuation that starts nothing.
                let start = i;
                i += 1;
                while i < sql.len() && PLAIN[sql[i] as usize] {
                    i += 1;
                }
                out.extend_from_slice(&sql[start..i]);
            }
        }
    }
    (out.buf, changed)
}

/// Bytes that never start a literal, identifier, comment or quoted name.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] =
            !(c.is_ascii_alphanumeric() || matches!(c, b'_' | b'\'' | b'"' | b'-' | b'/' | b'$'));
        b += 1;
    }
    t
};

/// Bytes that continue an identifier.
const IDENT: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
        b += 1;
    }
    t
};

/// True when `sql` mentions `usher` in any case.
fn mentions_usher(sql: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = sql[i..].iter().position(|b| *b | 0x20 == b'u') {
        let at = i + p;
        if sql.len() >= at + 5 && sql[at..at + 5].eq_ignore_ascii_case(b"usher") {
            return true;
        }
        i = at + 1;
    }
    false
}

/// The normalized text being built, or nothing when only literal ranges are wanted.
struct Out {
    buf: Vec<u8>,
    on: bool,
}

impl Out {
    fn push(&mut self, b: u8) {
        if self.on {
            self.buf.push(b);
        }
    }

    fn extend_from_slice(&mut self, s: &[u8]) {
        if self.on {
            self.buf.extend_from_slice(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        String::from_utf8(cache_key(s.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            key("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"
        );
        assert_eq!(
            key("SELECT * FROM t1 WHERE name = 'o''neil' AND x > -1.5e-3"),
            "SELECT * FROM t1 WHERE name = ? AND x > -?"
        );
        assert_eq!(key("SELECT $1, $$body$$, $f$x$f$"), "SELECT $1, ?, ?");
        assert_eq!(
            key("SELECT \"col 1\" FROM t /* 42 */ -- 7\n"),
            "SELECT \"col 1\" FROM t /* 42 */ -- 7\n"
        );
        assert_eq!(key("SELECT E'a\\'b'"), "SELECT E?");
        assert_ne!(key("SELECT 'a"), key("SELECT 'a'"));
        assert_eq!(
            key("SET usher.role = 'primary'"),
            "SET usher.role = 'primary'"
        );
        assert_eq!(
            key("SELECT 1 /* USHER: role=primary */"),
            "SELECT 1 /* USHER: role=primary */"
        );
        assert_eq!(key("SELECT nextval('s')"), key("SELECT nextval('t')"));
    }

    #[test]
    fn literal_values() {
        let sql = b"SELECT 'o''k', E'a\\nb\\'', $t$x'y$t$, 42, 0x1F, $1 FROM t WHERE a = -7";
        let spans = literal_spans(sql);
        let values: Vec<String> = spans
            .iter()
            .map(|s| String::from_utf8(literal_value(sql, s).unwrap()).unwrap())
            .collect();
        assert_eq!(values, ["o'k", "a\nb'", "x'y", "42", "0x1F", "7"]);
    }

    #[test]
    fn classification_does_not_depend_on_literals() {
        use crate::router::classify::classify;
        for (a, b) in [
            ("SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a = 2"),
            (
                "INSERT INTO t VALUES (1, 'x')",
                "INSERT INTO t VALUES (2, 'y')",
            ),
            ("SELECT nextval('a')", "SELECT nextval('b')"),
            (
                "COPY t FROM STDIN WITH (DELIMITER ',')",
                "COPY t FROM STDIN WITH (DELIMITER ';')",
            ),
        ] {
            assert_eq!(key(a), key(b));
            assert_eq!(classify(a), classify(b), "{a} / {b}");
        }
    }
}
