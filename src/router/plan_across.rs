//! The plans of statements that need more than one shard: a read whose rows merge exactly,
//! an UPDATE/DELETE or split INSERT that runs exactly on each shard concerned, a write to
//! global tables that changes every copy alike. Each returns the [`Choice`] to make or the
//! error that made one shard impossible, with the construct that stops the statement named.

use std::sync::Arc;

use super::super::classify::Classification;
use super::super::fanout::Shape;
use super::super::shard::values::{BindParams, QueryValues};
use super::super::shard::{self, ShardError};
use super::{Batch, Choice, Facts, Statement};

/// The statement a batch runs on several shards, outside a transaction block, sent as a
/// simple Query or as one execution ended by a Sync: a SELECT whose rows merge exactly, or
/// an UPDATE or DELETE that runs exactly on each shard. Anything else keeps the error `why`
/// that made one shard impossible, with what stops it.
pub(super) fn fanout_of(
    batch: &Batch,
    facts: &Facts,
    map: &crate::config::Sharding,
    why: ShardError,
) -> Result<Choice, ShardError> {
    let body = batch.body();
    let Some(class) = single_statement(batch, facts).filter(|c| c.statements <= 1) else {
        // Several statements, each of one shard: a pipeline across shards.
        return super::pipeline::pipeline_of(batch, facts, map, &why, false).map(Choice::Pipeline);
    };
    let refuse = |construct: String| ShardError::NotMergeable {
        why: Box::new(why.clone()),
        construct,
    };
    if class.write {
        let rows = match class.fanout {
            Some(Shape::Insert) => {
                let statement = body.iter().find(|s| matches!(s.tag, b'Q' | b'B'));
                match (statement, class.shard.first()) {
                    (Some(s), Some(f)) => {
                        let mut values = statement_values(s);
                        match shard::insert_rows(f, map, facts.db.shards.len(), &mut values)? {
                            Some(rows) => Some(rows),
                            None => return Err(why),
                        }
                    }
                    _ => return Err(why),
                }
            }
            _ => None,
        };
        return write_of(class, facts.db.shards.len(), map, why, rows);
    }
    let merge = match &class.fanout {
        // Every shard copies its own rows of the table.
        Some(Shape::CopyOut(_)) => return Ok(Choice::Fanout(class, false)),
        Some(Shape::Merge(m)) => m,
        Some(Shape::Refused(construct)) => return Err(refuse(construct.clone())),
        _ => return Err(why),
    };
    let mut regroup = false;
    if let Some(f) = class.shard.first() {
        super::super::fanout::colocated(f, map).map_err(refuse)?;
        if let Some(p) = merge.partition.as_deref() {
            match super::super::fanout_group::keyed(p, f, map) {
                // Grouped by the key: whole groups, merged as rows, unless only Postgres
                // can order them (the finished regrouping does).
                Ok(()) => {
                    if let Some(why) = &merge.unsorted {
                        match &merge.regroup {
                            Some(Ok(_)) => regroup = true,
                            _ => return Err(refuse(why.clone())),
                        }
                    }
                }
                // Groups without the key may still combine across shards.
                Err(e) => match &merge.regroup {
                    Some(Ok(_)) => regroup = true,
                    Some(Err(why)) => return Err(refuse(format!("{e}, with {why}"))),
                    _ => return Err(refuse(e)),
                },
            }
        } else if matches!(&merge.regroup, Some(Ok(r)) if r.finish.is_some()) {
            // DISTINCT aggregates: finished over the distinct rows.
            regroup = true;
        }
    }
    Ok(Choice::Fanout(class, regroup))
}

/// The classification of the one statement a batch runs, outside a transaction block, sent
/// as a simple Query or as one execution ended by a Sync.
fn single_statement(batch: &Batch, facts: &Facts) -> Option<Arc<Classification>> {
    let body = batch.body();
    let executes = body.iter().filter(|s| matches!(s.tag, b'Q' | b'E')).count();
    let class = body
        .iter()
        .find(|s| matches!(s.tag, b'Q' | b'B'))
        .and_then(|s| s.class.clone());
    let single = executes == 1
        && (body.first().is_some_and(|s| s.tag == b'Q') && body.len() == 1
            || batch.ends_in_sync()
                && body
                    .iter()
                    .all(|s| matches!(s.tag, b'P' | b'B' | b'D' | b'E')));
    class.filter(|_| single && facts.held.is_none())
}

/// Functions whose every call draws a new value: one database stores one draw, each copy of
/// a global table would store its own.
const PER_CALL: &[&str] = &[
    "random",
    "random_normal",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "clock_timestamp",
    "timeofday",
    "setseed",
];

/// Whether `name` (as called, maybe `pg_catalog.` or another schema) draws a new value each
/// call (see [`PER_CALL`]).
pub fn draws_per_call(name: &str) -> bool {
    let base = name.rsplit('.').next().unwrap_or(name);
    PER_CALL.iter().any(|f| f.eq_ignore_ascii_case(base))
}

/// A write to global tables, run on every shard: the same statement, on the same rows, so
/// that every copy changes alike. It must read nothing but global tables and draw no value
/// per call; the database must commit across shards.
pub(super) fn global_write_of(
    batch: &Batch,
    facts: &Facts,
    map: &crate::config::Sharding,
    why: ShardError,
) -> Result<Choice, ShardError> {
    let Some(class) = single_statement(batch, facts) else {
        return Err(why);
    };
    let refuse = |construct: String| write_refusal(&why, construct);
    write_shape(&class, &why)?;
    if let Some(f) = class.shard.first() {
        if let Some(t) = f
            .tables
            .iter()
            .find(|t| !map.is_global(t.schema.as_deref(), &t.name))
        {
            return Err(refuse(format!(
                "table {:?}, which is not global (each copy would be written from its own shard's rows)",
                t.name
            )));
        }
    }
    if let Some(f) = class.functions.iter().find(|f| draws_per_call(f)) {
        return Err(refuse(format!(
            "{f}() (each copy would store its own draw)"
        )));
    }
    Ok(Choice::FanoutWrite(
        class,
        (0..facts.db.shards.len()).collect(),
        None,
        true,
    ))
}

/// An UPDATE or DELETE that runs on the shards its keys map to (all of them without a key):
/// one that leaves every row on its shard, reads only rows of its own shard, and runs only
/// where the database commits across shards with two-phase commit.
fn write_of(
    class: Arc<Classification>,
    shard_count: usize,
    map: &crate::config::Sharding,
    why: ShardError,
    rows: Option<Vec<usize>>,
) -> Result<Choice, ShardError> {
    let refuse = |construct: String| write_refusal(&why, construct);
    write_shape(&class, &why)?;
    if let Some(f) = class.shard.first() {
        for (t, column, _) in &f.sets {
            let Some(table) = f.tables.get(*t) else {
                continue;
            };
            if map
                .table(table.schema.as_deref(), &table.name)
                .is_some_and(|st| st.column.eq_ignore_ascii_case(column))
            {
                return Err(refuse(format!(
                    "an UPDATE of the sharding key {column} (rows would move between shards)"
                )));
            }
        }
        super::super::fanout::colocated(f, map).map_err(refuse)?;
    }
    if !map.two_phase_commit {
        return Err(ShardError::NoTwoPhase { why: Box::new(why) });
    }
    let shards = match (&rows, &why) {
        (Some(rows), _) => {
            let mut s = rows.clone();
            s.sort_unstable();
            s.dedup();
            s
        }
        (None, ShardError::CrossShard { shards, .. }) => shards.clone(),
        (None, _) => (0..shard_count).collect(),
    };
    Ok(Choice::FanoutWrite(class, shards, rows, false))
}

/// The literal and parameter values of one statement, for its facts.
fn statement_values(s: &Statement) -> QueryValues<'_> {
    let sql = s.sql.as_deref().unwrap_or_default();
    match &s.bind {
        Some(b) => QueryValues::bound(sql, s.types.clone(), BindParams::parse(b)),
        None => QueryValues::with_spans(sql, s.spans.clone()),
    }
}

/// The error for a write across shards that `construct` stops.
fn write_refusal(why: &ShardError, construct: String) -> ShardError {
    ShardError::WriteAcross {
        why: Box::new(why.clone()),
        construct,
    }
}

/// Checks that the statement is a write that can run per shard, by its shape.
fn write_shape(class: &Classification, why: &ShardError) -> Result<(), ShardError> {
    match &class.fanout {
        Some(Shape::Write | Shape::Insert) => Ok(()),
        Some(Shape::Refused(construct)) => Err(write_refusal(why, construct.clone())),
        _ => Err(why.clone()),
    }
}
