//! The router: decides, per transaction, which shard and which server serves a client's next
//! transaction. Statements are classified on the real Postgres grammar (cached by text); reads
//! go to healthy, caught-up replicas when `read_write_split` is on, everything else to the
//! shard's current primary. Sharding plugs in at the shard choice.

pub mod cache;
pub mod classify;
pub mod clock;
pub mod fanout;
pub mod fanout_aggregate;
pub mod fanout_copy;
pub mod fanout_distinct;
pub mod fanout_finish;
pub mod fanout_group;
pub mod fanout_group_finish;
pub mod fanout_insert;
pub mod fanout_regroup;
pub mod fanout_sort;
pub mod fanout_write;
pub(crate) mod lex;
pub mod monitor;
pub mod normalize;
pub mod plan;
pub mod probes;
pub mod shard;
pub mod topology;
pub mod walk;

use std::sync::atomic::Ordering;

use rand::Rng;

use crate::config::{Database, LoadBalancing, PrimaryReads, ReadWriteStrategy};
pub use classify::{Classification, RoleHint};
use topology::{ShardRuntime, LAG_UNKNOWN};

/// Which server of a database serves a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Shard index in the database's shard list.
    pub shard: usize,
    /// Server index within the shard (0 = the configured primary entry).
    pub server: usize,
    /// The role it serves in.
    pub role: Role,
}

/// Server role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The read-write server.
    Primary,
    /// A read-only streaming replica.
    Replica,
}

/// Why a transaction could not be routed; reported to the client, which may retry later.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The database has no such shard.
    #[error("database {database:?} has no shard {shard}")]
    NoSuchShard {
        /// The database.
        database: String,
        /// The shard asked for.
        shard: usize,
    },
    /// No primary is known for the shard (e.g. during a failover with `role = "auto"`).
    #[error("no primary is available for shard {shard} of database {database:?}")]
    NoPrimary {
        /// The database.
        database: String,
        /// The shard.
        shard: usize,
    },
    /// A read found no usable replica and `primary_reads = "never"`.
    #[error("no replica of shard {shard} of database {database:?} is usable (banned or lagging) and primary_reads = \"never\"")]
    NoReplica {
        /// The database.
        database: String,
        /// The shard.
        shard: usize,
    },
}

impl RouteError {
    /// SQLSTATE to report.
    pub fn sqlstate(&self) -> &str {
        "08006"
    }
}

impl crate::error::Failure for RouteError {
    fn side(&self) -> crate::error::Side {
        match self {
            RouteError::NoSuchShard { .. } => crate::error::Side::Config,
            // No usable server right now (down, banned, lagging).
            _ => crate::error::Side::Server,
        }
    }

    fn sqlstate(&self) -> &str {
        RouteError::sqlstate(self)
    }

    /// The client may try again later; usher does not wait for a server to come back.
    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Never
    }
}

/// Whether a transaction needs the primary, from its classification and the session's state.
pub fn wants_primary(
    db: &Database,
    class: &Classification,
    session: RoleHint,
    volatile_write: bool,
) -> bool {
    if !db.read_write_split {
        return true;
    }
    let hint = class.hint.unwrap_or(session);
    let configured_write = class
        .functions
        .iter()
        .any(|f| classify::is_configured_write(f, &db.write_functions));
    if hint == RoleHint::Primary || class.write || volatile_write || configured_write {
        return true;
    }
    match class.begins {
        Some(read_only) => {
            !read_only
                && db.read_write_strategy == ReadWriteStrategy::Conservative
                && hint != RoleHint::Replica
        }
        None => false,
    }
}

/// The current primary of `shard`.
pub fn primary_of(
    name: &str,
    shard_index: usize,
    shard: &ShardRuntime,
) -> Result<Target, RouteError> {
    shard
        .primary()
        .map(|server| Target {
            shard: shard_index,
            server,
            role: Role::Primary,
        })
        .ok_or_else(|| RouteError::NoPrimary {
            database: name.to_string(),
            shard: shard_index,
        })
}

/// Picks a server for a read. `min_lsn` (read-your-writes) excludes replicas not known to have
/// replayed it; `exclude` lists servers that just failed; `in_use(i)` counts connections in
/// use on server `i` (for least-connections).
pub fn pick_reader(
    name: &str,
    db: &Database,
    shard_index: usize,
    shard: &ShardRuntime,
    min_lsn: u64,
    exclude: &[usize],
    in_use: impl Fn(usize) -> usize,
) -> Result<Target, RouteError> {
    let max_lag = db.max_replica_lag.enabled().map(|d| d.as_millis() as u64);
    let usable = |i: usize| {
        let s = &shard.servers[i];
        let lag = s.lag_ms.load(Ordering::Relaxed);
        s.weight > 0
            && !exclude.contains(&i)
            && !s.is_banned()
            && s.is_replica()
            && lag != LAG_UNKNOWN
            && max_lag.is_none_or(|m| lag <= m)
            && (min_lsn == 0 || s.lsn.load(Ordering::Relaxed) >= min_lsn)
    };
    let mut candidates: Vec<usize> = (0..shard.servers.len()).filter(|i| usable(*i)).collect();
    let primary = shard.primary();
    if db.primary_reads == PrimaryReads::Always {
        if let Some(p) = primary.filter(|p| !exclude.contains(p) && !shard.servers[*p].is_banned())
        {
            candidates.push(p);
        }
    }
    if candidates.is_empty() {
        return match (db.primary_reads, primary) {
            (PrimaryReads::Never, _) => Err(RouteError::NoReplica {
                database: name.to_string(),
                shard: shard_index,
            }),
            (_, Some(p)) => {
                shard.note_fallback(name, shard_index);
                Ok(Target {
                    shard: shard_index,
                    server: p,
                    role: Role::Primary,
                })
            }
            (_, None) => Err(RouteError::NoPrimary {
                database: name.to_string(),
                shard: shard_index,
            }),
        };
    }
    let weight = |i: usize| shard.servers[i].weight.max(1) as usize;
    let chosen = match db.load_balancing {
        LoadBalancing::LeastConnections => *candidates
            .iter()
            .min_by_key(|i| {
                (
                    in_use(**i) * 1000 / weight(**i),
                    shard.next.fetch_add(1, Ordering::Relaxed) % 7,
                )
            })
            .expect("non-empty"),
        LoadBalancing::RoundRobin | LoadBalancing::Random => {
            let total: usize = candidates.iter().map(|i| weight(*i)).sum();
            let mut ticket = match db.load_balancing {
                LoadBalancing::RoundRobin => shard.next.fetch_add(1, Ordering::Relaxed) % total,
                _ => rand::rng().random_range(0..total),
            };
            let mut pick = candidates[0];
            for i in &candidates {
                if ticket < weight(*i) {
                    pick = *i;
                    break;
                }
                ticket -= weight(*i);
            }
            pick
        }
    };
    let role = if Some(chosen) == primary {
        Role::Primary
    } else {
        Role::Replica
    };
    Ok(Target {
        shard: shard_index,
        server: chosen,
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;
    use topology::Topology;

    fn setup(extra: &str) -> (crate::config::Config, Topology) {
        let text = format!(
            "[[users]]\nname = \"a\"\npassword = \"p\"\n[databases.d]\nread_write_split = true\n{extra}\nshards = [ {{ primary = \"h:1/d\", replicas = [\"h:2/d\", {{ addr = \"h:3/d\", weight = 3 }}] }} ]\n"
        );
        let c = load_str(&text, Path::new("t.toml")).unwrap();
        let t = Topology::new(&c);
        (c, t)
    }

    #[test]
    fn routing_rules() {
        let (c, _) = setup("");
        let db = &c.databases["d"];
        let class = |sql: &str| classify::classify(sql);
        assert!(!wants_primary(
            db,
            &class("SELECT 1"),
            RoleHint::Auto,
            false
        ));
        assert!(wants_primary(
            db,
            &class("INSERT INTO t VALUES (1)"),
            RoleHint::Auto,
            false
        ));
        assert!(wants_primary(db, &class("BEGIN"), RoleHint::Auto, false));
        assert!(!wants_primary(
            db,
            &class("BEGIN READ ONLY"),
            RoleHint::Auto,
            false
        ));
        assert!(wants_primary(
            db,
            &class("SELECT 1"),
            RoleHint::Primary,
            false
        ));
        assert!(!wants_primary(
            db,
            &class("/* usher: role=replica */ SELECT 1"),
            RoleHint::Primary,
            false
        ));
        assert!(wants_primary(
            db,
            &class("/* usher: role=replica */ DELETE FROM t"),
            RoleHint::Auto,
            false
        ));
        assert!(wants_primary(
            db,
            &class("SELECT f()"),
            RoleHint::Auto,
            true
        ));
    }

    #[test]
    fn readers_exclude_lagging_banned_and_behind() {
        let (c, t) = setup("max_replica_lag = \"1s\"");
        let db = &c.databases["d"];
        let shard = &t.databases["d"][0];
        // Nothing measured yet: fall back to the primary.
        assert_eq!(
            pick_reader("d", db, 0, shard, 0, &[], |_| 0).unwrap().role,
            Role::Primary
        );
        for s in &shard.servers[1..] {
            s.lag_ms.store(10, Ordering::Relaxed);
            s.lsn.store(100, Ordering::Relaxed);
        }
        let got = pick_reader("d", db, 0, shard, 0, &[], |i| if i == 1 { 5 } else { 0 }).unwrap();
        assert_eq!((got.server, got.role), (2, Role::Replica));
        shard.servers[2].lag_ms.store(5000, Ordering::Relaxed);
        assert_eq!(
            pick_reader("d", db, 0, shard, 0, &[], |_| 0)
                .unwrap()
                .server,
            1
        );
        shard.servers[1].ban(std::time::Duration::from_secs(60), "test");
        assert_eq!(
            pick_reader("d", db, 0, shard, 0, &[], |_| 0).unwrap().role,
            Role::Primary
        );
        shard.servers[1].unban();
        assert_eq!(
            pick_reader("d", db, 0, shard, 101, &[], |_| 0)
                .unwrap()
                .role,
            Role::Primary
        );
        assert_eq!(
            pick_reader("d", db, 0, shard, 0, &[1], |_| 0).unwrap().role,
            Role::Primary
        );
    }

    #[test]
    fn never_and_always() {
        let (c, t) = setup("primary_reads = \"never\"");
        assert!(pick_reader(
            "d",
            &c.databases["d"],
            0,
            &t.databases["d"][0],
            0,
            &[],
            |_| 0
        )
        .is_err());
        let (c, t) = setup("primary_reads = \"always\"\nload_balancing = \"round_robin\"");
        let picks: Vec<usize> = (0..5)
            .map(|_| {
                pick_reader(
                    "d",
                    &c.databases["d"],
                    0,
                    &t.databases["d"][0],
                    0,
                    &[],
                    |_| 0,
                )
                .unwrap()
                .server
            })
            .collect();
        assert!(
            picks.iter().all(|p| *p == 0),
            "only the primary is usable before lag is measured: {picks:?}"
        );
    }
}
