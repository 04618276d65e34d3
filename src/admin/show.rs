//! The SHOW commands of the admin console, with PgBouncer's columns (so dashboards and
//! pgbouncer_exporter-style scrapers keep working) plus `shard` and `role` where they apply,
//! and SHOW SHARDS / SHOW REPLICAS for what PgBouncer does not have.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::table::Table;
use crate::app::App;
use crate::config::PoolMode;
use crate::router::topology::LAG_UNKNOWN;
use crate::stats::collect::{client_states, pool_rows};
use crate::stats::{Totals, CLIENT_ACTIVE, CLIENT_WAITING};

/// The table for `SHOW what` (lower case), or None for an unknown name.
pub fn table(app: &App, what: &str) -> Option<Table> {
    Some(match what {
        "pools" => pools(app),
        "stats" => stats(app),
        "stats_totals" => stats_totals(app),
        "stats_averages" => stats_averages(app),
        "servers" => servers(app),
        "clients" => clients(app),
        "databases" => databases(app),
        "users" => users(app),
        "config" => config(app),
        "lists" => lists(app),
        "version" => {
            let mut t = Table::new(&["version"]);
            t.row(vec![format!("usher {}", env!("CARGO_PKG_VERSION"))]);
            t
        }
        "shards" => shards(app),
        "replicas" => replicas(app),
        _ => return None,
    })
}

fn n(v: impl ToString) -> String {
    v.to_string()
}

fn pools(app: &App) -> Table {
    let mut t = Table::new(&[
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "cl_active_cancel_req",
        "cl_waiting_cancel_req",
        "sv_active",
        "sv_active_cancel",
        "sv_being_canceled",
        "sv_idle",
        "sv_used",
        "sv_tested",
        "sv_login",
        "maxwait",
        "maxwait_us",
        "pool_mode",
        "shard",
        "role",
        "server",
    ]);
    for r in pool_rows(app) {
        let wait = r.max_wait_seconds;
        t.row(vec![
            r.database,
            r.user,
            n(r.active),
            n(r.waiting),
            n(0),
            n(0),
            n(r.active),
            n(0),
            n(0),
            n(r.idle),
            n(0),
            n(r.tested),
            n(r.login),
            n(wait.trunc() as u64),
            n(((wait.fract()) * 1e6) as u64),
            n(r.pool_mode),
            r.shard.map(n).unwrap_or_default(),
            n(r.role),
            r.server,
        ]);
    }
    t
}

const TOTAL_COLUMNS: [&str; 8] = [
    "database",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
];

fn totals_row(db: &str, t: &Totals) -> Vec<String> {
    vec![
        db.to_string(),
        n(t.xacts as u64),
        n(t.queries as u64),
        n(t.received as u64),
        n(t.sent as u64),
        n(t.xact_us as u64),
        n(t.query_us as u64),
        n(t.wait_us as u64),
    ]
}

fn stats(app: &App) -> Table {
    let mut t = Table::new(&[
        "database",
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_query_time",
        "total_wait_time",
        "avg_xact_count",
        "avg_query_count",
        "avg_recv",
        "avg_sent",
        "avg_xact_time",
        "avg_query_time",
        "avg_wait_time",
    ]);
    let avgs = app.metrics.averages();
    for (db, total) in app.metrics.totals() {
        let mut row = totals_row(&db, &total);
        let a = avgs.get(&db).copied().unwrap_or_default();
        row.extend(totals_row(&db, &a).into_iter().skip(1));
        t.row(row);
    }
    t
}

fn stats_totals(app: &App) -> Table {
    let mut t = Table::new(&TOTAL_COLUMNS);
    for (db, total) in app.metrics.totals() {
        t.row(totals_row(&db, &total));
    }
    t
}

fn stats_averages(app: &App) -> Table {
    let mut t = Table::new(&TOTAL_COLUMNS);
    let avgs = app.metrics.averages();
    for db in app.metrics.totals().keys() {
        t.row(totals_row(db, &avgs.get(db).copied().unwrap_or_default()));
    }
    t
}

fn ago(instant: Instant) -> String {
    let at = SystemTime::now()
        .checked_sub(instant.elapsed())
        .unwrap_or(UNIX_EPOCH);
    timestamp(at)
}

fn timestamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// PgBouncer's columns of SHOW SERVERS and SHOW CLIENTS.
const CONNECTION_COLUMNS: [&str; 20] = [
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
];

fn servers(app: &App) -> Table {
    let mut columns = CONNECTION_COLUMNS.to_vec();
    columns.extend(["shard", "role"]);
    let mut t = Table::new(&columns);
    let rows = pool_rows(app);
    for pool in app.pools.all() {
        let key = &pool.key;
        let place = rows.iter().find(|r| {
            r.database == key.database && r.user == key.user && r.server == key.server.to_string()
        });
        for s in pool.servers() {
            t.row(vec![
                n("S"),
                key.user.clone(),
                key.database.clone(),
                n(""),
                n(s.state),
                key.server.host.clone(),
                n(key.server.port),
                n(""),
                n(""),
                ago(s.opened),
                ago(s.since),
                n(0),
                n(0),
                n(0),
                format!("{:x}", s.id),
                n(""),
                n(s.pid),
                n(""),
                n(""),
                n(0),
                place.and_then(|p| p.shard).map(n).unwrap_or_default(),
                n(place.map_or("unknown", |p| p.role)),
            ]);
        }
    }
    t
}

fn clients(app: &App) -> Table {
    let mut t = Table::new(&CONNECTION_COLUMNS);
    for c in app.client_list.all() {
        let state = match c.state.load(Ordering::Relaxed) {
            CLIENT_ACTIVE => "active",
            CLIENT_WAITING => "waiting",
            _ => "idle",
        };
        t.row(vec![
            n("C"),
            c.user.clone(),
            c.database.clone(),
            n(""),
            n(state),
            c.peer.ip().to_string(),
            n(c.peer.port()),
            n(""),
            n(""),
            timestamp(c.connected),
            timestamp(c.connected),
            n(0),
            n(0),
            n(0),
            format!("{:x}", c.id),
            n(""),
            n(0),
            n(""),
            c.application_name.clone(),
            n(0),
        ]);
    }
    t
}

fn databases(app: &App) -> Table {
    let config = app.config();
    let mut t = Table::new(&[
        "name",
        "host",
        "port",
        "database",
        "force_user",
        "pool_size",
        "min_pool_size",
        "reserve_pool",
        "server_lifetime",
        "pool_mode",
        "max_connections",
        "current_connections",
        "max_client_connections",
        "current_client_connections",
        "paused",
        "disabled",
        "shard",
        "role",
    ]);
    let rows = pool_rows(app);
    let paused = app.paused.lock().clone();
    let clients = app.client_list.all();
    for (name, db) in &config.databases {
        let mode = match db.pool_mode.unwrap_or(config.general.pool_mode) {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        };
        let client_count = clients.iter().filter(|c| c.database == *name).count();
        for (i, shard) in db.shards.iter().enumerate() {
            for (j, server) in shard.servers().enumerate() {
                let addr = server.addr.to_string();
                let current: usize = rows
                    .iter()
                    .filter(|r| r.database == *name && r.server == addr)
                    .map(|r| r.active + r.idle + r.login)
                    .sum();
                let role = rows
                    .iter()
                    .find(|r| r.database == *name && r.server == addr)
                    .map_or(if j == 0 { "primary" } else { "replica" }, |r| r.role);
                t.row(vec![
                    name.clone(),
                    server.addr.host.clone(),
                    n(server.addr.port),
                    server.addr.dbname.clone(),
                    n(""),
                    n(db.pool_size.unwrap_or(config.general.default_pool_size)),
                    n(config.general.min_pool_size),
                    n(config.general.reserve_pool_size),
                    n(config.general.server_lifetime.0.as_secs()),
                    n(mode),
                    n(0),
                    n(current),
                    n(config.general.max_client_conn),
                    n(client_count),
                    n(paused.contains(name) as u8),
                    n(0),
                    n(i),
                    n(role),
                ]);
            }
        }
    }
    t
}

fn users(app: &App) -> Table {
    let config = app.config();
    let mut t = Table::new(&[
        "name",
        "pool_size",
        "reserve_pool_size",
        "pool_mode",
        "max_user_connections",
        "current_connections",
        "max_user_client_connections",
        "current_client_connections",
    ]);
    let rows = pool_rows(app);
    let clients = app.client_list.all();
    for u in &config.users {
        let mode = match u.pool_mode.unwrap_or(config.general.pool_mode) {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        };
        let current: usize = rows
            .iter()
            .filter(|r| r.user == u.name)
            .map(|r| r.active + r.idle + r.login)
            .sum();
        t.row(vec![
            u.name.clone(),
            n(u.pool_size.unwrap_or(config.general.default_pool_size)),
            n(config.general.reserve_pool_size),
            n(mode),
            n(0),
            n(current),
            n(0),
            n(clients.iter().filter(|c| c.user == u.name).count()),
        ]);
    }
    t
}

fn config(app: &App) -> Table {
    let mut t = Table::new(&["key", "value", "default", "changeable"]);
    let now = serde_json::to_value(&app.config().general).unwrap_or_default();
    let default = serde_json::to_value(crate::config::General::default()).unwrap_or_default();
    let restart = [
        "listen",
        "metrics_listen",
        "worker_threads",
        "query_cache_size",
    ];
    if let (Some(now), Some(default)) = (now.as_object(), default.as_object()) {
        for (k, v) in now {
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            t.row(vec![
                k.clone(),
                text(v),
                default.get(k).map(text).unwrap_or_default(),
                n(if restart.contains(&k.as_str()) {
                    "no"
                } else {
                    "yes"
                }),
            ]);
        }
    }
    t
}

fn lists(app: &App) -> Table {
    let config = app.config();
    let rows = pool_rows(app);
    let states = client_states(app, &rows);
    let clients = app.client_list.all().len();
    let (used, free): (usize, usize) = rows
        .iter()
        .fold((0, 0), |(u, f), r| (u + r.active, f + r.idle));
    let mut t = Table::new(&["list", "items"]);
    for (k, v) in [
        ("databases", config.databases.len()),
        ("users", config.users.len()),
        ("pools", rows.len()),
        ("free_clients", 0),
        ("used_clients", clients),
        ("login_clients", 0),
        ("free_servers", free),
        ("used_servers", used),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
        ("waiting_clients", states.iter().map(|s| s.3).sum()),
    ] {
        t.row(vec![n(k), n(v)]);
    }
    t
}

fn shards(app: &App) -> Table {
    let config = app.config();
    let topology = app.topology();
    let mut t = Table::new(&[
        "database",
        "shard",
        "primary",
        "replicas",
        "usable_replicas",
        "banned",
        "hasher",
        "key_type",
        "fallback_reads",
    ]);
    for (name, db) in &config.databases {
        let Some(shards) = topology.databases.get(name) else {
            continue;
        };
        for (i, s) in shards.iter().enumerate() {
            let primary = s
                .primary()
                .map(|p| s.servers[p].addr.to_string())
                .unwrap_or_else(|| "none".into());
            let replicas = s.servers.iter().filter(|x| x.is_replica()).count();
            let usable = s
                .servers
                .iter()
                .filter(|x| {
                    x.is_replica()
                        && !x.is_banned()
                        && x.lag_ms.load(Ordering::Relaxed) != LAG_UNKNOWN
                })
                .count();
            let banned = s.servers.iter().filter(|x| x.is_banned()).count();
            let (hasher, key_type) = match &db.sharding {
                Some(m) => (
                    format!("{:?}", m.hasher).to_lowercase(),
                    m.key_type.name().to_string(),
                ),
                None => ("none".into(), String::new()),
            };
            t.row(vec![
                name.clone(),
                n(i),
                primary,
                n(replicas),
                n(usable),
                n(banned),
                hasher,
                key_type,
                n(s.fallback_reads.load(Ordering::Relaxed)),
            ]);
        }
    }
    t
}

fn replicas(app: &App) -> Table {
    let topology = app.topology();
    let mut t = Table::new(&[
        "database", "shard", "server", "role", "weight", "lag_ms", "lsn", "banned",
    ]);
    let mut names: Vec<(&String, _)> = topology.databases.iter().collect();
    names.sort_by_key(|(name, _)| *name);
    for (name, shards) in names {
        for (i, s) in shards.iter().enumerate() {
            for x in &s.servers {
                let role = if x.is_primary() {
                    "primary"
                } else if x.is_replica() {
                    "replica"
                } else {
                    "unknown"
                };
                let lag = x.lag_ms.load(Ordering::Relaxed);
                let lsn = x.lsn.load(Ordering::Relaxed);
                t.row(vec![
                    name.clone(),
                    n(i),
                    x.addr.to_string(),
                    n(role),
                    n(x.weight),
                    if lag == LAG_UNKNOWN {
                        n("unknown")
                    } else {
                        n(lag)
                    },
                    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff),
                    n(x.is_banned() as u8),
                ]);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_355_000);
        assert_eq!(timestamp(t), "2026-11-22 13:43:20 UTC");
    }
}
