//! DDL on a sharded database: a schema change sent through usher (CREATE/ALTER/DROP, CREATE
//! INDEX, TRUNCATE, VACUUM, ...) runs on every shard's primary, one shard after another with
//! the client's own session settings. The client sees one result (the first shard's) when all
//! shards succeed, or one error naming each shard that failed and those where it succeeded.
//! Shards do not commit together: `IF NOT EXISTS` / `IF EXISTS` make a repeat safe, and
//! `usher migrate` is the tool for versioned schema changes.

use bytes::{Bytes, BytesMut};

use super::responses::Expect;
use super::{Flow, Session, SessionError};
use crate::protocol::messages::{self, ErrorFields};
use crate::protocol::{client, extended, Frame};
use crate::router;

/// How one shard's run ended.
enum Outcome {
    /// The server's answer, without errors.
    Done(Vec<Frame>),
    /// The server's answer, with the error it contains.
    Failed(Vec<Frame>, ErrorFields),
    /// usher could not reach or use the shard's primary.
    Unreachable(String),
}

impl Session {
    /// Runs the batch `frames` (a Query, or extended messages up to their Sync) on every
    /// shard's primary and answers the client.
    pub(super) async fn broadcast(&mut self, frames: Vec<Frame>) -> Result<Flow, SessionError> {
        // It holds servers of every shard: PAUSE waits for it and holds it.
        self.wait_if_paused().await;
        // Named statements live in usher (prepared lazily per server): send them as the
        // unnamed statement, with a Parse usher adds when the batch did not carry one.
        let mut batch = BytesMut::new();
        let mut injected: Vec<bool> = Vec::new();
        let mut parsed_here: Vec<Bytes> = Vec::new();
        for f in &frames {
            match f.tag {
                b'P' => {
                    let parse = client::Parse::new(f)?;
                    if !parse.name().is_empty() {
                        self.stmts.remember(f)?;
                        parsed_here.push(Bytes::copy_from_slice(parse.name()));
                    }
                    extended::put_renamed(&mut batch, f, parse.name_span(), b"");
                    injected.push(false);
                }
                b'B' => {
                    let bind = client::Bind::new(f)?;
                    let span = bind.statement_span();
                    let name = bind.statement();
                    if !name.is_empty() && !parsed_here.iter().any(|p| p == name) {
                        let Some(stmt) = self.stmts.statement(name) else {
                            let e = messages::error_response(
                                "ERROR",
                                "26000",
                                &format!(
                                    "prepared statement \"{}\" does not exist",
                                    String::from_utf8_lossy(name)
                                ),
                                None,
                            );
                            self.client_out.push(e);
                            self.push_local_ready();
                            return Ok(Flow::Continue);
                        };
                        batch.extend_from_slice(&extended::parse_message(
                            b"",
                            &stmt.query,
                            &stmt.param_types,
                        ));
                        injected.push(true);
                    }
                    extended::put_renamed(&mut batch, f, span, b"");
                }
                b'D' => match client::Targeted::new(f)? {
                    d if d.target == client::Target::Statement => {
                        extended::put_renamed(&mut batch, f, d.name_span(), b"")
                    }
                    _ => batch.extend_from_slice(&f.raw),
                },
                b'C' => {
                    let e = messages::error_response("ERROR", "0A000", "usher: Close cannot be part of a DDL batch that runs on every shard; send it separately", None);
                    self.client_out.push(e);
                    self.push_local_ready();
                    return Ok(Flow::Continue);
                }
                _ => batch.extend_from_slice(&f.raw),
            }
        }
        if frames.last().map(|f| f.tag) != Some(b'S') && frames[0].tag != b'Q' {
            batch.extend_from_slice(messages::SYNC);
        }
        let batch = batch.freeze();
        let outcomes = self.run_everywhere(&batch).await;
        // The DDL may have changed a column default a split INSERT writes.
        self.app
            .forget_defaults(&self.snap().config.clone(), &self.db_name);
        let answer = combine(outcomes, &injected);
        self.tracker.push(Expect::Local(answer));
        self.client_out.append(&mut self.tracker.ready);
        Ok(Flow::Continue)
    }

    async fn run_everywhere(&mut self, batch: &Bytes) -> Vec<(usize, String, Outcome)> {
        let config = self.app.config();
        let name = self.login.database.clone();
        let topology = self.app.topology();
        let shards = topology.databases.get(&name).map_or(&[][..], |s| &s[..]);
        let mut out = Vec::new();
        for (i, shard) in shards.iter().enumerate() {
            let target = match router::primary_of(&name, i, shard) {
                Ok(t) => t,
                Err(e) => {
                    out.push((i, "-".to_string(), Outcome::Unreachable(e.to_string())));
                    continue;
                }
            };
            let addr = shard.servers[target.server].addr.clone();
            let pool = match self.pool_at(&config, i, target.server, &addr) {
                Ok(p) => p,
                Err(e) => {
                    out.push((i, addr.to_string(), Outcome::Unreachable(e.to_string())));
                    continue;
                }
            };
            let outcome = match pool.checkout().await {
                Err(e) => Outcome::Unreachable(e.to_string()),
                Ok(mut lease) => match self.prepare_server(&mut lease).await {
                    Err(e) => Outcome::Unreachable(e.to_string()),
                    Ok(()) => match lease.conn().exchange(batch).await {
                        Err(e) => Outcome::Unreachable(e.to_string()),
                        Ok(frames) => {
                            let idle = frames.last().map(|f| f.body()) == Some(b"I");
                            let error = frames
                                .iter()
                                .find(|f| f.tag == b'E')
                                .map(|f| ErrorFields::parse(f.body()));
                            if idle {
                                lease.release();
                            }
                            match error {
                                Some(e) => Outcome::Failed(frames, e),
                                None => Outcome::Done(frames),
                            }
                        }
                    },
                },
            };
            out.push((i, addr.to_string(), outcome));
        }
        out
    }
}

/// The client's answer from every shard's outcome; `injected[k]` says whether the k-th Parse
/// of the batch was usher's own (its ParseComplete is not the client's).
fn combine(outcomes: Vec<(usize, String, Outcome)>, injected: &[bool]) -> Bytes {
    let keep = |frames: &[Frame]| -> Vec<Frame> {
        let mut parses = 0;
        frames
            .iter()
            .filter(|f| {
                if f.tag == b'S' {
                    return false;
                }
                if f.tag == b'1' {
                    parses += 1;
                    return !injected.get(parses - 1).copied().unwrap_or(false);
                }
                true
            })
            .cloned()
            .collect()
    };
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(i, addr, o)| match o {
            Outcome::Failed(_, e) => Some(format!("shard {i} ({addr}): {}", e.message)),
            Outcome::Unreachable(e) => Some(format!("shard {i} ({addr}): {e}")),
            Outcome::Done(_) => None,
        })
        .collect();
    let mut out = BytesMut::new();
    if failed.is_empty() {
        if let Some((_, _, Outcome::Done(frames))) = outcomes.into_iter().next() {
            for f in keep(&frames) {
                out.extend_from_slice(&f.raw);
            }
        }
        return out.freeze();
    }
    let succeeded: Vec<String> = outcomes
        .iter()
        .filter(|(_, _, o)| matches!(o, Outcome::Done(_)))
        .map(|(i, _, _)| i.to_string())
        .collect();
    let code = outcomes
        .iter()
        .find_map(|(_, _, o)| match o {
            Outcome::Failed(_, e) => Some(e.code.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "08006".to_string());
    let message = format!(
        "usher: DDL failed on {} of {} shards: {}{}",
        failed.len(),
        outcomes.len(),
        failed.join("; "),
        if succeeded.is_empty() {
            String::new()
        } else {
            format!(" (it succeeded on shard(s) {})", succeeded.join(", "))
        }
    );
    let error = messages::error_response(
        "ERROR",
        &code,
        &message,
        Some("Shards apply DDL independently: fix the cause and re-run it (IF NOT EXISTS / IF EXISTS make that safe), or use `usher migrate`."),
    );
    // Keep the failing shard's answer shape (ParseComplete, ... up to the error), with the
    // combined error in place of its own.
    let shape = outcomes.iter().find_map(|(_, _, o)| match o {
        Outcome::Failed(frames, _) => Some(frames),
        _ => None,
    });
    match shape {
        Some(frames) => {
            for f in keep(frames) {
                if f.tag == b'E' {
                    out.extend_from_slice(&error);
                } else if f.tag == b'Z' {
                    messages::ready_for_query(&mut out, b'I');
                } else {
                    out.extend_from_slice(&f.raw);
                }
            }
        }
        None => {
            out.extend_from_slice(&error);
            messages::ready_for_query(&mut out, b'I');
        }
    }
    out.freeze()
}
