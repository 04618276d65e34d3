//! A client's session parameters in transaction mode: what it asked for at startup and what
//! its `SET`s changed since, so each server it is given can be made to match (see
//! `ServerConn::sync_params`).

use std::collections::BTreeMap;

use super::sql_scan::SessionChange;
use crate::server::ServerState;

/// Parameters reported by servers that describe the server, not the session; never replayed.
pub const SERVER_OWNED: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "in_hot_standby",
    "session_authorization",
];

/// One client's parameters.
#[derive(Debug, Default, Clone)]
pub struct ClientParams {
    /// Values from the startup packet (what RESET returns to).
    pub startup: BTreeMap<String, String>,
    /// Values the client's session should have now.
    pub desired: BTreeMap<String, String>,
    /// Settings changed by the current transaction that the server does not report; read back
    /// with `current_setting` before the server is released.
    pub to_read_back: Vec<String>,
}

impl ClientParams {
    /// Starts from the startup packet's parameters.
    pub fn new(startup: BTreeMap<String, String>) -> ClientParams {
        ClientParams {
            desired: startup.clone(),
            startup,
            to_read_back: Vec::new(),
        }
    }

    /// A ParameterStatus arrived while this client held `server`: the client changed it.
    pub fn on_report(&mut self, name: &str, value: &str, server: &mut ServerState) {
        server.reported.insert(name.to_string(), value.to_string());
        if SERVER_OWNED.contains(&name) {
            return;
        }
        self.desired.insert(name.to_string(), value.to_string());
        server.applied.insert(name.to_string(), value.to_string());
    }

    /// Notes the session changes of a query sent to `server`.
    pub fn on_changes(&mut self, changes: &[SessionChange], server: &mut ServerState) {
        for change in changes {
            match change {
                SessionChange::Set(name) | SessionChange::Reset(name) => {
                    let canonical = server
                        .reported
                        .keys()
                        .find(|k| k.eq_ignore_ascii_case(name))
                        .cloned();
                    let is_reset = matches!(change, SessionChange::Reset(_));
                    if is_reset {
                        self.to_read_back.retain(|n| n != name);
                    } else if canonical.is_none() && !self.to_read_back.contains(name) {
                        self.to_read_back.push(name.clone());
                    }
                    if is_reset {
                        let key = canonical.unwrap_or_else(|| name.clone());
                        // RESET on a pooled server returns to the server default; the client
                        // expects its startup value. Forget the server-side value so the next
                        // sync re-applies the startup value.
                        server.applied.remove(&key);
                        match self.startup.get(&key) {
                            Some(v) => {
                                self.desired.insert(key, v.clone());
                            }
                            None => {
                                self.desired.remove(&key);
                            }
                        }
                    }
                }
                SessionChange::ResetAll | SessionChange::DiscardAll => {
                    self.desired = self.startup.clone();
                    self.to_read_back.clear();
                    server.applied.clear();
                }
                SessionChange::DeallocateAll | SessionChange::Deallocate(_) => {}
            }
        }
    }

    /// Records values read back with `current_setting` (`None`: the setting does not exist).
    pub fn on_read_back(
        &mut self,
        names: &[String],
        values: Vec<Option<String>>,
        server: &mut ServerState,
    ) {
        for (name, value) in names.iter().zip(values) {
            match value {
                Some(v) => {
                    self.desired.insert(name.clone(), v.clone());
                    server.applied.insert(name.clone(), v);
                }
                None => {
                    self.desired.remove(name);
                    server.applied.remove(name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_and_resets() {
        let mut startup = BTreeMap::new();
        startup.insert("TimeZone".to_string(), "Europe/Paris".to_string());
        let mut p = ClientParams::new(startup);
        let mut s = ServerState::default();
        s.reported.insert("TimeZone".into(), "UTC".into());
        p.on_report("TimeZone", "Asia/Tokyo", &mut s);
        assert_eq!(p.desired["TimeZone"], "Asia/Tokyo");
        p.on_report("server_version", "99", &mut s);
        assert!(!p.desired.contains_key("server_version"));
        p.on_changes(&[SessionChange::Reset("timezone".into())], &mut s);
        assert_eq!(p.desired["TimeZone"], "Europe/Paris");
        assert!(!s.applied.contains_key("TimeZone"));
        p.on_changes(&[SessionChange::Set("search_path".into())], &mut s);
        assert_eq!(p.to_read_back, vec!["search_path".to_string()]);
        p.on_read_back(&["search_path".into()], vec![Some("app".into())], &mut s);
        assert_eq!(s.applied["search_path"], "app");
    }
}
