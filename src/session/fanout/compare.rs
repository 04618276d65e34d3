//! Comparing ORDER BY values of rows from different shards as Postgres compares them, in the
//! format (text or binary) the client asked for: integers, floating point (NaN above every
//! number), numeric (exact, NaN and infinities included), bool, uuid, date, timestamp,
//! timestamptz (by instant, whatever offset each value shows), time, and the byte-ordered
//! `name` and `"char"`. Collatable text is not merged here: its order depends on a
//! collation usher does not know, so such a sort key is refused rather than guessed.

use std::cmp::Ordering;

use crate::router::fanout::SortKey;

/// How the values of one sort column are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// int2, int4, int8.
    Int,
    /// oid (unsigned).
    Oid,
    /// float4, float8.
    Float,
    /// numeric.
    Numeric,
    /// bool.
    Bool,
    /// Byte order: uuid (text and binary forms sort alike), name, "char".
    Bytes,
    /// date.
    Date,
    /// timestamp.
    Timestamp,
    /// timestamptz.
    TimestampTz,
    /// time.
    Time,
}

/// One sort column of the merged rows: where it is in a DataRow and how it compares.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Position in the row.
    pub index: usize,
    /// How values compare.
    pub kind: Kind,
    /// The client asked for it in binary.
    pub binary: bool,
    /// DESC.
    pub descending: bool,
    /// NULLs first.
    pub nulls_first: bool,
}

/// The comparison for a column of type `oid`, or the type's name when usher cannot merge by it.
pub fn kind(oid: u32) -> Result<Kind, String> {
    Ok(match oid {
        20 | 21 | 23 => Kind::Int,
        26 => Kind::Oid,
        700 | 701 => Kind::Float,
        1700 => Kind::Numeric,
        16 => Kind::Bool,
        2950 | 19 | 18 => Kind::Bytes,
        1082 => Kind::Date,
        1114 => Kind::Timestamp,
        1184 => Kind::TimestampTz,
        1083 => Kind::Time,
        25 | 1043 | 1042 => {
            return Err(
                "text (its collation decides the order, and usher does not apply collations yet)"
                    .into(),
            )
        }
        other => return Err(format!("type oid {other}")),
    })
}

impl Column {
    /// The column for `key` at `index` of type `oid` in `format`.
    pub fn new(index: usize, oid: u32, format: i16, key: &SortKey) -> Result<Column, String> {
        Ok(Column {
            index,
            kind: kind(oid)?,
            binary: format == 1,
            descending: key.descending,
            nulls_first: key.nulls_first,
        })
    }

    /// Orders two values of this column (None = NULL) as the ORDER BY key does.
    pub fn compare(&self, a: Option<&[u8]>, b: Option<&[u8]>) -> Result<Ordering, String> {
        let ord = match (a, b) {
            (None, None) => return Ok(Ordering::Equal),
            (None, Some(_)) => {
                return Ok(if self.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                })
            }
            (Some(_), None) => {
                return Ok(if self.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                })
            }
            (Some(a), Some(b)) => self.values(a, b)?,
        };
        Ok(if self.descending { ord.reverse() } else { ord })
    }

    fn values(&self, a: &[u8], b: &[u8]) -> Result<Ordering, String> {
        let bad = |v: &[u8]| {
            format!(
                "a {:?} value usher cannot read: {:?}",
                self.kind,
                String::from_utf8_lossy(v)
            )
        };
        Ok(match self.kind {
            Kind::Int | Kind::Oid => {
                let (x, y) = (
                    self.int(a).ok_or_else(|| bad(a))?,
                    self.int(b).ok_or_else(|| bad(b))?,
                );
                x.cmp(&y)
            }
            Kind::Float => {
                let (x, y) = (
                    self.float(a).ok_or_else(|| bad(a))?,
                    self.float(b).ok_or_else(|| bad(b))?,
                );
                float_cmp(x, y)
            }
            Kind::Numeric => {
                let (x, y) = (
                    self.numeric(a).ok_or_else(|| bad(a))?,
                    self.numeric(b).ok_or_else(|| bad(b))?,
                );
                x.cmp(&y)
            }
            Kind::Bool => {
                let v = |d: &[u8]| match d {
                    b"t" | [1] => Some(1),
                    b"f" | [0] => Some(0),
                    _ => None,
                };
                v(a).ok_or_else(|| bad(a))?
                    .cmp(&v(b).ok_or_else(|| bad(b))?)
            }
            Kind::Bytes => a.cmp(b),
            Kind::Date | Kind::Timestamp | Kind::TimestampTz | Kind::Time => {
                let (x, y) = (
                    self.time(a).ok_or_else(|| bad(a))?,
                    self.time(b).ok_or_else(|| bad(b))?,
                );
                x.cmp(&y)
            }
        })
    }

    fn int(&self, d: &[u8]) -> Option<i64> {
        if self.binary {
            return match d.len() {
                2 => Some(i64::from(i16::from_be_bytes(d.try_into().ok()?))),
                4 if self.kind == Kind::Oid => {
                    Some(i64::from(u32::from_be_bytes(d.try_into().ok()?)))
                }
                4 => Some(i64::from(i32::from_be_bytes(d.try_into().ok()?))),
                8 => Some(i64::from_be_bytes(d.try_into().ok()?)),
                _ => None,
            };
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    }

    fn float(&self, d: &[u8]) -> Option<f64> {
        if self.binary {
            return match d.len() {
                4 => Some(f64::from(f32::from_be_bytes(d.try_into().ok()?))),
                8 => Some(f64::from_be_bytes(d.try_into().ok()?)),
                _ => None,
            };
        }
        match d {
            b"NaN" => Some(f64::NAN),
            b"Infinity" => Some(f64::INFINITY),
            b"-Infinity" => Some(f64::NEG_INFINITY),
            _ => std::str::from_utf8(d).ok()?.parse().ok(),
        }
    }

    fn numeric(&self, d: &[u8]) -> Option<Decimal> {
        if self.binary {
            Decimal::from_binary(d)
        } else {
            Decimal::from_text(d)
        }
    }

    /// Dates and times as one integer: microseconds (days for a date) from 2000-01-01, UTC
    /// for timestamptz; infinities at the ends.
    fn time(&self, d: &[u8]) -> Option<i64> {
        if self.binary {
            return match (self.kind, d.len()) {
                (Kind::Date, 4) => Some(i64::from(i32::from_be_bytes(d.try_into().ok()?))),
                (_, 8) => Some(i64::from_be_bytes(d.try_into().ok()?)),
                _ => None,
            };
        }
        let s = std::str::from_utf8(d).ok()?;
        match (self.kind, s) {
            (_, "infinity") => return Some(i64::MAX),
            (_, "-infinity") => return Some(i64::MIN),
            (Kind::Time, _) => return time_of_day(s),
            _ => {}
        }
        let (s, bc) = match s.strip_suffix(" BC") {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        let (date, rest) = s.split_once(' ').unwrap_or((s, ""));
        let mut parts = date.splitn(3, '-');
        let year: i64 = parts.next()?.parse().ok()?;
        let month: i64 = parts.next()?.parse().ok()?;
        let day: i64 = parts.next()?.parse().ok()?;
        let year = if bc { 1 - year } else { year };
        let days = days_from_civil(year, month, day)?;
        if self.kind == Kind::Date {
            return rest.is_empty().then_some(days);
        }
        // HH:MM:SS[.ffffff], then for timestamptz the offset (+HH[:MM[:SS]]).
        let split = rest.find(['+', '-']).unwrap_or(rest.len());
        let (clock, offset) = rest.split_at(split);
        let micros = time_of_day(clock)?;
        let offset = match (self.kind, offset) {
            (Kind::TimestampTz, o) if !o.is_empty() => offset_seconds(o)?,
            (Kind::TimestampTz, _) => return None,
            (_, "") => 0,
            _ => return None,
        };
        days.checked_mul(86_400_000_000)?
            .checked_add(micros)?
            .checked_sub(offset.checked_mul(1_000_000)?)
    }
}

/// Postgres orders NaN above every number and equal to itself.
fn float_cmp(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// `HH:MM:SS[.ffffff]` as microseconds.
fn time_of_day(s: &str) -> Option<i64> {
    let mut parts = s.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let sec = parts.next()?;
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let whole: i64 = whole.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: i64 = format!("{frac:0<6}").parse().ok()?;
    Some(((h * 60 + m) * 60 + whole) * 1_000_000 + frac)
}

/// `+HH`, `-HH:MM`, `+HH:MM:SS` as seconds east of UTC.
fn offset_seconds(s: &str) -> Option<i64> {
    let (sign, rest) = match s.split_at_checked(1)? {
        ("+", r) => (1, r),
        ("-", r) => (-1, r),
        _ => return None,
    };
    let mut total = 0;
    let mut scale = 3600;
    for part in rest.split(':') {
        if scale == 0 {
            return None;
        }
        total += part.parse::<i64>().ok()? * scale;
        scale /= 60;
    }
    Some(sign * total)
}

/// Days from 2000-01-01 of a proleptic Gregorian date (astronomical year numbering).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 730_425)
}

/// An exact numeric value, ordered as Postgres orders numeric (-Infinity < numbers <
/// Infinity < NaN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    class: i8,
    negative: bool,
    /// Integer digits without leading zeros.
    int: Vec<u8>,
    /// Fraction digits without trailing zeros.
    frac: Vec<u8>,
}

impl Decimal {
    /// Parses numeric's text output (`-12.50`, `NaN`, `Infinity`, `-Infinity`).
    pub fn from_text(d: &[u8]) -> Option<Decimal> {
        let special = |class| Decimal {
            class,
            negative: false,
            int: Vec::new(),
            frac: Vec::new(),
        };
        match d {
            b"NaN" => return Some(special(3)),
            b"Infinity" => return Some(special(2)),
            b"-Infinity" => return Some(special(0)),
            _ => {}
        }
        let (negative, digits) = match d.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, d),
        };
        let (int, frac) = match digits.iter().position(|b| *b == b'.') {
            Some(i) => (digits.get(..i)?, digits.get(i + 1..)?),
            None => (digits, &[][..]),
        };
        if int.is_empty() && frac.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        let int: Vec<u8> = int.iter().copied().skip_while(|b| *b == b'0').collect();
        let mut frac = frac.to_vec();
        while frac.last() == Some(&b'0') {
            frac.pop();
        }
        let zero = int.is_empty() && frac.is_empty();
        Some(Decimal {
            class: 1,
            negative: negative && !zero,
            int,
            frac,
        })
    }

    /// Decodes numeric's binary form (ndigits, weight, sign, dscale, base-10000 digits).
    pub fn from_binary(d: &[u8]) -> Option<Decimal> {
        let word =
            |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*d.get(i)?, *d.get(i + 1)?])) };
        let ndigits = usize::from(word(0)?);
        let weight = i64::from(word(2)? as i16);
        let sign = word(4)?;
        match sign {
            0xC000 => return Decimal::from_text(b"NaN"),
            0xD000 => return Decimal::from_text(b"Infinity"),
            0xF000 => return Decimal::from_text(b"-Infinity"),
            0x0000 | 0x4000 => {}
            _ => return None,
        }
        if d.len() != 8 + 2 * ndigits {
            return None;
        }
        // Digit k stands for 10000^(weight - k); powers outside the stored digits are 0.
        let digit = |p: i64| -> Option<u16> {
            match usize::try_from(weight - p) {
                Ok(k) if k < ndigits => word(8 + 2 * k),
                _ => Some(0),
            }
        };
        let mut text = String::new();
        if sign == 0x4000 {
            text.push('-');
        }
        for p in (0..=weight.max(0)).rev() {
            text.push_str(&format!("{:04}", digit(p)?));
        }
        text.push('.');
        let lowest = weight - ndigits as i64 + 1;
        let mut p = -1;
        while p >= lowest {
            text.push_str(&format!("{:04}", digit(p)?));
            p -= 1;
        }
        Decimal::from_text(text.as_bytes())
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_class = self.class.cmp(&other.class);
        if by_class != Ordering::Equal || self.class != 1 {
            return by_class;
        }
        let magnitude = self
            .int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(&other.int))
            .then_with(|| self.frac.cmp(&other.frac));
        match (self.negative, other.negative) {
            (false, false) => magnitude,
            (true, true) => magnitude.reverse(),
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
#[path = "compare_tests.rs"]
mod tests;
