//! Cancel requests: each client gets its own BackendKeyData from usher; a CancelRequest
//! carrying it is forwarded, with the server's own key, to the server running that client's
//! query at that moment — to every shard's server while a statement runs across shards —
//! and dropped if it is running none.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use parking_lot::Mutex;
use rand::RngCore;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::ServerAddr;

/// Where a client's current query runs.
#[derive(Clone, Debug)]
pub struct CancelTarget {
    /// The server.
    pub addr: Arc<ServerAddr>,
    /// The server's BackendKeyData.
    pub key: (i32, i32),
}

/// Sends a CancelRequest for the query `target` names (best effort: a failure is logged).
pub async fn send_cancel(target: &CancelTarget) {
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(target.key.0, target.key.1, &mut buf);
    match TcpStream::connect((target.addr.host.as_str(), target.addr.port)).await {
        Ok(mut s) => {
            let _ = s.write_all(&buf).await;
            tracing::info!(server = %target.addr, "forwarded cancel request");
        }
        Err(e) => {
            tracing::warn!(server = %target.addr, error = %e, "could not forward cancel request")
        }
    }
}

/// Where a client's query runs now.
#[derive(Clone, Debug, Default)]
pub struct CancelTargets {
    /// The server attached to the session.
    pub attached: Option<CancelTarget>,
    /// The servers of a statement running across shards.
    pub across: Vec<CancelTarget>,
}

impl CancelTargets {
    /// Every server the client's query runs on.
    pub fn all(&self) -> impl Iterator<Item = &CancelTarget> {
        self.attached.iter().chain(&self.across)
    }
}

/// A client's slot: updated as servers are attached and released.
pub type CancelSlot = Arc<Mutex<CancelTargets>>;

/// All live clients' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, (i32, CancelSlot)>>,
    next_pid: Mutex<i32>,
}

impl CancelRegistry {
    /// Registers a new client; returns its (pid, secret) and its slot.
    pub fn register(&self) -> ((i32, i32), CancelSlot) {
        let secret = rand::rng().next_u32() as i32;
        let slot: CancelSlot = Arc::default();
        let mut map = self.map.lock();
        let mut next = self.next_pid.lock();
        loop {
            *next = if *next >= i32::MAX - 1 { 1 } else { *next + 1 };
            if !map.contains_key(&*next) {
                break;
            }
        }
        map.insert(*next, (secret, slot.clone()));
        ((*next, secret), slot)
    }

    /// Removes a client that disconnected.
    pub fn unregister(&self, pid: i32) {
        self.map.lock().remove(&pid);
    }

    /// Forwards a cancel for (pid, secret); silently ignores unknown or wrong keys, as Postgres does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let targets: Vec<CancelTarget> = {
            let map = self.map.lock();
            match map.get(&pid) {
                Some((s, slot)) if *s == secret => slot.lock().all().cloned().collect(),
                _ => Vec::new(),
            }
        };
        if targets.is_empty() {
            tracing::debug!(pid, "cancel request for no running query");
            return;
        }
        futures_util::future::join_all(targets.iter().map(send_cancel)).await;
    }
}
