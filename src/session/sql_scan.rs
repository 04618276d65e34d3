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

/// Session changes in `sql`, in order, and how many statements it holds.
pub fn scan(sql: &str) -> (Vec<SessionChange>, usize) {
    let mut changes = Vec::new();
    let mut statements = 0;
    for tokens in statements_first_tokens(sql.as_bytes(), 4) {
        if tokens.is_empty() {
            continue;
        }
        statements += 1;
        let t: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let change = match t.as_slice() {
            ["set", "local", ..] | ["set", "transaction", ..] => None,
            ["set", "session", "characteristics", ..] => None,
            ["set", "session", "authorization", ..] => {
                Some(SessionChange::Set("session_authorization".into()))
            }
            ["set", "time", "zone", ..] | ["set", "session", "time", "zone"] => {
                Some(SessionChange::Set("timezone".into()))
            }
            ["set", "session", name, ..] | ["set", name, ..] => {
                Some(SessionChange::Set(name.to_string()))
            }
            ["reset", "all", ..] => Some(SessionChange::ResetAll),
            ["reset", "time", "zone", ..] => Some(SessionChange::Reset("timezone".into())),
            ["reset", "session", "authorization", ..] => {
                Some(SessionChange::Reset("session_authorization".into()))
            }
            ["reset", name, ..] => Some(SessionChange::Reset(name.to_string())),
            ["discard", "all", ..] => Some(SessionChange::DiscardAll),
            ["deallocate", "prepare", "all", ..] | ["deallocate", "all", ..] => {
                Some(SessionChange::DeallocateAll)
            }
            ["deallocate", "prepare", name, ..] | ["deallocate", name, ..] => {
                Some(SessionChange::Deallocate(name.to_string()))
            }
            _ => None,
        };
        changes.extend(change);
    }
    (changes, statements)
}

/// The first `n` tokens of each `;`-separated statement (keywords and plain identifiers
/// lowercased; quoted identifiers kept as written; other tokens as `"?"`).
fn statements_first_tokens(s: &[u8], n: usize) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new()];
    let mut i = 0;
    let push = |out: &mut Vec<Vec<String>>, tok: String| {
        let cur = out.last_mut().expect("never empty");
        if cur.len() < n {
            cur.push(tok);
        }
    };
    while i < s.len() {
        let c = s[i];
        match c {
            b';' => {
                out.push(Vec::new());
                i += 1;
            }
            b'-' if s.get(i + 1) == Some(&b'-') => {
                while i < s.len() && s[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < s.len() {
                    if s[i] == b'/' && s.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if s[i] == b'*' && s.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                let escapes = i > 0 && matches!(s[i - 1], b'e' | b'E');
                i = skip_quoted(s, i, escapes).0;
                push(&mut out, "?".into());
            }
            b'"' => {
                let end = skip_quoted(s, i, false).0;
                let inner = String::from_utf8_lossy(&s[i + 1..end.saturating_sub(1).max(i + 1)])
                    .replace("\"\"", "\"");
                push(&mut out, inner);
                i = end;
            }
            b'$' => match dollar_quote(s, i) {
                // $tag$ ... $tag$ is a literal; $1 a parameter.
                Some((end, _)) => {
                    i = end;
                    push(&mut out, "?".into());
                }
                None => i += 1,
            },
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < s.len()
                    && (s[i].is_ascii_alphanumeric()
                        || s[i] == b'_'
                        || s[i] == b'$'
                        || s[i] == b'.'
                        || s[i] >= 0x80)
                {
                    i += 1;
                }
                if (s[i - 1] == b'e' || s[i - 1] == b'E')
                    && i - start == 1
                    && s.get(i) == Some(&b'\'')
                {
                    continue; // E'...' string: handled by the quote arm.
                }
                push(
                    &mut out,
                    String::from_utf8_lossy(&s[start..i]).to_lowercase(),
                );
            }
            _ if c.is_ascii_whitespace() => i += 1,
            _ => {
                if c == b'=' {
                    push(&mut out, "=".into());
                }
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionChange::*;

    #[test]
    fn finds_changes() {
        let (c, n) =
            scan("SET search_path TO app, public; select 1; RESET TimeZone; set local x = 1");
        assert_eq!(c, vec![Set("search_path".into()), Reset("timezone".into())]);
        assert_eq!(n, 4);
        assert_eq!(
            scan("SET SESSION \"MyVar.X\" = 1").0,
            vec![Set("MyVar.X".into())]
        );
        assert_eq!(scan("set time zone 'UTC'").0, vec![Set("timezone".into())]);
        assert_eq!(scan("DISCARD ALL").0, vec![DiscardAll]);
        assert_eq!(scan("deallocate prepare all").0, vec![DeallocateAll]);
        assert_eq!(scan("DEALLOCATE s1").0, vec![Deallocate("s1".into())]);
        assert_eq!(scan("RESET ALL").0, vec![ResetAll]);
    }

    #[test]
    fn ignores_quoted_and_commented() {
        assert_eq!(scan("select 'x; SET a = 1'").0, vec![]);
        assert_eq!(
            scan("select $$; SET a = 1$$; /* ; set b = 2 */ -- ; set c = 3\n").0,
            vec![]
        );
        assert_eq!(scan("select E'\\'; set a = 1'").0, vec![]);
        assert_eq!(scan("select $tag$ $$ ; set x=1 $tag$").0, vec![]);
        assert_eq!(
            scan("/* c */ SET application_name = 'a;b'").0,
            vec![Set("application_name".into())]
        );
        assert_eq!(scan("").1, 0);
    }
}
