//! What usher knows at run time about each database's servers: their current role (followed
//! for `role = "auto"`), bans after failures, replication lag and replay position.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{Config, RoleSpec, ServerAddr};

/// Lag value meaning "not measured yet" or "unreachable".
pub const LAG_UNKNOWN: u64 = u64::MAX;

const ROLE_PRIMARY: u8 = 1;
const ROLE_REPLICA: u8 = 2;
const ROLE_UNKNOWN: u8 = 0;

/// One server's run-time state.
pub struct ServerRuntime {
    /// Address.
    pub addr: Arc<ServerAddr>,
    /// Configured role.
    pub spec_role: RoleSpec,
    /// True for the shard's `primary` entry.
    pub listed_as_primary: bool,
    /// Load-balancing weight.
    pub weight: u32,
    role: AtomicU8,
    banned_until: Mutex<Option<Instant>>,
    /// Replication lag in milliseconds (0 when caught up), or [`LAG_UNKNOWN`].
    pub lag_ms: AtomicU64,
    /// Last replay (replica) or current (primary) WAL position seen.
    pub lsn: AtomicU64,
}

impl ServerRuntime {
    /// Whether this server is the primary now.
    pub fn is_primary(&self) -> bool {
        self.role.load(Ordering::Relaxed) == ROLE_PRIMARY
    }

    /// Whether this server is a replica now.
    pub fn is_replica(&self) -> bool {
        self.role.load(Ordering::Relaxed) == ROLE_REPLICA
    }

    /// Records the role a probe found (only followed for `role = "auto"`).
    pub fn observe_role(&self, in_recovery: bool) {
        if self.spec_role == RoleSpec::Auto {
            let r = if in_recovery {
                ROLE_REPLICA
            } else {
                ROLE_PRIMARY
            };
            if self.role.swap(r, Ordering::Relaxed) != r {
                tracing::warn!(server = %self.addr, primary = !in_recovery, "server role changed");
            }
        }
    }

    /// Marks the role unknown (an auto server that cannot be reached).
    pub fn lose_role(&self) {
        if self.spec_role == RoleSpec::Auto {
            self.role.store(ROLE_UNKNOWN, Ordering::Relaxed);
        }
    }

    /// True while banned.
    pub fn is_banned(&self) -> bool {
        match *self.banned_until.lock() {
            Some(t) => Instant::now() < t,
            None => false,
        }
    }

    /// Bans the server for `d` after a failure.
    pub fn ban(&self, d: Duration, why: &str) {
        *self.banned_until.lock() = Some(Instant::now() + d);
        tracing::warn!(server = %self.addr, ban_seconds = d.as_secs_f64(), reason = why, "server banned");
    }

    /// Lifts a ban (a probe reached it again).
    pub fn unban(&self) {
        let mut b = self.banned_until.lock();
        if b.take().is_some_and(|t| Instant::now() < t) {
            tracing::info!(server = %self.addr, "server reachable again, ban lifted");
        }
    }
}

/// A shard's servers, the configured primary first.
pub struct ShardRuntime {
    /// Servers in config order.
    pub servers: Vec<ServerRuntime>,
    /// Round-robin cursor.
    pub next: AtomicUsize,
    /// Reads sent to the primary because no replica was usable.
    pub fallback_reads: AtomicU64,
    /// When the last "no usable replica" warning was logged (ms since `epoch`).
    last_fallback_log: AtomicU64,
    epoch: Instant,
}

impl ShardRuntime {
    /// Counts a read sent to the primary for want of a replica; logs it at most every 10 s.
    pub fn note_fallback(&self, database: &str, shard: usize) {
        self.fallback_reads.fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_fallback_log.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000)
            && self
                .last_fallback_log
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(database, shard, "no usable replica (banned, lagging or behind this client's writes): reads go to the primary");
        }
    }

    /// Index of the current primary.
    pub fn primary(&self) -> Option<usize> {
        self.servers.iter().position(|s| s.is_primary())
    }
}

/// Run-time state of every database's shards.
pub struct Topology {
    /// By database name.
    pub databases: std::collections::HashMap<String, Vec<ShardRuntime>>,
}

impl Topology {
    /// Builds the state for `config`: positional roles are fixed, auto roles start unknown
    /// (the configured `primary` entry is assumed primary until the first probe).
    pub fn new(config: &Config) -> Topology {
        let databases = config
            .databases
            .iter()
            .map(|(name, db)| {
                let shards = db
                    .shards
                    .iter()
                    .map(|shard| ShardRuntime {
                        servers: shard
                            .servers()
                            .enumerate()
                            .map(|(i, spec)| {
                                let role = match (spec.role, i) {
                                    (RoleSpec::Primary, _)
                                    | (RoleSpec::Positional, 0)
                                    | (RoleSpec::Auto, 0) => ROLE_PRIMARY,
                                    (RoleSpec::Replica, _) | (RoleSpec::Positional, _) => {
                                        ROLE_REPLICA
                                    }
                                    (RoleSpec::Auto, _) => ROLE_UNKNOWN,
                                };
                                ServerRuntime {
                                    addr: Arc::new(spec.addr.clone()),
                                    spec_role: spec.role,
                                    listed_as_primary: i == 0,
                                    weight: spec.weight,
                                    role: AtomicU8::new(role),
                                    banned_until: Mutex::new(None),
                                    lag_ms: AtomicU64::new(LAG_UNKNOWN),
                                    lsn: AtomicU64::new(0),
                                }
                            })
                            .collect(),
                        next: AtomicUsize::new(0),
                        fallback_reads: AtomicU64::new(0),
                        last_fallback_log: AtomicU64::new(0),
                        epoch: Instant::now(),
                    })
                    .collect();
                (name.clone(), shards)
            })
            .collect();
        Topology { databases }
    }
}

impl Topology {
    /// After a reload: servers that were already known (same database and address) keep what
    /// was measured about them (role of `auto` servers, bans, lag, replay position).
    pub fn carry_over(&mut self, old: &Topology) {
        for (db, shards) in &self.databases {
            let Some(old_shards) = old.databases.get(db) else {
                continue;
            };
            for server in shards.iter().flat_map(|s| s.servers.iter()) {
                let Some(prev) = old_shards
                    .iter()
                    .flat_map(|s| s.servers.iter())
                    .find(|o| o.addr == server.addr)
                else {
                    continue;
                };
                if server.spec_role == RoleSpec::Auto && prev.spec_role == RoleSpec::Auto {
                    server
                        .role
                        .store(prev.role.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                *server.banned_until.lock() = *prev.banned_until.lock();
                server
                    .lag_ms
                    .store(prev.lag_ms.load(Ordering::Relaxed), Ordering::Relaxed);
                server
                    .lsn
                    .store(prev.lsn.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }
}

/// Parses a WAL position `"16/B374D848"`.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("x"), None);
    }
}
