//! Combining the one row of aggregates each shard returns (`SELECT count(*), max(x) ...`
//! without GROUP BY) into the row one database holding every shard's rows would return:
//! counts and integer or numeric sums add up exactly, min and max take the least or greatest
//! partial (compared as the merge compares sort keys, bytes forwarded as the shard sent
//! them), bool_and and bool_or combine their partials, and avg() is the whole's sum divided
//! by the whole's count (each shard returns both as hidden columns; see `average`). A
//! partial NULL (a shard with no rows to aggregate) takes no part, so a sum over no rows
//! stays NULL and a count 0. What cannot combine exactly (a float sum, whose rounding
//! depends on the order of addition; min of text, whose order depends on a collation) is
//! refused, naming the construct.

use std::cmp::Ordering;

use bytes::Bytes;

use super::compare::{self, Column};
use super::numeric::Num;
use crate::protocol::{messages, server, Frame};
use crate::router::fanout::{hidden_columns, Aggregate};

/// One output column of the aggregate row: its type and format from the RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The result type's OID.
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// Why the partial rows cannot be combined: an error for the client (SQLSTATE, message).
pub type Refusal = (&'static str, String);

/// int8, the type of a count and of a sum of int2 or int4.
const INT8: u32 = 20;
/// numeric, the type of a sum of int8 or numeric.
const NUMERIC: u32 = 1700;
/// bool.
const BOOL: u32 = 16;

/// The combined row of `partials` (one DataRow per shard that returned one), or none when no
/// shard returned a row (every shard's LIMIT or OFFSET removed it). `fields` describes the
/// shards' columns: the client's, then the hidden partials of each avg().
pub fn combine(
    kinds: &[Aggregate],
    fields: &[Field],
    partials: &[Frame],
) -> Result<Option<Bytes>, Refusal> {
    if partials.is_empty() {
        return Ok(None);
    }
    if kinds.len() + hidden_columns(kinds) != fields.len() {
        return Err((
            "08P01",
            format!(
                "usher: the shards described {} columns for {} aggregates",
                fields.len(),
                kinds.len()
            ),
        ));
    }
    let rows: Vec<&[u8]> = partials.iter().map(Frame::body).collect();
    let mut values: Vec<Option<Bytes>> = Vec::with_capacity(kinds.len());
    let mut hidden = kinds.len();
    for (index, (kind, field)) in kinds.iter().zip(fields).enumerate() {
        values.push(if *kind == Aggregate::Avg {
            hidden += 2;
            let (sums, counts) = (column_of(&rows, hidden - 2)?, column_of(&rows, hidden - 1)?);
            combine_avg(*field, fields, hidden - 2, &sums, &counts)?
        } else {
            combine_column(*kind, *field, &column_of(&rows, index)?)?
        });
    }
    Ok(Some(messages::data_row(&values)))
}

/// The non-NULL values of column `index` of the DataRow bodies `rows`.
pub fn column_of<'a>(rows: &[&'a [u8]], index: usize) -> Result<Vec<&'a [u8]>, Refusal> {
    let mut column = Vec::with_capacity(rows.len());
    for row in rows {
        let v = server::data_row_value(row, index)
            .map_err(|e| ("08P01", format!("usher: a shard's partial aggregate: {e}")))?;
        column.extend(v);
    }
    Ok(column)
}

/// An avg() column (described by `field`) combined from the non-NULL partial `sums` and
/// the partial `counts` the shards returned in columns `at` and `at + 1` (described by
/// `fields`): NULL over no rows, else the whole's sum divided as numeric divides.
pub fn combine_avg(
    field: Field,
    fields: &[Field],
    at: usize,
    sums: &[&[u8]],
    counts: &[&[u8]],
) -> Result<Option<Bytes>, Refusal> {
    let (Some(sum_field), Some(count_field)) = (fields.get(at), fields.get(at + 1)) else {
        return Err((
            "08P01",
            "usher: the shards did not return avg()'s partial sum and count".into(),
        ));
    };
    if !matches!(sum_field.type_oid, INT8 | NUMERIC) {
        return Err(refuse(&format!(
            "avg() of {} (only integer and numeric averages combine exactly)",
            type_name(sum_field.type_oid)
        )));
    }
    expect_type(field, NUMERIC, "avg()")?;
    expect_type(*count_field, INT8, "count()")?;
    let count = sum_int8(counts, count_field.format == 1)?;
    let Ok(count @ 1..) = u64::try_from(count) else {
        return Ok(None);
    };
    let binary = sum_field.format == 1;
    let sum = if sum_field.type_oid == INT8 {
        let total: i128 = sums
            .iter()
            .map(|v| read_int8(v, binary).map(i128::from))
            .sum::<Result<i128, Refusal>>()?;
        Num::from_text(total.to_string().as_bytes()).ok_or_else(|| unreadable("bigint", b""))?
    } else {
        sum_numeric(sums, binary)?
    };
    let avg = super::average::average(&sum, count);
    Ok(Some(if field.format == 1 {
        avg.to_binary()
    } else {
        avg.to_text()
    }))
}

/// One column's combined value from its non-NULL partials (NULL when there are none).
pub fn combine_column(
    kind: Aggregate,
    field: Field,
    partials: &[&[u8]],
) -> Result<Option<Bytes>, Refusal> {
    if partials.is_empty() {
        // count() is never NULL: no shard returned NULL for one.
        return Ok(None);
    }
    let binary = field.format == 1;
    match kind {
        Aggregate::Count => {
            expect_type(field, INT8, "count()")?;
            add_int8(partials, binary).map(Some)
        }
        Aggregate::Avg => Err((
            "XX000",
            "usher: avg() combines from its partial sums and counts, not from averages".into(),
        )),
        Aggregate::Sum => match field.type_oid {
            INT8 => add_int8(partials, binary).map(Some),
            NUMERIC => {
                let total = sum_numeric(partials, binary)?;
                Ok(Some(if binary {
                    total.to_binary()
                } else {
                    total.to_text()
                }))
            }
            other => Err(refuse(&format!(
                "sum() of {} (only integer and numeric sums combine exactly)",
                type_name(other)
            ))),
        },
        Aggregate::Min | Aggregate::Max => {
            let kind_of = compare::kind(field.type_oid)
                .map_err(|t| refuse(&format!("min() or max() of {t}")))?;
            let column = Column {
                index: 0,
                kind: kind_of,
                binary,
                descending: kind == Aggregate::Max,
                nulls_first: false,
            };
            let mut best = partials.first().copied().unwrap_or_default();
            for v in partials.iter().skip(1) {
                let ord = column
                    .compare(Some(v), Some(best))
                    .map_err(|e| ("08P01", format!("usher: a shard's partial aggregate: {e}")))?;
                if ord == Ordering::Less {
                    best = v;
                }
            }
            Ok(Some(Bytes::copy_from_slice(best)))
        }
        Aggregate::And | Aggregate::Or => {
            expect_type(field, BOOL, "bool_and() or bool_or()")?;
            let mut acc = kind == Aggregate::And;
            for v in partials {
                let b = match *v {
                    b"t" | [1] => true,
                    b"f" | [0] => false,
                    _ => return Err(unreadable("bool", v)),
                };
                acc = if kind == Aggregate::And {
                    acc && b
                } else {
                    acc || b
                };
            }
            Ok(Some(match (binary, acc) {
                (true, b) => Bytes::copy_from_slice(&[u8::from(b)]),
                (false, true) => Bytes::from_static(b"t"),
                (false, false) => Bytes::from_static(b"f"),
            }))
        }
    }
}

/// The partial counts or int8 sums added, as int8 (an overflow is Postgres's error).
fn add_int8(partials: &[&[u8]], binary: bool) -> Result<Bytes, Refusal> {
    let total = sum_int8(partials, binary)?;
    Ok(if binary {
        Bytes::copy_from_slice(&total.to_be_bytes())
    } else {
        Bytes::from(total.to_string())
    })
}

/// The int8 partials added (an overflow is Postgres's error).
fn sum_int8(partials: &[&[u8]], binary: bool) -> Result<i64, Refusal> {
    let mut total: i64 = 0;
    for v in partials {
        total = total
            .checked_add(read_int8(v, binary)?)
            .ok_or_else(|| ("22003", "bigint out of range".to_string()))?;
    }
    Ok(total)
}

/// One int8 partial, in text or binary.
fn read_int8(v: &[u8], binary: bool) -> Result<i64, Refusal> {
    if binary {
        <[u8; 8]>::try_from(v).ok().map(i64::from_be_bytes)
    } else {
        std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
    }
    .ok_or_else(|| unreadable("bigint", v))
}

/// The partial numeric sums added exactly, with the widest display scale.
fn sum_numeric(partials: &[&[u8]], binary: bool) -> Result<Num, Refusal> {
    let mut total: Option<Num> = None;
    for v in partials {
        let x = if binary {
            Num::from_binary(v)
        } else {
            Num::from_text(v)
        }
        .ok_or_else(|| unreadable("numeric", v))?;
        total = Some(match total {
            None => x,
            Some(t) => t.add(&x),
        });
    }
    Ok(total.unwrap_or(Num::Finite {
        negative: false,
        int: Vec::new(),
        frac: Vec::new(),
    }))
}

fn expect_type(field: Field, oid: u32, what: &str) -> Result<(), Refusal> {
    if field.type_oid == oid {
        Ok(())
    } else {
        Err(refuse(&format!(
            "{what} returning {} (a user-defined aggregate of that name?)",
            type_name(field.type_oid)
        )))
    }
}

fn refuse(construct: &str) -> Refusal {
    (
        "0A000",
        format!(
            "usher: a query across shards is run only when its rows merge exactly, and this one has {construct}"
        ),
    )
}

fn unreadable(what: &str, v: &[u8]) -> Refusal {
    (
        "08P01",
        format!(
            "usher: a shard sent a partial {what} usher cannot read: {:?}",
            String::from_utf8_lossy(v)
        ),
    )
}

fn type_name(oid: u32) -> String {
    match oid {
        700 => "real".into(),
        701 => "double precision".into(),
        1186 => "interval".into(),
        790 => "money".into(),
        25 | 1043 | 1042 => "text".into(),
        other => format!("type oid {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Aggregate::*;

    fn row(values: &[Option<&[u8]>]) -> Frame {
        let owned: Vec<Option<Bytes>> = values
            .iter()
            .map(|v| v.map(Bytes::copy_from_slice))
            .collect();
        let raw = messages::data_row(&owned);
        Frame::new(b'D', raw.get(5..).unwrap_or_default())
    }

    fn text(oid: u32) -> Field {
        Field {
            type_oid: oid,
            format: 0,
        }
    }

    fn values(row: &Bytes) -> Vec<Option<Vec<u8>>> {
        let body = row.get(5..).unwrap_or_default();
        let n = usize::try_from(i16::from_be_bytes([body[0], body[1]])).unwrap();
        (0..n)
            .map(|i| server::data_row_value(body, i).unwrap().map(<[u8]>::to_vec))
            .collect()
    }

    #[test]
    fn counts_sums_and_extremes_combine() {
        let kinds = [Count, Sum, Sum, Min, Max, And, Or];
        let fields = [
            text(20),
            text(20),
            text(1700),
            text(23),
            text(1184),
            text(16),
            text(16),
        ];
        let partials = [
            row(&[
                Some(b"3"),
                Some(b"10"),
                Some(b"1.5"),
                Some(b"-2"),
                Some(b"2026-01-01 10:00:00+00"),
                Some(b"t"),
                Some(b"f"),
            ]),
            row(&[Some(b"0"), None, None, None, None, None, None]),
            row(&[
                Some(b"4"),
                Some(b"-3"),
                Some(b"2.25"),
                Some(b"7"),
                Some(b"2026-01-01 12:00:00+01"),
                Some(b"f"),
                Some(b"t"),
            ]),
        ];
        let out = combine(&kinds, &fields, &partials).unwrap().unwrap();
        let got = values(&out);
        let want: Vec<Option<Vec<u8>>> = [
            Some(&b"7"[..]),
            Some(b"7"),
            Some(b"3.75"),
            Some(b"-2"),
            // 11:00 UTC, the later instant.
            Some(b"2026-01-01 12:00:00+01"),
            Some(b"f"),
            Some(b"t"),
        ]
        .iter()
        .map(|v| v.map(<[u8]>::to_vec))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn no_rows_anywhere_gives_zero_counts_and_null_sums() {
        let partials = [row(&[Some(b"0"), None]), row(&[Some(b"0"), None])];
        let out = combine(&[Count, Sum], &[text(20), text(1700)], &partials)
            .unwrap()
            .unwrap();
        assert_eq!(values(&out), vec![Some(b"0".to_vec()), None]);
        assert_eq!(combine(&[Count], &[text(20)], &[]).unwrap(), None);
    }

    #[test]
    fn binary_partials_stay_binary() {
        let f = Field {
            type_oid: 20,
            format: 1,
        };
        let partials = [
            row(&[Some(&5i64.to_be_bytes()), Some(&[1])]),
            row(&[Some(&6i64.to_be_bytes()), Some(&[0])]),
        ];
        let bool_bin = Field {
            type_oid: 16,
            format: 1,
        };
        let out = combine(&[Count, Or], &[f, bool_bin], &partials)
            .unwrap()
            .unwrap();
        assert_eq!(
            values(&out),
            vec![Some(11i64.to_be_bytes().to_vec()), Some(vec![1])]
        );
    }

    #[test]
    fn an_average_divides_the_combined_sum_by_the_combined_count() {
        // avg(int) and avg(numeric): visible avg columns, then (sum, count) per avg().
        let kinds = [Avg, Count, Avg];
        let fields = [
            text(1700),
            text(20),
            text(1700),
            text(20),
            text(20),
            text(1700),
            text(20),
        ];
        let partials = [
            row(&[
                Some(b"2.5"),
                Some(b"2"),
                Some(b"1.25"),
                Some(b"5"),
                Some(b"2"),
                Some(b"2.50"),
                Some(b"2"),
            ]),
            row(&[None, Some(b"0"), None, None, Some(b"0"), None, Some(b"0")]),
            row(&[
                Some(b"1"),
                Some(b"1"),
                Some(b"3"),
                Some(b"1"),
                Some(b"1"),
                Some(b"3"),
                Some(b"1"),
            ]),
        ];
        let out = combine(&kinds, &fields, &partials).unwrap().unwrap();
        assert_eq!(
            values(&out),
            vec![
                Some(b"2.0000000000000000".to_vec()),
                Some(b"3".to_vec()),
                Some(b"1.8333333333333333".to_vec()),
            ]
        );
        // Over no rows: NULL. Binary in, binary out.
        let none = [row(&[None, None, Some(b"0")])];
        let out = combine(&[Avg], &[text(1700), text(20), text(20)], &none).unwrap();
        assert_eq!(values(&out.unwrap()), vec![None]);
        let bin = |oid| Field {
            type_oid: oid,
            format: 1,
        };
        let p = [row(&[
            Some(b"x"),
            Some(&7i64.to_be_bytes()),
            Some(&2i64.to_be_bytes()),
        ])];
        let out = combine(&[Avg], &[bin(1700), bin(20), bin(20)], &p).unwrap();
        let want = Num::from_text(b"3.5000000000000000").unwrap().to_binary();
        assert_eq!(values(&out.unwrap()), vec![Some(want.to_vec())]);
        // A float average does not combine exactly; missing partials are a shard's fault.
        let p = [row(&[Some(b"1"), Some(b"1"), Some(b"1")])];
        let f = [text(701), text(701), text(20)];
        assert_eq!(combine(&[Avg], &f, &p).unwrap_err().0, "0A000");
        assert_eq!(combine(&[Avg], &f[..1], &p).unwrap_err().0, "08P01");
    }

    #[test]
    fn what_cannot_combine_exactly_is_refused() {
        let p = [row(&[Some(b"1.5")]), row(&[Some(b"2.5")])];
        assert_eq!(combine(&[Sum], &[text(701)], &p).unwrap_err().0, "0A000");
        assert_eq!(combine(&[Min], &[text(25)], &p).unwrap_err().0, "0A000");
        let big = [
            row(&[Some(i64::MAX.to_string().as_bytes())]),
            row(&[Some(b"1")]),
        ];
        assert_eq!(combine(&[Count], &[text(20)], &big).unwrap_err().0, "22003");
        let garbage = [row(&[Some(b"x")]), row(&[Some(b"1")])];
        assert_eq!(
            combine(&[Count], &[text(20)], &garbage).unwrap_err().0,
            "08P01"
        );
        let short = [row(&[]), row(&[])];
        assert_eq!(
            combine(&[Count], &[text(20)], &short).unwrap_err().0,
            "08P01"
        );
    }
}
