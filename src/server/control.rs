//! Control-path queries usher runs on a server between client transactions: making session
//! parameters match the client, reading back settings, and resetting or rolling back.

use std::collections::BTreeMap;

use bytes::BytesMut;

use super::{ServerConn, ServerError};
use crate::protocol::messages::{self, ErrorFields};

/// Quotes `s` as an SQL string literal that reads the same whatever standard_conforming_strings is.
pub fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// True for names usher will put into SQL as a quoted identifier (GUC names).
pub fn valid_param_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

impl ServerConn {
    /// Runs `sql` with the simple protocol and returns the rows as text. Parameter reports are
    /// recorded; an ErrorResponse makes the whole call fail once the server is ready again.
    pub async fn control_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        // A simple Query destroys the unnamed statement: whose it was no longer matters.
        self.state.unnamed_owner = None;
        self.write(&out).await?;
        let mut rows = Vec::new();
        let mut error: Option<ErrorFields> = None;
        loop {
            let frame = loop {
                match crate::protocol::split_frame(&mut self.rbuf, usize::MAX >> 1) {
                    Ok(Some(f)) => break f,
                    Ok(None) => {
                        self.fill().await?;
                    }
                    Err(e) => return Err(self.protocol(e.to_string())),
                }
            };
            let body = frame.body();
            match frame.tag {
                b'D' => rows.push(
                    parse_data_row(body)
                        .ok_or_else(|| self.protocol("malformed DataRow".into()))?,
                ),
                b'E' => error = Some(ErrorFields::parse(body)),
                b'S' => {
                    if let Ok((k, v)) = crate::protocol::server::parameter_status(body) {
                        self.state.reported.insert(k, v);
                    }
                }
                b'Z' => {
                    return match error {
                        Some(fields) => Err(ServerError::Query {
                            server: self.addr.to_string(),
                            fields,
                        }),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// Sends `bytes` (whole client messages ending in a Sync or Query) and returns every frame
    /// the server answers with, up to and including ReadyForQuery. Parameter reports are
    /// recorded. Errors inside the answer are part of it; only a broken connection fails.
    pub async fn exchange(
        &mut self,
        bytes: &[u8],
    ) -> Result<Vec<crate::protocol::Frame>, ServerError> {
        // What the messages do to the unnamed statement is not tracked: no client owns it.
        self.state.unnamed_owner = None;
        self.write(bytes).await?;
        let mut frames = Vec::new();
        loop {
            match crate::protocol::split_frame(&mut self.rbuf, usize::MAX >> 1) {
                Ok(Some(f)) => {
                    if f.tag == b'S' {
                        if let Ok((k, v)) = crate::protocol::server::parameter_status(f.body()) {
                            self.state.reported.insert(k, v);
                        }
                    }
                    let done = f.tag == b'Z';
                    frames.push(f);
                    if done {
                        return Ok(frames);
                    }
                }
                Ok(None) => {
                    self.fill().await?;
                }
                Err(e) => return Err(self.protocol(e.to_string())),
            }
        }
    }

    /// Makes the server's parameters equal `desired`: sets what differs, resets what a previous
    /// client changed and this one did not ask for. Returns nothing to do in the common case
    /// without a round trip. Values the server reports back canonically are copied into
    /// `desired`, so the next comparison matches.
    pub async fn sync_params(
        &mut self,
        desired: &mut BTreeMap<String, String>,
    ) -> Result<(), ServerError> {
        let mut sets = Vec::new();
        let mut resets = Vec::new();
        for (name, value) in desired.iter() {
            let current = self
                .state
                .applied
                .get(name)
                .or_else(|| self.state.reported.get(name));
            if current != Some(value) && valid_param_name(name) {
                sets.push((name.clone(), value.clone()));
            }
        }
        for name in self.state.applied.keys() {
            if !desired.contains_key(name) {
                resets.push(name.clone());
            }
        }
        if sets.is_empty() && resets.is_empty() {
            return Ok(());
        }
        let mut sql = String::new();
        if !sets.is_empty() {
            sql.push_str("SELECT ");
            let calls: Vec<String> = sets
                .iter()
                .map(|(n, v)| {
                    format!(
                        "pg_catalog.set_config({}, {}, false)",
                        quote_literal(n),
                        quote_literal(v)
                    )
                })
                .collect();
            sql.push_str(&calls.join(", "));
            sql.push(';');
        }
        for name in &resets {
            sql.push_str(&format!("RESET \"{name}\";"));
        }
        self.control_query(&sql).await?;
        for name in resets {
            self.state.applied.remove(&name);
        }
        for (name, value) in sets {
            // A reported parameter comes back in canonical form ("ISO" -> "ISO, MDY").
            let canonical = self.state.reported.get(&name).cloned().unwrap_or(value);
            desired.insert(name.clone(), canonical.clone());
            self.state.applied.insert(name, canonical);
        }
        Ok(())
    }

    /// Reads the current value of each named setting (`None` for unknown custom settings).
    pub async fn current_settings(
        &mut self,
        names: &[String],
    ) -> Result<Vec<Option<String>>, ServerError> {
        let names: Vec<&String> = names.iter().filter(|n| valid_param_name(n)).collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let cols: Vec<String> = names
            .iter()
            .map(|n| format!("pg_catalog.current_setting({}, true)", quote_literal(n)))
            .collect();
        let rows = self
            .control_query(&format!("SELECT {}", cols.join(", ")))
            .await?;
        Ok(rows.into_iter().next().unwrap_or_default())
    }
}

fn parse_data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let n = i16::from_be_bytes(body.get(0..2)?.try_into().ok()?);
    let mut pos = 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len < 0 {
            out.push(None);
        } else {
            let v = body.get(pos..pos + len as usize)?;
            out.push(Some(String::from_utf8_lossy(v).into_owned()));
            pos += len as usize;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert!(valid_param_name("search_path"));
        assert!(valid_param_name("myapp.tenant"));
        assert!(!valid_param_name("x\"; DROP"));
    }

    #[test]
    fn data_row() {
        let body = [0, 2, 0, 0, 0, 1, b'x', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_data_row(&body), Some(vec![Some("x".into()), None]));
        assert_eq!(parse_data_row(&body[..5]), None);
    }
}
