//! The values a statement's key conditions point at, read lazily from the query text (its
//! literals) and from a Bind message (its parameters), with bounds checked: a Bind whose
//! lengths lie yields no values, and the server gets to reject it.

use std::ops::Range;

use super::{Param, Values};
use crate::router::normalize::{literal_spans, literal_value};

/// A Bind message's parameters, located without copying.
#[derive(Debug, Default)]
pub struct BindParams<'a> {
    formats: Vec<i16>,
    values: Vec<Option<&'a [u8]>>,
}

impl<'a> BindParams<'a> {
    /// Reads the parameter formats and values of a Bind body; `None` if it is malformed.
    pub fn parse(body: &'a [u8]) -> Option<BindParams<'a>> {
        let mut pos = 0;
        for _ in 0..2 {
            pos += body.get(pos..)?.iter().position(|b| *b == 0)? + 1;
        }
        let mut take = |n: usize| -> Option<&'a [u8]> {
            let s = body.get(pos..pos.checked_add(n)?)?;
            pos += n;
            Some(s)
        };
        let i16_at = |s: &[u8]| i16::from_be_bytes([s[0], s[1]]);
        let nfmt = i16_at(take(2)?);
        let formats = (0..nfmt.max(0))
            .map(|_| take(2).map(i16_at))
            .collect::<Option<Vec<i16>>>()?;
        let nparams = i16_at(take(2)?);
        let mut values = Vec::with_capacity(nparams.max(0) as usize);
        for _ in 0..nparams.max(0) {
            let len = i32::from_be_bytes(take(4)?.try_into().ok()?);
            values.push(if len < 0 {
                None
            } else {
                Some(take(len as usize)?)
            });
        }
        if formats.len() > 1 && formats.len() != values.len() {
            return None;
        }
        Some(BindParams { formats, values })
    }

    /// Parameter `i` (0-based): its format code and value (None = NULL).
    pub fn get(&self, i: usize) -> Option<(i16, Option<&'a [u8]>)> {
        Some((self.format(i), *self.values.get(i)?))
    }

    fn format(&self, i: usize) -> i16 {
        match self.formats.as_slice() {
            [] => 0,
            [f] => *f,
            many => many.get(i).copied().unwrap_or(0),
        }
    }
}

/// Parameter types from a Parse's type list (count + OIDs).
pub fn param_types(raw: &[u8]) -> Vec<u32> {
    raw.get(2..)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Values for one execution: a query text and, for the extended protocol, its Bind.
pub struct QueryValues<'a> {
    sql: &'a [u8],
    spans: Option<Vec<Range<usize>>>,
    bind: Option<BindParams<'a>>,
    types: Vec<u32>,
}

impl<'a> QueryValues<'a> {
    /// Values of a query text (simple protocol, or a Parse not bound yet).
    pub fn text(sql: &'a [u8]) -> QueryValues<'a> {
        QueryValues {
            sql,
            spans: None,
            bind: None,
            types: Vec::new(),
        }
    }

    /// Values of a query text whose literal ranges are already known.
    pub fn with_spans(sql: &'a [u8], spans: Vec<Range<usize>>) -> QueryValues<'a> {
        QueryValues {
            sql,
            spans: Some(spans),
            bind: None,
            types: Vec::new(),
        }
    }

    /// Values of a bound statement: its text, its Parse's parameter types and the Bind.
    pub fn bound(sql: &'a [u8], types: Vec<u32>, bind: Option<BindParams<'a>>) -> QueryValues<'a> {
        QueryValues {
            sql,
            spans: None,
            bind,
            types,
        }
    }
}

impl Values for QueryValues<'_> {
    fn literal(&mut self, index: u32) -> Option<Vec<u8>> {
        let sql = self.sql;
        let spans = self.spans.get_or_insert_with(|| literal_spans(sql));
        literal_value(sql, spans.get(index as usize)?)
    }

    fn param(&mut self, n: u16) -> Option<Param<'_>> {
        let bind = self.bind.as_ref()?;
        let i = n as usize - 1;
        let value = *bind.values.get(i)?;
        Some(Param {
            format: bind.format(i),
            type_oid: self.types.get(i).copied().unwrap_or(0),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(formats: &[i16], params: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = b"portal\0stmt\0".to_vec();
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0i16.to_be_bytes());
        b
    }

    #[test]
    fn reads_params_and_rejects_lies() {
        let body = bind(&[0, 1], &[Some(b"42"), Some(&7i64.to_be_bytes())]);
        let p = BindParams::parse(&body).unwrap();
        let mut v = QueryValues::bound(b"SELECT $1, $2", vec![0, 20], Some(p));
        let a = v.param(1).unwrap();
        assert_eq!((a.format, a.type_oid, a.value), (0, 0, Some(&b"42"[..])));
        assert_eq!(v.param(2).unwrap().format, 1);
        assert!(v.param(3).is_none());
        let body = bind(&[], &[None]);
        assert_eq!(BindParams::parse(&body).unwrap().values, vec![None]);
        // A length that runs past the end, a negative count, a truncated body.
        let mut lying = bind(&[], &[Some(b"x")]);
        let at = lying.len() - 2 - 1 - 4;
        lying[at..at + 4].copy_from_slice(&1000i32.to_be_bytes());
        assert!(BindParams::parse(&lying).is_none());
        assert!(BindParams::parse(b"p\0s\0").is_none());
        assert!(BindParams::parse(b"").is_none());
        assert_eq!(param_types(&[0, 2, 0, 0, 0, 20, 0, 0, 0, 25]), vec![20, 25]);
    }

    #[test]
    fn literals_by_index() {
        let mut v = QueryValues::text(b"SELECT * FROM t WHERE a = 'x''y' AND b = 12");
        assert_eq!(v.literal(0).unwrap(), b"x'y");
        assert_eq!(v.literal(1).unwrap(), b"12");
        assert!(v.literal(2).is_none());
    }
}
