//! Attaching a server for a planned transaction: waits out PAUSE, checks a connection out (see
//! [`route`]), re-routes after a reload removed the pool, and makes the connection ready for
//! the client (evicted statements closed, session parameters synced).

use super::route::{self};
use super::Session;
use crate::frontend::cancel::CancelTarget;
use crate::pool::{Lease, PoolError};
use crate::router::plan::Run;

impl Session {
    /// Gets a server for a transaction planned to run as `run`; on failure returns the
    /// SQLSTATE and message for the client.
    pub(super) async fn attach(&mut self, run: Run) -> Result<(), route::AttachError> {
        // PAUSE: new transactions of a paused database wait for RESUME.
        self.wait_if_paused().await;
        self.set_state(crate::stats::CLIENT_WAITING);
        let result = self.attach_now(run).await;
        self.set_state(if result.is_ok() {
            crate::stats::CLIENT_ACTIVE
        } else {
            crate::stats::CLIENT_IDLE
        });
        result
    }

    pub(super) fn set_state(&self, state: u8) {
        self.info
            .state
            .store(state, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) async fn attach_now(&mut self, run: Run) -> Result<(), route::AttachError> {
        if let Some(role) = run.set_role {
            self.route.role_override = Some(role);
        }
        self.route.txn_writes = run.writes;
        self.route.track_writes = run.track_writes;
        // Lent out (not cloned) for the checkout: no shared reference count is touched.
        let mut snap = self
            .snap
            .take()
            .expect("the snapshot is back after every attach");
        let mut result = self.route_and_checkout(run, &snap).await;
        let mut removed = false;
        // A reload dropped the pool being waited for: route again by the new config (a few
        // times, in case reloads follow each other). Not for a sharded database: the shard
        // was chosen by the old map, and the client's retry will choose by the new one.
        for _ in 0..3 {
            if !matches!(
                result,
                Err(route::AttachError::Pool(PoolError::Removed { .. }))
            ) || self.sharded
            {
                break;
            }
            // The snapshot changed under the session: refreshed as between transactions.
            self.snap = Some(snap);
            removed = !self.refresh_snapshot();
            snap = self.snap.take().expect("just put back");
            if removed || self.sharded {
                break;
            }
            result = self.route_and_checkout(run, &snap).await;
        }
        self.snap = Some(snap);
        let (mut lease, _target) = match result {
            Ok(attached) => attached,
            Err(route::AttachError::Pool(PoolError::Removed { .. })) if removed => {
                return Err(PoolError::DatabaseRemoved {
                    database: self.login.database.clone(),
                }
                .into())
            }
            Err(e) => return Err(e),
        };
        let conn = lease.conn();
        self.login.cancel_slot.lock().attached = Some(CancelTarget {
            addr: conn.addr.clone(),
            key: conn.backend_key,
        });
        self.txn.attach(lease);
        self.tracker.executed = false;
        Ok(())
    }

    /// Makes a just checked-out connection ready for this client: closes statements the LRU
    /// evicted and brings session parameters in line. Nothing of the client's has reached the
    /// server yet, so a connection-level failure here is safe to retry elsewhere.
    pub(super) async fn prepare_server(
        &mut self,
        lease: &mut Lease,
    ) -> Result<(), crate::server::ServerError> {
        let conn = lease.conn();
        if !conn.state.to_close.is_empty() {
            let sql: String = conn
                .state
                .to_close
                .iter()
                .map(|n| format!("DEALLOCATE \"{}\";", String::from_utf8_lossy(n)))
                .collect();
            conn.control_query(&sql).await?;
            conn.state.to_close.clear();
        }
        conn.sync_params(&mut self.params.desired).await
    }
}
