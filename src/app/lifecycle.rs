//! The proxy's life cycle: hot reload of the config file (SIGHUP, admin `RELOAD`) and graceful
//! shutdown (SIGTERM/SIGINT, admin `SHUTDOWN`).
//!
//! Reload rules: the new file is validated exactly like `usher check`; an invalid file is
//! rejected, logged and counted, and the running config keeps serving. A valid one takes
//! effect for every transaction that starts afterwards: pool sizes and timeouts are updated in
//! place (connections kept), servers that stay keep their connections and their measured
//! state (role, lag, bans), servers, users and databases that left lose their pools (idle
//! connections closed now, busy ones when their transaction ends), and transactions in flight
//! finish where they started. `listen`, `metrics_listen`, `worker_threads` and
//! `query_cache_size` need a restart; a changed value is logged. A client keeps the pool mode
//! it logged in with.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{pool_settings, App};
use crate::config::{load_file, Config};
use crate::router::topology::Topology;

impl App {
    /// Remembers the file the config came from (for reloads).
    pub fn set_config_path(&self, path: PathBuf) {
        *self.config_path.lock() = Some(path);
    }

    /// Re-reads the config file and applies it. On error the running config stays and the
    /// error (the same `file:line: key: message` lines as `usher check`) is returned.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = self.config_path.lock().clone() else {
            return Err("usher was started without a config file to reload".into());
        };
        let result = load_file(&path).map_err(|e| e.to_string());
        match result {
            Ok(new) => {
                self.apply(new);
                self.metrics.reload(true);
                tracing::info!(file = %path.display(), "config reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(file = %path.display(), error = %e, "config reload rejected; the running config stays");
                Err(e)
            }
        }
    }

    /// Puts a validated config in force.
    pub fn apply(&self, new: Config) {
        let new = Arc::new(new);
        let old = self.config();
        // Servers may have changed: column defaults are read again when next needed.
        self.defaults.lock().clear();
        for (what, changed) in [
            ("listen", old.general.listen != new.general.listen),
            (
                "metrics_listen",
                old.general.metrics_listen != new.general.metrics_listen,
            ),
            (
                "worker_threads",
                old.general.worker_threads != new.general.worker_threads,
            ),
            (
                "query_cache_size",
                old.general.query_cache_size != new.general.query_cache_size,
            ),
        ] {
            if changed {
                tracing::warn!(
                    setting = what,
                    "changed in the config file; takes effect at the next restart"
                );
            }
        }
        let mut topology = Topology::new(&new);
        topology.carry_over(&self.topology());
        // Pools of servers, users and databases that stay get the new settings; the others go.
        let servers: std::collections::HashSet<(&str, &crate::config::ServerAddr)> = new
            .databases
            .iter()
            .flat_map(|(name, d)| {
                d.shards
                    .iter()
                    .flat_map(move |s| s.servers().map(move |x| (name.as_str(), &x.addr)))
            })
            .collect();
        let keep = |key: &crate::pool::PoolKey| {
            new.user(&key.user).is_some()
                && servers.contains(&(key.database.as_str(), &*key.server))
        };
        for pool in self.pools.all() {
            if let (true, Some(user)) = (keep(&pool.key), new.user(&pool.key.user)) {
                pool.update_settings(pool_settings(&new, &pool.key.database, user));
            }
        }
        *self.topology.write() = Arc::new(topology);
        *self.config.write() = new.clone();
        self.generation.fetch_add(1, Ordering::Release);
        // Only now: the clients waiting on a dropped pool route again, and must find the new
        // config when they do.
        self.pools.retain(keep);
        self.probes
            .retain(|addr| servers.iter().any(|(_, server)| *server == addr));
    }

    /// Starts a graceful shutdown: no new clients; idle clients are told (57P01) and
    /// disconnected; clients in a transaction finish it first.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        if !self.shutdown.send_replace(true) {
            tracing::info!("shutting down: no new clients, waiting for transactions to finish");
        }
        for client in self.client_list.all() {
            client.wake.notify_one();
        }
    }

    /// True once a shutdown started (checked by every session between transactions).
    pub fn shutting_down(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A receiver that changes when a shutdown starts.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Waits until every client left or `timeout` passed, then closes idle server connections
    /// with a Terminate message. Returns how many clients were still connected.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let started = Instant::now();
        while self.clients.load(std::sync::atomic::Ordering::Relaxed) > 0
            && started.elapsed() < timeout
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.clients.load(std::sync::atomic::Ordering::Relaxed);
        let closed: usize = self.pools.all().iter().map(|p| p.close_idle()).sum();
        tracing::info!(
            clients_left = left,
            server_connections_closed = closed,
            "shutdown complete"
        );
        left
    }
}
