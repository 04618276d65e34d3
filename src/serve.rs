//! Orchestration: a usher process is its [`App`] plus the tasks started around it (accept
//! loop, HTTP endpoint, pool maintenance, server monitor, stats averages). This sits on top
//! of every layer; nothing below imports it.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::App;

/// Aborts a background task when dropped, so dropping `serve` stops everything it started.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves clients on `listener` until the future is dropped; also runs pool maintenance and
/// the server monitor (roles, lag), which stop with it.
pub async fn serve(app: Arc<App>, listener: TcpListener) {
    serve_with(app, listener, None).await
}

/// Like [`serve`], with the HTTP endpoint for metrics and health on `metrics` too.
pub async fn serve_with(app: Arc<App>, listener: TcpListener, metrics: Option<TcpListener>) {
    let _http =
        metrics.map(|l| AbortOnDrop(tokio::spawn(crate::admin::http::serve(app.clone(), l))));
    let _maintenance = AbortOnDrop(tokio::spawn(crate::pool::maintenance::run(
        app.pools.clone(),
        Duration::from_secs(1),
    )));
    let _monitor = AbortOnDrop(tokio::spawn(crate::router::monitor::run(app.clone())));
    let _recovery = AbortOnDrop(tokio::spawn(crate::twophase::recover::run(app.clone())));
    let ticker = app.clone();
    let _averages = AbortOnDrop(tokio::spawn(async move {
        let mut every = tokio::time::interval(crate::stats::STATS_PERIOD);
        loop {
            every.tick().await;
            ticker.metrics.tick_averages();
        }
    }));
    crate::frontend::listener::accept_loop(app, listener).await;
}
