//! The finishing statement of a read with expressions over aggregates (see
//! `router::fanout_finish`): once the shards' aggregates are combined, one of the shards'
//! connections runs the client's select list over them (`SELECT round($1, 2) AS round`), the
//! combined values bound as text parameters typed as the aggregates' results and the
//! client's result formats asked for. Its RowDescription and row are the client's, in place
//! of the shards' (which describe only the aggregates).

use bytes::{Bytes, BytesMut};

use super::aggregate::Field;
use super::{lost, Part};
use crate::protocol::{extended, messages, server};

/// A frame before the rows, held until the finishing statement answered.
pub(super) enum Header {
    /// Forwarded as the shards sent it (ParseComplete, BindComplete, ...).
    Frame(Bytes),
    /// The description of a statement: the finishing one's, without result formats.
    StatementDescription,
    /// The description of the portal: the finishing one's.
    PortalDescription,
}

/// What the finishing statement answered: its RowDescription (a whole frame) and rows.
pub(super) struct Finished {
    /// The RowDescription, when it returns rows (`None` for NoData).
    pub description: Option<Bytes>,
    /// Its DataRows, whole frames.
    pub rows: Vec<Bytes>,
    /// Notices it raised, whole frames.
    pub notices: Vec<Bytes>,
}

/// Runs `sql` over the combined aggregate row `row` (a whole DataRow; its columns described
/// by `fields`) on the first usable part, with the client's `result_formats`. The error is
/// the client's (a whole ErrorResponse).
pub(super) async fn run(
    parts: &mut [Part],
    sql: &str,
    fields: &[Field],
    row: &Bytes,
    result_formats: &[u8],
) -> Result<Finished, Bytes> {
    let body = row.get(5..).unwrap_or_default();
    let mut values = Vec::with_capacity(fields.len());
    let mut types = BytesMut::new();
    types.extend_from_slice(
        &i16::try_from(fields.len())
            .map_err(|_| lost(0, "too many aggregates"))?
            .to_be_bytes(),
    );
    for (i, f) in fields.iter().enumerate() {
        if f.format != 0 {
            return Err(lost(0, "an aggregate the shards sent in binary"));
        }
        values.push(server::data_row_value(body, i).map_err(|e| lost(0, &e.to_string()))?);
        types.extend_from_slice(&f.type_oid.to_be_bytes());
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(&extended::parse_message(b"", sql.as_bytes(), &types));
    out.extend_from_slice(
        &extended::bind_message(&values, result_formats).map_err(|e| lost(0, &e.to_string()))?,
    );
    extended::describe_portal(&mut out, b"");
    out.extend_from_slice(messages::EXECUTE_UNNAMED);
    out.extend_from_slice(messages::SYNC);
    let Some((i, part)) = parts
        .iter_mut()
        .enumerate()
        .find(|(_, p)| p.ready && !p.discard)
    else {
        return Err(lost(0, "no shard connection left to finish the query on"));
    };
    let frames = match part.lease.conn().exchange(&out).await {
        Ok(f) => f,
        Err(e) => {
            part.discard = true;
            return Err(lost(i, &e.to_string()));
        }
    };
    let mut done = Finished {
        description: None,
        rows: Vec::new(),
        notices: Vec::new(),
    };
    let mut error = None;
    for f in frames {
        match f.tag {
            b'T' => done.description = Some(f.raw),
            b'D' => done.rows.push(f.raw),
            b'N' => done.notices.push(f.raw),
            b'E' => {
                error.get_or_insert(f.raw);
            }
            b'Z' if f.body() != b"I" => part.discard = true,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}
