//! A pipeline whose statements belong to different shards: what psycopg's `executemany`
//! and any driver's pipeline mode send, several executions (Parse/Bind/Describe/Execute)
//! ended by one Sync, which Postgres runs as one implicit transaction. Each execution is a
//! statement of one shard; the pipeline is cut into *segments*, one per Execute, each run on
//! its own shard, all of them inside one transaction per shard (committed with two-phase
//! commit when more than one shard writes), and the answers are put back in the order the
//! client sent the statements (see `session::fanout::pipeline`).

use super::shard::{self, Placement, ShardError};
use super::{Batch, Facts, Statement};

/// A pipeline cut into segments, each run on one shard.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Pipeline {
    /// The shard of each segment, in order. A segment is the messages up to and including
    /// one Execute (the messages after the last Execute belong to the last segment).
    pub segments: Vec<usize>,
    /// Whether each segment's statement writes.
    pub writes: Vec<bool>,
    /// For a simple Query of several statements (what psycopg2's `execute_batch` sends):
    /// each statement's text, one segment each.
    pub statements: Option<Vec<String>>,
}

impl Pipeline {
    /// The shards the pipeline runs on, in ascending order.
    pub fn shards(&self) -> Vec<usize> {
        let mut s = self.segments.clone();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// How many shards it writes on.
    pub fn writing_shards(&self) -> usize {
        let mut s: Vec<usize> = self
            .segments
            .iter()
            .zip(&self.writes)
            .filter(|(_, w)| **w)
            .map(|(s, _)| *s)
            .collect();
        s.sort_unstable();
        s.dedup();
        s.len()
    }
}

/// The pipeline `batch` is, when every execution in it is a plain statement of one shard
/// and it runs outside a transaction block; otherwise the error `why` that made one shard
/// impossible. Writing on several shards needs `two_phase_commit`.
///
/// `within` a transaction across shards (see `plan_spanning`) one statement, one shard, or
/// no execution at all (a Parse and Describe) is a pipeline too, a Flush may end it, and
/// whether its writes need two-phase commit is the session's to judge (it knows which shards
/// the transaction wrote on already).
pub fn pipeline_of(
    batch: &Batch,
    facts: &Facts,
    map: &crate::config::Sharding,
    why: &ShardError,
    within: bool,
) -> Result<Pipeline, ShardError> {
    let body = batch.body();
    if let [q] = body {
        if q.tag == b'Q' && (within || facts.held.is_none()) {
            return query_pipeline(q, facts, map, why, within);
        }
    }
    let executes = body.iter().filter(|s| s.tag == b'E').count();
    let least = if within { 0 } else { 2 };
    if (facts.held.is_some() && !within)
        || !(batch.ends_in_sync() || within && batch.complete)
        || executes < least
        || !body
            .iter()
            .all(|s| matches!(s.tag, b'P' | b'B' | b'D' | b'E'))
    {
        return Err(why.clone());
    }
    let shards = facts.db.shards.len();
    let mut pipeline = Pipeline {
        segments: Vec::with_capacity(executes),
        writes: Vec::with_capacity(executes),
        statements: None,
    };
    let mut bind: Option<&Statement> = None;
    for s in body {
        match s.tag {
            b'B' if bind.is_some() => return Err(why.clone()),
            b'B' => bind = Some(s),
            b'E' => {
                let Some(b) = bind.take() else {
                    return Err(why.clone());
                };
                let (shard, writes) = segment_shard(b, map, shards).ok_or_else(|| why.clone())?;
                pipeline.segments.push(shard);
                pipeline.writes.push(writes);
            }
            _ => {}
        }
    }
    if bind.is_some() {
        return Err(why.clone());
    }
    if within {
        return Ok(pipeline);
    }
    if pipeline.shards().len() < 2 {
        return Err(why.clone());
    }
    if pipeline.writing_shards() > 1 && !map.two_phase_commit {
        return Err(ShardError::NoTwoPhase {
            why: Box::new(why.clone()),
        });
    }
    Ok(pipeline)
}

/// A simple Query of several statements, each a plain statement of one shard, as one
/// pipeline (Postgres runs such a string as one implicit transaction too).
fn query_pipeline(
    q: &Statement,
    facts: &Facts,
    map: &crate::config::Sharding,
    why: &ShardError,
    within: bool,
) -> Result<Pipeline, ShardError> {
    let (Some(sql), Some(class)) = (q.sql.as_deref(), q.class.as_deref()) else {
        return Err(why.clone());
    };
    let Ok(text) = std::str::from_utf8(sql) else {
        return Err(why.clone());
    };
    let texts = pg_query::split_with_parser(text).map_err(|_| why.clone())?;
    let least = if within { 1 } else { 2 };
    if class.parse_error || texts.len() < least || texts.len() != class.shard.len() {
        return Err(why.clone());
    }
    let shards = facts.db.shards.len();
    let mut pipeline = Pipeline {
        segments: Vec::with_capacity(texts.len()),
        writes: Vec::with_capacity(texts.len()),
        statements: Some(texts.iter().map(|t| t.to_string()).collect()),
    };
    for (text, f) in texts.iter().zip(&class.shard) {
        if !plain_statement(text.as_bytes()) || class.shard_hint.is_some() {
            return Err(why.clone());
        }
        let mut values = super::super::shard::values::QueryValues::with_spans(sql, q.spans.clone());
        let shard = match shard::place(std::slice::from_ref(f), map, shards, &mut values) {
            Ok(Placement::Shard(s)) => s,
            Ok(
                Placement::Unlisted | Placement::NoTable | Placement::Unbound | Placement::AnyShard,
            ) => map.default_shard,
            _ => return Err(why.clone()),
        };
        pipeline.segments.push(shard);
        // A statement that is not a plain read counts as a write (on its shard).
        pipeline.writes.push(!starts_with_select(text));
    }
    if within {
        return Ok(pipeline);
    }
    if pipeline.shards().len() < 2 {
        return Err(why.clone());
    }
    if pipeline.writing_shards() > 1 && !map.two_phase_commit {
        return Err(ShardError::NoTwoPhase {
            why: Box::new(why.clone()),
        });
    }
    Ok(pipeline)
}

/// The statement is a SELECT or VALUES (after blanks, comments and parentheses) without a
/// locking clause usher would have to look for: a read.
fn starts_with_select(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let word = first_word(lower.as_bytes());
    matches!(word.as_slice(), b"select" | b"values") && !lower.contains(" for ")
}

/// The shard one execution runs on and whether it writes, when it is a plain statement
/// (SELECT, INSERT, UPDATE, DELETE, WITH, VALUES) placed on one shard.
fn segment_shard(
    bind: &Statement,
    map: &crate::config::Sharding,
    shards: usize,
) -> Option<(usize, bool)> {
    let (sql, class) = (bind.sql.as_deref()?, bind.class.as_deref()?);
    if class.parse_error
        || class.statements != 1
        || class.begins.is_some()
        || class.ends.is_some()
        || class.set_shard.is_some()
        || class.set_role.is_some()
        || !plain_statement(sql)
    {
        return None;
    }
    let (placed, hint) = super::placement(std::slice::from_ref(bind), map, shards);
    let shard = match hint {
        Some(h) => shard::hinted(&h, map, shards).ok()?,
        None => match placed.ok()? {
            Placement::Shard(s) => s,
            Placement::Unlisted | Placement::NoTable | Placement::Unbound => map.default_shard,
            Placement::AnyShard => map.default_shard,
            Placement::Broadcast => return None,
        },
    };
    Some((shard, class.write))
}

/// The statement starts with SELECT, INSERT, UPDATE, DELETE, WITH or VALUES (after blanks,
/// comments and parentheses): no transaction control, session state or utility command.
pub(super) fn plain_statement(sql: &[u8]) -> bool {
    matches!(
        first_word(sql).as_slice(),
        b"select" | b"insert" | b"update" | b"delete" | b"with" | b"values"
    )
}

/// The first word of `sql` (lower case), after blanks, comments and parentheses; empty when
/// a comment does not end.
fn first_word(sql: &[u8]) -> Vec<u8> {
    let mut rest = sql;
    loop {
        rest = rest.trim_ascii_start();
        if let Some(r) = rest.strip_prefix(b"--") {
            let end = r
                .iter()
                .position(|c| *c == b'\n')
                .map_or(r.len(), |p| p + 1);
            rest = r.get(end..).unwrap_or_default();
        } else if let Some(r) = rest.strip_prefix(b"/*") {
            let Some(end) = r.windows(2).position(|w| w == b"*/") else {
                return Vec::new();
            };
            rest = r.get(end + 2..).unwrap_or_default();
        } else if let Some(r) = rest.strip_prefix(b"(") {
            rest = r;
        } else {
            break;
        }
    }
    rest.iter()
        .take_while(|c| c.is_ascii_alphabetic())
        .map(u8::to_ascii_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::plain_statement;

    #[test]
    fn only_plain_statements_run_in_a_pipeline_across_shards() {
        for sql in [
            "insert into t values (1)",
            "  /* c */ -- x\n SELECT 1",
            "(select 1) union (select 2)",
            "WITH a AS (SELECT 1) DELETE FROM t",
        ] {
            assert!(plain_statement(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "savepoint a",
            "set x = 1",
            "commit",
            "/* open",
            "",
            "lock t",
        ] {
            assert!(!plain_statement(sql.as_bytes()), "{sql}");
        }
    }
}
