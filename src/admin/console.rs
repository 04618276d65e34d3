//! The admin console: `psql -h 127.0.0.1 -p 6432 -U admin usher` (database `pgbouncer` is an
//! alias). Simple query protocol only, one command per statement:
//! `SHOW POOLS | STATS | STATS_TOTALS | STATS_AVERAGES | SERVERS | CLIENTS | DATABASES | USERS
//! | CONFIG | LISTS | VERSION | SHARDS | REPLICAS`, `PAUSE [db]`, `RESUME [db]`,
//! `RECONNECT [db]`, `RELOAD`, `SHUTDOWN`. Anything else gets SQLSTATE 42601 naming what
//! exists.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::show;
use super::table::frame;
use crate::app::App;
use crate::frontend::ClientIo;
use crate::protocol::{messages, split_frame};

/// Serves one admin connection until it closes.
pub async fn run(app: Arc<App>, mut io: ClientIo) {
    let mut skip_until_sync = false;
    loop {
        let frame = match split_frame(&mut io.rbuf, io.max_message) {
            Ok(Some(f)) => f,
            Ok(None) => match io.fill().await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(e) => {
                io.fatal("08P01", &format!("invalid message: {e}")).await;
                return;
            }
        };
        let mut out = BytesMut::new();
        match frame.tag {
            b'X' => return,
            b'Q' => {
                let sql = String::from_utf8_lossy(
                    frame.body().strip_suffix(b"\0").unwrap_or(frame.body()),
                )
                .into_owned();
                for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    if let Err((code, message)) = command(&app, statement, &mut out).await {
                        out.extend_from_slice(&messages::error_response(
                            "ERROR", code, &message, None,
                        ));
                        break;
                    }
                }
                if sql.trim().trim_matches(';').trim().is_empty() {
                    frame_empty(&mut out);
                }
                messages::ready_for_query(&mut out, b'I');
            }
            b'S' => {
                skip_until_sync = false;
                messages::ready_for_query(&mut out, b'I');
            }
            _ if skip_until_sync => continue,
            _ => {
                skip_until_sync = true;
                out.extend_from_slice(&messages::error_response(
                    "ERROR",
                    "08P01",
                    "the admin console speaks the simple query protocol only (psql, or simple_query in drivers)",
                    None,
                ));
            }
        }
        if io.stream.write_all(&out).await.is_err() {
            return;
        }
        if app.shutting_down() {
            return;
        }
    }
}

fn frame_empty(out: &mut BytesMut) {
    frame(out, b'I', b"");
}

/// Runs one command, appending its result.
async fn command(
    app: &Arc<App>,
    statement: &str,
    out: &mut BytesMut,
) -> Result<(), (&'static str, String)> {
    let words: Vec<String> = statement
        .split_whitespace()
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let arg = statement
        .split_whitespace()
        .nth(1)
        .map(|d| d.trim_matches('"').to_string());
    match words.as_slice() {
        ["show", what] => {
            let table = show::table(app, what).ok_or_else(|| {
                ("42601", format!("unknown SHOW {}: try POOLS, STATS, STATS_TOTALS, STATS_AVERAGES, SERVERS, CLIENTS, DATABASES, USERS, CONFIG, LISTS, VERSION, SHARDS or REPLICAS", what.to_uppercase()))
            })?;
            table.encode(out);
            Ok(())
        }
        ["pause"] | ["pause", _] => {
            let dbs = databases(app, arg.as_deref())?;
            super::pause::pause(app, &dbs)
                .await
                .map_err(|e| ("57014", e))?;
            frame(out, b'C', b"PAUSE\0");
            Ok(())
        }
        ["resume"] | ["resume", _] => {
            let dbs = databases(app, arg.as_deref())?;
            super::pause::resume(app, &dbs);
            tracing::info!(databases = ?dbs, "resumed");
            frame(out, b'C', b"RESUME\0");
            Ok(())
        }
        ["reconnect"] | ["reconnect", _] => {
            let dbs = databases(app, arg.as_deref())?;
            for pool in app.pools.all().iter().filter(|p| dbs.contains(&p.key.database)) {
                pool.reconnect();
            }
            tracing::info!(databases = ?dbs, "server connections will be reopened");
            frame(out, b'C', b"RECONNECT\0");
            Ok(())
        }
        ["reload"] => {
            app.reload().map_err(|e| ("F0000", format!("config reload rejected, the running config stays:\n{e}")))?;
            frame(out, b'C', b"RELOAD\0");
            Ok(())
        }
        ["shutdown"] => {
            app.begin_shutdown();
            frame(out, b'C', b"SHUTDOWN\0");
            Ok(())
        }
        _ => Err((
            "42601",
            format!("unknown admin command {statement:?}: use SHOW ..., PAUSE [db], RESUME [db], RECONNECT [db], RELOAD or SHUTDOWN"),
        )),
    }
}

/// The databases a PAUSE/RESUME/RECONNECT applies to.
fn databases(app: &App, arg: Option<&str>) -> Result<Vec<String>, (&'static str, String)> {
    let config = app.config();
    match arg {
        None => Ok(config.databases.keys().cloned().collect()),
        Some(d) if config.databases.contains_key(d) => Ok(vec![d.to_string()]),
        Some(d) => Err(("3D000", format!("database \"{d}\" does not exist"))),
    }
}
