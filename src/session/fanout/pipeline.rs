//! Running a pipeline whose statements belong to different shards (psycopg's
//! `executemany`, any driver's pipeline mode) as one database runs it: one implicit
//! transaction, all or nothing, answered in the order the client sent the statements.
//!
//! Each segment (the messages up to one Execute, see `router::plan_pipeline`) goes to its
//! shard; every shard concerned gets BEGIN, its segments in order and a Sync, all shards at
//! once. Statements are sent as the unnamed one (usher keeps clients' named statements and
//! adds a Parse where a shard lacks the statement). The answers are held until every shard
//! reached its Sync, then relayed segment by segment in the client's order: up to the first
//! error in that order, which is the client's error, after which every shard rolls back, as
//! Postgres skips the rest of a failed pipeline. Without an error the shards commit: with
//! two-phase commit when more than one of them wrote, one-phase otherwise.

use bytes::{Bytes, BytesMut};

use super::control::rollback;
use super::{lost, unexpected, Part};
use crate::error::Failure;
use crate::protocol::{client, extended, messages, Frame};
use crate::router::plan::Pipeline;
use crate::session::prepared::ClientStatements;
use crate::session::{Flow, Session, SessionError};

/// Answers held beyond this many bytes fail the pipeline (54000) instead of growing usher's
/// memory without bound.
const MAX_HELD: usize = 64 << 20;

/// What each shard is sent, and which ParseCompletes are usher's own.
pub(super) struct Streams {
    /// The bytes for each shard (in `Pipeline::shards` order), BEGIN and Sync included.
    pub bytes: Vec<Bytes>,
    /// For each segment, in order: for each Parse sent in it, whether usher added it.
    pub injected: Vec<Vec<bool>>,
}

/// Why the pipeline cannot run: an error for the client (SQLSTATE, message).
type Refusal = (&'static str, String);

/// The text each shard runs for a client's statement text, where they differ: clock calls
/// and clock defaults pinned to the pipeline's one time.
#[derive(Default)]
pub(super) struct Texts(std::collections::HashMap<Bytes, Bytes>);

impl Texts {
    fn of<'a>(&'a self, query: &'a Bytes) -> &'a [u8] {
        self.0.get(query).unwrap_or(query)
    }
}

/// Cuts `frames` into each shard's messages.
///
/// With `begin` each shard's messages start with BEGIN (the pipeline's own transaction);
/// without, they run in the transaction the shard is in (one across shards).
pub(super) fn streams(
    frames: &[Frame],
    plan: &Pipeline,
    shards: &[usize],
    stmts: &ClientStatements,
    texts: &Texts,
    begin: bool,
) -> Result<Streams, Refusal> {
    let protocol = |e: crate::protocol::ProtocolError| ("08P01", format!("usher: {e}"));
    if let Some(statements) = &plan.statements {
        return Ok(query_streams(statements, plan, shards, texts, begin));
    }
    let mut out: Vec<BytesMut> = shards
        .iter()
        .map(|_| {
            let mut b = BytesMut::new();
            if begin {
                messages::query(&mut b, "BEGIN");
            }
            b
        })
        .collect();
    // Which client statement each shard's unnamed statement holds now.
    let mut unnamed: Vec<Option<Vec<u8>>> = vec![None; shards.len()];
    // Statements parsed in this pipeline: name -> (query, parameter types).
    let mut parsed: Vec<(Vec<u8>, Bytes, Bytes)> = Vec::new();
    let mut injected: Vec<Vec<bool>> = vec![Vec::new(); plan.segments.len()];
    let last = plan.segments.len().saturating_sub(1);
    let mut segment = 0usize;
    let mut portal: Option<Vec<u8>> = None;
    for f in frames {
        let k = segment.min(last);
        let shard = plan.segments.get(k).copied().unwrap_or_default();
        let Some(at) = shards.iter().position(|s| *s == shard) else {
            return Err((
                "XX000",
                "usher: a pipeline segment without its shard".into(),
            ));
        };
        let (Some(buf), Some(held), Some(flags)) =
            (out.get_mut(at), unnamed.get_mut(at), injected.get_mut(k))
        else {
            return Err((
                "XX000",
                "usher: a pipeline segment without its shard".into(),
            ));
        };
        match f.tag {
            b'P' => {
                let p = client::Parse::new(f).map_err(protocol)?;
                let (query, types) = p.owned_query_and_types();
                buf.extend_from_slice(&extended::parse_message(b"", texts.of(&query), &types));
                flags.push(false);
                *held = Some(p.name().to_vec());
                parsed.push((p.name().to_vec(), query, types));
            }
            b'B' => {
                let b = client::Bind::new(f).map_err(protocol)?;
                ensure(b.statement(), buf, held, flags, &parsed, stmts, texts)?;
                extended::put_renamed(buf, f, b.statement_span(), b"");
                portal = Some(b.portal().to_vec());
            }
            b'D' => {
                let d = client::Targeted::new(f).map_err(protocol)?;
                if d.target == client::Target::Statement {
                    ensure(d.name(), buf, held, flags, &parsed, stmts, texts)?;
                    extended::put_renamed(buf, f, d.name_span(), b"");
                } else if portal.as_deref() == Some(d.name()) {
                    buf.extend_from_slice(&f.raw);
                } else {
                    return Err(not_run("a Describe of a portal bound by another statement"));
                }
            }
            b'E' => {
                let e = client::Execute::new(f).map_err(protocol)?;
                if e.max_rows != 0 {
                    return Err(not_run("a row limit on Execute"));
                }
                if portal.take().as_deref() != Some(e.portal()) {
                    return Err(not_run("an Execute of a portal bound by another statement"));
                }
                buf.extend_from_slice(&f.raw);
                segment += 1;
            }
            // The Sync (or, inside a transaction across shards, a Flush): each shard gets a
            // Sync of its own below.
            b'S' | b'H' => {}
            other => {
                return Err(not_run(&format!("message {:?}", other as char)));
            }
        }
    }
    let bytes = out
        .into_iter()
        .map(|mut b| {
            b.extend_from_slice(messages::SYNC);
            b.freeze()
        })
        .collect();
    Ok(Streams { bytes, injected })
}

/// A simple Query of several statements cut into each shard's: BEGIN, then one Query of
/// its statements in order (each shard answers every statement, then ReadyForQuery).
fn query_streams(
    statements: &[String],
    plan: &Pipeline,
    shards: &[usize],
    texts: &Texts,
    begin: bool,
) -> Streams {
    let mut sql: Vec<String> = vec![String::new(); shards.len()];
    for (statement, shard) in statements.iter().zip(&plan.segments) {
        let Some(at) = shards.iter().position(|s| s == shard) else {
            continue;
        };
        let text = Bytes::copy_from_slice(statement.as_bytes());
        if let Some(q) = sql.get_mut(at) {
            q.push_str(&String::from_utf8_lossy(texts.of(&text)));
            q.push_str(";\n");
        }
    }
    let bytes = sql
        .iter()
        .map(|q| {
            let mut b = BytesMut::new();
            if begin {
                messages::query(&mut b, "BEGIN");
            }
            messages::query(&mut b, q);
            b.freeze()
        })
        .collect();
    Streams {
        bytes,
        injected: vec![Vec::new(); plan.segments.len()],
    }
}

/// Makes a shard's unnamed statement (`held`) the client's statement `name`: the Parse it
/// needs is added to `buf` (and flagged in `flags` as usher's) unless it holds it already.
fn ensure(
    name: &[u8],
    buf: &mut BytesMut,
    held: &mut Option<Vec<u8>>,
    flags: &mut Vec<bool>,
    parsed: &[(Vec<u8>, Bytes, Bytes)],
    stmts: &ClientStatements,
    texts: &Texts,
) -> Result<(), Refusal> {
    if held.as_deref() == Some(name) {
        return Ok(());
    }
    let (query, types) = match parsed.iter().rev().find(|(n, _, _)| n == name) {
        Some((_, q, t)) => (q.clone(), t.clone()),
        None => match stmts.statement(name) {
            Some(st) => (st.query.clone(), st.param_types.clone()),
            None => {
                return Err((
                    "26000",
                    format!(
                        "prepared statement \"{}\" does not exist",
                        String::from_utf8_lossy(name)
                    ),
                ))
            }
        },
    };
    buf.extend_from_slice(&extended::parse_message(b"", texts.of(&query), &types));
    flags.push(true);
    *held = Some(name.to_vec());
    Ok(())
}

fn not_run(construct: &str) -> Refusal {
    (
        "0A000",
        format!("usher: a pipeline across shards is run only when each statement is bound and executed on its own, and this one has {construct}"),
    )
}

/// What one shard answered, cut by segment.
#[derive(Default)]
pub(super) struct Answers {
    /// It answered BEGIN.
    begun: bool,
    /// The frames of each of its segments, in order.
    segments: Vec<Vec<Frame>>,
    /// Its error, and the index (among its own segments) of the segment that raised it.
    error: Option<(usize, Bytes)>,
}

impl Session {
    /// Runs the pipeline in `frames` on the shards of `plan` and answers the client once it
    /// committed or rolled back everywhere.
    pub(in crate::session) async fn run_pipeline(
        &mut self,
        plan: Pipeline,
        frames: Vec<Frame>,
    ) -> Result<Flow, SessionError> {
        self.wait_if_paused().await;
        let shards = plan.shards();
        let at = crate::router::clock::timestamp(std::time::SystemTime::now());
        let texts = match self
            .pinned_texts(&frames, plan.statements.as_deref(), &at)
            .await
        {
            Ok(t) => t,
            Err((code, message)) => {
                self.answer_fanout_error(code, &message);
                return Ok(Flow::Continue);
            }
        };
        let streams = match streams(&frames, &plan, &shards, &self.stmts, &texts, true) {
            Ok(s) => s,
            Err((code, message)) => {
                self.answer_fanout_error(code, &message);
                return Ok(Flow::Continue);
            }
        };
        let two_phase = plan.writing_shards() > 1;
        let coordinator = self.app.twophase.clone();
        let log = if two_phase {
            let path = self.snap().config.general.two_phase_log.clone();
            match coordinator.log(path.as_deref()) {
                Ok(l) => Some(l),
                Err(e) => {
                    self.answer_fanout_error(e.sqlstate(), &e.to_string());
                    return Ok(Flow::Continue);
                }
            }
        } else {
            None
        };
        // Writes on several shards take turns per database, so two cannot deadlock.
        let _turn = match two_phase {
            true => match self.take_turn().await {
                Ok(turn) => Some(turn),
                Err((code, message)) => {
                    self.answer_fanout_error(code, &message);
                    return Ok(Flow::Continue);
                }
            },
            false => None,
        };
        let outcome = if plan.writes.contains(&true) {
            crate::stats::RouteOutcome::FanoutWrite
        } else {
            crate::stats::RouteOutcome::Fanout
        };
        let Some(mut parts) = self.checkout_parts(&shards, true, false, outcome).await? else {
            return Ok(Flow::Continue);
        };
        let mut error = self.run_streams(&mut parts, &streams, &plan, &shards).await;
        if error.is_none() {
            error = match &log {
                Some(log) => {
                    self.commit_parts(&mut parts, &shards, &coordinator, log)
                        .await
                }
                None => super::control::commit_each(&mut parts, &shards).await,
            };
            if error.is_none() {
                // Statements named in the pipeline stay the client's for later requests.
                self.remember_parses(&frames)?;
            }
        } else {
            rollback(&mut parts).await;
        }
        self.release_parts(parts);
        self.end_answer(error, None).await?;
        Ok(Flow::Continue)
    }

    /// One clock for the whole pipeline, as one database's one transaction has: each
    /// statement's `now()` and its kin, and the clock defaults of the columns an INSERT
    /// leaves out (read from the catalog), become the same constant.
    pub(super) async fn pinned_texts(
        &mut self,
        frames: &[Frame],
        statements: Option<&[String]>,
        at: &str,
    ) -> Result<Texts, Refusal> {
        let mut originals: Vec<Bytes> = statements
            .unwrap_or_default()
            .iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        for f in frames {
            let query = match f.tag {
                b'P' => client::Parse::new(f)
                    .ok()
                    .map(|p| p.owned_query_and_types().0),
                b'B' => client::Bind::new(f)
                    .ok()
                    .and_then(|b| self.stmts.statement(b.statement()))
                    .map(|s| s.query.clone()),
                _ => None,
            };
            if let Some(q) = query.filter(|q| !originals.contains(q)) {
                originals.push(q);
            }
        }
        let config = self.snap().config.clone();
        let refuse = |why: String| {
            (
                "0A000",
                format!("usher: a pipeline across shards with {why}"),
            )
        };
        let mut texts = Texts::default();
        for original in originals {
            let Ok(sql) = std::str::from_utf8(&original) else {
                continue;
            };
            let mut text = crate::router::clock::pin(sql, at)
                .map_err(refuse)?
                .unwrap_or_else(|| sql.to_string());
            if let Some((schema, table)) = crate::router::fanout_insert::insert_table(&text) {
                let defaults = self
                    .app
                    .column_defaults(&config, &self.db_name, schema.as_deref(), &table)
                    .await
                    .map_err(|e| {
                        (
                            "58000",
                            format!("usher: could not read the column defaults of {table:?} for a pipeline across shards: {e}"),
                        )
                    })?;
                let pinned = crate::router::fanout_insert::pin_clock_defaults(&text, &defaults, at)
                    .map_err(refuse)?;
                if !pinned.is_empty() {
                    text = crate::router::fanout_insert::with_defaults(&text, &pinned)
                        .map_err(refuse)?;
                }
            }
            if text.as_bytes() != &original[..] {
                texts.0.insert(original, Bytes::from(text));
            }
        }
        Ok(texts)
    }

    /// Runs `streams` on the parts and relays their answers in the client's order: the
    /// first error in that order (or of a shard that failed), if any.
    pub(super) async fn run_streams(
        &mut self,
        parts: &mut [Part],
        streams: &Streams,
        plan: &Pipeline,
        shards: &[usize],
    ) -> Option<Bytes> {
        let mut error = None;
        let answers = self
            .gather(parts, &streams.bytes, plan, shards, &mut error)
            .await;
        if error.is_none() {
            error = self.relay(plan, shards, &answers, &streams.injected);
        }
        error
    }

    /// Sends each part its stream and holds every answer until each part reached its Sync.
    /// A part in a transaction across shards is sent no BEGIN (see [`streams`]).
    async fn gather(
        &mut self,
        parts: &mut [Part],
        bytes: &[Bytes],
        plan: &Pipeline,
        shards: &[usize],
        error: &mut Option<Bytes>,
    ) -> Vec<Answers> {
        let mut answers: Vec<Answers> = shards
            .iter()
            .zip(parts.iter())
            .map(|(s, p)| Answers {
                begun: p.in_txn,
                segments: vec![Vec::new(); plan.segments.iter().filter(|x| *x == s).count()],
                ..Answers::default()
            })
            .collect();
        for (i, p) in parts.iter_mut().enumerate() {
            let Some(b) = bytes.get(i) else { continue };
            if let Err(e) = p.lease.conn().write(b).await {
                error.get_or_insert_with(|| lost(i, &e.to_string()));
                p.broken();
            }
        }
        let mut held = 0usize;
        let mut current = vec![0usize; parts.len()];
        let deadline = self.fanout_deadline();
        loop {
            for (i, p) in parts.iter_mut().enumerate() {
                let (Some(a), Some(cur)) = (answers.get_mut(i), current.get_mut(i)) else {
                    continue;
                };
                while !p.ready {
                    let Some(frame) = p.next_frame(i, error) else {
                        break;
                    };
                    match frame.tag {
                        b'C' | b'N' if !a.begun => {}
                        b'Z' if !a.begun => a.begun = true,
                        b'Z' => {
                            p.rows_done = true;
                            p.ready = true;
                        }
                        b'E' if !a.begun => {
                            error.get_or_insert(frame.raw);
                        }
                        b'E' => {
                            a.error.get_or_insert((*cur, frame.raw));
                        }
                        b'A' => self.client_out.push(frame.raw),
                        b'S' => {}
                        b'1' | b'2' | b't' | b'T' | b'n' | b'D' | b'C' | b'I' | b's' | b'N' => {
                            held += frame.raw.len();
                            if held > MAX_HELD {
                                error.get_or_insert_with(|| {
                                    messages::error_response(
                                        "ERROR",
                                        "54000",
                                        &format!("usher: a pipeline across shards returned more than {} MiB before its end", MAX_HELD >> 20),
                                        None,
                                    )
                                });
                                continue;
                            }
                            let ends = matches!(frame.tag, b'C' | b'I' | b's');
                            let last = a.segments.len().saturating_sub(1);
                            if let Some(seg) = a.segments.get_mut((*cur).min(last)) {
                                seg.push(frame);
                            }
                            if ends && *cur < last {
                                *cur += 1;
                            }
                        }
                        other => unexpected(p, i, other, error, "a pipeline"),
                    }
                }
            }
            if parts.iter().all(|p| p.ready) {
                break;
            }
            self.read_some(parts, error, deadline).await;
        }
        answers
    }

    /// Relays the held answers segment by segment in the client's order, up to the first
    /// error in that order, which is returned.
    fn relay(
        &mut self,
        plan: &Pipeline,
        shards: &[usize],
        answers: &[Answers],
        injected: &[Vec<bool>],
    ) -> Option<Bytes> {
        let mut seen = vec![0usize; shards.len()];
        for (k, shard) in plan.segments.iter().enumerate() {
            let at = shards.iter().position(|s| s == shard)?;
            let (Some(a), Some(n)) = (answers.get(at), seen.get_mut(at)) else {
                return Some(lost(*shard, "a segment without its answers"));
            };
            let local = *n;
            *n += 1;
            let mut parses = injected.get(k).map(|v| v.iter()).into_iter().flatten();
            for f in a.segments.get(local).into_iter().flatten() {
                if f.tag == b'1' && parses.next().copied().unwrap_or(false) {
                    continue;
                }
                self.client_out.push(f.raw.clone());
            }
            if let Some((failed_at, e)) = &a.error {
                if *failed_at <= local {
                    return Some(e.clone());
                }
            }
        }
        None
    }
}
