//! Matching server responses to the messages that caused them.
//!
//! usher sometimes sends a server messages the client did not (a Parse for a statement the
//! client prepared on another server) and sometimes answers a client message itself (a Close of
//! a pooled statement). To keep the client's view exactly what a direct connection would give,
//! every response-producing message sent to the server gets an entry here, in order; each server
//! frame is matched against the front entry to decide whether it is forwarded or swallowed,
//! and answers usher produces itself are released only once everything before them has been.
//!
//! The rules follow the protocol: after an ErrorResponse in the extended protocol the server
//! skips everything up to the next Sync, so those entries are dropped (and statements they would
//! have prepared are reported as not prepared).

use std::collections::VecDeque;

use bytes::Bytes;

/// What a message sent (or answered locally) expects back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// ParseComplete. `injected`: usher's own, swallow it. `name`: global statement it prepares.
    Parse { injected: bool, name: Option<Bytes> },
    /// BindComplete.
    Bind,
    /// ParameterDescription then RowDescription/NoData.
    DescribeStatement,
    /// RowDescription/NoData.
    DescribePortal,
    /// Rows, then CommandComplete / EmptyQueryResponse / PortalSuspended.
    Execute,
    /// CloseComplete.
    Close,
    /// ReadyForQuery.
    Sync,
    /// Simple query: everything up to ReadyForQuery.
    Query,
    /// Function call: everything up to ReadyForQuery.
    FunctionCall,
    /// An answer usher gives itself, released in order.
    Local(Bytes),
    /// The client ended a COPY IN (CopyDone/CopyFail) before the server said it started one.
    CopyEnd,
    /// A simple query usher sent itself (a held-back BEGIN): its whole answer is swallowed.
    HiddenQuery,
    /// A simple query usher sent in place of an extended-protocol message to raise an error
    /// inside the client's transaction: its ErrorResponse is forwarded, its ReadyForQuery
    /// swallowed (the client gets one at its own Sync).
    InjectedError,
    /// A Sync usher sent itself to end a server's implicit transaction that only prepared
    /// statements (so the client's next statement may run on another shard): its
    /// ReadyForQuery is swallowed.
    HiddenSync,
}

/// What to do with one server frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it to the client.
    Forward,
    /// Drop it (it answers a message usher injected).
    Swallow,
}

/// The queue of responses still owed to the client.
#[derive(Debug, Default)]
pub struct Tracker {
    queue: VecDeque<Expect>,
    /// Local answers whose turn has come; the caller sends them after the current frame.
    pub ready: Vec<Bytes>,
    /// Global statement names whose Parse did not take effect on the server.
    pub unprepared: Vec<Bytes>,
    /// Extended-protocol messages were sent since the last Sync (the server is inside an
    /// implicit transaction and must not be released).
    pub unsynced: bool,
    /// The server is in COPY IN mode and the client has not ended it: Syncs are ignored by the
    /// server then, so they get no entry.
    copy_in: bool,
    /// ErrorResponses seen since the session last counted them.
    pub errors: u64,
    /// Something that executes (Execute, Query, a function call) was sent since the server
    /// was attached: its implicit or explicit transaction may have done work.
    pub executed: bool,
    /// The server reported an error in what preceded a hidden Sync: the client's messages
    /// up to its own Sync must be skipped, as the server would have skipped them.
    pub hidden_sync_failed: bool,
}

impl Tracker {
    /// True when no response is owed and nothing awaits a Sync.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.unsynced
    }

    /// Everything sent was answered (the server may still wait for a Sync).
    #[inline]
    pub fn answered(&self) -> bool {
        self.queue.is_empty()
    }

    /// Records a message sent to the server (or answered locally, for `Expect::Local`).
    pub fn push(&mut self, expect: Expect) {
        if self.copy_in && expect == Expect::Sync {
            return;
        }
        match expect {
            Expect::Query | Expect::FunctionCall | Expect::HiddenQuery | Expect::InjectedError => {
                self.unsynced = false;
                self.executed = true;
            }
            Expect::Execute => {
                self.unsynced = true;
                self.executed = true;
            }
            Expect::Sync | Expect::HiddenSync => self.unsynced = false,
            // Answered by usher: the server is not inside an implicit transaction because of it.
            Expect::Local(_) | Expect::CopyEnd => {}
            _ => self.unsynced = true,
        }
        self.queue.push_back(expect);
        self.release_local();
    }

    /// The client sent CopyDone or CopyFail.
    pub fn client_copy_end(&mut self) {
        if self.copy_in {
            self.copy_in = false;
        } else {
            self.queue.push_back(Expect::CopyEnd);
        }
    }

    /// The server started COPY IN: Syncs the client sent since the COPY began, up to its
    /// CopyDone/CopyFail, are ignored by the server and so get no answer.
    fn server_copy_in(&mut self) {
        let end = self.queue.iter().position(|e| *e == Expect::CopyEnd);
        let limit = end.unwrap_or(self.queue.len());
        let mut i = 1;
        let mut limit = limit;
        while i < limit {
            if self.queue[i] == Expect::Sync {
                self.queue.remove(i);
                limit -= 1;
            } else {
                i += 1;
            }
        }
        match end {
            Some(_) => {
                self.queue.remove(limit);
            }
            None => self.copy_in = true,
        }
    }

    /// Marks that an extended message without a response (Execute has one; Flush has none)
    /// was sent.
    pub fn note_unsynced(&mut self) {
        self.unsynced = true;
    }

    /// Decides what to do with a server frame of type `tag`.
    pub fn on_frame(&mut self, tag: u8) -> Decision {
        if self.queue.front() == Some(&Expect::HiddenQuery) && tag != b'A' && tag != b'S' {
            if tag == b'Z' {
                self.queue.pop_front();
                self.release_local();
            }
            return Decision::Swallow;
        }
        if self.queue.front() == Some(&Expect::InjectedError) {
            if tag == b'E' {
                self.errors += 1;
            }
            if tag == b'Z' {
                self.queue.pop_front();
                self.release_local();
                return Decision::Swallow;
            }
            return Decision::Forward;
        }
        let decision = match tag {
            b'N' | b'A' | b'S' => return Decision::Forward,
            b'E' => {
                self.errors += 1;
                match self.queue.front() {
                    None | Some(Expect::Query | Expect::FunctionCall | Expect::Sync) => {}
                    Some(_) => self.abort_until_sync(),
                }
                if self.queue.front() == Some(&Expect::HiddenSync) {
                    self.hidden_sync_failed = true;
                }
                Decision::Forward
            }
            b'G' => {
                self.server_copy_in();
                Decision::Forward
            }
            b'Z' => {
                self.copy_in = false;
                let mut decision = Decision::Forward;
                while let Some(e) = self.queue.pop_front() {
                    match e {
                        Expect::Sync | Expect::Query | Expect::FunctionCall => break,
                        Expect::HiddenSync => {
                            decision = Decision::Swallow;
                            break;
                        }
                        other => self.forget(other),
                    }
                }
                decision
            }
            _ => match (self.queue.front(), tag) {
                (Some(Expect::Parse { injected, .. }), b'1') => {
                    let d = if *injected {
                        Decision::Swallow
                    } else {
                        Decision::Forward
                    };
                    self.queue.pop_front();
                    d
                }
                (Some(Expect::Bind), b'2')
                | (Some(Expect::Close), b'3')
                | (Some(Expect::DescribeStatement | Expect::DescribePortal), b'T' | b'n')
                | (Some(Expect::Execute), b'C' | b'I' | b's') => {
                    self.queue.pop_front();
                    Decision::Forward
                }
                _ => Decision::Forward,
            },
        };
        self.release_local();
        decision
    }

    /// The server skips everything up to the next Sync after an error.
    fn abort_until_sync(&mut self) {
        while let Some(front) = self.queue.front() {
            if matches!(
                front,
                Expect::Sync | Expect::Query | Expect::FunctionCall | Expect::HiddenSync
            ) {
                break;
            }
            let e = self.queue.pop_front().expect("front exists");
            self.forget(e);
        }
    }

    fn forget(&mut self, e: Expect) {
        if let Expect::Parse {
            name: Some(name), ..
        } = e
        {
            self.unprepared.push(name);
        }
    }

    fn release_local(&mut self) {
        loop {
            match self.queue.front() {
                Some(Expect::Local(_)) => {
                    if let Some(Expect::Local(bytes)) = self.queue.pop_front() {
                        self.ready.push(bytes);
                    }
                }
                Some(Expect::CopyEnd) => {
                    self.queue.pop_front();
                }
                _ => return,
            }
        }
    }

    /// Forgets everything (the server connection is gone).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.unsynced = false;
        self.copy_in = false;
        self.hidden_sync_failed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    fn local(b: &'static [u8]) -> Expect {
        Expect::Local(Bytes::from_static(b))
    }

    #[test]
    fn injected_parse_is_swallowed_in_order() {
        let mut t = Tracker::default();
        t.push(Expect::Parse {
            injected: false,
            name: None,
        });
        t.push(Expect::Sync);
        t.push(Expect::Parse {
            injected: true,
            name: Some(Bytes::from_static(b"g")),
        });
        t.push(Expect::Bind);
        t.push(Expect::Execute);
        t.push(Expect::Sync);
        let seen: Vec<Decision> = b"1Z12DCZ".iter().map(|t2| t.on_frame(*t2)).collect();
        assert_eq!(
            seen,
            vec![Forward, Forward, Swallow, Forward, Forward, Forward, Forward]
        );
        assert!(t.is_idle());
        assert!(t.unprepared.is_empty());
    }

    #[test]
    fn local_answers_wait_their_turn() {
        let mut t = Tracker::default();
        t.push(Expect::Bind);
        t.push(local(b"3"));
        t.push(Expect::Sync);
        assert!(t.ready.is_empty());
        assert_eq!(t.on_frame(b'2'), Forward);
        assert_eq!(t.ready, vec![Bytes::from_static(b"3")]);
        t.ready.clear();
        assert_eq!(t.on_frame(b'Z'), Forward);
        assert!(t.is_idle());
        let mut idle = Tracker::default();
        idle.push(local(b"1"));
        assert_eq!(idle.ready.len(), 1);
    }

    #[test]
    fn error_skips_to_sync_and_reports_unprepared() {
        let mut t = Tracker::default();
        t.push(Expect::Bind);
        t.push(Expect::Parse {
            injected: false,
            name: Some(Bytes::from_static(b"g1")),
        });
        t.push(local(b"3"));
        t.push(Expect::Execute);
        t.push(Expect::Sync);
        assert_eq!(t.on_frame(b'E'), Forward);
        assert!(t.ready.is_empty(), "a skipped message gets no answer");
        assert_eq!(t.unprepared, vec![Bytes::from_static(b"g1")]);
        assert_eq!(t.on_frame(b'Z'), Forward);
        assert!(t.is_idle());
    }

    #[test]
    fn simple_query_errors_do_not_abort() {
        let mut t = Tracker::default();
        t.push(Expect::Query);
        for tag in b"TDCEN" {
            assert_eq!(t.on_frame(*tag), Forward);
        }
        assert!(!t.is_idle());
        t.on_frame(b'Z');
        assert!(t.is_idle());
    }

    #[test]
    fn syncs_during_copy_in_get_no_answer() {
        // tokio-postgres: Bind, Execute, Sync | CopyData, CopyDone, Sync | Close(local), Sync
        let mut t = Tracker::default();
        t.push(Expect::Bind);
        t.push(Expect::Execute);
        t.push(Expect::Sync);
        assert_eq!(t.on_frame(b'2'), Forward);
        assert_eq!(t.on_frame(b'G'), Forward);
        t.client_copy_end();
        t.push(Expect::Sync);
        t.push(local(b"3"));
        t.push(Expect::Sync);
        t.on_frame(b'C');
        t.on_frame(b'Z');
        assert_eq!(
            t.ready,
            vec![Bytes::from_static(b"3")],
            "CloseComplete follows the first ReadyForQuery"
        );
        t.on_frame(b'Z');
        assert!(t.is_idle());
        // Same, with the client's CopyDone pipelined before the server's CopyInResponse.
        let mut t = Tracker::default();
        t.push(Expect::Execute);
        t.push(Expect::Sync);
        t.client_copy_end();
        t.push(Expect::Sync);
        t.on_frame(b'G');
        t.on_frame(b'C');
        t.on_frame(b'Z');
        assert!(t.is_idle());
    }

    #[test]
    fn hidden_query_is_swallowed_whole() {
        let mut t = Tracker::default();
        t.push(Expect::HiddenQuery);
        t.push(Expect::Query);
        let got: Vec<Decision> = b"CZTDCZ".iter().map(|x| t.on_frame(*x)).collect();
        assert_eq!(
            got,
            vec![Swallow, Swallow, Forward, Forward, Forward, Forward]
        );
        assert!(t.is_idle());
    }

    #[test]
    fn hidden_sync_ends_a_preparing_trip_unseen() {
        let mut t = Tracker::default();
        t.push(Expect::Parse {
            injected: false,
            name: None,
        });
        t.push(Expect::DescribeStatement);
        assert!(!t.executed);
        t.push(Expect::HiddenSync);
        assert!(!t.is_idle());
        let got: Vec<Decision> = b"1tnZ".iter().map(|x| t.on_frame(*x)).collect();
        assert_eq!(got, vec![Forward, Forward, Forward, Swallow]);
        assert!(t.is_idle() && !t.hidden_sync_failed);
        // A failed Parse: the error reaches the client, the client's own messages up to its
        // Sync are to be skipped.
        t.push(Expect::Parse {
            injected: false,
            name: None,
        });
        t.push(Expect::DescribeStatement);
        t.push(Expect::HiddenSync);
        assert_eq!(t.on_frame(b'E'), Forward);
        assert!(t.hidden_sync_failed);
        assert_eq!(t.on_frame(b'Z'), Swallow);
        assert!(t.is_idle());
        t.push(Expect::Execute);
        assert!(t.executed);
    }

    #[test]
    fn unsynced_blocks_release() {
        let mut t = Tracker::default();
        t.push(Expect::Parse {
            injected: false,
            name: None,
        });
        t.on_frame(b'1');
        assert!(!t.is_idle());
        t.push(Expect::Sync);
        t.on_frame(b'Z');
        assert!(t.is_idle());
    }
}
