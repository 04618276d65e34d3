//! The finishing statement of a read with expressions over aggregates (see
//! `router::fanout_finish`) or of groups finished by Postgres (`router::fanout_group_finish`):
//! once the shards' aggregates or groups are combined, one of the shards' connections runs
//! the client's select list (and HAVING, ORDER BY, LIMIT) over them, the combined values
//! bound as text parameters typed as the shards described them and the client's result
//! formats asked for. Its RowDescription and rows are the client's, in place of the shards'
//! (which describe only the aggregates).

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

/// Runs `sql` over the combined rows `rows` (whole DataRows, their columns described by
/// `fields`, bound row after row as `$1..`) on the first usable part, with the client's
/// `result_formats`. The error is the client's (a whole ErrorResponse).
pub(super) async fn run(
    parts: &mut [Part],
    sql: &str,
    fields: &[Field],
    rows: &[Bytes],
    result_formats: &[u8],
) -> Result<Finished, Bytes> {
    let mut values = Vec::with_capacity(fields.len() * rows.len().max(1));
    let mut types = BytesMut::new();
    let count = fields.len() * rows.len().max(1);
    // Postgres reads the count as unsigned 16 bits.
    types.extend_from_slice(
        &u16::try_from(count)
            .map_err(|_| lost(0, "too many values for one statement"))?
            .to_be_bytes(),
    );
    for f in fields {
        if f.format != 0 {
            return Err(lost(0, "an aggregate the shards sent in binary"));
        }
    }
    for row in rows {
        let body = row.get(5..).unwrap_or_default();
        for (i, f) in fields.iter().enumerate() {
            values.push(server::data_row_value(body, i).map_err(|e| lost(0, &e.to_string()))?);
            types.extend_from_slice(&f.type_oid.to_be_bytes());
        }
    }
    if rows.is_empty() {
        // No group: one typed row of NULLs, which the statement does not take.
        for f in fields {
            values.push(None);
            types.extend_from_slice(&f.type_oid.to_be_bytes());
        }
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
