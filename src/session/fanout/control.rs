//! Control statements run on the parts of a statement across shards, concurrently: BEGIN's
//! ends, PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED. A part that does not answer as
//! expected is marked for closing, never returned to its pool.

use bytes::{Bytes, BytesMut};

use super::Part;
use crate::protocol::messages;

/// How one part answered a control statement.
pub(super) enum Answer {
    /// CommandComplete and ReadyForQuery 'I' (or 'T' for a part in a transaction across
    /// shards: its BEGIN).
    Ok,
    /// The server's ErrorResponse.
    Error(Bytes),
    /// The connection failed (why).
    Lost(String),
}

/// Runs `sql(i)` on every part that can still take it, concurrently.
pub(super) async fn everywhere(parts: &mut [Part], sql: impl Fn(usize) -> String) -> Vec<Answer> {
    let all = vec![true; parts.len()];
    everywhere_some(parts, &all, sql)
        .await
        .into_iter()
        .map(|a| a.unwrap_or(Answer::Lost("the connection was closed".into())))
        .collect()
}

/// Runs `sql(i)` on the parts where `which[i]` (and the connection is usable); `None` for
/// the others.
pub(super) async fn everywhere_some(
    parts: &mut [Part],
    which: &[bool],
    sql: impl Fn(usize) -> String,
) -> Vec<Option<Answer>> {
    let runs = parts.iter_mut().enumerate().map(|(i, p)| {
        let wanted = which.get(i).copied().unwrap_or(false) && p.ready && !p.discard;
        let settled = p.settled();
        let mut query = BytesMut::new();
        messages::query(&mut query, &sql(i));
        async move {
            if !wanted {
                return None;
            }
            let answer = match p.lease.conn().exchange(&query).await {
                Err(e) => Answer::Lost(e.to_string()),
                Ok(frames) => {
                    let error = frames.iter().find(|f| f.tag == b'E').map(|f| f.raw.clone());
                    let idle = frames
                        .last()
                        .is_some_and(|f| f.tag == b'Z' && f.body() == settled);
                    match error {
                        Some(e) => Answer::Error(e),
                        None if idle => Answer::Ok,
                        None => Answer::Lost("not idle after the statement".into()),
                    }
                }
            };
            if !matches!(answer, Answer::Ok) {
                p.discard = true;
            }
            Some(answer)
        }
    });
    futures_util::future::join_all(runs).await
}

/// Rolls every usable part back; a part that cannot be reached is closed (its server
/// rolls it back when the connection ends).
pub(super) async fn rollback(parts: &mut [Part]) {
    let answers = everywhere(parts, |_| "ROLLBACK".to_string()).await;
    for (p, a) in parts.iter_mut().zip(answers) {
        if !matches!(a, Answer::Ok) {
            p.discard = true;
        }
    }
}

/// COMMITs every part one-phase (a single writer, or none); the first failure is the
/// client's error, a lost connection named by its shard (`shards[i]`).
pub(super) async fn commit_each(parts: &mut [Part], shards: &[usize]) -> Option<Bytes> {
    let answers = everywhere(parts, |_| "COMMIT".to_string()).await;
    answers.into_iter().enumerate().find_map(|(i, a)| match a {
        Answer::Ok => None,
        Answer::Error(e) => Some(e),
        Answer::Lost(why) => Some(super::lost(shards.get(i).copied().unwrap_or(i), &why)),
    })
}
