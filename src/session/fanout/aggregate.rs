//! Combining the one row of aggregates each shard returns (`SELECT count(*), max(x) ...`
//! without GROUP BY) into the row one database holding every shard's rows would return:
//! counts and integer or numeric sums add up exactly, min and max take the least or greatest
//! partial (compared as the merge compares sort keys, bytes forwarded as the shard sent
//! them), bool_and and bool_or combine their partials. A partial NULL (a shard with no rows
//! to aggregate) takes no part, so a sum over no rows stays NULL and a count 0. What cannot
//! combine exactly (a float sum, whose rounding depends on the order of addition; min of
//! text, whose order depends on a collation) is refused, naming the construct.

use std::cmp::Ordering;

use bytes::Bytes;

use super::compare::{self, Column};
use super::numeric::Num;
use crate::protocol::{messages, server, Frame};
use crate::router::fanout::Aggregate;

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
/// shard returned a row (every shard's LIMIT or OFFSET removed it).
pub fn combine(
    kinds: &[Aggregate],
    fields: &[Field],
    partials: &[Frame],
) -> Result<Option<Bytes>, Refusal> {
    if partials.is_empty() {
        return Ok(None);
    }
    if kinds.len() != fields.len() {
        return Err((
            "08P01",
            format!(
                "usher: the shards described {} columns for {} aggregates",
                fields.len(),
                kinds.len()
            ),
        ));
    }
    let mut values: Vec<Option<Bytes>> = Vec::with_capacity(kinds.len());
    for (index, (kind, field)) in kinds.iter().zip(fields).enumerate() {
        let mut column = Vec::with_capacity(partials.len());
        for row in partials {
            let v = server::data_row_value(row.body(), index)
                .map_err(|e| ("08P01", format!("usher: a shard's partial aggregate: {e}")))?;
            if let Some(v) = v {
                column.push(v);
            }
        }
        values.push(combine_column(*kind, *field, &column)?);
    }
    Ok(Some(messages::data_row(&values)))
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
        Aggregate::Sum => match field.type_oid {
            INT8 => add_int8(partials, binary).map(Some),
            NUMERIC => add_numeric(partials, binary).map(Some),
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
    let mut total: i64 = 0;
    for v in partials {
        let x = if binary {
            <[u8; 8]>::try_from(*v).ok().map(i64::from_be_bytes)
        } else {
            std::str::from_utf8(v).ok().and_then(|s| s.parse().ok())
        }
        .ok_or_else(|| unreadable("bigint", v))?;
        total = total
            .checked_add(x)
            .ok_or_else(|| ("22003", "bigint out of range".to_string()))?;
    }
    Ok(if binary {
        Bytes::copy_from_slice(&total.to_be_bytes())
    } else {
        Bytes::from(total.to_string())
    })
}

/// The partial numeric sums added exactly, with the widest display scale.
fn add_numeric(partials: &[&[u8]], binary: bool) -> Result<Bytes, Refusal> {
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
    let total = total.unwrap_or(Num::Finite {
        negative: false,
        int: Vec::new(),
        frac: Vec::new(),
    });
    Ok(if binary {
        total.to_binary()
    } else {
        total.to_text()
    })
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
