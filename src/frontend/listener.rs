//! The accept loop: one task per client, counted against `max_client_conn` from accept on, so
//! sockets still logging in count too. A client over the limit still gets a proper FATAL 53300
//! after its startup packet instead of a dropped socket, but only within [`REFUSAL_GRACE`] and
//! only [`MAX_REFUSING`] at a time: a flood of half-open sockets is closed on accept and cannot
//! exhaust file descriptors or memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::Instrument;

use super::{handshake, ClientIo};
use crate::app::App;

/// How long a socket over `max_client_conn` has to send its startup packet and be told 53300.
pub const REFUSAL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Sockets over `max_client_conn` held at once to be told 53300; beyond it they are closed at
/// accept without a word.
pub const MAX_REFUSING: usize = 64;

/// Decrements the client count when a client task ends, however it ends.
struct ClientCount(Arc<App>);

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts clients until a shutdown starts.
pub async fn accept_loop(app: Arc<App>, listener: TcpListener) {
    let mut shutdown = app.shutdown_signal();
    loop {
        if app.shutting_down() {
            // Stop accepting: the listening socket closes with this loop.
            return;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        let count = app.clients.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = ClientCount(app.clone());
        let config = app.config();
        let max = config.general.max_client_conn;
        if count > max.saturating_add(MAX_REFUSING) {
            app.metrics.refused("flood");
            over_limit_warning(
                &app,
                max,
                "closed at accept (too many already being refused)",
            );
            drop((stream, guard));
            continue;
        }
        let over_limit = count > max;
        let span = tracing::info_span!("client", peer = %peer);
        tokio::spawn(
            async move {
                let _guard = guard;
                let mut io = ClientIo::new(stream, peer, config.general.max_message_size);
                let login_timeout = if over_limit {
                    app.metrics.refused("max_client_conn");
                    config.general.client_login_timeout.0.min(REFUSAL_GRACE)
                } else {
                    config.general.client_login_timeout.0
                };
                let login =
                    match tokio::time::timeout(login_timeout, handshake(&app, &mut io, over_limit))
                        .await
                    {
                        Ok(Ok(Some(login))) => login,
                        Ok(Ok(None)) => return,
                        Ok(Err(e)) if over_limit => {
                            tracing::debug!(%peer, error = %e, "login refused");
                            over_limit_warning(&app, config.general.max_client_conn, "told 53300");
                            return;
                        }
                        Ok(Err(e @ super::FrontendError::ClosedDuringStartup)) => {
                            tracing::debug!(%peer, error = %e, "no login");
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "login refused");
                            return;
                        }
                        Err(_) if over_limit => return,
                        Err(_) => {
                            app.metrics.refused("login_timeout");
                            io.fatal(
                                "08P01",
                                "client_login_timeout: startup and authentication took too long",
                            )
                            .await;
                            tracing::info!("login timed out");
                            return;
                        }
                    };
                if login.admin {
                    tracing::info!(user = %login.user, "admin console login");
                    let key = login.cancel_key.0;
                    crate::admin::console::run(app.clone(), io).await;
                    app.cancels.unregister(key);
                    return;
                }
                let span =
                    tracing::info_span!("session", user = %login.user, database = %login.database);
                async move {
                    if let Some(session) = crate::session::Session::start(app, io, login).await {
                        session.run().await;
                    }
                }
                .instrument(span)
                .await;
            }
            .instrument(span),
        );
    }
}

/// One WARN per second at most while connections over `max_client_conn` arrive.
fn over_limit_warning(app: &App, max: usize, what: &str) {
    static LAST: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);
    let now = std::time::Instant::now();
    let mut last = LAST.lock();
    if last.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1)) {
        *last = Some(now);
        tracing::warn!(
            clients = app.clients.load(Ordering::Relaxed),
            max_client_conn = max,
            "connections over max_client_conn: {what}"
        );
    }
}
