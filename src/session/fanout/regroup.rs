//! Combining partial groups (GROUP BY without the sharding key, see
//! `router::fanout_regroup`): every shard's rows are gathered, rows with equal grouping
//! values are one group, whose aggregate columns combine as the no-GROUP-BY aggregates do
//! (`aggregate::combine_column`), and the groups are ordered by the ORDER BY before LIMIT
//! and OFFSET apply. Grouping values are compared by their bytes, which is exact only for
//! types whose equal values have one form: integers, bool, uuid, text and varchar (under a
//! deterministic collation), name, "char", oid and date. Others (numeric `1.0` = `1.00`,
//! floats, timestamps shown in an offset, arrays, json) are refused, naming the type.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;

use bytes::Bytes;

use super::aggregate::{self, Field, Refusal};
use super::compare::Column;
use crate::protocol::{messages, server, Frame};
use crate::router::fanout::{hidden_columns, Aggregate};

/// Partial rows gathered beyond this many fail the query (54000) instead of growing
/// usher's memory without bound.
pub const MAX_PARTIAL_ROWS: usize = 1_000_000;

/// Types whose equal values are equal bytes, in text and in binary.
fn groups_by_bytes(oid: u32) -> bool {
    matches!(
        oid,
        16 | 18 | 19 | 20 | 21 | 23 | 25 | 26 | 1043 | 1082 | 2950
    )
}

/// Checks the grouping columns' types once the shards described the result.
pub fn check_fields(columns: &[Option<Aggregate>], fields: &[Field]) -> Result<(), Refusal> {
    if columns.len() + hidden_columns(columns.iter().flatten()) != fields.len() {
        return Err((
            "08P01",
            format!(
                "usher: the shards described {} columns for {} grouped columns",
                fields.len(),
                columns.len()
            ),
        ));
    }
    for (kind, field) in columns.iter().zip(fields) {
        if kind.is_none() && !groups_by_bytes(field.type_oid) {
            return Err((
                "0A000",
                format!(
                    "usher: a query across shards is run only when its rows merge exactly, and this one has GROUP BY without the sharding key on a column of type oid {} (only integer, bool, uuid, text, varchar, name, \"char\", oid and date groups combine exactly)",
                    field.type_oid
                ),
            ));
        }
    }
    Ok(())
}

/// The combined groups of `partials` (every shard's rows), as DataRows in `order`.
pub fn regroup(
    columns: &[Option<Aggregate>],
    fields: &[Field],
    partials: &[Frame],
    order: &[Column],
) -> Result<Vec<Bytes>, Refusal> {
    check_fields(columns, fields)?;
    let bad = |e: crate::protocol::ProtocolError| {
        ("08P01", format!("usher: a shard's partial group: {e}"))
    };
    let keys: Vec<usize> = (0..columns.len())
        .filter(|i| columns[*i].is_none())
        .collect();
    let mut index: HashMap<Vec<Option<&[u8]>>, usize> = HashMap::new();
    let mut groups: Vec<Vec<Vec<Option<&[u8]>>>> = Vec::new();
    for row in partials {
        let values = (0..fields.len())
            .map(|i| server::data_row_value(row.body(), i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let key: Vec<Option<&[u8]>> = keys.iter().map(|i| values[*i]).collect();
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(values);
    }
    let mut rows: Vec<Vec<Option<Bytes>>> = Vec::with_capacity(groups.len());
    for group in &groups {
        let mut out = Vec::with_capacity(columns.len());
        let mut hidden = columns.len();
        for (i, (kind, field)) in columns.iter().zip(fields).enumerate() {
            let of = |c: usize| -> Vec<&[u8]> {
                group
                    .iter()
                    .filter_map(|r| r.get(c).copied().flatten())
                    .collect()
            };
            out.push(match kind {
                None => group.first().and_then(|r| r[i]).map(Bytes::copy_from_slice),
                Some(Aggregate::Avg) => {
                    hidden += 2;
                    let at = hidden - 2;
                    aggregate::combine_avg(*field, fields, at, &of(at), &of(at + 1))?
                }
                Some(kind) => aggregate::combine_column(*kind, *field, &of(i))?,
            });
        }
        rows.push(out);
    }
    if !order.is_empty() {
        let failed = RefCell::new(None);
        rows.sort_by(|a, b| {
            for c in order {
                let x = a.get(c.index).and_then(|v| v.as_deref());
                let y = b.get(c.index).and_then(|v| v.as_deref());
                match c.compare(x, y) {
                    Ok(Ordering::Equal) => continue,
                    Ok(o) => return o,
                    Err(e) => {
                        failed.borrow_mut().get_or_insert(e);
                        return Ordering::Equal;
                    }
                }
            }
            Ordering::Equal
        });
        if let Some(e) = failed.into_inner() {
            return Err(("08P01", format!("usher: a shard's partial group: {e}")));
        }
    }
    Ok(rows.iter().map(|r| messages::data_row(r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::fanout::{SortColumn, SortKey};

    fn row(values: &[Option<&str>]) -> Frame {
        let owned: Vec<Option<Bytes>> = values
            .iter()
            .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
            .collect();
        let raw = messages::data_row(&owned);
        crate::protocol::split_frame(&mut bytes::BytesMut::from(&raw[..]), 1 << 20)
            .unwrap()
            .unwrap()
    }

    fn text(oid: u32) -> Field {
        Field {
            type_oid: oid,
            format: 0,
        }
    }

    fn values(rows: &[Bytes]) -> Vec<Vec<Option<String>>> {
        rows.iter()
            .map(|r| {
                let body = r.get(5..).unwrap_or_default();
                (0..3)
                    .map(|i| {
                        server::data_row_value(body, i)
                            .unwrap()
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn equal_groups_combine_and_sort() {
        let columns = [None, Some(Aggregate::Count), Some(Aggregate::Max)];
        let fields = [text(25), text(20), text(23)];
        let partials = [
            row(&[Some("done"), Some("2"), Some("7")]),
            row(&[Some("open"), Some("5"), None]),
            row(&[None, Some("1"), Some("3")]),
            row(&[Some("done"), Some("4"), Some("9")]),
            row(&[None, Some("2"), Some("1")]),
        ];
        let by_count = Column::new(
            1,
            20,
            0,
            &SortKey {
                column: SortColumn::Position(1),
                descending: true,
                nulls_first: true,
            },
        )
        .unwrap();
        let rows = regroup(&columns, &fields, &partials, &[by_count]).unwrap();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            values(&rows),
            vec![
                vec![s("done"), s("6"), s("9")],
                vec![s("open"), s("5"), None],
                vec![None, s("3"), s("3")],
            ]
        );
    }

    #[test]
    fn inexact_group_types_are_refused() {
        let e = regroup(
            &[None, Some(Aggregate::Count)],
            &[text(1700), text(20)],
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.0, "0A000");
        assert!(e.1.contains("type oid 1700"), "{}", e.1);
    }
}
