//! The per-shard batches of a multi-row INSERT split across shards, and the statement every
//! copy of a global table gets: the target table's column defaults are read (cached) so
//! that those one database evaluates once per transaction are written into the rows as one
//! constant, a default calling a user-defined VOLATILE function is refused, and each shard
//! of a split INSERT gets its own rows, with the bind values of other shards' rows sent as
//! NULL.

use super::batch::{self, Refusal, ShardBatch};
use crate::protocol::Frame;
use crate::router::fanout::Merge;
use crate::router::fanout_insert;
use crate::router::plan::FanoutWrite;
use crate::session::Session;

fn refuse(why: String) -> Refusal {
    (
        "0A000",
        format!("usher: an INSERT across shards with {why}"),
    )
}

impl Session {
    /// One batch per shard of `plan` (in its order) for the INSERT `sql` (its clock calls
    /// already pinned to `at`) whose VALUES rows go to `rows`; and whether it returns rows.
    pub(super) async fn insert_batches(
        &mut self,
        plan: &FanoutWrite,
        rows: &[usize],
        frames: &[Frame],
        sql: &str,
        at: &str,
    ) -> Result<(Vec<ShardBatch>, bool), Refusal> {
        let pinned = self.defaults_for(plan, sql, at).await?;
        let mut batches = Vec::with_capacity(plan.shards.len());
        for &shard in &plan.shards {
            let part =
                fanout_insert::for_shard(sql, rows, shard, &pinned.columns).map_err(refuse)?;
            let merge = Merge {
                shard_sql: Some(part.sql),
                ..Merge::default()
            };
            batches.push(batch::build_with(
                frames,
                &merge,
                &self.stmts,
                &part.unused,
            )?);
        }
        Ok((batches, fanout_insert::returns_rows(sql)))
    }

    /// The INSERT `sql` (clock calls pinned to `at`) into a global table as every copy gets
    /// it: defaults pinned like a split INSERT's, and none that draws a value per call.
    pub(super) async fn global_insert_sql(
        &mut self,
        plan: &FanoutWrite,
        sql: &str,
        at: &str,
    ) -> Result<String, Refusal> {
        let pinned = self.defaults_for(plan, sql, at).await?;
        if let Some(f) = pinned
            .functions
            .iter()
            .find(|f| crate::router::plan::draws_per_call(f))
        {
            return Err((
                "0A000",
                format!("usher: a write to a global table with a column default that calls {f}() (each copy would store its own draw): give the column a value"),
            ));
        }
        fanout_insert::with_defaults(sql, &pinned.columns).map_err(refuse)
    }

    /// The defaults the INSERT `sql` leaves out, pinned to `at`; refused when one calls a
    /// user-defined VOLATILE function.
    async fn defaults_for(
        &mut self,
        plan: &FanoutWrite,
        sql: &str,
        at: &str,
    ) -> Result<fanout_insert::Defaults, Refusal> {
        let table = plan
            .class
            .shard
            .first()
            .and_then(|f| f.inserts.first().and_then(|i| f.tables.get(i.table)))
            .ok_or_else(|| refuse("no table usher could find".into()))?;
        let config = self.snap().config.clone();
        let defaults = self
            .app
            .column_defaults(&config, &self.db_name, table.schema.as_deref(), &table.name)
            .await
            .map_err(|e| {
                (
                    "58000",
                    format!(
                        "usher: could not read the column defaults of {:?} for an INSERT across shards: {e}",
                        table.name
                    ),
                )
            })?;
        let pinned = fanout_insert::pin_defaults(sql, &defaults, at).map_err(refuse)?;
        if !pinned.functions.is_empty()
            && self
                .app
                .calls_volatile(&config, &self.db_name, &pinned.functions)
                .await
        {
            return Err(refuse(format!(
                "column defaults that call a VOLATILE function ({})",
                pinned.functions.join(", ")
            )));
        }
        Ok(pinned)
    }
}
