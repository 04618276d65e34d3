//! What a request does inside a transaction that spans shards (a client's `BEGIN` whose
//! statements named more than one shard, see `session::fanout::spanning`): end it, run its
//! statements each on its own shard (the shards join the transaction as they are first
//! named), run a read or write across shards inside it, or refuse what cannot run exactly.
//!
//! Only plain statements run (SELECT, INSERT, UPDATE, DELETE, WITH, VALUES) besides COMMIT
//! and ROLLBACK: SET, SAVEPOINT, LOCK, DDL and the like would change one shard's part of
//! the transaction and not the others', so they are refused with 0A000 naming them.

use super::pipeline::{pipeline_of, plain_statement, Pipeline};
use super::{control_batch, plan, Batch, Control, Facts, Plan, Refusal};
use crate::router::shard::ShardError;

/// What to do with a request inside a transaction across shards.
#[derive(Debug, PartialEq, Eq)]
pub enum Within {
    /// Wait for the rest of the request.
    Wait,
    /// COMMIT (`tag` COMMIT) or ROLLBACK ends the transaction on every shard; the answer's
    /// message kinds are in the control.
    End(Control),
    /// BEGIN again: Postgres warns (25001) and goes on.
    Begin(Control),
    /// Only Close messages (and Sync): usher closes its record of the client's statements
    /// and answers (no shard holds them: statements run there as the unnamed one).
    Close,
    /// Each execution on its own shard, in order (no execution: a Parse and Describe, run on
    /// any shard of the transaction).
    Segments(Pipeline),
    /// A read or write across shards ([`Plan::Fanout`], [`Plan::FanoutWrite`]), a catalog
    /// lookup to make first, or a refusal.
    Plan(Plan),
}

/// Plans `batch`, a request inside a transaction across shards.
pub fn plan_within(batch: &Batch, facts: &Facts) -> Within {
    if !batch.complete {
        return Within::Wait;
    }
    let Some(map) = facts.db.sharding.as_ref() else {
        return Within::Plan(refused("a database without a shard map"));
    };
    if batch.body().iter().all(|s| s.tag == b'C') {
        return Within::Close;
    }
    if let Some((_, class, kinds)) = control_batch(batch).filter(|(_, c, _)| c.statements == 1) {
        let extended = batch.statements.first().is_some_and(|s| s.tag != b'Q');
        if let Some(commit) = class.ends {
            return Within::End(Control {
                tag: if commit { b"COMMIT" } else { b"ROLLBACK" },
                hold: None,
                kinds,
                extended,
            });
        }
        if class.begins.is_some() {
            return Within::Begin(Control {
                tag: b"BEGIN",
                hold: None,
                kinds,
                extended,
            });
        }
    }
    let outside = Facts {
        held: None,
        aborted: false,
        ..*facts
    };
    // Only whether it is a pipeline matters here; the error is not shown.
    let why = ShardError::MissingKey {
        table: String::new(),
        column: String::new(),
    };
    if let Ok(p) = pipeline_of(batch, &outside, map, &why, true) {
        return Within::Segments(p);
    }
    let sql = batch.statements.iter().find_map(|s| s.sql.as_deref());
    if sql.is_some_and(|q| !plain_statement(q)) {
        return Within::Plan(one_shard_only(batch));
    }
    match plan(batch, &outside) {
        p @ (Plan::Fanout(_)
        | Plan::FanoutWrite(_)
        | Plan::Refuse(_)
        | Plan::CheckFunctions(_)
        | Plan::CheckColumns(_)
        | Plan::Wait) => Within::Plan(p),
        Plan::Pipeline(p) => Within::Segments(p),
        Plan::Run(_) | Plan::Local(_) | Plan::Broadcast => Within::Plan(one_shard_only(batch)),
    }
}

/// The refusal of a statement that would run in one shard's part of the transaction only.
fn one_shard_only(batch: &Batch) -> Plan {
    let word = first_word(batch);
    refused(&format!(
        "{word}, which would change one shard's part of it and not the others'"
    ))
}

/// The first word of the batch's first statement, upper case, to name it in a refusal.
fn first_word(batch: &Batch) -> String {
    let sql = batch
        .statements
        .iter()
        .find_map(|s| s.sql.as_deref())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(sql);
    text.split_whitespace()
        .next()
        .unwrap_or("this statement")
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_ascii_uppercase()
}

/// The refusal of `construct` inside a transaction across shards.
fn refused(construct: &str) -> Plan {
    Plan::Refuse(Refusal {
        sqlstate: "0A000",
        message: format!(
            "usher: a transaction across shards runs SELECT, INSERT, UPDATE, DELETE, WITH and VALUES, then COMMIT or ROLLBACK; this statement is {construct}"
        ),
        rejected: true,
    })
}
