//! Choosing the server for a transaction that is starting: classify what the client sent
//! (the first message and whatever it pipelined up to Sync), ask the router for a target, and
//! check a connection out of that server's pool, banning servers that fail and retrying reads
//! elsewhere while nothing has reached the client yet.

use std::sync::Arc;

use bytes::Bytes;

use super::Session;
use crate::app::Snapshot;
use crate::config::{Config, PoolMode};
use crate::pool::{Lease, Pool, PoolError};
use crate::protocol::{client, server, Frame};
use crate::router::shard::ShardHint;
use crate::router::{self, Classification, Role, RoleHint, Target};
use crate::server::ServerError;
use crate::stats::RouteOutcome;

/// Pools by shard and server index, and the config they were made for.
type PoolSlots = Option<(Arc<Config>, Vec<Vec<Option<Arc<Pool>>>>)>;

/// A batch larger than this is routed on what has arrived, without waiting for its Sync.
const MAX_LOOKAHEAD: usize = 16 << 20;

/// Routing state a session keeps between transactions.
#[derive(Default)]
pub struct RouteState {
    /// `SET usher.role` for the session.
    pub role_override: Option<RoleHint>,
    /// `SET usher.shard` / `SET usher.sharding_key` for the session.
    pub shard_override: Option<ShardHint>,
    /// Shard of the attached server.
    pub attached_shard: usize,
    /// Read-your-writes: the WAL position of the client's last committed write, per shard
    /// (each shard's primary has its own WAL).
    pub min_lsn: Vec<u64>,
    /// The attached transaction wrote on the primary (its commit LSN is read at release).
    pub txn_writes: bool,
    /// Statements of the attached transaction are checked for writes (read-your-writes on a
    /// primary): the query-cache lookup per statement is the only cost.
    pub track_writes: bool,
    /// Role of the attached server.
    pub attached_role: Option<Role>,
    /// Index (within its shard) of the attached server.
    pub attached_server: usize,
    /// Servers a read being retried must avoid.
    pub exclude: Vec<usize>,
    /// The attached transaction is a read that may be replayed elsewhere.
    pub retryable: bool,
    /// Pools by shard and server index, valid for one config.
    pools: PoolSlots,
}

/// Why no server could be attached for a transaction.
#[derive(Debug)]
pub(super) enum AttachError {
    /// The client is answered with this SQLSTATE and message.
    Refused(String, String),
    /// A reload dropped the pool while the client waited for it: nothing was sent, so the
    /// transaction is routed again with the new config.
    PoolRemoved,
}

impl AttachError {
    fn refused(code: &str, message: String) -> AttachError {
        AttachError::Refused(code.to_string(), message)
    }
}

impl From<(String, String)> for AttachError {
    fn from((code, message): (String, String)) -> AttachError {
        AttachError::Refused(code, message)
    }
}

/// Where a query text sits in a message, if it carries one routing should look at.
fn query_text(session: &Session, frame: &Frame) -> Option<Bytes> {
    match frame.tag {
        b'Q' | b'P' => client::sql_of(frame),
        b'B' => session
            .stmts
            .query_of(client::Bind::new(frame).ok()?.statement()),
        b'D' => match client::Targeted::new(frame).ok()? {
            d if d.target == client::Target::Statement => session.stmts.query_of(d.name()),
            _ => None,
        },
        _ => None,
    }
}

impl Session {
    /// Read-your-writes inside a transaction on the primary: notes whether `frame` writes.
    /// Calls of functions not already known to be non-volatile count as writes here (no catalog
    /// lookup in the middle of a transaction); that only costs an extra LSN read at commit.
    pub(super) fn note_write(&mut self, frame: &Frame) {
        if !self.route.track_writes || self.route.txn_writes {
            return;
        }
        if let Some(sql) = query_text(self, frame) {
            let config = self.app.config();
            let Some(db) = config.databases.get(&self.login.database) else {
                return;
            };
            let c = self.classify(&sql);
            let name = &self.login.database;
            self.route.txn_writes = c.write
                || c.functions.iter().any(|f| {
                    crate::router::classify::is_configured_write(f, &db.write_functions)
                        || self.app.volatile_cached(name, f) != Some(false)
                });
        }
    }

    /// The transaction starting with `first`: it and the messages the client already pipelined
    /// behind it, up to its Sync; and whether that Sync (or a Flush) has arrived.
    pub(super) fn batch(&self, first: &Frame) -> (Vec<Frame>, bool) {
        let mut frames = vec![first.clone()];
        if first.tag == b'Q' || first.tag == b'S' {
            return (frames, true);
        }
        let mut rest = &self.io.rbuf[..];
        let mut seen = 0;
        loop {
            match server::frame_at(rest, self.io.max_message) {
                Ok(Some(f)) => {
                    if matches!(f.tag, b'S' | b'Q' | b'H') {
                        return (frames, true);
                    }
                    frames.push(Frame::new(f.tag, f.body));
                    seen += f.total;
                    rest = rest.get(f.total..).unwrap_or_default();
                }
                Ok(None) => return (frames, seen >= MAX_LOOKAHEAD),
                Err(_) => return (frames, true),
            }
        }
    }

    /// Classification of the transaction starting with `first`, merged over the messages the
    /// client already pipelined behind it (up to its Sync).
    fn classify_batch(&self, first: &Frame) -> Classification {
        let mut merged = Classification::default();
        let mut merge = |c: &Classification| {
            merged.write |= c.write;
            merged.begins = merged.begins.or(c.begins);
            merged.hint = merged.hint.or(c.hint);
            merged.set_role = c.set_role.or(merged.set_role);
            merged.parse_error |= c.parse_error;
            merged.functions.extend(c.functions.iter().cloned());
        };
        let (mut frames, _) = self.batch(first);
        if let Some(begin) = &self.held_begin {
            // The BEGIN usher held back opens this transaction.
            frames.insert(0, begin.clone());
        }
        for frame in &frames {
            if let Some(sql) = query_text(self, frame) {
                merge(&self.classify(&sql));
            }
        }
        merged
    }

    /// Routes and checks out a server of `shard` for the transaction starting with `first`.
    pub(super) async fn route_and_checkout(
        &mut self,
        first: &Frame,
        snap: &Snapshot,
        shard_index: usize,
    ) -> Result<(Lease, Target), AttachError> {
        let config = &snap.config;
        let name = self.db_name.clone();
        let db = config
            .databases
            .get(&*name)
            .ok_or_else(|| self.database_removed())?;
        let user = config.user(&self.login.user).ok_or_else(|| {
            (
                "28000".to_string(),
                format!(
                    "user {:?} was removed from the configuration",
                    self.login.user
                ),
            )
        })?;
        let split = db.read_write_split && self.mode == PoolMode::Transaction;
        let mut wants_primary = true;
        self.route.txn_writes = false;
        self.route.track_writes = false;
        if split {
            let class = self.classify_batch(first);
            if let Some(role) = class.set_role {
                self.route.role_override = Some(role);
            }
            let volatile = db.volatile_functions_are_writes
                && !class.functions.is_empty()
                && self
                    .app
                    .calls_volatile(config, &name, &class.functions)
                    .await;
            wants_primary = router::wants_primary(
                db,
                &class,
                self.route.role_override.unwrap_or(RoleHint::Auto),
                volatile,
            );
            self.route.txn_writes = db.read_your_writes && (class.write || volatile);
            self.route.track_writes = db.read_your_writes && wants_primary;
        }
        let shard = snap
            .topology
            .databases
            .get(&*name)
            .and_then(|s| s.get(shard_index))
            .ok_or_else(|| {
                (
                    "08006".to_string(),
                    format!("database {name:?} has no shard {shard_index}"),
                )
            })?;
        let mut exclude = std::mem::take(&mut self.route.exclude);
        let mut attempts = 0;
        loop {
            let target = if wants_primary {
                router::primary_of(&name, shard_index, shard)
            } else {
                let pools = self.pools_for(config, shard_index);
                let min_lsn = if db.read_your_writes {
                    self.route.min_lsn.get(shard_index).copied().unwrap_or(0)
                } else {
                    0
                };
                router::pick_reader(&name, db, shard_index, shard, min_lsn, &exclude, |i| {
                    pools
                        .get(i)
                        .and_then(|p| p.as_ref())
                        .map(|p| {
                            let c = p.counts();
                            c.active + c.waiting
                        })
                        .unwrap_or(0)
                })
            }
            .map_err(|e| (e.sqlstate().to_string(), e.to_string()))?;
            let server = &shard.servers[target.server];
            let checked_out = self
                .pool_at(config, user, shard_index, target.server, &server.addr)
                .checkout()
                .await;
            if let Some(waited) = checked_out.as_ref().ok().map(Lease::waited) {
                if !waited.is_zero() {
                    self.stats.wait.inc_by(waited.as_secs_f64());
                }
            }
            match checked_out {
                Ok(mut lease) => match self.prepare_server(&mut lease).await {
                    Ok(()) => {
                        let outcome = match (target.role, wants_primary) {
                            (Role::Replica, _) => RouteOutcome::Replica,
                            (Role::Primary, false) if split => RouteOutcome::Fallback,
                            _ => RouteOutcome::Primary,
                        };
                        self.stats.route(outcome);
                        self.route.attached_role = Some(target.role);
                        self.route.attached_server = target.server;
                        self.route.attached_shard = shard_index;
                        self.route.retryable = !wants_primary;
                        return Ok((lease, target));
                    }
                    // The client's own settings were refused (a bad parameter value): its error.
                    Err(e @ ServerError::Query { .. }) => {
                        lease.release();
                        return Err(AttachError::refused(e.sqlstate(), e.to_string()));
                    }
                    // The connection died under us: drop it and try again (another server for
                    // a read; a fresh connection for the primary, a few times).
                    Err(e) => {
                        drop(lease);
                        attempts += 1;
                        if wants_primary || target.role == Role::Primary {
                            if attempts >= 3 {
                                return Err(AttachError::refused(e.sqlstate(), e.to_string()));
                            }
                        } else {
                            server.ban(config.general.ban_time.0, &e.to_string());
                            exclude.push(target.server);
                        }
                        tracing::warn!(server = %server.addr, error = %e, "server connection failed while being prepared; trying again");
                    }
                },
                Err(PoolError::Server(e)) if e.retry_safe() => {
                    server.ban(config.general.ban_time.0, &e.to_string());
                    if wants_primary || exclude.len() >= shard.servers.len() {
                        return Err(AttachError::refused(e.sqlstate(), e.to_string()));
                    }
                    tracing::warn!(server = %server.addr, error = %e, "read retried on another server");
                    exclude.push(target.server);
                }
                Err(PoolError::Removed { .. }) => return Err(AttachError::PoolRemoved),
                Err(e) => return Err(AttachError::refused(e.sqlstate(), e.to_string())),
            }
        }
    }

    fn pools_for(&mut self, config: &Arc<Config>, shard: usize) -> Vec<Option<Arc<Pool>>> {
        match &self.route.pools {
            Some((c, pools)) if Arc::ptr_eq(c, config) => {
                pools.get(shard).cloned().unwrap_or_default()
            }
            _ => {
                self.route.pools = Some((config.clone(), Vec::new()));
                Vec::new()
            }
        }
    }

    /// The pool of server `index` of `shard` (cached per session for the current config).
    pub(super) fn pool_at(
        &mut self,
        config: &Arc<Config>,
        user: &crate::config::User,
        shard: usize,
        index: usize,
        addr: &crate::config::ServerAddr,
    ) -> &Arc<Pool> {
        if !matches!(&self.route.pools, Some((c, _)) if Arc::ptr_eq(c, config)) {
            self.route.pools = Some((config.clone(), Vec::new()));
        }
        let pools = &mut self.route.pools.as_mut().expect("just set").1;
        if pools.len() <= shard {
            pools.resize(shard + 1, Vec::new());
        }
        let pools = &mut pools[shard];
        if pools.len() <= index {
            pools.resize(index + 1, None);
        }
        let slot = &mut pools[index];
        if slot.as_ref().is_none_or(|p| *p.key.server != *addr) {
            *slot = Some(self.app.pool(config, &self.login.database, user, addr));
        }
        slot.as_ref().expect("just filled")
    }
}
