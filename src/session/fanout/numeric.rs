//! Exact numeric addition for combining per-shard `sum()` results, in numeric's text and
//! binary forms, with Postgres's display scale (a sum shows as many decimals as its most
//! precise input) and its special values (NaN, Infinity, -Infinity).

use bytes::{BufMut, Bytes, BytesMut};

/// A numeric value with its display scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Num {
    /// NaN.
    NaN,
    /// Infinity (`true`) or -Infinity.
    Inf(bool),
    /// A finite value: sign, integer digits (no leading zeros), fraction digits (exactly the
    /// display scale).
    Finite {
        /// Below zero.
        negative: bool,
        /// ASCII digits of the integer part.
        int: Vec<u8>,
        /// ASCII digits of the fraction, as many as the scale.
        frac: Vec<u8>,
    },
}

impl Num {
    /// Parses numeric's text output.
    pub fn from_text(d: &[u8]) -> Option<Num> {
        match d {
            b"NaN" => return Some(Num::NaN),
            b"Infinity" => return Some(Num::Inf(true)),
            b"-Infinity" => return Some(Num::Inf(false)),
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
        if int.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        Some(Num::from_parts(negative, int.to_vec(), frac.to_vec()))
    }

    /// A finite value from its sign and ASCII digits (leading zeros of `int` dropped; a zero
    /// is never negative).
    pub fn from_parts(negative: bool, int: Vec<u8>, frac: Vec<u8>) -> Num {
        let int: Vec<u8> = int.into_iter().skip_while(|b| *b == b'0').collect();
        let zero = int.is_empty() && frac.iter().all(|b| *b == b'0');
        Num::Finite {
            negative: negative && !zero,
            int,
            frac,
        }
    }

    /// Decodes numeric's binary form (ndigits, weight, sign, dscale, base-10000 digits).
    pub fn from_binary(d: &[u8]) -> Option<Num> {
        let word =
            |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*d.get(i)?, *d.get(i + 1)?])) };
        let ndigits = usize::from(word(0)?);
        let weight = i64::from(word(2)? as i16);
        let sign = word(4)?;
        let dscale = usize::from(word(6)?);
        match sign {
            0xC000 => return Some(Num::NaN),
            0xD000 => return Some(Num::Inf(true)),
            0xF000 => return Some(Num::Inf(false)),
            0x0000 | 0x4000 => {}
            _ => return None,
        }
        if d.len() != 8 + 2 * ndigits || dscale > 16383 {
            return None;
        }
        let digit = |p: i64| -> Option<u16> {
            match usize::try_from(weight - p) {
                Ok(k) if k < ndigits => word(8 + 2 * k).filter(|v| *v < 10000),
                _ => Some(0),
            }
        };
        let mut int = Vec::new();
        for p in (0..=weight.max(0)).rev() {
            int.extend_from_slice(format!("{:04}", digit(p)?).as_bytes());
        }
        let mut frac = Vec::new();
        let mut p = -1;
        while frac.len() < dscale {
            frac.extend_from_slice(format!("{:04}", digit(p)?).as_bytes());
            p -= 1;
        }
        frac.truncate(dscale);
        Some(Num::from_parts(sign == 0x4000, int, frac))
    }

    /// The sum of two values, as numeric adds them.
    pub fn add(&self, other: &Num) -> Num {
        match (self, other) {
            (Num::NaN, _) | (_, Num::NaN) => Num::NaN,
            (Num::Inf(a), Num::Inf(b)) if a != b => Num::NaN,
            (Num::Inf(a), _) | (_, Num::Inf(a)) => Num::Inf(*a),
            (
                Num::Finite {
                    negative: na,
                    int: ia,
                    frac: fa,
                },
                Num::Finite {
                    negative: nb,
                    int: ib,
                    frac: fb,
                },
            ) => {
                let scale = fa.len().max(fb.len());
                let width = ia.len().max(ib.len()) + 1;
                let digits = |int: &[u8], frac: &[u8]| -> Vec<u8> {
                    let mut v = vec![0u8; width - int.len()];
                    v.extend(int.iter().map(|b| b - b'0'));
                    v.extend(frac.iter().map(|b| b - b'0'));
                    v.resize(width + scale, 0);
                    v
                };
                let (a, b) = (digits(ia, fa), digits(ib, fb));
                let (negative, sum) = if na == nb {
                    (*na, add_digits(&a, &b))
                } else if a >= b {
                    (*na, sub_digits(&a, &b))
                } else {
                    (*nb, sub_digits(&b, &a))
                };
                let (int, frac) = sum.split_at(width);
                Num::from_parts(
                    negative,
                    int.iter().map(|d| d + b'0').collect(),
                    frac.iter().map(|d| d + b'0').collect(),
                )
            }
        }
    }

    /// numeric's text output.
    pub fn to_text(&self) -> Bytes {
        match self {
            Num::NaN => Bytes::from_static(b"NaN"),
            Num::Inf(true) => Bytes::from_static(b"Infinity"),
            Num::Inf(false) => Bytes::from_static(b"-Infinity"),
            Num::Finite {
                negative,
                int,
                frac,
            } => {
                let mut out = Vec::with_capacity(int.len() + frac.len() + 3);
                if *negative {
                    out.push(b'-');
                }
                if int.is_empty() {
                    out.push(b'0');
                }
                out.extend_from_slice(int);
                if !frac.is_empty() {
                    out.push(b'.');
                    out.extend_from_slice(frac);
                }
                Bytes::from(out)
            }
        }
    }

    /// numeric's binary form.
    pub fn to_binary(&self) -> Bytes {
        let mut out = BytesMut::new();
        let (negative, int, frac) = match self {
            Num::Finite {
                negative,
                int,
                frac,
            } => (*negative, int, frac),
            special => {
                let sign = match special {
                    Num::NaN => 0xC000,
                    Num::Inf(true) => 0xD000,
                    _ => 0xF000,
                };
                out.put_u16(0);
                out.put_i16(0);
                out.put_u16(sign);
                out.put_u16(0);
                return out.freeze();
            }
        };
        let value = |d: &[u8]| d.iter().fold(0u16, |v, b| v * 10 + u16::from(b - b'0'));
        let mut groups: Vec<u16> = Vec::new();
        let lead = (4 - int.len() % 4) % 4;
        let mut padded = vec![b'0'; lead];
        padded.extend_from_slice(int);
        groups.extend(padded.chunks(4).map(value));
        let mut weight = groups.len() as i64 - 1;
        let mut fpad = frac.clone();
        fpad.resize(frac.len().div_ceil(4) * 4, b'0');
        groups.extend(fpad.chunks(4).map(value));
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        out.put_u16(groups.len() as u16);
        out.put_i16(weight as i16);
        out.put_u16(if negative { 0x4000 } else { 0 });
        out.put_u16(frac.len() as u16);
        for g in groups {
            out.put_u16(g);
        }
        out.freeze()
    }
}

fn add_digits(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut carry = 0;
    for i in (0..a.len()).rev() {
        let s = a[i] + b[i] + carry;
        out[i] = s % 10;
        carry = s / 10;
    }
    out
}

fn sub_digits(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut borrow = 0i8;
    for i in (0..a.len()).rev() {
        let mut d = a[i] as i8 - b[i] as i8 - borrow;
        borrow = i8::from(d < 0);
        if d < 0 {
            d += 10;
        }
        out[i] = d as u8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Num {
        Num::from_text(s.as_bytes()).unwrap()
    }

    #[test]
    fn sums_keep_the_widest_scale_and_sign() {
        for (a, b, sum) in [
            ("12.50", "3.1", "15.60"),
            ("-12.50", "3.1", "-9.40"),
            ("3.1", "-12.50", "-9.40"),
            ("0.05", "-0.05", "0.00"),
            ("99999", "1", "100000"),
            ("-1", "-0.001", "-1.001"),
            ("0", "0", "0"),
            ("NaN", "1", "NaN"),
            ("Infinity", "-Infinity", "NaN"),
            ("-Infinity", "5", "-Infinity"),
        ] {
            assert_eq!(&t(a).add(&t(b)).to_text()[..], sum.as_bytes(), "{a} + {b}");
        }
    }

    #[test]
    fn binary_round_trips() {
        for s in [
            "0",
            "0.00",
            "12.34",
            "-10000.5",
            "0.00000007",
            "123456789.000100",
            "NaN",
            "-Infinity",
            "1e0",
        ] {
            let Some(n) = Num::from_text(s.as_bytes()) else {
                assert_eq!(s, "1e0", "not numeric output");
                continue;
            };
            let b = n.to_binary();
            assert_eq!(Num::from_binary(&b), Some(n.clone()), "{s}");
            assert_eq!(&n.to_text()[..], s.as_bytes());
        }
        // 12.34 as Postgres sends it: ndigits 2, weight 0, sign 0, dscale 2, [12, 3400].
        let pg = [0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x0d, 0x48];
        assert_eq!(Num::from_binary(&pg), Some(t("12.34")));
        assert_eq!(&t("12.34").to_binary()[..], &pg[..]);
        assert!(Num::from_binary(&pg[..10]).is_none());
    }
}
