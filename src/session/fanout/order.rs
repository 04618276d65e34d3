//! The order of RETURNING rows of an INSERT split across shards: each shard returns its
//! rows in the order of its VALUES rows, and the client gets them in the order of the
//! statement's VALUES rows, as one database returns them.

use bytes::Bytes;

use crate::protocol::messages;

/// Where the rows of a split INSERT went: RETURNING rows are given back in VALUES order.
#[derive(Clone, Copy)]
pub(super) struct Order<'a> {
    /// The shard of each VALUES row.
    pub(super) rows: &'a [usize],
    /// The shard of each part.
    pub(super) shards: &'a [usize],
}

impl Order<'_> {
    /// The parts' RETURNING rows in the order of the VALUES rows they came from; an error
    /// when a shard returned another number of rows than it was sent (ON CONFLICT DO
    /// NOTHING, a trigger that skipped a row): which rows are missing cannot be known.
    pub(super) fn interleave(&self, held: Vec<Vec<Bytes>>) -> Result<Vec<Bytes>, Bytes> {
        let mut held: Vec<std::vec::IntoIter<Bytes>> =
            held.into_iter().map(Vec::into_iter).collect();
        let sent = |shard: usize| self.rows.iter().filter(|s| **s == shard).count();
        let mismatch = self
            .shards
            .iter()
            .zip(&held)
            .any(|(s, h)| h.len() != sent(*s));
        if mismatch {
            return Err(messages::error_response(
                "ERROR",
                "0A000",
                "usher: an INSERT ... RETURNING across shards must return every row it was given (ON CONFLICT DO NOTHING or a trigger skipped some), so that the rows come back in VALUES order; the insert was rolled back",
                None,
            ));
        }
        let mut out = Vec::with_capacity(self.rows.len());
        for shard in self.rows {
            let row = self
                .shards
                .iter()
                .position(|s| s == shard)
                .and_then(|p| held.get_mut(p))
                .and_then(Iterator::next);
            if let Some(row) = row {
                out.push(row);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_in_values_order_or_not_at_all() {
        let order = Order {
            rows: &[1, 0, 1, 2],
            shards: &[0, 1, 2],
        };
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        let held = vec![vec![b("r1")], vec![b("r0"), b("r2")], vec![b("r3")]];
        assert_eq!(
            order.interleave(held).unwrap(),
            vec![b("r0"), b("r1"), b("r2"), b("r3")]
        );
        let short = vec![vec![b("r1")], vec![b("r0")], vec![b("r3")]];
        assert!(order.interleave(short).is_err());
    }
}
