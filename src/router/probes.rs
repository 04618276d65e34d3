//! Control-plane connections to servers (tokio-postgres), one cached per server: the
//! monitor's probes, the volatility lookups on the routing path, and `usher migrate` use them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ServerAddr, User};

/// One server's cached control connection. Its lock is held while connecting, so callers for
/// the same server share one connect; callers for other servers never wait on it.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>>;

/// Control-plane connections to servers, for probes and catalog lookups.
#[derive(Default)]
pub struct Probes {
    /// Held only to find or add a slot, never across an await.
    slots: parking_lot::Mutex<HashMap<ServerAddr, Slot>>,
}

/// The credentials probes use: `health_check_user`, else the first user.
pub fn probe_user(config: &Config) -> Option<&User> {
    match &config.general.health_check_user {
        Some(name) => config.user(name),
        None => config.users.first(),
    }
}

/// A tokio-postgres config for a control connection to `addr` with `user`'s server
/// credentials (probes, catalog lookups, `usher migrate`).
pub fn control_config(
    addr: &ServerAddr,
    user: &User,
    application_name: &str,
    connect_timeout: std::time::Duration,
) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&addr.host)
        .port(addr.port)
        .dbname(&addr.dbname)
        .user(user.server_user())
        .application_name(application_name)
        .connect_timeout(connect_timeout);
    if let Some(p) = user.server_password() {
        pg.password(p);
    }
    pg
}

impl Probes {
    /// Forgets the control connections of servers for which `keep` is false (a reload removed
    /// them); a query still using one finishes on it.
    pub fn retain(&self, keep: impl Fn(&ServerAddr) -> bool) {
        self.slots.lock().retain(|addr, _| keep(addr));
    }

    /// Runs a query on `addr` over a cached control connection (reconnecting once if it broke).
    pub async fn query(
        &self,
        config: &Config,
        addr: &ServerAddr,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, String> {
        let timeout = config.general.server_connect_timeout.0;
        let slot = self.slots.lock().entry(addr.clone()).or_default().clone();
        for attempt in 0..2 {
            let client = {
                let mut cached = slot.lock().await;
                match cached.as_ref() {
                    Some(c) if !c.is_closed() && attempt == 0 => c.clone(),
                    _ => {
                        let user = probe_user(config).ok_or("no user to probe with")?;
                        let pg = control_config(addr, user, "usher-monitor", timeout);
                        let (client, conn) =
                            tokio::time::timeout(timeout, pg.connect(tokio_postgres::NoTls))
                                .await
                                .map_err(|_| format!("timed out connecting to {addr}"))?
                                .map_err(|e| format!("{addr}: {e}"))?;
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        let client = Arc::new(client);
                        *cached = Some(client.clone());
                        client
                    }
                }
            };
            match tokio::time::timeout(timeout, client.query(sql, params)).await {
                Ok(Ok(rows)) => return Ok(rows),
                Ok(Err(e)) if attempt == 0 && client.is_closed() => {
                    tracing::debug!(server = %addr, error = %e, "probe connection broke, reconnecting")
                }
                Ok(Err(e)) => return Err(format!("{addr}: {e}")),
                Err(_) => return Err(format!("{addr}: probe timed out")),
            }
        }
        Err(format!("{addr}: unreachable"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_forgets_removed_servers() {
        let probes = Probes::default();
        let (a, b) = (
            ServerAddr::parse("127.0.0.1:5432/a").unwrap(),
            ServerAddr::parse("127.0.0.1:5433/b").unwrap(),
        );
        for addr in [&a, &b] {
            probes.slots.lock().entry(addr.clone()).or_default();
        }
        probes.retain(|addr| *addr == a);
        let slots = probes.slots.lock();
        assert!(slots.contains_key(&a) && !slots.contains_key(&b));
    }
}
