//! Sort-key comparison of text and binary values, with Postgres's own orderings.

use super::*;
use crate::router::fanout::{SortColumn, SortKey};

fn col(oid: u32, binary: bool) -> Column {
    let key = SortKey {
        column: SortColumn::Position(0),
        descending: false,
        nulls_first: false,
    };
    Column::new(0, oid, i16::from(binary), &key).unwrap()
}

/// `values` are in ascending order: every pair compares as their positions do.
fn ascending(c: Column, values: &[&[u8]]) {
    for (i, a) in values.iter().enumerate() {
        for (j, b) in values.iter().enumerate() {
            assert_eq!(
                c.compare(Some(a), Some(b)).unwrap(),
                i.cmp(&j),
                "{:?} vs {:?}",
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b)
            );
        }
    }
}

#[test]
fn numbers_in_text() {
    ascending(
        col(20, false),
        &[b"-9223372036854775808", b"-5", b"0", b"7", b"10"],
    );
    ascending(
        col(701, false),
        &[
            b"-Infinity",
            b"-1.5",
            b"0",
            b"2e-05",
            b"3",
            b"Infinity",
            b"NaN",
        ],
    );
    ascending(
        col(1700, false),
        &[
            b"-Infinity",
            b"-10.5",
            b"-2",
            b"-0.001",
            b"0",
            b"0.001",
            b"0.01",
            b"1.9",
            b"2",
            b"10",
            b"Infinity",
            b"NaN",
        ],
    );
    let n = col(1700, false);
    assert_eq!(
        n.compare(Some(b"2.50"), Some(b"2.5")).unwrap(),
        Ordering::Equal
    );
    assert_eq!(
        n.compare(Some(b"-0.00"), Some(b"0")).unwrap(),
        Ordering::Equal
    );
    assert!(
        n.compare(Some(b"1e5"), Some(b"1")).is_err(),
        "not numeric's output"
    );
}

#[test]
fn numbers_in_binary() {
    let i4 = |v: i32| v.to_be_bytes().to_vec();
    let c = col(23, true);
    let vals = [i4(i32::MIN), i4(-1), i4(0), i4(300)];
    let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
    ascending(c, &refs);
    let f8 = |v: f64| v.to_be_bytes().to_vec();
    let vals = [
        f8(f64::NEG_INFINITY),
        f8(-0.5),
        f8(0.0),
        f8(1e300),
        f8(f64::NAN),
    ];
    let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
    ascending(col(701, true), &refs);
    // numeric binary: ndigits, weight, sign, dscale, digits (base 10000).
    let num = |weight: i16, sign: u16, digits: &[u16]| {
        let mut b = (digits.len() as u16).to_be_bytes().to_vec();
        b.extend(weight.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(0u16.to_be_bytes());
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    };
    let vals = [
        num(0, 0xF000, &[]),        // -Infinity
        num(1, 0x4000, &[1, 5000]), // -10000.5
        num(-1, 0x4000, &[25]),     // -0.0025
        num(0, 0, &[]),             // 0
        num(-2, 0, &[7]),           // 0.00000007
        num(-1, 0, &[25]),          // 0.0025
        num(0, 0, &[12, 3400]),     // 12.34
        num(1, 0, &[1]),            // 10000
        num(0, 0xD000, &[]),        // Infinity
        num(0, 0xC000, &[]),        // NaN
    ];
    let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
    ascending(col(1700, true), &refs);
    assert_eq!(
        Decimal::from_binary(&num(0, 0, &[12, 3400])),
        Decimal::from_text(b"12.34")
    );
    assert_eq!(
        Decimal::from_binary(&num(-2, 0, &[7])),
        Decimal::from_text(b"0.00000007")
    );
    assert!(
        Decimal::from_binary(&num(0, 0, &[1])[..9]).is_none(),
        "short"
    );
}

#[test]
fn dates_and_times_by_instant() {
    ascending(
        col(1082, false),
        &[
            b"-infinity",
            b"0044-03-15 BC",
            b"0001-01-01",
            b"1999-12-31",
            b"2000-01-01",
            b"10000-01-01",
            b"infinity",
        ],
    );
    ascending(
        col(1114, false),
        &[
            b"2026-01-01 00:00:00",
            b"2026-01-01 00:00:00.5",
            b"2026-01-01 00:00:01",
            b"2026-01-02 00:00:00",
        ],
    );
    // A DST fall-back: 01:30-04 is earlier than 01:10-05.
    ascending(
        col(1184, false),
        &[
            b"2026-11-01 01:30:00-04",
            b"2026-11-01 01:10:00-05",
            b"2026-11-01 12:00:00+05:30",
            b"2026-11-01 07:00:00.25+00",
        ],
    );
    ascending(
        col(1083, false),
        &[
            b"00:00:00",
            b"09:05:00.123",
            b"23:59:59.999999",
            b"24:00:00",
        ],
    );
    assert!(
        col(1082, false)
            .compare(Some(b"12/03/2026"), Some(b"2026-12-03"))
            .is_err(),
        "not ISO"
    );
    let ts = |v: i64| v.to_be_bytes().to_vec();
    let vals = [ts(i64::MIN), ts(-1), ts(0), ts(i64::MAX)];
    let refs: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
    ascending(col(1184, true), &refs);
}

#[test]
fn nulls_direction_and_refusals() {
    let key = |descending, nulls_first| SortKey {
        column: SortColumn::Position(0),
        descending,
        nulls_first,
    };
    let asc = Column::new(0, 23, 0, &key(false, false)).unwrap();
    assert_eq!(asc.compare(None, Some(b"1")).unwrap(), Ordering::Greater);
    let desc = Column::new(0, 23, 0, &key(true, true)).unwrap();
    assert_eq!(desc.compare(None, Some(b"1")).unwrap(), Ordering::Less);
    assert_eq!(
        desc.compare(Some(b"2"), Some(b"1")).unwrap(),
        Ordering::Less
    );
    ascending(col(16, false), &[b"f", b"t"]);
    ascending(
        col(2950, false),
        &[
            b"00000000-0000-0000-0000-000000000001",
            b"7d3f1c2a-9b8e-4f6d-a5c4-3b2a1f0e9d8c",
            b"ffffffff-0000-0000-0000-000000000000",
        ],
    );
    assert!(kind(25).unwrap_err().contains("collation"));
    assert!(kind(1186).is_err(), "interval");
}
