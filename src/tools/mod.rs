//! Operator tools run from the command line next to the proxy: `usher migrate` (versioned SQL
//! applied to every shard primary), `usher shard-of` (which shard owns a key, and why) and
//! the live part of `usher check`.
//! They use the same config file as the proxy and are not on the data path.

pub mod check;
pub mod migrate;
pub mod shard_of;
