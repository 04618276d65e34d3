//! Transparent retry of reads: while nothing of a read transaction's answer has reached the
//! client, the client frames it sent are kept (as cheap `Bytes` handles) and the server's answer
//! is held until it is whole; if its server fails (connection lost, or a FATAL such as an
//! administrator shutdown), the server is banned and the same frames are replayed on another
//! replica or the primary.

use super::{Session, SessionError};
use crate::protocol::server;
use crate::protocol::Frame;
use crate::router::plan::Run;

/// Frames kept for replay beyond this many bytes make the transaction non-retryable.
const MAX_REPLAY_BYTES: usize = 1 << 20;

/// A replayable read's answer is held back from the client up to this many bytes; a larger
/// one streams and is no longer replayable.
const MAX_HELD_BYTES: usize = 256 << 10;

/// What [`Session::held_answer`] decided about the server's bytes.
pub(super) enum Held {
    /// Relay them to the client now.
    Relay,
    /// Read on: the answer is not whole yet.
    Wait,
    /// The server sent a FATAL before the answer reached the client: replay elsewhere.
    Fatal,
}

impl Session {
    /// Starts recording a read transaction's frames (called right after attaching).
    pub(super) fn start_replay(&mut self) {
        self.replay = self.route.retryable.then(Vec::new);
        self.replay_bytes = 0;
        self.replay_mark = self.client_out.len();
    }

    /// Keeps `frame` for a possible replay.
    pub(super) fn record(&mut self, frame: &Frame) {
        if self.client_out.len() > self.replay_mark {
            // usher already answered part of this transaction itself: a replay would repeat it.
            self.replay = None;
        }
        if let Some(frames) = &mut self.replay {
            self.replay_bytes += frame.raw.len();
            if self.replay_bytes > MAX_REPLAY_BYTES {
                self.replay = None;
            } else {
                frames.push(frame.clone());
            }
        }
    }

    /// What to do with what the server sent for a read that can still be replayed. Its answer
    /// is held until it is whole (up to [`MAX_HELD_BYTES`]): a server shutting down flushes
    /// the rows it had buffered and then its FATAL, and rows relayed before the FATAL would
    /// make the read impossible to replay.
    pub(super) fn held_answer(&mut self) -> Held {
        if self.replay.is_none() || self.tracker.unsynced {
            // Not replayable, or the client asked for answers without a Sync (Flush): no
            // ReadyForQuery is coming to end the hold.
            return Held::Relay;
        }
        let max = self.io.max_message;
        let Some(lease) = self.txn.lease() else {
            return Held::Relay;
        };
        let rbuf = &lease.conn().rbuf;
        let mut at = 0;
        while let Some(rest) = rbuf.get(at..) {
            match server::frame_at(rest, max) {
                Ok(Some(f)) => match f.tag {
                    b'E' if server::is_fatal(&server::error_fields(f.body)) => return Held::Fatal,
                    // The answer is whole, or the server waits for the client (COPY FROM).
                    b'Z' | b'G' | b'W' => return Held::Relay,
                    _ => at += f.total,
                },
                // A frame not all there yet: wait for it unless the answer is already large.
                Ok(None) if rbuf.len() < MAX_HELD_BYTES => return Held::Wait,
                // Large answers stream; a malformed frame is reported by the relay.
                Ok(None) | Err(_) => return Held::Relay,
            }
        }
        Held::Relay
    }

    /// Replays the current read on another server after its server failed. Returns false when
    /// the read cannot be retried (something already reached the client, or no other server).
    pub(super) async fn retry_read(&mut self, why: &str) -> Result<bool, SessionError> {
        let Some(frames) = self.replay.take() else {
            return Ok(false);
        };
        if frames.is_empty() {
            return Ok(false);
        }
        let config = self.app.config();
        let topology = self.app.topology();
        if let Some(server) = topology
            .databases
            .get(&self.login.database)
            .and_then(|s| s.get(self.route.attached_shard))
            .and_then(|s| s.servers.get(self.route.attached_server))
        {
            server.ban(config.general.ban_time.0, why);
        }
        tracing::warn!(
            reason = why,
            "server failed before answering a read; retrying it on another server"
        );
        self.route.exclude.push(self.route.attached_server);
        // The failed server stays attached until another one is had: when none is, what it
        // said last (its FATAL) is relayed to the client as is.
        let failed = std::mem::replace(&mut self.txn, super::txn::Txn::Idle);
        let tracker = std::mem::take(&mut self.tracker);
        let (pass, status) = (self.pass.take(), self.txn_status);
        self.txn_status = b'I';
        // Only a read is retried: another replica (or the primary as a fallback) takes it.
        let run = Run {
            shard: self.route.attached_shard,
            primary: false,
            prepare_only: false,
            set_role: None,
            writes: false,
            track_writes: false,
            split: true,
            sharded: self.sharded,
        };
        if let Err(message) = self.attach(run).await {
            tracing::warn!(reason = why, error = %message, "no other server can take the read");
            self.txn = failed;
            self.tracker = tracker;
            self.pass = pass;
            self.txn_status = status;
            return Ok(false);
        }
        // What the failed server's transaction stood for carries over (a BEGIN held while
        // it prepared statements, the replica's read-only rewrite).
        if let (super::txn::Txn::Attached(old), super::txn::Txn::Attached(new)) =
            (failed, &mut self.txn)
        {
            new.held = old.held;
            new.rewrite_read_only = old.rewrite_read_only;
        }
        self.start_replay();
        for frame in frames {
            self.record(&frame);
            self.forward(&frame)?;
        }
        let out = self.server_out.split().freeze();
        if let Some(lease) = self.txn.lease() {
            lease.conn().write(&out).await?;
        }
        Ok(true)
    }
}
