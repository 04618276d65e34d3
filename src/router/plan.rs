//! The routing decision for a transaction that is starting, as one pure function:
//! [`plan`] reads the statements of the client's request (each classified once, see
//! `session::request`), the session's transaction and routing state and the database's
//! config, and says what to do: answer locally, refuse with a SQLSTATE, run on every shard,
//! or run on one server role of one shard. No sockets, no locks, no catalog lookups; when
//! function volatility is needed and not known yet it says so ([`Plan::CheckFunctions`]) and
//! the session asks the catalog and plans again.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::classify::{is_configured_write, Classification, RoleHint};
use super::shard::values::{BindParams, QueryValues};
use super::shard::{self, Placement, ShardError, ShardHint};
use crate::config::{Database, ReadWriteStrategy};

/// One client message of a request, with what routing needs to know of it.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    /// The message type byte.
    pub tag: u8,
    /// A Describe or Close of a statement (not a portal).
    pub of_statement: bool,
    /// The statement text it runs or prepares: a Query's, a Parse's, or for a Bind (and a
    /// Describe of a statement) the text of the statement it names, when known.
    pub sql: Option<Bytes>,
    /// The classification of `sql`.
    pub class: Option<Arc<Classification>>,
    /// Literal ranges of `sql` (sharded databases only, for Query and Parse).
    pub spans: Vec<Range<usize>>,
    /// Parameter type OIDs of the statement (Parse, or the Parse a Bind names).
    pub types: Vec<u32>,
    /// A Bind's body, for its parameter values.
    pub bind: Option<Bytes>,
}

/// The statements a plan is made for: from the message that starts the transaction up to
/// the end of what the client pipelined (its Sync, a Flush, or one Query).
pub struct Batch<'a> {
    /// The messages, the terminating Sync or Flush included when it arrived.
    pub statements: &'a [Statement],
    /// The batch ended (Sync, Flush, Query) or is too large to wait for.
    pub complete: bool,
}

impl Batch<'_> {
    /// The messages before the terminating Sync or Flush.
    fn body(&self) -> &[Statement] {
        match self.statements.split_last() {
            Some((last, rest)) if matches!(last.tag, b'S' | b'H') => rest,
            _ => self.statements,
        }
    }

    fn ends_in_sync(&self) -> bool {
        self.statements.last().is_some_and(|s| s.tag == b'S')
    }
}

/// The session state a plan depends on.
pub struct Facts<'a> {
    /// The database's config.
    pub db: &'a Database,
    /// The session pools in transaction mode (BEGIN holding and read/write split need it).
    pub transaction_mode: bool,
    /// The BEGIN usher holds back, when a transaction is open without a server.
    pub held: Option<&'a Statement>,
    /// usher refused a statement of the held transaction: it is aborted.
    pub aborted: bool,
    /// `SET usher.role` for the session.
    pub role_override: Option<RoleHint>,
    /// `SET usher.shard` / `SET usher.sharding_key` for the session.
    pub shard_override: Option<&'a ShardHint>,
    /// Whether the batch calls a user-defined VOLATILE function, once the catalog was asked.
    pub volatile: Option<bool>,
    /// A rotating number that spreads reads of global tables over the shards.
    pub rotation: usize,
}

/// What the session does with the transaction starting now.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Wait for more client messages: a sharded transaction routes by the bind values that
    /// follow its Parse.
    Wait,
    /// Answer the transaction-control batch locally: a BEGIN that is held back until the first
    /// real statement (`tag` is its command tag), or the COMMIT/ROLLBACK of a held transaction
    /// that never ran anything.
    Local(Control),
    /// Answer with this error; the rest of an extended batch is skipped to its Sync.
    Refuse(Refusal),
    /// Run the DDL on every shard's primary.
    Broadcast,
    /// Look up whether these functions are VOLATILE, then plan again.
    CheckFunctions(Vec<String>),
    /// Look up where this sharded table's key column stands among its columns (for an
    /// INSERT without a column list), then plan again.
    CheckColumns(CheckColumns),
    /// Run on one shard.
    Run(Run),
    /// Run one read on every shard and merge the rows (see `router::fanout`).
    Fanout(Fanout),
    /// Run one UPDATE or DELETE on the shards concerned, committed with two-phase commit.
    FanoutWrite(FanoutWrite),
    /// Run a pipeline of one-shard statements on their shards as one transaction (see
    /// `router::plan_pipeline`).
    Pipeline(Pipeline),
}

/// A sharded table whose key position the catalog must tell (see [`Plan::CheckColumns`]).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct CheckColumns {
    /// The table, as the shard map names it.
    pub table: String,
    /// Its key column.
    pub column: String,
}

/// A write that runs on several shards' primaries, as one distributed transaction.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct FanoutWrite {
    /// The statement's classification (its `fanout` shape is a write).
    pub class: Arc<Classification>,
    /// The shards it runs on, in order: those its keys map to, or all of them.
    pub shards: Vec<usize>,
    /// For a multi-row INSERT split by row: the shard of each VALUES row, in order.
    pub rows: Option<Vec<usize>>,
    /// A write to global tables: every shard runs it on its copy; each must change as many
    /// rows, and the client gets one shard's tag and RETURNING rows.
    pub global: bool,
}

/// A read that runs on every shard.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Fanout {
    /// The statement's classification (its `fanout` shape is a merge).
    pub class: Arc<Classification>,
    /// It needs the shards' primaries (else their replicas may serve it).
    pub primary: bool,
    /// Reads may go to replicas for this database and mode.
    pub split: bool,
    /// GROUP BY without the sharding key: each shard's groups are partial and combined by
    /// usher (`Merge::regrouped`).
    pub regroup: bool,
}

/// A transaction-control batch usher answers itself.
#[derive(Debug, PartialEq, Eq)]
pub struct Control {
    /// The command tag of each answer (BEGIN, START TRANSACTION, COMMIT, ROLLBACK).
    pub tag: &'static [u8],
    /// The BEGIN's text to hold (None: the held transaction ends).
    pub hold: Option<Bytes>,
    /// Message kinds answered: `P`, `B`, `D` (portal), `d` (statement), `X` (execution).
    pub kinds: Vec<u8>,
    /// The batch is an extended-protocol one (consumed up to and including its Sync).
    pub extended: bool,
}

/// An error usher answers instead of running the statement.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The SQLSTATE.
    pub sqlstate: &'static str,
    /// The message.
    pub message: String,
    /// Counted as a rejected route in the metrics (a shard or routing error).
    pub rejected: bool,
}

/// Where and how a transaction runs.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Run {
    /// The shard.
    pub shard: usize,
    /// It needs the primary (else a replica may serve it).
    pub primary: bool,
    /// The batch only prepares or describes statements: a held BEGIN stays held.
    pub prepare_only: bool,
    /// The batch sets `usher.role` (applies to it and to the session from now on).
    pub set_role: Option<RoleHint>,
    /// The batch writes (read-your-writes reads the commit LSN at release).
    pub writes: bool,
    /// Later statements are checked for writes (read-your-writes on the primary).
    pub track_writes: bool,
    /// Reads may go to replicas for this database and mode.
    pub split: bool,
    /// The database is sharded (the shard was chosen by the map).
    pub sharded: bool,
}

/// Decides what to do with the transaction starting at `batch`.
pub fn plan(batch: &Batch, facts: &Facts) -> Plan {
    let control = control(batch, facts);
    if facts.held.is_some() && facts.aborted {
        // usher refused this transaction's first statement: only its end is accepted.
        return match control {
            Some(c) if c.hold.is_none() => Plan::Local(c),
            _ => Plan::Refuse(Refusal {
                sqlstate: "25P02",
                message: "current transaction is aborted, commands ignored until end of transaction block".into(),
                rejected: false,
            }),
        };
    }
    if let Some(c) = control {
        return Plan::Local(c);
    }
    let (shard, prepare_only) = match shard_of(batch, facts) {
        Ok(Some(Choice::Fanout(class, regroup))) => return fan_out(class, regroup, facts),
        Ok(Some(Choice::FanoutWrite(class, shards, rows, global))) => {
            return fan_out_write(
                FanoutWrite {
                    class,
                    shards,
                    rows,
                    global,
                },
                facts,
            )
        }
        Ok(Some(Choice::Pipeline(p))) => return Plan::Pipeline(p),
        Ok(Some(Choice::Shard(s))) => (s, false),
        Ok(Some(Choice::Prepare(s))) => (s, facts.held.is_some()),
        Ok(Some(Choice::Broadcast)) if facts.held.is_none() => return Plan::Broadcast,
        Ok(Some(Choice::Broadcast)) => {
            return Plan::Refuse(Refusal {
                sqlstate: "0A000",
                message: "usher: DDL runs on every shard and must be sent outside a transaction block (or with /* usher: shard=N */ to run it on one shard)".into(),
                rejected: false,
            })
        }
        Ok(None) => return Plan::Wait,
        Err(ShardError::InsertColumns { table, column })
            if facts
                .db
                .sharding
                .as_ref()
                .is_some_and(|m| m.key_positions.get(&table).is_none()) =>
        {
            return Plan::CheckColumns(CheckColumns { table, column })
        }
        Err(e) => {
            return Plan::Refuse(Refusal {
                sqlstate: e.sqlstate(),
                message: e.to_string(),
                rejected: true,
            })
        }
    };
    let db = facts.db;
    let split = db.read_write_split && facts.transaction_mode;
    let mut run = Run {
        shard,
        primary: true,
        prepare_only,
        set_role: None,
        writes: false,
        track_writes: false,
        split,
        sharded: db.sharding.is_some(),
    };
    if !split {
        return Plan::Run(run);
    }
    let class = merged(facts.held.into_iter().chain(batch.body()));
    let volatile = if db.volatile_functions_are_writes && !class.functions.is_empty() {
        match facts.volatile {
            Some(v) => v,
            None => return Plan::CheckFunctions(class.functions),
        }
    } else {
        false
    };
    run.set_role = class.set_role;
    let role = class.set_role.or(facts.role_override);
    run.primary = super::wants_primary(db, &class, role.unwrap_or(RoleHint::Auto), volatile);
    run.writes = db.read_your_writes && (class.write || volatile);
    run.track_writes = db.read_your_writes && run.primary;
    Plan::Run(run)
}

/// The plan of a read that runs on every shard: on primaries or replicas, as a one-shard
/// read of the same statement would.
fn fan_out(class: Arc<Classification>, regroup: bool, facts: &Facts) -> Plan {
    let db = facts.db;
    let split = db.read_write_split && facts.transaction_mode;
    let primary = if split {
        let volatile = if db.volatile_functions_are_writes && !class.functions.is_empty() {
            match facts.volatile {
                Some(v) => v,
                None => return Plan::CheckFunctions(class.functions.clone()),
            }
        } else {
            false
        };
        let role = facts.role_override.unwrap_or(RoleHint::Auto);
        super::wants_primary(db, &class, role, volatile)
    } else {
        true
    };
    Plan::Fanout(Fanout {
        class,
        primary,
        split,
        regroup,
    })
}

/// The plan of a write across shards, once any user-defined function it calls is known not
/// to be VOLATILE (its effects on each shard could differ from one database's).
fn fan_out_write(write: FanoutWrite, facts: &Facts) -> Plan {
    let class = &write.class;
    if !class.functions.is_empty() {
        match facts.volatile {
            None => return Plan::CheckFunctions(class.functions.clone()),
            Some(true) => {
                return Plan::Refuse(Refusal {
                    sqlstate: "0A000",
                    message: format!(
                        "usher: a write across shards is run only when each shard computes what one database would, and this one calls a VOLATILE function ({})",
                        class.functions.join(", ")
                    ),
                    rejected: true,
                })
            }
            Some(false) => {}
        }
    }
    Plan::FanoutWrite(write)
}

/// The classification of a run of statements that execute together.
fn merged<'a>(statements: impl Iterator<Item = &'a Statement>) -> Classification {
    let mut merged = Classification::default();
    for c in statements.filter_map(|s| s.class.as_deref()) {
        merged.write |= c.write;
        merged.begins = merged.begins.or(c.begins);
        merged.hint = merged.hint.or(c.hint);
        merged.set_role = c.set_role.or(merged.set_role);
        merged.parse_error |= c.parse_error;
        merged.functions.extend(c.functions.iter().cloned());
    }
    merged
}

/// A BEGIN to hold, or the end of a held transaction, when the batch is exactly that.
fn control(batch: &Batch, facts: &Facts) -> Option<Control> {
    let db = facts.db;
    let first = batch.statements.first()?;
    let sharded = db.sharding.is_some();
    if !facts.transaction_mode
        || !(first.tag == b'Q' || (sharded && matches!(first.tag, b'P' | b'B')))
    {
        return None;
    }
    if !sharded && (!db.read_write_split || db.read_write_strategy != ReadWriteStrategy::Aggressive)
    {
        return None;
    }
    let (sql, class, kinds) = control_batch(batch)?;
    if class.statements != 1 {
        return None;
    }
    let holds = class.begins.is_some_and(|read_only| sharded || !read_only);
    let extended = first.tag != b'Q';
    if facts.held.is_none() && holds {
        let start = sql
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .and_then(|i| sql.get(i..i + 5))
            .is_some_and(|w| w.eq_ignore_ascii_case(b"start"));
        let tag: &'static [u8] = if start {
            b"START TRANSACTION"
        } else {
            b"BEGIN"
        };
        return Some(Control {
            tag,
            hold: Some(sql),
            kinds,
            extended,
        });
    }
    match (facts.held, class.ends) {
        (Some(_), Some(commit)) => Some(Control {
            tag: if commit { b"COMMIT" } else { b"ROLLBACK" },
            hold: None,
            kinds,
            extended,
        }),
        _ => None,
    }
}

/// The statement text of a simple Query, or of an extended batch that executes exactly one
/// statement and ends in a Sync, with its classification and the batch's message kinds.
fn control_batch(batch: &Batch) -> Option<(Bytes, Arc<Classification>, Vec<u8>)> {
    let first = batch.statements.first()?;
    if first.tag == b'Q' {
        return Some((first.sql.clone()?, first.class.clone()?, vec![b'X']));
    }
    if !batch.complete || !batch.ends_in_sync() {
        return None;
    }
    let mut text: Option<(&Bytes, &Arc<Classification>)> = None;
    let mut kinds = Vec::new();
    let mut executes = 0;
    for s in batch.body() {
        let this = match s.tag {
            b'P' => {
                kinds.push(b'P');
                Some((s.sql.as_ref()?, s.class.as_ref()?))
            }
            b'B' => {
                kinds.push(b'B');
                // An unnamed Bind runs the Parse before it; a named one must be known.
                match (&text, s.bind_of_unnamed()) {
                    (Some(_), true) => None,
                    _ => Some((s.sql.as_ref()?, s.class.as_ref()?)),
                }
            }
            b'D' => {
                kinds.push(if s.of_statement { b'd' } else { b'D' });
                None
            }
            b'E' => {
                executes += 1;
                kinds.push(b'X');
                None
            }
            _ => return None,
        };
        if let Some((sql, class)) = this {
            if text.is_some_and(|(t, _)| t != sql) {
                return None;
            }
            text = Some((sql, class));
        }
    }
    let (sql, class) = text.filter(|_| executes == 1)?;
    Some((sql.clone(), class.clone(), kinds))
}

impl Statement {
    /// A Bind of the unnamed statement.
    fn bind_of_unnamed(&self) -> bool {
        self.bind
            .as_ref()
            .is_some_and(|b| b.iter().skip_while(|c| **c != 0).nth(1) == Some(&0))
    }
}

/// Where a transaction goes.
enum Choice {
    Shard(usize),
    /// A read on every shard; `true` when its partial groups are combined.
    Fanout(Arc<Classification>, bool),
    FanoutWrite(Arc<Classification>, Vec<usize>, Option<Vec<usize>>, bool),
    Broadcast,
    Prepare(usize),
    Pipeline(Pipeline),
}

/// The shard for the batch; `None` while the rest of it is on the way.
fn shard_of(batch: &Batch, facts: &Facts) -> Result<Option<Choice>, ShardError> {
    let db = facts.db;
    let Some(map) = &db.sharding else {
        return Ok(Some(Choice::Shard(0)));
    };
    if !batch.complete {
        return Ok(None);
    }
    let statements = batch.body();
    let shards = db.shards.len();
    if statements
        .iter()
        .all(|s| matches!(s.tag, b'P' | b'D' | b'C' | b'H'))
    {
        return Ok(Some(Choice::Prepare(map.default_shard)));
    }
    let (placement, hint) = placement(statements, map, shards);
    if let Some(h) = hint.or_else(|| facts.shard_override.cloned()) {
        return shard::hinted(&h, map, shards).map(|s| Some(Choice::Shard(s)));
    }
    let placement = match placement {
        Err(e @ (ShardError::MissingKey { .. } | ShardError::CrossShard { .. })) => {
            return fanout_of(batch, facts, map, e).map(Some);
        }
        Err(e @ ShardError::GlobalWrite { .. }) if map.two_phase_commit => {
            return global_write_of(batch, facts, map, e).map(Some);
        }
        p => p,
    };
    Ok(Some(match placement? {
        Placement::Shard(s) => Choice::Shard(s),
        Placement::Broadcast => Choice::Broadcast,
        Placement::AnyShard => Choice::Shard(facts.rotation % shards.max(1)),
        Placement::Unlisted | Placement::NoTable | Placement::Unbound => {
            Choice::Shard(map.default_shard)
        }
    }))
}

/// Placement of statements that run together, and the last statement hint among them (a
/// hint wins over the placement, even over an error such as a missing key).
pub fn placement(
    statements: &[Statement],
    map: &crate::config::Sharding,
    shards: usize,
) -> (Result<Placement, ShardError>, Option<ShardHint>) {
    let mut result = Ok(Placement::NoTable);
    let mut hint = None;
    for s in statements {
        if !matches!(s.tag, b'Q' | b'P' | b'B') {
            continue;
        }
        let (Some(sql), Some(class)) = (&s.sql, &s.class) else {
            continue;
        };
        if class.shard_hint.is_some() {
            hint = class.shard_hint.clone();
        }
        let mut values = match &s.bind {
            Some(b) => QueryValues::bound(sql, s.types.clone(), BindParams::parse(b)),
            None => QueryValues::with_spans(sql, s.spans.clone()),
        };
        if let Ok(so_far) = result {
            result = shard::place(&class.shard, map, shards, &mut values)
                .and_then(|p| shard::combine(so_far, p));
        }
    }
    (result, hint)
}

/// Whether a statement of a transaction on the primary writes (read-your-writes): its
/// classification, configured write functions, or functions not known to be non-volatile
/// (`volatile(f)` answers from the catalog cache without a lookup).
pub fn writes(
    class: &Classification,
    db: &Database,
    volatile: impl Fn(&str) -> Option<bool>,
) -> bool {
    class.write
        || class
            .functions
            .iter()
            .any(|f| is_configured_write(f, &db.write_functions) || volatile(f) != Some(false))
}

#[path = "plan_across.rs"]
mod across;
#[path = "plan_pipeline.rs"]
mod pipeline;
#[path = "plan_spanning.rs"]
mod spanning;
pub use across::draws_per_call;
use across::{fanout_of, global_write_of};
pub use pipeline::Pipeline;
pub use spanning::{plan_within, Within};

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
