//! Choosing the server for a transaction that is starting: classify what the client sent
//! (the first message and whatever it pipelined up to Sync), ask the router for a target, and
//! check a connection out of that server's pool, banning servers that fail and retrying reads
//! elsewhere while nothing has reached the client yet.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::request::Request;
use super::Session;
use crate::app::Snapshot;
use crate::config::{Config, PoolMode};
use crate::error::{Failure, Retry, Side};
use crate::pool::{Lease, Pool, PoolError};
use crate::router::plan::{Facts, Plan, Run};
use crate::router::shard::ShardHint;
use crate::router::{self, Role, RoleHint, RouteError, Target};
use crate::server::ServerError;
use crate::stats::RouteOutcome;

/// Pools by shard and server index, and the config they were made for.
type PoolSlots = Option<(Arc<Config>, Vec<Vec<Option<Arc<Pool>>>>)>;

/// Spreads reads of global tables over the shards.
static ANY_SHARD: AtomicUsize = AtomicUsize::new(0);

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

/// Why no server could be attached for a transaction; nothing of the client's reached a
/// server, and the client is answered with the error's SQLSTATE and message.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttachError {
    /// No usable server for the role, or no such shard.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// Checking a connection out failed (wait timeout, connect, a pool a reload removed).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Making the connection ready for the client failed (its settings were refused, or the
    /// connection died and retries ran out).
    #[error(transparent)]
    Prepare(ServerError),
    /// A reload removed the client's user.
    #[error("user {0:?} was removed from the configuration")]
    UserRemoved(String),
}

impl Failure for AttachError {
    fn side(&self) -> Side {
        match self {
            AttachError::Route(e) => e.side(),
            AttachError::Pool(e) => e.side(),
            AttachError::Prepare(e) => e.side(),
            AttachError::UserRemoved(_) => Side::Config,
        }
    }

    fn sqlstate(&self) -> &str {
        match self {
            AttachError::Route(e) => e.sqlstate(),
            AttachError::Pool(e) => e.sqlstate(),
            AttachError::Prepare(e) => e.sqlstate(),
            AttachError::UserRemoved(_) => "28000",
        }
    }

    fn retry(&self) -> Retry {
        match self {
            AttachError::Route(e) => e.retry(),
            AttachError::Pool(e) => e.retry(),
            AttachError::Prepare(e) => e.retry(),
            AttachError::UserRemoved(_) => Retry::Never,
        }
    }
}

/// What the checkout loop does after a failure, read off the error's [`Retry`].
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Answer the client with the error.
    GiveUp,
    /// Another connection to the same server (the failed one was a reused pooled one).
    SameServer,
    /// Ban the server and take another (reads only).
    OtherServer,
}

/// Connection attempts on the same server before it counts as failed.
const SAME_SERVER_ATTEMPTS: u32 = 3;

/// The retry policy: `retry` of the error, whether the failed connection was `reused`, whether
/// the transaction needs the primary (which has no stand-in), and how many attempts were made
/// on this server.
fn next_step(retry: Retry, reused: bool, primary: bool, attempts: u32) -> Next {
    match retry {
        Retry::Never => Next::GiveUp,
        Retry::OnReused if reused && attempts < SAME_SERVER_ATTEMPTS => Next::SameServer,
        Retry::Safe | Retry::OnReused if primary => Next::GiveUp,
        Retry::Safe | Retry::OnReused => Next::OtherServer,
    }
}

impl Session {
    /// Whether any of `functions` is a user-defined VOLATILE function (the catalog is asked
    /// once per name; see [`crate::app::App::calls_volatile`]).
    pub(super) fn volatility(
        &self,
        functions: Vec<String>,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let (app, config, name) = (
            self.app.clone(),
            self.snap().config.clone(),
            self.db_name.clone(),
        );
        async move { app.calls_volatile(&config, &name, &functions).await }
    }

    /// Learns from the catalog where `check.table`'s key column stands (for an INSERT
    /// without a column list). A table without that column is recorded as such, so its
    /// INSERTs are refused naming it rather than looked up every time; a lookup that failed
    /// is the error, and nothing is recorded.
    pub(super) fn learn_key_position(
        &self,
        check: router::plan::CheckColumns,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let positions = self.db.sharding.as_ref().map(|m| m.key_positions.clone());
        let (app, config, name) = (
            self.app.clone(),
            self.snap().config.clone(),
            self.db_name.clone(),
        );
        async move {
            let Some(positions) = positions else {
                return Ok(());
            };
            let position = app
                .key_position(&config, &name, &check.table, &check.column)
                .await?;
            positions.set(&check.table, position);
            Ok(())
        }
    }

    /// The plan for the transaction starting at the request's position (see
    /// [`router::plan`]), given what is known of function volatility.
    pub(super) fn plan_now(&self, request: &mut Request, volatile: Option<bool>) -> Plan {
        let db = &*self.db;
        let transaction_mode = self.mode == PoolMode::Transaction;
        // Only a sharded or split database reads statements to plan.
        let reads = db.sharding.is_some() || (db.read_write_split && transaction_mode);
        let lookup = self.lookup();
        let batch = request.batch(reads.then_some(&lookup));
        let facts = Facts {
            db,
            transaction_mode,
            held: self.txn.held().map(|h| &h.statement),
            aborted: self.txn.aborted(),
            role_override: self.route.role_override,
            shard_override: self.route.shard_override.as_ref(),
            volatile,
            rotation: if db.sharding.is_some() {
                ANY_SHARD.fetch_add(1, Ordering::Relaxed)
            } else {
                0
            },
        };
        router::plan::plan(&batch, &facts)
    }

    /// Read-your-writes inside a transaction on the primary: notes whether the request's
    /// current message writes. Calls of functions not already known to be non-volatile count
    /// as writes here (no catalog lookup in the middle of a transaction); that only costs an
    /// extra LSN read at commit.
    pub(super) fn note_write(&mut self, request: &mut Request) {
        if !self.route.track_writes || self.route.txn_writes {
            return;
        }
        let i = request.position();
        let Some(class) = request
            .statement(i, &self.lookup())
            .and_then(|s| s.class.clone())
        else {
            return;
        };
        let db = &*self.db;
        let name = &self.db_name;
        self.route.txn_writes =
            router::plan::writes(&class, db, |f| self.app.volatile_cached(name, f));
    }

    /// Checks out a server of the planned shard and role.
    pub(super) async fn route_and_checkout(
        &mut self,
        run: Run,
        snap: &Snapshot,
    ) -> Result<(Lease, Target), AttachError> {
        let config = &snap.config;
        let name = self.db_name.clone();
        let shard_index = run.shard;
        let db = self.db.clone();
        let split = run.split;
        let wants_primary = run.primary;
        let shard = snap
            .topology
            .databases
            .get(&*name)
            .and_then(|s| s.get(shard_index))
            .ok_or_else(|| RouteError::NoSuchShard {
                database: name.to_string(),
                shard: shard_index,
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
                router::pick_reader(&name, &db, shard_index, shard, min_lsn, &exclude, |i| {
                    pools
                        .get(i)
                        .and_then(|p| p.as_ref())
                        .map(|p| {
                            let c = p.counts();
                            c.active + c.waiting
                        })
                        .unwrap_or(0)
                })
            }?;
            let Some(server) = shard.servers.get(target.server) else {
                return Err(RouteError::NoSuchShard {
                    database: name.to_string(),
                    shard: shard_index,
                }
                .into());
            };
            let checked_out = self
                .pool_at(config, shard_index, target.server, &server.addr)?
                .checkout()
                .await;
            if let Some(waited) = checked_out.as_ref().ok().map(Lease::waited) {
                if !waited.is_zero() {
                    self.stats.wait.inc_by(waited.as_secs_f64());
                }
            }
            let (error, reused) = match checked_out {
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
                    Err(e) => {
                        let reused = lease.conn().reused;
                        if e.side() == Side::Client {
                            // The client's own settings were refused: the connection is fine.
                            lease.release();
                        }
                        (AttachError::Prepare(e), reused)
                    }
                },
                Err(e) => (AttachError::Pool(e), false),
            };
            if matches!(error, AttachError::Pool(PoolError::Removed { .. })) {
                // Routed again by the caller with the new config.
                return Err(error);
            }
            attempts += 1;
            let primary = wants_primary || target.role == Role::Primary;
            match next_step(error.retry(), reused, primary, attempts) {
                Next::GiveUp => {
                    if error.retry() == Retry::Safe {
                        // It could not be reached at all: others should not try it either.
                        server.ban(config.general.ban_time.0, &error.to_string());
                    }
                    return Err(error);
                }
                Next::SameServer => {
                    tracing::warn!(server = %server.addr, error = %error, "pooled server connection failed before use; trying another connection");
                }
                Next::OtherServer => {
                    server.ban(config.general.ban_time.0, &error.to_string());
                    exclude.push(target.server);
                    attempts = 0;
                    if exclude.len() >= shard.servers.len() {
                        return Err(error);
                    }
                    tracing::warn!(server = %server.addr, error = %error, "read retried on another server");
                }
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

    /// The pool of server `index` of `shard`, cached per session for the current config (the
    /// user is looked up only to make a pool: a cached one was made for this config's user).
    pub(super) fn pool_at(
        &mut self,
        config: &Arc<Config>,
        shard: usize,
        index: usize,
        addr: &crate::config::ServerAddr,
    ) -> Result<Arc<Pool>, AttachError> {
        let cached = match &mut self.route.pools {
            Some((c, pools)) if Arc::ptr_eq(c, config) => pools,
            other => &mut other.insert((config.clone(), Vec::new())).1,
        };
        if cached.len() <= shard {
            cached.resize(shard + 1, Vec::new());
        }
        let slot = cached.get_mut(shard).and_then(|slots| {
            if slots.len() <= index {
                slots.resize(index + 1, None);
            }
            slots.get_mut(index)
        });
        match slot {
            Some(Some(p)) if *p.key.server == *addr => Ok(p.clone()),
            slot => {
                let user = config
                    .user(&self.login.user)
                    .ok_or_else(|| AttachError::UserRemoved(self.login.user.clone()))?;
                let pool = self.app.pool(config, &self.login.database, user, addr);
                if let Some(slot) = slot {
                    *slot = Some(pool.clone());
                }
                Ok(pool)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_policy_reads_the_error() {
        // Never: whatever the connection, the client gets the error.
        assert_eq!(next_step(Retry::Never, true, false, 1), Next::GiveUp);
        // Could not connect: a read goes elsewhere, the primary has no stand-in.
        assert_eq!(next_step(Retry::Safe, false, false, 1), Next::OtherServer);
        assert_eq!(next_step(Retry::Safe, false, true, 1), Next::GiveUp);
        // A pooled connection found dead: another connection to the same server, a few times.
        assert_eq!(next_step(Retry::OnReused, true, true, 1), Next::SameServer);
        assert_eq!(
            next_step(Retry::OnReused, true, true, SAME_SERVER_ATTEMPTS),
            Next::GiveUp
        );
        assert_eq!(
            next_step(Retry::OnReused, true, false, SAME_SERVER_ATTEMPTS),
            Next::OtherServer
        );
        // A fresh connection that dies is the server failing.
        assert_eq!(next_step(Retry::OnReused, false, true, 1), Next::GiveUp);
        assert_eq!(
            next_step(Retry::OnReused, false, false, 1),
            Next::OtherServer
        );
    }
}
