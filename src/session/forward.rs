//! Forwarding a client message to the attached server: what the server will answer is
//! recorded for the response tracker, statement names are translated in transaction mode, and
//! session-level changes (SET, DISCARD, DEALLOCATE) are noted.

use bytes::BytesMut;

use super::prepared::ClientStatements;
use super::responses::{Expect, Tracker};
use super::sql_scan::{self, SessionChange};
use super::{Session, SessionError};
use crate::config::PoolMode;
use crate::protocol::{client, messages, Frame};

impl Session {
    /// Appends a client frame to the server batch and records what it expects back.
    pub(super) fn forward(&mut self, frame: &Frame) -> Result<(), SessionError> {
        if matches!(frame.tag, b'Q' | b'E') {
            self.stats.queries.inc();
        }
        let Some(lease) = self.txn.lease() else {
            return Err(SessionError::Internal(
                "a message was forwarded with no server attached",
            ));
        };
        let state = &mut lease.conn().state;
        let rewrite = self.mode == PoolMode::Transaction;
        match frame.tag {
            b'Q' => {
                let sql = frame.body().strip_suffix(b"\0").unwrap_or(frame.body());
                tracing::debug!(client = self.id, sql = %String::from_utf8_lossy(sql), "query");
                let (changes, statements) = sql_scan::scan(sql);
                if changes
                    .iter()
                    .any(|c| matches!(c, SessionChange::ResetAll | SessionChange::DiscardAll))
                {
                    // Like every other setting, usher.* go back to their defaults.
                    self.route.role_override = None;
                    self.route.shard_override = None;
                }
                if changes.iter().any(|c| matches!(c, SessionChange::Set(n) | SessionChange::Reset(n) if n.to_ascii_lowercase().starts_with("usher."))) {
                    let sql = client::sql_of(frame).unwrap_or_default();
                    let class = self.memo.classify(&self.app.query_cache, &sql);
                    if let Some(role) = class.set_role {
                        self.route.role_override = Some(role);
                    }
                    if let Some(hint) = &class.set_shard {
                        self.route.shard_override = hint.clone();
                    }
                }
                if rewrite && statements == 1 {
                    if let [SessionChange::Deallocate(name)] = changes.as_slice() {
                        if self.stmts.remove(name.as_bytes()) {
                            // A protocol-level statement: only usher knows it by this name.
                            let mut out = BytesMut::new();
                            messages::command_complete(&mut out, b"DEALLOCATE");
                            messages::ready_for_query(&mut out, self.txn_status);
                            self.tracker.push(Expect::Local(out.freeze()));
                            return Ok(());
                        }
                    }
                }
                if changes
                    .iter()
                    .any(|c| matches!(c, SessionChange::DeallocateAll | SessionChange::DiscardAll))
                {
                    self.stmts.clear();
                    self.dropped_statements = true;
                    state.prepared.clear();
                    state.unnamed_owner = None;
                }
                self.params.on_changes(&changes, state);
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.push(Expect::Query);
            }
            b'P' | b'B' | b'D' | b'C' if rewrite => {
                self.stmts.translate(
                    self.id,
                    frame,
                    state,
                    &mut self.tracker,
                    &mut self.server_out,
                )?;
            }
            b'P' | b'B' | b'D' | b'C' => {
                let expect = match frame.tag {
                    b'P' => Expect::Parse {
                        injected: false,
                        name: None,
                    },
                    b'B' => Expect::Bind,
                    b'C' => Expect::Close,
                    _ => match client::Targeted::new(frame)?.target {
                        client::Target::Statement => Expect::DescribeStatement,
                        client::Target::Portal => Expect::DescribePortal,
                    },
                };
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.push(expect);
            }
            b'E' => {
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.push(Expect::Execute);
            }
            b'S' => {
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.push(Expect::Sync);
            }
            b'F' => {
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.push(Expect::FunctionCall);
            }
            b'H' => {
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.note_unsynced();
            }
            b'c' | b'f' => {
                self.server_out.extend_from_slice(&frame.raw);
                self.tracker.client_copy_end();
            }
            _ => self.server_out.extend_from_slice(&frame.raw),
        }
        Ok(())
    }
}

/// Runs the prepared-statement translation on an arbitrary client frame body (for the
/// robustness tests and fuzzing): it must return an error or a translation, never panic.
pub(crate) fn probe_translate(tag: u8, body: &[u8]) {
    let frame = Frame::new(tag, body);
    let mut stmts = ClientStatements::default();
    let mut state = crate::server::ServerState::default();
    let mut tracker = Tracker::default();
    let mut out = BytesMut::new();
    let _ = stmts.remember(&frame);
    let _ = stmts.translate(1, &frame, &mut state, &mut tracker, &mut out);
}
