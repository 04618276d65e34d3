//! Server-to-client relay: scans the server's receive buffer frame header by frame header,
//! forwards runs of frames as one zero-copy slice, swallows answers to injected messages, and
//! streams frames larger than what has arrived so far without waiting for their end.

use bytes::{Buf, Bytes};

use super::params::ClientParams;
use super::responses::{Decision, Tracker};
use crate::protocol::frame::peek_header;
use crate::protocol::server;
use crate::server::{ServerConn, ServerError};

/// A server frame partly passed through: how much of it remains and whether it is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    /// Bytes of the frame not yet seen.
    pub remaining: usize,
    /// Forward (true) or swallow (false).
    pub forward: bool,
}

/// Changes made to server frames on their way to the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewrite {
    /// Read-only errors (25006) name the aggressive strategy.
    pub read_only: bool,
    /// An idle ReadyForQuery is shown as 'T': the client's transaction is open in usher (its
    /// BEGIN held back) while this server only prepared statements for it.
    pub idle_as_in_transaction: bool,
}

/// The ReadyForQuery frames one scan forwarded to the client: each ends a round trip, and
/// each showing the client an idle status ends a transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Answered {
    /// ReadyForQuery frames forwarded.
    pub ready: u32,
    /// Of those, how many told the client it is outside a transaction block.
    pub idle: u32,
}

/// Largest server frame accepted (Postgres never sends one over 1 GB + header).
const MAX_SERVER_FRAME: usize = (1 << 30) + 64;

/// Moves what is in `conn.rbuf` towards the client (`out`), updating the tracker, the
/// transaction status and the parameters. Returns the ReadyForQuery frames it forwarded.
pub fn scan(
    conn: &mut ServerConn,
    tracker: &mut Tracker,
    params: &mut ClientParams,
    pass: &mut Option<Pass>,
    out: &mut Vec<Bytes>,
    txn_status: &mut u8,
    rewrite: Rewrite,
) -> Result<Answered, ServerError> {
    let mut run = 0usize;
    let mut answered = Answered::default();
    loop {
        if let Some(p) = pass {
            let n = p.remaining.min(conn.rbuf.len() - run);
            if n == 0 {
                break;
            }
            if p.forward {
                run += n;
            } else {
                flush_run(&mut conn.rbuf, &mut run, out);
                conn.rbuf.advance(n);
            }
            p.remaining -= n;
            if p.remaining == 0 {
                *pass = None;
            }
            continue;
        }
        let at = conn.rbuf.get(run..).unwrap_or_default();
        let header = peek_header(at, MAX_SERVER_FRAME).map_err(|e| conn.protocol(e.to_string()))?;
        let Some((tag, total)) = header else { break };
        let available = at.len();
        let mut shown_idle = false;
        if matches!(tag, b'E' | b'Z' | b'S') && (tag != b'E' || rewrite.read_only) {
            // The header was checked above: the body is the rest of the frame, once whole.
            let Some(body) = at.get(5..total) else {
                break;
            };
            match tag {
                b'E' => {
                    let fields = server::error_fields(body);
                    if fields.code == "25006" {
                        tracker.on_frame(tag);
                        flush_run(&mut conn.rbuf, &mut run, out);
                        conn.rbuf.advance(total);
                        out.push(super::aggressive::read_only_error(&fields.message));
                        continue;
                    }
                }
                b'Z' => {
                    *txn_status =
                        server::ready_status(body).map_err(|e| conn.protocol(e.to_string()))?;
                    let shown = if rewrite.idle_as_in_transaction && *txn_status == b'I' {
                        server::set_ready_status(
                            conn.rbuf.get_mut(run..).unwrap_or_default(),
                            b'T',
                        );
                        b'T'
                    } else {
                        *txn_status
                    };
                    shown_idle = shown == b'I';
                }
                _ => {
                    if let Ok((name, value)) = server::parameter_status(body) {
                        params.on_report(&name, &value, &mut conn.state);
                    }
                }
            }
        }
        let decision = tracker.on_frame(tag);
        tracing::trace!(tag = %(tag as char), len = total, ?decision, "server frame");
        let take = total.min(available);
        if tag == b'Z' && decision == Decision::Forward {
            // Whole (checked above) and not yet passed: the status byte as the client sees it.
            answered.ready += 1;
            answered.idle += u32::from(shown_idle);
        }
        match decision {
            Decision::Forward => run += take,
            Decision::Swallow => {
                flush_run(&mut conn.rbuf, &mut run, out);
                conn.rbuf.advance(take);
            }
        }
        if take < total {
            *pass = Some(Pass {
                remaining: total - take,
                forward: decision == Decision::Forward,
            });
        }
        if !tracker.ready.is_empty() {
            flush_run(&mut conn.rbuf, &mut run, out);
            out.append(&mut tracker.ready);
        }
    }
    flush_run(&mut conn.rbuf, &mut run, out);
    Ok(answered)
}

fn flush_run(buf: &mut bytes::BytesMut, run: &mut usize, out: &mut Vec<Bytes>) {
    if *run > 0 {
        out.push(buf.split_to(*run).freeze());
        *run = 0;
    }
}
