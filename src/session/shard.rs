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

/// Where a statement belongs, seen from a pinned transaction.
enum Verdict {
    /// On the pinned shard (or anywhere).
    Here,
    /// On this other shard.
    Elsewhere(usize),
    /// It names a sharded table without its key.
    Keyless,
    /// DDL: every shard.
    Broadcast,
    /// Its key is wrong (or names several shards).
    Error(ShardError),
}

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
    /// Where statement `i` of the request belongs, seen from the shard the transaction is
    /// pinned to.
    fn verdict(&self, request: &mut Request, i: usize) -> Verdict {
        let db = &*self.db;
        let Some(map) = &db.sharding else {
            return Verdict::Here;
        };
        let pinned = self.route.attached_shard;
        let shards = db.shards.len();
        let Some(statement) = request.statement(i, &self.lookup()) else {
            return Verdict::Here;
        };
        let placed = match plan::placement(std::slice::from_ref(statement), map, shards) {
            (_, Some(h)) => shard::hinted(&h, map, shards).map(Placement::Shard),
            (p, None) => p,
        };
        match placed {
            Ok(Placement::Shard(s)) if s == pinned => Verdict::Here,
            Ok(Placement::Shard(s)) => Verdict::Elsewhere(s),
            Ok(Placement::Unlisted) if pinned != map.default_shard => {
                Verdict::Elsewhere(map.default_shard)
            }
            Ok(Placement::Broadcast) => Verdict::Broadcast,
            Ok(_) => Verdict::Here,
            Err(ShardError::MissingKey { .. }) => Verdict::Keyless,
            Err(e) => Verdict::Error(e),
        }
    }

    /// The request (whole, nothing of it sent yet) names a shard other than the pinned one,
    /// or a sharded table without its key: inside a transaction block it widens to a
    /// transaction across shards (see `fanout::spanning`).
    pub(super) fn leaves_pin(&self, request: &mut Request) -> bool {
        (0..request.len()).any(|i| {
            request.tag(i).is_some_and(|t| matches!(t, b'Q' | b'B'))
                && matches!(
                    self.verdict(request, i),
                    Verdict::Elsewhere(_) | Verdict::Keyless | Verdict::Error(_)
                )
        })
    }

    /// Checks the request's current Query or Bind, arriving while a server of a sharded
    /// database is attached.
    pub(super) fn check_pinned(&self, request: &mut Request) -> PinCheck {
        let pinned = self.route.attached_shard;
        let in_flight = !self.tracker.unsynced && !self.tracker.is_idle();
        let i = request.position();
        let other = match self.verdict(request, i) {
            Verdict::Here => return PinCheck::Run,
            Verdict::Elsewhere(s) => s,
            Verdict::Broadcast if in_flight => return PinCheck::Defer,
            Verdict::Broadcast => {
                return PinCheck::Reject("0A000", format!("usher: this transaction runs on shard {pinned}; DDL runs on every shard and must be sent outside a transaction block (or with /* usher: shard=N */ to run it on one shard)"));
            }
            // Without a key: outside a transaction block (the statements of one batch) and
            // in session mode it runs where the session is; inside a transaction block in
            // transaction mode it would see one shard's rows of a table split over all of
            // them, so it is refused when the transaction could not run across shards.
            Verdict::Keyless
                if self.mode != crate::config::PoolMode::Transaction || self.txn_status != b'T' =>
            {
                return PinCheck::Run
            }
            Verdict::Keyless if in_flight => return PinCheck::Defer,
            Verdict::Keyless => {
                return PinCheck::Reject("0A000", format!("usher: this transaction runs on shard {pinned}, and this statement names a sharded table without its key, so on shard {pinned} it would see only that shard's rows; it runs across shards inside a transaction that started on a primary at READ COMMITTED when the statements before it were answered (send it in its own request)"));
            }
            Verdict::Error(_) if in_flight => return PinCheck::Defer,
            Verdict::Error(e) => return PinCheck::Reject(e.sqlstate(), e.to_string()),
        };
        if self.only_prepared() {
            return PinCheck::Move;
        }
        if in_flight {
            return PinCheck::Defer;
        }
        PinCheck::Reject(
            "0A000",
            format!("usher: this transaction is pinned to shard {pinned}, but this statement belongs to shard {other}; a transaction runs across shards only when it started on a primary at READ COMMITTED in transaction mode and the statement comes in a request of its own (COMMIT or ROLLBACK, then start a new one)"),
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
