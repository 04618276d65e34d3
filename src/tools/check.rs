//! What `usher check` verifies beyond the file itself: for every database that commits
//! across shards (`two_phase_commit = true`), that each shard primary accepts prepared
//! transactions (`max_prepared_transactions` above zero). A shard that cannot be reached, or
//! has none, is a warning naming the database, the shard and its address: the file is
//! valid, but writes across shards would fail there at PREPARE TRANSACTION.

use crate::config::Config;
use crate::router::probes::{control_config, probe_user};

/// One warning per shard primary of a two-phase database that has
/// `max_prepared_transactions = 0` or could not be asked.
pub async fn two_phase_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let Some(user) = probe_user(config) else {
        return warnings;
    };
    let timeout = config.general.server_connect_timeout.0;
    for (name, db) in &config.databases {
        if !db.sharding.as_ref().is_some_and(|s| s.two_phase_commit) {
            continue;
        }
        for (i, shard) in db.shards.iter().enumerate() {
            let addr = &shard.primary.addr;
            let at = format!("databases.{name} shard {i} ({addr})");
            let pg = control_config(addr, user, "usher-check", timeout);
            let asked = async {
                let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
                let task = tokio::spawn(conn);
                let row = client
                    .query_one("SELECT current_setting('max_prepared_transactions')", &[])
                    .await;
                drop(client);
                let _ = task.await;
                row?.try_get::<_, String>(0)
            };
            match tokio::time::timeout(timeout * 2, asked).await {
                Ok(Ok(n)) if n.trim() == "0" => warnings.push(format!(
                    "warning: {at}: max_prepared_transactions = 0, but two_phase_commit = true: writes across shards will fail at PREPARE TRANSACTION (set it above zero and restart that server)"
                )),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warnings.push(format!(
                    "warning: {at}: could not check max_prepared_transactions: {e}"
                )),
                Err(_) => warnings.push(format!(
                    "warning: {at}: could not check max_prepared_transactions: no answer within {:?}",
                    timeout * 2
                )),
            }
        }
    }
    warnings
}
