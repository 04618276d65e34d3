//! Protocol-level prepared statements in transaction mode.
//!
//! A client's named statement `s1` is known to servers under a global name derived from its
//! text and parameter types (`usher_<xxh3-128>`), so clients preparing the same text share one
//! server-side statement. When a client's Bind or Describe lands on a server that lacks the
//! statement, usher injects the Parse first and swallows its ParseComplete; a client's Close is
//! answered by usher and the server keeps the statement in its LRU (`max_prepared_statements`).
//! The client's unnamed statement is re-prepared too if another client replaced it in between.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::responses::{Expect, Tracker};
use crate::protocol::extended::{self, NameSpan};
use crate::protocol::{client, messages, Frame, ProtocolError};
use crate::server::ServerState;

/// A statement a client prepared.
#[derive(Debug)]
pub struct Statement {
    /// Name on the servers (empty for the unnamed statement).
    pub global: Bytes,
    /// Query text.
    pub query: Bytes,
    /// Parameter-type bytes of the Parse message (count + OIDs).
    pub param_types: Bytes,
}

/// The global name for a statement text and its parameter types.
pub fn global_name(query: &[u8], param_types: &[u8]) -> Bytes {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(query);
    h.update(&[0]);
    h.update(param_types);
    Bytes::from(format!("usher_{:032x}", h.digest128()))
}

/// One client's prepared statements.
#[derive(Debug, Default)]
pub struct ClientStatements {
    named: HashMap<Bytes, Arc<Statement>>,
    unnamed: Option<(u64, Arc<Statement>)>,
    unnamed_generation: u64,
}

impl ClientStatements {
    /// Forgets every statement (DEALLOCATE ALL / DISCARD ALL).
    pub fn clear(&mut self) {
        self.named.clear();
    }

    /// Forgets one statement by the client's name; true if it existed.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.named.remove(name).is_some()
    }

    /// The statement a Bind refers to by the client's name (empty = the unnamed statement).
    pub fn statement(&self, name: &[u8]) -> Option<Arc<Statement>> {
        if name.is_empty() {
            self.unnamed.as_ref().map(|(_, s)| s.clone())
        } else {
            self.named.get(name).cloned()
        }
    }

    /// The query text a Bind or Describe-statement body refers to (for routing).
    pub fn query_of(&self, name: &[u8]) -> Option<Bytes> {
        if name.is_empty() {
            self.unnamed.as_ref().map(|(_, s)| s.query.clone())
        } else {
            self.named.get(name).map(|s| s.query.clone())
        }
    }

    /// Records a named Parse without sending it anywhere: outside a transaction no server is
    /// needed until the statement is used, and each server gets it lazily at first Bind or
    /// Describe. (A client blocked in a synchronous prepare therefore never waits for a pool
    /// whose servers its own other connections hold.) Returns the global name.
    pub fn remember(&mut self, frame: &Frame) -> Result<Bytes, ProtocolError> {
        let parse = client::Parse::new(frame)?;
        let global = global_name(parse.query_bytes(), &parse.param_types());
        let (query, param_types) = parse.owned_query_and_types();
        self.named.insert(
            Bytes::copy_from_slice(parse.name()),
            Arc::new(Statement {
                global: global.clone(),
                query,
                param_types,
            }),
        );
        Ok(global)
    }

    /// Translates one extended-protocol client frame for the attached server, appending what
    /// to send to `out` and what it expects back to `tracker`. `client_id` identifies the client
    /// for unnamed-statement ownership.
    pub fn translate(
        &mut self,
        client_id: u64,
        frame: &Frame,
        server: &mut ServerState,
        tracker: &mut Tracker,
        out: &mut BytesMut,
    ) -> Result<(), ProtocolError> {
        match frame.tag {
            b'P' => {
                let parse = client::Parse::new(frame)?;
                if parse.name().is_empty() {
                    self.unnamed_generation += 1;
                    // One copy for both fields: the unnamed statement is replaced on every
                    // Parse of drivers that do not name their statements.
                    let (query, param_types) = parse.owned_query_and_types();
                    self.unnamed = Some((
                        self.unnamed_generation,
                        Arc::new(Statement {
                            global: Bytes::new(),
                            query,
                            param_types,
                        }),
                    ));
                    server.unnamed_owner = Some((client_id, self.unnamed_generation));
                    out.put_slice(&frame.raw);
                    tracker.push(Expect::Parse {
                        injected: false,
                        name: None,
                    });
                    return Ok(());
                }
                let global = self.remember(frame)?;
                if server.prepared.get(&global).is_some() {
                    tracker.push(Expect::Local(Bytes::from_static(messages::PARSE_COMPLETE)));
                } else {
                    extended::put_renamed(out, frame, parse.name_span(), &global);
                    server.remember_prepared(global.clone());
                    tracker.push(Expect::Parse {
                        injected: false,
                        name: Some(global),
                    });
                }
            }
            b'B' => {
                let span = client::Bind::new(frame)?.statement_span();
                self.forward_with_statement(client_id, frame, span, server, tracker, out);
                tracker.push(Expect::Bind);
            }
            b'D' => {
                let describe = client::Targeted::new(frame)?;
                if describe.target == client::Target::Statement {
                    let span = describe.name_span();
                    self.forward_with_statement(client_id, frame, span, server, tracker, out);
                    tracker.push(Expect::DescribeStatement);
                } else {
                    out.put_slice(&frame.raw);
                    tracker.push(Expect::DescribePortal);
                }
            }
            b'C' => {
                let close = client::Targeted::new(frame)?;
                if close.target == client::Target::Statement && !close.name().is_empty() {
                    self.named.remove(close.name());
                    tracker.push(Expect::Local(Bytes::from_static(messages::CLOSE_COMPLETE)));
                } else {
                    out.put_slice(&frame.raw);
                    tracker.push(Expect::Close);
                }
            }
            other => {
                return Err(ProtocolError::Violation(format!(
                    "message {:?} has no statement to translate",
                    other as char
                )))
            }
        }
        Ok(())
    }

    /// Forwards a Bind or Describe, making sure the statement it names exists on the server.
    fn forward_with_statement(
        &mut self,
        client_id: u64,
        frame: &Frame,
        span: NameSpan,
        server: &mut ServerState,
        tracker: &mut Tracker,
        out: &mut BytesMut,
    ) {
        let body = frame.body();
        if span.start == span.end {
            if let Some((generation, stmt)) = &self.unnamed {
                if server.unnamed_owner != Some((client_id, *generation)) {
                    out.put_slice(&extended::parse_message(
                        b"",
                        &stmt.query,
                        &stmt.param_types,
                    ));
                    tracker.push(Expect::Parse {
                        injected: true,
                        name: None,
                    });
                    server.unnamed_owner = Some((client_id, *generation));
                }
            }
            out.put_slice(&frame.raw);
            return;
        }
        let Some(stmt) = self.named.get(span.of(body)) else {
            // Unknown to usher: let the server answer with its own "does not exist" error.
            out.put_slice(&frame.raw);
            return;
        };
        if server.prepared.get(&stmt.global).is_none() {
            out.put_slice(&extended::parse_message(
                &stmt.global,
                &stmt.query,
                &stmt.param_types,
            ));
            server.remember_prepared(stmt.global.clone());
            tracker.push(Expect::Parse {
                injected: true,
                name: Some(stmt.global.clone()),
            });
        }
        extended::put_renamed(out, frame, span, &stmt.global);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    fn state() -> ServerState {
        ServerState {
            prepared: lru::LruCache::new(NonZeroUsize::new(2).unwrap()),
            ..ServerState::default()
        }
    }

    #[test]
    fn lazily_prepares_on_a_second_server() {
        let mut stmts = ClientStatements::default();
        let (mut a, mut b) = (state(), state());
        let mut t = Tracker::default();
        let mut out = BytesMut::new();
        let parse = Frame::new(b'P', b"s1\0SELECT 1\0\0\0");
        stmts
            .translate(1, &parse, &mut a, &mut t, &mut out)
            .unwrap();
        assert!(out.windows(6).any(|w| w == b"usher_"));
        assert_eq!(a.prepared.len(), 1);
        out.clear();
        let bind = Frame::new(b'B', b"\0s1\0\0\0\0\0\0\0");
        stmts.translate(1, &bind, &mut b, &mut t, &mut out).unwrap();
        assert_eq!(out[0], b'P', "injected Parse before the Bind");
        assert_eq!(b.prepared.len(), 1);
        out.clear();
        stmts.translate(1, &bind, &mut b, &mut t, &mut out).unwrap();
        assert_eq!(out[0], b'B', "no second Parse");
    }

    #[test]
    fn close_is_local_and_unknown_passes_through() {
        let mut stmts = ClientStatements::default();
        let mut s = state();
        let mut t = Tracker::default();
        let mut out = BytesMut::new();
        stmts
            .translate(1, &Frame::new(b'C', b"Sx\0"), &mut s, &mut t, &mut out)
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(t.ready, vec![Bytes::from_static(messages::CLOSE_COMPLETE)]);
        stmts
            .translate(
                1,
                &Frame::new(b'B', b"\0nope\0\0\0\0\0\0\0"),
                &mut s,
                &mut t,
                &mut out,
            )
            .unwrap();
        assert_eq!(&out[5..10], b"\0nope");
    }

    #[test]
    fn eviction_queues_close() {
        let mut s = state();
        for n in [&b"a"[..], b"b", b"c"] {
            s.remember_prepared(Bytes::copy_from_slice(n));
        }
        assert_eq!(s.to_close, vec![Bytes::from_static(b"a")]);
    }
}
