//! `COPY table TO STDOUT` across shards (see `router::fanout_copy`): the statement runs on
//! every shard at once and the client gets one COPY. The first CopyOutResponse is the
//! client's; CopyData rows are forwarded as the shards send them (the bytes as sent, each
//! message one row); a CSV or text header line goes out once, from the first shard to send
//! one; in binary, the file header goes out once before any row and the trailer once after
//! the last; then one CopyDone and `COPY n` with every shard's rows. An error on any shard
//! is the client's error and the other shards are cancelled.

use bytes::Bytes;

use super::{end_or_aside, lost, unexpected, Part};
use crate::protocol::{messages, server, Frame};
use crate::router::fanout::Merge;
use crate::router::fanout_copy::CopyOut;
use crate::router::plan::Fanout;
use crate::session::{Flow, Session, SessionError};

/// The binary COPY file header: signature, flags, header extension length.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY trailer: a field count of -1.
const BINARY_TRAILER: &[u8] = &[0xff, 0xff];

impl Session {
    /// Runs the COPY TO in `frames` on every shard and streams one COPY to the client.
    pub(super) async fn copy_out(
        &mut self,
        plan: Fanout,
        copy: CopyOut,
        frames: Vec<Frame>,
    ) -> Result<Flow, SessionError> {
        let batch = match super::batch::build(&frames, &Merge::default(), &self.stmts) {
            Ok(b) => b,
            Err((code, message)) => {
                self.answer_fanout_error(code, &message);
                return Ok(Flow::Continue);
            }
        };
        let shards: Vec<usize> = (0..self.db.shards.len()).collect();
        let Some(mut parts) = self
            .checkout_parts(
                &shards,
                plan.primary,
                plan.split,
                crate::stats::RouteOutcome::Fanout,
            )
            .await?
        else {
            return Ok(Flow::Continue);
        };
        let result = self.stream_copy(&mut parts, &batch, copy).await;
        self.release_parts(parts);
        result?;
        Ok(Flow::Continue)
    }

    async fn stream_copy(
        &mut self,
        parts: &mut [Part],
        batch: &super::batch::ShardBatch,
        copy: CopyOut,
    ) -> Result<(), SessionError> {
        let mut error: Option<Bytes> = None;
        let deadline = self.fanout_deadline();
        for (i, p) in parts.iter_mut().enumerate() {
            if let Err(e) = p.lease.conn().write(&batch.bytes).await {
                error.get_or_insert_with(|| lost(i, &e.to_string()));
                p.broken();
            }
        }
        // Per shard: its first CopyData is still to come (the header line or file header).
        let mut first = vec![true; parts.len()];
        let mut header_sent = false;
        let mut response_sent = false;
        let mut header_frames = 0usize;
        let mut parses = 0usize;
        let mut rows: u64 = 0;
        loop {
            for (i, p) in parts.iter_mut().enumerate() {
                while !p.ready {
                    let Some(frame) = p.next_frame(i, &mut error) else {
                        break;
                    };
                    match frame.tag {
                        // ParseComplete, BindComplete (extended protocol): once.
                        b'1' | b'2' if p.header_seen < batch.header_frames => {
                            p.header_seen += 1;
                            if p.header_seen > header_frames {
                                header_frames += 1;
                                if frame.tag == b'1' {
                                    parses += 1;
                                    // A Parse usher added: its answer is not the client's.
                                    if batch.injected.get(parses - 1).copied().unwrap_or(false) {
                                        continue;
                                    }
                                }
                                self.client_out.push(frame.raw);
                            }
                        }
                        b'H' => {
                            if !response_sent && error.is_none() {
                                response_sent = true;
                                self.client_out.push(frame.raw);
                                if copy.binary {
                                    self.client_out.push(messages::copy_data(BINARY_HEADER));
                                }
                            }
                        }
                        b'd' if error.is_some() => {}
                        b'd' => {
                            let is_first = first
                                .get_mut(i)
                                .is_some_and(|f| std::mem::replace(f, false));
                            let mut body = frame.body();
                            if copy.binary {
                                if is_first {
                                    let Some(rest) = body.strip_prefix(BINARY_HEADER) else {
                                        error.get_or_insert_with(|| {
                                            lost(i, "a binary COPY without its file header")
                                        });
                                        continue;
                                    };
                                    body = rest;
                                }
                                if body.is_empty() || body == BINARY_TRAILER {
                                    continue;
                                }
                                self.client_out.push(messages::copy_data(body));
                            } else if is_first && copy.header {
                                if !std::mem::replace(&mut header_sent, true) {
                                    self.client_out.push(frame.raw);
                                }
                            } else {
                                self.client_out.push(frame.raw);
                            }
                        }
                        b'c' => {}
                        b'C' => {
                            p.rows_done = true;
                            match server::command_tag(frame.body())
                                .ok()
                                .and_then(server::tag_count)
                            {
                                Some((_, n)) => rows = rows.saturating_add(n),
                                None => {
                                    error.get_or_insert_with(|| {
                                        lost(i, "a COPY tag without a row count")
                                    });
                                }
                            }
                        }
                        _ => {
                            if let Some(f) =
                                end_or_aside(&mut self.client_out, p, frame, &mut error, true)
                            {
                                unexpected(p, i, f.tag, &mut error, "a COPY");
                            }
                        }
                    }
                }
            }
            if error.is_some() {
                self.cancel_running(parts);
            }
            if parts.iter().all(|p| p.ready) {
                break;
            }
            self.flush_client().await?;
            self.read_some(parts, &mut error, deadline).await;
        }
        if error.is_none() {
            if copy.binary {
                self.client_out.push(messages::copy_data(BINARY_TRAILER));
            }
            self.client_out
                .push(Bytes::from_static(messages::COPY_DONE));
        }
        let tag = format!("COPY {rows}");
        self.end_answer(error, Some(tag.as_bytes())).await
    }
}
