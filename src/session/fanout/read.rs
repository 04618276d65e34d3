//! The answer of a read across shards, merged: every shard's frames read as they arrive,
//! the frames before the rows sent once, rows streamed (or merged k-way by the ORDER BY
//! keys, one row held per shard), aggregates and partial groups combined, the finishing
//! statement run where the answer needs one, LIMIT and OFFSET applied, and one
//! CommandComplete and ReadyForQuery to end it.

use bytes::Bytes;

use super::finish::{self, Header};
use super::merge::{sort_columns, Window};
use super::{aggregate, batch, compare::Column, end_or_aside, lost, regroup, unexpected, Part};
use crate::protocol::{messages, Frame};
use crate::router::fanout::Merge;
use crate::session::{Session, SessionError};

impl Session {
    /// Sends the batch to every shard, relays and merges the answers, and ends with the
    /// client's CommandComplete (or error) and ReadyForQuery.
    pub(super) async fn merge_parts(
        &mut self,
        parts: &mut [Part],
        batch: &batch::ShardBatch,
        merge: &Merge,
    ) -> Result<(), SessionError> {
        let mut error: Option<Bytes> = None;
        let deadline = self.fanout_deadline();
        for (i, p) in parts.iter_mut().enumerate() {
            if let Err(e) = p.lease.conn().write(&batch.bytes).await {
                error.get_or_insert_with(|| lost(i, &e.to_string()));
                p.broken();
            }
        }
        let mut window = Window {
            offset: batch.offset,
            limit: batch.limit,
            skipped: 0,
            sent: 0,
        };
        let mut columns: Option<Vec<Column>> = None;
        // Under aggregates: the result's column types, and each shard's row of partials.
        let mut fields: Option<Vec<aggregate::Field>> = None;
        let mut partials: Vec<Frame> = Vec::new();
        // Under regrouping: the ORDER BY of the combined groups.
        let mut group_order: Vec<Column> = Vec::new();
        // Under a finishing statement: the frames before the rows, held for its answer.
        let mut held: Vec<Header> = Vec::new();
        let mut parses = 0usize;
        let mut after_t = false;
        let mut header_sent = 0usize;
        loop {
            for (i, p) in parts.iter_mut().enumerate() {
                while !p.ready && p.head.is_none() {
                    let Some(frame) = p.next_frame(i, &mut error) else {
                        break;
                    };
                    match frame.tag {
                        b'1' | b'2' | b't' | b'T' | b'n' if p.header_seen < batch.header_frames => {
                            // Every shard sends the same frames before its rows: the client
                            // gets each from whichever shard sends it first.
                            let index = p.header_seen;
                            p.header_seen += 1;
                            if index < header_sent {
                                continue;
                            }
                            header_sent += 1;
                            // A RowDescription right after a ParameterDescription describes
                            // a statement (formats unknown), not the portal that runs.
                            let of_statement = std::mem::replace(&mut after_t, frame.tag == b't');
                            if frame.tag == b'1' {
                                parses += 1;
                                if batch.injected.get(parses - 1).copied().unwrap_or(false) {
                                    continue;
                                }
                            }
                            if frame.tag == b'T' && !of_statement && merge.needs_types() {
                                if merge.aggregates.is_some() || merge.grouped.is_some() {
                                    match aggregate_fields(frame.body()) {
                                        Ok(f) => fields = Some(f),
                                        Err(e) => {
                                            error.get_or_insert_with(|| lost(i, &e));
                                        }
                                    }
                                    if let (Some(g), Some(f)) = (&merge.grouped, &fields) {
                                        // Refused before any row is gathered.
                                        if let Err((code, message)) = regroup::check_fields(g, f) {
                                            error.get_or_insert_with(|| {
                                                messages::error_response(
                                                    "ERROR", code, &message, None,
                                                )
                                            });
                                        }
                                    }
                                }
                                if merge.grouped.is_some() && !merge.order.is_empty() {
                                    match sort_columns(frame.body(), merge) {
                                        Ok(c) => group_order = c,
                                        Err(construct) => {
                                            error.get_or_insert_with(|| not_mergeable(&construct));
                                        }
                                    }
                                } else if merge.aggregates.is_none() && merge.grouped.is_none() {
                                    match sort_columns(frame.body(), merge) {
                                        Ok(c) => columns = Some(c),
                                        Err(construct) => {
                                            error.get_or_insert_with(|| not_mergeable(&construct));
                                        }
                                    }
                                }
                                if batch.described_here {
                                    continue;
                                }
                            }
                            if merge.finishes() {
                                // The finishing statement's answer replaces the shards'.
                                held.push(match frame.tag {
                                    b'T' if of_statement => Header::StatementDescription,
                                    b'T' => Header::PortalDescription,
                                    _ => Header::Frame(frame.raw),
                                });
                                continue;
                            }
                            if frame.tag == b'T' && merge.hidden() > 0 {
                                // avg()'s partials are the shards', not the client's.
                                let visible =
                                    crate::protocol::server::row_description_columns(frame.body())
                                        .map(|n| n.saturating_sub(merge.hidden()))
                                        .and_then(|n| {
                                            crate::protocol::server::row_description_prefix(
                                                frame.body(),
                                                n,
                                            )
                                        });
                                match visible {
                                    Ok(t) => self.client_out.push(t),
                                    Err(e) => {
                                        error.get_or_insert_with(|| lost(i, &e.to_string()));
                                    }
                                }
                                continue;
                            }
                            self.client_out.push(frame.raw);
                        }
                        b'D' => {
                            if error.is_some() || window.full() {
                                continue;
                            }
                            if merge.grouped.is_some()
                                && partials.len() >= regroup::MAX_PARTIAL_ROWS
                            {
                                error.get_or_insert_with(|| {
                                    messages::error_response(
                                        "ERROR",
                                        "54000",
                                        &format!("usher: GROUP BY across shards gathered more than {} partial groups", regroup::MAX_PARTIAL_ROWS),
                                        None,
                                    )
                                });
                            } else if merge.aggregates.is_some() || merge.grouped.is_some() {
                                partials.push(frame);
                            } else if merge.order.is_empty() {
                                if window.take() {
                                    self.client_out.push(frame.raw);
                                }
                            } else if columns.is_some() {
                                p.head = Some(frame);
                            } else {
                                error.get_or_insert_with(|| {
                                    lost(i, "rows before their description")
                                });
                            }
                        }
                        b'C' => {
                            p.rows_done = true;
                        }
                        _ => {
                            if let Some(f) =
                                end_or_aside(&mut self.client_out, p, frame, &mut error, true)
                            {
                                unexpected(p, i, f.tag, &mut error, "a read");
                            }
                        }
                    }
                }
            }
            if error.is_some() {
                self.cancel_running(parts);
                for p in parts.iter_mut() {
                    p.head = None;
                }
            }
            if let Some(columns) = &columns {
                match self.emit_ordered(parts, columns, &mut window, error.is_some()) {
                    // A shard's head was taken: its next rows may already be buffered.
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        error.get_or_insert_with(|| not_mergeable(&e));
                        continue;
                    }
                }
            }
            if parts.iter().all(|p| p.ready) {
                break;
            }
            self.flush_client().await?;
            self.read_some(parts, &mut error, deadline).await;
        }
        let fields = fields.unwrap_or_default();
        if let (None, Some(kinds)) = (&error, &merge.aggregates) {
            match (aggregate::combine(kinds, &fields, &partials), &merge.finish) {
                (Ok(Some(row)), Some(sql)) => {
                    let visible = fields.get(..kinds.len()).unwrap_or_default();
                    match finish::run(parts, sql, visible, &[row], &batch.result_formats).await {
                        Ok(done) => {
                            if let Err(e) = self.answer_finished(&mut held, &done) {
                                error = Some(e);
                            }
                            for row in done.rows {
                                if window.take() {
                                    self.client_out.push(row);
                                }
                            }
                        }
                        Err(e) => error = Some(e),
                    }
                }
                (Ok(Some(row)), None) => {
                    if window.take() {
                        self.client_out.push(row);
                    }
                }
                (Ok(None), Some(_)) => {
                    error = Some(lost(0, "no shard returned its aggregates"));
                }
                (Ok(None), None) => {}
                (Err((code, message)), _) => {
                    error = Some(messages::error_response("ERROR", code, &message, None));
                }
            }
        }
        if let (None, Some(columns)) = (&error, &merge.grouped) {
            match regroup::regroup(columns, &fields, &partials, &group_order) {
                Ok(rows) if merge.finish_groups.is_some() => {
                    let visible = fields.get(..columns.len()).unwrap_or_default();
                    // One array per column where every type has one (any number of
                    // groups); else a VALUES list of parameters.
                    let arrays: Option<Vec<u32>> = visible
                        .iter()
                        .map(|f| finish::array_type(f.type_oid))
                        .collect();
                    let formats = &batch.result_formats;
                    let done = match (&merge.finish_groups, arrays) {
                        (None, _) => Err(lost(0, "no finishing statement")),
                        (Some(t), Some(arrays)) => match t.sql_arrays(visible.len()) {
                            Ok(sql) => {
                                finish::run_arrays(parts, &sql, visible, &arrays, &rows, formats)
                                    .await
                            }
                            Err(e) => Err(lost(0, &e)),
                        },
                        (Some(t), None) => match t.sql(rows.len(), visible.len()) {
                            Ok(sql) => finish::run(parts, &sql, visible, &rows, formats).await,
                            Err(e) => Err(messages::error_response("ERROR", "54000", &e, None)),
                        },
                    };
                    match done {
                        Ok(done) => {
                            if let Err(e) = self.answer_finished(&mut held, &done) {
                                error = Some(e);
                            }
                            for row in done.rows {
                                if window.take() {
                                    self.client_out.push(row);
                                }
                            }
                        }
                        Err(e) => error = Some(e),
                    }
                }
                Ok(rows) => {
                    for row in rows {
                        if window.take() {
                            self.client_out.push(row);
                        }
                    }
                }
                Err((code, message)) => {
                    error = Some(messages::error_response("ERROR", code, &message, None));
                }
            }
        }
        if error.is_some() {
            // What came before the error, without the descriptions of what never ran.
            for h in held {
                if let Header::Frame(f) = h {
                    self.client_out.push(f);
                }
            }
        }
        let tag = format!("SELECT {}", window.sent);
        self.end_answer(error, Some(tag.as_bytes())).await
    }

    /// Sends the held frames before the rows, the descriptions the finishing statement's
    /// (a statement's without result formats), and its notices.
    fn answer_finished(
        &mut self,
        held: &mut Vec<Header>,
        done: &finish::Finished,
    ) -> Result<(), Bytes> {
        for h in std::mem::take(held) {
            let frame = match (h, &done.description) {
                (Header::Frame(f), _) => f,
                (Header::PortalDescription, Some(t)) => t.clone(),
                (Header::StatementDescription, Some(t)) => {
                    crate::protocol::server::row_description_unformatted(
                        t.get(5..).unwrap_or_default(),
                    )
                    .map_err(|e| lost(0, &e.to_string()))?
                }
                (_, None) => Bytes::from_static(messages::NO_DATA),
            };
            self.client_out.push(frame);
        }
        self.client_out.extend(done.notices.iter().cloned());
        Ok(())
    }
}

/// The type and format of each column of an aggregate row, from its RowDescription.
fn aggregate_fields(description: &[u8]) -> Result<Vec<aggregate::Field>, String> {
    let fields =
        crate::protocol::server::row_description(description).map_err(|e| e.to_string())?;
    Ok(fields
        .iter()
        .map(|f| aggregate::Field {
            type_oid: f.type_oid,
            format: f.format,
        })
        .collect())
}

/// The client's error when the rows turn out not to merge exactly (found from the result).
fn not_mergeable(construct: &str) -> Bytes {
    messages::error_response(
        "ERROR",
        "0A000",
        &format!("usher: a query across shards is run only when its rows merge exactly, and this one has {construct}"),
        None,
    )
}
