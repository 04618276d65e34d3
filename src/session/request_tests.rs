//! Cutting requests off a receive buffer, and looking their statements up once.

use super::*;
use std::sync::atomic::Ordering;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    Frame::new(tag, body).raw.to_vec()
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    frame(b'P', &b)
}

fn bind(statement: &str) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(statement.as_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    frame(b'B', &b)
}

fn buf(parts: &[Vec<u8>]) -> BytesMut {
    let mut b = BytesMut::new();
    for p in parts {
        b.extend_from_slice(p);
    }
    b
}

fn cut(b: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
    let mut r = Request::default();
    Ok(r.start(b, 1 << 20)?.then_some(r))
}

#[test]
fn cuts_up_to_the_sync_without_copying() {
    let mut b = buf(&[
        parse("", "SELECT 1"),
        bind(""),
        frame(b'E', &[0, 0, 0, 0, 0]),
        frame(b'S', &[]),
        frame(b'Q', b"SELECT 2\0"),
    ]);
    let start = b.as_ptr();
    let r = cut(&mut b).unwrap().unwrap();
    assert!(r.is_complete());
    assert_eq!(r.frames.len(), 4);
    // The frames are slices of the receive buffer's bytes, not copies.
    assert_eq!(r.frames[0].raw.as_ptr(), start);
    let q = cut(&mut b).unwrap().unwrap();
    assert_eq!(q.frames.len(), 1);
    assert!(b.is_empty());
    assert!(cut(&mut b).unwrap().is_none());
}

#[test]
fn an_unfinished_batch_is_extended_and_a_query_after_it_is_the_next_request() {
    let mut b = buf(&[parse("", "SELECT 1"), bind("")]);
    let mut r = cut(&mut b).unwrap().unwrap();
    assert!(!r.is_complete());
    // Half a message arrives: nothing is cut.
    let e = frame(b'E', &[0, 0, 0, 0, 0]);
    b.extend_from_slice(&e[..3]);
    r.extend(&mut b, 1 << 20);
    assert_eq!(r.frames.len(), 2);
    b.extend_from_slice(&e[3..]);
    b.extend_from_slice(&frame(b'Q', b"SELECT 2\0"));
    r.extend(&mut b, 1 << 20);
    assert_eq!(r.frames.len(), 3);
    assert!(r.is_complete(), "a Query ends the batch before it");
    assert_eq!(b.first(), Some(&b'Q'));
}

#[test]
fn a_bad_header_is_reported_after_the_messages_before_it() {
    let mut b = buf(&[frame(b'Q', b"SELECT 1\0")]);
    b.extend_from_slice(&[b'P', 0, 0, 0, 1]);
    let r = cut(&mut b).unwrap().unwrap();
    assert_eq!(r.frames.len(), 1);
    assert!(cut(&mut b).is_err());
    let mut b = buf(&[parse("", "SELECT 1")]);
    b.extend_from_slice(&[b'B', 0, 0, 0, 1]);
    let r = cut(&mut b).unwrap().unwrap();
    assert!(
        r.is_complete(),
        "no waiting behind a message that cannot be cut"
    );
}

/// Each statement is classified once however many steps ask, and an unnamed Bind carries
/// the text of the Parse before it.
#[test]
fn statements_are_looked_up_once() {
    let cache = QueryCache::new(100);
    let memo = Memo::default();
    let stmts = ClientStatements::default();
    let lookup = Lookup {
        stmts: &stmts,
        memo: &memo,
        cache: &cache,
        spans: true,
    };
    let mut b = buf(&[
        parse("", "UPDATE t SET v = 1 WHERE id = 5"),
        bind(""),
        frame(b'E', &[0, 0, 0, 0, 0]),
        frame(b'S', &[]),
    ]);
    let mut r = cut(&mut b).unwrap().unwrap();
    let batch = r.batch(Some(&lookup));
    assert_eq!(batch.statements.len(), 4);
    let bound = &batch.statements[1];
    assert!(bound.class.as_ref().unwrap().write);
    assert!(bound.bind.is_some());
    let lookups = || cache.hits.load(Ordering::Relaxed) + cache.misses.load(Ordering::Relaxed);
    let after_plan = lookups();
    assert_eq!(after_plan, 1, "one shared lookup for the Parse's text");
    for i in 0..4 {
        r.statement(i, &lookup);
    }
    r.batch(Some(&lookup));
    assert_eq!(
        lookups(),
        after_plan,
        "asking again reads what the request carries"
    );
}
