//! Reading the current state for a scrape: pool rows (by database, user, shard, role and
//! server), gauges refreshed from them and from the topology, the Prometheus text, and the JSON
//! of `/pools`.

use std::sync::atomic::Ordering;

use prometheus::{Encoder, TextEncoder};
use serde::Serialize;

use crate::app::App;
use crate::pool::PoolCounts;
use crate::router::topology::LAG_UNKNOWN;

/// One server pool as operators see it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolRow {
    /// Database clients connect to.
    pub database: String,
    /// User clients log in as.
    pub user: String,
    /// Shard index (None when the server left the config).
    pub shard: Option<usize>,
    /// "primary", "replica" or "unknown".
    pub role: &'static str,
    /// host:port/dbname.
    pub server: String,
    /// Pool mode of the (database, user).
    pub pool_mode: &'static str,
    /// Configured size.
    pub size: usize,
    /// Size plus reserve.
    pub max_size: usize,
    /// Server connections lent to clients.
    pub active: usize,
    /// Idle server connections.
    pub idle: usize,
    /// Server connections being opened.
    pub login: usize,
    /// Server connections being checked before use.
    pub tested: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// Longest current wait, seconds.
    pub max_wait_seconds: f64,
}

/// Every pool, sorted by database, user, shard and server.
pub fn pool_rows(app: &App) -> Vec<PoolRow> {
    let config = app.config();
    let topology = app.topology();
    let mut rows: Vec<PoolRow> = app
        .pools
        .all()
        .into_iter()
        .map(|pool| {
            let key = &pool.key;
            let c: PoolCounts = pool.counts();
            let settings = pool.settings();
            let place = topology.databases.get(&key.database).and_then(|shards| {
                shards.iter().enumerate().find_map(|(i, s)| {
                    s.servers
                        .iter()
                        .find(|srv| *srv.addr == *key.server)
                        .map(|srv| (i, srv))
                })
            });
            let role = match place {
                Some((_, s)) if s.is_primary() => "primary",
                Some((_, s)) if s.is_replica() => "replica",
                _ => "unknown",
            };
            let mode = match (config.databases.get(&key.database), config.user(&key.user)) {
                (Some(db), Some(u)) => match config.pool_mode(db, u) {
                    crate::config::PoolMode::Transaction => "transaction",
                    crate::config::PoolMode::Session => "session",
                },
                _ => "removed",
            };
            PoolRow {
                database: key.database.clone(),
                user: key.user.clone(),
                shard: place.map(|(i, _)| i),
                role,
                server: key.server.to_string(),
                pool_mode: mode,
                size: settings.size,
                max_size: settings.size + settings.reserve,
                active: c.active,
                idle: c.idle,
                login: c.open.saturating_sub(c.active + c.idle),
                tested: c.tested,
                waiting: c.waiting,
                max_wait_seconds: c.max_wait.as_secs_f64(),
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.database, &a.user, a.shard, &a.server).cmp(&(&b.database, &b.user, b.shard, &b.server))
    });
    rows
}

/// Client counts of one (database, user): (active, waiting, idle).
pub fn client_states(app: &App, rows: &[PoolRow]) -> Vec<(String, String, usize, usize, usize)> {
    app.metrics
        .clients()
        .into_iter()
        .map(|((db, user), m)| {
            let mine = rows.iter().filter(|r| r.database == db && r.user == user);
            let (active, waiting) = mine.fold((0, 0), |(a, w), r| (a + r.active, w + r.waiting));
            let total = m.logged_in.load(Ordering::Relaxed).max(0) as usize;
            let active = active.min(total);
            let waiting = waiting.min(total - active);
            (db, user, active, waiting, total - active - waiting)
        })
        .collect()
}

/// Sets every gauge from the current state.
pub fn refresh(app: &App) {
    let m = &app.metrics;
    let rows = pool_rows(app);
    m.clients.reset();
    for (db, user, active, waiting, idle) in client_states(app, &rows) {
        for (state, n) in [("active", active), ("waiting", waiting), ("idle", idle)] {
            m.clients
                .with_label_values(&[&db, &user, state])
                .set(n as i64);
        }
    }
    m.servers.reset();
    m.pool_size.reset();
    m.pool_max_size.reset();
    m.pool_max_wait.reset();
    for r in &rows {
        let shard = r.shard.map(|s| s.to_string()).unwrap_or_default();
        let labels = [r.database.as_str(), &r.user, &shard, r.role, &r.server];
        for (state, n) in [
            ("active", r.active),
            ("idle", r.idle),
            ("login", r.login),
            ("tested", r.tested),
        ] {
            m.servers
                .with_label_values(&[
                    r.database.as_str(),
                    &r.user,
                    &shard,
                    r.role,
                    &r.server,
                    state,
                ])
                .set(n as i64);
        }
        m.pool_size.with_label_values(&labels).set(r.size as i64);
        m.pool_max_size
            .with_label_values(&labels)
            .set(r.max_size as i64);
        m.pool_max_wait
            .with_label_values(&labels)
            .set(r.max_wait_seconds);
    }
    m.lag.reset();
    m.banned.reset();
    for (db, shards) in &app.topology().databases {
        for (i, shard) in shards.iter().enumerate() {
            let si = i.to_string();
            for s in &shard.servers {
                let addr = s.addr.to_string();
                let role = if s.is_primary() {
                    "primary"
                } else if s.is_replica() {
                    "replica"
                } else {
                    "unknown"
                };
                m.banned
                    .with_label_values(&[db.as_str(), &si, role, &addr])
                    .set(s.is_banned() as i64);
                if s.is_replica() {
                    let lag = s.lag_ms.load(Ordering::Relaxed);
                    let v = if lag == LAG_UNKNOWN {
                        -1.0
                    } else {
                        lag as f64 / 1000.0
                    };
                    m.lag.with_label_values(&[db.as_str(), &si, &addr]).set(v);
                }
            }
        }
    }
    let hits = app.query_cache.hits.load(Ordering::Relaxed);
    let misses = app.query_cache.misses.load(Ordering::Relaxed);
    m.cache_hits.inc_by(hits.saturating_sub(m.cache_hits.get()));
    m.cache_misses
        .inc_by(misses.saturating_sub(m.cache_misses.get()));
}

/// The Prometheus text exposition of every metric, refreshed now.
pub fn render(app: &App) -> String {
    refresh(app);
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&app.metrics.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// `/pools`: the pool rows and client counts as JSON.
pub fn pools_json(app: &App) -> String {
    let rows = pool_rows(app);
    let clients: Vec<serde_json::Value> = client_states(app, &rows)
        .into_iter()
        .map(|(db, user, active, waiting, idle)| {
            serde_json::json!({"database": db, "user": user, "active": active, "waiting": waiting, "idle": idle})
        })
        .collect();
    serde_json::json!({ "pools": rows, "clients": clients }).to_string()
}
