//! Sharding key values: whatever form a key arrives in (an SQL literal, a text parameter, a
//! binary int2/int4/int8 or uuid parameter) is parsed into one canonical value of the key's
//! type before hashing, so `42`, `'42'`, text "42" and binary int8 42 pick the same shard.
//! Parsing follows PostgreSQL's input functions (`int8in`, `uuid_in`).

use crate::config::KeyType;

/// A canonical key value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    /// bigint / integer / smallint.
    Int(i64),
    /// uuid (16 bytes, network order).
    Uuid([u8; 16]),
    /// text (UTF-8 bytes).
    Text(Vec<u8>),
}

impl std::fmt::Display for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::Int(v) => write!(f, "{v}"),
            KeyValue::Uuid(u) => {
                for (i, b) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            KeyValue::Text(t) => write!(f, "{:?}", String::from_utf8_lossy(t)),
        }
    }
}

/// A key value that is not valid for its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {key_type} sharding key")]
pub struct BadKey {
    /// The value as received (shortened).
    pub value: String,
    /// The expected type.
    pub key_type: &'static str,
}

fn bad(value: &[u8], key_type: KeyType) -> BadKey {
    let mut value = String::from_utf8_lossy(value).into_owned();
    if value.len() > 64 {
        let cut = (0..=64)
            .rev()
            .find(|i| value.is_char_boundary(*i))
            .unwrap_or(0);
        value.truncate(cut);
    }
    BadKey {
        value,
        key_type: key_type.name(),
    }
}

/// Parses a key given in text form (a literal's value or a text-format parameter).
pub fn from_text(text: &[u8], key_type: KeyType) -> Result<KeyValue, BadKey> {
    match key_type {
        KeyType::Bigint => parse_int8(text)
            .map(KeyValue::Int)
            .ok_or_else(|| bad(text, key_type)),
        KeyType::Uuid => parse_uuid(text)
            .map(KeyValue::Uuid)
            .ok_or_else(|| bad(text, key_type)),
        KeyType::Text => Ok(KeyValue::Text(text.to_vec())),
    }
}

/// Type OIDs usher understands in binary parameters.
pub mod oid {
    /// int8
    pub const INT8: u32 = 20;
    /// int2
    pub const INT2: u32 = 21;
    /// int4
    pub const INT4: u32 = 23;
    /// text
    pub const TEXT: u32 = 25;
    /// varchar
    pub const VARCHAR: u32 = 1043;
    /// uuid
    pub const UUID: u32 = 2950;
    /// Not a type OID: a parameter cast to a type usher does not decode (its binary form is
    /// unknown, so the key is refused rather than guessed).
    pub const OTHER: u32 = u32::MAX;
}

/// Parses a binary-format parameter. `type_oid` is what the client declared in Parse (0 when
/// it let the server infer the type: then the column's type, i.e. the key type, is assumed).
pub fn from_binary(data: &[u8], type_oid: u32, key_type: KeyType) -> Result<KeyValue, BadKey> {
    let int = |d: &[u8]| -> Option<i64> {
        Some(match d.len() {
            2 => i16::from_be_bytes(d.try_into().ok()?) as i64,
            4 => i32::from_be_bytes(d.try_into().ok()?) as i64,
            8 => i64::from_be_bytes(d.try_into().ok()?),
            _ => return None,
        })
    };
    let value = match (type_oid, key_type) {
        (oid::TEXT | oid::VARCHAR, _) => return from_text(data, key_type),
        (oid::INT2 | oid::INT4 | oid::INT8, KeyType::Text) => {
            int(data).map(|v| KeyValue::Text(v.to_string().into_bytes()))
        }
        (oid::INT2 | oid::INT4 | oid::INT8, _) | (0, KeyType::Bigint) => {
            int(data).map(KeyValue::Int)
        }
        (oid::UUID, _) | (0, KeyType::Uuid) => data.try_into().ok().map(KeyValue::Uuid),
        (0, KeyType::Text) => Some(KeyValue::Text(data.to_vec())),
        _ => None,
    };
    match (value, key_type) {
        (Some(KeyValue::Int(v)), KeyType::Bigint) => Ok(KeyValue::Int(v)),
        (Some(KeyValue::Uuid(u)), KeyType::Uuid) => Ok(KeyValue::Uuid(u)),
        (Some(KeyValue::Text(t)), KeyType::Text) => Ok(KeyValue::Text(t)),
        _ => Err(bad(data, key_type)),
    }
}

/// `int8in`: optional whitespace and sign, decimal (or 0x/0o/0b) digits with `_` separators.
pub fn parse_int8(text: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(text)
        .ok()?
        .trim_matches(|c: char| c.is_ascii_whitespace());
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = match digits.get(..2).map(|p| p.to_ascii_lowercase()) {
        Some(p) if p == "0x" => (16, &digits[2..]),
        Some(p) if p == "0o" => (8, &digits[2..]),
        Some(p) if p == "0b" => (2, &digits[2..]),
        _ => (10, digits),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let mut v: i128 = 0;
    for c in digits.chars().filter(|c| *c != '_') {
        v = v * radix as i128 + c.to_digit(radix)? as i128;
        if v > i64::MAX as i128 + 1 {
            return None;
        }
    }
    let v = if negative { -v } else { v };
    i64::try_from(v).ok()
}

/// `uuid_in`: 32 hex digits, optionally in braces, with an optional `-` after any group of
/// four digits.
pub fn parse_uuid(text: &[u8]) -> Option<[u8; 16]> {
    let (braced, mut s) = match text.first() {
        Some(b'{') => (true, &text[1..]),
        _ => (false, text),
    };
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        if s.len() < 2 {
            return None;
        }
        *byte = hex(s[0])? << 4 | hex(s[1])?;
        s = &s[2..];
        if i % 2 == 1 && i < 15 && s.first() == Some(&b'-') {
            s = &s[1..];
        }
    }
    if braced {
        s = s.strip_prefix(b"}")?;
    }
    s.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_whatever_its_form() {
        let k = KeyValue::Int(42);
        for t in ["42", " 42 ", "+42", "0x2A", "0o52", "0b101010", "4_2"] {
            assert_eq!(
                from_text(t.as_bytes(), KeyType::Bigint),
                Ok(k.clone()),
                "{t}"
            );
        }
        for b in [
            &42i16.to_be_bytes()[..],
            &42i32.to_be_bytes(),
            &42i64.to_be_bytes(),
        ] {
            assert_eq!(from_binary(b, 0, KeyType::Bigint), Ok(k.clone()));
            assert_eq!(from_binary(b, oid::INT8, KeyType::Bigint), Ok(k.clone()));
        }
        assert_eq!(
            from_binary(b"42", oid::TEXT, KeyType::Bigint),
            Ok(k.clone())
        );
        assert_eq!(
            from_text(b"-9223372036854775808", KeyType::Bigint),
            Ok(KeyValue::Int(i64::MIN))
        );
        for t in [
            "",
            "-",
            "4.2",
            "9223372036854775808",
            "_1",
            "1__0",
            "abc",
            "0x",
        ] {
            assert!(from_text(t.as_bytes(), KeyType::Bigint).is_err(), "{t}");
        }
    }

    #[test]
    fn uuid_forms() {
        let canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        let u = parse_uuid(canonical.as_bytes()).unwrap();
        for t in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
        ] {
            assert_eq!(parse_uuid(t.as_bytes()), Some(u), "{t}");
        }
        for t in [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11-",
        ] {
            assert_eq!(parse_uuid(t.as_bytes()), None, "{t}");
        }
        assert_eq!(KeyValue::Uuid(u).to_string(), canonical);
        assert_eq!(from_binary(&u, 0, KeyType::Uuid), Ok(KeyValue::Uuid(u)));
        assert_eq!(
            from_binary(canonical.as_bytes(), oid::VARCHAR, KeyType::Uuid),
            Ok(KeyValue::Uuid(u))
        );
        assert!(from_binary(&u[..8], 0, KeyType::Uuid).is_err());
    }

    #[test]
    fn text_keys() {
        assert_eq!(
            from_text(b"abc", KeyType::Text),
            Ok(KeyValue::Text(b"abc".to_vec()))
        );
        assert_eq!(
            from_binary(&42i32.to_be_bytes(), oid::INT4, KeyType::Text),
            Ok(KeyValue::Text(b"42".to_vec()))
        );
    }
}
