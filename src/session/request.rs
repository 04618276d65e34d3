//! A request: the messages a client pipelined up to its Sync (or a Flush, or one Query), cut
//! once off the receive buffer as one `Bytes` and sliced into frames without copying. Each
//! message's statement (its text, the statement a Bind names, its classification, literal
//! spans) is looked up at most once, when routing first asks, and carried with it: the plan
//! at a transaction's start, the write tracking and the shard check of a pinned transaction
//! all read the same [`Statement`].
//!
//! A request still missing its end (the client is mid-batch) is kept and extended with what
//! arrives next; once it ended, what follows is the next request.

use bytes::BytesMut;
use smallvec::SmallVec;

use super::memo::Memo;
use super::prepared::ClientStatements;
use crate::protocol::{client, peek_header, Frame, ProtocolError};
use crate::router::cache::QueryCache;
use crate::router::plan::{Batch, Statement};
use crate::router::shard::values::param_types;

/// A request larger than this is routed on what has arrived, without waiting for its end.
pub(super) const MAX_LOOKAHEAD: usize = 16 << 20;

/// What statement lookups read.
pub(super) struct Lookup<'a> {
    /// The client's prepared statements (a Bind's text).
    pub stmts: &'a ClientStatements,
    /// The session's classification memo.
    pub memo: &'a Memo,
    /// The process-wide classification cache behind it.
    pub cache: &'a QueryCache,
    /// Literal spans are wanted (sharded databases route by literal keys).
    pub spans: bool,
}

/// Client messages up to the end of a batch, and how far the session got through them. A
/// session keeps one and reuses it for each request (no allocation per request).
#[derive(Default)]
pub(super) struct Request {
    /// Inline up to eight messages: a simple Query, or Parse/Bind/Describe/Execute/Sync,
    /// costs no allocation.
    frames: SmallVec<[Frame; 8]>,
    /// One per frame once the first statement is looked up (empty until then: a database
    /// that routes without reading statements never pays for them).
    statements: Vec<Statement>,
    /// Which statements were looked up (as long as `statements`).
    filled: Vec<bool>,
    /// The next message to process.
    next: usize,
    /// The request ended (Sync, Flush, Terminate, a Query) or is too large to wait for.
    complete: bool,
    /// Bytes cut so far.
    bytes: usize,
}

impl Request {
    /// Cuts the next request off `buf` in place of this one; false when not even one whole
    /// message is there. A malformed header is an error only when it comes first (the
    /// messages before it are a request of their own, processed before the error is
    /// reported).
    pub fn start(&mut self, buf: &mut BytesMut, max: usize) -> Result<bool, ProtocolError> {
        if !self.frames.is_empty() {
            self.clear();
        }
        peek_header(buf, max)?;
        self.extend(buf, max);
        Ok(!self.frames.is_empty())
    }

    /// Forgets the messages (their bytes are released at once, so the receive buffer can
    /// reuse its memory) and keeps the capacity of a usual request.
    #[inline]
    pub fn clear(&mut self) {
        const KEEP: usize = 64;
        if self.frames.capacity() > KEEP {
            self.frames = SmallVec::new();
            self.statements = Vec::new();
            self.filled = Vec::new();
        } else {
            self.frames.clear();
            self.statements.clear();
            self.filled.clear();
        }
        self.next = 0;
        self.complete = false;
        self.bytes = 0;
    }

    /// Adds the whole messages now in `buf` until the request ends.
    pub fn extend(&mut self, buf: &mut BytesMut, max: usize) {
        if self.complete {
            return;
        }
        // First the extent of the whole messages to take, then one cut for all of them.
        let mut at = 0;
        let mut count = 0;
        let mut first = self.frames.is_empty();
        loop {
            let (tag, len) = match peek_header(buf.get(at..).unwrap_or_default(), max) {
                Ok(Some(h)) if buf.len() - at >= h.1 => h,
                Ok(_) => break,
                Err(_) => {
                    // Reported when it is cut as the next request's first message.
                    self.complete = true;
                    break;
                }
            };
            if tag == b'Q' && !first {
                self.complete = true;
                break;
            }
            at += len;
            count += 1;
            first = false;
            if matches!(tag, b'S' | b'H' | b'X' | b'Q') || self.bytes + at >= MAX_LOOKAHEAD {
                self.complete = true;
                break;
            }
        }
        if at == 0 {
            return;
        }
        let whole = buf.split_to(at).freeze();
        self.bytes += at;
        if count == 1 {
            // One message (a simple Query): the cut is the frame.
            let tag = whole.first().copied().unwrap_or_default();
            self.push(Frame { tag, raw: whole });
            return;
        }
        let mut start = 0;
        // The headers were checked above; read again, each frame within the cut.
        while let Ok(Some((tag, len))) = peek_header(whole.get(start..).unwrap_or_default(), max) {
            let end = start + len;
            if end > whole.len() {
                break;
            }
            self.push(Frame {
                tag,
                raw: whole.slice(start..end),
            });
            start = end;
        }
    }

    #[inline]
    fn push(&mut self, frame: Frame) {
        if !self.statements.is_empty() {
            self.statements.push(Statement {
                tag: frame.tag,
                ..Statement::default()
            });
            self.filled.push(false);
        }
        self.frames.push(frame);
    }

    /// Every message was processed.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.next >= self.frames.len()
    }

    /// The request ended (or is too large to wait for).
    #[inline]
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// How many messages it holds.
    #[inline]
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// The type of message `i`.
    #[inline]
    pub fn tag(&self, i: usize) -> Option<u8> {
        self.frames.get(i).map(|f| f.tag)
    }

    /// Index of the message to process next.
    #[inline]
    pub fn position(&self) -> usize {
        self.next
    }

    /// The message to process next.
    #[inline]
    pub fn current(&self) -> Option<&Frame> {
        self.frames.get(self.next)
    }

    /// Moves past `n` messages.
    #[inline]
    pub fn advance(&mut self, n: usize) {
        self.next = (self.next + n).min(self.frames.len());
    }

    /// The messages not processed yet, taken out of the request (it is then done).
    pub fn take_rest(&mut self) -> Vec<Frame> {
        let rest = self.frames.get(self.next..).unwrap_or_default().to_vec();
        self.next = self.frames.len();
        rest
    }

    /// The statement of message `i`, looked up on first ask.
    pub fn statement(&mut self, i: usize, lookup: &Lookup) -> Option<&Statement> {
        if self.statements.is_empty() {
            self.statements = self
                .frames
                .iter()
                .map(|f| Statement {
                    tag: f.tag,
                    ..Statement::default()
                })
                .collect();
            self.filled = vec![false; self.frames.len()];
        }
        if !*self.filled.get(i)? {
            let s = self.look_up(i, lookup);
            if let (Some(slot), Some(filled)) = (self.statements.get_mut(i), self.filled.get_mut(i))
            {
                *slot = s;
                *filled = true;
            }
        }
        self.statements.get(i)
    }

    /// The messages from the next one to the end, with their statements looked up when
    /// `lookup` is given; without it the statements may be missing (a plan for a database
    /// that neither splits nor shards reads none).
    pub fn batch(&mut self, lookup: Option<&Lookup>) -> Batch<'_> {
        if let Some(lookup) = lookup {
            for i in self.next..self.frames.len() {
                self.statement(i, lookup);
            }
        }
        Batch {
            statements: self.statements.get(self.next..).unwrap_or_default(),
            complete: self.complete,
        }
    }

    fn look_up(&self, i: usize, lookup: &Lookup) -> Statement {
        let Some(frame) = self.frames.get(i) else {
            return Statement::default();
        };
        let mut s = Statement {
            tag: frame.tag,
            ..Statement::default()
        };
        match frame.tag {
            b'Q' => s.sql = client::Query::new(frame).ok().map(|q| q.sql()),
            b'P' => {
                if let Ok(p) = client::Parse::new(frame) {
                    s.sql = Some(p.query());
                    s.types = param_types(&p.param_types());
                }
            }
            b'B' => {
                if let Ok(b) = client::Bind::new(frame) {
                    let name = b.statement();
                    // The unnamed statement is the last unnamed Parse before it in this request.
                    let here = name.is_empty().then(|| self.unnamed_before(i)).flatten();
                    match here {
                        Some(p) => {
                            s.sql = p.sql.clone();
                            s.types = p.types.clone();
                            s.class = p.class.clone();
                        }
                        None => {
                            if let Some(st) = lookup.stmts.statement(name) {
                                s.sql = Some(st.query.clone());
                                s.types = param_types(&st.param_types);
                            }
                        }
                    }
                    s.bind = Some(frame.body_bytes());
                }
            }
            b'D' | b'C' => {
                if let Ok(t) = client::Targeted::new(frame) {
                    s.of_statement = t.target == client::Target::Statement;
                    if s.of_statement && frame.tag == b'D' {
                        s.sql = lookup.stmts.query_of(t.name());
                    }
                }
            }
            _ => {}
        }
        if s.class.is_none() {
            if let Some(sql) = &s.sql {
                s.class = Some(if lookup.spans && matches!(frame.tag, b'Q' | b'P') {
                    lookup
                        .memo
                        .classify_with_spans(lookup.cache, sql, &mut s.spans)
                } else {
                    lookup.memo.classify(lookup.cache, sql)
                });
            }
        }
        s
    }

    /// The statement of the last unnamed Parse before message `i`, if looked up or parsable.
    fn unnamed_before(&self, i: usize) -> Option<Statement> {
        let j = (0..i).rev().find(|&j| {
            self.frames.get(j).is_some_and(|f| {
                f.tag == b'P' && client::Parse::new(f).is_ok_and(|p| p.name().is_empty())
            })
        })?;
        if self.filled.get(j) == Some(&true) {
            return self.statements.get(j).cloned();
        }
        let p = client::Parse::new(self.frames.get(j)?).ok()?;
        Some(Statement {
            tag: b'P',
            sql: Some(p.query()),
            types: param_types(&p.param_types()),
            ..Statement::default()
        })
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
