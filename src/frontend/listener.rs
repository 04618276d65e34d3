//! The accept loop: one task per client, counted against `max_client_conn`. A client over the
//! limit still gets a proper FATAL 53300 after its startup packet instead of a dropped socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::Instrument;

use super::{handshake, ClientIo};
use crate::app::App;

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
        let span = tracing::info_span!("client", peer = %peer);
        tokio::spawn(
            async move {
                let _guard = guard;
                let config = app.config();
                let over_limit = count > config.general.max_client_conn;
                let mut io = ClientIo::new(stream, peer, config.general.max_message_size);
                let login_timeout = config.general.client_login_timeout.0;
                let login =
                    match tokio::time::timeout(login_timeout, handshake(&app, &mut io, over_limit))
                        .await
                    {
                        Ok(Ok(Some(login))) => login,
                        Ok(Ok(None)) => return,
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "login refused");
                            return;
                        }
                        Err(_) => {
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
