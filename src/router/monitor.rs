//! Background probes, every `lag_check_interval`: each server's role (`pg_is_in_recovery()`,
//! followed for `role = "auto"`), the primary's WAL position, each replica's replay position and
//! from those its lag. Unreachable servers are banned for `ban_time`.
//!
//! Lag is measured against a short history of the primary's WAL positions: a replica that has
//! replayed position P is as fresh as the primary was at the latest sample not past P, so its lag
//! is the age of that sample (within one interval). An idle primary therefore never makes a
//! caught-up replica look late, and a replica delayed by 2 s shows about 2 s.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::App;
use crate::config::Config;

use super::topology::{parse_lsn, ShardRuntime, LAG_UNKNOWN};

const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END)::text";

/// How long the primary's WAL history is kept (a replica further behind is simply "very late").
const HISTORY: Duration = Duration::from_secs(600);

/// Probes forever (spawn it).
pub async fn run(app: Arc<App>) {
    let mut history: HashMap<(String, usize), VecDeque<(Instant, u64)>> = HashMap::new();
    loop {
        let config = app.config();
        let topology = app.topology();
        tracing::trace!(databases = topology.databases.len(), "probing servers");
        for (name, shards) in &topology.databases {
            for (i, shard) in shards.iter().enumerate() {
                // A lone server with a fixed role has nothing to route between.
                if shard.servers.len() == 1
                    && shard.servers[0].spec_role != crate::config::RoleSpec::Auto
                {
                    continue;
                }
                let h = history.entry((name.clone(), i)).or_default();
                probe_shard(&app, &config, shard, h).await;
            }
        }
        tokio::time::sleep(config.general.lag_check_interval.0).await;
    }
}

async fn probe_shard(
    app: &App,
    config: &Config,
    shard: &ShardRuntime,
    history: &mut VecDeque<(Instant, u64)>,
) {
    let results = futures_util::future::join_all(shard.servers.iter().map(|s| async move {
        let rows = app.probes.query(config, &s.addr, PROBE_SQL, &[]).await?;
        let row = rows.first().ok_or("no row")?;
        // try_get: a server (or something posing as one) answering with other types is an
        // unreachable server, not a panic of the monitor.
        let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
        let lsn: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
        Ok::<_, String>((in_recovery, lsn.as_deref().and_then(parse_lsn).unwrap_or(0)))
    }))
    .await;
    let now = Instant::now();
    for (s, r) in shard.servers.iter().zip(&results) {
        tracing::trace!(server = %s.addr, result = ?r, "probe");
        match r {
            Ok((in_recovery, lsn)) => {
                s.unban();
                s.observe_role(*in_recovery);
                s.lsn.store(*lsn, Ordering::Relaxed);
            }
            Err(e) => {
                s.lose_role();
                s.lag_ms.store(LAG_UNKNOWN, Ordering::Relaxed);
                if !s.is_banned() {
                    s.ban(config.general.ban_time.0, e);
                }
            }
        }
    }
    let Some(p) = shard.primary() else { return };
    if results[p].is_err() {
        return;
    }
    let primary_lsn = shard.servers[p].lsn.load(Ordering::Relaxed);
    if history.back().is_none_or(|(_, l)| *l != primary_lsn) {
        history.push_back((now, primary_lsn));
    }
    while history.len() > 1
        && history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > HISTORY)
    {
        history.pop_front();
    }
    shard.servers[p].lag_ms.store(0, Ordering::Relaxed);
    for (i, (s, r)) in shard.servers.iter().zip(&results).enumerate() {
        if i == p || r.is_err() || !s.is_replica() {
            continue;
        }
        let replay = s.lsn.load(Ordering::Relaxed);
        let lag = lag_ms(history, replay, now);
        s.lag_ms.store(lag, Ordering::Relaxed);
    }
}

/// Lag of a replica at `replay` given the primary's position history (oldest first).
fn lag_ms(history: &VecDeque<(Instant, u64)>, replay: u64, now: Instant) -> u64 {
    if history.back().is_none_or(|(_, l)| replay >= *l) {
        return 0;
    }
    // The first sample the replica has not reached: it has been behind since then.
    match history.iter().find(|(_, l)| *l > replay) {
        Some((t, _)) => now.duration_since(*t).as_millis() as u64,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_from_history() {
        let now = Instant::now();
        let h: VecDeque<(Instant, u64)> = [
            (now - Duration::from_secs(10), 100),
            (now - Duration::from_secs(3), 200),
            (now - Duration::from_secs(1), 300),
        ]
        .into();
        assert_eq!(lag_ms(&h, 300, now), 0);
        assert!((2900..=3100).contains(&lag_ms(&h, 150, now)));
        assert!((900..=1100).contains(&lag_ms(&h, 250, now)));
        assert!(lag_ms(&h, 50, now) >= 9900);
    }
}
