//! PAUSE and RESUME: a paused database's new transactions wait (in both pool modes, see
//! `session::pause`); PAUSE returns once none of its clients is inside a transaction, or
//! fails after `pause_timeout` and resumes what it paused, so an operator's script never
//! goes on (to restart a server, say) while a transaction still runs, and never leaves the
//! database half paused.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::app::App;

/// Pauses `dbs` and waits for their running transactions; on timeout, resumes the databases
/// this call paused and returns the message for the operator.
pub async fn pause(app: &App, dbs: &[String]) -> Result<(), String> {
    let added: Vec<String> = {
        let mut paused = app.paused.lock();
        dbs.iter()
            .filter(|d| paused.insert((*d).clone()))
            .cloned()
            .collect()
    };
    app.any_paused.store(true, Ordering::SeqCst);
    let limit = app.config().general.pause_timeout.enabled();
    let started = Instant::now();
    loop {
        let busy: Vec<u64> = app
            .client_list
            .all()
            .iter()
            .filter(|c| dbs.contains(&c.database) && c.busy.load(Ordering::SeqCst))
            .map(|c| c.id)
            .collect();
        if busy.is_empty() {
            tracing::info!(databases = ?dbs, "paused");
            return Ok(());
        }
        if let Some(limit) = limit.filter(|l| started.elapsed() >= *l) {
            resume(app, &added);
            tracing::warn!(databases = ?dbs, clients = ?busy, "PAUSE timed out; resumed");
            return Err(format!(
                "PAUSE timed out after {limit:?} (pause_timeout): {} client(s) still in a transaction (SHOW CLIENTS ids {busy:?}); the database(s) were resumed",
                busy.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resumes `dbs`: their waiting transactions go on.
pub fn resume(app: &App, dbs: &[String]) {
    {
        let mut paused = app.paused.lock();
        paused.retain(|d| !dbs.contains(d));
        app.any_paused.store(!paused.is_empty(), Ordering::SeqCst);
    }
    app.resumed.notify_waiters();
}
