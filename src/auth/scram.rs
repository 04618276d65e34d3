//! The server half of SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, without
//! channel binding (usher does not terminate TLS yet).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::md5::constant_time_eq;
use super::AuthError;

type HmacSha256 = Hmac<Sha256>;

/// A stored SCRAM secret: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt bytes.
    pub salt: Vec<u8>,
    /// SHA-256(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    /// Parses the text form PostgreSQL stores in `pg_authid.rolpassword`.
    pub fn parse(text: &str) -> Result<ScramVerifier, AuthError> {
        let bad = |why: &str| {
            AuthError::BadVerifier(format!(
                "{why} (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
            ))
        };
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(|| bad("wrong prefix"))?;
        let (iter_salt, keys) = rest.split_once('$').ok_or_else(|| bad("missing keys"))?;
        let (iterations, salt) = iter_salt
            .split_once(':')
            .ok_or_else(|| bad("missing salt"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or_else(|| bad("missing server key"))?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| bad("bad iteration count"))?;
        let salt = B64.decode(salt).map_err(|_| bad("salt is not base64"))?;
        let key = |s: &str| -> Result<[u8; 32], AuthError> {
            B64.decode(s)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad("key is not 32 bytes of base64"))
        };
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// Derives a verifier from a plain password (SASLprep applied, as libpq does).
    pub fn from_password(password: &str) -> ScramVerifier {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        ScramVerifier::parse(&text).expect("postgres-protocol produces well-formed verifiers")
    }

    /// The verifier for a configured secret (plain password or verifier text).
    pub fn from_secret(secret: &str) -> Result<ScramVerifier, AuthError> {
        if secret.starts_with("SCRAM-SHA-256$") {
            ScramVerifier::parse(secret)
        } else {
            Ok(ScramVerifier::from_password(secret))
        }
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// One server-side SCRAM exchange.
pub struct ScramServer {
    verifier: ScramVerifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Starts from the client-first-message; returns the exchange and the server-first-message.
    pub fn start(
        verifier: ScramVerifier,
        client_first: &[u8],
    ) -> Result<(ScramServer, String), AuthError> {
        let bad = |why: &str| AuthError::BadExchange(why.to_string());
        let text = std::str::from_utf8(client_first)
            .map_err(|_| bad("client-first-message is not UTF-8"))?;
        let (cbind, rest) = text
            .split_once(',')
            .ok_or_else(|| bad("missing GS2 header"))?;
        match cbind {
            "n" | "y" => {}
            _ if cbind.starts_with("p=") => {
                return Err(bad("channel binding is not supported by usher"))
            }
            _ => return Err(bad("bad channel-binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or_else(|| bad("missing GS2 header"))?;
        if !authzid.is_empty() {
            return Err(bad("authorization identity is not supported"));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or_else(|| bad("missing client nonce"))?;
        let mut raw = [0u8; 18];
        rand::rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok((
            ScramServer {
                verifier,
                gs2_header: format!("{cbind},{authzid},"),
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Checks the client-final-message; on success returns the server-final-message.
    pub fn finish(self, client_final: &[u8], user: &str) -> Result<String, AuthError> {
        let bad = |why: &str| AuthError::BadExchange(why.to_string());
        let text = std::str::from_utf8(client_final)
            .map_err(|_| bad("client-final-message is not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| bad("missing proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        if channel != Some(B64.encode(&self.gs2_header).as_str()) {
            return Err(bad("channel binding data does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(bad("nonce does not match"));
        }
        let proof = B64.decode(proof).map_err(|_| bad("proof is not base64"))?;
        if proof.len() != 32 {
            return Err(bad("proof has the wrong length"));
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        if !constant_time_eq(&stored, &self.verifier.stored_key) {
            return Err(AuthError::Failed(user.to_string()));
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(stored: &str, client_password: &str) -> Result<(), AuthError> {
        let verifier = ScramVerifier::from_secret(stored)?;
        let mut client =
            ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let (server, first) = ScramServer::start(verifier, client.message())?;
        client
            .update(first.as_bytes())
            .map_err(|e| AuthError::BadExchange(e.to_string()))?;
        let last = server.finish(client.message(), "app")?;
        client
            .finish(last.as_bytes())
            .map_err(|e| AuthError::BadExchange(e.to_string()))
    }

    #[test]
    fn plain_and_verifier_secrets() {
        exchange("secret", "secret").unwrap();
        let verifier = postgres_protocol::password::scram_sha_256(b"secret");
        exchange(&verifier, "secret").unwrap();
    }

    #[test]
    fn wrong_password_fails() {
        assert!(matches!(
            exchange("secret", "nope"),
            Err(AuthError::Failed(_))
        ));
    }

    #[test]
    fn malformed_messages() {
        let v = ScramVerifier::from_password("x");
        assert!(ScramServer::start(v.clone(), b"p=tls-server-end-point,,n=,r=abc").is_err());
        assert!(ScramServer::start(v.clone(), b"n,,n=").is_err());
        assert!(ScramServer::start(v.clone(), b"\xff").is_err());
        let (s, _) = ScramServer::start(v, b"n,,n=,r=abc").unwrap();
        assert!(s.finish(b"c=biws,r=wrong,p=AAAA", "u").is_err());
        assert!(ScramVerifier::parse("SCRAM-SHA-256$0:AAAA$AA:AA").is_err());
    }
}
