//! PostgreSQL's md5 password challenge: `"md5" + md5hex(md5hex(password + user) + salt)`.

use md5::{Digest, Md5};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `response` answers the md5 challenge `salt` for `user`, given the stored secret
/// (`stored` is the plain password or its `md5...` hash).
pub fn md5_response_matches(stored: &str, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let inner = if crate::config::is_md5_hash(stored) {
        stored[3..].to_string()
    } else {
        let mut h = Md5::new();
        h.update(stored.as_bytes());
        h.update(user.as_bytes());
        hex(&h.finalize())
    };
    let mut h = Md5::new();
    h.update(inner.as_bytes());
    h.update(salt);
    let expected = format!("md5{}", hex(&h.finalize()));
    constant_time_eq(expected.as_bytes(), response)
}

/// Compares without an early exit, so timing does not reveal how much of a secret matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libpq() {
        let salt = [1, 2, 3, 4];
        let client = postgres_protocol::authentication::md5_hash(b"app", b"secret", salt);
        assert!(md5_response_matches(
            "secret",
            "app",
            salt,
            client.as_bytes()
        ));
        let stored = postgres_protocol::password::md5(b"secret", "app");
        assert!(md5_response_matches(
            &stored,
            "app",
            salt,
            client.as_bytes()
        ));
        assert!(!md5_response_matches(
            "wrong",
            "app",
            salt,
            client.as_bytes()
        ));
    }
}
