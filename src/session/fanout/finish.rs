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
    exchange(parts, sql, &types, &values, result_formats).await
}

/// Runs `sql` (parameter types `types`, values `values`, text) on the first usable part and
/// gathers its answer.
async fn exchange(
    parts: &mut [Part],
    sql: &str,
    types: &[u8],
    values: &[Option<&[u8]>],
    result_formats: &[u8],
) -> Result<Finished, Bytes> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&extended::parse_message(b"", sql.as_bytes(), types));
    out.extend_from_slice(
        &extended::bind_message(values, result_formats).map_err(|e| lost(0, &e.to_string()))?,
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
            b'Z' if f.body() != part.settled() => part.discard = true,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// The array type of `oid`, for the types grouping columns and combined aggregates have.
pub(super) fn array_type(oid: u32) -> Option<u32> {
    Some(match oid {
        16 => 1000,   // bool
        18 => 1002,   // "char"
        19 => 1003,   // name
        20 => 1016,   // int8
        21 => 1005,   // int2
        23 => 1007,   // int4
        25 => 1009,   // text
        26 => 1028,   // oid
        700 => 1021,  // float4
        701 => 1022,  // float8
        1043 => 1015, // varchar
        1082 => 1182, // date
        1114 => 1115, // timestamp
        1184 => 1185, // timestamptz
        1186 => 1187, // interval
        1700 => 1231, // numeric
        2950 => 2951, // uuid
        _ => return None,
    })
}

/// Column `i` of the text DataRows `rows` as one array literal (`{"a","b",NULL}`).
fn array_literal(rows: &[Bytes], i: usize) -> Result<Vec<u8>, Bytes> {
    let mut out = vec![b'{'];
    for (k, row) in rows.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        let body = row.get(5..).unwrap_or_default();
        match server::data_row_value(body, i).map_err(|e| lost(0, &e.to_string()))? {
            None => out.extend_from_slice(b"NULL"),
            Some(v) => {
                out.push(b'"');
                for c in v {
                    if matches!(c, b'"' | b'\\') {
                        out.push(b'\\');
                    }
                    out.push(*c);
                }
                out.push(b'"');
            }
        }
    }
    out.push(b'}');
    Ok(out)
}

/// [`run`] with the combined rows passed as one array parameter per column (`arrays`: each
/// column's array type), for a finishing statement that unnests them.
pub(super) async fn run_arrays(
    parts: &mut [Part],
    sql: &str,
    fields: &[Field],
    arrays: &[u32],
    rows: &[Bytes],
    result_formats: &[u8],
) -> Result<Finished, Bytes> {
    if fields.iter().any(|f| f.format != 0) {
        return Err(lost(0, "a group the shards sent in binary"));
    }
    let literals = (0..fields.len())
        .map(|i| array_literal(rows, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut types = BytesMut::new();
    types.extend_from_slice(
        &u16::try_from(arrays.len())
            .map_err(|_| lost(0, "too many columns for one statement"))?
            .to_be_bytes(),
    );
    for a in arrays {
        types.extend_from_slice(&a.to_be_bytes());
    }
    let values: Vec<Option<&[u8]>> = literals.iter().map(|l| Some(&l[..])).collect();
    exchange(parts, sql, &types, &values, result_formats).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_quote_every_element() {
        let row = |v: Option<&[u8]>| {
            messages::data_row(&[
                v.map(Bytes::copy_from_slice),
                Some(Bytes::from_static(b"1")),
            ])
        };
        let rows = [
            row(Some(b"plain")),
            row(Some(br#"a "quoted" \ one"#)),
            row(None),
            row(Some(b"")),
        ];
        assert_eq!(
            String::from_utf8(array_literal(&rows, 0).unwrap()).unwrap(),
            r#"{"plain","a \"quoted\" \\ one",NULL,""}"#
        );
        assert_eq!(
            array_literal(&rows, 1).unwrap(),
            b"{\"1\",\"1\",\"1\",\"1\"}"
        );
        assert_eq!(array_literal(&[], 0).unwrap(), b"{}");
        assert!(array_literal(&rows, 2).is_err());
        assert_eq!(array_type(2950), Some(2951));
        assert_eq!(array_type(17), None);
    }
}
