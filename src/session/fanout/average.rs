//! avg() across shards: the whole's sum (exact, see `numeric`) divided by the whole's count
//! the way Postgres's `numeric_div` divides, so the average prints the digits one database
//! prints. The result scale comes from `select_div_scale`: at least 16 significant digits
//! (`NUMERIC_MIN_SIG_DIGITS`), no fewer decimals than the sum shows, at most 1000; the last
//! digit is rounded half away from zero.

use super::numeric::Num;

/// Significant digits a quotient has at least (Postgres's `NUMERIC_MIN_SIG_DIGITS`).
const MIN_SIG_DIGITS: i64 = 16;
/// Decimals a quotient has at most (`NUMERIC_MAX_DISPLAY_SCALE`).
const MAX_DISPLAY_SCALE: i64 = 1000;

/// `sum / count` as numeric divides it (`count` is above zero: an average over no rows is
/// NULL and never divided).
pub fn average(sum: &Num, count: u64) -> Num {
    let (negative, int, frac) = match sum {
        Num::NaN => return Num::NaN,
        Num::Inf(positive) => return Num::Inf(*positive),
        Num::Finite {
            negative,
            int,
            frac,
        } => (*negative, int, frac),
    };
    let count_digits = count.to_string().into_bytes();
    let (w1, d1) = lead_group(int, frac);
    let (w2, d2) = lead_group(&count_digits, &[]);
    let mut qweight = w1 - w2;
    if d1 <= d2 {
        qweight -= 1;
    }
    let scale = (MIN_SIG_DIGITS - qweight * 4)
        .max(frac.len() as i64)
        .clamp(0, MAX_DISPLAY_SCALE);
    let scale = usize::try_from(scale).unwrap_or(0);
    // |sum| * 10^scale as decimal digits, divided by count, rounded half away from zero.
    let mut digits: Vec<u8> = int.iter().chain(frac).map(|b| b - b'0').collect();
    digits.resize(int.len() + scale.max(frac.len()), 0);
    let divisor = u128::from(count);
    let mut quotient = Vec::with_capacity(digits.len());
    let mut rem: u128 = 0;
    for d in digits {
        rem = rem * 10 + u128::from(d);
        quotient.push((rem / divisor) as u8);
        rem %= divisor;
    }
    if rem * 2 >= divisor {
        increment(&mut quotient);
    }
    let split = quotient.len().saturating_sub(scale);
    let (q_int, q_frac) = quotient.split_at(split);
    let mut frac_out = vec![0u8; scale - q_frac.len()];
    frac_out.extend_from_slice(q_frac);
    Num::from_parts(
        negative,
        q_int.iter().map(|d| d + b'0').collect(),
        frac_out.iter().map(|d| d + b'0').collect(),
    )
}

/// The weight and value of the first nonzero base-10000 digit of the value with integer
/// digits `int` (no leading zeros) and fraction digits `frac`: (0, 0) for zero.
fn lead_group(int: &[u8], frac: &[u8]) -> (i64, u32) {
    let value = |d: &[u8]| d.iter().fold(0u32, |v, b| v * 10 + u32::from(b - b'0'));
    if !int.is_empty() {
        let lead = match int.len() % 4 {
            0 => 4,
            n => n,
        };
        return (
            (int.len() as i64 - 1) / 4,
            value(int.get(..lead).unwrap_or(int)),
        );
    }
    for (g, chunk) in frac.chunks(4).enumerate() {
        let mut group = chunk.to_vec();
        group.resize(4, b'0');
        let v = value(&group);
        if v != 0 {
            return (-(g as i64) - 1, v);
        }
    }
    (0, 0)
}

/// Adds one to a number held as decimal digits (a carry out of the top digit grows it).
fn increment(digits: &mut Vec<u8>) {
    for d in digits.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return;
        }
    }
    digits.insert(0, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avg(sum: &str, count: u64) -> String {
        let s = Num::from_text(sum.as_bytes()).unwrap();
        String::from_utf8(average(&s, count).to_text().to_vec()).unwrap()
    }

    #[test]
    fn digits_are_those_postgres_prints() {
        // Each expected value was printed by PostgreSQL 15 for `SELECT a / b::numeric`,
        // which is how avg() finishes (the sum divided by the count).
        for (sum, count, want) in [
            ("5365.70", 110, "48.7790909090909091"),
            ("10", 3, "3.3333333333333333"),
            ("-2", 3, "-0.66666666666666666667"),
            ("0.0001", 7, "0.000014285714285714285714"),
            ("1", 9999999, "0.000000100000010000001000"),
            ("9999.5", 10000, "0.99995000000000000000"),
            ("0", 3, "0.00000000000000000000"),
            ("7", 1, "7.0000000000000000"),
            ("-7", 2, "-3.5000000000000000"),
            ("12345678901234567890", 7, "1763668414462081127"),
            ("2.5", 2, "1.25000000000000000000"),
        ] {
            assert_eq!(avg(sum, count), want, "{sum} / {count}");
        }
    }

    #[test]
    fn special_values_pass_through() {
        assert_eq!(avg("NaN", 3), "NaN");
        assert_eq!(avg("Infinity", 3), "Infinity");
        assert_eq!(avg("-Infinity", 3), "-Infinity");
    }

    #[test]
    fn rounding_carries_through_every_digit() {
        let mut d = vec![9, 9];
        increment(&mut d);
        assert_eq!(d, vec![1, 0, 0]);
        // 2/3 rounds its last decimal up.
        assert_eq!(avg("2", 3), "0.66666666666666666667");
    }
}
