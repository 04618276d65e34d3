//! What each shard is sent for a read that runs on all of them, built once from the client's
//! messages: a simple Query as is (or with the shards' text, LIMIT raised by OFFSET), or the
//! extended messages up to their Sync with the statement sent as the unnamed one (usher keeps
//! clients' named statements itself, and adds the Parse when the batch did not carry one).
//! Also read here: the LIMIT and OFFSET values of a bound statement, as Postgres checks them.

use bytes::{Bytes, BytesMut};

use crate::protocol::{client, extended, messages, Frame};
use crate::router::fanout::{Count, Merge};
use crate::router::shard::values::BindParams;
use crate::session::prepared::ClientStatements;

/// The shards' batch and how their answers map to what the client expects.
pub struct ShardBatch {
    /// The bytes sent to every shard.
    pub bytes: Bytes,
    /// For each Parse sent, in order: usher added it (its ParseComplete is not the client's).
    pub injected: Vec<bool>,
    /// How many frames answer the messages before the rows (ParseComplete, BindComplete,
    /// descriptions): every shard sends the same ones, and the client gets each once.
    pub header_frames: usize,
    /// usher added a Describe of the portal (the merge needs the column types): its
    /// RowDescription is not the client's.
    pub described_here: bool,
    /// Rows to skip from the merged rows.
    pub offset: u64,
    /// Rows to return at most.
    pub limit: Option<u64>,
    /// The client's Bind result formats (count and codes; empty for a simple Query: text),
    /// for a finishing statement (see `Merge::finish`).
    pub result_formats: Bytes,
}

/// Why a batch cannot run across shards: an error for the client (SQLSTATE, message).
pub type Refusal = (&'static str, String);

/// Builds the shards' batch for `frames` (a Query, or extended messages ending in Sync).
pub fn build(
    frames: &[Frame],
    merge: &Merge,
    stmts: &ClientStatements,
) -> Result<ShardBatch, Refusal> {
    build_with(frames, merge, stmts, &[])
}

/// [`build`], with the bind parameters numbered in `nulls` (1-based) sent as NULL typed
/// text: one shard's part of a split INSERT, which does not use the other shards' values.
pub fn build_with(
    frames: &[Frame],
    merge: &Merge,
    stmts: &ClientStatements,
    nulls: &[usize],
) -> Result<ShardBatch, Refusal> {
    let types = |t: &[u8]| -> Result<Bytes, Refusal> {
        if nulls.is_empty() {
            return Ok(Bytes::copy_from_slice(t));
        }
        extended::types_with_text(t, nulls).map_err(|e| ("08P01", format!("usher: {e}")))
    };
    let protocol = |e: crate::protocol::ProtocolError| ("08P01", format!("usher: {e}"));
    let mut out = BytesMut::new();
    let mut injected = Vec::new();
    let mut parsed_here = false;
    let mut bind_body: Option<Bytes> = None;
    let mut portal: Option<Bytes> = None;
    let mut described = false;
    let mut described_here = false;
    let mut header_frames = 0;
    let mut result_formats = Bytes::new();
    let shard_sql = merge.shard_sql.as_deref();
    for f in frames {
        match f.tag {
            b'Q' => {
                // Its RowDescription.
                header_frames += 1;
                match shard_sql {
                    Some(sql) => messages::query(&mut out, sql),
                    None => out.extend_from_slice(&f.raw),
                }
            }
            b'P' => {
                let parse = client::Parse::new(f).map_err(protocol)?;
                let query = shard_sql.map_or(parse.query_bytes(), str::as_bytes);
                out.extend_from_slice(&extended::parse_message(
                    b"",
                    query,
                    &types(&parse.param_types())?,
                ));
                injected.push(false);
                parsed_here = true;
                header_frames += 1;
            }
            b'B' => {
                let bind = client::Bind::new(f).map_err(protocol)?;
                if !parsed_here {
                    let name = bind.statement();
                    let Some(stmt) = stmts.statement(name) else {
                        return Err((
                            "26000",
                            format!(
                                "prepared statement \"{}\" does not exist",
                                String::from_utf8_lossy(name)
                            ),
                        ));
                    };
                    let query = shard_sql.map_or(&stmt.query[..], str::as_bytes);
                    out.extend_from_slice(&extended::parse_message(
                        b"",
                        query,
                        &types(&stmt.param_types)?,
                    ));
                    injected.push(true);
                    header_frames += 1;
                }
                let results = if merge.finishes() {
                    // The shards return only the aggregates, in text; the client's formats
                    // are for the finishing statement's columns.
                    result_formats = extended::result_formats(f).map_err(protocol)?;
                    extended::Results::Text
                } else {
                    extended::Results::Extra(merge.hidden())
                };
                if nulls.is_empty() && results == extended::Results::Extra(0) {
                    extended::put_renamed(&mut out, f, bind.statement_span(), b"");
                } else {
                    out.extend_from_slice(
                        &extended::bind_rewritten(f, b"", nulls, results).map_err(protocol)?,
                    );
                }
                header_frames += 1;
                bind_body = Some(f.body_bytes());
                portal = Some(Bytes::copy_from_slice(bind.portal()));
            }
            b'D' => {
                let d = client::Targeted::new(f).map_err(protocol)?;
                header_frames += 1;
                if d.target == client::Target::Statement {
                    header_frames += 1;
                    extended::put_renamed(&mut out, f, d.name_span(), b"");
                } else {
                    described = true;
                    out.extend_from_slice(&f.raw);
                }
            }
            b'E' => {
                let e = client::Execute::new(f).map_err(protocol)?;
                if e.max_rows != 0 {
                    return Err(("0A000", "usher: a row limit on Execute (fetching a portal in parts) is not supported for a query across shards".into()));
                }
                if !described && merge.needs_types() {
                    // The merge compares by column type and format: ask for them.
                    extended::describe_portal(&mut out, portal.as_deref().unwrap_or_default());
                    described_here = true;
                    header_frames += 1;
                }
                out.extend_from_slice(&f.raw);
            }
            _ => out.extend_from_slice(&f.raw),
        }
    }
    let params = bind_body.as_deref().and_then(BindParams::parse);
    let offset = count(merge.offset, params.as_ref(), "OFFSET", "2201X")?;
    let limit = count(merge.limit, params.as_ref(), "LIMIT", "2201W")?;
    Ok(ShardBatch {
        bytes: out.freeze(),
        injected,
        header_frames,
        described_here,
        offset: offset.unwrap_or(0),
        limit,
        result_formats,
    })
}

/// The text of the statement `frames` run (a Query's, a Parse's, or that of the prepared
/// statement a Bind names), as UTF-8; `None` when there is none or it is not UTF-8 (the
/// shards then raise the error).
pub fn statement_text(frames: &[Frame], stmts: &ClientStatements) -> Option<String> {
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_string);
    for f in frames {
        match f.tag {
            b'Q' => return text(client::Query::new(f).ok()?.sql_bytes()),
            b'P' => return text(client::Parse::new(f).ok()?.query_bytes()),
            b'B' => {
                let bind = client::Bind::new(f).ok()?;
                return text(&stmts.statement(bind.statement())?.query);
            }
            _ => {}
        }
    }
    None
}

/// The value of a LIMIT or OFFSET: a constant or a bind parameter (NULL: none), refused
/// when negative with Postgres's SQLSTATE and message.
fn count(
    c: Option<Count>,
    params: Option<&BindParams>,
    what: &str,
    negative: &'static str,
) -> Result<Option<u64>, Refusal> {
    let v = match c {
        None => return Ok(None),
        Some(Count::Value(v)) => v,
        Some(Count::Param(n)) => {
            let bad = || {
                (
                    "22P02",
                    format!("usher: the {what} parameter ${n} is not an integer usher can read"),
                )
            };
            let (format, value) = params
                .and_then(|p| p.get(usize::from(n) - 1))
                .ok_or_else(bad)?;
            let Some(value) = value else { return Ok(None) };
            if format == 1 {
                match value.len() {
                    2 => i64::from(i16::from_be_bytes(value.try_into().map_err(|_| bad())?)),
                    4 => i64::from(i32::from_be_bytes(value.try_into().map_err(|_| bad())?)),
                    8 => i64::from_be_bytes(value.try_into().map_err(|_| bad())?),
                    _ => return Err(bad()),
                }
            } else {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(bad)?
            }
        }
    };
    u64::try_from(v)
        .map(Some)
        .map_err(|_| (negative, format!("{what} must not be negative")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Frame {
        Frame::new(tag, body)
    }

    fn bind(values: &[Option<&[u8]>], format: i16) -> Frame {
        let mut b = b"\0\0".to_vec();
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&format.to_be_bytes());
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        frame(b'B', &b)
    }

    fn merge(limit: Option<Count>, offset: Option<Count>) -> Merge {
        Merge {
            limit,
            offset,
            shard_sql: Some("SELECT 1 LIMIT $1::bigint + $2::bigint".into()),
            ..Merge::default()
        }
    }

    #[test]
    fn parameters_give_limit_and_offset() {
        let stmts = ClientStatements::default();
        let parse = frame(b'P', b"\0SELECT 1 LIMIT $1 OFFSET $2\0\0\0");
        let m = merge(Some(Count::Param(1)), Some(Count::Param(2)));
        let frames = [
            parse.clone(),
            bind(&[Some(b"10"), Some(b"5")], 0),
            frame(b'E', b"\0\0\0\0\0"),
            frame(b'S', b""),
        ];
        let b = build(&frames, &m, &stmts).unwrap();
        assert_eq!((b.limit, b.offset), (Some(10), 5));
        assert_eq!(b.header_frames, 2, "ParseComplete, BindComplete");
        assert_eq!(b.injected, vec![false]);
        let raw: &[u8] = &b.bytes;
        assert!(
            raw.windows(8).any(|w| w == b"::bigint"),
            "the shards' text is sent"
        );
        let frames = [
            parse.clone(),
            bind(&[Some(&7i64.to_be_bytes()), None], 1),
            frame(b'S', b""),
        ];
        let b = build(&frames, &m, &stmts).unwrap();
        assert_eq!((b.limit, b.offset), (Some(7), 0));
        let frames = [
            parse.clone(),
            bind(&[Some(b"1"), Some(b"-1")], 0),
            frame(b'S', b""),
        ];
        assert_eq!(build(&frames, &m, &stmts).err().unwrap().0, "2201X");
        let frames = [parse, bind(&[Some(b"x"), Some(b"1")], 0), frame(b'S', b"")];
        assert_eq!(build(&frames, &m, &stmts).err().unwrap().0, "22P02");
    }

    #[test]
    fn unknown_statements_and_partial_fetches_are_refused() {
        let stmts = ClientStatements::default();
        let m = Merge::default();
        let mut b = b"\0s1\0".to_vec();
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let frames = [frame(b'B', &b), frame(b'S', b"")];
        assert_eq!(build(&frames, &m, &stmts).err().unwrap().0, "26000");
        let frames = [
            frame(b'P', b"\0SELECT 1\0\0\0"),
            bind(&[], 0),
            frame(b'E', b"\0\0\0\0\x05"),
            frame(b'S', b""),
        ];
        assert_eq!(build(&frames, &m, &stmts).err().unwrap().0, "0A000");
    }
}
