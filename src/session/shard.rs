//! Sharding in the session: which shard a transaction starts on (from the statements the
//! client sent up to its Sync, their literals and bind values, hints and `SET usher.shard`),
//! and what happens when a later statement of a pinned transaction belongs elsewhere: it gets
//! SQLSTATE 0A000 raised *inside* the server's transaction, so the transaction is left exactly
//! as Postgres leaves it after any error (aborted until ROLLBACK).

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};

use super::responses::Expect;
use super::Session;
use crate::config::{Database, Sharding};
use crate::protocol::{client, messages, Frame};
use crate::router::shard::values::{param_types, BindParams, QueryValues};
use crate::router::shard::{self, Placement, ShardError, ShardHint};
use crate::server::quote_literal;

/// Where a transaction goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardChoice {
    /// One shard.
    Shard(usize),
    /// Every shard's primary (DDL).
    Broadcast,
    /// Statements are only being prepared or described (no Bind yet): any shard can answer,
    /// and a transaction whose BEGIN usher holds back is not started by it.
    Prepare(usize),
}

/// Spreads reads of global tables over the shards.
static ANY_SHARD: AtomicUsize = AtomicUsize::new(0);

/// What to do with a statement arriving inside a pinned transaction.
pub(super) enum PinCheck {
    /// Run it on the attached server.
    Run,
    /// Wait until the server answered what is in flight, then decide again (the transaction
    /// may end there, and the statement start a new one elsewhere).
    Defer,
    /// Raise this error inside the transaction.
    Reject(&'static str, String),
}

impl Session {
    /// The shard for a transaction starting with `frames` (the first message and whatever the
    /// client pipelined behind it up to its Sync).
    pub(super) fn choose_shard(
        &self,
        frames: &[Frame],
        db: &Database,
    ) -> Result<ShardChoice, ShardError> {
        let Some(map) = &db.sharding else {
            return Ok(ShardChoice::Shard(0));
        };
        let shards = db.shards.len();
        if frames
            .iter()
            .all(|f| matches!(f.tag, b'P' | b'D' | b'C' | b'H'))
        {
            return Ok(ShardChoice::Prepare(map.default_shard));
        }
        let (placement, hint) = self.placement(frames, map, shards);
        if let Some(h) = hint.or_else(|| self.route.shard_override.clone()) {
            return shard::hinted(&h, map, shards).map(ShardChoice::Shard);
        }
        Ok(match placement? {
            Placement::Shard(s) => ShardChoice::Shard(s),
            Placement::Broadcast => ShardChoice::Broadcast,
            Placement::AnyShard => {
                ShardChoice::Shard(ANY_SHARD.fetch_add(1, Ordering::Relaxed) % shards.max(1))
            }
            Placement::Unlisted | Placement::NoTable | Placement::Unbound => {
                ShardChoice::Shard(map.default_shard)
            }
        })
    }

    /// Placement of a run of client messages, and the last statement hint among them (a hint
    /// wins over the placement, even over an error such as a missing key).
    fn placement(
        &self,
        frames: &[Frame],
        map: &Sharding,
        shards: usize,
    ) -> (Result<Placement, ShardError>, Option<ShardHint>) {
        let mut result = Ok(Placement::NoTable);
        let mut hint = None;
        let mut unnamed: Option<(Bytes, Vec<u32>)> = None;
        for frame in frames {
            let (sql, types, bind) = match frame.tag {
                b'Q' => {
                    let Ok(q) = client::Query::new(frame) else {
                        continue;
                    };
                    (q.sql(), Vec::new(), None)
                }
                b'P' => {
                    let Ok(p) = client::Parse::new(frame) else {
                        continue;
                    };
                    let sql = p.query();
                    let types = param_types(&p.param_types());
                    if p.name().is_empty() {
                        unnamed = Some((sql.clone(), types.clone()));
                    }
                    (sql, types, None)
                }
                b'B' => {
                    let Ok(b) = client::Bind::new(frame) else {
                        continue;
                    };
                    let name = b.statement();
                    let stmt = match (&unnamed, name.is_empty()) {
                        (Some((sql, types)), true) => Some((sql.clone(), types.clone())),
                        _ => self
                            .stmts
                            .statement(name)
                            .map(|s| (s.query.clone(), param_types(&s.param_types))),
                    };
                    let Some((sql, types)) = stmt else { continue };
                    (sql, types, BindParams::parse(frame.body()))
                }
                _ => continue,
            };
            let mut spans = Vec::new();
            let class = match bind {
                Some(_) => self.classify(&sql),
                None => self
                    .memo
                    .classify_with_spans(&self.app.query_cache, &sql, &mut spans),
            };
            if class.shard_hint.is_some() {
                hint = class.shard_hint.clone();
            }
            let mut values = match bind {
                Some(b) => QueryValues::bound(&sql, types, Some(b)),
                None => QueryValues::with_spans(&sql, spans),
            };
            if let Ok(so_far) = result {
                result = shard::place(&class.shard, map, shards, &mut values)
                    .and_then(|p| shard::combine(so_far, p));
            }
        }
        (result, hint)
    }

    /// Checks a Query or Bind arriving while a server of a sharded database is attached.
    pub(super) fn check_pinned(&self, frame: &Frame) -> PinCheck {
        let Some(db) = self.snap().config.databases.get(&self.login.database) else {
            return PinCheck::Run;
        };
        let Some(map) = &db.sharding else {
            return PinCheck::Run;
        };
        let pinned = self.route.attached_shard;
        let shards = db.shards.len();
        let in_flight = !self.tracker.unsynced && !self.tracker.is_idle();
        let placed = match self.placement(std::slice::from_ref(frame), map, shards) {
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
        if in_flight {
            return PinCheck::Defer;
        }
        PinCheck::Reject(
            "0A000",
            format!("usher: this transaction is pinned to shard {pinned}, but this statement belongs to shard {other}; a transaction runs on one shard (COMMIT or ROLLBACK, then start a new one)"),
        )
    }

    /// Raises `code`/`message` inside the server's transaction in place of `frame`.
    pub(super) fn inject_error(&mut self, frame: &Frame, code: &str, message: &str) {
        let sql = format!(
            "DO $usher$ BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = {}; END $usher$",
            quote_literal(message)
        );
        let mut out = BytesMut::new();
        messages::query(&mut out, &sql);
        self.server_out.extend_from_slice(&out);
        if frame.tag == b'Q' {
            self.tracker.push(Expect::Query);
        } else {
            self.tracker.push(Expect::InjectedError);
            self.skip_until_sync = true;
            // An explicit transaction is now aborted; an implicit one (a batch outside a
            // transaction block) ends with the error, as the server's own ReadyForQuery says.
            if self.txn_status == b'T' || self.held_begin.is_some() {
                self.txn_status = b'E';
            }
        }
    }
}

/// The error a client gets for a message that arrives after usher refused its transaction's
/// first statement (the transaction is aborted, as Postgres would have it).
pub fn aborted_error() -> Bytes {
    messages::error_response(
        "ERROR",
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
        None,
    )
}
