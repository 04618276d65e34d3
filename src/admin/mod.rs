//! Operating usher: the HTTP endpoint Prometheus scrapes (`/metrics`, `/health`, `/ready`,
//! `/pools`) and the PgBouncer-style admin console.

pub mod console;
pub mod http;
pub mod pause;
mod show;
mod table;
