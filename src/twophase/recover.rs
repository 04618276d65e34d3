//! Recovery of distributed transactions left prepared: after a crash, a lost shard, or a
//! COMMIT PREPARED that did not get through. Every server of every sharded database is
//! asked for the prepared transactions of this instance (`usher:INSTANCE:...`) in its
//! database; a part whose transaction the decision log says commits is committed, every
//! other one is rolled back (presumed abort: no `commit` line means no shard was committed),
//! and parts of transactions still in flight in this process are left to their session.
//! Runs when usher starts, every [`EVERY`] after, and as `usher recover`.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use super::Coordinator;
use crate::config::{Config, ServerAddr, User};
use crate::router::probes::{control_config, probe_user};

/// How often a running usher looks for prepared transactions to finish.
pub const EVERY: Duration = Duration::from_secs(30);

/// What one recovery pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Parts committed (`COMMIT PREPARED`).
    pub committed: Vec<String>,
    /// Parts rolled back (`ROLLBACK PREPARED`).
    pub rolled_back: Vec<String>,
    /// Parts left: in flight here, younger than asked, or failing (with why).
    pub left: Vec<String>,
    /// Servers that could not be asked (with why).
    pub unreachable: Vec<String>,
}

impl Report {
    /// True when the pass found nothing to do and every server answered.
    pub fn is_quiet(&self) -> bool {
        self.committed.is_empty()
            && self.rolled_back.is_empty()
            && self.left.is_empty()
            && self.unreachable.is_empty()
    }
}

/// Whether any database commits across shards (else there is nothing to recover, unless a
/// decision log from earlier runs is configured).
pub fn wanted(config: &Config) -> bool {
    config.general.two_phase_log.is_some()
        || config
            .databases
            .values()
            .any(|d| d.sharding.as_ref().is_some_and(|s| s.two_phase_commit))
}

/// One pass over every server; parts prepared less than `older_than` ago are left (a
/// separate `usher recover` cannot see another process's transactions in flight).
pub async fn pass(config: &Config, coordinator: &Coordinator, older_than: Duration) -> Report {
    let _one = coordinator.recovering.lock().await;
    let mut report = Report::default();
    let log = match coordinator.log(config.general.two_phase_log.as_deref()) {
        Ok(l) => Some(l),
        Err(super::TwoPhaseError::NoLog) => None,
        Err(e) => {
            report.unreachable.push(e.to_string());
            return report;
        }
    };
    let decisions = |report: &mut Report| -> Option<HashSet<String>> {
        match &log {
            None => Some(HashSet::new()),
            Some(l) => match l.decisions() {
                Ok(d) => Some(d.committed),
                Err(e) => {
                    report.unreachable.push(e.to_string());
                    None
                }
            },
        }
    };
    // Before anything is listed: what the log decided and what is in flight now, for the
    // rewrite of the log at the end.
    let Some(at_start) = decisions(&mut report) else {
        return report;
    };
    let in_flight_at_start = coordinator.in_flight_now();
    let mut pending: HashSet<String> = HashSet::new();
    let timeout = config.general.server_connect_timeout.0;
    for addr in servers(config) {
        let Some(user) = probe_user(config) else {
            report.unreachable.push("no user to connect with".into());
            break;
        };
        let rows = match list(&addr, user, timeout, older_than).await {
            Ok(rows) => rows,
            Err(e) => {
                report.unreachable.push(format!("{addr}: {e}"));
                continue;
            }
        };
        // Checked after listing: a part not in flight now belongs to a transaction whose
        // decision, if any, is already in the log read next.
        let candidates: Vec<(String, String, String, bool)> = rows
            .into_iter()
            .filter_map(|(gid, owner, old)| {
                let id = coordinator.id_of(&gid)?.to_string();
                if coordinator.in_flight(&id) {
                    pending.insert(id);
                    return None;
                }
                Some((gid, id, owner, old))
            })
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let Some(committed) = decisions(&mut report) else {
            return report;
        };
        for (gid, id, owner, old) in candidates {
            if !old {
                report
                    .left
                    .push(format!("{gid} (prepared less than {older_than:?} ago)"));
                pending.insert(id);
                continue;
            }
            let commit = committed.contains(&id);
            let user = owner_user(config, &owner).unwrap_or(user);
            match finish(&addr, user, timeout, &gid, commit).await {
                Ok(()) if commit => report.committed.push(gid),
                Ok(()) => report.rolled_back.push(gid),
                Err(e) => {
                    report.left.push(format!("{gid}: {e}"));
                    pending.insert(id);
                }
            }
        }
    }
    // Decisions whose every part is settled leave the log, once every server was asked.
    if let (Some(log), true) = (&log, report.unreachable.is_empty()) {
        let settled: HashSet<String> = at_start
            .into_iter()
            .filter(|id| !in_flight_at_start.contains(id) && !pending.contains(id))
            .collect();
        let tidy = log.decisions().is_ok_and(|d| d.lines > d.committed.len());
        if !settled.is_empty() || tidy {
            if let Err(e) = log.compact(&settled) {
                report.unreachable.push(e.to_string());
            }
        }
    }
    for gid in &report.committed {
        tracing::warn!(
            gid,
            "two-phase recovery: committed a prepared transaction left behind"
        );
    }
    for gid in &report.rolled_back {
        tracing::warn!(
            gid,
            "two-phase recovery: rolled back a prepared transaction left behind"
        );
    }
    for why in report.left.iter().chain(&report.unreachable) {
        tracing::info!(why, "two-phase recovery: not finished yet");
    }
    report
}

/// Runs a pass now and every [`EVERY`], while usher serves.
pub async fn run(app: std::sync::Arc<crate::app::App>) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let config = app.config();
        if wanted(&config) {
            pass(&config, &app.twophase, Duration::ZERO).await;
        }
    }
}

/// Every server of every sharded database, once each (shards may share a server).
fn servers(config: &Config) -> BTreeSet<ServerAddr> {
    config
        .databases
        .values()
        .filter(|d| d.sharding.is_some())
        .flat_map(|d| d.shards.iter())
        .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
        .map(|s| s.addr.clone())
        .collect()
}

/// The config user who logs in to servers as `owner` (COMMIT PREPARED must be run by the
/// user who prepared, or a superuser).
fn owner_user<'a>(config: &'a Config, owner: &str) -> Option<&'a User> {
    config.users.iter().find(|u| u.server_user() == owner)
}

async fn connect(
    addr: &ServerAddr,
    user: &User,
    timeout: Duration,
) -> Result<tokio_postgres::Client, String> {
    let pg = control_config(addr, user, "usher-recover", timeout);
    let (client, conn) = tokio::time::timeout(timeout, pg.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| "timed out connecting".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// This database's prepared transactions named by some usher on a primary (none on a
/// standby): (gid, owner, prepared at least `older_than` ago).
async fn list(
    addr: &ServerAddr,
    user: &User,
    timeout: Duration,
    older_than: Duration,
) -> Result<Vec<(String, String, bool)>, String> {
    let client = connect(addr, user, timeout).await?;
    let rows = client
        .query(
            "SELECT gid, owner::text, prepared <= now() - make_interval(secs => $1) \
             FROM pg_catalog.pg_prepared_xacts \
             WHERE database = current_database() AND gid LIKE 'usher:%' \
               AND NOT pg_catalog.pg_is_in_recovery()",
            &[&older_than.as_secs_f64()],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                r.try_get::<_, String>(0).ok()?,
                r.try_get::<_, String>(1).ok()?,
                r.try_get::<_, bool>(2).ok()?,
            ))
        })
        .collect())
}

/// COMMIT PREPARED or ROLLBACK PREPARED of `gid` on `addr`.
async fn finish(
    addr: &ServerAddr,
    user: &User,
    timeout: Duration,
    gid: &str,
    commit: bool,
) -> Result<(), String> {
    let client = connect(addr, user, timeout).await?;
    let verb = if commit { "COMMIT" } else { "ROLLBACK" };
    client
        .batch_execute(&format!("{verb} PREPARED {}", quote(gid)))
        .await
        .map_err(|e| describe(&e))
}

/// A server error as `SQLSTATE: message`.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// `s` as an SQL string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_what_needs_recovery() {
        assert_eq!(quote("usher:a:1-2:0"), "'usher:a:1-2:0'");
        assert_eq!(quote("it's"), "'it''s'");
        let mut config: Config = crate::config::load_str(
            "[[users]]\nname = \"app\"\npassword = \"x\"\n[databases.app]\nshards = [{ primary = \"127.0.0.1:5432/a\" }]\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        assert!(!wanted(&config));
        config.general.two_phase_log = Some("/tmp/x".into());
        assert!(wanted(&config));
        assert!(servers(&config).is_empty(), "not sharded");
    }
}
