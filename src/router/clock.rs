//! One clock for a statement that runs on several shards. One database evaluates `now()`
//! (and `CURRENT_TIMESTAMP`, `CURRENT_DATE`, `LOCALTIME`, ...) once per transaction, so every
//! row a statement writes gets the same value; each shard would evaluate its own. Before such
//! a statement is sent, [`pin`] writes the transaction's time as a constant in its place, the
//! same constant on every shard, with the type the function returns (`CURRENT_DATE` becomes
//! the constant cast to date in the session's time zone, as Postgres computes it).

use pg_query::protobuf::SqlValueFunctionOp as Op;

/// Functions that return the transaction's (or, for an autocommit statement, the
/// statement's) start time.
const CLOCKS: &[&str] = &["now", "transaction_timestamp", "statement_timestamp"];

/// Whether `name` (unqualified or `pg_catalog.`, any case) is one of the clock functions.
pub fn is_clock(names: &[&str]) -> bool {
    match names {
        [name] | ["pg_catalog", name] => CLOCKS.iter().any(|c| c.eq_ignore_ascii_case(name)),
        _ => false,
    }
}

/// `sql` with every clock call replaced by the constant time `at` (a timestamptz literal's
/// text, see [`timestamp`]); `Ok(None)` when it calls none. An `Err` names what could not be
/// replaced.
pub fn pin(sql: &str, at: &str) -> Result<Option<String>, String> {
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::default())
        .map_err(|e| format!("a statement usher could not parse ({e})"))?;
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let literal = format!("'{at}'::pg_catalog.timestamptz");
    let tree = super::walk::tree(&parsed.protobuf);
    for n in super::walk::nodes(&tree) {
        let start = || {
            n.int("location")
                .and_then(|l| usize::try_from(l).ok())
                .ok_or("a clock call without a position")
        };
        match n.kind {
            "FuncCall" => {
                if !is_clock(&n.func_name()) {
                    continue;
                }
                let start = start()?;
                let end = call_end(sql, start).ok_or("a clock call usher could not read")?;
                edits.push((start, end, format!("({literal})")));
            }
            "SqlvalueFunction" => {
                let op = n.int("op").and_then(|o| i32::try_from(o).ok()).unwrap_or(0);
                let (cast, precision) = match Op::try_from(op) {
                    Ok(Op::SvfopCurrentTimestamp) => ("", false),
                    Ok(Op::SvfopCurrentTimestampN) => ("pg_catalog.timestamptz", true),
                    Ok(Op::SvfopCurrentDate) => ("pg_catalog.date", false),
                    Ok(Op::SvfopCurrentTime) => ("pg_catalog.timetz", false),
                    Ok(Op::SvfopCurrentTimeN) => ("pg_catalog.timetz", true),
                    Ok(Op::SvfopLocaltimestamp) => ("pg_catalog.timestamp", false),
                    Ok(Op::SvfopLocaltimestampN) => ("pg_catalog.timestamp", true),
                    Ok(Op::SvfopLocaltime) => ("pg_catalog.time", false),
                    Ok(Op::SvfopLocaltimeN) => ("pg_catalog.time", true),
                    _ => continue,
                };
                let start = start()?;
                let word = keyword_end(sql, start).ok_or("a clock usher could not read")?;
                let (end, typmod) = if precision {
                    let (end, n) =
                        precision_end(sql, word).ok_or("a clock precision usher could not read")?;
                    (end, format!("({n})"))
                } else {
                    (word, String::new())
                };
                let text = if cast.is_empty() {
                    format!("({literal})")
                } else {
                    format!("(({literal})::{cast}{typmod})")
                };
                edits.push((start, end, text));
            }
            _ => {}
        }
    }
    if edits.is_empty() {
        return Ok(None);
    }
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(sql.len() + edits.len() * 48);
    let mut at = 0;
    for (start, end, text) in edits {
        let before = sql.get(at..start).ok_or("overlapping clock calls")?;
        out.push_str(before);
        out.push_str(&text);
        at = end;
    }
    out.push_str(sql.get(at..).unwrap_or_default());
    Ok(Some(out))
}

/// The end of a call `name ( )` (possibly `schema.name`, quoted) starting at `start`.
fn call_end(sql: &str, start: usize) -> Option<usize> {
    let bytes = sql.as_bytes();
    let mut i = start;
    // The (possibly qualified, possibly quoted) name.
    loop {
        if bytes.get(i) == Some(&b'"') {
            i += 1;
            while bytes.get(i).is_some_and(|b| *b != b'"') {
                i += 1;
            }
            i += 1;
        } else {
            let s = i;
            while bytes
                .get(i)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
            {
                i += 1;
            }
            if i == s {
                return None;
            }
        }
        i = skip_space(bytes, i);
        if bytes.get(i) == Some(&b'.') {
            i = skip_space(bytes, i + 1);
            continue;
        }
        break;
    }
    if bytes.get(i) != Some(&b'(') {
        return None;
    }
    i = skip_space(bytes, i + 1);
    (bytes.get(i) == Some(&b')')).then_some(i + 1)
}

/// The end of the keyword at `start`.
fn keyword_end(sql: &str, start: usize) -> Option<usize> {
    let bytes = sql.as_bytes();
    let mut i = start;
    while bytes
        .get(i)
        .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
    {
        i += 1;
    }
    (i > start).then_some(i)
}

/// The end of `( digits )` after a keyword ending at `from`, and the digits.
fn precision_end(sql: &str, from: usize) -> Option<(usize, u32)> {
    let bytes = sql.as_bytes();
    let mut i = skip_space(bytes, from);
    if bytes.get(i) != Some(&b'(') {
        return None;
    }
    i = skip_space(bytes, i + 1);
    let s = i;
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let n = sql.get(s..i)?.parse().ok()?;
    i = skip_space(bytes, i);
    (bytes.get(i) == Some(&b')')).then_some((i + 1, n))
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// `t` as a timestamptz literal's text in UTC with microseconds: `2026-12-04 03:35:43.123456+00`.
pub fn timestamp(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "2026-12-04 03:35:43.123456+00";

    #[test]
    fn clocks_become_one_constant_of_their_type() {
        let lit = "'2026-12-04 03:35:43.123456+00'::pg_catalog.timestamptz";
        for (sql, want) in [
            (
                "UPDATE t SET a = now(), b = NOW ( ) + interval '1 day'",
                format!("UPDATE t SET a = ({lit}), b = ({lit}) + interval '1 day'"),
            ),
            (
                "UPDATE t SET a = pg_catalog.now() WHERE d < CURRENT_DATE",
                format!("UPDATE t SET a = ({lit}) WHERE d < (({lit})::pg_catalog.date)"),
            ),
            (
                "DELETE FROM t WHERE ts < current_timestamp(3) - interval '1 h' AND x = localtime",
                format!("DELETE FROM t WHERE ts < (({lit})::pg_catalog.timestamptz(3)) - interval '1 h' AND x = (({lit})::pg_catalog.time)"),
            ),
            (
                "UPDATE t SET a = transaction_timestamp(), b = LOCALTIMESTAMP(0), c = 'now()'",
                format!("UPDATE t SET a = ({lit}), b = (({lit})::pg_catalog.timestamp(0)), c = 'now()'"),
            ),
        ] {
            assert_eq!(pin(sql, AT).unwrap().as_deref(), Some(want.as_str()), "{sql}");
            // What comes out parses.
            assert!(pg_query::parse(&want, pg_query::ParserOptions::default()).is_ok());
        }
        assert_eq!(pin("UPDATE t SET a = clock_timestamp()", AT).unwrap(), None);
        // Where pg_query's own iterator does not look: RETURNING, VALUES.
        let got = pin(
            "INSERT INTO t (a) VALUES (now()) RETURNING CURRENT_DATE",
            AT,
        )
        .unwrap()
        .unwrap();
        assert!(
            !got.contains("now()") && !got.contains("CURRENT_DATE"),
            "{got}"
        );
        assert_eq!(pin("UPDATE t SET a = my.now()", AT).unwrap(), None);
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_733_283_343_123_456);
        assert_eq!(timestamp(t), "2024-12-04 03:35:43.123456+00");
        assert_eq!(
            timestamp(std::time::UNIX_EPOCH),
            "1970-01-01 00:00:00.000000+00"
        );
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29 00:00:00.000000+00");
    }
}
