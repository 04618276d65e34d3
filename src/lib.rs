//! usher: a sharding-aware PostgreSQL connection pooler and proxy.
//!
//! # Layout
//!
//! One data path, one module per layer:
//!
//! ```text
//! client socket ─► frontend (listener, handshake, ClientIo codec)
//!               ─► session  (per-client loop: client bytes cut into a Request up to Sync,
//!                            the transaction as an enum, prepared statements, session
//!                            parameters, response tracking)
//!               ─► router   (router::plan: a pure function from the request to what to do,
//!                            which shard and role serves this transaction)
//!               ─► pool     (per database/user/server pools, waiters, reserve, maintenance)
//!               ─► server   (ServerConn: login, control queries)  ─► back through session::relay
//! ```
//!
//! Supporting modules: [`protocol`] (frames, startup packet, message builders, and the
//! length-checked views of client and server messages that are the only code reading fields
//! out of peer bytes), [`auth`] (SCRAM-SHA-256 and md5 verification), [`config`] (TOML with
//! file:line:key errors), [`error`] (the side that failed and whether a retry is safe, which
//! every layer's error reports), [`app`] (the shared state every layer may see: config and topology
//! snapshots, pools, probes, caches, pause gate, shutdown) and [`serve`](mod@serve) (the orchestration on
//! top: it starts the listener, monitor, HTTP endpoint and maintenance around an [`App`];
//! nothing imports it, so there is no import circle through `App`).

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod pool;
pub mod protocol;
pub mod router;
pub mod serve;
pub mod server;
pub mod session;
pub mod stats;
pub mod tools;
pub mod twophase;

pub use app::App;
pub use config::Config;
pub use serve::{serve, serve_with};
