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
use crate::pool::{Lease, Pool, PoolError};
use crate::router::plan::{Facts, Plan, Run};
use crate::router::shard::ShardHint;
use crate::router::{self, Role, RoleHint, Target};
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

impl Session {
    /// The plan for the transaction starting at the request's position (see
    /// [`router::plan`]), with the catalog asked when it needs function volatility.
    pub(super) async fn plan(&mut self, request: &mut Request) -> Plan {
        let mut volatile = None;
        loop {
            let plan = self.plan_now(request, volatile);
            match plan {
                Plan::CheckFunctions(functions) if volatile.is_none() => {
                    let config = &self.snap().config;
                    volatile = Some(
                        self.app
                            .calls_volatile(config, &self.db_name, &functions)
                            .await,
                    );
                }
                plan => return plan,
            }
        }
    }

    fn plan_now(&self, request: &mut Request, volatile: Option<bool>) -> Plan {
        let Some(db) = self.snap().config.databases.get(&*self.db_name) else {
            let (_, message) = self.database_removed();
            return Plan::Refuse(router::plan::Refusal {
                sqlstate: "3D000",
                message,
                rejected: true,
            });
        };
        let transaction_mode = self.mode == PoolMode::Transaction;
        // Only a sharded or split database reads statements to plan.
        let reads = db.sharding.is_some() || (db.read_write_split && transaction_mode);
        let lookup = self.lookup();
        let batch = request.batch(reads.then_some(&lookup));
        let facts = Facts {
            db,
            transaction_mode,
            held: self.held_begin.as_ref().map(|h| &h.statement),
            aborted: self.held_begin.is_some() && self.txn_status == b'E',
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
        let Some(db) = self.snap().config.databases.get(&*self.db_name) else {
            return;
        };
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
        let split = run.split;
        let wants_primary = run.primary;
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
