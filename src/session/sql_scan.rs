//! A small lexer that finds the statements that change session state (`SET`, `RESET`,
//! `DISCARD`, `DEALLOCATE`) in a query string, skipping comments and all forms of quoting, so
//! that transaction pooling can carry that state from one server to the next.
//!
//! It reads only the first tokens of each statement; routing decisions use the real Postgres
//! grammar, not this.

use crate::router::lex::{dollar_quote, skip_quoted};

/// A statement that changes session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// `SET [SESSION] name ...` (name lowercased unless quoted).
    Set(String),
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(String),
}

/// A token at the start of a statement, borrowed from the query text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// A keyword or plain identifier, as written (compared ignoring ASCII case).
    Word(&'a [u8]),
    /// A double-quoted identifier, without its quotes (`""` still doubled).
    Quoted(&'a [u8]),
    /// `=`.
    Eq,
    /// Anything else (a literal, a parameter, punctuation).
    Other,
}

impl Tok<'_> {
    fn is(&self, keyword: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(keyword.as_bytes()))
    }

    /// The name this token stands for: lowercased unless quoted.
    fn name(&self) -> String {
        match self {
            Tok::Word(w) => String::from_utf8_lossy(w).to_lowercase(),
            Tok::Quoted(q) => String::from_utf8_lossy(q).replace("\"\"", "\""),
            Tok::Eq => "=".into(),
            Tok::Other => "?".into(),
        }
    }
}

/// How many leading tokens of a statement decide what it changes.
const LEAD: usize = 4;

/// Session changes in `sql`, in order, and how many statements it holds.
///
/// This runs on every simple-protocol query, so it allocates nothing unless a statement
/// changes session state: tokens are byte slices of `sql`, and words past the first few of a
/// statement are skipped, not copied.
pub fn scan(sql: &[u8]) -> (Vec<SessionChange>, usize) {
    let mut changes = Vec::new();
    let mut statements = 0;
    let mut lead = [Tok::Other; LEAD];
    let mut n = 0;
    let mut end_statement = |lead: &[Tok<'_>], n: &mut usize| {
        if *n > 0 {
            statements += 1;
            changes.extend(change_of(lead.get(..*n).unwrap_or_default()));
        }
        *n = 0;
    };
    let s = sql;
    let mut i = 0;
    // Where the next `;`, quote-like byte (' " $) and comment-like byte (- /) are, found once
    // and reused until lexing passes them, so a long statement is searched in linear time.
    let (mut semi_at, mut quote_at, mut dash_at) = (None, None, None);
    while i < s.len() {
        if n == LEAD || (n > 0 && !lead.first().is_some_and(starts_change)) {
            // This statement is decided: skip plain text up to its `;` or up to what could
            // hide one (a quote, a comment, a dollar quote), or stop when no `;` follows.
            let semi = next_at(&mut semi_at, s, i, |t| memchr::memchr(b';', t));
            if semi == s.len() {
                break;
            }
            let quote = next_at(&mut quote_at, s, i, |t| {
                memchr::memchr3(b'\'', b'"', b'$', t)
            });
            let dash = next_at(&mut dash_at, s, i, |t| memchr::memchr2(b'-', b'/', t));
            let mut resume = semi.min(quote).min(dash);
            // Resume at the start of the word it ends, if any (a `$` inside an identifier
            // is no dollar quote): there the lexer is in the same state as if it had read
            // every skipped byte.
            while resume > i && s.get(resume - 1).is_some_and(|b| is_word_byte(*b)) {
                resume -= 1;
            }
            i = resume;
        }
        let Some(&c) = s.get(i) else {
            break;
        };
        let tok = match c {
            b';' => {
                end_statement(&lead, &mut n);
                i += 1;
                continue;
            }
            b'-' if s.get(i + 1) == Some(&b'-') => {
                while s.get(i).is_some_and(|b| *b != b'\n') {
                    i += 1;
                }
                continue;
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(s, i);
                continue;
            }
            b'\'' => {
                let escapes = i
                    .checked_sub(1)
                    .and_then(|j| s.get(j))
                    .is_some_and(|b| matches!(b, b'e' | b'E'));
                i = skip_quoted(s, i, escapes).0;
                Tok::Other
            }
            b'"' => {
                let end = skip_quoted(s, i, false).0;
                let tok = Tok::Quoted(
                    s.get(i + 1..end.saturating_sub(1).max(i + 1))
                        .unwrap_or_default(),
                );
                i = end;
                tok
            }
            b'$' => match dollar_quote(s, i) {
                // $tag$ ... $tag$ is a literal; $1 a parameter.
                Some((end, _)) => {
                    i = end;
                    Tok::Other
                }
                None => {
                    i += 1;
                    continue;
                }
            },
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while s.get(i).is_some_and(|b| is_word_byte(*b)) {
                    i += 1;
                }
                if i - start == 1 && matches!(c, b'e' | b'E') && s.get(i) == Some(&b'\'') {
                    continue; // E'...' string: handled by the quote arm.
                }
                Tok::Word(s.get(start..i).unwrap_or_default())
            }
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'=' => {
                i += 1;
                Tok::Eq
            }
            _ => {
                i += 1;
                continue;
            }
        };
        if let Some(slot) = lead.get_mut(n) {
            *slot = tok;
            n += 1;
        }
    }
    end_statement(&lead, &mut n);
    (changes, statements)
}

/// The first position at or after `i` that `find` reports (`s.len()` for none), reusing
/// `cache` while it is still ahead of `i`.
fn next_at(
    cache: &mut Option<usize>,
    s: &[u8],
    i: usize,
    find: impl Fn(&[u8]) -> Option<usize>,
) -> usize {
    match *cache {
        Some(p) if p >= i => p,
        _ => {
            let p = find(s.get(i..).unwrap_or_default()).map_or(s.len(), |p| i + p);
            *cache = Some(p);
            p
        }
    }
}

/// A byte that continues a word (keyword, identifier or number).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'.' || b >= 0x80
}

/// Whether a statement starting with `first` may change session state.
fn starts_change(first: &Tok<'_>) -> bool {
    ["set", "reset", "discard", "deallocate"]
        .iter()
        .any(|k| first.is(k))
}

/// The end of the (nested) block comment starting at `i`.
fn skip_block_comment(s: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while let Some(&c) = s.get(i) {
        let next = s.get(i + 1).copied();
        if c == b'/' && next == Some(b'*') {
            depth += 1;
            i += 2;
        } else if c == b'*' && next == Some(b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// What a statement starting with `t` changes.
fn change_of(t: &[Tok<'_>]) -> Option<SessionChange> {
    let at = |k: usize, keyword: &str| t.get(k).is_some_and(|x| x.is(keyword));
    let name = |k: usize| t.get(k).map(Tok::name);
    if at(0, "set") {
        if at(1, "local") || at(1, "transaction") {
            return None;
        }
        let session = at(1, "session") && t.len() > 2;
        let first = if session { 2 } else { 1 };
        if session && at(2, "characteristics") {
            return None;
        }
        if session && at(2, "authorization") {
            return Some(SessionChange::Set("session_authorization".into()));
        }
        if at(first, "time") && at(first + 1, "zone") {
            return Some(SessionChange::Set("timezone".into()));
        }
        return name(first).map(SessionChange::Set);
    }
    if at(0, "reset") {
        if at(1, "all") {
            return Some(SessionChange::ResetAll);
        }
        if at(1, "time") && at(2, "zone") {
            return Some(SessionChange::Reset("timezone".into()));
        }
        if at(1, "session") && at(2, "authorization") {
            return Some(SessionChange::Reset("session_authorization".into()));
        }
        return name(1).map(SessionChange::Reset);
    }
    if at(0, "discard") && at(1, "all") {
        return Some(SessionChange::DiscardAll);
    }
    if at(0, "deallocate") {
        let first = if at(1, "prepare") && t.len() > 2 {
            2
        } else {
            1
        };
        if at(first, "all") {
            return Some(SessionChange::DeallocateAll);
        }
        return name(first).map(SessionChange::Deallocate);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionChange::*;

    #[test]
    fn finds_changes() {
        let (c, n) =
            scan(b"SET search_path TO app, public; select 1; RESET TimeZone; set local x = 1");
        assert_eq!(c, vec![Set("search_path".into()), Reset("timezone".into())]);
        assert_eq!(n, 4);
        assert_eq!(
            scan(b"SET SESSION \"MyVar.X\" = 1").0,
            vec![Set("MyVar.X".into())]
        );
        assert_eq!(scan(b"set time zone 'UTC'").0, vec![Set("timezone".into())]);
        assert_eq!(scan(b"DISCARD ALL").0, vec![DiscardAll]);
        assert_eq!(scan(b"deallocate prepare all").0, vec![DeallocateAll]);
        assert_eq!(scan(b"DEALLOCATE s1").0, vec![Deallocate("s1".into())]);
        assert_eq!(scan(b"RESET ALL").0, vec![ResetAll]);
    }

    #[test]
    fn ignores_quoted_and_commented() {
        assert_eq!(scan(b"select 'x; SET a = 1'").0, vec![]);
        assert_eq!(
            scan(b"select $$; SET a = 1$$; /* ; set b = 2 */ -- ; set c = 3\n").0,
            vec![]
        );
        assert_eq!(scan(b"select E'\\'; set a = 1'").0, vec![]);
        assert_eq!(scan(b"select $tag$ $$ ; set x=1 $tag$").0, vec![]);
        assert_eq!(
            scan(b"/* c */ SET application_name = 'a;b'").0,
            vec![Set("application_name".into())]
        );
        assert_eq!(scan(b"").1, 0);
    }

    #[test]
    fn decided_statements_are_skipped_to_their_end() {
        let (c, n) = scan(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;");
        assert_eq!((c, n), (vec![], 1));
        let (c, n) = scan(b"select a, b, c, d, e from t; SET x = 1");
        assert_eq!((c, n), (vec![Set("x".into())], 2));
        // A quote or comment before the `;` is lexed, not jumped over.
        assert_eq!(
            scan(b"select 'a;b' from t; set y to 1").0,
            vec![Set("y".into())]
        );
        assert_eq!(
            scan(b"select 1 -- ; set z = 1\n; set w = 1").0,
            vec![Set("w".into())]
        );
        assert_eq!(
            scan(b"select $$;$$, 2 ; reset q").0,
            vec![Reset("q".into())]
        );
        assert_eq!(scan(b"select 1;;  ; select 2").1, 2);
        // Words past the first few of a statement are neither kept nor confused with a start.
        assert_eq!(scan(b"select set, reset, discard all from t").0, vec![]);
        // A `$` inside an identifier is no dollar quote, even where the scan skips ahead.
        assert_eq!(
            scan(b"select a$x$ from t; set p = 1; select $x$;$x$").0,
            vec![Set("p".into())]
        );
        // After a number, `$q$` does open a dollar quote (as the lexer reads it everywhere).
        assert_eq!(
            scan(b"select 1 from t where x = 1$q$;$q$; set r = 1").0,
            vec![Set("r".into())]
        );
        assert_eq!(
            scan(b"select x-1, a/2, 'it''s' from t; set s = 1").0,
            vec![Set("s".into())]
        );
        // Many quotes in one long statement: every one is lexed, and the `;` after them counts.
        let mut long = b"insert into t values ".to_vec();
        for _ in 0..10_000 {
            long.extend_from_slice(b"('a;b', $$c;d$$), ");
        }
        long.extend_from_slice(b"('e'); reset t");
        assert_eq!(scan(&long), (vec![Reset("t".into())], 2));
    }

    #[test]
    fn session_forms() {
        assert_eq!(
            scan(b"SET SESSION AUTHORIZATION bob").0,
            vec![Set("session_authorization".into())]
        );
        assert_eq!(
            scan(b"reset session authorization").0,
            vec![Reset("session_authorization".into())]
        );
        assert_eq!(
            scan(b"SET SESSION TIME ZONE 'UTC'").0,
            vec![Set("timezone".into())]
        );
        assert_eq!(
            scan(b"SET LOCAL x = 1; SET TRANSACTION READ ONLY").0,
            vec![]
        );
        assert_eq!(
            scan(b"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").0,
            vec![]
        );
        assert_eq!(
            scan(b"DEALLOCATE PREPARE \"Q1\"").0,
            vec![Deallocate("Q1".into())]
        );
        // Too short for the longer forms: the second word is the name.
        assert_eq!(scan(b"SET session").0, vec![Set("session".into())]);
        assert_eq!(
            scan(b"DEALLOCATE prepare").0,
            vec![Deallocate("prepare".into())]
        );
    }
}
