//! Sharding in the session: which shard a transaction starts on (from the statements the
//! client sent up to its Sync, their literals and bind values, hints and `SET usher.shard`),
//! and what happens when a later statement of a pinned transaction belongs elsewhere: it gets
//! SQLSTATE 0A000 raised *inside* the server's transaction, so the transaction is left exactly
//! as Postgres leaves it after any error (aborted until ROLLBACK).

use bytes::BytesMut;

use super::request::Request;
use super::responses::Expect;
use super::Session;
use crate::protocol::{messages, Frame};
use crate::router::plan;
use crate::router::shard::{self, Placement, ShardError};
use crate::server::quote_literal;

/// What to do with a statement arriving inside a pinned transaction.
pub(super) enum PinCheck {
    /// Run it on the attached server.
    Run,
    /// Wait until the server answered what is in flight, then decide again (the transaction
    /// may end there, and the statement start a new one elsewhere).
    Defer,
    /// Raise this error inside the transaction.
    Reject(&'static str, String),
    /// The server has only prepared statements since it was attached (a Parse and Describe
    /// ended by a Flush, as asyncpg sends before its first Bind): end that trip and start the
    /// transaction on the statement's own shard.
    Move,
}

impl Session {
    /// Checks the request's current Query or Bind, arriving while a server of a sharded
    /// database is attached.
    pub(super) fn check_pinned(&self, request: &mut Request) -> PinCheck {
        let db = &*self.db;
        let Some(map) = &db.sharding else {
            return PinCheck::Run;
        };
        let pinned = self.route.attached_shard;
        let shards = db.shards.len();
        let in_flight = !self.tracker.unsynced && !self.tracker.is_idle();
        let i = request.position();
        let Some(statement) = request.statement(i, &self.lookup()) else {
            return PinCheck::Run;
        };
        let placed = match plan::placement(std::slice::from_ref(statement), map, shards) {
            (_, Some(h)) => shard::hinted(&h, map, shards).map(Placement::Shard),
            (p, None) => p,
        };
        let other = match placed {
            Ok(Placement::Shard(s)) if s == pinned => return PinCheck::Run,
            Ok(Placement::Shard(s)) => s,
            Ok(Placement::Unlisted) if pinned != map.default_shard => map.default_shard,
            Ok(Placement::Broadcast) if in_flight => return PinCheck::Defer,
            Ok(Placement::Broadcast) => {
                return PinCheck::Reject("0A000", format!("usher: this transaction runs on shard {pinned}; DDL runs on every shard and must be sent outside a transaction block (or with /* usher: shard=N */ to run it on one shard)"));
            }
            Ok(_) => return PinCheck::Run,
            // Inside a pinned transaction a statement without a key runs where the transaction is.
            Err(ShardError::MissingKey { .. }) => return PinCheck::Run,
            Err(_) if in_flight => return PinCheck::Defer,
            Err(e) => return PinCheck::Reject(e.sqlstate(), e.to_string()),
        };
        if self.only_prepared() {
            return PinCheck::Move;
        }
        if in_flight {
            return PinCheck::Defer;
        }
        PinCheck::Reject(
            "0A000",
            format!("usher: this transaction is pinned to shard {pinned}, but this statement belongs to shard {other}; a transaction runs on one shard (COMMIT or ROLLBACK, then start a new one)"),
        )
    }

    /// The attached server has done nothing a transaction could see: since it was attached
    /// in transaction mode it was only sent Parse, Describe and Close (no BEGIN, no Execute,
    /// no query), so the client's next statement may start its transaction on another server.
    pub(super) fn only_prepared(&self) -> bool {
        self.mode == crate::config::PoolMode::Transaction
            && !self.tracker.executed
            && (self.txn_status == b'I' || self.txn.held().is_some())
    }

    /// Ends a server trip that only prepared statements, so that the message at hand starts
    /// its transaction where it belongs: a Sync of usher's own closes the server's implicit
    /// transaction (its ReadyForQuery unseen by the client), the session waits for that
    /// answer, the server goes back to the pool, and the message is then planned afresh.
    pub(super) fn end_prepare_trip(&mut self) -> super::Flow {
        if self.tracker.unsynced {
            self.server_out.extend_from_slice(messages::SYNC);
            self.tracker.push(Expect::HiddenSync);
        }
        super::Flow::Wait
    }

    /// Raises `code`/`message` inside the server's transaction in place of `frame`.
    pub(super) fn inject_error(&mut self, frame: &Frame, code: &str, message: &str) {
        let sql = format!(
            "DO $usher$ BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = {}; END $usher$",
            quote_literal(message)
        );
        let mut out = BytesMut::new();
        messages::query(&mut out, &sql);
        // A simple Query destroys the unnamed statement on the server.
        if let Some(lease) = self.txn.lease() {
            lease.conn().state.unnamed_owner = None;
        }
        self.server_out.extend_from_slice(&out);
        if frame.tag == b'Q' {
            self.tracker.push(Expect::Query);
        } else {
            self.tracker.push(Expect::InjectedError);
            self.skip_until_sync = true;
            // An explicit transaction is now aborted; an implicit one (a batch outside a
            // transaction block) ends with the error, as the server's own ReadyForQuery says.
            if self.txn_status == b'T' || self.txn.held().is_some() {
                self.txn_status = b'E';
            }
        }
    }
}
