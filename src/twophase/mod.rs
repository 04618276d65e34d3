//! Two-phase commit for writes across shards. A session running an UPDATE or DELETE on
//! several shards (`session::fanout::write`) asks the [`Coordinator`] for a transaction id,
//! prepares every shard's part as `usher:INSTANCE:ID:SHARD` while the id is marked in flight,
//! records the commit decision in the [`log`] (fsynced), commits every part, and marks it
//! done. [`recover`] finishes what a crash (or a lost shard) left prepared: parts of
//! transactions the log decided to commit are committed, every other part of this instance
//! is rolled back, and parts still in flight in this process are left alone.

pub mod log;
pub mod recover;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What went wrong in two-phase commit bookkeeping.
#[derive(Debug, thiserror::Error)]
pub enum TwoPhaseError {
    /// The decision log could not be read or written (usher's side: disk or permissions).
    #[error("usher: two_phase_log {path}: {error}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        error: String,
    },
    /// A database enables two-phase commit but no log is configured.
    #[error("usher: two-phase commit needs general.two_phase_log")]
    NoLog,
}

impl crate::error::Failure for TwoPhaseError {
    fn side(&self) -> crate::error::Side {
        match self {
            TwoPhaseError::Log { .. } => crate::error::Side::Internal,
            TwoPhaseError::NoLog => crate::error::Side::Config,
        }
    }

    fn sqlstate(&self) -> &str {
        match self {
            TwoPhaseError::Log { .. } => "58030",
            TwoPhaseError::NoLog => "0A000",
        }
    }

    fn retry(&self) -> crate::error::Retry {
        crate::error::Retry::Never
    }
}

/// The shared state of this usher's distributed transactions.
pub struct Coordinator {
    /// This usher's name in transaction ids.
    instance: String,
    /// The decision log, opened on first use from the config's path.
    log: parking_lot::Mutex<Option<Arc<log::Log>>>,
    /// Start time of this process (microseconds): ids never repeat across restarts.
    epoch: u64,
    next: AtomicU64,
    /// Ids between their first PREPARE and their last COMMIT/ROLLBACK PREPARED here:
    /// recovery leaves their parts alone.
    in_flight: parking_lot::Mutex<HashSet<String>>,
    /// One write across shards at a time per database: two of them could otherwise wait on
    /// each other's rows on two shards, a deadlock no single Postgres can see.
    gates: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One recovery pass at a time.
    pub(crate) recovering: tokio::sync::Mutex<()>,
}

/// A distributed transaction in flight; dropping it ends the in-flight mark.
pub struct Txn {
    /// Its id.
    pub id: String,
    coordinator: Arc<Coordinator>,
}

impl Drop for Txn {
    fn drop(&mut self) {
        self.coordinator.in_flight.lock().remove(&self.id);
    }
}

impl Coordinator {
    /// A coordinator named by `general.instance_name` (or the host name and listen port).
    pub fn new(general: &crate::config::General) -> Coordinator {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Coordinator {
            instance: instance_name(general),
            log: parking_lot::Mutex::new(None),
            epoch,
            next: AtomicU64::new(1),
            in_flight: parking_lot::Mutex::new(HashSet::new()),
            gates: parking_lot::Mutex::new(HashMap::new()),
            recovering: tokio::sync::Mutex::new(()),
        }
    }

    /// This usher's name in transaction ids.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The decision log at `path`, opened on first use. A reload that names another file
    /// keeps the first one (decisions must stay where recovery reads them) and says so.
    pub fn log(&self, path: Option<&std::path::Path>) -> Result<Arc<log::Log>, TwoPhaseError> {
        let mut slot = self.log.lock();
        if let Some(l) = slot.as_ref() {
            if path.is_some_and(|p| p != l.path()) {
                tracing::warn!(
                    using = %l.path().display(),
                    "two_phase_log changed in the config: usher keeps the file it opened until it restarts"
                );
            }
            return Ok(l.clone());
        }
        let l = Arc::new(log::Log::open(path.ok_or(TwoPhaseError::NoLog)?)?);
        *slot = Some(l.clone());
        Ok(l)
    }

    /// A new transaction id, marked in flight until the returned [`Txn`] is dropped.
    pub fn begin(self: &Arc<Self>) -> Txn {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:x}-{n:x}", self.epoch);
        self.in_flight.lock().insert(id.clone());
        Txn {
            id,
            coordinator: self.clone(),
        }
    }

    /// The gate that lets one write across shards of `database` run at a time.
    pub fn gate(&self, database: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.gates
            .lock()
            .entry(database.to_string())
            .or_default()
            .clone()
    }

    /// Whether `id` is in flight in this process.
    pub fn in_flight(&self, id: &str) -> bool {
        self.in_flight.lock().contains(id)
    }

    /// The ids in flight now.
    pub fn in_flight_now(&self) -> HashSet<String> {
        self.in_flight.lock().clone()
    }

    /// The global id of shard `shard`'s part of transaction `id`.
    pub fn gid(&self, id: &str, shard: usize) -> String {
        format!("usher:{}:{id}:{shard}", self.instance)
    }

    /// The transaction id of a global id this instance made; `None` for anyone else's.
    pub fn id_of<'a>(&self, gid: &'a str) -> Option<&'a str> {
        let rest = gid
            .strip_prefix("usher:")?
            .strip_prefix(self.instance.as_str())?
            .strip_prefix(':')?;
        let (id, shard) = rest.rsplit_once(':')?;
        shard.parse::<usize>().ok()?;
        Some(id)
    }
}

/// `general.instance_name`, or `HOST-PORT` from the host name and the listen port, with
/// characters outside `[A-Za-z0-9._-]` replaced.
fn instance_name(general: &crate::config::General) -> String {
    if let Some(n) = &general.instance_name {
        return n.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_else(|_| "usher".into());
    let port = general.listen.rsplit(':').next().unwrap_or("6432");
    format!("{}-{port}", host.trim())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_instance_and_shard() {
        let general = crate::config::General {
            instance_name: Some("east-1".into()),
            ..Default::default()
        };
        let c = Arc::new(Coordinator::new(&general));
        let t = c.begin();
        let gid = c.gid(&t.id, 3);
        assert!(gid.starts_with("usher:east-1:"), "{gid}");
        assert_eq!(c.id_of(&gid), Some(t.id.as_str()));
        assert!(c.in_flight(&t.id));
        let id = t.id.clone();
        drop(t);
        assert!(!c.in_flight(&id));
        assert_ne!(c.begin().id, id, "ids do not repeat");
        assert_eq!(c.id_of("usher:east-10:1-1:0"), None, "another instance");
        assert_eq!(c.id_of("usher:east-1:1-1:x"), None);
        assert_eq!(c.id_of("other"), None);
        let named = instance_name(&crate::config::General {
            listen: "0.0.0.0:7432".into(),
            ..Default::default()
        });
        assert!(named.ends_with("-7432"), "{named}");
        assert!(!named.contains(':'));
    }
}
