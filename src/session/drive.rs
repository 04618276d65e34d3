//! The session loop: waits for the client, its server or a timer, and hands what arrived to
//! the request and release steps. Client bytes are cut into requests (see [`request`]), each
//! processed message by message; a request that must wait (the rest of a sharded batch, or
//! the server's answer to what is in flight) is kept and resumed.

use super::{Session, SessionError};
use crate::config::PoolMode;
use crate::frontend::FrontendError;

/// How a step of the loop ended.
pub(super) enum Flow {
    Continue,
    Stop,
    /// Process the request's current message later: when more client data arrived (its batch
    /// is incomplete) or, with a server attached, once the server answered what is in flight.
    Wait,
}

pub(super) enum Event {
    /// A graceful shutdown started (checked at the top of the loop).
    Shutdown,
    /// The timeout [`Session::next_timeout`] named fired.
    Timeout,
    Client(std::io::Result<usize>),
    Server(Result<usize, crate::server::ServerError>),
}

impl Session {
    pub(super) async fn main_loop(&mut self) -> Result<(), SessionError> {
        loop {
            if self.app.shutting_down() && self.idle_for_shutdown() {
                self.io
                    .fatal(
                        "57P01",
                        "terminating connection due to administrator command (usher is shutting down)",
                    )
                    .await;
                return Ok(());
            }
            self.update_busy();
            let timeout = self.next_timeout();
            let armed = timeout.is_some();
            let event = {
                let Session { io, txn, info, .. } = self;
                // Never resolves when no timeout is set: no timer is armed.
                let timer = async {
                    match timeout {
                        Some((at, _)) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                match txn.lease() {
                    Some(lease) if self.deferred => tokio::select! {
                        r = lease.conn().fill() => Event::Server(r),
                        _ = timer, if armed => Event::Timeout,
                    },
                    // Mid-transaction a shutdown waits for the transaction: no need to listen.
                    Some(lease) if self.mode == PoolMode::Transaction => {
                        let conn = lease.conn();
                        tokio::select! {
                            r = conn.fill() => Event::Server(r),
                            r = io.fill() => Event::Client(r),
                            _ = timer, if armed => Event::Timeout,
                        }
                    }
                    Some(lease) => {
                        let conn = lease.conn();
                        tokio::select! {
                            r = conn.fill() => Event::Server(r),
                            r = io.fill() => Event::Client(r),
                            _ = info.wake.notified() => Event::Shutdown,
                            _ = timer, if armed => Event::Timeout,
                        }
                    }
                    None => tokio::select! {
                        r = io.fill() => Event::Client(r),
                        _ = info.wake.notified() => Event::Shutdown,
                        _ = timer, if armed => Event::Timeout,
                    },
                }
            };
            if self.timeouts.is_some() && matches!(event, Event::Client(_) | Event::Server(Ok(_))) {
                self.last_activity = std::time::Instant::now();
            }
            match event {
                Event::Shutdown => continue,
                Event::Timeout => {
                    if let Some((_, kind)) = timeout {
                        Box::pin(self.time_out(kind)).await;
                    }
                    return Ok(());
                }
                Event::Client(Ok(0)) => return Ok(()),
                Event::Client(Ok(n)) => {
                    self.stats.received.inc_by(n as u64);
                    if let Flow::Stop = self.on_client_data().await? {
                        return Ok(());
                    }
                }
                Event::Client(Err(e)) => return Err(FrontendError::Io(e).into()),
                Event::Server(Ok(_)) => {
                    self.on_server_data().await?;
                    if self.deferred && (!self.txn.is_attached() || self.tracker.is_idle()) {
                        self.deferred = false;
                        if let Flow::Stop = self.on_client_data().await? {
                            return Ok(());
                        }
                    }
                }
                Event::Server(Err(e)) => {
                    if Box::pin(self.retry_read(&e.to_string())).await? {
                        continue;
                    }
                    self.tracker.clear();
                    return Err(e.into());
                }
            }
        }
    }

    /// Processes every whole request the client sent, then sends the batch to the server.
    pub(super) async fn on_client_data(&mut self) -> Result<Flow, SessionError> {
        let max = self.io.max_message;
        loop {
            // The session's one request: resumed if it waits, else the next one cut.
            let mut request = self.request.take().unwrap_or_default();
            if request.is_done() {
                match request.start(&mut self.io.rbuf, max) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.request = Some(request);
                        break;
                    }
                    Err(e) => {
                        self.io
                            .fatal("08P01", &format!("invalid message: {e}"))
                            .await;
                        return Err(e.into());
                    }
                }
            } else {
                request.extend(&mut self.io.rbuf, max);
            }
            // Its messages in order, until it is done or must wait.
            let mut flow = Ok(Flow::Continue);
            while let Some(frame) = request.current() {
                let step = if self.needs_async(&request, frame) {
                    let frame = frame.clone();
                    self.on_client_frame(&mut request, frame).await
                } else {
                    // Most messages of a transaction on a server: no future to build, and
                    // the message is read where it lies.
                    self.on_attached_frame(&mut request)
                };
                match step {
                    Ok(Flow::Continue) => request.advance(1),
                    other => {
                        flow = other;
                        break;
                    }
                }
            }
            if request.is_done() {
                request.clear();
            }
            self.request = Some(request);
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => return Ok(Flow::Stop),
                Ok(Flow::Wait) => {
                    self.deferred = self.txn.is_attached();
                    break;
                }
                Err(SessionError::Client(FrontendError::Protocol(e))) => {
                    self.io
                        .fatal("08P01", &format!("invalid message: {e}"))
                        .await;
                    return Err(e.into());
                }
                Err(e) => return Err(e),
            }
        }
        if !self.server_out.is_empty() {
            let out = self.server_out.split().freeze();
            if let Some(lease) = self.txn.lease() {
                let now = std::time::Instant::now();
                self.round_start.get_or_insert(now);
                self.xact_start.get_or_insert(now);
                lease.conn().write(&out).await?;
            }
        }
        self.flush_client().await?;
        self.maybe_release().await;
        Ok(Flow::Continue)
    }
}
